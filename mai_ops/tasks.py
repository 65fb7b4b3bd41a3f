"""What each phase task does, given the challenge file and the run's logical date.

The DAG files call these and nothing else, so a task is one line there and every
step here can be run and tested without a scheduler. Clients default to the
providers' hooks; tests and the demo may pass their own.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from functools import cached_property
from typing import Any

from mai_ops.challenge.config import Challenge, Event, load_challenge
from mai_ops.challenge.participants import Team, load_teams
from mai_ops.challenge.timeline import (
    DagPhase,
    all_reminders,
    dag_phase_of,
    event_instant,
    events_at,
    reminders_at,
)
from mai_ops.errors import NeedsOrganizer
from mai_ops.notify.ledger import DeliveryReport, Notice, deliver
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
from mai_ops.submissions.scoring import frozen_entries, run_stage, score_frozen

log = logging.getLogger(__name__)
# Sends one notice; may return the Message-ID it used (the ledger keeps it).
Sender = Callable[[Notice], str | None]


class PhaseError(NeedsOrganizer):
    """A phase run that cannot go ahead; the message says what the organizer should fix."""


class PhaseRun:
    """What a task works with: the challenge, storage, the teams, and email delivery.

    Opened per task from the challenge file; the S3 client and the teams are fetched
    once, when first used. ``s3`` and ``send`` default to the providers' hooks.
    """

    def __init__(self, path, challenge: Challenge, s3: Any = None, send: Sender | None = None):
        self.path = str(path)
        self.challenge = challenge
        self._s3 = s3
        self._send = send

    @classmethod
    def open(cls, path, s3: Any = None, send: Sender | None = None) -> PhaseRun:
        return cls(path, load_challenge(path), s3, send)

    @cached_property
    def s3(self) -> Any:
        if self._s3 is not None:
            return self._s3
        from mai_ops_airflow import hooks

        return hooks.s3_client()

    @cached_property
    def teams(self) -> list[Team]:
        return load_teams(self.challenge, self.path, self.s3)

    def deliver(self, notices: list[Notice], settle: bool = True) -> DeliveryReport:
        """Send each notice once (the ledger: intents and sent-markers in the results
        bucket, :mod:`mai_ops.notify.ledger`).

        A notice refused for its address does not stop the others; once they are sent,
        ``settle`` fails the task naming it (else the caller settles the report later).
        A storage failure stops the delivery before the next send.
        """
        if self._send is None:
            from mai_ops_airflow import hooks

            self._send = hooks.smtp_sender()
        report = deliver(notices, self._send, self.s3, self.challenge.buckets.results)
        if settle:
            report.raise_for_failures()
        return report


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
        event = next((e for e in candidates if e.name == override), None)
        if event is None:
            raise PhaseError(
                f"event {override!r} is not a {dag_phase} event of {challenge.id}; known: {names}"
            )
        if not event.date.fixed:
            raise PhaseError(
                f"event {override!r} of {challenge.id} has no fixed date yet "
                f"({event.date.text()}) and is never sent; fix its date in the challenge "
                "file first"
            )
        return [event]
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
    run = PhaseRun.open(path, s3, send)
    notices, manifests = [], []
    for ev in resolve_events(run.challenge, DagPhase.RELEASE_DATA, logical_date, event, manual):
        manifest = publish_release(run.s3, run.challenge, ev)
        manifests.append({"event": ev.name, "files": len(manifest["files"])})
        links = download_links(run.s3, run.challenge, manifest, DEFAULT_LINK_TTL_S)
        notices += release_notices(run.challenge, ev, links, run.teams, DEFAULT_LINK_TTL_S)
    return {"releases": manifests, **run.deliver(notices).as_dict()}


def announce_events(
    path, dag_phase, logical_date, event=None, manual=False, s3=None, send=None
) -> dict:
    """Email every team that the phase's event has happened (validation server, workshop)."""
    run = PhaseRun.open(path, s3, send)
    events = resolve_events(run.challenge, dag_phase, logical_date, event, manual)
    report = run.deliver(event_notices(run.challenge, events, run.teams, dag_phase))
    return {"events": [e.name for e in events], **report.as_dict()}


