"""A fidelity metric over two folders of files matched by name (``mai-ops metrics``).

Each file of the prediction folder is paired with the file of the target folder that
has the same name less its extension (``0001.png`` with ``0001.png`` or ``0001.npy``).
Files whose name starts with a dot are ignored; any other file must be readable and
have a partner, and every problem is a :class:`MetricFileError` that names the file.

Formats:

- ``.png``: 8- or 16-bit, grayscale (H, W), grayscale with alpha (H, W, 2), RGB
  (H, W, 3) or RGBA (H, W, 4), as uint8 or uint16; palette images become RGB(A),
  1-bit images 0/255. Every channel counts, alpha included.
- ``.npy``: any numeric array (no pickles).
- ``.txt`` (top-k targets only): one integer class label.

For ``top1``/``top3`` a prediction file holds one sample's class scores (a ``.npy``
vector of shape (classes,) or (1, classes)) and its target file that sample's integer
label (a ``.npy`` of one element, or a ``.txt``).

Arrays are compared as stored. A prediction whose shape differs from its target's
only by dimensions of size 1 (a batch axis, a trailing channel of 1) is reshaped to
the target's. PSNR and SSIM need the data range: ``data_range`` when given, else the
target's dtype says it (255 for uint8, 65535 for uint16, 1.0 for floats).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mai_ops.models.metrics import METRICS, MetricError, compute_metric, data_range_of

IMAGE_SUFFIXES = (".png", ".npy")
LABEL_SUFFIXES = (".npy", ".txt")
TOPK_METRICS = ("top1", "top3")


class MetricFileError(ValueError):
    """A file (or folder) the metric cannot use; the message names it."""


@dataclass(frozen=True)
class MetricResult:
    """One metric over the pairs: the mean and each pair's value, by name."""

    metric: str
    mean: float
    per_image: dict[str, float]

    def as_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "mean": self.mean, "per_image": dict(self.per_image)}


def metric_name(text: str) -> str:
    """The registry name of a metric as a user may spell it (``si-rmse`` is ``si_rmse``)."""
    name = text.strip().lower().replace("-", "_")
    if name not in METRICS:
        known = ", ".join(n.replace("_", "-") for n in METRICS)
        raise MetricFileError(f"unknown metric {text!r}; known: {known}")
    return name


def pair_files(
    pred_dir: Path, target_dir: Path, metrics: list[str]
) -> list[tuple[str, Path, Path]]:
    """(name, prediction file, target file) for every pair, in name order."""
    topk = any(m in TOPK_METRICS for m in metrics)
    if topk and any(m not in TOPK_METRICS for m in metrics):
        raise MetricFileError("top-k metrics take scores and labels; ask for them separately")
    preds = _files_by_name(pred_dir, (".npy",) if topk else IMAGE_SUFFIXES)
    targets = _files_by_name(target_dir, LABEL_SUFFIXES if topk else IMAGE_SUFFIXES)
    for name, path in sorted(preds.items()):
        if name not in targets:
            raise MetricFileError(f"{path}: no target file named {name}.* in {target_dir}")
    for name, path in sorted(targets.items()):
        if name not in preds:
            raise MetricFileError(f"{path}: no prediction file named {name}.* in {pred_dir}")
    if not preds:
        raise MetricFileError(f"{pred_dir}: no prediction files")
    return [(name, preds[name], targets[name]) for name in sorted(preds)]


def evaluate_folders(
    metrics: list[str],
    pred_dir: str | Path,
    target_dir: str | Path,
    data_range: float | None = None,
    read: Callable[[Path], Any] | None = None,
) -> list[MetricResult]:
    """Each metric (registry names) over the pairs of the two folders.

    Every pair is read once for all the metrics, the next one while this one is
    computed. Raises :class:`MetricFileError` naming the file for a missing partner,
    an unreadable file or a shape mismatch.
    """
    pred_dir, target_dir = Path(pred_dir), Path(target_dir)
    if data_range is not None and not (math.isfinite(data_range) and data_range > 0):
        raise MetricFileError(f"the data range must be positive, got {data_range}")
    pairs = pair_files(pred_dir, target_dir, metrics)
    read = read or read_array
    values: dict[str, dict[str, float]] = {m: {} for m in metrics}
    for (name, pred_path, target_path), (pred, target) in _read_ahead(pairs, read):
        for metric in metrics:
            values[metric][name] = _value(metric, pred, target, data_range, pred_path, target_path)
    return [MetricResult(m, math.fsum(v.values()) / len(v), v) for m, v in values.items()]


def _read_ahead(pairs, read):
    """Each pair with its two arrays; the next pair is read (and decoded) in a thread
    while the caller computes this one's metrics. A read error is raised in order."""
    from concurrent.futures import ThreadPoolExecutor

    def load(pair):
        return read(pair[1]), read(pair[2])

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="metric-read") as pool:
        ahead = pool.submit(load, pairs[0])
        for i, pair in enumerate(pairs):
            arrays = ahead.result()
            if i + 1 < len(pairs):
                ahead = pool.submit(load, pairs[i + 1])
            yield pair, arrays


