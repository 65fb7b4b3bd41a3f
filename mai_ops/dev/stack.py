"""``make up``: the Airflow UI and every phase DAG, on the embedded S3 and SMTP servers.

One command gives organizers the real scheduler, DAG processor, triggerer and UI
(``airflow standalone``: LocalExecutor, SQLite under ``--home``) wired to a local
S3-compatible server and an SMTP server that stores each email in an outbox folder,
so a challenge can be watched running for real without AWS or a mail relay.

Airflow runs as a child in its own process group, so this process alone decides how
it stops: Ctrl-C, SIGTERM or SIGHUP shuts Airflow down first, then the two servers, and exits
0; if Airflow dies by itself, the servers stop and its exit code is returned.

    python -m mai_ops.dev.stack [--port 8080] [--s3-port 9000] [--smtp-port 1025] [--home var/stack]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from mai_ops import PROJECT_ROOT
from mai_ops.challenge.config import challenge_files
from mai_ops.dev.embedded import EMBEDDED_KEY, EMBEDDED_SECRET, LocalS3, LocalSMTP, free_port
from mai_ops.devices.pools import import_pools, valid_challenges

PROJECT = PROJECT_ROOT
HOST = "127.0.0.1"
# How long Airflow gets after SIGINT, then after SIGTERM, before SIGKILL. It usually
# needs about 5 s; a running task is cut short, which is safe as every task is idempotent.
STOP_WAITS = {"SIGINT": 20.0, "SIGTERM": 10.0, "SIGKILL": 5.0}


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


def create_buckets(s3) -> list[str]:
    """Every bucket of every valid challenge file; an invalid file is reported, not fatal."""
    from mai_ops.challenge.config import read_challenge
    from mai_ops.dev.embedded import ensure_buckets, ensure_upload_notifications

    names: list[str] = []
    queues: list[tuple[str, str | None]] = []
    for path in challenge_files():
        challenge, problems = read_challenge(path)
        errors = [p for p in problems if p.severity == "error"]
        if challenge is None or errors:
            print(f"skipping {path.name}: {len(errors)} error(s); see `mai-ops validate`")
            continue
        names.extend(challenge.buckets.model_dump().values())
        queues.append((challenge.buckets.submissions, challenge.uploads_queue))
    ensure_buckets(s3, names)
    endpoint = s3.meta.endpoint_url
    for bucket, queue in queues:
        if queue:
            ensure_upload_notifications(endpoint, bucket, queue)
            print(f"uploads to {bucket} notify the queue {queue}")
    return sorted(set(names))


def stack_env(home: Path, port: int, s3_endpoint: str, smtp_port: int) -> dict[str, str]:
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
            # A local, loopback-only UI: no login page, no generated password file.
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            # standalone starts its components as plain `airflow`, found on PATH.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        }
    )
    return env


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

    s3 = LocalS3(host=HOST, port=args.s3_port)
    smtp = LocalSMTP(home / "outbox", host=HOST, port=args.smtp_port)
    proc: subprocess.Popen | None = None
    try:
        s3.start()
        smtp.start()
        buckets = create_buckets(s3.client())
        env = stack_env(home, port, s3.endpoint_url, smtp.port)
        ui = f"http://{HOST}:{port}"
        print(
            "\n".join(
                [
                    "== mai-ops stack ==",
                    f"Airflow UI + API : {ui}   (no login)",
                    f"S3 endpoint      : {s3.endpoint_url}   "
                    f"(key {EMBEDDED_KEY}, secret {EMBEDDED_SECRET})",
                    f"buckets          : {', '.join(buckets) or '(none)'}",
                    f"SMTP             : {HOST}:{smtp.port}",
                    f"outbox (.eml)    : {smtp.folder}",
                    f"AIRFLOW_HOME     : {home}",
                    "Ctrl-C stops everything.",
                    "",
                ]
            ),
            flush=True,
        )
        if stop.is_set():
            return 0
        airflow = Path(sys.executable).with_name("airflow")
        # Device pools must exist before the scheduler sees a benchmark task, or the
        # task would wait forever on a pool that is not there.
        subprocess.run(
            [str(airflow), "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL
        )
        pools = import_pools(env, valid_challenges(challenge_files()))
        print(f"stack: device pools (1 slot each): {', '.join(sorted(pools)) or '(none)'}")
        proc = subprocess.Popen([str(airflow), "standalone"], env=env, process_group=0)

        announced = False
        while proc.poll() is None and not stop.wait(1.0):
            if not announced and api_ready(port):
                print(f"stack: Airflow UI is up at {ui}", flush=True)
                announced = True
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
) -> subprocess.Popen:
    """Start the stack as a child in its own session (tests and benchmarks drive it so).

    Stop it with SIGINT to the session, as Ctrl-C would; its output goes to ``log``.
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
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd,
            cwd=PROJECT,
            env=env if env is not None else dict(os.environ),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
