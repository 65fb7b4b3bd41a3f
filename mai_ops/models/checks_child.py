"""The child of :func:`mai_ops.models.checks.check_model`: open, inspect and run a TFLite model.

A submitted model is untrusted bytes: a crafted flatbuffer can crash the interpreter,
a huge intermediate tensor can eat the machine's memory, a WHILE loop can spin for
hours. So the parts that touch the model run here, in ``python -m
mai_ops.models.checks_child`` started by :func:`mai_ops.infra.child.run_child` (limits,
timeout, the JSON request and step protocol are described there).

Steps, in order: ``open`` (the interpreter verifies the flatbuffer and lists the
inputs and outputs), ``graph`` (every op and the tensor types, read from the
flatbuffer with LiteRT's generated schema), ``analyzer`` (GPU only), ``allocate``,
``resize`` (when the inputs are set to another shape), ``run`` (seeded input, one
``invoke``, NaN/Inf counts per output), then ``done``. A model the interpreter cannot
open, or whose tensors cannot be allocated, ends the run early (then ``done``).

LiteRT and numpy are imported inside the functions, after the child has limited itself.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from mai_ops.infra.child import MB, ChildChannel, looks_out_of_memory, mapped_bytes, serve

_MISSING_OP = re.compile(
    r"unresolved custom op|Select TensorFlow op|Didn't find op|not supported by this interpreter",
    re.IGNORECASE,
)

_FLOAT_TYPES = {"FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16"}
_QUANT_TYPES = {"INT8", "UINT8", "INT16", "INT4"}
_TYPE_BYTES = {
    "FLOAT32": 4,
    "FLOAT16": 2,
    "INT32": 4,
    "UINT8": 1,
    "INT64": 8,
    "BOOL": 1,
    "INT16": 2,
    "COMPLEX64": 8,
    "INT8": 1,
    "FLOAT64": 8,
    "COMPLEX128": 16,
    "UINT64": 8,
    "UINT32": 4,
    "UINT16": 2,
    "BFLOAT16": 2,
}


def main() -> int:
    return serve(_check)


def _check(request: dict[str, Any], channel: ChildChannel) -> None:
    from ai_edge_litert.interpreter import Interpreter

    path = request["model"]
    memory_bytes = int(request["memory_mb"]) * MB

    def new_interpreter():
        return Interpreter(model_path=path, num_threads=1)

    try:
        interpreter = new_interpreter()
    except (ValueError, RuntimeError) as exc:
        text = str(exc)
        channel.send(
            "open", ok=False, invalid="not a valid flatbuffer" in text.lower(), message=text
        )
        return
    channel.send(
        "open",
        ok=True,
        inputs=[_io(d) for d in interpreter.get_input_details()],
        outputs=[_io(d) for d in interpreter.get_output_details()],
    )

    graph = _read_graph(Path(path).read_bytes())
    channel.send("graph", **graph)

    if request.get("gpu_analyzer"):
        channel.send("analyzer", **_gpu_analyzer(path))

    # The model's own tensors at their stored shapes: a lower bound (the largest one)
    # and an upper bound (all of them) of what allocation needs.
    if graph["largest_tensor_bytes"] > memory_bytes:
        channel.send(
            "allocate",
            ok=False,
            memory=True,
            message=(
                f"tensor {graph['largest_tensor']!r} alone needs "
                f"{graph['largest_tensor_bytes'] / MB:.0f} MiB"
            ),
        )
        return

    targets = _target_shapes(
        interpreter.get_input_details(), request.get("inputs"), request.get("resize_to")
    )
    resized = False
    if targets:
        try:
            for index, shape in targets:
                interpreter.resize_tensor_input(index, shape, strict=True)
            resized = True
        except (ValueError, RuntimeError) as exc:
            channel.send("resize", ok=False, shapes=[s for _, s in targets], message=str(exc))
            interpreter = new_interpreter()
    try:
        interpreter.allocate_tensors()
        channel.send("allocate", ok=True)
        if resized:
            channel.send("resize", ok=True, shapes=[s for _, s in targets])
    except (ValueError, RuntimeError, MemoryError) as exc:
        if not resized:
            channel.send("allocate", **_failure(exc, graph, memory_bytes))
            return
        # Did the model fail to load at all, or only at the new shape?
        failure = _failure(exc, graph, memory_bytes)
        interpreter = new_interpreter()
        try:
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError, MemoryError) as exc2:
            channel.send("allocate", **_failure(exc2, graph, memory_bytes))
            return
        channel.send("allocate", ok=True)
        channel.send("resize", shapes=[s for _, s in targets], **failure)
        return

    channel.send("run", **_forward(interpreter, int(request.get("seed", 0)), graph, memory_bytes))


def _io(detail: dict[str, Any]) -> dict[str, Any]:
    params = detail.get("quantization_parameters") or {}
    scales = [float(s) for s in params.get("scales", [])]
    zeros = [int(z) for z in params.get("zero_points", [])]
    quant = None
    if scales:
        quant = {
            "scale": scales[0] if len(scales) == 1 else scales,
            "zero_point": zeros[0] if len(zeros) == 1 else zeros,
        }
    return {**tensor_detail(detail), "quantization": quant}


def tensor_detail(detail: dict[str, Any]) -> dict[str, Any]:
    """An interpreter's input or output detail as JSON: name, index, shapes and dtype."""
    return {
        "name": detail["name"],
        "index": int(detail["index"]),
        "shape": [int(d) for d in detail["shape"]],
        "shape_signature": [int(d) for d in detail["shape_signature"]],
        "dtype": detail["dtype"].__name__,
    }


