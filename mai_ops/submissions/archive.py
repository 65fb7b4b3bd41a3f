"""Safe unpacking of a participant's submission archive (a zip).

A submission is untrusted bytes from the internet. :func:`unpack_submission` reads
the zip's central directory, validates EVERY member before a single byte is written,
then extracts by streaming with its own byte caps, into ``dest`` only. Anything it
refuses raises :class:`ArchiveError` with a stable ``code`` (for machines, registered
in :mod:`mai_ops.errors`) and a ``message`` written for the team (it goes into the reply
email).

The checks, in the order they run (the first problem found is the one reported):

1. the file is a zip at all (``not_a_zip``: missing, zero bytes, truncated, garbage,
   a bare ``.tflite`` uploaded instead of a zip), the archive's own size
   (``archive_too_large``), then, before Python's ``zipfile`` reads the central
   directory: the entry counts of the end-of-central-directory record and of its ZIP64
   twin, the directory's size (at most ``max_files`` entries' worth) and its records,
   counted one by one (``too_many_files``);
2. per member, in directory order: its name (``bad_filename``: not decodable,
   control characters, NUL, ``:``, over-long; ``absolute_path``: ``/x``, ``\\x``,
   ``C:\\x``, ``\\\\server\\share``; ``zip_slip``: any ``..`` component, with ``\\``
   treated as a separator too), its type (``symlink``, ``special_file`` for devices,
   FIFOs and sockets, from the Unix mode in ``external_attr``), its flags
   (``encrypted_member``: flag bit 0 or 6, or WinZip AES method 99), its compression
   method (``unsupported_compression``: only stored, deflate, bzip2 and LZMA), a
   second member with the same path after normalisation, compared case-insensitively
   since the team's unpacked folder must be portable, or a path that is both a file and
   a folder (``duplicate_member``), its declared size (``member_too_large``) and ratio
   (``zip_bomb``);
3. over all members: the declared total (``archive_too_large``), the overall ratio and
   members whose data overlap (``zip_bomb``, the "overlapping files" construction);
   every member's local header is then opened (no data read) so a header that
   disagrees with the directory is caught before extraction (``corrupt_member``);
4. extraction, member by member, counting the bytes really produced: more than a
   member declared (a lying header), more than the per-member or total cap, a bad
   CRC or a truncated stream all stop it (``zip_bomb`` / ``corrupt_member``) and
   everything already written is removed, leaving ``dest`` empty;
5. what was found: ``nested_archive`` (no model, but an archive inside the archive:
   we never unpack those), ``missing_model``, ``bad_factsheet``.

Decisions, so they can be explained to a team:

- The ratio check (uncompressed / compressed, per member and for the whole archive)
  applies only above :data:`RATIO_FLOOR_BYTES` (1 MiB) of uncompressed data: a small
  text file of spaces compresses 300:1 and is no bomb.
- ``max_files`` counts every entry of the zip, folders included.
- Names: ``\\`` is a path separator (some Windows tools write it); ``.`` and empty
  components are dropped (``./model.tflite`` is ``model.tflite``). A name without
  the zip's UTF-8 flag is read as UTF-8 when it is valid UTF-8 (Info-ZIP and macOS
  write UTF-8 without the flag); anything else is ``bad_filename`` (cp437 guesses
  produce garbage names, so we ask for ASCII or UTF-8 names instead).
- macOS metadata (``__MACOSX/``, ``._*`` files, ``.DS_Store``) is validated like
  everything else but not extracted.
- One folder wrapping everything (``team_x/model.tflite``) is unwrapped: ``root`` is
  that folder. ``model.tflite`` and ``model_none.tflite`` count only at the root; a
  SavedModel is the shallowest folder holding ``saved_model.pb``, a Keras model the
  shallowest ``.keras`` / ``.h5`` file. Results are the image files anywhere. The fact
  sheet is the shallowest ``.pdf`` (a name containing "fact" wins a tie); every
  ``.pdf`` must start with ``%PDF-`` within its first 1024 bytes (as PDF readers
  accept). The readme is a root file whose name starts with "readme".
- Archives inside the archive (``code.zip``) are kept as plain files and never
  unpacked; only when no model is found and such an archive exists is the reason
  ``nested_archive`` rather than ``missing_model``.
- ``dest`` must be missing or empty: it is created only once every member passed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import stat
import struct
import tempfile
import unicodedata
import zipfile
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from mai_ops.errors import StageError, stage_codes
from mai_ops.infra.child import ChildLimits, run_child

_MB = 1024 * 1024
RATIO_FLOOR_BYTES = 1 * _MB
_CHUNK = 1024 * 1024
_MAX_NAME_BYTES = 1024
_MAX_COMPONENT_BYTES = 255
_SUPPORTED_METHODS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "LZMA",
}
_AES_METHOD = 99
_FLAG_ENCRYPTED = 0x01
_FLAG_STRONG_ENCRYPTION = 0x40
_FLAG_UTF8 = 0x800
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
KERAS_SUFFIXES = frozenset({".keras", ".h5", ".hdf5"})
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".7z", ".rar")
_MACOS_JUNK_DIR = "__MACOSX"


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps on one archive; sizes in MiB, ratios uncompressed / compressed."""

    max_files: int = 200
    max_total_mb: float = 2048
    max_member_mb: float = 1024
    max_ratio: float = 200.0


