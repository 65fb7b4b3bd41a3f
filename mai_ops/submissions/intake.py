"""The rules for a participant's upload, and the full check of a submission archive.

Two halves, both pure (no Airflow, no network; the S3 and DAG glue call them):

- :func:`judge_upload` decides whether an object that appeared in the submissions
  bucket is a submission we process, from its key, size, server timestamp and
  sha256, the challenge, the registered teams and the earlier uploads. A refusal is
  an :class:`IntakeError` with a registered ``code`` (:mod:`mai_ops.errors`) and a
  ``message`` the team reads in its reply email.
- :func:`check_submission` unpacks an accepted archive safely, in a limited and
  sandboxed child (:func:`mai_ops.submissions.archive.unpack_in_child`), converts a
  SavedModel / Keras model to TFLite in a child process (:mod:`mai_ops.models.conversion`)
  when there is no ``model.tflite``, and runs the conversion checks
  (:mod:`mai_ops.models.checks`) on ``model.tflite`` and, when the track has a fidelity
  model, on ``model_none.tflite``.

The key layout is ``<track>/<phase>/<team>/<filename>`` in the challenge's
submissions bucket (:mod:`mai_ops.infra.layout`), ``phase`` being ``validation``
or ``final``.

Decisions (docs/participants.md explains them to teams):

- Rules run in this order and the first that fails is reported: ``bad_key``,
  ``unknown_track``, ``unknown_phase``, ``unknown_team``, ``not_registered``,
  ``phase_not_open``, ``late``, ``not_zip_name``, ``upload_too_large``, ``duplicate``,
  ``over_total_limit``, ``over_daily_limit``. The last three are validation-phase rules:
  a final-phase upload is never a ``duplicate`` nor over a limit (a team uploads its
  final submission as often as it likes until the deadline; the last one received in
  time is frozen and scored).
- Time is the storage server's timestamp of the upload (S3 ``LastModified``), never
  the clock of the machine judging it; a naive datetime is taken as UTC.
- Opening: the validation phase opens at ``validation_server_online``; the final phase
  at ``test_data_release`` (the final results need the test inputs), or at
  ``validation_server_online`` when the timeline has no test data release. Before that
  instant: ``phase_not_open`` (also when the event has no fixed date yet).
- Closing: both phases close at ``final_deadline``. An upload stamped exactly at the
  deadline instant is on time; one microsecond later is ``late``. A deadline whose date
  is not fixed yet closes nothing.
- Limits (the track's ``limits.per_day`` and ``limits.total``, counted per track and
  team, in the validation phase only): only the team's EARLIER uploads count, ordered by
  ``(uploaded_at, key)``, and only those that were checked: status ``"ok"`` (passed) or
  ``"failed"`` for a reason of the submission's (its checks ran and failed). Junk costs
  the team that sends it, not the other teams waiting for the server: past the limit,
  a flood is refused at intake, before any check runs. Rejected uploads (the rules
  refused them, nothing was checked) and failures of ours (``PastUpload.ours``: a
  registered code with ``retry``, e.g. ``internal_error``) do not count. The day is the
  UTC calendar day of ``uploaded_at`` (Codalab's); the message gives the next reset in
  UTC and in the challenge's zone.
- Duplicates (validation phase only): the same sha256 as an earlier validation upload
  of the same team and track whose status is ``"ok"`` or ``"failed"`` (the same bytes
  give the same result); a rejected upload may be sent again unchanged. The message
  names the latest such key. The same bytes sent again under the same key are not a
  duplicate but the same upload: records are keyed by key and ETag, so the stored
  record is the answer and nothing is judged or sent again.
- Determinism: the decision depends only on (upload, challenge, teams, history); the
  upload's own record in ``history`` (same key and time) is not "earlier", and
  records later than the upload are ignored, so re-judging gives the same answer.
"""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mai_ops.challenge.config import Challenge
from mai_ops.challenge.dates import zone
from mai_ops.challenge.participants import Team
from mai_ops.challenge.timeline import event_instant
from mai_ops.errors import StageError, registered
from mai_ops.infra.child import ChildLimits
from mai_ops.infra.layout import (
    FINAL_PHASE,
    PHASES,
    BadUploadKey,
    UploadKey,
    parse_upload_key,
)
from mai_ops.models.checks import ModelSpec, check_model
from mai_ops.models.conversion import ConversionError, convert_in_child
from mai_ops.submissions.archive import ArchiveError, ArchiveLimits, unpack_in_child