def _value(metric: str, pred, target, data_range: float | None, p: Path, t: Path) -> float:
    """One metric of one pair; a problem names the files."""
    if metric in TOPK_METRICS:
        scores = pred.reshape(-1) if pred.ndim == 2 and pred.shape[0] == 1 else pred
        if scores.ndim != 1:
            raise MetricFileError(
                f"{p}: expected one vector of class scores, got shape {pred.shape}"
            )
        if target.size != 1:
            raise MetricFileError(f"{t}: expected one integer label, got shape {target.shape}")
        try:
            return compute_metric(metric, scores, target.reshape(-1))
        except MetricError as exc:
            raise MetricFileError(f"{p} with label {t}: {exc}") from None
    if pred.shape != target.shape:
        if pred.size == target.size and _squeezed(pred.shape) == _squeezed(target.shape):
            pred = pred.reshape(target.shape)
        else:
            raise MetricFileError(
                f"{p}: size {_shape(pred)} does not match {t}: size {_shape(target)}"
            )
    if data_range is None and metric in ("psnr", "ssim"):
        data_range = default_data_range(target.dtype)
    try:
        return compute_metric(metric, pred, target, data_range)
    except MetricError as exc:
        raise MetricFileError(f"{p} against {t}: {exc}") from None


def default_data_range(dtype: Any) -> float:
    """The span of an integer dtype (255 for uint8, 65535 for uint16); 1.0 otherwise."""
    return data_range_of(dtype) or 1.0


def _squeezed(shape: tuple[int, ...]) -> list[int]:
    return [d for d in shape if d != 1]


def _shape(a) -> str:
    """``1080x1920x3 uint8``."""
    return f"{'x'.join(str(d) for d in a.shape)} {a.dtype}"


def _files_by_name(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    if not folder.is_dir():
        raise MetricFileError(f"{folder}: not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        if path.suffix.lower() not in suffixes:
            raise MetricFileError(f"{path}: not a {' or '.join(suffixes)} file (unsupported type)")
        name = path.stem
        if name in found:
            raise MetricFileError(f"{path}: {found[name].name} has the same name; keep one")
        found[name] = path
    return found


# ---------------------------------------------------------------------------------
# Reading one file
# ---------------------------------------------------------------------------------


def read_array(path: str | Path):
    """The numeric array in a ``.png``, ``.npy`` or ``.txt`` file; see the module doc.

    Whatever goes wrong (a truncated file, a bad header, a pickle) is a
    :class:`MetricFileError` naming the file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    readers = {".npy": _read_npy, ".png": read_png, ".txt": _read_label_text}
    if suffix not in readers:
        raise MetricFileError(f"{path}: unsupported file type {suffix or '(none)'}")
    try:
        return readers[suffix](path)
    except MetricFileError:
        raise
    except Exception as exc:  # a participant's file: any failure is "unreadable"
        raise MetricFileError(f"{path}: unreadable: {exc}") from None


def _read_npy(path: Path):
    import numpy as np

    a = np.load(path, allow_pickle=False)
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
        raise MetricFileError(f"{path}: not a numeric array (dtype {getattr(a, 'dtype', '?')})")
    if a.size == 0:
        raise MetricFileError(f"{path}: empty array (shape {a.shape})")
    return a


def _read_label_text(path: Path):
    import numpy as np

    words = path.read_text().split()
    if len(words) != 1:
        raise MetricFileError(f"{path}: expected one integer label, found {len(words)} values")
    try:
        return np.array([int(words[0])], dtype=np.int64)
    except ValueError:
        raise MetricFileError(f"{path}: {words[0]!r} is not an integer label") from None


# Pillow decodes 16-bit RGB and RGBA PNGs into 8-bit images (the high byte of each
# sample) and 16-bit grayscale + alpha into 8-bit RGBA. For those, the decoder is
# given a raw mode that keeps the other bytes: RGB(A) decoded a second time with the
# little-endian unpacker, whose "high" byte is the PNG's (big-endian) low byte; LA,
# whose 4 bytes per pixel unfilter exactly like 8-bit RGBA, read as those bytes.
_WIDE_PNG = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}


def read_png(path: str | Path):
    """A PNG as (H, W) or (H, W, C) uint8 or uint16, every bit kept."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                raise MetricFileError(f"{path}: not a PNG file (looks like {im.format})")
            rawmode = im.tile[0][3] if im.tile else None
            if rawmode in _WIDE_PNG:
                high = _decode(im, rawmode)
                with Image.open(path) as again:
                    low = _decode(again, _WIDE_PNG[rawmode])
                return (high.astype(np.uint16) << 8) | low
            if rawmode == "LA;16B":
                raw = _decode(im, "RGBA")  # per pixel: L high, L low, A high, A low
                pairs = raw.reshape(*raw.shape[:2], 2, 2).astype(np.uint16)
                return (pairs[..., 0] << 8) | pairs[..., 1]
            im.load()
            if im.mode in ("P", "PA"):
                im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
            elif im.mode == "1":
                im = im.convert("L")
            a = np.asarray(im)
            if im.mode == "I":  # 16-bit grayscale as older Pillows load it
                a = a.astype(np.uint16)
    except UnidentifiedImageError:
        raise MetricFileError(f"{path}: unreadable: not a PNG file") from None
    if a.dtype.kind not in "iu":
        raise MetricFileError(f"{path}: unexpected PNG pixel type {a.dtype}")
    return a


def _decode(im, rawmode: str):
    """``im``'s pixels decoded with another raw mode for its (single) tile."""
    import numpy as np

    tile = im.tile[0]
    im.tile = [tile._replace(args=rawmode) if hasattr(tile, "_replace") else (*tile[:3], rawmode)]
    im.load()
    return np.array(im)