class ArchiveError(StageError):
    """An archive refused: a registered ``code`` of the unpack stage, a ``message`` for the team."""

    def __init__(self, code: str, message: str):
        super().__init__(code, message)
        assert self.stage == "unpack", code


@dataclass
class Submission:
    """What an unpacked archive holds; every path is inside ``dest``."""

    root: Path
    model: Path | None = None
    model_none: Path | None = None
    saved_model: Path | None = None
    keras_model: Path | None = None
    factsheet: Path | None = None
    readme: Path | None = None
    results: list[Path] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # POSIX paths relative to root

    def as_json(self) -> dict:
        def rel(p: Path | None) -> str | None:
            return p.relative_to(self.root).as_posix() if p is not None else None

        return {
            "model": rel(self.model),
            "model_none": rel(self.model_none),
            "saved_model": rel(self.saved_model),
            "keras_model": rel(self.keras_model),
            "factsheet": rel(self.factsheet),
            "readme": rel(self.readme),
            "results": [rel(p) for p in self.results],
            "files": list(self.files),
        }


@dataclass(frozen=True)
class _Member:
    info: zipfile.ZipInfo
    parts: tuple[str, ...]  # normalised path components
    is_dir: bool
    junk: bool  # macOS metadata: validated, not extracted

    @property
    def path(self) -> str:
        return "/".join(self.parts)


def unpack_submission(
    archive: str | Path, dest: str | Path, limits: ArchiveLimits = ArchiveLimits()
) -> Submission:
    """Validate every member of ``archive``, then extract it into ``dest``."""
    archive, dest = Path(archive), Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ValueError(f"{dest} must be missing or an empty folder")
    size = _archive_size(archive, limits)
    with _open_zip(archive) as zf:
        members = _validate_members(zf, limits)
        _validate_totals(members, size, limits)
        _open_headers(zf, members)
        created_dest = not dest.exists()
        dest.mkdir(parents=True, exist_ok=True)
        try:
            _extract(zf, members, dest, limits)
            return _inspect(members, dest)
        except BaseException:
            _empty(dest, remove=created_dest)
            raise


CHILD = "mai_ops.submissions.archive_child"
# What unpacking needs: Python and zipfile, a deflate/bzip2 window, an LZMA dictionary
# of a normal size. A decompressor asked for more is a bomb.
UNPACK_MEMORY_MB = 1024
UNPACK_TIMEOUT_S = 600.0