STATUSES = ("ok", "failed", "rejected")
_MB = 1024 * 1024
MAX_UPLOAD_MB = ArchiveLimits().max_total_mb


class IntakeError(StageError):
    """An upload refused by a rule; ``path`` is the parsed key when it could be parsed."""

    def __init__(self, code: str, message: str, path: UploadKey | None = None):
        super().__init__(code, message)
        assert self.stage == "intake", code
        self.path = path


@dataclass(frozen=True)
class Upload:
    """An object in the submissions bucket: its key, size, server timestamp, sha256."""

    key: str
    size: int
    uploaded_at: dt.datetime
    sha256: str


@dataclass(frozen=True)
class PastUpload:
    """An earlier upload and what became of it: ``ok``, ``failed`` or ``rejected``.

    ``ours``: it failed for a reason of ours (a code the registry retries), so it does
    not use the team's quota.
    """

    key: str
    track: str
    phase: str
    team: str
    uploaded_at: dt.datetime
    sha256: str
    status: str
    ours: bool = False

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {self.status!r}")


def oversize(size: int) -> str:
    """Why an upload of ``size`` bytes is too large, or "" when it is not.

    The validation server asks before downloading a byte; the rules ask again.
    """
    if size <= MAX_UPLOAD_MB * _MB:
        return ""
    return f"the upload is {size / _MB:.1f} MB, over the limit of {MAX_UPLOAD_MB:g} MB"


