"""Hidden test data: staging, the test-input release, the fidelity block, tiles, reproduction.

Real parts throughout: photographs from ``skimage.data`` staged as PNG (8- and 16-bit)
and ``.npy`` in the embedded S3 server, real TFLite models built by this file itself in
a subprocess (``python -m tests.test_test_data OUT_DIR``, so TensorFlow never loads into
the pytest process): 1x1 convolutions with exactly representable weights, at a fixed
32x32 and with a dynamic height and width, one of them behind a x3 nearest-neighbour
upsampling, so a tiled run and a whole-image run can be compared exactly.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import MAI2021
from tests.test_metrics_cli import png_bytes

PROJECT = Path(__file__).resolve().parent.parent
ORGANIZERS = "mai2021-organizers"
TILE = 32
# y = x @ MIX + BIAS per pixel: powers of two, so float32 results on 0..255 are exact.
MIX = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.25], [0.5, 0.0, 1.0]], np.float32)
BIAS = np.array([0.5, -1.0, 2.0], np.float32)


# ---------------------------------------------------------------------------------
# Models, built in a child process with TensorFlow
# ---------------------------------------------------------------------------------


def build_models(out: Path) -> dict[str, str]:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}

    def save(name: str, side: int | None, upscale: int, mix, bias) -> None:
        """x @ mix + bias per pixel, then each pixel repeated upscale x upscale times
        (the 1x1 convolution gives upscale² copies, depth_to_space lays them out)."""
        kernel = tf.constant(np.tile(mix, (1, upscale * upscale)).reshape(1, 1, 3, -1))
        offset = tf.constant(np.tile(bias, upscale * upscale))

        def run(x):
            y = tf.nn.conv2d(x, kernel, 1, "VALID") + offset
            return tf.nn.depth_to_space(y, upscale) if upscale > 1 else y

        spec = tf.TensorSpec((1, side, side, 3), tf.float32)
        fn = tf.function(run, input_signature=[spec])
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [fn.get_concrete_function()], fn
        )
        (out / f"{name}.tflite").write_bytes(converter.convert())
        paths[name] = str(out / f"{name}.tflite")

    save("mix_fixed", TILE, 1, MIX, BIAS)
    save("mix_dynamic", None, 1, MIX, BIAS)
    save("up3_fixed", TILE, 3, MIX, BIAS)
    save("up3_dynamic", None, 3, MIX, BIAS)
    save("identity", None, 1, np.eye(3, dtype=np.float32), np.zeros(3, np.float32))
    (out / "manifest.json").write_text(json.dumps(paths))
    return paths


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("test-data-models")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.test_test_data", str(out)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="session")
def challenge():
    from mai_ops.challenge.config import load_challenge

    return load_challenge(MAI2021)


# ---------------------------------------------------------------------------------
# Photographs and staging
# ---------------------------------------------------------------------------------


def astronaut(h: int, w: int, row: int = 100, col: int = 150) -> np.ndarray:
    import skimage.data

    return skimage.data.astronaut()[row : row + h, col : col + w].copy()


def camera(h: int, w: int, row: int = 200, col: int = 250) -> np.ndarray:
    import skimage.data

    return skimage.data.camera()[row : row + h, col : col + w].copy()


def npy_bytes(a: np.ndarray, allow_pickle: bool = False) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=allow_pickle)
    return buf.getvalue()


def put(s3, key: str, body: bytes | np.ndarray) -> str:
    """Stage one object in the organizers' bucket; an array as PNG (uint8/16) or .npy."""
    if isinstance(body, np.ndarray):
        body = npy_bytes(body) if key.endswith(".npy") else png_bytes(body)
    s3.put_object(Bucket=ORGANIZERS, Key=key, Body=body)
    return f"s3://{ORGANIZERS}/{key}"


def up(a: np.ndarray, k: int) -> np.ndarray:
    return np.repeat(np.repeat(a, k, axis=0), k, axis=1)


# ---------------------------------------------------------------------------------
# Staging: PNG (8 and 16 bit) and .npy pairs load
# ---------------------------------------------------------------------------------


