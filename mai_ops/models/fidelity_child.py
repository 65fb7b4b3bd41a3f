"""The child of :func:`mai_ops.models.fidelity.evaluate_model`: run a TFLite model on samples.

``python -m mai_ops.models.fidelity_child`` reads one JSON request on stdin::

    {"model": "/path/model.tflite", "memory_mb": 4096, "threads": 1,
     "out_dir": "/tmp/...", "samples": [{"name": "0001", "inputs": ["/tmp/.../0001.npy"]}]}

caps its own address space (:func:`mai_ops.infra.child.serve`) before it imports
numpy or LiteRT, opens the model with LiteRT's ``Interpreter`` and, for each
sample in order, loads its input ``.npy`` files (``allow_pickle=False``), fits them to
the model's inputs, runs ``invoke()`` once and saves the model's first output, raw (as
the model's own dtype), to ``out_dir/<index>.npy``.

Fitting a sample to an input tensor:

- a missing leading batch dimension is added (``(H, W, C)`` -> ``(1, H, W, C)``);
- a shape that differs from the tensor's is set with ``resize_tensor_input(strict=True)``,
  so only the model's dynamic (-1) dimensions may change: a fixed-shape model given
  another resolution is an ``input_mismatch``, not a silently different network;
- float data into a quantized (int8/uint8) input is quantized with the input's scale
  and zero point (round to nearest, clipped to the dtype); integer data into an integer
  input is passed as is when it fits the dtype; anything into a float input is cast.

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
            if resized:
                try:
                    interpreter.allocate_tensors()
                except (ValueError, RuntimeError) as exc:
                    raise ChildFailure(
                        "fidelity_allocate_failed",
                        f"allocate_tensors() failed at input shape(s) "
                        f"{[list(a.shape) for a in arrays]}: {exc}",
                    ) from None
                inputs = interpreter.get_input_details()
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


def _fit(array, detail: dict[str, Any], k: int):
    """One sample array as input ``k`` of the model wants it (see the module docstring)."""
    import numpy as np

    shape = [int(x) for x in detail["shape"]]
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
