"""``make up``: the Airflow UI and every phase DAG, on the embedded S3 and SMTP servers.

One command gives organizers the real scheduler, DAG processor, triggerer and UI
(``airflow standalone``: LocalExecutor, SQLite under ``--home``) wired to a local
S3-compatible server and an SMTP server that stores each email in an outbox folder,
so a challenge can be watched running for real without AWS or a mail relay.

Next to each real challenge file it serves a rehearsal copy (``<id>_rehearsal``, its
own buckets and queue) whose dates are moved so its final deadline is tomorrow: an
organizer can upload, freeze and score on day one. While it runs, a challenge file
dropped in gets its buckets, upload queue and device pools within seconds.

A restart continues where the last run stopped: the Airflow database, the outbox and
the S3 objects (kept in ``<home>/s3-state.pickle``) all persist, so no upload is lost
and no email goes out twice. ``make clean`` starts afresh.

``--executor celery`` (``make up-celery``) is the same product on the production path:
CeleryExecutor, PostgreSQL for the metadata and the Celery results, Redis as the broker,
and the components started one by one (api-server, scheduler, dag-processor, triggerer)
with two Celery workers: one for Airflow's default queue, one for a device host's queue
(``--device-host``, and every host a served challenge declares), as on the machine a
phone is plugged into. Each home gets a database and a broker key prefix of its own, so
two stacks (or test runs) on one server never share state.

Airflow runs as children in a process group of their own, so this process alone decides
how they stop: Ctrl-C, SIGTERM or SIGHUP shuts Airflow down first, then the two servers,
and exits 0; if an Airflow component dies by itself (with ``--executor celery``: the
api-server, or a component within 30 s of its start), the rest and the servers stop and
its exit code is returned.

    python -m mai_ops.dev.stack [--port 8080] [--s3-port 9000] [--smtp-port 1025] [--home var/stack]
                                [--executor celery [--postgres URL] [--redis URL] [--device-host H]]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

from mai_ops import PROJECT_ROOT
from mai_ops.challenge.config import Challenge, challenge_files, challenges_dirs, read_challenge
from mai_ops.dev.embedded import EMBEDDED_KEY, EMBEDDED_SECRET, LocalS3, LocalSMTP, free_port
from mai_ops.devices.pools import DEFAULT_QUEUE, airflow_pools, device_queue, import_pools
from mai_ops.timeouts import visibility_timeout_s

PROJECT = PROJECT_ROOT
HOST = "127.0.0.1"
# How long Airflow gets after SIGINT, then after SIGTERM, before SIGKILL. It usually
# needs about 5 s; a running task is cut short, which is safe as every task is idempotent.
STOP_WAITS = {"SIGINT": 20.0, "SIGTERM": 10.0, "SIGKILL": 5.0}
# How often the stack looks for new challenge files (a stat per file), and snapshots
# the S3 state (a crash loses at most that much; a normal stop saves everything). A
# file is served well before the DAG processor's next parse can show its DAGs.
WATCH_SECONDS = 1.0
SAVE_SECONDS = 30.0
REHEARSAL = "rehearsal"
EXECUTORS = ("local", "celery")
# The local servers of this machine (trust auth on loopback, as a developer's are).
POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS = "redis://127.0.0.1:6379/0"
# Imported once by each executor worker so a task starts without importing Airflow's task
# runner, boto3, NumPy and LiteRT again (mai_ops_airflow/worker_preload.py).
WORKER_PRELOAD = "mai_ops_airflow.worker_preload"
# Celery: the result backend records which worker ran each task, and from which queue;
# the worker's main process imports the preload before forking its pool (Celery's
# ``imports``), so every task forked below it inherits it.
CELERY_EXTRA_CONFIG = {"result_extended": True, "imports": [WORKER_PRELOAD]}
DEVICE_HOST = "devices"
# Celery task slots: the default worker takes checks and fidelity side by side; the
# device host's worker mostly waits for its device (its pool lets one benchmark run).
WORKER_CONCURRENCY = {"default": 4, "device": 2}
# A Celery stack's component that ends after running this long is started again (one
# that ends sooner is failing to start, and the stack stops).
RESTART_AFTER_S = 30.0
SECRET_SETTINGS = ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mai_ops.dev.stack", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--port", type=int, default=8080, help="Airflow UI/API port (0: any free)")
    parser.add_argument("--s3-port", type=int, default=9000, help="local S3 port (0: any free)")
    parser.add_argument("--smtp-port", type=int, default=1025, help="local SMTP port (0: any free)")
    parser.add_argument(
        "--home",
        type=Path,
        default=None,
        help="AIRFLOW_HOME: SQLite DB, logs, airflow.cfg; the outbox is <home>/outbox "
        "(default var/stack, or var/stack-celery with --executor celery)",
    )
    parser.add_argument(
        "--no-rehearsal",
        dest="rehearsal",
        action="store_false",
        help="serve the challenge files only, without their rehearsal copies",
    )
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="local: airflow standalone on SQLite; celery: PostgreSQL, Redis and Celery "
        "workers, each component started on its own",
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("MAI_OPS_STACK_POSTGRES", POSTGRES),
        help="(celery) a PostgreSQL server URL; the stack makes a database of its home's own",
    )
    parser.add_argument(
        "--redis",
        default=os.environ.get("MAI_OPS_STACK_REDIS", REDIS),
        help="(celery) the Redis broker URL; the stack's keys carry a prefix of its home's own",
    )
    parser.add_argument(
        "--device-host",
        default=DEVICE_HOST,
        help="(celery) the device host the second worker stands for: it consumes that host's "
        "queue and those of every host the served challenges declare",
    )
    args = parser.parse_args(argv)
    if args.home is None:
        args.home = PROJECT / "var" / ("stack" if args.executor == "local" else "stack-celery")
    return args


def port_in_use(port: int, host: str = HOST) -> bool:
    """A taken port must fail here: inside standalone the api-server would just die quietly."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


