"""Scoring of the frozen final set: one submission, one stage at a time.

Each frozen submission passes the stages of :mod:`mai_ops.submissions.evaluation`,
split so that each can fail and be re-run on its own (one Airflow task each):

- ``prepare``: the frozen copy's sha256 against the manifest, unpack, convert, checks.
  Stores ``checks.json`` and what the next stages need: the checked runtime model
  (``model.tflite``), the model that runs on the test images (``fidelity_model.tflite``)
  and the team's own results (``results/<name>``);
- ``benchmark``: the runtime on the track's device (``benchmark.json``);
- ``fidelity``: the frozen model on the hidden test set, and its output against the
  team's own results (``fidelity.json``);
- ``score``: the record (``record.json``) from the three, with the track's score and
  flags such as ``results_not_reproduced``.

Everything sits under :func:`~mai_ops.infra.layout.submission_prefix` (track, team,
sha256). A stage that finds its stored result keeps it (a cleared task writes the same
record) unless asked to measure again (``force``) or the stored result failed for a
reason of ours (a retried code). A bad submission gets a failed record with a code; it
never stops the others.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from mai_ops.challenge.config import Challenge
from mai_ops.errors import NeedsOrganizer
from mai_ops.infra.layout import FROZEN_MANIFEST, score_key, stage_key
from mai_ops.infra.storage import get_json, list_objects, object_exists, put_json
from mai_ops.submissions.evaluation import PREPARE, Evaluation, evaluate, flag, retryable

STAGES = ("prepare", "benchmark", "fidelity", "score")
_FILES = {
    "prepare": "checks.json",
    "benchmark": "benchmark.json",
    "fidelity": "fidelity.json",
    "score": "record.json",
}
RESULT_SUFFIXES = (".png", ".npy")


class NoFrozenSet(NeedsOrganizer):
    """Scoring was asked for before the final set was frozen."""


class StageNotReady(RuntimeError):
    """A stage ran before the stage it needs stored its result (a failure of ours)."""


def frozen_entries(s3: Any, challenge: Challenge) -> list[dict]:
    bucket = challenge.buckets.results
    if not object_exists(s3, bucket, FROZEN_MANIFEST):
        raise NoFrozenSet(
            f"no frozen final set for {challenge.id}: s3://{bucket}/{FROZEN_MANIFEST} does not "
            "exist; run the final collection first"
        )
    return get_json(s3, bucket, FROZEN_MANIFEST)["frozen"]


def run_stage(s3: Any, challenge: Challenge, entry: dict, stage: str, force: bool = False) -> dict:
    """The stored result of ``stage`` for the frozen ``entry``, computed when missing.

    ``force`` measures again (benchmark, fidelity) or checks again (prepare); the
    score is always recomputed from the stored stages, which costs nothing.
    """
    key = _stage_file(entry, stage)
    results = challenge.buckets.results
    if stage != "score" and not force and object_exists(s3, results, key):
        stored = get_json(s3, results, key)
        if not retryable(stored):
            return stored
    record = _STAGE_RUNNERS[stage](s3, challenge, entry)
    data = record.as_json()
    put_json(s3, results, key, data)
    return data


def _stage_file(entry: dict, stage: str) -> str:
    return stage_key(entry["track"], entry["team"], entry["sha256"], _FILES[stage])


def _new_record(entry: dict) -> Evaluation:
    return Evaluation(
        key=entry.get("source"),
        uploaded_at=entry.get("uploaded_at"),
        size=entry["size"],
        sha256=entry["sha256"],
        phase="final",
        team=entry["team"],
    )


def _prepare(s3: Any, challenge: Challenge, entry: dict) -> Evaluation:
    record = _new_record(entry)
    track = challenge.track(entry["track"])
    results = challenge.buckets.results
    with tempfile.TemporaryDirectory(prefix="mai-score-") as tmp:
        archive = Path(tmp) / "submission.zip"
        s3.download_file(results, entry["frozen"], str(archive))
        artifacts: dict[str, Path | None] = {}
        evaluate(
            record,
            challenge,
            track,
            archive,
            Path(tmp),
            expected_sha256=entry["sha256"],
            stages=PREPARE,
            artifacts=artifacts,
        )
        if record.status == "ok":
            _store_artifacts(s3, results, entry, artifacts)
    return record


def _store_artifacts(s3: Any, bucket: str, entry: dict, artifacts: dict) -> None:
    """The checked models and the team's results, for the benchmark and fidelity tasks."""
    key = lambda name: stage_key(entry["track"], entry["team"], entry["sha256"], name)  # noqa: E731
    s3.upload_file(str(artifacts["model"]), bucket, key("model.tflite"))
    s3.upload_file(str(artifacts["fidelity_model"]), bucket, key("fidelity_model.tflite"))
    folder = artifacts.get("results_dir")
    for path in sorted(folder.iterdir()) if folder else []:
        if path.is_file() and path.suffix.lower() in RESULT_SUFFIXES:
            s3.upload_file(str(path), bucket, key(f"results/{path.name}"))


