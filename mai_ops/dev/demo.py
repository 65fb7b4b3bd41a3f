"""``mai-ops demo``: a whole challenge timeline, end to end, on the embedded stack.

Starts the local S3-compatible and SMTP servers, builds the demo's teams and data
(:mod:`mai_ops.dev.demo_teams`, :mod:`mai_ops.dev.demo_data`: real photographs and
rendered depth scenes, real TFLite and Keras models whose ranking is known by
construction) in a child process, stages the organizers' data and the teams' uploads,
then runs every phase DAG of the challenge with ``dag.test()`` at the exact instants of
its timeline, in order, as the scheduler would. It then clears and re-runs one phase to
show that nothing is sent twice, writes the leaderboards to a folder, prints what each
team got, and exits non-zero if anything failed or ranked otherwise than constructed.

Uploads are judged by the storage server's clock, so the demo runs a rehearsal copy of
the challenge (:func:`rehearsal_copy`) with every date moved by whole days and the final
deadline a minute or so after the teams' uploads: the deadline passes during the demo,
one team uploads after it (refused as late), and the final set is frozen at the deadline
as scheduled.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from mai_ops import PROJECT_ROOT
from mai_ops.challenge.config import Challenge, default_challenges_dir, load_challenge
from mai_ops.challenge.timeline import DagPhase, dag_id, events_at, phase_instants
from mai_ops.dev.approver import Approver
from mai_ops.dev.embedded import (
    LocalS3,
    LocalSMTP,
    connection_env,
    ensure_challenge_buckets,
    read_outbox,
)
from mai_ops.devices.pools import import_pools
from mai_ops.infra.layout import (
    FROZEN_MANIFEST,
    PRELIMINARY_JSON,
    RANKING,
    UPLOAD_RECORDS,
    release_manifest_key,
)

PROJECT = PROJECT_ROOT
# The final deadline is the first whole minute at least this long after the last upload
# made in time: the deadline then passes while the first phases run.
DEADLINE_MARGIN_S = 15
ORGANIZER_ALERT = "organizer alert"
AWS_SESSION_FACTORY = "mai_ops_airflow.aws_session.SharedLoaderSessionFactory"


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
        # The api-server, scheduler and dag-processor write to one SQLite file; a writer
        # waits up to 30 s for another's lock, not SQLite's 5 s, so a run triggered from
        # the UI at a busy moment (just after a restart) is not answered with HTTP 500.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}?timeout=30",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        # Task slots: 8, or two per core on a larger machine (the default starts 32 idle
        # workers). A task waits for storage, the API server or the device's lock about
        # as long as it computes, and the pools bound the heavy work; with one slot per
        # core the cores idled (bench/final_phase_overhead.py).
        "AIRFLOW__CORE__PARALLELISM": str(max(8, 2 * (os.cpu_count() or 1))),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        # The approval step is answered through the REST API, as the UI does, without a login.
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "MAI_OPS_CHALLENGES_DIR": str(default_challenges_dir()),
        # S3 clients share one decoded botocore data loader (mai_ops_airflow/aws_session.py).
        "AIRFLOW__AWS__SESSION_FACTORY": AWS_SESSION_FACTORY,
    }


def migrate_db(env: dict[str, str]) -> None:
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)


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
    source: Path,
    target_dir: Path,
    today: dt.date | None = None,
    suffix: str | None = None,
    *,
    deadline: dt.datetime | None = None,
    participants: Path | None = None,
    events: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """The challenge with every fixed date moved by whole days, final deadline tomorrow.

    Uploads made now are judged by the storage server's clock against the deadline:
    on the 2021 dates every one of them would be late. Moving the whole timeline
    keeps its order, its spacing and its 5 pm local times. With ``suffix`` the copy
    is a challenge of its own (id, buckets and queue renamed), so it can run next to
    the real file. A file without a dated ``final_deadline`` raises ValueError.

    ``deadline`` (a whole minute, aware) puts the final deadline at that exact instant
    instead: the timeline moves by whole days to its local date and the deadline takes
    its local time of day. ``participants`` is another participants file (CSV) for the
    copy; ``events`` sets fields of events by name (``{"test_data_release":
    {"test_inputs": True}}``).
    """
    import yaml

    raw = yaml.safe_load(source.read_text())
    tz = ZoneInfo(raw.get("timezone", "America/Los_Angeles"))
    today = today or dt.datetime.now(tz).date()
    final = next((e for e in raw.get("timeline") or [] if e.get("name") == "final_deadline"), None)
    if final is None or _fixed(final["date"]) is None:
        raise ValueError(f"{source.name}: no fixed final_deadline date to rehearse against")
    target_day = today + dt.timedelta(days=1)
    if deadline is not None:
        if deadline.tzinfo is None or deadline.second or deadline.microsecond:
            raise ValueError(f"the deadline must be an aware whole minute, not {deadline}")
        local = deadline.astimezone(tz)
        target_day = local.date()
        final["time"] = f"{local:%H:%M}"
    shift = target_day - _fixed(final["date"])
    for event in raw["timeline"]:
        if (date := _fixed(event["date"])) is not None:
            event["date"] = (date + shift).isoformat()
    for name, fields in (events or {}).items():
        event = next((e for e in raw["timeline"] if e.get("name") == name), None)
        if event is None:
            raise ValueError(f"{source.name}: no event {name!r} to change")
        event.update(fields)
    raw_participants = raw.get("participants")
    if participants is not None:
        raw["participants"] = {"source": "file", "path": str(Path(participants).resolve())}
    elif raw_participants and raw_participants.get("source") == "file":
        raw_participants["path"] = str((source.parent / raw_participants["path"]).resolve())
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


def deadline_after(instant: dt.datetime, margin_s: float = DEADLINE_MARGIN_S) -> dt.datetime:
    """The first whole minute (UTC) at least ``margin_s`` seconds after ``instant``."""
    later = instant.astimezone(dt.UTC) + dt.timedelta(seconds=margin_s)
    minute = later.replace(second=0, microsecond=0)
    return minute if minute == later else minute + dt.timedelta(minutes=1)


def notice_kind(message) -> str:
    """What an email is, from its ``X-MAI-Notice`` key: ``release``, ``upload``, ...

    The key is ``<challenge>/<kind>/...``; an email without the header is an organizer
    alert (a failed task, results waiting for approval).
    """
    key = message.get("X-MAI-Notice")
    if not key:
        return ORGANIZER_ALERT
    parts = str(key).split("/")
    return parts[1] if len(parts) > 1 else str(key)


def zip_folder(folder: Path) -> bytes:
    """The files under ``folder`` as a zip archive, paths relative to it, in name order."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), (2021, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return archive.getvalue()


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