class ChallengeWatcher:
    """Keeps every valid challenge file's storage and device pools in place while the stack runs.

    A file dropped in (or edited) gets its rehearsal copy, buckets, upload queue with
    the bucket's notification, and device pools at the next :meth:`sync`; the DAG
    processor picks up its DAGs at its next parse of the DAG file. A rehearsal copy is
    written where the DAGs look only once its buckets exist, so a phase it runs late
    at once finds them. An invalid file is reported, not fatal: its DAGs show the errors.
    """

    def __init__(self, s3_endpoint: str, env: dict[str, str], sources: list[Path], rehearsals):
        self.s3_endpoint = s3_endpoint
        self.env = env
        self.sources = sources
        self.rehearsals: Path | None = rehearsals
        self.known: dict[Path, tuple[float, Challenge | None]] = {}
        self.pools: dict[str, dict] = {}

    def sync(self) -> list[str]:
        """Bring new or changed files into service; returns what it did, one line each."""
        done: list[str] = []
        for path in [p for d in self.sources for p in challenge_files(d)]:
            before = self.known.get(path, (None,))[0]
            self._read_if_changed(path, done)
            if self.rehearsals is not None and self.known[path][0] != before:
                try:
                    self._rehearse(path, self.known[path][1], done)
                except Exception:  # storage down: the next sync serves the file again
                    del self.known[path]
                    raise
        if self.rehearsals is not None:
            for path in challenge_files(self.rehearsals):
                self._read_if_changed(path, done)
        gone = [p for p in self.known if not p.exists()]
        for path in gone:
            del self.known[path]
        valid = [c for _, c in self.known.values() if c is not None]
        pools = airflow_pools(valid)
        if pools != self.pools:
            import_pools(self.env, valid)
            self.pools = pools
            slots = (f"{name} ({pool['slots']})" for name, pool in sorted(pools.items()))
            done.append(f"pools: {', '.join(slots)}")
        return done

    def _read_if_changed(self, path: Path, done: list[str]) -> None:
        """Serve ``path`` if it is new or changed: its buckets and upload queue."""
        from mai_ops.dev.embedded import (
            ensure_challenge_buckets,
            ensure_upload_notifications,
            s3_client,
        )

        mtime = path.stat().st_mtime
        if self.known.get(path, (None,))[0] == mtime:
            return
        challenge, problems = read_challenge(path)
        errors = [p for p in problems if p.severity == "error"]
        if challenge is None or errors:
            self.known[path] = (mtime, None)
            done.append(f"skipping {path.name}: {len(errors)} error(s); see `mai-ops validate`")
            return
        buckets = list(challenge.buckets.model_dump().values()) if challenge.buckets else []
        created = (
            ensure_challenge_buckets(s3_client(self.s3_endpoint), challenge.buckets)
            if challenge.buckets
            else []
        )
        line = f"{challenge.id}: buckets {', '.join(buckets) or '(none)'}"
        if created:
            line += f" ({len(created)} created)"
        if challenge.uploads_queue and challenge.buckets:
            ensure_upload_notifications(
                self.s3_endpoint, challenge.buckets.submissions, challenge.uploads_queue
            )
            line += f"; uploads notify the queue {challenge.uploads_queue}"
        self.known[path] = (mtime, challenge)
        done.append(line)

    def _rehearse(self, source: Path, challenge: Challenge | None, done: list[str]) -> None:
        """A rehearsal copy of a new or changed real file, if it is valid."""
        from mai_ops.dev.demo import rehearsal_copy

        if challenge is None:  # its source is broken: no stale rehearsal
            (self.rehearsals / f"{source.stem}_{REHEARSAL}{source.suffix}").unlink(missing_ok=True)
            return
        try:
            staged = rehearsal_copy(source, self.rehearsals / ".staging", suffix=REHEARSAL)
        except ValueError as exc:
            done.append(f"no rehearsal copy: {exc}")
            return
        self._read_if_changed(staged, done)
        served = self.rehearsals / staged.name
        staged.replace(served)  # keeps its mtime: the copy is known as served
        self.known[served] = self.known.pop(staged)


