"""The leaderboards: pages, CSV, JSON and plots, published for anyone with the link.

Rendered from tables ranked by the real ranking (``rank_challenge``), published to the
local S3-compatible server and read back without credentials, and opened in real
headless Chromium (tests/browser.py): sorting by a column, hostile team ids kept as
inert text, the plot drawn. Screenshots go to ``var/leaderboard-*.png``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import subprocess
import sys
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

import pytest

from mai_ops.challenge.config import load_challenge
from mai_ops.infra import layout
from mai_ops.infra.storage import put_json
from mai_ops.publishing import leaderboard as lb
from mai_ops.publishing.plot import (
    iso_segments,
    pareto_front,
    plot_scene,
    plotted_rows,
    score_grid,
    track_scorer,
)
from mai_ops.publishing.preliminary import public_table
from mai_ops.results.ranking import rank_challenge

from .conftest import MAI2021, PROJECT

CH = load_challenge(MAI2021)
TRACK = "denoising"  # psnr and ssim, on exynos2100 (a litert device)
STAND_IN = "LiteRT on the server CPU, standing in for Exynos 2100 Mali-G78 GPU"
SCRIPT_TEAM = "<script>window.pwned=1</script>"
IMG_TEAM = "<img src=x onerror=window.pwned=2>"
LONG_TEAM = "long" + "o" * 492 + "team"  # 500 characters
FORMULA_TEAM = '=HYPERLINK("http://example.invalid","x")'


def record(team, psnr, runtime_ms, *, track=TRACK, ssim=0.9, at="10:00", backend="litert", **kw):
    device = CH.track(track).device
    first, second = CH.track(track).metrics
    return {
        "track": track,
        "team": team,
        "status": kw.pop("status", "ok"),
        "metrics": {first: psnr, second: ssim} if psnr is not None else {},
        "runtime_ms": runtime_ms,
        "runtime": {"backend": backend} if runtime_ms is not None else None,
        "device": device,
        "flags": kw.pop("flags", []),
        "errors": kw.pop("errors", []),
        "sha256": hashlib.sha256(f"{track}/{team}/{at}".encode()).hexdigest(),
        "uploaded_at": f"2021-03-20T{at}:00+00:00",
        **kw,
    }


RECORDS = [
    record("aurora", 31.2, 45.0),
    record("borealis", 30.1, 12.0),
    record("cobalt", 29.5, 30.0, flags=["results_not_reproduced"]),
    record(SCRIPT_TEAM, 28.0, 8.0),
    record(IMG_TEAM, 31.5, 150.0),
    record(LONG_TEAM, 30.8, 20.0),
    record(FORMULA_TEAM, 27.0, 9.0),
    record(
        "dune",
        None,
        None,
        status="failed",
        errors=[{"code": "wrong_output_shape", "stage": "check", "message": "x"}],
    ),
    # The depth track: lower si_rmse is better; a phone measures with adb.
    record("aurora", 0.21, 120.0, track="depth", ssim=0.5),
    record("borealis", 0.18, 300.0, track="depth", ssim=0.4, backend="adb"),
]


@pytest.fixture(scope="module")
def table():
    return public_table(rank_challenge(CH, RECORDS))


@pytest.fixture(scope="module")
def files(table):
    return lb.render_leaderboard(table, CH)


# ---------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------


def test_every_track_has_its_files_and_the_index_links_them(files):
    expected = {"index.html"} | {
        f"{t.id}/{name}" for t in CH.tracks for name in layout.LEADERBOARD_TRACK_FILES
    }
    assert set(files) == expected
    index = files["index.html"].decode()
    for t in CH.tracks:
        for name in layout.LEADERBOARD_TRACK_FILES:
            assert f'href="{t.id}/{name}"' in index
    assert {lb.content_type(p) for p in files} == {
        "text/html; charset=utf-8",
        "text/csv; charset=utf-8",
        "application/json",
        "image/svg+xml",
        "image/png",
    }


def test_csv_and_json_hold_the_rows_of_the_table(table, files):
    for track_id, entry in table["tracks"].items():
        document = json.loads(files[f"{track_id}/results.json"])
        assert (document["challenge"], document["phase"], document["track"]) == (
            "mai2021",
            "final",
            track_id,
        )
        assert document["columns"] == lb.columns(entry)
        # Every field of every row of the table, in its order, and nothing else but
        # where the runtime was measured.
        added = {"runtime_measured_on", "runtime_stand_in"}
        assert [{k: v for k, v in r.items() if k not in added} for r in document["rows"]] == [
            {c: row.get(c) for c in lb.columns(entry) if c not in added} for row in entry["rows"]
        ]
        read = list(csv.reader(io.StringIO(files[f"{track_id}/results.csv"].decode())))
        assert read[0] == document["columns"]
        assert read[1:] == [[lb.csv_cell(r[c]) for c in read[0]] for r in document["rows"]]
    rows = {r["team"]: r for r in json.loads(files["denoising/results.json"])["rows"]}
    assert rows["cobalt"]["flags"] == ["results_not_reproduced"]
    assert (rows["dune"]["status"], rows["dune"]["error"], rows["dune"]["rank"]) == (
        "failed",
        "wrong_output_shape",
        None,
    )
    # Numbers survive exactly.
    read = list(csv.DictReader(io.StringIO(files["denoising/results.csv"].decode())))
    assert [float(r["score"]) for r in read if r["score"]] == [
        r["score"] for r in table["tracks"]["denoising"]["rows"] if r["score"] is not None
    ]


def test_a_csv_cell_that_a_spreadsheet_would_run_is_text():
    for text in ("=1+1", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1", FORMULA_TEAM):
        assert lb.csv_cell(text) == "'" + text
    assert lb.csv_cell("aurora") == "aurora"
    assert lb.csv_cell(-1.5) == "-1.5"  # a number stays a number
    assert lb.csv_cell(["a", "=b"]) == "a; =b"  # flags: ours, joined; not a formula start
    assert lb.csv_cell(None) == "" and lb.csv_cell(True) == "true"


def test_the_formula_team_is_text_in_the_csv(files):
    body = files["denoising/results.csv"].decode()
    assert "'=HYPERLINK" in body
    assert "\n=HYPERLINK" not in body and ",=HYPERLINK" not in body


def test_hostile_team_ids_are_escaped_everywhere(files):
    for path, body in files.items():
        if path.endswith((".html", ".svg")):
            text = body.decode()
            assert SCRIPT_TEAM not in text and IMG_TEAM not in text, path
            assert "<img" not in text, path
    page = files["denoising/index.html"].decode()
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=window.pwned=2&gt;" in page
    assert page.count("<script>") == 1  # the page's own sort script only
    # The SVG is well-formed XML, with the team ids as text and attributes.
    svg = ET.fromstring(files["denoising/plot.svg"])
    teams = {c.get("data-team") for c in svg.iter("{http://www.w3.org/2000/svg}circle")}
    assert {SCRIPT_TEAM, IMG_TEAM, LONG_TEAM} <= teams


def test_no_private_data_in_any_file(files):
    for path, body in files.items():
        if not path.endswith(".png"):
            text = body.decode()
            assert "@teams.example" not in text and "error_message" not in text, path
            assert "submission.zip" not in text, path


def test_the_same_table_gives_the_same_bytes_in_another_process(table, files):
    """Rendered again in a fresh interpreter with another hash seed: every byte equal."""
    script = (
        "import json, sys, hashlib\n"
        "from mai_ops.challenge.config import load_challenge\n"
        "from mai_ops.publishing.leaderboard import render_leaderboard\n"
        "table = json.load(sys.stdin)\n"
        f"files = render_leaderboard(table, load_challenge({str(MAI2021)!r}))\n"
        "print(json.dumps({p: hashlib.sha256(b).hexdigest() for p, b in files.items()}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(table),
        capture_output=True,
        text=True,
        check=True,
        cwd=PROJECT,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    assert json.loads(out.stdout) == {p: hashlib.sha256(b).hexdigest() for p, b in files.items()}
    assert lb.render_leaderboard(table, CH) == files


def test_stand_in_runtimes_say_so_next_to_the_number(files):
    page = files["denoising/index.html"].decode()
    assert f'45 ms<span class="note">({STAND_IN})</span>' in page
    rows = json.loads(files["denoising/results.json"])["rows"]
    measured = [r for r in rows if r["runtime_ms"] is not None]
    assert {(r["runtime_measured_on"], r["runtime_stand_in"]) for r in measured} == {
        (STAND_IN, True)
    }
    assert all(r["runtime_measured_on"] is None for r in rows if r["runtime_ms"] is None)
    assert STAND_IN in files["denoising/results.csv"].decode()
    assert STAND_IN in files["denoising/plot.svg"].decode()
    assert STAND_IN in files["index.html"].decode()
    # A runtime measured on the phone itself (adb) says that instead.
    depth = {r["team"]: r for r in json.loads(files["depth/results.json"])["rows"]}
    assert depth["borealis"]["runtime_measured_on"] == "measured on Raspberry Pi 4 CPU (Cortex-A72)"
    assert depth["borealis"]["runtime_stand_in"] is False
    assert depth["aurora"]["runtime_stand_in"] is True


def test_metric_directions_are_in_the_headers(files):
    page = files["denoising/index.html"].decode()
    assert "psnr ↑" in page and "ssim ↑" in page
    depth = files["depth/index.html"].decode()
    assert "si_rmse ↓" in depth and "rmse ↓" in depth
    assert 'data-best="asc" title="scale-invariant RMSE' in depth


def test_a_track_without_rows_still_has_its_page_and_plot(files):
    page = files["scene_detection/index.html"].decode()
    assert "No final submission was scored on this track." in page
    assert "no ranked submission yet" in files["scene_detection/plot.svg"].decode()
    assert files["scene_detection/plot.png"].startswith(b"\x89PNG")
    assert files["scene_detection/results.csv"].decode().count("\r\n") == 1  # the header


def test_the_png_has_no_metadata(files):
    from PIL import Image

    image = Image.open(io.BytesIO(files["denoising/plot.png"]))
    assert image.size == (1600, 1080) and image.info == {}


# ---------------------------------------------------------------------------------
# The plot
# ---------------------------------------------------------------------------------


def test_the_pareto_front_of_a_known_set():
    # (runtime ms, fidelity)
    points = [(10, 30.0), (20, 31.0), (15, 29.0), (40, 31.0), (5, 25.0), (20, 31.0), (50, 33)]
    # Higher is better: 15 ms/29 is beaten by 10 ms/30; 40 ms/31 by 20 ms/31; the two
    # equal points (20 ms, 31) are both on the front.
    assert pareto_front(points, higher_is_better=True) == [4, 0, 1, 5, 6]
    # Lower is better: only the fastest, lowest points.
    assert pareto_front(points, higher_is_better=False) == [4]
    assert pareto_front([(3, 0.2), (1, 0.5), (2, 0.1)], higher_is_better=False) == [1, 2]
    assert pareto_front([], higher_is_better=True) == []


def test_the_plot_marks_the_front_and_labels_every_ranked_team(table, files):
    svg = ET.fromstring(files["denoising/plot.svg"])
    ns = "{http://www.w3.org/2000/svg}"
    points = [c for c in svg.iter(f"{ns}circle") if "point" in (c.get("class") or "")]
    ranked = [r for r in table["tracks"]["denoising"]["rows"] if r["rank"] is not None]
    assert len(points) == len(ranked) == 7
    front = {c.get("data-team") for c in points if "front" in c.get("class")}
    # Fastest first: SCRIPT (8 ms, 28), FORMULA (9, 27) is beaten; borealis (12, 30.1),
    # the long id (20, 30.8), aurora (45, 31.2), IMG (150, 31.5); cobalt (30, 29.5) not.
    assert front == {SCRIPT_TEAM, "borealis", LONG_TEAM, "aurora", IMG_TEAM}
    labels = [t.text for t in svg.iter(f"{ns}text") if t.get("class") == "label"]
    assert len(labels) == 7 and ("1. " + LONG_TEAM)[:25] + "…" in labels
    assert len([p for p in svg.iter(f"{ns}path") if p.get("class") == "iso"]) == 4


def test_iso_lines_join_points_of_equal_score():
    """Every traced point scores the level, by the track's own scorer."""
    from mai_ops.models.fidelity import score_with_reason

    track = CH.track("depth")  # 2 ** (-alpha * si_rmse) / (C * runtime)
    entry = public_table(rank_challenge(CH, RECORDS))["tracks"]["depth"]
    level = entry["rows"][0]["score"]
    scorer = track_scorer(track.score.formula, track.score.constants)
    segments = iso_segments(score_grid(scorer, "si_rmse", {}, (1, 3), (0.1, 0.3)), level)
    assert len(segments) > 10
    for end in (p for segment in segments for p in segment):
        score, _ = score_with_reason(track, {"si_rmse": end[1]}, 10 ** end[0])
        assert math.isclose(score, level, rel_tol=1e-6)
    assert [r["team"] for r in plotted_rows(entry)] == ["aurora", "borealis"]


