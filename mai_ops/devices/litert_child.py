"""The child of the ``litert`` backend: time a .tflite model with LiteRT on this CPU.

``python -m mai_ops.devices.litert_child``, started by
:func:`mai_ops.infra.child.run_child` for :func:`mai_ops.devices.litert.run_litert`,
whose docstring gives the methodology. Steps: ``ready`` (numpy and LiteRT imported),
``loaded`` (interpreter built and allocated, delegation), ``first``, ``warmup``,
``result`` (the statistics of the timed runs), then ``done``; or ``error`` with a
registered code of the benchmark stage (``benchmark_load_failed``,
``benchmark_invoke_failed``, ``benchmark_memory_exceeded``, ...).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from typing import Any

from mai_ops.infra.child import (
    MB,
    ChildChannel,
    ChildFailure,
    looks_out_of_memory,
    mapped_bytes,
    serve,
)


def summarize(samples_ns: Sequence[int]) -> dict[str, Any]:
    """Mean, median, population std, p90 (linear interpolation), min, max of run times."""
    if not samples_ns:
        raise ValueError("no samples")
    ms = sorted(s / 1e6 for s in samples_ns)
    n = len(ms)
    mean = math.fsum(ms) / n
    var = math.fsum((x - mean) ** 2 for x in ms) / n
    return {
        "count": n,
        "avg_ms": mean,
        "median_ms": _percentile(ms, 50),
        "std_ms": math.sqrt(var),
        "p90_ms": _percentile(ms, 90),
        "min_ms": ms[0],
        "max_ms": ms[-1],
    }


def _percentile(sorted_ms: Sequence[float], p: float) -> float:
    k = (len(sorted_ms) - 1) * p / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(sorted_ms) - 1)
    return sorted_ms[lo] + (k - lo) * (sorted_ms[hi] - sorted_ms[lo])


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> int:
    return serve(_benchmark)


def _classify(exc: BaseException, code: str, what: str, memory_mb: int) -> ChildFailure:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, MemoryError) or looks_out_of_memory(text):
        return ChildFailure(
            "benchmark_memory_exceeded", f"{what}: out of memory (limit {memory_mb} MiB): {text}"
        )
    return ChildFailure(code, f"{what}: {text}")


def _benchmark(request: dict[str, Any], channel: ChildChannel) -> None:
    if "model" not in request:
        raise ChildFailure("benchmark_bad_request", "unreadable request: expected 'model'")
    memory_mb = int(request["memory_mb"])
    try:
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter
    except (ImportError, OSError, MemoryError) as exc:
        # Under a tight RLIMIT_AS a shared library may not even map.
        failure = _classify(
            exc, "benchmark_crashed", "importing numpy and LiteRT failed", memory_mb
        )
        if failure.code == "benchmark_memory_exceeded":
            failure = ChildFailure(
                "benchmark_memory_exceeded",
                f"{failure} (the limit is below what the runtime needs before any model"
                " is opened, about 150 MiB of address space)",
            )
        raise failure from None

    threads = int(request.get("threads", 4))
    channel.send("ready", base_rss_mb=_rss_mb())

    clock = time.perf_counter_ns
    start = clock()
    try:
        interpreter = Interpreter(model_path=request["model"], num_threads=threads)
    except (ValueError, RuntimeError, MemoryError) as exc:
        raise _classify(
            exc, "benchmark_load_failed", "LiteRT cannot open the model", memory_mb
        ) from None
    _resize(interpreter, request.get("input_shapes"))
    try:
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError, MemoryError) as exc:
        failure = _classify(exc, "benchmark_load_failed", "allocate_tensors failed", memory_mb)
        if failure.code != "benchmark_memory_exceeded":
            failure = _allocation_memory(interpreter, failure, memory_mb)
        raise failure from None
    init_ns = clock() - start

    inputs = interpreter.get_input_details()
    delegation = _delegation(interpreter._interpreter)  # noqa: SLF001 - node list only there
    channel.send(
        "loaded",
        init_ms=init_ns / 1e6,
        input_shapes=[[int(x) for x in d["shape"]] for d in inputs],
        **delegation,
    )

    rng = np.random.default_rng(int(request.get("seed", 0)))
    try:
        for d in inputs:
            interpreter.set_tensor(d["index"], _sample(np, rng, d["shape"], d["dtype"]))
    except (ValueError, RuntimeError, MemoryError) as exc:
        raise _classify(
            exc, "benchmark_invoke_failed", "setting the inputs failed", memory_mb
        ) from None

    invoke = interpreter.invoke

    def timed() -> int:
        t0 = clock()
        invoke()
        return clock() - t0

    try:
        first_ns = timed()
        channel.send("first", first_ms=first_ns / 1e6)
        warm = [timed() for _ in range(int(request.get("warmup", 5)))]
        channel.send("warmup", warmup_avg_ms=sum(warm) / len(warm) / 1e6 if warm else None)

        min_runs = int(request.get("min_runs", 50))
        max_runs = request.get("max_runs")
        min_ns = int(float(request.get("min_seconds", 1.0)) * 1e9)
        samples: list[int] = []
        begin = clock()
        while len(samples) < min_runs or clock() - begin < min_ns:
            if max_runs is not None and len(samples) >= int(max_runs):
                break
            samples.append(timed())
    except (ValueError, RuntimeError, MemoryError) as exc:
        raise _classify(exc, "benchmark_invoke_failed", "invoke failed", memory_mb) from None

    channel.send("result", stats=summarize(samples), peak_rss_mb=_rss_mb())


def _allocation_memory(interpreter, failure: ChildFailure, memory_mb: int) -> ChildFailure:
    """``failure`` as ``memory_exceeded`` when the tensors cannot fit in the limit.

    An allocation that fails under RLIMIT_AS rarely says so: XNNPACK reports "failed to
    reshape runtime", TFLite's arena "failed to prepare". What is already mapped plus the
    largest tensor (a lower bound of what the model needs), or plus all of them (an upper
    bound, no arena sharing), over the limit makes memory the likely cause.
    """
    import numpy as np

    sizes = []
    for d in interpreter.get_tensor_details():
        try:
            size = np.dtype(d["dtype"]).itemsize
        except TypeError:
            size = 4
        for x in d["shape"]:
            size *= max(int(x), 1)
        sizes.append(size)
    limit = memory_mb * MB
    mapped = mapped_bytes()
    largest, total = max(sizes, default=0), sum(sizes)
    if mapped + largest <= limit and mapped + total <= limit:
        return failure
    need = f"{largest / MB:.0f} to {total / MB:.0f} MiB"
    return ChildFailure(
        "benchmark_memory_exceeded",
        f"{str(failure).rstrip('. ')}; the model's tensors need {need},"
        f" {mapped / MB:.0f} MiB were already mapped, the limit is {memory_mb} MiB",
    )


def _resize(interpreter, shapes: list[list[int]] | dict[str, list[int]] | None) -> None:
    if not shapes:
        return
    details = interpreter.get_input_details()
    names = [d["name"] for d in details]
    if isinstance(shapes, dict):
        unknown = sorted(set(shapes) - set(names))
        if unknown:
            raise ChildFailure(
                "benchmark_bad_request", f"no input named {unknown} (inputs: {names})"
            )
        wanted = [(d, shapes[d["name"]]) for d in details if d["name"] in shapes]
    else:
        if len(shapes) != len(details):
            raise ChildFailure(
                "benchmark_bad_request",
                f"{len(shapes)} input shape(s) given, the model has {len(details)}",
            )
        wanted = list(zip(details, shapes, strict=True))
    for d, shape in wanted:
        if [int(x) for x in d["shape"]] == list(shape):
            continue
        try:
            interpreter.resize_tensor_input(d["index"], shape, strict=True)
        except (ValueError, RuntimeError) as exc:
            signature = [int(x) for x in d["shape_signature"]]
            raise ChildFailure(
                "benchmark_bad_request",
                f"input {d['name']!r} {signature} cannot take shape {list(shape)}: {exc}",
            ) from None


def _delegation(wrapper) -> dict[str, Any]:
    """Which nodes the XNNPACK delegate replaced, from the interpreter's node list."""
    nodes = []
    for i in range(wrapper.NumNodes()):
        nodes.append(
            (
                wrapper.NodeName(i),
                [int(t) for t in wrapper.NodeInputs(i)],
                [int(t) for t in wrapper.NodeOutputs(i)],
            )
        )
    producer = {}
    for i, (name, _, outs) in enumerate(nodes):
        if name != "DELEGATE":
            for t in outs:
                producer[t] = i
    replaced: set[int] = set()
    delegates = [n for n in nodes if n[0] == "DELEGATE"]
    for _, ins, outs in delegates:
        boundary = set(ins)
        stack = list(outs)
        seen: set[int] = set()
        while stack:
            t = stack.pop()
            if t in seen or t in boundary or t not in producer:
                continue
            seen.add(t)
            node = producer[t]
            replaced.add(node)
            stack.extend(nodes[node][1])
    cpu_ops = [
        name for i, (name, _, _) in enumerate(nodes) if name != "DELEGATE" and i not in replaced
    ]
    return {
        "delegate": "XNNPACK" if delegates else None,
        "fully_delegated": bool(delegates) and not cpu_ops,
        "cpu_ops": cpu_ops,
    }


def _sample(np, rng, shape, dtype):
    shape = tuple(int(x) for x in shape)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return (rng.random(shape, dtype=np.float32) - 0.5).astype(dtype)
    if dtype.kind in "iu":
        if dtype.itemsize == 1:
            info = np.iinfo(dtype)
            return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
        return rng.integers(0, 100, size=shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 1, size=shape, endpoint=True).astype(bool)
    return np.zeros(shape, dtype)


if __name__ == "__main__":
    sys.exit(main())
