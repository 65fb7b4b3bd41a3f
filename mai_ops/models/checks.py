"""Conversion checks: is a submitted ``.tflite`` model one the track can run?

SPEC section 5. :func:`check_model` answers with a :class:`CheckReport`: ``ok``, every
error found (a stable ``code`` for machines and a ``message`` for the team), and what
the model is (inputs and outputs with shape, dtype and quantization; its op names).

What runs where:

- here, in the caller: the file exists and is not empty, its size against the
  track's limit, and the flatbuffer identifier ``TFL3`` at bytes 4..8;
- in a child process with memory and time limits (:mod:`mai_ops.models.checks_child`,
  run by :func:`mai_ops.infra.child.run_child`): everything that touches the model's
  contents (open, op listing, GPU analysis, allocation, resizing, one forward pass on a
  seeded input). A model that crashes, hangs or eats memory there is reported as
  ``check_crashed``, ``check_timeout`` or ``check_memory_exceeded`` and never takes the
  caller down.

Every check that can run does run; only a file that is not a model at all
(``empty_file``, ``not_tflite``, or an interpreter that cannot open it) stops early.

Decisions, so the messages can be explained to a team:

- Shapes: ``-1`` in the spec matches any size. A dimension the *model* leaves
  dynamic (``-1`` in its shape signature) matches a fixed spec value only for the
  batch (dimension 0), since Keras exports a free batch by default; the forward pass
  then runs at the spec's batch. A dynamic height or width on a fixed-shape track is
  an ``input_shape`` error (the target devices need static shapes). A dynamic output
  dimension is compared with the shape the forward pass produced.
- ``int8``: every tensor of every subgraph must be an integer type; float tensors are
  named in ``not_quantized``. The model's own inputs and outputs are exempt only when
  the spec itself asks for a float dtype there (a float-in, float-out INT8 model with
  QUANTIZE / DEQUANTIZE at its edges); for a uint8/int8 spec a float input or output is
  both ``input_dtype``/``output_dtype`` and ``not_quantized``.
- ``float``: no activation (non-constant tensor) may be int8/uint8/int16
  (``not_float``); int8 *weights* dequantized at load time are fine.
- Delegates: ``gpu`` runs TFLite's model analyzer with ``gpu_compatibility=True`` and
  reports its warnings, and also checks op names against the GPU delegate's supported
  ops (the list of ``tensorflow/lite/tools/versioning/gpu_compatibility.cc``), because
  the analyzer in the TF 2.21 / LiteRT 2.3 wheels is built without that checker and
  calls every model compatible. ``nnapi``, ``neuron``, ``npu`` and ``hexagon`` use the
  short allow-lists below; ``cpu`` and ``xnnpack`` run every builtin op. Checks are
  by builtin op name only (not by each op's parameters); custom and Flex ops have
  their own codes and are not repeated here.
- Custom ops (``custom_op``) and Flex ops (``flex_op``: custom code starting with
  ``Flex``) are both refused: the challenge runtime has neither. When the interpreter
  then cannot prepare them, ``load_failed`` says so too.
- Sizes are in MiB (1 MB = 1,048,576 bytes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mai_ops.challenge.config import (
    DELEGATES,
    DTYPES,
)
from mai_ops.errors import registered
from mai_ops.infra.child import ChildLimits, ChildOutcome, run_child

CHILD = "mai_ops.models.checks_child"

_MB = 1024 * 1024
TFLITE_IDENTIFIER = b"TFL3"

# The GPU delegate's supported ops (gpu_compatibility.cc, TF master, 2025), by name.
GPU_OPS = frozenset(
    """ABS ADD ADD_N AVERAGE_POOL_2D BATCH_MATMUL CAST CONCATENATION CONV_2D COS CUMSUM
    DENSIFY DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE DIV ELU EQUAL EXP FLOOR FLOOR_DIV
    FLOOR_MOD FULLY_CONNECTED GATHER GELU GREATER GREATER_EQUAL HARD_SWISH LEAKY_RELU LESS
    LESS_EQUAL LOG LOGICAL_AND LOGISTIC LSTM MAXIMUM MAX_POOL_2D MEAN MINIMUM MIRROR_PAD MUL
    NEG NOT_EQUAL ONE_HOT PACK PAD PADV2 POW PRELU QUANTIZE REDUCE_MAX REDUCE_MIN REDUCE_PROD
    RELU RELU6 RELU_N1_TO_1 RESHAPE RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR RSQRT SELECT
    SELECT_V2 SIGN SIN SLICE SOFTMAX SPACE_TO_DEPTH SPLIT SPLIT_V SQRT SQUARE
    SQUARED_DIFFERENCE STRIDED_SLICE SUB SUM TANH TILE TRANSPOSE TRANSPOSE_CONV
    Convolution2DTransposeBias MaxPoolingWithArgmax2D MaxUnpooling2D Resampler""".split()
)

# NNAPI: the vision ops every NNAPI 1.2 driver implements (Android NeuralNetworks
# OperationCode), which is what the MAI NPU/APU tracks need. Kept short on purpose:
# an op outside it may still run, but it falls back to the CPU and ruins the runtime.
NNAPI_OPS = frozenset(
    """ADD AVERAGE_POOL_2D CONCATENATION CONV_2D DEPTHWISE_CONV_2D DEPTH_TO_SPACE
    DEQUANTIZE DIV FULLY_CONNECTED HARD_SWISH L2_NORMALIZATION LEAKY_RELU LOGISTIC
    MAXIMUM MAX_POOL_2D MEAN MINIMUM MUL PAD PRELU QUANTIZE RELU RELU6 RELU_N1_TO_1
    RESHAPE RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR SOFTMAX SPACE_TO_DEPTH SQUEEZE
    STRIDED_SLICE SUB TANH TRANSPOSE TRANSPOSE_CONV""".split()
)

# The Hexagon delegate's documented op list (quantized models), the vision subset.
HEXAGON_OPS = frozenset(
    """ADD AVERAGE_POOL_2D CONCATENATION CONV_2D DEPTHWISE_CONV_2D DEPTH_TO_SPACE
    FULLY_CONNECTED HARD_SWISH L2_NORMALIZATION LOGISTIC MAXIMUM MAX_POOL_2D MEAN MINIMUM
    MUL PACK PAD QUANTIZE DEQUANTIZE RELU RELU6 RELU_N1_TO_1 RESHAPE RESIZE_BILINEAR
    RESIZE_NEAREST_NEIGHBOR SLICE SOFTMAX SPACE_TO_DEPTH SPLIT STRIDED_SLICE SUB TANH
    TRANSPOSE TRANSPOSE_CONV""".split()
)

DELEGATE_OPS: dict[str, frozenset[str] | None] = {
    "cpu": None,
    "xnnpack": None,
    "gpu": GPU_OPS,
    "nnapi": NNAPI_OPS,
    "neuron": NNAPI_OPS,
    "npu": NNAPI_OPS,
    "hexagon": HEXAGON_OPS,
}

Shape = tuple[int, ...]
TensorReq = tuple[Shape, str]


@dataclass(frozen=True)
class ModelSpec:
    """What a track requires of a model.

    ``inputs`` / ``outputs``: ``(shape, dtype)`` per tensor, ``-1`` for a dimension that
    may be anything; ``outputs=None`` leaves the outputs unchecked. ``resize_to``: the
    test resolution a fidelity (dynamic) model must accept, one concrete shape per
    input; the inputs are resized to it (only ``-1`` dimensions may change) before the
    forward pass.
    """

    inputs: tuple[TensorReq, ...]
    outputs: tuple[TensorReq, ...] | None = None
    quantization: Literal["any", "float", "int8"] = "any"
    delegate: str = "cpu"
    max_size_mb: float | None = None
    resize_to: tuple[Shape, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", _reqs(self.inputs, "inputs"))
        if self.outputs is not None:
            object.__setattr__(self, "outputs", _reqs(self.outputs, "outputs"))
        if self.resize_to is not None:
            shapes = tuple(tuple(int(d) for d in s) for s in self.resize_to)
            if any(d < 1 for s in shapes for d in s):
                raise ValueError(f"resize_to needs concrete shapes, got {shapes}")
            object.__setattr__(self, "resize_to", shapes)
        if self.quantization not in ("any", "float", "int8"):
            raise ValueError(f"quantization must be any, float or int8, not {self.quantization!r}")
        if self.delegate not in DELEGATE_OPS:
            raise ValueError(f"unknown delegate {self.delegate!r}; known: {', '.join(DELEGATES)}")

    @classmethod
    def from_track(cls, track: Any, *, fidelity: bool = False) -> ModelSpec:
        """The spec of a :class:`mai_ops.challenge.config.Track`.

        ``fidelity=True`` checks the track's fidelity model (``model_none.tflite``):
        its inputs are ``fidelity_inputs`` and it must resize to the runtime input
        shape (the ``-1`` dimensions filled in from ``track.inputs``).
        """
        outputs = tuple((tuple(t.shape), t.dtype) for t in track.outputs)
        common = {
            "outputs": outputs,
            "quantization": track.quantization,
            "delegate": track.delegate,
            "max_size_mb": track.max_model_size_mb,
        }
        if not fidelity:
            return cls(inputs=tuple((tuple(t.shape), t.dtype) for t in track.inputs), **common)
        if not track.fidelity_inputs:
            raise ValueError(f"track {track.id!r} has no fidelity_inputs")
        resize_to = []
        for i, spec in enumerate(track.fidelity_inputs):
            runtime = track.inputs[i].shape if i < len(track.inputs) else spec.shape
            if len(runtime) != len(spec.shape):
                runtime = spec.shape
            filled = tuple(r if d == -1 else d for d, r in zip(spec.shape, runtime, strict=True))
            if any(d < 1 for d in filled):
                raise ValueError(f"track {track.id!r}: no concrete test shape for {spec.shape}")
            resize_to.append(filled)
        inputs = tuple((tuple(t.shape), t.dtype) for t in track.fidelity_inputs)
        return cls(inputs=inputs, resize_to=tuple(resize_to), **common)


def _reqs(items: Any, what: str) -> tuple[TensorReq, ...]:
    out = []
    for item in items:
        shape, dtype = item
        shape = tuple(int(d) for d in shape)
        if not shape or any(d == 0 or d < -1 for d in shape):
            raise ValueError(f"{what}: dimensions must be positive or -1, got {list(shape)}")
        if dtype not in DTYPES:
            raise ValueError(f"{what}: unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
        out.append((shape, dtype))
    if not out:
        raise ValueError(f"{what}: at least one tensor")
    return tuple(out)


@dataclass(frozen=True)
class CheckError:
    code: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass
class CheckReport:
    """The verdict on one model; ``as_json()`` is what is stored and mailed."""

    path: str
    errors: list[CheckError] = field(default_factory=list)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)
    size_bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def codes(self) -> list[str]:
        return [e.code for e in self.errors]

    def add(self, code: str, message: str) -> None:
        if registered(code).stage != "check":
            raise ValueError(f"{code!r} is not a code of the check stage")
        self.errors.append(CheckError(code, message))

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict with the keys ok, errors, inputs, outputs, ops."""
        return {
            "ok": self.ok,
            "errors": [e.as_json() for e in self.errors],
            "inputs": self.inputs,
            "outputs": self.outputs,
            "ops": self.ops,
        }


