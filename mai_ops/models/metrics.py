"""The fidelity metrics a track may name, and which way is better.

The scoring phase computes them; the challenge schema only needs to know that a
name is real and whether a higher value wins, so a typo in a config is caught when
it loads, not on the night of the deadline.

Below the registry are the implementations (numpy; scipy only for SSIM on arrays
of more than three dimensions), one per metric, and :func:`compute_metric` to call
one by its registry name. Every one checks its arrays first and raises
:class:`MetricError` (a ``ValueError``) naming the problem: prediction and ground
truth of different shapes (both shapes named), empty arrays, NaN or infinite values.

PSNR and SSIM are written for full-HD images (``bench/metrics_speed.py`` measures
them against scikit-image): PSNR sums squared differences in float64 chunk by chunk,
SSIM filters strips of rows that stay in the CPU cache (see :func:`ssim`).
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


# About the size of an SSIM strip's buffers (the four maps, filtered once and
# twice): small enough to stay in the CPU cache while the filters pass over them
# (10 output rows of a full-HD RGB image in float32, 25 of a grayscale one).
SSIM_STRIP_BYTES = 3 << 20
# The filter down the columns is a matrix product, split into products of at most
# this many multiply-adds: OpenBLAS runs those on the calling thread. Larger ones
# it spreads over its worker threads, which on a busy machine made SSIM up to ten
# times slower, and never faster by much.
SSIM_GEMM_SIZE = 1 << 18
# Images with fewer values than this are computed in float64 throughout (they are
# fast anyway, and one pixel's rounding weighs more in a small mean); larger ones
# in float32, unless their values spread over more than twice the data range.
SSIM_FLOAT32_MIN_VALUES = 1 << 18


def psnr(pred: Any, gt: Any, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range² / MSE)``, capped.

    The squared differences are summed in float64 over every element. Identical
    images (MSE 0) give :data:`PSNR_CAP_DB` instead of infinity; no pair gives more
    than the cap.
    """
    p, g = _numeric_pair(pred, gt)
    r = _data_range(data_range)
    mse = _sum_squared_difference(p, g) / p.size
    if mse == 0.0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(r * r / mse))


def ssim(pred: Any, gt: Any, data_range: float) -> float:
    """Mean structural similarity; for a multichannel image the mean over channels.

    A 2-D array is one grayscale image; with 3 or more dimensions the last axis is
    the channel axis (``channel_axis=-1``). Gaussian window (sigma 1.5, 11x11),
    K1 = 0.01, K2 = 0.03, population covariance; equal to
    ``skimage.metrics.structural_similarity(pred, gt, data_range=..., channel_axis=-1,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`` within 1e-4
    (in practice about 1e-7 on photographs, and to float64 rounding on images of
    fewer than :data:`SSIM_FLOAT32_MIN_VALUES` values).

    How (2-D and 3-D arrays): only the pixels the mean keeps are computed (those at
    least 5 pixels from every edge), so no border is ever padded. The image is taken
    in strips of rows; for each strip the four maps the formula needs (x, y,
    x² + y² and x·y, after subtracting one constant from both images so the squares
    stay small) are filtered down the columns with one matrix product by a band
    matrix of the Gaussian weights, then along the rows as a symmetric sum of
    shifted slices, every channel at once. ``vx + vy`` comes from the filtered
    ``x² + y²``, which is all the formula needs of the two variances.
    """
    import numpy as np

    p, g = _numeric_pair(pred, gt)
    r = _data_range(data_range)
    if p.ndim < 2:
        raise MetricError(f"SSIM needs an image (H, W) or (H, W, C), got shape {p.shape}")
    spatial = p.ndim if p.ndim == 2 else p.ndim - 1
    win = 2 * _ssim_radius() + 1
    if any(side < win for side in p.shape[:spatial]):
        raise MetricError(f"SSIM needs images of at least {win}x{win} pixels, got shape {p.shape}")
    if p.dtype == g.dtype and np.array_equal(p, g):
        return 1.0  # exactly, where float32 rounding could say 1.0000001
    if p.ndim > 3:
        return _ssim_ndimage(p.astype(np.float64), g.astype(np.float64), r, spatial)
    return _ssim_strips(p, g, r)


def _ssim_radius() -> int:
    return int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)  # as scipy.ndimage: 5


