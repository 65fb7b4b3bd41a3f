"""The registered teams a challenge writes to.

Organizers keep the list as a CSV (team_id, team_name, email, tracks separated by
';'), next to the challenge file or in the organizers' bucket. A file saved by a
spreadsheet reads the same: UTF-8 with or without a byte-order mark, ``,`` or ``;``
between the columns (the header line tells which), CRLF or LF line ends, blank rows.
A broken row is reported with its line number and skipped: one typo must not
silence the notices of every other team. A list with no team at all is an error
(:class:`ParticipantsError`), never a warning: every upload would be refused as
``unknown_team`` and nobody would hear anything. ``mai-ops validate`` reports every
problem of the list (:func:`check_participants_file`).
"""

from __future__ import annotations

import csv
import hashlib
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
    text = text.removeprefix("\ufeff")
    if not text.strip():
        return [], [Problem(source, "line 1", "the file is empty: no team registered")]
    header = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = ";" if header.count(";") > header.count(",") else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    if reader.fieldnames:
        reader.fieldnames = [(name or "").strip().lower() for name in reader.fieldnames]
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        found = ", ".join(repr(n) for n in reader.fieldnames or []) or "nothing"
        return [], [
            Problem(
                source,
                "line 1",
                f"missing column(s): {', '.join(missing)} (the header has {found}; "
                "columns separated by ',' or ';')",
            )
        ]
    known_tracks = {t.id for t in challenge.tracks}
    teams: list[Team] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for row in reader:
        where = f"line {reader.line_num}"
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue  # a blank row, as spreadsheets leave at the end
        team_id = (row.get("team_id") or "").strip()
        email = (row.get("email") or "").strip()
        tracks = tuple(t for t in re.split(r"[;,\s]+", row.get("tracks") or "") if t)
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


def registry_fingerprint(teams: list[Team]) -> str:
    """A digest of what the upload rules read of the list: each team id and its tracks."""
    rows = sorted(f"{t.team_id}:{','.join(sorted(t.tracks))}" for t in teams)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]


class ParticipantsError(NeedsOrganizer):
    """The participants list cannot be read at all."""


def participants_file(challenge: Challenge, challenge_file: str | Path) -> Path | None:
    """The participants CSV of a ``file`` source, resolved next to the challenge file."""
    source = challenge.participants
    if source is None or source.source != "file":
        return None
    return (Path(challenge_file).parent / source.path).resolve()


def _read_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ParticipantsError(
            f"{path}: line {line}: not UTF-8 ({exc.reason}); save the list as CSV UTF-8"
        ) from None
    except OSError as exc:
        raise ParticipantsError(f"cannot read participants file {path}: {exc}") from None


def check_participants_file(challenge: Challenge, challenge_file: str | Path) -> list[Problem]:
    """Every problem of a challenge's participants CSV, for ``mai-ops validate``.

    Each bad row is an error naming the file and the line; so is a list with no team.
    A list in object storage is not read here (the tasks read it).
    """
    path = participants_file(challenge, challenge_file)
    if path is None:
        return []
    try:
        text = _read_file(path)
    except ParticipantsError as exc:
        return [Problem(str(challenge_file), "participants.path", str(exc))]
    teams, problems = parse_participants(text, str(path), challenge)
    if not teams and not any(p.field == "line 1" for p in problems):
        problems.append(Problem(str(path), "", "no team registered: the list has no valid row"))
    return problems


def load_teams(challenge: Challenge, challenge_file: str | Path, s3: Any = None) -> list[Team]:
    """The registered teams; bad rows are logged and skipped; no team at all raises.

    An unreadable list, a list without the required columns and a list with no valid
    row raise :class:`ParticipantsError`, naming the file (and the line).
    """
    source = challenge.participants
    if source is None:
        return []
    if source.source == "file":
        path = participants_file(challenge, challenge_file)
        text = _read_file(path)
        name = str(path)
    else:
        if s3 is None:
            raise ParticipantsError(
                "participants live in object storage but no S3 client was given"
            )
        bucket = challenge.buckets.organizers
        try:
            body = s3.get_object(Bucket=bucket, Key=source.path)["Body"].read()
            text = body.decode("utf-8-sig")
        except (s3.exceptions.ClientError, UnicodeDecodeError) as exc:
            raise ParticipantsError(f"cannot read s3://{bucket}/{source.path}: {exc}") from None
        name = f"s3://{bucket}/{source.path}"
    teams, problems = parse_participants(text, name, challenge)
    for problem in problems:
        log.warning("skipping a participant row: %s", problem)
    if not teams:
        reasons = "; ".join(str(p) for p in problems[:5]) or f"{name}: the list has no row"
        raise ParticipantsError(
            f"no team registered in {name}: every upload would be refused as unknown_team "
            f"and no notice sent. {reasons}"
        )
    return teams