def check_model(
    path: str | Path, spec: ModelSpec, limits: ChildLimits | None = None
) -> CheckReport:
    """Every conversion check of ``spec`` on the model at ``path``."""
    path = Path(path)
    report = CheckReport(str(path))
    try:
        size = path.stat().st_size if path.is_file() else -1
    except OSError:
        size = -1
    if size < 0:
        report.add("empty_file", f"no model file at {path.name}")
        return report
    if size == 0:
        report.add("empty_file", f"{path.name} is empty (0 bytes)")
        return report
    report.size_bytes = size
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        report.add("load_failed", f"cannot read {path.name}: {exc.strerror or exc}")
        return report
    if len(head) < 8 or head[4:8] != TFLITE_IDENTIFIER:
        found = head[4:8] if len(head) >= 8 else head
        report.add(
            "not_tflite",
            f"{path.name} is not a TFLite model: the flatbuffer identifier at bytes 4..8 "
            f"is {found!r}, not {TFLITE_IDENTIFIER!r}",
        )
        return report
    if spec.max_size_mb is not None and size > spec.max_size_mb * _MB:
        report.add(
            "model_too_large",
            f"the model is {size / _MB:.2f} MB, over the track's limit of {spec.max_size_mb:g} MB",
        )

    request = {
        "model": str(path),
        "inputs": [list(shape) for shape, _ in spec.inputs],
        "resize_to": [list(s) for s in spec.resize_to] if spec.resize_to else None,
        "gpu_analyzer": spec.delegate == "gpu",
        "seed": 0,
    }
    result = run_child(CHILD, request, limits or ChildLimits())
    _judge(report, spec, result)
    return report


