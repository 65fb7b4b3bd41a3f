"""The final ranking: scores recomputed with the formula, tie-breaks, dense ranks, moves.

mai2021's tracks: ``learned_isp`` scores ``2 ** (alpha * psnr) / (C * runtime)`` with
alpha 2 (PSNR higher is better), ``depth`` scores ``2 ** (-alpha * si_rmse) / (C *
runtime)`` (si-RMSE lower is better). The numbers below make scores equal exactly:
doubling the runtime and adding 0.5 dB gives the same float.
"""

from __future__ import annotations

import pytest

from mai_ops.challenge.config import load_challenge
from mai_ops.models.fidelity import score_with_reason
from mai_ops.results.ranking import (
    RankingError,
    moved_ranks,
    rank_challenge,
    rank_track,
    render_moved,
    render_track,
)
from mai_ops.results.records import NOT_SCORED

from .conftest import MAI2021

CH = load_challenge(MAI2021)
ISP = CH.track("learned_isp")
DEPTH = CH.track("depth")
EARLY, LATE = "2021-03-20T20:00:00+00:00", "2021-03-20T23:59:00+00:00"


def record(track: str, team: str, metrics: dict | None, runtime_ms: float | None = 10.0, **kw):
    """A scored record as stored at layout.score_key."""
    base = {
        "team": team,
        "track": track,
        "phase": "final",
        "sha256": f"{team:0<64}"[:64],
        "uploaded_at": EARLY,
        "device": "a_device",
        "status": "ok",
        "errors": [],
        "metrics": metrics,
        "runtime_ms": runtime_ms,
        "runtime": {"backend": "litert", "median_ms": runtime_ms},
        "score": 0.0,  # the stored score is not trusted: the ranking computes it again
        "flags": [],
        "excluded": False,
    }
    return base | kw


def isp(team: str, psnr: float, runtime_ms: float = 10.0, **kw) -> dict:
    return record("learned_isp", team, {"psnr": psnr, "ssim": 0.9}, runtime_ms, **kw)


def depth(team: str, si_rmse: float, runtime_ms: float = 10.0, **kw) -> dict:
    return record("depth", team, {"si_rmse": si_rmse, "rmse": 3.0}, runtime_ms, **kw)


def failed(track: str, team: str, code: str = "not_tflite", message: str = "not a model"):
    return record(
        track,
        team,
        None,
        None,
        status="failed",
        errors=[{"code": code, "stage": "check", "message": message}],
    )


def ranks(rows: list[dict]) -> list[tuple]:
    return [(r["team"], r["rank"]) for r in rows]


def test_scores_are_the_formula_and_rows_carry_every_field():
    (row,) = rank_track(ISP, [isp("aurora", 30.0, 12.5)])
    assert row == {
        "rank": 1,
        "team": "aurora",
        "track": "learned_isp",
        "status": "ok",
        "score": 2 ** (2 * 30.0) / (1e15 * 12.5),
        "psnr": 30.0,
        "ssim": 0.9,
        "runtime_ms": 12.5,
        "device": "a_device",
        "backend": "litert",
        "flags": [],
        "error": None,
        "error_message": None,
        "sha256": "aurora".ljust(64, "0"),
        "uploaded_at": EARLY,
    }


def test_equal_scores_go_to_the_higher_psnr_then_to_the_earlier_upload():
    rows = rank_track(
        ISP,
        [
            isp("late", 30.0, 10.0, uploaded_at=LATE),
            isp("early", 30.0, 10.0, uploaded_at=EARLY),
            isp("sharper", 30.5, 20.0, uploaded_at=LATE),  # same score, better PSNR
        ],
    )
    assert len({r["score"] for r in rows}) == 1
    assert ranks(rows) == [("sharper", 1), ("early", 2), ("late", 3)]


def test_equal_scores_go_to_the_lower_si_rmse_for_depth():
    rows = rank_track(
        DEPTH,
        [
            depth("coarse", 0.2, 2.5),
            depth("fine", 0.1, 10.0, uploaded_at=LATE),  # later, but better si-RMSE
            depth("middle", 0.15, 5.0),
        ],
    )
    assert len({r["score"] for r in rows}) == 1
    assert ranks(rows) == [("fine", 1), ("middle", 2), ("coarse", 3)]