def test_png_and_npy_pairs_load_for_every_kind_of_track(s3, challenge):
    from mai_ops.models.fidelity import load_data_set

    rgb = astronaut(48, 64)
    put(s3, "test/denoising/input/0002.png", rgb)
    put(s3, "test/denoising/gt/0002.png", rgb)
    put(s3, "test/denoising/input/0001.npy", rgb.astype(np.float32) / 255)
    put(s3, "test/denoising/gt/0001.npy", rgb.astype(np.float32) / 255)
    data = load_data_set(s3, challenge, "denoising", "test")
    assert data.names == ["0001", "0002"] and len(data) == 2
    assert data.inputs[0].dtype == np.float32 and data.inputs[1].dtype == np.uint8
    np.testing.assert_array_equal(data.inputs[1], rgb)
    np.testing.assert_array_equal(data.truths[1], rgb)

    # Depth: an 8-bit RGB input, a 16-bit grayscale depth map in mm (every bit kept).
    depth_mm = (500 + camera(40, 56).astype(np.uint16) * 20).astype(np.uint16)
    assert depth_mm.max() > 255
    put(s3, "test/depth/input/a.png", astronaut(40, 56))
    put(s3, "test/depth/gt/a.png", depth_mm)
    data = load_data_set(s3, challenge, challenge.track("depth"), "test")
    assert data.truths[0].dtype == np.uint16
    np.testing.assert_array_equal(data.truths[0], depth_mm)

    # Learned ISP: a 16-bit 4-channel RAW Bayer input, an 8-bit RGB at twice the size.
    raw = camera(24, 32)[..., None].astype(np.uint16) * 257 + np.arange(4, dtype=np.uint16)
    put(s3, "test/learned_isp/input/r1.png", raw.astype(np.uint16))
    put(s3, "test/learned_isp/gt/r1.png", astronaut(48, 64))
    data = load_data_set(s3, challenge, "learned_isp", "test")
    assert data.inputs[0].shape == (24, 32, 4) and data.inputs[0].dtype == np.uint16
    np.testing.assert_array_equal(data.inputs[0], raw)

    # x3 super-resolution, two pairs at the same scale.
    for name, (row, col) in (("s1", (0, 0)), ("s2", (200, 200))):
        put(s3, f"test/quantized_sr/input/{name}.png", astronaut(20, 30, row, col))
        put(s3, f"test/quantized_sr/gt/{name}.png", astronaut(60, 90, row, col))
    assert load_data_set(s3, challenge, "quantized_sr", "test").names == ["s1", "s2"]

    # Classification: an image and its integer label.
    put(s3, "test/scene_detection/input/c1.png", astronaut(30, 40))
    put(s3, "test/scene_detection/gt/c1.npy", np.array(7, np.int64))
    data = load_data_set(s3, challenge, "scene_detection", "test")
    assert int(data.truths[0]) == 7


def test_validation_data_takes_png_too_and_nothing_staged_is_runtime_only(s3, challenge):
    from mai_ops.models.fidelity import DataSet, ValidationDataError, load_data_set

    assert load_data_set(s3, challenge, "denoising", "validation") == DataSet([], [], [])
    with pytest.raises(ValidationDataError) as err:
        load_data_set(s3, challenge, "denoising", "test")
    assert f"s3://{ORGANIZERS}/test/denoising/" in str(err.value)
    assert "no test data staged" in str(err.value)

    put(s3, "validation/denoising/input/v.png", astronaut(32, 32))
    put(s3, "validation/denoising/gt/v.png", astronaut(32, 32))
    data = load_data_set(s3, challenge, "denoising", "validation")
    assert data.names == ["v"] and data.truths[0].dtype == np.uint8


def test_png_values_reach_a_float_model_as_stored(s3, challenge, models):
    """An 8-bit PNG reaches a float model as 0..255; scored in the 8-bit ground truth's range."""
    from mai_ops.models.fidelity import evaluate_model, load_data_set

    clean = astronaut(40, 48)
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 10, clean.shape), 0, 255)
    put(s3, "test/denoising/input/n.png", noisy.astype(np.uint8))
    put(s3, "test/denoising/gt/n.png", clean)
    data = load_data_set(s3, challenge, "denoising", "test")
    result = evaluate_model(models["identity"], challenge.track("denoising"), data)
    mse = np.mean((noisy.astype(np.uint8).astype(np.float64) - clean) ** 2)
    assert result.data_range == 255.0
    assert result.metrics["psnr"] == pytest.approx(10 * np.log10(255**2 / mse), abs=1e-9)
    assert [r["name"] for r in result.per_sample] == ["n"]


