"""Open, inspect and run a TFLite model in a child process that may die.

A submitted model is untrusted bytes: a crafted flatbuffer can crash the interpreter,
a huge intermediate tensor can eat the machine's memory, a WHILE loop can spin for
hours. So the parts that touch the model (open, op listing, GPU analysis, allocate,
one forward pass) run in ``python -m mai_ops.models.sandbox``, with an address-space
limit (``RLIMIT_AS``) and a wall-clock timeout, and talk to the parent in JSON:

- the request goes in on stdin (one JSON object);
- the child answers with one JSON line per step on a private copy of its stdout
  (its real fd 1 is pointed at stderr first, so anything the C++ runtime prints
  cannot corrupt the answer). Each step is written as soon as it is done, so a
  child killed during the forward pass still reports what it learnt before.

Steps, in order: ``open`` (the interpreter verifies the flatbuffer and lists the
inputs and outputs), ``graph`` (every op and the tensor types, read from the
flatbuffer with LiteRT's generated schema), ``analyzer`` (GPU only), ``allocate``,
``resize`` (when the inputs are set to another shape), ``run`` (seeded input, one
``invoke``, NaN/Inf counts per output), then ``done``.

The parent (:func:`run_sandbox`) turns the way the child ended into an outcome:
``ok``, ``timeout`` (we killed it), ``memory_exceeded`` (the child said so, or it was
killed by SIGKILL that we did not send, i.e. the kernel's OOM killer, or it aborted
on ``std::bad_alloc``) or ``crashed`` (any other signal, or an exit without an
answer).

The limits are applied by the child to itself (``setrlimit``) before it reads a
byte of the model, and by the parent on the child's pid (``prlimit``) before the
request is sent. Both happen after ``exec``: a ``preexec_fn`` would run Python
between fork and exec, which can deadlock in a parent with threads (an Airflow
worker has several).

Nothing here imports LiteRT or numpy at module level: the parent side stays light.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mai_ops.infra.child import (
    apply_own_limits,
    child_env,
    kill_group,
    limit_child,
    signal_name,
)

_MB = 1024 * 1024
_MEMORY_HINTS = re.compile(
    r"bad_alloc|out of memory|cannot allocate memory|failed to (?:re)?allocate|memoryerror",
    re.IGNORECASE,
)

_MISSING_OP = re.compile(
    r"unresolved custom op|Select TensorFlow op|Didn't find op|not supported by this interpreter",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class SandboxLimits:
    """What one model may use: wall-clock seconds and address space in MiB."""

    timeout_s: float = 120.0
    memory_mb: int = 4096


@dataclass
class SandboxResult:
    """How the child ended and the steps it reported (keyed by step name)."""

    outcome: str  # ok | timeout | memory_exceeded | crashed
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    message: str = ""
    returncode: int | None = None
    stderr: str = ""
    seconds: float = 0.0

    @property
    def last_step(self) -> str:
        return next(reversed(self.steps), "start") if self.steps else "start"


def child_command() -> list[str]:
    """The child's argv; tests replace it to get a child that really crashes."""
    return [sys.executable, "-m", "mai_ops.models.sandbox"]


