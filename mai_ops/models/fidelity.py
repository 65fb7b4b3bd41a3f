"""Fidelity of a model on validation (or test) data, and the track's score.

:func:`evaluate_model` runs a participant's TFLite model with LiteRT in a child process
(``python -m mai_ops.models.fidelity_child``, started by :func:`mai_ops.infra.child.run_child`
under a wall-clock timeout and an address-space limit, as the model checks and the LiteRT
benchmark are), and computes the track's
metrics in this process on what the model produced. :func:`score_from` turns metrics and
a measured runtime into the track's score through its configured formula.

Data convention
---------------

A track's validation data and hidden test data live in the organizers' bucket, in
pairs by name::

    validation/<track>/input/<name>.png|.npy    the model's input for one sample
    validation/<track>/gt/<name>.png|.npy       its ground truth
    test/<track>/input/<name>.png|.npy          the same for the test set
    test/<track>/gt/<name>.png|.npy

(:func:`load_data_set`, :func:`mai_ops.infra.layout.data_set_keys`). A folder given to
:func:`evaluate_model` has the same layout, ``<folder>/input/`` and ``<folder>/gt/``
(:func:`load_data_folder`). Files are PNG (8- or 16-bit, 1 to 4 channels, read by
:func:`mai_ops.models.metric_files.read_png` as uint8 or uint16: RAW Bayer planes, RGB,
depth in mm) or ``.npy`` (no pickles); a pair is matched by the name without extension.
Samples run in name order. Staging mistakes are a :class:`ValidationDataError` naming
each offending ``s3://bucket/key``: a file without its partner, two files with one name
(``x.png`` and ``x.npy``), another file type or a subfolder, an unreadable file, NaN in a
float file, sizes that disagree (image and depth tracks: the ground truth's height and
width are one whole multiple of the input's, the same for every pair, e.g. x3 for
super-resolution; top-k tracks: the ground truth is one integer label), a file over
:data:`MAX_DATA_FILE_BYTES` (1 GiB), a set over :data:`MAX_DATA_SET_BYTES` (4 GiB,
stored or decoded, as the whole set is held in memory) or :data:`MAX_DATA_SET_PAIRS`
pairs, and, for test data, nothing staged. No validation data at all is not a mistake
(the validation server then reports runtime only).

- Inputs: one file per sample, for a single-input model (the tracks all have one);
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

Reproduction: given the team's own results (:func:`read_results_dir`, from the archive's
``results/``), :func:`evaluate_model` reports each result's PSNR against the model's
output on the same input (:func:`reproduction_psnr`), in ``FidelityResult.reproduction``
as ``{name: dB}``: plain numbers, at most 100 dB (identical arrays; the metric's cap),
never infinite, so the record stays valid JSON; 0.0 with a reason in
``reproduction_notes`` for a result of another shape.

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
    # Sample name -> PSNR (dB, at most 100) of the team's own result against our run of
    # its model; only the samples with a result (``reference`` of evaluate_model).
    reproduction: dict[str, float] = field(default_factory=dict)
    # Sample name -> why its reproduction is 0 or missing (a shape mismatch, no result).
    reproduction_notes: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "metrics": dict(self.metrics),
            "count": self.count,
            "per_sample": list(self.per_sample),
            "data_range": self.data_range,
            "seconds": round(self.seconds, 3),
            "reproduction": dict(self.reproduction),
            "reproduction_notes": dict(self.reproduction_notes),
        }


# ---------------------------------------------------------------------------------
# Validation and test data in the organizers' bucket
# ---------------------------------------------------------------------------------

DATA_SUFFIXES = (".png", ".npy")
# One staged file, as stored (a 16-bit 4K RGB PNG is about 50 MB; a float32 one as .npy 100 MB).
MAX_DATA_FILE_BYTES = 1 << 30
# A whole data set, inputs and ground truth together, as stored and as decoded arrays:
# the set is held in memory while a model runs on it.
MAX_DATA_SET_BYTES = 4 << 30
MAX_DATA_SET_PAIRS = 10_000
# How many problems one error message lists (the count of the rest follows).
_SHOWN_PROBLEMS = 20


@dataclass
class DataSet:
    """The pairs of one track's ``validation`` or ``test`` data, in name order."""

    names: list[str]
    inputs: list[Any]
    truths: list[Any]

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class StagedFile:
    """One file of a data set: where it is (for messages), its size, how to open it."""

    name: str
    where: str
    size: int
    suffix: str
    source: Any  # an S3 key or a local path