def common_timezone(files: list[Path]) -> str:
    """The zone every served challenge shares (UTC when they differ)."""
    zones = set()
    for path in files:
        challenge, _ = read_challenge(path)
        if challenge is not None:
            zones.add(challenge.timezone)
    return zones.pop() if len(zones) == 1 else "UTC"


def stack_env(
    home: Path,
    port: int,
    s3_endpoint: str,
    smtp_port: int,
    challenge_dirs: list[Path] | None = None,
    timezone: str = "UTC",
) -> dict[str, str]:
    """The environment Airflow and its task processes get."""
    from mai_ops.dev.demo import airflow_env
    from mai_ops.dev.embedded import connection_env

    env = dict(os.environ)
    env.update(airflow_env(home))
    env.update(connection_env(s3_endpoint, HOST, smtp_port))
    env.update(
        {
            "AIRFLOW__API__HOST": HOST,
            "AIRFLOW__API__PORT": str(port),
            # Tasks reach the scheduler's state through the api-server; its default URL
            # assumes port 8080, so it must follow --port.
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{HOST}:{port}/execution/",
            # Where alert emails' log links point (ti.log_url).
            "AIRFLOW__API__BASE_URL": f"http://{HOST}:{port}/",
            # A local, loopback-only UI: no login page, no generated password file.
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            # Naive dates given to the CLI (--logical-date 2021-03-20T17:00) mean the
            # challenges' local time. The UI does not read this: it uses the browser's zone.
            "AIRFLOW__CORE__DEFAULT_TIMEZONE": timezone,
            # LocalExecutor's workers come from a forkserver that has imported what
            # tasks need, so each task starts without importing it again.
            "AIRFLOW__SCHEDULER__MP_START_METHOD": "forkserver",
            "AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD": WORKER_PRELOAD,
            # standalone starts its components as plain `airflow`, found on PATH.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        }
    )
    if challenge_dirs:
        env["MAI_OPS_CHALLENGES_DIR"] = os.pathsep.join(str(d) for d in challenge_dirs)
    return env


def home_tag(home: Path) -> str:
    """A name of ``home``'s own: its database and its broker key prefix."""
    return "mai_ops_" + hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]


