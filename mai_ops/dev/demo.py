"""``mai-ops demo``: a whole challenge timeline, end to end, on the embedded stack.

Starts the local S3-compatible and SMTP servers, stages the organizers' data,
registers uploads from the teams, then runs every phase DAG of the challenge with
``dag.test()`` at the exact instants of its timeline, in order, as the scheduler
would. It then clears and re-runs one phase to show that nothing is sent twice,
checks what landed in the buckets and the outbox, and exits non-zero if anything
failed.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

from mai_ops import PROJECT_ROOT
from mai_ops.challenge.config import Challenge, default_challenges_dir, load_challenge
from mai_ops.challenge.participants import load_teams
from mai_ops.challenge.timeline import DagPhase, dag_id, phase_instants
from mai_ops.dev.approver import Approver
from mai_ops.dev.embedded import (
    LocalS3,
    LocalSMTP,
    connection_env,
    ensure_challenge_buckets,
    read_outbox,
)
from mai_ops.dev.reference_models import build_reference_tflite
from mai_ops.dev.test_data import stage_synthetic_test_data
from mai_ops.devices.pools import import_pools
from mai_ops.infra.layout import FINAL_PHASE, FROZEN, PRELIMINARY_JSON, data_prefix, upload_key

PROJECT = PROJECT_ROOT


@dataclass
class RunResult:
    dag_id: str
    logical_date: dt.datetime | None
    state: str


def airflow_env(home: Path) -> dict[str, str]:
    """Settings for a self-contained Airflow: SQLite metadata DB, the project's DAGs."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        # One worker slot per core is plenty here; the default starts 32 idle workers.
        "AIRFLOW__CORE__PARALLELISM": str(max(4, os.cpu_count() or 1)),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        # The approval step is answered through the REST API, as the UI does, without a login.
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "MAI_OPS_CHALLENGES_DIR": str(default_challenges_dir()),
    }


def migrate_db(env: dict[str, str]) -> None:
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)


def stage_demo_data(s3, challenge: Challenge, challenge_file: Path) -> None:
    """Organizers' data for each release event, and one final upload per registered entry."""
    import numpy as np

    rng = np.random.default_rng(2021)
    for event in ("train_data_release", "test_data_release"):
        for track in challenge.tracks:
            buf = io.BytesIO()
            np.savez_compressed(buf, sample=rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8))
            s3.put_object(
                Bucket=challenge.buckets.organizers,
                Key=f"{data_prefix(event)}{track.id}.npz",
                Body=buf.getvalue(),
            )
    teams = load_teams(challenge, challenge_file)
    models: dict[str, bytes] = {}
    for team in teams:
        # Every team but the last uploads to all its tracks; the last one forgets one,
        # so the receipts show a missing submission as well.
        tracks = team.tracks if team is not teams[-1] else team.tracks[:-1]
        for track_id in tracks:
            if track_id not in models:
                print(f"building a reference model for {track_id}", flush=True)
                models[track_id] = build_reference_tflite(challenge.track(track_id))
            archive = io.BytesIO()
            with zipfile.ZipFile(archive, "w") as zf:
                zf.writestr("model.tflite", models[track_id])
                zf.writestr("readme.txt", f"{team.name}, {track_id}\n")
            s3.put_object(
                Bucket=challenge.buckets.submissions,
                Key=upload_key(track_id, FINAL_PHASE, team.team_id, "submission.zip"),
                Body=archive.getvalue(),
            )
    # The hidden test set of every track with a final upload: scoring runs the models on it.
    stage_synthetic_test_data(s3, challenge, sorted(models))


def schedule_of(challenge: Challenge) -> list[tuple[dt.datetime | None, str]]:
    """Every (instant, DAG) the scheduler would run, in time order.

    DAGs with no date of their own follow what sets them off: the validation uploads
    come after the validation server opens, scoring after the final set is frozen.
    """
    runs = [
        (instant, dag_id(challenge.id, phase))
        for phase, instants in phase_instants(challenge).items()
        for instant in instants
    ]
    runs.sort(key=lambda r: (r[0], r[1]))
    follows = {
        dag_id(challenge.id, DagPhase.VALIDATION_SERVER): DagPhase.VALIDATION_UPLOADS,
        dag_id(challenge.id, DagPhase.FINAL_COLLECTION): DagPhase.SCORING,
    }
    out: list[tuple[dt.datetime | None, str]] = []
    for instant, dag in runs:
        out.append((instant, dag))
        if dag in follows and follows[dag] in phase_instants(challenge):
            out.append((None, dag_id(challenge.id, follows[dag])))
    return out