def run_sandbox(
    model_path: str | Path, request: dict[str, Any], limits: SandboxLimits | None = None
) -> SandboxResult:
    """Run the checks of ``request`` on ``model_path`` in a limited child process."""
    limits = limits or SandboxLimits()
    payload = dict(request, model=str(model_path), memory_mb=limits.memory_mb)
    env = child_env()
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["OMP_NUM_THREADS"] = "1"
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            child_command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group: the kill reaches everything
        )
    except OSError as exc:
        return SandboxResult("crashed", message=f"could not start the checker: {exc}")
    limit_child(proc.pid, limits.memory_mb)
    timed_out = False
    try:
        out, err = proc.communicate(json.dumps(payload).encode(), timeout=limits.timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_group(proc)
        out, err = proc.communicate()
    except BaseException:
        kill_group(proc)  # the task was interrupted: leave nothing running
        raise
    seconds = time.monotonic() - started
    steps = _parse_steps(out)
    stderr = err.decode("utf-8", "replace")[-4000:]
    result = SandboxResult("ok", steps, "", proc.returncode, stderr, seconds)
    if timed_out:
        result.outcome = "timeout"
        result.message = f"stopped after {limits.timeout_s:g} s without an answer"
    elif "fatal" in steps:
        fatal = steps["fatal"]
        result.outcome = "memory_exceeded" if fatal.get("memory") else "crashed"
        result.message = fatal.get("message", "")
    elif proc.returncode is not None and proc.returncode < 0:
        sig = -proc.returncode
        name = signal_name(sig)
        if sig == signal.SIGKILL or (sig == signal.SIGABRT and _MEMORY_HINTS.search(stderr)):
            result.outcome = "memory_exceeded"
            result.message = f"killed by {name} (out of memory)"
        else:
            result.outcome = "crashed"
            result.message = f"killed by {name}"
    elif proc.returncode != 0 or "done" not in steps:
        memory = "MemoryError" in stderr or "bad_alloc" in stderr
        result.outcome = "memory_exceeded" if memory else "crashed"
        tail = stderr.strip().splitlines()[-1:] or ["no output"]
        result.message = f"exited with status {proc.returncode} without an answer: {tail[0]}"
    return result


def _parse_steps(out: bytes) -> dict[str, dict[str, Any]]:
    steps: dict[str, dict[str, Any]] = {}
    for line in out.decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if isinstance(record, dict) and isinstance(record.get("step"), str):
            steps[record.pop("step")] = record
    return steps


# ---------------------------------------------------------------------------------
# The child. Everything below runs in ``python -m mai_ops.models.sandbox``.
# ---------------------------------------------------------------------------------

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


class _Channel:
    """Answer lines on a private copy of stdout; fd 1 itself now goes to stderr."""

    def __init__(self) -> None:
        self._out = os.fdopen(os.dup(1), "w", encoding="utf-8")
        os.dup2(2, 1)
        sys.stdout = sys.stderr

    def send(self, step: str, **data: Any) -> None:
        self._out.write(json.dumps({"step": step, **data}, default=_jsonable) + "\n")
        self._out.flush()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def main() -> int:
    channel = _Channel()
    try:
        request = json.loads(sys.stdin.read())
        apply_own_limits(request.get("memory_mb", SandboxLimits.memory_mb))
        _check(request, channel)
    except MemoryError as exc:
        channel.send("fatal", memory=True, message=f"MemoryError: {exc}".strip(": "))
    except Exception as exc:  # noqa: BLE001 - report anything, the parent decides
        channel.send("fatal", memory=False, message=f"{type(exc).__name__}: {exc}")
    return 0


def _check(request: dict[str, Any], channel: _Channel) -> None:
    from ai_edge_litert.interpreter import Interpreter

    path = request["model"]
    memory_bytes = int(request.get("memory_mb", SandboxLimits.memory_mb)) * _MB

    def new_interpreter():
        return Interpreter(model_path=path, num_threads=1)

    try:
        interpreter = new_interpreter()
    except (ValueError, RuntimeError) as exc:
        text = str(exc)
        channel.send(
            "open", ok=False, invalid="not a valid flatbuffer" in text.lower(), message=text
        )
        channel.send("done")
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
                f"{graph['largest_tensor_bytes'] / _MB:.0f} MiB"
            ),
        )
        channel.send("done")
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
            channel.send("done")
            return
        # Did the model fail to load at all, or only at the new shape?
        failure = _failure(exc, graph, memory_bytes)
        interpreter = new_interpreter()
        try:
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError, MemoryError) as exc2:
            channel.send("allocate", **_failure(exc2, graph, memory_bytes))
            channel.send("done")
            return
        channel.send("allocate", ok=True)
        channel.send("resize", shapes=[s for _, s in targets], **failure)
        channel.send("done")
        return

    channel.send("run", **_forward(interpreter, int(request.get("seed", 0)), graph, memory_bytes))
    channel.send("done")


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
    return {
        "name": detail["name"],
        "index": int(detail["index"]),
        "shape": [int(d) for d in detail["shape"]],
        "shape_signature": [int(d) for d in detail["shape_signature"]],
        "dtype": detail["dtype"].__name__,
        "quantization": quant,
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
        or bool(_MEMORY_HINTS.search(text))
        or (not missing_op and graph["tensor_bytes"] + _vm_bytes() > memory_bytes)
    )
    if memory and graph["tensor_bytes"]:
        text = f"{text} (the model's tensors need up to {graph['tensor_bytes'] / _MB:.0f} MiB)"
    return {"ok": False, "memory": memory, "message": text}


def _vm_bytes() -> int:
    try:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmSize:")[1].split()[0]) * 1024
    except (OSError, IndexError, ValueError):
        return 0


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
