"""``mai-ops check-submission`` and ``mai-ops history``: one submission, one team's uploads.

``check-submission`` unpacks and checks an archive as the validation server does: exit
0 when the submission passes, 1 when it is rejected, 2 on a usage error. ``history``
lists every upload of a team with what became of it and the emails sent: exit 0, 1
when the storage cannot be read, 2 for an unknown challenge or team.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

from mai_ops.challenge.config import ChallengeConfigError, find_challenge_file, load_challenge
from mai_ops.submissions.history import (
    UnknownTeam,
    registered_team,
    render_history,
    team_history,
)
from mai_ops.submissions.intake import SubmissionReport, check_submission


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-submission",
        help="unpack and check a submission archive as the validation server does",
        description=(
            "Unpack a submission .zip safely, convert a SavedModel/Keras model if there is "
            "no model.tflite, and run the track's conversion checks on model.tflite (and "
            "model_none.tflite). Exit 0 when the submission passes, 1 when it is rejected, "
            "2 on a usage error."
        ),
    )
    p.add_argument("archive", help="path to the submission .zip")
    p.add_argument("--challenge", required=True, help="challenge id (include/challenges/<id>.yaml)")
    p.add_argument("--track", required=True, help="track id within the challenge")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_check_submission_command)

    p = sub.add_parser(
        "history",
        help="every upload of one team: verdict, codes, numbers and the emails sent",
        description=(
            "Every upload of one team, oldest first: validation uploads with their stored "
            "records (verdict, error codes, runtime, metrics, score), final-phase uploads "
            "as received, frozen or late with their score record, and the emails sent "
            "about each. Reads the storage through the aws_default Airflow connection, "
            "as the tasks do. Exit 0, 1 when the storage cannot be read, 2 for an "
            "unknown challenge or team."
        ),
    )
    p.add_argument("--challenge", required=True, help="challenge id (include/challenges/<id>.yaml)")
    p.add_argument("--team", required=True, help="a registered team id")
    p.add_argument("--json", action="store_true", help="print a JSON list of the uploads")
    p.set_defaults(func=_history_command)


def _check_submission_command(args: argparse.Namespace) -> int:
    def usage(message: str) -> int:
        print(f"mai-ops check-submission: error: {message}", file=sys.stderr)
        return 2

    archive = Path(args.archive)
    if not archive.is_file():
        return usage(f"no file {archive}")
    try:
        challenge = load_challenge(find_challenge_file(args.challenge))
    except LookupError as exc:
        return usage(str(exc))
    except ChallengeConfigError as exc:
        return usage(f"challenge {args.challenge!r} does not load:\n{exc}")
    if args.track not in {t.id for t in challenge.tracks}:
        known = ", ".join(t.id for t in challenge.tracks) or "none"
        return usage(f"challenge {challenge.id} has no track {args.track!r} (known: {known})")
    with tempfile.TemporaryDirectory(prefix="mai-ops-submission-") as tmp:
        report = check_submission(archive, challenge, args.track, tmp)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(format_submission_report(report))
    return 0 if report.ok else 1


def format_submission_report(report: SubmissionReport) -> str:
    """The report as text for a terminal or an email."""
    lines = [f"{'PASS' if report.ok else 'FAIL'} {report.archive} (track {report.track})"]
    lines += [f"  [{e['code']}] {e['message']}" for e in report.errors]
    lines += [f"  note: {w}" for w in report.warnings]
    if report.converted_from:
        lines.append(f"  converted from: {report.converted_from}")
    for label, checked in (
        ("model.tflite", report.model),
        ("model_none.tflite", report.model_none),
    ):
        if not checked:
            continue
        for kind in ("inputs", "outputs"):
            for i, t in enumerate(checked[kind]):
                lines.append(f"  {label} {kind[:-1]} {i}: {t['name']} {t['shape']} {t['dtype']}")
        if checked["ops"]:
            lines.append(f"  {label} ops: {', '.join(checked['ops'])}")
    if report.files:
        lines.append(f"  files ({len(report.files)}): {', '.join(report.files[:20])}")
        if len(report.files) > 20:
            lines[-1] += f" and {len(report.files) - 20} more"
    return "\n".join(lines)


def _history_command(args: argparse.Namespace) -> int:
    def usage(message: str) -> int:
        print(f"mai-ops history: error: {message}", file=sys.stderr)
        return 2

    try:
        path = find_challenge_file(args.challenge)
        challenge = load_challenge(path)
    except LookupError as exc:
        return usage(str(exc))
    except ChallengeConfigError as exc:
        return usage(f"challenge {args.challenge!r} does not load:\n{exc}")
    # The tasks' own way to the storage and the teams: the aws_default connection
    # (S3Hook, which imports Airflow) and the participants list. Airflow logs to
    # stdout; its notices (a missing connection) go to stderr, so --json stays JSON.
    from botocore.exceptions import BotoCoreError, ClientError

    from mai_ops.errors import NeedsOrganizer
    from mai_ops.tasks import PhaseRun

    run = PhaseRun(path, challenge)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            team = registered_team(challenge, run.teams, args.team)
            entries = team_history(run.s3, challenge, team.team_id)
    except UnknownTeam as exc:
        return usage(str(exc))
    except (NeedsOrganizer, BotoCoreError, ClientError) as exc:
        print(f"mai-ops history: cannot read {challenge.id}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(entries, indent=2))
    else:
        print("\n".join(render_history(entries, team.team_id, challenge.id)))
    return 0
