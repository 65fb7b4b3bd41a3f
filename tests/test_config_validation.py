"""Challenge files: the shipped ones are valid, and every broken variant is caught.

Each broken variant is built from mai2021.yaml (loaded with pyyaml, mutated, written
back as YAML) and checked twice: through ``read_challenge`` (field path + message)
and through ``mai-ops validate`` (exit code 1, the file and the field on stderr).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from mai_ops.challenge.config import (
    ChallengeConfigError,
    Problem,
    challenge_files,
    load_challenge,
    read_challenge,
    validate_files,
)
from mai_ops.cli import main

CHALLENGES = Path(__file__).resolve().parent.parent / "include" / "challenges"
MAI2021 = CHALLENGES / "mai2021.yaml"
MAI2023 = CHALLENGES / "mai2023.yaml"

Mutation = Callable[[dict[str, Any]], None]


@pytest.fixture(autouse=True)
def _shipped_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    # `mai-ops validate` without arguments must read the project's include/challenges.
    monkeypatch.delenv("MAI_OPS_CHALLENGES_DIR", raising=False)


def base() -> dict[str, Any]:
    return yaml.safe_load(MAI2021.read_text(encoding="utf-8"))


BASE = base()
EVENT_INDEX = {e["name"]: i for i, e in enumerate(BASE["timeline"])}


def _steps(path: str) -> list[str | int]:
    """Split a field path: "tracks[0].score.formula" -> ["tracks", 0, "score", "formula"]."""
    return [
        int(tok[1:-1]) if tok.startswith("[") else tok
        for tok in re.findall(r"\[\d+\]|[^.\[\]]+", path)
    ]


def _parent(doc: Any, path: str) -> tuple[Any, str | int]:
    steps = _steps(path)
    for step in steps[:-1]:
        doc = doc[step]
    return doc, steps[-1]


def set_(path: str, value: Any) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        parent, key = _parent(doc, path)
        parent[key] = value

    return mutate


def delete(path: str) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        parent, key = _parent(doc, path)
        del parent[key]

    return mutate


def rename(path: str, new_key: str) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        parent, key = _parent(doc, path)
        parent[new_key] = parent.pop(key)

    return mutate


def both(*mutations: Mutation) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        for m in mutations:
            m(doc)

    return mutate


PHONE = {"backend": "adb", "serial": "R5CN"}


def ev(name: str) -> str:
    """Field path of an event in mai2021.yaml by name: "timeline[4]"."""
    return f"timeline[{EVENT_INDEX[name]}]"


def write_variant(tmp_path: Path, mutate: Mutation, name: str = "broken.yaml") -> Path:
    doc = base()
    participants = doc.get("participants") or {}
    if participants.get("source") == "file":  # `validate` reads the list: keep it found
        participants["path"] = str((MAI2021.parent / participants["path"]).resolve())
    mutate(doc)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


def warnings(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "warning"]


def assert_cli_reports(
    path: Path, expected: list[tuple[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """`mai-ops validate PATH` exits 1 and names the file and each field on stderr."""
    capsys.readouterr()
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr()
    lines = out.err.splitlines()
    for field, fragment in expected:
        matching = [
            line for line in lines if str(path) in line and field in line and fragment in line
        ]
        assert matching, f"no stderr line names {path}, {field!r} and {fragment!r}:\n{out.err}"
    assert "0 of 1 file(s) valid" in out.out


# --------------------------------------------------------------------------- shipped files


def test_shipped_mai2021_is_valid_with_one_warning() -> None:
    challenge, problems = read_challenge(MAI2021)
    assert challenge is not None
    assert challenge.id == "mai2021"
    assert errors(problems) == []
    assert [(w.field, w.file) for w in warnings(problems)] == [
        (f"{ev('workshop_day')}.date", str(MAI2021))
    ]
    assert "workshop_day" in warnings(problems)[0].message
    assert "June XX 2021" in warnings(problems)[0].message


def test_shipped_mai2023_is_valid_with_warnings_for_april_dates() -> None:
    challenge, problems = read_challenge(MAI2023)
    assert challenge is not None
    assert challenge.id == "mai2023"
    assert errors(problems) == []
    warned = {w.message.split("'")[1] for w in warnings(problems)}
    assert warned == {"paper_decision", "camera_ready"}
    assert all("April 2023" in w.message for w in warnings(problems))
    assert {w.field for w in warnings(problems)} == {"timeline[3].date", "timeline[4].date"}


def test_shipped_files_load_and_have_the_expected_shape() -> None:
    ch = load_challenge(MAI2021)
    assert ch.timezone == "America/Los_Angeles"
    assert ch.deadline_time == dt.time(17, 0)
    assert [t.id for t in ch.tracks] == [
        "learned_isp",
        "quantized_sr",
        "video_sr",
        "denoising",
        "depth",
        "scene_detection",
    ]
    assert ch.track("learned_isp").inputs[0].shape == [1, 544, 960, 4]
    assert ch.track("learned_isp").fidelity_inputs[0].shape == [1, -1, -1, 4]
    assert ch.track("quantized_sr").quantization == "int8"
    assert ch.event("workshop_day").date.fixed is False
    assert load_challenge(MAI2023).event("workshop_day").time == dt.time(8, 0)


def test_validate_without_arguments_checks_the_shipped_dir(
    capsys: pytest.CaptureFixture[str],
) -> None:
    shipped = challenge_files()
    assert MAI2021 in shipped and MAI2023 in shipped
    assert main(["validate"]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    assert f"{len(shipped)} of {len(shipped)} file(s) valid, 0 error(s)" in out.out
    # Warnings go to stdout, naming the file and the field.
    assert f"{MAI2021}: {ev('workshop_day')}.date: warning:" in out.out
    assert f"{MAI2023}: timeline[3].date: warning:" in out.out


def test_validate_explicit_shipped_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(MAI2021), str(MAI2023)]) == 0
    assert "2 of 2 file(s) valid, 0 error(s), 3 warning(s)" in capsys.readouterr().out


def test_short_name_defaults_to_the_id_and_public_url_loses_its_trailing_slash(
    tmp_path: Path,
) -> None:
    assert load_challenge(MAI2021).short_name == "MAI2021"
    path = write_variant(
        tmp_path,
        both(set_("id", "mai2021_rehearsal"), set_("public_url", "https://pub.example/mai2021/")),
    )
    challenge = load_challenge(path)
    assert (challenge.short_name, challenge.public_url) == (
        "MAI2021 REHEARSAL",
        "https://pub.example/mai2021",
    )
    chosen = load_challenge(write_variant(tmp_path, set_("short_name", "MAI 2021"), "chosen.yaml"))
    assert chosen.short_name == "MAI 2021"


def test_unmodified_round_trip_is_valid(tmp_path: Path) -> None:
    # The harness itself: dumping the parsed file back gives an equally valid file.
    path = write_variant(tmp_path, lambda doc: None)
    challenge, problems = read_challenge(path)
    assert challenge is not None
    assert errors(problems) == []


# --------------------------------------------------------------------------- broken variants


def _order_cases() -> list[Any]:
    order = [
        "train_data_release",
        "validation_server_online",
        "test_data_release",
        "final_deadline",
        "preliminary_results",
    ]
    cases = []
    for before, after in zip(order, order[1:], strict=False):
        before_date = BASE["timeline"][EVENT_INDEX[before]]["date"]
        moved = before_date - dt.timedelta(days=1)
        cases.append(
            pytest.param(
                set_(f"{ev(after)}.date", moved),
                [(f"{ev(after)}.date", f"{after} ({moved}) must come after {before}")],
                id=f"order-{after}-before-{before}",
            )
        )
    return cases


FORMULA = "tracks[0].score.formula"

BROKEN: list[Any] = [
    *_order_cases(),
    pytest.param(
        set_(f"{ev('final_deadline')}.date", "2021-03-15"),
        [
            (
                f"{ev('final_deadline')}.date",
                "final_deadline (2021-03-15) must come after test_data_release (2021-03-15)",
            )
        ],
        id="order-equal-instants",
    ),
    pytest.param(
        both(
            set_(f"{ev('final_deadline')}.date", "2021-03-15"),
            set_(f"{ev('final_deadline')}.time", "16:59"),
        ),
        [(f"{ev('final_deadline')}.date", "must come after test_data_release")],
        id="order-same-day-earlier-time",
    ),
    pytest.param(
        set_("timezone", "Mars/Olympus"),
        [("timezone", "unknown time zone 'Mars/Olympus'")],
        id="unknown-timezone",
    ),
    pytest.param(
        set_(f"{ev('final_deadline')}.date", "2021-03-XX"),
        [(f"{ev('final_deadline')}.date", "starts the final_collection phase")],
        id="unfixed-final-deadline-day-xx",
    ),
    pytest.param(
        set_(f"{ev('train_data_release')}.date", "TBD"),
        [(f"{ev('train_data_release')}.date", "(not fixed) is not fixed")],
        id="unfixed-release-tbd",
    ),
    pytest.param(
        set_(f"{ev('validation_server_online')}.date", "2021-01"),
        [(f"{ev('validation_server_online')}.date", "(January 2021) is not fixed")],
        id="unfixed-validation-server-month-only",
    ),
    pytest.param(
        set_("tracks[0].metrics[1]", "lpips"),
        [("tracks[0].metrics[1]", "unknown metric 'lpips'")],
        id="unknown-metric",
    ),
    pytest.param(
        set_("tracks[2].device", "pixel7"),
        [("tracks[2].device", "unknown device 'pixel7'")],
        id="unknown-device",
    ),
    pytest.param(
        set_(FORMULA, "2 ** (alpha * psrn) / (C * runtime)"),
        [(FORMULA, "unknown variable 'psrn'")],
        id="formula-unknown-variable",
    ),
    pytest.param(
        set_(FORMULA, "__import__('os').system('x')"),
        [(FORMULA, "is not allowed")],
        id="formula-import-system",
    ),
    pytest.param(
        set_(FORMULA, "open('f')"),
        [(FORMULA, "function 'open' is not allowed")],
        id="formula-open",
    ),
    pytest.param(
        set_(FORMULA, "psnr / runtime.real"),
        [(FORMULA, "Attribute is not allowed")],
        id="formula-attribute",
    ),
    pytest.param(
        set_(FORMULA, "(lambda: psnr)()"),
        [(FORMULA, "is not allowed")],
        id="formula-lambda-call",
    ),
    pytest.param(
        set_(FORMULA, "lambda x: psnr"),
        [(FORMULA, "Lambda is not allowed")],
        id="formula-lambda",
    ),
    pytest.param(
        set_(FORMULA, "max([p for p in (psnr, ssim)])"),
        [(FORMULA, "ListComp is not allowed")],
        id="formula-list-comprehension",
    ),
    pytest.param(
        set_(FORMULA, "psnr * 'x'"),
        [(FORMULA, "only numbers are allowed as constants")],
        id="formula-string-constant",
    ),
    pytest.param(
        set_(FORMULA, "psnr > 30"),
        [(FORMULA, "Compare is not allowed")],
        id="formula-comparison",
    ),
    pytest.param(
        set_(FORMULA, "log(psnr, base=2) / runtime"),
        [(FORMULA, "keyword arguments are not allowed")],
        id="formula-keyword-argument",
    ),
    pytest.param(
        set_(FORMULA, "2 ** (alpha * psnr / (C * runtime)"),
        [(FORMULA, "not an arithmetic expression")],
        id="formula-syntax-error",
    ),
    # Pathological formulas: before the limits, a traceback (RecursionError from the
    # parser or MemoryError) instead of a finding.
    pytest.param(
        set_(FORMULA, "(" * 5000 + "psnr" + ")" * 5000),
        [(FORMULA, "at most 1000 are allowed")],
        id="formula-5000-parentheses",
    ),
    pytest.param(
        set_(FORMULA, "-" * 100_000 + "psnr"),
        [(FORMULA, "at most 1000 are allowed")],
        id="formula-100000-operators",
    ),
    pytest.param(
        set_(FORMULA, " ** ".join(["2"] * 50_000)),
        [(FORMULA, "at most 1000 are allowed")],
        id="formula-exponent-chain",
    ),
    pytest.param(
        set_(FORMULA, "+".join(["psnr"] * 199)),
        [(FORMULA, "nests more than 40 levels")],
        id="formula-deep-under-the-length-limit",
    ),
    pytest.param(
        set_(FORMULA, "-" * 900 + "psnr"),
        [(FORMULA, "nests more than 40 levels")],
        id="formula-900-unary-operators",
    ),
    pytest.param(
        set_(FORMULA, "psnr * 1" + "0" * 400),
        [(FORMULA, "a number in the formula is too large")],
        id="formula-huge-number",
    ),
    pytest.param(
        set_(FORMULA, ""),
        [(FORMULA, "the formula is empty")],
        id="formula-empty",
    ),
    pytest.param(
        set_(FORMULA, "   "),
        [(FORMULA, "the formula is empty")],
        id="formula-blank",
    ),
    pytest.param(
        set_("tracks[0].score.constants", {"alpha": 2, "C": 1e15, "psnr": 30}),
        [("tracks[0].score.constants", "shadow a metric or measurement")],
        id="constant-shadows-metric",
    ),
    pytest.param(
        set_(f"{ev('factsheet_deadline')}.name", "final_deadline"),
        [
            (
                f"{ev('factsheet_deadline')}.name",
                f"duplicate name 'final_deadline' (first at {ev('final_deadline')})",
            )
        ],
        id="duplicate-event-name",
    ),
    pytest.param(
        set_("tracks[1].id", "learned_isp"),
        [("tracks[1].id", "duplicate id 'learned_isp' (first at tracks[0])")],
        id="duplicate-track-id",
    ),
    pytest.param(
        set_("tracks[1].id", "validation"),
        [("tracks[1].id", "'validation' is reserved: the validation leaderboard's folder")],
        id="track-id-validation-reserved",
    ),
    pytest.param(
        set_("devices[1].name", "dimensity1000"),
        [
            ("devices[1].name", "duplicate name 'dimensity1000' (first at devices[0])"),
            # vs680 is gone now, so the track that used it points nowhere.
            ("tracks[1].device", "unknown device 'vs680'"),
        ],
        id="duplicate-device-name",
    ),
    pytest.param(
        set_("tracks[0].inputs[0].shape", []),
        [("tracks[0].inputs[0].shape", "at least one dimension")],
        id="tensor-empty-shape",
    ),
    pytest.param(
        set_("tracks[0].inputs[0].shape", [1, 0, 960, 4]),
        [("tracks[0].inputs[0].shape", "dimensions must be positive, or -1 for dynamic; got [0]")],
        id="tensor-zero-dim",
    ),
    pytest.param(
        set_("tracks[0].outputs[0].shape", [1, -3, 1920, 3]),
        [("tracks[0].outputs[0].shape", "got [-3]")],
        id="tensor-negative-dim",
    ),
    pytest.param(
        set_("tracks[0].inputs[0].dtype", "float64"),
        [("tracks[0].inputs[0].dtype", "'float32'")],
        id="tensor-dtype-float64",
    ),
    pytest.param(
        set_("tracks[0].inputs[0].shape", "1x544x960x4"),
        [("tracks[0].inputs[0].shape", "valid list")],
        id="tensor-shape-not-a-list",
    ),
    pytest.param(
        rename("deadline_time", "deadline_tme"),
        [("deadline_tme", "unknown field")],
        id="unknown-field-typo",
    ),
    pytest.param(
        set_(f"{ev('train_data_release')}.date", "2021-02-30"),
        [(f"{ev('train_data_release')}.date", "'2021-02-30' is not a calendar date")],
        id="bad-date-feb-30",
    ),
    pytest.param(
        set_(f"{ev('train_data_release')}.date", "next tuesday"),
        [(f"{ev('train_data_release')}.date", "'next tuesday' is not a date")],
        id="bad-date-words",
    ),
    pytest.param(
        set_(f"{ev('final_deadline')}.time", "25:00"),
        [(f"{ev('final_deadline')}.time", "expected a time of day like 17:00, got '25:00'")],
        id="bad-time-25",
    ),
    pytest.param(
        set_("devices[0].backend", "adb"),
        [("devices[0]", "an adb device needs its 'serial'")],
        id="adb-device-without-serial",
    ),
    pytest.param(
        set_("devices[0].host", "Lab_1"),
        [("devices[0].host", "'Lab_1' is not a host name")],
        id="device-host-not-a-host-name",
    ),
    pytest.param(
        both(
            *(set_(f"devices[{i}].{k}", v) for i in (0, 1) for k, v in PHONE.items()),
            set_("devices[0].host", "a"),
            set_("devices[1].host", "b"),
        ),
        [("devices[1].host", "phone 'R5CN' is on host 'b' here but on 'a' at devices[0]")],
        id="one-phone-on-two-hosts",
    ),
    pytest.param(
        set_("tracks[0].limits", {"per_day": 10, "total": 5}),
        [("tracks[0].limits", "total (5) is smaller than per_day (10)")],
        id="limits-total-below-per-day",
    ),
    pytest.param(
        set_("tracks[0].checks", {"timeout_s": 1, "memory_mb": 4096}),
        [("tracks[0].checks.timeout_s", "greater than or equal to 5")],
        id="checks-timeout-too-short",
    ),
    pytest.param(
        set_("tracks[0].checks", {"timeout_s": 60, "ram": 4096}),
        [("tracks[0].checks.ram", "unknown field")],
        id="checks-unknown-field",
    ),
    pytest.param(
        set_("buckets.submissions", "My_Bucket"),
        [("buckets.submissions", "'My_Bucket' is not a valid bucket name")],
        id="bad-bucket-name",
    ),
    pytest.param(
        set_("short_name", "Mobile AI 2021 challenge and workshop"),
        [("short_name", "is not a short name: 1 to 24 letters")],
        id="short-name-too-long",
    ),
    pytest.param(
        set_("organizers", ["MAI organizers <organizers@mai-challenge.example>"]),
        [("organizers", "is not a plain email address")],
        id="organizer-with-display-name",
    ),
    pytest.param(
        set_("public_url", "javascript:alert(1)"),
        [("public_url", "is not an http(s) URL of the public bucket")],
        id="public-url-not-http",
    ),
    pytest.param(
        delete("timeline"),
        [("timeline", "Field required")],
        id="missing-timeline",
    ),
    pytest.param(
        delete("buckets"),
        [("buckets", "name the buckets")],
        id="missing-buckets",
    ),
]


@pytest.mark.parametrize(("mutate", "expected"), BROKEN)
def test_broken_variant_is_reported(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mutate: Mutation,
    expected: list[tuple[str, str]],
) -> None:
    path = write_variant(tmp_path, mutate)

    _, problems = read_challenge(path)
    found = errors(problems)
    assert len(found) == len(expected), "\n".join(map(str, found))
    for field, fragment in expected:
        assert any(p.field == field and fragment in p.message for p in found), (
            f"expected {field}: ...{fragment}..., got:\n" + "\n".join(map(str, found))
        )
    assert all(p.file == str(path) for p in problems)

    with pytest.raises(ChallengeConfigError) as raised:
        load_challenge(path)
    assert raised.value.problems == found

    assert_cli_reports(path, expected, capsys)


@pytest.mark.parametrize(
    ("event", "value", "text"),
    [
        pytest.param("paper_decision", "2021-04-XX", "April XX 2021", id="workshop-day-xx"),
        pytest.param("paper_decision", "TBD", "not fixed", id="workshop-tbd"),
        pytest.param("camera_ready", "2021-04", "April 2021", id="workshop-month-only"),
        pytest.param("website_online", None, "not fixed", id="no-phase-null"),
    ],
)
def test_unfixed_date_without_a_required_phase_is_only_a_warning(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    event: str,
    value: str | None,
    text: str,
) -> None:
    path = write_variant(tmp_path, set_(f"{ev(event)}.date", value))
    challenge, problems = read_challenge(path)
    assert challenge is not None
    assert errors(problems) == []
    field = f"{ev(event)}.date"
    assert any(
        w.field == field and event in w.message and f"({text})" in w.message
        for w in warnings(problems)
    ), "\n".join(map(str, problems))

    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    assert f"{path}: {field}: warning:" in out.out
    assert "1 of 1 file(s) valid, 0 error(s), 2 warning(s)" in out.out


def test_later_time_on_the_same_day_is_in_order(tmp_path: Path) -> None:
    # The counterpart of order-same-day-earlier-time: the instant decides, not the date.
    path = write_variant(
        tmp_path,
        both(
            set_(f"{ev('final_deadline')}.date", "2021-03-15"),
            set_(f"{ev('final_deadline')}.time", "17:01"),
        ),
    )
    _, problems = read_challenge(path)
    assert errors(problems) == []


def test_unfixed_milestone_is_not_reported_as_out_of_order(tmp_path: Path) -> None:
    # Only the "not fixed" error: an unknown day cannot be compared with its neighbours.
    path = write_variant(tmp_path, set_(f"{ev('test_data_release')}.date", "2021-03"))
    _, problems = read_challenge(path)
    assert [p.field for p in errors(problems)] == [f"{ev('test_data_release')}.date"]
    assert "must come after" not in errors(problems)[0].message


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    path = write_variant(
        tmp_path,
        both(
            set_("tracks[0].metrics[1]", "lpips"),
            set_("tracks[3].device", "pixel7"),
            set_("tracks[4].score.formula", "open('f')"),
        ),
    )
    _, problems = read_challenge(path)
    assert [p.field for p in errors(problems)] == [
        "tracks[0].metrics[1]",
        "tracks[3].device",
        "tracks[4].score.formula",
    ]


# --------------------------------------------------------------------------- unreadable files


def _write_bytes(data: bytes) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        path = tmp_path / "broken.yaml"
        path.write_bytes(data)
        return path

    return make


BROKEN_YAML = b"""id: mai2021
title: broken
timeline:
  - {name: website_online, title: Website online, date: 2021-01-07
  - {name: train_data_release, title: Data, date: 2021-01-15}
"""

UNREADABLE: list[Any] = [
    pytest.param(
        _write_bytes(b"- id: mai2021\n- title: x\n"),
        "",
        "expected a mapping of challenge fields at the top",
        id="top-level-list",
    ),
    pytest.param(
        _write_bytes(b"just a string\n"),
        "",
        "expected a mapping of challenge fields at the top",
        id="top-level-scalar",
    ),
    pytest.param(
        _write_bytes(b""),
        "",
        "expected a mapping of challenge fields at the top",
        id="empty-file",
    ),
    pytest.param(
        _write_bytes(BROKEN_YAML),
        "line 5, column 5",
        "not valid YAML",
        id="broken-yaml-syntax",
    ),
    pytest.param(
        _write_bytes(b"id: mai2021\ntitle: Caf\xe9\n"),
        "",
        "not UTF-8 text",
        id="not-utf8",
    ),
    pytest.param(
        lambda tmp_path: tmp_path / "does-not-exist.yaml",
        "",
        "file not found",
        id="missing-file",
    ),
    # libyaml's composer recurses in C per level: 100000 brackets crashed the process
    # (SIGSEGV), taking `mai-ops validate` and the DAG file's parse with it.
    pytest.param(
        _write_bytes(b"id: deep\ntitle: " + b"[" * 100_000 + b"]" * 100_000 + b"\n"),
        "line 2",
        "nest more than 64 levels deep",
        id="yaml-nested-100000-deep",
    ),
    pytest.param(
        _write_bytes(b"id: deep\ntimeline:\n" + b"".join(b"  " * i + b"- \n" for i in range(80))),
        "line 66",  # the 65th level: the top mapping, then a list per line from line 3
        "nest more than 64 levels deep",
        id="yaml-block-nesting",
    ),
    pytest.param(
        lambda tmp_path: (os.mkfifo(tmp_path / "pipe.yaml"), tmp_path / "pipe.yaml")[1],
        "",
        "not a regular file",  # reading a FIFO nobody writes to would block for ever
        id="fifo",
    ),
    pytest.param(
        _write_bytes(b"id: big\ntitle: x\n# " + b"x" * (1024 * 1024) + b"\n"),
        "",
        "a challenge file is at most 1,048,576",
        id="file-too-large",
    ),
]


@pytest.mark.parametrize(("make", "field", "fragment"), UNREADABLE)
def test_unreadable_file_is_reported(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[Path], Path],
    field: str,
    fragment: str,
) -> None:
    path = make(tmp_path)
    challenge, problems = read_challenge(path)
    assert challenge is None
    assert len(problems) == 1
    (problem,) = problems
    assert (problem.file, problem.field, problem.severity) == (str(path), field, "error")
    assert fragment in problem.message

    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert str(path) in err
    assert fragment in err
    if field:
        assert field in err


def test_yaml_error_names_the_line(tmp_path: Path) -> None:
    path = _write_bytes(BROKEN_YAML)(tmp_path)
    (problem,) = read_challenge(path)[1]
    assert re.fullmatch(r"line \d+, column \d+", problem.field)
    assert str(problem).startswith(f"{path}: line 5")


def test_not_utf8_names_the_byte(tmp_path: Path) -> None:
    path = _write_bytes(b"id: mai2021\ntitle: Caf\xe9\n")(tmp_path)
    (problem,) = read_challenge(path)[1]
    assert "at byte 22" in problem.message


def test_two_files_with_the_same_challenge_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = write_variant(tmp_path, lambda doc: None, "first.yaml")
    second = write_variant(tmp_path, set_("title", "A copy"), "second.yaml")

    problems = validate_files([first, second])
    assert errors(problems) == [
        Problem(str(second), "id", f"challenge id 'mai2021' is also used by {first}")
    ]

    assert main(["validate", str(first), str(second)]) == 1
    out = capsys.readouterr()
    assert f"{second}: id: error: challenge id 'mai2021' is also used by {first}" in out.err
    assert "1 of 2 file(s) valid, 1 error(s)" in out.out


def test_validate_reports_every_file_and_continues_after_a_broken_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = _write_bytes(BROKEN_YAML)(tmp_path)
    assert main(["validate", str(broken), str(MAI2021)]) == 1
    out = capsys.readouterr()
    assert str(broken) in out.err
    assert str(MAI2021) not in out.err
    assert "1 of 2 file(s) valid, 1 error(s), 1 warning(s)" in out.out


# --------------------------------------------------------------------------- known bugs
# Each of these crashes with a traceback instead of reporting a Problem; see the report.
# strict=True: once fixed they XPASS and fail, so the marker gets removed.


def test_unquoted_impossible_date_is_a_problem_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # PyYAML resolves an unquoted 2021-02-30 as a timestamp and raises ValueError while
    # constructing datetime.date; read_challenge only catches yaml.YAMLError.
    text = MAI2021.read_text(encoding="utf-8").replace(
        "date: 2021-01-15, phase: release_data", "date: 2021-02-30, phase: release_data"
    )
    path = tmp_path / "unquoted.yaml"
    path.write_text(text, encoding="utf-8")
    challenge, problems = read_challenge(path)
    assert challenge is None or errors(problems)
    assert any("2021-02-30" in p.message or "out of range" in p.message for p in problems)
    assert main(["validate", str(path)]) == 1
    assert str(path) in capsys.readouterr().err


def test_timezone_naming_a_tzdata_directory_is_a_problem(tmp_path: Path) -> None:
    path = write_variant(tmp_path, set_("timezone", "America"))
    _, problems = read_challenge(path)
    assert [(p.field, "unknown time zone" in p.message) for p in errors(problems)] == [
        ("timezone", True)
    ]


def test_directory_instead_of_a_file_is_a_problem(tmp_path: Path) -> None:
    challenge, problems = read_challenge(tmp_path)
    assert challenge is None
    assert [p.file for p in errors(problems)] == [str(tmp_path)]


@pytest.mark.parametrize(
    ("raised", "fragment"),
    [
        pytest.param(RecursionError("maximum recursion depth"), "nests too deeply", id="recursion"),
        pytest.param(KeyError("a bug"), "cannot be checked (KeyError: 'a bug')", id="bug"),
    ],
)
def test_a_crash_met_by_one_file_is_a_finding_not_a_traceback(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    raised: Exception,
    fragment: str,
) -> None:
    """Whatever escapes the checks names the file; the other files are still checked."""
    from mai_ops.challenge import config

    checks = config.semantic_problems
    path = write_variant(tmp_path, lambda doc: None)

    def crash_on_one_file(challenge: Any, file: str) -> list[Problem]:
        if file == str(path):
            raise raised
        return checks(challenge, file)

    monkeypatch.setattr(config, "semantic_problems", crash_on_one_file)
    challenge, problems = read_challenge(path)
    assert challenge is None
    assert [(p.file, p.severity) for p in problems] == [(str(path), "error")]
    assert fragment in problems[0].message
    assert main(["validate", str(path), str(MAI2023)]) == 1
    out = capsys.readouterr()
    assert str(path) in out.err and str(MAI2023) not in out.err
    assert "1 of 2 file(s) valid" in out.out