def load_data_set(s3: Any, challenge: Any, track: Any, kind: str) -> DataSet:
    """The ``kind`` (``validation`` or ``test``) pairs of ``track``, read and checked.

    ``challenge`` is the :class:`~mai_ops.challenge.config.Challenge` (its organizers'
    bucket); ``track`` a :class:`~mai_ops.challenge.config.Track` or its id. Files are
    ``<kind>/<track>/input/<name>`` and ``<kind>/<track>/gt/<name>``, each a PNG (8- or
    16-bit, 1 to 4 channels) or a ``.npy``, paired by name without extension. Nothing
    staged is an empty set for validation (runtime only) and an error for test. Any
    problem (see :func:`staged_pairs`, and unreadable files, sizes that disagree) is a
    :class:`ValidationDataError` naming each offending ``s3://bucket/key``.
    """
    from mai_ops.infra.layout import data_set_prefix

    track = _track_of(challenge, track)
    pairs = staged_pairs(s3, challenge, track, kind)
    bucket = challenge.buckets.organizers

    def fetch(item: StagedFile, folder: Path) -> Path:
        path = folder / f"staged{item.suffix}"
        body = s3.get_object(Bucket=bucket, Key=item.source)["Body"]
        with open(path, "wb") as fh:
            copied = 0
            for chunk in iter(lambda: body.read(1 << 20), b""):
                copied += len(chunk)
                if copied > MAX_DATA_FILE_BYTES:
                    raise ValidationDataError(f"over the {MAX_DATA_FILE_BYTES:,}-byte limit")
                fh.write(chunk)
        return path

    where = f"s3://{bucket}/{data_set_prefix(kind, track.id)}"
    return _read_pairs(pairs, track, kind, where, fetch)


def staged_pairs(
    s3: Any, challenge: Any, track: Any, kind: str
) -> list[tuple[StagedFile, StagedFile]]:
    """(input, ground truth) of every staged pair in name order, from the listing alone.

    Nothing is downloaded. Raises :class:`ValidationDataError` for a file without its
    partner, two files with one name (``x.png`` and ``x.npy``), a file that is not
    ``.png`` or ``.npy`` or sits in a subfolder, a file over :data:`MAX_DATA_FILE_BYTES`,
    a set over :data:`MAX_DATA_SET_BYTES` or :data:`MAX_DATA_SET_PAIRS`, and, for
    ``test``, nothing staged. Dot-files and folder markers are ignored.
    """
    from mai_ops.infra.layout import data_set_keys, data_set_prefix
    from mai_ops.infra.storage import list_objects

    track_id = getattr(track, "id", track)
    buckets = getattr(challenge, "buckets", None)
    if buckets is None:
        raise ValidationDataError(f"challenge {challenge.id} declares no buckets")
    bucket = buckets.organizers
    problems: list[str] = []
    sides = []
    for prefix in data_set_keys(kind, track_id):
        objects = (
            (o["Key"][len(prefix) :], o["Key"], o["Size"]) for o in list_objects(s3, bucket, prefix)
        )
        sides.append(
            _by_name(
                ((rel, f"s3://{bucket}/{key}", size, key) for rel, key, size in objects),
                problems,
            )
        )
    where = f"s3://{bucket}/{data_set_prefix(kind, track_id)}"
    return _pairs(sides[0], sides[1], kind, where, problems)