def _prepared(s3: Any, challenge: Challenge, entry: dict) -> dict:
    key = _stage_file(entry, "prepare")
    bucket = challenge.buckets.results
    if not object_exists(s3, bucket, key):
        raise StageNotReady(
            f"{entry['track']}/{entry['team']}: no stored checks (s3://{bucket}/{key}); "
            "clear the prepare task first"
        )
    return get_json(s3, bucket, key)


def _benchmark(s3: Any, challenge: Challenge, entry: dict) -> Evaluation:
    return _from_stored(s3, challenge, entry, "benchmark", {"model": "model.tflite"})


def _fidelity(s3: Any, challenge: Challenge, entry: dict) -> Evaluation:
    from functools import partial

    from mai_ops.models.fidelity import load_data_set

    data = partial(load_data_set, s3, challenge, challenge.track(entry["track"]), "test")
    files = {"fidelity_model": "fidelity_model.tflite", "results_dir": "results/"}
    return _from_stored(s3, challenge, entry, "fidelity", files, fidelity_data=data)


def _from_stored(
    s3: Any, challenge: Challenge, entry: dict, stage: str, files: dict, **options
) -> Evaluation:
    """Run ``stage`` on what ``prepare`` stored: ``files`` maps artifacts to stored names."""
    record = _new_record(entry)
    bucket = challenge.buckets.results
    _prepared(s3, challenge, entry)
    with tempfile.TemporaryDirectory(prefix="mai-score-") as tmp:
        artifacts = {}
        for artifact, name in files.items():
            local = Path(tmp) / name
            if name.endswith("/"):
                artifacts[artifact] = _download_results(s3, bucket, entry, local)
            else:
                s3.download_file(bucket, _artifact_key(entry, name), str(local))
                artifacts[artifact] = local
        track = challenge.track(entry["track"])
        evaluate(
            record,
            challenge,
            track,
            None,
            Path(tmp),
            stages=(stage,),
            artifacts=artifacts,
            **options,
        )
    return record


def _download_results(s3: Any, bucket: str, entry: dict, folder: Path) -> Path | None:
    prefix = _artifact_key(entry, "results/")
    objects = list(list_objects(s3, bucket, prefix))
    if not objects:
        return None
    folder.mkdir()
    for obj in objects:
        s3.download_file(bucket, obj["Key"], str(folder / obj["Key"][len(prefix) :]))
    return folder


def _artifact_key(entry: dict, name: str) -> str:
    return stage_key(entry["track"], entry["team"], entry["sha256"], name)


def _score(s3: Any, challenge: Challenge, entry: dict) -> Evaluation:
    """The record from the stored stages: the first failure, or the score and flags."""
    bucket = challenge.buckets.results
    track = challenge.track(entry["track"])
    record = _from_json(_prepared(s3, challenge, entry))
    if record.status != "ok":
        return record
    later = {}
    for stage in ("benchmark", "fidelity"):
        key = _stage_file(entry, stage)
        if not object_exists(s3, bucket, key):
            raise StageNotReady(
                f"{entry['track']}/{entry['team']}: no stored {stage} (s3://{bucket}/{key}); "
                f"clear the {stage} task first"
            )
        later[stage] = get_json(s3, bucket, key)
    record.runtime = later["benchmark"]["runtime"]
    record.metrics = later["fidelity"]["metrics"]
    record.reproduction = later["fidelity"]["reproduction"]
    record.notes += later["benchmark"]["notes"] + later["fidelity"]["notes"]
    record.stages += later["benchmark"]["stages"] + later["fidelity"]["stages"]
    for stage in ("benchmark", "fidelity"):
        record.seconds.update(later[stage].get("seconds") or {})
    failed = [later[s] for s in ("benchmark", "fidelity") if later[s]["status"] != "ok"]
    if failed:
        record.errors, record.status = failed[0]["errors"], "failed"
        if (record.checks or {}).get("results") and later["fidelity"]["status"] != "ok":
            # Results the frozen model cannot have produced: it does not even run on them.
            flag(record, "results_not_reproduced", track.fidelity.unreproduced == "exclude")
        return record
    evaluate(record, challenge, track, None, None, stages=("score",))
    record.seconds.pop("score", None)  # microseconds; kept out so a re-run writes the same
    return record


def _from_json(data: dict) -> Evaluation:
    names = {f.name for f in dataclasses.fields(Evaluation)}
    return Evaluation(**{k: v for k, v in data.items() if k in names})


_STAGE_RUNNERS = {
    "prepare": _prepare,
    "benchmark": _benchmark,
    "fidelity": _fidelity,
    "score": _score,
}


def scored_record(s3: Any, challenge: Challenge, entry: dict) -> dict | None:
    """The stored record of a frozen submission, or None when it is not scored yet."""
    key = score_key(entry["track"], entry["team"], entry["sha256"])
    bucket = challenge.buckets.results
    return get_json(s3, bucket, key) if object_exists(s3, bucket, key) else None


def score_frozen(s3: Any, challenge: Challenge, entry: dict, force: bool = False) -> dict:
    """Every stage of one frozen submission in one go (what the DAG's tasks do one by one)."""
    checks = run_stage(s3, challenge, entry, "prepare", force)
    if checks["status"] == "ok":
        for stage in ("benchmark", "fidelity"):
            run_stage(s3, challenge, entry, stage, force)
    return run_stage(s3, challenge, entry, "score")