def judge_upload(
    upload: Upload, challenge: Challenge, teams: list[Team], history: list[PastUpload]
) -> UploadKey:
    """The upload's parsed key when it is a submission to process; raises IntakeError."""
    try:
        path = parse_upload_key(upload.key)
    except BadUploadKey as exc:
        raise IntakeError("bad_key", str(exc)) from None

    def refuse(code: str, message: str) -> IntakeError:
        return IntakeError(code, message, path)

    try:
        track = challenge.track(path.track)
    except KeyError:
        known = ", ".join(t.id for t in challenge.tracks) or "none"
        raise refuse(
            "unknown_track",
            f"{challenge.title} has no track {path.track!r}; the tracks are: {known}",
        ) from None
    if path.phase not in PHASES:
        raise refuse(
            "unknown_phase",
            f"{path.phase!r} is not a phase; upload to {path.track}/validation/{path.team}/ "
            f"during the validation phase or {path.track}/final/{path.team}/ for the final "
            "submission",
        )
    team = next((t for t in teams if t.team_id == path.team), None)
    if team is None:
        raise refuse(
            "unknown_team",
            f"{path.team!r} is not a registered team of {challenge.title}; the folder after "
            "the phase must be your team id exactly as in your registration email",
        )
    if team.tracks and track.id not in team.tracks:
        raise refuse(
            "not_registered",
            f"team {team.team_id} is not registered for the {track.title} track ({track.id}); "
            f"it is registered for: {', '.join(team.tracks)}",
        )

    at = _utc(upload.uploaded_at)
    opens_event, opens = _opening(challenge, path.phase)
    if opens is None:
        raise refuse(
            "phase_not_open",
            f"the {path.phase} phase has no opening date yet ({opens_event} is not fixed); "
            "you will be told when it opens",
        )
    if at < opens:
        raise refuse(
            "phase_not_open",
            f"uploaded at {utc_and_local(at, challenge)}, before the {path.phase} phase opens at "
            f"{utc_and_local(opens, challenge)} ({opens_event})",
        )
    deadline = final_deadline(challenge)
    if deadline is not None and at > deadline:
        what = "the validation server closed" if path.phase == "validation" else "the deadline"
        raise refuse(
            "late",
            f"uploaded at {utc_and_local(at, challenge)} according to the storage server's "
            f"timestamp, after the final deadline {utc_and_local(deadline, challenge)}; {what} "
            "at that instant",
        )

    if not path.filename.lower().endswith(".zip"):
        raise refuse(
            "not_zip_name",
            f"{path.filename!r} is not a .zip file; upload one .zip archive holding "
            "model.tflite (and optionally model_none.tflite, results, fact sheet, readme)",
        )
    if oversize(upload.size):
        raise refuse("upload_too_large", oversize(upload.size))
    if path.phase == FINAL_PHASE:
        return path  # no duplicates, no limits: the last final upload in time is scored

    earlier = _earlier(upload, path, history)
    digest = upload.sha256.strip().lower()
    same = [
        h
        for h in earlier
        if digest and h.sha256.strip().lower() == digest and h.status in ("ok", "failed")
    ]
    if same:
        prev = same[-1]
        result = "passed" if prev.status == "ok" else "failed"
        raise refuse(
            "duplicate",
            f"this archive is identical (sha256 {digest[:16]}...) to your earlier upload "
            f"{prev.key} of {utc_and_local(_utc(prev.uploaded_at), challenge)}, whose checks "
            f"{result}; the same bytes give the same result, so change the submission "
            "before uploading it again",
        )

    counted = _counted(earlier)
    limits = track.limits
    if len(counted) >= limits.total:
        raise refuse(
            "over_total_limit",
            f"team {team.team_id} has used all {limits.total} {path.phase} submissions for "
            f"{track.id} ({len(counted)} were checked, passed or failed; rejected uploads "
            "and failures on our side are not counted)",
        )
    day = at.date()
    today = [h for h in counted if _utc(h.uploaded_at).date() == day]
    if len(today) >= limits.per_day:
        reset = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=dt.UTC)
        raise refuse(
            "over_daily_limit",
            f"team {team.team_id} has used all {limits.per_day} {path.phase} submissions for "
            f"{track.id} on {day.isoformat()} (the UTC day; every checked upload counts, passed "
            "or failed; rejected uploads and failures on our side do not); the count restarts "
            f"at {utc_and_local(reset, challenge)}",
        )
    return path


def _earlier(upload: Upload, path: UploadKey, history: list[PastUpload]) -> list[PastUpload]:
    """The team's uploads to the same track and phase before ``upload``, oldest first."""
    order = (_utc(upload.uploaded_at), upload.key)
    return sorted(
        (
            h
            for h in history
            if h.team == path.team
            and h.track == path.track
            and h.phase == path.phase
            and (_utc(h.uploaded_at), h.key) < order
        ),
        key=lambda h: (_utc(h.uploaded_at), h.key),
    )


def _counted(uploads: list[PastUpload]) -> list[PastUpload]:
    """The uploads the limits count: checked ones, passed or failed for the team's reason."""
    return [h for h in uploads if h.status == "ok" or (h.status == "failed" and not h.ours)]


def uploads_left(
    upload: Upload,
    path: UploadKey,
    challenge: Challenge,
    history: list[PastUpload],
    counted: bool,
) -> dict[str, Any] | None:
    """What the team has left of its validation limits once ``upload`` is judged.

    ``counted``: this upload counts itself (checked, passed or failed for the team's
    reason). The same count as the rules', so what a reply says is what the next
    upload meets: ``{"per_day", "total", "left_today", "left_total", "day",
    "resets_at"}`` (the UTC day of the upload and the instant the daily count
    restarts). None for a final-phase upload or a track the challenge does not have:
    no limits apply.
    """
    if path.phase == FINAL_PHASE:
        return None
    try:
        limits = challenge.track(path.track).limits
    except KeyError:
        return None
    used = _counted(_earlier(upload, path, history))
    day = _utc(upload.uploaded_at).date()
    today = [h for h in used if _utc(h.uploaded_at).date() == day]
    this = 1 if counted else 0
    reset = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=dt.UTC)
    return {
        "per_day": limits.per_day,
        "total": limits.total,
        "left_today": max(0, limits.per_day - len(today) - this),
        "left_total": max(0, limits.total - len(used) - this),
        "day": day.isoformat(),
        "resets_at": reset.isoformat(),
    }