def load_data_folder(folder: str | Path, track: Any) -> DataSet:
    """A local ``<folder>/input/`` and ``<folder>/gt/``, read and checked as staged data is
    (an empty folder is an empty set); ``track`` needs ``metrics``."""
    folder = Path(folder)
    if not (folder / "input").is_dir() and not (folder / "gt").is_dir():
        raise ValidationDataError(f"{folder} has neither input/ nor gt/")
    problems: list[str] = []
    sides = []
    for sub in ("input", "gt"):
        files = sorted((folder / sub).iterdir()) if (folder / sub).is_dir() else []
        for p in files:
            if p.is_dir() and not p.name.startswith("."):
                problems.append(f"{p}: a subfolder; only files directly in {sub}/ count")
        entries = ((p.name, str(p), p.stat().st_size, p) for p in files if not p.is_dir())
        sides.append(_by_name(entries, problems))
    pairs = _pairs(sides[0], sides[1], "validation", str(folder), problems)
    return _read_pairs(pairs, track, "validation", str(folder), lambda item, _: item.source)


def _track_of(challenge: Any, track: Any) -> Any:
    return challenge.track(track) if isinstance(track, str) else track


def _by_name(entries, problems: list[str]) -> dict[str, StagedFile]:
    """The files of one side (input or gt) by name; problems are appended."""
    found: dict[str, StagedFile] = {}
    for rel, where, size, source in entries:
        if not rel or rel.endswith("/") or rel.rsplit("/", 1)[-1].startswith("."):
            continue  # a folder marker or a dot-file (.DS_Store)
        if "/" in rel:
            problems.append(f"{where}: in a subfolder; only files directly in the folder count")
            continue
        stem, dot, suffix = rel.rpartition(".")
        suffix = f".{suffix.lower()}"
        if not dot or not stem or suffix not in DATA_SUFFIXES:
            problems.append(f"{where}: not a .png or .npy file")
            continue
        if size > MAX_DATA_FILE_BYTES:
            problems.append(f"{where}: {size:,} bytes, over the {MAX_DATA_FILE_BYTES:,}-byte limit")
            continue
        if stem in found:
            problems.append(f"{where}: {found[stem].where} has the same name {stem!r}; keep one")
            continue
        found[stem] = StagedFile(stem, where, int(size), suffix, source)
    return found


def _pairs(
    inputs: dict[str, StagedFile],
    truths: dict[str, StagedFile],
    kind: str,
    where: str,
    problems: list[str],
) -> list[tuple[StagedFile, StagedFile]]:
    """Matched pairs in name order, or :class:`ValidationDataError` listing ``problems``."""
    for name in sorted(inputs.keys() - truths.keys()):
        problems.append(
            f"{inputs[name].where}: input without ground truth (no gt/{name}.png or .npy)"
        )
    for name in sorted(truths.keys() - inputs.keys()):
        problems.append(
            f"{truths[name].where}: ground truth without input (no input/{name}.png or .npy)"
        )
    names = sorted(inputs.keys() & truths.keys())
    if len(names) > MAX_DATA_SET_PAIRS:
        problems.append(f"{where}: {len(names):,} pairs, over the limit of {MAX_DATA_SET_PAIRS:,}")
    stored = sum(inputs[n].size + truths[n].size for n in names)
    if stored > MAX_DATA_SET_BYTES:
        problems.append(
            f"{where}: {stored:,} bytes staged, over the {MAX_DATA_SET_BYTES:,}-byte limit"
        )
    if kind == "test" and not inputs and not truths and not problems:
        problems.append(
            f"{where}: no test data staged; stage input/<name>.png|.npy and gt/<name>.png|.npy"
        )
    _raise_problems(problems, kind, where)
    return [(inputs[n], truths[n]) for n in names]


def _raise_problems(problems: list[str], kind: str, where: str) -> None:
    if not problems:
        return
    shown = problems[:_SHOWN_PROBLEMS]
    more = len(problems) - len(shown)
    lines = "\n".join(f"- {p}" for p in shown) + (f"\n- and {more} more" if more else "")
    raise ValidationDataError(f"unusable {kind} data in {where}:\n{lines}")


