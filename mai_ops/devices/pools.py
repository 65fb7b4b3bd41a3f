"""The device farm's Airflow pools: one per physical device, and the validation pool.

Every final scoring benchmark runs in its device's pool and measures behind the
device's lock, so one device never runs two benchmarks at once (they would disturb
each other's timing) while different devices run in parallel. A phone's pool has one
slot; a CPU's has the one measuring and two more that get ready meanwhile
(:func:`device_slots`). The validation server's tasks run in ``mai_validation``
instead: a few uploads are checked at once and only their benchmarks queue for the
device, behind its lock (:mod:`mai_ops.devices.lock`).

A device pool stands for the hardware, not for a name in a config: every ``litert``
device measures on the worker's own CPU, so they all share one pool (one per host when
they declare their ``host``), and an Android phone is its ``serial``, whatever names
point at it.

A device that declares its ``host`` (the machine the phone is plugged into) has its
benchmarks sent to that host's Celery queue (:func:`device_queue`), which only the
workers of that machine consume; with the LocalExecutor the queue is ignored.

The pools are created by the project (``make up``, the demo, the compose init) from the
challenge files, never by hand.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from mai_ops.challenge.config import Challenge, Device

LOCAL_CPU_POOL = "mai_device_local_cpu"
PHONE_POOL_PREFIX = "mai_device_adb_"
HOST_CPU_POOL_PREFIX = "mai_device_cpu_"
# Uploads the validation server checks at once, across challenges, and scoring's
# checks and fidelity runs. A task spends as long starting and talking to storage as
# its child computes, so two per core of a two-core worker keep both cores busy
# (bench/final_phase_overhead.py). On a larger worker, raise the slots (Admin > Pools).
VALIDATION_POOL = "mai_validation"
VALIDATION_SLOTS = 4
# Airflow's own queue (``[operators] default_queue``): every worker without a device.
DEFAULT_QUEUE = "default"


def pool_name(device: Device) -> str:
    """The pool of the hardware ``device`` measures on."""
    if device.backend == "adb":
        return PHONE_POOL_PREFIX + re.sub(r"[^A-Za-z0-9_.-]", "_", device.serial or device.name)
    if device.host:  # that host's CPU, not the one of whichever worker took the task
        return HOST_CPU_POOL_PREFIX + device.host
    return LOCAL_CPU_POOL


def device_queue(host: str | None) -> str | None:
    """The Celery queue of the workers on ``host``; None: the default queue, any worker.

    The prefix keeps a host named like Airflow's own queue (``default``) apart from it.
    Workers on that machine consume it: ``airflow celery worker -q <queue>``.
    """
    return f"mai_host_{host}" if host else None


def device_queues(challenges: Iterable[Challenge]) -> dict[str, str]:
    """{host: queue} of every host a device declares."""
    hosts = {d.host for c in challenges for d in c.devices if d.host}
    return {host: device_queue(host) for host in sorted(hosts)}


def challenge_queues(challenge: Challenge) -> dict[str, str]:
    """{host: queue} of the hosts ``challenge``'s tracks benchmark on."""
    hosts = {challenge.device(t.device).host for t in challenge.tracks}
    return {host: device_queue(host) for host in sorted(h for h in hosts if h)}


def batches_by_queue(challenge: Challenge, batches: list[list[str]]) -> dict[str, list[list[str]]]:
    """The validation server's batches, by the queue of the host their track's device is on.

    A batch is one owner's uploads (``<track>/<phase>/<team>``), so one track, one
    device. Batches of a device without a host, or of no known track (a misplaced
    upload, refused without a benchmark), go to ``DEFAULT_QUEUE``. Every queue of
    the challenge is a key, empty or not, so the DAG can map over each.
    """
    routed: dict[str, list[list[str]]] = {DEFAULT_QUEUE: []}
    routed |= {queue: [] for queue in challenge_queues(challenge).values()}
    tracks = {t.id: t for t in challenge.tracks}
    for keys in batches:
        track = tracks.get(keys[0].split("/", 1)[0])
        host = challenge.device(track.device).host if track else None
        routed[device_queue(host) or DEFAULT_QUEUE].append(keys)
    return routed


def device_pools(challenges: Iterable[Challenge]) -> dict[str, dict]:
    """Every device's pool: {name: {slots, description}} (:func:`device_slots`)."""
    users: dict[str, list[str]] = {}
    for challenge in challenges:
        for device in challenge.devices:
            users.setdefault(pool_name(device), []).append(f"{challenge.id}/{device.name}")
    return {
        name: {
            "slots": device_slots(name),
            "description": _pool_kind(name) + ": " + ", ".join(sorted(devices)),
            "include_deferred": False,
        }
        for name, devices in users.items()
    }


def device_slots(pool: str) -> int:
    """Scoring benchmarks a device's pool runs at once: a phone 1, a CPU (``litert``) 3.

    A LiteRT benchmark measures for about a second, less than Airflow takes to hand a
    freed slot to the next task and start it on a busy worker. With two more slots the
    next benchmarks start meanwhile, fetch their models and wait at the device's lock
    (:mod:`mai_ops.devices.lock`, on the machine that measures), which still lets one
    measure at a time, so the device never idles between two (at N = 100 the scoring
    run took 355 s with one slot, 338 s with two, 182 s with three and the other pool
    and priority changes: bench/final_phase_overhead.py). A phone measures for a minute or more: the
    hand-over is small beside it, and a task waiting at the lock would spend its own
    timeout there, so one slot.
    """
    return 1 if pool.startswith(PHONE_POOL_PREFIX) else 3


def _pool_kind(name: str) -> str:
    if name == LOCAL_CPU_POOL:
        return "the worker's CPU (litert)"
    if name.startswith(HOST_CPU_POOL_PREFIX):
        return f"the CPU of {name.removeprefix(HOST_CPU_POOL_PREFIX)} (litert)"
    return "phone"


def airflow_pools(challenges: Iterable[Challenge]) -> dict[str, dict]:
    """The pools the challenges need, as ``airflow pools import`` reads them.

    The device pools, and the validation pool when there is any device.
    """
    devices = device_pools(challenges)
    if not devices:
        return {}
    validation = {
        "slots": VALIDATION_SLOTS,
        "description": "validation uploads checked at once (benchmarks queue per device)",
        "include_deferred": False,
    }
    return {VALIDATION_POOL: validation} | devices


def pools_json(challenges: Iterable[Challenge]) -> str:
    return json.dumps(airflow_pools(challenges), indent=2, sort_keys=True)


def valid_challenges(files) -> list[Challenge]:
    from mai_ops.challenge.config import read_challenge

    out = []
    for path in files:
        challenge, problems = read_challenge(path)
        if challenge is not None and not any(p.severity == "error" for p in problems):
            out.append(challenge)
    return out


def import_pools(env: dict[str, str], challenges: Iterable[Challenge]) -> dict[str, dict]:
    """Create or update the pools in the Airflow metadata DB (``airflow pools import``).

    The DB must be migrated. Pools of devices no longer declared are left alone: a
    pool may still hold a running benchmark.
    """
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    pools = airflow_pools(challenges)
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