def rehearsal_copy(
    source: Path, target_dir: Path, today: dt.date | None = None, suffix: str | None = None
) -> Path:
    """The challenge with every fixed date moved by whole days, final deadline tomorrow.

    Uploads made now are judged by the storage server's clock against the deadline:
    on the 2021 dates every one of them would be late. Moving the whole timeline
    keeps its order, its spacing and its 5 pm local times. With ``suffix`` the copy
    is a challenge of its own (id, buckets and queue renamed), so it can run next to
    the real file. A file without a dated ``final_deadline`` raises ValueError.
    """
    import yaml

    raw = yaml.safe_load(source.read_text())
    tz = ZoneInfo(raw.get("timezone", "America/Los_Angeles"))
    today = today or dt.datetime.now(tz).date()
    deadline = next(
        (_fixed(e["date"]) for e in raw.get("timeline") or [] if e.get("name") == "final_deadline"),
        None,
    )
    if deadline is None:
        raise ValueError(f"{source.name}: no fixed final_deadline date to rehearse against")
    shift = today + dt.timedelta(days=1) - deadline
    for event in raw["timeline"]:
        if (date := _fixed(event["date"])) is not None:
            event["date"] = (date + shift).isoformat()
    participants = raw.get("participants")
    if participants and participants.get("source") == "file":
        participants["path"] = str((source.parent / participants["path"]).resolve())
    raw["title"] = f"{raw['title']} (rehearsal, dates moved by {shift.days} days)"
    name = source.name
    if suffix:
        raw["id"] = f"{raw['id']}_{suffix}"
        raw["buckets"] = {k: f"{v}-{suffix}" for k, v in (raw.get("buckets") or {}).items()}
        if raw.get("uploads_queue"):
            raw["uploads_queue"] = f"{raw['uploads_queue']}-{suffix}"
        name = f"{source.stem}_{suffix}{source.suffix}"
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / name
    target.write_text(yaml.safe_dump(raw, sort_keys=False))
    return target


def _fixed(value) -> dt.date | None:
    """A date written in full (YAML date or quoted ISO text); None while not fixed."""
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        return None


def stage_validation_uploads(s3, challenge: Challenge) -> None:
    """A good upload, a model of the wrong shape, and an archive that escapes its folder."""
    good = build_reference_tflite(challenge.track("learned_isp"))
    uploads = {
        "learned_isp/validation/aurora/v1.zip": {"model.tflite": good},
        "depth/validation/borealis/v1.zip": {"model.tflite": good},
        "learned_isp/validation/cobalt/v1.zip": {"../../escape.tflite": good},
    }
    for key, members in uploads.items():
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
        s3.put_object(Bucket=challenge.buckets.submissions, Key=key, Body=archive.getvalue())


def run_timeline(challenge_id: str = "mai2021", workdir: Path | None = None) -> int:
    workdir = (workdir or PROJECT / "var" / "demo").resolve()
    # A whole timeline from scratch: a fresh metadata DB and an empty outbox each time.
    shutil.rmtree(workdir, ignore_errors=True)
    source = PROJECT / "include" / "challenges" / f"{challenge_id}.yaml"
    challenge_file = rehearsal_copy(source, workdir / "challenges")
    os.environ["MAI_OPS_CHALLENGES_DIR"] = str(challenge_file.parent)
    challenge = load_challenge(challenge_file)
    print(f"{challenge.title}: final deadline {challenge.event('final_deadline').date.text()}")
    s3_server = LocalS3().start()
    smtp = LocalSMTP(workdir / "outbox")
    smtp.start()
    try:
        env = {**airflow_env(workdir / "airflow")}
        env.update(connection_env(s3_server.endpoint_url, smtp.host, smtp.port))
        os.environ.update(env)
        print(f"embedded stack: S3 {s3_server.endpoint_url}, SMTP {smtp.host}:{smtp.port}")
        print(f"outbox: {smtp.folder}")
        migrate_db({**os.environ})
        import_pools({**os.environ}, [challenge])

        s3 = s3_server.client()
        ensure_challenge_buckets(s3, challenge.buckets)
        stage_demo_data(s3, challenge, challenge_file)

        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(PROJECT / "dags"))
        if bag.import_errors:
            for path, err in bag.import_errors.items():
                print(f"import error in {path}:\n{err}", file=sys.stderr)
            return 1

        results: list[RunResult] = []
        for instant, dag in schedule_of(challenge):
            if dag == dag_id(challenge.id, DagPhase.VALIDATION_UPLOADS):
                stage_validation_uploads(s3, challenge)
            # The rehearsal's deadline is still to come: its freeze is an early one, on purpose.
            early = dag == dag_id(challenge.id, DagPhase.FINAL_COLLECTION)
            conf = {"early_freeze": True} if early else None
            if dag == dag_id(challenge.id, DagPhase.PRELIMINARY_RESULTS):
                # The organizer approves the results through the REST API, as in the UI.
                with Approver(dag) as organizer:
                    results.append(_run(bag, dag, instant, conf=conf))
                print(f"        approved through the REST API: {len(organizer.answered)} step(s)")
            else:
                results.append(_run(bag, dag, instant, conf=conf))

        # An organizer clears the train release: same files, no second email.
        before = len(read_outbox(smtp.folder))
        release = dag_id(challenge.id, DagPhase.RELEASE_DATA)
        first = phase_instants(challenge)[DagPhase.RELEASE_DATA][0]
        results.append(_run(bag, release, first, label="re-run"))
        duplicates = len(read_outbox(smtp.folder)) - before

        boards = write_demo_leaderboards(s3, challenge, workdir / "leaderboard")
        code = _report(challenge, s3, smtp.folder, results, duplicates)
        for board in boards:
            print(f"leaderboard: {board}")
        return code
    finally:
        smtp.stop()
        s3_server.stop()