def test_rows_equal_on_score_fidelity_and_upload_time_share_a_dense_rank():
    rows = rank_track(
        ISP,
        [
            isp("d", 28.0),
            isp("b", 30.0),
            isp("c", 30.0),
            isp("a", 31.0),
        ],
    )
    assert [r["rank"] for r in rows] == [1, 2, 2, 3]
    assert ranks(rows)[0] == ("a", 1) and rows[-1]["team"] == "d"
    # The same instant written with another offset is the same upload time.
    rows = rank_track(
        ISP, [isp("x", 30.0, uploaded_at="2021-03-20T13:00:00-07:00"), isp("y", 30.0)]
    )
    assert [r["rank"] for r in rows] == [1, 1]


def test_a_row_the_formula_overflows_on_fails_alone():
    constants = {"alpha": 12}  # 2 ** (12 * 90) is beyond a float; 2 ** (12 * 30) is not
    rows = rank_track(
        ISP, [isp("huge", 90.0), isp("fine", 30.0), isp("zero", 31.0, 0.0)], constants
    )
    by_team = {r["team"]: r for r in rows}
    assert ranks(rows) == [("fine", 1), ("huge", None), ("zero", None)]
    for team in ("huge", "zero"):  # an overflow, a division by zero
        assert by_team[team]["status"] == "failed"
        assert by_team[team]["error"] == "score_not_computable"
        assert by_team[team]["score"] is None
    assert "cannot evaluate" in by_team["huge"]["error_message"]
    assert by_team["fine"]["score"] == pytest.approx(2**360 / (1e15 * 10.0), rel=1e-12)


def test_excluded_and_failed_rows_come_after_the_ranked_ones_by_team():
    rows = rank_track(
        ISP,
        [
            failed("learned_isp", "zulu"),
            isp("flagged", 35.0, excluded=True, flags=["results_not_reproduced"]),
            isp("ranked", 25.0),
            failed("learned_isp", "alpha", "benchmark_timeout", "too slow"),
            record("learned_isp", "nofidelity", None),  # ok, but no metrics: no score
        ],
    )
    assert [(r["team"], r["rank"], r["status"]) for r in rows] == [
        ("ranked", 1, "ok"),
        ("alpha", None, "failed"),
        ("flagged", None, "excluded"),
        ("nofidelity", None, "failed"),
        ("zulu", None, "failed"),
    ]
    alpha, flagged, nofidelity, zulu = rows[1:]
    assert (alpha["error"], alpha["error_message"]) == ("benchmark_timeout", "too slow")
    assert flagged["flags"] == ["results_not_reproduced"] and flagged["error"] is None
    assert flagged["score"] == pytest.approx(2**70 / 1e16, rel=1e-12)  # shown, not ranked
    assert nofidelity["error"] == "score_not_computable"
    assert "needs psnr" in nofidelity["error_message"]
    assert zulu["score"] is None and zulu["psnr"] is None


def test_constants_override_moves_ranks_and_moved_ranks_lists_them():
    records = [
        isp("fast", 29.0, 5.0),
        isp("sharp", 31.0, 40.0),
        isp("steady", 30.0, 12.0),
        depth("deep", 0.1),
    ]
    before = rank_challenge(CH, records)
    assert ranks(before["tracks"]["learned_isp"]["rows"]) == [
        ("sharp", 1),
        ("steady", 2),
        ("fast", 3),
    ]
    # With alpha 0.5, fidelity weighs less than speed.
    after = rank_challenge(CH, records, constants={"alpha": 0.5})
    assert after["tracks"]["learned_isp"]["constants"] == {"alpha": 0.5, "C": 1e15}
    assert after["tracks"]["depth"]["constants"] == {"alpha": 0.5, "C": 0.001}
    assert ranks(after["tracks"]["learned_isp"]["rows"]) == [
        ("fast", 1),
        ("steady", 2),
        ("sharp", 3),
    ]
    moved = moved_ranks(before, after)
    isp_rows = {r["team"]: r for r in after["tracks"]["learned_isp"]["rows"]}
    old_rows = {r["team"]: r for r in before["tracks"]["learned_isp"]["rows"]}
    assert moved == [
        {
            "track": "learned_isp",
            "team": team,
            "old_rank": old,
            "new_rank": new,
            "old_score": old_rows[team]["score"],
            "new_score": isp_rows[team]["score"],
        }
        for team, old, new in (("fast", 3, 1), ("sharp", 1, 3))  # steady stays 2nd
    ]
    text = render_moved(moved)
    assert text.splitlines()[0].split() == [
        "|",
        "track",
        "|",
        "team",
        "|",
        "rank",
        "|",
        "score",
        "|",
    ]
    assert "| learned_isp | fast  | 3 -> 1 |" in text
    assert render_moved([]) == "no rank moved"