def send_reminders(path, logical_date, manual=False, s3=None, send=None) -> dict:
    """Send the reminders due at the run's date (a manual run: the latest ones before it)."""
    run = PhaseRun.open(path, s3, send)
    reminders = reminders_at(run.challenge, logical_date)
    if not reminders and manual:
        past = [r for r in all_reminders(run.challenge) if r.instant <= logical_date]
        if past:
            latest = max(r.instant for r in past)
            reminders = [r for r in past if r.instant == latest]
    if not reminders:
        raise PhaseError(f"no reminder of {run.challenge.id} falls at {logical_date.isoformat()}")
    report = run.deliver(reminder_notices(run.challenge, reminders, run.teams))
    return {"reminders": [r.key for r in reminders], **report.as_dict()}


def freeze_final(path, refreeze=False, s3=None, manual=False, early=False, now=None) -> dict:
    """Freeze the final set; a manual freeze before the deadline needs ``early``.

    An early freeze is provisional: the freeze at the deadline replaces it, with every
    upload received in time. ``now`` is the wall clock (tests may pass another).
    """
    run = PhaseRun.open(path, s3)
    deadline = event_instant(run.challenge, run.challenge.event("final_deadline"))
    now = now or dt.datetime.now(dt.UTC)
    before_deadline = deadline is not None and now < deadline
    if manual and before_deadline and not early:
        raise PhaseError(
            f"the final deadline of {run.challenge.id} is {deadline:%Y-%m-%d %H:%M %Z} "
            f"({deadline.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC), still to come: a freeze "
            "now would ignore every upload made until then. The scheduled run at the "
            "deadline freezes the set; to freeze early on purpose, trigger with "
            "early_freeze (the receipts will say so)"
        )
    manifest = freeze_final_set(
        run.s3, run.challenge, run.teams, refreeze, early=early and before_deadline
    )
    return {k: len(v) for k, v in manifest.items() if isinstance(v, list)}


def send_receipts(path, s3=None, send=None) -> dict:
    """Each team's receipt of the frozen set, with the fact sheet its pre-check found."""
    from mai_ops.infra.layout import FROZEN_MANIFEST
    from mai_ops.infra.storage import get_json

    run = PhaseRun.open(path, s3, send)
    manifest = get_json(run.s3, run.challenge.buckets.results, FROZEN_MANIFEST)
    early = bool(manifest.get("early"))
    factsheets = frozen_factsheets(run.s3, run.challenge.buckets.results, manifest)
    notices = receipt_notices(run.challenge, manifest, run.teams, early, factsheets)
    return run.deliver(notices).as_dict()


def frozen_factsheets(s3, bucket: str, manifest: dict) -> dict[tuple[str, str], str | None]:
    """The fact sheet each frozen upload's pre-check found: ``(source, etag)`` -> its
    path in the archive, or None when there was none. An upload whose pre-check did not
    unpack it, or that has no pre-check record yet, is left out: nothing is known."""
    from mai_ops.infra.layout import upload_record_key
    from mai_ops.infra.storage import get_json, is_missing

    found = {}
    for frozen in manifest.get("frozen", []):
        etag = frozen.get("etag")
        if not etag:
            continue
        try:
            record = get_json(s3, bucket, upload_record_key(frozen["source"], etag))
        except s3.exceptions.ClientError as exc:
            if is_missing(exc):
                continue
            raise
        checks = record.get("checks") or {}
        if record.get("precheck") and "unpack" in (record.get("stages") or []):
            found[(frozen["source"], etag)] = checks.get("factsheet")
    return found


def list_frozen(path, track=None, team=None, s3=None) -> list[dict]:
    """The frozen submissions to score, narrowed to one track and/or team for a re-score.

    The track's hidden test data is checked when there is something to score: bad
    staging stops the run at once, naming the object, before a single model runs.
    """
    from mai_ops.models.fidelity import load_data_set

    run = PhaseRun.open(path, s3)
    if track and track != "all":
        try:
            run.challenge.track(track)
        except KeyError as exc:
            raise PhaseError(exc.args[0]) from None
    entries = [
        e
        for e in frozen_entries(run.s3, run.challenge)
        if (not track or track == "all" or e["track"] == track) and (not team or e["team"] == team)
    ]
    if team and not entries and (not track or track == "all"):
        raise PhaseError(f"team {team!r} has no frozen submission{' in ' + track if track else ''}")
    if entries and track and track != "all":
        test = load_data_set(run.s3, run.challenge, run.challenge.track(track), "test")
        log.info("%s: %d hidden test pairs staged", track, len(test.names))
    return entries


