"""The ranked table against the Great Expectations suite of the final results.

A table from the ranking passes; each kind of corruption fails, and the report's
summary names the expectation that failed and the rows it failed on.
"""

from __future__ import annotations

import copy
import json
import math

import pytest

from mai_ops.challenge.config import load_challenge
from mai_ops.models.metrics import METRICS
from mai_ops.results.expectations import (
    SUITE,
    SuiteError,
    load_suite_spec,
    table_frame_rows,
    validate_table,
)
from mai_ops.results.ranking import rank_challenge

from .conftest import MAI2021

CH = load_challenge(MAI2021)
ONE_ROW = "one row per track and team"
NEEDS_SCORE = "a ranked row has a score"
NEEDS_PSNR = "a ranked row of a track measured by psnr has its psnr"
PSNR_RANGE = (
    "psnr is finite and at most the 100 dB cap (below 0 dB: worse than a constant image, "
    "still a result)"
)
RUNTIME = "runtime_ms is finite and above 0 (at most the largest finite float)"
FORMULA = (
    "score equals the track's formula on the row's metrics and runtime with the table's "
    "constants (relative tolerance 1e-9)"
)
DENSE = "ranks are dense from 1 in each track (1, 2, 2, 3)"
CONSISTENT = "a better score never has a worse rank in its track"


def record(track: str, team: str, metrics: dict | None, runtime_ms: float | None, **kw) -> dict:
    base = {
        "team": team,
        "track": track,
        "phase": "final",
        "sha256": "0" * 64,
        "uploaded_at": "2021-03-20T20:00:00+00:00",
        "device": CH.track(track).device,
        "status": "ok",
        "errors": [],
        "metrics": metrics,
        "runtime_ms": runtime_ms,
        "runtime": {"backend": "adb"},
        "score": None,
        "flags": [],
        "excluded": False,
    }
    return base | kw


RECORDS = [
    record("learned_isp", "aurora", {"psnr": 31.0, "ssim": 0.93}, 40.0),
    record("learned_isp", "borealis", {"psnr": 30.0, "ssim": 0.91}, 12.0),
    record("learned_isp", "cobalt", {"psnr": 30.0, "ssim": 0.91}, 12.0),  # ties borealis
    record("learned_isp", "dune", {"psnr": 28.0, "ssim": 0.88}, 9.0),
    record(
        "learned_isp",
        "ember",
        None,
        None,
        status="failed",
        errors=[{"code": "not_tflite", "stage": "check", "message": "not a model"}],
    ),
    record(
        "learned_isp",
        "flare",
        {"psnr": 33.0, "ssim": 0.95},
        20.0,
        excluded=True,
        flags=["results_not_reproduced"],
    ),
    record("depth", "aurora", {"si_rmse": 0.21, "rmse": 3.4}, 55.0),
    record("depth", "glacier", {"si_rmse": 0.3, "rmse": 4.1}, 30.0),
    record("scene_detection", "aurora", {"top1": 0.71, "top3": 0.9}, 8.0),
]


@pytest.fixture(scope="module")
def table() -> dict:
    return rank_challenge(CH, RECORDS)


def rows_of(table: dict, track: str) -> dict[str, dict]:
    return {r["team"]: r for r in table["tracks"][track]["rows"]}


def failures(report) -> dict[str, list[str]]:
    return {r["description"]: r["failed_rows"] for r in report.results if not r["success"]}


def assert_named(report, description: str, rows: list[str]) -> None:
    """The expectation failed on exactly these rows, and the summary says so."""
    assert not report.success
    assert failures(report)[description] == rows
    summary = report.summary()
    block = summary.split(f"FAILED {description} [")[1].split("\nFAILED ")[0]
    for row in rows:
        assert f"\n  {row}" in block, summary


def test_a_ranked_table_passes_with_failed_and_excluded_rows_allowed_their_nulls(table):
    assert [r["rank"] for r in table["tracks"]["learned_isp"]["rows"]] == [1, 2, 2, 3, None, None]
    report = validate_table(CH, table)
    assert report.success, report.summary()
    assert report.rows == 9
    assert report.summary() == (
        f"final results of mai2021: all {len(report.results)} expectations passed on 9 rows"
    )
    spec = load_suite_spec()
    assert [r["description"] for r in report.results] == [
        e["description"] for e in spec["expectations"]
    ]
    first = report.results[0]
    assert first == {
        "expectation": "expect_compound_columns_to_be_unique",
        "description": ONE_ROW,
        "columns": ["track", "team"],
        "success": True,
        "failed_rows": [],
        "details": [],
        "error": None,
    }
    # The table as stored (JSON) validates the same.
    assert validate_table(CH, json.loads(json.dumps(table))).success


def test_a_duplicate_team_row_fails(table):
    bad = copy.deepcopy(table)
    rows = bad["tracks"]["depth"]["rows"]
    rows.append(dict(rows[1]))
    assert_named(validate_table(CH, bad), ONE_ROW, ["depth/glacier"])


