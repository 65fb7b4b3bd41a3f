"""Every email the pipelines send to teams, one function per kind of message.

Each takes plain data (the challenge, teams, a stored record or manifest) and returns
:class:`~mai_ops.notify.ledger.Notice` objects; the ledger sends each at most once.
The notice key says what the email is about, never when it was sent.

- :func:`event_notices`: an event happened (validation server online, workshop).
- :func:`reminder_notices`: an event is some days away.
- :func:`release_notices`: data released, with download links.
- :func:`upload_reply`: the verdict on one validation upload, or the acknowledgement
  and pre-check of one final upload.
- :func:`receipt_notices`: what was frozen for scoring at the final deadline.
- :func:`preliminary_results_notices`: the team's preliminary results.
"""

from __future__ import annotations

import datetime as dt
import re

from mai_ops.challenge.config import Challenge, Event
from mai_ops.challenge.participants import Team
from mai_ops.challenge.timeline import Reminder, event_instant
from mai_ops.errors import CODES
from mai_ops.infra.layout import final_upload_team, version_digest
from mai_ops.notify.ledger import Notice
from mai_ops.submissions.evaluation import retryable, runtime_ms
from mai_ops.submissions.intake import final_deadline, utc_and_local


def _when(challenge: Challenge, event: Event) -> str:
    instant = event_instant(challenge, event)
    if instant is None:
        return event.date.text()
    return instant.strftime("%A %d %B %Y, %H:%M %Z") + f" ({instant.astimezone(dt.UTC):%H:%M} UTC)"


def event_notices(
    challenge: Challenge, events: list[Event], teams: list[Team], kind: str
) -> list[Notice]:
    """One email per team and event, announcing that the event has happened."""
    return [
        Notice(
            key=f"{challenge.id}/{kind}/{event.name}/{team.team_id}",
            to=team.email,
            subject=f"[{challenge.title}] {event.title}",
            body=f"Dear {team.name},\n\n{event.title}: {_when(challenge, event)}.\n",
        )
        for event in events
        for team in teams
    ]


def reminder_notices(
    challenge: Challenge, reminders: list[Reminder], teams: list[Team]
) -> list[Notice]:
    notices = []
    for reminder in reminders:
        event = challenge.event(reminder.event)
        days = "1 day" if reminder.days_before == 1 else f"{reminder.days_before} days"
        for team in teams:
            notices.append(
                Notice(
                    key=f"{challenge.id}/reminder/{reminder.key}/{team.team_id}",
                    to=team.email,
                    subject=f"[{challenge.title}] Reminder: {event.title} in {days}",
                    body=(
                        f"Dear {team.name},\n\n{event.title} is in {days}: "
                        f"{_when(challenge, event)}.\n"
                    ),
                )
            )
    return notices


def release_notices(
    challenge: Challenge, event: Event, links: list[dict], teams: list[Team], link_ttl_s: int
) -> list[Notice]:
    """One email per team with the released files' links (valid ``link_ttl_s`` seconds).

    ``links``: name, size, sha256 and url of each file
    (:func:`mai_ops.publishing.release.download_links`).
    """
    lines = [
        f"- {f['name']} ({f['size']} bytes)\n  sha256 {f['sha256']}\n  {f['url']}" for f in links
    ]
    days = link_ttl_s / 86400
    body_files = "\n".join(lines)
    return [
        Notice(
            key=f"{challenge.id}/release/{event.name}/{team.team_id}",
            to=team.email,
            subject=f"[{challenge.title}] {event.title}",
            body=(
                f"Dear {team.name},\n\n{event.title}. Download links (valid {days:g} days):\n\n"
                f"{body_files}\n\nCheck each file against its sha256 before use.\n"
            ),
        )
        for team in teams
    ]


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


def runtime_line(rt: dict) -> str:
    parts = [f"Runtime on {rt['device']}: {_ms(runtime_ms(rt))}"]
    parts.append(f"(mean {_ms(rt.get('avg_ms'))}, std {_ms(rt.get('std_ms'))}, {rt['count']} runs")
    if rt.get("init_ms") is not None:
        parts.append(f"init {_ms(rt['init_ms'])}")
    if rt.get("peak_rss_mb") is not None:
        parts.append(f"peak memory {rt['peak_rss_mb']:.0f} MiB")
    return " ".join(parts[:2]) + (", " + ", ".join(parts[2:]) if parts[2:] else "") + ")"


