"""Scoring of the frozen final set, one submission at a time.

Each frozen copy is re-read and its sha256 compared with the manifest before
anything is computed from it: a copy that changed after the freeze is reported,
never scored. Its runtime model is then benchmarked on the track's device. A bad
submission gets a failed record with an error code; it never stops the others.
The record's ``stages`` says which stages ran.
"""

from __future__ import annotations

import csv
import io
import logging
import tempfile
from pathlib import Path
from typing import Any

from mai_ops.challenge.config import Challenge
from mai_ops.devices.benchmark import BenchmarkError, run_benchmark
from mai_ops.errors import NeedsOrganizer
from mai_ops.infra.storage import (
    FROZEN_MANIFEST,
    get_json,
    list_objects,
    object_exists,
    put_json,
    sha256_of_file,
)

log = logging.getLogger(__name__)


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


def score_key(track: str, team: str) -> str:
    return f"scores/{track}/{team}.json"


def verify_frozen_submission(
    s3: Any, challenge: Challenge, entry: dict, force: bool = False
) -> dict:
    """Check the frozen copy, then benchmark its runtime model on the track's device.

    A submission already scored from the same bytes keeps its record (a cleared task
    gives the same stored result) unless ``force`` asks for a re-score; a failed one
    is tried again. Whatever goes wrong ends in a failed record with a code.
    """
    from mai_ops.submissions.validation import runtime_ms

    key = score_key(entry["track"], entry["team"])
    results = challenge.buckets.results
    if not force and object_exists(s3, results, key):
        previous = get_json(s3, results, key)
        if previous.get("sha256") == entry["sha256"] and previous["status"] == "verified":
            return previous
    track = challenge.track(entry["track"])
    record = {
        "track": entry["track"],
        "team": entry["team"],
        "sha256": entry["sha256"],
        "size": entry["size"],
        "device": track.device,
        "status": "verified",
        "error": None,
        "stages": [],
        "runtime": None,
        "runtime_ms": None,
    }
    try:
        with tempfile.TemporaryDirectory(prefix="mai-score-") as tmp:
            archive = Path(tmp) / "submission.zip"
            s3.download_file(results, entry["frozen"], str(archive))
            actual = sha256_of_file(archive)
            if actual != entry["sha256"]:
                record |= _failed(
                    "frozen_copy_changed", f"sha256 is {actual}, manifest says {entry['sha256']}"
                )
            else:
                record["stages"].append("integrity")
                _check_and_benchmark(challenge, track, archive, Path(tmp), record)
    except NeedsOrganizer:
        raise
    except Exception as exc:  # one submission's failure must not stop the others
        log.exception("scoring %s/%s failed", entry["track"], entry["team"])
        record |= _failed("internal_error", f"{type(exc).__name__}: {exc}")
    record["runtime_ms"] = runtime_ms(record["runtime"])
    put_json(s3, results, key, record)
    return record


def _check_and_benchmark(challenge: Challenge, track, archive: Path, tmp: Path, record) -> None:
    """The same unpacking, conversion and checks as the validation server, then the device."""
    from mai_ops.submissions.intake import check_submission

    report = check_submission(archive, challenge, track.id, tmp / "work")
    if not report.ok:
        first = report.errors[0]
        more = f" (and {len(report.errors) - 1} more)" if len(report.errors) > 1 else ""
        record |= _failed(first["code"], first["message"] + more)
        record["checks"] = report.as_json()
        return
    record["stages"].append("checks")
    try:
        result = run_benchmark(Path(report.model_path), challenge.device(track.device), track)
    except BenchmarkError as exc:
        record |= _failed(f"benchmark_{exc.code}", exc.message)
        return
    record["runtime"] = result.as_json()
    record["stages"].append("benchmark")


def _failed(code: str, message: str) -> dict:
    return {"status": "failed", "error": {"code": code, "message": message}}


def collect_results(s3: Any, challenge: Challenge) -> list[dict]:
    bucket = challenge.buckets.results
    keys = sorted(
        o["Key"] for o in list_objects(s3, bucket, "scores/") if o["Key"].endswith(".json")
    )
    return [get_json(s3, bucket, key) for key in keys]


def _rank_key(record: dict) -> tuple:
    runtime = record.get("runtime_ms")
    return (
        record["track"],
        record["status"] != "verified",
        runtime if runtime is not None else float("inf"),
        record["team"],
    )


def publish_preliminary(s3: Any, challenge: Challenge, records: list[dict]) -> dict:
    """Write the preliminary results table (JSON and CSV) to the public bucket."""
    rows = sorted(records, key=_rank_key)
    table = {"challenge": challenge.id, "results": rows}
    put_json(s3, challenge.buckets.public, "results/preliminary.json", table)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["track", "team", "status", "runtime_ms", "device", "error", "sha256"])
    for r in rows:
        runtime = r.get("runtime_ms")
        error = (r.get("error") or {}).get("code", "")
        writer.writerow(
            [r["track"], r["team"], r["status"], runtime, r.get("device"), error, r["sha256"]]
        )
    s3.put_object(
        Bucket=challenge.buckets.public,
        Key="results/preliminary.csv",
        Body=out.getvalue().encode(),
        ContentType="text/csv",
    )
    return table
