"""Read the text TensorFlow Lite's ``benchmark_model`` (and LiteRT's successor) prints.

Device runs come back as logs, not numbers, and the tool's output changed over the years:
``INFO:`` prefixes or none, Android logcat or glog prefixes, the one-line summary
(``Inference timings in us: ...``), the older ``Average inference timings in us: ...``,
LiteRT's ``BENCHMARK RESULTS`` block in milliseconds, op-profiling tables printed before or
after the summary. This module turns any of them into one :class:`BenchmarkLog` in
milliseconds, and refuses (:class:`BenchmarkLogError`, quoting the line at fault) anything
it cannot vouch for, so a broken run never scores as a fast one.

Which numbers are taken:

* The tool prints a warm-up ``count=`` line, then the main one, each after its
  ``Running benchmark for at least N iterations ...`` header. The second is the runtime.
  ``Timings (microseconds): count=...`` belongs to the op profiler and is never used.
* A summary line (or LiteRT block) must be present: the tool always prints one when the run
  finished, so its absence means a truncated log. Its average must agree with the main line.
  First-run and warm-up figures come from the warm-up line, which LiteRT does not round.
* A log reporting a failure anywhere (``Failed to apply GPU delegate``, ``failed to invoke``,
  ``Aborted``, ...) is refused even if timings were printed: the tool itself failed the run.
* ``delegate``: the delegate an ``Explicitly applied X delegate ...`` line names (preferring
  one that runs part of the graph, and an accelerator over XNNPACK); ``Though X delegate is
  explicitly applied, ... will not be executed`` gives X with ``fully_delegated=False`` and 0
  kernels, since the run fell back to the CPU. Without such lines a ``Replacing N out of M
  node(s) with delegate (K)`` line decides (LiteRT prints only that); failing that,
  ``Created TensorFlow Lite XNNPACK delegate for CPU.`` gives ``XNNPACK`` with unknown coverage.
* ``peak_memory_mb``: the periodic-monitoring peak when the run measured one, else the
  ``overall`` figure of ``Peak memory footprint (MB)`` or ``Memory footprint delta ... (MB)``
  (LiteRT: ``Peak memory``, else ``Overall footprint``), as printed, zero included.
* ``ops``: the first ``Summary by node type`` table of the regular runs; the one under
  ``Profiling Info for Benchmark Initialization`` times delegate set-up, not inference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from mai_ops.errors import NeedsOrganizer


class BenchmarkLogError(NeedsOrganizer, ValueError):
    """A log that gives no trustworthy runtime; re-running the benchmark is the fix."""


@dataclass(frozen=True)
class BenchmarkLog:
    """One benchmark run, times in milliseconds."""

    init_ms: float
    first_ms: float | None
    warmup_avg_ms: float | None
    avg_ms: float
    median_ms: float | None
    std_ms: float
    min_ms: float
    max_ms: float
    count: int
    delegate: str | None = None
    fully_delegated: bool | None = None
    delegate_kernels: int | None = None
    peak_memory_mb: float | None = None
    ops: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The fields results tables store; min, max and kernel count stay internal."""
        return {
            "init_ms": self.init_ms,
            "first_ms": self.first_ms,
            "warmup_avg_ms": self.warmup_avg_ms,
            "avg_ms": self.avg_ms,
            "median_ms": self.median_ms,
            "std_ms": self.std_ms,
            "count": self.count,
            "delegate": self.delegate,
            "fully_delegated": self.fully_delegated,
            "peak_memory_mb": self.peak_memory_mb,
            "ops": [dict(op) for op in self.ops],
        }


# --- line shapes -------------------------------------------------------------------------

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_NUMBER = re.compile(rf"^{_NUM}$")
_NAN = re.compile(r"^[-+]?nan$", re.IGNORECASE)

