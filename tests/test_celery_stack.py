"""``make up-celery`` for real: CeleryExecutor on PostgreSQL and Redis, device hosts as
queues, a final phase scored as the LocalExecutor scores it, and two fault drills that
lose nothing and send nothing twice.

One ``make up-celery`` stack for the module (``python -m mai_ops.dev.stack --executor
celery``: PostgreSQL, Redis, scheduler, a ``default`` worker and the worker of the
device hosts, with a database and a broker key prefix of its own and free ports), talked
to over HTTP as in ``tests/test_stack_up.py`` (whose helpers it uses).

**The stack.** It serves a copy of the shipped challenge files whose depth device is
plugged into the host ``phone-lab``: every phase DAG is listed without import errors;
an upload of the depth track is validated by the device host's worker (the Celery
result backend records which worker ran it); no process listens beyond loopback; Ctrl-C
stops every process (the module's last test).

**The final phase.** The stack also serves a generated challenge (:mod:`mai_ops.dev.final_phase`):
30 teams over two tracks whose models differ only by a constant, so the fidelity orders
them by construction whatever the measured runtimes. Track ``denoise`` measures on the
``litert`` device ``cpu`` (no host: the ``default`` queue), track ``enhance`` on
``lab_cpu``, declared on host ``lab`` (queue ``mai_host_lab``). Runs go through the real
scheduler, triggered and read through the REST API.

The final phase runs once for the module, as on the day: the final collection freezes
the set (triggered by hand for its event), its asset starts scoring, and the scheduler
is killed while scoring runs (the scheduler drill). The comparison with the
LocalExecutor's leaderboard reads that run; the worker drill re-measures one team.
Costs, measured on two quiet cores: 6 min for the module (356 s); the stack listed its
13 DAGs after 62 s, the final phase (collection, then 123 scoring task instances, the
scheduler killed) took 206 s, the LocalExecutor reference 164 s in parallel, the worker
drill 44 s. Two separate stacks (one for these checks, one for the final phase) and an
in-process reference took about 8 min on the same machine.

**The LocalExecutor reference** is the same inputs (the same challenge file and model
files, so the same archives and sha256) scored on the stack of ``make up``: its
scheduler and LocalExecutor, started in a child process
(``python -m mai_ops.dev.final_phase score --on local``,
:func:`mai_ops.dev.final_phase.score_on_stack`) while the Celery stack comes up. The
leaderboards are compared on what must be equal (rank, team, status, fidelity values,
flags, error, sha256), not on runtimes and scores, which are measured.

**Recovery settings** of this stack (environment), so a lost task is retried within
about half a minute rather than after Airflow's defaults (5 min, then 2 min):

- ``[scheduler] task_instance_heartbeat_timeout = 20`` (default 300 s): a task whose
  worker died stops heart-beating; the scheduler that queued it fails that try and,
  with retries left, puts it up for retry. Celery itself does not bring it back:
  Airflow acknowledges a message late (``task_acks_late``), so Redis would hand the
  unacknowledged message out again only after the visibility timeout (90 min here),
  and the execution API refuses to start a task instance that is already running.
- ``[scheduler] task_instance_heartbeat_timeout_detection_interval = 5`` (default 10 s);
- ``MAI_OPS_RETRY_DELAY_S = 5`` (default 15 s, ``mai_ops.timeouts.retry_delay_s``);
- ``[scheduler] orphaned_tasks_check_interval = 20`` (default 300 s): how often a
  scheduler adopts the task instances of a scheduler that stopped heart-beating for
  ``scheduler_health_check_threshold`` (30 s), so that it watches their heartbeats.

A killed worker or scheduler is started again by the stack after about a second, as
``restart: always`` does in ``docker-compose.yaml`` (``mai_ops.dev.stack.restartable``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from mai_ops.dev import final_phase
from mai_ops.dev.embedded import ensure_challenge_buckets, free_port, s3_client
from mai_ops.dev.stack import REDIS, forget_home, home_tag

from .conftest import PROJECT
from .test_stack_up import (
    PHASES,
    assert_ctrl_c_stops_everything,
    assert_dags_listed,
    assert_nothing_sent_twice,
    form_defaults,
    kill_stack,
    notices,
    session_processes,
    start_stack,
    task_instances,
    trigger_like_the_form,
    upload_and_read_reply,
    wait_for_health,
    wait_for_named_task,
)

TEAMS = 30
CHALLENGE = "drill"
HOST = final_phase.LAB_HOST
HOST_QUEUE = f"mai_host_{HOST}"
TRACKS, DEVICES = final_phase.two_tracks_on_two_devices()
QUEUE_OF_TRACK = {"denoise": "default", "enhance": HOST_QUEUE}
SCORING = f"{CHALLENGE}__scoring"
COLLECTION = f"{CHALLENGE}__final_collection"
RECOVERY_ENV = {
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    "MAI_OPS_RETRY_DELAY_S": "5",
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "20",
}
RUN_TIMEOUT = 1200.0
PHONE_LAB = "phone-lab"
PHONE_LAB_QUEUE = f"mai_host_{PHONE_LAB}"
# The device hosts' worker is named after its first queue, --device-host's.
DEVICE_WORKER = HOST_QUEUE
SHIPPED_DAGS = {
    *(f"mai2021__{phase}" for phase in PHASES),
    "mai2023__reminders",
    "mai2023__workshop_notices",
}
UPLOAD_KEY = "depth/validation/borealis/on-the-phone-lab.zip"
LOOPBACK = {"127.0.0.1", "::1"}


def put_device_on_host(challenges, track_id: str, host: str) -> None:
    """The challenge file's device of ``track_id`` declares ``host``."""
    path = challenges / "mai2021.yaml"
    raw = yaml.safe_load(path.read_text())
    device = next(t["device"] for t in raw["tracks"] if t["id"] == track_id)
    for entry in raw["devices"]:
        if entry["name"] == device:
            entry["host"] = host
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The challenge file, its participants and each track's base model."""
    root = tmp_path_factory.mktemp("celery-scoring")
    path = final_phase.challenge_file(root / "challenges", TEAMS, TRACKS, DEVICES, CHALLENGE)
    started = time.monotonic()
    models = final_phase.build_models(path, root / "models", graded=True)
    print(f"\nbase models built in {time.monotonic() - started:.1f} s")
    return root, path, models


