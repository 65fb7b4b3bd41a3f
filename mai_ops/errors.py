"""Every error code a team or an organizer can see, and the errors that carry them.

A code names one way a submission can fail, at one stage of the pipeline. Its
``retry`` says whose fault it is: ``True`` when it is ours (a crash of our code, a
phone offline, a tool of ours that timed out), so clearing the task processes the
submission again; ``False`` when it is the submission's (wrong shape, custom op, zip
slip), so the stored answer stands. ``docs/errors.md`` is rendered from this table
(``python -m mai_ops.errors > docs/errors.md``).

:class:`NeedsOrganizer` is the other kind: something waiting cannot fix (a wrong
config, data never staged). The DAGs turn it into Airflow's fail-without-retry
exception, so the organizer fixes it and clears the task.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The pipeline's stages in the order a submission passes them; ``internal`` is our own.
STAGES = (
    "intake",
    "integrity",
    "unpack",
    "convert",
    "check",
    "benchmark",
    "fidelity",
    "score",
    "internal",
)


class NeedsOrganizer(Exception):
    """Something an organizer must fix before a re-run can succeed."""


@dataclass(frozen=True)
class Code:
    name: str
    stage: str
    meaning: str
    retry: bool = False  # clearing the task retries it: the failure was ours


def _codes(stage: str, retry: bool = False, **meanings: str) -> list[Code]:
    return [Code(name, stage, meaning, retry) for name, meaning in meanings.items()]


_ALL = [
    *_codes(
        "intake",
        bad_key="the upload is not at `<track>/<phase>/<team>/<file>.zip`",
        unknown_track="the key's track is not a track of the challenge",
        unknown_phase="the key's phase is not 'validation' or 'final'",
        unknown_team="the key's team is not a registered team",
        not_registered="the team is not registered for this track",
        phase_not_open="the phase has not opened yet",
        late="uploaded after the final deadline (server timestamp)",
        replaced_after_deadline="final phase: the upload received in time was replaced or "
        "deleted before the freeze copied it, in a submissions bucket without versioning; "
        "its bytes are gone and nothing is frozen in its place",
        not_zip_name="the file name does not end with .zip",
        upload_too_large="the upload is larger than the archive size limit",
        duplicate="identical (sha256) to an earlier validation upload whose checks ran "
        "(final uploads are never refused as duplicates)",
        over_total_limit="the team used all its validation submissions for this track "
        "(final uploads have no limit)",
        over_daily_limit="the team used all its validation submissions for this track today "
        "(UTC; final uploads have no limit)",
    ),
    *_codes(
        "integrity",
        retry=True,
        frozen_copy_changed="the frozen copy's sha256 is not the one recorded at the freeze",
    ),
    *_codes(
        "unpack",
        not_a_zip="the upload is not a readable zip archive (empty, truncated or another format)",
        zip_slip="a member's path climbs out of the archive with '..'",
        absolute_path="a member's path is absolute (/x, C:\\x, \\\\server\\share)",
        symlink="a member is a symbolic link",
        special_file="a member is a device, FIFO or socket, not a regular file",
        zip_bomb="the compression ratio is implausible, members overlap, a member "
        "unpacks to more than its header says, or unpacking needs more memory or time than "
        "allowed",
        archive_too_large="the archive, or all its members together, exceed the size limit",
        member_too_large="one member of the archive exceeds the per-file size limit",
        too_many_files="the archive has or declares more entries than allowed, or a central "
        "directory larger than that many entries need",
        bad_filename="a member's name is not valid UTF-8 or has control characters, NUL or ':'",
        encrypted_member="a member is encrypted (password-protected)",
        unsupported_compression="a member uses a compression method other than stored, "
        "deflate, bzip2 or LZMA",
        duplicate_member="two members have the same path, or a path is both a file and a folder",
        corrupt_member="a member's data is damaged (bad CRC, truncated, header mismatch)",
        nested_archive="no model at the top level, only another archive inside the archive",
        missing_model="no model.tflite, SavedModel folder or Keras model at the top level",
        bad_factsheet="a .pdf file is not a PDF document",
    ),
    *_codes(
        "convert",
        conversion_failed="the SavedModel / Keras model could not be converted to TFLite",
    ),
    *_codes(
        "check",
        empty_file="the model file is missing or has zero bytes",
        not_tflite="not a TFLite flatbuffer (identifier, truncated, garbage)",
        model_too_large="the model file is larger than the track's size limit",
        load_failed="the interpreter cannot open or prepare the model",
        input_count="the number of inputs differs from the track's",
        output_count="the number of outputs differs from the track's",
        input_shape="an input shape differs from the track's",
        output_shape="an output shape differs from the track's",
        input_dtype="an input dtype differs from the track's",
        output_dtype="an output dtype differs from the track's",
        not_quantized="the track needs a fully INT8/UINT8 model; float tensors remain",
        not_float="the track needs a float model; quantized activations found",
        flex_op="Flex (SELECT_TF_OPS) ops, which the target runtime does not have",
        custom_op="custom ops, which the target runtime does not have",
        gpu_incompatible="ops the TFLite GPU delegate cannot run",
        nnapi_incompatible="ops outside the NNAPI allow-list",
        neuron_incompatible="ops outside the MediaTek Neuron (NNAPI) allow-list",
        npu_incompatible="ops outside the generic NPU (NNAPI) allow-list",
        hexagon_incompatible="ops outside the Hexagon delegate allow-list",
        resize_failed="the inputs cannot be resized to the test resolution",
        run_failed="the forward pass on the test input failed",
        non_finite_output="the forward pass on the test input produced NaN or Inf",
        check_timeout="the model's checks did not finish within the time limit",
        check_memory_exceeded="the model needs more memory than the checks allow",
        check_crashed="the checking process was killed by a signal while running the model",
    ),
    *_codes(
        "benchmark",
        benchmark_load_failed="the benchmark runtime cannot open or allocate the model",
        benchmark_memory_exceeded="the model needs more memory than the benchmark allows",
        benchmark_crashed="the benchmark runtime died while running the model",
        benchmark_invoke_failed="the benchmark runtime's invoke() returned an error",
        benchmark_partial_delegation="the track requires full delegation; part of the graph "
        "ran on the CPU",
    ),
    *_codes(
        "benchmark",
        retry=True,
        benchmark_timeout="the device gave no result in time (a slow or stuck device or tool)",
        benchmark_bad_request="the benchmark was asked for something it cannot do "
        "(our device or run settings)",
        benchmark_device_offline="the phone was not reachable over adb",
        benchmark_adb_failed="an adb command failed",
        benchmark_adb_missing="the adb executable is not installed on the worker",
        benchmark_unparseable_output="benchmark_model printed no result we can read",
    ),
    *_codes(
        "fidelity",
        fidelity_load_failed="LiteRT cannot open the model on the evaluation data, or it "
        "has no outputs",
        fidelity_allocate_failed="the model's tensors cannot be allocated for a sample",
        fidelity_input_mismatch="a sample does not fit the model's inputs",
        fidelity_invoke_failed="the model failed to run on a sample",
        fidelity_non_finite_output="the model produced NaN or Inf on a sample",
        fidelity_output_mismatch="the model's output cannot be compared with the ground truth",
        fidelity_timeout="the evaluation on the data did not finish within the time limit",
        fidelity_memory_exceeded="the model needs more memory than the evaluation allows",
        fidelity_crashed="the evaluating process died while running the model",
        fidelity_bad_results="a file in the archive's results/ folder cannot be compared: a "
        ".png or .npy that does not read, two files with one name, or more or larger files "
        "than allowed",
    ),
    *_codes(
        "fidelity",
        retry=True,
        fidelity_bad_request="the evaluating process got a request it cannot read (ours)",
    ),
    *_codes(
        "score",
        retry=True,
        score_not_computable="the track's score formula cannot be computed on this "
        "submission's values (an exponent or result too large, a division by zero, not "
        "finite); the organizers check the formula and clear the task",
    ),
    *_codes(
        "internal",
        retry=True,
        internal_error="an unexpected error in our pipeline; the organizers are told",
        sandbox_unavailable="the worker cannot set up the sandbox participants' code runs "
        "in, so the submission was not run; the organizers are told",
        processing_stuck="the submission's processing started but never finished within "
        "its limit (its task was stopped by its time limit each time, or its worker died); "
        "marked failed by the stuck-work sweep, the organizers are told",
    ),
]
CODES: dict[str, Code] = {c.name: c for c in _ALL}
assert len(CODES) == len(_ALL), "a code is registered twice"
assert all(c.stage in STAGES for c in _ALL)


def registered(name: str) -> Code:
    """The registered code ``name``; a name not in the registry is a bug of ours."""
    try:
        return CODES[name]
    except KeyError:
        raise ValueError(f"{name!r} is not a registered error code (mai_ops.errors)") from None


def stage_codes(stage: str) -> frozenset[str]:
    return frozenset(c.name for c in _ALL if c.stage == stage)


# What a message for a team may not carry: environment-like NAME=value pairs (a model
# that read the worker's environment and raised with it), credentials in URLs, and
# absolute paths of the worker (only the last part of a path stays).
_NUL = re.compile(r"\\(?:000|x00|u0000|0)|\x00")
_SECRET_NAME = re.compile(r"(?<![A-Za-z0-9_])([A-Z_][A-Z0-9_]{1,63})=")
_URL_CREDENTIALS = re.compile(r"(\w+://)[^\s/@]+@")
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~])(?:/[^\s/:'\"\[\](),;]+)+/([^\s/:'\"\[\](),;]*)")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_CLOSING = {"{": "}", "[": "]", "(": ")", '"': '"', "'": "'"}
MAX_MESSAGE_CHARS = 400


def _without_secret_values(text: str) -> str:
    """Each ``NAME=value`` becomes ``NAME=[removed]``; a bracketed or quoted value whole."""
    out, pos = [], 0
    for match in _SECRET_NAME.finditer(text):
        if match.start() < pos:
            continue
        out.append(text[pos : match.end()] + "[removed]")
        pos = match.end()
        opener = text[pos : pos + 1]
        if opener in _CLOSING:
            depth, i = 0, pos
            while i < len(text):
                if text[i] == opener and opener != _CLOSING[opener]:
                    depth += 1
                elif text[i] == _CLOSING[opener]:
                    depth -= 1 if opener != _CLOSING[opener] else 0
                    if depth <= 0 and i > pos:
                        break
                i += 1
            pos = i + 1
        else:
            while pos < len(text) and not text[pos].isspace() and text[pos] not in ",;]})":
                pos += 1
    return "".join(out) + text[pos:]


def clean_message(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` fit to reach a participant: no secrets, no worker paths, bounded length.

    Every message in a record or an email passes here (through :class:`StageError`), so
    whatever a hostile child printed or raised reaches the team only in this form.
    """
    text = _NUL.sub(" ", str(text))
    text = _CONTROL.sub(" ", text)
    text = _URL_CREDENTIALS.sub(r"\1[removed]@", text)
    text = _without_secret_values(text)
    text = _ABSOLUTE_PATH.sub(r"…/\1", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


class StageError(Exception):
    """A submission failed at a stage: a registered ``code`` and a ``message`` for the team.

    The message is cleaned (:func:`clean_message`) here, once for every path to a team.
    """

    def __init__(self, code_name: str, message: str):
        self.entry = registered(code_name)
        message = clean_message(message)
        super().__init__(f"{code_name}: {message}")
        self.code = code_name
        self.message = message

    @property
    def stage(self) -> str:
        return self.entry.stage

    def as_json(self) -> dict[str, str]:
        return {"code": self.code, "stage": self.stage, "message": self.message}


def render_markdown() -> str:
    """``docs/errors.md``: every code by stage, what it means, whether a clear retries it."""
    lines = [
        "# Error codes",
        "",
        "Every code a team or an organizer can find in a record or a reply email, by the",
        "stage of the pipeline that reports it. **Retried**: the failure was ours (a crash,",
        "a phone offline, a timeout of our own tools), so clearing the task processes the",
        "submission again; otherwise the stored answer stands and the team fixes the",
        "submission.",
        "",
        "Generated from `mai_ops/errors.py` by `python -m mai_ops.errors > docs/errors.md`;",
        "do not edit by hand.",
    ]
    for stage in STAGES:
        codes = [c for c in _ALL if c.stage == stage]
        lines += ["", f"## {stage}", "", "| code | meaning | retried |", "|---|---|---|"]
        for c in codes:
            meaning = c.meaning.replace("|", "\\|")
            lines.append(f"| `{c.name}` | {meaning} | {'yes' if c.retry else 'no'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
