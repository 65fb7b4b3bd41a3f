"""The ranked table of the final phase, computed from the scored records.

Every ``ok`` record's score is computed again with the track's formula
(:func:`mai_ops.models.fidelity.score_with_reason`, the scorer of the scoring stage),
with the track's constants or an organizer's overrides, so a table always matches the
constants it names. A record whose formula cannot be computed on its values (an
overflow, a division by zero, a variable not measured) becomes a failed row with
``score_not_computable``; the others are ranked.

The ranking rule, per track:

1. the higher score first;
2. equal scores: the better fidelity on the track's first metric (higher ``psnr``,
   ``ssim``, ``top1``, ``top3``; lower ``si_rmse``, ``rmse``: the directions of
   :data:`mai_ops.models.metrics.METRICS`);
3. then the earlier final upload (``uploaded_at``, the storage server's time);
4. rows equal on all three share a rank, and ranks are dense (1, 2, 2, 3).

Failed and excluded rows follow the ranked ones, with rank None, by team.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from typing import Any

from mai_ops.errors import NeedsOrganizer
from mai_ops.infra.layout import FINAL_PHASE
from mai_ops.models.fidelity import score_with_reason
from mai_ops.models.metrics import METRICS
from mai_ops.results.records import NOT_SCORED

RANKED, FAILED, EXCLUDED = "ok", "failed", "excluded"
ROW_STATUSES = (RANKED, FAILED, EXCLUDED)
NOT_COMPUTABLE = "score_not_computable"


class RankingError(NeedsOrganizer, ValueError):
    """The ranking cannot be computed as asked (an unknown track or constant, a record
    of another track, a submission not scored yet)."""


# ---------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------


def effective_constants(track: Any, overrides: Mapping[str, float] | None = None) -> dict:
    """The track's constants with ``overrides`` in place; an unknown name is an error."""
    constants = dict(track.score.constants)
    for name, value in (overrides or {}).items():
        if name not in constants:
            raise RankingError(_unknown_constant(name, [track]))
        constants[name] = _constant_value(name, value)
    return constants


def split_constants(
    tracks: Iterable[Any], overrides: Mapping[str, float] | None
) -> dict[str, dict[str, float]]:
    """Each track's share of ``overrides``: a name applies to every track that has it.

    A name no track has is an error naming it and the tracks' constants.
    """
    tracks = list(tracks)
    shares: dict[str, dict[str, float]] = {t.id: {} for t in tracks}
    for name, value in (overrides or {}).items():
        owners = [t for t in tracks if name in t.score.constants]
        if not owners:
            raise RankingError(_unknown_constant(name, tracks))
        for track in owners:
            shares[track.id][name] = _constant_value(name, value)
    return shares


