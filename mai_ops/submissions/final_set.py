"""Final collection: freeze every team's final submission at the deadline.

The freeze copies exactly the bytes that were in the submissions bucket at the
deadline instant, never a later replacement:

- Which upload: the bucket as it stood at the deadline. With versioning (the project
  enables it on the submissions bucket), every version of every key under
  ``<track>/final/`` is listed; each key's version current at the deadline (the newest
  one stamped by then; a delete marker by then withdraws the key) is a candidate, and
  every version stamped later is refused as late. Each candidate is judged by the same
  upload rules as its pre-check on arrival (:func:`~mai_ops.submissions.intake.judge_upload`:
  the key is exactly ``<track>/final/<team>/<name>.zip``, a registered team registered
  for the track, the final phase open, not late, not too large), so an upload refused
  on arrival is never frozen. Of a team's accepted candidates the last one received
  (server time, then key) is frozen.
- Which bytes: the version listed. A versioned bucket is copied by its ``VersionId``;
  a bucket without versioning is read with ``If-Match`` on the listed ETag and the
  bytes written to the frozen key, so an object replaced after the listing (while the
  freeze runs) is never frozen in its place: its in-time bytes are gone, and the
  manifest and the team's receipt say so (``replaced_after_deadline``) instead of
  freezing another upload. (S3's conditional copy, ``CopySourceIfMatch``, would do the
  same in one request, but not every S3-compatible server honours it.)
- What the manifest says: the sha256 and size are read from the frozen copy itself;
  the time, ETag and version id are the listed version's, the one that was copied.

The manifest is written last, once every copy is made and read back, so a freeze cut
short by a storage outage or a killed worker leaves no manifest (a freeze that replaces
a stored set withdraws the old manifest before its first copy): no reader ever takes a
partial set for the final set, and the retry freezes everything again.

Registered teams with nothing frozen in a track they registered for are listed as
missing; every refused upload is listed with its code, its reason and the team its
key names, so nobody is silently dropped and each receipt names that team's own. Keys
and manifest depend only on what was uploaded, so a re-run reproduces the same manifest.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from pathlib import Path
from typing import Any

from mai_ops.challenge.config import Challenge
from mai_ops.challenge.dates import zone
from mai_ops.challenge.participants import Team
from mai_ops.infra.layout import (
    FROZEN_MANIFEST,
    final_phase_prefix,
    final_upload_team,
    frozen_key,
)
from mai_ops.infra.storage import (
    CHUNK,
    bucket_versioned,
    get_json,
    is_missing,
    is_precondition_failed,
    list_versions,
    object_exists,
    put_json,
    sha256_of_object,
)
from mai_ops.submissions.intake import IntakeError, Upload, final_deadline, judge_upload

log = logging.getLogger(__name__)

NO_VERSIONS = (
    "the submissions bucket keeps no earlier versions, so if this name held an upload "
    "received in time, that upload was replaced and cannot be frozen"
)


class InTimeVersionGone(Exception):
    """The version listed at the deadline no longer exists: nothing of it can be frozen."""


def _versions_at(
    s3: Any, bucket: str, prefix: str, deadline: dt.datetime | None
) -> tuple[list[dict], list[dict]]:
    """(each key's version current at ``deadline``, every version stamped after it)."""
    by_key: dict[str, list[dict]] = {}
    for entry in list_versions(s3, bucket, prefix):
        by_key.setdefault(entry["Key"], []).append(entry)
    current, late = [], []
    for key in sorted(by_key):
        if key.endswith("/"):  # a folder marker made by a console, not an upload
            continue
        at_deadline = None
        for entry in by_key[key]:  # newest first
            if deadline is not None and _utc(entry["LastModified"]) > deadline:
                if not entry["DeleteMarker"]:
                    late.append(entry)
                continue
            at_deadline = entry
            break
        if at_deadline is not None and not at_deadline["DeleteMarker"]:
            current.append(at_deadline)
    return current, late


def _utc(when: dt.datetime) -> dt.datetime:
    return when.astimezone(dt.UTC)


def _version_id(entry: dict) -> str | None:
    """The listed version id; None for a bucket without versioning (``"null"``)."""
    version = entry.get("VersionId")
    return version if version and version != "null" else None


def _late_reason(entry: dict, deadline: dt.datetime, challenge: Challenge) -> str:
    uploaded = _utc(entry["LastModified"])
    local = deadline.astimezone(zone(challenge.timezone))
    return (
        f"late: the server received it at {uploaded:%Y-%m-%d %H:%M:%S} UTC, after the "
        f"deadline {deadline:%Y-%m-%d %H:%M:%S} UTC ({local:%Y-%m-%d %H:%M %Z})"
    )


def _refusal(entry: dict, track: str, code: str, reason: str) -> dict:
    return {
        "key": entry["Key"],
        "track": track,
        "team": final_upload_team(entry["Key"]),
        "code": code,
        "reason": reason,
        "uploaded_at": entry["LastModified"].isoformat(),
        "etag": entry["ETag"].strip('"'),
        "version_id": _version_id(entry),
    }


def _copy_in_time_version(s3: Any, src_bucket: str, entry: dict, dst_bucket: str, dst: str):
    """Write exactly the listed version of ``entry`` to ``dst``; InTimeVersionGone if it is gone."""
    etag, version = entry["ETag"].strip('"'), _version_id(entry)
    metadata = {
        "source": f"s3://{src_bucket}/{entry['Key']}",
        "source-etag": etag,
        "source-version": version or "",
        "uploaded-at": entry["LastModified"].isoformat(),
    }
    if version is not None:
        try:
            copied = s3.copy_object(
                Bucket=dst_bucket,
                Key=dst,
                CopySource={"Bucket": src_bucket, "Key": entry["Key"], "VersionId": version},
                Metadata=metadata,
                MetadataDirective="REPLACE",
            )
        except s3.exceptions.ClientError as exc:
            if is_missing(exc):
                raise InTimeVersionGone("deleted") from None
            raise
        if copied.get("CopySourceVersionId") not in (None, version):
            raise RuntimeError(
                f"the storage copied version {copied.get('CopySourceVersionId')} of "
                f"{entry['Key']}, not the version {version} that was asked for"
            )
        return
    try:
        body = s3.get_object(Bucket=src_bucket, Key=entry["Key"], IfMatch=entry["ETag"])["Body"]
    except s3.exceptions.ClientError as exc:
        if is_precondition_failed(exc):
            raise InTimeVersionGone("replaced") from None
        if is_missing(exc):
            raise InTimeVersionGone("deleted") from None
        raise
    with tempfile.TemporaryDirectory(prefix="mai-freeze-") as tmp:
        path = Path(tmp) / "frozen"
        with open(path, "wb") as fh:
            for chunk in iter(lambda: body.read(CHUNK), b""):
                fh.write(chunk)
        s3.upload_file(str(path), dst_bucket, dst, ExtraArgs={"Metadata": metadata})


def freeze_final_set(
    s3: Any, challenge: Challenge, teams: list[Team], refreeze: bool = False, early: bool = False
) -> dict:
    """Freeze once: a stored manifest is the final set, unless ``refreeze`` is asked for.

    An ``early`` freeze (by the organizers, before the deadline) is provisional: only
    another early freeze keeps it; the freeze at the deadline replaces it.
    """
    buckets = challenge.buckets
    if not refreeze and object_exists(s3, buckets.results, FROZEN_MANIFEST):
        stored = get_json(s3, buckets.results, FROZEN_MANIFEST)
        if early or not stored.get("early"):
            return stored
    deadline = final_deadline(challenge)
    if object_exists(s3, buckets.results, FROZEN_MANIFEST):
        # This freeze replaces a stored set (an early one, or `refreeze`), and rewrites
        # its frozen copies in place: the stored manifest is withdrawn first, so a freeze
        # cut short (storage lost, a worker killed) never leaves a manifest standing over
        # copies that changed under it. Until the new manifest is written last, there is
        # no frozen set: scoring and publishing refuse, and a retry freezes again.
        log.info("withdrawing the stored final set of %s before freezing again", challenge.id)
        s3.delete_object(Bucket=buckets.results, Key=FROZEN_MANIFEST)
    versioned = bucket_versioned(s3, buckets.submissions)
    if not versioned:
        log.warning(
            "the submissions bucket %s has no versioning: an upload replaced after the "
            "deadline cannot be frozen as it was; enable versioning on it",
            buckets.submissions,
        )
    frozen, missing, rejected = [], [], []
    for track in challenge.tracks:
        current, late = _versions_at(
            s3, buckets.submissions, final_phase_prefix(track.id), deadline
        )
        accepted: dict[str, list[tuple[dict, str]]] = {}
        for entry in current:
            upload = Upload(
                key=entry["Key"],
                size=entry["Size"],
                uploaded_at=_utc(entry["LastModified"]),
                sha256="",  # the final phase has no duplicate rule
            )
            try:
                path = judge_upload(upload, challenge, teams, [])
            except IntakeError as exc:
                rejected.append(_refusal(entry, track.id, exc.code, exc.message))
                continue
            accepted.setdefault(path.team, []).append((entry, path.filename))
        for entry in late:
            reason = _late_reason(entry, deadline, challenge)
            refusal = IntakeError("late", reason if versioned else f"{reason}; {NO_VERSIONS}")
            rejected.append(_refusal(entry, track.id, refusal.code, refusal.message))
        gone = set()
        for team_id in sorted(accepted):
            entry, filename = max(
                accepted[team_id], key=lambda c: (c[0]["LastModified"], c[0]["Key"])
            )
            dst = frozen_key(track.id, team_id, filename)
            try:
                _copy_in_time_version(s3, buckets.submissions, entry, buckets.results, dst)
            except InTimeVersionGone as how:
                gone.add(team_id)
                refusal = IntakeError(
                    "replaced_after_deadline",
                    f"received in time at {_utc(entry['LastModified']):%Y-%m-%d %H:%M:%S} "
                    f"UTC, but {how} in the submissions bucket before the freeze could copy "
                    "it, and the bucket keeps no earlier versions: its bytes are gone, so "
                    f"nothing is frozen for {track.id} (an earlier upload is not taken in its "
                    "place)",
                )
                rejected.append(_refusal(entry, track.id, refusal.code, refusal.message))
                continue
            frozen.append(
                {
                    "track": track.id,
                    "team": team_id,
                    "source": entry["Key"],
                    "frozen": dst,
                    "size": entry["Size"],
                    "sha256": sha256_of_object(s3, buckets.results, dst),
                    "uploaded_at": entry["LastModified"].isoformat(),
                    "etag": entry["ETag"].strip('"'),
                    "version_id": _version_id(entry),
                }
            )
        done = {f["team"] for f in frozen if f["track"] == track.id} | gone
        for team in teams:
            if track.id in team.tracks and team.team_id not in done:
                missing.append({"track": track.id, "team": team.team_id})
    manifest = {
        "challenge": challenge.id,
        "frozen": frozen,
        "missing": missing,
        "rejected": _unique(rejected),
        "early": early,
        "versioned": versioned,
    }
    put_json(s3, buckets.results, FROZEN_MANIFEST, manifest)
    return manifest


def _unique(rejected: list[dict]) -> list[dict]:
    """Each refusal once: a bad key's versions all give the same one."""
    seen, kept = set(), []
    for r in rejected:
        mark = (r["key"], r["code"], r["reason"])
        if mark not in seen:
            seen.add(mark)
            kept.append(r)
    return kept
