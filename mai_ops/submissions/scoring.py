"""Scoring of the frozen final set, one submission at a time.

Each frozen copy goes through the same stages as a validation upload
(:mod:`mai_ops.submissions.evaluation`), its sha256 compared with the manifest
first: a copy that changed after the freeze is reported, never scored. A bad
submission gets a failed record with an error code; it never stops the others.
The record's ``stages`` says which stages ran.
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path
from typing import Any

from mai_ops.challenge.config import Challenge
from mai_ops.errors import NeedsOrganizer
from mai_ops.infra.layout import (
    FROZEN_MANIFEST,
    PRELIMINARY_CSV,
    PRELIMINARY_JSON,
    SCORES,
    score_key,
)
from mai_ops.infra.storage import get_json, list_objects, object_exists, put_json
from mai_ops.submissions.evaluation import Evaluation, evaluate, retryable


class NoFrozenSet(NeedsOrganizer):
    """Scoring was asked for before the final set was frozen."""


def frozen_entries(s3: Any, challenge: Challenge) -> list[dict]:
    bucket = challenge.buckets.results
    if not object_exists(s3, bucket, FROZEN_MANIFEST):
        raise NoFrozenSet(
            f"no frozen final set: s3://{bucket}/{FROZEN_MANIFEST} does not exist; "
            "run the final collection first"
        )
    return get_json(s3, bucket, FROZEN_MANIFEST)["frozen"]


def verify_frozen_submission(
    s3: Any, challenge: Challenge, entry: dict, force: bool = False
) -> dict:
    """Evaluate the frozen copy, its sha256 checked against the manifest first.

    A submission already scored from the same bytes keeps its record (a cleared task
    gives the same stored result) unless ``force`` asks for a re-score; one that failed
    for a reason of ours (a retried code) is evaluated again. Whatever goes wrong with
    the submission ends in a failed record with a code.
    """
    key = score_key(entry["track"], entry["team"], entry["sha256"])
    results = challenge.buckets.results
    if not force and object_exists(s3, results, key):
        previous = get_json(s3, results, key)
        if previous.get("sha256") == entry["sha256"] and not retryable(previous):
            return previous
    record = Evaluation(
        key=entry.get("source"),
        uploaded_at=entry.get("uploaded_at"),
        size=entry["size"],
        sha256=entry["sha256"],
        phase="final",
        team=entry["team"],
    )
    track = challenge.track(entry["track"])
    with tempfile.TemporaryDirectory(prefix="mai-score-") as tmp:
        archive = Path(tmp) / "submission.zip"
        s3.download_file(results, entry["frozen"], str(archive))
        evaluate(record, challenge, track, archive, Path(tmp), expected_sha256=entry["sha256"])
    put_json(s3, results, key, record.as_json())
    return record.as_json()


def collect_results(s3: Any, challenge: Challenge) -> list[dict]:
    bucket = challenge.buckets.results
    keys = sorted(o["Key"] for o in list_objects(s3, bucket, SCORES) if o["Key"].endswith(".json"))
    return [get_json(s3, bucket, key) for key in keys]


def _rank_key(record: dict) -> tuple:
    runtime = record.get("runtime_ms")
    return (
        record["track"],
        record["status"] != "ok",
        runtime if runtime is not None else float("inf"),
        record["team"],
    )


def publish_preliminary(s3: Any, challenge: Challenge, records: list[dict]) -> dict:
    """Write the preliminary results table (JSON and CSV) to the public bucket."""
    rows = sorted(records, key=_rank_key)
    table = {"challenge": challenge.id, "results": rows}
    put_json(s3, challenge.buckets.public, PRELIMINARY_JSON, table)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["track", "team", "status", "runtime_ms", "device", "error", "sha256"])
    for r in rows:
        runtime = r.get("runtime_ms")
        error = r["errors"][0]["code"] if r.get("errors") else ""
        writer.writerow(
            [r["track"], r["team"], r["status"], runtime, r.get("device"), error, r["sha256"]]
        )
    s3.put_object(
        Bucket=challenge.buckets.public,
        Key=PRELIMINARY_CSV,
        Body=out.getvalue().encode(),
        ContentType="text/csv",
    )
    return table