def ensure_database(server: str, name: str) -> str:
    """Create database ``name`` on the PostgreSQL ``server`` if it is missing; its URL."""
    import psycopg2
    from psycopg2 import errors

    conn = psycopg2.connect(server)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                try:
                    cur.execute(f'CREATE DATABASE "{name}"')
                except errors.DuplicateDatabase:  # made meanwhile by another start
                    pass
    finally:
        conn.close()
    parts = urllib.parse.urlsplit(server)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


def forget_home(home: Path, postgres: str = POSTGRES, redis: str = REDIS) -> None:
    """Drop the database and broker keys of ``home``'s Celery stack (kept across restarts
    otherwise): what a throw-away stack of a test or a bench leaves behind."""
    import psycopg2
    import redis as redis_client

    tag = home_tag(home)
    conn = psycopg2.connect(postgres)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{tag}" WITH (FORCE)')
    finally:
        conn.close()
    broker = redis_client.Redis.from_url(redis)
    for key in broker.scan_iter(f"{tag}:*"):
        broker.delete(key)


def home_secrets(home: Path) -> dict[str, str]:
    """The secrets every component shares, made once per home and kept (mode 0600).

    HS512 wants a JWT key of at least 64 bytes; a restart must keep it, or the tokens
    of tasks already running stop being accepted.
    """
    path = home / "secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    made = {"jwt_secret": secrets.token_urlsafe(64), "api_secret_key": secrets.token_urlsafe(32)}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(made, out)
    return made


def celery_env(home: Path, postgres: str, redis: str) -> dict[str, str]:
    """The settings of the Celery stack: what a deployment on several machines sets too."""
    tag = home_tag(home)
    database = ensure_database(postgres, tag).split("://", 1)[1]
    kept = home_secrets(home)
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{database}",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://{database}",
        "AIRFLOW__CELERY__BROKER_URL": redis,
        # Every broker key of this home under its own prefix: one Redis serves many stacks.
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": f"{tag}:",
        # Longer than the longest task (a running benchmark is never handed out twice),
        # far shorter than Celery's 24 h (mai_ops.timeouts).
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": str(visibility_timeout_s()),
        "AIRFLOW__CELERY__EXTRA_CELERY_CONFIG": json.dumps(CELERY_EXTRA_CONFIG),
        "AIRFLOW__API_AUTH__JWT_SECRET": kept["jwt_secret"],
        "AIRFLOW__API__SECRET_KEY": kept["api_secret_key"],
    }


def celery_components(queues: list[str]) -> list[tuple[str, list[str]]]:
    """(name, ``airflow`` arguments) of each process of the Celery stack, in start order.

    ``queues``: what the device host's worker consumes. Every worker and the triggerer
    would serve their logs on all interfaces (port 8793/8794, one per machine: a second
    worker could not start); they run without, as every component here writes and
    reads the one log folder of the home.
    """
    host_queue = queues[0]
    return [
        ("api-server", ["api-server"]),
        ("scheduler", ["scheduler"]),
        ("dag-processor", ["dag-processor"]),
        ("triggerer", ["triggerer", "--skip-serve-logs"]),
        *(
            (
                name,
                [
                    "celery",
                    "worker",
                    "--queues",
                    ",".join(consumed),
                    "--celery-hostname",
                    f"{worker}@%h",
                    "--concurrency",
                    str(WORKER_CONCURRENCY[kind]),
                    "--skip-serve-logs",
                ],
            )
            for name, kind, worker, consumed in (
                ("worker", "default", DEFAULT_QUEUE, [DEFAULT_QUEUE]),
                ("worker-device", "device", host_queue, queues),
            )
        ),
    ]


