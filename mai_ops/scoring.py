"""Scoring of the frozen final set, one submission at a time.

Each frozen copy is re-read and its sha256 compared with the manifest before
anything is computed from it: a copy that changed after the freeze is reported,
never scored. Its runtime model is then benchmarked on the track's device. A bad
submission gets a failed record with an error code; it never stops the others.
The record's ``stages`` says which stages ran.
"""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from mai_ops.benchmark import BenchmarkError, run_benchmark
from mai_ops.config import Challenge
from mai_ops.errors import NeedsOrganizer
from mai_ops.storage import FROZEN_MANIFEST, get_json, list_objects, object_exists, put_json


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


MAX_MODEL_BYTES = 512 * 1024 * 1024


def verify_frozen_submission(s3: Any, challenge: Challenge, entry: dict) -> dict:
    """Re-hash the frozen copy; benchmark its runtime model on the track's device."""
    track = challenge.track(entry["track"])
    record = {
        "track": entry["track"],
        "team": entry["team"],
        "sha256": entry["sha256"],
        "size": entry["size"],
        "device": track.device,
        "status": "verified",
        "error": None,
        "stages": ["integrity"],
        "runtime": None,
    }
    with tempfile.TemporaryDirectory(prefix="mai-score-") as tmp:
        archive = Path(tmp) / "submission"
        s3.download_file(challenge.buckets.results, entry["frozen"], str(archive))
        actual = hashlib.sha256(archive.read_bytes()).hexdigest()
        if actual != entry["sha256"]:
            record |= _failed(
                "frozen_copy_changed", f"sha256 is {actual}, manifest says {entry['sha256']}"
            )
        else:
            try:
                model = _runtime_model(archive, Path(tmp))
                result = run_benchmark(model, challenge.device(track.device), track)
                record["runtime"] = result.as_json()
                record["stages"].append("benchmark")
            except SubmissionError as exc:
                record |= _failed(exc.code, exc.message)
            except BenchmarkError as exc:
                record |= _failed(f"benchmark_{exc.code}", exc.message)
    put_json(s3, challenge.buckets.results, score_key(entry["track"], entry["team"]), record)
    return record


class SubmissionError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _failed(code: str, message: str) -> dict:
    return {"status": "failed", "error": {"code": code, "message": message}}


def _runtime_model(archive: Path, workdir: Path) -> Path:
    """``model.tflite`` from a submission: the archive's member, or the file itself."""
    if not zipfile.is_zipfile(archive):
        return archive
    with zipfile.ZipFile(archive) as zf:
        members = [i for i in zf.infolist() if i.filename.rsplit("/", 1)[-1] == "model.tflite"]
        if not members:
            raise SubmissionError("missing_model", "the archive has no model.tflite")
        info = min(members, key=lambda i: i.filename.count("/"))
        if info.file_size > MAX_MODEL_BYTES:
            raise SubmissionError("too_large", f"model.tflite is {info.file_size} bytes unpacked")
        target = workdir / "model.tflite"
        with zf.open(info) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return target


def collect_results(s3: Any, challenge: Challenge) -> list[dict]:
    bucket = challenge.buckets.results
    keys = sorted(
        o["Key"] for o in list_objects(s3, bucket, "scores/") if o["Key"].endswith(".json")
    )
    return [get_json(s3, bucket, key) for key in keys]


def _rank_key(record: dict) -> tuple:
    runtime = (record.get("runtime") or {}).get("median_ms")
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
        runtime = (r.get("runtime") or {}).get("median_ms")
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
