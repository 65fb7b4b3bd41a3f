"""Stuck work: an upload whose processing started and never finished is failed, with a reason.

Processing an upload writes a marker first (``processing/<digest>.json``, with when it
first started and how often) and removes it once the upload's record is stored. A
marker left behind means the work was cut off: the task's time limit stopped it, or
the worker died (killed, out of memory). The validation DAG's sweep takes an upload
without a record again, so a submission that kills its worker every time would be taken
again forever. :func:`fail_stuck_uploads` ends that: an upload whose processing first
started more than :data:`~mai_ops.timeouts.STUCK_AFTER_S` ago and still has no record
gets a failed record with the registered code ``processing_stuck`` (its team is
answered like any other upload, once), and the caller tells the organizers.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from mai_ops.challenge.config import Challenge
from mai_ops.errors import NeedsOrganizer, StageError
from mai_ops.infra.layout import (
    PROCESSING,
    is_final_upload,
    loose_upload_key,
    processing_key,
    upload_record_key,
)
from mai_ops.infra.storage import get_json, list_objects, object_exists, put_json
from mai_ops.timeouts import STUCK_AFTER_S

log = logging.getLogger(__name__)


class StuckWork(NeedsOrganizer):
    """Uploads were marked failed as stuck: the organizers look at why (the task logs)."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def mark_started(
    s3: Any, bucket: str, head: dict, key: str, now: dt.datetime | None = None
) -> dict:
    """Note that processing the version ``head`` describes starts now; the marker."""
    etag = head["ETag"].strip('"')
    marker_key = processing_key(key, etag)
    now = now or _now()
    earlier = get_json(s3, bucket, marker_key) if object_exists(s3, bucket, marker_key) else {}
    marker = {
        "key": key,
        "etag": etag,
        "size": head["ContentLength"],
        "uploaded_at": head["LastModified"].astimezone(dt.UTC).isoformat(),
        "first_started_at": earlier.get("first_started_at", now.isoformat()),
        "started_at": now.isoformat(),
        "attempts": earlier.get("attempts", 0) + 1,
    }
    put_json(s3, bucket, marker_key, marker)
    return marker


def mark_finished(s3: Any, bucket: str, key: str, etag: str) -> None:
    """The upload's record is stored: its processing is over."""
    s3.delete_object(Bucket=bucket, Key=processing_key(key, etag))


def stuck_uploads(
    s3: Any, challenge: Challenge, now: dt.datetime | None = None, limit_s: float = STUCK_AFTER_S
) -> list[dict]:
    """The markers of uploads first started over ``limit_s`` ago that have no record."""
    bucket, now = challenge.buckets.results, now or _now()
    found = []
    for obj in list_objects(s3, bucket, PROCESSING):
        marker = get_json(s3, bucket, obj["Key"])
        started = dt.datetime.fromisoformat(marker["first_started_at"])
        if (now - started).total_seconds() <= limit_s:
            continue
        if object_exists(s3, bucket, upload_record_key(marker["key"], marker["etag"])):
            mark_finished(s3, bucket, marker["key"], marker["etag"])  # stored, then cut off
            continue
        found.append(marker)
    return sorted(found, key=lambda m: (m["first_started_at"], m["key"]))


def stuck_record(marker: dict, now: dt.datetime, limit_s: float) -> dict:
    """The failed record of a stuck upload, as the validation server would store it."""
    from mai_ops.submissions.evaluation import Evaluation

    record = Evaluation(
        key=marker["key"],
        etag=marker["etag"],
        uploaded_at=marker["uploaded_at"],
        size=marker["size"],
        precheck=is_final_upload(marker["key"]),
    )
    named = loose_upload_key(marker["key"])
    if named is not None:
        record.track, record.phase, record.team = named.track, named.phase, named.team
    minutes = round(limit_s / 60)
    record.fail(
        StageError(
            "processing_stuck",
            f"processing started at {marker['first_started_at'][:19]} UTC and did not finish "
            f"within {minutes} minutes ({marker['attempts']} attempt(s)); the organizers "
            "have been told and will look at it",
        )
    )
    return record.as_json()


def fail_stuck_uploads(
    s3: Any, challenge: Challenge, now: dt.datetime | None = None, limit_s: float = STUCK_AFTER_S
) -> list[dict]:
    """Store a ``processing_stuck`` record for every stuck upload; the records.

    Each record is written before its marker is removed, so an interruption leaves the
    marker and the next sweep finishes the job; the record's reply goes out through
    the send ledger, once.
    """
    bucket, now = challenge.buckets.results, now or _now()
    records = []
    for marker in stuck_uploads(s3, challenge, now, limit_s):
        record = stuck_record(marker, now, limit_s)
        put_json(s3, bucket, upload_record_key(marker["key"], marker["etag"]), record)
        mark_finished(s3, bucket, marker["key"], marker["etag"])
        log.warning(
            "%s: processing_stuck (first started %s, %d attempt(s))",
            marker["key"],
            marker["first_started_at"],
            marker["attempts"],
        )
        records.append(record)
    return records
