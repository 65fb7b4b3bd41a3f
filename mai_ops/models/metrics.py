"""The fidelity metrics a track may name, and which way is better.

The scoring phase computes them; the challenge schema only needs to know that a
name is real and whether a higher value wins, so a typo in a config is caught when
it loads, not on the night of the deadline.

Below the registry are the implementations (numpy, and scipy for SSIM), one per
metric, and :func:`compute_metric` to call one by its registry name. Every one
checks its arrays first and raises :class:`MetricError` (a ``ValueError``) naming
the problem: prediction and ground truth of different shapes (both shapes named),
empty arrays, NaN or infinite values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MetricInfo:
    name: str
    higher_is_better: bool
    description: str


METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo("psnr", True, "peak signal-to-noise ratio, dB"),
        MetricInfo("ssim", True, "structural similarity, 0..1"),
        MetricInfo("si_rmse", False, "scale-invariant RMSE of log depth (MAI depth scripts)"),
        MetricInfo("rmse", False, "root mean squared error"),
        MetricInfo("top1", True, "top-1 accuracy, 0..1"),
        MetricInfo("top3", True, "top-3 accuracy, 0..1"),
    )
}

# Variables a score formula may read besides the track's metrics and constants.
MEASUREMENT_VARIABLES: dict[str, str] = {
    "runtime": "median runtime on the target device, ms",
    "runtime_s": "median runtime on the target device, s",
    "power": "measured average power on the target device, W (power-efficiency tracks)",
    "energy": "energy per inference, J (power-efficiency tracks)",
    "model_size_mb": "size of the runtime model file, MB",
}


# ---------------------------------------------------------------------------------
# Implementations. numpy (and scipy, for SSIM) are imported inside the functions:
# the challenge schema imports this module and DAG files must parse fast.
# ---------------------------------------------------------------------------------

# PSNR of two identical images is infinite; a score formula such as
# ``2 ** (alpha * psnr)`` needs a finite number, so PSNR is capped at this value
# (identical images get exactly the cap, and no image ever gets more).
PSNR_CAP_DB = 100.0

# SSIM as Wang et al. 2004 and skimage.metrics.structural_similarity with
# gaussian_weights=True, sigma=1.5, use_sample_covariance=False: an 11x11 window
# (the Gaussian truncated at 3.5 sigma), reflected borders, the 5-pixel border
# left out of the mean.
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


class MetricError(ValueError):
    """A metric cannot be computed on these arrays (shape, NaN/inf, empty, range)."""


def psnr(pred: Any, gt: Any, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range² / MSE)``, capped.

    Computed in float64 over every element. Identical images (MSE 0) give
    :data:`PSNR_CAP_DB` instead of infinity; no pair gives more than the cap.
    """
    import numpy as np

    p, g = _pair(pred, gt)
    r = _data_range(data_range)
    mse = float(np.mean(np.square(p - g)))
    if mse == 0.0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(r * r / mse))


def ssim(pred: Any, gt: Any, data_range: float) -> float:
    """Mean structural similarity; for a multichannel image the mean over channels.

    A 2-D array is one grayscale image; with 3 or more dimensions the last axis is
    the channel axis (``channel_axis=-1``). Gaussian window (sigma 1.5, 11x11),
    K1 = 0.01, K2 = 0.03, population covariance, computed in float64; equal to
    ``skimage.metrics.structural_similarity(pred, gt, data_range=..., channel_axis=-1,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.
    """
    import numpy as np
    from scipy.ndimage import gaussian_filter

    p, g = _pair(pred, gt)
    r = _data_range(data_range)
    if p.ndim < 2:
        raise MetricError(f"SSIM needs an image (H, W) or (H, W, C), got shape {p.shape}")
    spatial = p.ndim if p.ndim == 2 else p.ndim - 1
    win = 2 * int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5) + 1
    if any(side < win for side in p.shape[:spatial]):
        raise MetricError(f"SSIM needs images of at least {win}x{win} pixels, got shape {p.shape}")
    sigma = [SSIM_SIGMA] * spatial + [0.0] * (p.ndim - spatial)  # 0: channels not mixed

    def blur(x):
        return gaussian_filter(x, sigma=sigma, truncate=SSIM_TRUNCATE, mode="reflect")

    ux, uy = blur(p), blur(g)
    vx = blur(p * p) - ux * ux
    vy = blur(g * g) - uy * uy
    vxy = blur(p * g) - ux * uy
    c1 = (SSIM_K1 * r) ** 2
    c2 = (SSIM_K2 * r) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    inner = s[tuple(slice(pad, n - pad) for n in s.shape[:spatial])]
    if p.ndim == spatial:
        return float(inner.mean(dtype=np.float64))
    per_channel = inner.reshape(-1, inner.shape[-1]).mean(axis=0, dtype=np.float64)
    return float(per_channel.mean())


def rmse(pred: Any, gt: Any) -> float:
    """Root mean squared error over every element, in the data's own units."""
    import numpy as np

    p, g = _pair(pred, gt)
    return float(np.sqrt(np.mean(np.square(p - g))))


