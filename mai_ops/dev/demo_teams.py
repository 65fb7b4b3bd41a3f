"""The demo's teams: who submits what, and the models whose ranking is known by construction.

Every team's model is a small, exact function built with TensorFlow and converted to
TFLite (or, for one team, saved as a Keras model that the pipeline converts). In each
track the ranked teams run the same operations with other constants, so their
runtimes match and the fidelity alone orders them, by a wide margin:

- ``quantized_sr`` (INT8, x3): ``aurora`` repeats each pixel 3x3 (nearest-neighbour
  upsampling), ``borealis`` does the same and adds 12 grey levels (brighter by a known
  amount), ``cobalt`` answers a flat image of the input's mean colour. PSNR:
  aurora > borealis > cobalt.
- ``denoising`` (float, 3x3 depthwise convolution): ``aurora`` averages each 3x3
  neighbourhood (a box blur: the noise's variance divided by 9), ``borealis`` keeps
  the centre pixel (identity: the noise stays), ``ember`` keeps 0.8 of it (the noise
  stays, and the image is darker), ``cobalt`` keeps half of it. PSNR: aurora >
  borealis > ember > cobalt. ``ember`` ships in ``results/`` the box-blurred images,
  not what its model gives: flagged ``results_not_reproduced`` (and still ranked).
- ``depth`` (float, 1x1 convolution): ``aurora`` reads the depth back from the red
  channel exactly (``500 + 37.25 * R`` mm); ``delta`` (a Keras model the pipeline
  converts) and ``borealis`` add 12 and 20 times green minus blue to it; ``cobalt``
  answers 3 m everywhere. si-RMSE: aurora < delta < borealis < cobalt.
- ``scene_detection`` (INT8, 30 classes): each model averages the 6x6 grid cells
  (the sun's cell is the brightest); ``aurora`` answers the brightest cell (3 of 3
  right), ``borealis`` favours cell 0 by 175 grey levels (the test image whose top-left
  cell is the brightest of the three turns to class 0: 2 of 3), ``cobalt`` always answers classes
  0, 1 and 2, in that order (0 of 3, none of the labels in its top 3). top-1: aurora >
  borealis > cobalt.

And teams that are not ranked: ``fjord`` (denoising) halves the resolution (an
``output_shape`` error, also on its validation upload), ``gale`` (depth) calls
``Erf``, which TFLite only has as a custom op (``custom_op``), ``haze`` uploads its
super-resolution model after the final deadline (``late``), and ``iris`` uploads its
scene model six times in one day to the validation server (the sixth is refused
``over_daily_limit``, per the track's ``limits.per_day`` of 5).

``python -m mai_ops.dev.demo_teams OUT_DIR`` builds everything into ``OUT_DIR``
(TensorFlow and LiteRT stay out of the caller's process): ``data/`` holds every data
set at its object key (:func:`mai_ops.dev.demo_data.write_data`), ``uploads/<upload
key without .zip>/`` each archive's members, and ``manifest.json`` the uploads, the
late one, and each ranked team's first metric on the hidden test set, computed with
LiteRT here (the build fails if the order is not the expected one).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DemoTeam:
    team_id: str
    name: str
    tracks: tuple[str, ...]


TEAMS: tuple[DemoTeam, ...] = (
    DemoTeam("aurora", "Team Aurora", ("quantized_sr", "denoising", "depth", "scene_detection")),
    DemoTeam("borealis", "Borealis Lab", ("quantized_sr", "denoising", "depth", "scene_detection")),
    DemoTeam("cobalt", "Cobalt Vision", ("quantized_sr", "denoising", "depth", "scene_detection")),
    DemoTeam("delta", "Delta Keras Club", ("depth",)),
    DemoTeam("ember", "Ember Imaging", ("denoising",)),
    DemoTeam("fjord", "Fjord AI", ("denoising",)),
    DemoTeam("gale", "Gale Robotics", ("depth",)),
    DemoTeam("haze", "Haze Labs", ("quantized_sr",)),
    DemoTeam("iris", "Iris Research", ("scene_detection",)),
)

# The ranked teams of each track, best first, and the rows that fail with their code.
EXPECTED_ORDER: dict[str, list[str]] = {
    "quantized_sr": ["aurora", "borealis", "cobalt"],
    "denoising": ["aurora", "borealis", "ember", "cobalt"],
    "depth": ["aurora", "delta", "borealis", "cobalt"],
    "scene_detection": ["aurora", "borealis", "cobalt"],
}
EXPECTED_FAILED: dict[tuple[str, str], str] = {
    ("denoising", "fjord"): "output_shape",
    ("depth", "gale"): "custom_op",
}
EXPECTED_FLAGGED: dict[tuple[str, str], list[str]] = {
    ("denoising", "ember"): ["results_not_reproduced"],
}
# Uploaded once the final deadline has passed: refused as late, never frozen.
LATE_UPLOAD = "quantized_sr/final/haze/submission.zip"
# The validation uploads refused at intake (key -> code).
EXPECTED_REFUSED: dict[str, str] = {"scene_detection/validation/iris/v6.zip": "over_daily_limit"}

SR_OFFSET = 12.0
DENOISE_CENTRE = {"aurora": None, "borealis": 1.0, "ember": 0.8, "cobalt": 0.5}
DEPTH_PERTURBATION = {"aurora": 0.0, "delta": 12.0, "borealis": 20.0}
DEPTH_CONSTANT_MM = 3000.0
SCENE_BIAS = 175.0
# A fact sheet is due with the final submission; the smallest document that is a PDF.
FACTSHEET = b"%PDF-1.4\n% fact sheet\n%%EOF\n"


def participants_csv() -> str:
    """The demo's participants list (the file format of ``participants.path``)."""
    rows = [f"{t.team_id},{t.name},{t.team_id}@teams.example,{';'.join(t.tracks)}" for t in TEAMS]
    return "team_id,team_name,email,tracks\n" + "\n".join(rows) + "\n"