def test_a_single_point_and_an_unscorable_formula_still_plot():
    entry = {
        "formula": "psnr * power",  # power is never in a table: no iso-lines
        "constants": {},
        "metrics": ["psnr"],
        "device": "x",
        "rows": [{"rank": 1, "team": "solo", "psnr": 30.0, "runtime_ms": 10.0, "score": 1.0}],
    }
    scene = plot_scene(entry, title="t", higher_is_better=True)
    from mai_ops.publishing.plot import Dot, Line

    assert len([i for i in scene.items if isinstance(i, Dot) and i.team]) == 1
    assert not [i for i in scene.items if isinstance(i, Line) and i.css == "iso"]


# ---------------------------------------------------------------------------------
# Published: anyone with the link reads it, nothing else is open
# ---------------------------------------------------------------------------------


def anonymous_get(url: str) -> tuple[int, str, bytes]:
    """A plain HTTP GET without credentials: (status, Content-Type, body)."""
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.headers.get("Content-Type"), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type"), exc.read()


def store_validated(s3, records=RECORDS):
    """Results as scoring stores them: the validated table and the frozen set it ranks."""
    table = rank_challenge(CH, records)
    table.update(run_id="manual__test", validated=True, validation={"success": True})
    put_json(s3, CH.buckets.results, layout.RANKING, table)
    frozen = [
        {"track": r["track"], "team": r["team"], "sha256": r["sha256"]}
        for ranked in table["tracks"].values()
        for r in ranked["rows"]
    ]
    put_json(s3, CH.buckets.results, layout.FROZEN_MANIFEST, {"frozen": frozen})
    return table


