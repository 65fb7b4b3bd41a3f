"""The demo's data: real photographs and rendered depth scenes, per MAI 2021 track.

Every set is built from the photographs shipped with scikit-image (astronaut, coffee,
chelsea, rocket, motorcycle, ...), cut to the track's aspect ratio and resized to its
input or output size with :mod:`skimage.transform`, and from depth scenes rendered
here (a floor, a back wall and spheres seen by a pinhole camera). The values follow
:mod:`mai_ops.models.fidelity`'s conventions: an 8-bit PNG reaches a float model as
stored (0..255), a uint8 model takes the PNG's bytes as they are, ground truth keeps
the dtype its metric is computed in.

- ``quantized_sr`` (x3): the truth is a photograph at 1080x1920 (8-bit PNG), the input
  the same shrunk to 360x640 with anti-aliasing.
- ``denoising``: the truth is a photograph at 1080x1920, the input the same plus
  Gaussian noise (sigma 25 grey levels, seeded), both 8-bit PNG.
- ``depth``: a rendered scene; the truth is its depth in mm (16-bit PNG, about 1 to
  8 m), the input an RGB image whose red channel is the depth,
  ``R = round((depth - 500) * 255 / 9500)``, green the scene's shading and blue a
  photograph's texture: a model can read the depth back from red alone
  (:data:`DEPTH_MM_PER_LEVEL`).
- ``scene_detection`` (30 classes): a photograph at 384x576, darkened, with a bright
  sun drawn into one cell of a 6x6 grid; the label (``.npy``) is that cell's index,
  row by row, among the first 30 cells (:data:`SCENE_GRID`).
- ``learned_isp``: the truth is a photograph at 1088x1920, the input its RGGB Bayer
  mosaic as four 544x960 planes (8-bit RGBA PNG).
- ``video_sr`` (x4, 10 frames): a pan across a photograph, 10 frames of 720x1280
  stacked on the channels (``.npy``, 720x1280x30), and the same frames shrunk to
  180x320.

:func:`build_data` returns every set by kind (``train``, ``validation``, ``test``) and
track; :func:`write_data` writes them as the organizers stage them
(``<kind>/<track>/input|gt/<name>``, :func:`mai_ops.infra.layout.data_set_keys`), and the
training pairs under ``data/train_data_release/`` (folders ``input`` and ``target``:
nothing named ``gt`` is ever released). numpy, Pillow and scikit-image are imported
inside the functions.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

# Depth: the red channel's grey levels span 500 mm to 10 m.
DEPTH_NEAR_MM = 500.0
DEPTH_FAR_MM = 10000.0
DEPTH_MM_PER_LEVEL = (DEPTH_FAR_MM - DEPTH_NEAR_MM) / 255.0
# Scene detection: the image is cut into a grid of cells; the label is the sun's cell.
SCENE_GRID = (6, 6)
SCENE_CLASSES = 30
SCENE_DIM = 0.7  # the photograph is darkened so the sun's cell is the brightest
DENOISE_SIGMA = 25.0
TRAIN_RELEASE = "train_data_release"

# Which photograph (or scene seed) each set is made of, per track and kind.
PLAN: dict[str, dict[str, list]] = {
    "quantized_sr": {
        "train": ["chelsea"],
        "validation": ["coffee"],
        "test": ["astronaut", "rocket"],
    },
    "denoising": {
        "train": ["rocket"],
        "validation": ["astronaut"],
        "test": ["chelsea", "coffee"],
    },
    "depth": {"train": [4], "validation": [3], "test": [1, 2]},
    # (photograph, the sun's cell = the label)
    "scene_detection": {
        "train": [("motorcycle", 5)],
        "validation": [("chelsea", 3), ("motorcycle", 17)],
        "test": [("astronaut", 8), ("coffee", 14), ("rocket", 27)],
    },
    # Test sets only: every track has its hidden test set, so the test data release
    # can publish every track's inputs; no demo team works on these two.
    "learned_isp": {"test": ["motorcycle", "chelsea"]},
    "video_sr": {"test": ["astronaut", "coffee"]},
}


def photo(name: str):
    """A photograph shipped with scikit-image, as uint8 RGB."""
    from skimage import data

    if name == "motorcycle":
        return data.stereo_motorcycle()[0]
    return getattr(data, name)()[..., :3]


def fit(image, height: int, width: int):
    """``image`` cut to the aspect ratio of ``height`` x ``width`` (centred), resized to it."""
    import numpy as np
    from skimage.transform import resize

    h, w = image.shape[:2]
    if h * width > w * height:  # too tall: keep the full width
        keep = round(w * height / width)
        image = image[(h - keep) // 2 : (h - keep) // 2 + keep]
    else:
        keep = round(h * width / height)
        image = image[:, (w - keep) // 2 : (w - keep) // 2 + keep]
    out = resize(image, (height, width), order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def shrink(image, factor: int):
    """``image`` made ``factor`` times smaller, anti-aliased, as uint8."""
    import numpy as np
    from skimage.transform import resize

    h, w = image.shape[:2]
    out = resize(
        image, (h // factor, w // factor), order=1, anti_aliasing=True, preserve_range=True
    )
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def sr_pair(name: str, hr: tuple[int, int], scale: int):
    truth = fit(photo(name), *hr)
    return shrink(truth, scale), truth


def denoising_pair(name: str, size: tuple[int, int], seed: int):
    import numpy as np

    clean = fit(photo(name), *size)
    rng = np.random.default_rng(seed)
    noisy = clean.astype(np.float64) + rng.normal(0.0, DENOISE_SIGMA, clean.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8), clean


def depth_scene(seed: int, height: int = 480, width: int = 640):
    """(RGB uint8, depth uint16 in mm) of a rendered scene: floor, back wall, spheres.

    A pinhole camera (focal length 400 px) 1 m above the floor looks along the floor
    at a wall 6 to 8 m away; three spheres stand on the floor. Red is the depth
    (:data:`DEPTH_MM_PER_LEVEL` per grey level from 500 mm), green the Lambertian
    shading with a checkerboard on the floor, blue a photograph's texture.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    f, cy, cx = 400.0, height / 2, width / 2
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    d = np.stack([(u + 0.5 - cx) / f, (v + 0.5 - cy) / f, np.ones_like(u)], axis=-1)
    floor_y, wall_z = 1.0, rng.uniform(6.0, 8.0)
    depth = np.full((height, width), wall_z)
    normal = np.zeros((height, width, 3))
    normal[..., 2] = -1.0
    kind = np.zeros((height, width), np.int8)  # 0 wall, 1 floor, 2.. spheres
    with np.errstate(divide="ignore"):
        t_floor = np.where(d[..., 1] > 0, floor_y / d[..., 1], np.inf)
    hit = t_floor < depth
    depth[hit], kind[hit] = t_floor[hit], 1
    normal[hit] = (0.0, -1.0, 0.0)
    for k in range(3):
        r = rng.uniform(0.35, 0.7)
        c = np.array([rng.uniform(-1.6, 1.6), floor_y - r, rng.uniform(2.0, 5.0)])
        b = d @ c
        disc = b * b - (d * d).sum(-1) * (c @ c - r * r)
        with np.errstate(invalid="ignore"):
            t = (b - np.sqrt(disc)) / (d * d).sum(-1)
        hit = (disc > 0) & (t > 0) & (t < depth)
        depth[hit], kind[hit] = t[hit], 2 + k
        normal[hit] = (t[hit, None] * d[hit] - c) / r
    depth_mm = np.clip(depth * 1000.0, DEPTH_NEAR_MM, DEPTH_FAR_MM)
    light = np.array([-0.4, -0.8, -0.45])
    light /= np.linalg.norm(light)
    shade = 0.25 + 0.75 * np.clip(normal @ -light, 0, None)
    point = d * depth[..., None]
    checker = ((np.floor(point[..., 0] * 2) + np.floor(point[..., 2] * 2)) % 2) * 0.35 + 0.65
    albedo = np.where(kind == 1, checker, np.where(kind == 0, 0.8, 0.55 + 0.15 * kind))
    texture = fit(photo("rocket" if seed % 2 else "coffee"), height, width).mean(axis=-1)
    red = np.round((depth_mm - DEPTH_NEAR_MM) / DEPTH_MM_PER_LEVEL)
    green = np.round(235 * shade * albedo)
    blue = np.round(texture * (0.4 + 0.6 * shade))
    rgb = np.clip(np.stack([red, green, blue], axis=-1), 0, 255).astype(np.uint8)
    return rgb, np.round(depth_mm).astype(np.uint16)


