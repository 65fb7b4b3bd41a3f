"""Backend ``litert``: time a .tflite model with LiteRT on this machine's CPU.

This is the embedded default device. The model runs in ``python -m
mai_ops.devices.litert``, a child process with its own process group, an address-space
limit (``RLIMIT_AS``) and a wall-clock timeout, so a model that hangs, eats the memory or
crashes the runtime costs one failed benchmark, never the worker. The request goes in on
stdin as one JSON object; the child answers with one JSON line per stage (``ready``,
``loaded``, ``first``, ``warmup``, then ``result`` or ``error``) on a private copy of its
stdout, whose real fd 1 is pointed at stderr first so nothing the C++ runtime prints can
corrupt the answer. A child killed mid-run has still said how far it got.

Methodology, as TensorFlow Lite's ``benchmark_model``:

1. *init*: build the ``Interpreter`` (``num_threads=threads``, the default op resolver,
   which applies the XNNPACK delegate), resize dynamic inputs, ``allocate_tensors()``
   (where the delegate is applied and XNNPACK builds its runtime). ``init_ms`` is all of it.
2. Inputs: seeded random values of each input's dtype and shape, written once (floats
   uniform in [-0.5, 0.5) like ``benchmark_model``, 8-bit integers over their whole
   range, wider integers in [0, 100), booleans 0/1).
3. The first ``invoke()`` is timed alone (``first_ms``), then ``warmup`` more
   (``warmup_avg_ms``), then the timed runs: until at least ``min_runs`` runs AND
   ``min_seconds`` seconds, stopping at ``max_runs`` if given. Only ``invoke()`` is inside
   ``time.perf_counter_ns()``.
4. Statistics of the timed runs: mean, median, population standard deviation (as
   ``benchmark_model``'s ``std=``), p90 by linear interpolation, min, max, count.
   ``peak_rss_mb`` is the child's ``ru_maxrss`` (the whole process: Python, numpy and
   LiteRT take ~40 MiB before the model is opened, reported as ``base_rss_mb``).

Delegation: LiteRT's Python API does not say which nodes XNNPACK took, but the node list
does: the original nodes stay listed after ``DELEGATE`` nodes replace them. Walking back
from each ``DELEGATE`` node's outputs to its inputs finds the nodes it replaced; every
other node runs on LiteRT's own CPU kernels (``cpu_ops``). ``fully_delegated`` is true when
there are none.

Per-op profile: not available. LiteRT's Python ``Interpreter`` has no profiler hook (no
``benchmark_model --enable_op_profiling`` equivalent; ``CompiledModel`` has none either),
so ``ops`` is always empty from this backend; the ``adb`` backend fills it.

Limits: the memory limit is set on the child with ``prlimit`` by the parent right after
the process starts (before the request, hence before the model, is sent) and again by the
child itself with ``setrlimit`` before it imports anything. Not with ``preexec_fn``:
Python code between ``fork`` and ``exec`` can deadlock when the parent has threads, and an
Airflow worker has several (see the ``subprocess`` documentation).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mai_ops.errors import StageError, stage_codes
from mai_ops.infra.child import (
    apply_own_limits,
    child_env,
    kill_group,
    limit_child,
    signal_name,
)

_MB = 1024 * 1024
_MEMORY_HINTS = re.compile(
    r"bad_alloc|out of memory|cannot allocate memory|failed to (?:re)?allocate|memoryerror"
    r"|failed to mmap|mmap failed|failed to map|memory allocation",
    re.IGNORECASE,
)
_STAGE_NAMES = {
    "start": "start-up",
    "ready": "model loading",
    "loaded": "the first run",
    "first": "the warm-up runs",
    "warmup": "the timed runs",
}


class BenchmarkError(StageError):
    """A benchmark that gave no runtime: a registered ``code`` and a readable ``message``.

    Codes from this backend: ``benchmark_load_failed`` (not a model LiteRT can open or
    allocate), ``benchmark_timeout`` (killed after ``timeout_s``),
    ``benchmark_memory_exceeded`` (over ``memory_mb``, or killed by the kernel's OOM
    killer), ``benchmark_crashed`` (the runtime died some other way),
    ``benchmark_invoke_failed`` (``invoke()`` returned an error), ``benchmark_bad_request``
    (the arguments).
    """

    def __init__(self, code: str, message: str):
        super().__init__(code, message)
        assert self.stage == "benchmark", code


@dataclass
class BenchmarkResult:
    """One benchmark run on one device, times in milliseconds."""

    device: str
    backend: str
    threads: int
    init_ms: float
    first_ms: float | None
    warmup_avg_ms: float | None
    avg_ms: float
    median_ms: float | None
    std_ms: float | None
    p90_ms: float | None
    min_ms: float | None
    max_ms: float | None
    count: int
    peak_rss_mb: float | None
    delegate: str | None = None
    fully_delegated: bool | None = None
    ops: list = field(default_factory=list)
    cpu_ops: list[str] = field(default_factory=list)
    input_shapes: list[list[int]] = field(default_factory=list)
    base_rss_mb: float | None = None

    JSON_KEYS: ClassVar[tuple[str, ...]] = (
        "device",
        "backend",
        "threads",
        "init_ms",
        "first_ms",
        "warmup_avg_ms",
        "avg_ms",
        "median_ms",
        "std_ms",
        "p90_ms",
        "min_ms",
        "max_ms",
        "count",
        "peak_rss_mb",
    )

    def as_json(self) -> dict[str, Any]:
        """The figures a score record keeps (times rounded to the microsecond)."""
        out: dict[str, Any] = {}
        for key in self.JSON_KEYS:
            value = getattr(self, key)
            out[key] = round(value, 3) if isinstance(value, float) else value
        return out


def run_litert(
    model_path: str | Path,
    *,
    device: str = "litert",
    threads: int = 4,
    min_runs: int = 50,
    min_seconds: float = 1.0,
    max_runs: int | None = None,
    warmup: int = 5,
    input_shapes: Sequence[Sequence[int]] | Mapping[str, Sequence[int]] | None = None,
    timeout_s: float = 300,
    memory_mb: int = 4096,
    seed: int = 0,
) -> BenchmarkResult:
    """Benchmark ``model_path`` with LiteRT in a limited child process.

    ``input_shapes`` gives the shape of each input (in order, or by input name) for models
    with dynamic dimensions; only the dynamic (-1) dimensions may differ from the model's.
    Raises :class:`BenchmarkError` for every way the run can fail.
    """
    request = _request(
        model_path,
        threads=threads,
        min_runs=min_runs,
        min_seconds=min_seconds,
        max_runs=max_runs,
        warmup=warmup,
        input_shapes=input_shapes,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        seed=seed,
    )
    answer = _run_child(request, float(timeout_s), int(memory_mb))
    return _result(answer, device=device, threads=int(threads))


def _request(model_path: str | Path, **kw: Any) -> dict[str, Any]:
    def bad(message: str) -> BenchmarkError:
        return BenchmarkError("benchmark_bad_request", message)

    path = Path(model_path)
    if not path.is_file():
        raise bad(f"no model file at {str(path)!r}")
    for name in ("threads", "min_runs", "memory_mb"):
        if not _is_int(kw[name]) or kw[name] < 1:
            raise bad(f"{name} must be a positive integer, got {kw[name]!r}")
    if not _is_int(kw["warmup"]) or kw["warmup"] < 0:
        raise bad(f"warmup must be a non-negative integer, got {kw['warmup']!r}")
    if kw["max_runs"] is not None and (not _is_int(kw["max_runs"]) or kw["max_runs"] < 1):
        raise bad(f"max_runs must be a positive integer or None, got {kw['max_runs']!r}")
    for name in ("min_seconds", "timeout_s"):
        value = kw[name]
        if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
            raise bad(f"{name} must be a number >= 0, got {value!r}")
    if not kw["timeout_s"] > 0:
        raise bad("timeout_s must be > 0")
    shapes = kw.pop("input_shapes")
    if shapes is not None:
        try:
            if isinstance(shapes, Mapping):
                shapes = {str(k): [int(d) for d in v] for k, v in shapes.items()}
            else:
                shapes = [[int(d) for d in s] for s in shapes]
        except (TypeError, ValueError):
            raise bad(f"input_shapes must be lists of integers, got {shapes!r}") from None
    return {"model": str(path.resolve()), "input_shapes": shapes, **kw}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def child_command() -> list[str]:
    """The child's argv (a test may swap it for one that misbehaves)."""
    return [sys.executable, "-m", "mai_ops.devices.litert"]