def test_preliminary_results_publish_the_leaderboard_readable_by_anyone(s3, s3_server, files):
    from mai_ops.publishing.preliminary import publish_preliminary

    store_validated(s3)
    publish_preliminary(s3, CH)
    public = CH.buckets.public
    for relative, body in files.items():
        key = layout.LEADERBOARD + relative
        head = s3.head_object(Bucket=public, Key=key)
        assert head["ContentType"] == lb.content_type(relative), key
        assert s3.get_object(Bucket=public, Key=key)["Body"].read() == body, key
    assert layout.leaderboard_key("final", TRACK, "plot.png") == "leaderboard/denoising/plot.png"
    base = s3_server.endpoint_url
    status, kind, body = anonymous_get(f"{base}/{public}/leaderboard/{TRACK}/index.html")
    assert (status, kind) == (200, "text/html; charset=utf-8")
    assert body == files[f"{TRACK}/index.html"]
    assert anonymous_get(f"{base}/{public}/leaderboard/index.html")[0] == 200
    # Everything else stays closed without credentials: the results bucket's objects,
    # listing either bucket, writing to the public one.
    assert anonymous_get(f"{base}/{CH.buckets.results}/{layout.RANKING}")[0] == 403
    assert anonymous_get(f"{base}/{CH.buckets.results}/")[0] == 403
    assert anonymous_get(f"{base}/{public}/")[0] == 403
    put = urllib.request.Request(f"{base}/{public}/leaderboard/x.html", data=b"x", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(put, timeout=30)
    assert refused.value.code == 403
    # Publishing the same results again rewrites the same bytes.
    before = {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket=public)["Contents"]}
    publish_preliminary(s3, CH)
    after = {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket=public)["Contents"]}
    assert after == before


