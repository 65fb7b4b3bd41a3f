"""Limits and clean-up for the child processes that run participants' models.

A hostile or huge model must be killed and reported, never take the worker down.
The parent caps the child's address space with ``prlimit`` right after starting it
and the child caps itself again before it opens the model: no Python runs between
fork and exec (a ``preexec_fn`` can deadlock in a threaded parent such as an
Airflow worker). On a timeout the child's whole process group is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess

from mai_ops import PROJECT_ROOT

MB = 1024 * 1024
# No child writes more than this to one file (converted models, outputs).
MAX_FILE_BYTES = 4 * 1024 * MB
# What a child inherits from the worker's environment. Never the connections
# (AIRFLOW_CONN_*, AWS_*, SMTP secrets): a participant's model or Keras code runs there.
_ENV_NAMES = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "VIRTUAL_ENV", "LD_LIBRARY_PATH"}
_ENV_PREFIXES = ("OPENBLAS_", "OMP_", "MKL_", "TF_", "KERAS_", "XLA_", "PYTHON")


PROJECT_ROOT = str(PROJECT_ROOT)


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


def limit_child(pid: int, memory_mb: int) -> None:
    """Cap a started child's address space and disable its core dumps (best effort)."""
    try:
        import resource

        limit = memory_mb * MB
        resource.prlimit(pid, resource.RLIMIT_AS, (limit, limit))
        resource.prlimit(pid, resource.RLIMIT_CORE, (0, 0))
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))
    except (ImportError, AttributeError, OSError, ValueError):
        pass  # the child applies the same limits to itself before opening the model


def apply_own_limits(memory_mb: int) -> None:
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
        MAX_FILE_BYTES if hard_fsize == resource.RLIM_INFINITY else min(MAX_FILE_BYTES, hard_fsize)
    )
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))


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
