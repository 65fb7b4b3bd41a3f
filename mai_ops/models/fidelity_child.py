"""The child of :func:`mai_ops.models.fidelity.evaluate_model`: run a TFLite model on samples.

``python -m mai_ops.models.fidelity_child`` reads one JSON request on stdin::

    {"model": "/path/model.tflite", "memory_mb": 4096, "threads": 1, "fit": "resize",
     "out_dir": "/tmp/...", "samples": [{"name": "0001", "inputs": ["/tmp/.../0001.npy"]}]}

caps its own address space (:func:`mai_ops.infra.child.serve`) before it imports
numpy or LiteRT, opens the model with LiteRT's ``Interpreter`` and, for each
sample in order, loads its input ``.npy`` files (``allow_pickle=False``), fits them to
the model's inputs, runs ``invoke()`` once and saves the model's first output, raw (as
the model's own dtype), to ``out_dir/<index>.npy``.

Fitting a sample to an input tensor:

- a missing leading batch dimension is added (``(H, W, C)`` -> ``(1, H, W, C)``), and
  a missing channel dimension for a one-channel input (``(H, W)`` -> ``(1, H, W, 1)``);
- a shape that differs from the tensor's is set with ``resize_tensor_input(strict=True)``,
  so only the model's dynamic (-1) dimensions may change: a fixed-shape model given
  another resolution is an ``input_mismatch``, not a silently different network;
- float data into a quantized (int8/uint8) input is quantized with the input's scale
  and zero point (round to nearest, clipped to the dtype); integer data into an integer
  input is passed as is when it fits the dtype; anything into a float input is cast
  (so a PNG's integer values reach a float model as they are stored, 0..255 or 0..65535).

``fit`` (the track's ``fidelity.fit``) says how a sample meets the model's shape:

- ``resize`` (default): as above, the dynamic dimensions take the sample's.
- ``tiles``: the model keeps its fixed input shape ``(1, th, tw, C)``; the sample
  ``(1, H, W, C)`` is cut into non-overlapping ``th x tw`` tiles, row by row, the last
  row and column padded by repeating the image's edge pixels when ``H`` or ``W`` is
  not a multiple; each tile runs once, and the output tiles ``(1, oh, ow, C')`` (the
  model's output shape; ``oh``/``ow`` whole multiples of ``th``/``tw``, e.g. x3 for a
  super-resolution model) are stitched in the same order and cropped to
  ``(1, H * oh / th, W * ow / tw, C')``. Single-input models only.

Answers are steps of :mod:`mai_ops.infra.child`'s protocol, each written as soon as
it is known: ``loaded`` (input and output details with quantization), one ``sample``
per sample run, then ``done``, or ``error`` with a registered ``code`` of the fidelity
stage (``fidelity_load_failed``, ``fidelity_input_mismatch``, ...) and the ``sample`` it
happened on. The child stops at the first error, including the first output with NaN or
Inf. Running out of memory is the runner's ``memory_exceeded``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mai_ops.infra.child import ChildChannel, ChildFailure, serve
from mai_ops.models.checks_child import tensor_detail


def main() -> int:
    return serve(_run)


def _run(request: dict[str, Any], channel: ChildChannel) -> None:
    """Open the model and run every sample, reporting each one."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    try:
        model = str(request["model"])
        out_dir = Path(request["out_dir"])
        samples = list(request["samples"])
        threads = int(request.get("threads", 1))
        fit = str(request.get("fit", "resize"))
        if fit not in ("resize", "tiles"):
            raise ValueError(f"unknown fit {fit!r}")
    except (KeyError, TypeError, ValueError) as exc:
        raise ChildFailure("fidelity_bad_request", f"malformed request: {exc}") from None

    try:
        interpreter = Interpreter(model_path=model, num_threads=threads)
    except (ValueError, RuntimeError) as exc:
        raise ChildFailure("fidelity_load_failed", f"LiteRT cannot open the model: {exc}") from None
    try:
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ChildFailure(
            "fidelity_allocate_failed", f"allocate_tensors() failed: {exc}"
        ) from None
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    if not outputs:
        raise ChildFailure("fidelity_load_failed", "the model has no outputs")
    channel.send("loaded", inputs=[_io(d) for d in inputs], outputs=[_io(d) for d in outputs])

    for i, entry in enumerate(samples):
        name = str(entry.get("name", i))
        try:
            paths = list(entry["inputs"])
            if len(paths) != len(inputs):
                raise ChildFailure(
                    "fidelity_input_mismatch",
                    f"the model has {len(inputs)} inputs, the sample gives {len(paths)}",
                )
            arrays = [
                _fit(np.load(p, allow_pickle=False), d, k)
                for k, (p, d) in enumerate(zip(paths, inputs, strict=True))
            ]
            if fit == "tiles":
                value = _tiled(interpreter, arrays, inputs, name)
            else:
                inputs = _resize(interpreter, arrays, inputs)
                value = _invoke(interpreter, arrays, inputs, name)
            path = out_dir / f"{i:06d}.npy"
            np.save(path, value, allow_pickle=False)
            channel.send(
                "sample",
                i=i,
                name=name,
                output=str(path),
                shape=list(value.shape),
                dtype=value.dtype.name,
            )
        except ChildFailure as failure:
            failure.data["sample"] = name  # the parent names it in the team's email
            raise