def _relay(name: str, stream, width: int) -> None:
    """Copy a component's output to ours, each line behind its name (as standalone does)."""
    for line in iter(stream.readline, b""):
        text = line.decode(errors="replace").rstrip("\n")
        print(f"{name:<{width}} | {text}", flush=True)
    stream.close()


def start_components(
    airflow: Path, components: list[tuple[str, list[str]]], env: dict[str, str]
) -> list[subprocess.Popen]:
    """Start each component in one new process group (the first one leads it)."""
    procs: list[subprocess.Popen] = []
    width = max(len(name) for name, _ in components)
    for name, cmd in components:
        procs.append(_start_component(airflow, name, cmd, env, procs[0].pid if procs else 0, width))
    return procs


def _start_component(
    airflow: Path, name: str, cmd: list[str], env: dict[str, str], group: int, width: int
) -> subprocess.Popen:
    proc = subprocess.Popen(
        [str(airflow), *cmd],
        env={**env, "PYTHONUNBUFFERED": "1"},  # lines as they come, not when a pipe fills
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        process_group=group,
    )
    proc.component, proc.command, proc.env, proc.width = name, cmd, env, width
    proc.started = time.monotonic()
    threading.Thread(target=_relay, args=(name, proc.stdout, width), daemon=True).start()
    return proc


def restartable(procs: list[subprocess.Popen], proc: subprocess.Popen) -> bool:
    """Whether a component of the Celery stack that ended is started again.

    As ``restart: always`` does in docker-compose.yaml: a worker or scheduler that was
    killed (or crashed after it was up) comes back, and Celery and Airflow take over
    what it was doing. One that ends within :data:`RESTART_AFTER_S` of its start is
    failing to start: the stack stops and says so. The api-server leads the process
    group the stack stops by, so it is not replaced.
    """
    return (
        getattr(proc, "command", None) is not None
        and proc is not procs[0]
        and time.monotonic() - proc.started >= RESTART_AFTER_S
    )


def restart_component(procs: list[subprocess.Popen], proc: subprocess.Popen) -> None:
    """Start ``proc``'s component again in its place, in the stack's process group."""
    up = time.monotonic() - proc.started
    print(
        f"stack: {proc.component} ended (code {proc.returncode}) after {up:.0f} s; "
        "starting it again",
        flush=True,
    )
    again = _start_component(
        Path(proc.args[0]), proc.component, proc.command, proc.env, procs[0].pid, proc.width
    )
    procs[procs.index(proc)] = again


def write_airflow_cfg(path: Path, env: dict[str, str]) -> None:
    """Put the stack's ``AIRFLOW__SECTION__KEY`` settings into ``airflow.cfg`` as well.

    Airflow's processes read them from the environment; the CLI run by hand with
    ``AIRFLOW_HOME`` reads only the file, which must therefore say the same. Lines
    are replaced in place, so Airflow's comments and its generated secrets stay.
    """
    wanted: dict[str, dict[str, str]] = {}
    for name, value in env.items():
        match = re.fullmatch(r"AIRFLOW__([A-Z0-9_]+?)__([A-Z0-9_]+)", name)
        if match:
            wanted.setdefault(match[1].lower(), {})[match[2].lower()] = value
    lines = path.read_text().splitlines() if path.exists() else []
    out: list[str] = []
    section: str | None = None

    def add_missing(name: str | None) -> None:
        for key, value in wanted.pop(name, {}).items():
            out.append(f"{key} = {value}")

    for line in lines:
        header = re.fullmatch(r"\[([^\]]+)\]\s*", line)
        if header:
            add_missing(section)
            section = header[1].strip().lower()
        else:
            setting = re.fullmatch(r"\s*([A-Za-z0-9_]+)\s*=.*", line)
            if setting and setting[1].lower() in wanted.get(section or "", {}):
                line = f"{setting[1]} = {wanted[section].pop(setting[1].lower())}"
        out.append(line)
    add_missing(section)
    for name in list(wanted):
        out += ["", f"[{name}]"]
        add_missing(name)
    path.write_text("\n".join(out) + "\n")


