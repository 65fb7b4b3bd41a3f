"""Safe unpacking of submission archives: a malformed corpus, each kind with its code.

Every archive is built here with ``zipfile``; the kinds ``zipfile`` refuses to write
(symlink modes are fine, but encrypted flags, foreign compression methods, non-UTF-8
or NUL names, lying sizes, overlapping members, mismatched headers) are written by
patching the raw local and central headers of a zip it did write. After every
rejection nothing may exist outside ``dest`` and ``dest`` itself must be empty.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import re
import stat
import struct
import sys
import time
import zipfile
import zlib
from pathlib import Path

import pytest

from mai_ops.errors import registered, stage_codes
from mai_ops.infra import sandbox
from mai_ops.submissions.archive import (
    RATIO_FLOOR_BYTES,
    ArchiveError,
    ArchiveLimits,
    unpack_in_child,
    unpack_submission,
)

MB = 1024 * 1024
TFLITE = b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 4  # looks like a model; not checked here
PDF = b"%PDF-1.4\n%fact sheet\n"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)


# --- building zips ------------------------------------------------------------------


def build(entries, compression=zipfile.ZIP_DEFLATED) -> bytes:
    """``entries``: (name or ZipInfo, bytes). Duplicates are allowed (zipfile warns)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in entries:
            if isinstance(name, zipfile.ZipInfo) and compression == zipfile.ZIP_DEFLATED:
                name.compress_type = name.compress_type or compression
            with pytest.warns(UserWarning) if _seen(zf, name) else _nothing():
                zf.writestr(name, data)
    return buf.getvalue()


def _seen(zf: zipfile.ZipFile, name) -> bool:
    name = name.filename if isinstance(name, zipfile.ZipInfo) else name
    return name in zf.NameToInfo


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def headers(data: bytes):
    """(local offsets, central offsets) of every entry, walking the central directory."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        start, count = zf.start_dir, len(zf.infolist())
        local = [i.header_offset for i in zf.infolist()]
    central, pos = [], start
    for _ in range(count):
        central.append(pos)
        nlen, xlen, clen = struct.unpack("<3H", data[pos + 28 : pos + 34])
        pos += 46 + nlen + xlen + clen
    return local, central


def patch(data: bytes, *, index=None, flags_or=0, method=None, crc=None, size=None) -> bytes:
    """Rewrite fields of the local and central headers of entry ``index`` (None: all)."""
    out = bytearray(data)
    local, central = headers(data)
    for i, (lo, ce) in enumerate(zip(local, central, strict=True)):
        if index is not None and i != index:
            continue
        for base, flag_at, method_at, crc_at, size_at in ((lo, 6, 8, 14, 22), (ce, 8, 10, 16, 24)):
            if flags_or:
                (flags,) = struct.unpack_from("<H", out, base + flag_at)
                struct.pack_into("<H", out, base + flag_at, flags | flags_or)
            if method is not None:
                struct.pack_into("<H", out, base + method_at, method)
            if crc is not None:
                struct.pack_into("<I", out, base + crc_at, crc)
            if size is not None:
                struct.pack_into("<I", out, base + size_at, size)
    return bytes(out)


def rename(data: bytes, old: bytes, new: bytes, *, local=True, central=True) -> bytes:
    """Replace a member's name bytes (same length) in its local and/or central header."""
    assert len(old) == len(new)
    out = bytearray(data)
    for base, name_at, where in [
        *((lo, 30, local) for lo in headers(data)[0]),
        *((ce, 46, central) for ce in headers(data)[1]),
    ]:
        if where and out[base + name_at : base + name_at + len(old)] == old:
            out[base + name_at : base + name_at + len(old)] = new
    return bytes(out)


