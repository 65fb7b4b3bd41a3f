"""``mai-ops validate`` and ``mai-ops timeline``: the challenge files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mai_ops.challenge.config import (
    ChallengeConfigError,
    challenge_files,
    default_challenges_dir,
    find_challenge_file,
    load_challenge,
    read_challenge,
    validate_files,
)
from mai_ops.challenge.participants import check_participants_file
from mai_ops.challenge.timeline import timeline_rows


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check challenge files (default: every shipped one)")
    p.add_argument("paths", nargs="*", help="challenge YAML files")
    p.set_defaults(func=_validate)

    p = sub.add_parser("timeline", help="every event with its local time, UTC instant and DAG")
    p.add_argument("challenge", help="challenge id, e.g. mai2021")
    p.add_argument("--file", help="read this file instead of looking the id up")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=_timeline)


def _validate(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.paths] or challenge_files()
    if not paths:
        print(f"no challenge files in {default_challenges_dir()}", file=sys.stderr)
        return 1
    problems = validate_files(paths)
    bad_files = {p.file for p in problems if p.severity == "error"}
    for path in paths:  # the registered teams, when the list is a file next to it
        challenge, _ = read_challenge(path)
        found = check_participants_file(challenge, path) if challenge is not None else []
        problems += found
        if any(p.severity == "error" for p in found):
            bad_files.add(str(path))
    for problem in problems:
        print(problem, file=sys.stderr if problem.severity == "error" else sys.stdout)
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    print(
        f"{len(paths) - len(bad_files)} of {len(paths)} file(s) valid, "
        f"{errors} error(s), {warnings} warning(s)"
    )
    return 1 if errors else 0


def _timeline(args: argparse.Namespace) -> int:
    try:
        path = Path(args.file) if args.file else find_challenge_file(args.challenge)
        challenge = load_challenge(path)
    except LookupError as exc:
        print(exc, file=sys.stderr)
        return 2
    except ChallengeConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    rows = timeline_rows(challenge)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{challenge.title} ({challenge.id}), times in {challenge.timezone}")
    width = max(len(r["name"]) for r in rows)
    locals_ = [r["local"] or f"{r['date']} (not fixed, nothing scheduled)" for r in rows]
    lwidth = max(len(x) for x in locals_)
    for row, local in zip(rows, locals_, strict=True):
        utc = row["utc"] or "-"
        print(f"  {row['name']:<{width}}  {local:<{lwidth}}  {utc:<20}  {row['dag_id'] or '-'}")
        for reminder in row["reminders"]:
            label = f"reminder {reminder['days_before']}d before"
            when, dag = reminder["utc"], reminder["dag_id"]
            print(f"  {'':<{width}}  {label:<{lwidth}}  {when:<20}  {dag}")
    return 0
