"""Convert a team's SavedModel or Keras model to TFLite, then check it like any other.

SPEC section 5: teams that submit a SavedModel (a directory) or a Keras model
(``.keras`` / ``.h5``) get it converted with ``tf.lite.TFLiteConverter``:

- ``mode="float"``: builtin TFLite ops only, float32 weights and activations;
- ``mode="int8"``: full integer quantization. Weights and activations are INT8,
  calibrated on a representative dataset, and the model's inputs and outputs take
  the track's dtype (``uint8`` by default, as in the MAI INT8 tracks; ``int8``, or
  ``float32`` to keep QUANTIZE / DEQUANTIZE at the edges).

SELECT_TF_OPS (Flex) is never enabled: the challenge runtime has no TensorFlow
kernels, so a model that needs them fails here, with the converter's own reason.
Converter failures come back as :class:`ConversionError`, whose message is the
converter's explanation without the MLIR traceback noise; ``details`` keeps the
full text.

A team's model is code (Keras layers, SavedModel functions), so callers convert with
:func:`convert_in_child`: the same conversion in ``python -m
mai_ops.models.conversion_child``, started by :func:`mai_ops.infra.child.run_child` with
a memory cap and a timeout, never in the caller.

TensorFlow is imported inside the functions: importing this module is free.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mai_ops.infra.child import ChildLimits, run_child

if TYPE_CHECKING:
    from mai_ops.challenge.config import Track

CHILD = "mai_ops.models.conversion_child"
Mode = Literal["float", "int8"]
IO_DTYPES = ("uint8", "int8", "float32")
_MAX_MESSAGE = 1500


class ConversionError(Exception):
    """A model that could not be converted; ``str()`` is the reason, trimmed."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.message = message
        self.details = details or message


def convert_model(
    src: str | Path,
    out: str | Path,
    mode: Mode = "float",
    representative: Callable[[], Iterable[Any]] | Any | None = None,
    *,
    input_dtype: str = "uint8",
    output_dtype: str = "uint8",
) -> Path:
    """Convert ``src`` (SavedModel directory, ``.keras`` or ``.h5``) to ``out``."""
    src = Path(src)
    if src.is_dir():
        return convert_saved_model(
            src, out, mode, representative, input_dtype=input_dtype, output_dtype=output_dtype
        )
    if src.suffix.lower() in (".keras", ".h5", ".hdf5"):
        return convert_keras(
            src, out, mode, representative, input_dtype=input_dtype, output_dtype=output_dtype
        )
    raise ConversionError(
        f"{src.name}: not a SavedModel directory or a Keras .keras/.h5 file"
        + ("" if src.exists() else " (it does not exist)")
    )


def convert_in_child(
    source: Path,
    out: Path,
    track: Track,
    *,
    representative: str | Path | None = None,
    timeout_s: float = 900.0,
    memory_mb: int = 16384,
) -> Path:
    """Convert ``source`` for ``track`` in a limited child process; ``out`` when it worked.

    INT8 (full integer, the track's input/output dtypes) when the track requires
    quantization or takes integer inputs; float otherwise. ``representative`` is a
    ``.npy`` file of calibration samples (default: 8 seeded uniform [0, 1) samples).
    Raises :class:`ConversionError` with the converter's reason, or why the child stopped.
    """
    (inp,) = track.inputs[:1]
    int8 = track.quantization == "int8" or inp.dtype in ("uint8", "int8")
    out_dtype = track.outputs[0].dtype
    request = {
        "source": str(source),
        "out": str(out),
        "mode": "int8" if int8 else "float",
        "input_dtype": inp.dtype if inp.dtype in ("uint8", "int8") else "float32",
        "output_dtype": out_dtype if out_dtype in ("uint8", "int8") else "float32",
        "shape": [d if d > 0 else 1 for d in inp.shape],
        "representative": str(representative) if representative else None,
    }
    # TensorFlow keeps its own thread pools: no single-threaded BLAS here.
    limits = ChildLimits(timeout_s=timeout_s, memory_mb=memory_mb, scratch=out.parent, env={})
    outcome = run_child(CHILD, request, limits)
    if outcome.status == "timeout":
        raise ConversionError(f"the conversion did not finish within {timeout_s:g} s")
    if outcome.status == "memory_exceeded":
        raise ConversionError(
            f"the conversion ran out of memory (limit {memory_mb} MB): {outcome.message}"
        )
    if outcome.status == "crashed":
        raise ConversionError(f"the converting process stopped: {outcome.message}")
    if "error" in outcome.steps:
        error = outcome.steps["error"]
        raise ConversionError(error["message"], error.get("details", ""))
    if not out.is_file():
        raise ConversionError("the converting process finished without writing the model")
    return out


def convert_saved_model(
    src: str | Path,
    out: str | Path,
    mode: Mode = "float",
    representative: Callable[[], Iterable[Any]] | Any | None = None,
    *,
    input_dtype: str = "uint8",
    output_dtype: str = "uint8",
    signature_key: str | None = None,
) -> Path:
    """Convert the SavedModel directory ``src`` to the TFLite file ``out``."""
    _check_args(mode, representative, input_dtype, output_dtype)
    src = Path(src)
    if not (src / "saved_model.pb").is_file() and not (src / "saved_model.pbtxt").is_file():
        raise ConversionError(f"{src.name}: no saved_model.pb in the directory")
    tf = _tf()
    keys = [signature_key] if signature_key else None
    try:
        with _quiet():
            converter = tf.lite.TFLiteConverter.from_saved_model(str(src), signature_keys=keys)
    except Exception as exc:  # noqa: BLE001 - any loader failure is the model's problem
        raise ConversionError(
            f"cannot load the SavedModel: {_explain(str(exc))}", str(exc)
        ) from exc
    return _convert(converter, Path(out), mode, representative, input_dtype, output_dtype)


