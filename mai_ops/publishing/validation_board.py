"""The validation leaderboard: each team's best verified validation upload, per track.

A verified upload is a validation-phase upload whose record is ``ok`` and has a score
(the organizers staged validation data, so the upload was measured and scored). Every
such record of a track is ranked by :func:`mai_ops.results.ranking.rank_track`, the
final table's rule (score, then fidelity, then the earlier upload); each team's first
row is its best upload, and those are ranked again into the leaderboard. The table has
the final table's shape (phase ``validation``) and goes through the same public filter
(:func:`mai_ops.publishing.preliminary.public_table`) and renderer
(:mod:`mai_ops.publishing.leaderboard`), under ``leaderboard/validation/``.

Cheap to run after every answer: one listing of the upload records, and only the
records new or rewritten since the last run are read. What was read is kept in the
results bucket (:data:`~mai_ops.infra.layout.VALIDATION_BOARD_CACHE`: per record key,
its ETag and the fields the ranking needs, or None for a record that cannot count).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mai_ops.challenge.config import Challenge
from mai_ops.infra.layout import (
    UPLOAD_RECORDS,
    VALIDATION_BOARD_CACHE,
    VALIDATION_PHASE,
)
from mai_ops.infra.storage import get_json, list_objects, object_exists, put_json

CACHE_VERSION = 1


def _is_validation_record(key: str) -> bool:
    """``uploads/<track>/validation/<team>/...``: a validation upload's record, by its key."""
    parts = key[len(UPLOAD_RECORDS) :].split("/")
    return len(parts) >= 4 and parts[1] == VALIDATION_PHASE


def ranking_fields(record: Mapping[str, Any]) -> dict | None:
    """What the ranking reads of a verified validation record; None when it cannot count."""
    if (
        record.get("phase") != VALIDATION_PHASE
        or record.get("precheck")
        or record.get("status") != "ok"
        or record.get("score") is None
    ):
        return None
    return {
        "track": record.get("track"),
        "team": record.get("team"),
        "status": "ok",
        "score": record.get("score"),
        "metrics": dict(record.get("metrics") or {}),
        "runtime_ms": record.get("runtime_ms"),
        "runtime": {"backend": (record.get("runtime") or {}).get("backend")},
        "device": record.get("device"),
        "flags": list(record.get("flags") or []),
        "errors": [],
        "sha256": record.get("sha256"),
        "uploaded_at": record.get("uploaded_at"),
    }


def verified_records(s3: Any, challenge: Challenge) -> list[dict]:
    """The ranking fields of every verified validation upload of the challenge.

    One listing of the records; a record is read only when the cache has no entry
    for its key with the same ETag. The cache is written back when it changed.
    """
    bucket = challenge.buckets.results
    cache: dict[str, dict] = {}
    if object_exists(s3, bucket, VALIDATION_BOARD_CACHE):
        stored = get_json(s3, bucket, VALIDATION_BOARD_CACHE)
        if stored.get("version") == CACHE_VERSION:
            cache = stored.get("records") or {}
    fresh: dict[str, dict] = {}
    for obj in list_objects(s3, bucket, UPLOAD_RECORDS):
        key, etag = obj["Key"], obj["ETag"].strip('"')
        if not key.endswith(".json") or not _is_validation_record(key):
            continue
        known = cache.get(key)
        if known is not None and known.get("etag") == etag:
            fresh[key] = known
        else:
            fresh[key] = {"etag": etag, "entry": ranking_fields(get_json(s3, bucket, key))}
    if fresh != cache:
        put_json(s3, bucket, VALIDATION_BOARD_CACHE, {"version": CACHE_VERSION, "records": fresh})
    return [fresh[key]["entry"] for key in sorted(fresh) if fresh[key]["entry"] is not None]


def _identity(row: Mapping[str, Any]) -> tuple:
    return (row.get("team"), row.get("sha256"), row.get("uploaded_at"))


def best_per_team(track: Any, records: Iterable[Mapping[str, Any]]) -> list[dict]:
    """The track's leaderboard rows: each team's best verified upload, ranked.

    Every record is ranked by the final table's rule; a team's first ranked row is its
    best upload. The chosen records are ranked again, so ranks are those among teams.
    A record whose score cannot be computed with the track's formula now is left out.
    """
    from mai_ops.results.ranking import RANKED, rank_track

    mine = [r for r in records if r.get("track") == track.id]
    by_identity = {_identity(r): r for r in mine}
    chosen: dict[str, Mapping[str, Any]] = {}
    for row in rank_track(track, mine):
        if row["status"] == RANKED and row["team"] not in chosen:
            chosen[row["team"]] = by_identity[_identity(row)]
    return [r for r in rank_track(track, chosen.values()) if r["status"] == RANKED]


def validation_table(challenge: Challenge, records: Iterable[Mapping[str, Any]]) -> dict:
    """The validation leaderboard of every track, in the public table's shape."""
    from mai_ops.publishing.preliminary import public_table
    from mai_ops.results.ranking import effective_constants

    records = list(records)
    table: dict[str, Any] = {"challenge": challenge.id, "phase": VALIDATION_PHASE, "tracks": {}}
    for track in challenge.tracks:
        table["tracks"][track.id] = {
            "formula": track.score.formula,
            "constants": effective_constants(track),
            "metrics": list(track.metrics),
            "device": track.device,
            "rows": best_per_team(track, records),
        }
    return public_table(table)


def publish_validation_leaderboard(s3: Any, challenge: Challenge) -> dict:
    """Rank the verified validation uploads and publish the validation leaderboard.

    To the public bucket under ``leaderboard/validation/``: the index page and, per
    track, its page, CSV, JSON and plots. Returns the public table. The same records
    give the same bytes, so running it after every answer rewrites nothing new.
    """
    from mai_ops.publishing.leaderboard import publish_leaderboard, render_leaderboard

    table = validation_table(challenge, verified_records(s3, challenge))
    files = render_leaderboard(table, challenge)
    publish_leaderboard(s3, challenge.buckets.public, VALIDATION_PHASE, files)
    return table