# Stripped repeatedly, so stacked prefixes (logcat + "INFO: ") also go.
_PREFIXES = (
    # adb logcat -v threadtime: "06-14 09:21:07.425  8841  8841 I tflite  : "
    re.compile(r"^\d{2}-\d{2}\s+\d{2}:\d{2}:\d{2}\.\d+\s+\d+\s+\d+\s+[VDIWEFA]\s+[^:]*:\s?"),
    # adb logcat -v brief: "I/tflite  ( 8841): "
    re.compile(r"^[VDIWEFA]/[^(:]+\(\s*\d+\):\s?"),
    # glog / absl: "2018-01-23 11:03:05.250868: I tf/x.cc:538] ", "I0000 00:00:17.2  62 a.cc:40] "
    re.compile(
        r"^(?:\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d+: )?[IWEF](?:\d{4} [\d:.]+\s+\d+)?"
        r"\s*[\w./-]+\.\w+:\d+\]\s?"
    ),
    # TFLite's own severity: "INFO: ", "ERROR: ", "VERBOSE: "
    re.compile(r"^(?:INFO|WARN|WARNING|ERROR|VERBOSE|DEBUG|FATAL):\s?"),
    # LiteRT's source location after the severity: "[./litert/tools/x.h:81] "
    re.compile(r"^\[[^\]\s]+:\d+\]\s?"),
)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_RUN_HEADER = re.compile(r"^Running benchmark for at least \d+ iterations? and at least ")
_PROFILE_TIMINGS = re.compile(r"^(?:Subgraph \(index: \d+\) )?Timings \(microseconds\):")
_SUMMARY = "Inference timings in us:"
_LEGACY_SUMMARY = "Average inference timings in us:"
_LITERT_FIELD = re.compile(
    r"^(?P<key>Model initialization|Warmup \(first\)|First inference|Warmup \(avg\)"
    r"|Inference \((?:avg|min|max|std|median)\)|Init footprint|Overall footprint|Peak memory):"
    r"\s*(?P<val>\S+)(?:\s*(?:ms|MB))?(?:\s*\((?P<runs>\d+) runs\))?\s*$"
)
_MEM_DELTA = re.compile(
    r"^Memory footprint delta from the start of the tool \(MB\): init=(\S+) overall=(\S+)"
)
_MEM_PEAK = re.compile(r"^Peak memory footprint \(MB\): init=(\S+) overall=(\S+)")
_MEM_MONITOR = re.compile(r"^Overall peak memory footprint \(MB\) via periodic monitoring: (\S+)")

_APPLIED = re.compile(
    r"^(?:Explicitly )?[Aa]pplied (?P<name>\S+(?: \S+)?) delegate(?P<rest>[,.].*)?$"
)
_NOT_EXECUTED = re.compile(
    r"^Though (?P<name>.+?) delegate is explicitly applied, the model graph will not be executed"
)
_KERNELS = re.compile(r"w/ (\d+) delegate kernels")
_REPLACING = re.compile(
    r"^Replacing (\d+) out of (\d+) node\(s\) with delegate \(([^)]+)\) node, "
    r"yielding (\d+) partitions"
)
_XNNPACK_CREATED = "Created TensorFlow Lite XNNPACK delegate for CPU."

_INIT_SECTION = "Profiling Info for Benchmark Initialization"
_REGULAR_SECTION = "Operator-wise Profiling Info for Regular Benchmark Runs"
_BY_NODE_TYPE = re.compile(r"^=+ Summary by node type =+$")
_TABLE_END = re.compile(
    r"^(?:Timings \(microseconds\)|Memory \(bytes\)|=+|Number of nodes executed|Subgraph \(index"
    r"|Primary graph|Operator-wise Profiling|Profiling Info|\d+ nodes observed)"
)
_ROW = re.compile(
    rf"^(?P<type>\S.*?)\s+(?P<count>\d+)\s+(?P<avg>{_NUM})\s+(?P<pct>{_NUM})%"
    rf"\s+{_NUM}%(?:\s+{_NUM})?(?:\s+\d+)?$"
)
_CSV_ROW = re.compile(
    rf"^(?P<type>.+?),\s*(?P<count>\d+),\s*(?P<avg>{_NUM}),\s*(?P<pct>{_NUM})%,"
    rf"\s*{_NUM}%(?:,\s*{_NUM})?(?:,\s*\d+)?$"
)

# A run that printed one of these did not finish cleanly, whatever numbers it printed before.
_FATAL = re.compile(
    r"Failed to (?:apply|allocate|invoke|mmap|compile|construct)\b|Benchmarking failed"
    r"|failed to invoke|^Aborted\b|Segmentation fault|core dumped|Fatal signal \d+"
    r"|terminate called|Check failed|Disallowed CPU fallback detected|^Killed\b|^Run failed$",
    re.IGNORECASE,
)

