"""The device farm: one Airflow pool with one slot per physical device.

Every benchmark task runs in its device's pool, so one device never runs two
benchmarks at once (they would disturb each other's timing) while different
devices run in parallel. A pool stands for the hardware, not for a name in a
config: every ``litert`` device measures on the worker's own CPU, so they all share
one pool, and an Android phone is its ``serial``, whatever names point at it. The
pools are created by the project (``make up``, the demo, the compose init) from the
challenge files, never by hand.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from mai_ops.challenge.config import Challenge, Device

LOCAL_CPU_POOL = "mai_device_local_cpu"


def pool_name(device: Device) -> str:
    """The pool of the hardware ``device`` measures on."""
    if device.backend == "adb":
        return "mai_device_adb_" + re.sub(r"[^A-Za-z0-9_.-]", "_", device.serial or device.name)
    return LOCAL_CPU_POOL


def device_pools(challenges: Iterable[Challenge]) -> dict[str, dict]:
    """Pools in the form ``airflow pools import`` reads: {name: {slots, description}}."""
    users: dict[str, list[str]] = {}
    for challenge in challenges:
        for device in challenge.devices:
            users.setdefault(pool_name(device), []).append(f"{challenge.id}/{device.name}")
    return {
        name: {
            "slots": 1,
            "description": ("the worker's CPU (litert)" if name == LOCAL_CPU_POOL else "phone")
            + ": "
            + ", ".join(sorted(devices)),
            "include_deferred": False,
        }
        for name, devices in users.items()
    }


def pools_json(challenges: Iterable[Challenge]) -> str:
    return json.dumps(device_pools(challenges), indent=2, sort_keys=True)


def valid_challenges(files) -> list[Challenge]:
    from mai_ops.challenge.config import read_challenge

    out = []
    for path in files:
        challenge, problems = read_challenge(path)
        if challenge is not None and not any(p.severity == "error" for p in problems):
            out.append(challenge)
    return out


def import_pools(env: dict[str, str], challenges: Iterable[Challenge]) -> dict[str, dict]:
    """Create or update the device pools in the Airflow metadata DB (``airflow pools import``).

    The DB must be migrated. Pools of devices no longer declared are left alone: a
    pool may still hold a running benchmark.
    """
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    pools = device_pools(challenges)
    if not pools:
        return pools
    airflow = Path(sys.executable).with_name("airflow")
    with tempfile.NamedTemporaryFile("w", suffix=".json") as fh:
        fh.write(json.dumps(pools))
        fh.flush()
        subprocess.run(
            [str(airflow), "pools", "import", fh.name],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return pools
