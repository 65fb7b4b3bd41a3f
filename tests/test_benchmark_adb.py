"""The adb backend, driven through a stand-in `adb` that replays recorded output.

No phone exists on this machine, so every test here runs the real command
construction, retries and parsing against `tests/fixtures/adb_standin/adb`, and says
so in its name.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mai_ops.challenge.config import Device
from mai_ops.devices.adb import AdbRun, benchmark_model_flags, run_adb
from mai_ops.devices.results import BenchmarkError

FIXTURES = Path(__file__).parent / "fixtures"
STANDIN = FIXTURES / "adb_standin" / "adb"
LOGS = FIXTURES / "benchmark_logs"

PHONE = Device(
    name="snapdragon865",
    backend="adb",
    serial="R5CN20ABCDE",
    delegate="gpu",
    threads=4,
    runs=30,
    warmup=3,
)


@pytest.fixture
def standin(tmp_path, monkeypatch):
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("MAI_OPS_ADB", str(STANDIN))
    monkeypatch.setenv("ADB_STANDIN_LOG", str(calls))
    monkeypatch.setenv("ADB_STANDIN_STATE", str(tmp_path / "state"))

    def configure(scenario: str, output: str = "tflite_gpu_full_mixed_prefix_peak_rss.log"):
        monkeypatch.setenv("ADB_STANDIN_SCENARIO", scenario)
        monkeypatch.setenv("ADB_STANDIN_OUTPUT", str(LOGS / output))
        return lambda: [json.loads(line) for line in calls.read_text().splitlines()]

    return configure


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    return path


@pytest.mark.parametrize(
    "run, expected",
    [
        pytest.param(AdbRun(delegate="cpu", threads=4), [], id="cpu"),
        pytest.param(AdbRun(delegate="gpu"), ["--use_gpu=true"], id="gpu"),
        pytest.param(
            AdbRun(delegate="nnapi", nnapi_accelerator="neuron-ann"),
            ["--use_nnapi=true", "--nnapi_accelerator_name=neuron-ann"],
            id="nnapi-accelerator",
        ),
        pytest.param(AdbRun(profile=True), ["--enable_op_profiling=true"], id="profiling"),
    ],
)
def test_benchmark_model_flags(run, expected):
    flags = benchmark_model_flags("/data/local/tmp/m.tflite", run)
    assert flags[:6] == [
        "--graph=/data/local/tmp/m.tflite",
        f"--num_threads={run.threads}",
        f"--num_runs={run.runs}",
        f"--min_secs={run.min_seconds:g}",
        f"--warmup_runs={run.warmup}",
        "--report_peak_memory_footprint=true",
    ]
    assert flags[6:] == expected


def test_standin_adb_success_reports_the_parsed_figures(standin, model):
    calls = standin("success")
    result = run_adb(model, PHONE, retry_delay_s=0)
    assert result.backend == "adb" and result.device == "snapdragon865"
    assert result.delegate == "GPU" and result.fully_delegated is True
    assert result.avg_ms > 0 and result.count > 0
    verbs = [c[2] for c in calls()]
    assert verbs == ["get-state", "shell", "push", "shell", "shell"]
    run_call = calls()[3]
    assert run_call[:2] == ["-s", "R5CN20ABCDE"]
    assert "--use_gpu=true" in run_call[-1] and "--num_runs=30" in run_call[-1]
    assert calls()[-1][-1].startswith("rm -f") or calls()[-1][3:5] == ["rm", "-f"]


def test_standin_adb_partial_delegation_fails_where_full_is_required(standin, model):
    standin("success", "tflite_gpu_partial_3_kernels.log")
    with pytest.raises(BenchmarkError, match="only partly on the GPU delegate") as exc:
        run_adb(model, PHONE, require_full_delegation=True, retry_delay_s=0)
    assert exc.value.code == "benchmark_partial_delegation"
    # Without the requirement the same run is reported, flagged as partial.
    result = run_adb(model, PHONE, require_full_delegation=False, retry_delay_s=0)
    assert result.fully_delegated is False


def test_standin_adb_offline_is_retried_then_reported(standin, model):
    calls = standin("offline")
    with pytest.raises(BenchmarkError, match=r"is 'offline' \(after 3 attempts\)") as exc:
        run_adb(model, PHONE, attempts=3, retry_delay_s=0)
    assert exc.value.code == "benchmark_device_offline"
    assert [c[2] for c in calls()] == ["get-state"] * 3


def test_standin_adb_flaky_device_recovers_on_retry(standin, model):
    standin("flaky")
    result = run_adb(model, PHONE, attempts=3, retry_delay_s=0)
    assert result.fully_delegated is True


def test_standin_adb_unknown_serial_names_the_device(standin, model):
    standin("unknown-serial")
    with pytest.raises(BenchmarkError, match="R5CN20ABCDE' not found") as exc:
        run_adb(model, PHONE, attempts=2, retry_delay_s=0)
    assert exc.value.code == "benchmark_adb_failed"


def test_standin_adb_crash_output_is_an_error_not_zero(standin, model):
    standin("crash")
    with pytest.raises(BenchmarkError) as exc:
        run_adb(model, PHONE, attempts=1, retry_delay_s=0)
    assert exc.value.code in {"benchmark_adb_failed", "benchmark_unparseable_output"}


def test_missing_adb_executable(monkeypatch, model):
    monkeypatch.setenv("MAI_OPS_ADB", "/nonexistent/adb")
    with pytest.raises(BenchmarkError, match="adb executable not found") as exc:
        run_adb(model, PHONE, attempts=1, retry_delay_s=0)
    assert exc.value.code == "benchmark_adb_missing"
