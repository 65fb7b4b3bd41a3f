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
from mai_ops.challenge.participants import Team, registry_fingerprint
from mai_ops.infra.layout import (
    UPLOAD_RECORDS,
    is_final_upload,
    loose_upload_key,
    team_records_prefix,
    unknown_team_key,
    unknown_team_prefix,
    upload_record_key,
)
from mai_ops.infra.storage import (
    CHUNK,
    get_json,
    is_missing,
    is_precondition_failed,
    list_objects,
    object_exists,
    put_json,
    sha256_of_file,
)
from mai_ops.submissions.evaluation import Evaluation, evaluate, retryable
from mai_ops.submissions.stuck import mark_finished, mark_started

# A run answers at most this many uploads in all, and at most MAX_PER_OWNER of one
# owner's (``<track>/<phase>/<team>``), taken round-robin; the next run takes the rest.
MAX_PER_RUN = 200
MAX_PER_OWNER = 5
# Refusals of a registered team's upload to its own track: the reply says what is left.
QUOTA_SHOWN = frozenset({"not_zip_name", "duplicate", "over_total_limit", "over_daily_limit"})


def _recorded(s3: Any, challenge: Challenge) -> set[str]:
    """The keys of every stored record (compared with :func:`upload_record_key`)."""
    return {obj["Key"] for obj in list_objects(s3, challenge.buckets.results, UPLOAD_RECORDS)}


def pending_uploads(s3: Any, challenge: Challenge, teams: list[Team] | None = None) -> list[dict]:
    """Uploads with no record yet, oldest first: what a sweep must process.

    Everything in the submissions bucket: validation uploads, final uploads (their
    pre-check) and misplaced uploads alike, so nothing is ignored. With ``teams``, also
    every upload refused as ``unknown_team`` whose team is registered now, by a list
    other than the one it was judged against (:func:`stale_unknown_team`).
    """
    done = _recorded(s3, challenge)
    found, stored = [], {}
    for obj in list_objects(s3, challenge.buckets.submissions):
        key, etag = obj["Key"], obj["ETag"].strip('"')
        if key.endswith("/"):
            continue
        upload = {"key": key, "uploaded_at": obj["LastModified"].isoformat()}
        stored[(key, etag)] = upload
        if upload_record_key(key, etag) not in done:
            found.append(upload)
    fingerprint = registry_fingerprint(teams or [])
    for team in teams or []:
        for obj in list_objects(s3, challenge.buckets.results, unknown_team_prefix(team.team_id)):
            note = get_json(s3, challenge.buckets.results, obj["Key"])
            upload = stored.get((note["key"], note["etag"]))
            if upload is not None and note.get("registry") != fingerprint:
                found.append(upload)
    found = list({u["key"]: u for u in found}.values())
    return sorted(found, key=lambda u: (u["uploaded_at"], u["key"]))


def stale_unknown_team(record: dict, teams: list[Team]) -> bool:
    """A record refused as ``unknown_team`` whose team is registered now: judge it again.

    The refusal was of our making (the list was wrong or broken when it was judged), so
    the upload deserves the verdict the fixed list gives.
    """
    codes = [e["code"] for e in record.get("errors") or []]
    return (
        codes == ["unknown_team"]
        and any(t.team_id == record.get("team") for t in teams)
        and record.get("registry") != registry_fingerprint(teams)
    )


def fair_batches(pending: list[dict]) -> list[list[str]]:
    """The uploads a run answers, as one batch per owner, fairly shared.

    ``pending`` is oldest first (:func:`pending_uploads`). Owners take turns, oldest
    waiting first: every owner's oldest upload, then every owner's second, ... up to
    MAX_PER_OWNER each and MAX_PER_RUN in all. A team flooding the server gets its
    share of a run, not the run, and its batch holds a pool slot for at most
    MAX_PER_OWNER answers. Each batch keeps its owner's uploads oldest first (their
    quota counts the earlier ones); batches come in the order of their oldest upload.
    """
    from mai_ops.infra.layout import upload_owner

    queues: dict[str, list[str]] = {}
    for upload in pending:
        queues.setdefault(upload_owner(upload["key"]), []).append(upload["key"])
    taken: dict[str, list[str]] = {owner: [] for owner in queues}
    total = 0
    for turn in range(MAX_PER_OWNER):
        for owner, keys in queues.items():
            if total >= MAX_PER_RUN:
                break
            if turn < len(keys):
                taken[owner].append(keys[turn])
                total += 1
    return [keys for keys in taken.values() if keys]


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
                ours=retryable(rec),
            )
        )
    return past


# How many times an upload replaced while it is being read is looked at again.
MAX_READS = 3


class _Replaced(Exception):
    """The object under the key is no longer the version its HEAD described."""


