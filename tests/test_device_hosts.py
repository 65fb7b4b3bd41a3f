"""Device hosts as queues: a device's benchmarks go to the workers of the machine it is on.

The DAGs are built from a copy of mai2021 whose depth device declares a host; the
scoring benchmark and the validation of that track's uploads carry the host's queue,
everything else stays on Airflow's default queue. The Celery stack test runs them.
"""

from __future__ import annotations

import pytest
import yaml

from mai_ops.challenge.config import load_challenge
from mai_ops.devices.pools import DEFAULT_QUEUE, batches_by_queue, challenge_queues

from .conftest import MAI2021, PROJECT

HOST = "phone-lab.example"
QUEUE = "mai_host_phone-lab.example"


def with_host(folder, track_id: str = "depth", host: str = HOST):
    """mai2021 with the device of ``track_id`` on ``host``, written into ``folder``."""
    raw = yaml.safe_load(MAI2021.read_text())
    device = next(t["device"] for t in raw["tracks"] if t["id"] == track_id)
    for entry in raw["devices"]:
        if entry["name"] == device:
            entry["host"] = host
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mai2021.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_uploads_are_routed_by_their_tracks_device(tmp_path):
    challenge = load_challenge(with_host(tmp_path))
    assert challenge_queues(challenge) == {HOST: QUEUE}
    batches = [
        ["depth/validation/aurora/a.zip", "depth/validation/aurora/b.zip"],
        ["learned_isp/validation/aurora/a.zip"],
        ["depth/final/borealis/final.zip"],
        ["nosuchtrack/validation/aurora/x.zip"],  # refused as misplaced, by any worker
    ]
    assert batches_by_queue(challenge, batches) == {
        DEFAULT_QUEUE: [batches[1], batches[3]],
        QUEUE: [batches[0], batches[2]],
    }
    assert batches_by_queue(load_challenge(MAI2021), batches) == {DEFAULT_QUEUE: batches}


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    from airflow.dag_processing.dagbag import DagBag

    folder = tmp_path_factory.mktemp("hosts")
    with_host(folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MAI_OPS_CHALLENGES_DIR", str(folder))
        bag = DagBag(dag_folder=str(PROJECT / "dags"))
    assert bag.import_errors == {}
    return bag


def test_the_benchmark_of_a_device_on_a_host_goes_to_its_queue(dagbag):
    dag = dagbag.dags["mai2021__scoring"]
    queues = {t.task_id: t.queue for t in dag.tasks}
    assert queues["score_depth.benchmark"] == QUEUE
    assert queues["score_learned_isp.benchmark"] == DEFAULT_QUEUE
    # Its pool is still the device's CPU, one slot; the other stages run anywhere.
    assert dag.get_task("score_depth.benchmark").pool == f"mai_device_cpu_{HOST}"
    others = {q for task_id, q in queues.items() if task_id != "score_depth.benchmark"}
    assert others == {DEFAULT_QUEUE}


def test_the_uploads_of_a_track_on_a_host_are_validated_there(dagbag):
    dag = dagbag.dags["mai2021__validation_uploads"]
    name = HOST.replace(".", "_")
    queues = {t.task_id: t.queue for t in dag.tasks}
    assert queues == {
        "sweep_stuck_uploads": DEFAULT_QUEUE,
        "collect_uploads": DEFAULT_QUEUE,
        "uploads_for": DEFAULT_QUEUE,
        "validate_uploads": DEFAULT_QUEUE,
        f"uploads_for_{name}": DEFAULT_QUEUE,
        f"validate_uploads_on_{name}": QUEUE,
        "publish_validation_leaderboard": DEFAULT_QUEUE,
    }
    publish = dag.get_task("publish_validation_leaderboard")
    assert {"validate_uploads", f"validate_uploads_on_{name}"} <= publish.upstream_task_ids