def _utc(instant: dt.datetime) -> dt.datetime:
    if instant.tzinfo is None or instant.utcoffset() is None:
        return instant.replace(tzinfo=dt.UTC)
    return instant.astimezone(dt.UTC)


def _instant(challenge: Challenge, name: str) -> dt.datetime | None:
    try:
        event = challenge.event(name)
    except KeyError:
        return None
    local = event_instant(challenge, event)
    return local.astimezone(dt.UTC) if local is not None else None


def final_deadline(challenge: Challenge) -> dt.datetime | None:
    """The UTC instant both phases close at; None while its date is not fixed."""
    return _instant(challenge, "final_deadline")


def _opening(challenge: Challenge, phase: str) -> tuple[str, dt.datetime | None]:
    """The event that opens ``phase`` and its UTC instant (None: not fixed / absent)."""
    names = ["validation_server_online"]
    if phase == "final":
        names.insert(0, "test_data_release")
    for name in names:
        try:
            challenge.event(name)
        except KeyError:
            continue
        return name, _instant(challenge, name)
    return names[-1], None


def utc_and_local(instant: dt.datetime, challenge: Challenge) -> str:
    """``2021-03-21 00:00:01 UTC (2021-03-20 17:00:01 PDT, America/Los_Angeles)``.

    How every instant a team reads is written; a naive ``instant`` is taken as UTC.
    """
    utc = _utc(instant)
    local = utc.astimezone(zone(challenge.timezone))
    return (
        f"{utc:%Y-%m-%d %H:%M:%S} UTC "
        f"({local:%Y-%m-%d %H:%M:%S} {local.tzname()}, {challenge.timezone})"
    )


# ---------------------------------------------------------------------------------
# check_submission: unpack, convert if needed, check the models
# ---------------------------------------------------------------------------------


@dataclass
class SubmissionReport:
    """The verdict on one archive; ``as_json()`` is what is stored and mailed."""

    archive: str
    track: str
    errors: list[dict[str, str]] = field(default_factory=list)
    model: dict[str, Any] | None = None  # model.tflite's CheckReport.as_json()
    model_none: dict[str, Any] | None = None  # model_none.tflite's, when checked
    files: list[str] = field(default_factory=list)
    converted_from: str | None = None  # the SavedModel / Keras path, when converted
    factsheet: str | None = None
    readme: str | None = None
    results: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Local paths inside ``workdir`` (not in as_json): the runtime model that was
    # checked (submitted or converted) and the fidelity model, for the benchmark and
    # fidelity steps that follow. They live as long as the caller's workdir.
    model_path: str | None = None
    fidelity_model_path: str | None = None
    results_dir: str | None = None  # the archive's top-level results/ folder, if any

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def codes(self) -> list[str]:
        return [e["code"] for e in self.errors]

    def add(self, code_name: str, message: str) -> None:
        registered(code_name)  # or a bug of ours
        self.errors.append({"code": code_name, "message": message})

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "errors": list(self.errors),
            "archive": self.archive,
            "track": self.track,
            "model": self.model,
            "model_none": self.model_none,
            "converted_from": self.converted_from,
            "files": list(self.files),
            "factsheet": self.factsheet,
            "readme": self.readme,
            "results": list(self.results),
            "warnings": list(self.warnings),
        }


