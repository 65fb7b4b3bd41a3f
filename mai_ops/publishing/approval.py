"""Approval of the preliminary results: what the organizer sees, and what was approved.

The results are shown (each track's ranked table and the Great Expectations summary)
in the approval step of the preliminary results DAG. An approval is kept for the table
it was given for, by its digest (:data:`~mai_ops.infra.layout.APPROVAL`): approved ahead
of the promised instant (a run triggered by hand before it), the run at the instant
publishes without asking again; a table that changed since (a re-score applied)
needs a new approval. Publication itself never happens before the promised instant.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from mai_ops.challenge.config import Challenge
from mai_ops.infra.layout import APPROVAL
from mai_ops.infra.storage import get_json, object_exists, put_json
from mai_ops.publishing.preliminary import validated_results


def table_digest(table: dict) -> str:
    """The digest of what a table ranks (tracks, rows, constants), not of its run."""
    body = json.dumps(table["tracks"], sort_keys=True, default=str).encode()
    return hashlib.sha256(body).hexdigest()


def review(s3: Any, challenge: Challenge) -> dict:
    """The validated results as the approval step shows them, with their digest.

    ``approved``: an organizer already approved exactly this table.
    """
    from mai_ops.results.ranking import render_track

    table = validated_results(s3, challenge)
    digest = table_digest(table)
    parts = [f"## {challenge.title}: preliminary results to publish", ""]
    for track_id, ranked in table["tracks"].items():
        parts += ["```", render_track(track_id, ranked), "```", ""]
    summary = (table.get("validation") or {}).get("summary", "")
    parts += ["### Great Expectations", "", "```", summary, "```", ""]
    parts.append(f"Table digest `{digest[:16]}`, from the scoring run `{table.get('run_id')}`.")
    stored = get_json(s3, challenge.buckets.results, APPROVAL) if _approved(s3, challenge) else {}
    return {
        "markdown": "\n".join(parts),
        "digest": digest,
        "approved": stored.get("digest") == digest,
        "approved_by": stored.get("by"),
    }


def _approved(s3: Any, challenge: Challenge) -> bool:
    return object_exists(s3, challenge.buckets.results, APPROVAL)


def record_approval(s3: Any, challenge: Challenge, digest: str, by: str | None) -> dict:
    """Keep that ``digest``'s table was approved, by whom and when."""
    approval = {
        "digest": digest,
        "by": by or "unknown",
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    put_json(s3, challenge.buckets.results, APPROVAL, approval)
    return approval
