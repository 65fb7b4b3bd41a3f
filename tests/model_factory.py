"""Real, tiny TFLite models for the conversion-check tests, built with TensorFlow.

Run as ``python -m tests.model_factory OUT_DIR``: it writes every model into
``OUT_DIR`` and a ``manifest.json`` naming them. The tests call it once per session
in a subprocess, so TensorFlow (10 s to import, a pool of threads) never loads into
the pytest process, where Airflow's tests run too.

Every image model is 1x32x32x3, small enough to convert in well under a second.
Models built through :mod:`mai_ops.models.conversion` (Keras ``.keras`` / ``.h5`` and a
SavedModel, float and INT8) double as the conversion tests; the converter's failure
on a model that needs SELECT_TF_OPS is recorded in the manifest as it was raised.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SIDE = 32
IMAGE = (1, SIDE, SIDE, 3)


def _tf():
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    return tf


def _conv_model(batch: int | None = 1, side: int | None = SIDE):
    """Input -> 3x3 conv (3 filters) -> same-shaped output: an image-to-image model."""
    tf = _tf()
    inp = tf.keras.Input((side, side, 3), batch_size=batch)
    out = tf.keras.layers.Conv2D(3, 3, padding="same")(inp)
    return tf.keras.Model(inp, out)


def _from_function(fn, shape, *, ops=None, allow_custom_ops=False) -> bytes:
    tf = _tf()
    function = tf.function(fn, input_signature=[tf.TensorSpec(shape, tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], function
    )
    converter.target_spec.supported_ops = ops or [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = allow_custom_ops
    return converter.convert()


def _from_keras(model) -> bytes:
    tf = _tf()
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def upsampled_model(shape=IMAGE, factor: int = 256, back_to_input: bool = False) -> bytes:
    """The image upsampled ``factor`` times: one huge float intermediate tensor (a 32x32
    image by 256: 1x8192x8192x3, 805 MB). The output is the mean per channel, or with
    ``back_to_input`` the upsampled image averaged back to the input's shape."""
    tf = _tf()
    inp = tf.keras.Input(shape[1:], batch_size=shape[0])
    up = tf.keras.layers.UpSampling2D(factor)(inp)
    if back_to_input:
        out = tf.keras.layers.AveragePooling2D(factor)(up)
    else:
        out = tf.keras.layers.GlobalAveragePooling2D()(up)
    return _from_keras(tf.keras.Model(inp, out))


def spinning_model(shape=IMAGE, steps: int = 2_000_000_000) -> bytes:
    """A WHILE loop of two billion steps: a model that "hangs"."""
    tf = _tf()

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)])
    def spin(x):
        def body(i, y):
            return i + 1, y * 1.0000001

        _, y = tf.while_loop(lambda i, y: i < steps, body, (tf.constant(0), x))
        return y

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [spin.get_concrete_function()], spin
    )
    return converter.convert()


def recursing_model(shape=IMAGE) -> bytes:
    """A model that crashes the interpreter: SIGSEGV while LiteRT prepares it.

    A WHILE loop of three steps, whose body is given a WHILE of its own that runs that
    same body: preparing the body prepares the body again, without end, until the
    native stack overflows. A valid flatbuffer with the track's inputs and outputs.
    """
    import copy

    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    tf = _tf()

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)])
    def loop(x):
        _, y = tf.while_loop(lambda i, y: i < 3, lambda i, y: (i + 1, y * 1.5), (0, x))
        return y

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [loop.get_concrete_function()], loop
    )
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(converter.convert(), 0))
    [while_op] = model.subgraphs[0].operators
    body = model.subgraphs[while_op.builtinOptions.bodySubgraphIndex]
    again = copy.deepcopy(while_op)
    again.inputs = list(body.inputs)
    again.outputs = []
    for index in body.inputs:
        tensor = copy.deepcopy(body.tensors[index])
        tensor.name = (tensor.name or b"") + b"_again"
        body.tensors.append(tensor)
        again.outputs.append(len(body.tensors) - 1)
    body.operators.insert(0, again)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def representative_images(count: int = 8):
    import numpy as np

    return np.random.default_rng(0).random((count, SIDE, SIDE, 3), dtype=np.float32)