def test_moved_ranks_lists_teams_entering_and_leaving_the_ranking():
    old = rank_challenge(CH, [isp("a", 30.0), isp("b", 29.0), failed("learned_isp", "c")])
    new = rank_challenge(
        CH,
        [isp("a", 30.0), failed("learned_isp", "b"), isp("d", 28.0), failed("learned_isp", "c")],
    )
    assert [(m["team"], m["old_rank"], m["new_rank"]) for m in moved_ranks(old, new)] == [
        ("d", None, 2),
        ("b", 2, None),
    ]
    gone = rank_challenge(CH, [isp("a", 30.0)])
    assert [(m["team"], m["old_rank"], m["new_rank"]) for m in moved_ranks(old, gone)] == [
        ("b", 2, None)
    ]
    assert moved_ranks(None, gone) == [
        {
            "track": "learned_isp",
            "team": "a",
            "old_rank": None,
            "new_rank": 1,
            "old_score": None,
            "new_score": gone["tracks"]["learned_isp"]["rows"][0]["score"],
        }
    ]


def test_the_table_lists_every_track_and_narrows_to_one():
    table = rank_challenge(CH, [isp("a", 30.0), depth("b", 0.2)])
    assert table["challenge"] == "mai2021" and table["phase"] == "final"
    assert list(table["tracks"]) == [t.id for t in CH.tracks]
    entry = table["tracks"]["depth"]
    assert {k: v for k, v in entry.items() if k != "rows"} == {
        "formula": DEPTH.score.formula,
        "constants": {"alpha": 20.0, "C": 0.001},
        "metrics": ["si_rmse", "rmse"],
        "device": "raspberry_pi4",
    }
    assert table["tracks"]["video_sr"]["rows"] == []
    assert "no submissions" in render_track("video_sr", table["tracks"]["video_sr"])
    one = rank_challenge(CH, [isp("a", 30.0), depth("b", 0.2)], track="depth", constants={"C": 1})
    assert list(one["tracks"]) == ["depth"]
    assert one["tracks"]["depth"]["constants"] == {"alpha": 20.0, "C": 1.0}
    text = render_track("depth", one["tracks"]["depth"])
    assert "with alpha=20, C=1" in text and "| 1    | b    | ok" in text


def test_unknown_tracks_constants_and_unscored_submissions_are_refused():
    with pytest.raises(RankingError, match="no track 'deep'"):
        rank_challenge(CH, [], track="deep")
    with pytest.raises(
        RankingError, match=r"unknown constant 'beta' \(constants of depth: C, alpha\)"
    ):
        rank_challenge(CH, [], track="depth", constants={"beta": 1.0})
    with pytest.raises(RankingError, match="unknown constant 'beta'"):
        rank_challenge(CH, [], constants={"beta": 1.0})
    with pytest.raises(RankingError, match="constant alpha: 'x' is not a number"):
        rank_challenge(CH, [], constants={"alpha": "x"})
    with pytest.raises(RankingError, match="not a finite number"):
        rank_challenge(CH, [], constants={"alpha": float("inf")})
    with pytest.raises(RankingError, match="names track 'gone'"):
        rank_challenge(CH, [record("gone", "a", None)])
    with pytest.raises(RankingError, match="was given to rank track 'depth'"):
        rank_track(DEPTH, [isp("a", 30.0)])
    waiting = {"track": "depth", "team": "slow", "status": NOT_SCORED}
    with pytest.raises(RankingError, match="depth: not scored yet: slow"):
        rank_challenge(CH, [depth("a", 0.2), waiting])


def test_the_scorer_takes_constants_in_place_of_the_tracks():
    score, reason = score_with_reason(ISP, {"psnr": 30.0}, 10.0, constants={"alpha": 1, "C": 1})
    assert (score, reason) == (2**30 / 10.0, "")
    assert score_with_reason(ISP, {"psnr": 30.0}, 10.0)[0] == 2**60 / 1e16
