"""PSNR + SSIM throughput on full-HD RGB pairs against scikit-image, in one run.

Reference: ``skimage.metrics.peak_signal_noise_ratio`` and ``structural_similarity``
with the Gaussian settings (``gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, channel_axis=-1``), the definition ours follows.

The pairs are 1920x1080 RGB frames made from scikit-image's bundled photographs
(resized), each prediction a degraded copy (a slight blur, sensor-like noise, and a
JPEG-like 8x8 block offset) so the SSIM values are realistic (about 0.6-0.95).

Two measurements:

1. In process: the same arrays through ``mai_ops.models.metrics.psnr`` + ``ssim`` and
   through scikit-image, alternated pair by pair over several rounds; the ratio is of
   the median times per pair. The largest |dSSIM| and |dPSNR| over all pairs are
   printed.
2. Through the command line, start-up included: ``mai-ops metrics --metric psnr
   --metric ssim --json`` on a folder of N pairs against a script that does the same
   with scikit-image (reads each pair with ``skimage.io.imread`` or ``numpy.load``,
   prints the same JSON), each a fresh process, alternated over the rounds; the ratio
   is of the median wall times. Once with 8-bit PNG files (both sides decode them with
   Pillow, a cost they share) and once with ``.npy`` files.

Targets: ratio at least 4 in both, |dSSIM| <= 1e-4, |dPSNR| <= 1e-6 dB. The load
average is printed before and after: the machine may be shared.

    .venv/bin/python bench/metrics_speed.py [--pairs 6] [--rounds 3]

Exit status 0 whatever the outcome; a missed target is printed plainly.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

RATIO_TARGET = 4.0
SSIM_TOLERANCE = 1e-4
PSNR_TOLERANCE_DB = 1e-6
SSIM_ARGS = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")

REFERENCE = r"""
import json, sys
from pathlib import Path
import numpy as np
import skimage.io
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

def read(path):
    return np.load(path) if path.suffix == ".npy" else skimage.io.imread(path)

pred_dir, target_dir = Path(sys.argv[1]), Path(sys.argv[2])
psnr, ssim = {}, {}
for target_path in sorted(target_dir.iterdir()):
    name = target_path.stem
    target = read(target_path)
    pred = read(pred_dir / target_path.name)
    psnr[name] = float(peak_signal_noise_ratio(target, pred, data_range=255))
    ssim[name] = float(structural_similarity(
        pred, target, data_range=255, channel_axis=-1,
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False))
print(json.dumps([
    {"metric": "psnr", "mean": sum(psnr.values()) / len(psnr), "per_image": psnr},
    {"metric": "ssim", "mean": sum(ssim.values()) / len(ssim), "per_image": ssim},
]))
"""


def make_pairs(count: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, prediction, target) full-HD RGB uint8 pairs from the bundled photographs."""
    import skimage.data
    from scipy.ndimage import gaussian_filter
    from skimage.transform import resize

    rng = np.random.default_rng(0)
    pairs = []
    for i in range(count):
        name = PHOTOS[i % len(PHOTOS)]
        photo = getattr(skimage.data, name)()
        if photo.ndim == 2:
            photo = np.stack([photo] * 3, axis=-1)
        target = resize(photo[..., :3], (1080, 1920), order=3, anti_aliasing=False)
        target = np.clip(np.round(target * 255), 0, 255).astype(np.uint8)
        blur = 0.6 + 0.2 * (i % 4)
        pred = gaussian_filter(target.astype(np.float64), sigma=(blur, blur, 0))
        pred += rng.normal(0, 2 + i % 5, pred.shape)  # noise
        pred += np.kron(rng.normal(0, 1.5, (135, 240, 3)), np.ones((8, 8, 1)))  # 8x8 blocks
        pred = np.clip(np.round(pred), 0, 255).astype(np.uint8)
        pairs.append((f"{i:03d}_{name}", pred, target))
    return pairs


def in_process(pairs, rounds: int) -> dict:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from mai_ops.models.metrics import psnr, ssim

    ours_t, ref_t, d_ssim, d_psnr = [], [], 0.0, 0.0
    for _ in range(rounds):
        for _name, pred, target in pairs:
            t0 = time.perf_counter()
            p_ours, s_ours = psnr(pred, target, 255), ssim(pred, target, 255)
            t1 = time.perf_counter()
            p_ref = peak_signal_noise_ratio(target, pred, data_range=255)
            s_ref = structural_similarity(
                pred, target, data_range=255, channel_axis=-1, **SSIM_ARGS
            )
            t2 = time.perf_counter()
            ours_t.append(t1 - t0)
            ref_t.append(t2 - t1)
            d_ssim = max(d_ssim, abs(s_ours - s_ref))
            d_psnr = max(d_psnr, abs(p_ours - p_ref))
    return {
        "ours": statistics.median(ours_t),
        "ref": statistics.median(ref_t),
        "d_ssim": d_ssim,
        "d_psnr": d_psnr,
    }


