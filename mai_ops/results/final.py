"""The final phase's results: rank the stored records, validate, store the table.

A scoring run ranks every track from the stored records of the frozen set (a re-score
of one team still ranks its whole track), validates the table with the Great
Expectations suite, keeps it under the run's key and, when it passed and either uses
the config's constants or the organizer asked to apply other ones, stores it as the
results (:data:`~mai_ops.infra.layout.RANKING`), which the preliminary results publish.
"""

from __future__ import annotations

from typing import Any

from mai_ops.challenge.config import Challenge
from mai_ops.errors import NeedsOrganizer
from mai_ops.infra.layout import RANKING, ranking_run_key
from mai_ops.infra.storage import get_json, object_exists, put_json


class ResultsNotValid(NeedsOrganizer):
    """The ranked table failed validation: nothing is stored as the results."""


def rank_all(
    s3: Any, challenge: Challenge, track: str | None = None, constants: dict | None = None
) -> tuple[dict, list[str]]:
    """(ranked table of every track, frozen submissions without a record).

    ``constants`` apply to ``track`` (or, for every track, to each track that has
    them); the other tracks are ranked with the config's constants.
    """
    from mai_ops.results.ranking import rank_challenge
    from mai_ops.results.records import NOT_SCORED, load_final_records

    records = load_final_records(s3, challenge)
    unscored = [f"{r['track']}/{r['team']}" for r in records if r["status"] == NOT_SCORED]
    scored = [r for r in records if r["status"] != NOT_SCORED]
    table = rank_challenge(challenge, scored)
    if constants:
        chosen = track if track and track != "all" else None
        tried = rank_challenge(challenge, scored, chosen, constants)
        for track_id, ranked in tried["tracks"].items():
            if ranked["constants"] != table["tracks"][track_id]["constants"]:
                table["tracks"][track_id] = ranked
    return table, unscored


def rank_and_store(
    s3: Any,
    challenge: Challenge,
    run_id: str,
    track: str | None = None,
    constants: dict | None = None,
    apply: bool = False,
) -> dict:
    """Rank, validate and store; returns what happened and a report for the log.

    A frozen submission without a record (a run that measured one team first) leaves
    the stored results as they are. Raises :class:`ResultsNotValid` when validation
    fails, after keeping the run's table.
    """
    from mai_ops.results.expectations import validate_table
    from mai_ops.results.ranking import moved_ranks, render_moved

    bucket = challenge.buckets.results
    table, unscored = rank_all(s3, challenge, track, constants)
    table["run_id"] = run_id
    report = validate_table(challenge, table)
    table["validation"] = {"success": report.success, "summary": report.summary()}
    table["validated"] = report.success
    table["not_scored"] = unscored
    previous = get_json(s3, bucket, RANKING) if object_exists(s3, bucket, RANKING) else None
    moved = moved_ranks(previous, table) if previous else []
    put_json(s3, bucket, ranking_run_key(run_id), table)
    lines = [report.summary()]
    if previous:
        lines.append("ranks moved against the stored results:\n" + render_moved(moved))
    if not report.success:
        raise ResultsNotValid(
            "the ranked table failed validation, nothing is published:\n" + report.summary()
        )
    applied = (not constants or apply) and not unscored
    if unscored:
        lines.append(
            f"{len(unscored)} frozen submission(s) not scored yet, so this ranking is kept as "
            "the run's and the stored results are unchanged: " + ", ".join(unscored)
        )
    elif applied:
        put_json(s3, bucket, RANKING, table)
    else:
        lines.append("other constants not applied: the stored results are unchanged")
    return {
        "applied": applied,
        "not_scored": unscored,
        "moved": moved,
        "ranked": {t: len(v["rows"]) for t, v in table["tracks"].items()},
        "report": "\n".join(lines),
    }
