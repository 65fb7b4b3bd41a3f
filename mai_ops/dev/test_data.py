"""Synthetic hidden test data for a track: what the tests and the benches stage.

The pairs meet the track's tensor specs (input shape and dtype, a ground truth of the
output's shape, or one class label for a classification track), so any model that
passes the checks also runs on them. Values are seeded noise: they exercise the
pipeline, they say nothing about a model's quality.
"""

from __future__ import annotations

import io
from typing import Any

from mai_ops.challenge.config import Challenge, Track
from mai_ops.infra.layout import data_set_keys


def synthetic_pairs(track: Track, count: int = 2, seed: int = 0) -> dict[str, tuple[Any, Any]]:
    """``count`` (input, ground truth) pairs by name (``0001``, ...) for ``track``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    (spec,) = track.inputs
    (out,) = track.outputs
    pairs = {}
    for i in range(count):
        shape = tuple(spec.shape[1:])
        if spec.dtype in ("uint8", "int8"):
            info = np.iinfo(spec.dtype)
            x = rng.integers(info.min, info.max, shape, dtype=spec.dtype, endpoint=True)
        else:
            x = rng.random(shape, dtype=np.float32)
        if len(out.shape) == 2:  # classification: one label
            y = np.array(rng.integers(0, out.shape[1]), dtype=np.int64)
        elif {"si_rmse", "rmse"} & set(track.metrics):  # depth in mm, 0.5 to 10 m
            y = rng.uniform(500, 10000, tuple(out.shape[1:])).astype(np.float32)
        elif out.dtype in ("uint8", "int8"):
            y = rng.integers(0, 256, tuple(out.shape[1:]), dtype=np.uint8)
        else:
            y = rng.random(tuple(out.shape[1:]), dtype=np.float32)
        pairs[f"{i + 1:04d}"] = (x, y)
    return pairs


def stage_pairs(s3: Any, bucket: str, track_id: str, pairs: dict, kind: str = "test") -> None:
    """Write ``pairs`` as ``.npy`` files where organizers stage ``kind`` data in ``bucket``."""
    import numpy as np

    input_prefix, gt_prefix = data_set_keys(kind, track_id)
    for name, (x, y) in pairs.items():
        for prefix, array in ((input_prefix, x), (gt_prefix, y)):
            buf = io.BytesIO()
            np.save(buf, np.asarray(array), allow_pickle=False)
            s3.put_object(Bucket=bucket, Key=f"{prefix}{name}.npy", Body=buf.getvalue())


def stage_synthetic_test_data(
    s3: Any, challenge: Challenge, track_ids: list[str], count: int = 1
) -> None:
    """Synthetic hidden test pairs for the given tracks of ``challenge``."""
    for n, track_id in enumerate(track_ids):
        track = challenge.track(track_id)
        pairs = synthetic_pairs(track, count, seed=n)
        stage_pairs(s3, challenge.buckets.organizers, track.id, pairs)