def _run_child(request: dict[str, Any], timeout_s: float, memory_mb: int) -> dict[str, Any]:
    env = child_env()
    # numpy's BLAS would start a thread per core, each reserving address space that counts
    # against RLIMIT_AS; the benchmark never calls BLAS.
    env.update({"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    proc = subprocess.Popen(
        child_command(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,  # own process group: a timeout kills everything it started
    )
    limit_child(proc.pid, memory_mb)
    started = time.monotonic()
    timed_out = False
    try:
        out, err = proc.communicate(json.dumps(request).encode(), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_group(proc)
        out, err = proc.communicate()
    except BaseException:
        kill_group(proc)  # e.g. the task itself was interrupted: leave nothing running
        proc.communicate()
        raise
    seconds = time.monotonic() - started
    steps = _parse_steps(out)
    stderr = err.decode("utf-8", "replace")
    stage = _STAGE_NAMES.get(next(reversed(steps), "start"), "the report")

    if timed_out:
        done = ""
        if "warmup" in steps and "result" not in steps:
            done = " (the timed runs had not reached min_runs and min_seconds)"
        raise BenchmarkError(
            "benchmark_timeout", f"no result within {timeout_s:g} s, killed during {stage}{done}"
        )
    if "error" in steps:
        error = steps["error"]
        code = error.get("code")
        code = code if code in stage_codes("benchmark") else "benchmark_crashed"
        raise BenchmarkError(code, str(error.get("message") or "no message"))
    if proc.returncode == 0 and "result" in steps:
        return steps
    tail = _tail(stderr)
    if proc.returncode is not None and proc.returncode < 0:
        sig = -proc.returncode
        name = signal_name(sig)
        if sig == signal.SIGKILL:
            # We did not send it: on Linux that is the kernel's OOM killer.
            raise BenchmarkError(
                "benchmark_memory_exceeded",
                f"killed by SIGKILL during {stage} (out of memory?){tail}",
            )
        if _MEMORY_HINTS.search(stderr):
            raise BenchmarkError(
                "benchmark_memory_exceeded",
                f"killed by {name} during {stage} after running out of memory"
                f" (limit {memory_mb} MiB){tail}",
            )
        raise BenchmarkError("benchmark_crashed", f"killed by {name} during {stage}{tail}")
    if _MEMORY_HINTS.search(stderr):
        if "ready" not in steps:
            stage += f" (the limit of {memory_mb} MiB is below what Python, numpy and LiteRT"
            stage += " need before any model is opened, about 150 MiB of address space)"
        raise BenchmarkError(
            "benchmark_memory_exceeded",
            f"ran out of memory during {stage}{tail}",
        )
    raise BenchmarkError(
        "benchmark_crashed",
        f"exited with status {proc.returncode} after {seconds:.1f} s without a result,"
        f" during {stage}{tail}",
    )


def _tail(stderr: str) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    return f": {lines[-1][:300]}" if lines else ""


def _parse_steps(out: bytes) -> dict[str, dict[str, Any]]:
    steps: dict[str, dict[str, Any]] = {}
    for line in out.decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the kill
        if isinstance(record, dict) and isinstance(record.get("step"), str):
            steps[record.pop("step")] = record
    return steps


def _result(steps: dict[str, dict[str, Any]], *, device: str, threads: int) -> BenchmarkResult:
    loaded, first, warm, res = steps["loaded"], steps["first"], steps["warmup"], steps["result"]
    stats = res["stats"]
    return BenchmarkResult(
        device=device,
        backend="litert",
        threads=threads,
        init_ms=loaded["init_ms"],
        first_ms=first["first_ms"],
        warmup_avg_ms=warm["warmup_avg_ms"],
        avg_ms=stats["avg_ms"],
        median_ms=stats["median_ms"],
        std_ms=stats["std_ms"],
        p90_ms=stats["p90_ms"],
        min_ms=stats["min_ms"],
        max_ms=stats["max_ms"],
        count=stats["count"],
        peak_rss_mb=res["peak_rss_mb"],
        delegate=loaded.get("delegate"),
        fully_delegated=loaded.get("fully_delegated"),
        ops=[],
        cpu_ops=list(loaded.get("cpu_ops") or []),
        input_shapes=loaded.get("input_shapes") or [],
        base_rss_mb=steps.get("ready", {}).get("base_rss_mb"),
    )


def summarize(samples_ns: Sequence[int]) -> dict[str, Any]:
    """Mean, median, population std, p90 (linear interpolation), min, max of run times."""
    if not samples_ns:
        raise ValueError("no samples")
    ms = sorted(s / 1e6 for s in samples_ns)
    n = len(ms)
    mean = math.fsum(ms) / n
    var = math.fsum((x - mean) ** 2 for x in ms) / n
    return {
        "count": n,
        "avg_ms": mean,
        "median_ms": _percentile(ms, 50),
        "std_ms": math.sqrt(var),
        "p90_ms": _percentile(ms, 90),
        "min_ms": ms[0],
        "max_ms": ms[-1],
    }


def _percentile(sorted_ms: Sequence[float], p: float) -> float:
    k = (len(sorted_ms) - 1) * p / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(sorted_ms) - 1)
    return sorted_ms[lo] + (k - lo) * (sorted_ms[hi] - sorted_ms[lo])


# ---------------------------------------------------------------------------------------
# The command line: ``mai-ops benchmark MODEL``.
# ---------------------------------------------------------------------------------------


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``benchmark MODEL``; exit 0 measured, 1 the benchmark failed, 2 usage errors."""
    p = subparsers.add_parser(
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
    p.set_defaults(func=_cli)
    return p


def _resolve_device(args: argparse.Namespace):
    """The declared device named ``--device`` (else a local one), with the CLI overrides."""
    from mai_ops.challenge.config import Device, challenge_files
    from mai_ops.devices.pools import valid_challenges

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


def _cli(args: argparse.Namespace) -> int:
    from mai_ops.devices.benchmark import run_benchmark

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


# ---------------------------------------------------------------------------------------
# The child. Everything below runs in ``python -m mai_ops.devices.litert``.
# ---------------------------------------------------------------------------------------


class _Failure(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class _Channel:
    """Answer lines on a private copy of stdout; fd 1 itself now goes to stderr."""

    def __init__(self) -> None:
        self._out = os.fdopen(os.dup(1), "w", encoding="utf-8")
        os.dup2(2, 1)
        sys.stdout = sys.stderr

    def send(self, step: str, **data: Any) -> None:
        self._out.write(json.dumps({"step": step, **data}) + "\n")
        self._out.flush()


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> int:
    channel = _Channel()
    request: dict[str, Any] = {}
    try:
        try:
            request = json.loads(sys.stdin.read())
            if not isinstance(request, dict) or "model" not in request:
                raise ValueError("expected a JSON object with 'model'")
        except ValueError as exc:
            raise _Failure("benchmark_bad_request", f"unreadable request: {exc}") from None
        apply_own_limits(request.get("memory_mb", 4096))
        _benchmark(request, channel)
    except _Failure as exc:
        channel.send("error", code=exc.code, message=str(exc))
    except MemoryError as exc:
        message = f"out of memory (limit {request.get('memory_mb')} MiB): MemoryError {exc}"
        channel.send("error", code="benchmark_memory_exceeded", message=message.strip())
    except Exception as exc:  # noqa: BLE001 - the parent needs the reason, not a traceback
        channel.send("error", code="benchmark_crashed", message=f"{type(exc).__name__}: {exc}")
    return 0


def _classify(exc: BaseException, code: str, what: str, memory_mb: int) -> _Failure:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, MemoryError) or _MEMORY_HINTS.search(text):
        return _Failure(
            "benchmark_memory_exceeded", f"{what}: out of memory (limit {memory_mb} MiB): {text}"
        )
    return _Failure(code, f"{what}: {text}")


def _benchmark(request: dict[str, Any], channel: _Channel) -> None:
    memory_mb = int(request.get("memory_mb", 4096))
    try:
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter
    except (ImportError, OSError, MemoryError) as exc:
        # Under a tight RLIMIT_AS a shared library may not even map.
        failure = _classify(
            exc, "benchmark_crashed", "importing numpy and LiteRT failed", memory_mb
        )
        if failure.code == "benchmark_memory_exceeded":
            failure = _Failure(
                "benchmark_memory_exceeded",
                f"{failure} (the limit is below what the runtime needs before any model"
                " is opened, about 150 MiB of address space)",
            )
        raise failure from None

    threads = int(request.get("threads", 4))
    channel.send("ready", base_rss_mb=_rss_mb())

    clock = time.perf_counter_ns
    start = clock()
    try:
        interpreter = Interpreter(model_path=request["model"], num_threads=threads)
    except (ValueError, RuntimeError, MemoryError) as exc:
        raise _classify(
            exc, "benchmark_load_failed", "LiteRT cannot open the model", memory_mb
        ) from None
    _resize(interpreter, request.get("input_shapes"))
    try:
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError, MemoryError) as exc:
        failure = _classify(exc, "benchmark_load_failed", "allocate_tensors failed", memory_mb)
        if failure.code != "benchmark_memory_exceeded":
            failure = _allocation_memory(interpreter, failure, memory_mb)
        raise failure from None
    init_ns = clock() - start

    inputs = interpreter.get_input_details()
    delegation = _delegation(interpreter._interpreter)  # noqa: SLF001 - node list only there
    channel.send(
        "loaded",
        init_ms=init_ns / 1e6,
        input_shapes=[[int(x) for x in d["shape"]] for d in inputs],
        **delegation,
    )

    rng = np.random.default_rng(int(request.get("seed", 0)))
    try:
        for d in inputs:
            interpreter.set_tensor(d["index"], _sample(np, rng, d["shape"], d["dtype"]))
    except (ValueError, RuntimeError, MemoryError) as exc:
        raise _classify(
            exc, "benchmark_invoke_failed", "setting the inputs failed", memory_mb
        ) from None

    invoke = interpreter.invoke

    def timed() -> int:
        t0 = clock()
        invoke()
        return clock() - t0

    try:
        first_ns = timed()
        channel.send("first", first_ms=first_ns / 1e6)
        warm = [timed() for _ in range(int(request.get("warmup", 5)))]
        channel.send("warmup", warmup_avg_ms=sum(warm) / len(warm) / 1e6 if warm else None)

        min_runs = int(request.get("min_runs", 50))
        max_runs = request.get("max_runs")
        min_ns = int(float(request.get("min_seconds", 1.0)) * 1e9)
        samples: list[int] = []
        begin = clock()
        while len(samples) < min_runs or clock() - begin < min_ns:
            if max_runs is not None and len(samples) >= int(max_runs):
                break
            samples.append(timed())
    except (ValueError, RuntimeError, MemoryError) as exc:
        raise _classify(exc, "benchmark_invoke_failed", "invoke failed", memory_mb) from None

    channel.send("result", stats=summarize(samples), peak_rss_mb=_rss_mb())


def _allocation_memory(interpreter, failure: _Failure, memory_mb: int) -> _Failure:
    """``failure`` as ``memory_exceeded`` when the tensors cannot fit in the limit.

    An allocation that fails under RLIMIT_AS rarely says so: XNNPACK reports "failed to
    reshape runtime", TFLite's arena "failed to prepare". What is already mapped plus the
    largest tensor (a lower bound of what the model needs), or plus all of them (an upper
    bound, no arena sharing), over the limit makes memory the likely cause.
    """
    import numpy as np

    sizes = []
    for d in interpreter.get_tensor_details():
        try:
            size = np.dtype(d["dtype"]).itemsize
        except TypeError:
            size = 4
        for x in d["shape"]:
            size *= max(int(x), 1)
        sizes.append(size)
    limit = memory_mb * _MB
    mapped = _vm_bytes()
    largest, total = max(sizes, default=0), sum(sizes)
    if mapped + largest <= limit and mapped + total <= limit:
        return failure
    need = f"{largest / _MB:.0f} to {total / _MB:.0f} MiB"
    return _Failure(
        "benchmark_memory_exceeded",
        f"{str(failure).rstrip('. ')}; the model's tensors need {need},"
        f" {mapped / _MB:.0f} MiB were already mapped, the limit is {memory_mb} MiB",
    )


def _vm_bytes() -> int:
    try:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmSize:")[1].split()[0]) * 1024
    except (OSError, IndexError, ValueError):
        return 0


def _resize(interpreter, shapes: list[list[int]] | dict[str, list[int]] | None) -> None:
    if not shapes:
        return
    details = interpreter.get_input_details()
    names = [d["name"] for d in details]
    if isinstance(shapes, dict):
        unknown = sorted(set(shapes) - set(names))
        if unknown:
            raise _Failure("benchmark_bad_request", f"no input named {unknown} (inputs: {names})")
        wanted = [(d, shapes[d["name"]]) for d in details if d["name"] in shapes]
    else:
        if len(shapes) != len(details):
            raise _Failure(
                "benchmark_bad_request",
                f"{len(shapes)} input shape(s) given, the model has {len(details)}",
            )
        wanted = list(zip(details, shapes, strict=True))
    for d, shape in wanted:
        if [int(x) for x in d["shape"]] == list(shape):
            continue
        try:
            interpreter.resize_tensor_input(d["index"], shape, strict=True)
        except (ValueError, RuntimeError) as exc:
            signature = [int(x) for x in d["shape_signature"]]
            raise _Failure(
                "benchmark_bad_request",
                f"input {d['name']!r} {signature} cannot take shape {list(shape)}: {exc}",
            ) from None


def _delegation(wrapper) -> dict[str, Any]:
    """Which nodes the XNNPACK delegate replaced, from the interpreter's node list."""
    nodes = []
    for i in range(wrapper.NumNodes()):
        nodes.append(
            (
                wrapper.NodeName(i),
                [int(t) for t in wrapper.NodeInputs(i)],
                [int(t) for t in wrapper.NodeOutputs(i)],
            )
        )
    producer = {}
    for i, (name, _, outs) in enumerate(nodes):
        if name != "DELEGATE":
            for t in outs:
                producer[t] = i
    replaced: set[int] = set()
    delegates = [n for n in nodes if n[0] == "DELEGATE"]
    for _, ins, outs in delegates:
        boundary = set(ins)
        stack = list(outs)
        seen: set[int] = set()
        while stack:
            t = stack.pop()
            if t in seen or t in boundary or t not in producer:
                continue
            seen.add(t)
            node = producer[t]
            replaced.add(node)
            stack.extend(nodes[node][1])
    cpu_ops = [
        name for i, (name, _, _) in enumerate(nodes) if name != "DELEGATE" and i not in replaced
    ]
    return {
        "delegate": "XNNPACK" if delegates else None,
        "fully_delegated": bool(delegates) and not cpu_ops,
        "cpu_ops": cpu_ops,
    }


def _sample(np, rng, shape, dtype):
    shape = tuple(int(x) for x in shape)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return (rng.random(shape, dtype=np.float32) - 0.5).astype(dtype)
    if dtype.kind in "iu":
        if dtype.itemsize == 1:
            info = np.iinfo(dtype)
            return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
        return rng.integers(0, 100, size=shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 1, size=shape, endpoint=True).astype(bool)
    return np.zeros(shape, dtype)


if __name__ == "__main__":
    sys.exit(main())
