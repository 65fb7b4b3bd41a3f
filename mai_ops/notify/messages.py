"""Every email the pipelines send to teams, one function per kind of message.

Each takes plain data (the challenge, teams, a stored record or manifest) and returns
:class:`~mai_ops.notify.ledger.Notice` objects; the ledger sends each at most once.
The notice key says what the email is about, never when it was sent. This module
gathers what each email says; the wording is in the templates
(``include/templates/email/<kind>.txt`` and ``.html``, :mod:`mai_ops.notify.render`).

- :func:`event_notices`: an event happened (validation server online, workshop).
- :func:`reminder_notices`: an event is some days away.
- :func:`release_notices`: data released, with download links.
- :func:`upload_reply`: the verdict on one validation upload (``validation``, or
  ``rejection`` when the upload rules refused it), or the acknowledgement and pre-check
  of one final upload (``final_upload``, or ``rejection``).
- :func:`receipt_notices`: what was frozen for scoring at the final deadline.
- :func:`preliminary_results_notices`: the team's preliminary results.

Whatever a participant controls (team names, file names, messages) reaches the
templates as one clean line (:func:`~mai_ops.notify.ledger.one_line`) or, for keys and
file names, with its control characters spelled out (:func:`shown_key`); the HTML part
escapes it on top.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from mai_ops.challenge.config import Challenge, Event, Phase, Track
from mai_ops.challenge.participants import Team
from mai_ops.challenge.timeline import Reminder, event_instant
from mai_ops.devices.results import runtime_note
from mai_ops.errors import CODES
from mai_ops.infra.layout import (
    FINAL_PHASE,
    final_upload_team,
    leaderboard_key,
    version_digest,
)
from mai_ops.notify.ledger import Notice, one_line
from mai_ops.notify.render import render
from mai_ops.submissions.evaluation import retryable, runtime_ms
from mai_ops.submissions.intake import final_deadline, utc_and_local

MAX_NAME_CHARS = 100  # a team name as the emails show it
MAX_MESSAGE_CHARS = 600  # one error message or note


def _notice(kind: str, key: str, challenge: Challenge, team: Team, **context: Any) -> Notice:
    """The notice of ``kind`` for ``team``, rendered from its templates."""
    common = {
        "short_name": challenge.short_name,
        "challenge_title": one_line(challenge.title),
        "team_name": one_line(team.name, MAX_NAME_CHARS) or team.team_id,
        "team_id": team.team_id,
        "organizers": list(challenge.organizers),
    }
    subject, text, html = render(kind, common | context)
    return Notice(
        key=key,
        to=team.email,
        subject=subject,
        text=text,
        html=html,
        reply_to=tuple(challenge.organizers),
    )


def _when(challenge: Challenge, event: Event) -> str:
    instant = event_instant(challenge, event)
    if instant is None:
        return event.date.text()
    return instant.strftime("%A %d %B %Y, %H:%M %Z") + f" ({instant.astimezone(dt.UTC):%H:%M} UTC)"


def team_tracks(challenge: Challenge, team: Team) -> list[Track]:
    """The tracks ``team`` registered for (every track when its list names none)."""
    return [t for t in challenge.tracks if not team.tracks or t.id in team.tracks]


def _tracks(challenge: Challenge, team: Team, phase: str) -> list[dict]:
    """The team's tracks with the folder it uploads to in ``phase`` and the limits."""
    return [
        {
            "id": t.id,
            "title": t.title,
            "folder": f"{t.id}/{phase}/{team.team_id}/",
            "per_day": t.limits.per_day,
            "total": t.limits.total,
        }
        for t in team_tracks(challenge, team)
    ]


def event_notices(
    challenge: Challenge, events: list[Event], teams: list[Team], kind: str
) -> list[Notice]:
    """One email per team and event, announcing that the event has happened.

    The validation server's opening also tells each team where to upload, per track it
    registered for, and its limits.
    """
    return [
        _notice(
            "event",
            f"{challenge.id}/{kind}/{event.name}/{team.team_id}",
            challenge,
            team,
            event_title=one_line(event.title),
            when=_when(challenge, event),
            group=event.group,
            validation_server=event.phase == Phase.VALIDATION_SERVER,
            tracks=_tracks(challenge, team, "validation"),
        )
        for event in events
        for team in teams
    ]