def _read_pairs(pairs, track: Any, kind: str, where: str, fetch) -> DataSet:
    """Read every pair (``fetch(item, scratch) -> path``) and check their values and sizes."""
    topk = any(m in TOPK for m in getattr(track, "metrics", track))
    data = DataSet([], [], [])
    problems: list[str] = []
    total = 0
    scale: tuple[int, str] | None = None
    with tempfile.TemporaryDirectory(prefix="mai-data-") as tmp:
        for item_in, item_gt in pairs:
            arrays = []
            for item in (item_in, item_gt):
                array, problem = _read_one(item, fetch, Path(tmp))
                if array is not None:
                    total += array.nbytes
                    if total > MAX_DATA_SET_BYTES:
                        problems.append(
                            f"{item.where}: the set decodes to over {MAX_DATA_SET_BYTES:,} bytes"
                        )
                        _raise_problems(problems, kind, where)
                    problem = _value_problem(array)
                if problem:
                    problems.append(f"{item.where}: {problem}")
                    break
                arrays.append(array)
            if len(arrays) != 2:
                continue
            x, y = arrays
            problem, factor = _size_problem(x, y, topk)
            if problem is None and factor is not None:
                if scale is None:
                    scale = (factor, item_in.name)
                elif factor != scale[0]:
                    problem = (
                        f"the ground truth is x{factor} the input's height and width, "
                        f"but x{scale[0]} for {scale[1]!r}"
                    )
            if problem:
                problems.append(f"{item_gt.where}: {problem}")
                continue
            data.names.append(item_in.name)
            data.inputs.append(x)
            data.truths.append(y)
    _raise_problems(problems, kind, where)
    return data


def _read_one(item: StagedFile, fetch, scratch: Path) -> tuple[Any, str | None]:
    """(array, None) or (None, why it cannot be read); a fetched copy is removed after."""
    from mai_ops.models.metric_files import MetricFileError, read_array

    path = None
    try:
        path = Path(fetch(item, scratch))
        return read_array(path), None
    except ValidationDataError as exc:
        return None, str(exc)
    except MetricFileError as exc:
        reason = str(exc)
        if path is not None and reason.startswith(f"{path}: "):
            reason = reason[len(f"{path}: ") :]
        return None, reason or "unreadable"
    finally:
        if path is not None and path.parent == scratch:
            path.unlink(missing_ok=True)


def _value_problem(array) -> str | None:
    import numpy as np

    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        return "contains NaN or infinite values"
    return None


def _height_width(array) -> tuple[int, int] | None:
    shape = array.shape[1:] if array.ndim == 4 and array.shape[0] == 1 else array.shape
    return (int(shape[0]), int(shape[1])) if len(shape) >= 2 else None


def _size_problem(x, y, topk: bool) -> tuple[str | None, int | None]:
    """(what is wrong, or None; the ground truth's scale factor over the input)."""
    if topk:
        if y.size != 1 or not float(y.reshape(-1)[0]).is_integer():
            return f"a top-k ground truth is one integer class label, got shape {y.shape}", None
        return None, None
    xs, ys = _height_width(x), _height_width(y)
    if xs is None or ys is None:
        return f"an image needs a height and a width: input {x.shape}, ground truth {y.shape}", None
    (xh, xw), (yh, yw) = xs, ys
    if yh % xh or yw % xw or yh // xh != yw // xw or yh < xh:
        return (
            f"size {yh}x{yw} is not a whole multiple (the same for height and width) of "
            f"the input's {xh}x{xw}",
            None,
        )
    return None, yh // xh


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


# ---------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------


FITS = ("resize", "tiles")


def evaluate_model(
    model_path: str | Path,
    track: Any,
    inputs: DataSet | Sequence[Any] | Mapping[str, Any] | str | Path,
    ground_truth: Sequence[Any] | Mapping[str, Any] | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    threads: int = 1,
    data_range: float | None = None,
    fit: str = "resize",
    reference: Mapping[str, Any] | None = None,
) -> FidelityResult:
    """Run ``model_path`` on every sample and compute ``track.metrics`` against the truth.

    ``inputs`` is a :class:`DataSet` (samples by its names), two equally long lists
    (``inputs`` and ``ground_truth``) or two mappings by sample name of arrays, or a
    folder with ``input/`` and ``gt/`` (:func:`load_data_folder`); ``ground_truth`` is
    None with a data set or a folder. ``track`` needs ``metrics`` (a config ``Track``).
    ``fit`` is the track's ``fidelity.fit``: ``resize`` sets the model's dynamic
    dimensions to each sample's, ``tiles`` runs a fixed-shape model on tiles
    (:mod:`mai_ops.models.fidelity_child`). ``reference`` maps sample names to the
    team's own results: each gets its PSNR against the model's output in
    ``FidelityResult.reproduction`` (:func:`reproduction_psnr`).
    ``timeout_s`` bounds the whole run, ``memory_mb`` the child's address space.
    Raises :class:`FidelityError` for anything the model did wrong.
    """
    started = time.monotonic()
    metrics = list(getattr(track, "metrics", track))
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(sorted(METRICS))}")
    if fit not in FITS:
        raise ValueError(f"unknown fit {fit!r}; known: {', '.join(FITS)}")
    samples = _samples(inputs, ground_truth, track)
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
                "fit": fit,
                "out_dir": str(out_dir),
                "samples": request_samples,
            },
            ChildLimits(timeout_s=timeout_s, memory_mb=int(memory_mb), scratch=work),
        )
        output = steps["loaded"]["outputs"][0]
        result = _score_samples(samples, steps["sample"], output, metrics, data_range, reference)
    result.seconds = time.monotonic() - started
    return result


