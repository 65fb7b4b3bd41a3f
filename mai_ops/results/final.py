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


class ResultsIncomplete(NeedsOrganizer):
    """Some frozen submission has no stored record yet."""


def per_track_constants(
    challenge: Challenge, track: str | None, constants: dict[str, Any] | None
) -> dict[str, dict[str, float]]:
    """Which tracks the ``constants`` override applies to, each with its own names.

    One track chosen: all the names must be its constants. Every track: each track gets
    the names it has, and at least one track must have each name.
    """
    if not constants:
        return {}
    chosen = [t for t in challenge.tracks if not track or track == "all" or t.id == track]
    values = {}
    for name, value in constants.items():
        try:
            values[name] = float(value)
        except (TypeError, ValueError):
            raise NeedsOrganizer(f"constant {name}={value!r} is not a number") from None
    out = {}
    for t in chosen:
        mine = {k: v for k, v in values.items() if k in t.score.constants}
        if mine:
            out[t.id] = mine
    known = {k for t in chosen for k in t.score.constants}
    unknown = sorted(set(values) - known)
    if unknown:
        where = track if track and track != "all" else "any track"
        raise NeedsOrganizer(
            f"unknown score constant(s) {', '.join(unknown)} for {where} "
            f"(known: {', '.join(sorted(known)) or 'none'})"
        )
    return out


def rank_all(
    s3: Any, challenge: Challenge, track: str | None = None, constants: dict | None = None
) -> tuple[dict, list[str]]:
    """(ranked table of every track, frozen submissions without a record)."""
    from mai_ops.results.ranking import rank_challenge
    from mai_ops.results.store import load_final_records

    records, unscored = load_final_records(s3, challenge)
    overrides = per_track_constants(challenge, track, constants)
    table = rank_challenge(challenge, records)
    for track_id, values in overrides.items():
        table["tracks"][track_id] = rank_challenge(challenge, records, track_id, values)["tracks"][
            track_id
        ]
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

    Raises :class:`ResultsIncomplete` when a frozen submission has no record and
    :class:`ResultsNotValid` when validation fails (both after keeping the run's table).
    """
    from mai_ops.results.expectations import validate_table
    from mai_ops.results.ranking import format_moved, moved_ranks

    bucket = challenge.buckets.results
    table, unscored = rank_all(s3, challenge, track, constants)
    table["run_id"] = run_id
    report = validate_table(challenge, table)
    table["validation"] = {"success": report.success, "summary": report.summary()}
    table["validated"] = report.success and not unscored
    previous = get_json(s3, bucket, RANKING) if object_exists(s3, bucket, RANKING) else None
    moved = moved_ranks(previous, table) if previous else []
    put_json(s3, bucket, ranking_run_key(run_id), table)
    lines = [report.summary()]
    if previous:
        lines.append("ranks moved against the stored results:\n" + format_moved(moved))
    if unscored:
        raise ResultsIncomplete(
            "not scored yet, nothing stored as the results: " + ", ".join(unscored)
        )
    if not report.success:
        raise ResultsNotValid(
            "the ranked table failed validation, nothing is published:\n" + report.summary()
        )
    applied = not per_track_constants(challenge, track, constants) or apply
    if applied:
        put_json(s3, bucket, RANKING, table)
    else:
        lines.append("other constants not applied: the stored results are unchanged")
    return {
        "applied": applied,
        "moved": moved,
        "ranked": {t: len(v["rows"]) for t, v in table["tracks"].items()},
        "report": "\n".join(lines),
    }