def reminder_notices(
    challenge: Challenge, reminders: list[Reminder], teams: list[Team]
) -> list[Notice]:
    """One email per team and reminder; the final deadline's names each final folder."""
    notices = []
    for reminder in reminders:
        event = challenge.event(reminder.event)
        for team in teams:
            notices.append(
                _notice(
                    "reminder",
                    f"{challenge.id}/reminder/{reminder.key}/{team.team_id}",
                    challenge,
                    team,
                    event_title=one_line(event.title),
                    days=reminder.days_before,
                    when=_when(challenge, event),
                    final=event.phase == Phase.FINAL_COLLECTION,
                    tracks=_tracks(challenge, team, "final"),
                )
            )
    return notices


def release_file_track(name: str, track_ids: list[str]) -> str | None:
    """The track a released file belongs to, from its path within the release.

    ``<track>/...`` or a top-level ``<track>.<ext>`` is that track's, and so is
    ``test/<track>/...`` (the hidden test inputs); any other file is for every team.
    """
    parts = name.split("/")
    if len(parts) > 2 and parts[0] == "test" and parts[1] in track_ids:
        return parts[1]
    first = parts[0] if len(parts) > 1 else parts[0].split(".", 1)[0]
    return first if first in track_ids else None


def release_notices(
    challenge: Challenge,
    event: Event,
    links: list[dict],
    teams: list[Team],
    link_ttl_s: int,
    now: dt.datetime | None = None,
) -> list[Notice]:
    """One email per team with the released files' links (valid ``link_ttl_s`` seconds).

    ``links``: name, size, sha256 and url of each file
    (:func:`mai_ops.publishing.release.download_links`, signed at ``now``). A team gets
    the files of the tracks it registered for and the files of no track
    (:func:`release_file_track`).
    """
    now = now or dt.datetime.now(dt.UTC)
    expires = utc_and_local(now + dt.timedelta(seconds=link_ttl_s), challenge)
    track_ids = [t.id for t in challenge.tracks]
    notices = []
    for team in teams:
        mine = {t.id for t in team_tracks(challenge, team)}
        files = [
            {
                "name": shown_key(f["name"]),
                "track": release_file_track(f["name"], track_ids),
                "size": f["size"],
                "sha256": f["sha256"],
                "url": f["url"],
            }
            for f in links
            if release_file_track(f["name"], track_ids) in mine | {None}
        ]
        notices.append(
            _notice(
                "release",
                f"{challenge.id}/release/{event.name}/{team.team_id}",
                challenge,
                team,
                event_title=one_line(event.title),
                files=files,
                expires=expires,
                valid_days=f"{link_ttl_s / 86400:g}",
                tracks=sorted(mine),
            )
        )
    return notices


def _runtime(challenge: Challenge, rt: dict | None) -> dict | None:
    """A stored runtime as the emails show it, with the device's full name."""
    if not rt:
        return None
    try:
        title = challenge.device(rt["device"]).title
    except KeyError:
        title = ""
    return {
        "device": rt["device"],
        "device_title": one_line(title),
        # "LiteRT on the server CPU, standing in for <device>" or "measured on <device>".
        "measured_on": one_line(runtime_note(challenge, {**rt, "runtime_ms": runtime_ms(rt)})),
        "ms": runtime_ms(rt),
        "statistic": "median" if rt.get("median_ms") is not None else "mean",
        "avg_ms": rt.get("avg_ms"),
        "std_ms": rt.get("std_ms"),
        "count": rt.get("count"),
        "init_ms": rt.get("init_ms"),
        "peak_rss_mb": rt.get("peak_rss_mb"),
    }