def scene_image(name: str, label: int, height: int = 384, width: int = 576):
    """A darkened photograph with a bright sun in cell ``label`` of the grid."""
    import numpy as np

    rows, cols = SCENE_GRID
    ch, cw = height // rows, width // cols
    image = fit(photo(name), height, width).astype(np.float64) * SCENE_DIM
    r, c = divmod(label, cols)
    yy, xx = np.mgrid[0:ch, 0:cw].astype(np.float64)
    radius = np.hypot(yy + 0.5 - ch / 2, (xx + 0.5 - cw / 2) * ch / cw) / (ch / 2)
    glow = 255.0 * np.clip(1.35 - 0.5 * radius, 0.0, 1.0)
    cell = image[r * ch : (r + 1) * ch, c * cw : (c + 1) * cw]
    cell[:] = np.maximum(cell, glow[..., None] * np.array([1.0, 0.95, 0.8]))
    return np.clip(np.round(image), 0, 255).astype(np.uint8), np.array(label, dtype=np.int64)


def cell_means(image):
    """The mean grey level of each grid cell, row by row (what the scene models see)."""
    rows, cols = SCENE_GRID
    h, w = image.shape[0] // rows, image.shape[1] // cols
    grey = image.astype("float64").mean(axis=-1)
    return grey[: rows * h, : cols * w].reshape(rows, h, cols, w).mean(axis=(1, 3)).reshape(-1)