# ---------------------------------------------------------------------------------
# Staging errors name the offending object
# ---------------------------------------------------------------------------------


def _good_pair(s3, track: str = "denoising", name: str = "0001", scale: int = 1) -> None:
    put(s3, f"test/{track}/input/{name}.png", astronaut(16, 20))
    put(s3, f"test/{track}/gt/{name}.png", astronaut(16 * scale, 20 * scale))


BAD_STAGING = [
    pytest.param(
        "denoising",
        lambda s3: put(s3, "test/denoising/input/0002.png", astronaut(16, 20)),
        ["test/denoising/input/0002.png"],
        "input without ground truth",
        id="input-without-gt",
    ),
    pytest.param(
        "denoising",
        lambda s3: put(s3, "test/denoising/gt/0003.npy", astronaut(16, 20)),
        ["test/denoising/gt/0003.npy"],
        "ground truth without input",
        id="gt-without-input",
    ),
    pytest.param(
        "denoising",
        lambda s3: (
            put(s3, "test/denoising/input/0002.png", b"\x89PNG\r\n\x1a\n not really"),
            put(s3, "test/denoising/gt/0002.png", astronaut(16, 20)),
        ),
        ["test/denoising/input/0002.png"],
        "unreadable",
        id="unreadable-png",
    ),
    pytest.param(
        "denoising",
        lambda s3: (
            put(s3, "test/denoising/input/0002.png", astronaut(16, 20)),
            put(s3, "test/denoising/gt/0002.npy", npy_bytes(astronaut(16, 20))[:-100]),
        ),
        ["test/denoising/gt/0002.npy"],
        "unreadable",
        id="truncated-npy",
    ),
    pytest.param(
        "denoising",
        lambda s3: (
            put(s3, "test/denoising/input/0002.png", astronaut(16, 20)),
            put(
                s3,
                "test/denoising/gt/0002.npy",
                npy_bytes(np.array([{"a": 1}], dtype=object), allow_pickle=True),
            ),
        ),
        ["test/denoising/gt/0002.npy"],
        "unreadable",
        id="pickled-npy",
    ),
    pytest.param(
        "denoising",
        lambda s3: put(s3, "test/denoising/input/0001.npy", astronaut(16, 20)),
        ["test/denoising/input/0001.npy", "test/denoising/input/0001.png"],
        "has the same name",
        id="two-files-one-name",
    ),
    pytest.param(
        "denoising",
        lambda s3: (
            put(s3, "test/denoising/input/0002.png", astronaut(16, 20)),
            put(s3, "test/denoising/gt/0002.png", astronaut(17, 20)),
        ),
        ["test/denoising/gt/0002.png"],
        "not a whole multiple",
        id="size-mismatch",
    ),
    pytest.param(
        "quantized_sr",
        lambda s3: (
            put(s3, "test/quantized_sr/input/0002.png", astronaut(16, 20)),
            put(s3, "test/quantized_sr/gt/0002.png", astronaut(32, 40)),
        ),
        ["test/quantized_sr/gt/0002.png"],
        "x2 the input's height and width, but x3 for '0001'",
        id="scale-differs-between-pairs",
    ),
    pytest.param(
        "quantized_sr",
        lambda s3: (
            put(s3, "test/quantized_sr/input/0002.png", astronaut(16, 20)),
            put(s3, "test/quantized_sr/gt/0002.png", astronaut(48, 40)),
        ),
        ["test/quantized_sr/gt/0002.png"],
        "the same for height and width",
        id="height-and-width-scaled-differently",
    ),
    pytest.param(
        "denoising",
        lambda s3: (
            put(s3, "test/denoising/input/0002.npy", np.full((16, 20, 3), 0.5, np.float32)),
            put(s3, "test/denoising/gt/0002.npy", np.full((16, 20, 3), np.nan, np.float32)),
        ),
        ["test/denoising/gt/0002.npy"],
        "NaN",
        id="nan-ground-truth",
    ),
    pytest.param(
        "denoising",
        lambda s3: put(s3, "test/denoising/input/notes.txt", b"the camera was a Sony"),
        ["test/denoising/input/notes.txt"],
        "not a .png or .npy file",
        id="other-file-type",
    ),
    pytest.param(
        "denoising",
        lambda s3: put(s3, "test/denoising/gt/old/0001.png", astronaut(16, 20)),
        ["test/denoising/gt/old/0001.png"],
        "subfolder",
        id="subfolder",
    ),
]


