"""``mai-ops benchmark``, ``parse-benchmark-log`` and ``device-pools``: the device farm.

``benchmark`` exits 0 measured, 1 the benchmark failed, 2 usage errors;
``parse-benchmark-log`` exits 0 parsed, 1 unparseable, 2 unreadable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mai_ops.challenge.config import Device, challenge_files
from mai_ops.devices.benchmark import run_benchmark
from mai_ops.devices.benchmark_log import BenchmarkLog, BenchmarkLogError, parse_benchmark_log
from mai_ops.devices.pools import pools_json, valid_challenges
from mai_ops.devices.results import BenchmarkError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("device-pools", help="the device pools as JSON, for `airflow pools import`")
    p.add_argument("paths", nargs="*", help="challenge YAML files (default: every shipped one)")
    p.set_defaults(func=_device_pools)

    p = sub.add_parser(
        "benchmark",
        help="time a .tflite model with LiteRT on this machine's CPU (the litert backend)",
        description=(
            "Time a .tflite model with LiteRT on this machine's CPU, in a child process "
            "with memory and time limits, the way TFLite's benchmark_model does."
        ),
    )
    p.add_argument("model", metavar="MODEL", help=".tflite model file")
    p.add_argument(
        "--device",
        default="litert",
        help="a device declared in a challenge file (its backend and settings are used), "
        "or any other name for the local LiteRT CPU (default litert)",
    )
    p.add_argument("--threads", type=int, help="CPU threads (default: the device's, else 4)")
    p.add_argument("--runs", type=int, help="minimum timed runs (default: the device's, else 50)")
    p.add_argument("--warmup", type=int, help="warm-up runs (default: the device's, else 5)")
    p.add_argument("--min-seconds", type=float, help="minimum time of the timed runs (1.0)")
    p.add_argument("--timeout", type=int, help="kill after this many seconds (600)")
    p.add_argument("--memory-mb", type=int, help="address-space limit in MiB (4096)")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=_benchmark)

    p = sub.add_parser(
        "parse-benchmark-log",
        help="runtime, delegate, memory and op summary from a benchmark_model log",
    )
    p.add_argument("file", metavar="FILE", help="saved output of benchmark_model (TFLite/LiteRT)")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=_parse_benchmark_log)


def _device_pools(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.paths] or challenge_files()
    print(pools_json(valid_challenges(paths)))
    return 0


def _resolve_device(args: argparse.Namespace):
    """The declared device named ``--device`` (else a local one), with the CLI overrides."""
    device = None
    for challenge in valid_challenges(challenge_files()):
        for declared in challenge.devices:
            if declared.name == args.device:
                device = declared
    if device is None:
        device = Device(name=args.device, backend="litert")
    overrides = {
        "threads": args.threads,
        "runs": args.runs,
        "warmup": args.warmup,
        "min_seconds": args.min_seconds,
        "timeout_s": args.timeout,
        "memory_mb": args.memory_mb,
    }
    return device.model_copy(update={k: v for k, v in overrides.items() if v is not None})


def _benchmark(args: argparse.Namespace) -> int:
    if not Path(args.model).is_file():
        print(f"no model file at {args.model!r}", file=sys.stderr)
        return 2
    try:
        device = _resolve_device(args)
        result = run_benchmark(args.model, device)
    except BenchmarkError as exc:
        print(f"{exc.code}: {exc.message}", file=sys.stderr)
        return 2 if exc.code == "benchmark_bad_request" else 1
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
        return 0
    delegation = result.delegate or "none"
    if result.fully_delegated is False:
        delegation += f" (partial, on the CPU: {', '.join(result.cpu_ops)})"
    print(f"{args.model} on {result.device} ({result.backend}, {result.threads} threads)")
    print(f"  init           {result.init_ms:10.3f} ms")
    print(f"  first run      {result.first_ms:10.3f} ms")
    if result.warmup_avg_ms is not None:
        print(f"  warm-up (avg)  {result.warmup_avg_ms:10.3f} ms")
    print(f"  median         {result.median_ms:10.3f} ms   ({result.count} runs)")
    print(f"  mean ± std     {result.avg_ms:10.3f} ± {result.std_ms:.3f} ms")
    print(f"  p90            {result.p90_ms:10.3f} ms")
    print(f"  min / max      {result.min_ms:10.3f} / {result.max_ms:.3f} ms")
    print(f"  peak RSS       {result.peak_rss_mb:10.1f} MiB")
    print(f"  delegate       {delegation}")
    return 0


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} ms"


def format_summary(log: BenchmarkLog) -> str:
    """A few lines an organizer can read at a glance."""
    median = "" if log.median_ms is None else f", median {_ms(log.median_ms)}"
    if log.delegate is None:
        delegate = "none (CPU)"
    elif log.fully_delegated is None:
        delegate = f"{log.delegate} (coverage not reported)"
    elif log.fully_delegated:
        delegate = f"{log.delegate}, whole graph"
    elif log.delegate_kernels == 0:
        delegate = f"{log.delegate} applied but not used: the graph ran on the CPU"
    else:
        delegate = f"{log.delegate}, part of the graph ({log.delegate_kernels} delegate kernels)"
    memory = "-" if log.peak_memory_mb is None else f"{log.peak_memory_mb:.3f} MB"
    lines = [
        f"inference    {_ms(log.avg_ms)} avg over {log.count} runs "
        f"(std {_ms(log.std_ms)}, min {_ms(log.min_ms)}, max {_ms(log.max_ms)}{median})",
        f"init         {_ms(log.init_ms)}",
        f"first run    {_ms(log.first_ms)}",
        f"warm-up avg  {_ms(log.warmup_avg_ms)}",
        f"delegate     {delegate}",
        f"peak memory  {memory}",
    ]
    for i, op in enumerate(log.ops[:5]):
        label = "ops" if i == 0 else ""
        lines.append(
            f"{label:<12} {op['node_type']}: {op['avg_ms']:.3f} ms ({op['percent']:.2f}%), "
            f"{op['count']} node(s)"
        )
    return "\n".join(lines)


def _parse_benchmark_log(args: argparse.Namespace) -> int:
    try:
        data = Path(args.file).read_bytes()
    except OSError as exc:
        print(f"cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        log = parse_benchmark_log(data.decode("utf-8", errors="replace"))
    except BenchmarkLogError as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(log.as_json(), indent=2) if args.json else format_summary(log))
    return 0
