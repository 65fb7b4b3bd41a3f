"""The validation server: each upload checked, benchmarked, scored and answered by email.

One upload is one stored record under ``uploads/<upload key>/<etag>.json`` in the
results bucket. A record, once written, is the answer: processing the same upload
again (a cleared task, a sweep after an event) returns it unchanged and sends nothing
twice. The steps follow a fixed order (intake rules, archive and model checks,
benchmark on the track's device, fidelity on validation data when the organizers
staged it; :mod:`mai_ops.submissions.evaluation` runs them) and each way of failing
ends in a record with a registered code, an email, and no effect on the other uploads.

A final-phase upload (``<track>/final/<team>/``) is answered too, as a pre-check: the
intake rules that apply to it (no duplicates, no limits), then unpack, convert and
check, and nothing after (no benchmark, fidelity or score). Its record is marked
``precheck``. It changes nothing for the freeze: at the deadline the last final upload
received in time is frozen, whatever its pre-check said, and scoring evaluates it fully.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

from mai_ops.challenge.config import Challenge
from mai_ops.challenge.participants import Team
from mai_ops.infra.layout import (
    UPLOAD_RECORDS,
    is_final_upload,
    loose_upload_key,
    team_records_prefix,
    upload_record_key,
)
from mai_ops.infra.storage import get_json, list_objects, object_exists, put_json, sha256_of_file
from mai_ops.submissions.evaluation import Evaluation, evaluate, retryable

# A run answers at most this many uploads per track; the next run takes the rest.
MAX_PER_RUN = 200


def _recorded(s3: Any, challenge: Challenge) -> set[str]:
    """The keys of every stored record (compared with :func:`upload_record_key`)."""
    return {obj["Key"] for obj in list_objects(s3, challenge.buckets.results, UPLOAD_RECORDS)}


def pending_uploads(s3: Any, challenge: Challenge) -> list[dict]:
    """Uploads with no record yet, oldest first: what a sweep must process.

    Everything in the submissions bucket: validation uploads, final uploads (their
    pre-check) and misplaced uploads alike, so nothing is ignored.
    """
    done = _recorded(s3, challenge)
    found = []
    for obj in list_objects(s3, challenge.buckets.submissions):
        key, etag = obj["Key"], obj["ETag"].strip('"')
        if upload_record_key(key, etag) in done or key.endswith("/"):
            continue
        found.append({"key": key, "uploaded_at": obj["LastModified"].isoformat()})
    return sorted(found, key=lambda u: (u["uploaded_at"], u["key"]))


def _history(s3: Any, challenge: Challenge, key: str, etag: str) -> list:
    """The team's other judged uploads for the same track and phase."""
    from mai_ops.submissions.intake import PastUpload

    past = []
    for obj in list_objects(s3, challenge.buckets.results, team_records_prefix(key)):
        rec = get_json(s3, challenge.buckets.results, obj["Key"])
        if (rec["key"], rec.get("etag")) == (key, etag) or rec.get("track") is None:
            continue
        past.append(
            PastUpload(
                key=rec["key"],
                track=rec["track"],
                phase=rec["phase"],
                team=rec["team"],
                uploaded_at=dt.datetime.fromisoformat(rec["uploaded_at"]),
                sha256=rec["sha256"],
                status=rec["status"],
            )
        )
    return past


def process_upload(
    s3: Any, challenge: Challenge, teams: list[Team], key: str, retry_failed: bool = True
) -> dict:
    """Judge one upload by the intake rules, then evaluate it; store and return its record.

    A final-phase upload is pre-checked only (``evaluate(checks_only=True)``).
    Whatever goes wrong with this one upload ends in a stored record with a code, so
    it is answered and never retried in a loop by the sweep; only a failure to reach
    the storage itself propagates (the task retries). A record that failed for a
    reason of ours (a registered code with ``retry``: a crash, a phone offline) is
    processed again when its task is cleared; any other record is the answer.
    """
    from mai_ops.models.fidelity import load_validation_set
    from mai_ops.submissions.intake import IntakeError, Upload, judge_upload, oversize

    results = challenge.buckets.results
    head = s3.head_object(Bucket=challenge.buckets.submissions, Key=key)
    etag = head["ETag"].strip('"')
    if object_exists(s3, results, upload_record_key(key, etag)):
        stored = get_json(s3, results, upload_record_key(key, etag))
        if not (retry_failed and retryable(stored)):
            return stored
    uploaded_at = head["LastModified"].astimezone(dt.UTC)
    record = Evaluation(
        key=key,
        etag=etag,
        uploaded_at=uploaded_at.isoformat(),
        size=head["ContentLength"],
        precheck=is_final_upload(key),
    )
    named = loose_upload_key(key)
    if named is not None:
        record.track, record.phase, record.team = named.track, named.phase, named.team
    if oversize(record.size):  # judged before a byte is downloaded
        record.fail(IntakeError("upload_too_large", oversize(record.size)))
        put_json(s3, results, upload_record_key(key, etag), record.as_json())
        return record.as_json()
    with tempfile.TemporaryDirectory(prefix="mai-upload-") as tmp:
        archive = Path(tmp) / "upload.zip"
        s3.download_file(challenge.buckets.submissions, key, str(archive))
        record.sha256 = sha256_of_file(archive)
        upload = Upload(key=key, size=record.size, uploaded_at=uploaded_at, sha256=record.sha256)
        try:
            path = judge_upload(upload, challenge, teams, _history(s3, challenge, key, etag))
        except IntakeError as exc:
            record.fail(exc)
        else:
            record.track, record.phase, record.team = path.track, path.phase, path.team
            track = challenge.track(path.track)
            data = None
            if path.phase == "validation":
                data = partial(load_validation_set, s3, challenge, track)
            evaluate(
                record,
                challenge,
                track,
                archive,
                Path(tmp),
                fidelity_data=data,
                checks_only=record.precheck,
            )
    put_json(s3, results, upload_record_key(key, etag), record.as_json())
    return record.as_json()
