"""Benchmark a model on a named device of the farm, whatever its backend.

``litert`` runs LiteRT on the worker's CPU (the embedded default); ``adb`` runs
``benchmark_model`` on an Android phone. Both return the same figures, so scoring
never needs to know which one measured the runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mai_ops.challenge.config import Device, Track
from mai_ops.devices.litert import run_litert
from mai_ops.devices.lock import device_lock
from mai_ops.devices.results import BenchmarkError, BenchmarkResult

__all__ = ["BenchmarkError", "BenchmarkResult", "run_benchmark"]


def run_benchmark(
    model_path: str | Path,
    device: Device,
    track: Track | None = None,
    profile: bool = False,
    waited: Callable[[float], None] | None = None,
) -> BenchmarkResult:
    """Measure ``model_path`` on ``device``, holding the device (:mod:`.lock`) meanwhile.

    ``waited`` is told the seconds spent waiting for the device before measuring, so a
    record keeps its queueing apart from the benchmark's own time.
    """
    with device_lock(device) as seconds:
        if waited is not None:
            waited(seconds)
        return _measure(model_path, device, track, profile)


def _measure(
    model_path: str | Path, device: Device, track: Track | None, profile: bool
) -> BenchmarkResult:
    if device.backend == "adb":
        from mai_ops.devices.adb import run_adb

        return run_adb(
            model_path,
            device,
            delegate=track.delegate if track else None,
            require_full_delegation=bool(track and track.require_full_delegation),
            profile=profile,
        )
    return run_litert(
        model_path,
        device=device.name,
        threads=device.threads,
        min_runs=device.runs,
        min_seconds=device.min_seconds,
        warmup=device.warmup,
        timeout_s=device.timeout_s,
        memory_mb=device.memory_mb,
    )