def say(text: str = "") -> None:
    print(text, flush=True)


@dataclass
class Demo:
    """The demo on the embedded stack: ``with Demo(...) as demo: demo.run()``.

    Entering resets ``workdir``, starts the build of the teams' models and data in a
    child process, the S3 and SMTP servers and a fresh Airflow metadata DB; leaving
    stops them and restores the environment. Between the two, after :meth:`run`, the
    servers still answer: ``s3`` (a client), ``outbox`` and ``challenge_file`` are
    what a caller inspects.
    """

    challenge_id: str = "mai2021"
    workdir: Path | None = None
    results: list[RunResult] = field(default_factory=list)
    duplicates: int = 0
    deadline: dt.datetime | None = None
    challenge_file: Path | None = None
    challenge: Challenge | None = None
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir = (self.workdir or PROJECT / "var" / "demo").resolve()
        self.source = PROJECT / "include" / "challenges" / f"{self.challenge_id}.yaml"
        self.build_dir = self.workdir / "build"
        self.outbox = self.workdir / "outbox"
        self._build: subprocess.Popen | None = None
        self._s3_server: LocalS3 | None = None
        self._smtp: LocalSMTP | None = None
        self._env: dict[str, str] | None = None

    # --- the stack -------------------------------------------------------------------

    def __enter__(self) -> Demo:
        self._env = dict(os.environ)
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        from mai_ops.dev.demo_teams import participants_csv

        # A whole timeline from scratch: a fresh metadata DB and an empty outbox each time.
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        self.started = time.monotonic()
        source = load_challenge(self.source)  # the buckets and tracks; dates come later
        self.participants = self.workdir / "challenges" / f"{source.id}_participants.csv"
        self.participants.parent.mkdir(parents=True)
        self.participants.write_text(participants_csv())
        say(f"{source.title}: the demo (work folder {self._shown(self.workdir)})")
        say("building the teams' models and the data sets (TensorFlow, in a child process)")
        log = open(self.workdir / "build.log", "wb")  # noqa: SIM115 - closed when it ends
        self._build = subprocess.Popen(
            [sys.executable, "-m", "mai_ops.dev.demo_teams", str(self.build_dir)],
            cwd=PROJECT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        log.close()
        self._s3_server = LocalS3().start()
        self._smtp = LocalSMTP(self.outbox).start()
        env = airflow_env(self.workdir / "airflow")
        env.update(connection_env(self._s3_server.endpoint_url, self._smtp.host, self._smtp.port))
        # The API's tokens are signed with a key of the recommended length.
        env["AIRFLOW__API_AUTH__JWT_SECRET"] = secrets.token_urlsafe(64)
        os.environ.update(env)
        smtp = f"{self._smtp.host}:{self._smtp.port}"
        say(f"embedded stack: S3 {self._s3_server.endpoint_url}, SMTP {smtp}")
        migrate_db({**os.environ})
        import_pools({**os.environ}, [source])
        self.s3 = self._s3_server.client()

    def __exit__(self, *exc) -> None:
        if self._build is not None and self._build.poll() is None:
            self._build.kill()
            self._build.wait()
        if self._smtp is not None:
            self._smtp.stop()
        if self._s3_server is not None:
            self._s3_server.stop()
        if self._env is not None:
            os.environ.clear()
            os.environ.update(self._env)

    def _shown(self, path: Path) -> str:
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)

    # --- the timeline ----------------------------------------------------------------

    def run(self) -> int:
        """Stage, run every phase in order, re-run one, write the leaderboards, report."""
        with warnings.catch_warnings():
            # Airflow's in-process API client, at the first run: nothing to act on here.
            warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
            return self._run_timeline()

    def _run_timeline(self) -> int:
        manifest = self._wait_for_build()
        source = load_challenge(self.source)
        self.empty_buckets(source)
        self._stage_data(source)
        track_ids = {t.id for t in source.tracks}
        uploads = [k for k in manifest["uploads"] if k.split("/")[0] in track_ids]
        late = manifest["late"] if manifest["late"] in uploads else None
        in_time = [k for k in uploads if k != late]
        for key in in_time:
            self._upload(source, key)
        say(f"uploaded {len(in_time)} archives in time (validation and final)")
        self.deadline = deadline_after(dt.datetime.now(dt.UTC))
        staged = self._test_sets_staged(source)
        events = {"test_data_release": {"test_inputs": True}} if staged else None
        self.challenge_file = rehearsal_copy(
            self.source,
            self.workdir / "challenges",
            deadline=self.deadline,
            participants=self.participants,
            events=events,
        )
        os.environ["MAI_OPS_CHALLENGES_DIR"] = str(self.challenge_file.parent)
        challenge = self.challenge = load_challenge(self.challenge_file)
        local = self.deadline.astimezone(ZoneInfo(challenge.timezone))
        say(
            f"final deadline: {local:%Y-%m-%d %H:%M %Z} ({self.deadline:%H:%M} UTC), "
            f"{(self.deadline - dt.datetime.now(dt.UTC)).total_seconds():.0f} s from now"
            + (f"; {late} comes after it" if late else "")
        )
        if not staged:
            say("  (test_inputs stays off: not every track has a hidden test set staged)")

        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(PROJECT / "dags"))
        if bag.import_errors:
            for path, err in bag.import_errors.items():
                print(f"import error in {path}:\n{err}", file=sys.stderr)
            return 1

        say("\n== the timeline ==")
        for instant, dag in schedule_of(challenge):
            phase = dag.split("__", 1)[1]
            if phase == DagPhase.FINAL_COLLECTION and late:
                self._late_upload(bag, challenge, late)
            if phase == DagPhase.PRELIMINARY_RESULTS:
                # The organizer approves the results through the REST API, as in the UI.
                with Approver(dag) as organizer:
                    self._run(bag, dag, instant)
                say(f"        approved through the REST API: {len(organizer.answered)} step(s)")
                if organizer.timed_out:
                    say(f"        unanswered for {organizer.timeout_s:.0f} s: the step failed")
                    for error in dict.fromkeys(organizer.errors):  # each distinct one once
                        say(f"        the REST API answered: {error}")
            else:
                self._run(bag, dag, instant)

        # An organizer clears the train release: same files, no second email.
        before = len(read_outbox(self.outbox))
        release = dag_id(challenge.id, DagPhase.RELEASE_DATA)
        first = phase_instants(challenge)[DagPhase.RELEASE_DATA][0]
        self._run(bag, release, first, label="re-run")
        self.duplicates = len(read_outbox(self.outbox)) - before

        boards = write_demo_leaderboards(self.s3, challenge, self.workdir / "leaderboard")
        return self._report(boards)

    def _wait_for_build(self) -> dict:
        code = self._build.wait()
        if code != 0:
            log = (self.workdir / "build.log").read_text(errors="replace")
            raise RuntimeError(f"building the teams' models failed ({code}):\n{log[-3000:]}")
        manifest = json.loads((self.build_dir / "manifest.json").read_text())
        took = time.monotonic() - self.started
        say(f"built in {took:.0f} s; each team's fidelity on the hidden test set:")
        for track_id, metric in manifest["first_metric"].items():
            shown = ", ".join(f"{team} {value:.4g}" for team, value in metric.items())
            say(f"  {track_id}: {shown}")
        return manifest

    def empty_buckets(self, challenge: Challenge) -> None:
        """The challenge's buckets, created and emptied (every version of every object)."""
        from mai_ops.infra.storage import list_versions

        ensure_challenge_buckets(self.s3, challenge.buckets)
        for bucket in challenge.buckets.model_dump().values():
            for entry in list(list_versions(self.s3, bucket)):
                self.s3.delete_object(Bucket=bucket, Key=entry["Key"], VersionId=entry["VersionId"])

    def _stage_data(self, challenge: Challenge) -> None:
        """The organizers' files: the training release, validation and hidden test sets."""
        data = self.build_dir / "data"
        tracks = {t.id for t in challenge.tracks}
        counts: Counter = Counter()
        for path in sorted(p for p in data.rglob("*") if p.is_file()):
            key = path.relative_to(data).as_posix()
            kind, track_id = self._data_kind(key)
            if track_id not in tracks:
                continue
            self.s3.put_object(Bucket=challenge.buckets.organizers, Key=key, Body=path.read_bytes())
            counts[(kind, track_id)] += 1
        for kind in ("train", "validation", "test"):
            shown = [f"{t} {n // 2}" for (k, t), n in sorted(counts.items()) if k == kind]
            say(f"staged {kind} pairs: {', '.join(shown)}")

    @staticmethod
    def _data_kind(key: str) -> tuple[str, str]:
        parts = key.split("/")
        return ("train", parts[2]) if parts[0] == "data" else (parts[0], parts[1])

    def _test_sets_staged(self, challenge: Challenge) -> bool:
        from mai_ops.models.fidelity import ValidationDataError, staged_pairs

        for track in challenge.tracks:
            try:
                if not staged_pairs(self.s3, challenge, track, "test"):
                    return False
            except ValidationDataError:
                return False
        return True

    def _upload(self, challenge: Challenge, key: str) -> None:
        folder = self.build_dir / "uploads" / key.removesuffix(".zip")
        self.s3.put_object(Bucket=challenge.buckets.submissions, Key=key, Body=zip_folder(folder))

    def _late_upload(self, bag, challenge: Challenge, key: str) -> None:
        """Wait for the deadline, upload ``key`` after it, let the validation server answer."""
        wait = (self.deadline - dt.datetime.now(dt.UTC)).total_seconds() + 1
        if wait > 0:
            say(f"        waiting {wait:.0f} s for the final deadline to pass")
            time.sleep(wait)
        self._upload(challenge, key)
        say(f"        {key} uploaded after the deadline")
        uploads = dag_id(challenge.id, DagPhase.VALIDATION_UPLOADS)
        self._run(bag, uploads, None)

    def _run(self, bag, dag: str, instant: dt.datetime | None, label: str = "run") -> None:
        when = instant.strftime("%Y-%m-%d %H:%M UTC") if instant else "on its trigger"
        say(f"[{label}] {dag} at {when}")
        before = self._snapshot()
        kwargs = {"logical_date": instant} if instant else {}
        started = time.monotonic()
        dag_run = bag.get_dag(dag).test(**kwargs)
        state = str(getattr(dag_run, "state", "unknown"))
        self.results.append(RunResult(dag, instant, state))
        mails = len(read_outbox(self.outbox)) - before["mails"]
        say(f"        -> {state} in {time.monotonic() - started:.0f} s, {mails} email(s)")
        for line in self._what_happened(dag.split("__", 1)[1], instant, before):
            say(f"        {line}")

    # --- what each phase did, read back from the buckets ------------------------------

    def _snapshot(self) -> dict:
        from mai_ops.infra.storage import list_objects

        records = {
            o["Key"] for o in list_objects(self.s3, self.challenge.buckets.results, UPLOAD_RECORDS)
        }
        return {"mails": len(read_outbox(self.outbox)), "records": records}

    def _what_happened(self, phase: str, instant, before: dict) -> list[str]:
        from mai_ops.infra.storage import get_json, list_objects, object_exists

        challenge, s3 = self.challenge, self.s3
        results = challenge.buckets.results
        if phase == DagPhase.RELEASE_DATA and instant is not None:
            lines = []
            for event in events_at(challenge, DagPhase.RELEASE_DATA, instant):
                files = get_json(s3, challenge.buckets.public, release_manifest_key(event.name))
                tests = sum("/test/" in f["key"] for f in files["files"])
                extra = f" ({tests} of them hidden test inputs)" if tests else ""
                lines.append(f"{event.name}: {len(files['files'])} files published{extra}")
            return lines
        if phase == DagPhase.VALIDATION_UPLOADS:
            lines = []
            keys = {o["Key"] for o in list_objects(s3, results, UPLOAD_RECORDS)} - before["records"]
            for key in sorted(keys):
                record = get_json(s3, results, key)
                if "status" in record:
                    lines.append(_upload_line(record))
            return lines
        if phase == DagPhase.FINAL_COLLECTION:
            manifest = get_json(s3, results, FROZEN_MANIFEST)
            lines = [
                f"frozen {len(manifest['frozen'])} submission(s); missing: "
                + (", ".join(f"{m['team']} ({m['track']})" for m in manifest["missing"]) or "none")
            ]
            lines += [f"refused {r['key']}: {r['code']}" for r in manifest["rejected"]]
            return lines
        if phase == DagPhase.SCORING and object_exists(s3, results, RANKING):
            table = get_json(s3, results, RANKING)
            return [
                f"{track_id}: {sum(r['rank'] is not None for r in t['rows'])} ranked, "
                f"{sum(r['rank'] is None for r in t['rows'])} not"
                for track_id, t in table["tracks"].items()
                if t["rows"]
            ]
        if phase == DagPhase.PRELIMINARY_RESULTS:
            published = sum(1 for _ in list_objects(s3, challenge.buckets.public, "leaderboard/"))
            return [f"leaderboard objects in the public bucket: {published}"]
        return []

    # --- the summary -------------------------------------------------------------------

    def rejections(self) -> list[dict]:
        """Everything refused or broken: final uploads refused at the freeze, validation
        uploads refused or failed, final submissions that failed scoring."""
        from mai_ops.infra.storage import get_json, list_objects, object_exists

        challenge, s3 = self.challenge, self.s3
        results = challenge.buckets.results
        out = []
        if object_exists(s3, results, FROZEN_MANIFEST):
            for r in get_json(s3, results, FROZEN_MANIFEST)["rejected"]:
                out.append(_rejection(r["team"], r["track"], r["key"], r["code"], r["reason"]))
        for obj in list_objects(s3, results, UPLOAD_RECORDS):
            record = get_json(s3, results, obj["Key"])
            if record.get("phase") != "validation" or record.get("status") == "ok":
                continue
            first = record["errors"][0]
            team, track = record["team"], record["track"]
            out.append(_rejection(team, track, record["key"], first["code"], first["message"]))
        if object_exists(s3, challenge.buckets.public, PRELIMINARY_JSON):
            table = get_json(s3, challenge.buckets.public, PRELIMINARY_JSON)
            for track_id, ranked in table["tracks"].items():
                for row in ranked["rows"]:
                    if row["rank"] is None:
                        what = f"{track_id}/final/{row['team']} (not ranked)"
                        code = row["error"] or row["status"]
                        out.append(_rejection(row["team"], track_id, what, code, ""))
        return out

    def _report(self, boards: list[Path]) -> int:
        from mai_ops.dev.demo_teams import (
            EXPECTED_FAILED,
            EXPECTED_FLAGGED,
            EXPECTED_ORDER,
            EXPECTED_REFUSED,
            LATE_UPLOAD,
        )
        from mai_ops.infra.storage import get_json, object_exists

        challenge, s3 = self.challenge, self.s3
        failed = [r for r in self.results if not r.state.endswith("success")]
        mails = read_outbox(self.outbox)
        published = object_exists(s3, challenge.buckets.public, PRELIMINARY_JSON)
        table = get_json(s3, challenge.buckets.public, PRELIMINARY_JSON) if published else None
        problems = [f"{r.dag_id} at {r.logical_date}: {r.state}" for r in failed]

        say("\n== summary ==")
        say(f"DAG runs: {len(self.results)}, failed: {len(failed)}")
        say("final results (runtime: median of the timed runs on the track's device)")
        for track_id, ranked in (table or {"tracks": {}})["tracks"].items():
            if not ranked["rows"]:
                continue
            say(f"  {track_id} ({', '.join(ranked['metrics'])}; score {ranked['formula']})")
            for line in _table_lines(challenge, ranked):
                say(f"    {line}")
            got = [r["team"] for r in ranked["rows"] if r["rank"] is not None]
            expected = EXPECTED_ORDER.get(track_id)
            if expected is not None:
                verdict = "as constructed" if got == expected else f"NOT as built: {expected}"
                say(f"    order: {' > '.join(got)}: {verdict}")
                if got != expected:
                    problems.append(f"{track_id}: ranked {got}, constructed {expected}")
            for row in ranked["rows"]:
                want_code = EXPECTED_FAILED.get((track_id, row["team"]))
                if want_code and (row["rank"] is not None or row["error"] != want_code):
                    problems.append(f"{track_id}/{row['team']}: {row['error']}, not {want_code}")
                want_flags = EXPECTED_FLAGGED.get((track_id, row["team"]), [])
                if row["flags"] != want_flags:
                    flags = row["flags"]
                    problems.append(f"{track_id}/{row['team']}: flags {flags}, not {want_flags}")
        if table is None:
            problems.append("the preliminary results were not published")

        rejected = self.rejections()
        say("rejected and broken (team, track, upload, code):")
        for r in rejected:
            reason = r["reason"].removeprefix(f"{r['code']}: ")
            reason = f": {reason[:90]}" if reason else ""
            say(f"  {r['team']:<9} {r['track']:<16} {r['key']:<45} {r['code']}{reason}")
        codes = {(r["key"], r["code"]) for r in rejected}
        for key, code in {LATE_UPLOAD: "late", **EXPECTED_REFUSED}.items():
            if (key, code) not in codes:
                problems.append(f"{key} was not refused as {code}")

        kinds = Counter(notice_kind(m) for m in mails)
        say(f"emails in the outbox: {len(mails)} (sent again by the re-run: {self.duplicates})")
        say("  " + ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items())))
        if self.duplicates:
            problems.append(f"the re-run sent {self.duplicates} email(s) again")
        if not mails:
            problems.append("no email was sent")

        say("outputs:")
        board = self.workdir / "leaderboard"
        for page in boards:
            say(f"  leaderboard: {self._shown(page)}")
        shown = [t for t, r in (table or {"tracks": {}})["tracks"].items() if r["rows"]]
        if shown:
            say(
                f"  per track ({', '.join(shown)}): {self._shown(board)}/<track>/index.html, "
                "results.csv, results.json, plot.svg, plot.png"
            )
            say(f"  a plot: {self._shown(board / shown[0] / 'plot.png')}")
        say(f"  outbox: {self._shown(self.outbox)}/ ({len(mails)} .eml files)")
        say(f"  took {time.monotonic() - self.started:.0f} s")
        self.problems = problems
        for problem in problems:
            say(f"PROBLEM: {problem}")
        say("demo " + ("finished: every phase ran" if not problems else "FAILED"))
        return 0 if not problems else 1