def _download_version(s3: Any, bucket: str, key: str, head: dict, path: Path) -> None:
    """Exactly the version ``head`` describes, into ``path``; :class:`_Replaced` if gone.

    A versioned bucket is read by the version id, so a later upload under the same key
    changes nothing here (it is judged on its own, under its own record); a bucket
    without versions is read with ``If-Match`` on the ETag.
    """
    version = head.get("VersionId")
    if version and version != "null":
        condition = {"VersionId": version}
    else:
        condition = {"IfMatch": head["ETag"]}
    try:
        body = s3.get_object(Bucket=bucket, Key=key, **condition)["Body"]
    except s3.exceptions.ClientError as exc:
        if is_precondition_failed(exc) or is_missing(exc):
            raise _Replaced(key) from None
        raise
    with open(path, "wb") as fh:
        for chunk in iter(lambda: body.read(CHUNK), b""):
            fh.write(chunk)


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

    Exactly one version is judged, under its own record: the one the HEAD saw, read by
    its version id (or with ``If-Match`` on its ETag in a bucket without versions). When
    that version was replaced before it could be read (no versions kept), the version
    now under the key is looked at and judged instead; the replaced one is gone.
    """
    bucket = challenge.buckets.submissions
    for _ in range(MAX_READS):
        head = s3.head_object(Bucket=bucket, Key=key)
        try:
            return _process_version(s3, challenge, teams, key, head, retry_failed)
        except _Replaced:
            continue  # replaced between the HEAD and the download: judge the new one
    raise RuntimeError(f"{key} was replaced {MAX_READS} times while being read; try again")


def _process_version(
    s3: Any, challenge: Challenge, teams: list[Team], key: str, head: dict, retry_failed: bool
) -> dict:
    """:func:`process_upload` for the version ``head`` describes."""
    from mai_ops.models.fidelity import load_data_set
    from mai_ops.submissions.intake import (
        IntakeError,
        Upload,
        judge_upload,
        oversize,
        uploads_left,
    )

    results = challenge.buckets.results
    etag = head["ETag"].strip('"')
    rejudged = False
    if object_exists(s3, results, upload_record_key(key, etag)):
        stored = get_json(s3, results, upload_record_key(key, etag))
        rejudged = stale_unknown_team(stored, teams)
        if not (retry_failed and (retryable(stored) or rejudged)):
            return stored
    mark_started(s3, results, head, key)  # removed by _store: a marker left is stuck work
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
        return _store(s3, results, record, teams, rejudged)
    with tempfile.TemporaryDirectory(prefix="mai-upload-") as tmp:
        archive = Path(tmp) / "upload.zip"
        _download_version(s3, challenge.buckets.submissions, key, head, archive)
        record.sha256 = sha256_of_file(archive)
        upload = Upload(key=key, size=record.size, uploaded_at=uploaded_at, sha256=record.sha256)
        history = _history(s3, challenge, key, etag)
        try:
            path = judge_upload(upload, challenge, teams, history)
        except IntakeError as exc:
            record.fail(exc)
            if exc.path is not None and exc.code in QUOTA_SHOWN:
                record.quota = uploads_left(upload, exc.path, challenge, history, counted=False)
        else:
            record.track, record.phase, record.team = path.track, path.phase, path.team
            track = challenge.track(path.track)
            data = None
            if path.phase == "validation":
                data = partial(load_data_set, s3, challenge, track, "validation")
            evaluate(
                record,
                challenge,
                track,
                archive,
                Path(tmp),
                fidelity_data=data,
                checks_only=record.precheck,
            )
            counted = record.status == "ok" or (
                record.status == "failed" and not retryable(record.as_json())
            )
            record.quota = uploads_left(upload, path, challenge, history, counted)
    return _store(s3, results, record, teams, rejudged)


def _store(s3: Any, results: str, record: Evaluation, teams: list[Team], rejudged: bool) -> dict:
    """Write the record; note an ``unknown_team`` refusal so a fixed list judges it again."""
    data = record.as_json()
    note = unknown_team_key(record.key, record.etag, record.team or "")
    if [e["code"] for e in data["errors"]] == ["unknown_team"]:
        data["registry"] = registry_fingerprint(teams)  # the list it was judged against
        put_json(s3, results, upload_record_key(record.key, record.etag), data)
        put_json(
            s3,
            results,
            note,
            {"key": record.key, "etag": record.etag, "registry": data["registry"]},
        )
        mark_finished(s3, results, record.key, record.etag)
        return data
    put_json(s3, results, upload_record_key(record.key, record.etag), data)
    if rejudged:
        s3.delete_object(Bucket=results, Key=note)
    mark_finished(s3, results, record.key, record.etag)
    return data
