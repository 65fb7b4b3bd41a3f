"""Teams of known quality for the final-phase tests: real TFLite models, real photographs.

Run as ``python -m tests.final_phase_models OUT_DIR``: it writes the models and the
hidden test set into ``OUT_DIR`` (TensorFlow stays out of the pytest process). Each
track's ground truth is a known function of its input, and each team's model is that
function spoiled by a known amount, so the ranking is known by construction:

- ``denoise`` (PSNR/SSIM): photographs of scikit-image, 64x64 crops as uint8 PNG; the
  truth is ``0.5 * x + 20`` (uint8 PNG). ``ada`` misses it by 1 grey level, ``bo`` by
  ``0.05 * x``, ``cy`` by ``0.2 * x``: ada > bo > cy.
- ``depth`` (si-RMSE): 48x64 crops; the truth is ``500 + 10 * mean(x)`` mm (16-bit
  PNG). ``ada`` reproduces it; ``bo`` and ``cy`` add ``3`` and ``15`` times the red
  minus green difference: ada > bo > cy.
- ``scenes`` (top-1/top-3): 32x32 images whose brightest quadrant is the label (a
  ``.npy`` label). ``ada`` computes the quadrant means (8 of 8 right), ``bo`` adds a
  bias towards class 0 that flips the low-contrast images (5 of 8), ``cy`` always says
  class 0 (2 of 8): ada > bo > cy.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DENOISE = (64, 64)
DEPTH = (48, 64)
SCENES = 32


def photos():
    """Real photographs shipped with scikit-image, as uint8 RGB."""
    from skimage import data

    return [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]


def test_set() -> dict[str, dict[str, tuple]]:
    """Per track: name -> (input array, ground-truth array), as they are staged."""
    import numpy as np

    out: dict[str, dict[str, tuple]] = {"denoise": {}, "depth": {}, "scenes": {}}
    for i, photo in enumerate(photos()):
        h, w = DENOISE
        x = photo[100 : 100 + h, 150 : 150 + w, :3].astype(np.uint8)
        y = np.round(0.5 * x.astype(np.float64) + 20).astype(np.uint8)
        out["denoise"][f"img{i:02d}"] = (x, y)
        h, w = DEPTH
        x = photo[200 : 200 + h, 120 : 120 + w, :3].astype(np.uint8)
        depth = 500 + 10 * x.astype(np.float64).mean(axis=-1, keepdims=True)
        out["depth"][f"img{i:02d}"] = (x, np.round(depth).astype(np.uint16))
    rng = np.random.default_rng(7)
    half = SCENES // 2
    for i in range(8):
        label, contrast = i % 4, 50 if i < 4 else 10
        x = rng.integers(60, 100, (SCENES, SCENES, 3)).astype(np.float64)
        r, c = divmod(label, 2)
        x[r * half : (r + 1) * half, c * half : (c + 1) * half] += contrast
        out["scenes"][f"s{i}"] = (x.astype(np.uint8), np.array(label, dtype=np.int64))
    return out


def _convert(fn, shape) -> bytes:
    import tensorflow as tf

    function = tf.function(fn, input_signature=[tf.TensorSpec(shape, tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], function
    )
    return converter.convert()


def models() -> dict[str, dict[str, bytes]]:
    import tensorflow as tf

    def denoise(k, b):
        return lambda x: k * x + b

    def depth(p):
        return lambda x: (
            500.0
            + 10.0 * tf.reduce_mean(x, axis=-1, keepdims=True)
            + p * (x[..., :1] - x[..., 1:2])
        )

    def scenes(bias):
        def fn(x):
            pooled = tf.nn.avg_pool2d(x, SCENES // 2, SCENES // 2, "VALID")  # 1x2x2x3
            return tf.reshape(tf.reduce_mean(pooled, axis=-1), (1, 4)) + tf.constant([bias])

        return fn

    def constant_class_zero(x):
        return tf.reshape(tf.reduce_mean(x, axis=[1, 2, 3]) * 0.0, (1, 1)) + tf.constant(
            [[1.0, 0.0, 0.0, 0.0]]
        )

    image = (1, *DENOISE, 3)
    field = (1, *DEPTH, 3)
    square = (1, SCENES, SCENES, 3)
    return {
        "denoise": {
            "ada": _convert(denoise(0.5, 21.0), image),
            "bo": _convert(denoise(0.55, 20.0), image),
            "cy": _convert(denoise(0.7, 20.0), image),
        },
        "depth": {
            "ada": _convert(depth(0.0), field),
            "bo": _convert(depth(3.0), field),
            "cy": _convert(depth(15.0), field),
        },
        "scenes": {
            "ada": _convert(scenes([0.0, 0.0, 0.0, 0.0]), square),
            "bo": _convert(scenes([30.0, 0.0, 0.0, 0.0]), square),
            "cy": _convert(constant_class_zero, square),
        },
    }


def main(out: Path) -> None:
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    names = {}
    for track, teams in models().items():
        for team, model in teams.items():
            (out / f"{track}-{team}.tflite").write_bytes(model)
            names.setdefault(track, []).append(team)
    for track, pairs in test_set().items():
        for name, (x, y) in pairs.items():
            np.save(out / f"{track}-input-{name}.npy", x, allow_pickle=False)
            np.save(out / f"{track}-gt-{name}.npy", y, allow_pickle=False)
    (out / "manifest.json").write_text(json.dumps(names))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
