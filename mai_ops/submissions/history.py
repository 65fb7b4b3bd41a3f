"""One team's story: every upload, what became of it, and the emails sent about it.

An organizer answers "why was my upload rejected?" from it (``mai-ops history``), and
the validation task logs it after each upload it answers. It only reads what the
pipelines stored: the validation records (``uploads/`` in the results bucket), the
submissions bucket (uploads not answered yet, final-phase uploads), the frozen
manifest, the score records and the ledger's sent-markers. Nothing is judged again.

Each entry is a plain dict, the same for a terminal and for ``--json``:

- ``uploaded_at`` (the storage server's time, ISO 8601 in UTC), ``key``, ``etag`` (the
  stored version), ``track``, ``phase``;
- ``status``: a validation upload's verdict (``ok``, ``failed``, ``rejected``) or
  ``pending`` when no record exists yet; a final-phase upload is ``received``,
  ``frozen``, ``late`` or ``rejected`` (as the frozen manifest says);
- ``scoring``: the score record's status, for a frozen submission that was scored;
- ``errors`` (``{code, stage, message}``, the message cleaned as for the team),
  ``runtime_ms``, ``metrics``, ``score``: from the record (the score record for a
  frozen submission);
- ``notes``: what the record or the manifest adds (a late upload's times, an early
  freeze); ``record``: the results-bucket key the entry was read from, if any;
- ``emails``: the notice key of each email the ledger marked as sent about this
  upload, with ``sent_at``, the time its sent-marker was stored (right after the
  relay accepted the message).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from mai_ops.challenge.config import Challenge
from mai_ops.challenge.participants import Team
from mai_ops.errors import clean_message
from mai_ops.infra.layout import (
    FROZEN_MANIFEST,
    LONG_KEY_MARK,
    UPLOAD_RECORDS,
    final_upload_team,
    is_final_upload,
    loose_upload_key,
    notice_marker_key,
    notice_markers_prefix,
    parse_notice_marker_key,
    parse_upload_record_key,
    score_key,
)
from mai_ops.infra.storage import get_json, list_objects, object_exists
from mai_ops.notify.messages import (
    preliminary_results_notice_key,
    receipt_notice_key,
    upload_notice_prefix,
)


class UnknownTeam(LookupError):
    """A team id that is not in the challenge's participants list."""


def registered_team(challenge: Challenge, teams: list[Team], team_id: str) -> Team:
    """The registered team ``team_id``; :class:`UnknownTeam` naming the known ones otherwise."""
    for team in teams:
        if team.team_id == team_id:
            return team
    known = sorted(t.team_id for t in teams)
    shown = ", ".join(known[:20]) or "none"
    if len(known) > 20:
        shown += f" and {len(known) - 20} more"
    raise UnknownTeam(
        f"team {team_id!r} is not registered for {challenge.id} (registered: {shown})"
    )


def _team_of(upload_key: str) -> str | None:
    """The team an upload key names: its third part, deeper final-phase paths included."""
    if is_final_upload(upload_key):
        return final_upload_team(upload_key)
    named = loose_upload_key(upload_key)
    return named.team if named is not None else None


def _utc(value: Any) -> str | None:
    """A stored time (an ISO string or an S3 datetime) as ISO 8601 in UTC."""
    if value is None:
        return None
    when = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).isoformat()


def _instant(iso: str | None) -> dt.datetime:
    return dt.datetime.fromisoformat(iso) if iso else dt.datetime.min.replace(tzinfo=dt.UTC)


def _entry(key: str, etag: str | None, uploaded_at: Any, status: str) -> dict:
    named = loose_upload_key(key)
    parts = key.split("/")
    return {
        "uploaded_at": _utc(uploaded_at),
        "key": key,
        "etag": etag,
        "track": named.track if named else (parts[0] if len(parts) > 1 else None),
        "phase": named.phase if named else (parts[1] if len(parts) > 2 else None),
        "status": status,
        "scoring": None,
        "errors": [],
        "runtime_ms": None,
        "metrics": None,
        "score": None,
        "notes": [],
        "record": None,
        "emails": [],
    }