def _checks(checks: dict | None) -> dict:
    """What the model is and what the archive held, as the checks saw it."""
    checks = checks or {}
    model = checks.get("model") or {}
    tensors = []
    for kind in ("inputs", "outputs"):
        for i, t in enumerate(model.get(kind) or []):
            q = t.get("quantization") or {}
            tensors.append(
                {
                    "kind": kind[:-1],
                    "index": i,
                    "shape": str(t.get("shape")),
                    "dtype": str(t.get("dtype")),
                    "scale": f"{q['scale']:.6g}" if q.get("scale") else None,
                    "zero_point": q.get("zero_point") if q.get("scale") else None,
                }
            )
    files = checks.get("files") or []
    return {
        "tensors": tensors,
        "ops": [one_line(op, 80) for op in model.get("ops") or []],
        "converted_from": shown_key(checks["converted_from"])
        if checks.get("converted_from")
        else None,
        "files": [shown_key(f, 120) for f in files[:20]],
        "more_files": max(0, len(files) - 20),
        "factsheet": shown_key(checks["factsheet"]) if checks.get("factsheet") else None,
        "warnings": [one_line(w, MAX_MESSAGE_CHARS) for w in checks.get("warnings") or []],
    }


def _errors(errors: list[dict]) -> list[dict]:
    """Each error with its code, the registry's meaning and the (cleaned) message."""
    return [
        {
            "code": e.get("code") or "?",
            "meaning": CODES[e["code"]].meaning if e.get("code") in CODES else "",
            "message": one_line(e.get("message") or "", MAX_MESSAGE_CHARS),
        }
        for e in errors
    ]


def _quota(challenge: Challenge, quota: dict | None) -> dict | None:
    if not quota:
        return None
    reset = dt.datetime.fromisoformat(quota["resets_at"])
    return quota | {"resets": utc_and_local(reset, challenge)}


_PLAIN_KEY = re.compile(r"[A-Za-z0-9._/-]{1,200}")
_PLAIN_ETAG = re.compile(r"[A-Za-z0-9-]{1,64}")
_READABLE_CHARS = 96


def upload_notice_prefix(challenge_id: str, upload_key: str, etag: str) -> str:
    """What the keys of every reply about one stored version of an upload start with.

    A reply's key is ``<prefix>/<status>``: one email per outcome of that version.
    A plain upload key (ASCII letters, digits, ``._/-``, no ``..``, at most 200
    characters) is spelled out as it is: ``<id>/upload/<key>/<etag>``, the keys of
    every reply sent so far. Any other key (spaces, accents, CJK, ``..``, control
    characters, a very long one) gets a readable, cut-down ASCII form followed by
    ``~`` and a digest of the exact key and ETag: ``<id>/upload/<readable>~<digest>/<etag>``.
    No plain key has a ``~``, so two different uploads never share a prefix (``a b.zip``
    and ``a_b.zip`` included), and the prefix stays short enough for any sent-marker.
    """
    etag = etag.strip('"')
    if _PLAIN_KEY.fullmatch(upload_key) and ".." not in upload_key and _PLAIN_ETAG.fullmatch(etag):
        return f"{challenge_id}/upload/{upload_key}/{etag}"
    readable = re.sub(r"[^A-Za-z0-9._/-]+", "_", upload_key)
    readable = re.sub(r"\.{2,}", ".", readable)[:_READABLE_CHARS].strip("/") or "_"
    shown = etag if _PLAIN_ETAG.fullmatch(etag) else "v"
    return f"{challenge_id}/upload/{readable}~{version_digest(upload_key, etag)[:32]}/{shown}"


