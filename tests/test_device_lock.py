"""One benchmark at a time per device, across processes: the validation server's guarantee.

Validation tasks run side by side (the ``mai_validation`` pool) and queue only their
benchmarks for the device. Real processes take the lock here, as task processes do;
the intervals they held it must never overlap on one device and must overlap on two.
"""

from __future__ import annotations

import multiprocessing
import time

from mai_ops.challenge.config import Device
from mai_ops.devices.lock import device_lock

CPU = Device(name="cpu", backend="litert")
CPU_OTHER_PROFILE = Device(name="cpu_4_threads", backend="litert", threads=4)
PHONE = Device(name="phone", backend="adb", serial="X1")


def _hold(device: Device, start, queue) -> None:
    start.wait()
    with device_lock(device):
        began = time.monotonic()
        time.sleep(0.3)
        queue.put((device.name, began, time.monotonic()))


def _held(devices: list[Device], tmp_path, monkeypatch) -> list[tuple[str, float, float]]:
    monkeypatch.setenv("MAI_OPS_DEVICE_LOCKS", str(tmp_path))
    ctx = multiprocessing.get_context("fork")
    start, queue = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_hold, args=(d, start, queue)) for d in devices]
    for proc in procs:
        proc.start()
    start.set()
    held = [queue.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    return held


def _overlap(a, b) -> bool:
    return a[1] < b[2] and b[1] < a[2]


def test_one_device_one_benchmark_at_a_time(tmp_path, monkeypatch):
    # Two profiles of the worker's CPU are one device: they take turns too.
    held = _held([CPU, CPU, CPU_OTHER_PROFILE], tmp_path, monkeypatch)
    for i, a in enumerate(held):
        for b in held[i + 1 :]:
            assert not _overlap(a, b), held


def test_two_devices_measure_side_by_side(tmp_path, monkeypatch):
    held = _held([CPU, PHONE], tmp_path, monkeypatch)
    assert _overlap(*held), held


def test_a_dead_holder_releases_the_device(tmp_path, monkeypatch):
    monkeypatch.setenv("MAI_OPS_DEVICE_LOCKS", str(tmp_path))
    ctx = multiprocessing.get_context("fork")
    holding = ctx.Event()
    holder = ctx.Process(target=_hold_forever, args=(CPU, holding))
    holder.start()
    assert holding.wait(timeout=60)
    holder.kill()
    holder.join(timeout=30)
    with device_lock(CPU) as waited:  # would block forever if the lock outlived it
        assert waited >= 0


def _hold_forever(device: Device, holding) -> None:
    with device_lock(device):
        holding.set()
        time.sleep(3600)


def _hold_for(device: Device, seconds: float, holding) -> None:
    with device_lock(device):
        holding.set()
        time.sleep(seconds)


def test_a_benchmark_keeps_its_wait_for_the_device_apart_from_its_own_time(tmp_path, monkeypatch):
    """A scoring benchmark may start while another measures and wait at the lock: the
    record's ``seconds`` keep that wait apart, so they say what the benchmark took."""
    from mai_ops.challenge.config import load_challenge
    from mai_ops.dev.reference_models import build_reference_tflite
    from mai_ops.submissions import evaluation

    from .conftest import MAI2021

    monkeypatch.setenv("MAI_OPS_DEVICE_LOCKS", str(tmp_path))
    challenge = load_challenge(MAI2021)
    track = challenge.tracks[0]
    quick = challenge.device(track.device).model_copy(update={"runs": 3, "min_seconds": 0})
    challenge = challenge.model_copy(update={"devices": [quick]})
    model = tmp_path / "model.tflite"
    model.write_bytes(build_reference_tflite(track))

    def benchmarked() -> tuple[dict, float]:
        started = time.monotonic()
        record = evaluation.evaluate(
            evaluation.Evaluation(team="t"),
            challenge,
            track,
            None,
            tmp_path,
            stages=("benchmark",),
            artifacts={"model": model},
        )
        assert record.status == "ok", record.errors
        return record.seconds, time.monotonic() - started

    alone, _ = benchmarked()
    assert evaluation.DEVICE_WAIT not in alone

    ctx = multiprocessing.get_context("fork")
    holding = ctx.Event()
    holder = ctx.Process(target=_hold_for, args=(quick, 3.0, holding))
    holder.start()
    assert holding.wait(timeout=60)
    seconds, took = benchmarked()
    holder.join(timeout=60)
    assert seconds[evaluation.DEVICE_WAIT] >= 2.0
    assert seconds["benchmark"] + seconds[evaluation.DEVICE_WAIT] <= took + 0.002  # ms rounding
    assert seconds["benchmark"] < took - 2.0