def score_stage(path, entry, stage, force=False, s3=None) -> dict:
    """One scoring stage (prepare, benchmark, fidelity, score) of one frozen submission."""
    run = PhaseRun.open(path, s3)
    return run_stage(run.s3, run.challenge, entry, stage, force=force)


def score_submission(path, entry, force=False, s3=None) -> dict:
    """All the stages of one frozen submission in one call (for the CLI, tests, benches)."""
    run = PhaseRun.open(path, s3)
    return score_frozen(run.s3, run.challenge, entry, force=force)


def rank_results(path, run_id, track=None, constants=None, apply=False, s3=None) -> dict:
    """Rank every track from the stored records, validate, store; log moved ranks.

    The table is kept as this run's whatever happens; it becomes the results (what
    the preliminary results publish) when it passes validation and either uses the
    config's constants or ``apply`` was asked for. A failed validation raises, naming
    the expectations and rows, so nothing unvalidated is ever published.
    """
    from mai_ops.results.final import rank_and_store

    run = PhaseRun.open(path, s3)
    outcome = rank_and_store(run.s3, run.challenge, run_id, track, constants, apply)
    log.info("%s", outcome["report"])
    return {k: v for k, v in outcome.items() if k != "report"}


def review_results(path, s3=None) -> dict:
    """The validated results for the approval step: Markdown tables, digest, approved?"""
    from mai_ops.publishing.approval import review

    run = PhaseRun.open(path, s3)
    return review(run.s3, run.challenge)


def record_approval(path, digest: str, by: str | None, s3=None) -> dict:
    from mai_ops.publishing.approval import record_approval as keep

    run = PhaseRun.open(path, s3)
    return keep(run.s3, run.challenge, digest, by)


def promised_instant(challenge: Challenge) -> dt.datetime | None:
    """When the preliminary results are promised (the first such event with a date)."""
    instants = [
        event_instant(challenge, e)
        for e in challenge.timeline
        if dag_phase_of(e) == DagPhase.PRELIMINARY_RESULTS and e.date.fixed
    ]
    return min(instants) if instants else None


def publish_preliminary_results(path, when=None, s3=None, send=None, public_url=None) -> dict:
    """Publish the validated results and email each team its own; never before the instant.

    ``when`` is the instant the run stands for (its logical date): a run before the
    promised instant (an organizer approving ahead) publishes nothing. The emails link
    each track's leaderboard under ``public_url`` (default: the challenge's).
    """
    from mai_ops.publishing.preliminary import publish_preliminary

    run = PhaseRun.open(path, s3, send)
    promised = promised_instant(run.challenge)
    if when is not None and promised is not None and when < promised:
        return {"published": False, "promised": promised.isoformat()}
    table = publish_preliminary(run.s3, run.challenge)
    notices = preliminary_results_notices(run.challenge, table, run.teams, public_url)
    ranked = sum(len(t["rows"]) for t in table["tracks"].values())
    return {"published": True, "results": ranked} | run.deliver(notices).as_dict()


def publish_validation_leaderboard(path, batches=None, s3=None) -> dict:
    """Each team's best verified validation upload per track, ranked, on the public board.

    ``batches``: the uploads this run answered; none, nothing to update.
    """
    from mai_ops.publishing.validation_board import publish_validation_leaderboard as publish

    if batches is not None and not batches:
        return {"published": False, "reason": "no upload answered in this run"}
    run = PhaseRun.open(path, s3)
    table = publish(run.s3, run.challenge)
    return {"published": True, "ranked": {t: len(v["rows"]) for t, v in table["tracks"].items()}}


def collect_uploads(path, events: list[dict] | None = None, s3=None) -> list[list[str]]:
    """Upload keys to process, in batches of one owner's uploads, shared fairly.

    ``events`` are the asset events' ``extra``: the trigger's payload (``uploads``)
    sits under ``payload``. Announced keys and a sweep of every upload without a
    record are merged, so a notification that never came (or a run that failed)
    delays an answer but never loses it. The sweep also takes again an upload refused
    as ``unknown_team`` when its team is registered now (the list was broken then).
    Owners (``<track>/<phase>/<team>``) take turns, at most MAX_PER_OWNER uploads each
    and MAX_PER_RUN in all (:func:`~mai_ops.submissions.validation.fair_batches`); a
    team's uploads stay in one batch, oldest first, because its quota counts its
    earlier uploads; batches run side by side, the oldest upload's first.
    """
    from mai_ops.submissions.validation import fair_batches, pending_uploads

    run = PhaseRun.open(path, s3)
    pending = pending_uploads(run.s3, run.challenge, run.teams)  # oldest first
    batches = fair_batches(pending)
    waiting = {k for keys in batches for k in keys}
    announced = [
        u["key"]
        for extra in events or []
        for u in (extra.get("payload", extra).get("uploads") or [])
        if u.get("bucket") in (None, run.challenge.buckets.submissions)
    ]
    missing = [k for k in announced if k not in waiting]
    if missing:
        shown = ", ".join(repr(k) for k in missing[:10])
        log.info("announced uploads already answered, gone or next: %s", shown)
    if len(waiting) < len(pending):
        log.info("%d upload(s) left for the next run", len(pending) - len(waiting))
    return batches