def unpack_in_child(
    archive: str | Path,
    dest: str | Path,
    limits: ArchiveLimits = ArchiveLimits(),
    *,
    timeout_s: float = UNPACK_TIMEOUT_S,
    memory_mb: int = UNPACK_MEMORY_MB,
) -> Submission:
    """:func:`unpack_submission` in a limited, sandboxed child; the same answers.

    The child (:mod:`mai_ops.submissions.archive_child`) runs through the one child
    runner, like conversion and the checks: its own memory cap, a wall-clock timeout,
    files no larger than the per-member cap, writing only in ``dest``. An archive that
    makes it run out of memory or time is a ``zip_bomb``; a child that dies otherwise
    is ours (``internal_error``, raised as a :class:`StageError`). Raises
    :class:`~mai_ops.infra.sandbox.SandboxUnavailable` when the sandbox cannot be set
    up: nothing is unpacked then.
    """
    archive, dest = Path(archive).absolute(), Path(dest).absolute()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ValueError(f"{dest} must be missing or an empty folder")
    _archive_size(archive, limits)  # missing, empty or oversized: no child for that
    member_cap = int(limits.max_member_mb * _MB)
    child_limits = ChildLimits(
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        max_file_bytes=member_cap + _MB,
        scratch=dest,
    )
    with _readable_by_the_sandbox(archive, dest) as readable:
        request = {
            "archive": str(readable),
            "dest": str(dest),
            "limits": dataclasses.asdict(limits),
        }
        outcome = run_child(CHILD, request, child_limits)
    if outcome.status != "ok" or "unpacked" not in outcome.steps:
        if dest.is_dir():
            _empty(dest, remove=False)
    if outcome.status == "timeout":
        raise ArchiveError(
            "zip_bomb",
            f"unpacking did not finish within {timeout_s:g} s; this looks like a zip bomb",
        )
    if outcome.status == "memory_exceeded":
        raise ArchiveError(
            "zip_bomb",
            f"unpacking needs more than {memory_mb} MB of memory; this looks like a zip bomb",
        )
    error = outcome.steps.get("error")
    if outcome.status == "ok" and isinstance(error, dict):
        code, message = str(error.get("code")), str(error.get("message", ""))
        if code in stage_codes("unpack"):
            raise ArchiveError(code, message)
    unpacked = outcome.steps.get("unpacked")
    if outcome.status != "ok" or not isinstance(unpacked, dict):
        raise StageError(
            "internal_error", f"the unpacking process stopped: {outcome.message or 'no answer'}"
        )
    return _submission_from(unpacked, dest, limits)


@contextlib.contextmanager
def _readable_by_the_sandbox(archive: Path, dest: Path) -> Generator[Path, None, None]:
    """``archive``, or a private copy others may read when the child runs as another uid."""
    if os.geteuid() != 0 or archive.stat().st_mode & stat.S_IROTH:
        yield archive
        return
    folder = Path(tempfile.mkdtemp(prefix="archive-", dir=dest.parent))
    try:
        folder.chmod(0o755)
        copy = folder / archive.name
        shutil.copyfile(archive, copy)
        copy.chmod(0o644)
        yield copy
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _submission_from(answer: dict, dest: Path, limits: ArchiveLimits) -> Submission:
    """The child's answer as a :class:`Submission`, trusting none of its paths.

    Everything in ``dest`` must be a folder or a regular file (a link made by a child
    that went wrong would point the next stages elsewhere) and every path named must
    stay inside ``dest``.
    """
    base = dest.resolve()
    seen = 0
    for folder, dirs, files in os.walk(base):
        for name in [*dirs, *files]:
            seen += 1
            mode = os.lstat(os.path.join(folder, name)).st_mode
            if seen > limits.max_files or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                _empty(dest, remove=False)
                raise StageError(
                    "internal_error", "the unpacking process left something unexpected"
                )

    def inside(rel: object, root: Path) -> Path | None:
        if rel is None:
            return None
        path = Path(os.path.normpath(root / str(rel)))
        if not Path(os.path.realpath(path)).is_relative_to(base):
            _empty(dest, remove=False)
            raise StageError("internal_error", "the unpacking process named a path outside")
        return path

    root = inside(answer.get("root", "."), dest) or dest
    sub = Submission(root=root, files=[str(f) for f in answer.get("files", [])])
    for name in ("model", "model_none", "saved_model", "keras_model", "factsheet", "readme"):
        setattr(sub, name, inside(answer.get(name), root))
    sub.results = [inside(p, root) for p in answer.get("results", [])]
    return sub


# ---------------------------------------------------------------------------------
# 1. the archive itself
# ---------------------------------------------------------------------------------


