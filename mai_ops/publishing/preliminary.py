"""Preliminary results: the validated ranked table, published to the public bucket.

Only the table stored as the results (:data:`~mai_ops.infra.layout.RANKING`), and only
when it passed validation, is ever published: a table that failed its expectations, or
a final set not scored yet, stops publication with the reason. The public copy holds
what a leaderboard shows (ranks, team ids, metrics, runtime and device, score, flags,
error codes); nothing private about a team. The same table becomes the final
leaderboard's pages, files and plots (:mod:`mai_ops.publishing.leaderboard`).
"""

from __future__ import annotations

import csv
import io
from typing import Any

from mai_ops.challenge.config import Challenge
from mai_ops.errors import NeedsOrganizer
from mai_ops.infra.layout import FINAL_PHASE, PRELIMINARY_CSV, PRELIMINARY_JSON, RANKING
from mai_ops.infra.storage import get_json, object_exists, put_json
from mai_ops.submissions.scoring import frozen_entries

PUBLIC_FIELDS = (
    "track",
    "rank",
    "team",
    "status",
    "score",
    "runtime_ms",
    "device",
    "backend",
    "flags",
    "error",
    "sha256",
    "uploaded_at",
)


class NothingToPublish(NeedsOrganizer):
    """No validated results are stored: score the final set (or fix what failed) first."""


def validated_results(s3: Any, challenge: Challenge) -> dict:
    """The stored results, refused unless they passed validation."""
    bucket = challenge.buckets.results
    if not object_exists(s3, bucket, RANKING):
        raise NothingToPublish(
            f"no ranked results at s3://{bucket}/{RANKING}: run the scoring first"
        )
    table = get_json(s3, bucket, RANKING)
    if not table.get("validated"):
        summary = (table.get("validation") or {}).get("summary", "")
        raise NothingToPublish(f"the stored results did not pass validation:\n{summary}")
    ranked = {
        (r["track"], r["team"], r["sha256"]) for t in table["tracks"].values() for r in t["rows"]
    }
    frozen = {(e["track"], e["team"], e["sha256"]) for e in frozen_entries(s3, challenge)}
    if ranked != frozen:
        missing = sorted(f"{t}/{team}" for t, team, _ in frozen - ranked)
        raise NothingToPublish(
            "the stored results are not those of the frozen final set (frozen again since, "
            f"or not all scored: {', '.join(missing) or 'extra rows'}); run the scoring"
        )
    return table


def public_table(table: dict) -> dict:
    """The rows a leaderboard shows, per track, with each track's metrics and formula."""
    tracks = {}
    for track_id, ranked in table["tracks"].items():
        fields = [*PUBLIC_FIELDS, *ranked["metrics"]]
        tracks[track_id] = {
            "formula": ranked["formula"],
            "constants": ranked["constants"],
            "metrics": ranked["metrics"],
            "device": ranked["device"],
            "rows": [{f: row.get(f) for f in fields} for row in ranked["rows"]],
        }
    return {
        "challenge": table["challenge"],
        "phase": table.get("phase", FINAL_PHASE),
        "tracks": tracks,
    }


def publish_preliminary(s3: Any, challenge: Challenge) -> dict:
    """Publish the validated results; return the public table.

    To the public bucket: the whole table as JSON and CSV
    (:data:`~mai_ops.infra.layout.PRELIMINARY_JSON`, ``PRELIMINARY_CSV``), then the
    final leaderboard (:func:`mai_ops.publishing.leaderboard.render_leaderboard`: a
    page, CSV, JSON and plots per track under ``leaderboard/``, and the index page
    last). Every object is the same for the same table, so a retry after an outage
    rewrites what was already there and completes the rest.
    """
    from mai_ops.publishing.leaderboard import (
        csv_cell,
        publish_leaderboard,
        render_leaderboard,
    )

    table = public_table(validated_results(s3, challenge))
    public = challenge.buckets.public
    put_json(s3, public, PRELIMINARY_JSON, table)
    metrics = sorted({m for t in table["tracks"].values() for m in t["metrics"]})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*PUBLIC_FIELDS, *metrics])
    for ranked in table["tracks"].values():
        for row in ranked["rows"]:
            writer.writerow([csv_cell(row.get(f)) for f in (*PUBLIC_FIELDS, *metrics)])
    s3.put_object(
        Bucket=public,
        Key=PRELIMINARY_CSV,
        Body=out.getvalue().encode(),
        ContentType="text/csv; charset=utf-8",
    )
    # Last, and its index last of all: the page the emails link to appears only once
    # everything it leads to is there, so a publication cut short shows nothing half done.
    publish_leaderboard(s3, public, FINAL_PHASE, render_leaderboard(table, challenge))
    return table