@pytest.mark.parametrize(("track", "stage", "named", "reason"), BAD_STAGING)
def test_each_staging_error_names_its_object(s3, challenge, track, stage, named, reason):
    from mai_ops.errors import NeedsOrganizer
    from mai_ops.models.fidelity import ValidationDataError, load_data_set

    _good_pair(s3, track, scale=3 if track == "quantized_sr" else 1)
    stage(s3)
    for kind in ("test", "validation"):
        if kind == "validation":  # the same staging under validation/ is refused alike
            for entry in list(s3.list_objects_v2(Bucket=ORGANIZERS)["Contents"]):
                body = s3.get_object(Bucket=ORGANIZERS, Key=entry["Key"])["Body"].read()
                new_key = "validation/" + entry["Key"].removeprefix("test/")
                s3.put_object(Bucket=ORGANIZERS, Key=new_key, Body=body)
                s3.delete_object(Bucket=ORGANIZERS, Key=entry["Key"])
        with pytest.raises(ValidationDataError) as err:
            load_data_set(s3, challenge, track, kind)
        assert isinstance(err.value, NeedsOrganizer)
        message = str(err.value)
        for key in named:
            assert f"s3://{ORGANIZERS}/{kind}/{key.removeprefix('test/')}" in message, message
        assert reason in message


def test_a_top_k_ground_truth_is_one_integer_label(s3, challenge):
    from mai_ops.models.fidelity import ValidationDataError, load_data_set

    put(s3, "test/scene_detection/input/c1.png", astronaut(30, 40))
    url = put(s3, "test/scene_detection/gt/c1.png", astronaut(30, 40))
    with pytest.raises(ValidationDataError, match="one integer class label") as err:
        load_data_set(s3, challenge, "scene_detection", "test")
    assert url in str(err.value)
    s3.delete_object(Bucket=ORGANIZERS, Key="test/scene_detection/gt/c1.png")
    url = put(s3, "test/scene_detection/gt/c1.npy", np.array([2.5]))
    with pytest.raises(ValidationDataError, match="one integer class label") as err:
        load_data_set(s3, challenge, "scene_detection", "test")
    assert url in str(err.value)


def test_an_oversized_file_fails_before_it_is_downloaded(s3, challenge, monkeypatch):
    """The cap is read from the listing; lowered here so the test stages kilobytes."""
    from mai_ops.models import fidelity

    _good_pair(s3)
    big = put(s3, "test/denoising/input/0002.npy", np.zeros((64, 64, 3), np.float32))
    put(s3, "test/denoising/gt/0002.png", astronaut(16, 20))
    monkeypatch.setattr(fidelity, "MAX_DATA_FILE_BYTES", 20_000)
    with pytest.raises(fidelity.ValidationDataError, match="over the 20,000-byte limit") as err:
        fidelity.load_data_set(s3, challenge, "denoising", "test")
    assert big in str(err.value)
    assert fidelity.MAX_DATA_FILE_BYTES < fidelity.MAX_DATA_SET_BYTES


# ---------------------------------------------------------------------------------
# The test-data release publishes inputs only
# ---------------------------------------------------------------------------------


def _test_release_event(challenge):
    event = challenge.event("test_data_release")
    return event.model_copy(update={"test_inputs": True})