# ---------------------------------------------------------------------------------
# Models (TensorFlow, in the child)
# ---------------------------------------------------------------------------------


def _convert(tf, fn, shape, representative=None, *, custom_ops=False) -> bytes:
    function = tf.function(fn, input_signature=[tf.TensorSpec(shape, tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], function
    )
    if representative is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    converter.allow_custom_ops = custom_ops
    return converter.convert()


def _calibration(images):
    """Every image, then an all-black and an all-white one: uint8 tensors span 0..255
    with scale 1, so a uint8 output is the image itself, grey level for grey level."""
    import numpy as np

    shape = images[0].shape
    samples = [*images, np.zeros(shape), np.full(shape, 255.0)]

    def representative():
        for x in samples:
            yield [np.asarray(x, np.float32)[None]]

    return representative


def sr_models(tf, images) -> dict[str, bytes]:
    hr = (1080, 1920)
    shape = (1, 360, 640, 3)

    def nearest(x):
        return tf.image.resize(x, hr, method="nearest")

    def brighter(x):
        return tf.minimum(nearest(x) + SR_OFFSET, 255.0)

    def flat(x):
        return tf.image.resize(tf.reduce_mean(x, axis=[1, 2], keepdims=True), hr, "nearest")

    rep = _calibration(images)
    return {
        "aurora": _convert(tf, nearest, shape, rep),
        "borealis": _convert(tf, brighter, shape, rep),
        "cobalt": _convert(tf, flat, shape, rep),
    }


def _depthwise(tf, kernel):
    import numpy as np

    k = tf.constant(np.tile(np.asarray(kernel, np.float32)[:, :, None, None], (1, 1, 3, 1)))
    return lambda x: tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], "SAME")


def denoising_models(tf) -> dict[str, bytes]:
    import numpy as np

    shape = (1, 1080, 1920, 3)
    out = {}
    for team, centre in DENOISE_CENTRE.items():
        kernel = np.full((3, 3), 1 / 9) if centre is None else np.pad([[centre]], 1)
        out[team] = _convert(tf, _depthwise(tf, kernel), shape)
    # Half the resolution: a 2x2 average, 540x960 out of 1080x1920.
    out["fjord"] = _convert(tf, lambda x: tf.nn.avg_pool2d(x, 2, 2, "VALID"), shape)
    return out


