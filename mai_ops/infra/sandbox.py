"""The sandbox every child that touches participant bytes runs in.

A submitted model is hostile: a SavedModel runs TensorFlow ops while it loads, a
legacy Keras file can carry Python bytecode, a crafted flatbuffer may exploit the
interpreter. Limits on memory and time do not stop any of that from reading the
worker's secrets or writing where it should not. So the child is started through
bubblewrap (Debian's ``bubblewrap``, the sandbox Flatpak uses), which gives it:

- its own network namespace (only a loopback nobody listens on), pid namespace (it
  sees its own processes only; ``/proc`` is fresh) and IPC/UTS namespaces;
- a filesystem of read-only system libraries, the Python install and this package,
  a private ``/tmp`` and one writable folder: its scratch folder;
- an unprivileged uid (65534) with no capabilities and ``no_new_privs``: as root,
  bubblewrap builds the namespaces and ``setpriv`` drops to the uid (a user
  namespace would map the child's uid back to root on the host); an unprivileged
  worker (the production image) gets a user namespace instead;
- a cleared environment (only what the caller passes), no inherited descriptors,
  and ``prlimit`` caps on address space, file size, core dumps and processes, set
  before bubblewrap runs.

``MAI_OPS_SANDBOX=off`` runs children unconfined, for a developer machine without
bubblewrap; the records of such runs say so. When the sandbox is required and
cannot be set up, :func:`confine` raises :class:`SandboxUnavailable`: the worker
refuses rather than running participant code unconfined. docs/security.md has the
threat model and what was tested.
"""

from __future__ import annotations

import functools
import os
import shutil
import site
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mai_ops import PROJECT_ROOT

SANDBOX_UID = 65534  # nobody
MODE_ENV = "MAI_OPS_SANDBOX"
# A child may own this many processes and threads (TensorFlow starts one per core).
MAX_PROCESSES = 1024
TMPFS_BYTES = 256 * 1024 * 1024
_MB = 1024 * 1024


class SandboxUnavailable(RuntimeError):
    """The sandbox is required here but cannot be set up (the message says why)."""


@dataclass(frozen=True)
class Confinement:
    """What a confined child may touch and use.

    ``scratch`` is its only writable folder, mounted at the same path inside so paths
    in the request stay valid; ``readable`` are extra read-only paths it needs
    (inputs the caller keeps elsewhere).
    """

    scratch: Path | None
    readable: tuple[Path, ...] = ()
    memory_mb: int = 4096
    max_file_bytes: int = 4 * 1024 * _MB


def enabled() -> bool:
    """False only when an operator switched the sandbox off for this process."""
    return os.environ.get(MODE_ENV, "bwrap").strip().lower() not in ("off", "0", "false", "no")


def _read_only_roots() -> list[Path]:
    """What every child reads: the Python install, the environment, this package."""
    roots = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}
    roots.add(Path(sys.prefix).absolute())  # also where it is called from, if a link
    user_site = Path(site.getusersitepackages())
    if user_site.is_dir():  # the official Airflow image installs packages there
        roots.add(user_site.resolve())
    # Only the package from the project folder: next to it live the Airflow home,
    # its config and logs, which a child must not read.
    roots.add((PROJECT_ROOT / "mai_ops").resolve())
    return sorted(roots)


def _ancestors(paths: Iterable[Path]) -> list[Path]:
    """Every folder above the mount points, shallow first, so each can be made 0755."""
    seen: set[Path] = set()
    for path in paths:
        for parent in reversed(path.parents):
            if parent != Path("/"):
                seen.add(parent)
    return sorted(seen, key=lambda p: (len(p.parts), str(p)))


def confine(argv: Sequence[str], box: Confinement, env: Mapping[str, str]) -> list[str]:
    """``argv`` wrapped so that it runs confined as described in the module docstring.

    The caller starts the result with ``close_fds=True`` (the default), its own
    session, and stdin/stdout/stderr pipes.
    """
    if not enabled():
        return list(argv)
    ready, reason = available()
    if not ready:
        raise SandboxUnavailable(reason)
    return _wrapped(argv, box, env)