def write_demo_leaderboards(s3, challenge: Challenge, folder: Path) -> list[Path]:
    """The leaderboards as files under ``folder``: the tree the public bucket holds.

    The final one from the published preliminary results (when they were published),
    at ``folder/index.html`` and ``folder/<track>/...``; the validation one, published
    here as well (the demo's validation uploads are scored by then), at
    ``folder/validation/``. Returns the index pages written.
    """
    from mai_ops.infra.storage import get_json, object_exists
    from mai_ops.publishing.leaderboard import render_leaderboard, write_leaderboard
    from mai_ops.publishing.validation_board import publish_validation_leaderboard

    pages = []
    if object_exists(s3, challenge.buckets.public, PRELIMINARY_JSON):
        table = get_json(s3, challenge.buckets.public, PRELIMINARY_JSON)
        write_leaderboard(render_leaderboard(table, challenge), folder)
        pages.append(folder / "index.html")
    validation = publish_validation_leaderboard(s3, challenge)
    write_leaderboard(render_leaderboard(validation, challenge), folder / "validation")
    pages.append(folder / "validation" / "index.html")
    return pages


def _run(
    bag, dag: str, instant: dt.datetime | None, label: str = "run", conf: dict | None = None
) -> RunResult:
    when = instant.strftime("%Y-%m-%d %H:%M UTC") if instant else "on its trigger (an asset)"
    print(f"[{label}] {dag} at {when}", flush=True)
    kwargs = {"logical_date": instant} if instant else {}
    if conf:
        kwargs["run_conf"] = conf
    dag_run = bag.get_dag(dag).test(**kwargs)
    state = str(getattr(dag_run, "state", "unknown"))
    print(f"        -> {state}", flush=True)
    return RunResult(dag, instant, state)


def _report(
    challenge: Challenge, s3, outbox: Path, results: list[RunResult], duplicates: int
) -> int:
    from mai_ops.infra.storage import list_objects

    failed = [r for r in results if not r.state.endswith("success")]
    mails = read_outbox(outbox)
    public = [o["Key"] for o in list_objects(s3, challenge.buckets.public)]
    frozen = [o["Key"] for o in list_objects(s3, challenge.buckets.results, FROZEN)]
    print("\n== summary ==")
    print(f"DAG runs: {len(results)}, failed: {len(failed)}")
    for r in failed:
        print(f"  FAILED {r.dag_id} at {r.logical_date}: {r.state}")
    print(f"emails in the outbox: {len(mails)} (duplicates after the re-run: {duplicates})")
    by_subject: dict[str, int] = {}
    for m in mails:
        by_subject[m["Subject"]] = by_subject.get(m["Subject"], 0) + 1
    for subject, count in by_subject.items():
        print(f"  {count} x {subject}")
    print(f"public bucket objects: {len(public)}; frozen objects: {len(frozen)}")
    from mai_ops.infra.storage import get_json

    published = PRELIMINARY_JSON in public
    table = get_json(s3, challenge.buckets.public, PRELIMINARY_JSON) if published else None
    print("preliminary results (runtime = median on the track's device):")
    for track_id, ranked in (table or {"tracks": {}})["tracks"].items():
        print(f"  {track_id} ({', '.join(ranked['metrics'])}; score {ranked['formula']})")
        for r in ranked["rows"]:
            place = f"{r['rank']:>3}" if r["rank"] is not None else "  -"
            if r["rank"] is None:
                shown = r["error"] or r["status"]
            else:
                fidelity = ", ".join(f"{m} {r[m]:.4g}" for m in ranked["metrics"])
                shown = f"{fidelity}; {r['runtime_ms']:.2f} ms on {r['device']}; {r['score']:.4g}"
            print(f"   {place} {r['team']:<10} {shown}")
    ok = not failed and duplicates == 0 and mails and PRELIMINARY_JSON in public
    print("demo " + ("finished: every phase ran" if ok else "FAILED"))
    return 0 if ok else 1
