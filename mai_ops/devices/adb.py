"""Backend ``adb``: TFLite's ``benchmark_model`` on an Android phone.

The model is pushed to the phone, ``benchmark_model`` runs with the track's
acceleration flags, and its output is parsed (:mod:`mai_ops.devices.benchmark_log`) into the
same figures the local backend reports, plus the delegate that was applied and
whether the whole graph ran on it. An offline phone or a failed adb call is retried
a few times before the run is reported failed; a track that demands full delegation
fails with ``partial_delegation`` when the graph fell back to the CPU in part.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mai_ops.challenge.config import Device
from mai_ops.devices.benchmark_log import BenchmarkLogError, parse_benchmark_log
from mai_ops.devices.results import BenchmarkError, BenchmarkResult

REMOTE_DIR = "/data/local/tmp/mai-ops"
ADB_ENV = "MAI_OPS_ADB"  # path of the adb executable; default: adb on PATH


@dataclass(frozen=True)
class AdbRun:
    """What to ask of ``benchmark_model``: the device's settings and the track's delegate."""

    delegate: str = "cpu"
    runs: int = 50
    warmup: int = 5
    min_seconds: float = 1.0
    threads: int = 4
    nnapi_accelerator: str | None = None
    profile: bool = False


def benchmark_model_flags(remote_model: str, run: AdbRun) -> list[str]:
    """The command-line flags of ``benchmark_model`` for one run."""
    flags = [
        f"--graph={remote_model}",
        f"--num_threads={run.threads}",
        f"--num_runs={run.runs}",
        f"--min_secs={run.min_seconds:g}",
        f"--warmup_runs={run.warmup}",
        "--report_peak_memory_footprint=true",
    ]
    if run.delegate == "gpu":
        flags.append("--use_gpu=true")
    elif run.delegate in {"nnapi", "neuron", "npu"}:
        flags.append("--use_nnapi=true")
        if run.nnapi_accelerator:
            flags.append(f"--nnapi_accelerator_name={run.nnapi_accelerator}")
    elif run.delegate == "hexagon":
        flags.append("--use_hexagon=true")
    elif run.delegate == "xnnpack":
        flags.append("--use_xnnpack=true")
    if run.profile:
        flags.append("--enable_op_profiling=true")
    return flags


def adb_executable() -> str:
    return os.environ.get(ADB_ENV) or "adb"


def _adb(serial: str, args: Sequence[str], timeout_s: float) -> str:
    cmd = [adb_executable(), "-s", serial, *args]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise BenchmarkError(
            "benchmark_adb_missing", f"adb executable not found: {cmd[0]!r}"
        ) from None
    except subprocess.TimeoutExpired:
        msg = f"`{shlex.join(cmd)}` did not finish in {timeout_s:g} s"
        raise BenchmarkError("benchmark_timeout", msg) from None
    if out.returncode != 0:
        detail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        raise BenchmarkError(
            "benchmark_adb_failed", f"`{shlex.join(cmd)}` failed: {' / '.join(detail)}"
        )
    return out.stdout


# Worth another attempt within the same run: the phone or the adb link hiccupped.
_TRANSIENT = frozenset({"benchmark_device_offline", "benchmark_adb_failed", "benchmark_timeout"})


def run_adb(
    model_path: str | Path,
    device: Device,
    *,
    delegate: str | None = None,
    require_full_delegation: bool = False,
    profile: bool = False,
    attempts: int = 3,
    retry_delay_s: float = 5.0,
) -> BenchmarkResult:
    """Benchmark ``model_path`` on the phone ``device.serial``; retry transient adb errors."""
    if not device.serial:
        raise BenchmarkError("benchmark_bad_request", f"device {device.name!r} has no serial")
    run = AdbRun(
        delegate=delegate or device.delegate,
        runs=device.runs,
        warmup=device.warmup,
        min_seconds=device.min_seconds,
        threads=device.threads,
        nnapi_accelerator=device.nnapi_accelerator,
        profile=profile,
    )
    digest = hashlib.sha256(Path(model_path).read_bytes()).hexdigest()[:16]
    remote = f"{REMOTE_DIR}/{digest}.tflite"
    last: BenchmarkError | None = None
    for attempt in range(1, attempts + 1):
        try:
            return _run_once(model_path, device, run, remote, require_full_delegation)
        except BenchmarkError as exc:
            if exc.code not in _TRANSIENT:
                raise
            last = exc
            if attempt < attempts:
                time.sleep(retry_delay_s)
    raise BenchmarkError(last.code, f"{last.message} (after {attempts} attempts)")


def _run_once(model_path, device: Device, run: AdbRun, remote: str, require_full: bool):
    serial, timeout = device.serial, float(device.timeout_s)
    state = _adb(serial, ["get-state"], 30).strip()
    if state != "device":
        raise BenchmarkError(
            "benchmark_device_offline", f"device {device.name} ({serial}) is {state!r}"
        )
    _adb(serial, ["shell", "mkdir", "-p", REMOTE_DIR], 30)
    _adb(serial, ["push", str(model_path), remote], 120)
    try:
        cmd = [device.benchmark_binary, *benchmark_model_flags(remote, run)]
        output = _adb(serial, ["shell", shlex.join(cmd)], timeout)
    finally:
        try:
            _adb(serial, ["shell", "rm", "-f", remote], 30)
        except BenchmarkError:
            pass  # a leftover file in /data/local/tmp is harmless; the result is not
    try:
        log = parse_benchmark_log(output)
    except BenchmarkLogError as exc:
        raise BenchmarkError("benchmark_unparseable_output", str(exc)) from None
    if require_full and log.fully_delegated is False:
        kernels = f" ({log.delegate_kernels} delegate kernels)" if log.delegate_kernels else ""
        raise BenchmarkError(
            "benchmark_partial_delegation",
            f"the graph ran only partly on the {log.delegate} delegate{kernels}; "
            "this track requires full delegation",
        )
    return BenchmarkResult(
        device=device.name,
        backend="adb",
        threads=run.threads,
        delegate=log.delegate,
        fully_delegated=log.fully_delegated,
        ops=log.ops,
        init_ms=log.init_ms,
        first_ms=log.first_ms,
        warmup_avg_ms=log.warmup_avg_ms,
        avg_ms=log.avg_ms,
        median_ms=log.median_ms,
        std_ms=log.std_ms,
        p90_ms=None,
        min_ms=log.min_ms,
        max_ms=log.max_ms,
        count=log.count,
        peak_rss_mb=log.peak_memory_mb,
    )