def test_the_public_bucket_policy_grants_reading_objects_only(s3):
    from mai_ops.dev.embedded import anonymous_allowed
    from mai_ops.infra.storage import public_read_policy

    policy = json.loads(s3.get_bucket_policy(Bucket=CH.buckets.public)["Policy"])
    assert policy == public_read_policy(CH.buckets.public)
    arn = f"arn:aws:s3:::{CH.buckets.public}"
    assert anonymous_allowed(policy, "s3:GetObject", f"{arn}/leaderboard/index.html")
    assert not anonymous_allowed(policy, "s3:PutObject", f"{arn}/leaderboard/index.html")
    assert not anonymous_allowed(policy, "s3:ListBucket", arn)
    assert not anonymous_allowed(policy, "s3:GetObject", f"arn:aws:s3:::{CH.buckets.results}/x")
    denied = {
        "Statement": [
            *policy["Statement"],
            {"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": f"{arn}/secret/*"},
        ]
    }
    assert not anonymous_allowed(denied, "s3:GetObject", f"{arn}/secret/a")
    assert anonymous_allowed(denied, "s3:GetObject", f"{arn}/leaderboard/a")
    with_condition = {"Statement": [{**policy["Statement"][0], "Condition": {"x": {}}}]}
    assert not anonymous_allowed(with_condition, "s3:GetObject", f"{arn}/leaderboard/a")


