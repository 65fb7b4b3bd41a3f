"""Final collection: freeze every team's final submission at the deadline.

For each track and team, the latest upload under ``<track>/final/<team>/`` in the
submissions bucket is copied to ``frozen/<track>/<team>/`` in the results bucket,
with its sha256, and listed in ``frozen/manifest.json``. Uploads the storage
server received after the deadline instant are rejected as late, with both times.
Registered teams with no upload are listed as missing, and uploads by unknown
teams as rejected, so nobody is silently dropped. Keys and manifest depend only
on what was uploaded, so a re-run reproduces the same manifest.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from mai_ops.challenge.config import Challenge
from mai_ops.challenge.participants import Team
from mai_ops.challenge.timeline import event_instant
from mai_ops.infra.layout import (
    FROZEN_MANIFEST,
    final_phase_prefix,
    final_upload_prefix,
    final_upload_team,
    frozen_key,
)
from mai_ops.infra.storage import copy_if_changed, get_json, list_objects, object_exists, put_json


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
    known = {t.team_id for t in teams}
    deadline = event_instant(challenge, challenge.event("final_deadline"))
    frozen, missing, rejected = [], [], []
    for track in challenge.tracks:
        uploads_by_team: dict[str, list[dict]] = {}
        for obj in list_objects(s3, buckets.submissions, final_phase_prefix(track.id)):
            team_id = final_upload_team(obj["Key"])
            if team_id is None or obj["Key"].endswith("/"):
                rejected.append({"key": obj["Key"], "reason": "not under <track>/final/<team>/"})
                continue
            uploaded = obj["LastModified"].astimezone(dt.UTC)
            if deadline is not None and uploaded > deadline:
                rejected.append(
                    {
                        "key": obj["Key"],
                        "reason": f"late: the server received it at {uploaded:%Y-%m-%d %H:%M:%S} "
                        f"UTC, after the deadline {deadline.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} "
                        f"UTC ({deadline:%Y-%m-%d %H:%M %Z})",
                    }
                )
                continue
            uploads_by_team.setdefault(team_id, []).append(obj)
        for team_id in sorted(uploads_by_team):
            if team_id not in known:
                rejected.extend(
                    {"key": o["Key"], "reason": f"unknown team {team_id!r}"}
                    for o in uploads_by_team[team_id]
                )
                continue
            latest = max(uploads_by_team[team_id], key=lambda o: (o["LastModified"], o["Key"]))
            filename = latest["Key"][len(final_upload_prefix(track.id, team_id)) :]
            dst = frozen_key(track.id, team_id, filename.replace("/", "_"))
            digest = copy_if_changed(s3, buckets.submissions, latest["Key"], buckets.results, dst)
            frozen.append(
                {
                    "track": track.id,
                    "team": team_id,
                    "source": latest["Key"],
                    "frozen": dst,
                    "size": latest["Size"],
                    "sha256": digest,
                    "uploaded_at": latest["LastModified"].isoformat(),
                }
            )
        for team in teams:
            if track.id in team.tracks and team.team_id not in uploads_by_team:
                missing.append({"track": track.id, "team": team.team_id})
    manifest = {
        "challenge": challenge.id,
        "frozen": frozen,
        "missing": missing,
        "rejected": rejected,
        "early": early,
    }
    put_json(s3, buckets.results, FROZEN_MANIFEST, manifest)
    return manifest