def si_rmse(pred_mm: Any, gt_mm: Any) -> float:
    """Scale-invariant RMSE of log depth, as the MAI depth scripts compute it.

    Depth in mm; values below 1 are set to 1 in both maps; only pixels with ground
    truth > 1 count; ``d = log(pred) - log(gt)`` (natural log) and
    ``si-RMSE = sqrt(Σd²/n - (Σd)²/n²)``. A rounding residue below zero under the
    root is taken as 0.
    """
    import numpy as np

    p, g = _pair(pred_mm, gt_mm)
    p = np.maximum(p, 1.0)
    g = np.maximum(g, 1.0)
    mask = g > 1.0
    n = int(mask.sum())
    if n == 0:
        raise MetricError("si-RMSE: the ground truth has no pixel deeper than 1 mm")
    d = np.log(p[mask]) - np.log(g[mask])
    total = float(d.sum())
    value = float(np.square(d).sum()) / n - (total * total) / (n * n)
    return math.sqrt(max(value, 0.0))


def topk_accuracy(scores: Any, labels: Any, k: int) -> float:
    """Fraction of samples whose label is among the ``k`` highest scores.

    ``scores`` is (N, classes) (one row per sample; a single (classes,) row is one
    sample), ``labels`` the N integer class labels. Ties count in the sample's
    favour, as ``tf.math.in_top_k``: the label is a hit when fewer than ``k``
    classes score strictly higher, so the result never depends on class order.
    """
    import numpy as np

    s = _array(scores, "scores")
    y = _array(labels, "labels")
    if s.ndim == 1:
        s = s[None, :]
    y = y.reshape(-1) if y.ndim <= 1 or y.size == s.shape[0] else y
    if s.ndim != 2 or y.ndim != 1 or y.shape[0] != s.shape[0]:
        raise MetricError(
            f"top-k needs scores (N, classes) and N labels; got scores shape {s.shape} "
            f"and labels shape {np.shape(labels)}"
        )
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise MetricError(f"top-k on an empty set (scores shape {s.shape})")
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1:
        raise MetricError(f"k must be a positive integer, got {k!r}")
    _finite(s, "scores")
    if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
        raise MetricError("labels must be integers")
    y = y.astype(np.int64)
    bad = y[(y < 0) | (y >= s.shape[1])]
    if bad.size:
        raise MetricError(f"label {int(bad[0])} is outside 0..{s.shape[1] - 1}")
    own = s[np.arange(s.shape[0]), y]
    higher = (s > own[:, None]).sum(axis=1)
    return float(np.mean(higher < k))


def compute_metric(name: str, pred: Any, gt: Any, data_range: float | None = None) -> float:
    """The registry metric ``name`` of a prediction against its ground truth.

    ``psnr``/``ssim`` need ``data_range``; ``top1``/``top3`` take scores (N, classes)
    and N labels; ``rmse``/``si_rmse`` ignore ``data_range``.
    """
    if name not in METRICS:
        raise MetricError(f"unknown metric {name!r}; known: {', '.join(sorted(METRICS))}")
    if name in ("psnr", "ssim"):
        if data_range is None:
            raise MetricError(f"{name} needs the data range (1.0 for [0, 1] floats, 255 for uint8)")
        return (psnr if name == "psnr" else ssim)(pred, gt, data_range)
    if name == "rmse":
        return rmse(pred, gt)
    if name == "si_rmse":
        return si_rmse(pred, gt)
    return topk_accuracy(pred, gt, TOPK[name])


TOPK: dict[str, int] = {"top1": 1, "top3": 3}


def _array(value: Any, what: str):
    import numpy as np

    try:
        a = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise MetricError(f"{what} is not an array: {exc}") from None
    if a.dtype.kind not in "biuf":
        raise MetricError(f"{what} must be numeric, got dtype {a.dtype}")
    return a.astype(np.float64, copy=False)


def _finite(a, what: str) -> None:
    import numpy as np

    if not np.all(np.isfinite(a)):
        nan = int(np.isnan(a).sum())
        inf = int(np.isinf(a).sum())
        raise MetricError(f"{what} contains {nan} NaN and {inf} infinite values")


def _pair(pred: Any, gt: Any):
    """Both as float64 arrays of the same, non-empty shape, all finite."""
    p = _array(pred, "prediction")
    g = _array(gt, "ground truth")
    if p.shape != g.shape:
        raise MetricError(f"prediction shape {p.shape} does not match ground truth shape {g.shape}")
    if p.size == 0:
        raise MetricError(f"empty arrays (shape {p.shape})")
    _finite(p, "prediction")
    _finite(g, "ground truth")
    return p, g


def _data_range(value: Any) -> float:
    try:
        r = float(value)
    except (TypeError, ValueError):
        raise MetricError(f"data_range must be a number, got {value!r}") from None
    if not math.isfinite(r) or r <= 0:
        raise MetricError(f"data_range must be positive and finite, got {value!r}")
    return r