def _judge(report: CheckReport, spec: ModelSpec, result: ChildOutcome) -> None:
    steps = result.steps
    opened = steps.get("open")
    if opened is not None and not opened.get("ok"):
        if opened.get("invalid"):
            report.add(
                "not_tflite",
                "the file has a TFLite identifier but is not a valid flatbuffer "
                f"(truncated or corrupted): {opened.get('message', '')}",
            )
        else:
            report.add("load_failed", f"the interpreter cannot open the model: {opened['message']}")
        return
    if opened is not None:
        report.inputs = [_describe(t) for t in opened["inputs"]]
        report.outputs = [_describe(t) for t in opened["outputs"]]

    graph = steps.get("graph")
    if graph is not None:
        report.ops = [op["name"] for op in graph["ops"]]
        _check_ops(report, spec, graph, steps.get("analyzer"))
        _check_quantization(report, spec, graph)

    run = steps.get("run")
    if opened is not None:
        produced = [o["shape"] for o in run["outputs"]] if run and run.get("ok") else None
        _check_io(report, spec, opened, produced)

    allocate = steps.get("allocate")
    if allocate is not None and not allocate.get("ok"):
        if allocate.get("memory"):
            report.add(
                "check_memory_exceeded",
                f"allocating the model's tensors failed under the memory limit: "
                f"{allocate['message']}",
            )
        else:
            report.add(
                "load_failed", f"the interpreter cannot prepare the model: {allocate['message']}"
            )
    resize = steps.get("resize")
    if resize is not None and not resize.get("ok"):
        shapes = ", ".join(str(s) for s in resize.get("shapes", []))
        if resize.get("memory"):
            report.add(
                "check_memory_exceeded",
                f"resizing the inputs to {shapes} needs more memory than the limit: "
                f"{resize['message']}",
            )
        else:
            report.add(
                "resize_failed",
                f"the inputs cannot be resized to {shapes}: {resize['message']}",
            )
    if run is not None:
        if not run.get("ok"):
            if run.get("memory"):
                report.add(
                    "check_memory_exceeded", f"the forward pass ran out of memory: {run['message']}"
                )
            else:
                report.add("run_failed", f"the forward pass failed: {run['message']}")
        else:
            bad = [
                f"{o['name']} ({o['nan']} NaN, {o['inf']} Inf of {math.prod(o['shape'])} values)"
                for o in run["outputs"]
                if o["nan"] or o["inf"]
            ]
            if bad:
                report.add(
                    "non_finite_output",
                    "the forward pass on the seeded test input gave non-finite values in "
                    + "; ".join(bad),
                )

    where = _IN_PROGRESS.get(result.last_step, f"after {result.last_step}")
    if result.status == "timeout":
        report.add("check_timeout", f"the checks were {result.message}, {where}")
    elif result.status == "memory_exceeded":
        report.add(
            "check_memory_exceeded",
            f"the checking process ran out of memory, {where}: {result.message}",
        )
    elif result.status == "crashed":
        report.add("check_crashed", f"the checking process stopped {where}: {result.message}")