def _archive_size(archive: Path, limits: ArchiveLimits) -> int:
    try:
        size = archive.stat().st_size if archive.is_file() else -1
    except OSError:
        size = -1
    if size < 0:
        raise ArchiveError("not_a_zip", f"no archive found at {archive.name}")
    if size == 0:
        raise ArchiveError("not_a_zip", f"{archive.name} is empty (0 bytes); upload a .zip file")
    if size > limits.max_total_mb * _MB:
        raise ArchiveError(
            "archive_too_large",
            f"the archive is {_size(size)}, over the limit of {limits.max_total_mb:g} MB",
        )
    with archive.open("rb") as fh:
        head = fh.read(8)
    directory = _read_directory(archive, size)
    if directory is None:
        hint = ""
        if head[4:8] == b"TFL3":
            hint = " It looks like a bare .tflite model: put model.tflite inside a .zip file."
        elif head.startswith(b"PK\x03\x04"):
            hint = " It starts like a zip but its end is missing (truncated upload?)."
        elif head.startswith(b"\x1f\x8b") or head.startswith(b"7z") or head.startswith(b"Rar!"):
            hint = " It looks like a gzip/tar, 7z or rar archive; only .zip is accepted."
        raise ArchiveError("not_a_zip", f"{archive.name} is not a readable zip archive.{hint}")
    _check_directory(archive, directory, limits)
    return size


# The central directory's record of one entry: 46 bytes, the name (at most
# _MAX_NAME_BYTES, longer ones are refused anyway), and room for extra fields and a
# comment. A directory larger than max_files of these holds more entries than allowed,
# or padding; either way zipfile would read all of it into memory.
_DIRECTORY_ENTRY_BYTES = 46 + _MAX_NAME_BYTES + 1024
_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_EOCD = b"PK\x06\x06"
_CENTRAL = b"PK\x01\x02"


@dataclass(frozen=True)
class _Directory:
    """What the end records say about the central directory (the largest of each)."""

    entries: int  # the most entries any end record declares
    size: int  # the largest central directory size any end record declares
    start: int  # where zipfile will read the directory from
    length: int  # how many bytes it will read there


def _read_directory(archive: Path, size: int) -> _Directory | None:
    """The end-of-central-directory record and its ZIP64 twin, found as zipfile finds them.

    Read here so an archive declaring millions of entries, or a directory of
    gigabytes, is refused before ``zipfile`` reads the directory and builds an object
    for each entry. Both entry counts of each record count, and the ZIP64 record is
    read where zipfile reads it (just before its locator) and where the locator points.
    """
    if size < 22:
        return None
    with archive.open("rb") as fh:
        fh.seek(size - 22)
        record = fh.read(22)
        at = size - 22
        if not (record[:4] == _EOCD and record[-2:] == b"\0\0"):
            first = max(size - (1 << 16) - 22, 0)
            fh.seek(first)
            tail = fh.read()
            found = tail.rfind(_EOCD)
            if found < 0 or len(tail) - found < 22:
                return None
            record, at = tail[found : found + 22], first + found
        _, _, _, here, total, length, _, _ = struct.unpack("<4s4H2LH", record)
        entries, largest, start = max(here, total), length, at - length
        if at >= 20:
            fh.seek(at - 20)
            locator = fh.read(20)
            if locator[:4] == _ZIP64_LOCATOR:
                (pointed,) = struct.unpack("<Q", locator[8:16])
                for where in dict.fromkeys((at - 20 - 56, pointed)):
                    if not 0 <= where <= size - 56:
                        continue
                    fh.seek(where)
                    record64 = fh.read(56)
                    if record64[:4] != _ZIP64_EOCD:
                        continue
                    here, total, length64, _ = struct.unpack("<4Q", record64[24:56])
                    entries = max(entries, here, total)
                    largest = max(largest, length64)
                    if where == at - 20 - 56:  # the one zipfile uses
                        length, start = length64, where - length64
    return _Directory(entries, largest, start, length)


