"""Fidelity of a model on validation (or test) data, and the track's score.

:func:`evaluate_model` runs a participant's TFLite model with LiteRT in a child process
(``python -m mai_ops.models.fidelity_child``, started by :func:`mai_ops.infra.child.run_child`
under a wall-clock timeout and an address-space limit, as the model checks and the LiteRT
benchmark are), and computes the track's
metrics in this process on what the model produced. :func:`score_from` turns metrics and
a measured runtime into the track's score through its configured formula.

Data convention
---------------

Validation data for a track lives in the organizers' bucket, in pairs by name::

    validation/<track>/input/<name>.npy    the model's input for one sample
    validation/<track>/gt/<name>.npy       its ground truth

(:func:`load_validation_set`, :func:`mai_ops.infra.layout.validation_keys`). A folder given to
:func:`evaluate_model` has the same layout: ``<folder>/input/<name>.npy`` and
``<folder>/gt/<name>.npy``. Samples run in name order. An input without a ground truth
(or the reverse) is a staging mistake and an error; no validation data at all is not
(the validation server then reports runtime only).

- Inputs: one ``.npy`` per sample, for a single-input model (the tracks all have one);
  the batch dimension may be left out. In memory, a sample of a multi-input model is a
  tuple of arrays. How the child fits them to the model (resizing dynamic dimensions,
  quantizing float data for a quantized input) is described in
  :mod:`mai_ops.models.fidelity_child`.
- Only the model's first output is compared. A leading batch dimension of 1 and other
  unit dimensions are dropped when that makes its shape the ground truth's.
- Image tracks (``psnr``, ``ssim``): the output is compared as is, in the ground truth's
  value range; nothing is rescaled or clipped, so the model must produce values in that
  range. ``data_range`` comes from the ground truth's dtype: 1.0 for floats (images in
  [0, 1]), 255 for uint8, 65535 for uint16 (any integer dtype: its full span), unless
  :func:`evaluate_model` is given ``data_range``.
- Quantized outputs: compared raw when the output has the ground truth's dtype (uint8
  model, uint8 ground truth); otherwise dequantized with the output's scale and zero
  point, ``(q - zero_point) * scale``, e.g. for float ground truth.
- Depth (``si_rmse``, ``rmse``): depth maps in mm, output and ground truth in the same
  units (uint16 ground truth is fine; everything is computed in float64).
- Classification (``top1``, ``top3``): the ground truth of a sample is its integer
  class label (a 0-d or one-element ``.npy``); the output is the class scores (logits,
  probabilities or quantized scores: only their order matters).

Averaging, as the MAI evaluation scripts: PSNR, SSIM, RMSE and si-RMSE are computed per
sample and averaged over the samples (mean of per-image PSNR, not PSNR of the pooled
error); top-k accuracy is over the whole set (equal to the mean of per-sample hits).

Failures of the model are :class:`FidelityError` with a ``code`` for the participant's
email, the registered codes of the ``fidelity`` stage (:mod:`mai_ops.errors`):
``fidelity_timeout``, ``fidelity_memory_exceeded``, ``fidelity_crashed``,
``fidelity_load_failed``, ``fidelity_allocate_failed``, ``fidelity_input_mismatch``,
``fidelity_invoke_failed``, ``fidelity_non_finite_output``, ``fidelity_output_mismatch``.
Broken organizer data is :class:`ValidationDataError`
(:class:`~mai_ops.errors.NeedsOrganizer`).
"""

from __future__ import annotations

import io
import logging
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mai_ops.challenge.formula import FormulaError, evaluate_formula, formula_names, parse_formula
from mai_ops.errors import NeedsOrganizer, StageError, stage_codes
from mai_ops.infra.child import ChildLimits, run_child
from mai_ops.models.metrics import (
    MEASUREMENT_VARIABLES,
    METRICS,
    TOPK,
    MetricError,
    compute_metric,
    topk_accuracy,
)

log = logging.getLogger(__name__)

CHILD = "mai_ops.models.fidelity_child"
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_MEMORY_MB = 4096


