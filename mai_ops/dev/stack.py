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

Airflow runs as a child in its own process group, so this process alone decides how
it stops: Ctrl-C, SIGTERM or SIGHUP shuts Airflow down first, then the two servers, and exits
0; if Airflow dies by itself, the servers stop and its exit code is returned.

    python -m mai_ops.dev.stack [--port 8080] [--s3-port 9000] [--smtp-port 1025] [--home var/stack]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from mai_ops import PROJECT_ROOT
from mai_ops.challenge.config import Challenge, challenge_files, challenges_dirs, read_challenge
from mai_ops.dev.embedded import EMBEDDED_KEY, EMBEDDED_SECRET, LocalS3, LocalSMTP, free_port
from mai_ops.devices.pools import airflow_pools, import_pools

PROJECT = PROJECT_ROOT
HOST = "127.0.0.1"
# How long Airflow gets after SIGINT, then after SIGTERM, before SIGKILL. It usually
# needs about 5 s; a running task is cut short, which is safe as every task is idempotent.
STOP_WAITS = {"SIGINT": 20.0, "SIGTERM": 10.0, "SIGKILL": 5.0}
# How often the stack looks for new challenge files, and snapshots the S3 state (a
# crash loses at most that much; a normal stop saves everything).
WATCH_SECONDS = 5.0
SAVE_SECONDS = 30.0
REHEARSAL = "rehearsal"


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
        default=PROJECT / "var" / "stack",
        help="AIRFLOW_HOME: SQLite DB, logs, airflow.cfg; the outbox is <home>/outbox",
    )
    parser.add_argument(
        "--no-rehearsal",
        dest="rehearsal",
        action="store_false",
        help="serve the challenge files only, without their rehearsal copies",
    )
    return parser.parse_args(argv)


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
    processor picks up its DAGs at its next parse of the DAG file. An invalid file is
    reported, not fatal: its DAGs show the errors.
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
                self._rehearse(path, self.known[path][1], done)
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
            rehearsal_copy(source, self.rehearsals, suffix=REHEARSAL)
        except ValueError as exc:
            done.append(f"no rehearsal copy: {exc}")


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
            # standalone starts its components as plain `airflow`, found on PATH.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        }
    )
    if challenge_dirs:
        env["MAI_OPS_CHALLENGES_DIR"] = os.pathsep.join(str(d) for d in challenge_dirs)
    return env


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


def stop_airflow(proc: subprocess.Popen) -> None:
    """SIGINT to the group (what Ctrl-C does, the path standalone is built for), then
    SIGTERM, then SIGKILL. Task processes sit in groups of their own, so every
    descendant seen at the start is waited for too."""
    import psutil

    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    pgid = proc.pid
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
            proc.poll()  # reap the leader so it does not linger as a zombie
            if not _group_members(pgid, descendants):
                break
            time.sleep(0.2)
        else:
            left = _group_members(pgid, descendants)
            names = ", ".join(sorted({_title(p) for p in left}))
            print(
                f"stack: {len(left)} Airflow process(es) outlived {sig.name}: {names}", flush=True
            )
    proc.poll()


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
    proc: subprocess.Popen | None = None
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
        airflow = Path(sys.executable).with_name("airflow")
        # Device pools must exist before the scheduler sees a benchmark task, or the
        # task would wait forever on a pool that is not there.
        subprocess.run(
            [str(airflow), "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL
        )
        write_airflow_cfg(home / "airflow.cfg", env)
        watcher = ChallengeWatcher(s3.endpoint_url, env, sources, rehearsals)
        for line in watcher.sync():
            print(f"stack: {line}", flush=True)
        ui = f"http://{HOST}:{port}"
        print(
            "\n".join(
                [
                    "== mai-ops stack ==",
                    f"Airflow UI + API : {ui}   (no login)",
                    f"S3 endpoint      : {s3.endpoint_url}   "
                    f"(key {EMBEDDED_KEY}, secret {EMBEDDED_SECRET})",
                    f"S3 state         : {s3.state_file}",
                    f"SMTP             : {HOST}:{smtp.port}",
                    f"outbox (.eml)    : {smtp.folder}",
                    f"challenge files  : {os.pathsep.join(str(d) for d in served)}",
                    f"AIRFLOW_HOME     : {home}",
                    "Ctrl-C stops everything.",
                    "",
                ]
            ),
            flush=True,
        )
        if stop.is_set():
            return 0
        proc = subprocess.Popen([str(airflow), "standalone"], env=env, process_group=0)

        announced = False
        watched = saved = time.monotonic()
        while proc.poll() is None and not stop.wait(1.0):
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
            if time.monotonic() - saved >= SAVE_SECONDS and s3.save():
                saved = time.monotonic()
        if stop.is_set():
            print("stack: stopping Airflow ...", flush=True)
            stop_airflow(proc)
            print("stack: Airflow stopped", flush=True)
            return 0
        code = proc.returncode
        print(f"stack: airflow standalone exited on its own (code {code})", file=sys.stderr)
        stop_airflow(proc)  # its components may outlive it
        return code if code >= 0 else 128 - code
    finally:
        if proc is not None and proc.poll() is None:
            stop_airflow(proc)
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
) -> subprocess.Popen:
    """Start the stack as a child in its own session (tests and benchmarks drive it so).

    Stop it with SIGINT to the session, as Ctrl-C would; its output goes to ``log``.
    Without ``rehearsal`` it serves only the given challenge files.
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
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd,
            cwd=PROJECT,
            env=env if env is not None else dict(os.environ),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