def _check_directory(archive: Path, directory: _Directory, limits: ArchiveLimits) -> None:
    """Entry counts, the directory's size, then its records counted one by one."""
    if directory.entries > limits.max_files:
        raise ArchiveError(
            "too_many_files",
            f"the archive has {directory.entries} entries, more than the limit of "
            f"{limits.max_files} (files and folders count)",
        )
    cap = limits.max_files * _DIRECTORY_ENTRY_BYTES
    if directory.size > cap:
        raise ArchiveError(
            "too_many_files",
            f"the archive's directory is {_size(directory.size)}, more than {limits.max_files} "
            f"entries can need ({cap:,} bytes); the limit is {limits.max_files} entries "
            "(files and folders count)",
        )
    if directory.start < 0:
        return  # zipfile says it is not a zip: not_a_zip
    with archive.open("rb") as fh:
        fh.seek(directory.start)
        data = fh.read(directory.length)
    count, pos = 0, 0
    while pos + 46 <= len(data) and data[pos : pos + 4] == _CENTRAL:
        count += 1
        if count > limits.max_files:
            raise ArchiveError(
                "too_many_files",
                f"the archive's directory lists more than {limits.max_files} entries "
                f"(its end record says {directory.entries}); the limit is "
                f"{limits.max_files} (files and folders count)",
            )
        name, extra, comment = struct.unpack("<3H", data[pos + 28 : pos + 34])
        pos += 46 + name + extra + comment


class _open_zip:
    """``zipfile.ZipFile`` whose parse errors become archive codes."""

    def __init__(self, archive: Path):
        self.archive = archive
        self.zf: zipfile.ZipFile | None = None

    def __enter__(self) -> zipfile.ZipFile:
        name = self.archive.name
        try:
            self.zf = zipfile.ZipFile(self.archive)
        except UnicodeDecodeError as exc:
            raise ArchiveError(
                "bad_filename",
                f"a member name is marked as UTF-8 but is not valid UTF-8 (bytes "
                f"{exc.object[exc.start : exc.end + 8]!r}); use ASCII or UTF-8 file names",
            ) from None
        except NotImplementedError as exc:
            raise ArchiveError(
                "unsupported_compression", f"{name} needs a zip feature we do not support: {exc}"
            ) from None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
            raise ArchiveError(
                "not_a_zip", f"{name} is not a readable zip archive ({exc})"
            ) from None
        return self.zf

    def __exit__(self, *exc: object) -> None:
        if self.zf is not None:
            self.zf.close()


# ---------------------------------------------------------------------------------
# 2. every member, before anything is written
# ---------------------------------------------------------------------------------


def _validate_members(zf: zipfile.ZipFile, limits: ArchiveLimits) -> list[_Member]:
    infos = zf.infolist()
    if len(infos) > limits.max_files:
        raise ArchiveError(
            "too_many_files",
            f"the archive has {len(infos)} entries, more than the limit of {limits.max_files}",
        )
    members: list[_Member] = []
    seen: dict[str, str] = {}  # casefolded path -> path as written
    for info in infos:
        name = _decoded_name(info)
        shown = _show(name)
        parts = _name_parts(name, shown)
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise ArchiveError(
                "symlink", f"{shown} is a symbolic link; links are not allowed in a submission"
            )
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            what = {
                stat.S_IFCHR: "a character device",
                stat.S_IFBLK: "a block device",
                stat.S_IFIFO: "a FIFO",
                stat.S_IFSOCK: "a socket",
            }.get(kind, f"a special file (mode {mode:o})")
            raise ArchiveError("special_file", f"{shown} is {what}, not a regular file")
        if (
            info.flag_bits & (_FLAG_ENCRYPTED | _FLAG_STRONG_ENCRYPTION)
            or info.compress_type == _AES_METHOD
        ):
            raise ArchiveError(
                "encrypted_member",
                f"{shown} is encrypted; upload the archive without a password",
            )
        if info.compress_type not in _SUPPORTED_METHODS:
            method = zipfile.compressor_names.get(info.compress_type, "unknown")
            raise ArchiveError(
                "unsupported_compression",
                f"{shown} uses compression method {info.compress_type} ({method}); "
                "use stored or deflate (the default of every zip tool)",
            )
        is_dir = name.endswith(("/", "\\")) or kind == stat.S_IFDIR
        if not parts:
            if is_dir:
                continue  # "./" - the archive's own top folder
            raise ArchiveError("bad_filename", f"a member has an empty name ({shown})")
        path = "/".join(parts)
        folded = unicodedata.normalize("NFC", path).casefold()
        if folded in seen:
            if not (is_dir and seen[folded].endswith("/")):
                raise ArchiveError(
                    "duplicate_member",
                    f"{shown} appears twice in the archive (also as {_show(seen[folded])}; "
                    "names are compared ignoring case)",
                )
            continue
        seen[folded] = path + ("/" if is_dir else "")
        junk = parts[0] == _MACOS_JUNK_DIR or parts[-1].startswith("._") or parts[-1] == ".DS_Store"
        members.append(_Member(info, parts, is_dir, junk))
        _check_member_size(info, shown, limits)

    # A path that is a file and also the folder of another member.
    files = {
        unicodedata.normalize("NFC", m.path).casefold(): m.path for m in members if not m.is_dir
    }
    for m in members:
        for depth in range(1, len(m.parts)):
            prefix = unicodedata.normalize("NFC", "/".join(m.parts[:depth])).casefold()
            if prefix in files:
                raise ArchiveError(
                    "duplicate_member",
                    f"{_show(files[prefix])} is a file but {_show(m.path)} uses it as a folder",
                )
    return members