def test_write_the_tree_to_a_folder(files, tmp_path):
    written = lb.write_leaderboard(files, tmp_path / "leaderboard")
    assert len(written) == len(files)
    assert (tmp_path / "leaderboard" / "index.html").read_bytes() == files["index.html"]
    assert (tmp_path / "leaderboard" / TRACK / "plot.png").read_bytes() == files[
        f"{TRACK}/plot.png"
    ]


# ---------------------------------------------------------------------------------
# The validation leaderboard
# ---------------------------------------------------------------------------------


def validation_record(team, version, *, track=TRACK, psnr=None, runtime_ms=10.0, **kw):
    """A stored validation record, as the validation server writes it; returns its key."""
    key = f"{track}/{kw.pop('phase', 'validation')}/{team}/{version}.zip"
    etag = hashlib.md5(key.encode()).hexdigest()  # noqa: S324 - an ETag's shape only
    first, second = CH.track(track).metrics
    metrics = {first: psnr, second: 0.9} if psnr is not None else None
    data = {
        "key": key,
        "etag": etag,
        "uploaded_at": kw.pop("uploaded_at", f"2021-02-0{len(version)}T10:00:00+00:00"),
        "size": 100,
        "sha256": hashlib.sha256(key.encode()).hexdigest(),
        "track": track,
        "phase": key.split("/")[1],
        "team": team,
        "device": CH.track(track).device,
        "status": kw.pop("status", "ok"),
        "errors": kw.pop("errors", []),
        "stages": [],
        "runtime": {"backend": "litert", "median_ms": runtime_ms},
        "runtime_ms": runtime_ms,
        "metrics": metrics,
        "score": kw.pop("score", 1.0 if psnr is not None else None),
        "flags": [],
        "excluded": False,
        "precheck": kw.pop("precheck", False),
        "contact": "someone@teams.example",  # never copied anywhere public
        **kw,
    }
    return key, etag, data