class FidelityError(StageError):
    """The model could not be evaluated: ``code`` for machines, ``message`` for people."""

    def __init__(self, code: str, message: str, sample: str | None = None) -> None:
        super().__init__(code, message)
        assert self.stage == "fidelity", code
        self.sample = sample


class ValidationDataError(NeedsOrganizer, ValueError):
    """The organizers' validation data is unusable (unpaired, unreadable, not finite)."""


@dataclass
class FidelityResult:
    """Metric means over the samples, how many samples, and each sample's values."""

    metrics: dict[str, float]
    count: int
    per_sample: list[dict[str, Any]] = field(default_factory=list)
    data_range: float | None = None
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "metrics": dict(self.metrics),
            "count": self.count,
            "per_sample": list(self.per_sample),
            "data_range": self.data_range,
            "seconds": round(self.seconds, 3),
        }


# ---------------------------------------------------------------------------------
# Validation data in the organizers' bucket
# ---------------------------------------------------------------------------------


def load_validation_set(s3: Any, challenge: Any, track: Any) -> tuple[list, list]:
    """The validation pairs of ``track`` as (inputs, ground truths), in name order.

    ``challenge`` is the :class:`~mai_ops.challenge.config.Challenge` (its organizers' bucket);
    ``track`` a :class:`~mai_ops.challenge.config.Track` or its id. Returns two empty lists when
    nothing is staged. Unpaired or unreadable files raise :class:`ValidationDataError`.
    """
    from mai_ops.infra.layout import validation_data_prefix, validation_keys
    from mai_ops.infra.storage import list_objects

    track_id = getattr(track, "id", track)
    buckets = getattr(challenge, "buckets", None)
    if buckets is None:
        raise ValidationDataError(f"challenge {challenge.id} declares no buckets")
    bucket = buckets.organizers
    input_prefix, gt_prefix = validation_keys(track_id)
    inputs = _npy_keys(list_objects(s3, bucket, input_prefix), input_prefix)
    truths = _npy_keys(list_objects(s3, bucket, gt_prefix), gt_prefix)
    if not inputs and not truths:
        return [], []
    _check_pairs(set(inputs), set(truths), f"s3://{bucket}/{validation_data_prefix(track_id)}")
    names = sorted(inputs)
    xs = [_load_npy(_get(s3, bucket, inputs[n]), f"s3://{bucket}/{inputs[n]}") for n in names]
    ys = [_load_npy(_get(s3, bucket, truths[n]), f"s3://{bucket}/{truths[n]}") for n in names]
    return xs, ys


def _npy_keys(objects, prefix: str) -> dict[str, str]:
    keys = {}
    for obj in objects:
        rest = obj["Key"][len(prefix) :]
        if rest.endswith(".npy") and "/" not in rest:
            keys[rest[: -len(".npy")]] = obj["Key"]
    return keys


def _check_pairs(inputs: set[str], truths: set[str], where: str) -> None:
    lonely_inputs = sorted(inputs - truths)
    lonely_truths = sorted(truths - inputs)
    if lonely_inputs or lonely_truths:
        parts = []
        if lonely_inputs:
            parts.append(f"inputs without ground truth: {', '.join(lonely_inputs[:10])}")
        if lonely_truths:
            parts.append(f"ground truth without input: {', '.join(lonely_truths[:10])}")
        raise ValidationDataError(f"{where}: unpaired validation files ({'; '.join(parts)})")