def api_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/api/v2/monitor/health", timeout=2):
            return True
    except OSError:
        return False


def _group_members(pgid: int, also: list) -> list:
    """Live (non-zombie) processes of the group, plus those of ``also`` still running."""
    import psutil

    alive = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    for proc in also:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE and proc not in alive:
                alive.append(proc)
        except psutil.Error:
            continue
    return alive


def _title(proc) -> str:
    import psutil

    try:
        return " ".join(proc.cmdline()[:3])[:60] or proc.name()
    except psutil.Error:  # gone meanwhile
        return str(proc.pid)


def stop_airflow(procs: subprocess.Popen | list[subprocess.Popen]) -> None:
    """SIGINT to the group (what Ctrl-C does, the path standalone is built for), then
    SIGTERM, then SIGKILL. The first process leads the group. Task processes sit in
    groups of their own, so every descendant seen at the start is waited for too."""
    import psutil

    procs = procs if isinstance(procs, list) else [procs]
    descendants = []
    for proc in procs:
        try:
            descendants += psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            pass
    pgid = procs[0].pid
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        members = _group_members(pgid, descendants)
        if not members:
            break
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        for member in members:
            try:
                if os.getpgid(member.pid) != pgid:
                    member.send_signal(sig)
            except (ProcessLookupError, psutil.Error):
                pass
        deadline = time.monotonic() + STOP_WAITS[sig.name]
        while time.monotonic() < deadline:
            for proc in procs:
                proc.poll()  # reap the children so they do not linger as zombies
            if not _group_members(pgid, descendants):
                break
            time.sleep(0.2)
        else:
            left = _group_members(pgid, descendants)
            names = ", ".join(sorted({_title(p) for p in left}))
            print(
                f"stack: {len(left)} Airflow process(es) outlived {sig.name}: {names}", flush=True
            )
    for proc in procs:
        proc.poll()


def start_airflow(args: argparse.Namespace, env: dict[str, str], served: list[Path]):
    """The Airflow processes: standalone, or each component of the Celery stack."""
    airflow = Path(sys.executable).with_name("airflow")
    if args.executor == "local":
        proc = subprocess.Popen([str(airflow), "standalone"], env=env, process_group=0)
        proc.component = "airflow standalone"
        return [proc]
    return start_components(airflow, celery_components(host_queues(args, served)), env)


def host_queues(args: argparse.Namespace, served: list[Path]) -> list[str]:
    """The device worker's queues: ``--device-host``'s, then every declared host's."""
    from mai_ops.devices.pools import device_queues

    files = [p for d in served for p in challenge_files(d)]
    declared = device_queues(c for c in (read_challenge(f)[0] for f in files) if c is not None)
    return list(dict.fromkeys([device_queue(args.device_host), *declared.values()]))


FAULT_FILE = "fault.json"


def request_fault(home: Path, pid: int, s3: dict | None = None, smtp: dict | None = None) -> None:
    """Ask the running stack (process ``pid``, home ``home``) for a fault drill.

    ``s3`` / ``smtp``: ``{"seconds": 30}`` takes that server down now for 30 s;
    ``{"seconds": 30, "after": "PUT /<bucket>/<prefix>"}`` takes S3 down right after it
    answered the first such request. Each server keeps its data and comes back on its
    port. The stack prints one ``stack: fault drill:`` line per server when it has
    applied the request (within a second).
    """
    plan = {k: v for k, v in (("s3", s3), ("smtp", smtp)) if v is not None}
    path = home / FAULT_FILE
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(plan))
    os.replace(partial, path)
    os.kill(pid, signal.SIGUSR1)


