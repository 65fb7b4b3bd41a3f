"""The child of :func:`mai_ops.models.conversion.convert_in_child`: convert a team's model.

``python -m mai_ops.models.conversion_child``, started by
:func:`mai_ops.infra.child.run_child`. Loading a SavedModel or a Keras file runs the
team's code, so it happens here, under the child's limits. Steps: ``converted`` then
``done``, or ``error`` with the converter's reason (code ``conversion_failed``).
"""

from __future__ import annotations

import sys
from typing import Any

from mai_ops.infra.child import ChildChannel, ChildFailure, serve


def main() -> int:
    return serve(_convert)


def _convert(request: dict[str, Any], channel: ChildChannel) -> None:
    from mai_ops.models.conversion import ConversionError, convert_model

    representative = None
    if request["mode"] == "int8":
        import numpy as np

        if request["representative"]:
            representative = np.load(request["representative"], allow_pickle=False)
        else:
            rng = np.random.default_rng(0)
            shape = (8, *request["shape"][1:])
            representative = rng.random(shape, dtype=np.float32)
    try:
        convert_model(
            request["source"],
            request["out"],
            request["mode"],
            representative,
            input_dtype=request["input_dtype"],
            output_dtype=request["output_dtype"],
        )
    except ConversionError as exc:
        raise ChildFailure("conversion_failed", exc.message, details=exc.details[:20000]) from None
    channel.send("converted", out=request["out"])


if __name__ == "__main__":
    sys.exit(main())