def _wrapped(argv: Sequence[str], box: Confinement, env: Mapping[str, str]) -> list[str]:
    bwrap = shutil.which("bwrap")
    prlimit = shutil.which("prlimit")
    if bwrap is None or prlimit is None:
        raise SandboxUnavailable("bubblewrap (bwrap) or prlimit is not installed")
    scratch = box.scratch.resolve() if box.scratch is not None else None
    read_only = [*_read_only_roots(), *(Path(p).absolute() for p in box.readable)]
    writable = [scratch] if scratch is not None else []
    memory = box.memory_mb * _MB
    cmd = [
        prlimit,
        f"--as={memory}:{memory}",
        f"--fsize={box.max_file_bytes}:{box.max_file_bytes}",
        "--core=0:0",
        # Counted per uid: only meaningful where the child has a uid of its own (root
        # drops to 65534); an unprivileged worker would share the count with itself.
        *([f"--nproc={MAX_PROCESSES}:{MAX_PROCESSES}"] if os.geteuid() == 0 else []),
        "--",
        bwrap,
        "--unshare-net",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "sandbox",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for name in ("lib", "lib64", "bin", "sbin"):
        link = Path("/") / name
        if link.is_symlink():
            cmd += ["--symlink", os.readlink(link), str(link)]
        elif link.is_dir():
            cmd += ["--ro-bind", str(link), str(link)]
    cmd += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    cmd += ["--ro-bind-try", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]
    # A private /tmp in memory, bounded; large temporary files go to the scratch folder.
    cmd += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777"]
    cmd += ["--size", str(TMPFS_BYTES), "--tmpfs", "/tmp"]
    for folder in _ancestors([*read_only, *writable]):
        if folder != Path("/tmp"):  # the private /tmp above keeps its sticky 1777
            cmd += ["--perms", "0755", "--dir", str(folder)]
    for path in sorted(read_only, key=lambda p: len(p.parts)):  # a folder before its files
        cmd += ["--ro-bind", str(path.resolve()), str(path)]
    for path in writable:
        cmd += ["--bind", str(path), str(path)]
    # Not the scratch folder: bwrap changes folder before setpriv, as root without
    # capabilities, which may not enter the sandbox uid's 0700 folder.
    cmd += ["--chdir", "/tmp", "--clearenv"]
    tmpdir = str(scratch) if scratch is not None else "/tmp"
    sandbox_env = {**env, "HOME": "/tmp", "TMPDIR": tmpdir, "PATH": "/usr/bin:/bin"}
    for key, value in sorted(sandbox_env.items()):
        cmd += ["--setenv", key, value]
    if os.geteuid() == 0:
        # No user namespace for root: inside one, the child's uid would be root on the
        # host. bwrap builds the namespaces, setpriv drops to nobody for good.
        cmd += ["--cap-drop", "ALL"]
        for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"):
            cmd += ["--cap-add", cap]
        cmd += [
            "--",
            shutil.which("setpriv") or "/usr/bin/setpriv",
            f"--reuid={SANDBOX_UID}",
            f"--regid={SANDBOX_UID}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
        ]
    else:
        cmd += ["--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
        cmd += ["--disable-userns"]
    return [*cmd, "--", *argv]


def prepare_scratch(folder: Path) -> None:
    """Give the sandbox's uid its scratch folder (and what the caller put there)."""
    if not enabled() or os.geteuid() != 0:
        return
    for root, dirs, files in os.walk(folder):
        os.chown(root, SANDBOX_UID, SANDBOX_UID)
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), SANDBOX_UID, SANDBOX_UID, follow_symlinks=False)


@functools.cache
def available() -> tuple[bool, str]:
    """Whether the sandbox works on this host, probed once per process, and why not."""
    with tempfile.TemporaryDirectory(prefix="mai-sandbox-probe-") as tmp:
        try:
            argv = _wrapped(["/bin/true"], Confinement(Path(tmp), memory_mb=256), {})
            prepare_scratch(Path(tmp))
            proc = subprocess.run(argv, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        except SandboxUnavailable as exc:
            return False, str(exc)
        except (OSError, subprocess.SubprocessError) as exc:
            return False, f"the sandbox probe could not run: {exc}"
    if proc.returncode != 0:
        said = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        return False, f"bubblewrap cannot create the sandbox here: {said[0][:300]}"
    return True, ""
