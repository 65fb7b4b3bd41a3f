"""The scored records of the frozen final set: the one loader of the ranking's input.

The frozen manifest (:data:`~mai_ops.infra.layout.FROZEN_MANIFEST`) lists each team's
frozen submission per track with its sha256; each one's record is stored at
:func:`~mai_ops.infra.layout.score_key` of (track, team, sha256). A submission frozen but
not scored yet has no record: it comes back as a stand-in whose ``status`` is
:data:`NOT_SCORED`, so a caller can list it; the ranking refuses it.
"""

from __future__ import annotations

from typing import Any

from mai_ops.errors import NeedsOrganizer
from mai_ops.infra.layout import FINAL_PHASE, FROZEN_MANIFEST, score_key
from mai_ops.infra.storage import get_json, is_missing

NOT_SCORED = "not_scored"


class NoFrozenSet(NeedsOrganizer):
    """Results were asked for before the final set was frozen."""


def load_final_records(s3: Any, challenge: Any) -> list[dict]:
    """One record per frozen submission, in the manifest's order.

    Each is the stored record, with ``track``, ``team``, ``sha256`` and ``uploaded_at``
    taken from the manifest entry where the record lacks them. A submission without a
    record is ``{"track", "team", "sha256", "uploaded_at", "phase": "final", "status":
    "not_scored", "key"}`` (``key``: where its record will be). Raises
    :class:`NoFrozenSet` when there is no manifest.
    """
    bucket = challenge.buckets.results
    try:
        manifest = get_json(s3, bucket, FROZEN_MANIFEST)
    except s3.exceptions.ClientError as exc:
        if not is_missing(exc):
            raise
        raise NoFrozenSet(
            f"no frozen final set for {challenge.id}: s3://{bucket}/{FROZEN_MANIFEST} does not "
            "exist; run the final collection first"
        ) from None
    records = []
    for entry in manifest.get("frozen", []):
        key = score_key(entry["track"], entry["team"], entry["sha256"])
        try:
            record = get_json(s3, bucket, key)
        except s3.exceptions.ClientError as exc:
            if not is_missing(exc):
                raise
            record = {"phase": FINAL_PHASE, "status": NOT_SCORED, "key": key}
        for field in ("track", "team", "sha256", "uploaded_at"):
            if record.get(field) is None:
                record[field] = entry.get(field)
        records.append(record)
    return records