def _ssim_weights():
    """scipy.ndimage's Gaussian kernel for sigma 1.5, truncated at 3.5 sigma (11 taps)."""
    import numpy as np

    radius = _ssim_radius()
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (SSIM_SIGMA * SSIM_SIGMA) * x**2)
    return phi / phi.sum()


def _ssim_strips(p, g, r: float) -> float:
    """SSIM of (H, W) or (H, W, C) arrays; see :func:`ssim`."""
    import numpy as np

    if p.ndim == 2:
        p, g = p[:, :, None], g[:, :, None]
    h, w, c = p.shape
    pad = _ssim_radius()
    kernel = _ssim_weights()
    spread = max(float(p.max()), float(g.max())) - min(float(p.min()), float(g.min()))
    small = p.size < SSIM_FLOAT32_MIN_VALUES
    dtype = np.float64 if small or spread > 2 * r else np.float32
    shift = float(np.mean(g, dtype=np.float64))
    if p.dtype.kind in "iu" and g.dtype.kind in "iu":
        shift = float(round(shift))  # integers stay exact after the shift
    x_rows, y_rows = p.reshape(h, w * c), g.reshape(h, w * c)

    width = w * c  # values in a row, channels interleaved
    out_h, out_w = h - 2 * pad, (w - 2 * pad) * c
    item = np.dtype(dtype).itemsize
    n = min(out_h, max(2 * pad, SSIM_STRIP_BYTES // (16 * width * item)))
    band = np.zeros((n, n + 2 * pad), dtype)
    for i in range(n):
        band[i, i : i + 2 * pad + 1] = kernel
    k = kernel.astype(dtype)
    c1 = (SSIM_K1 * r) ** 2
    c2 = (SSIM_K2 * r) ** 2
    maps = np.empty((n + 2 * pad, 4, width), dtype)  # x, y, x² + y², x·y per input row
    down = np.empty((n, 4, width), dtype)  # filtered down the columns
    both = np.empty((n, 4, out_w), dtype)  # and along the rows
    tmp = np.empty((n, 4, out_w), dtype)
    s1, s2, s3 = (np.empty((n, out_w), dtype) for _ in range(3))

    def fill(dst, xs, ys) -> None:
        x, y, sq, xy = dst[:, 0], dst[:, 1], dst[:, 2], dst[:, 3]
        np.subtract(xs, shift, out=x, dtype=dtype)
        np.subtract(ys, shift, out=y, dtype=dtype)
        np.multiply(x, x, out=sq)
        np.multiply(y, y, out=xy)
        np.add(sq, xy, out=sq)
        np.multiply(x, y, out=xy)

    total = 0.0
    for top in range(0, out_h, n):
        m = min(n, out_h - top)  # output rows top+pad .. top+pad+m-1
        rows = m + 2 * pad  # from input rows top .. top+rows-1
        if top == 0:
            fill(maps[:rows], x_rows[:rows], y_rows[:rows])
        else:  # the previous strip's last 2*pad input rows are this one's first
            maps[: 2 * pad] = maps[n : n + 2 * pad]
            fill(
                maps[2 * pad : rows],
                x_rows[top + 2 * pad : top + rows],
                y_rows[top + 2 * pad : top + rows],
            )
        d = down[:m]
        src, dst = maps[:rows].reshape(rows, 4 * width), d.reshape(m, 4 * width)
        step = max(64, SSIM_GEMM_SIZE // (m * rows))
        for col in range(0, 4 * width, step):  # small products: see SSIM_GEMM_SIZE
            np.matmul(band[:m, :rows], src[:, col : col + step], out=dst[:, col : col + step])
        o, t = both[:m], tmp[:m]
        np.multiply(d[..., pad * c : pad * c + out_w], k[pad], out=o)
        for j in range(1, pad + 1):
            left, right = (pad - j) * c, (pad + j) * c
            np.add(d[..., left : left + out_w], d[..., right : right + out_w], out=t)
            np.multiply(t, k[pad + j], out=t)
            np.add(o, t, out=o)
        mx, my, msq, mxy = o[:, 0], o[:, 1], o[:, 2], o[:, 3]  # filtered maps
        a, b, e = s1[:m], s2[:m], s3[:m]
        # S = (2 ux uy + c1)(2 cov + c2) / ((ux² + uy² + c1)(vx + vy + c2)): the 2s
        # are taken out as a factor 4 on the sum.
        np.multiply(mx, my, out=a)
        np.subtract(mxy, a, out=b)  # covariance
        np.add(b, c2 / 2, out=b)
        np.multiply(mx, mx, out=e)
        np.subtract(msq, e, out=msq)
        np.multiply(my, my, out=e)
        np.subtract(msq, e, out=msq)
        np.add(msq, c2, out=msq)  # vx + vy + c2
        np.add(mx, shift, out=mx)  # the means, shifted back
        np.add(my, shift, out=my)
        np.multiply(mx, my, out=a)
        np.add(a, c1 / 2, out=a)
        np.multiply(b, a, out=b)  # the numerator / 4
        np.multiply(mx, mx, out=e)
        np.multiply(my, my, out=a)
        np.add(e, a, out=e)
        np.add(e, c1, out=e)  # ux² + uy² + c1
        np.multiply(e, msq, out=e)  # the denominator
        np.divide(b, e, out=b)
        total += 4.0 * float(b.sum(dtype=np.float64))
    return total / (out_h * out_w)


def _ssim_ndimage(p, g, r: float, spatial: int) -> float:
    """SSIM of float64 arrays of any dimension, with scipy.ndimage's Gaussian filter."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

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
    pad = _ssim_radius()
    inner = s[tuple(slice(pad, n - pad) for n in s.shape[:spatial])]
    if p.ndim == spatial:
        return float(inner.mean(dtype=np.float64))
    per_channel = inner.reshape(-1, inner.shape[-1]).mean(axis=0, dtype=np.float64)
    return float(per_channel.mean())


def rmse(pred: Any, gt: Any) -> float:
    """Root mean squared error over every element, in the data's own units."""
    p, g = _numeric_pair(pred, gt)
    return math.sqrt(_sum_squared_difference(p, g) / p.size)


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
    """``value`` as a float64 numpy array."""
    import numpy as np

    return _numeric(value, what).astype(np.float64, copy=False)


def _finite(a, what: str) -> None:
    import numpy as np

    if not np.all(np.isfinite(a)):
        nan = int(np.isnan(a).sum())
        inf = int(np.isinf(a).sum())
        raise MetricError(f"{what} contains {nan} NaN and {inf} infinite values")


def _numeric(value: Any, what: str):
    """``value`` as a numeric numpy array of its own dtype (booleans as uint8)."""
    import numpy as np

    try:
        a = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise MetricError(f"{what} is not an array: {exc}") from None
    if a.dtype.kind not in "biuf":
        raise MetricError(f"{what} must be numeric, got dtype {a.dtype}")
    return a.view(np.uint8) if a.dtype.kind == "b" else a


def _numeric_pair(pred: Any, gt: Any):
    """Both as numeric arrays of the same, non-empty shape, all finite; not copied."""
    import numpy as np

    p = _numeric(pred, "prediction")
    g = _numeric(gt, "ground truth")
    if p.shape != g.shape:
        raise MetricError(f"prediction shape {p.shape} does not match ground truth shape {g.shape}")
    if p.size == 0:
        raise MetricError(f"empty arrays (shape {p.shape})")
    for a, what in ((p, "prediction"), (g, "ground truth")):
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            _finite(a, what)
    return p, g


def _sum_squared_difference(p, g) -> float:
    """Σ (p - g)² in float64, a cache-sized chunk at a time (exact for 8-bit images)."""
    import numpy as np

    pf, gf = p.reshape(-1), g.reshape(-1)
    chunk = 1 << 15
    buf = np.empty(min(chunk, pf.size), np.float64)
    total = 0.0
    for i in range(0, pf.size, chunk):
        d = buf[: min(chunk, pf.size - i)]
        np.subtract(pf[i : i + chunk], gf[i : i + chunk], out=d, dtype=np.float64)
        total += float(np.einsum("i,i->", d, d))  # not np.dot: no BLAS threads
    return total


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


def data_range_of(dtype: Any) -> float | None:
    """The values' span by dtype: 1.0 for floats, the full span of an integer type
    (255 for uint8, 65535 for uint16); ``None`` for any other kind."""
    import numpy as np

    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return 1.0
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return float(int(info.max) - int(info.min))
    return None