def shown_key(key: str | None, limit: int = 300) -> str:
    """An upload key as a team reads it in an email: control characters escaped, cut short."""
    text = "".join(
        c if c.isprintable() else (c.encode("unicode_escape").decode() or "?") for c in key or ""
    )
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def upload_reply(challenge: Challenge, team: Team, record: dict) -> Notice:
    """The email a team gets for one upload: the verdict, the reasons, the numbers.

    A refused upload (``rejected``) gets the ``rejection`` email: the rule, what it
    means and what to do. A final-phase upload's record (``precheck``) gets the
    ``final_upload`` acknowledgement: received, pre-checked, what the freeze will take.
    Any other upload gets the ``validation`` reply: checks, runtime, metrics, score and
    the uploads left.
    """
    key = record["key"]
    track = record.get("track")
    try:
        track_title = challenge.track(track).title if track else ""
    except KeyError:
        track_title = ""
    context = {
        "upload": shown_key(key),
        "file": shown_key(key.rsplit("/", 1)[-1], 60),
        "track": shown_key(track, 60) if track else "",
        "track_title": one_line(track_title),
        "received": utc_and_local(dt.datetime.fromisoformat(record["uploaded_at"]), challenge),
        "sha256": record.get("sha256"),
        "status": record["status"],
        "errors": _errors(record.get("errors") or []),
        "checks": _checks(record.get("checks")),
        "notes": [one_line(n, MAX_MESSAGE_CHARS) for n in record.get("notes") or []],
        "final": bool(record.get("precheck")),
        "quota": _quota(challenge, record.get("quota")),
    }
    if record["status"] == "rejected":
        kind = "rejection"
    elif record.get("precheck"):
        kind = "final_upload"
    else:
        kind = "validation"
    if record.get("precheck"):
        context |= _freeze(challenge, record)
    else:
        context |= {
            "runtime": _runtime(challenge, record.get("runtime")),
            "metrics": [
                {"name": name, "value": value}
                for name, value in (record.get("metrics") or {}).items()
            ],
            "score": record.get("score"),
            "ours": retryable(record),
        }
    # One email per outcome of one stored version: a re-run with the same outcome
    # sends nothing, a cleared task that now succeeds tells the team.
    prefix = upload_notice_prefix(challenge.id, key, record["etag"])
    return _notice(kind, f"{prefix}/{record['status']}", challenge, team, **context)


def _freeze(challenge: Challenge, record: dict) -> dict:
    """What a final upload's reply says about the freeze: when, which folder, late."""
    deadline = final_deadline(challenge)
    return {
        "deadline": utc_and_local(deadline, challenge) if deadline else None,
        "folder": shown_key("/".join(record["key"].split("/")[:3]) + "/"),
        "late": any(e.get("code") == "late" for e in record.get("errors") or []),
    }


def receipt_notice_key(challenge_id: str, team_id: str, early: bool = False) -> str:
    """The key of a team's final receipt; an early freeze's receipt has its own."""
    kind = "final_receipt_early" if early else "final_receipt"
    return f"{challenge_id}/{kind}/{team_id}"


def _refused_team(refusal: dict) -> str | None:
    """The team a refused final upload belongs to: the team folder its key names, exactly."""
    if "team" in refusal:
        return refusal["team"]
    return final_upload_team(refusal["key"])  # a manifest written before teams were named


def _event_when(challenge: Challenge, name: str) -> str | None:
    try:
        event = challenge.event(name)
    except KeyError:
        return None
    return _when(challenge, event)


