"""``mai-ops score`` against the loopback S3 server, through the aws_default connection.

The frozen manifest and the scored records are written into the results bucket
directly, as the final collection and the scoring tasks store them.
"""

from __future__ import annotations

import json

import pytest

from mai_ops.challenge.config import load_challenge
from mai_ops.cli import main
from mai_ops.infra.layout import FROZEN_MANIFEST, RANKING, score_key
from mai_ops.infra.storage import get_json, list_objects, put_json
from mai_ops.results.ranking import rank_challenge
from mai_ops.results.records import load_final_records

from .conftest import MAI2021

CH = load_challenge(MAI2021)
RESULTS = CH.buckets.results
UPLOADED = "2021-03-20T21:00:00+00:00"

# (track, team, metrics, runtime_ms); "waiting" is frozen but has no record yet.
SUBMISSIONS = [
    ("learned_isp", "fast", {"psnr": 29.0, "ssim": 0.9}, 5.0),
    ("learned_isp", "sharp", {"psnr": 31.0, "ssim": 0.93}, 40.0),
    ("learned_isp", "steady", {"psnr": 30.0, "ssim": 0.91}, 12.0),
    ("learned_isp", "waiting", None, None),
    ("depth", "deep", {"si_rmse": 0.2, "rmse": 3.0}, 50.0),
]


def sha(team: str) -> str:
    return team.encode().hex().ljust(64, "0")[:64]


def store(s3) -> list[dict]:
    """The manifest and every record but the waiting one's; returns the manifest entries."""
    entries = []
    for track, team, metrics, runtime_ms in SUBMISSIONS:
        entry = {
            "track": track,
            "team": team,
            "sha256": sha(team),
            "uploaded_at": UPLOADED,
            "frozen": f"frozen/{track}/{team}/final.zip",
            "size": 100,
        }
        entries.append(entry)
        if team == "waiting":
            continue
        record = {
            "team": team,
            "track": track,
            "phase": "final",
            "sha256": sha(team),
            "uploaded_at": UPLOADED,
            "device": CH.track(track).device,
            "status": "ok",
            "errors": [],
            "metrics": metrics,
            "runtime_ms": runtime_ms,
            "runtime": {"backend": "litert", "median_ms": runtime_ms},
            "score": None,
            "flags": [],
            "excluded": False,
        }
        put_json(s3, RESULTS, score_key(track, team, sha(team)), record)
    manifest = {"challenge": CH.id, "frozen": entries, "missing": [], "rejected": []}
    put_json(s3, RESULTS, FROZEN_MANIFEST, manifest)
    return entries


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["score", "--challenge", "mai2021", "--phase", "final", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def keys(s3) -> list[tuple[str, str]]:
    return sorted((o["Key"], o["ETag"]) for o in list_objects(s3, RESULTS))


def test_the_loader_reads_the_manifest_and_marks_what_is_not_scored(s3):
    store(s3)
    records = load_final_records(s3, CH)
    assert [(r["track"], r["team"], r["status"]) for r in records] == [
        (track, team, "not_scored" if team == "waiting" else "ok")
        for track, team, _, _ in SUBMISSIONS
    ]
    waiting = records[3]
    assert waiting["sha256"] == sha("waiting") and waiting["uploaded_at"] == UPLOADED
    assert waiting["key"] == score_key("learned_isp", "waiting", sha("waiting"))


def test_ranks_with_the_files_constants_and_lists_what_is_not_scored(
    s3, airflow_connections, capsys
):
    store(s3)
    before = keys(s3)
    code, out, err = run(capsys, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["compared_with"] is None and result["moved"] == []
    assert result["not_scored"] == [
        {
            "track": "learned_isp",
            "team": "waiting",
            "sha256": sha("waiting"),
            "key": score_key("learned_isp", "waiting", sha("waiting")),
        }
    ]
    table = result["table"]
    assert list(table["tracks"]) == [t.id for t in CH.tracks]
    isp = table["tracks"]["learned_isp"]
    assert isp["constants"] == {"alpha": 2.0, "C": 1e15}
    assert [(r["team"], r["rank"]) for r in isp["rows"]] == [
        ("sharp", 1),
        ("steady", 2),
        ("fast", 3),
    ]
    assert isp["rows"][0]["score"] == 2**62 / (1e15 * 40.0)
    assert table["tracks"]["depth"]["rows"][0]["team"] == "deep"

    code, out, err = run(capsys)
    assert code == 0, err
    assert "learned_isp (device dimensity1000): 2 ** (alpha * psnr) / (C * runtime)" in out
    assert "not scored yet: waiting" in out
    assert "no ranking stored yet" in out
    assert keys(s3) == before  # nothing written


def test_other_constants_move_ranks_against_the_stored_ranking(s3, airflow_connections, capsys):
    store(s3)
    in_force = rank_challenge(CH, [r for r in load_final_records(s3, CH) if r["status"] == "ok"])
    put_json(s3, RESULTS, RANKING, in_force)
    before = keys(s3)

    code, out, err = run(capsys, "--track", "learned_isp", "--set", "alpha=0.5", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["compared_with"] == RANKING
    assert list(result["table"]["tracks"]) == ["learned_isp"]  # depth is not "gone"
    assert result["table"]["tracks"]["learned_isp"]["constants"] == {"alpha": 0.5, "C": 1e15}
    assert [(m["team"], m["old_rank"], m["new_rank"]) for m in result["moved"]] == [
        ("fast", 3, 1),
        ("sharp", 1, 3),
    ]
    fast = result["moved"][0]
    assert fast["old_score"] == 2**58 / (1e15 * 5.0)
    assert fast["new_score"] == 2**14.5 / (1e15 * 5.0)

    code, out, err = run(capsys, "--track", "learned_isp", "--set", "alpha=0.5")
    assert code == 0, err
    assert "constants set: alpha=0.5" in out
    assert "with alpha=0.5, C=1e+15" in out
    assert f"moved ranks against {RANKING}:" in out
    assert "| learned_isp | fast  | 3 -> 1 |" in out
    assert "| learned_isp | sharp | 1 -> 3 |" in out
    assert keys(s3) == before and get_json(s3, RESULTS, RANKING) == in_force

    # The file's constants again: nothing moved.
    code, out, err = run(capsys)
    assert code == 0, err
    assert out.count("no rank moved") == len(CH.tracks)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "beta=1"], "unknown constant 'beta'"),
        (["--track", "depth", "--set", "gamma=1"], "unknown constant 'gamma' (constants of depth"),
        (["--set", "alpha=fast"], "--set 'alpha=fast': 'fast' is not a number"),
        (["--set", "alpha=inf"], "'inf' is not a finite number"),
        (["--set", "alpha"], "expected NAME=VALUE"),
        (["--track", "deep"], "has no track 'deep'"),
    ],
)
def test_usage_errors_name_what_is_wrong(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert message in err


def test_no_frozen_set_is_an_error_reading_the_storage(s3, airflow_connections, capsys):
    code, out, err = run(capsys)
    assert code == 1 and out == ""
    assert "no frozen final set for mai2021" in err
