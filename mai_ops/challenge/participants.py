"""The registered teams a challenge writes to.

Organizers keep the list as a CSV (team_id, team_name, email, tracks separated by
';'), next to the challenge file or in the organizers' bucket. A broken row is
reported with its line number and skipped: one typo must not silence the notices
of every other team.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mai_ops.challenge.config import Challenge, Problem
from mai_ops.errors import NeedsOrganizer

REQUIRED_COLUMNS = ("team_id", "team_name", "email")
_EMAIL = re.compile(r"^[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+$")
_TEAM_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Team:
    team_id: str
    name: str
    email: str
    tracks: tuple[str, ...] = ()


def parse_participants(
    text: str, source: str, challenge: Challenge
) -> tuple[list[Team], list[Problem]]:
    """Teams from CSV ``text``; problems name ``source`` and the line."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        return [], [Problem(source, "header", f"missing column(s): {', '.join(missing)}")]
    known_tracks = {t.id for t in challenge.tracks}
    teams: list[Team] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for row in reader:
        where = f"line {reader.line_num}"
        team_id = (row.get("team_id") or "").strip()
        email = (row.get("email") or "").strip()
        tracks = tuple(t.strip() for t in (row.get("tracks") or "").split(";") if t.strip())
        if not _TEAM_ID.match(team_id):
            problems.append(Problem(source, where, f"team_id {team_id!r} is not a valid id"))
            continue
        if team_id in seen:
            problems.append(Problem(source, where, f"duplicate team_id {team_id!r}"))
            continue
        if not _EMAIL.match(email):
            problems.append(Problem(source, where, f"team {team_id!r}: bad email {email!r}"))
            continue
        unknown = [t for t in tracks if t not in known_tracks]
        if unknown:
            problems.append(
                Problem(source, where, f"team {team_id!r}: unknown track(s) {', '.join(unknown)}")
            )
            continue
        seen.add(team_id)
        teams.append(Team(team_id, (row.get("team_name") or team_id).strip(), email, tracks))
    return teams, problems


class ParticipantsError(NeedsOrganizer):
    """The participants list cannot be read at all."""


def load_teams(challenge: Challenge, challenge_file: str | Path, s3: Any = None) -> list[Team]:
    """The registered teams; bad rows are logged and skipped, an unreadable list raises."""
    source = challenge.participants
    if source is None:
        return []
    if source.source == "file":
        path = (Path(challenge_file).parent / source.path).resolve()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ParticipantsError(f"cannot read participants file {path}: {exc}") from None
        name = str(path)
    else:
        if s3 is None:
            raise ParticipantsError(
                "participants live in object storage but no S3 client was given"
            )
        bucket = challenge.buckets.organizers
        try:
            text = s3.get_object(Bucket=bucket, Key=source.path)["Body"].read().decode("utf-8")
        except (s3.exceptions.ClientError, UnicodeDecodeError) as exc:
            raise ParticipantsError(f"cannot read s3://{bucket}/{source.path}: {exc}") from None
        name = f"s3://{bucket}/{source.path}"
    teams, problems = parse_participants(text, name, challenge)
    for problem in problems:
        log.warning("skipping a participant row: %s", problem)
    return teams