def _read_graph(data: bytes) -> dict[str, Any]:
    """Ops and tensor types of every subgraph, from the (already verified) flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema

    builtin_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if k.isupper()}
    type_names = {v: k for k, v in vars(schema.TensorType).items() if k.isupper()}
    model = schema.Model.GetRootAs(data, 0)

    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            custom = (code.CustomCode() or b"").decode("utf-8", "replace")
            codes.append({"name": custom, "custom": True, "flex": custom.startswith("Flex")})
        else:
            name = builtin_names.get(builtin, f"BUILTIN_{builtin}")
            codes.append({"name": name, "custom": False, "flex": False})

    ops: list[dict[str, Any]] = []
    seen: set[str] = set()
    tensors: list[dict[str, Any]] = []
    largest_name, largest_bytes, total_bytes = "", 0, 0
    for s in range(model.SubgraphsLength()):
        sub = model.Subgraphs(s)
        for j in range(sub.OperatorsLength()):
            index = sub.Operators(j).OpcodeIndex()
            code = codes[index] if index < len(codes) else {"name": f"?{index}", "custom": True}
            if code["name"] not in seen:
                seen.add(code["name"])
                ops.append(code)
        inputs = [int(t) for t in sub.InputsAsNumpy()] if sub.InputsLength() else []
        outputs = [int(t) for t in sub.OutputsAsNumpy()] if sub.OutputsLength() else []
        for t in range(sub.TensorsLength()):
            tensor = sub.Tensors(t)
            type_name = type_names.get(tensor.Type(), str(tensor.Type()))
            buffer = (
                model.Buffers(tensor.Buffer()) if tensor.Buffer() < model.BuffersLength() else None
            )
            const = bool(buffer is not None and (buffer.DataLength() > 0 or buffer.Offset() > 1))
            name = (tensor.Name() or b"").decode("utf-8", "replace")
            if not const and not tensor.IsVariable():
                shape = [abs(int(d)) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
                size = _TYPE_BYTES.get(type_name, 4)
                for d in shape:
                    size *= max(d, 1)
                total_bytes += size
                if size > largest_bytes:
                    largest_name, largest_bytes = name, size
            if type_name in _FLOAT_TYPES or type_name in _QUANT_TYPES:
                io = None
                if s == 0 and t in inputs:
                    io = f"input:{inputs.index(t)}"
                elif s == 0 and t in outputs:
                    io = f"output:{outputs.index(t)}"
                tensors.append(
                    {"name": name, "dtype": type_name, "const": const, "io": io, "subgraph": s}
                )
    return {
        "ops": ops,
        "tensors": tensors,
        "subgraphs": model.SubgraphsLength(),
        "largest_tensor": largest_name,
        "largest_tensor_bytes": largest_bytes,
        "tensor_bytes": total_bytes,
    }


def _gpu_analyzer(path: str) -> dict[str, Any]:
    """The TFLite model analyzer's GPU delegate compatibility report.

    ``tf.lite.experimental.Analyzer.analyze(model_path=..., gpu_compatibility=True)``
    prints the string that the C++ ``ModelAnalyzer`` returns; LiteRT ships the same
    binding, which is used first because importing TensorFlow costs ~10 s and
    several hundred MiB of address space. TensorFlow's (stdout captured) is the
    fallback.
    """
    text = ""
    source = ""
    try:
        from ai_edge_litert import _pywrap_analyzer_wrapper as analyzer

        text = analyzer.ModelAnalyzer(path, True, True)
        source = "ai_edge_litert ModelAnalyzer"
    except ImportError:
        import contextlib
        import io

        import tensorflow as tf

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            tf.lite.experimental.Analyzer.analyze(model_path=path, gpu_compatibility=True)
        text = buf.getvalue()
        source = "tf.lite.experimental.Analyzer"
    warnings = gpu_warnings(text)
    return {"source": source, "warnings": warnings, "text": text[:20000]}


def gpu_warnings(text: str) -> list[str]:
    """The ``GPU COMPATIBILITY WARNING: ...`` messages of an analyzer report, once each."""
    warnings: list[str] = []
    for line in text.splitlines():
        if "GPU COMPATIBILITY WARNING:" in line:
            message = line.split("GPU COMPATIBILITY WARNING:", 1)[1].strip()
            if message and message not in warnings:
                warnings.append(message)
    return warnings


def _target_shapes(
    details: list[dict[str, Any]],
    spec_inputs: list[list[int]] | None,
    resize_to: list[list[int]] | None,
) -> list[tuple[int, list[int]]]:
    """(tensor index, shape) for each input that must change shape before the run.

    ``resize_to`` (the fidelity test resolution) wins; otherwise only the model's
    dynamic dimensions (-1 in its signature) are set, to the spec's value when the
    spec fixes one, so a Keras model exported with a free batch runs at batch 1.
    """
    targets = []
    for i, d in enumerate(details):
        current = [int(x) for x in d["shape"]]
        signature = [int(x) for x in d["shape_signature"]]
        if resize_to and i < len(resize_to):
            want = [int(x) for x in resize_to[i]]
        elif spec_inputs and i < len(spec_inputs) and len(spec_inputs[i]) == len(signature):
            want = [
                w if s == -1 and w != -1 else c
                for w, s, c in zip(spec_inputs[i], signature, current, strict=True)
            ]
        else:
            continue
        if want != current:
            targets.append((int(d["index"]), want))
    return targets


def _failure(exc: BaseException, graph: dict[str, Any], memory_bytes: int) -> dict[str, Any]:
    """An allocate/resize/invoke failure, with ``memory`` set when memory is the cause.

    LiteRT does not say so itself: under ``RLIMIT_AS`` a failed allocation surfaces
    as a RuntimeError with an empty or unrelated message ("XNNPack delegate failed to
    reshape runtime"). So: a MemoryError, a message about allocation, or (unless the
    message names a missing op) tensors that cannot fit in what is left of the limit.
    """
    text = str(exc) or type(exc).__name__
    missing_op = bool(_MISSING_OP.search(text))
    memory = (
        isinstance(exc, MemoryError)
        or looks_out_of_memory(text)
        or (not missing_op and graph["tensor_bytes"] + mapped_bytes() > memory_bytes)
    )
    if memory and graph["tensor_bytes"]:
        text = f"{text} (the model's tensors need up to {graph['tensor_bytes'] / MB:.0f} MiB)"
    return {"ok": False, "memory": memory, "message": text}


def _forward(interpreter, seed: int, graph: dict[str, Any], memory_bytes: int) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    try:
        for d in interpreter.get_input_details():
            interpreter.set_tensor(d["index"], _sample(rng, d["shape"], d["dtype"]))
        interpreter.invoke()
    except (ValueError, RuntimeError, MemoryError) as exc:
        return _failure(exc, graph, memory_bytes)
    outputs = []
    for d in interpreter.get_output_details():
        value = interpreter.get_tensor(d["index"])
        entry = {"name": d["name"], "shape": list(value.shape), "dtype": value.dtype.name}
        if np.issubdtype(value.dtype, np.floating) or np.issubdtype(
            value.dtype, np.complexfloating
        ):
            entry["nan"] = int(np.isnan(value).sum())
            entry["inf"] = int(np.isinf(value).sum())
        else:
            entry["nan"] = entry["inf"] = 0
        outputs.append(entry)
    return {"ok": True, "outputs": outputs}


def _sample(rng, shape, dtype):
    """A deterministic test input: [0, 1) for floats, the full range for 8-bit."""
    import numpy as np

    shape = tuple(int(x) for x in shape)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.random(shape, dtype=np.float32).astype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        low, high = (info.min, info.max) if dtype.itemsize == 1 else (0, 10)
        return rng.integers(low, high, size=shape, endpoint=True).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 1, size=shape, endpoint=True).astype(bool)
    return np.zeros(shape, dtype)


if __name__ == "__main__":
    sys.exit(main())