def check_submission(
    archive: str | Path,
    challenge: Challenge,
    track_id: str,
    workdir: str | Path,
    *,
    limits: ArchiveLimits | None = None,
    sandbox: ChildLimits | None = None,
    representative: str | Path | None = None,
    conversion_timeout_s: float = 900.0,
    conversion_memory_mb: int = 16384,
) -> SubmissionReport:
    """Unpack ``archive`` into ``workdir``, convert if needed, check the model(s).

    ``workdir`` is scratch space owned by the caller; ``workdir/unpacked`` and
    ``workdir/converted`` are replaced. ``sandbox``: the model checks' limits (default:
    the track's ``checks`` settings).
    ``representative`` is a ``.npy`` file of N input samples for INT8 conversion
    (N x the track's input shape without its batch); without it, 8 seeded uniform
    [0, 1) samples are used.
    """
    archive, workdir = Path(archive), Path(workdir)
    report = SubmissionReport(archive=archive.name, track=track_id)
    try:
        track = challenge.track(track_id)
    except KeyError:
        known = ", ".join(t.id for t in challenge.tracks) or "none"
        report.add("unknown_track", f"{challenge.id} has no track {track_id!r} (known: {known})")
        return report
    if sandbox is None:
        sandbox = ChildLimits(timeout_s=track.checks.timeout_s, memory_mb=track.checks.memory_mb)

    unpacked = workdir / "unpacked"
    converted_dir = workdir / "converted"
    for folder in (unpacked, converted_dir):
        if folder.exists():
            shutil.rmtree(folder)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        # In a limited, sandboxed child: a zip bomb costs that process, not the worker.
        # A child that died for a reason of ours raises StageError("internal_error").
        sub = unpack_in_child(archive, unpacked, limits or ArchiveLimits())
    except ArchiveError as exc:
        report.add(exc.code, exc.message)
        return report
    j = sub.as_json()
    report.files, report.factsheet, report.readme = j["files"], j["factsheet"], j["readme"]
    report.results = j["results"]
    if (sub.root / "results").is_dir():
        report.results_dir = str(sub.root / "results")
    if sub.factsheet is None:
        report.warnings.append(
            "no fact sheet (.pdf) in the archive; it is required with the final submission"
        )

    model, label = sub.model, "model.tflite"
    if model is None:
        source = sub.saved_model or sub.keras_model
        rel = source.relative_to(sub.root).as_posix()
        rel = ("./" if rel == "." else f"{rel}/") if source.is_dir() else rel
        report.converted_from = rel
        if sub.saved_model is not None and sub.keras_model is not None:
            report.warnings.append(
                f"both a SavedModel ({rel}) and a Keras model ({j['keras_model']}) were "
                "found; the SavedModel was converted"
            )
        label = f"model.tflite (converted from {rel})"
        try:
            model = convert_in_child(
                source,
                converted_dir / "model.tflite",
                track,
                representative=representative,
                timeout_s=conversion_timeout_s,
                memory_mb=conversion_memory_mb,
            )
        except ConversionError as exc:
            report.add("conversion_failed", f"{rel}: {exc}")
            return report
    else:
        ignored = [p for p in (j["saved_model"], j["keras_model"]) if p]
        if ignored:
            report.warnings.append(
                f"model.tflite was checked; {', '.join(ignored)} was not converted"
            )

    report.model_path = str(model)
    checked = check_model(model, ModelSpec.from_track(track), sandbox)
    report.model = checked.as_json()
    for e in checked.errors:
        report.add(e.code, f"{label}: {e.message}")

    if sub.model_none is not None:
        if track.fidelity_inputs:
            fidelity = check_model(
                sub.model_none, ModelSpec.from_track(track, fidelity=True), sandbox
            )
            report.model_none = fidelity.as_json()
            report.fidelity_model_path = str(sub.model_none)
            for e in fidelity.errors:
                report.add(e.code, f"model_none.tflite: {e.message}")
        else:
            report.warnings.append(
                f"model_none.tflite was not checked: the {track.id} track has no fidelity model"
            )
    return report