# What the child was doing when it stopped, from the last step it reported.
_IN_PROGRESS = {
    "start": "while starting up or opening the model",
    "open": "while reading the model's graph",
    "graph": "while analyzing the graph or allocating the tensors",
    "analyzer": "while allocating the tensors",
    "allocate": "during resizing or the forward pass",
    "resize": "during the forward pass",
    "run": "after the forward pass",
    "done": "after all checks",
}


def _describe(t: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": t["name"],
        "shape": t["shape_signature"],
        "dtype": t["dtype"],
        "quantization": t["quantization"],
    }


def _check_io(
    report: CheckReport,
    spec: ModelSpec,
    opened: dict[str, Any],
    produced: list[list[int]] | None,
) -> None:
    for kind, wanted, got in (
        ("input", spec.inputs, opened["inputs"]),
        ("output", spec.outputs, opened["outputs"]),
    ):
        if wanted is None:
            continue
        if len(wanted) != len(got):
            report.add(
                f"{kind}_count",
                f"the model has {len(got)} {kind}(s), the track expects {len(wanted)}",
            )
            continue
        for i, ((shape, dtype), tensor) in enumerate(zip(wanted, got, strict=True)):
            actual = produced[i] if kind == "output" and produced and i < len(produced) else None
            problem = _shape_problem(
                list(shape), tensor["shape_signature"], actual, output=kind == "output"
            )
            if problem:
                report.add(
                    f"{kind}_shape",
                    f"{kind} {i} ({tensor['name']}) has shape {tensor['shape_signature']}, "
                    f"the track expects {list(shape)}: {problem}",
                )
            if tensor["dtype"] != dtype:
                report.add(
                    f"{kind}_dtype",
                    f"{kind} {i} ({tensor['name']}) is {tensor['dtype']}, "
                    f"the track expects {dtype}",
                )