def _samples(inputs: Any, ground_truth: Any, track: Any) -> list[tuple[str, Any, Any]]:
    """(name, input, ground truth) triples; arrays in memory or paths to files."""
    if isinstance(inputs, str | Path):
        if ground_truth is not None:
            raise ValueError("give a folder of input/ and gt/ pairs, or two lists, not both")
        inputs = load_data_folder(inputs, track)
    if isinstance(inputs, DataSet):
        if ground_truth is not None:
            raise ValueError("a data set holds its ground truth; give no other")
        return list(zip(inputs.names, inputs.inputs, inputs.truths, strict=True))
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

    if isinstance(x, str | Path) and Path(x).suffix.lower() == ".npy":
        return [str(x)]
    arrays = list(x) if isinstance(x, tuple | list) else [x]
    paths = []
    for k, array in enumerate(arrays):
        if isinstance(array, str | Path):
            array = _read_data_file(array, f"input {Path(array).name}")
        path = work / f"in-{i:06d}-{k}.npy"
        np.save(path, np.asarray(array), allow_pickle=False)
        paths.append(str(path))
    return paths


def _read_data_file(path: str | Path, what: str):
    """An organizer's file given by path (PNG or .npy); unreadable is a data error."""
    from mai_ops.models.metric_files import MetricFileError, read_array

    try:
        return read_array(path)
    except MetricFileError as exc:
        raise ValidationDataError(f"{what}: {exc}") from None


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
    reference: Mapping[str, Any] | None = None,
) -> FidelityResult:
    import numpy as np

    per_sample: list[dict[str, Any]] = []
    scores, labels = [], []
    sums = dict.fromkeys(metrics, 0.0)
    classify = [m for m in metrics if m in TOPK]
    dense = [m for m in metrics if m not in TOPK]
    range_used = data_range
    reproduction: dict[str, float] = {}
    notes: dict[str, str] = {}
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
        if reference is not None:
            if name not in reference:
                notes[name] = "no result of the team for this sample"
            elif classify:
                notes[name] = "not checked: the output is class scores, not an image"
            else:
                span = range_used if range_used is not None else infer_data_range(gt.dtype)
                value, note = reproduction_psnr(_align(pred, gt), reference[name], gt.dtype, span)
                reproduction[name] = value
                if note:
                    notes[name] = note
        for m in metrics:
            sums[m] += row[m]
        per_sample.append(row)
    means = {m: sums[m] / len(per_sample) for m in dense}
    for m in classify:
        means[m] = topk_accuracy(np.stack(scores), np.array(labels), TOPK[m])
    ordered = {m: float(means[m]) for m in metrics}
    return FidelityResult(
        ordered,
        len(per_sample),
        per_sample,
        range_used,
        reproduction=reproduction,
        reproduction_notes=notes,
    )