def receipt_notices(
    challenge: Challenge,
    manifest: dict,
    teams: list[Team],
    early: bool = False,
    factsheets: dict[tuple[str, str], str | None] | None = None,
) -> list[Notice]:
    """A receipt per team: what was frozen (when received, with its sha256), what is
    missing, and each refused upload of that team's own (by the team folder of its key,
    exactly), with its code and reason.

    ``factsheets``: for a frozen upload's ``(source, etag)``, the fact sheet its
    pre-check found (None: none in the archive); an upload not in it was not
    pre-checked, and the receipt says nothing about its fact sheet.

    After an ``early`` freeze the receipt says so, under its own key, so the receipt of
    the freeze at the deadline is still sent.
    """
    factsheets = factsheets or {}
    deadline = final_deadline(challenge)
    notices = []
    for team in teams:
        mine = [f for f in manifest["frozen"] if f["team"] == team.team_id]
        gaps = [m["track"] for m in manifest["missing"] if m["team"] == team.team_id]
        refused = [r for r in manifest["rejected"] if _refused_team(r) == team.team_id]
        if not mine and not gaps and not refused:
            continue
        frozen = []
        for f in mine:
            received = f.get("uploaded_at")
            known = (f["source"], f.get("etag")) in factsheets
            frozen.append(
                {
                    "track": f["track"],
                    "source": shown_key(f["source"]),
                    "received": (
                        utc_and_local(dt.datetime.fromisoformat(received), challenge)
                        if received
                        else None
                    ),
                    "sha256": f["sha256"],
                    "factsheet_checked": known,
                    "factsheet": (
                        shown_key(factsheets[(f["source"], f.get("etag"))] or "") if known else ""
                    ),
                }
            )
        notices.append(
            _notice(
                "receipt",
                receipt_notice_key(challenge.id, team.team_id, early),
                challenge,
                team,
                early=early,
                deadline=utc_and_local(deadline, challenge) if deadline else None,
                frozen=frozen,
                missing=gaps,
                refused=[
                    {
                        "key": shown_key(r["key"]),
                        "code": r.get("code") or "",
                        "meaning": CODES[r["code"]].meaning if r.get("code") in CODES else "",
                        "reason": one_line(r.get("reason") or "", MAX_MESSAGE_CHARS),
                    }
                    for r in refused
                ],
                factsheet_deadline=_event_when(challenge, "factsheet_deadline"),
            )
        )
    return notices


def preliminary_results_notice_key(challenge_id: str, team_id: str) -> str:
    return f"{challenge_id}/preliminary_results/{team_id}"


def leaderboard_url(public_url: str | None, track_id: str) -> str | None:
    """The public leaderboard page of a track, or None without a public URL."""
    if not public_url:
        return None
    return f"{public_url.rstrip('/')}/{leaderboard_key(FINAL_PHASE, track_id, 'index.html')}"


def preliminary_results_notices(
    challenge: Challenge, table: dict, teams: list[Team], public_url: str | None = None
) -> list[Notice]:
    """Each team with a result hears, per track: its rank of N, the metrics, the runtime
    with its device, the score and any flag; a failed submission its error code and
    what it means; and the link to the track's public leaderboard (``public_url``, else
    the challenge's ``public_url``; none without either).
    """
    public_url = public_url or challenge.public_url
    notices = []
    for team in teams:
        rows = [
            _result(challenge, track_id, ranked, row, public_url)
            for track_id, ranked in table["tracks"].items()
            for row in ranked["rows"]
            if row["team"] == team.team_id
        ]
        if not rows:
            continue
        notices.append(
            _notice(
                "results",
                preliminary_results_notice_key(challenge.id, team.team_id),
                challenge,
                team,
                rows=rows,
            )
        )
    return notices


def _result(
    challenge: Challenge, track_id: str, ranked: dict, row: dict, public_url: str | None
) -> dict:
    try:
        track = challenge.track(track_id)
        title, min_psnr = track.title, track.fidelity.reproduce_min_psnr
    except KeyError:
        title, min_psnr = "", None
    device = row.get("device") or ranked.get("device")
    try:
        device_title = challenge.device(device).title if device else ""
    except KeyError:
        device_title = ""
    error = row.get("error")
    return {
        "track": track_id,
        "track_title": one_line(title),
        "rank": row["rank"],
        "of": sum(1 for r in ranked["rows"] if r["rank"] is not None),
        "status": row["status"],
        "score": row.get("score"),
        "metrics": [{"name": m, "value": row.get(m)} for m in ranked["metrics"]],
        "runtime_ms": row.get("runtime_ms"),
        "device": device or "",
        "device_title": one_line(device_title),
        "measured_on": one_line(runtime_note(challenge, {**row, "device": device}) or ""),
        "flags": list(row.get("flags") or []),
        "min_psnr": min_psnr,
        "error": error or "",
        "error_meaning": CODES[error].meaning if error in CODES else "",
        "leaderboard": leaderboard_url(public_url, track_id),
    }
