"""Conversion checks (SPEC section 5) on real TFLite models built for the session.

The models come from ``tests/model_factory.py``, run once in a subprocess (so
TensorFlow stays out of this process). Each malformed case asserts its error code;
the passing cases are a float model on a float track and an INT8 model on an INT8
track, both converted from Keras by ``mai_ops.models.conversion``.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys

import pytest

from mai_ops.challenge.config import load_challenge
from mai_ops.cli import main
from mai_ops.cli.models import format_report, parse_shape
from mai_ops.errors import stage_codes
from mai_ops.infra import child
from mai_ops.infra.child import ChildLimits
from mai_ops.models.checks import (
    ModelSpec,
    check_model,
)
from mai_ops.models.checks_child import gpu_warnings
from mai_ops.models.conversion import ConversionError, convert_model, representative_dataset
from tests.conftest import MAI2021, PROJECT

IMAGE = (1, 32, 32, 3)
FLOAT = ModelSpec(inputs=[(IMAGE, "float32")], outputs=[(IMAGE, "float32")], quantization="float")
INT8 = ModelSpec(
    inputs=[(IMAGE, "uint8")], outputs=[(IMAGE, "uint8")], quantization="int8", delegate="nnapi"
)
FIDELITY = ModelSpec(
    inputs=[((1, -1, -1, 3), "float32")],
    outputs=[((1, 48, 40, 3), "float32")],
    resize_to=[(1, 48, 40, 3)],
)


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """name -> path of every model the factory built (plus its conversion errors)."""
    out = tmp_path_factory.mktemp("models")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.model_factory", str(out)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    paths = dict(manifest["models"])
    paths["_errors"] = manifest["errors"]
    paths["_dir"] = out
    return paths


def codes(report) -> list[str]:
    return [e.code for e in report.errors]


# --- passing cases ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["keras_float", "h5_float", "saved_free_batch"])
def test_float_model_passes_a_float_track(models, name):
    report = check_model(models[name], FLOAT)
    assert report.ok, report.errors
    assert report.ops == ["CONV_2D"]
    (tensor,) = report.inputs
    assert tensor["dtype"] == "float32" and tensor["quantization"] is None
    if name == "saved_free_batch":  # a free batch matches the track's batch of 1
        assert tensor["shape"] == [-1, 32, 32, 3]
    else:
        assert tensor["shape"] == [1, 32, 32, 3]
    doc = report.as_json()
    assert set(doc) == {"ok", "errors", "inputs", "outputs", "ops"}
    assert doc["ok"] is True and doc["errors"] == []
    json.dumps(doc)


@pytest.mark.parametrize("name", ["keras_int8", "h5_int8"])
def test_int8_model_passes_an_int8_nnapi_track(models, name):
    report = check_model(models[name], INT8)
    assert report.ok, report.errors
    assert report.ops == ["QUANTIZE", "CONV_2D"]
    (inp,), (out,) = report.inputs, report.outputs
    assert inp["dtype"] == out["dtype"] == "uint8"
    assert inp["quantization"]["scale"] == pytest.approx(1 / 255, rel=0.01)
    assert inp["quantization"]["zero_point"] == 0
    assert out["quantization"]["scale"] > 0


# --- files that are not models --------------------------------------------------------


def test_zero_byte_and_missing_files_are_empty_file(tmp_path):
    empty = tmp_path / "model.tflite"
    empty.write_bytes(b"")
    assert codes(check_model(empty, FLOAT)) == ["empty_file"]
    assert codes(check_model(tmp_path / "missing.tflite", FLOAT)) == ["empty_file"]


def test_truncated_flatbuffer_is_not_tflite(models, tmp_path):
    data = open(models["keras_float"], "rb").read()
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[: len(data) // 2])  # the TFL3 identifier survives, the rest does not
    report = check_model(cut, FLOAT)
    assert codes(report) == ["not_tflite"]
    assert "truncated" in report.errors[0].message


def test_garbage_bytes_are_not_tflite(tmp_path):
    rng = random.Random(0)
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(rng.randbytes(4096))
    report = check_model(garbage, FLOAT)
    assert codes(report) == ["not_tflite"]
    assert "TFL3" in report.errors[0].message
    # The right identifier in front of garbage still fails, in the sandboxed verifier.
    disguised = tmp_path / "disguised.tflite"
    disguised.write_bytes(b"\x1c\x00\x00\x00TFL3" + rng.randbytes(4096))
    assert codes(check_model(disguised, FLOAT)) == ["not_tflite"]


# --- inputs and outputs ---------------------------------------------------------------


def test_wrong_input_shape(models):
    spec = ModelSpec(inputs=[((1, 64, 64, 3), "float32")], outputs=[(IMAGE, "float32")])
    report = check_model(models["keras_float"], spec)
    assert codes(report) == ["input_shape"]
    assert "dimension 1 is 32, not 64" in report.errors[0].message


def test_wrong_output_shape(models):
    spec = ModelSpec(inputs=[(IMAGE, "float32")], outputs=[((1, 96, 96, 3), "float32")])
    assert codes(check_model(models["keras_float"], spec)) == ["output_shape"]


def test_wrong_input_dtype(models):
    spec = ModelSpec(inputs=[(IMAGE, "uint8")], outputs=[(IMAGE, "float32")])
    report = check_model(models["keras_float"], spec)
    assert codes(report) == ["input_dtype"]
    assert "float32" in report.errors[0].message and "uint8" in report.errors[0].message


def test_input_and_output_counts(models):
    spec = ModelSpec(
        inputs=[(IMAGE, "float32"), (IMAGE, "float32")],
        outputs=[(IMAGE, "float32"), ((1, 10), "float32")],
    )
    assert codes(check_model(models["keras_float"], spec)) == ["input_count", "output_count"]


def test_minus_one_in_the_spec_matches_anything(models):
    spec = ModelSpec(inputs=[((-1, -1, -1, 3), "float32")], outputs=[((1, -1, 32, -1), "float32")])
    assert check_model(models["keras_float"], spec).ok


def test_dynamic_height_and_width_fail_a_fixed_shape_track(models):
    report = check_model(models["dynamic"], FLOAT)
    assert "input_shape" in codes(report)
    assert "dimension 1 is dynamic" in report.errors[0].message


# --- quantization, ops, delegates -----------------------------------------------------


def test_float_model_on_an_int8_track_names_its_float_tensors(models):
    report = check_model(models["keras_float"], INT8)
    assert codes(report) == ["not_quantized", "input_dtype", "output_dtype"]
    message = report.errors[0].message
    assert "conv2d" in message and "(FLOAT32)" in message


def test_float_io_is_allowed_on_an_int8_track_only_when_the_spec_says_float(models):
    float_io = ModelSpec(
        inputs=[(IMAGE, "float32")], outputs=[(IMAGE, "float32")], quantization="int8"
    )
    report = check_model(models["keras_float"], float_io)
    assert codes(report) == ["not_quantized"]
    # the conv weights and bias are named, the float input and output are not
    assert "serving_default" not in report.errors[0].message


def test_int8_model_on_a_float_track_is_not_float(models):
    spec = ModelSpec(inputs=[(IMAGE, "uint8")], outputs=[(IMAGE, "uint8")], quantization="float")
    assert codes(check_model(models["keras_int8"], spec)) == ["not_float"]


def test_custom_op_is_named(models):
    report = check_model(models["custom"], FLOAT)
    assert codes(report) == ["custom_op", "load_failed"]
    assert "Erf" in report.errors[0].message
    assert report.ops == ["Erf", "MUL"]


def test_flex_op_is_named(models):
    report = check_model(models["flex"], FLOAT)
    assert codes(report) == ["flex_op", "load_failed"]
    assert "FlexErf" in report.errors[0].message
    assert "Select TensorFlow op" in report.errors[1].message


def test_gpu_incompatible_op_on_a_gpu_track(models):
    gpu = ModelSpec(inputs=[(IMAGE, "float32")], outputs=[(IMAGE, "float32")], delegate="gpu")
    report = check_model(models["gpu_incompatible"], gpu)
    assert codes(report) == ["gpu_incompatible"]
    assert "REVERSE_V2" in report.errors[0].message
    assert check_model(models["keras_float"], gpu).ok  # CONV_2D runs on the GPU
    nnapi = ModelSpec(inputs=[(IMAGE, "float32")], delegate="nnapi")
    assert codes(check_model(models["gpu_incompatible"], nnapi)) == ["nnapi_incompatible"]


def test_gpu_analyzer_warnings_are_parsed():
    # The format of tensorflow/lite/python/analyzer_wrapper/model_analyzer.cc; the
    # TF 2.21 and LiteRT 2.3 wheels never print it (their checker is compiled out).
    text = (
        "Subgraph#0 main(T#0) -> [T#2]\n"
        "  Op#0 REVERSE_V2(T#0, T#1[2]) -> [T#2]\n"
        "GPU COMPATIBILITY WARNING: Not supported op REVERSE_V2\n"
        "GPU COMPATIBILITY WARNING: Not supported op REVERSE_V2\n"
        "\nGPU COMPATIBILITY WARNING: Subgraph#0 has GPU delegate compatibility issues at "
        "nodes 0 with TFLite runtime version 2.21.0\n"
    )
    assert gpu_warnings(text) == [
        "Not supported op REVERSE_V2",
        "Subgraph#0 has GPU delegate compatibility issues at nodes 0 with TFLite runtime "
        "version 2.21.0",
    ]


# --- the forward pass -----------------------------------------------------------------


def test_nan_output_is_non_finite(models):
    report = check_model(models["nan"], FLOAT)
    assert codes(report) == ["non_finite_output"]
    assert "3072 NaN" in report.errors[0].message


def test_oversized_model_is_too_large_and_still_checked(models):
    spec = ModelSpec(inputs=[(IMAGE, "float32")], outputs=[(IMAGE, "float32")], max_size_mb=0.0005)
    report = check_model(models["keras_float"], spec)
    assert codes(report) == ["model_too_large"]
    assert report.ops == ["CONV_2D"]  # the other checks ran


def test_dynamic_model_resizes_to_the_fidelity_resolution(models):
    assert check_model(models["dynamic"], FIDELITY).ok
    report = check_model(models["keras_float"], FIDELITY)  # fixed 32x32: cannot resize
    assert "resize_failed" in codes(report)
    assert "[1, 48, 40, 3]" in report.errors[codes(report).index("resize_failed")].message


def test_fidelity_spec_from_a_track():
    isp = load_challenge(MAI2021).track("learned_isp")
    spec = ModelSpec.from_track(isp, fidelity=True)
    assert spec.inputs == (((1, -1, -1, 4), "float32"),)
    assert spec.resize_to == ((1, 544, 960, 4),)
    assert spec.outputs == (((1, 1088, 1920, 3), "float32"),)
    with pytest.raises(ValueError, match="no fidelity_inputs"):
        ModelSpec.from_track(load_challenge(MAI2021).track("depth"), fidelity=True)


def test_every_mai2021_track_gives_a_spec():
    for track in load_challenge(MAI2021).tracks:
        spec = ModelSpec.from_track(track)
        assert spec.delegate == track.delegate and spec.max_size_mb == track.max_model_size_mb
    sr = ModelSpec.from_track(load_challenge(MAI2021).track("quantized_sr"))
    assert sr.quantization == "int8" and sr.inputs == (((1, 360, 640, 3), "uint8"),)


# --- the sandbox ----------------------------------------------------------------------


@pytest.mark.parametrize("memory_mb", [512, 1024])
def test_huge_intermediate_tensor_is_memory_exceeded(models, memory_mb):
    # 512 MiB: the 768 MiB tensor alone is over the limit, known before allocating.
    # 1024 MiB: the allocation itself fails inside the limited child.
    spec = ModelSpec(inputs=[(IMAGE, "float32")], outputs=[((1, 3), "float32")])
    report = check_model(models["huge"], spec, ChildLimits(timeout_s=60, memory_mb=memory_mb))
    assert codes(report) == ["check_memory_exceeded"]
    assert report.ops == ["RESHAPE", "TILE", "MEAN"]


def test_model_that_hangs_is_a_timeout_and_keeps_what_was_learnt(models):
    report = check_model(models["hang"], FLOAT, ChildLimits(timeout_s=3, memory_mb=1024))
    assert codes(report) == ["check_timeout"]
    assert "forward pass" in report.errors[0].message
    assert report.ops[0] == "WHILE" and report.inputs[0]["shape"] == [1, 32, 32, 3]


def test_a_model_that_crashes_the_interpreter_is_crashed(models):
    """A real model whose preparation overflows LiteRT's native stack: SIGSEGV."""
    report = check_model(models["crash"], FLOAT, ChildLimits(timeout_s=60, memory_mb=1024))
    assert codes(report) == ["check_crashed"]
    assert "SIGSEGV" in report.errors[0].message
    assert report.ops and report.ops[0] == "WHILE"