def store_records(s3, *records):
    for key, etag, data in records:
        put_json(s3, CH.buckets.results, layout.upload_record_key(key, etag), data)


def count_calls(s3) -> dict:
    counts = {"ListObjectsV2": 0, "GetObject": 0, "PutObject": 0}

    def seen(event_name, **_):
        counts[event_name.rsplit(".", 1)[1]] += 1

    for name in counts:
        s3.meta.events.register(f"before-call.s3.{name}", seen)
    return counts


def public_etags(s3, prefix) -> dict:
    listing = s3.list_objects_v2(Bucket=CH.buckets.public, Prefix=prefix)
    return {o["Key"]: o["ETag"] for o in listing.get("Contents", [])}


def test_the_validation_leaderboard_ranks_each_teams_best_verified_upload(s3, s3_server):
    from mai_ops.publishing.validation_board import publish_validation_leaderboard

    store_records(
        s3,
        validation_record("aurora", "v1", psnr=30.0, runtime_ms=20.0),
        validation_record("aurora", "v22", psnr=31.0, runtime_ms=20.0),  # aurora's best
        validation_record("borealis", "v1", psnr=None),  # no validation data: no score
        validation_record(
            "borealis",
            "v22",
            status="failed",
            errors=[{"code": "not_tflite", "stage": "check", "message": "m"}],
        ),
        validation_record("cobalt", "v1", psnr=29.0, runtime_ms=10.0),
        validation_record("dune", "v1", phase="final", psnr=35.0, precheck=True),
        validation_record("eon", "v1", status="rejected", psnr=36.0),
        validation_record("aurora", "v1", track="depth", psnr=0.2, runtime_ms=50.0),
    )
    table = publish_validation_leaderboard(s3, CH)
    assert table["phase"] == "validation"
    rows = table["tracks"][TRACK]["rows"]
    aurora_v2 = hashlib.sha256(b"denoising/validation/aurora/v22.zip").hexdigest()
    # aurora: 2 ** 62 / (1e15 * 20) = 230.6; cobalt: 2 ** 58 / (1e15 * 10) = 28.8
    assert [(r["rank"], r["team"], r["sha256"]) for r in rows] == [
        (1, "aurora", aurora_v2),
        (2, "cobalt", hashlib.sha256(b"denoising/validation/cobalt/v1.zip").hexdigest()),
    ]
    assert rows[0]["score"] == pytest.approx(2**62 / (1e15 * 20))
    assert [r["team"] for r in table["tracks"]["depth"]["rows"]] == ["aurora"]
    assert table["tracks"]["learned_isp"]["rows"] == []

    prefix = layout.leaderboard_prefix("validation")
    assert prefix == "leaderboard/validation/"
    keys = public_etags(s3, prefix)
    assert f"{prefix}index.html" in keys and f"{prefix}{TRACK}/plot.png" in keys
    status, kind, body = anonymous_get(
        f"{s3_server.endpoint_url}/{CH.buckets.public}/{prefix}{TRACK}/index.html"
    )
    assert (status, kind) == (200, "text/html; charset=utf-8")
    assert b"Validation leaderboard" in body and b"someone@" not in body
    document = json.loads(
        s3.get_object(Bucket=CH.buckets.public, Key=f"{prefix}{TRACK}/results.json")["Body"].read()
    )
    assert [r["team"] for r in document["rows"]] == ["aurora", "cobalt"]


