"""benchmark_model logs as the tool printed them over the years, good and broken.

Every good fixture pins exact numbers, so a parser that takes the warm-up line, the
profiler's total or a rounded summary instead of the main run fails here, not in results.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mai_ops.cli import main
from mai_ops.devices.benchmark_log import (
    BenchmarkLog,
    BenchmarkLogError,
    parse_benchmark_log,
)
from mai_ops.errors import NeedsOrganizer

FIXTURES = Path(__file__).parent / "fixtures" / "benchmark_logs"
BROKEN = FIXTURES / "broken"

_NO_DELEGATE = {"delegate": None, "fully_delegated": None, "delegate_kernels": None}

# Every field of BenchmarkLog but ops, per fixture; ops in OPS below.
EXPECTED: dict[str, dict] = {
    "tflite_cpu_info_prefix_xnnpack_default": {
        "init_ms": 41.962, "first_ms": 21.833, "warmup_avg_ms": 15.3124,
        "avg_ms": 15.0982, "median_ms": None, "std_ms": 0.348,
        "min_ms": 14.655, "max_ms": 16.39, "count": 66,
        "delegate": "XNNPACK", "fully_delegated": None, "delegate_kernels": None,
        "peak_memory_mb": 38.8125,
    },
    "tflite_gpu_full_mixed_prefix_peak_rss": {
        "init_ms": 1193.42, "first_ms": 45.817, "warmup_avg_ms": 18.2649,
        "avg_ms": 17.3775, "median_ms": None, "std_ms": 0.402,
        "min_ms": 16.812, "max_ms": 18.733, "count": 57,
        "delegate": "GPU", "fully_delegated": True, "delegate_kernels": 1,
        "peak_memory_mb": 57.6602,
    },
    "tflite_gpu_partial_3_kernels": {
        "init_ms": 2210.388, "first_ms": 61.234, "warmup_avg_ms": 42.0503,
        "avg_ms": 40.7336, "median_ms": None, "std_ms": 0.812,
        "min_ms": 39.544, "max_ms": 43.89, "count": 50,
        "delegate": "GPU", "fully_delegated": False, "delegate_kernels": 3,
        "peak_memory_mb": 104.211,
    },
    "tflite_nnapi_full_logcat_threadtime": {
        "init_ms": 249.318, "first_ms": 26.402, "warmup_avg_ms": 4.26105,
        "avg_ms": 3.98347, "median_ms": None, "std_ms": 0.096,
        "min_ms": 3.871, "max_ms": 4.62, "count": 251,
        "delegate": "NNAPI", "fully_delegated": True, "delegate_kernels": 1,
        "peak_memory_mb": 7.82812,
    },
    "tflite_nnapi_not_executed_cpu_fallback": {
        "init_ms": 152.77, "first_ms": 27.118, "warmup_avg_ms": 21.4739,
        "avg_ms": 21.1403, "median_ms": None, "std_ms": 0.296,
        "min_ms": 20.874, "max_ms": 22.41, "count": 50,
        "delegate": "NNAPI", "fully_delegated": False, "delegate_kernels": 0,
        "peak_memory_mb": 31.6289,
    },
    "tflite_xnnpack_explicit_partial_indented": {
        "init_ms": 587.114, "first_ms": 629.874, "warmup_avg_ms": 629.874,
        "avg_ms": 599.812, "median_ms": None, "std_ms": 26.914,
        "min_ms": 566.931, "max_ms": 719.24, "count": 50,
        "delegate": "XNNPACK", "fully_delegated": False, "delegate_kernels": 1,
        "peak_memory_mb": 297.543,
    },
    "tflite_gpu_percentiles": {
        "init_ms": 1342.87, "first_ms": 124.871, "warmup_avg_ms": 115.13,
        "avg_ms": 115.082, "median_ms": 115.204, "std_ms": 1.318,
        "min_ms": 111.733, "max_ms": 119.441, "count": 50,
        "delegate": "GPU", "fully_delegated": True, "delegate_kernels": 1,
        "peak_memory_mb": 18.1758,
    },
    "tflite_all_same_coarse_timer": {
        "init_ms": 3.0, "first_ms": 2.0, "warmup_avg_ms": 1.002,
        "avg_ms": 1.0, "median_ms": None, "std_ms": 0.0,
        "min_ms": 1.0, "max_ms": 1.0, "count": 1000,
        **_NO_DELEGATE, "peak_memory_mb": 0.0,
    },
    "tflite_scientific_notation_slow_model": {
        "init_ms": 512.844, "first_ms": 3012.617, "warmup_avg_ms": 3012.617,
        "avg_ms": 2950.34, "median_ms": None, "std_ms": 12.087,
        "min_ms": 2931.774, "max_ms": 2987.352, "count": 50,
        **_NO_DELEGATE, "peak_memory_mb": 411.488,
    },
    "tflite_op_profiling_init_and_regular_sections": {
        "init_ms": 35.208, "first_ms": 20.117, "warmup_avg_ms": 16.1228,
        "avg_ms": 15.4613, "median_ms": None, "std_ms": 0.53,
        "min_ms": 14.703, "max_ms": 17.655, "count": 65,
        "delegate": "XNNPACK", "fully_delegated": None, "delegate_kernels": None,
        "peak_memory_mb": 34.957,
    },
    "tflite_2_2_applied_gpu_w_the_delegate_tab_profiling": {
        "init_ms": 1398.27, "first_ms": 11.823, "warmup_avg_ms": 9.00531,
        "avg_ms": 8.84312, "median_ms": None, "std_ms": 0.602,
        "min_ms": 7.704, "max_ms": 10.525, "count": 113,
        "delegate": "GPU", "fully_delegated": True, "delegate_kernels": 1,
        "peak_memory_mb": 63.1055,
    },
    "tflite_2019_average_timings_profile_before_summary": {
        "init_ms": 36.912, "first_ms": 84.102, "warmup_avg_ms": 80.8226,
        "avg_ms": 79.7854, "median_ms": None, "std_ms": 1.902,
        "min_ms": 77.419, "max_ms": 88.17, "count": 50,
        **_NO_DELEGATE, "peak_memory_mb": None,
    },
    "tflite_2018_average_timings_no_stats": {
        "init_ms": 10.214, "first_ms": 121.907, "warmup_avg_ms": 71.8406,
        "avg_ms": 64.5302, "median_ms": None, "std_ms": 0.096,
        "min_ms": 64.305, "max_ms": 64.987, "count": 50,
        **_NO_DELEGATE, "peak_memory_mb": None,
    },
    "litert_benchmark_results_block_gpu": {
        "init_ms": 412.33, "first_ms": 9.811, "warmup_avg_ms": 5.2167,
        "avg_ms": 5.17842, "median_ms": 5.15, "std_ms": 0.121,
        "min_ms": 4.961, "max_ms": 6.012, "count": 193,
        "delegate": "GPU", "fully_delegated": True, "delegate_kernels": 1,
        "peak_memory_mb": 74.66,
    },
    "tflite_periodic_peak_memory_xnnpack_replacing": {
        "init_ms": 3.412, "first_ms": 80.121, "warmup_avg_ms": 58.4026,
        "avg_ms": 56.2714, "median_ms": None, "std_ms": 1.004,
        "min_ms": 54.801, "max_ms": 60.117, "count": 50,
        "delegate": "XNNPACK", "fully_delegated": False, "delegate_kernels": 2,
        "peak_memory_mb": 93.2383,
    },
}  # fmt: skip


def _op(node_type: str, count: int, avg_ms: float, percent: float) -> dict:
    return {"node_type": node_type, "count": count, "avg_ms": avg_ms, "percent": percent}


OPS: dict[str, list[dict]] = {
    "tflite_op_profiling_init_and_regular_sections": [
        _op("Convolution (NHWC, QC8) GEMM", 62, 5.301, 34.46),
        _op("Convolution (NHWC, QC8) DWConv", 51, 4.487, 29.169),
        _op("TFLite_Detection_PostProcess", 1, 3.688, 23.974),
        _op("Convert (NC, QS8, F32)", 2, 0.871, 5.662),
        _op("Convolution (NHWC, QC8) IGEMM", 1, 0.41, 2.665),
        _op("RESIZE_NEAREST_NEIGHBOR", 12, 0.271, 1.762),
        _op("QUANTIZE", 1, 0.205, 1.333),
        _op("Add (ND, QS8)", 18, 0.15, 0.975),
    ],
    "tflite_2_2_applied_gpu_w_the_delegate_tab_profiling": [
        _op("TfLiteGpuDelegateV2", 1, 8.797, 100.0),
    ],
    "tflite_2019_average_timings_profile_before_summary": [
        _op("CONV_2D", 15, 71.206, 89.276),
        _op("DEPTHWISE_CONV_2D", 13, 8.552, 10.722),
        _op("AVERAGE_POOL_2D", 1, 0.001, 0.001),
        _op("SOFTMAX", 1, 0.001, 0.001),
        _op("RESHAPE", 1, 0.0, 0.0),
    ],
}


def fixture(name: str) -> str:
    return (FIXTURES / f"{name}.log").read_text()


# --- every format --------------------------------------------------------------------------


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in EXPECTED])
def test_fixture_parses_to_exact_numbers(name):
    log = parse_benchmark_log(fixture(name))
    fields = {k: v for k, v in vars(log).items() if k != "ops"}
    assert fields == EXPECTED[name]
    assert log.ops == OPS.get(name, [])


def test_every_fixture_file_has_expected_numbers():
    assert sorted(p.stem for p in FIXTURES.glob("*.log")) == sorted(EXPECTED)
    assert len(EXPECTED) >= 10


def test_as_json_has_exactly_the_stored_keys():
    log = parse_benchmark_log(fixture("tflite_op_profiling_init_and_regular_sections"))
    data = log.as_json()
    assert list(data) == [
        "init_ms", "first_ms", "warmup_avg_ms", "avg_ms", "median_ms", "std_ms",
        "count", "delegate", "fully_delegated", "peak_memory_mb", "ops",
    ]  # fmt: skip
    assert json.loads(json.dumps(data)) == data
    assert data["ops"][0] == _op("Convolution (NHWC, QC8) GEMM", 62, 5.301, 34.46)


def test_profiler_total_is_not_the_inference_time():
    text = fixture("tflite_op_profiling_init_and_regular_sections")
    assert "Timings (microseconds): count=65 first=15831" in text
    log = parse_benchmark_log(text)
    assert (log.avg_ms, log.min_ms, log.count) == (15.4613, 14.703, 65)


# A minimal run, re-emitted under each prefix style the tool's output has been seen with.
_CORE = """\
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=12 first=900 curr=610 min=600 max=900 avg=650.5 std=80

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=50 first=123 curr=118 min=110 max=140 avg=120.5 std=5

