"""What each phase task does, given the challenge file and the run's logical date.

The DAG files call these and nothing else, so a task is one line there and every
step here can be run and tested without a scheduler. Clients default to the
providers' hooks; tests and the demo may pass their own.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from mai_ops.challenge.config import Challenge, Event, load_challenge
from mai_ops.challenge.participants import load_teams
from mai_ops.challenge.timeline import (
    DagPhase,
    all_reminders,
    dag_phase_of,
    event_instant,
    events_at,
    reminders_at,
)
from mai_ops.errors import NeedsOrganizer
from mai_ops.notify.ledger import Notice, deliver
from mai_ops.notify.messages import (
    event_notices,
    preliminary_results_notices,
    receipt_notices,
    release_notices,
    reminder_notices,
    upload_reply,
)
from mai_ops.publishing.release import DEFAULT_LINK_TTL_S, download_links, publish_release
from mai_ops.submissions.final_set import freeze_final_set
from mai_ops.submissions.scoring import (
    collect_results,
    frozen_entries,
    publish_preliminary,
    verify_frozen_submission,
)

log = logging.getLogger(__name__)
Sender = Callable[[Notice], None]


class PhaseError(NeedsOrganizer):
    """A phase run that cannot go ahead; the message says what the organizer should fix."""


def _clients(s3: Any, send: Sender | None) -> tuple[Any, Sender | None]:
    from mai_ops_airflow import hooks

    return (s3 if s3 is not None else hooks.s3_client()), send


def _sender(send: Sender | None) -> Sender:
    from mai_ops_airflow import hooks

    return send if send is not None else hooks.smtp_sender()


def resolve_events(
    challenge: Challenge,
    dag_phase: str,
    when: dt.datetime,
    override: str | None = None,
    manual: bool = False,
) -> list[Event]:
    """The events a run handles.

    The event named in the run's params wins; else the events at the run's logical
    date; else, for a manual run, the latest event of the phase before ``when``, so
    "Trigger" in the UI re-runs the phase that last fired.
    """
    candidates = [e for e in challenge.timeline if dag_phase_of(e) == dag_phase]
    names = ", ".join(e.name for e in candidates) or "none"
    if override:
        for event in candidates:
            if event.name == override:
                return [event]
        raise PhaseError(
            f"event {override!r} is not a {dag_phase} event of {challenge.id}; known: {names}"
        )
    events = events_at(challenge, dag_phase, when)
    if not events and manual:
        past = [
            (instant, e)
            for e in candidates
            if (instant := event_instant(challenge, e)) is not None and instant <= when
        ]
        events = [max(past, key=lambda p: p[0])[1]] if past else []
    if not events:
        raise PhaseError(
            f"no {dag_phase} event of {challenge.id} falls at {when.isoformat()}; "
            f"trigger with params {{'event': ...}} naming one of: {names}"
        )
    return events


def release_data(path, logical_date, event=None, manual=False, s3=None, send=None) -> dict:
    """Publish each release event's files and email every team its links."""
    challenge = load_challenge(path)
    s3, _ = _clients(s3, send)
    teams = load_teams(challenge, path, s3)
    notices, manifests = [], []
    for ev in resolve_events(challenge, DagPhase.RELEASE_DATA, logical_date, event, manual):
        manifest = publish_release(s3, challenge, ev)
        manifests.append({"event": ev.name, "files": len(manifest["files"])})
        links = download_links(s3, challenge, manifest, DEFAULT_LINK_TTL_S)
        notices += release_notices(challenge, ev, links, teams, DEFAULT_LINK_TTL_S)
    report = deliver(notices, _sender(send), s3, challenge.buckets.results)
    return {"releases": manifests, **report.as_dict()}


def announce_events(
    path, dag_phase, logical_date, event=None, manual=False, s3=None, send=None
) -> dict:
    """Email every team that the phase's event has happened (validation server, workshop)."""
    challenge = load_challenge(path)
    s3, _ = _clients(s3, send)
    teams = load_teams(challenge, path, s3)
    events = resolve_events(challenge, dag_phase, logical_date, event, manual)
    report = deliver(
        event_notices(challenge, events, teams, dag_phase),
        _sender(send),
        s3,
        challenge.buckets.results,
    )
    return {"events": [e.name for e in events], **report.as_dict()}


def send_reminders(path, logical_date, manual=False, s3=None, send=None) -> dict:
    """Send the reminders due at the run's date (a manual run: the latest ones before it)."""
    challenge = load_challenge(path)
    reminders = reminders_at(challenge, logical_date)
    if not reminders and manual:
        past = [r for r in all_reminders(challenge) if r.instant <= logical_date]
        if past:
            latest = max(r.instant for r in past)
            reminders = [r for r in past if r.instant == latest]
    if not reminders:
        raise PhaseError(f"no reminder of {challenge.id} falls at {logical_date.isoformat()}")
    s3, _ = _clients(s3, send)
    teams = load_teams(challenge, path, s3)
    report = deliver(
        reminder_notices(challenge, reminders, teams), _sender(send), s3, challenge.buckets.results
    )
    return {"reminders": [r.key for r in reminders], **report.as_dict()}


