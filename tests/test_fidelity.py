"""Fidelity metrics, the model runner and the score.

The metrics are checked against numbers worked out by hand and against scikit-image
(PSNR, SSIM) on real photographs from ``skimage.data`` with known noise. The
end-to-end tests run real, tiny TFLite models built by this file itself in a
subprocess (``python -m tests.test_fidelity OUT_DIR``), so TensorFlow never loads into
the pytest process: 1x1 convolutions with fixed weights (identity, identity + 0.1,
x 2 for depth), an identity classifier, a full-INT8 identity and a model whose output
is NaN everywhere.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mai_ops.models.metrics import (
    PSNR_CAP_DB,
    MetricError,
    compute_metric,
    psnr,
    rmse,
    si_rmse,
    ssim,
    topk_accuracy,
)

PROJECT = Path(__file__).resolve().parent.parent
MAI2021 = PROJECT / "include" / "challenges" / "mai2021.yaml"
SSIM_ARGS = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}
SIDE = 64


# ---------------------------------------------------------------------------------
# Test models, built in a child process with TensorFlow
# ---------------------------------------------------------------------------------


def build_models(out: Path) -> dict[str, str]:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}

    def save(name: str, data: bytes) -> None:
        (out / f"{name}.tflite").write_bytes(data)
        paths[name] = str(out / f"{name}.tflite")

    def pointwise(channels: int, scale: float, bias: float, side: int | None):
        inp = tf.keras.Input((side, side, channels), batch_size=1)
        conv = tf.keras.layers.Conv2D(channels, 1, use_bias=True)
        y = conv(inp)
        conv.set_weights(
            [
                (np.eye(channels, dtype=np.float32) * scale).reshape(1, 1, channels, channels),
                np.full(channels, bias, np.float32),
            ]
        )
        return tf.keras.Model(inp, y)

    def convert(model, **options) -> bytes:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        supported_ops = options.pop("supported_ops", None)
        if supported_ops:
            converter.target_spec.supported_ops = supported_ops
        for key, value in options.items():
            setattr(converter, key, value)
        return converter.convert()

    # Identity with height and width dynamic (a track's fidelity model).
    save("identity", convert(pointwise(3, 1.0, 0.0, None)))
    # x + 0.1 at a fixed 64x64.
    save("offset", convert(pointwise(3, 1.0, 0.1, SIDE)))
    # Depth: twice the input, one channel, dynamic size.
    save("double", convert(pointwise(1, 2.0, 0.0, None)))

    # Full INT8 identity (int8 input and output).
    images = np.random.default_rng(0).random((8, SIDE, SIDE, 3), dtype=np.float32)

    def representative():
        for i in range(len(images)):
            yield [images[i : i + 1]]

    save(
        "int8",
        convert(
            pointwise(3, 1.0, 0.0, SIDE),
            optimizations=[tf.lite.Optimize.DEFAULT],
            representative_dataset=representative,
            supported_ops=[tf.lite.OpsSet.TFLITE_BUILTINS_INT8],
            inference_input_type=tf.int8,
            inference_output_type=tf.int8,
        ),
    )

    # A classifier whose scores are its input: 6 classes.
    inp = tf.keras.Input((6,), batch_size=1)
    dense = tf.keras.layers.Dense(6)
    y = dense(inp)
    dense.set_weights([np.eye(6, dtype=np.float32), np.zeros(6, np.float32)])
    save("classifier", convert(tf.keras.Model(inp, y)))

    # log(x - 2) of inputs in [0, 1]: NaN everywhere.
    fn = tf.function(
        lambda x: tf.math.log(x - 2.0),
        input_signature=[tf.TensorSpec((1, SIDE, SIDE, 3), tf.float32)],
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    save("nan", converter.convert())

    (out / "manifest.json").write_text(json.dumps(paths))
    return paths


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("fidelity-models")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.test_fidelity", str(out)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="session")
def challenge():
    from mai_ops.challenge.config import load_challenge

    return load_challenge(MAI2021)


# ---------------------------------------------------------------------------------
# Photographs
# ---------------------------------------------------------------------------------


def _photos():
    import skimage.data

    return skimage.data.astronaut(), skimage.data.camera(), skimage.data.chelsea()


def crops(count: int = 3, side: int = SIDE) -> list[np.ndarray]:
    """Float32 RGB crops in [0, 1] of astronaut and chelsea."""
    astronaut, _, chelsea = _photos()
    spots = [(astronaut, 100, 200), (astronaut, 300, 80), (chelsea, 60, 180), (chelsea, 150, 300)]
    return [
        (image[r : r + side, c : c + side] / 255.0).astype(np.float32)
        for image, r, c in spots[:count]
    ]


def noisy_uint8(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(image + rng.normal(0, sigma, image.shape)), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------
# Metrics: hand-computed values
# ---------------------------------------------------------------------------------


def test_psnr_by_hand():
    gt = np.zeros((4, 4, 3))
    assert psnr(gt + 0.1, gt, 1.0) == pytest.approx(20.0, abs=1e-12)  # MSE 0.01
    assert psnr(gt + 25.5, gt, 255) == pytest.approx(20.0, abs=1e-12)
    # Half the pixels off by 0.2: MSE 0.02 -> 10 log10(50).
    pred = gt.copy()
    pred[:2] = 0.2
    assert psnr(pred, gt, 1.0) == pytest.approx(10 * math.log10(50), abs=1e-12)


def test_psnr_of_identical_images_is_the_cap():
    image = np.random.default_rng(0).random((8, 8, 3))
    assert psnr(image, image, 1.0) == PSNR_CAP_DB == 100.0
    # No image pair scores above the cap, however close.
    assert psnr(image + 1e-9, image, 1.0) == PSNR_CAP_DB


def test_ssim_by_hand():
    image = np.random.default_rng(1).random((16, 16, 3))
    assert ssim(image, image, 1.0) == pytest.approx(1.0, abs=1e-12)
    # Two constant images a and b: no variance, so SSIM = (2ab + C1) / (a² + b² + C1).
    a, b, c1 = 0.0, 0.5, (0.01 * 1.0) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)  # = 1 / 2501
    got = ssim(np.full((16, 16), a), np.full((16, 16), b), 1.0)
    assert got == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(1 / 2501, abs=1e-15)


def test_rmse_by_hand():
    assert rmse(np.array([3.0, 4.0]), np.zeros(2)) == pytest.approx(math.sqrt(12.5))
    assert rmse(np.array([1, 2, 3], np.uint16), np.array([1, 2, 3], np.uint16)) == 0.0
    # Unsigned ground truth does not wrap around: 0 - 5 is -5, not 65531.
    assert rmse(np.array([0], np.uint16), np.array([5], np.uint16)) == 5.0


def test_si_rmse_by_hand():
    # Pixels 3 and 4 are masked out (gt <= 1 mm); d = [log(e), log(1)] = [1, 0]:
    # sqrt((1 + 0) / 2 - (1 / 2)²) = 0.5.
    gt = np.array([10.0, 10.0, 0.0, 1.0])
    pred = np.array([10.0 * math.e, 10.0, 5.0, 5.0])
    assert si_rmse(pred, gt) == pytest.approx(0.5, abs=1e-12)
    # Scale invariance: any constant factor gives 0.
    depth = np.random.default_rng(0).uniform(500, 5000, (12, 16))
    assert si_rmse(depth * 3.7, depth) == pytest.approx(0.0, abs=1e-6)
    # Predictions below 1 mm are set to 1: d = log(1) - log(4), log(8) - log(2).
    gt = np.array([4.0, 2.0])
    pred = np.array([0.2, 8.0])
    d = [math.log(1) - math.log(4), math.log(8) - math.log(2)]
    expected = math.sqrt(sum(x * x for x in d) / 2 - (sum(d) / 2) ** 2)
    assert si_rmse(pred, gt) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(MetricError, match="no pixel deeper than 1 mm"):
        si_rmse(np.ones(4) * 5, np.ones(4))


def test_topk_by_hand():
    scores = np.array(
        [
            [0.1, 0.5, 0.2, 0.15, 0.05],  # label 1: rank 0
            [0.4, 0.3, 0.2, 0.05, 0.05],  # label 2: rank 2
            [0.1, 0.2, 0.3, 0.4, 0.0],  # label 4: rank 4
            [0.3, 0.3, 0.3, 0.05, 0.05],  # label 2: tie for first, counts as top-1
        ]
    )
    labels = np.array([1, 2, 4, 2])
    assert topk_accuracy(scores, labels, 1) == 0.5
    assert topk_accuracy(scores, labels, 3) == 0.75
    assert topk_accuracy(scores, labels, 5) == 1.0
    assert compute_metric("top1", scores, labels) == 0.5
    assert compute_metric("top3", scores, labels) == 0.75
    # One sample as a flat row and a scalar label.
    assert topk_accuracy(scores[0], 1, 1) == 1.0


def test_compute_metric_dispatches_by_registry_name():
    gt = np.zeros((16, 16, 3))
    pred = gt + 0.1
    assert compute_metric("psnr", pred, gt, 1.0) == pytest.approx(20.0)
    assert compute_metric("ssim", gt, gt, 1.0) == pytest.approx(1.0)
    assert compute_metric("rmse", pred, gt) == pytest.approx(0.1)
    assert compute_metric("si_rmse", gt + 20, gt + 10) == pytest.approx(0.0)
    with pytest.raises(MetricError, match="unknown metric 'psrn'"):
        compute_metric("psrn", pred, gt, 1.0)
    with pytest.raises(MetricError, match="needs the data range"):
        compute_metric("psnr", pred, gt)


# ---------------------------------------------------------------------------------
# Metrics against scikit-image on photographs
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [5.0, 20.0])
def test_psnr_and_ssim_match_skimage_on_photographs(sigma):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    astronaut, camera, chelsea = _photos()
    for clean, channel_axis in ((astronaut, -1), (chelsea, -1), (camera, None)):
        noisy = noisy_uint8(clean, sigma, seed=int(sigma))
        want_psnr = peak_signal_noise_ratio(clean, noisy, data_range=255)
        want_ssim = structural_similarity(
            noisy, clean, data_range=255, channel_axis=channel_axis, **SSIM_ARGS
        )
        assert psnr(noisy, clean, 255) == pytest.approx(want_psnr, abs=1e-6)
        assert ssim(noisy, clean, 255) == pytest.approx(want_ssim, abs=1e-6)

        # The same images as floats in [0, 1].
        clean_f, noisy_f = clean / 255.0, noisy / 255.0
        want_ssim_f = structural_similarity(
            noisy_f, clean_f, data_range=1.0, channel_axis=channel_axis, **SSIM_ARGS
        )
        assert ssim(noisy_f, clean_f, 1.0) == pytest.approx(want_ssim_f, abs=1e-6)
        assert psnr(noisy_f, clean_f, 1.0) == pytest.approx(want_psnr, abs=1e-6)
    # Noisier images score lower.
    assert psnr(noisy_uint8(astronaut, 20, 1), astronaut, 255) < psnr(
        noisy_uint8(astronaut, 5, 1), astronaut, 255
    )


def test_ssim_float32_matches_skimage():
    # skimage computes float32 images in float32; this module always in float64.
    from skimage.metrics import structural_similarity

    astronaut = _photos()[0]
    clean = (astronaut / 255.0).astype(np.float32)
    noisy = (noisy_uint8(astronaut, 10, 3) / 255.0).astype(np.float32)
    want = structural_similarity(noisy, clean, data_range=1.0, channel_axis=-1, **SSIM_ARGS)
    assert ssim(noisy, clean, 1.0) == pytest.approx(want, abs=1e-6)


# ---------------------------------------------------------------------------------
# Metrics: broken inputs
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["psnr", "ssim", "rmse", "si_rmse"])
def test_shape_mismatch_names_both_shapes(name):
    with pytest.raises(ValueError, match=r"\(16, 16, 3\).*\(16, 16, 1\)"):
        compute_metric(name, np.ones((16, 16, 3)), np.ones((16, 16, 1)), 1.0)


@pytest.mark.parametrize("name", ["psnr", "ssim", "rmse", "si_rmse"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_prediction_is_rejected(name, bad):
    pred = np.ones((16, 16, 3))
    pred[3, 4, 1] = bad
    with pytest.raises(ValueError, match="prediction contains"):
        compute_metric(name, pred, np.ones((16, 16, 3)), 1.0)


def test_broken_inputs():
    with pytest.raises(MetricError, match="empty"):
        psnr(np.zeros((0, 3)), np.zeros((0, 3)), 1.0)
    with pytest.raises(MetricError, match="empty"):
        topk_accuracy(np.zeros((0, 5)), np.zeros(0), 1)
    with pytest.raises(MetricError, match="ground truth contains 1 NaN"):
        rmse(np.ones(3), np.array([1.0, np.nan, 1.0]))
    with pytest.raises(MetricError, match="scores contains 1 NaN"):
        topk_accuracy(np.array([[0.1, np.nan]]), np.array([0]), 1)
    with pytest.raises(MetricError, match="at least 11x11"):
        ssim(np.ones((8, 8, 3)), np.ones((8, 8, 3)), 1.0)
    with pytest.raises(MetricError, match="data_range must be positive"):
        psnr(np.ones(3), np.ones(3), 0)
    with pytest.raises(MetricError, match="outside 0..2"):
        topk_accuracy(np.ones((1, 3)), np.array([3]), 1)
    with pytest.raises(MetricError, match="labels shape"):
        topk_accuracy(np.ones((2, 3)), np.array([0, 1, 2]), 1)
    with pytest.raises(MetricError, match="numeric"):
        rmse(np.array(["a"]), np.array(["b"]))


# ---------------------------------------------------------------------------------
# End to end: real TFLite models in the child process
# ---------------------------------------------------------------------------------


def test_identity_model_reaches_the_psnr_cap(models, challenge):
    from mai_ops.models.fidelity import evaluate_model

    track = challenge.track("denoising")
    images = crops(3)
    images.append(crops(1, side=40)[0])  # the dynamic model is resized per sample
    result = evaluate_model(models["identity"], track, images, images)
    assert result.count == 4
    assert result.data_range == 1.0
    assert result.metrics == {"psnr": PSNR_CAP_DB, "ssim": pytest.approx(1.0, abs=1e-9)}
    assert [row["psnr"] for row in result.per_sample] == [PSNR_CAP_DB] * 4
    assert [row["name"] for row in result.per_sample] == ["0000", "0001", "0002", "0003"]


def test_offset_model_psnr_is_20_db_and_ssim_matches_skimage(models, challenge):
    from skimage.metrics import structural_similarity

    from mai_ops.models.fidelity import evaluate_model

    images = crops(3)
    result = evaluate_model(models["offset"], challenge.track("denoising"), images, images)
    # Every pixel off by 0.1 in a [0, 1] image: MSE 0.01, PSNR 20 dB.
    assert result.metrics["psnr"] == pytest.approx(20.0, abs=1e-4)
    want = np.mean(
        [
            structural_similarity(
                (x + np.float32(0.1)).astype(np.float64),
                x.astype(np.float64),
                data_range=1.0,
                channel_axis=-1,
                **SSIM_ARGS,
            )
            for x in images
        ]
    )
    assert result.metrics["ssim"] == pytest.approx(want, abs=1e-6)


def test_uint8_ground_truth_uses_range_255_and_matches_skimage(models, challenge):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from mai_ops.models.fidelity import evaluate_model

    astronaut, camera, chelsea = _photos()
    clean = [astronaut[50:114, 60:124], chelsea[100:164, 200:264]]
    noisy = [noisy_uint8(x, 12.0, seed=i) for i, x in enumerate(clean)]
    # The identity model passes the noisy image through (uint8 cast to float32).
    result = evaluate_model(models["identity"], challenge.track("denoising"), noisy, clean)
    assert result.data_range == 255.0
    want_psnr = np.mean(
        [peak_signal_noise_ratio(c, n, data_range=255) for c, n in zip(clean, noisy, strict=True)]
    )
    want_ssim = np.mean(
        [
            structural_similarity(n, c, data_range=255, channel_axis=-1, **SSIM_ARGS)
            for c, n in zip(clean, noisy, strict=True)
        ]
    )
    assert result.metrics["psnr"] == pytest.approx(want_psnr, abs=1e-6)
    assert result.metrics["ssim"] == pytest.approx(want_ssim, abs=1e-6)
    # Mean of per-image PSNR, as the MAI scripts, not the PSNR of the pooled error.
    assert result.metrics["psnr"] == pytest.approx(np.mean([r["psnr"] for r in result.per_sample]))


def test_int8_model_outputs_are_dequantized_for_float_ground_truth(models, challenge):
    from mai_ops.models.fidelity import evaluate_model

    # Off the uint8 grid, so quantizing the input (scale ~1/255) loses something.
    images = [x * np.float32(0.9) + np.float32(0.0513) for x in crops(2)]
    result = evaluate_model(models["int8"], challenge.track("quantized_sr"), images, images)
    # The int8 output read raw against [0, 1] ground truth would score far below 0 dB;
    # dequantized, the only error is rounding to steps of 1/255: uniform error of
    # variance step²/12, PSNR = 10 log10(12 * 255²) ≈ 58.9 dB.
    assert result.metrics["psnr"] == pytest.approx(10 * math.log10(12 * 255**2), abs=1.0)
    assert result.metrics["ssim"] > 0.999


def test_depth_model_is_scale_invariant(models, challenge):
    from mai_ops.models.fidelity import evaluate_model

    camera = _photos()[1]
    depths = [
        (500 + camera[r : r + 32, c : c + 48] * 20.0).astype(np.uint16)[..., None]
        for r, c in ((0, 0), (200, 300))
    ]
    result = evaluate_model(models["double"], challenge.track("depth"), depths, depths)
    assert result.metrics["si_rmse"] == pytest.approx(0.0, abs=1e-6)
    # Twice the depth: the error is the depth itself.
    want = np.mean([math.sqrt(np.mean(d.astype(np.float64) ** 2)) for d in depths])
    assert result.metrics["rmse"] == pytest.approx(want, rel=1e-6)
    assert list(result.metrics) == ["si_rmse", "rmse"]


def test_classifier_top_k_over_the_set(models, challenge):
    from mai_ops.models.fidelity import evaluate_model

    scores = [
        np.array([0.1, 0.9, 0.0, 0.2, 0.3, 0.4], np.float32),  # label 1: top-1
        np.array([0.9, 0.1, 0.5, 0.6, 0.3, 0.4], np.float32),  # label 2: rank 2
        np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], np.float32),  # label 5: rank 5
        np.array([0.2, 0.1, 0.0, 0.9, 0.3, 0.4], np.float32),  # label 4: rank 2
    ]
    labels = [np.array(1), np.array(2), np.array([5]), np.int64(4)]
    track = challenge.track("scene_detection")
    result = evaluate_model(models["classifier"], track, scores, labels)
    assert result.metrics == {"top1": 0.25, "top3": 0.75}
    assert [r["top1"] for r in result.per_sample] == [1.0, 0.0, 0.0, 0.0]
    assert [r["label"] for r in result.per_sample] == [1, 2, 5, 4]


def test_nan_output_is_a_clear_error(models, challenge):
    from mai_ops.models.fidelity import FidelityError, evaluate_model

    images = crops(2)
    with pytest.raises(FidelityError) as err:
        evaluate_model(models["nan"], challenge.track("denoising"), images, images)
    assert err.value.code == "fidelity_non_finite_output"
    assert "NaN" in err.value.message
    assert err.value.sample == "0000"


def test_model_failures_have_codes(models, challenge, tmp_path):
    from mai_ops.models.fidelity import FidelityError, evaluate_model

    track = challenge.track("denoising")
    images = crops(1)

    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"not a flatbuffer" * 10)
    with pytest.raises(FidelityError) as err:
        evaluate_model(garbage, track, images, images)
    assert err.value.code == "fidelity_load_failed"

    # A fixed 64x64 model given a 40x40 image.
    small = crops(1, side=40)
    with pytest.raises(FidelityError) as err:
        evaluate_model(models["offset"], track, small, small)
    assert err.value.code == "fidelity_input_mismatch"
    assert "[1, 40, 40, 3]" in err.value.message

    # The output (64x64x3) cannot be compared with a 64x64x1 ground truth.
    with pytest.raises(FidelityError) as err:
        evaluate_model(models["identity"], track, images, [images[0][..., :1]])
    assert err.value.code == "fidelity_output_mismatch"
    assert "(1, 64, 64, 3)" in err.value.message and "(64, 64, 1)" in err.value.message

    with pytest.raises(FidelityError) as err:
        evaluate_model(models["identity"], track, images, images, timeout_s=0.01)
    assert err.value.code == "fidelity_timeout"


@pytest.mark.parametrize(
    ("sig", "code", "text"),
    [
        ("SIGSEGV", "fidelity_crashed", "killed by SIGSEGV"),
        ("SIGKILL", "fidelity_memory_exceeded", "out of memory"),
    ],
)
def test_a_child_killed_by_a_signal(models, challenge, monkeypatch, sig, code, text):
    from mai_ops.infra import child
    from mai_ops.models import fidelity

    die = f"import os, signal, sys; sys.stdin.read(); os.kill(os.getpid(), signal.{sig})"
    monkeypatch.setattr(child, "child_command", lambda module: [sys.executable, "-c", die])
    images = crops(1)
    with pytest.raises(fidelity.FidelityError) as err:
        fidelity.evaluate_model(models["identity"], challenge.track("denoising"), images, images)
    assert err.value.code == code
    assert text in err.value.message and "after 0 of 1 samples" in err.value.message


def test_no_samples_is_an_empty_result(models, challenge):
    from mai_ops.models.fidelity import evaluate_model

    result = evaluate_model(models["identity"], challenge.track("denoising"), [], [])
    assert (result.metrics, result.count, result.per_sample) == ({}, 0, [])


def test_folder_of_pairs(models, challenge, tmp_path):
    from mai_ops.models.fidelity import ValidationDataError, evaluate_model

    (tmp_path / "input").mkdir()
    (tmp_path / "gt").mkdir()
    for name, image in zip(("b", "a"), crops(2), strict=True):
        np.save(tmp_path / "input" / f"{name}.npy", image)
        np.save(tmp_path / "gt" / f"{name}.npy", image)
    result = evaluate_model(models["offset"], challenge.track("denoising"), tmp_path)
    assert [r["name"] for r in result.per_sample] == ["a", "b"]
    assert result.metrics["psnr"] == pytest.approx(20.0, abs=1e-4)

    np.save(tmp_path / "input" / "c.npy", crops(1)[0])
    with pytest.raises(ValidationDataError, match=r"input/c\.npy: input without ground truth"):
        evaluate_model(models["offset"], challenge.track("denoising"), tmp_path)


# ---------------------------------------------------------------------------------
# Validation data in the organizers' bucket, and the score
# ---------------------------------------------------------------------------------


def _put_npy(s3, bucket: str, key: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    s3.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())


def test_validation_set_from_the_bucket_and_the_score(s3, models, challenge):
    from mai_ops.infra.layout import data_set_keys
    from mai_ops.models.fidelity import (
        DataSet,
        ValidationDataError,
        evaluate_model,
        load_data_set,
        score_from,
    )

    track = challenge.track("denoising")
    bucket = challenge.buckets.organizers
    # Nothing staged: no error, an empty set (the validation server reports runtime only).
    assert load_data_set(s3, challenge, track, "validation") == DataSet([], [], [])

    input_prefix, gt_prefix = data_set_keys("validation", "denoising")
    assert (input_prefix, gt_prefix) == ("validation/denoising/input/", "validation/denoising/gt/")
    images = crops(2)
    for name, image in zip(("0002", "0001"), images, strict=True):
        _put_npy(s3, bucket, f"{input_prefix}{name}.npy", image)
        _put_npy(s3, bucket, f"{gt_prefix}{name}.npy", image)
    data = load_data_set(s3, challenge, "denoising", "validation")
    assert data.names == ["0001", "0002"] and len(data.inputs) == len(data.truths) == 2
    np.testing.assert_array_equal(data.inputs[0], images[1])  # name order: 0001 first

    result = evaluate_model(models["offset"], track, data.inputs, data.truths)
    runtime_ms = 12.5
    score = score_from(track, result.metrics, runtime_ms)
    # mai2021 denoising: 2 ** (alpha * psnr) / (C * runtime), alpha = 2, C = 1e15.
    psnr_value = result.metrics["psnr"]
    assert psnr_value == pytest.approx(20.0, abs=1e-4)
    assert score == pytest.approx(2 ** (2 * psnr_value) / (1e15 * runtime_ms), rel=1e-12)
    assert score == pytest.approx(2**40 / 1.25e16, rel=1e-4)
    # A data set runs by its names.
    by_name = evaluate_model(models["offset"], track, data)
    assert [r["name"] for r in by_name.per_sample] == ["0001", "0002"]
    assert by_name.metrics == result.metrics

    _put_npy(s3, bucket, f"{gt_prefix}0003.npy", images[0])
    with pytest.raises(ValidationDataError, match="gt/0003.npy: ground truth without input"):
        load_data_set(s3, challenge, track, "validation")


def test_score_from_formula(challenge, caplog):
    from mai_ops.models.fidelity import score_from, score_with_reason

    isp = challenge.track("learned_isp")
    assert score_from(isp, {"psnr": 23.0, "ssim": 0.9}, 80.0) == pytest.approx(
        2 ** (2 * 23.0) / (1e15 * 80.0), rel=1e-12
    )
    depth = challenge.track("depth")
    assert score_from(depth, {"si_rmse": 0.2, "rmse": 3.1}, 40.0) == pytest.approx(
        2 ** (-20 * 0.2) / (0.001 * 40.0), rel=1e-12
    )
    scene = challenge.track("scene_detection")
    assert score_from(scene, {"top1": 0.75, "top3": 0.9}, 5.0) == pytest.approx(
        2 ** (4 * 0.75) / (0.01 * 5.0), rel=1e-12
    )

    # Missing variables: None, with the reason.
    assert score_from(isp, {"psnr": 23.0}, None) is None
    assert "needs runtime" in caplog.text
    score, reason = score_with_reason(isp, {"ssim": 0.9}, 80.0)
    assert score is None and "needs psnr" in reason
    score, reason = score_with_reason(isp, {}, None)
    assert score is None and "psnr, runtime" in reason
    score, reason = score_with_reason(isp, {"psnr": 23.0}, 0.0)
    assert score is None and "cannot evaluate" in reason


def test_score_reads_runtime_s_and_other_measurements(challenge):
    from mai_ops.challenge.config import Score
    from mai_ops.models.fidelity import score_with_reason

    denoising = challenge.track("denoising")
    formula = "2 ** (alpha * psnr) / (C * runtime_s * power)"
    track = denoising.model_copy(
        update={"score": Score(formula=formula, constants=denoising.score.constants)}
    )
    score, reason = score_with_reason(track, {"psnr": 30.0}, 250.0, {"power": 2.0})
    assert reason == ""
    assert score == pytest.approx(2**60 / (1e15 * 0.25 * 2.0), rel=1e-12)
    score, reason = score_with_reason(track, {"psnr": 30.0}, 250.0)
    assert score is None and "needs power" in reason


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.test_fidelity OUT_DIR")
    build_models(Path(sys.argv[1]))
