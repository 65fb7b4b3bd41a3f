"""One way to run a participant's model in a limited child process.

A hostile or huge model must be killed and reported, never take the worker down. So
everything that opens a participant's model (the checks, the TensorFlow conversion,
the LiteRT benchmark, the fidelity run) goes through :func:`run_child`:

- start: ``python -m <module>`` (:func:`child_command`, the one hook tests replace),
  passed through :attr:`ChildLimits.wrap` (where a real sandbox will wrap the argv),
  with an allow-listed environment (:func:`child_env`), its own session and process
  group, no inherited file descriptors, and its address space capped with ``prlimit``
  on its pid right after the start. No Python runs between fork and exec: a
  ``preexec_fn`` can deadlock in a threaded parent such as an Airflow worker. The
  child caps itself again (:func:`apply_own_limits`) before it reads the model.
- talk: one JSON request on stdin; the child answers with JSON lines
  ``{"step": ..., ...}`` on a private copy of its stdout, after pointing fd 1 at
  stderr so nothing the C++ runtimes print can corrupt them (:class:`ChildChannel`).
  Each step is written as soon as it is known, so a child killed halfway has still
  said how far it got. ``done`` ends a normal run, ``error`` is a failure the child
  understood (:class:`ChildFailure`: a code and a message), ``fatal`` one it did not
  (an exception, or ``memory: true`` for a MemoryError). :func:`serve` is the main of
  every child.
- stop: on the timeout, and when the caller itself is interrupted, the child's whole
  process group is killed. Output is read as it comes, with bounded buffers.
- judge: :class:`ChildOutcome` says ``ok`` (the child answered ``done`` or ``error``),
  ``timeout`` (we killed it), ``memory_exceeded`` (a ``fatal`` MemoryError, a SIGKILL we
  did not send, i.e. the kernel's OOM killer, or an out-of-memory signature on stderr,
  :data:`OUT_OF_MEMORY`) or ``crashed``. What each step means is the caller's business.

Nothing here imports numpy, LiteRT or TensorFlow: parents stay light.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import select
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mai_ops import PROJECT_ROOT

MB = 1024 * 1024
# No child writes more than this to one file (converted models, outputs).
MAX_FILE_BYTES = 4 * 1024 * MB
# What a child inherits from the worker's environment. Never the connections
# (AIRFLOW_CONN_*, AWS_*, SMTP secrets): a participant's model or Keras code runs there.
_ENV_NAMES = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "VIRTUAL_ENV", "LD_LIBRARY_PATH"}
_ENV_PREFIXES = ("OPENBLAS_", "OMP_", "MKL_", "TF_", "KERAS_", "XLA_", "PYTHON")
# numpy's BLAS would start a thread per core, each reserving address space that counts
# against RLIMIT_AS; the children never need BLAS threads.
SINGLE_THREADED = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# Every way a child says it ran out of memory: Python, the C++ runtimes (std::bad_alloc,
# "failed to allocate"), glibc and the loader under RLIMIT_AS (mmap failures).
OUT_OF_MEMORY = re.compile(
    r"bad_alloc|out of memory|cannot allocate memory|failed to (?:re)?allocate|memoryerror"
    r"|failed to mmap|mmap failed|failed to map|memory allocation",
    re.IGNORECASE,
)
# What the parent keeps of a child's output: all answer lines up to this size, and the
# end of stderr. A model that floods either costs nothing but the read.
MAX_ANSWER_BYTES = 64 * MB
STDERR_TAIL_CHARS = 4000
_DRAIN_AFTER_KILL_S = 5.0

PROJECT_ROOT = str(PROJECT_ROOT)


def looks_out_of_memory(text: str) -> bool:
    """Whether ``text`` (an exception or stderr) carries an out-of-memory signature."""
    return bool(OUT_OF_MEMORY.search(text))


# ---------------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------------


def child_env(project_root: str | os.PathLike | None = PROJECT_ROOT) -> dict[str, str]:
    """An allow-listed environment for a child that runs participants' models.

    ``project_root`` goes first on PYTHONPATH so ``python -m mai_ops...`` finds this code.
    """
    env = {k: v for k, v in os.environ.items() if k in _ENV_NAMES or k.startswith(_ENV_PREFIXES)}
    if project_root is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(project_root), env.get("PYTHONPATH")])
        )
    return env


def limit_child(pid: int, memory_mb: int, max_file_bytes: int = MAX_FILE_BYTES) -> None:
    """Cap a started child's address space and file size, no core dumps (best effort)."""
    try:
        import resource

        limit = memory_mb * MB
        resource.prlimit(pid, resource.RLIMIT_AS, (limit, limit))
        resource.prlimit(pid, resource.RLIMIT_CORE, (0, 0))
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
    except (ImportError, AttributeError, OSError, ValueError):
        pass  # the child applies the same limits to itself before opening the model