def _stage_test_sets(s3, challenge) -> dict[str, bytes]:
    """Two pairs per track; returns every ground-truth object's bytes by key."""
    truths: dict[str, bytes] = {}
    for i, track in enumerate(challenge.tracks):
        for j, name in enumerate(("0001", "0002")):
            put(s3, f"test/{track.id}/input/{name}.png", astronaut(8, 8, 10 * i, 10 * j))
            canary = (
                f"GROUND-TRUTH-CANARY {track.id} {name} ".encode()
                + hashlib.sha256(f"{track.id}/{name}".encode()).digest()
            )
            for kind in ("test", "validation"):
                key = f"{kind}/{track.id}/gt/{name}.png"
                s3.put_object(Bucket=ORGANIZERS, Key=key, Body=canary + kind.encode())
                truths[key] = canary + kind.encode()
            put(s3, f"validation/{track.id}/input/{name}.png", astronaut(8, 8))
    return truths


def test_no_ground_truth_ever_reaches_the_public_bucket_or_a_link(s3, challenge):
    from mai_ops.infra.storage import list_objects
    from mai_ops.publishing.release import download_links, publish_release

    truths = _stage_test_sets(s3, challenge)
    s3.put_object(Bucket=ORGANIZERS, Key="data/test_data_release/readme.txt", Body=b"test set")
    manifest = publish_release(s3, challenge, _test_release_event(challenge))
    links = download_links(s3, challenge, manifest)

    public = challenge.buckets.public
    objects = {
        o["Key"]: s3.get_object(Bucket=public, Key=o["Key"])["Body"].read()
        for o in list_objects(s3, public)
    }
    # Every track's inputs are published, byte for byte, and the readme.
    for track in challenge.tracks:
        for name in ("0001", "0002"):
            staged = f"test/{track.id}/input/{name}.png"
            body = s3.get_object(Bucket=ORGANIZERS, Key=staged)["Body"].read()
            assert objects[f"releases/test_data_release/{staged}"] == body
    assert objects["releases/test_data_release/readme.txt"] == b"test set"
    assert len(links) == len(manifest["files"]) == 2 * len(challenge.tracks) + 1
    assert "test/depth/input/0001.png" in {link["name"] for link in links}

    canaries = [body[:40] for body in truths.values()]
    for key, body in objects.items():
        assert "gt" not in [part.lower() for part in key.split("/")], key
        assert body not in truths.values(), key
        assert not any(c in body for c in canaries), key
    for link in links:
        path = urllib.parse.urlparse(link["url"]).path
        assert "gt" not in [part.lower() for part in path.split("/")], link["url"]
        with urllib.request.urlopen(link["url"]) as resp:
            body = resp.read()
        assert body not in truths.values()
        assert not any(c in body for c in canaries)
        assert hashlib.sha256(body).hexdigest() == link["sha256"]


def test_ground_truth_under_data_is_refused_and_nothing_is_published(s3, challenge):
    from mai_ops.infra.storage import list_objects
    from mai_ops.publishing.release import ReleaseError, publish_release

    s3.put_object(Bucket=ORGANIZERS, Key="data/train_data_release/readme.txt", Body=b"ok")
    s3.put_object(Bucket=ORGANIZERS, Key="data/train_data_release/isp/GT/0001.png", Body=b"gt")
    with pytest.raises(ReleaseError) as err:
        publish_release(s3, challenge, challenge.event("train_data_release"))
    assert f"s3://{ORGANIZERS}/data/train_data_release/isp/GT/0001.png" in str(err.value)
    assert list(list_objects(s3, challenge.buckets.public)) == []