def _with_record(entry: dict, record: dict, record_key: str) -> dict:
    """The verdict, codes and numbers of a stored record, into ``entry``."""
    entry["errors"] = [
        {
            "code": e.get("code"),
            "stage": e.get("stage"),
            "message": clean_message(e.get("message", "")),
        }
        for e in record.get("errors") or []
    ]
    entry["runtime_ms"] = record.get("runtime_ms")
    entry["metrics"] = record.get("metrics")
    entry["score"] = record.get("score")
    entry["notes"] += [clean_message(n) for n in record.get("notes") or []]
    entry["record"] = record_key
    return entry


def _markers(s3: Any, bucket: str, prefix: str) -> list[dict]:
    """The sent-markers under ``prefix``, as emails: notice key and the time it was stored."""
    return [
        {"key": parse_notice_marker_key(o["Key"]), "sent_at": _utc(o["LastModified"])}
        for o in list_objects(s3, bucket, prefix)
        if o["Key"].endswith(".json")
    ]


def _marker(s3: Any, bucket: str, notice_key: str) -> list[dict]:
    """The email with ``notice_key``, if the ledger marked it as sent."""
    wanted = notice_marker_key(notice_key)
    return [e for e in _markers(s3, bucket, wanted) if notice_marker_key(e["key"]) == wanted]


def _validation_entries(s3: Any, challenge: Challenge, team_id: str) -> dict[tuple, dict]:
    """Every stored validation record of the team, with the replies sent about it."""
    results = challenge.buckets.results
    found = {}
    for obj in list_objects(s3, results, UPLOAD_RECORDS):
        upload, etag = parse_upload_record_key(obj["Key"])
        long_key = f"/{LONG_KEY_MARK}/" in obj["Key"]  # spelled as a digest: read the record
        if _team_of(upload) != team_id and not long_key:
            continue
        record = get_json(s3, results, obj["Key"])
        upload, etag = record.get("key", upload), record.get("etag", etag)
        if _team_of(upload) != team_id:
            continue
        entry = _entry(upload, etag, record.get("uploaded_at"), record.get("status", "?"))
        _with_record(entry, record, obj["Key"])
        prefix = notice_markers_prefix(upload_notice_prefix(challenge.id, upload, etag))
        entry["emails"] = _markers(s3, results, prefix)
        found[(upload, etag)] = entry
    return found


def _final_entry(
    s3: Any,
    challenge: Challenge,
    team_id: str,
    entry: dict,
    manifest: dict | None,
    receipts: list[dict],
) -> dict:
    """Where a final-phase upload stands in the frozen manifest, and its score record.

    ``receipts`` are the team's receipt emails: about its frozen and refused uploads.
    """
    results = challenge.buckets.results
    if manifest is None:
        entry["notes"].append("not frozen yet: the final collection freezes the latest upload")
        return entry
    early = bool(manifest.get("early"))
    frozen = next(
        (
            f
            for f in manifest.get("frozen", [])
            if f["team"] == team_id
            and f["source"] == entry["key"]
            and _utc(f.get("uploaded_at")) == entry["uploaded_at"]
        ),
        None,
    )
    refused = next((r for r in manifest.get("rejected", []) if r["key"] == entry["key"]), None)
    if frozen is not None:
        entry["status"] = "frozen"
        if early:
            entry["notes"].append(
                "frozen early by the organizers: provisional, the freeze at the deadline "
                "replaces it"
            )
        entry["emails"] = list(receipts)
        key = score_key(frozen["track"], team_id, frozen["sha256"])
        if object_exists(s3, results, key):
            record = get_json(s3, results, key)
            if record.get("sha256") == frozen["sha256"]:
                entry["scoring"] = record.get("status")
                _with_record(entry, record, key)
                entry["emails"] += _marker(
                    s3, results, preliminary_results_notice_key(challenge.id, team_id)
                )
    elif refused is not None:
        late = refused.get("code", "late" if refused["reason"].startswith("late") else "") == "late"
        entry["status"] = "late" if late else "rejected"  # manifests before codes: the reason
        entry["notes"].append(refused["reason"])
        entry["emails"] = list(receipts)
    else:
        kept = next(
            (
                f
                for f in manifest.get("frozen", [])
                if f["team"] == team_id and f["track"] == entry["track"]
            ),
            None,
        )
        if kept is not None and _instant(kept.get("uploaded_at")) >= _instant(entry["uploaded_at"]):
            entry["notes"].append(
                f"not frozen: a later upload was frozen instead ({kept['source']})"
            )
        elif early:
            entry["notes"].append(
                "received after the early freeze: the freeze at the deadline takes the "
                "latest upload"
            )
        else:
            entry["notes"].append("received after the final set was frozen: not in it")
    return entry