def test_the_validation_leaderboard_reads_only_new_records(s3):
    from mai_ops.publishing.validation_board import publish_validation_leaderboard

    store_records(
        s3,
        validation_record("aurora", "v1", psnr=30.0),
        validation_record("cobalt", "v1", psnr=29.0),
        validation_record("dune", "v1", phase="final", psnr=35.0, precheck=True),
    )
    calls = count_calls(s3)
    publish_validation_leaderboard(s3, CH)
    # One listing; the two validation records read (the final pre-check is skipped by key).
    assert (calls["ListObjectsV2"], calls["GetObject"]) == (1, 2)
    first = public_etags(s3, layout.LEADERBOARD)

    calls.update(ListObjectsV2=0, GetObject=0)
    publish_validation_leaderboard(s3, CH)
    assert (calls["ListObjectsV2"], calls["GetObject"]) == (1, 1)  # the cache only
    assert public_etags(s3, layout.LEADERBOARD) == first  # the same bytes

    # A new upload, and one record rewritten (a failure of ours, judged again).
    store_records(s3, validation_record("borealis", "v1", psnr=32.0))
    key, etag, data = validation_record("aurora", "v1", psnr=30.0)
    store_records(s3, (key, etag, {**data, "status": "failed", "score": None}))
    calls.update(ListObjectsV2=0, GetObject=0)
    table = publish_validation_leaderboard(s3, CH)
    assert (calls["ListObjectsV2"], calls["GetObject"]) == (1, 3)
    assert [r["team"] for r in table["tracks"][TRACK]["rows"]] == ["borealis", "cobalt"]


# ---------------------------------------------------------------------------------
# In a real browser
# ---------------------------------------------------------------------------------

PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}


def click(page, selector: str) -> None:
    """A real mouse click (pressed and released) in the middle of the element."""
    box = page.evaluate(
        f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
        " e.scrollIntoView({block: 'center', inline: 'center'});"
        " const r = e.getBoundingClientRect();"
        " return {x: r.left + r.width / 2, y: r.top + r.height / 2}; })()"
    )
    for kind in ("mousePressed", "mouseReleased"):
        page.send(
            "Input.dispatchMouseEvent",
            type=kind,
            x=box["x"],
            y=box["y"],
            button="left",
            clickCount=1,
        )


def team_order(page) -> list[str]:
    return page.evaluate(
        "Array.from(document.querySelectorAll('#board tbody td.team')).map(td => td.textContent)"
    )


def header(title: str) -> str:
    """The selector of the sort button of the column whose title starts with ``title``."""
    return f"#board thead th[data-column={json.dumps(title)}] button"


def sorted_as(page, column: str) -> str | None:
    """The column's ``aria-sort``: ascending, descending, or None when not sorted by it."""
    th = f"document.querySelector('#board thead th[data-column={column}]')"
    return page.evaluate(f"{th}.getAttribute('aria-sort')")


