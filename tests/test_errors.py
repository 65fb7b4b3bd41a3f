"""The error registry: every code a record or an email can carry is registered once."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from mai_ops.errors import CODES, STAGES, StageError, registered, render_markdown, stage_codes
from mai_ops.submissions.evaluation import Evaluation, retryable

PROJECT = Path(__file__).resolve().parents[1]
# Calls whose first argument is an error code: the error classes, their child-side
# twins, intake's refuse() and the reports' add(code, message).
CODE_CALLS = {
    "StageError",
    "IntakeError",
    "ArchiveError",
    "BenchmarkError",
    "FidelityError",
    "ChildFailure",
    "refuse",
    "_classify",
}


def _literal_codes(path: Path) -> list[tuple[str, int]]:
    """(code, line) for each string literal passed as a code in the file's source."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        args = list(node.args)
        if name == "_classify":
            args = args[1:2]  # _classify(exc, code, what, memory_mb)
        elif name == "add" and len(args) == 2:
            args = args[:1]  # report.add(code, message)
        elif name in CODE_CALLS:
            args = args[:1]
        else:
            args = []
        args += [k.value for k in node.keywords if k.arg == "code"]
        for arg in args:
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((arg.value, node.lineno))
    return found


def test_every_code_in_the_source_is_registered():
    used = {}
    for path in sorted((PROJECT / "mai_ops").rglob("*.py")):
        for code, line in _literal_codes(path):
            used.setdefault(code, f"{path.relative_to(PROJECT)}:{line}")
    unregistered = {c: where for c, where in used.items() if c not in CODES}
    assert unregistered == {}
    # The walk sees the codes of every stage that raises them: it would notice a miss.
    assert len(used) > 60
    assert {registered(c).stage for c in used} == set(STAGES)  # every stage reports one


def test_the_walk_catches_an_unregistered_literal(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('raise BenchmarkError("timeout", "x")\nreport.add("too_large", "y")\n')
    assert [c for c, _ in _literal_codes(bad)] == ["timeout", "too_large"]
    assert not any(c in CODES for c, _ in _literal_codes(bad))


def test_an_unregistered_code_is_refused_at_construction():
    from mai_ops.devices.benchmark import BenchmarkError
    from mai_ops.models.checks import CheckReport
    from mai_ops.submissions.intake import IntakeError

    with pytest.raises(ValueError, match="not a registered error code"):
        StageError("too_large", "which one?")
    with pytest.raises(ValueError, match="not a registered error code"):
        BenchmarkError("timeout", "the old, ambiguous name")
    with pytest.raises(ValueError, match="not a code of the check stage"):
        CheckReport("m.tflite").add("zip_slip", "an archive code in a model report")
    with pytest.raises(AssertionError):
        IntakeError("zip_slip", "not an intake rule")
    err = StageError("benchmark_timeout", "no answer in 600 s")
    assert err.as_json() == {
        "code": "benchmark_timeout",
        "stage": "benchmark",
        "message": "no answer in 600 s",
    }


def test_each_code_has_one_stage_a_meaning_and_whose_fault():
    assert all(c.stage in STAGES and c.meaning and "\n" not in c.meaning for c in CODES.values())
    assert all(c.name == c.name.lower() and " " not in c.name for c in CODES.values())
    # The three kinds of "too large" are three codes, of three stages.
    sizes = {c: registered(c).stage for c in CODES if c.endswith("too_large")}
    assert sizes == {
        "upload_too_large": "intake",
        "archive_too_large": "unpack",
        "member_too_large": "unpack",
        "model_too_large": "check",
    }
    ours = {c for c, entry in CODES.items() if entry.retry}
    assert {"internal_error", "benchmark_device_offline", "benchmark_timeout"} <= ours
    assert registered("processing_stuck").stage == "internal" and "processing_stuck" in ours
    assert not {"zip_slip", "input_shape", "custom_op", "check_timeout", "fidelity_timeout"} & ours
    assert all(c.startswith("benchmark_") for c in stage_codes("benchmark"))
    assert all(c.startswith("fidelity_") for c in stage_codes("fidelity"))


def test_retry_on_clear_is_decided_by_the_registry():
    def record(status, *codes):
        return {"status": status, "errors": [{"code": c} for c in codes]}

    assert retryable(record("failed", "benchmark_adb_failed"))
    assert retryable(record("failed", "frozen_copy_changed"))
    assert not retryable(record("failed", "check_timeout"))
    assert not retryable(record("rejected", "late"))
    assert not retryable(record("ok"))
    assert not retryable(record("failed", "a_code_from_an_old_record"))


def test_a_record_is_rejected_by_intake_and_failed_by_any_later_stage():
    from mai_ops.submissions.intake import IntakeError

    rejected = Evaluation(key="depth/validation/t/a.zip")
    rejected.fail(IntakeError("late", "after the deadline"))
    assert rejected.status == "rejected"
    failed = Evaluation()
    failed.fail(StageError("input_shape", "a"), StageError("custom_op", "b"))
    assert failed.status == "failed"
    assert [e["stage"] for e in failed.as_json()["errors"]] == ["check", "check"]
    assert failed.as_json()["runtime_ms"] is None


def test_errors_md_is_the_rendering_of_the_registry():
    doc = (PROJECT / "docs" / "errors.md").read_text()
    assert doc == render_markdown(), "run: python -m mai_ops.errors > docs/errors.md"
    assert all(f"`{name}`" in doc for name in CODES)


def test_python_m_mai_ops_errors_prints_the_document():
    out = subprocess.run(
        [sys.executable, "-m", "mai_ops.errors"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == render_markdown()


@pytest.mark.parametrize(
    ("raw", "kept", "gone"),
    [
        pytest.param(
            r"assertion failed: [HOME=/root\000AIRFLOW_CONN_AWS_DEFAULT={\"login\": \"k\","
            r" \"password\": \"s3cret\"}\000TZ=UTC]",
            ["assertion failed", "AIRFLOW_CONN_AWS_DEFAULT=[removed]"],
            ["s3cret", "/root", "login"],
            id="an-environment-dump-a-model-raised",
        ),
        pytest.param(
            "cannot open s3://AKIAKEY:topsecret@bucket/x",
            ["s3://[removed]@bucket"],
            ["topsecret", "AKIAKEY"],
            id="credentials-in-a-url",
        ),
        pytest.param(
            "failed at /tmp/mai-upload-x1/work/unpacked/model.tflite",
            ["…/model.tflite"],
            ["/tmp/mai-upload-x1"],
            id="a-worker-path",
        ),
        pytest.param(
            "model.tflite: input 0 has shape [1, 32, 32, 3], expected [1, 64, 64, 3]",
            ["model.tflite: input 0 has shape [1, 32, 32, 3], expected [1, 64, 64, 3]"],
            [],
            id="an-ordinary-message-is-unchanged",
        ),
    ],
)
def test_messages_for_teams_carry_no_secrets_or_worker_paths(raw, kept, gone):
    message = StageError("conversion_failed", raw).message
    for text in kept:
        assert text in message
    for text in gone:
        assert text not in message


def test_messages_for_teams_are_bounded():
    many_ops = "unsupported custom ops: " + ", ".join(f"Op{i:05d}" * 20 for i in range(5000))
    message = StageError("custom_op", many_ops).message
    assert len(message) <= 400 and message.endswith("…")
