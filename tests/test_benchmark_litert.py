"""The ``litert`` benchmark backend (SPEC section 6) on real TFLite models.

The models are built once per module by running this file as a script
(``python -m tests.test_benchmark_litert OUT_DIR``), so TensorFlow never loads into the
pytest process: its threads would be in the parent of every benchmark child, and its
10 s import would be paid by every test session.

Timing figures are only checked for consistency (ordering, counts, positivity): the
machine may be busy, and speed claims belong in ``bench/runtime_fidelity.py``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mai_ops.cli import main
from mai_ops.devices.litert import run_litert
from mai_ops.devices.litert_child import summarize
from mai_ops.devices.results import BenchmarkError, BenchmarkResult
from mai_ops.infra import child
from tests.conftest import process_gone

PROJECT = Path(__file__).resolve().parent.parent

# Small and quick: every benchmark here is about correctness, not speed.
FAST = {"threads": 1, "min_runs": 10, "min_seconds": 0.05, "warmup": 2, "timeout_s": 300}


# ---------------------------------------------------------------------------------------
# The models (built in a child process by ``build_models``).
# ---------------------------------------------------------------------------------------


def build_models(out: Path) -> dict[str, str]:
    """Write every test model into ``out``; returns name -> path."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    layers = tf.keras.layers
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}

    def save(name: str, data: bytes) -> None:
        path = out / f"{name}.tflite"
        path.write_bytes(data)
        paths[name] = str(path)

    def conv_net(side: int | None = 64) -> tf.keras.Model:
        inp = tf.keras.Input((side, side, 3), batch_size=1)
        x = layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
        x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
        x = layers.Conv2D(3, 3, padding="same")(x)
        return tf.keras.Model(inp, x)

    def from_function(fn, *specs) -> bytes:
        function = tf.function(fn, input_signature=list(specs))
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [function.get_concrete_function()], function
        )
        return converter.convert()

    save("float", tf.lite.TFLiteConverter.from_keras_model(conv_net()).convert())

    converter = tf.lite.TFLiteConverter.from_keras_model(conv_net())
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(0)
    converter.representative_dataset = lambda: (
        [rng.random((1, 64, 64, 3), dtype=np.float32)] for _ in range(8)
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    save("int8", converter.convert())

    # Free height and width: benchmarked at the shape the request gives.
    save("dynamic", tf.lite.TFLiteConverter.from_keras_model(conv_net(None)).convert())
    from ai_edge_litert.interpreter import Interpreter

    detail = Interpreter(model_path=paths["dynamic"]).get_input_details()[0]
    paths["dynamic_input"] = detail["name"]

    # A 1x1024x1024x256 float intermediate: 1 GiB, from a 9 KB file.
    inp = tf.keras.Input((1024, 1024, 3), batch_size=1)
    x = layers.Conv2D(3, 1)(layers.Conv2D(256, 1)(inp))
    save("huge", tf.lite.TFLiteConverter.from_keras_model(tf.keras.Model(inp, x)).convert())

    # CUMSUM has no XNNPACK kernel: the graph runs in two delegated parts and one CPU op.
    w1 = tf.constant(rng.standard_normal((3, 3, 3, 4)).astype("float32"))
    w2 = tf.constant(rng.standard_normal((3, 3, 4, 3)).astype("float32"))

    def partial(x):
        x = tf.nn.conv2d(x, w1, 1, "SAME")
        x = tf.math.cumsum(x, axis=1)
        return tf.nn.conv2d(x, w2, 1, "SAME")

    save("partial", from_function(partial, tf.TensorSpec((1, 32, 32, 3), tf.float32)))

    # GATHER checks its indices when it runs: the benchmark's int32 inputs are drawn from
    # [0, 100), so a 4-row table fails in invoke(), after a clean load and allocation.
    table = tf.constant(rng.standard_normal((4, 8)).astype("float32"))
    save(
        "gather",
        from_function(lambda i: tf.gather(table, i), tf.TensorSpec((1, 16), tf.int32)),
    )

    garbage = out / "garbage.tflite"
    garbage.write_bytes(b"TFL3" + bytes(range(256)) * 8)
    paths["garbage"] = str(garbage)
    return paths


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("litert-models")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.test_benchmark_litert", str(out)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "models.json").read_text())


def _consistent(result: BenchmarkResult, min_runs: int) -> None:
    assert result.backend == "litert"
    assert result.count >= min_runs
    assert 0 < result.min_ms <= result.median_ms <= result.p90_ms <= result.max_ms
    assert result.min_ms <= result.avg_ms <= result.max_ms
    assert result.std_ms >= 0
    assert result.init_ms > 0 and result.first_ms > 0 and result.warmup_avg_ms > 0
    assert result.peak_rss_mb > 0
    assert result.base_rss_mb is not None and result.peak_rss_mb >= result.base_rss_mb


# ---------------------------------------------------------------------------------------
# Benchmarks that succeed.
# ---------------------------------------------------------------------------------------


def test_float_model_gives_consistent_statistics(models):
    result = run_litert(models["float"], device="cpu-test", **FAST)
    _consistent(result, FAST["min_runs"])
    assert result.device == "cpu-test"
    assert result.threads == 1
    assert result.delegate == "XNNPACK"
    assert result.fully_delegated is True and result.cpu_ops == []
    assert result.ops == []  # no per-op profile from LiteRT's Python API
    assert result.input_shapes == [[1, 64, 64, 3]]


def test_runs_until_both_the_count_and_the_time_are_reached(models):
    result = run_litert(models["float"], threads=1, min_runs=3, min_seconds=0.3, warmup=0)
    # 3 runs of this model take about 1 ms, so the 0.3 s decided the count (unless the
    # machine was so loaded that 3 runs took 0.3 s, which the second clause admits).
    assert result.count > 3 or result.avg_ms * result.count >= 250
    assert result.warmup_avg_ms is None


def test_max_runs_caps_the_timed_runs(models):
    result = run_litert(
        models["float"], threads=1, min_runs=5, min_seconds=60, max_runs=7, warmup=1
    )
    assert result.count == 7


def test_int8_model(models):
    result = run_litert(models["int8"], threads=2, min_runs=10, min_seconds=0.05, warmup=2)
    _consistent(result, 10)
    assert result.threads == 2
    assert result.fully_delegated is True


def test_dynamic_input_is_resized_to_the_given_shape(models):
    result = run_litert(models["dynamic"], input_shapes=[[1, 48, 40, 3]], **FAST)
    _consistent(result, FAST["min_runs"])
    assert result.input_shapes == [[1, 48, 40, 3]]
    by_name = {models["dynamic_input"]: [1, 40, 48, 3]}
    assert run_litert(models["dynamic"], input_shapes=by_name, **FAST).input_shapes == [
        [1, 40, 48, 3]
    ]


def test_partial_delegation_names_the_cpu_ops(models):
    result = run_litert(models["partial"], **FAST)
    assert result.delegate == "XNNPACK"
    assert result.fully_delegated is False
    assert result.cpu_ops == ["CUMSUM"]


def test_as_json_keys(models):
    data = run_litert(models["float"], **FAST).as_json()
    assert set(data) == {
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
    }
    assert json.loads(json.dumps(data)) == data


# ---------------------------------------------------------------------------------------
# Every way a benchmark fails, with its code.
# ---------------------------------------------------------------------------------------


def test_garbage_file_is_load_failed(models):
    with pytest.raises(BenchmarkError, match="cannot open the model") as exc:
        run_litert(models["garbage"], **FAST)
    assert exc.value.code == "benchmark_load_failed"


def test_huge_tensor_is_memory_exceeded(models):
    # Under RLIMIT_AS the allocation does not crash: XNNPACK reports "failed to reshape
    # runtime" and allocate_tensors() raises. The child sees that the 1 GiB tensor cannot
    # fit in 512 MiB and says memory_exceeded, not load_failed.
    with pytest.raises(BenchmarkError, match=r"tensors need 1024 to \d+ MiB") as exc:
        run_litert(models["huge"], memory_mb=512, **FAST)
    assert exc.value.code == "benchmark_memory_exceeded"
    assert "limit is 512 MiB" in exc.value.message


def test_limit_below_the_runtime_itself_is_memory_exceeded(models):
    # 64 MiB of address space is less than Python + numpy + LiteRT take before any model
    # is opened; the child dies on import and the message says the limit is to blame.
    with pytest.raises(BenchmarkError) as exc:
        run_litert(models["float"], memory_mb=64, **FAST)
    assert exc.value.code == "benchmark_memory_exceeded", exc.value.message
    assert "64 MiB" in exc.value.message


def test_invoke_error_is_invoke_failed(models):
    with pytest.raises(BenchmarkError, match="invoke failed") as exc:
        run_litert(models["gather"], **FAST)
    assert exc.value.code == "benchmark_invoke_failed"


def test_hang_is_killed_as_timeout(models):
    # min_seconds far beyond the timeout: the child is still running when time is up.
    with pytest.raises(BenchmarkError, match="no result within 5 s, killed") as exc:
        run_litert(models["float"], threads=1, min_runs=1, min_seconds=3600, timeout_s=5)
    assert exc.value.code == "benchmark_timeout"


def test_timeout_kills_the_whole_process_group(tmp_path, monkeypatch, models):
    # Unconfined, so the grandchild's pid means something here; a confined child's
    # namespace dies with it (tests/test_sandbox.py).
    monkeypatch.setenv("MAI_OPS_SANDBOX", "off")
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen(['sleep', '600'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(600)\n"
    )
    monkeypatch.setattr(child, "child_command", lambda module: [sys.executable, "-c", script])
    with pytest.raises(BenchmarkError) as exc:
        run_litert(models["float"], **dict(FAST, timeout_s=3))
    assert exc.value.code == "benchmark_timeout"
    pid = int(pid_file.read_text())
    assert process_gone(pid), f"grandchild {pid} survived the timeout"


def test_runtime_crash_is_crashed(monkeypatch, models):
    script = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    monkeypatch.setattr(child, "child_command", lambda module: [sys.executable, "-c", script])
    with pytest.raises(BenchmarkError, match="killed by SIGSEGV") as exc:
        run_litert(models["float"], **FAST)
    assert exc.value.code == "benchmark_crashed"


def test_oom_killer_is_memory_exceeded(monkeypatch, models):
    # A SIGKILL that the parent did not send comes from the kernel's OOM killer.
    script = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    monkeypatch.setattr(child, "child_command", lambda module: [sys.executable, "-c", script])
    with pytest.raises(BenchmarkError, match="killed by SIGKILL") as exc:
        run_litert(models["float"], **FAST)
    assert exc.value.code == "benchmark_memory_exceeded"


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        pytest.param([[1, 48, 40, 4]], r"cannot take shape \[1, 48, 40, 4\]", id="static-dim"),
        pytest.param([[1, 8, 8, 3], [1, 8, 8, 3]], "2 input shape", id="too-many"),
        pytest.param({"nope": [1, 8, 8, 3]}, "no input named", id="bad-name"),
    ],
)
def test_bad_input_shapes_are_bad_request(models, shapes, match):
    with pytest.raises(BenchmarkError, match=match) as exc:
        run_litert(models["dynamic"], input_shapes=shapes, **FAST)
    assert exc.value.code == "benchmark_bad_request"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"threads": 0}, "threads must be a positive integer", id="threads"),
        pytest.param({"min_runs": 0}, "min_runs must be", id="min-runs"),
        pytest.param({"warmup": -1}, "warmup must be", id="warmup"),
        pytest.param({"max_runs": 0}, "max_runs must be", id="max-runs"),
        pytest.param({"min_seconds": -1.0}, "min_seconds must be", id="min-seconds"),
        pytest.param({"timeout_s": 0}, "timeout_s must be > 0", id="timeout"),
    ],
)
def test_bad_arguments_are_bad_request(models, kwargs, match):
    with pytest.raises(BenchmarkError, match=match) as exc:
        run_litert(models["float"], **kwargs)
    assert exc.value.code == "benchmark_bad_request"