@pytest.fixture(scope="module")
def reference_proc(generated):
    """The LocalExecutor reference, started at once: it runs while the Celery stack comes up."""
    root, path, _ = generated
    out = root / "reference.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mai_ops.dev.final_phase", "score", str(path), str(root / "models")]
        + ["-n", str(TEAMS), "--graded", "--out", str(out), "--on", "local"],
        cwd=PROJECT,
        env={**os.environ, "PYTHONPATH": str(PROJECT)},
        stdout=(root / "reference.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    proc.out, proc.started = out, time.monotonic()
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def reference(reference_proc, generated):
    """The leaderboard of the LocalExecutor run."""
    import json

    from mai_ops.challenge.config import load_challenge

    code = reference_proc.wait(timeout=RUN_TIMEOUT)
    log = reference_proc.out.with_name("reference.log")
    assert code == 0, log.read_text(errors="replace")[-3000:]
    result = json.loads(reference_proc.out.read_text())
    print(f"\nreference (LocalExecutor) scoring run: {result['wall']:.1f} s, {result['state']}")
    return final_phase.leaderboard(result["table"], load_challenge(generated[1]))


@pytest.fixture(scope="module")
def stack(generated, reference_proc):
    root, _, _ = generated
    shutil.copytree(PROJECT / "include" / "participants", root / "participants")
    shutil.copytree(PROJECT / "include" / "challenges", root / "challenges", dirs_exist_ok=True)
    put_device_on_host(root / "challenges", "depth", PHONE_LAB)
    running = start_stack(
        root,
        "stack.log",
        free_port(),
        free_port(),
        executor="celery",
        rehearsal=False,
        options=["--device-host", HOST],
        extra_env=RECOVERY_ENV,
    )
    running.api = final_phase.Api(running.port)
    running.home = root / "airflow"
    try:
        yield running
    finally:
        kill_stack(running)
        forget_home(running.home)


@pytest.fixture(scope="module")
def scored(stack, generated):
    """The final phase through the scheduler, with its scheduler killed in the middle.

    The uploads are staged on the stack; the final collection is triggered by hand for
    its event (``early_freeze``: the deadline is tomorrow), freezes the set, sends the
    receipts and updates the frozen-set asset, which starts the scoring run; once 10 of
    its task instances are done, the scheduler's process tree gets SIGKILL and the stack
    starts it again. One run for the module: the scheduler drill and the comparison
    with the LocalExecutor's leaderboard read the same run.
    """
    from mai_ops.challenge.config import load_challenge

    _, path, models = generated
    challenge = load_challenge(path)
    s3 = s3_client(stack.s3_endpoint)
    stack.api.wait_for_dag(SCORING, 900, lambda: stack.proc.poll() is None)
    stack.api.wait_for_dag(COLLECTION, 300, lambda: stack.proc.poll() is None)
    print(f"\nCelery stack serving {SCORING} after {time.monotonic() - stack.started:.1f} s")
    ensure_challenge_buckets(s3, challenge.buckets)
    final_phase.stage(s3, challenge, TEAMS, models, graded=True)
    for dag_id in (COLLECTION, SCORING):
        stack.api("PATCH", f"/dags/{dag_id}", {"is_paused": False})
    started = time.monotonic()
    conf = {**form_defaults(stack, COLLECTION), "early_freeze": True}
    collection_run = trigger_like_the_form(stack, COLLECTION, conf)["dag_run_id"]
    # Scoring starts when the freeze task updates the asset, while the collection run
    # still sends the receipts: watched from the start, not after the collection.
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:  # the asset-triggered scoring run, partly done
        runs = stack.api.dag_runs(SCORING)
        if runs:
            states = [t["state"] for t in stack.api.task_instances(SCORING, runs[0]["dag_run_id"])]
            if states.count("success") >= 10:
                break
        assert time.monotonic() < deadline, "scoring did not start after the freeze"
        time.sleep(0.5)
    [run] = runs
    scheduler = component(stack, "airflow scheduler")
    killed_at = time.monotonic()
    killed = kill_tree(scheduler)
    print(
        f"killed the scheduler ({killed} processes) with {states.count('success')} of "
        f"{len(states)} task instances done"
    )
    state = stack.api.wait_for_run(SCORING, run["dag_run_id"], RUN_TIMEOUT)
    print(
        f"final phase of {TEAMS} submissions on Celery: {time.monotonic() - started:.1f} s "
        f"(scoring ended {time.monotonic() - killed_at:.1f} s after the kill: {state})"
    )
    collected = stack.api.wait_for_run(COLLECTION, collection_run, RUN_TIMEOUT)
    assert collected == "success", stack.tail()
    return {
        "challenge": challenge,
        "s3": s3,
        "collection_run": collection_run,
        "run": run,
        "state": state,
        "scheduler": scheduler.pid,
        "done_at_kill": states.count("success"),
    }


def component(stack, title: str) -> psutil.Process:
    """The stack's component whose command line contains ``title``."""
    for proc in session_processes(stack.proc.pid):
        try:
            if title in " ".join(proc.cmdline()) and proc.ppid() == stack.proc.pid:
                return proc
        except psutil.Error:
            continue
    stack.fail(f"no component {title!r}")


def records(s3, challenge) -> dict[str, list[str]]:
    """Each team's stored score records (``scores/<track>/<team>/<sha256>/record.json``)."""
    from mai_ops.infra.layout import SCORES
    from mai_ops.infra.storage import list_objects

    found: dict[str, list[str]] = {}
    for obj in list_objects(s3, challenge.buckets.results, SCORES):
        parts = obj["Key"].split("/")
        if parts[-1] == "record.json" and len(parts) == 5:
            found.setdefault(parts[2], []).append(obj["Key"])
    return found


def celery_runs(home: Path, run_id: str) -> list[dict]:
    """What the Celery result backend recorded of one DAG run's tasks: the task instance
    id, worker, queue and status of each Celery task (one per try)."""
    import json

    import psycopg2

    conn = psycopg2.connect(f"postgresql://postgres@127.0.0.1:5432/{home_tag(home)}")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT worker, queue, status, args FROM celery_taskmeta")
            rows = cur.fetchall()
    finally:
        conn.close()
    found = []
    for worker, queue, status, args in rows:
        if args is None:
            continue
        (workload,) = json.loads(bytes(args))  # the task's one argument: the workload's JSON
        ti = json.loads(workload)["ti"]
        if ti["run_id"] == run_id:
            found.append({"ti": ti, "worker": worker, "queue": queue, "status": status})
    return found


def assert_every_team_scored_once(scored) -> None:
    found = records(scored["s3"], scored["challenge"])
    assert sorted(found) == [final_phase.team_id(i) for i in range(TEAMS)]
    assert {team: len(keys) for team, keys in found.items() if len(keys) != 1} == {}


def assert_leaderboard_as_the_reference(scored, reference) -> None:
    table = final_phase.ranking(scored["s3"], scored["challenge"])
    assert table["validated"] is True
    got = final_phase.leaderboard(table, scored["challenge"])
    for track, rows in reference.items():
        differ = [(a, b) for a, b in zip(got[track], rows, strict=False) if a != b]
        assert (len(got[track]), differ) == (len(rows), []), track
    order = final_phase.expected_order(TEAMS, TRACKS)
    assert {track: [row[1] for row in rows] for track, rows in got.items()} == order
    assert {track: [row[0] for row in rows] for track, rows in got.items()} == {
        track: list(range(1, len(teams) + 1)) for track, teams in order.items()
    }


def test_every_phase_dag_is_listed_without_import_errors(stack, generated):
    from mai_ops.challenge.config import load_challenge
    from mai_ops.challenge.timeline import dag_id, phase_instants

    health = wait_for_health(stack)
    print(f"\napi-server answered after {time.monotonic() - stack.started:.1f} s")
    assert {c: health[c]["status"] for c in ("metadatabase", "scheduler", "triggerer")} == {
        "metadatabase": "healthy",
        "scheduler": "healthy",
        "triggerer": "healthy",
    }
    generated_dags = {dag_id(CHALLENGE, p) for p in phase_instants(load_challenge(generated[1]))}
    assert_dags_listed(stack, SHIPPED_DAGS | generated_dags)


def test_an_upload_of_a_track_on_a_device_host_is_validated_by_its_worker(stack):
    """S3 notification -> queue -> validation DAG -> the device host's Celery worker.

    mai2021's validation phase closed in 2021: the answer is a refusal as ``late``, so
    the whole path runs without a model to build.
    """
    wait_for_health(stack)
    msg = upload_and_read_reply(stack, "mai2021-submissions", UPLOAD_KEY, "mai2021")
    assert "[late]" in msg.get_body(preferencelist=("plain",)).get_content()
    dag_id = "mai2021__validation_uploads"
    # The answer leaves inside the task: wait for the task itself to finish.
    [ti] = [
        t
        for t in wait_for_named_task(stack, dag_id, "borealis/on-the-phone-lab.zip")
        if t["task_id"] == f"validate_uploads_on_{PHONE_LAB}"
    ]
    assert ti["queue"] == PHONE_LAB_QUEUE, ti
    assert ti["state"] in ("success", "skipped"), ti
    runs = celery_runs(stack.home, ti["dag_run_id"])
    ran = [(r["worker"].split("@")[0], r["queue"]) for r in runs if r["ti"]["id"] == ti["id"]]
    assert ran == [(DEVICE_WORKER, PHONE_LAB_QUEUE)]  # the worker of the device hosts
    # The run's other tasks went to the default queue's worker.
    [collect] = task_instances(stack, dag_id, ti["dag_run_id"], task_id="collect_uploads")
    assert [r["worker"].split("@")[0] for r in runs if r["ti"]["id"] == collect["id"]] == [
        "default"
    ]


def test_the_broker_keys_carry_the_stacks_prefix(stack):
    import redis

    wait_for_health(stack)
    keys = redis.Redis.from_url(REDIS).keys(f"{home_tag(stack.home)}:*")
    assert keys, "no broker key under the stack's prefix"


def test_final_phase_on_celery_equals_the_local_executors(stack, scored, reference):
    """30 submissions, two tracks, two devices: the same leaderboard as the LocalExecutor's (in
    spite of the scheduler's restart), and every benchmark measured by the worker of its
    device's queue."""
    assert scored["state"] == "success", stack.tail()
    assert_every_team_scored_once(scored)
    assert_leaderboard_as_the_reference(scored, reference)

    benchmarks = [
        ti
        for ti in stack.api.task_instances(SCORING, scored["run"]["dag_run_id"])
        if ti["task_id"].endswith(".benchmark")
    ]
    assert len(benchmarks) == TEAMS
    by_ti = {}
    for entry in celery_runs(stack.home, scored["run"]["dag_run_id"]):
        by_ti.setdefault(entry["ti"]["id"], []).append(entry)
    for ti in benchmarks:
        track = ti["task_id"].split(".")[0].removeprefix("score_")
        queue = QUEUE_OF_TRACK[track]
        assert ti["queue"] == queue, ti
        ran = [(r["worker"].split("@")[0], r["queue"], r["status"]) for r in by_ti[ti["id"]]]
        assert ran == [(queue, queue, "SUCCESS")], (ti["rendered_map_index"], ran)


def worker_process(stack, name: str) -> psutil.Process:
    """The main process of the Celery worker ``name`` (its pool are its children).

    Celery retitles it: ``[celeryd: ...] (celery worker --queues <name>[,<more>] ...)``:
    a worker is named after its first queue.
    """
    found = re.compile(rf"celery worker --queues {re.escape(name)}[ ,]")
    for proc in session_processes(stack.proc.pid):
        try:
            if found.search(" ".join(proc.cmdline())) and proc.ppid() == stack.proc.pid:
                return proc
        except psutil.Error:
            continue
    stack.fail(f"no Celery worker {name!r}")


def kill_tree(root: psutil.Process) -> int:
    """SIGKILL to ``root`` and every descendant at once (task processes, sandboxed children)."""
    tree = [root, *root.children(recursive=True)]
    for proc in tree:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    return len(tree)


def test_a_worker_killed_mid_benchmark_is_retried_and_scored_once(stack, scored, reference):
    """SIGKILL to the device worker's process tree while it measures a benchmark: the
    scheduler fails the try for its missing heartbeat, the retry runs on the device
    host's worker once the stack has started it again, and the team has one record."""
    assert scored["state"] == "success"
    sent_before = assert_nothing_sent_twice(stack)
    team = final_phase.expected_order(TEAMS, TRACKS)["enhance"][0]
    conf = {**final_phase.CONF, "track": "enhance", "team": team, "remeasure": True}
    run_id = stack.api.trigger(SCORING, conf)
    worker = worker_process(stack, DEVICE_WORKER)
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:  # the benchmark's sandboxed LiteRT child is measuring
        tree = [worker, *worker.children(recursive=True)]
        if any("mai_ops.devices.litert_child" in " ".join(_cmd(p)) for p in tree):
            break
        assert time.monotonic() < deadline, "no benchmark started on the device worker"
        time.sleep(0.05)
    killed_at = time.monotonic()
    print(f"\nkilled {kill_tree(worker)} processes of the {HOST_QUEUE} worker mid-benchmark")

    state = stack.api.wait_for_run(SCORING, run_id, RUN_TIMEOUT)
    print(f"run finished {time.monotonic() - killed_at:.1f} s after the kill: {state}")
    assert state == "success", stack.tail()
    assert worker_process(stack, DEVICE_WORKER).pid != worker.pid  # started again
    [bench] = [
        ti
        for ti in stack.api.task_instances(SCORING, run_id)
        if ti["task_id"] == "score_enhance.benchmark"
    ]
    assert (bench["state"], bench["try_number"]) == ("success", 2), bench
    # Both tries went to the device host's queue; the first died with its worker.
    tries = [r for r in celery_runs(stack.home, run_id) if r["ti"]["task_id"] == bench["task_id"]]
    assert (
        sorted((r["queue"], r["worker"].split("@")[0]) for r in tries)
        == [(HOST_QUEUE, HOST_QUEUE)] * 2
    ), tries
    assert sorted(r["status"] for r in tries) == ["STARTED", "SUCCESS"], tries
    assert_every_team_scored_once(scored)
    assert_leaderboard_as_the_reference(scored, reference)
    assert assert_nothing_sent_twice(stack) == sent_before  # scoring emails nobody


def _cmd(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def test_a_scheduler_killed_mid_phase_lets_the_run_finish_once(stack, scored, reference):
    """The scheduler was killed while scoring ran (see ``scored``): the stack started it
    again, the run ended green, and there is one collection run for the event, one
    scoring run for its frozen set, one receipt per team, every team scored once."""
    assert scored["state"] == "success", stack.tail()
    total = len(stack.api.task_instances(SCORING, scored["run"]["dag_run_id"]))
    assert scored["done_at_kill"] < total / 2, "the scheduler was not killed mid-phase"
    assert component(stack, "airflow scheduler").pid != scored["scheduler"]  # started again
    assert [r["dag_run_id"] for r in stack.api.dag_runs(COLLECTION)] == [scored["collection_run"]]
    scoring_runs = [r for r in stack.api.dag_runs(SCORING) if r["run_type"] == "asset_triggered"]
    assert [r["dag_run_id"] for r in scoring_runs] == [scored["run"]["dag_run_id"]]
    receipts = notices(stack, f"{CHALLENGE}/final_receipt")
    assert len(receipts) == TEAMS
    assert_nothing_sent_twice(stack)
    assert_every_team_scored_once(scored)
    assert_leaderboard_as_the_reference(scored, reference)


def test_nothing_listens_beyond_loopback(stack):
    wait_for_health(stack)
    listening, pss = [], 0
    for proc in session_processes(stack.proc.pid):
        try:
            pss += proc.memory_full_info().pss  # shared pages counted once
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    listening.append((conn.laddr.ip, conn.laddr.port, " ".join(proc.cmdline()[:4])))
        except psutil.Error:  # gone meanwhile
            continue
    print(f"\n{len(session_processes(stack.proc.pid))} processes, {pss / 2**20:.0f} MiB (PSS)")
    print(json.dumps(sorted(listening), indent=1))
    assert listening, "the stack listens nowhere: the api-server is missing"
    assert [entry for entry in listening if entry[0] not in LOOPBACK] == []


def test_ctrl_c_stops_everything(stack):
    wait_for_health(stack)  # also when this test runs alone
    took = assert_ctrl_c_stops_everything(stack)
    print(f"\nstopped in {took:.1f} s")