def reproduction_psnr(
    output: Any, result: Any, truth_dtype: Any, data_range: float
) -> tuple[float, str]:
    """(PSNR in dB of a team's ``result`` against our ``output``, why it is 0 or "").

    ``output`` is the model's output as the metrics compare it (dequantized, in the
    ground truth's shape and value range); ``data_range`` the ground truth's. An integer
    result of another dtype than the ground truth is brought to its range first (an
    8-bit PNG against float ground truth in [0, 1] is divided by 255). Identical arrays
    get :data:`~mai_ops.models.metrics.PSNR_CAP_DB` (100 dB), like the metric, so the
    value is always a finite number. A result of another shape, or one that is not
    numeric or not finite, gets 0.0 and the reason.
    """
    import numpy as np

    from mai_ops.models.metrics import data_range_of, psnr

    ref = np.asarray(result)
    if ref.dtype.kind not in "biuf" or ref.size == 0:
        return 0.0, f"the result is not a numeric array (dtype {ref.dtype}, shape {ref.shape})"
    ref = _align(ref, output)
    if ref.shape != output.shape:
        return 0.0, f"the result's shape {ref.shape} is not the output's {output.shape}"
    if ref.dtype.kind in "iu" and ref.dtype != np.dtype(truth_dtype):
        ref = ref.astype(np.float64) * (data_range / data_range_of(ref.dtype))
    try:
        return psnr(ref, output, data_range), ""
    except MetricError as exc:
        return 0.0, str(exc)


# A team's results/ folder: the archive holds at most 200 entries and 1024 MB per file.
MAX_RESULT_FILES = 1000
MAX_RESULT_FILE_BYTES = 256 << 20
MAX_RESULTS_BYTES = 2 << 30


def read_results_dir(folder: str | Path) -> dict[str, Any]:
    """A team's own results by name (file name without extension): ``results/<name>.png``
    (8- or 16-bit) or ``.npy``, the files directly in ``folder``.

    Other files (a JPEG preview, a readme), dot-files and subfolders are ignored; a
    missing folder is no results. A PNG or ``.npy`` that does not read, two files with
    one name, more than :data:`MAX_RESULT_FILES` files, one over
    :data:`MAX_RESULT_FILE_BYTES` or all over :data:`MAX_RESULTS_BYTES` (decoded) is the
    team's problem: :class:`FidelityError` ``fidelity_bad_results`` naming the file.
    """
    from mai_ops.models.metric_files import MetricFileError, read_array

    folder = Path(folder)
    if not folder.is_dir():
        return {}

    def bad(message: str) -> FidelityError:
        return FidelityError("fidelity_bad_results", message)

    files = [
        p
        for p in sorted(folder.iterdir())
        if not p.name.startswith(".")
        and p.suffix.lower() in DATA_SUFFIXES
        and p.is_file()
        and not p.is_symlink()
    ]
    if len(files) > MAX_RESULT_FILES:
        raise bad(f"results/ holds {len(files)} .png and .npy files; at most {MAX_RESULT_FILES}")
    found: dict[str, Any] = {}
    seen: dict[str, str] = {}
    total = 0
    for path in files:
        shown = f"results/{path.name}"
        if path.stem in seen:
            raise bad(f"{shown} and results/{seen[path.stem]} have the same name; keep one")
        seen[path.stem] = path.name
        size = path.stat().st_size
        if size > MAX_RESULT_FILE_BYTES:
            raise bad(f"{shown} is {size:,} bytes; at most {MAX_RESULT_FILE_BYTES:,}")
        try:
            array = read_array(path)
        except MetricFileError as exc:
            reason = str(exc)
            reason = reason[len(f"{path}: ") :] if reason.startswith(f"{path}: ") else reason
            raise bad(f"{shown} cannot be read: {reason}") from None
        total += array.nbytes
        if total > MAX_RESULTS_BYTES:
            raise bad(f"results/ decodes to over {MAX_RESULTS_BYTES:,} bytes at {shown}")
        found[path.stem] = array
    return found


def infer_data_range(dtype: Any) -> float:
    """1.0 for float ground truth, the dtype's full span for integers (255 for uint8)."""
    from mai_ops.models.metrics import data_range_of

    span = data_range_of(dtype)
    if span is None:
        raise ValidationDataError(f"ground truth of dtype {dtype} has no data range")
    return span


def _truth(truth: Any, name: str):
    import numpy as np

    gt = (
        _read_data_file(truth, f"ground truth {name!r}") if isinstance(truth, str | Path) else truth
    )
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
