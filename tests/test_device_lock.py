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