def convert_keras(
    src: str | Path,
    out: str | Path,
    mode: Mode = "float",
    representative: Callable[[], Iterable[Any]] | Any | None = None,
    *,
    input_dtype: str = "uint8",
    output_dtype: str = "uint8",
) -> Path:
    """Convert the Keras model file ``src`` (``.keras`` or ``.h5``) to ``out``."""
    _check_args(mode, representative, input_dtype, output_dtype)
    tf = _tf()
    try:
        with _quiet():
            model = tf.keras.models.load_model(str(src), compile=False)
    except Exception as exc:  # noqa: BLE001
        raise ConversionError(
            f"cannot load the Keras model {Path(src).name}: {_explain(str(exc))}", str(exc)
        ) from exc
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    return _convert(converter, Path(out), mode, representative, input_dtype, output_dtype)


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def _check_args(mode: str, representative: Any, input_dtype: str, output_dtype: str) -> None:
    if mode not in ("float", "int8"):
        raise ConversionError(f"mode must be 'float' or 'int8', not {mode!r}")
    if mode == "int8" and representative is None:
        raise ConversionError("INT8 conversion needs a representative dataset")
    for what, dtype in (("input", input_dtype), ("output", output_dtype)):
        if dtype not in IO_DTYPES:
            raise ConversionError(f"{what} dtype must be one of {', '.join(IO_DTYPES)}")


def _convert(
    converter: Any,
    out: Path,
    mode: str,
    representative: Any,
    input_dtype: str,
    output_dtype: str,
) -> Path:
    tf = _tf()
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if mode == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset(representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = getattr(tf, input_dtype)
        converter.inference_output_type = getattr(tf, output_dtype)
    try:
        with _quiet():
            flatbuffer = converter.convert()
    except Exception as exc:  # noqa: BLE001 - ConverterError, ValueError, RuntimeError...
        text = str(exc) or type(exc).__name__
        message = f"the TFLite converter failed: {_explain(text)}"
        if "TF Select" in text or "ERROR_NEEDS_FLEX_OPS" in text:
            message += (
                " (the challenge runtime has no TF Select / Flex kernels: "
                "replace these ops with TFLite builtins)"
            )
        raise ConversionError(message, text) from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    tmp.write_bytes(flatbuffer)
    tmp.replace(out)
    return out


def representative_dataset(data: Any) -> Callable[[], Iterable[list[Any]]]:
    """The converter's ``representative_dataset`` from a callable or from arrays.

    A callable is used as it is (it returns an iterable of lists of input arrays,
    TensorFlow's convention). An array of N samples (``N x H x W x C``) gives N
    batches of one; a list/tuple of arrays gives one array per model input.
    """
    if callable(data):
        return data
    import numpy as np

    arrays = (
        [np.asarray(a, dtype=np.float32) for a in data]
        if isinstance(data, (list, tuple))
        else [np.asarray(data, dtype=np.float32)]
    )
    counts = {len(a) for a in arrays}
    if len(counts) != 1 or 0 in counts or any(a.ndim == 0 for a in arrays):
        raise ConversionError("the representative dataset is empty or its inputs differ in length")
    n = counts.pop()

    def generate() -> Iterable[list[Any]]:
        for i in range(n):
            yield [a[i : i + 1] for a in arrays]

    return generate


@contextlib.contextmanager
def _quiet():
    """Keep Keras' and the converter's Python prints out of the caller's stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


_LOCATION = re.compile(
    r"(?:(?:[A-Za-z]:)?[/\\][^\s:]*|<unknown>|[\w.-]+\.py):\d+(?::\d+)?:\s+(error|note|warning):\s?(.*)"
)


def _explain(text: str) -> str:
    """The converter's own reasons from its MLIR diagnostics, without the noise.

    The converter's text is a list of ``file:line:col: error|note: ...`` entries
    followed by Python source lines and carets (the trace of where each op was
    created) and MLIR dumps. Kept: every ``error:`` line, and the continuation lines
    of errors without a Python location (they carry the explanation, such as
    ``TF Select ops: Erf``). Dropped: notes, source lines, carets, MLIR.
    """
    segments: list[str] = []
    keep_continuation = False
    for raw in text.splitlines():
        line = raw.rstrip()
        match = _LOCATION.search(line)
        if match:
            prefix = line[: match.start()].strip()
            if prefix and prefix not in segments:
                segments.append(prefix)
            kind, message = match.group(1), _drop_loc(match.group(2).strip())
            keep_continuation = kind == "error" and line[match.start() :].startswith("<unknown>")
            if kind == "error" and message and message not in segments:
                segments.append(message)
            continue
        stripped = line.strip()
        if keep_continuation and stripped and stripped != "^" and segments:
            segments[-1] += " " + stripped
    if not segments:
        segments = [line.strip() for line in text.splitlines() if line.strip()][:8]
    message = re.sub(r"\s+", " ", "; ".join(s.rstrip(" :.") for s in segments)).strip()
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 3].rstrip() + "..."
    return message


def _drop_loc(message: str) -> str:
    """``loc(callsite(...)): 'tf.Erf' op is ...`` -> ``'tf.Erf' op is ...``."""
    if not message.startswith("loc("):
        return message
    depth = 0
    for i, char in enumerate(message):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return message[i + 1 :].lstrip(": ").strip()
    return message
