"""``mai-ops score``: the final ranking computed again from the stored records, read only.

It reads the frozen manifest and each frozen submission's record, ranks them with the
track's formula and constants (or the constants given with ``--set``), and shows each
track's table and the ranks that moved against the ranking in force. It writes nothing.
Exit 0, 1 when the storage cannot be read or the records cannot be ranked, 2 on a usage
error (an unknown challenge, track or constant, a value that is not a number).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from typing import Any

from mai_ops.challenge.config import ChallengeConfigError, find_challenge_file, load_challenge
from mai_ops.infra.layout import FINAL_PHASE, RANKING
from mai_ops.results.ranking import (
    RankingError,
    moved_ranks,
    rank_challenge,
    render_moved,
    render_track,
    split_constants,
)
from mai_ops.results.records import NOT_SCORED, load_final_records


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="rank the scored final submissions again (other constants with --set); writes nothing",
        description=(
            "Read the frozen final set and each submission's stored record, compute every "
            "score again with the track's formula (and the constants given with --set), "
            "rank them (higher score, then better fidelity, then earlier upload; dense "
            "ranks) and print each track's table with the ranks that moved against the "
            "ranking in force. Submissions not scored yet are listed as such. Reads the "
            "storage through the aws_default Airflow connection, as the tasks do, and "
            "writes nothing. Exit 0, 1 when the storage cannot be read or the records "
            "cannot be ranked, 2 on a usage error."
        ),
    )
    p.add_argument("--challenge", required=True, help="challenge id (include/challenges/<id>.yaml)")
    p.add_argument("--phase", required=True, choices=[FINAL_PHASE], help="the phase ranked")
    p.add_argument("--track", help="one track only (default: every track)")
    p.add_argument(
        "--set",
        dest="constants",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a score constant in place of the challenge file's (repeatable); without "
        "--track it applies to every track that has it",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help='print {"table", "moved", "not_scored", "compared_with"} as JSON',
    )
    p.set_defaults(func=_score_command)


def parse_constants(items: list[str]) -> dict[str, float]:
    """``["alpha=2", "C=1e15"]`` -> ``{"alpha": 2.0, "C": 1e15}``; ValueError naming the bad one."""
    constants: dict[str, float] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name:
            raise ValueError(f"--set {item!r}: expected NAME=VALUE, e.g. alpha=2")
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"--set {item!r}: {text!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"--set {item!r}: {text!r} is not a finite number")
        if name in constants:
            raise ValueError(f"--set {name} is given twice")
        constants[name] = value
    return constants


def _score_command(args: argparse.Namespace) -> int:
    def usage(message: str) -> int:
        print(f"mai-ops score: error: {message}", file=sys.stderr)
        return 2

    try:
        path = find_challenge_file(args.challenge)
        challenge = load_challenge(path)
    except LookupError as exc:
        return usage(str(exc))
    except ChallengeConfigError as exc:
        return usage(f"challenge {args.challenge!r} does not load:\n{exc}")
    try:
        constants = parse_constants(args.constants)
        tracks = challenge.tracks if args.track is None else [challenge.track(args.track)]
        split_constants(tracks, constants)  # an unknown name, before the storage is read
    except KeyError:
        known = ", ".join(t.id for t in challenge.tracks) or "none"
        return usage(f"challenge {challenge.id} has no track {args.track!r} (known: {known})")
    except ValueError as exc:
        return usage(str(exc))

    # The storage as the tasks reach it: the aws_default connection (S3Hook, which
    # imports Airflow). Airflow logs to stdout; its notices go to stderr, so --json
    # stays JSON.
    from botocore.exceptions import BotoCoreError, ClientError

    from mai_ops.errors import NeedsOrganizer
    from mai_ops.tasks import PhaseRun

    run = PhaseRun(path, challenge)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            records = load_final_records(run.s3, challenge)
            stored = _stored_ranking(run.s3, challenge)
    except (NeedsOrganizer, BotoCoreError, ClientError) as exc:
        print(f"mai-ops score: cannot read {challenge.id}: {exc}", file=sys.stderr)
        return 1
    wanted = [r for r in records if args.track is None or r.get("track") == args.track]
    waiting = [r for r in wanted if r.get("status") == NOT_SCORED]
    try:
        table = rank_challenge(
            challenge,
            [r for r in wanted if r.get("status") != NOT_SCORED],
            track=args.track,
            constants=constants,
        )
    except RankingError as exc:
        print(f"mai-ops score: cannot rank {challenge.id}: {exc}", file=sys.stderr)
        return 1
    if stored is not None and args.track is not None:
        stored = {
            **stored,
            "tracks": {k: v for k, v in (stored.get("tracks") or {}).items() if k == args.track},
        }
    moved = moved_ranks(stored, table) if stored is not None else []
    not_scored = [
        {"track": r["track"], "team": r["team"], "sha256": r["sha256"], "key": r.get("key")}
        for r in waiting
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "table": table,
                    "moved": moved,
                    "not_scored": not_scored,
                    "compared_with": RANKING if stored is not None else None,
                },
                indent=2,
            )
        )
    else:
        print(render_score(table, moved, not_scored, stored is not None, constants))
    return 0


def _stored_ranking(s3: Any, challenge: Any) -> dict | None:
    """The ranked table in force, or None before one is stored."""
    from mai_ops.infra.storage import get_json, is_missing

    try:
        return get_json(s3, challenge.buckets.results, RANKING)
    except s3.exceptions.ClientError as exc:
        if is_missing(exc):
            return None
        raise


def render_score(
    table: dict,
    moved: list[dict],
    not_scored: list[dict],
    compared: bool,
    constants: dict[str, float],
) -> str:
    """Each track's ranked table, its submissions not scored yet and its moved ranks."""
    settings = ", ".join(f"{k}={v:g}" for k, v in constants.items())
    lines = [
        f"{table['challenge']}: final ranking computed again from the stored records "
        f"({'constants set: ' + settings if settings else 'the challenge file constants'}; "
        "nothing written)"
    ]
    for track_id, entry in table["tracks"].items():
        lines += ["", render_track(track_id, entry)]
        waiting = sorted(n["team"] for n in not_scored if n["track"] == track_id)
        if waiting:
            lines.append(f"not scored yet: {', '.join(waiting)}")
        if not compared:
            lines.append(f"moved ranks: no ranking stored yet ({RANKING}), nothing to compare")
            continue
        track_moves = [m for m in moved if m["track"] == track_id]
        lines.append(f"moved ranks against {RANKING}:")
        lines.append(render_moved(track_moves))
    return "\n".join(lines)