def test_test_inputs_of_every_track_must_be_staged_in_pairs(s3, challenge):
    from mai_ops.infra.storage import list_objects
    from mai_ops.publishing.release import ReleaseError, publish_release

    event = _test_release_event(challenge)
    _stage_test_sets(s3, challenge)
    s3.delete_object(Bucket=ORGANIZERS, Key="test/depth/gt/0002.png")
    with pytest.raises(ReleaseError) as err:
        publish_release(s3, challenge, event)
    assert f"s3://{ORGANIZERS}/test/depth/input/0002.png" in str(err.value)
    assert "input without ground truth" in str(err.value)

    for name in ("0001", "0002"):
        s3.delete_object(Bucket=ORGANIZERS, Key=f"test/depth/input/{name}.png")
    s3.delete_object(Bucket=ORGANIZERS, Key="test/depth/gt/0001.png")
    with pytest.raises(ReleaseError, match=f"s3://{ORGANIZERS}/test/depth/: no test data"):
        publish_release(s3, challenge, event)
    assert list(list_objects(s3, challenge.buckets.public)) == []

    # Without the flag, the same event publishes data/<event>/ alone.
    s3.put_object(Bucket=ORGANIZERS, Key="data/test_data_release/readme.txt", Body=b"x")
    manifest = publish_release(s3, challenge, challenge.event("test_data_release"))
    assert [f["key"] for f in manifest["files"]] == ["releases/test_data_release/readme.txt"]


# ---------------------------------------------------------------------------------
# The fidelity block and test_inputs in the challenge file
# ---------------------------------------------------------------------------------

TRACK = {t["id"]: i for i, t in enumerate(yaml.safe_load(MAI2021.read_text())["tracks"])}
EVENT = {e["name"]: i for i, e in enumerate(yaml.safe_load(MAI2021.read_text())["timeline"])}


def _variant(tmp_path: Path, tracks: dict[str, dict] = (), events: dict[str, dict] = ()):
    from mai_ops.challenge.config import read_challenge

    doc = yaml.safe_load(MAI2021.read_text())
    doc["participants"]["path"] = str(MAI2021.parent / doc["participants"]["path"])
    for track_id, fields in dict(tracks).items():
        doc["tracks"][TRACK[track_id]].update(fields)
    for name, fields in dict(events).items():
        doc["timeline"][EVENT[name]].update(fields)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    challenge, problems = read_challenge(path)
    return challenge, [(p.field, p.message) for p in problems if p.severity == "error"]


def test_fidelity_block_defaults_and_good_settings(tmp_path):
    from mai_ops.challenge.config import load_challenge

    track = load_challenge(MAI2021).track("learned_isp")
    assert track.fidelity.model_dump() == {
        "model": "auto",
        "fit": "resize",
        "reproduce_min_psnr": 40.0,
        "unreproduced": "rank",
    }
    assert track.fidelity_model_file(archive_has_model_none=True) == "model_none.tflite"
    assert track.fidelity_model_file(archive_has_model_none=False) == "model.tflite"
    denoising = load_challenge(MAI2021).track("denoising")  # no fidelity_inputs
    assert denoising.fidelity_model_file(archive_has_model_none=True) == "model.tflite"

    challenge, errors = _variant(
        tmp_path,
        tracks={
            "learned_isp": {"fidelity": {"model": "model_none", "unreproduced": "exclude"}},
            "quantized_sr": {"fidelity": {"fit": "tiles", "reproduce_min_psnr": 35}},
            "denoising": {"fidelity": {"model": "model", "fit": "tiles"}},
        },
        events={"test_data_release": {"test_inputs": True}},
    )
    assert errors == []
    assert challenge.track("learned_isp").fidelity_model_file(False) == "model_none.tflite"
    assert challenge.track("quantized_sr").fidelity.fit == "tiles"
    assert challenge.track("quantized_sr").fidelity.reproduce_min_psnr == 35.0
    assert challenge.event("test_data_release").test_inputs
    assert not challenge.event("train_data_release").test_inputs