def mode_info(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix
    info.external_attr = mode << 16
    return info


def good_entries(prefix: str = "") -> list[tuple[str, bytes]]:
    return [
        (f"{prefix}model.tflite", TFLITE),
        (f"{prefix}model_none.tflite", TFLITE),
        (f"{prefix}results/0001.png", PNG),
        (f"{prefix}results/0002.png", PNG),
        (f"{prefix}factsheet.pdf", PDF),
        (f"{prefix}readme.txt", b"Team Aurora, 1x1 conv.\n"),
    ]


def rand(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def nibbles(n: int, seed: int = 0) -> bytes:
    """Random bytes below 16: compress about 2:1, far from a bomb's ratio."""
    return bytes(b & 0x0F for b in rand(n, seed))


# --- the malformed corpus -----------------------------------------------------------


def _overlapping() -> bytes:
    """Two central-directory entries that share one local header and its data."""
    data = build([("a.bin", rand(4096)), ("b.bin", rand(4096, 1))], zipfile.ZIP_STORED)
    local, central = headers(data)
    out = bytearray(data)
    struct.pack_into("<I", out, central[1] + 42, local[0])  # b.bin -> a.bin's header
    return bytes(out)


def _lying_small_size() -> bytes:
    """Header says 100 bytes; the deflate stream holds 5 MB (CRC of the 5 MB)."""
    data = build([("model.tflite", bytes(5 * MB))])
    return patch(data, size=100)


def _mismatched_header_name() -> bytes:
    data = build([("model.tflite", TFLITE), ("readme.txt", b"hi")])
    return rename(data, b"readme.txt", b"README.exe", central=False)


def _nul_name() -> bytes:
    data = build([("model.tflite", TFLITE), ("readme_X.txt", b"x")])
    return rename(data, b"readme_X.txt", b"readme\x00X.txt")


def _raw_name(raw: bytes, utf8_flag: bool) -> bytes:
    placeholder = b"R" * len(raw)
    data = build([("model.tflite", TFLITE), (placeholder.decode(), b"x")])
    data = rename(data, placeholder, raw)
    return patch(data, index=1, flags_or=0x800) if utf8_flag else data


def _many(n: int) -> bytes:
    return build([("model.tflite", TFLITE)] + [(f"results/{i:04d}.png", PNG) for i in range(n)])


CORPUS = [
    # (id, archive bytes or a callable, expected code, limits)
    ("zero_byte", b"", "not_a_zip", None),
    ("garbage", rand(5000), "not_a_zip", None),
    ("truncated", lambda: build(good_entries())[:700], "not_a_zip", None),
    ("bare_tflite", TFLITE, "not_a_zip", None),
    ("gzip_not_zip", gzip.compress(TFLITE), "not_a_zip", None),
    ("zip_slip_dotdot", lambda: build([("../../evil.txt", b"x")]), "zip_slip", None),
    ("zip_slip_nested", lambda: build([("results/../../../evil.txt", b"x")]), "zip_slip", None),
    ("zip_slip_backslash", lambda: build([("..\\..\\evil.txt", b"x")]), "zip_slip", None),
    (
        "zip_slip_mixed_separators",
        lambda: build([("model.tflite", TFLITE), ("results\\..\\../..\\evil.txt", b"x")]),
        "zip_slip",
        None,
    ),
    ("absolute_unix", lambda: build([("/tmp/mai-ops-evil.txt", b"x")]), "absolute_path", None),
    ("absolute_backslash", lambda: build([("\\evil.txt", b"x")]), "absolute_path", None),
    ("absolute_drive", lambda: build([("C:\\evil.txt", b"x")]), "absolute_path", None),
    ("absolute_drive_slash", lambda: build([("c:/evil.txt", b"x")]), "absolute_path", None),
    ("absolute_unc", lambda: build([("\\\\server\\share\\evil.txt", b"x")]), "absolute_path", None),
    (
        "symlink",
        lambda: build(
            [("model.tflite", TFLITE), (mode_info("etc", stat.S_IFLNK | 0o777), b"/etc")]
        ),
        "symlink",
        None,
    ),
    (
        "symlink_then_write_through_it",
        lambda: build([(mode_info("lnk", stat.S_IFLNK | 0o777), b"../.."), ("lnk/evil.txt", b"x")]),
        "symlink",
        None,
    ),
    (
        "fifo",
        lambda: build([("model.tflite", TFLITE), (mode_info("pipe", stat.S_IFIFO | 0o644), b"")]),
        "special_file",
        None,
    ),
    ("zip_bomb_member", lambda: build([("model.tflite", bytes(20 * MB))]), "zip_bomb", None),
    (
        "zip_bomb_overall_ratio",  # each member under the 1 MiB floor, together 27 MB
        lambda: build([(f"r/{i}.bin", bytes(900 * 1024)) for i in range(30)]),
        "zip_bomb",
        None,
    ),
    ("zip_bomb_overlapping_members", _overlapping, "zip_bomb", None),
    (
        "declared_size_ratio",  # 100 stored bytes claiming 500 MB
        lambda: patch(build([("model.tflite", rand(100))], zipfile.ZIP_STORED), size=500 * MB),
        "zip_bomb",
        None,
    ),
    ("lying_small_size", _lying_small_size, "corrupt_member", None),
    (
        "too_large_member",
        lambda: build([("model.tflite", rand(MB + 1000))], zipfile.ZIP_STORED),
        "member_too_large",
        ArchiveLimits(max_member_mb=1),
    ),
    (
        "too_large_total",
        lambda: build([(f"{i}.bin", nibbles(400_000, i)) for i in range(3)]),  # 2:1, 0.6 MB zip
        "archive_too_large",
        ArchiveLimits(max_total_mb=1, max_member_mb=1),
    ),
    (
        "too_large_archive_file",
        lambda: build([("model.tflite", rand(300_000))], zipfile.ZIP_STORED),
        "archive_too_large",
        ArchiveLimits(max_total_mb=0.25),
    ),
    ("too_many_files", lambda: _many(200), "too_many_files", None),
    ("too_many_files_small_limit", lambda: _many(3), "too_many_files", ArchiveLimits(max_files=3)),
    ("bad_filename_control", lambda: build([("read\x07me.txt", b"x")]), "bad_filename", None),
    ("bad_filename_nul", _nul_name, "bad_filename", None),
    ("bad_filename_not_utf8", lambda: _raw_name(b"\xff\xfeevil.txt", False), "bad_filename", None),
    (
        "bad_filename_flagged_utf8_invalid",
        lambda: _raw_name(b"\xc3\x28evil.txt", True),
        "bad_filename",
        None,
    ),
    (
        "bad_filename_rtl_override",
        lambda: build([("model.tflite", TFLITE), ("gnp.\u202etxt", b"x")]),
        "bad_filename",
        None,
    ),
    (
        "bad_filename_colon",
        lambda: build([("model.tflite:stream", b"x")]),
        "bad_filename",
        None,
    ),
    (
        "encrypted_member",
        lambda: patch(build(good_entries()), index=0, flags_or=0x1),
        "encrypted_member",
        None,
    ),
    (
        "encrypted_aes_method",
        lambda: patch(build(good_entries()), index=0, method=99),
        "encrypted_member",
        None,
    ),
    (
        "deflate64_method",
        lambda: patch(build(good_entries()), index=0, method=9),
        "unsupported_compression",
        None,
    ),
    (
        "duplicate_exact",
        lambda: build([("model.tflite", TFLITE), ("model.tflite", TFLITE)]),
        "duplicate_member",
        None,
    ),
    (
        "duplicate_case",
        lambda: build([("model.tflite", TFLITE), ("Model.tflite", TFLITE)]),
        "duplicate_member",
        None,
    ),
    (
        "duplicate_after_separator_normalising",
        lambda: build([("results/a.png", PNG), ("results\\a.png", PNG), ("model.tflite", TFLITE)]),
        "duplicate_member",
        None,
    ),
    (
        "file_and_folder",
        lambda: build([("model.tflite", TFLITE), ("model.tflite/x.bin", b"x")]),
        "duplicate_member",
        None,
    ),
    (
        "bad_crc",
        lambda: patch(build(good_entries()), index=2, crc=0xDEADBEEF),
        "corrupt_member",
        None,
    ),
    ("header_name_mismatch", _mismatched_header_name, "corrupt_member", None),
    (
        "nested_archive",
        lambda: build([("submission.zip", build(good_entries())), ("readme.txt", b"x")]),
        "nested_archive",
        None,
    ),
    (
        "missing_model",
        lambda: build([("readme.txt", b"x"), ("factsheet.pdf", PDF)]),
        "missing_model",
        None,
    ),
    (
        "missing_model_too_deep",
        lambda: build([("models/final/model.tflite", TFLITE), ("readme.txt", b"x")]),
        "missing_model",
        None,
    ),
    ("empty_zip", lambda: build([]), "missing_model", None),
    (
        "bad_factsheet",
        lambda: build([("model.tflite", TFLITE), ("factsheet.pdf", b"Fact sheet, as text\n")]),
        "bad_factsheet",
        None,
    ),
]


@pytest.fixture
def place(tmp_path):
    """Write an archive under tmp_path/upload; unpack into tmp_path/scratch/dest."""

    def _place(data: bytes) -> tuple[Path, Path]:
        upload = tmp_path / "upload"
        upload.mkdir(exist_ok=True)
        archive = upload / "submission.zip"
        archive.write_bytes(data)
        return archive, tmp_path / "scratch" / "dest"

    return _place


def assert_nothing_written(tmp_path: Path, dest: Path) -> None:
    scratch = dest.parent
    assert not scratch.exists() or set(os.listdir(scratch)) <= {"dest"}, os.listdir(scratch)
    assert not dest.exists() or not any(dest.iterdir()), list(dest.rglob("*"))
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and p.parent.name != "upload"]
    assert outside == [], outside
    assert not Path("/tmp/mai-ops-evil.txt").exists()


@pytest.mark.parametrize(
    "data, code, limits", [pytest.param(d, c, lim, id=i) for i, d, c, lim in CORPUS]
)
def test_malformed_archive_is_rejected_with_its_code(place, tmp_path, data, code, limits):
    assert code in stage_codes("unpack")
    archive, dest = place(data() if callable(data) else data)
    with pytest.raises(ArchiveError) as caught:
        unpack_submission(archive, dest, limits or ArchiveLimits())
    assert caught.value.code == code, caught.value.message
    assert caught.value.message and "\x00" not in caught.value.message
    assert_nothing_written(tmp_path, dest)


def test_corpus_covers_every_archive_code():
    assert {c for _, _, c, _ in CORPUS} == stage_codes("unpack")
    assert len({i for i, *_ in CORPUS}) == len(CORPUS) >= 30


@pytest.mark.parametrize(
    "data, fragment",
    [
        pytest.param(TFLITE, "bare .tflite", id="bare_tflite"),
        pytest.param(b"", "0 bytes", id="zero_byte"),
        pytest.param(b"PK\x03\x04" + rand(200), "truncated", id="truncated"),
    ],
)
def test_not_a_zip_says_why(place, data, fragment):
    archive, dest = place(data)
    with pytest.raises(ArchiveError, match=fragment):
        unpack_submission(archive, dest)


def test_missing_model_names_the_model_it_found_too_deep(place):
    archive, dest = place(build([("models/final/model.tflite", TFLITE), ("readme.txt", b"x")]))
    with pytest.raises(ArchiveError, match="models/final/model.tflite"):
        unpack_submission(archive, dest)


def test_symlink_member_written_by_info_zip_style_archive(place):
    """A link made by ``zip --symlinks``: unix create_system, S_IFLNK mode, target as data."""
    info = mode_info("results", stat.S_IFLNK | 0o755)
    archive, dest = place(build([("model.tflite", TFLITE), (info, b"/etc")]))
    with pytest.raises(ArchiveError) as caught:
        unpack_submission(archive, dest)
    assert caught.value.code == "symlink" and "'results'" in caught.value.message


def test_mismatched_crc_after_partial_extraction_leaves_dest_empty(place, tmp_path):
    """Members before the bad one were written, then removed again."""
    data = patch(build(good_entries()), index=4, crc=1)
    archive, dest = place(data)
    dest.mkdir(parents=True)  # an existing empty dest is kept, and left empty
    with pytest.raises(ArchiveError, match="factsheet.pdf"):
        unpack_submission(archive, dest)
    assert dest.is_dir() and not any(dest.iterdir())


# --- archives that are accepted --------------------------------------------------------


def test_flat_archive_is_accepted(place):
    archive, dest = place(build(good_entries()))
    sub = unpack_submission(archive, dest)
    assert sub.root == dest
    assert sub.model == dest / "model.tflite" and sub.model.read_bytes() == TFLITE
    assert sub.model_none == dest / "model_none.tflite"
    assert sub.factsheet == dest / "factsheet.pdf"
    assert sub.readme == dest / "readme.txt"
    assert sub.results == [dest / "results/0001.png", dest / "results/0002.png"]
    assert sub.saved_model is None and sub.keras_model is None
    assert sub.files == [
        "factsheet.pdf",
        "model.tflite",
        "model_none.tflite",
        "readme.txt",
        "results/0001.png",
        "results/0002.png",
    ]
    assert sub.as_json()["results"] == ["results/0001.png", "results/0002.png"]
    assert stat.S_IMODE((dest / "model.tflite").stat().st_mode) == 0o644


def test_archive_wrapped_in_one_folder_is_unwrapped(place):
    """As the Finder makes it: a top folder, folder entries and __MACOSX metadata."""
    entries = [("aurora_submission/", b""), ("aurora_submission/results/", b"")]
    entries += good_entries("aurora_submission/")
    entries += [
        ("__MACOSX/aurora_submission/._model.tflite", b"\x00\x05\x16\x07"),
        ("aurora_submission/.DS_Store", b"\x00\x00\x00\x01Bud1"),
    ]
    archive, dest = place(build(entries))
    sub = unpack_submission(archive, dest)
    root = dest / "aurora_submission"
    assert sub.root == root
    assert sub.model == root / "model.tflite"
    assert sub.model_none == root / "model_none.tflite"
    assert sub.factsheet == root / "factsheet.pdf"
    assert sub.results == [root / "results/0001.png", root / "results/0002.png"]
    assert "model.tflite" in sub.files and not any("DS_Store" in f for f in sub.files)
    assert not (dest / "__MACOSX").exists() and not (root / ".DS_Store").exists()


def test_saved_model_and_keras_models_are_found(place):
    entries = [
        ("my_model/saved_model.pb", b"pb"),
        ("my_model/variables/variables.index", b"i"),
        ("keras/model.keras", b"PK..."),
        ("factsheet.pdf", PDF),
    ]
    archive, dest = place(build(entries))
    sub = unpack_submission(archive, dest)
    assert sub.model is None
    assert sub.saved_model == dest / "my_model"
    assert sub.keras_model == dest / "keras/model.keras"


def test_lenient_names_are_accepted(place):
    """./ prefixes, backslash separators and UTF-8 names without the UTF-8 flag."""
    raw = "résultat.png".encode()
    data = build([("./model.tflite", TFLITE), ("results\\0001.png", PNG), ("X" * len(raw), PNG)])
    data = rename(data, b"X" * len(raw), raw)  # Info-ZIP style: UTF-8 bytes, no flag
    archive, dest = place(data)
    sub = unpack_submission(archive, dest)
    assert sub.model == dest / "model.tflite"
    assert sub.files == ["model.tflite", "results/0001.png", "résultat.png"]


def test_archive_inside_a_submission_with_a_model_is_kept_not_unpacked(place):
    archive, dest = place(build(good_entries() + [("code.zip", build([("train.py", b"x")]))]))
    sub = unpack_submission(archive, dest)
    assert "code.zip" in sub.files and not (dest / "train.py").exists()


def test_a_lying_header_with_a_matching_crc_cannot_bomb(place):
    """5 MB of zeros declared as 100 bytes, CRC of the first 100: only 100 bytes appear."""
    data = patch(build([("model.tflite", bytes(5 * MB))]), size=100, crc=zlib.crc32(bytes(100)))
    archive, dest = place(data)
    sub = unpack_submission(archive, dest)
    assert sub.model.stat().st_size == 100


def test_small_highly_compressible_files_are_not_bombs(place):
    """Below the 1 MiB floor (per member and in total) the ratio is not judged."""
    size = RATIO_FLOOR_BYTES - len(TFLITE)
    archive, dest = place(build([("model.tflite", TFLITE), ("readme.txt", b" " * size)]))
    assert unpack_submission(archive, dest).readme.stat().st_size == size


def test_dest_must_be_empty(place):
    archive, dest = place(build(good_entries()))
    dest.mkdir(parents=True)
    (dest / "left-over").write_text("x")
    with pytest.raises(ValueError, match="empty"):
        unpack_submission(archive, dest)


def test_declared_total_is_judged_before_extraction(place):
    """Three members of 0.4 MB in a 0.6 MB zip: the declared 1.2 MB is over a 1 MB cap."""
    data = build([(f"{i}.bin", nibbles(400_000, i)) for i in range(3)])
    archive, dest = place(data)
    with pytest.raises(ArchiveError, match="the archive unpacks to 1.1 MB"):
        unpack_submission(archive, dest, ArchiveLimits(max_total_mb=1, max_member_mb=1))


# --- the central directory is judged before zipfile reads it -----------------------------


def _eocd_at(data: bytes) -> int:
    at = data.rfind(b"PK\x05\x06")
    assert at >= 0
    return at


def _declaring(data: bytes, entries: int) -> bytes:
    """``data`` whose end-of-central-directory record declares ``entries`` (both fields)."""
    out = bytearray(data)
    struct.pack_into("<2H", out, _eocd_at(data) + 8, entries, entries)
    return bytes(out)


def _with_zip64_end(data: bytes, entries: int, dir_size: int | None = None) -> bytes:
    """A ZIP64 end record and locator inserted before the classic one, declaring ``entries``."""
    at = _eocd_at(data)
    (size, offset) = struct.unpack_from("<2L", data, at + 12)
    record64 = struct.pack(
        "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries,
        size if dir_size is None else dir_size, offset,
    )  # fmt: skip
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, at, 1)
    return data[:at] + record64 + locator + data[at:]