def uploads_for_queue(path, batches: list[list[str]], queue: str) -> list[list[str]]:
    """The batches the workers of ``queue`` answer (a device host's, or the default)."""
    from mai_ops.devices.pools import batches_by_queue

    return batches_by_queue(load_challenge(path), batches)[queue]


def validate_uploads(path, keys: list[str], s3=None, send=None) -> list[dict]:
    """One team's uploads, in order, each answered; then the team's history in the log.

    A final-phase upload gets its pre-check and an acknowledgement (no benchmark, no
    score); ``precheck_status`` in its result says how the pre-check went.
    """
    run = PhaseRun.open(path, s3, send)
    delivery = DeliveryReport()
    results = [_answer_upload(run, key, delivery) for key in keys]
    registered = {t.team_id for t in run.teams}
    for team_id in dict.fromkeys(r["team"] for r in results if r["team"] in registered):
        log_team_history(run, team_id)
    delivery.raise_for_failures()  # every upload is judged and stored; a reply is missing
    return results


def sweep_stuck_uploads(path, s3=None, send=None, now=None) -> dict:
    """Fail every upload whose processing started long ago and never finished, and say so.

    Each gets a ``processing_stuck`` record and its team the usual reply (once); then
    :class:`~mai_ops.submissions.stuck.StuckWork` names them, which fails the task at
    once so its failure alert tells the organizers. Nothing stuck: nothing happens.
    """
    from mai_ops.submissions.stuck import StuckWork, fail_stuck_uploads

    run = PhaseRun.open(path, s3, send)
    records = fail_stuck_uploads(run.s3, run.challenge, now)
    teams = {t.team_id: t for t in run.teams}
    notices = [
        upload_reply(run.challenge, teams[r["team"]], r) for r in records if r.get("team") in teams
    ]
    report = run.deliver(notices)
    if records:
        listed = "; ".join(f"{r['key']} ({r['errors'][0]['message']})" for r in records)
        raise StuckWork(
            f"{len(records)} upload(s) marked failed as processing_stuck, their teams told: "
            f"{listed}. Their task logs say where the processing stopped; clear the "
            "upload's task to process it again once the cause is fixed"
        )
    return {"stuck": 0} | report.as_dict()


def validate_upload(path, key, s3=None, send=None) -> dict:
    """One upload, start to answer: its record's summary, and the reply email to its team."""
    return validate_uploads(path, [key], s3, send)[0]


def _answer_upload(run: PhaseRun, key: str, delivery: DeliveryReport) -> dict:
    from mai_ops.submissions.validation import process_upload

    record = process_upload(run.s3, run.challenge, run.teams, key)
    team = next((t for t in run.teams if t.team_id == record.get("team")), None)
    if team is not None:
        delivery.merge(run.deliver([upload_reply(run.challenge, team, record)], settle=False))
    else:
        log.warning("upload %r is from no registered team; recorded, nobody to answer", key)
    summary = {k: record.get(k) for k in ("key", "team", "status", "errors", "score")}
    return summary | {"precheck_status": record.get("precheck_status")}


def log_team_history(run: PhaseRun, team_id: str) -> None:
    """The team's history (``mai-ops history``) into the task log; never fails the task.

    It only reads stored records and markers, after the answer is stored and sent, so a
    storage hiccup here costs a warning in the log, not a retry of the upload.
    """
    from mai_ops.submissions.history import render_history, team_history

    try:
        entries = team_history(run.s3, run.challenge, team_id)
    except Exception as exc:  # the upload is answered: the history is a courtesy
        log.warning("history of team %s not shown: %s: %s", team_id, type(exc).__name__, exc)
        return
    for line in render_history(entries, team_id, run.challenge.id):
        log.info("%s", line)
