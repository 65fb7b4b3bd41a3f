"""The fidelity metrics a track may name, and which way is better.

The scoring phase computes them; the challenge schema only needs to know that a
name is real and whether a higher value wins, so a typo in a config is caught when
it loads, not on the night of the deadline.
"""

from __future__ import annotations

from dataclasses import dataclass


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
