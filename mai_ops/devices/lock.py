"""One benchmark at a time on a device: a lock held only while the device measures.

The validation server checks several uploads at once and queues only their benchmarks
on the device, so a burst of uploads before a deadline waits for the device's seconds,
not for each whole task. The lock is a ``flock`` on a file named after the device's
pool (:func:`~mai_ops.devices.pools.pool_name`): a ``litert`` device measures on this
host's CPU and a phone is plugged into one host, so a host-wide lock is the device's.
Scoring holds the device's Airflow pool as well; both take this lock, so a validation
benchmark never overlaps a final one. A process that dies releases its lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path

from mai_ops.challenge.config import Device
from mai_ops.devices.pools import pool_name

log = logging.getLogger(__name__)


def lock_dir() -> Path:
    """``MAI_OPS_DEVICE_LOCKS``, else a folder in the system's temporary directory."""
    configured = os.environ.get("MAI_OPS_DEVICE_LOCKS")
    folder = Path(configured) if configured else Path(tempfile.gettempdir()) / "mai-ops-devices"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


@contextmanager
def device_lock(device: Device) -> Generator[float]:
    """Hold ``device`` for one benchmark; yields the seconds spent waiting for it."""
    name = pool_name(device)
    with open(lock_dir() / f"{name}.lock", "a") as handle:
        started = time.monotonic()
        fcntl.flock(handle, fcntl.LOCK_EX)
        waited = time.monotonic() - started
        if waited >= 1:
            log.info("waited %.1f s for device %s (%s)", waited, device.name, name)
        try:
            yield waited
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
