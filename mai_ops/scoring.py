"""Scoring of the frozen final set, one submission at a time.

Each frozen copy is re-read and its sha256 compared with the manifest before
anything is computed from it: a copy that changed after the freeze is reported,
never scored. Conversion checks, device runtime and fidelity join this record as
their phases are built; the record's ``stages`` says which ones ran.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from mai_ops.config import Challenge
from mai_ops.storage import FROZEN_MANIFEST, get_json, list_objects, put_json, sha256_of_object


def frozen_entries(s3: Any, challenge: Challenge) -> list[dict]:
    return get_json(s3, challenge.buckets.results, FROZEN_MANIFEST)["frozen"]


def score_key(track: str, team: str) -> str:
    return f"scores/{track}/{team}.json"


def verify_frozen_submission(s3: Any, challenge: Challenge, entry: dict) -> dict:
    actual = sha256_of_object(s3, challenge.buckets.results, entry["frozen"])
    intact = actual == entry["sha256"]
    record = {
        "track": entry["track"],
        "team": entry["team"],
        "sha256": entry["sha256"],
        "size": entry["size"],
        "status": "verified" if intact else "failed",
        "error": None
        if intact
        else {
            "code": "frozen_copy_changed",
            "message": f"sha256 is {actual}, manifest says {entry['sha256']}",
        },
        "stages": ["integrity"],
    }
    put_json(s3, challenge.buckets.results, score_key(entry["track"], entry["team"]), record)
    return record


def collect_results(s3: Any, challenge: Challenge) -> list[dict]:
    bucket = challenge.buckets.results
    keys = sorted(
        o["Key"] for o in list_objects(s3, bucket, "scores/") if o["Key"].endswith(".json")
    )
    return [get_json(s3, bucket, key) for key in keys]


def publish_preliminary(s3: Any, challenge: Challenge, records: list[dict]) -> dict:
    """Write the preliminary results table (JSON and CSV) to the public bucket."""
    rows = sorted(records, key=lambda r: (r["track"], r["status"] != "verified", r["team"]))
    table = {"challenge": challenge.id, "results": rows}
    put_json(s3, challenge.buckets.public, "results/preliminary.json", table)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["track", "team", "status", "sha256", "size"])
    for r in rows:
        writer.writerow([r["track"], r["team"], r["status"], r["sha256"], r["size"]])
    s3.put_object(
        Bucket=challenge.buckets.public,
        Key="results/preliminary.csv",
        Body=out.getvalue().encode(),
        ContentType="text/csv",
    )
    return table