def test_missing_file_is_bad_request(tmp_path):
    with pytest.raises(BenchmarkError, match="no model file") as exc:
        run_litert(tmp_path / "nope.tflite")
    assert exc.value.code == "benchmark_bad_request"


# ---------------------------------------------------------------------------------------
# The statistics and the command line.
# ---------------------------------------------------------------------------------------


def test_summarize_matches_hand_computed_values():
    stats = summarize([i * 1_000_000 for i in range(10, 0, -1)])  # 1..10 ms, unsorted
    assert stats["count"] == 10
    assert stats["avg_ms"] == pytest.approx(5.5)
    assert stats["median_ms"] == pytest.approx(5.5)
    assert stats["p90_ms"] == pytest.approx(9.1)
    assert stats["std_ms"] == pytest.approx(math.sqrt(8.25))  # population, as benchmark_model
    assert (stats["min_ms"], stats["max_ms"]) == (1.0, 10.0)
    assert summarize([2_500_000]) == {
        "count": 1,
        "avg_ms": 2.5,
        "median_ms": 2.5,
        "std_ms": 0.0,
        "p90_ms": 2.5,
        "min_ms": 2.5,
        "max_ms": 2.5,
    }


def _cli(argv: list[str]) -> int:
    return main(argv)


def test_cli_json(models, capsys):
    argv = ["benchmark", models["float"], "--device", "bench-1", "--threads", "1"]
    code = _cli([*argv, "--runs", "5", "--warmup", "1", "--min-seconds", "0.05", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    data = json.loads(out)
    assert data["device"] == "bench-1" and data["backend"] == "litert"
    assert data["threads"] == 1 and data["count"] >= 5
    assert {"init_ms", "median_ms", "p90_ms", "std_ms", "peak_rss_mb"} <= set(data)


def test_cli_text(models, capsys):
    code = _cli(["benchmark", models["partial"], "--threads", "1", "--runs", "3"])
    out = capsys.readouterr().out
    assert code == 0
    assert "median" in out and "on the CPU: CUMSUM" in out


def test_cli_failure_exit_1_with_code_on_stderr(models, capsys):
    assert _cli(["benchmark", models["garbage"], "--threads", "1"]) == 1
    assert capsys.readouterr().err.startswith("benchmark_load_failed: ")


def test_cli_missing_file_exit_2(tmp_path, capsys):
    assert _cli(["benchmark", str(tmp_path / "nope.tflite")]) == 2
    assert "no model file" in capsys.readouterr().err


def test_cli_bad_argument_exit_2(models, capsys):
    assert _cli(["benchmark", models["float"], "--threads", "0"]) == 2
    assert capsys.readouterr().err.startswith("benchmark_bad_request: threads must be")


def test_cli_usage_error_exit_2():
    with pytest.raises(SystemExit) as exc:
        _cli(["benchmark", "m.tflite", "--threads", "two"])
    assert exc.value.code == 2


if __name__ == "__main__":
    target = Path(sys.argv[1])
    built = build_models(target)
    (target / "models.json").write_text(json.dumps(built, indent=2))
