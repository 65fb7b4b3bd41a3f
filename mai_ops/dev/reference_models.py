"""Small real models that meet a track's tensor specs, built with Keras and converted.

Organizers need a known-good submission per track to try the pipeline before
participants do, and tests need real TFLite files (the demo's teams have models of
their own, built to rank in a known order: :mod:`mai_ops.dev.demo_teams`). The
models are tiny (1x1 convolutions, depth-to-space for upscaling, pooling + dense for
classification) so they build and convert in seconds on a CPU. TensorFlow is imported
inside the function: this module is safe to import anywhere.
"""

from __future__ import annotations

from mai_ops.challenge.config import Track

_NP_DTYPES = {"float32": "float32", "uint8": "uint8", "int8": "int8"}


def build_reference_tflite(track: Track, seed: int = 0) -> bytes:
    """A TFLite flatbuffer whose input and output match ``track`` (float or full INT8)."""
    import numpy as np
    import tensorflow as tf

    (inp,) = track.inputs
    (out,) = track.outputs
    tf.keras.utils.set_random_seed(seed)
    x = inputs = tf.keras.Input(shape=tuple(inp.shape[1:]), batch_size=1)
    if len(out.shape) == 2:
        x = tf.keras.layers.GlobalAveragePooling2D()(x)
        x = tf.keras.layers.Dense(out.shape[1])(x)
        if track.quantization == "int8":
            x = tf.keras.layers.Softmax()(x)
    else:
        scale = out.shape[1] // inp.shape[1]
        x = tf.keras.layers.Conv2D(out.shape[3] * scale * scale, 1, padding="same")(x)
        if scale > 1:
            x = tf.keras.layers.Lambda(lambda t, s=scale: tf.nn.depth_to_space(t, s))(x)
    model = tf.keras.Model(inputs, x)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if track.quantization == "int8" or inp.dtype in {"uint8", "int8"}:
        rng = np.random.default_rng(seed)

        def representative():
            for _ in range(8):
                yield [rng.random(tuple(inp.shape), dtype=np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = getattr(tf, _NP_DTYPES.get(inp.dtype, "int8"))
        converter.inference_output_type = getattr(tf, _NP_DTYPES.get(out.dtype, "int8"))
    return converter.convert()