def _central_only(n: int) -> bytes:
    """``n`` central-directory records (no member data at all) and an end record saying 1."""
    records = b"".join(
        struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0)
        + b"r%06d" % i
        for i in range(n)
    )
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(records), 0, 0)
    return records + end


def _commented(name: str, size: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.comment = b"c" * size  # kept in the central directory
    return info


@pytest.fixture
def zipfile_never_opens(monkeypatch):
    """Fails the test if the unpacker gets as far as building zipfile's member list."""
    from mai_ops.submissions import archive as module

    real = zipfile.ZipFile

    def refuse_to_read(file, mode="r", *args, **kwargs):
        if mode == "r":
            raise AssertionError("zipfile read the directory: it was not judged first")
        return real(file, mode, *args, **kwargs)  # the test writing its archive

    monkeypatch.setattr(module.zipfile, "ZipFile", refuse_to_read)


@pytest.mark.parametrize(
    "make, fragment",
    [
        pytest.param(
            lambda: _declaring(build(good_entries()), 0xFFFE),
            "65534 entries",
            id="end-record-declares-65534",
        ),
        pytest.param(
            lambda: _with_zip64_end(_declaring(build(good_entries()), 0xFFFF), 2**40),
            f"{2**40} entries",
            id="zip64-declares-2**40",
        ),
        pytest.param(
            lambda: _with_zip64_end(build(good_entries()), 10_000_000),
            "10000000 entries",
            id="zip64-declares-more-than-the-classic-record",
        ),
        pytest.param(
            lambda: _with_zip64_end(build(good_entries()), 6, dir_size=2**33),
            "directory is 8192.0 MB",
            id="zip64-declares-an-8-GB-directory",
        ),
        pytest.param(
            lambda: _declaring(_many(250), 1),
            "lists more than 200 entries (its end record says 1)",
            id="end-record-understates-the-count",
        ),
        pytest.param(
            lambda: build([(_commented(f"{i}.bin", 60_000), b"x") for i in range(8)]),
            "more than 200 entries can need",
            id="directory-over-200-entries-worth",
        ),
    ],
)
def test_the_directory_is_judged_before_zipfile_reads_it(
    place, tmp_path, zipfile_never_opens, make, fragment
):
    archive, dest = place(make())
    with pytest.raises(ArchiveError, match=re.escape(fragment)) as caught:
        unpack_submission(archive, dest)
    assert caught.value.code == "too_many_files"
    assert_nothing_written(tmp_path, dest)


def test_a_directory_of_300000_entries_declared_as_one_costs_milliseconds(
    place, zipfile_never_opens
):
    """zipfile would read all 16 MB of it and build 300000 ZipInfo objects (seconds and
    hundreds of MB); the directory's size alone refuses it."""
    archive, dest = place(_central_only(300_000))
    started = time.monotonic()
    with pytest.raises(ArchiveError, match=r"directory is 15\.2 MB") as caught:
        unpack_submission(archive, dest)
    assert caught.value.code == "too_many_files"
    assert time.monotonic() - started < 0.5


def test_archives_at_the_limits_still_unpack(place):
    """199 results and a model (200 entries), and names of 200 bytes: accepted."""
    archive, dest = place(_many(199))
    assert len(unpack_submission(archive, dest).files) == 200
    long_names = [(f"{i:03d}{'n' * 196}.txt", b"x") for i in range(199)]
    archive, dest = place(build([("model.tflite", TFLITE), *long_names]))
    dest = dest.with_name("dest2")
    assert len(unpack_submission(archive, dest).files) == 200


# --- unpacking in the limited, sandboxed child ------------------------------------------


@pytest.mark.parametrize(
    "data, code, limits", [pytest.param(d, c, lim, id=i) for i, d, c, lim in CORPUS]
)
def test_the_child_gives_the_same_answer_for_every_malformed_archive(
    place, tmp_path, data, code, limits
):
    archive, dest = place(data() if callable(data) else data)
    with pytest.raises(ArchiveError) as caught:
        unpack_in_child(archive, dest, limits or ArchiveLimits())
    assert caught.value.code == code, caught.value.message
    assert_nothing_written(tmp_path, dest)


def test_the_child_unpacks_a_good_archive_as_the_worker_would(place):
    entries = [("aurora/", b""), *good_entries("aurora/"), ("__MACOSX/aurora/._x", b"j")]
    archive, dest = place(build(entries))
    sub = unpack_in_child(archive, dest)
    root = dest / "aurora"
    assert sub.root == root and sub.model == root / "model.tflite"
    assert sub.model.read_bytes() == TFLITE
    assert sub.results == [root / "results/0001.png", root / "results/0002.png"]
    assert (sub.factsheet, sub.readme) == (root / "factsheet.pdf", root / "readme.txt")
    assert sub.files == unpack_submission(archive, dest.with_name("in-process")).files
    if os.geteuid() == 0 and sandbox.enabled():
        assert sub.model.stat().st_uid == sandbox.SANDBOX_UID  # written inside the sandbox


def _lzma_asking_for_4_gib() -> bytes:
    """An LZMA member whose header asks the decoder for a 4 GiB dictionary."""
    data = bytearray(build([("model.tflite", TFLITE)], zipfile.ZIP_LZMA))
    props = 30 + len("model.tflite") + 4  # local header, name, LZMA version and size
    struct.pack_into("<L", data, props + 1, 0xFFFFFFFF)
    return bytes(data)


def test_a_decompressor_that_asks_for_gigabytes_is_refused_within_the_childs_memory(place):
    """In the worker the 4 GiB dictionary would be reserved; the child's cap refuses it."""
    archive, dest = place(_lzma_asking_for_4_gib())
    with pytest.raises(ArchiveError, match="needs more memory") as caught:
        unpack_in_child(archive, dest, memory_mb=1024)
    assert caught.value.code == "zip_bomb"
    assert not dest.exists() or not any(dest.iterdir())


MISBEHAVING = {
    # a child that writes, then never answers: killed at the timeout
    "hangs": "pathlib.Path(r['dest'], 'partial.bin').write_bytes(b'x'); time.sleep(600)",
    # one that runs out of its address space
    "eats memory": "pathlib.Path(r['dest'], 'partial.bin').write_bytes(b'x'); "
    "b = bytearray(4 * 1024 ** 3)",
    # one that dies by a signal
    "crashes": "os.kill(os.getpid(), signal.SIGSEGV)",
    # one that names a file outside its folder
    "points outside": "say('unpacked', root='.', model='../../../etc/passwd', files=[])",
    # one that leaves a link behind
    "leaves a link": "os.symlink('/etc', pathlib.Path(r['dest'], 'model.tflite')); "
    "say('unpacked', root='.', model='model.tflite', files=['model.tflite'])",
}


@pytest.mark.parametrize(
    "behaviour, code, fragment",
    [
        ("hangs", "zip_bomb", "did not finish within 3 s"),
        ("eats memory", "zip_bomb", "needs more than 1024 MB"),
        ("crashes", "internal_error", "unpacking process stopped"),
        ("points outside", "internal_error", "named a path outside"),
        ("leaves a link", "internal_error", "left something unexpected"),
    ],
)
def test_a_misbehaving_unpacking_child_costs_only_itself(
    place, monkeypatch, behaviour, code, fragment
):
    from mai_ops.errors import StageError
    from mai_ops.infra import child

    script = (
        "import json, os, pathlib, signal, sys, time\n"
        "r = json.load(sys.stdin)\n"
        "def say(step, **kw):\n"
        "    print(json.dumps({'step': step, **kw}), flush=True)\n"
        f"{MISBEHAVING[behaviour]}\n"
        "say('done')\n"
    )
    monkeypatch.setattr(child, "child_command", lambda module: [sys.executable, "-c", script])
    archive, dest = place(build(good_entries()))
    with pytest.raises(StageError) as caught:
        unpack_in_child(archive, dest, timeout_s=3, memory_mb=1024)
    assert (caught.value.code, caught.value.stage) == (code, registered(code).stage)
    assert fragment in caught.value.message
    assert not dest.exists() or not any(dest.iterdir())
