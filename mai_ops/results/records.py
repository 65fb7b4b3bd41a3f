"""The scored records of the frozen final set: the one loader of the ranking's input.

The frozen manifest (:data:`~mai_ops.infra.layout.FROZEN_MANIFEST`) lists each team's
frozen submission per track with its sha256; each one's record is stored at
:func:`~mai_ops.infra.layout.score_key` of (track, team, sha256). A submission frozen but
not scored yet has no record: it comes back as a stand-in whose ``status`` is
:data:`NOT_SCORED`, so a caller can list it; the ranking refuses it.
"""

from __future__ import annotations

from typing import Any

from mai_ops.infra.layout import FINAL_PHASE, score_key
from mai_ops.submissions.scoring import frozen_entries, scored_record

NOT_SCORED = "not_scored"


def load_final_records(s3: Any, challenge: Any) -> list[dict]:
    """One record per frozen submission, in the manifest's order.

    Each is the stored record, with ``track``, ``team``, ``sha256`` and ``uploaded_at``
    taken from the manifest entry where the record lacks them. A submission without a
    record is ``{"track", "team", "sha256", "uploaded_at", "phase": "final", "status":
    "not_scored", "key"}`` (``key``: where its record will be). Raises
    :class:`~mai_ops.submissions.scoring.NoFrozenSet` when there is no manifest.
    """
    records = []
    for entry in frozen_entries(s3, challenge):
        record = scored_record(s3, challenge, entry)
        if record is None:
            key = score_key(entry["track"], entry["team"], entry["sha256"])
            record = {"phase": FINAL_PHASE, "status": NOT_SCORED, "key": key}
        for field in ("track", "team", "sha256", "uploaded_at"):
            if record.get(field) is None:
                record[field] = entry.get(field)
        records.append(record)
    return records