def test_a_ranked_row_without_a_score_or_a_metric_fails(table):
    bad = copy.deepcopy(table)
    rows_of(bad, "learned_isp")["dune"]["score"] = None
    rows_of(bad, "learned_isp")["aurora"]["psnr"] = None
    report = validate_table(CH, bad)
    assert_named(report, NEEDS_SCORE, ["learned_isp/dune"])
    assert_named(report, NEEDS_PSNR, ["learned_isp/aurora"])
    assert "learned_isp/dune: score=null" in report.summary()


def test_a_psnr_out_of_range_fails(table):
    bad = copy.deepcopy(table)
    rows_of(bad, "learned_isp")["dune"]["psnr"] = 150.0
    report = validate_table(CH, bad)
    assert_named(report, PSNR_RANGE, ["learned_isp/dune"])
    assert "learned_isp/dune: psnr=150" in report.summary()
    # A model worse than a constant image has a negative PSNR: a result, not an error.
    poor = copy.deepcopy(table)
    rows_of(poor, "learned_isp")["dune"]["psnr"] = -8.5
    assert PSNR_RANGE not in failures(validate_table(CH, poor))
    lost = copy.deepcopy(table)
    rows_of(lost, "learned_isp")["dune"]["psnr"] = -math.inf
    assert_named(validate_table(CH, lost), PSNR_RANGE, ["learned_isp/dune"])


@pytest.mark.parametrize("runtime", [0.0, math.inf, -3.0])
def test_a_runtime_not_finite_and_positive_fails(table, runtime):
    bad = copy.deepcopy(table)
    rows_of(bad, "depth")["glacier"]["runtime_ms"] = runtime
    assert_named(validate_table(CH, bad), RUNTIME, ["depth/glacier"])


def test_a_score_not_equal_to_the_formula_fails_beyond_the_tolerance(table):
    near = copy.deepcopy(table)
    rows_of(near, "depth")["glacier"]["score"] *= 1 + 1e-12
    assert validate_table(CH, near).success
    bad = copy.deepcopy(table)
    rows_of(bad, "depth")["glacier"]["score"] *= 1 + 1e-6
    report = validate_table(CH, bad)
    assert_named(report, FORMULA, ["depth/glacier"])
    assert list(failures(report)) == [FORMULA]
    # Other constants than the table's make every row's score wrong.
    other = copy.deepcopy(table)
    other["tracks"]["scene_detection"]["constants"]["alpha"] = 5.0
    assert_named(validate_table(CH, other), FORMULA, ["scene_detection/aurora"])


def test_a_rank_gap_fails(table):
    bad = copy.deepcopy(table)
    rows_of(bad, "learned_isp")["dune"]["rank"] = 4  # 1, 2, 2, 4
    report = validate_table(CH, bad)
    assert_named(report, DENSE, ["learned_isp/dune"])
    assert "learned_isp/dune: rank=4, rank_if_dense=3" in report.summary()
    starts_at_two = copy.deepcopy(table)
    for row in starts_at_two["tracks"]["depth"]["rows"]:
        row["rank"] += 1
    assert_named(validate_table(CH, starts_at_two), DENSE, ["depth/aurora", "depth/glacier"])


def test_a_rank_inconsistent_with_the_scores_fails(table):
    bad = copy.deepcopy(table)
    rows = rows_of(bad, "learned_isp")
    rows["aurora"]["rank"], rows["dune"]["rank"] = 3, 1  # best score ranked last
    report = validate_table(CH, bad)
    assert_named(
        report,
        CONSISTENT,
        ["learned_isp/aurora", "learned_isp/borealis"]
        + [
            "learned_isp/cobalt",
            "learned_isp/dune",
        ],
    )
    assert DENSE not in failures(report)


def test_the_derived_columns_say_what_the_suite_reads(table):
    rows = {(r["track"], r["team"]): r for r in table_frame_rows(CH, table)}
    borealis = rows[("learned_isp", "borealis")]
    assert borealis["required_psnr"] and borealis["required_ssim"]
    assert not borealis["required_si_rmse"] and borealis["si_rmse"] is None
    assert borealis["expected_score"] == borealis["score"]
    assert borealis["score_relative_error"] == 0.0
    assert (borealis["rank_if_dense"], borealis["rank_conflicts"]) == (2, 0)
    ember = rows[("learned_isp", "ember")]
    assert not ember["required_psnr"] and ember["score_relative_error"] is None
    assert ember["rank_if_dense"] is None and ember["rank_conflicts"] is None


def test_the_suite_covers_every_metric_and_a_bad_suite_is_refused(tmp_path):
    spec = load_suite_spec(SUITE)
    columns = {(e["type"], e["kwargs"].get("column")) for e in spec["expectations"]}
    for metric in METRICS:
        assert ("expect_column_values_to_not_be_null", metric) in columns
        assert ("expect_column_values_to_be_between", metric) in columns
    spec["expectations"][0]["type"] = "expect_compound_columns_to_be_uniqe"
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps(spec))
    with pytest.raises(SuiteError, match=f"refused: {ONE_ROW}"):
        validate_table(CH, {"tracks": {}}, typo)
    spec["expectations"][1]["description"] = spec["expectations"][2]["description"]
    typo.write_text(json.dumps(spec))
    with pytest.raises(SuiteError, match="a description of its own"):
        load_suite_spec(typo)