def test_the_track_page_in_a_browser(s3, s3_server, table):
    """Published, then opened over plain HTTP from the local S3 server, without credentials."""
    from mai_ops.publishing.preliminary import publish_preliminary

    from .browser import chromium

    store_validated(s3)
    publish_preliminary(s3, CH)
    base = f"{s3_server.endpoint_url}/{CH.buckets.public}/leaderboard"
    rows = table["tracks"][TRACK]["rows"]
    shots = PROJECT / "var"
    with chromium(width=1280, height=2100) as page:
        page.goto(f"{base}/{TRACK}/index.html")
        page.wait_for("document.querySelectorAll('#board tbody tr').length === 8", "the table")

        # The style and the script ran (allowed by the page's own policy), nothing else did.
        assert page.evaluate("typeof window.pwned") == "undefined"
        style = "getComputedStyle(document.querySelector('#board thead th')).backgroundColor"
        assert page.evaluate(style) == "rgb(238, 241, 244)"

        # Hostile team ids are text, shown as they are.
        assert team_order(page) == [r["team"] for r in rows]
        for team in (SCRIPT_TEAM, IMG_TEAM, LONG_TEAM):
            shown = page.evaluate(
                "Array.from(document.querySelectorAll('#board td.team')).find("
                f"td => td.textContent === {json.dumps(team)}).getBoundingClientRect().height"
            )
            assert shown > 0, team
        assert page.evaluate("document.querySelectorAll('#board img, #board script').length") == 0
        assert SCRIPT_TEAM in page.evaluate("document.body.innerText")

        # Sorting: the runtime, fastest first, the row without one last; then the other way.
        click(page, header("runtime"))
        by_runtime = sorted(
            (r for r in rows if r["runtime_ms"] is not None), key=lambda r: r["runtime_ms"]
        )
        unmeasured = [r["team"] for r in rows if r["runtime_ms"] is None]
        assert team_order(page) == [r["team"] for r in by_runtime] + unmeasured
        assert sorted_as(page, "runtime") == "ascending"
        click(page, header("runtime"))
        assert team_order(page) == [r["team"] for r in reversed(by_runtime)] + unmeasured
        assert (sorted_as(page, "runtime"), sorted_as(page, "rank")) == ("descending", None)
        # psnr, higher is better: best first on the first click.
        click(page, header("psnr"))
        by_psnr = sorted((r for r in rows if r["psnr"] is not None), key=lambda r: -r["psnr"])
        assert team_order(page) == [r["team"] for r in by_psnr] + unmeasured
        click(page, header("team"))
        assert team_order(page) == sorted(r["team"] for r in rows)
        click(page, header("rank"))
        assert team_order(page) == [r["team"] for r in rows]

        # The plot: a point per ranked team, the front marked; the PNG loads.
        points = "document.querySelectorAll('figure svg circle.point')"
        assert page.evaluate(f"{points}.length") == 7
        assert page.evaluate("document.querySelectorAll('figure svg circle.front').length") == 5
        assert (
            page.evaluate("document.querySelector('figure svg').getBoundingClientRect().width")
            > 500
        )
        png_width = (
            "new Promise(done => { const image = new Image();"
            " image.onload = () => done(image.naturalWidth); image.onerror = () => done(-1);"
            " image.src = 'plot.png'; })"
        )
        assert page.evaluate(png_width) == 1600
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(shots / f"leaderboard-{TRACK}.png")

        # On a phone: the table scrolls sideways inside its frame, the page does not.
        page.send("Emulation.setDeviceMetricsOverride", **PHONE)
        page.goto(f"{base}/{TRACK}/index.html")
        page.wait_for("document.querySelectorAll('#board tbody tr').length === 8", "the table")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        frame = "document.querySelector('.scroll')"
        assert page.evaluate(f"{frame}.scrollWidth > {frame}.clientWidth")
        page.screenshot(shots / f"leaderboard-{TRACK}-phone.png")
        page.evaluate("document.querySelector('figure').scrollIntoView()")
        page.screenshot(shots / f"leaderboard-{TRACK}-phone-plot.png")

        page.goto(f"{base}/index.html")
        page.wait_for("document.querySelectorAll('ul.tracks li').length === 6", "the index")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        page.screenshot(shots / "leaderboard-index-phone.png")
    for name in (f"leaderboard-{TRACK}.png", f"leaderboard-{TRACK}-phone.png"):
        assert (shots / name).read_bytes().startswith(b"\x89PNG")


def test_the_demo_writes_the_published_trees_to_its_folder(s3, tmp_path, files):
    """var/demo/leaderboard/: byte for byte what the public bucket holds."""
    from mai_ops.dev.demo import write_demo_leaderboards
    from mai_ops.publishing.preliminary import publish_preliminary

    store_validated(s3)
    publish_preliminary(s3, CH)
    store_records(s3, validation_record("aurora", "v1", psnr=30.0))
    folder = tmp_path / "leaderboard"
    pages = write_demo_leaderboards(s3, CH, folder)
    assert pages == [folder / "index.html", folder / "validation" / "index.html"]
    for key in public_etags(s3, layout.LEADERBOARD):
        local = folder / key[len(layout.LEADERBOARD) :]
        body = s3.get_object(Bucket=CH.buckets.public, Key=key)["Body"].read()
        assert local.read_bytes() == body, key
    assert (folder / TRACK / "plot.png").read_bytes() == files[f"{TRACK}/plot.png"]
    assert (folder / "validation" / TRACK / "results.csv").read_text().count("aurora") == 1