def depth_weights(perturbation: float):
    """The 1x1 convolution's (weights, bias): red to mm, plus ``p`` x (green - blue)."""
    from mai_ops.dev.demo_data import DEPTH_MM_PER_LEVEL, DEPTH_NEAR_MM

    return [DEPTH_MM_PER_LEVEL, perturbation, -perturbation], DEPTH_NEAR_MM


def depth_models(tf, keras_path: Path) -> dict[str, bytes]:
    import numpy as np

    shape = (1, 480, 640, 3)

    def linear(weights, bias):
        w = tf.constant(np.asarray(weights, np.float32).reshape(1, 1, 3, 1))
        return lambda x: tf.nn.conv2d(x, w, 1, "VALID") + bias

    out = {
        team: _convert(tf, linear(*depth_weights(p)), shape)
        for team, p in DEPTH_PERTURBATION.items()
        if team != "delta"
    }
    out["cobalt"] = _convert(tf, linear([0.0, 0.0, 0.0], DEPTH_CONSTANT_MM), shape)
    exact = linear(*depth_weights(0.0))
    # Erf has no builtin TFLite kernel: it is kept as a custom op.
    out["gale"] = _convert(
        tf, lambda x: exact(x) + 10.0 * tf.math.erf(x[..., :1] / 255.0), shape, custom_ops=True
    )
    # delta submits Keras: one Conv2D layer with the same function, slightly perturbed.
    weights, bias = depth_weights(DEPTH_PERTURBATION["delta"])
    inp = tf.keras.Input((480, 640, 3), batch_size=1)
    layer = tf.keras.layers.Conv2D(1, 1, name="depth_from_rgb")
    model = tf.keras.Model(inp, layer(inp))
    layer.set_weights([np.asarray(weights, np.float32).reshape(1, 1, 3, 1), np.array([bias])])
    model.save(keras_path)
    out["delta"] = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    return out


