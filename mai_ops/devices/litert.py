"""Backend ``litert``: time a .tflite model with LiteRT on this machine's CPU.

This is the embedded default device. The model runs in ``python -m
mai_ops.devices.litert_child``, started by :func:`mai_ops.infra.child.run_child`: its own
process group, an address-space limit (``RLIMIT_AS``) and a wall-clock timeout, so a
model that hangs, eats the memory or crashes the runtime costs one failed benchmark,
never the worker. The child reports each stage as it is done (``ready``, ``loaded``,
``first``, ``warmup``, then ``result`` or ``error``), so a child killed mid-run has still
said how far it got.

Methodology, as TensorFlow Lite's ``benchmark_model``:

1. *init*: build the ``Interpreter`` (``num_threads=threads``, the default op resolver,
   which applies the XNNPACK delegate), resize dynamic inputs, ``allocate_tensors()``
   (where the delegate is applied and XNNPACK builds its runtime). ``init_ms`` is all of it.
2. Inputs: seeded random values of each input's dtype and shape, written once (floats
   uniform in [-0.5, 0.5) like ``benchmark_model``, 8-bit integers over their whole
   range, wider integers in [0, 100), booleans 0/1).
3. The first ``invoke()`` is timed alone (``first_ms``), then ``warmup`` more
   (``warmup_avg_ms``), then the timed runs: until at least ``min_runs`` runs AND
   ``min_seconds`` seconds, stopping at ``max_runs`` if given. Only ``invoke()`` is inside
   ``time.perf_counter_ns()``.
4. Statistics of the timed runs: mean, median, population standard deviation (as
   ``benchmark_model``'s ``std=``), p90 by linear interpolation, min, max, count.
   ``peak_rss_mb`` is the child's ``ru_maxrss`` (the whole process: Python, numpy and
   LiteRT take ~40 MiB before the model is opened, reported as ``base_rss_mb``).

Delegation: LiteRT's Python API does not say which nodes XNNPACK took, but the node list
does: the original nodes stay listed after ``DELEGATE`` nodes replace them. Walking back
from each ``DELEGATE`` node's outputs to its inputs finds the nodes it replaced; every
other node runs on LiteRT's own CPU kernels (``cpu_ops``). ``fully_delegated`` is true when
there are none.

Per-op profile: not available. LiteRT's Python ``Interpreter`` has no profiler hook (no
``benchmark_model --enable_op_profiling`` equivalent; ``CompiledModel`` has none either),
so ``ops`` is always empty from this backend; the ``adb`` backend fills it.

Limits: the memory limit is set on the child with ``prlimit`` by the parent right after
the process starts (before the request, hence before the model, is sent) and again by the
child itself with ``setrlimit`` before it imports numpy or LiteRT
(:mod:`mai_ops.infra.child`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mai_ops.devices.results import BenchmarkError, BenchmarkResult
from mai_ops.errors import stage_codes
from mai_ops.infra.child import ChildLimits, run_child

CHILD = "mai_ops.devices.litert_child"
_STAGE_NAMES = {
    "start": "start-up",
    "ready": "model loading",
    "loaded": "the first run",
    "first": "the warm-up runs",
    "warmup": "the timed runs",
}


def run_litert(
    model_path: str | Path,
    *,
    device: str = "litert",
    threads: int = 4,
    min_runs: int = 50,
    min_seconds: float = 1.0,
    max_runs: int | None = None,
    warmup: int = 5,
    input_shapes: Sequence[Sequence[int]] | Mapping[str, Sequence[int]] | None = None,
    timeout_s: float = 300,
    memory_mb: int = 4096,
    seed: int = 0,
) -> BenchmarkResult:
    """Benchmark ``model_path`` with LiteRT in a limited child process.

    ``input_shapes`` gives the shape of each input (in order, or by input name) for models
    with dynamic dimensions; only the dynamic (-1) dimensions may differ from the model's.
    Raises :class:`BenchmarkError` for every way the run can fail.
    """
    request = _request(
        model_path,
        threads=threads,
        min_runs=min_runs,
        min_seconds=min_seconds,
        max_runs=max_runs,
        warmup=warmup,
        input_shapes=input_shapes,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        seed=seed,
    )
    answer = _run_child(request, float(timeout_s), int(memory_mb))
    return _result(answer, device=device, threads=int(threads))


def _request(model_path: str | Path, **kw: Any) -> dict[str, Any]:
    def bad(message: str) -> BenchmarkError:
        return BenchmarkError("benchmark_bad_request", message)

    path = Path(model_path)
    if not path.is_file():
        raise bad(f"no model file at {str(path)!r}")
    for name in ("threads", "min_runs", "memory_mb"):
        if not _is_int(kw[name]) or kw[name] < 1:
            raise bad(f"{name} must be a positive integer, got {kw[name]!r}")
    if not _is_int(kw["warmup"]) or kw["warmup"] < 0:
        raise bad(f"warmup must be a non-negative integer, got {kw['warmup']!r}")
    if kw["max_runs"] is not None and (not _is_int(kw["max_runs"]) or kw["max_runs"] < 1):
        raise bad(f"max_runs must be a positive integer or None, got {kw['max_runs']!r}")
    for name in ("min_seconds", "timeout_s"):
        value = kw[name]
        if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
            raise bad(f"{name} must be a number >= 0, got {value!r}")
    if not kw["timeout_s"] > 0:
        raise bad("timeout_s must be > 0")
    shapes = kw.pop("input_shapes")
    if shapes is not None:
        try:
            if isinstance(shapes, Mapping):
                shapes = {str(k): [int(d) for d in v] for k, v in shapes.items()}
            else:
                shapes = [[int(d) for d in s] for s in shapes]
        except (TypeError, ValueError):
            raise bad(f"input_shapes must be lists of integers, got {shapes!r}") from None
    return {"model": str(path.resolve()), "input_shapes": shapes, **kw}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _run_child(request: dict[str, Any], timeout_s: float, memory_mb: int) -> dict[str, Any]:
    """The child's steps when it measured; a :class:`BenchmarkError` for every other end."""
    outcome = run_child(CHILD, request, ChildLimits(timeout_s=timeout_s, memory_mb=memory_mb))
    steps = outcome.steps
    stage = _STAGE_NAMES.get(outcome.last_step, "the report")
    if outcome.status == "timeout":
        done = ""
        if "warmup" in steps and "result" not in steps:
            done = " (the timed runs had not reached min_runs and min_seconds)"
        raise BenchmarkError(
            "benchmark_timeout", f"no result within {timeout_s:g} s, killed during {stage}{done}"
        )
    if outcome.status == "ok":
        if "error" in steps:
            error = steps["error"]
            code = error.get("code")
            code = code if code in stage_codes("benchmark") else "benchmark_crashed"
            raise BenchmarkError(code, str(error.get("message") or "no message"))
        if "result" in steps:
            return steps
        raise BenchmarkError("benchmark_crashed", f"finished without a result, during {stage}")
    if outcome.status == "crashed":
        raise BenchmarkError("benchmark_crashed", f"crashed during {stage}: {outcome.message}")
    message = f"ran out of memory during {stage} (limit {memory_mb} MiB): {outcome.message}"
    if "ready" not in steps:
        message += (
            " (the limit is below what Python, numpy and LiteRT need before any model is"
            " opened, about 150 MiB of address space)"
        )
    raise BenchmarkError("benchmark_memory_exceeded", message)


def _result(steps: dict[str, dict[str, Any]], *, device: str, threads: int) -> BenchmarkResult:
    loaded, first, warm, res = steps["loaded"], steps["first"], steps["warmup"], steps["result"]
    stats = res["stats"]
    return BenchmarkResult(
        device=device,
        backend="litert",
        threads=threads,
        init_ms=loaded["init_ms"],
        first_ms=first["first_ms"],
        warmup_avg_ms=warm["warmup_avg_ms"],
        avg_ms=stats["avg_ms"],
        median_ms=stats["median_ms"],
        std_ms=stats["std_ms"],
        p90_ms=stats["p90_ms"],
        min_ms=stats["min_ms"],
        max_ms=stats["max_ms"],
        count=stats["count"],
        peak_rss_mb=res["peak_rss_mb"],
        delegate=loaded.get("delegate"),
        fully_delegated=loaded.get("fully_delegated"),
        ops=[],
        cpu_ops=list(loaded.get("cpu_ops") or []),
        input_shapes=loaded.get("input_shapes") or [],
        base_rss_mb=steps.get("ready", {}).get("base_rss_mb"),
    )