def build(out: Path) -> dict:
    """Build every model into ``out``; returns the manifest."""
    from mai_ops.models.conversion import ConversionError, convert_model, convert_saved_model

    tf = _tf()
    out.mkdir(parents=True, exist_ok=True)
    models: dict[str, str] = {}
    errors: dict[str, dict] = {}
    seconds: dict[str, float] = {}

    def save(name: str, data: bytes) -> None:
        path = out / f"{name}.tflite"
        path.write_bytes(data)
        models[name] = str(path)

    def timed(name: str, make) -> None:
        started = time.monotonic()
        make()
        seconds[name] = round(time.monotonic() - started, 2)

    # Keras files and a SavedModel, converted by mai_ops.models.conversion.
    conv = _conv_model()
    conv.save(out / "conv.keras")
    conv.save(out / "conv.h5")
    images = representative_images()

    def rep():
        for i in range(len(images)):
            yield [images[i : i + 1]]

    def keras_models() -> None:
        models["keras_float"] = str(convert_model(out / "conv.keras", out / "keras_float.tflite"))
        models["keras_int8"] = str(
            convert_model(out / "conv.keras", out / "keras_int8.tflite", "int8", images)
        )
        models["h5_float"] = str(convert_model(out / "conv.h5", out / "h5_float.tflite"))
        models["h5_int8"] = str(convert_model(out / "conv.h5", out / "h5_int8.tflite", "int8", rep))

    def saved_models() -> None:
        free_batch = _conv_model(batch=None)
        free_batch.export(str(out / "saved_free_batch"), verbose=False)
        models["saved_free_batch"] = str(
            convert_saved_model(out / "saved_free_batch", out / "saved_free_batch.tflite")
        )

        class Erf(tf.Module):
            @tf.function(input_signature=[tf.TensorSpec(IMAGE, tf.float32)])
            def __call__(self, x):
                return tf.math.erf(x)

        tf.saved_model.save(Erf(), str(out / "saved_erf"))
        try:
            convert_saved_model(out / "saved_erf", out / "saved_erf.tflite")
        except ConversionError as exc:
            errors["saved_erf"] = {
                "type": type(exc).__name__,
                "message": str(exc),
                "details_chars": len(exc.details),
            }
        try:
            convert_model(out / "conv.keras", out / "never.tflite", "int8")
        except ConversionError as exc:
            errors["int8_without_data"] = {"type": type(exc).__name__, "message": str(exc)}

    def raw_models() -> None:
        builtins_and_flex = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
        # tf.math.erf has no TFLite kernel: a Flex op with SELECT_TF_OPS...
        save("flex", _from_function(lambda x: tf.math.erf(x) * 2.0, IMAGE, ops=builtins_and_flex))
        # ...and a custom op named "Erf" with allow_custom_ops and builtins only.
        save("custom", _from_function(lambda x: tf.math.erf(x) * 2.0, IMAGE, allow_custom_ops=True))
        # log(x - 2) of inputs in [0, 1): NaN everywhere.
        save("nan", _from_function(lambda x: tf.math.log(x - 2.0), IMAGE))
        # REVERSE_V2 is not in the GPU delegate's op set.
        save("gpu_incompatible", _from_function(lambda x: tf.reverse(x * 2.0, axis=[2]), IMAGE))
        # Height and width left dynamic: the fidelity model of a track.
        save("dynamic", _from_keras(_conv_model(side=None)))
        save("huge", upsampled_model())
        save("hang", spinning_model())
        save("crash", recursing_model())

    timed("keras", keras_models)
    timed("saved_model", saved_models)
    timed("raw", raw_models)
    manifest = {"models": models, "errors": errors, "seconds": seconds}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.model_factory OUT_DIR")
    started = time.monotonic()
    result = build(Path(sys.argv[1]))
    print(json.dumps({"seconds": round(time.monotonic() - started, 1), **result["seconds"]}))