def _decoded_name(info: zipfile.ZipInfo) -> str:
    """The member's full name, as written (``orig_filename`` keeps what follows a NUL)."""
    name = info.orig_filename
    if info.flag_bits & _FLAG_UTF8:
        return name
    raw = name.encode("cp437")  # zipfile decoded the raw bytes as cp437: undo it
    if raw.isascii():
        return name
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ArchiveError(
            "bad_filename",
            f"the member name {raw!r} is not valid UTF-8 (and the archive does not say "
            "which encoding it uses); rename it with ASCII or UTF-8 characters",
        ) from None


def _show(name: str) -> str:
    """A name safe to print in an email: control characters made visible."""
    text = repr(name)[1:-1] if any(_is_control(c) for c in name) else name
    return f"'{text}'"


def _is_control(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") and char != "\u200d"


def _name_parts(name: str, shown: str) -> tuple[str, ...]:
    """Normalised components of a member name; raises on an unsafe or invalid name."""
    if "\x00" in name:
        raise ArchiveError("bad_filename", f"the member name {shown} contains a NUL byte")
    if any(_is_control(c) for c in name):
        raise ArchiveError("bad_filename", f"the member name {shown} has control characters")
    if len(name.encode("utf-8")) > _MAX_NAME_BYTES:
        raise ArchiveError(
            "bad_filename",
            f"the member name {shown[:80]}... is longer than {_MAX_NAME_BYTES} bytes",
        )
    text = name.replace("\\", "/")
    if text.startswith("/"):
        raise ArchiveError(
            "absolute_path",
            f"{shown} is an absolute path; paths in the archive must be relative "
            "(model.tflite, results/0001.png)",
        )
    if len(text) >= 2 and text[1] == ":" and text[0].isascii() and text[0].isalpha():
        raise ArchiveError(
            "absolute_path", f"{shown} starts with a drive letter; paths must be relative"
        )
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(
            "zip_slip",
            f"{shown} climbs out of the archive folder with '..'; paths must stay inside it",
        )
    for part in parts:
        if ":" in part:
            raise ArchiveError(
                "bad_filename", f"the member name {shown} has ':' (not allowed in file names)"
            )
        if len(part.encode("utf-8")) > _MAX_COMPONENT_BYTES:
            raise ArchiveError(
                "bad_filename",
                f"the member name {shown[:80]}... has a part longer than "
                f"{_MAX_COMPONENT_BYTES} bytes",
            )
    return tuple(parts)


def _check_member_size(info: zipfile.ZipInfo, shown: str, limits: ArchiveLimits) -> None:
    if info.file_size > limits.max_member_mb * _MB:
        raise ArchiveError(
            "member_too_large",
            f"{shown} unpacks to {_size(info.file_size)}, over the per-file limit of "
            f"{limits.max_member_mb:g} MB",
        )
    if info.file_size > RATIO_FLOOR_BYTES:
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > limits.max_ratio:
            raise ArchiveError(
                "zip_bomb",
                f"{shown} would unpack from {info.compress_size} bytes to "
                f"{info.file_size / _MB:.1f} MB (ratio {ratio:.0f}:1, limit "
                f"{limits.max_ratio:g}:1); this looks like a zip bomb",
            )


def _validate_totals(members: list[_Member], archive_size: int, limits: ArchiveLimits) -> None:
    total = sum(m.info.file_size for m in members)
    if total > limits.max_total_mb * _MB:
        raise ArchiveError(
            "archive_too_large",
            f"the archive unpacks to {_size(total)}, over the limit of {limits.max_total_mb:g} MB",
        )
    if total > RATIO_FLOOR_BYTES and total / archive_size > limits.max_ratio:
        raise ArchiveError(
            "zip_bomb",
            f"the archive would unpack from {archive_size} bytes to {total / _MB:.1f} MB "
            f"(ratio {total / archive_size:.0f}:1, limit {limits.max_ratio:g}:1); "
            "this looks like a zip bomb",
        )
    # Members whose data overlap: the "non-recursive zip bomb" shares one compressed
    # stream between many entries. A member's data starts after its 30-byte local
    # header and name; the next member may not start before it ends.
    spans = sorted(
        (m.info.header_offset, m.info.header_offset + 30 + len(_raw_name(m.info)), i)
        for i, m in enumerate(members)
    )
    spans = [(start, end + members[i].info.compress_size, i) for start, end, i in spans]
    for (_, end, i), (next_start, _, j) in zip(spans, spans[1:], strict=False):
        if next_start < end:
            raise ArchiveError(
                "zip_bomb",
                f"the data of {_show(members[i].path)} and {_show(members[j].path)} overlap "
                "in the archive; this is a known zip bomb construction",
            )
    if spans and spans[-1][1] > archive_size:
        raise ArchiveError(
            "corrupt_member",
            f"{_show(members[spans[-1][2]].path)} claims more data than the archive holds "
            "(truncated upload?)",
        )


def _raw_name(info: zipfile.ZipInfo) -> bytes:
    if info.flag_bits & _FLAG_UTF8:
        return info.orig_filename.encode("utf-8")
    return info.orig_filename.encode("cp437")


def _open_headers(zf: zipfile.ZipFile, members: list[_Member]) -> None:
    """Open each member's local header (reads no data): a mismatch is caught here."""
    for m in members:
        try:
            with zf.open(m.info):
                pass
        except RuntimeError:  # zipfile's "password required"
            raise ArchiveError("encrypted_member", f"{_show(m.path)} is encrypted") from None
        except NotImplementedError as exc:
            raise ArchiveError(
                "unsupported_compression", f"{_show(m.path)} uses an unsupported feature: {exc}"
            ) from None
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, UnicodeDecodeError) as exc:
            raise ArchiveError(
                "corrupt_member", f"{_show(m.path)} is damaged: {_reason(exc)}"
            ) from None