def apply_fault(home: Path, s3: LocalS3, smtp: LocalSMTP) -> list[str]:
    """Apply (and remove) the request :func:`request_fault` wrote; what was done."""
    path = home / FAULT_FILE
    try:
        plan = json.loads(path.read_text())
        path.unlink()
    except (OSError, ValueError) as exc:
        return [f"no readable {FAULT_FILE} ({exc!r})"]
    done = []
    if "s3" in plan:
        seconds, after = plan["s3"].get("seconds"), plan["s3"].get("after")
        if after:
            s3.arm_outage(after, seconds)
            done.append(f"S3 goes down for {seconds} s after answering {after!r}")
        else:
            s3.outage(seconds)
            done.append(f"S3 down for {seconds} s")
    if "smtp" in plan:
        smtp.outage(plan["smtp"].get("seconds"))
        done.append(f"SMTP down for {plan['smtp'].get('seconds')} s")
    return done


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    home = args.home.resolve()
    home.mkdir(parents=True, exist_ok=True)

    stop = threading.Event()

    def on_signal(_signum, _frame):
        stop.set()

    # SIGHUP too: a closed terminal must not leave Airflow running in its own group.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    faulted = threading.Event()
    signal.signal(signal.SIGUSR1, lambda _signum, _frame: faulted.set())

    port = args.port or free_port(HOST)
    for name, wanted in (
        ("--port", port),
        ("--s3-port", args.s3_port),
        ("--smtp-port", args.smtp_port),
    ):
        if wanted and port_in_use(wanted):
            print(f"stack: port {wanted} ({name}) is already in use; pick another", file=sys.stderr)
            return 2

    sources = challenges_dirs()
    rehearsals = home / "rehearsal" if args.rehearsal else None
    if rehearsals is not None:  # made afresh from today's date at each start
        for stale in challenge_files(rehearsals) if rehearsals.exists() else []:
            stale.unlink()
    s3 = LocalS3(host=HOST, port=args.s3_port, state_file=home / "s3-state.pickle")
    smtp = LocalSMTP(home / "outbox", host=HOST, port=args.smtp_port)
    procs: list[subprocess.Popen] = []
    try:
        s3.start()
        smtp.start()
        served = [*sources, *([rehearsals] if rehearsals is not None else [])]
        env = stack_env(
            home,
            port,
            s3.endpoint_url,
            smtp.port,
            served,
            common_timezone([p for d in sources for p in challenge_files(d)]),
        )
        if args.executor == "celery":
            env.update(celery_env(home, args.postgres, args.redis))
        airflow = Path(sys.executable).with_name("airflow")
        # Device pools must exist before the scheduler sees a benchmark task, or the
        # task would wait forever on a pool that is not there.
        subprocess.run(
            [str(airflow), "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL
        )
        # The shared secrets stay out of the file: the environment carries them.
        write_airflow_cfg(
            home / "airflow.cfg",
            {k: v for k, v in env.items() if k not in SECRET_SETTINGS},
        )
        watcher = ChallengeWatcher(s3.endpoint_url, env, sources, rehearsals)
        for line in watcher.sync():
            print(f"stack: {line}", flush=True)
        ui = f"http://{HOST}:{port}"
        lines = [
            "== mai-ops stack ==",
            f"Airflow UI + API : {ui}   (no login)",
            f"S3 endpoint      : {s3.endpoint_url}   "
            f"(key {EMBEDDED_KEY}, secret {EMBEDDED_SECRET})",
            f"S3 state         : {s3.state_file}",
            f"SMTP             : {HOST}:{smtp.port}",
            f"outbox (.eml)    : {smtp.folder}",
            f"challenge files  : {os.pathsep.join(str(d) for d in served)}",
            f"AIRFLOW_HOME     : {home}",
        ]
        if args.executor == "celery":
            lines += [
                f"executor         : CeleryExecutor, database {home_tag(home)} on "
                f"{urllib.parse.urlsplit(args.postgres).netloc}, broker {args.redis} "
                f"(keys {home_tag(home)}:*)",
                f"worker queues    : {DEFAULT_QUEUE}; device host: "
                f"{', '.join(host_queues(args, served))}",
            ]
        print("\n".join([*lines, "Ctrl-C stops everything.", ""]), flush=True)
        if stop.is_set():
            return 0
        procs = start_airflow(args, env, served)

        announced = False
        watched = saved = time.monotonic()
        while not stop.wait(1.0):
            ended = [p for p in procs if p.poll() is not None]
            if not all(restartable(procs, p) for p in ended):
                break
            for proc in ended:
                restart_component(procs, proc)
            if not announced and api_ready(port):
                print(f"stack: Airflow UI is up at {ui}", flush=True)
                announced = True
            if time.monotonic() - watched >= WATCH_SECONDS:
                try:
                    for line in watcher.sync():
                        print(f"stack: {line}", flush=True)
                except Exception as exc:  # a file half-written, a pool import that failed
                    print(f"stack: serving the challenge files failed: {exc!r}", flush=True)
                watched = time.monotonic()
            if faulted.is_set():
                faulted.clear()
                for line in apply_fault(home, s3, smtp):
                    print(f"stack: fault drill: {line}", flush=True)
            if time.monotonic() - saved >= SAVE_SECONDS and s3.save():
                saved = time.monotonic()
        if stop.is_set():
            print("stack: stopping Airflow ...", flush=True)
            stop_airflow(procs)
            print("stack: Airflow stopped", flush=True)
            return 0
        dead = next(p for p in procs if p.poll() is not None)
        code = dead.returncode
        print(f"stack: {dead.component} exited on its own (code {code})", file=sys.stderr)
        stop_airflow(procs)  # the other components, or standalone's, may outlive it
        return code if code >= 0 else 128 - code
    finally:
        if any(p.poll() is None for p in procs):
            stop_airflow(procs)
        smtp.stop()
        s3.stop()
        print("stack: S3 and SMTP servers stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())


def spawn(
    port: int,
    s3_port: int,
    home: Path,
    log: Path,
    env: dict[str, str] | None = None,
    smtp_port: int = 0,
    rehearsal: bool = False,
    executor: str = "local",
    options: list[str] | None = None,
) -> subprocess.Popen:
    """Start the stack as a child in its own session (tests and benchmarks drive it so).

    Stop it with SIGINT to the session, as Ctrl-C would; its output goes to ``log``.
    Without ``rehearsal`` it serves only the given challenge files. ``options``: more
    of the command line (``--device-host``, ``--postgres``, ...).
    """
    cmd = [
        sys.executable,
        "-m",
        "mai_ops.dev.stack",
        "--port",
        str(port),
        "--s3-port",
        str(s3_port),
    ]
    cmd += ["--smtp-port", str(smtp_port), "--home", str(home)]
    cmd += [] if rehearsal else ["--no-rehearsal"]
    cmd += ["--executor", executor, *(options or [])]
    env = dict(env if env is not None else os.environ)
    # standalone's scheduler and triggerer serve logs on fixed ports (8793, 8794): two
    # stacks side by side (tests run in parallel) each take free ones.
    for option in ("WORKER_LOG_SERVER_PORT", "TRIGGER_LOG_SERVER_PORT"):
        env.setdefault(f"AIRFLOW__LOGGING__{option}", str(free_port()))
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd,
            cwd=PROJECT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