def isp_pair(name: str, size: tuple[int, int] = (1088, 1920)):
    import numpy as np

    rgb = fit(photo(name), *size)
    raw = np.stack(
        [rgb[0::2, 0::2, 0], rgb[0::2, 1::2, 1], rgb[1::2, 0::2, 1], rgb[1::2, 1::2, 2]], axis=-1
    )
    return raw, rgb


def video_pair(name: str, frames: int = 10, size: tuple[int, int] = (720, 1280), scale: int = 4):
    """10 frames of a pan across ``name``, stacked on the channels, and each shrunk x4."""
    import numpy as np

    h, w = size
    step = 4
    wide = fit(photo(name), h + step * frames, w + step * frames)
    hr = [wide[k * step : k * step + h, k * step : k * step + w] for k in range(frames)]
    lr = [shrink(frame, scale) for frame in hr]
    return np.concatenate(lr, axis=-1), np.concatenate(hr, axis=-1)


def _pair(track_id: str, item: Any, seed: int):
    if track_id == "quantized_sr":
        return sr_pair(item, (1080, 1920), 3)
    if track_id == "denoising":
        return denoising_pair(item, (1080, 1920), seed)
    if track_id == "depth":
        return depth_scene(item)
    if track_id == "scene_detection":
        return scene_image(*item)
    if track_id == "learned_isp":
        return isp_pair(item)
    if track_id == "video_sr":
        return video_pair(item)
    raise KeyError(track_id)


def build_data(track_ids: list[str] | None = None) -> dict[str, dict[str, dict[str, tuple]]]:
    """kind -> track -> name -> (input, ground truth), for the tracks of :data:`PLAN`."""
    out: dict[str, dict[str, dict[str, tuple]]] = {}
    for track_id, kinds in PLAN.items():
        if track_ids is not None and track_id not in track_ids:
            continue
        for kind, items in kinds.items():
            pairs = out.setdefault(kind, {}).setdefault(track_id, {})
            for i, item in enumerate(items):
                seed = 1000 * list(PLAN).index(track_id) + 100 * len(kind) + i
                pairs[f"{kind[:3]}{i + 1:02d}"] = _pair(track_id, item, seed)
    return out


def file_bytes(array) -> tuple[str, bytes]:
    """(suffix, bytes): an image as PNG (8-bit 1/3/4 channels, 16-bit one channel), else .npy."""
    import numpy as np
    from PIL import Image

    channels = 1 if array.ndim < 3 else array.shape[-1]
    png = array.ndim in (2, 3) and (
        (array.dtype == np.uint8 and channels in (1, 3, 4))
        or (array.dtype == np.uint16 and channels == 1)
    )
    buf = io.BytesIO()
    if png:
        plane = array if array.ndim == 2 else (array[..., 0] if channels == 1 else array)
        Image.fromarray(plane).save(buf, format="PNG", compress_level=1)
        return ".png", buf.getvalue()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return ".npy", buf.getvalue()


def data_files(sets: dict[str, dict[str, dict[str, tuple]]]) -> dict[str, bytes]:
    """Object key -> bytes of every staged file: hidden sets and the training release."""
    from mai_ops.infra.layout import data_prefix, data_set_keys

    files: dict[str, bytes] = {}
    for kind, tracks in sets.items():
        for track_id, pairs in tracks.items():
            if kind == "train":
                base = f"{data_prefix(TRAIN_RELEASE)}{track_id}/train/"
                prefixes = (f"{base}input/", f"{base}target/")
            else:
                prefixes = data_set_keys(kind, track_id)
            for name, (x, y) in pairs.items():
                for prefix, array in zip(prefixes, (x, y), strict=True):
                    suffix, body = file_bytes(array)
                    files[f"{prefix}{name}{suffix}"] = body
    return files


def write_data(sets: dict, folder: Path) -> list[Path]:
    """Every file of :func:`data_files` under ``folder``, at its object key."""
    written = []
    for key, body in data_files(sets).items():
        path = Path(folder, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        written.append(path)
    return written
