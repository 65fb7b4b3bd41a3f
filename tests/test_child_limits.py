"""What a child that runs a participant's model inherits, and how the runner judges its end."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from mai_ops.infra import child
from mai_ops.infra.child import (
    MAX_FILE_BYTES,
    MB,
    STDERR_TAIL_CHARS,
    ChildLimits,
    child_env,
    limit_child,
    looks_out_of_memory,
    run_child,
)
from tests.conftest import process_gone


def test_connections_and_secrets_never_reach_a_model_child(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", '{"password": "s3cret"}')
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cret")
    monkeypatch.setenv("AIRFLOW__SMTP__SMTP_PASSWORD", "s3cret")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    env = child_env("/project")
    assert "s3cret" not in repr(env)
    assert env["OMP_NUM_THREADS"] == "1" and "PATH" in env
    assert env["PYTHONPATH"].split(":")[0] == "/project"


def test_limits_apply_to_a_real_child():
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, resource as r; sys.stdin.read(); "
            "print(r.getrlimit(r.RLIMIT_AS)[0], r.getrlimit(r.RLIMIT_FSIZE)[0])",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    limit_child(proc.pid, 512)
    out, _ = proc.communicate("")
    address_space, file_size = map(int, out.split())
    assert address_space == 512 * 1024 * 1024
    assert file_size == MAX_FILE_BYTES


# --- the runner -------------------------------------------------------------------------


def _child_script(monkeypatch, script: str) -> None:
    """Every child started from now on runs ``script`` instead of its module."""
    monkeypatch.setattr(child, "child_command", lambda module: [sys.executable, "-c", script])


def test_steps_arrive_in_order_and_repeated_ones_are_collected(monkeypatch, tmp_path):
    _child_script(
        monkeypatch,
        "import os\n"
        "from mai_ops.infra.child import serve\n"
        "def work(request, channel):\n"
        "    print('runtime noise on stdout')\n"
        "    channel.send('loaded', memory_mb=request['memory_mb'], tmp=os.environ['TMPDIR'])\n"
        "    for i in range(3):\n"
        "        channel.send('sample', i=i)\n"
        "serve(work)\n",
    )
    limits = ChildLimits(timeout_s=120, memory_mb=2048, scratch=tmp_path)
    outcome = run_child("any.module", {"x": 1}, limits, repeated=("sample",))
    assert outcome.status == "ok", outcome.message
    assert outcome.steps["loaded"] == {"memory_mb": 2048, "tmp": str(tmp_path)}
    assert outcome.steps["sample"] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert outcome.last_step == "done" and outcome.returncode == 0
    assert "runtime noise on stdout" in outcome.stderr


def test_the_start_command_goes_through_wrap(monkeypatch):
    _child_script(
        monkeypatch,
        "import os\n"
        "from mai_ops.infra.child import serve\n"
        "serve(lambda request, channel: channel.send('env', wrapped=os.environ.get('WRAPPED')))\n",
    )
    limits = ChildLimits(wrap=lambda argv: ["env", "WRAPPED=yes", *argv])
    outcome = run_child("any.module", {}, limits)
    assert outcome.steps["env"] == {"wrapped": "yes"}


@pytest.mark.parametrize(
    "text",
    [
        "MemoryError",
        "terminate called after throwing an instance of 'std::bad_alloc'",
        "OSError: [Errno 12] Cannot allocate memory",
        "ERROR: failed to mmap 4096 bytes",
        "libfoo.so: failed to map segment from shared object",
        "XNNPACK: failed to reallocate buffer",
        "Out of memory while allocating the arena",
    ],
)
def test_out_of_memory_signatures(text):
    assert looks_out_of_memory(text)


def test_a_crash_is_not_out_of_memory():
    assert not looks_out_of_memory("Fatal Python error: Segmentation fault")


@pytest.mark.parametrize(
    ("script", "status", "text"),
    [
        ("import sys; sys.stdin.read(); sys.exit('mmap failed: no space')", "memory_exceeded", ""),
        ("import sys; sys.stdin.read(); sys.exit('boom')", "crashed", "without an answer: boom"),
        (
            "import os, signal, sys; print('std::bad_alloc', file=sys.stderr, flush=True);"
            " os.kill(os.getpid(), signal.SIGABRT)",
            "memory_exceeded",
            "killed by SIGABRT (out of memory)",
        ),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "memory_exceeded", "SIGKILL"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", "crashed", "killed by SIGSEGV"),
        (
            "from mai_ops.infra.child import serve\n"
            "def work(request, channel):\n"
            "    raise MemoryError('arena')\n"
            "serve(work)\n",
            "memory_exceeded",
            "MemoryError: arena",
        ),
        (
            "from mai_ops.infra.child import serve\n"
            "def work(request, channel):\n"
            "    raise ValueError('bad shape')\n"
            "serve(work)\n",
            "crashed",
            "ValueError: bad shape",
        ),
    ],
)
def test_how_a_child_ended(monkeypatch, script, status, text):
    _child_script(monkeypatch, script)
    outcome = run_child("any.module", {}, ChildLimits())
    assert outcome.status == status, outcome.message
    assert text in outcome.message


def test_a_failure_the_child_understood_is_an_error_step(monkeypatch):
    _child_script(
        monkeypatch,
        "from mai_ops.infra.child import ChildFailure, serve\n"
        "def work(request, channel):\n"
        "    raise ChildFailure('input_mismatch', 'wrong shape', sample='0003')\n"
        "serve(work)\n",
    )
    outcome = run_child("any.module", {}, ChildLimits())
    assert outcome.status == "ok"
    assert outcome.steps["error"] == {
        "sample": "0003",
        "code": "input_mismatch",
        "message": "wrong shape",
    }


def test_a_flood_on_stderr_is_kept_bounded(monkeypatch):
    _child_script(
        monkeypatch,
        "import sys\n"
        "from mai_ops.infra.child import serve\n"
        "def work(request, channel):\n"
        "    for _ in range(20000):\n"
        "        sys.stderr.write('x' * 1000 + '\\n')\n"
        "    sys.stderr.write('last words\\n')\n"
        "serve(work)\n",
    )
    outcome = run_child("any.module", {}, ChildLimits())
    assert outcome.status == "ok"
    assert len(outcome.stderr) <= STDERR_TAIL_CHARS
    assert outcome.stderr_line == "last words"


def test_an_interrupted_caller_leaves_nothing_running(monkeypatch, tmp_path):
    # Unconfined, so the grandchild's pid means something here; a confined child's
    # namespace dies with it (tests/test_sandbox.py).
    monkeypatch.setenv("MAI_OPS_SANDBOX", "off")
    pid_file = tmp_path / "grandchild.pid"
    _child_script(
        monkeypatch,
        "import subprocess, sys, time\n"
        "sys.stdin.read()\n"
        "p = subprocess.Popen(['sleep', '600'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(600)\n",
    )

    class Interrupted(Exception):
        pass

    def interrupt(signum, frame):
        if pid_file.exists() and pid_file.read_text():
            raise Interrupted
        signal.setitimer(signal.ITIMER_REAL, 0.2)

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    try:
        with pytest.raises(Interrupted):
            run_child("any.module", {}, ChildLimits(timeout_s=600))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert process_gone(int(pid_file.read_text()))


def test_a_childs_file_size_cap_comes_from_its_limits(monkeypatch, tmp_path):
    """``ChildLimits.max_file_bytes`` reaches the child (prlimit, the sandbox, its own cap)."""
    _child_script(
        monkeypatch,
        "import json, resource, sys\n"
        "request = json.load(sys.stdin)\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)\n"
        "print(json.dumps({'step': 'limits', 'soft': soft, 'hard': hard,"
        " 'asked': request['max_file_bytes']}))\n"
        "print(json.dumps({'step': 'done'}))\n",
    )
    limits = ChildLimits(timeout_s=60, memory_mb=1024, max_file_bytes=3 * MB, scratch=tmp_path)
    outcome = run_child("any.module", {}, limits)
    assert outcome.status == "ok", outcome.message
    assert outcome.steps["limits"] == {"soft": 3 * MB, "hard": 3 * MB, "asked": 3 * MB}