def _shape_problem(
    want: list[int], signature: list[int], actual: list[int] | None, *, output: bool = False
) -> str:
    """Why ``signature`` does not match ``want`` ("" when it does).

    ``actual`` is the output shape the forward pass produced, if it ran: a dynamic
    output dimension is judged by it, and not judged at all without it.
    """
    if len(want) != len(signature):
        return f"rank {len(signature)} instead of {len(want)}"
    problems = []
    for d, (w, s) in enumerate(zip(want, signature, strict=True)):
        if w == -1 or w == s:
            continue
        if s != -1:
            problems.append(f"dimension {d} is {s}, not {w}")
        elif d == 0:
            continue  # a free batch; the run uses the spec's
        elif not output:
            problems.append(f"dimension {d} is dynamic (-1), the track fixes it to {w}")
        elif actual is not None and len(actual) == len(want) and actual[d] != w:
            problems.append(f"dimension {d} is dynamic and came out as {actual[d]}, not {w}")
    return "; ".join(problems)


def _check_ops(
    report: CheckReport, spec: ModelSpec, graph: dict[str, Any], analyzer: dict[str, Any] | None
) -> None:
    flex = [op["name"] for op in graph["ops"] if op.get("flex")]
    custom = [op["name"] for op in graph["ops"] if op.get("custom") and not op.get("flex")]
    if flex:
        report.add(
            "flex_op",
            f"Flex (SELECT_TF_OPS) op(s) {', '.join(flex)}: the target runtime has no "
            "TensorFlow kernels; convert with TFLITE_BUILTINS only",
        )
    if custom:
        report.add(
            "custom_op",
            f"custom op(s) {', '.join(custom)}: the target runtime has no kernel for them",
        )
    allowed = DELEGATE_OPS.get(spec.delegate)
    if allowed is None:
        return
    outside = [
        op["name"] for op in graph["ops"] if not op.get("custom") and op["name"] not in allowed
    ]
    if spec.delegate == "gpu":
        refused = {f"Not supported custom op {name}" for name in flex + custom}
        warnings = [w for w in (analyzer or {}).get("warnings", []) if w not in refused]
        if outside or warnings:
            parts = []
            if outside:
                parts.append(f"op(s) the GPU delegate does not support: {', '.join(outside)}")
            if warnings:
                parts.append("analyzer: " + "; ".join(warnings[:10]))
            report.add("gpu_incompatible", "; ".join(parts))
        return
    if outside:
        report.add(
            f"{spec.delegate}_incompatible",
            f"op(s) outside the {spec.delegate} delegate's list: {', '.join(outside)} "
            "(they would fall back to the CPU)",
        )


def _check_quantization(report: CheckReport, spec: ModelSpec, graph: dict[str, Any]) -> None:
    def exempt(io: str | None, float_ok: bool) -> bool:
        if io is None:
            return False
        kind, index = io.split(":")
        reqs = spec.inputs if kind == "input" else spec.outputs
        i = int(index)
        if reqs is None or i >= len(reqs):
            return False
        is_float = reqs[i][1].startswith("float")
        return is_float if float_ok else not is_float

    if spec.quantization == "int8":
        floats = [
            t
            for t in graph["tensors"]
            if t["dtype"] in ("FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16")
            and not exempt(t["io"], float_ok=True)
        ]
        if floats:
            names = ", ".join(f"{t['name']} ({t['dtype']})" for t in floats[:12])
            more = f" and {len(floats) - 12} more" if len(floats) > 12 else ""
            report.add(
                "not_quantized",
                f"the track needs a fully INT8/UINT8 model; {len(floats)} float tensor(s): "
                f"{names}{more}",
            )
    elif spec.quantization == "float":
        quantized = [
            t
            for t in graph["tensors"]
            if t["dtype"] in ("INT8", "UINT8", "INT16", "INT4")
            and not t["const"]
            and not exempt(t["io"], float_ok=False)
        ]
        if quantized:
            names = ", ".join(f"{t['name']} ({t['dtype']})" for t in quantized[:12])
            report.add(
                "not_float",
                f"the track needs a float model; {len(quantized)} quantized activation(s): {names}",
            )