Inference timings in us: Init: 12345, First inference: 900, Warmup (avg): 650.5, Inference (avg): 120.5
Peak memory footprint (MB): init=3.1 overall=12.0
"""  # noqa: E501

_PREFIXES = {
    "bare": "",
    "info": "INFO: ",
    "indented": "    ",
    "tab_indented": "\t",
    "logcat_threadtime": "06-14 09:21:07.425  8841  8841 I tflite  : ",
    "logcat_brief": "I/tflite  ( 8841): ",
    "glog": "2024-03-01 10:00:00.123456: I tensorflow/lite/tools/benchmark/benchmark.cc:251] ",
    "absl": "I0000 00:00:1758455106.022223   62590 benchmark_model.cc:251] ",
    "litert_location": "INFO: [./litert/tools/benchmark_litert_model.h:81] ",
}  # fmt: skip


@pytest.mark.parametrize("prefix", [pytest.param(v, id=k) for k, v in _PREFIXES.items()])
def test_line_prefixes_do_not_change_the_numbers(prefix):
    text = "".join(prefix + line + "\r\n" for line in _CORE.splitlines())
    log = parse_benchmark_log(text)
    assert (log.init_ms, log.first_ms, log.warmup_avg_ms) == (12.345, 0.9, 0.6505)
    assert (log.avg_ms, log.std_ms, log.min_ms, log.max_ms, log.count) == (
        0.1205, 0.005, 0.11, 0.14, 50,
    )  # fmt: skip
    assert log.peak_memory_mb == 12.0


def test_an_executing_accelerator_wins_over_one_that_refused_the_graph():
    text = _CORE + (
        "Explicitly applied GPU delegate, and the model graph will be completely executed by "
        "the delegate.\n"
        "Though NNAPI delegate is explicitly applied, the model graph will not be executed by "
        "the delegate.\n"
        "Created TensorFlow Lite XNNPACK delegate for CPU.\n"
    )
    log = parse_benchmark_log(text)
    assert (log.delegate, log.fully_delegated, log.delegate_kernels) == ("GPU", True, 1)


def test_warmup_with_no_runs_leaves_first_and_warmup_unknown():
    text = _CORE.replace("count=12 first=900 curr=610 min=600 max=900 avg=650.5 std=80", "count=0")
    text = text.replace(
        "First inference: 900, Warmup (avg): 650.5", "First inference: 0, Warmup (avg): -nan"
    )
    log = parse_benchmark_log(text)
    assert (log.first_ms, log.warmup_avg_ms, log.avg_ms) == (None, None, 0.1205)


# --- broken input --------------------------------------------------------------------------

_CPU = "tflite_cpu_info_prefix_xnnpack_default"
_MAIN_LINE = "INFO: count=66 first=15102 curr=14877 min=14655 max=16390 avg=15098.2 std=348"
_MAIN_HEADER = "INFO: Running benchmark for at least 50 iterations"
_SUMMARY = "INFO: Inference timings in us: Init: 41962"
_CUT_ROW = "QUANTIZE                1            0.2"


def _cut_after(name: str, marker: str, keep: int = 0) -> str:
    """The fixture up to ``marker``, plus ``keep`` characters of it: a log cut short."""
    text = fixture(name)
    return text[: text.index(marker) + keep]


def _profiling_only() -> str:
    text = fixture("tflite_op_profiling_init_and_regular_sections")
    return text[text.index("INFO: Operator-wise Profiling Info") :]


def _cut_in_op_summary_row(node_type: str, keep: int) -> str:
    """The profiling fixture cut ``keep`` characters into a 'Summary by node type' row."""
    text = fixture("tflite_op_profiling_init_and_regular_sections")
    row = text.index(node_type, text.rindex("Summary by node type"))
    return text[: row + keep]


def _two_runs() -> str:
    return fixture(_CPU) + fixture("tflite_gpu_percentiles")


_BROKEN = [
    pytest.param("", "benchmark log is empty", id="empty"),
    pytest.param(" \n\t\n", "benchmark log is empty", id="blank"),
    pytest.param(
        bytes(range(256)).decode("latin-1") * 4,
        re.escape(r"not a text log (binary data): starts with '\x00\x01\x02"),
        id="garbage-binary",
    ),
    pytest.param(
        "lorem ipsum dolor\nsit amet\n",
        re.escape("no benchmark timings found; last lines: 'lorem ipsum dolor' | 'sit amet'"),
        id="garbage-text",
    ),
    pytest.param(
        _cut_after(_CPU, _MAIN_LINE, keep=_MAIN_LINE.index("max=") + 6),
        re.escape("incomplete timing line (no avg=, std=): 'INFO: count=66 first=15102"),
        id="truncated-mid-count-line",
    ),
    pytest.param(
        _cut_after(_CPU, _SUMMARY, keep=len(_SUMMARY + ", First inference: 21833, Warmup (av")),
        re.escape("malformed or truncated summary field 'Warmup (av' in 'INFO: Inference timings"),
        id="truncated-mid-summary",
    ),
    pytest.param(
        _cut_after(_CPU, _SUMMARY),
        re.escape(f"main run timed ('{_MAIN_LINE}') but no 'Inference timings in us' summary"),
        id="truncated-before-summary",
    ),
    pytest.param(
        _cut_after(_CPU, _MAIN_HEADER, keep=len(_MAIN_HEADER)) + " and at least 1 seconds\n",
        re.escape(f"main run started ('{_MAIN_HEADER} and at least 1 seconds')"),
        id="truncated-after-main-header",
    ),
    pytest.param(
        _cut_after(_CPU, _MAIN_HEADER),
        re.escape("only the warm-up run was found ('INFO: count=33 first=21833"),
        id="only-warmup",
    ),
    pytest.param(
        fixture(_CPU).replace(_MAIN_LINE + "\n", ""),
        re.escape("the main run's 'count=' line is missing before 'INFO: Inference timings"),
        id="summary-without-main-line",
    ),
    pytest.param(
        _profiling_only(),
        re.escape("only op-profiling output found: 'Timings (microseconds): count=65 first=15831"),
        id="profiling-table-without-summary",
    ),
    pytest.param(
        fixture(_CPU).replace("avg=15098.2", "avg=abc"),
        re.escape("malformed number 'abc' in 'INFO: count=66 first=15102 curr=14877"),
        id="non-numeric-value",
    ),
    pytest.param(
        fixture(_CPU).replace("overall=38.8125", "overall=n/a"),
        re.escape("malformed number 'n/a' in 'INFO: Memory footprint delta"),
        id="non-numeric-memory",
    ),
    pytest.param(
        fixture(_CPU).replace(_MAIN_LINE, "INFO: count=0"),
        re.escape("the main run has no iterations: 'INFO: count=0'"),
        id="main-run-without-iterations",
    ),
    pytest.param(
        (BROKEN / "crash_failed_to_apply_gpu_delegate.log").read_text(),
        re.escape(
            "benchmark_model reported a failure: 'ERROR: Failed to apply GPU delegate.'; "
            "last lines: 'ERROR: Restored original execution plan"
        ),
        id="crash-failed-to-apply-gpu-delegate",
    ),
    pytest.param(
        (BROKEN / "crash_aborted_during_main_run.log").read_text(),
        re.escape("failure: \"terminate called after throwing an instance of 'std::bad_alloc'\""),
        id="crash-aborted",
    ),
    pytest.param(
        fixture(_CPU).replace(_MAIN_HEADER, "ERROR: Node number 12 (CONV_2D) failed to invoke.\n"
                              + _MAIN_HEADER) + "ERROR: Benchmarking failed.\n",
        re.escape("failure: 'ERROR: Node number 12 (CONV_2D) failed to invoke.'"),
        id="invoke-failure-despite-timings",
    ),
    pytest.param(
        _two_runs(),
        re.escape(f"log holds 2 benchmark results ('{_SUMMARY}"),
        id="two-logs-concatenated",
    ),
    pytest.param(
        fixture(_CPU).replace("Inference (avg): 15098.2", "Inference (avg): 14000"),
        re.escape(f"disagrees with the main run '{_MAIN_LINE}'"),
        id="summary-disagrees-with-main-line",
    ),
    pytest.param(
        _cut_in_op_summary_row("QUANTIZE", keep=len(_CUT_ROW)),
        re.escape(f"malformed row in 'Summary by node type': '{_CUT_ROW}'"),
        id="truncated-op-table-row",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("text", "match"), _BROKEN)
def test_broken_logs_raise_quoting_the_fault(text, match):
    with pytest.raises(BenchmarkLogError, match=match):
        parse_benchmark_log(text)


def test_the_error_is_one_an_organizer_must_fix():
    assert issubclass(BenchmarkLogError, NeedsOrganizer)
    assert issubclass(BenchmarkLogError, ValueError)


# --- command line --------------------------------------------------------------------------


def _run_cli(*argv: str) -> int:
    return main(["parse-benchmark-log", *argv])


def test_cli_json(capsys):
    path = FIXTURES / "tflite_gpu_percentiles.log"
    assert _run_cli(str(path), "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data == parse_benchmark_log(path.read_text()).as_json()
    assert (data["avg_ms"], data["median_ms"], data["delegate"]) == (115.082, 115.204, "GPU")


def test_cli_readable_summary(capsys):
    assert _run_cli(str(FIXTURES / "tflite_op_profiling_init_and_regular_sections.log")) == 0
    out = capsys.readouterr().out
    assert "15.461 ms avg over 65 runs" in out
    assert "XNNPACK (coverage not reported)" in out
    assert "Convolution (NHWC, QC8) GEMM: 5.301 ms (34.46%), 62 node(s)" in out


def test_cli_unparseable_log_exits_1_with_the_quote_on_stderr(capsys):
    assert _run_cli(str(BROKEN / "crash_failed_to_apply_gpu_delegate.log"), "--json") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "'ERROR: Failed to apply GPU delegate.'" in captured.err


def test_cli_binary_file_exits_1(tmp_path, capsys):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"TFL3\x00\x00\x00\x00" + bytes(range(256)))
    assert _run_cli(str(path)) == 1
    assert "not a text log" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kind", [pytest.param("missing", id="missing"), pytest.param("dir", id="directory")]
)
def test_cli_unreadable_file_exits_2(tmp_path, capsys, kind):
    path = tmp_path / "absent.log"
    if kind == "dir":
        path.mkdir()
    assert _run_cli(str(path)) == 2
    assert f"cannot read {path}" in capsys.readouterr().err


def test_result_type():
    assert isinstance(parse_benchmark_log(fixture(_CPU)), BenchmarkLog)