def test_child_killed_by_a_signal_is_crashed(models, monkeypatch):
    crash = f"import os, signal; os.kill(os.getpid(), signal.{signal.SIGSEGV.name})"
    monkeypatch.setattr(child, "child_command", lambda module: [sys.executable, "-c", crash])
    report = check_model(models["keras_float"], FLOAT)
    assert codes(report) == ["check_crashed"]
    assert "SIGSEGV" in report.errors[0].message


def test_child_killed_by_sigkill_is_memory_exceeded(models, monkeypatch):
    # What the kernel's OOM killer does; our own timeout kill is reported as timeout.
    kill = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    monkeypatch.setattr(child, "child_command", lambda module: [sys.executable, "-c", kill])
    assert codes(check_model(models["keras_float"], FLOAT)) == ["check_memory_exceeded"]


def test_mai_ops_modules_import_neither_tensorflow_nor_litert(models):
    code = (
        "import json, sys\n"
        "import mai_ops.models.checks as mc, mai_ops.models.conversion\n"
        "import mai_ops.models.checks_child, mai_ops.models.conversion_child\n"
        f"spec = mc.ModelSpec(inputs=[({IMAGE!r}, 'float32')])\n"
        f"ok = mc.check_model({str(models['keras_float'])!r}, spec).ok\n"
        "print(json.dumps([ok, 'tensorflow' in sys.modules, 'ai_edge_litert' in sys.modules]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [True, False, False]


def test_every_reported_code_is_documented():
    checks = stage_codes("check")
    assert {"empty_file", "not_tflite", "check_timeout", "check_memory_exceeded"} <= checks
    assert "check_crashed" in checks
    assert all(code == code.lower() and " " not in code for code in checks)


# --- conversion -----------------------------------------------------------------------


def test_converter_failure_is_a_readable_conversion_error(models):
    error = models["_errors"]["saved_erf"]
    assert error["type"] == "ConversionError"
    message = error["message"]
    assert "TF Select ops: Erf" in message
    assert "'tf.Erf' op is neither a custom op nor a flex op" in message
    assert "called from" not in message and "func.func" not in message and "loc(" not in message
    assert len(message) < 1600 < error["details_chars"] + 1600
    assert models["_errors"]["int8_without_data"]["message"].startswith("INT8 conversion needs")


def test_conversion_refuses_what_it_cannot_convert(tmp_path):
    with pytest.raises(ConversionError, match="not a SavedModel directory or a Keras"):
        convert_model(tmp_path / "model.onnx", tmp_path / "out.tflite")
    with pytest.raises(ConversionError, match="no saved_model.pb"):
        convert_model(tmp_path, tmp_path / "out.tflite")


def test_representative_dataset_from_arrays():
    import numpy as np

    batches = list(representative_dataset(np.zeros((3, 4, 4, 3)))())
    assert len(batches) == 3 and batches[0][0].shape == (1, 4, 4, 3)
    assert batches[0][0].dtype == np.float32
    two = list(representative_dataset([np.zeros((2, 4)), np.ones((2, 5))])())
    assert [a.shape for a in two[1]] == [(1, 4), (1, 5)]
    with pytest.raises(ConversionError):
        representative_dataset(np.zeros((0, 4)))


# --- mai-ops check-model --------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    return main(["check-model", *argv])


def test_cli_passes_a_good_model(models, capsys):
    argv = [models["keras_float"], "--input-shape", "1,32,32,3", "--input-dtype", "float32"]
    assert run_cli([*argv, "--output-shape", "1,32,32,3", "--delegate", "gpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("PASS") and "ops: CONV_2D" in out


def test_cli_json_of_a_failing_model(models, capsys):
    argv = [models["keras_float"], "--input-shape", "1,32,32,3", "--input-dtype", "uint8"]
    assert run_cli([*argv, "--int8", "--max-size-mb", "0.0005", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"ok", "errors", "inputs", "outputs", "ops"}
    assert doc["ok"] is False
    assert [e["code"] for e in doc["errors"]] == ["model_too_large", "not_quantized", "input_dtype"]


def test_cli_checks_against_a_challenge_track(models, capsys):
    argv = [models["keras_int8"], "--challenge", "mai2021", "--track", "scene_detection"]
    assert run_cli(argv) == 1
    out = capsys.readouterr().out
    assert "[input_shape]" in out and "[1, 384, 576, 3]" in out and "[output_shape]" in out


@pytest.mark.parametrize(
    "argv, fragment",
    [
        ([], "say what to check against"),
        (["--input-shape", "1,a,3"], "bad shape"),
        (["--input-shape", "1,0,3"], "bad shape"),
        (["--input-shape", "1,3", "--input-dtype", "float64"], "unknown dtype"),
        (["--challenge", "mai1999", "--track", "depth"], "unknown challenge 'mai1999'"),
        (["--challenge", "mai2021", "--track", "nope"], "no track 'nope'"),
        (["--challenge", "mai2021"], "go together"),
        (["--challenge", "mai2021", "--track", "depth", "--input-shape", "1,3"], "not both"),
        (["--challenge", "mai2021", "--track", "depth", "--fidelity"], "no fidelity_inputs"),
    ],
)
def test_cli_usage_errors_exit_2(argv, fragment, capsys):
    assert run_cli(["model.tflite", *argv]) == 2
    assert fragment in capsys.readouterr().err


def test_cli_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(["model.tflite", "--input-shape", "1,3", "--delegate", "tpu"])
    assert exc.value.code == 2


def test_parse_shape_and_text_report(models):
    assert parse_shape("1,544,960,4") == (1, 544, 960, 4)
    assert parse_shape("1x-1x-1x4") == (1, -1, -1, 4)
    assert parse_shape("[1, ?, ?, 3]") == (1, -1, -1, 3)
    text = format_report(check_model(models["keras_int8"], INT8))
    assert text.startswith("PASS") and "scale 0.0039" in text


def test_dynamic_output_is_judged_by_the_shape_the_run_produced(models):
    wrong = ModelSpec(
        inputs=[((1, -1, -1, 3), "float32")],
        outputs=[((1, 96, 80, 3), "float32")],
        resize_to=[(1, 48, 40, 3)],
    )
    report = check_model(models["dynamic"], wrong)
    assert codes(report) == ["output_shape"]
    assert "came out as 48, not 96" in report.errors[0].message