BAD_CONFIG = [
    pytest.param(
        {"tracks": {"depth": {"fidelity": {"fit": "tiles", "moedl": "model"}}}},
        "tracks[{depth}].fidelity.moedl",
        "unknown field",
        id="unknown-field",
    ),
    pytest.param(
        {"tracks": {"depth": {"fidelity": {"model": "model_none"}}}},
        "tracks[{depth}].fidelity.model",
        "needs the track's fidelity_inputs",
        id="model-none-without-fidelity-inputs",
    ),
    pytest.param(
        {"tracks": {"depth": {"fidelity": {"model": "best"}}}},
        "tracks[{depth}].fidelity.model",
        "'auto', 'model_none' or 'model'",
        id="unknown-model",
    ),
    pytest.param(
        {"tracks": {"depth": {"fidelity": {"fit": "crop"}}}},
        "tracks[{depth}].fidelity.fit",
        "'resize' or 'tiles'",
        id="unknown-fit",
    ),
    pytest.param(
        {"tracks": {"learned_isp": {"fidelity": {"fit": "tiles"}}}},
        "tracks[{learned_isp}].fidelity.fit",
        "fidelity_inputs[0].shape",
        id="tiles-with-auto-picking-a-dynamic-model-none",
    ),
    pytest.param(
        {
            "tracks": {
                "depth": {
                    "inputs": [{"shape": [1, -1, -1, 3], "dtype": "float32"}],
                    "fidelity": {"fit": "tiles"},
                }
            }
        },
        "tracks[{depth}].fidelity.fit",
        "tiles needs a fixed height and width in inputs[0].shape",
        id="tiles-with-a-dynamic-input",
    ),
    pytest.param(
        {"tracks": {"scene_detection": {"fidelity": {"fit": "tiles"}}}},
        "tracks[{scene_detection}].fidelity.fit",
        "top1/top3",
        id="tiles-on-a-classifier",
    ),
    pytest.param(
        {"tracks": {"denoising": {"fidelity": {"reproduce_min_psnr": 0}}}},
        "tracks[{denoising}].fidelity.reproduce_min_psnr",
        "greater than 0",
        id="psnr-threshold-zero",
    ),
    pytest.param(
        {"tracks": {"denoising": {"fidelity": {"reproduce_min_psnr": 120}}}},
        "tracks[{denoising}].fidelity.reproduce_min_psnr",
        "less than or equal to 100",
        id="psnr-threshold-above-the-cap",
    ),
    pytest.param(
        {"tracks": {"denoising": {"fidelity": {"unreproduced": "drop"}}}},
        "tracks[{denoising}].fidelity.unreproduced",
        "'rank' or 'exclude'",
        id="unknown-unreproduced",
    ),
    pytest.param(
        {"events": {"final_deadline": {"test_inputs": True}}},
        "timeline[{final_deadline}].test_inputs",
        "only a release_data event publishes the test inputs",
        id="test-inputs-on-a-deadline",
    ),
]


@pytest.mark.parametrize(("change", "field", "message"), BAD_CONFIG)
def test_fidelity_block_and_test_inputs_errors_name_the_field(tmp_path, change, field, message):
    challenge, errors = _variant(tmp_path, change.get("tracks", {}), change.get("events", {}))
    field = field.format(**TRACK, **EVENT)
    assert [f for f, _ in errors] == [field], errors
    assert message in errors[0][1], errors


# ---------------------------------------------------------------------------------
# fit: tiles
# ---------------------------------------------------------------------------------


def _mix(image: np.ndarray) -> np.ndarray:
    return (image.astype(np.float64) @ MIX.astype(np.float64) + BIAS).astype(np.float32)


@pytest.mark.parametrize(("fixed", "dynamic", "scale"), [("mix", "mix", 1), ("up3", "up3", 3)])
def test_tiles_of_a_fixed_model_equal_the_dynamic_model_on_the_whole_image(
    models, fixed, dynamic, scale
):
    from mai_ops.models.fidelity import evaluate_model

    # 75 x 101 and 50 x 70: neither a multiple of the 32 x 32 tile.
    images = [astronaut(75, 101), astronaut(50, 70, 300, 20)]
    truths = [up(_mix(x), scale) for x in images]
    whole = evaluate_model(models[f"{dynamic}_dynamic"], ["rmse", "psnr"], images, truths)
    tiled = evaluate_model(models[f"{fixed}_fixed"], ["rmse", "psnr"], images, truths, fit="tiles")
    # Pointwise: exactly the expected image, and so exactly each other.
    assert [r["rmse"] for r in tiled.per_sample] == [0.0, 0.0]
    assert tiled.per_sample == whole.per_sample
    # The stitched output, checked against the whole-image run value by value.
    by_ref = evaluate_model(
        models[f"{fixed}_fixed"],
        ["rmse"],
        dict(zip("ab", images, strict=True)),
        dict(zip("ab", truths, strict=True)),
        fit="tiles",
        reference=dict(zip("ab", truths, strict=True)),
    )
    assert by_ref.reproduction == {"a": 100.0, "b": 100.0}


