"""The bucket layout: keys round-trip, bad upload keys are refused, the strings never change.

Stored objects, the demo and the docs depend on these exact strings, so a change
here is a data migration, not a refactoring.
"""

from __future__ import annotations

import pytest

from mai_ops.infra import layout
from mai_ops.infra.layout import BadUploadKey, UploadKey, parse_upload_key


@pytest.mark.parametrize(
    "key",
    [
        "depth/final/borealis/sub.zip",
        "learned_isp/validation/aurora/2021-03-01 v2.ZIP",
        "x/y/z/w",
    ],
)
def test_upload_keys_round_trip(key):
    parsed = parse_upload_key(key)
    assert parsed.key == key
    assert layout.upload_key(parsed.track, parsed.phase, parsed.team, parsed.filename) == key
    assert layout.loose_upload_key(key) == parsed
    assert layout.upload_owner(key) == f"{parsed.track}/{parsed.phase}/{parsed.team}"
    assert parse_upload_key(UploadKey("depth", "final", "borealis", "a.zip").key) == UploadKey(
        "depth", "final", "borealis", "a.zip"
    )


@pytest.mark.parametrize(
    "key",
    [
        "depth/final/sub.zip",
        "depth/final/borealis/x/sub.zip",
        "depth/final/borealis/",
        "/depth/final/borealis/sub.zip",
        "depth//borealis/sub.zip",
        "depth/final/../sub.zip",
        "depth/./borealis/sub.zip",
        "depth/final/borealis/sub\n.zip",
        "depth/final/borealis/sub\x7f.zip",
        "",
    ],
)
def test_the_parser_refuses_bad_keys(key):
    with pytest.raises(BadUploadKey, match="upload key"):
        parse_upload_key(key)


def test_a_malformed_four_part_key_still_names_its_team():
    assert layout.loose_upload_key("depth//borealis/sub.zip") == UploadKey(
        "depth", "", "borealis", "sub.zip"
    )
    assert layout.loose_upload_key("depth/final/sub.zip") is None


def test_final_phase_keys():
    assert layout.final_phase_prefix("depth") == "depth/final/"
    assert layout.final_upload_prefix("depth", "borealis") == "depth/final/borealis/"
    assert layout.is_final_upload("depth/final/borealis/sub.zip")
    assert not layout.is_final_upload("depth/validation/borealis/sub.zip")
    assert not layout.is_final_upload("final")
    assert layout.final_upload_team("depth/final/borealis/sub.zip") == "borealis"
    assert layout.final_upload_team("depth/final/borealis/deeper/sub.zip") == "borealis"
    assert layout.final_upload_team("depth/final/sub.zip") is None
    assert layout.final_upload_team("depth/validation/borealis/sub.zip") is None


def test_upload_records_round_trip():
    upload = "depth/validation/borealis/a.zip"
    record = layout.upload_record_key(upload, '"0123abcd"')
    assert record == "uploads/depth/validation/borealis/a.zip/0123abcd.json"
    assert layout.parse_upload_record_key(record) == (upload, "0123abcd")
    assert record.startswith(layout.team_records_prefix(upload))
    assert layout.team_records_prefix(upload) == "uploads/depth/validation/borealis/"
    other_team = layout.upload_record_key("depth/validation/aurora/a.zip", "e")
    assert not other_team.startswith(layout.team_records_prefix(upload))


def test_the_stored_key_strings():
    """The exact keys docs/storage.md lists; existing buckets hold objects under them."""
    assert layout.data_prefix("train_data_release") == "data/train_data_release/"
    assert layout.release_prefix("train_data_release") == "releases/train_data_release/"
    assert layout.release_manifest_key("e") == "releases/e/manifest.json"
    assert layout.release_sums_key("e") == "releases/e/SHA256SUMS"
    assert layout.data_set_keys("validation", "denoising") == (
        "validation/denoising/input/",
        "validation/denoising/gt/",
    )
    assert layout.data_set_keys("test", "depth") == ("test/depth/input/", "test/depth/gt/")
    assert layout.released_test_input_key("test_data_release", "test/depth/input/0001.png") == (
        "releases/test_data_release/test/depth/input/0001.png"
    )
    with pytest.raises(ValueError, match="unknown data set kind"):
        layout.data_set_keys("train", "depth")
    assert layout.has_ground_truth_segment("test/depth/gt/0001.png")
    assert layout.has_ground_truth_segment("isp/GT/0001.png")
    assert not layout.has_ground_truth_segment("isp/gt.png")
    assert not layout.has_ground_truth_segment("isp/gtx/0001.png")
    assert layout.frozen_key("depth", "borealis", "s.zip") == "frozen/depth/borealis/s.zip"
    assert layout.FROZEN_MANIFEST == "frozen/manifest.json"
    marker = layout.processing_key("depth/validation/borealis/a.zip", "0123abcd")
    assert marker.startswith("processing/") and marker.endswith(".json")
    assert marker != layout.processing_key("depth/validation/borealis/a.zip", "0123abce")
    assert layout.frozen_key("t", "x", "f").startswith(layout.FROZEN)
    assert layout.score_key("depth", "borealis", "ab12") == "scores/depth/borealis/ab12/record.json"
    assert layout.score_key("t", "x", "00").startswith(layout.SCORES)
    assert layout.notice_marker_key("mai2021/reminder/k/borealis") == (
        "notifications/mai2021/reminder/k/borealis.json"
    )
    marker = layout.notice_marker_key("mai2021/upload/d/validation/b/a.zip/e1/ok")
    assert marker.startswith(layout.notice_markers_prefix("mai2021/upload/d/validation/b/a.zip/e1"))
    assert layout.notice_markers_prefix("mai2021/x") == "notifications/mai2021/x/"
    assert layout.parse_notice_marker_key(marker) == "mai2021/upload/d/validation/b/a.zip/e1/ok"
    assert layout.notice_intent_key("mai2021/reminder/k/borealis") == (
        "notification-intents/mai2021/reminder/k/borealis.json"
    )
    assert not layout.notice_intent_key("mai2021/x").startswith(layout.NOTICE_MARKERS)
    assert layout.leaderboard_key("final", "depth", "index.html") == "leaderboard/depth/index.html"
    assert (layout.PRELIMINARY_JSON, layout.PRELIMINARY_CSV) == (
        "results/preliminary.json",
        "results/preliminary.csv",
    )
    assert layout.leaderboard_index_key("final") == "leaderboard/index.html"
    assert layout.leaderboard_key("final", "depth", "plot.svg") == "leaderboard/depth/plot.svg"
    assert layout.leaderboard_index_key("validation") == "leaderboard/validation/index.html"
    assert layout.leaderboard_key("validation", "depth", "results.csv") == (
        "leaderboard/validation/depth/results.csv"
    )
    assert layout.LEADERBOARD_TRACK_FILES == (
        "index.html",
        "results.csv",
        "results.json",
        "plot.svg",
        "plot.png",
    )
    assert layout.VALIDATION_BOARD_CACHE == "leaderboard/validation-records.json"
    with pytest.raises(ValueError, match="no leaderboard for phase 'test'"):
        layout.leaderboard_prefix("test")
    with pytest.raises(ValueError, match="not a leaderboard file"):
        layout.leaderboard_key("final", "depth", "other.html")