def scene_models(tf, images) -> dict[str, bytes]:
    import numpy as np

    from mai_ops.dev.demo_data import SCENE_CLASSES, SCENE_GRID

    rows, cols = SCENE_GRID
    shape = (1, 384, 576, 3)
    cell = (384 // rows, 576 // cols)
    cells = rows * cols
    pick = np.zeros((cells, SCENE_CLASSES), np.float32)
    pick[np.arange(SCENE_CLASSES), np.arange(SCENE_CLASSES)] = 1.0

    def model(weights, bias):
        w, b = tf.constant(weights), tf.constant(np.asarray(bias, np.float32)[None])

        def fn(x):
            means = tf.reduce_mean(tf.nn.avg_pool2d(x, cell, cell, "VALID"), axis=-1)
            return tf.matmul(tf.reshape(means, (1, cells)), w) + b

        return fn

    toward_zero = np.zeros(SCENE_CLASSES, np.float32)
    toward_zero[0] = SCENE_BIAS
    first_three = np.zeros(SCENE_CLASSES, np.float32)
    first_three[:3] = (100.0, 90.0, 80.0)
    rep = _calibration(images)
    return {
        "aurora": _convert(tf, model(pick, np.zeros(SCENE_CLASSES)), shape, rep),
        "borealis": _convert(tf, model(pick, toward_zero), shape, rep),
        # (weights of zero would give the quantizer nothing to scale)
        "cobalt": _convert(tf, model(pick * 1e-3, first_three), shape, rep),
    }


# ---------------------------------------------------------------------------------
# Running the models here (LiteRT), as the scoring does
# ---------------------------------------------------------------------------------


def run_model(model: bytes, x):
    """The model's output on one sample (batch added and dropped), as the scoring runs it."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    interpreter.set_tensor(inp["index"], np.asarray(x)[None].astype(inp["dtype"]))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]


def first_metric(track_id: str, model: bytes, pairs: dict) -> float:
    """The track's first metric of ``model`` on ``pairs``, as the final scoring computes it."""
    import numpy as np

    from mai_ops.models.metrics import psnr, si_rmse

    values = []
    for x, y in pairs.values():
        out = run_model(model, x)
        if track_id == "depth":
            values.append(si_rmse(out[..., 0], y))
        elif track_id == "scene_detection":
            values.append(float(int(np.argmax(out)) == int(y)))
        else:
            values.append(psnr(out.astype(np.float64), y, 255.0))
    return float(np.mean(values))


def check_order(track_id: str, metric: dict[str, float]) -> None:
    """The teams' fidelity orders them as :data:`EXPECTED_ORDER` says (or the build fails)."""
    lower_is_better = track_id == "depth"
    order = sorted(metric, key=lambda t: metric[t] if lower_is_better else -metric[t])
    expected = EXPECTED_ORDER[track_id]
    values = [metric[t] for t in expected]
    strictly = all(
        (a < b) if lower_is_better else (a > b) for a, b in zip(values, values[1:], strict=False)
    )
    if order != expected or not strictly:
        raise AssertionError(f"{track_id}: fidelity orders the teams {metric}, not {expected}")


# ---------------------------------------------------------------------------------
# The uploads
# ---------------------------------------------------------------------------------


def _png(array) -> bytes:
    from mai_ops.dev.demo_data import file_bytes

    suffix, body = file_bytes(array)
    assert suffix == ".png"
    return body


def build(out: Path) -> dict:
    """Data sets, models and every upload's members under ``out``; returns the manifest."""
    import numpy as np
    import tensorflow as tf

    from mai_ops.dev.demo_data import build_data, write_data

    tf.keras.utils.set_random_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    sets = build_data()
    write_data(sets, out / "data")
    test = sets["test"]

    def images(track_id):
        return [x for kind in sets.values() for x, _ in kind.get(track_id, {}).values()]

    keras_path = out / "depth-delta.keras"
    models = {
        "quantized_sr": sr_models(tf, images("quantized_sr")),
        "denoising": denoising_models(tf),
        "depth": depth_models(tf, keras_path),
        "scene_detection": scene_models(tf, images("scene_detection")),
    }
    metrics = {}
    for track_id, expected in EXPECTED_ORDER.items():
        built = models[track_id]
        metrics[track_id] = {t: first_metric(track_id, built[t], test[track_id]) for t in expected}
        check_order(track_id, metrics[track_id])

    uploads: dict[str, dict[str, bytes]] = {}

    def final(track_id, team, model_member="model.tflite", model=None, **extra):
        members = {model_member: models[track_id][team] if model is None else model}
        members["readme.txt"] = f"{team}: final submission for {track_id}\n".encode()
        members["factsheet.pdf"] = FACTSHEET
        members.update(extra)
        uploads[f"{track_id}/final/{team}/submission.zip"] = members

    for track_id, order in EXPECTED_ORDER.items():
        for team in order:
            if team == "delta":
                final(track_id, team, "model.keras", keras_path.read_bytes())
            elif track_id == "denoising" and team in ("aurora", "ember"):
                # Their results on the released test inputs; ember's are aurora's images.
                source = models[track_id]["aurora"]
                results = {
                    f"results/{name}.png": _png(
                        np.clip(np.round(run_model(source, x)), 0, 255).astype(np.uint8)
                    )
                    for name, (x, _) in test[track_id].items()
                }
                final(track_id, team, **results)
            else:
                final(track_id, team)
    for (track_id, team), _code in EXPECTED_FAILED.items():
        final(track_id, team)
    final("quantized_sr", "haze", model=models["quantized_sr"]["aurora"])
    # The validation server: each depth team tries its model, fjord its broken one, iris
    # sends its scene model six times (a new note each time: none is a duplicate).
    for team in ("aurora", "borealis", "cobalt"):
        uploads[f"depth/validation/{team}/v1.zip"] = {"model.tflite": models["depth"][team]}
    uploads["denoising/validation/fjord/v1.zip"] = {"model.tflite": models["denoising"]["fjord"]}
    for n in range(1, 7):
        uploads[f"scene_detection/validation/iris/v{n}.zip"] = {
            "model.tflite": models["scene_detection"]["aurora"],
            "readme.txt": f"iris, attempt {n}\n".encode(),
        }
    for key, members in uploads.items():
        folder = out / "uploads" / key.removesuffix(".zip")
        for name, data in members.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
    manifest = {
        "uploads": sorted(uploads),
        "late": LATE_UPLOAD,
        "first_metric": metrics,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow loads
    build(Path(sys.argv[1]))