def team_history(s3: Any, challenge: Challenge, team_id: str) -> list[dict]:
    """Every upload of ``team_id`` in ``challenge``, oldest first (see the module's doc).

    Validation-phase uploads (misplaced ones too: any key whose third part is the team)
    come from their stored records, plus any upload still waiting for one; final-phase
    uploads from the submissions bucket and the frozen manifest, with the score record
    of the frozen one. Does not check that the team is registered
    (:func:`registered_team`).
    """
    results, submissions = challenge.buckets.results, challenge.buckets.submissions
    entries = _validation_entries(s3, challenge, team_id)
    manifest = (
        get_json(s3, results, FROZEN_MANIFEST)
        if object_exists(s3, results, FROZEN_MANIFEST)
        else None
    )
    receipts = []
    if manifest is not None:
        for early in (True, False):
            receipts += _marker(s3, results, receipt_notice_key(challenge.id, team_id, early))
    for obj in list_objects(s3, submissions):
        key, etag = obj["Key"], obj["ETag"].strip('"')
        if key.endswith("/") or _team_of(key) != team_id or (key, etag) in entries:
            continue
        if is_final_upload(key):
            entry = _entry(key, etag, obj["LastModified"], "received")
            entries[(key, etag)] = _final_entry(s3, challenge, team_id, entry, manifest, receipts)
        else:
            entry = _entry(key, etag, obj["LastModified"], "pending")
            entry["notes"].append("not answered yet: the next validation run takes it")
            entries[(key, etag)] = entry
    listed = {(e["key"], e["uploaded_at"]) for e in entries.values()}
    for frozen in (manifest or {}).get("frozen", []):  # its upload since deleted or replaced
        if (
            frozen["team"] == team_id
            and (frozen["source"], _utc(frozen["uploaded_at"])) not in listed
        ):
            entry = _entry(frozen["source"], None, frozen["uploaded_at"], "received")
            entry["notes"].append(
                "this version is no longer in the submissions bucket (deleted, or replaced "
                "by a later upload under the same name)"
            )
            entries[(frozen["source"], None)] = _final_entry(
                s3, challenge, team_id, entry, manifest, receipts
            )
    return sorted(
        entries.values(), key=lambda e: (_instant(e["uploaded_at"]), e["key"], e["etag"] or "")
    )


def _when(iso: str | None) -> str:
    if iso is None:
        return "(time unknown)"
    return dt.datetime.fromisoformat(iso).astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _number(value: float) -> str:
    return f"{value:.6g}"


def render_history(entries: list[dict], team_id: str, challenge_id: str) -> list[str]:
    """The entries as lines for a terminal or a task log: one block per upload."""
    count = f"{len(entries)} upload{'s' if len(entries) != 1 else ''}"
    lines = [f"team {team_id} in {challenge_id}: {count}, oldest first"]
    for e in entries:
        lines.append(f"{_when(e['uploaded_at'])}  {e['status']:<8}  {e['key']}")
        lines.append(f"    version  {e['etag'] or '-'}")
        if e["scoring"] is not None:
            lines.append(f"    scoring  {e['scoring']}")
        for error in e["errors"]:
            lines.append(f"    error    [{error['code']}] {error['message']}")
        if e["runtime_ms"] is not None:
            lines.append(f"    runtime  {e['runtime_ms']:.3f} ms")
        if e["metrics"]:
            shown = ", ".join(f"{k} {_number(v)}" for k, v in sorted(e["metrics"].items()))
            lines.append(f"    metrics  {shown}")
        if e["score"] is not None:
            lines.append(f"    score    {_number(e['score'])}")
        for note in e["notes"]:
            lines.append(f"    note     {note}")
        for email in e["emails"]:
            lines.append(f"    email    {email['key']}  sent {_when(email['sent_at'])}")
        if not e["emails"]:
            lines.append("    email    none sent")
    return lines
