"""``mai-ops metrics`` and what it reads: PNG (8- and 16-bit) and .npy files paired by name.

The images are scikit-image's bundled photographs with known noise. 16-bit colour
PNGs are written by this file's own encoder, which uses every PNG row filter (None,
Sub, Up, Average, Paeth), since Pillow writes colour PNGs in 8 bits only. SSIM is
checked against ``skimage.metrics.structural_similarity`` on several kinds of image,
PSNR against ``peak_signal_noise_ratio``.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mai_ops.cli import main
from mai_ops.models.metric_files import MetricFileError, read_array, read_png
from mai_ops.models.metrics import psnr, rmse, si_rmse, ssim

PROJECT = Path(__file__).resolve().parent.parent
SSIM_ARGS = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}


def photos() -> dict[str, np.ndarray]:
    import skimage.data

    return {
        "astronaut": skimage.data.astronaut(),  # 512x512 RGB
        "camera": skimage.data.camera(),  # 512x512 gray
        "chelsea": skimage.data.chelsea(),  # 300x451 RGB
    }


def noisy(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    info = np.iinfo(image.dtype)
    rng = np.random.default_rng(seed)
    return np.clip(image + rng.normal(0, sigma, image.shape), info.min, info.max).astype(
        image.dtype
    )


def png_bytes(a: np.ndarray) -> bytes:
    """A PNG of uint8/uint16 (H, W) or (H, W, 1..4), rows filtered 0, 1, 2, 3, 4 in turn."""
    h, w = a.shape[:2]
    channels = 1 if a.ndim == 2 else a.shape[2]
    depth = 16 if a.dtype == np.uint16 else 8
    color = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = a.astype(">u2" if depth == 16 else "u1").reshape(h, -1).view(np.uint8).astype(np.int32)
    bpp = channels * depth // 8
    out, prev = [], np.zeros(rows.shape[1], np.int32)
    for i, cur in enumerate(rows):
        kind = i % 5
        left = np.concatenate([np.zeros(bpp, np.int32), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        if kind == 0:
            pred = np.zeros_like(cur)
        elif kind == 1:
            pred = left
        elif kind == 2:
            pred = prev
        elif kind == 3:
            pred = (left + prev) // 2
        else:
            p = left + prev - upleft
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        out.append(bytes([kind]) + ((cur - pred) % 256).astype(np.uint8).tobytes())
        prev = cur

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(out)))
        + chunk(b"IEND", b"")
    )


def save_png(path: Path, a: np.ndarray) -> Path:
    path.write_bytes(png_bytes(a))
    return path


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def folders(tmp_path: Path) -> tuple[Path, Path]:
    pred, target = tmp_path / "pred", tmp_path / "target"
    pred.mkdir()
    target.mkdir()
    return pred, target


# ---------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_8bit_pngs_written_by_pillow_read_back_exactly(tmp_path, mode):
    rgb = photos()["chelsea"]
    image = Image.fromarray(rgb).convert(mode)
    image.save(tmp_path / "x.png")
    got = read_png(tmp_path / "x.png")
    assert got.dtype == np.uint8
    assert np.array_equal(got, np.asarray(image))


def test_palette_and_1bit_pngs_become_rgb_and_0_255(tmp_path):
    rgb = photos()["chelsea"]
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    Image.fromarray(rgb).convert("1").save(tmp_path / "b.png")
    assert read_png(tmp_path / "p.png").shape == rgb.shape
    assert set(np.unique(read_png(tmp_path / "b.png"))) <= {0, 255}


def test_16bit_grayscale_png_written_by_pillow(tmp_path):
    gray16 = photos()["camera"].astype(np.uint16) * 257 + 3
    Image.fromarray(gray16).save(tmp_path / "g.png")
    got = read_png(tmp_path / "g.png")
    assert got.dtype == np.uint16 and np.array_equal(got, gray16)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16bit_pngs_keep_every_bit(tmp_path, channels):
    rng = np.random.default_rng(channels)
    base = photos()["chelsea"][:64, :80].astype(np.uint16) * 256
    image = (base[..., [0, 1, 2, 0][:channels]] + rng.integers(0, 256, (64, 80, channels))).astype(
        np.uint16
    )
    image = image[..., 0] if channels == 1 else image
    got = read_png(save_png(tmp_path / "x.png", image))
    assert got.dtype == np.uint16
    assert np.array_equal(got, image)


def test_8bit_pngs_from_the_test_encoder_match_pillow(tmp_path):
    rgb = photos()["astronaut"][:40, :50]
    got = read_png(save_png(tmp_path / "x.png", rgb))
    assert np.array_equal(got, rgb)


def test_npy_and_txt(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
    (tmp_path / "l.txt").write_text(" 7\n")
    assert read_array(tmp_path / "a.npy").shape == (2, 3)
    assert read_array(tmp_path / "l.txt").tolist() == [7]


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("cut.png", None, "unreadable"),
        ("text.png", b"not an image at all", "unreadable"),
        ("bad.npy", b"\x93NUMPY garbage", "unreadable"),
        ("obj.npy", "pickle", "unreadable"),
        ("two.txt", b"1 2", "one integer label"),
        ("word.txt", b"cat", "not an integer label"),
        ("x.jpg", b"", "unsupported"),
    ],
)
def test_unreadable_files_name_themselves(tmp_path, name, content, words):
    path = tmp_path / name
    if content is None:
        path.write_bytes(png_bytes(photos()["chelsea"])[:2000])
    elif content == "pickle":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        path.write_bytes(content)
    with pytest.raises(MetricFileError) as err:
        read_array(path)
    assert str(path) in str(err.value) and words in str(err.value)


# ---------------------------------------------------------------------------------
# SSIM and PSNR against scikit-image
# ---------------------------------------------------------------------------------


def _ssim_cases():
    p = photos()
    rng = np.random.default_rng(5)
    astronaut, camera, chelsea = p["astronaut"], p["camera"], p["chelsea"]
    chelsea16 = chelsea.astype(np.uint16) * 257
    tiled = np.tile(astronaut, (3, 4, 1))[:1080, :1920]  # a full-HD frame
    blurred = np.round(
        (tiled[:-2, :-2].astype(float) + tiled[1:-1, 1:-1] + tiled[2:, 2:]) / 3
    ).astype(np.uint8)
    small = [(11, 11), (11, 12), (12, 40), (13, 13)]
    cases = {
        "gray": (noisy(camera, 12), camera, 255),
        "rgb": (noisy(astronaut, 8), astronaut, 255),
        "rgba": (
            noisy(np.dstack([chelsea, camera[:300, :451]]), 6),
            np.dstack([chelsea, camera[:300, :451]]),
            255,
        ),
        "16-bit": (noisy(chelsea16, 1500), chelsea16, 65535),
        "float": (noisy(astronaut, 8) / 255.0, astronaut / 255.0, 1.0),
        "float32": (
            (noisy(camera, 8) / 255.0).astype(np.float32),
            (camera / 255.0).astype(np.float32),
            1.0,
        ),
        "full-HD blurred": (noisy(blurred, 4), tiled[1:-1, 1:-1], 255),
        "odd height": (noisy(astronaut[:517, :301], 20), astronaut[:517, :301], 255),
        "two levels": (
            np.kron(rng.integers(0, 2, (40, 40)), np.ones((13, 13))).astype(np.uint8) * 255,
            np.kron(rng.integers(0, 2, (40, 40)), np.ones((13, 13))).astype(np.uint8) * 255,
            255,
        ),
    }
    for h, w in small:
        cases[f"{h}x{w} rgb"] = (noisy(astronaut[:h, :w], 30), astronaut[:h, :w], 255)
        cases[f"{h}x{w} gray"] = (noisy(camera[:h, :w], 30), camera[:h, :w], 255)
    return cases


SSIM_CASES = _ssim_cases()


@pytest.mark.parametrize("kind", list(SSIM_CASES))
def test_ssim_matches_skimage(kind):
    from skimage.metrics import structural_similarity

    pred, target, data_range = SSIM_CASES[kind]
    channel_axis = -1 if pred.ndim == 3 else None
    want = structural_similarity(
        pred, target, data_range=data_range, channel_axis=channel_axis, **SSIM_ARGS
    )
    assert ssim(pred, target, data_range) == pytest.approx(want, abs=1e-4)
    if pred.size < 1 << 18:  # computed in float64 throughout
        assert ssim(pred, target, data_range) == pytest.approx(want, abs=1e-9)


def test_ssim_of_identical_and_of_non_contiguous_images():
    from skimage.metrics import structural_similarity

    pred, target, _ = SSIM_CASES["full-HD blurred"]
    assert ssim(target, target.copy(), 255) == 1.0
    flipped, view = pred[::-1, ::2], target[::-1, ::2]  # strided views, not copies
    want = structural_similarity(flipped, view, data_range=255, channel_axis=-1, **SSIM_ARGS)
    assert ssim(flipped, view, 255) == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("kind", ["gray", "rgb", "16-bit", "float", "full-HD blurred"])
def test_psnr_matches_skimage(kind):
    from skimage.metrics import peak_signal_noise_ratio

    pred, target, data_range = SSIM_CASES[kind]
    want = peak_signal_noise_ratio(target, pred, data_range=data_range)
    assert abs(psnr(pred, target, data_range) - want) <= 1e-6


# ---------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------


def test_json_over_png_and_npy_pairs(tmp_path, capsys):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    pred_dir, target_dir = folders(tmp_path)
    expected = {}
    for name, image in photos().items():
        Image.fromarray(image).save(target_dir / f"{name}.png")
        guess = noisy(image, 10)
        if name == "camera":
            np.save(pred_dir / f"{name}.npy", guess)  # a model's raw output
        else:
            Image.fromarray(guess).save(pred_dir / f"{name}.png")
        expected[name] = (
            peak_signal_noise_ratio(image, guess, data_range=255),
            structural_similarity(
                guess,
                image,
                data_range=255,
                channel_axis=-1 if image.ndim == 3 else None,
                **SSIM_ARGS,
            ),
        )
    argv = ["metrics", "--pred", str(pred_dir), "--target", str(target_dir), "--json"]
    code, out, err = run([*argv, "--metric", "ssim"], capsys)
    assert (code, err) == (0, "")
    body = json.loads(out)
    assert set(body) == {"metric", "mean", "per_image"} and body["metric"] == "ssim"
    assert list(body["per_image"]) == ["astronaut", "camera", "chelsea"]
    for name, value in body["per_image"].items():
        assert value == pytest.approx(expected[name][1], abs=1e-4)
    assert body["mean"] == pytest.approx(np.mean(list(body["per_image"].values())), abs=1e-12)

    code, out, _ = run([*argv, "--metric", "psnr", "--metric", "ssim"], capsys)
    both = json.loads(out)
    assert code == 0 and [b["metric"] for b in both] == ["psnr", "ssim"]
    for name, value in both[0]["per_image"].items():
        assert abs(value - expected[name][0]) <= 1e-6

    code, out, _ = run([*argv[:-1], "--metric", "psnr"], capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["name", "psnr"] and len(lines) == 5
    assert lines[-1].split()[0] == "mean"
    assert float(lines[-1].split()[1]) == pytest.approx(both[0]["mean"], abs=1e-6)


def test_16bit_depth_maps_rmse_and_si_rmse(tmp_path, capsys):
    pred_dir, target_dir = folders(tmp_path)
    depth = (photos()["camera"].astype(np.uint16) * 20 + 500).astype(np.uint16)  # mm
    guess = depth.astype(np.float32) * 1.1 + 3.0
    save_png(target_dir / "d.png", depth)
    np.save(pred_dir / "d.npy", guess[None, :, :, None])  # (1, H, W, 1): a model's output
    argv = ["metrics", "--pred", str(pred_dir), "--target", str(target_dir), "--json"]
    code, out, _ = run([*argv, "--metric", "si-rmse", "--metric", "rmse"], capsys)
    body = json.loads(out)
    assert code == 0 and [b["metric"] for b in body] == ["si_rmse", "rmse"]
    assert body[0]["mean"] == pytest.approx(si_rmse(guess, depth), abs=1e-12)
    assert body[1]["mean"] == pytest.approx(rmse(guess, depth), abs=1e-9)

    code, out, _ = run([*argv, "--metric", "psnr"], capsys)
    want = psnr(guess, depth, 65535)  # a 16-bit target: range 65535
    assert code == 0 and json.loads(out)["mean"] == pytest.approx(want, abs=1e-9)
    code, out, _ = run([*argv, "--metric", "psnr", "--data-range", "10000"], capsys)
    assert json.loads(out)["mean"] == pytest.approx(psnr(guess, depth, 10000), abs=1e-9)


def test_top_k_from_score_vectors_and_labels(tmp_path, capsys):
    pred_dir, target_dir = folders(tmp_path)
    scores = {"a": [0.1, 0.7, 0.2, 0.0], "b": [0.5, 0.1, 0.3, 0.2], "c": [[0.4, 0.3, 0.2, 0.1]]}
    labels = {"a": 1, "b": 3, "c": 2}
    for name, s in scores.items():
        np.save(pred_dir / f"{name}.npy", np.array(s, dtype=np.float32))
    np.save(target_dir / "a.npy", np.array(1))
    (target_dir / "b.txt").write_text("3\n")
    (target_dir / "c.txt").write_text(str(labels["c"]))
    argv = ["metrics", "--pred", str(pred_dir), "--target", str(target_dir), "--json"]
    code, out, _ = run([*argv, "--metric", "top1", "--metric", "top3"], capsys)
    top1, top3 = json.loads(out)
    assert code == 0
    assert top1["per_image"] == {"a": 1.0, "b": 0.0, "c": 0.0}
    assert top3["per_image"] == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert top1["mean"] == pytest.approx(1 / 3) and top3["mean"] == 1.0


def _error(tmp_path, capsys, argv) -> str:
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    assert "Traceback" not in err
    return err


def test_every_error_names_the_file(tmp_path, capsys):
    pred_dir, target_dir = folders(tmp_path)
    chelsea = photos()["chelsea"]
    Image.fromarray(chelsea).save(target_dir / "a.png")
    Image.fromarray(chelsea).save(pred_dir / "a.png")
    argv = ["metrics", "--metric", "ssim", "--pred", str(pred_dir), "--target", str(target_dir)]

    Image.fromarray(chelsea).save(pred_dir / "b.png")  # no target
    err = _error(tmp_path, capsys, argv)
    assert str(pred_dir / "b.png") in err and "no target file" in err
    (pred_dir / "b.png").unlink()

    Image.fromarray(chelsea).save(target_dir / "c.png")  # no prediction
    err = _error(tmp_path, capsys, argv)
    assert str(target_dir / "c.png") in err and "no prediction file" in err
    (target_dir / "c.png").unlink()

    Image.fromarray(chelsea[:200]).save(pred_dir / "a.png")  # size mismatch
    err = _error(tmp_path, capsys, argv)
    assert str(pred_dir / "a.png") in err and str(target_dir / "a.png") in err
    assert "200x451x3 uint8" in err and "300x451x3 uint8" in err

    Image.fromarray(chelsea).convert("RGBA").save(pred_dir / "a.png")  # channels
    assert "300x451x4" in _error(tmp_path, capsys, argv)

    (pred_dir / "a.png").write_bytes(png_bytes(chelsea)[:5000])  # truncated
    err = _error(tmp_path, capsys, argv)
    assert str(pred_dir / "a.png") in err and "unreadable" in err

    (pred_dir / "a.png").unlink()
    np.save(pred_dir / "a.npy", np.full(chelsea.shape, np.nan))  # NaN output
    err = _error(tmp_path, capsys, argv)
    assert str(pred_dir / "a.npy") in err and "NaN" in err

    Image.fromarray(chelsea).save(pred_dir / "a.png")  # a.png next to a.npy
    err = _error(tmp_path, capsys, argv)
    assert "same name" in err and str(pred_dir) in err

    err = _error(tmp_path, capsys, [*argv[:3], "--pred", str(tmp_path / "none"), *argv[5:]])
    assert str(tmp_path / "none") in err and "not a folder" in err


def test_top_k_errors_name_the_file(tmp_path, capsys):
    pred_dir, target_dir = folders(tmp_path)
    np.save(pred_dir / "a.npy", np.zeros((2, 4)))
    (target_dir / "a.txt").write_text("1")
    argv = ["metrics", "--metric", "top1", "--pred", str(pred_dir), "--target", str(target_dir)]
    assert str(pred_dir / "a.npy") in _error(tmp_path, capsys, argv)
    np.save(pred_dir / "a.npy", np.zeros(4))
    (target_dir / "a.txt").write_text("9")
    err = _error(tmp_path, capsys, argv)
    assert str(pred_dir / "a.npy") in err and "label 9 is outside 0..3" in err


def test_usage_errors_exit_2(tmp_path, capsys):
    pred_dir, target_dir = folders(tmp_path)
    argv = ["metrics", "--pred", str(pred_dir), "--target", str(target_dir)]
    assert "unknown metric 'psnrr'" in _error(tmp_path, capsys, [*argv, "--metric", "psnrr"])
    assert "no prediction files" in _error(tmp_path, capsys, [*argv, "--metric", "psnr"])
    err = _error(tmp_path, capsys, [*argv, "--metric", "psnr", "--data-range", "0"])
    assert "data range" in err
    err = _error(tmp_path, capsys, [*argv, "--metric", "psnr", "--metric", "top1"])
    assert "separately" in err


def test_the_installed_command_prints_no_traceback(tmp_path):
    pred_dir, target_dir = folders(tmp_path)
    (pred_dir / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    Image.fromarray(photos()["camera"]).save(target_dir / "a.png")
    out = subprocess.run(
        [sys.executable, "-m", "mai_ops.cli", "metrics", "--metric", "psnr"]
        + ["--pred", str(pred_dir), "--target", str(target_dir)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"mai-ops metrics: error: {pred_dir / 'a.png'}: unreadable")