def _resize(interpreter, arrays: list, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set the inputs' dynamic dimensions to the arrays' shapes; the new input details."""
    resized = False
    for array, detail in zip(arrays, inputs, strict=True):
        current = [int(x) for x in detail["shape"]]
        if list(array.shape) != current:
            try:
                interpreter.resize_tensor_input(detail["index"], array.shape, strict=True)
            except (ValueError, RuntimeError) as exc:
                raise ChildFailure(
                    "fidelity_input_mismatch",
                    f"the model input {detail['name']!r} has shape {current} "
                    f"(signature {[int(x) for x in detail['shape_signature']]}), the "
                    f"sample has {list(array.shape)}: {exc}",
                ) from None
            resized = True
    if not resized:
        return inputs
    try:
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ChildFailure(
            "fidelity_allocate_failed",
            f"allocate_tensors() failed at input shape(s) {[list(a.shape) for a in arrays]}: {exc}",
        ) from None
    return interpreter.get_input_details()


def _invoke(interpreter, arrays: list, inputs: list[dict[str, Any]], name: str):
    """Run the model once on ``arrays``; its first output, checked to be finite."""
    import numpy as np

    try:
        for array, detail in zip(arrays, inputs, strict=True):
            interpreter.set_tensor(detail["index"], array)
        interpreter.invoke()
    except (ValueError, RuntimeError) as exc:
        raise ChildFailure("fidelity_invoke_failed", f"invoke() failed: {exc}") from None
    value = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    nan = inf = 0
    if value.dtype.kind in "fc":
        nan = int(np.isnan(value).sum())
        inf = int(np.isinf(value).sum())
    if nan or inf:
        raise ChildFailure(
            "fidelity_non_finite_output",
            f"the model's output has {nan} NaN and {inf} infinite values "
            f"(of {value.size}) on sample {name!r}",
        )
    return value


def _tiled(interpreter, arrays: list, inputs: list[dict[str, Any]], name: str):
    """The model's output on the whole sample, run tile by tile (module docstring)."""
    import numpy as np

    if len(arrays) != 1:
        raise ChildFailure(
            "fidelity_input_mismatch",
            f"fit: tiles runs one-input models; this one has {len(arrays)}",
        )
    array, detail = arrays[0], inputs[0]
    shape = [int(x) for x in detail["shape"]]
    signature = [int(x) for x in detail.get("shape_signature", shape)]
    if len(shape) != 4 or min(signature[1:3]) <= 0 or shape[0] != 1:
        raise ChildFailure(
            "fidelity_input_mismatch",
            f"fit: tiles needs a model with a fixed (1, height, width, channels) input; "
            f"{detail['name']!r} has shape {shape} (signature {signature})",
        )
    if array.shape[0] != 1 or array.shape[3] != shape[3]:
        raise ChildFailure(
            "fidelity_input_mismatch",
            f"the model input {detail['name']!r} has shape {shape}, the sample has "
            f"{list(array.shape)}: tiles need one image with the same channels",
        )
    out_shape = [int(x) for x in interpreter.get_output_details()[0]["shape"]]
    _, th, tw, _ = shape
    _, h, w, _ = array.shape
    if len(out_shape) != 4 or out_shape[1] % th or out_shape[2] % tw:
        raise ChildFailure(
            "fidelity_output_mismatch",
            f"fit: tiles needs an output (1, height, width, channels) whose height and width "
            f"are whole multiples of the input tile's {th}x{tw}; the output is {out_shape}",
        )
    oh, ow = out_shape[1], out_shape[2]
    rows, cols = -(-h // th), -(-w // tw)
    padded = np.pad(array, ((0, 0), (0, rows * th - h), (0, cols * tw - w), (0, 0)), mode="edge")
    canvas = None
    for r in range(rows):
        for c in range(cols):
            tile = np.ascontiguousarray(padded[:, r * th : (r + 1) * th, c * tw : (c + 1) * tw])
            out = _invoke(interpreter, [tile], inputs, name)
            if canvas is None:
                canvas = np.empty((1, rows * oh, cols * ow, out.shape[-1]), out.dtype)
            canvas[:, r * oh : (r + 1) * oh, c * ow : (c + 1) * ow] = out.reshape(1, oh, ow, -1)
    return canvas[:, : h * (oh // th), : w * (ow // tw)]


def _fit(array, detail: dict[str, Any], k: int):
    """One sample array as input ``k`` of the model wants it (see the module docstring)."""
    import numpy as np

    shape = [int(x) for x in detail["shape"]]
    if array.ndim == len(shape) - 2 and len(shape) == 4 and shape[-1] == 1:
        array = array[..., None]  # a one-channel image (a grayscale PNG) as (H, W)
    if array.ndim == len(shape) - 1:
        array = array[None, ...]
    if array.ndim != len(shape):
        raise ChildFailure(
            "fidelity_input_mismatch",
            f"input {k} ({detail['name']!r}) has shape {shape}, the sample has "
            f"shape {list(array.shape)}",
        )
    want = np.dtype(detail["dtype"])
    if array.dtype.kind not in "biuf":
        raise ChildFailure(
            "fidelity_input_mismatch", f"input {k}: sample dtype {array.dtype} is not numeric"
        )
    if want.kind == "f":
        return array.astype(want, copy=False)
    if want.kind in "iu":
        info = np.iinfo(want)
        scale, zero = _quant(detail)
        if array.dtype.kind == "f":
            if not scale:
                raise ChildFailure(
                    "fidelity_input_mismatch",
                    f"input {k} is {want.name} without quantization parameters; "
                    f"give {want.name} data, not {array.dtype}",
                )
            q = np.round(array.astype(np.float64) / scale + zero)
            return np.clip(q, info.min, info.max).astype(want)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ChildFailure(
                "fidelity_input_mismatch",
                f"input {k} is {want.name}; the sample's values "
                f"{array.min()}..{array.max()} do not fit",
            )
        return array.astype(want)
    return array.astype(want)


def _quant(detail: dict[str, Any]) -> tuple[float, int]:
    params = detail.get("quantization_parameters") or {}
    scales = list(params.get("scales", []))
    zeros = list(params.get("zero_points", []))
    if len(scales) == 1:
        return float(scales[0]), int(zeros[0]) if zeros else 0
    scale, zero = detail.get("quantization", (0.0, 0))
    return float(scale), int(zero)


def _io(detail: dict[str, Any]) -> dict[str, Any]:
    scale, zero = _quant(detail)
    return {**tensor_detail(detail), "scale": scale, "zero_point": zero}


if __name__ == "__main__":
    sys.exit(main())