def _constant_value(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RankingError(f"constant {name}: {value!r} is not a number") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise RankingError(f"constant {name}: {value!r} is not a finite number")
    return number


def _unknown_constant(name: str, tracks: list[Any]) -> str:
    known = "; ".join(f"{t.id}: {', '.join(sorted(t.score.constants)) or 'none'}" for t in tracks)
    return f"unknown constant {name!r} (constants of {known})"


# ---------------------------------------------------------------------------------
# Ranking
# ---------------------------------------------------------------------------------


def rank_track(
    track: Any, records: Iterable[Mapping[str, Any]], constants: Mapping[str, float] | None = None
) -> list[dict]:
    """The rows of one track: ranked rows first (rank 1 is best), then the others by team.

    ``constants`` override the track's (:func:`effective_constants`). Each row has
    ``rank``, ``team``, ``track``, ``status`` (``ok``, ``failed``, ``excluded``),
    ``score``, one key per metric of the track, ``runtime_ms``, ``device``,
    ``backend``, ``flags``, ``error`` (the first error's code, or None),
    ``error_message``, ``sha256`` and ``uploaded_at``.
    """
    effective = effective_constants(track, constants)
    ranked, others = [], []
    not_scored = []
    for record in records:
        if record.get("track") != track.id:
            raise RankingError(
                f"a record of track {record.get('track')!r} (team {record.get('team')!r}) "
                f"was given to rank track {track.id!r}"
            )
        if record.get("status") == NOT_SCORED:
            not_scored.append(str(record.get("team")))
            continue
        row = _row(track, record, effective)
        (ranked if row["status"] == RANKED else others).append(row)
    if not_scored:
        raise RankingError(
            f"{track.id}: not scored yet: {', '.join(sorted(not_scored))}; score every frozen "
            "submission before ranking"
        )
    ranked.sort(key=lambda row: _order(track, row))
    rank, previous = 0, None
    for row in ranked:
        key = _order(track, row)
        if key != previous:
            rank, previous = rank + 1, key
        row["rank"] = rank
    others.sort(key=lambda row: str(row["team"]))
    return ranked + others


def _row(track: Any, record: Mapping[str, Any], constants: dict[str, float]) -> dict:
    metrics = record.get("metrics") or {}
    runtime_ms = record.get("runtime_ms")
    errors = record.get("errors") or []
    first = errors[0] if errors else {}
    row: dict[str, Any] = {
        "rank": None,
        "team": record.get("team"),
        "track": track.id,
        "status": FAILED,
        "score": None,
        **{m: metrics.get(m) for m in track.metrics},
        "runtime_ms": runtime_ms,
        "device": record.get("device"),
        "backend": (record.get("runtime") or {}).get("backend"),
        "flags": list(record.get("flags") or []),
        "error": first.get("code"),
        "error_message": first.get("message"),
        "sha256": record.get("sha256"),
        "uploaded_at": record.get("uploaded_at"),
    }
    if record.get("status") != "ok":
        return row
    score, reason = score_with_reason(track, metrics, runtime_ms, constants=constants)
    if score is None:
        row.update(error=NOT_COMPUTABLE, error_message=reason)
        return row
    row.update(score=score, status=EXCLUDED if record.get("excluded") else RANKED)
    return row


def _order(track: Any, row: Mapping[str, Any]) -> tuple:
    """Sort key of a ranked row: score, then fidelity, then upload time (best first)."""
    return (-row["score"], fidelity_key(track, row), _instant(row.get("uploaded_at")))


def fidelity_key(track: Any, row: Mapping[str, Any]) -> tuple:
    """The track's first metric, better first (in its direction); a missing value last."""
    metric = track.metrics[0]
    value = row.get(metric)
    if value is None or not math.isfinite(value):
        return (1, 0.0)
    return (0, -value if METRICS[metric].higher_is_better else value)


_NEVER = dt.datetime.max.replace(tzinfo=dt.UTC)


def _instant(text: str | None) -> dt.datetime:
    if not text:
        return _NEVER
    when = dt.datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def rank_challenge(
    challenge: Any,
    records: Iterable[Mapping[str, Any]],
    track: str | None = None,
    constants: Mapping[str, float] | None = None,
) -> dict:
    """The ranked table of the final phase.

    ``{"challenge", "phase": "final", "tracks": {track_id: {"formula", "constants",
    "metrics", "device", "rows"}}}``, tracks in the challenge's order, each with its
    effective constants; a track without records has no rows. ``track`` narrows the
    table to one track (records of the others are left out). ``constants``
    (name -> value) override a track's constant of that name; without ``track`` a
    name applies to every track that has it. An unknown track or constant name is a
    :class:`RankingError`, as is a record of a track the challenge does not have.
    """
    if track is None:
        tracks = list(challenge.tracks)
    else:
        try:
            tracks = [challenge.track(track)]
        except KeyError:
            known = ", ".join(t.id for t in challenge.tracks) or "none"
            raise RankingError(
                f"challenge {challenge.id} has no track {track!r} (known: {known})"
            ) from None
    shares = split_constants(tracks, constants)
    by_track: dict[str, list] = {t.id: [] for t in tracks}
    known_tracks = {t.id for t in challenge.tracks}
    for record in records:
        if record.get("track") in by_track:
            by_track[record["track"]].append(record)
        elif record.get("track") not in known_tracks:
            raise RankingError(
                f"a record of team {record.get('team')!r} names track {record.get('track')!r}, "
                f"which challenge {challenge.id} does not have"
            )
    table: dict[str, Any] = {"challenge": challenge.id, "phase": FINAL_PHASE, "tracks": {}}
    for t in tracks:
        table["tracks"][t.id] = {
            "formula": t.score.formula,
            "constants": effective_constants(t, shares[t.id]),
            "metrics": list(t.metrics),
            "device": t.device,
            "rows": rank_track(t, by_track[t.id], shares[t.id]),
        }
    return table


# ---------------------------------------------------------------------------------
# Moved ranks
# ---------------------------------------------------------------------------------


def moved_ranks(old_table: Mapping[str, Any] | None, new_table: Mapping[str, Any]) -> list[dict]:
    """Every (track, team) whose rank differs between the tables.

    A row missing from a table counts as rank None there, so a team entering or
    leaving the ranking is listed; a row unranked in both is not. Each entry is
    ``{track, team, old_rank, new_rank, old_score, new_score}``, sorted by track, then
    new rank (unranked last), then old rank, then team.
    """
    old = _rows_by_key(old_table)
    new = _rows_by_key(new_table)
    moved = []
    for key in old.keys() | new.keys():
        before, after = old.get(key, {}), new.get(key, {})
        if before.get("rank") == after.get("rank"):
            continue
        moved.append(
            {
                "track": key[0],
                "team": key[1],
                "old_rank": before.get("rank"),
                "new_rank": after.get("rank"),
                "old_score": before.get("score"),
                "new_score": after.get("score"),
            }
        )

    def last_if_none(rank: int | None) -> tuple:
        return (rank is None, rank or 0)

    moved.sort(
        key=lambda m: (
            m["track"],
            last_if_none(m["new_rank"]),
            last_if_none(m["old_rank"]),
            m["team"],
        )
    )
    return moved


def _rows_by_key(table: Mapping[str, Any] | None) -> dict[tuple[str, str], dict]:
    rows = {}
    for track_id, entry in ((table or {}).get("tracks") or {}).items():
        for row in entry.get("rows", []):
            rows[(track_id, str(row.get("team")))] = row
    return rows


# ---------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------


def format_number(value: Any) -> str:
    """A score or a measurement in a table: 6 significant digits, ``-`` for none."""
    if value is None:
        return "-"
    if isinstance(value, float | int) and not isinstance(value, bool):
        return format(value, ".6g")
    return str(value)


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [
        line(r) for r in rows
    ]


def render_moved(moved: list[dict]) -> str:
    """The moved ranks as a short Markdown table (plain text in a task log)."""
    if not moved:
        return "no rank moved"
    rows = [
        [
            m["track"],
            m["team"],
            f"{format_number(m['old_rank'])} -> {format_number(m['new_rank'])}",
            f"{format_number(m['old_score'])} -> {format_number(m['new_score'])}",
        ]
        for m in moved
    ]
    return "\n".join(_markdown(["track", "team", "rank", "score"], rows))


def render_track(track_id: str, entry: Mapping[str, Any]) -> str:
    """One track of a ranked table as a Markdown table, under a line naming its formula."""
    constants = ", ".join(f"{k}={format_number(v)}" for k, v in entry["constants"].items())
    lines = [
        f"{track_id} (device {entry['device']}): {entry['formula']}"
        + (f" with {constants}" if constants else "")
    ]
    if not entry["rows"]:
        return "\n".join([*lines, "no submissions"])
    header = ["rank", "team", "status", "score", *entry["metrics"], "runtime_ms", "backend"]
    header += ["flags", "error"]
    rows = [
        [
            format_number(r["rank"]),
            str(r["team"]),
            r["status"],
            format_number(r["score"]),
            *(format_number(r.get(m)) for m in entry["metrics"]),
            format_number(r["runtime_ms"]),
            format_number(r["backend"]),
            ", ".join(r["flags"]) or "-",
            r["error"] or "-",
        ]
        for r in entry["rows"]
    ]
    return "\n".join(lines + _markdown(header, rows))