def _rejection(team: str | None, track: str, key: str, code: str, reason: str) -> dict:
    return {"team": team or "?", "track": track, "key": key, "code": code, "reason": reason}


def _upload_line(record: dict) -> str:
    status = record.get("precheck_status") or record["status"]
    what = "pre-check" if record.get("precheck") else "validation"
    line = f"{record['key']}: {what} {status}"
    if record.get("errors"):
        line += f" ({', '.join(e['code'] for e in record['errors'])})"
    if record.get("score") is not None:
        line += f", score {record['score']:.4g}"
    return line


def _table_lines(challenge: Challenge, ranked: dict) -> list[str]:
    """The ranked table as text: rank, team, metrics, runtime with device, score, flags."""
    metrics = ranked["metrics"]
    head = ["rank", "team", *metrics, "runtime", "score", "flags / code"]
    rows = []
    for r in ranked["rows"]:
        runtime = ""
        if r.get("runtime_ms") is not None:
            where = " (CPU stand-in)" if r.get("backend") == "litert" else ""
            runtime = f"{r['runtime_ms']:.2f} ms on {r['device']}{where}"
        rows.append(
            [
                str(r["rank"]) if r["rank"] is not None else "-",
                r["team"],
                *(f"{r[m]:.4g}" if r.get(m) is not None else "" for m in metrics),
                runtime,
                f"{r['score']:.4g}" if r.get("score") is not None else "",
                ", ".join(r.get("flags") or []) or (r.get("error") or ""),
            ]
        )
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in (head, *rows)
    ]


def run_timeline(challenge_id: str = "mai2021", workdir: Path | None = None) -> int:
    """The whole demo; its exit code (0: every phase ran and ranked as constructed)."""
    with Demo(challenge_id, workdir) as demo:
        return demo.run()
