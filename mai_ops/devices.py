"""The device farm: one Airflow pool with one slot per device.

Every benchmark task runs in its device's pool, so one device never runs two
benchmarks at once (they would disturb each other's timing) while different
devices run in parallel. The pools are created by the project (``make up``, the
demo, the compose init) from the challenge files, never by hand.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from mai_ops.config import Challenge, Device


def pool_name(device: Device | str) -> str:
    name = device if isinstance(device, str) else device.name
    return f"mai_device_{name}"


def device_pools(challenges: Iterable[Challenge]) -> dict[str, dict]:
    """Pools in the form ``airflow pools import`` reads: {name: {slots, description}}."""
    pools: dict[str, dict] = {}
    for challenge in challenges:
        for device in challenge.devices:
            where = device.serial if device.backend == "adb" else "worker CPU"
            pools[pool_name(device)] = {
                "slots": 1,
                "description": f"{device.title or device.name} ({device.backend}, {where})",
                "include_deferred": False,
            }
    return pools


def pools_json(challenges: Iterable[Challenge]) -> str:
    return json.dumps(device_pools(challenges), indent=2, sort_keys=True)


def valid_challenges(files) -> list[Challenge]:
    from mai_ops.config import read_challenge

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