def _model_lines(checks: dict) -> list[str]:
    """What the model is and what the archive held, as the checks saw it."""
    lines = []
    model = checks.get("model") or {}
    for kind in ("inputs", "outputs"):
        for i, t in enumerate(model.get(kind) or []):
            q = t.get("quantization") or {}
            quant = (
                f", scale {q['scale']:.6g}, zero point {q['zero_point']}" if q.get("scale") else ""
            )
            lines.append(f"{kind[:-1]} {i}: {t.get('shape')} {t.get('dtype')}{quant}")
    if model.get("ops"):
        lines.append(f"ops: {', '.join(model['ops'])}")
    if checks.get("converted_from"):
        lines.append(f"converted for you from: {checks['converted_from']}")
    if checks.get("files"):
        lines.append(f"files: {', '.join(checks['files'][:20])}")
    lines += [f"Note: {w}" for w in checks.get("warnings") or []]
    return lines


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

    A final-phase upload's record (``precheck``) gets the acknowledgement of
    :func:`_precheck_reply` instead: received, pre-checked, what the freeze will take.
    """
    if record.get("precheck"):
        subject, lines = _precheck_reply(challenge, team, record)
    else:
        subject, lines = _validation_reply(team, record)
    # One email per outcome of one stored version: a re-run with the same outcome
    # sends nothing, a cleared task that now succeeds tells the team.
    prefix = upload_notice_prefix(challenge.id, record["key"], record["etag"])
    return Notice(
        key=f"{prefix}/{record['status']}",
        to=team.email,
        subject=f"[{challenge.title}] {shown_key(record['track'], 60)}: {subject}",
        body="\n".join(lines) + "\n",
    )


def _validation_reply(team: Team, record: dict) -> tuple[str, list[str]]:
    lines = [f"Dear {team.name},", "", f"Your upload {shown_key(record['key'])}"]
    digest = f", sha256 {record['sha256'][:16]}…" if record.get("sha256") else ""
    lines.append(f"(received by the server at {record['uploaded_at']}{digest})")
    status = {"ok": "was ACCEPTED", "failed": "FAILED the checks", "rejected": "was REJECTED"}
    lines += ["", f"{status[record['status']]}.", ""]
    for error in record["errors"]:
        lines.append(f"- [{error['code']}] {error['message']}")
    lines += _model_lines(record.get("checks") or {})
    if record.get("runtime"):
        lines.append(runtime_line(record["runtime"]))
    for name, value in (record.get("metrics") or {}).items():
        lines.append(f"{name}: {value:.4f}")
    if record.get("score") is not None:
        lines.append(f"Score: {record['score']:.6g}")
    for note in record.get("notes", []):
        lines.append(f"Note: {note}")
    if record["status"] == "rejected":
        lines += ["", "Rejected uploads do not count towards your limits."]
    elif record["status"] == "failed" and retryable(record):
        lines += ["", "This failure is on our side: it does not count towards your limits."]
    elif record["status"] == "failed":
        lines += ["", "This upload was checked: it counts towards your limits, like a passed one."]
    return f"upload {record['status']}", lines


_PRECHECK = {  # status: (subject, verdict)
    "ok": (
        "final submission received, pre-check passed",
        "Pre-check PASSED: the archive and the model pass the same checks as a "
        "validation upload. Final submissions are not benchmarked or scored now: that "
        "happens after the deadline, on the frozen set.",
    ),
    "failed": (
        "final submission received, pre-check FAILED",
        "Pre-check FAILED: as it is, this submission would fail at scoring. Fix the "
        "problems below and upload again before the deadline:",
    ),
    "rejected": (
        "final submission REJECTED",
        "REJECTED by the upload rules:",
    ),
}


def _precheck_reply(challenge: Challenge, team: Team, record: dict) -> tuple[str, list[str]]:
    """Final submission received (server time, sha256), the pre-check, and the freeze."""
    received = utc_and_local(dt.datetime.fromisoformat(record["uploaded_at"]), challenge)
    lines = [
        f"Dear {team.name},",
        "",
        f"Your final submission {shown_key(record['key'])}",
        f"was received by the server at {received}",
    ]
    if record.get("sha256"):
        lines.append(f"with sha256 {record['sha256']}")
    subject, verdict = _PRECHECK[record["status"]]
    lines += ["", verdict, ""]
    for error in record["errors"]:
        lines.append(f"- [{error['code']}] {error['message']}")
    lines += _model_lines(record.get("checks") or {})
    for note in record.get("notes", []):
        lines.append(f"Note: {note}")
    deadline = final_deadline(challenge)
    if deadline is None:
        when = "the final deadline (its date is not fixed yet)"
    else:
        when = f"the deadline, {utc_and_local(deadline, challenge)}"
    folder = shown_key("/".join(record["key"].split("/")[:3]) + "/")
    lines += [""]
    if any(e["code"] == "late" for e in record["errors"]):
        lines += ["This upload arrived after the deadline: it is not part of the final set."]
    lines += [
        f"The final set is frozen at {when}. The LAST upload to {folder} that the server "
        "received by then is the one scored, whatever its pre-check says.",
        "There is no limit on final uploads: you may upload as often as you like until "
        "the deadline; each one is acknowledged like this.",
    ]
    return subject, lines


def receipt_notice_key(challenge_id: str, team_id: str, early: bool = False) -> str:
    """The key of a team's final receipt; an early freeze's receipt has its own."""
    kind = "final_receipt_early" if early else "final_receipt"
    return f"{challenge_id}/{kind}/{team_id}"


def _refused_team(refusal: dict) -> str | None:
    """The team a refused final upload belongs to: the team folder its key names, exactly."""
    if "team" in refusal:
        return refusal["team"]
    return final_upload_team(refusal["key"])  # a manifest written before teams were named


def _frozen_line(challenge: Challenge, frozen: dict) -> str:
    """What was frozen for one track: the upload, when the server received it, its sha256."""
    line = f"- {frozen['track']}: {shown_key(frozen['source'])}"
    if frozen.get("uploaded_at"):
        received = utc_and_local(dt.datetime.fromisoformat(frozen["uploaded_at"]), challenge)
        line += f", received by the server at {received},"
    return f"{line} sha256 {frozen['sha256']}"


def _refused_line(refusal: dict) -> str:
    code = f" [{refusal['code']}]" if refusal.get("code") else ""
    return f"- NOT accepted{code}: {shown_key(refusal['key'])}: {refusal['reason']}"


def receipt_notices(
    challenge: Challenge, manifest: dict, teams: list[Team], early: bool = False
) -> list[Notice]:
    """A receipt per team: what was frozen (when received, with its sha256), what is
    missing, and each refused upload of that team's own (by the team folder of its key,
    exactly), with its code and reason.

    After an ``early`` freeze the receipt says so, under its own key, so the receipt of
    the freeze at the deadline is still sent.
    """
    if early:
        deadline = event_instant(challenge, challenge.event("final_deadline"))
        opening = (
            "The organizers froze the final set early, before the final submission "
            f"deadline ({deadline:%Y-%m-%d %H:%M %Z}). The deadline still holds: the set is "
            "frozen again at the deadline with your latest upload by then, and you will "
            "get a new receipt. Frozen for scoring now:"
        )
    else:
        opening = "The final submission deadline has passed. Frozen for scoring:"
    notices = []
    for team in teams:
        mine = [f for f in manifest["frozen"] if f["team"] == team.team_id]
        gaps = [m["track"] for m in manifest["missing"] if m["team"] == team.team_id]
        refused = [r for r in manifest["rejected"] if _refused_team(r) == team.team_id]
        if not mine and not gaps and not refused:
            continue
        lines = [_frozen_line(challenge, f) for f in mine]
        lines += [f"- {track}: NO final submission received" for track in gaps]
        lines += [_refused_line(r) for r in refused]
        notices.append(
            Notice(
                key=receipt_notice_key(challenge.id, team.team_id, early),
                to=team.email,
                subject=f"[{challenge.title}] Final submission receipt",
                body=f"Dear {team.name},\n\n{opening}\n\n" + "\n".join(lines) + "\n",
            )
        )
    return notices


def preliminary_results_notice_key(challenge_id: str, team_id: str) -> str:
    return f"{challenge_id}/preliminary_results/{team_id}"


def preliminary_results_notices(
    challenge: Challenge, table: dict, teams: list[Team]
) -> list[Notice]:
    """Each team with a result hears, per track, its rank of N, metrics, runtime, score."""
    notices = []
    for t in teams:
        lines = [
            _result_line(track_id, ranked, row)
            for track_id, ranked in table["tracks"].items()
            for row in ranked["rows"]
            if row["team"] == t.team_id
        ]
        if not lines:
            continue
        notices.append(
            Notice(
                key=preliminary_results_notice_key(challenge.id, t.team_id),
                to=t.email,
                subject=f"[{challenge.title}] Preliminary test results",
                body=f"Dear {t.name},\n\nYour preliminary results:\n\n" + "\n".join(lines) + "\n",
            )
        )
    return notices


def _result_line(track_id: str, ranked: dict, row: dict) -> str:
    flags = f" (flagged: {', '.join(row['flags'])})" if row.get("flags") else ""
    if row["rank"] is None:
        why = f"{row['error']}: {CODES[row['error']].meaning}" if row.get("error") in CODES else ""
        return f"- {track_id}: not ranked ({row['status']}{'; ' + why if why else ''}){flags}"
    ranked_count = sum(1 for r in ranked["rows"] if r["rank"] is not None)
    metrics = ", ".join(f"{m} {row[m]:.4g}" for m in ranked["metrics"] if row.get(m) is not None)
    runtime = f"{row['runtime_ms']:.4g} ms on {row['device']}" if row.get("runtime_ms") else ""
    return (
        f"- {track_id}: rank {row['rank']} of {ranked_count}; score {row['score']:.6g}; "
        f"{metrics}; runtime {runtime}{flags}"
    )