def _get(s3: Any, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def _load_npy(source: bytes | str | Path, where: str):
    import numpy as np

    try:
        data = io.BytesIO(source) if isinstance(source, bytes) else source
        return np.load(data, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ValidationDataError(f"{where} is not a readable .npy file: {exc}") from None


# ---------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------


def evaluate_model(
    model_path: str | Path,
    track: Any,
    inputs: Sequence[Any] | Mapping[str, Any] | str | Path,
    ground_truth: Sequence[Any] | Mapping[str, Any] | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    threads: int = 1,
    data_range: float | None = None,
) -> FidelityResult:
    """Run ``model_path`` on every sample and compute ``track.metrics`` against the truth.

    ``inputs`` and ``ground_truth`` are two equally long lists (or two mappings by
    sample name) of arrays, or ``inputs`` is a folder with ``input/`` and ``gt/``
    (``ground_truth`` then None). ``track`` needs ``metrics`` (a config ``Track``).
    ``timeout_s`` bounds the whole run, ``memory_mb`` the child's address space.
    Raises :class:`FidelityError` for anything the model did wrong.
    """
    started = time.monotonic()
    metrics = list(getattr(track, "metrics", track))
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(sorted(METRICS))}")
    samples = _samples(inputs, ground_truth)
    if not samples:
        return FidelityResult({}, 0, [], data_range, time.monotonic() - started)

    with tempfile.TemporaryDirectory(prefix="mai-fidelity-") as tmp:
        work = Path(tmp)
        out_dir = work / "out"
        out_dir.mkdir()
        request_samples = []
        for i, (name, x, _) in enumerate(samples):
            request_samples.append({"name": name, "inputs": _input_paths(x, work, i)})
        steps = _run_child(
            {
                "model": str(model_path),
                "threads": int(threads),
                "out_dir": str(out_dir),
                "samples": request_samples,
            },
            ChildLimits(timeout_s=timeout_s, memory_mb=int(memory_mb), scratch=work),
        )
        output = steps["loaded"]["outputs"][0]
        result = _score_samples(samples, steps["sample"], output, metrics, data_range)
    result.seconds = time.monotonic() - started
    return result


def _samples(inputs: Any, ground_truth: Any) -> list[tuple[str, Any, Any]]:
    """(name, input, ground truth) triples; arrays in memory or paths to .npy files."""
    if isinstance(inputs, str | Path):
        if ground_truth is not None:
            raise ValueError("give a folder of input/ and gt/ pairs, or two lists, not both")
        folder = Path(inputs)
        xs = {p.stem: p for p in (folder / "input").glob("*.npy")}
        ys = {p.stem: p for p in (folder / "gt").glob("*.npy")}
        if not (folder / "input").is_dir() and not (folder / "gt").is_dir():
            raise ValidationDataError(f"{folder} has neither input/ nor gt/")
        _check_pairs(set(xs), set(ys), str(folder))
        return [(n, xs[n], ys[n]) for n in sorted(xs)]
    if isinstance(inputs, Mapping):
        if not isinstance(ground_truth, Mapping):
            raise ValueError("inputs by name need ground truth by name (a mapping)")
        _check_pairs(set(inputs), set(ground_truth), "the given samples")
        return [(str(n), inputs[n], ground_truth[n]) for n in sorted(inputs)]
    if ground_truth is None:
        raise ValueError("ground truth is missing")
    inputs, ground_truth = list(inputs), list(ground_truth)
    if len(inputs) != len(ground_truth):
        raise ValueError(f"{len(inputs)} inputs but {len(ground_truth)} ground truths")
    width = max(4, len(str(len(inputs))))
    return [
        (f"{i:0{width}d}", x, y) for i, (x, y) in enumerate(zip(inputs, ground_truth, strict=True))
    ]


def _input_paths(x: Any, work: Path, i: int) -> list[str]:
    import numpy as np

    if isinstance(x, str | Path):
        return [str(x)]
    arrays = list(x) if isinstance(x, tuple | list) else [x]
    paths = []
    for k, array in enumerate(arrays):
        path = work / f"in-{i:06d}-{k}.npy"
        np.save(path, np.asarray(array), allow_pickle=False)
        paths.append(str(path))
    return paths


def _run_child(request: dict[str, Any], limits: ChildLimits) -> dict[str, Any]:
    """Run the child; its steps (``loaded``, each ``sample``) or a :class:`FidelityError`."""
    outcome = run_child(CHILD, request, limits, repeated=("sample",))
    steps = outcome.steps
    count = len(request["samples"])
    done = len(steps["sample"])
    where = f"after {done} of {count} samples"
    current = request["samples"][done]["name"] if done < count else None
    if outcome.status == "timeout":
        message = f"stopped after {limits.timeout_s:g} s {where}"
        raise FidelityError("fidelity_timeout", message, current)
    if outcome.status != "ok":
        memory = outcome.status == "memory_exceeded"
        code = "fidelity_memory_exceeded" if memory else "fidelity_crashed"
        raise FidelityError(code, f"{outcome.message} ({where})", current)
    if "error" in steps:
        error = steps["error"]
        code = error.get("code")
        code = code if code in stage_codes("fidelity") else "fidelity_crashed"
        raise FidelityError(code, str(error.get("message", "")), error.get("sample"))
    if "loaded" not in steps or done != count:
        raise FidelityError(
            "fidelity_crashed", f"the model runner stopped early ({where})", current
        )
    return steps


def _score_samples(
    samples: list[tuple[str, Any, Any]],
    ran: list[dict[str, Any]],
    output: dict[str, Any],
    metrics: list[str],
    data_range: float | None,
) -> FidelityResult:
    import numpy as np

    per_sample: list[dict[str, Any]] = []
    scores, labels = [], []
    sums = dict.fromkeys(metrics, 0.0)
    classify = [m for m in metrics if m in TOPK]
    dense = [m for m in metrics if m not in TOPK]
    range_used = data_range
    for (name, _, truth), record in zip(samples, ran, strict=True):
        gt = _truth(truth, name)
        raw = np.load(record["output"], allow_pickle=False)
        pred = _comparable(raw, gt, output)
        row: dict[str, Any] = {"name": name}
        if classify:
            label = _label(gt, name)
            s = pred.reshape(-1).astype(np.float64)
            if scores and s.shape != scores[0].shape:
                raise FidelityError(
                    "fidelity_output_mismatch",
                    f"sample {name!r}: {s.size} class scores, earlier samples {scores[0].size}",
                    name,
                )
            scores.append(s)
            labels.append(label)
            row["label"] = label
            for m in classify:
                row[m] = _metric(m, s[None, :], np.array([label]), None, name)
        if dense:
            if range_used is None and any(m in ("psnr", "ssim") for m in dense):
                range_used = infer_data_range(gt.dtype)
            p = _align(pred, gt)
            for m in dense:
                row[m] = _metric(m, p, gt, range_used, name)
        for m in metrics:
            sums[m] += row[m]
        per_sample.append(row)
    means = {m: sums[m] / len(per_sample) for m in dense}
    for m in classify:
        means[m] = topk_accuracy(np.stack(scores), np.array(labels), TOPK[m])
    ordered = {m: float(means[m]) for m in metrics}
    return FidelityResult(ordered, len(per_sample), per_sample, range_used)


def infer_data_range(dtype: Any) -> float:
    """1.0 for float ground truth, the dtype's full span for integers (255 for uint8)."""
    from mai_ops.models.metrics import data_range_of

    span = data_range_of(dtype)
    if span is None:
        raise ValidationDataError(f"ground truth of dtype {dtype} has no data range")
    return span


def _truth(truth: Any, name: str):
    import numpy as np

    gt = _load_npy(truth, f"ground truth {name!r}") if isinstance(truth, str | Path) else truth
    gt = np.asarray(gt)
    if gt.dtype.kind not in "biuf" or gt.size == 0:
        raise ValidationDataError(
            f"ground truth {name!r} is not a numeric array (dtype {gt.dtype}, shape {gt.shape})"
        )
    if gt.dtype.kind == "f" and not np.all(np.isfinite(gt)):
        raise ValidationDataError(f"ground truth {name!r} contains NaN or infinite values")
    return gt


def _comparable(raw, gt, output: dict[str, Any]):
    """The raw output, dequantized unless it already has the ground truth's dtype."""
    import numpy as np

    if raw.dtype.kind in "iu" and raw.dtype != gt.dtype and output.get("scale"):
        return (raw.astype(np.float64) - float(output["zero_point"])) * float(output["scale"])
    return raw


def _align(pred, gt):
    """``pred`` in ``gt``'s shape when they differ only by unit dimensions (the batch)."""
    if pred.shape != gt.shape and pred.size == gt.size:
        if [d for d in pred.shape if d != 1] == [d for d in gt.shape if d != 1]:
            return pred.reshape(gt.shape)
    return pred


def _label(gt, name: str) -> int:
    import numpy as np

    if gt.size != 1:
        raise ValidationDataError(
            f"ground truth {name!r} of a classification track must be one class label, "
            f"got shape {gt.shape}"
        )
    value = gt.reshape(-1)[0]
    if not float(value).is_integer():
        raise ValidationDataError(f"ground truth {name!r}: label {value!r} is not an integer")
    return int(np.int64(value))


def _metric(name: str, pred, gt, data_range: float | None, sample: str) -> float:
    try:
        return compute_metric(name, pred, gt, data_range)
    except MetricError as exc:
        raise FidelityError(
            "fidelity_output_mismatch", f"sample {sample!r}: {name}: {exc}", sample
        ) from None


# ---------------------------------------------------------------------------------
# Score
# ---------------------------------------------------------------------------------


def score_with_reason(
    track: Any,
    metrics: Mapping[str, float],
    runtime_ms: float | None,
    measurements: Mapping[str, float] | None = None,
    *,
    constants: Mapping[str, float] | None = None,
) -> tuple[float | None, str]:
    """(score, "") or (None, why): the track's formula over metrics and measurements.

    Variables: the metrics given, ``runtime`` (ms) and ``runtime_s`` from
    ``runtime_ms``, any other measurement (``power``, ``energy``, ``model_size_mb``)
    from ``measurements``, and the track's constants, or ``constants`` in their place
    (an organizer re-scoring with other constants passes the whole set).
    """
    score, reason, _ = _score(track, metrics, runtime_ms, measurements, constants)
    return score, reason


def score_or_fail(
    track: Any,
    metrics: Mapping[str, float],
    runtime_ms: float | None,
    measurements: Mapping[str, float] | None = None,
    *,
    constants: Mapping[str, float] | None = None,
) -> float | None:
    """The track's score; None (logged) when a variable was not measured.

    A formula that cannot be computed on these values (an exponent or a result too
    large, a division by zero) raises ``StageError("score_not_computable")``: that
    submission's record fails with the reason, the others are scored. ``constants``
    replace the track's, as in :func:`score_with_reason`.
    """
    score, reason, computable = _score(track, metrics, runtime_ms, measurements, constants)
    if not computable:
        raise StageError("score_not_computable", reason)
    if score is None:
        log.warning("no score for track %s: %s", getattr(track, "id", "?"), reason)
    return score


def _score(
    track: Any,
    metrics: Mapping[str, float],
    runtime_ms: float | None,
    measurements: Mapping[str, float] | None,
    constants: Mapping[str, float] | None = None,
) -> tuple[float | None, str, bool]:
    """(score, why not, False when the formula failed on the values themselves)."""
    formula = track.score.formula
    constants = dict(track.score.constants if constants is None else constants)
    values: dict[str, float] = {}
    for name, value in metrics.items():
        if value is not None:
            values[name] = float(value)
    if runtime_ms is not None:
        values["runtime"] = float(runtime_ms)
        values["runtime_s"] = float(runtime_ms) / 1000.0
    for name, value in (measurements or {}).items():
        if value is not None:
            values[name] = float(value)
    values.update(constants)
    known = set(METRICS) | set(MEASUREMENT_VARIABLES) | set(constants) | set(metrics)
    try:
        needed = formula_names(parse_formula(formula, known))
    except FormulaError as exc:
        return None, f"the score formula {formula!r} is invalid: {exc}", True
    missing = sorted(needed - values.keys())
    if missing:
        return None, f"the score formula {formula!r} needs {', '.join(missing)}, not measured", True
    bad = sorted(n for n in needed if not math.isfinite(values[n]))
    if bad:
        return None, f"not finite: {', '.join(f'{n}={values[n]}' for n in bad)}", True
    try:
        return evaluate_formula(formula, {n: values[n] for n in needed}), "", True
    except FormulaError as exc:
        return None, str(exc), False


def score_from(
    track: Any,
    metrics: Mapping[str, float],
    runtime_ms: float | None,
    measurements: Mapping[str, float] | None = None,
) -> float | None:
    """The track's score, or None (the reason logged) when a variable is missing."""
    score, reason = score_with_reason(track, metrics, runtime_ms, measurements)
    if score is None:
        log.warning("no score for track %s: %s", getattr(track, "id", "?"), reason)
    return score