_DELEGATE_KERNELS = {  # kernel name in "Replacing ... (K) node" -> delegate
    "tflitexnnpackdelegate": "XNNPACK",
    "tflitegpudelegate": "GPU",
    "tflitegpudelegatev2": "GPU",
    "litert_cl": "GPU",
    "tflitennapidelegate": "NNAPI",
    "tflitehexagondelegate": "Hexagon",
}


def _quote(line: str) -> str:
    text = line.strip()
    if len(text) > 200:
        text = text[:197] + "..."
    return repr(text)


def _strip_prefix(raw: str) -> str:
    text = _ANSI.sub("", raw).strip()
    changed = True
    while changed and text:
        changed = False
        for prefix in _PREFIXES:
            m = prefix.match(text)
            if m and m.end():
                text = text[m.end() :].lstrip()
                changed = True
    return text


def _number(text: str, line: str) -> Decimal | None:
    """A printed number; None for the tool's ``nan`` (an average over zero runs)."""
    if _NAN.match(text):
        return None
    if not _NUMBER.match(text):
        raise BenchmarkLogError(f"malformed number {text!r} in {_quote(line)}")
    return Decimal(text)


def _ms_from_us(value: Decimal | None) -> float | None:
    return None if value is None else float(value / 1000)


def _float(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


@dataclass
class _Stat:
    """One ``count=...`` line, in microseconds."""

    count: int
    first: Decimal | None
    avg: Decimal | None
    std: Decimal | None
    min: Decimal | None
    max: Decimal | None
    median: Decimal | None
    line: str


def _parse_stat(content: str, line: str) -> _Stat:
    all_same = "(all same)" in content
    values: dict[str, Decimal | None] = {}
    for token in content.replace("(all same)", " ").split():
        key, sep, value = token.partition("=")
        if not sep or not key or not value:
            raise BenchmarkLogError(f"malformed timing token {token!r} in {_quote(line)}")
        values[key] = _number(value, line)
    count = values.get("count")
    if count is None or count != count.to_integral_value() or count < 0:
        raise BenchmarkLogError(f"timing line without a run count: {_quote(line)}")
    n = int(count)
    if n == 0:
        return _Stat(0, None, None, None, None, None, None, line)
    if all_same or n == 1:  # "count=1 curr=X", "count=50 curr=X(all same)"
        needed = ("curr",)
    else:
        needed = ("first", "curr", "min", "max", "avg", "std")
    missing = [k for k in needed if values.get(k) is None]
    if missing:
        names = ", ".join(f"{k}=" for k in missing)
        raise BenchmarkLogError(f"incomplete timing line (no {names}): {_quote(line)}")
    if all_same or n == 1:
        curr = values["curr"]
        return _Stat(n, curr, curr, Decimal(0), curr, curr, values.get("median"), line)
    return _Stat(
        n,
        values["first"],
        values["avg"],
        values["std"],
        values["min"],
        values["max"],
        values.get("median"),
        line,
    )


def _parse_summary(content: str, prefix: str, required: tuple[str, ...], line: str) -> dict:
    """``Key: value`` pairs after ``prefix``, in microseconds; all ``required`` must be there."""
    values: dict[str, Decimal | None] = {}
    for part in content[len(prefix) :].split(","):
        if not part.strip():
            continue
        key, sep, value = part.rpartition(":")
        if not sep or not key.strip() or not value.strip():
            raise BenchmarkLogError(
                f"malformed or truncated summary field {part.strip()!r} in {_quote(line)}"
            )
        values[key.strip()] = _number(value.strip(), line)
    if "no stats" in values and "Inference" not in values:  # the 2018 wording
        values["Inference"] = values["no stats"]
    missing = [k for k in required if k not in values]
    if missing:
        raise BenchmarkLogError(
            f"incomplete summary line (no {', '.join(missing)}; truncated?): {_quote(line)}"
        )
    return values


def _parse_row(content: str, csv: bool, line: str) -> dict[str, Any]:
    m = (_CSV_ROW if csv else _ROW).match(content)
    if not m:
        raise BenchmarkLogError(f"malformed row in 'Summary by node type': {_quote(line)}")
    return {
        "node_type": m["type"].strip(),
        "count": int(m["count"]),
        "avg_ms": float(Decimal(m["avg"])),
        "percent": float(Decimal(m["pct"])),
    }


@dataclass
class _Delegate:
    name: str
    fully: bool | None
    kernels: int | None


def _kernel_delegate(kernel: str) -> str:
    return _DELEGATE_KERNELS.get(kernel.lower(), kernel)


class _Scan:
    """One pass over the lines, remembering what each kind of line said."""

    def __init__(self) -> None:
        self.tail: list[str] = []
        self.fatal: list[str] = []
        self.runs: list[_Stat] = []
        self.open_header: str | None = None
        self.summaries: list[tuple[str, dict, str]] = []
        self.in_litert = False
        self.profile_timing: str | None = None
        self.applied: list[_Delegate] = []
        self.replacing: list[_Delegate] = []
        self.xnnpack_created = False
        self.memory: dict[str, Decimal | None] = {}
        self.section = "regular"
        self.table: str | None = None  # "header", "rows"
        self.table_csv = False
        self.collecting = False
        self.ops: list[dict[str, Any]] | None = None

    def feed(self, raw: str) -> None:
        content = _strip_prefix(raw)
        if not content:
            self.table = None
            return
        self.tail = [*self.tail[-2:], raw]
        if _FATAL.search(content):
            self.fatal.append(raw)
        if self.table and self._table_line(content, raw):
            return
        if self._profile_line(content) or self._timing_line(content, raw):
            return
        if self.in_litert and self._litert_line(content, raw):
            return
        self._context_line(content, raw)

    def _table_line(self, content: str, raw: str) -> bool:
        if self.table == "header":
            self.table = "rows"
            if "node type" in content.lower():
                self.table_csv = "," in content
                return True
        if _TABLE_END.match(content):
            self.table = None
            return False
        row = _parse_row(content, self.table_csv, raw)
        if self.collecting and self.ops is not None:
            self.ops.append(row)
        return True

    def _profile_line(self, content: str) -> bool:
        if _INIT_SECTION in content:
            self.section = "init"
        elif _REGULAR_SECTION in content:
            self.section = "regular"
        elif _BY_NODE_TYPE.match(content):
            self.table = "header"
            self.collecting = self.section == "regular" and self.ops is None
            if self.collecting:
                self.ops = []
        elif _PROFILE_TIMINGS.match(content):
            self.profile_timing = self.profile_timing or content
        else:
            return False
        return True

    def _timing_line(self, content: str, raw: str) -> bool:
        if _RUN_HEADER.match(content):
            self.open_header = raw
        elif content.startswith("count="):
            self.runs.append(_parse_stat(content, raw))
            self.open_header = None
        elif content.startswith(_SUMMARY):
            required = ("Init", "First inference", "Warmup (avg)", "Inference (avg)")
            self.summaries.append(("tflite", _parse_summary(content, _SUMMARY, required, raw), raw))
        elif content.startswith(_LEGACY_SUMMARY):
            required = ("Warmup", "Init", "Inference")
            values = _parse_summary(content, _LEGACY_SUMMARY, required, raw)
            self.summaries.append(("legacy", values, raw))
        elif content.strip("= ") == "BENCHMARK RESULTS":
            self.in_litert = True
            self.summaries.append(("litert", {}, raw))
        else:
            return False
        return True

    def _litert_line(self, content: str, raw: str) -> bool:
        values = self.summaries[-1][1]
        if set(content) == {"="}:
            self.in_litert = not values  # the Python tool rules the title off above and below
            return True
        m = _LITERT_FIELD.match(content)
        if not m:
            return False
        values[m["key"]] = _number(m["val"], raw)
        if m["runs"] is not None:
            values[m["key"] + " runs"] = int(m["runs"])
        return True

    def _context_line(self, content: str, raw: str) -> None:
        if m := _APPLIED.match(content):
            rest = m["rest"] or ""
            if "completely" in rest:
                self.applied.append(_Delegate(m["name"], True, 1))
            elif "partially" in rest:
                kernels = _KERNELS.search(rest)
                self.applied.append(_Delegate(m["name"], False, kernels and int(kernels[1])))
            else:
                self.applied.append(_Delegate(m["name"], None, None))
        elif m := _NOT_EXECUTED.match(content):
            self.applied.append(_Delegate(m["name"], False, 0))
        elif m := _REPLACING.match(content):
            replaced, total, kernel, partitions = int(m[1]), int(m[2]), m[3], int(m[4])
            fully = replaced == total and partitions == 1
            self.replacing.append(_Delegate(_kernel_delegate(kernel), fully, partitions))
        elif content == _XNNPACK_CREATED:
            self.xnnpack_created = True
        elif m := _MEM_MONITOR.match(content):
            self.memory.setdefault("monitor", _number(m[1], raw))
        elif m := _MEM_PEAK.match(content):
            _number(m[1], raw)
            self.memory.setdefault("peak", _number(m[2], raw))
        elif m := _MEM_DELTA.match(content):
            _number(m[1], raw)
            self.memory.setdefault("delta", _number(m[2], raw))

    # --- assembling ----------------------------------------------------------------------

    def _last_lines(self) -> str:
        return " | ".join(_quote(line) for line in self.tail) or "(none)"

    def result(self) -> BenchmarkLog:
        if self.fatal:
            raise BenchmarkLogError(
                f"benchmark_model reported a failure: {_quote(self.fatal[0])}; "
                f"last lines: {self._last_lines()}"
            )
        if len(self.summaries) > 1:
            quoted = ", ".join(_quote(raw) for _, _, raw in self.summaries)
            raise BenchmarkLogError(
                f"log holds {len(self.summaries)} benchmark results ({quoted}); give one run"
            )
        if len(self.runs) > 2:
            quoted = ", ".join(_quote(s.line) for s in self.runs)
            raise BenchmarkLogError(
                f"log holds {len(self.runs)} timing lines where one run prints two "
                f"(warm-up, then main): {quoted}"
            )
        warm = self.runs[0] if self.runs else None
        main = self.runs[1] if len(self.runs) == 2 else None
        if not self.summaries:
            self._no_summary(warm, main)
        kind, summary, summary_line = self.summaries[0]
        main_stats = self._main_stats(kind, summary, summary_line, main, warm)
        init, first, warmup_avg, summary_avg = self._summary_times(kind, summary, summary_line)
        if warm is not None:  # full precision, and what the summary repeats anyway
            first, warmup_avg = _ms_from_us(warm.first), _ms_from_us(warm.avg)
        if main is not None:
            self._check_agrees(summary_avg, main_stats["avg_ms"], summary_line, main.line)
        delegate = self._delegate()
        return BenchmarkLog(
            init_ms=init,
            first_ms=first,
            warmup_avg_ms=warmup_avg,
            **main_stats,
            delegate=None if delegate is None else delegate.name,
            fully_delegated=None if delegate is None else delegate.fully,
            delegate_kernels=None if delegate is None else delegate.kernels,
            peak_memory_mb=self._peak_memory(summary if kind == "litert" else {}),
            ops=self.ops or [],
        )

    def _no_summary(self, warm: _Stat | None, main: _Stat | None) -> None:
        if main is not None:
            raise BenchmarkLogError(
                f"main run timed ({_quote(main.line)}) but no 'Inference timings in us' "
                f"summary follows; truncated log? last lines: {self._last_lines()}"
            )
        if warm is not None and self.open_header is not None:
            raise BenchmarkLogError(
                f"main run started ({_quote(self.open_header)}) but never reported its "
                f"timings; truncated log? last lines: {self._last_lines()}"
            )
        if warm is not None:
            raise BenchmarkLogError(
                f"only the warm-up run was found ({_quote(warm.line)}); the main run and the "
                f"summary are missing; last lines: {self._last_lines()}"
            )
        if self.profile_timing is not None:
            raise BenchmarkLogError(
                f"only op-profiling output found: {_quote(self.profile_timing)} is the "
                f"profiler's total, not the benchmark timing, and the benchmark summary is "
                f"missing; last lines: {self._last_lines()}"
            )
        raise BenchmarkLogError(f"no benchmark timings found; last lines: {self._last_lines()}")

    def _main_stats(
        self, kind: str, summary: dict, line: str, main: _Stat | None, warm: _Stat | None
    ) -> dict[str, Any]:
        if main is not None:
            if main.count == 0 or main.avg is None:
                raise BenchmarkLogError(f"the main run has no iterations: {_quote(main.line)}")
            return {
                "avg_ms": _ms_from_us(main.avg),
                "median_ms": _ms_from_us(main.median),
                "std_ms": _ms_from_us(main.std),
                "min_ms": _ms_from_us(main.min),
                "max_ms": _ms_from_us(main.max),
                "count": main.count,
            }
        needed = ("Inference (avg)", "Inference (min)", "Inference (max)", "Inference (std)")
        if kind == "litert" and all(summary.get(k) is not None for k in needed):
            count = summary.get("Inference (avg) runs")
            if not count:
                raise BenchmarkLogError(f"the main run has no iterations: {_quote(line)}")
            return {
                "avg_ms": _float(summary["Inference (avg)"]),
                "median_ms": _float(summary.get("Inference (median)")),
                "std_ms": _float(summary["Inference (std)"]),
                "min_ms": _float(summary["Inference (min)"]),
                "max_ms": _float(summary["Inference (max)"]),
                "count": count,
            }
        if warm is not None:
            raise BenchmarkLogError(
                f"only one timing line ({_quote(warm.line)}), the warm-up; the main run's "
                f"'count=' line is missing before {_quote(line)}"
            )
        raise BenchmarkLogError(f"summary {_quote(line)} without the main run's 'count=' line")

    def _summary_times(
        self, kind: str, summary: dict, line: str
    ) -> tuple[float, float | None, float | None, float | None]:
        """init, first, warm-up avg and inference avg in ms, as the summary states them."""
        if kind == "litert":
            init = summary.get("Model initialization")
            if init is None:
                raise BenchmarkLogError(f"no 'Model initialization' under {_quote(line)}")
            first = summary.get("Warmup (first)", summary.get("First inference"))
            return (
                float(init),
                _float(first),
                _float(summary.get("Warmup (avg)")),
                _float(summary.get("Inference (avg)")),
            )
        init = summary["Init"]
        if init is None:
            raise BenchmarkLogError(f"summary without an init time: {_quote(line)}")
        if kind == "legacy":
            return (
                float(init / 1000),
                None,
                _ms_from_us(summary["Warmup"]),
                _ms_from_us(summary["Inference"]),
            )
        return (
            float(init / 1000),
            _ms_from_us(summary["First inference"]),
            _ms_from_us(summary["Warmup (avg)"]),
            _ms_from_us(summary["Inference (avg)"]),
        )

    @staticmethod
    def _check_agrees(summary_avg: float | None, avg: float, summary: str, main: str) -> None:
        # LiteRT rounds its block to 0.01 ms; TFLite prints the same double twice.
        if summary_avg is None or abs(summary_avg - avg) > max(0.0051, 1e-4 * abs(avg)):
            raise BenchmarkLogError(
                f"summary {_quote(summary)} disagrees with the main run {_quote(main)}; "
                "are two logs mixed?"
            )

    def _delegate(self) -> _Delegate | None:
        running = [d for d in self.applied if d.kernels != 0]
        pick = next((d for d in running if d.name != "XNNPACK"), None)
        pick = pick or (running[0] if running else None)
        pick = pick or (self.applied[0] if self.applied else None)
        if pick is not None:
            if pick.fully is None:
                same = next((r for r in self.replacing if r.name == pick.name), None)
                if same is not None:
                    return _Delegate(pick.name, same.fully, same.kernels)
            return pick
        if self.replacing:
            return next((r for r in self.replacing if r.name != "XNNPACK"), self.replacing[0])
        if self.xnnpack_created:
            return _Delegate("XNNPACK", None, None)
        return None

    def _peak_memory(self, litert: dict) -> float | None:
        for value in (
            self.memory.get("monitor"),
            litert.get("Peak memory"),
            self.memory.get("peak"),
            self.memory.get("delta"),
            litert.get("Overall footprint"),
        ):
            if value is not None:
                return float(value)
        return None


def _reject_binary(text: str) -> None:
    sample = text[:4096]
    odd = sum(1 for c in sample if (c < " " and c not in "\t\n\r\x1b") or c == "\ufffd")
    if "\x00" in sample or odd > len(sample) // 20:
        raise BenchmarkLogError(f"not a text log (binary data): starts with {sample[:40]!r}")


def parse_benchmark_log(text: str) -> BenchmarkLog:
    """The run ``text`` reports; :class:`BenchmarkLogError` quoting the fault otherwise."""
    if not text.strip():
        raise BenchmarkLogError("benchmark log is empty")
    _reject_binary(text)
    scan = _Scan()
    for raw in text.splitlines():
        scan.feed(raw)
    return scan.result()