def _size(n: int) -> str:
    return f"{n / _MB:.1f} MB ({n:,} bytes)"


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:300]


# ---------------------------------------------------------------------------------
# 4. extraction with byte caps
# ---------------------------------------------------------------------------------


def _extract(
    zf: zipfile.ZipFile, members: list[_Member], dest: Path, limits: ArchiveLimits
) -> None:
    base = dest.resolve()
    total_cap = int(limits.max_total_mb * _MB)
    member_cap = int(limits.max_member_mb * _MB)
    written_total = 0
    for m in members:
        if m.junk:
            continue
        target = base.joinpath(*m.parts)
        if os.path.commonpath([base, target.resolve()]) != str(base):
            raise ArchiveError("zip_slip", f"{_show(m.path)} resolves outside the archive folder")
        if m.is_dir:
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        cap = min(m.info.file_size, member_cap)
        written = 0
        try:
            with zf.open(m.info) as src, open(target, "xb") as out:
                while True:
                    chunk = src.read(_CHUNK)
                    if not chunk:
                        break
                    written += len(chunk)
                    written_total += len(chunk)
                    if written > cap or written_total > total_cap:
                        raise ArchiveError(
                            "zip_bomb",
                            f"{_show(m.path)} unpacks to more than its header declares "
                            f"({m.info.file_size} bytes) or than the size limit; extraction "
                            "stopped",
                        )
                    out.write(chunk)
        except ArchiveError:
            raise
        except MemoryError:
            # e.g. an LZMA header asking for a 4 GiB dictionary, under the child's cap
            raise ArchiveError(
                "zip_bomb",
                f"{_show(m.path)} needs more memory to unpack than allowed; "
                "this looks like a zip bomb",
            ) from None
        except OSError as exc:
            if exc.errno is not None:
                raise  # our own disk (full, permissions), not the archive's fault
            raise ArchiveError(
                "corrupt_member", f"{_show(m.path)} is damaged: {_reason(exc)}"
            ) from None
        except Exception as exc:  # BadZipFile (bad CRC), EOFError, zlib/lzma errors
            raise ArchiveError(
                "corrupt_member", f"{_show(m.path)} is damaged: {_reason(exc)}"
            ) from None
        if written != m.info.file_size:
            raise ArchiveError(
                "corrupt_member",
                f"{_show(m.path)} unpacked to {written} bytes, its header says {m.info.file_size}",
            )
        os.chmod(target, 0o644)


