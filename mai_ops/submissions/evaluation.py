"""One submission, from archive to record: the stages every submission passes.

The validation server and final scoring both call :func:`evaluate`; they differ only
in what they hand it (the upload or the frozen copy with its expected sha256, the
validation data or none, the pre-check of a final upload or everything) and in what
they do with the :class:`Evaluation` record. The stages run in a fixed order, one
short function each:

1. ``integrity``: the archive's sha256 against the one expected (when given);
2. ``unpack``, ``convert``, ``check``: the archive unpacked safely, a SavedModel or
   Keras model converted, the model(s) checked (:func:`~mai_ops.submissions.intake.
   check_submission`; the record lists which of the three ran);
3. ``benchmark``: the runtime model on the track's device;
4. ``fidelity``: the model on the data, when data is given and staged;
5. ``score``: the track's formula over the metrics and the runtime.

``checks_only`` stops after stage 2: the pre-check a final-phase upload gets when it
arrives (no benchmark, no fidelity, no score; those come with scoring after the freeze).
Final scoring runs the stages as separate tasks (``stages=``), each handed what the
stage before it stored (the checked models, the team's own results).

A stage that fails raises a :class:`~mai_ops.errors.StageError` with a registered
code; the record gets it as ``{code, stage, message}`` and the status ``failed``
(``rejected`` when an intake rule refused the upload). Anything else that goes
wrong is ``internal_error``: one submission's failure never stops the others. Only
:class:`~mai_ops.errors.NeedsOrganizer` propagates (unusable organizer data).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mai_ops.challenge.config import Challenge, Track
from mai_ops.errors import CODES, NeedsOrganizer, StageError, registered
from mai_ops.infra.sandbox import SandboxUnavailable
from mai_ops.infra.storage import sha256_of_file

log = logging.getLogger(__name__)
STATUSES = ("ok", "failed", "rejected")
PRECHECK_STATUSES = {"ok": "passed", "failed": "failed", "rejected": "rejected"}


def runtime_ms(runtime: dict | None) -> float | None:
    """The runtime a score uses: the median, or the mean when the tool printed no median."""
    if not runtime:
        return None
    return (
        runtime.get("median_ms") if runtime.get("median_ms") is not None else runtime.get("avg_ms")
    )


@dataclass
class Evaluation:
    """What became of one submission; ``as_json()`` is the stored record."""

    key: str | None = None  # the upload's key in the submissions bucket
    etag: str | None = None
    uploaded_at: str | None = None
    size: int | None = None
    sha256: str | None = None
    track: str | None = None
    phase: str | None = None
    team: str | None = None
    device: str | None = None
    status: str = "ok"
    errors: list[dict[str, str]] = field(default_factory=list)
    stages: list[str] = field(default_factory=list)  # the stages passed, in order
    checks: dict[str, Any] | None = None
    runtime: dict[str, Any] | None = None
    metrics: dict[str, float] | None = None
    score: float | None = None
    notes: list[str] = field(default_factory=list)
    # e.g. ``results_not_reproduced``: shown wherever the result is.
    flags: list[str] = field(default_factory=list)
    # PSNR (dB) of the model's output against the team's own result, per test input.
    reproduction: dict[str, Any] | None = None
    # A flagged submission the track's config keeps out of the ranking.
    excluded: bool = False
    # Wall seconds of each stage that ran (run metadata: where the time goes); the
    # benchmark's own, its wait for a busy device apart under DEVICE_WAIT.
    seconds: dict[str, float] = field(default_factory=dict)
    # A final-phase upload answered on arrival: intake rules and the checks only. Its
    # ``status`` then reads as the pre-check's (``precheck_status`` in the record).
    precheck: bool = False
    # A validation upload's limits once it is judged (``intake.uploads_left``): what
    # the team has left today and in total; None when no limit applies.
    quota: dict[str, Any] | None = None

    def fail(self, *errors: StageError) -> None:
        """Record why the submission stopped: rejected by an intake rule, or failed."""
        self.errors = [e.as_json() for e in errors]
        self.status = "rejected" if all(e.stage == "intake" for e in errors) else "failed"

    @property
    def runtime_ms(self) -> float | None:
        return runtime_ms(self.runtime)

    @property
    def precheck_status(self) -> str | None:
        """``passed``, ``failed`` or ``rejected`` for a pre-check; None otherwise."""
        if not self.precheck:
            return None
        return PRECHECK_STATUSES[self.status]

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {
            "runtime_ms": self.runtime_ms,
            "precheck_status": self.precheck_status,
        }


def retryable(record: dict) -> bool:
    """A stored record that failed for a reason of ours: clearing the task runs it again."""
    return record.get("status") == "failed" and any(
        code in CODES and CODES[code].retry for code in (e["code"] for e in record["errors"])
    )


class _Failed(Exception):
    """Several errors of one stage (a model can break several checks at once)."""

    def __init__(self, errors: list[StageError]):
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


@dataclass
class _Run:
    record: Evaluation
    challenge: Challenge
    track: Track
    archive: Path
    workdir: Path
    expected_sha256: str | None
    fidelity_data: Callable[[], Any] | None
    model: Path | None = None
    fidelity_model: Path | None = None
    results_dir: Path | None = None  # the team's own results on the test inputs
    device_wait: float = 0.0  # seconds the benchmark waited for the device, not working


def evaluate(
    record: Evaluation,
    challenge: Challenge,
    track: Track,
    archive: Path,
    workdir: Path,
    *,
    expected_sha256: str | None = None,
    fidelity_data: Callable[[], Any] | None = None,
    checks_only: bool = False,
    stages: tuple[str, ...] | None = None,
    artifacts: dict[str, Path | None] | None = None,
) -> Evaluation:
    """Run the stages on ``archive`` (in scratch ``workdir``), filling ``record``.

    ``fidelity_data`` returns the data set (:class:`~mai_ops.models.fidelity.DataSet`)
    when called; it is called only once the model is benchmarked, so broken organizer
    data stops good submissions alone. ``checks_only`` stops after the check stage (a
    pre-check: no benchmark, fidelity or score; the record is marked ``precheck``).
    ``stages`` runs only those of :data:`STAGES` (a final-phase task runs one or two);
    ``artifacts`` hands in what an earlier stage left (``model``, ``fidelity_model``,
    ``results_dir``: local paths) and gets what this run left. Returns ``record``.
    """
    record.track = track.id
    record.device = None if checks_only else track.device
    record.precheck = record.precheck or checks_only
    if stages is None:
        stages = PREPARE if checks_only else STAGES
    run = _Run(record, challenge, track, archive, workdir, expected_sha256, fidelity_data)
    for name in ARTIFACTS:
        if (artifacts or {}).get(name):
            setattr(run, name, Path(artifacts[name]))
    try:
        for stage in stages:
            started = time.monotonic()
            try:
                _STAGE_FUNCTIONS[stage](run)
            finally:
                waited, run.device_wait = round(run.device_wait, 3), 0.0
                record.seconds[stage] = round(time.monotonic() - started - waited, 3)
                if waited:
                    record.seconds[DEVICE_WAIT] = waited
    except StageError as exc:
        record.fail(exc)
    except _Failed as exc:
        record.fail(*exc.errors)
    except NeedsOrganizer:
        raise  # e.g. unusable validation data: the organizers fix it, then clear
    except SandboxUnavailable as exc:  # never run participant code unconfined
        log.error("sandbox unavailable, %s not run: %s", record.key or archive, exc)
        record.fail(StageError("sandbox_unavailable", str(exc)))
    except Exception as exc:  # one submission's failure must not stop the others
        log.exception("evaluating %s failed", record.key or archive)
        record.fail(StageError("internal_error", f"{type(exc).__name__}: {exc}"))
    if artifacts is not None:
        artifacts.update({name: getattr(run, name) for name in ARTIFACTS})
    return record


def _integrity(run: _Run) -> None:
    if run.expected_sha256 is None:
        return  # nothing to compare with: an upload is judged by its own sha256
    actual = sha256_of_file(run.archive)
    if actual != run.expected_sha256:
        raise StageError(
            "frozen_copy_changed", f"sha256 is {actual}, manifest says {run.expected_sha256}"
        )
    run.record.stages.append("integrity")


def _unpack_convert_check(run: _Run) -> None:
    from mai_ops.submissions.intake import check_submission

    report = check_submission(run.archive, run.challenge, run.track.id, run.workdir / "work")
    run.record.checks = report.as_json()
    failed = {registered(code).stage for code in report.codes}
    for stage in ("unpack", "convert", "check"):
        if stage in failed:
            break
        if stage != "convert" or report.converted_from:
            run.record.stages.append(stage)
    if failed:
        raise _Failed([StageError(e["code"], e["message"]) for e in report.errors])
    run.model = Path(report.model_path)
    run.fidelity_model = _fidelity_model(run.track, report)
    run.results_dir = Path(report.results_dir) if report.results_dir else None


def _fidelity_model(track: Track, report: Any) -> Path:
    """The file the track runs on the data: ``model_none.tflite`` or ``model.tflite``."""
    wanted = track.fidelity_model_file(bool(report.fidelity_model_path))
    if wanted == "model.tflite":
        return Path(report.model_path)
    if not report.fidelity_model_path:
        raise StageError(
            "missing_model",
            f"the {track.id} track runs model_none.tflite on the test images; the archive has none",
        )
    return Path(report.fidelity_model_path)


def _benchmark(run: _Run) -> None:
    from mai_ops.devices.benchmark import run_benchmark

    device = run.challenge.device(run.track.device)
    result = run_benchmark(
        run.model, device, run.track, waited=lambda s: setattr(run, "device_wait", s)
    )
    run.record.runtime = result.as_json()
    run.record.stages.append("benchmark")


def _fidelity(run: _Run) -> None:
    from mai_ops.models.fidelity import evaluate_model, read_results_dir

    if run.fidelity_data is None:
        return
    data = run.fidelity_data()
    if not data.names:
        run.record.notes.append("no validation ground truth staged: runtime only")
        return
    # The team's own results are of the hidden test inputs: compared in the final phase.
    final = run.record.phase == "final" and run.results_dir
    reference = read_results_dir(run.results_dir) if final else None
    settings = run.track.fidelity
    result = evaluate_model(
        run.fidelity_model, run.track, data, fit=settings.fit, reference=reference or None
    )
    run.record.metrics = result.metrics
    if reference:
        run.record.reproduction = result.as_json()["reproduction"]
    run.record.stages.append("fidelity")


def _score(run: _Run) -> None:
    from mai_ops.models.fidelity import score_or_fail

    _flag_unreproduced(run)
    if run.record.metrics is None:
        return
    # A formula that overflows on these values fails this record (score_not_computable).
    run.record.score = score_or_fail(run.track, run.record.metrics, run.record.runtime_ms)
    run.record.stages.append("score")


def _flag_unreproduced(run: _Run) -> None:
    """Flag results the frozen model does not reproduce (below the track's PSNR)."""
    record, settings = run.record, run.track.fidelity
    if not record.reproduction:
        return
    worst = min(float(v) for v in record.reproduction.values())
    if worst < settings.reproduce_min_psnr:
        flag(record, "results_not_reproduced", exclude=settings.unreproduced == "exclude")


def flag(record: Evaluation, name: str, exclude: bool = False) -> None:
    """Add ``name`` to the record's flags once; ``exclude`` keeps it out of the ranking."""
    if name not in record.flags:
        record.flags.append(name)
    record.excluded = record.excluded or exclude


ARTIFACTS = ("model", "fidelity_model", "results_dir")
PREPARE = ("integrity", "prepare")
STAGES = (*PREPARE, "benchmark", "fidelity", "score")
# The key in ``Evaluation.seconds`` of the time the benchmark waited for its device.
DEVICE_WAIT = "device_wait"
_STAGE_FUNCTIONS: dict[str, Callable[[_Run], None]] = {
    "integrity": _integrity,
    "prepare": _unpack_convert_check,
    "benchmark": _benchmark,
    "fidelity": _fidelity,
    "score": _score,
}