def test_tiles_need_a_fixed_shape_model_and_resize_needs_a_dynamic_one(models):
    from mai_ops.models.fidelity import FidelityError, evaluate_model

    image = astronaut(40, 40)
    with pytest.raises(FidelityError) as err:
        evaluate_model(models["mix_dynamic"], ["rmse"], [image], [_mix(image)], fit="tiles")
    assert err.value.code == "fidelity_input_mismatch"
    assert "fixed" in err.value.message
    with pytest.raises(FidelityError) as err:
        evaluate_model(models["mix_fixed"], ["rmse"], [image], [_mix(image)])
    assert err.value.code == "fidelity_input_mismatch"
    with pytest.raises(ValueError, match="unknown fit"):
        evaluate_model(models["mix_fixed"], ["rmse"], [image], [_mix(image)], fit="crop")


# ---------------------------------------------------------------------------------
# Reproduction: the team's own results against our run of its model
# ---------------------------------------------------------------------------------


def test_reproduction_psnr_of_the_teams_results(models, challenge, tmp_path):
    from mai_ops.models.fidelity import evaluate_model, read_results_dir

    track = challenge.track("denoising")
    names = ["0001", "0002", "0003", "0004"]
    inputs = {n: astronaut(48, 64, 40 * i, 30 * i) for i, n in enumerate(names)}
    results = tmp_path / "results"
    results.mkdir()
    (results / "0001.png").write_bytes(png_bytes(inputs["0001"]))  # exactly the output
    rng = np.random.default_rng(1)
    noisy = np.clip(inputs["0002"] + rng.normal(0, 12, inputs["0002"].shape), 0, 255)
    (results / "0002.png").write_bytes(png_bytes(noisy.astype(np.uint8)))
    np.save(results / "0003.npy", inputs["0003"][:32])  # another size
    (results / "preview.jpg").write_bytes(b"\xff\xd8 a lossy preview, not compared")
    (results / ".DS_Store").write_bytes(b"\0")
    reference = read_results_dir(results)
    assert sorted(reference) == ["0001", "0002", "0003"]

    # The identity model on 8-bit images against 8-bit ground truth (range 255).
    result = evaluate_model(models["identity"], track, inputs, inputs, reference=reference)
    assert result.reproduction["0001"] == 100.0
    assert 20.0 < result.reproduction["0002"] < 40.0
    assert result.reproduction["0003"] == 0.0
    assert "(32, 64, 3)" in result.reproduction_notes["0003"]
    assert "0004" not in result.reproduction and "no result" in result.reproduction_notes["0004"]
    as_json = result.as_json()
    assert as_json["reproduction"] == result.reproduction
    json.dumps(as_json, allow_nan=False)  # plain numbers only

    # Float ground truth in [0, 1]: an 8-bit PNG result is compared in that range.
    floats = {n: (x / 255).astype(np.float32) for n, x in inputs.items()}
    result = evaluate_model(models["identity"], track, floats, floats, reference=reference)
    assert result.data_range == 1.0
    assert result.reproduction["0001"] > 100.0 - 1e-9
    assert 20.0 < result.reproduction["0002"] < 40.0


def test_reading_results_reports_the_teams_bad_files(tmp_path):
    from mai_ops.models.fidelity import FidelityError, read_results_dir

    assert read_results_dir(tmp_path / "missing") == {}
    results = tmp_path / "results"
    results.mkdir()
    (results / "0001.png").write_bytes(png_bytes(astronaut(8, 8)))
    (results / "0002.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(FidelityError) as err:
        read_results_dir(results)
    assert err.value.code == "fidelity_bad_results"
    assert "results/0002.png" in err.value.message and str(tmp_path) not in err.value.message

    (results / "0002.png").unlink()
    np.save(results / "0001.npy", astronaut(8, 8))
    with pytest.raises(FidelityError, match="results/0001.png and results/0001.npy"):
        read_results_dir(results)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.test_test_data OUT_DIR")
    build_models(Path(sys.argv[1]))