def apply_own_limits(memory_mb: int, max_file_bytes: int = MAX_FILE_BYTES) -> None:
    """In the child: the same caps, never above a hard limit already in force."""
    import resource

    limit = int(memory_mb) * MB
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _, hard_fsize = resource.getrlimit(resource.RLIMIT_FSIZE)
    fsize = (
        max_file_bytes if hard_fsize == resource.RLIM_INFINITY else min(max_file_bytes, hard_fsize)
    )
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))


def mapped_bytes() -> int:
    """In the child: its address space in use now (VmSize), 0 when unknown."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmSize:")[1].split()[0]) * 1024
    except (OSError, IndexError, ValueError):
        return 0


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


# ---------------------------------------------------------------------------------
# The parent side
# ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChildLimits:
    """What one child may use, and how it is started.

    ``timeout_s`` wall-clock seconds, ``memory_mb`` address space in MiB,
    ``max_file_bytes`` the largest file it may write (``RLIMIT_FSIZE``). ``scratch`` is
    the one directory the child needs to write (its TMPDIR; a sandbox will keep the rest
    of the file system read-only). ``wrap`` turns the child's argv into the argv that
    starts it (a sandbox launcher goes there). ``env`` is added to the allow-listed
    environment.
    """

    timeout_s: float = 120.0
    memory_mb: int = 4096
    max_file_bytes: int = MAX_FILE_BYTES
    scratch: Path | None = None
    wrap: Callable[[list[str]], list[str]] | None = None
    env: Mapping[str, str] = field(default_factory=lambda: dict(SINGLE_THREADED))

    def argv(self, module: str) -> list[str]:
        """The command that starts ``module``: the one place where it gets wrapped."""
        command = child_command(module)
        return list(self.wrap(command)) if self.wrap else command


@dataclass
class ChildOutcome:
    """How a child ended and what it reported.

    ``steps`` maps each step to its record (the ``step`` key removed); a step named in
    ``repeated`` maps to the list of its records. ``message`` says why a child that is
    not ``ok`` stopped.
    """

    status: str  # ok | timeout | memory_exceeded | crashed
    steps: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    returncode: int | None = None
    stderr: str = ""  # its end, STDERR_TAIL_CHARS at most
    seconds: float = 0.0
    last_step: str = "start"

    @property
    def stderr_line(self) -> str:
        """The last non-empty line the child wrote on stderr (bounded), or ""."""
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        return lines[-1][:300] if lines else ""


def child_command(module: str) -> list[str]:
    """The argv of the child ``module``; tests replace it to get a child that misbehaves."""
    return [sys.executable, "-m", module]


def run_child(
    module: str,
    request: Mapping[str, Any],
    limits: ChildLimits,
    *,
    repeated: Collection[str] = (),
) -> ChildOutcome:
    """Run ``python -m module`` on ``request`` in a limited child and say how it ended.

    The child receives ``request`` with ``memory_mb`` and ``max_file_bytes`` added.
    ``repeated`` names the steps the child may send more than once (collected as lists).
    """
    payload = json.dumps(
        dict(
            request,
            memory_mb=int(limits.memory_mb),
            max_file_bytes=int(limits.max_file_bytes),
        )
    ).encode()
    env = child_env()
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(limits.env)
    if limits.scratch is not None:
        env["TMPDIR"] = str(limits.scratch)
    command = limits.argv(module)
    argv = _confined(command, request, limits, env)  # SandboxUnavailable: refuse
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            close_fds=True,
            start_new_session=True,  # its own process group: the kill reaches everything
        )
    except OSError as exc:
        return ChildOutcome("crashed", message=f"could not start {module}: {exc}")
    limit_child(proc.pid, limits.memory_mb, int(limits.max_file_bytes))
    deadline = time.monotonic() + limits.timeout_s
    io = _Exchange(proc, payload)
    try:
        timed_out = not io.run(deadline)
        if not timed_out:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
        if timed_out:
            kill_group(proc)
            io.close_stdin()
            io.run(time.monotonic() + _DRAIN_AFTER_KILL_S)  # what it said before
            proc.wait()
    except BaseException:
        kill_group(proc)  # the caller was interrupted: leave nothing running
        proc.wait()
        raise
    finally:
        io.close()
    returncode = proc.returncode
    if argv is not command and returncode is not None and 128 < returncode < 128 + 65:
        returncode = 128 - returncode  # bubblewrap reports a child's death by signal n as 128+n
    outcome = ChildOutcome(
        "ok",
        returncode=returncode,
        stderr=io.stderr_tail,
        seconds=time.monotonic() - started,
    )
    outcome.steps, outcome.last_step = _parse_steps(bytes(io.answer), repeated)
    _judge(outcome, limits, timed_out=timed_out, memory_on_stderr=io.out_of_memory)
    return outcome


def _judge(
    outcome: ChildOutcome, limits: ChildLimits, *, timed_out: bool, memory_on_stderr: bool
) -> None:
    """Set ``status`` and ``message`` from how the child ended."""
    steps, code = outcome.steps, outcome.returncode
    if timed_out:
        outcome.status = "timeout"
        outcome.message = f"stopped after {limits.timeout_s:g} s without an answer"
    elif isinstance(steps.get("fatal"), dict):
        fatal = steps["fatal"]
        outcome.status = "memory_exceeded" if fatal.get("memory") else "crashed"
        outcome.message = str(fatal.get("message") or "no message")
    elif code is not None and code < 0:
        # A SIGKILL we did not send is the kernel's OOM killer.
        memory = -code == signal.SIGKILL or memory_on_stderr
        outcome.status = "memory_exceeded" if memory else "crashed"
        outcome.message = f"killed by {signal_name(-code)}" + (" (out of memory)" if memory else "")
        if outcome.stderr_line:
            outcome.message += f": {outcome.stderr_line}"
    elif code != 0 or not ("done" in steps or "error" in steps):
        outcome.status = "memory_exceeded" if memory_on_stderr else "crashed"
        tail = outcome.stderr_line or "no output"
        outcome.message = f"exited with status {code} without an answer: {tail}"


def _confined(
    argv: list[str], request: Mapping[str, Any], limits: ChildLimits, env: dict[str, str]
) -> list[str]:
    """``argv`` inside the sandbox: it reads the files the request names, writes scratch.

    Raises :class:`~mai_ops.infra.sandbox.SandboxUnavailable` when the sandbox is
    required and cannot be set up: participant code is then not run at all.
    """
    from mai_ops.infra import sandbox

    if not sandbox.enabled():
        return argv  # the same list: not confined
    scratch = limits.scratch.resolve() if limits.scratch is not None else None
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)  # e.g. the folder a conversion fills
        sandbox.prepare_scratch(scratch)
    inside = [p for p in _paths_in(request) if scratch is None or not p.is_relative_to(scratch)]
    box = sandbox.Confinement(
        scratch,
        tuple(inside),
        memory_mb=int(limits.memory_mb),
        max_file_bytes=int(limits.max_file_bytes),
    )
    return sandbox.confine(argv, box, env)


def _paths_in(value: Any) -> list[Path]:
    """Every existing absolute path named anywhere in a request (the child's inputs)."""
    if isinstance(value, str):
        path = Path(value)
        return [path.resolve()] if path.is_absolute() and path.exists() else []
    if isinstance(value, Mapping):
        return [p for v in value.values() for p in _paths_in(v)]
    if isinstance(value, list | tuple):
        return [p for v in value for p in _paths_in(v)]
    return []


class _Exchange:
    """Send the request and read both pipes as they come, keeping bounded amounts."""

    def __init__(self, proc: subprocess.Popen, payload: bytes) -> None:
        self.proc = proc
        self.answer = bytearray()
        self.stderr_tail = ""
        self.out_of_memory = False
        self._payload, self._sent = memoryview(payload), 0
        self._decode = codecs.getincrementaldecoder("utf-8")("replace").decode
        self._selector = selectors.DefaultSelector()
        self._selector.register(proc.stdin, selectors.EVENT_WRITE)
        for pipe in (proc.stdout, proc.stderr):
            self._selector.register(pipe, selectors.EVENT_READ)

    def run(self, deadline: float) -> bool:
        """Until the child closes its output: False when ``deadline`` came first."""
        while self._selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for key, _ in self._selector.select(remaining):
                if key.fileobj is self.proc.stdin:
                    self._write()
                else:
                    self._read(key.fileobj)
        return True

    def _write(self) -> None:
        chunk = self._payload[self._sent : self._sent + select.PIPE_BUF]
        try:
            self._sent += os.write(self.proc.stdin.fileno(), chunk)
        except BrokenPipeError:
            self._sent = len(self._payload)  # it stopped reading: its answer will say why
        if self._sent >= len(self._payload):
            self.close_stdin()

    def _read(self, pipe: Any) -> None:
        chunk = os.read(pipe.fileno(), 65536)
        if not chunk:
            self._selector.unregister(pipe)
        elif pipe is self.proc.stdout:
            self.answer += chunk[: max(MAX_ANSWER_BYTES - len(self.answer), 0)]
        else:
            text = self._decode(chunk)
            if not self.out_of_memory:
                self.out_of_memory = looks_out_of_memory(self.stderr_tail[-200:] + text)
            self.stderr_tail = (self.stderr_tail + text)[-STDERR_TAIL_CHARS:]

    def close_stdin(self) -> None:
        if self.proc.stdin.closed:
            return
        self._selector.unregister(self.proc.stdin)
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass

    def close(self) -> None:
        self.close_stdin()
        self._selector.close()
        self.proc.stdout.close()
        self.proc.stderr.close()


def _parse_steps(out: bytes, repeated: Collection[str]) -> tuple[dict[str, Any], str]:
    """The steps a child reported, and the name of the last one."""
    steps: dict[str, Any] = {name: [] for name in repeated}
    last = "start"
    for line in out.decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if not isinstance(record, dict) or not isinstance(record.get("step"), str):
            continue
        last = record.pop("step")
        if last in steps and isinstance(steps[last], list):
            steps[last].append(record)
        else:
            steps[last] = record
    return steps, last


# ---------------------------------------------------------------------------------
# The child side
# ---------------------------------------------------------------------------------


class ChildFailure(Exception):
    """Raised in a child: a failure it understood, sent as an ``error`` step.

    ``code`` and ``message`` for the parent, ``data`` any other fields (e.g. ``sample``).
    """

    def __init__(self, code: str, message: str, **data: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class ChildChannel:
    """In the child: answer lines on a private copy of stdout; fd 1 now goes to stderr."""

    def __init__(self) -> None:
        self._out = os.fdopen(os.dup(1), "w", encoding="utf-8")
        os.dup2(2, 1)
        sys.stdout = sys.stderr

    def send(self, step: str, **data: Any) -> None:
        self._out.write(json.dumps({"step": step, **data}, default=_jsonable) + "\n")
        self._out.flush()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    return str(value)


def serve(work: Callable[[dict[str, Any], ChildChannel], None]) -> int:
    """The main of a child: read the request, limit itself, ``work``, then ``done``.

    Whatever ``work`` raises becomes the last answer: a :class:`ChildFailure` an
    ``error`` step, anything else a ``fatal`` one (``memory`` set for a MemoryError or
    an out-of-memory message). Returns the exit status, always 0 once answered.
    """
    channel = ChildChannel()
    try:
        request = json.loads(sys.stdin.read())
        if not isinstance(request, dict):
            raise TypeError("the request is not a JSON object")
        apply_own_limits(
            int(request.get("memory_mb", ChildLimits.memory_mb)),
            int(request.get("max_file_bytes", MAX_FILE_BYTES)),
        )
        work(request, channel)
        channel.send("done")
    except ChildFailure as exc:
        channel.send("error", **exc.data, code=exc.code, message=exc.message)
    except MemoryError as exc:
        channel.send("fatal", memory=True, message=f"MemoryError: {exc}".rstrip(": "))
    except Exception as exc:  # noqa: BLE001 - report anything, the parent decides
        message = f"{type(exc).__name__}: {exc}"[:2000]
        channel.send("fatal", memory=looks_out_of_memory(message), message=message)
    return 0