def freeze_final(path, refreeze=False, s3=None) -> dict:
    challenge = load_challenge(path)
    s3, _ = _clients(s3, None)
    manifest = freeze_final_set(s3, challenge, load_teams(challenge, path, s3), refreeze)
    return {k: len(v) for k, v in manifest.items() if isinstance(v, list)}


def send_receipts(path, s3=None, send=None) -> dict:
    from mai_ops.infra.layout import FROZEN_MANIFEST
    from mai_ops.infra.storage import get_json

    challenge = load_challenge(path)
    s3, _ = _clients(s3, send)
    manifest = get_json(s3, challenge.buckets.results, FROZEN_MANIFEST)
    notices = receipt_notices(challenge, manifest, load_teams(challenge, path, s3))
    return deliver(notices, _sender(send), s3, challenge.buckets.results).as_dict()


def list_frozen(path, track=None, team=None, s3=None) -> list[dict]:
    """The frozen submissions to score, narrowed to one track and/or team for a re-score."""
    challenge = load_challenge(path)
    s3, _ = _clients(s3, None)
    if track and track != "all":
        try:
            challenge.track(track)
        except KeyError as exc:
            raise PhaseError(exc.args[0]) from None
    entries = [
        e
        for e in frozen_entries(s3, challenge)
        if (not track or track == "all" or e["track"] == track) and (not team or e["team"] == team)
    ]
    if team and not entries and (not track or track == "all"):
        raise PhaseError(f"team {team!r} has no frozen submission{' in ' + track if track else ''}")
    return entries


def score_submission(path, entry, force=False, s3=None) -> dict:
    challenge = load_challenge(path)
    s3, _ = _clients(s3, None)
    return verify_frozen_submission(s3, challenge, entry, force=force)


def publish_preliminary_results(path, s3=None, send=None) -> dict:
    challenge = load_challenge(path)
    s3, _ = _clients(s3, send)
    table = publish_preliminary(s3, challenge, collect_results(s3, challenge))
    notices = preliminary_results_notices(challenge, table, load_teams(challenge, path, s3))
    report = deliver(notices, _sender(send), s3, challenge.buckets.results)
    return {"results": len(table["results"]), **report.as_dict()}


def collect_uploads(path, events: list[dict] | None = None, s3=None) -> dict[str, list[str]]:
    """Upload keys to process, per track, oldest first, at most MAX_PER_RUN each.

    ``events`` are the asset events' ``extra``: the trigger's payload (``uploads``)
    sits under ``payload``. Announced keys and a sweep of every upload without a
    record are merged, so a notification that never came (or a run that failed)
    delays an answer but never loses it.
    """
    from mai_ops.infra.layout import upload_track
    from mai_ops.submissions.validation import MAX_PER_RUN, pending_uploads

    challenge = load_challenge(path)
    s3, _ = _clients(s3, None)
    pending = pending_uploads(s3, challenge)
    waiting = {u["key"] for u in pending}
    announced = [
        u["key"]
        for extra in events or []
        for u in (extra.get("payload", extra).get("uploads") or [])
        if u.get("bucket") in (None, challenge.buckets.submissions)
    ]
    missing = [k for k in announced if k not in waiting]
    if missing:
        log.info("announced uploads already answered or gone: %s", ", ".join(missing[:10]))
    by_track: dict[str, list[str]] = {t.id: [] for t in challenge.tracks}
    for upload in pending:  # oldest first: quotas count earlier uploads
        track = upload_track(upload["key"])
        lane = by_track.setdefault(track if track in by_track else "_unknown", [])
        if len(lane) < MAX_PER_RUN:
            lane.append(upload["key"])
    return by_track


def validate_upload(path, key, s3=None, send=None) -> dict:
    """One upload, start to answer: its record, and the reply email to its team."""
    from mai_ops.submissions.validation import process_upload

    challenge = load_challenge(path)
    s3, _ = _clients(s3, send)
    teams = load_teams(challenge, path, s3)
    record = process_upload(s3, challenge, teams, key)
    team = next((t for t in teams if t.team_id == record.get("team")), None)
    if team is not None:
        deliver(
            [upload_reply(challenge, team, record)], _sender(send), s3, challenge.buckets.results
        )
    else:
        log.warning("upload %s is from no registered team; recorded, nobody to answer", key)
    return {k: record[k] for k in ("key", "status", "errors", "score")}
