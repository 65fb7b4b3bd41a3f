"""Poisoned final submissions for the fault drills, built with the model factory's builders.

Run as ``python -m tests.poisoned_models OUT_DIR HEIGHT WIDTH``: it writes three TFLite
models with a ``1xHxWx3`` float input and output (a track's shape, so they reach the
forward pass of the checks) into ``OUT_DIR``:

- ``crash.tflite``: LiteRT overflows its native stack while preparing it (SIGSEGV);
- ``hang.tflite``: a loop of two billion steps, a model that never returns;
- ``huge.tflite``: an intermediate tensor of 1x(512H)x(512W)x3 floats, far beyond any
  worker's memory (12 GB for 64x64).
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.model_factory import recursing_model, spinning_model, upsampled_model


def build(out: Path, height: int, width: int) -> None:
    shape = (1, height, width, 3)
    out.mkdir(parents=True, exist_ok=True)
    (out / "crash.tflite").write_bytes(recursing_model(shape))
    (out / "hang.tflite").write_bytes(spinning_model(shape))
    (out / "huge.tflite").write_bytes(upsampled_model(shape, 512, back_to_input=True))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python -m tests.poisoned_models OUT_DIR HEIGHT WIDTH")
    build(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
    print("built")