def _empty(dest: Path, remove: bool) -> None:
    if remove:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------
# 5. what the archive holds
# ---------------------------------------------------------------------------------


def _inspect(members: list[_Member], dest: Path) -> Submission:
    kept = [m for m in members if not m.junk]
    files = [m.parts for m in kept if not m.is_dir]
    root_parts: tuple[str, ...] = ()
    tops = {p[0] for p in (m.parts for m in kept)}
    if len(tops) == 1 and files and all(len(p) > 1 for p in files):
        root_parts = (next(iter(tops)),)
    root = dest.joinpath(*root_parts)
    rel = sorted(PurePosixPath(*p[len(root_parts) :]) for p in files)

    def at_root(name: str) -> Path | None:
        for p in rel:
            if len(p.parts) == 1 and p.name.lower() == name:
                return root / p
        return None

    def shallowest(candidates: list[PurePosixPath], prefer: str = "") -> PurePosixPath | None:
        if not candidates:
            return None
        return min(candidates, key=lambda p: (len(p.parts), prefer not in p.name.lower(), str(p)))

    sub = Submission(root=root, files=[p.as_posix() for p in rel])
    sub.model = at_root("model.tflite")
    sub.model_none = at_root("model_none.tflite")
    saved = shallowest([p for p in rel if p.name == "saved_model.pb"])
    if saved is not None:
        sub.saved_model = root / saved.parent
    keras = shallowest([p for p in rel if p.suffix.lower() in KERAS_SUFFIXES])
    sub.keras_model = root / keras if keras else None
    sub.results = [root / p for p in rel if p.suffix.lower() in IMAGE_SUFFIXES]
    readmes = [p for p in rel if len(p.parts) == 1 and p.name.lower().startswith("readme")]
    sub.readme = root / min(readmes, key=str) if readmes else None

    if sub.model is None and sub.saved_model is None and sub.keras_model is None:
        nested = [p for p in rel if p.name.lower().endswith(ARCHIVE_SUFFIXES)]
        if nested:
            raise ArchiveError(
                "nested_archive",
                f"no model at the top level, but the archive holds another archive "
                f"({', '.join(p.as_posix() for p in nested[:5])}); archives inside the "
                "upload are not unpacked: put model.tflite directly in the uploaded .zip",
            )
        deeper = [p.as_posix() for p in rel if p.name.lower() == "model.tflite"]
        where = (
            f" model.tflite was found at {', '.join(deeper[:3])}, but it must be at the top "
            "level of the archive (or inside one folder wrapping everything)."
            if deeper
            else ""
        )
        raise ArchiveError(
            "missing_model",
            "the archive has no model.tflite, no SavedModel folder (saved_model.pb) and no "
            f"Keras model (.keras / .h5).{where}",
        )

    pdfs = [p for p in rel if p.suffix.lower() == ".pdf"]
    for p in pdfs:
        with (root / p).open("rb") as fh:
            head = fh.read(1024)
        if b"%PDF-" not in head:
            raise ArchiveError(
                "bad_factsheet",
                f"{p.as_posix()} is named .pdf but is not a PDF document (no %PDF- header); "
                "export the fact sheet as PDF",
            )
    chosen = shallowest(pdfs, prefer="fact")
    sub.factsheet = root / chosen if chosen else None
    return sub
