"""What a benchmark gives back, whatever backend measured it.

Both backends (:mod:`mai_ops.devices.litert`, :mod:`mai_ops.devices.adb`) return a
:class:`BenchmarkResult` or raise a :class:`BenchmarkError`, so scoring, records and
emails never need to know which one ran.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mai_ops.errors import StageError


class BenchmarkError(StageError):
    """A benchmark that gave no runtime: a registered ``code`` and a readable ``message``.

    Codes are the registry's ``benchmark`` stage (:mod:`mai_ops.errors`, docs/errors.md):
    from ``litert`` e.g. ``benchmark_load_failed``, ``benchmark_timeout``,
    ``benchmark_memory_exceeded``, ``benchmark_crashed``; from ``adb`` also
    ``benchmark_device_offline``, ``benchmark_adb_failed``, ``benchmark_partial_delegation``.
    """

    def __init__(self, code: str, message: str):
        super().__init__(code, message)
        assert self.stage == "benchmark", code


@dataclass
class BenchmarkResult:
    """One benchmark run on one device, times in milliseconds."""

    device: str
    backend: str
    threads: int
    init_ms: float
    first_ms: float | None
    warmup_avg_ms: float | None
    avg_ms: float
    median_ms: float | None
    std_ms: float | None
    p90_ms: float | None
    min_ms: float | None
    max_ms: float | None
    count: int
    peak_rss_mb: float | None
    delegate: str | None = None
    fully_delegated: bool | None = None
    ops: list = field(default_factory=list)
    cpu_ops: list[str] = field(default_factory=list)
    input_shapes: list[list[int]] = field(default_factory=list)
    base_rss_mb: float | None = None

    JSON_KEYS: ClassVar[tuple[str, ...]] = (
        "device",
        "backend",
        "threads",
        "init_ms",
        "first_ms",
        "warmup_avg_ms",
        "avg_ms",
        "median_ms",
        "std_ms",
        "p90_ms",
        "min_ms",
        "max_ms",
        "count",
        "peak_rss_mb",
    )

    def as_json(self) -> dict[str, Any]:
        """The figures a score record keeps (times rounded to the microsecond)."""
        out: dict[str, Any] = {}
        for key in self.JSON_KEYS:
            value = getattr(self, key)
            out[key] = round(value, 3) if isinstance(value, float) else value
        return out


# --- where a runtime was measured, said next to the number everywhere it is shown ------


def device_title(challenge: Any, name: str | None) -> str:
    """The device's title in the challenge file, or its name when it has none (or is gone)."""
    if not name:
        return "the track's device"
    try:
        device = challenge.device(name)
    except KeyError:
        return name
    return device.title or device.name


def is_stand_in(row: Mapping[str, Any]) -> bool:
    """A runtime measured by LiteRT on the server's CPU, standing in for the device."""
    return row.get("runtime_ms") is not None and row.get("backend") == "litert"


def runtime_note(challenge: Any, row: Mapping[str, Any]) -> str | None:
    """Where the runtime of ``row`` was measured, said next to the number; None without one.

    ``litert``: "LiteRT on the server CPU, standing in for <device title>"; ``adb``:
    "measured on <device title>".
    """
    if row.get("runtime_ms") is None:
        return None
    title = device_title(challenge, row.get("device"))
    if is_stand_in(row):
        return f"LiteRT on the server CPU, standing in for {title}"
    return f"measured on {title}"