def through_cli(pairs, rounds: int, suffix: str, tmp: Path) -> dict:
    from PIL import Image

    pred_dir, target_dir = tmp / f"pred{suffix}", tmp / f"target{suffix}"
    pred_dir.mkdir()
    target_dir.mkdir()
    for name, pred, target in pairs:
        if suffix == ".png":
            Image.fromarray(pred).save(pred_dir / f"{name}.png")
            Image.fromarray(target).save(target_dir / f"{name}.png")
        else:
            np.save(pred_dir / f"{name}.npy", pred)
            np.save(target_dir / f"{name}.npy", target)
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    ours_cmd = [sys.executable, "-m", "mai_ops.cli", "metrics", "--metric", "psnr"]
    ours_cmd += ["--metric", "ssim", "--pred", str(pred_dir), "--target", str(target_dir)]
    ours_cmd += ["--json"]
    ref_cmd = [sys.executable, "-c", REFERENCE, str(pred_dir), str(target_dir)]

    def timed(cmd):
        t0 = time.perf_counter()
        out = subprocess.run(cmd, env=env, cwd=PROJECT, capture_output=True, text=True, check=True)
        return time.perf_counter() - t0, json.loads(out.stdout)

    ours_t, ref_t = [], []
    for _ in range(rounds):
        t, ours = timed(ours_cmd)
        ours_t.append(t)
        t, ref = timed(ref_cmd)
        ref_t.append(t)
    d = {}
    for mine, theirs in zip(ours, ref, strict=True):
        d[mine["metric"]] = max(
            abs(mine["per_image"][n] - theirs["per_image"][n]) for n in theirs["per_image"]
        )
    return {"ours": statistics.median(ours_t), "ref": statistics.median(ref_t), **d}


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=6, help="full-HD pairs (default 6)")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds (default 3)")
    args = parser.parse_args()
    print(f"load average before: {load()} ({os.cpu_count()} CPUs)")
    pairs = make_pairs(args.pairs)
    print(f"{len(pairs)} pairs of 1920x1080 RGB uint8: {', '.join(n for n, _, _ in pairs)}")

    r = in_process(pairs, args.rounds)
    ratio = r["ref"] / r["ours"]
    ok = ratio >= RATIO_TARGET and r["d_ssim"] <= SSIM_TOLERANCE
    ok = ok and r["d_psnr"] <= PSNR_TOLERANCE_DB
    print("in process, PSNR + SSIM per pair (median):")
    print(f"  mai_ops.models.metrics: {r['ours'] * 1000:7.1f} ms  ({1 / r['ours']:.2f} pairs/s)")
    print(f"  skimage.metrics (ref.): {r['ref'] * 1000:7.1f} ms  ({1 / r['ref']:.2f} pairs/s)")
    print(f"  ratio skimage / ours: {ratio:.2f}x")
    print(f"  largest |dSSIM| {r['d_ssim']:.2e}, largest |dPSNR| {r['d_psnr']:.2e} dB")

    results = [("in process", ok)]
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in (".png", ".npy"):
            c = through_cli(pairs, args.rounds, suffix, Path(tmp))
            ratio = c["ref"] / c["ours"]
            fine = ratio >= RATIO_TARGET and c["ssim"] <= SSIM_TOLERANCE
            fine = fine and c["psnr"] <= PSNR_TOLERANCE_DB
            results.append((f"command line {suffix}", fine))
            print(f"command line, {len(pairs)} {suffix} pairs, start-up included (median):")
            print(f"  mai-ops metrics --metric psnr --metric ssim: {c['ours']:6.2f} s")
            print(f"  the same with skimage (reference):          {c['ref']:6.2f} s")
            print(f"  ratio skimage / ours: {ratio:.2f}x")
            print(f"  largest |dSSIM| {c['ssim']:.2e}, largest |dPSNR| {c['psnr']:.2e} dB")

    print(f"load average after: {load()}")
    for what, fine in results:
        print(
            f"target ({what}): >= {RATIO_TARGET:g}x, |dSSIM| <= {SSIM_TOLERANCE:g}, "
            f"|dPSNR| <= {PSNR_TOLERANCE_DB:g} dB -> {'met' if fine else 'NOT met'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
