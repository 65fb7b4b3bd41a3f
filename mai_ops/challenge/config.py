"""The challenge definition: one YAML file per challenge, typed and validated.

Organizers write a challenge once and then mostly watch, so every mistake must be
found when the file loads, and every message names the file and the field path
(``mai2021.yaml: tracks[2].score.formula: unknown variable 'psrn'``). Structural
errors come from pydantic; the rules that span fields (dates in order, devices
and metrics that exist, formulas that only read known variables) are checked
afterwards so each one can point at the exact field it is about.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mai_ops import PROJECT_ROOT
from mai_ops.challenge.dates import EventDate, parse_event_date, parse_time_of_day, zone
from mai_ops.challenge.formula import FormulaError, parse_formula
from mai_ops.errors import NeedsOrganizer
from mai_ops.infra.layout import VALIDATION_PHASE, leaderboard_prefix
from mai_ops.models.metrics import MEASUREMENT_VARIABLES, METRICS

DTYPES = ("float32", "float16", "int8", "uint8", "int16", "int32", "int64", "bool")
DELEGATES = ("cpu", "xnnpack", "gpu", "nnapi", "neuron", "npu", "hexagon")
_ID = r"^[a-z][a-z0-9_]*$"
# A short name for email subjects: letters, digits, spaces and . _ + & -, at most 24.
_SHORT_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9 ._+&-]{0,22}[A-Za-z0-9.+])?$")
# One plain ASCII address (no display name): a Reply-To header carries it as it is.
_ADDRESS = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$"
)
_PUBLIC_URL = re.compile(r"^https?://[A-Za-z0-9.-]+(?::\d{1,5})?(?:/[A-Za-z0-9._~%/+-]*)?$")
# S3 bucket naming rules, the subset that matters for a typo.
_BUCKET = re.compile(r"^(?!\d+\.\d+\.\d+\.\d+$)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# A device host: a lowercase DNS name (labels of letters, digits and inner hyphens).
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_HOST = re.compile(rf"^(?=.{{1,63}}$){_LABEL}(?:\.{_LABEL})*$")


class Phase(StrEnum):
    """What an event on the timeline sets off."""

    RELEASE_DATA = "release_data"
    VALIDATION_SERVER = "validation_server"
    FINAL_COLLECTION = "final_collection"
    PRELIMINARY_RESULTS = "preliminary_results"
    WORKSHOP_NOTICE = "workshop_notice"
    NONE = "none"


# Events whose phase a challenge cannot run without: an unfixed date here is an error.
PHASES_NEEDING_A_DATE = frozenset(
    {
        Phase.RELEASE_DATA,
        Phase.VALIDATION_SERVER,
        Phase.FINAL_COLLECTION,
        Phase.PRELIMINARY_RESULTS,
    }
)

# The challenge's milestones that must come in this order when present.
ORDERED_MILESTONES = (
    "train_data_release",
    "validation_server_online",
    "test_data_release",
    "final_deadline",
    "preliminary_results",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _event_date(value: object) -> EventDate:
    return value if isinstance(value, EventDate) else parse_event_date(value)


def _time(value: object) -> dt.time:
    return parse_time_of_day(value)


EventDateField = Annotated[EventDate, BeforeValidator(_event_date)]
TimeField = Annotated[dt.time, BeforeValidator(_time)]


class Event(_Strict):
    name: str = Field(pattern=_ID)
    title: str
    date: EventDateField
    time: TimeField | None = None
    phase: Phase = Phase.NONE
    remind_days_before: list[Annotated[int, Field(ge=1, le=60)]] = []
    group: Literal["challenge", "workshop"] = "challenge"
    # A release_data event that also publishes every track's hidden test inputs
    # (test/<track>/input/ in the organizers' bucket), never their ground truth.
    test_inputs: bool = False


class TensorSpec(_Strict):
    name: str | None = None
    shape: list[int]
    dtype: Literal[DTYPES]

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: list[int]) -> list[int]:
        if not shape:
            raise ValueError("a tensor needs at least one dimension")
        bad = [d for d in shape if d == 0 or d < -1]
        if bad:
            raise ValueError(f"dimensions must be positive, or -1 for dynamic; got {bad}")
        return shape


class Score(_Strict):
    formula: str
    constants: dict[str, float] = {}

    @field_validator("constants")
    @classmethod
    def _constant_names(cls, constants: dict[str, float]) -> dict[str, float]:
        for name in constants:
            if not name.isidentifier():
                raise ValueError(f"constant name {name!r} is not an identifier")
        return constants


class SubmissionLimits(_Strict):
    per_day: int = Field(default=5, ge=1)
    total: int = Field(default=100, ge=1)

    @model_validator(mode="after")
    def _order(self) -> SubmissionLimits:
        if self.total < self.per_day:
            raise ValueError(f"total ({self.total}) is smaller than per_day ({self.per_day})")
        return self


class FidelitySettings(_Strict):
    """How the final scoring runs a submission on the hidden test images (``fidelity:``)."""

    # Which file of the archive runs on the test images: ``auto`` is model_none.tflite
    # when the track declares fidelity_inputs and the archive has one, else model.tflite.
    model: Literal["auto", "model_none", "model"] = "auto"
    # ``resize``: the model's dynamic dimensions take the image's; ``tiles``: a
    # fixed-shape model runs on tiles of its input size, stitched back together.
    fit: Literal["resize", "tiles"] = "resize"
    # A team's own result and our run of its model must agree to this PSNR (dB, capped
    # at 100 like the metric) to count as reproduced.
    reproduce_min_psnr: float = Field(default=40.0, gt=0, le=100)
    # What happens to a submission that is not reproduced: ranked and flagged, or left out.
    unreproduced: Literal["rank", "exclude"] = "rank"


class CheckSettings(_Strict):
    """The model checks' sandboxed child (``checks:``): a model that hangs or allocates
    without bound is stopped here and answered ``check_timeout`` / ``check_memory_exceeded``."""

    # Wall-clock seconds for opening the model and one inference on each declared shape.
    timeout_s: float = Field(default=120.0, ge=5, le=1800)
    # Address space of the child, MiB.
    memory_mb: int = Field(default=4096, ge=512, le=65536)


class Track(_Strict):
    id: str = Field(pattern=_ID)
    title: str
    task: str
    device: str
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    fidelity_inputs: list[TensorSpec] | None = None
    quantization: Literal["any", "float", "int8"] = "any"
    delegate: Literal[DELEGATES] = "cpu"
    max_model_size_mb: float = Field(default=100.0, gt=0)
    metrics: list[str] = Field(min_length=1)
    score: Score
    limits: SubmissionLimits = SubmissionLimits()
    # The whole graph must run on the delegate (a partial CPU fallback fails the run).
    require_full_delegation: bool = False
    fidelity: FidelitySettings = FidelitySettings()
    checks: CheckSettings = CheckSettings()

    def fidelity_model_file(self, archive_has_model_none: bool) -> str:
        """The archive's file that runs on the test images, per ``fidelity.model``."""
        choice = self.fidelity.model
        if choice == "auto":
            use_none = bool(self.fidelity_inputs) and archive_has_model_none
            choice = "model_none" if use_none else "model"
        return f"{choice}.tflite"


class Device(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    title: str = ""
    backend: Literal["litert", "adb"] = "litert"
    threads: int = Field(default=4, ge=1, le=64)
    delegate: Literal[DELEGATES] = "cpu"
    serial: str | None = None
    runs: int = Field(default=50, ge=1)
    warmup: int = Field(default=5, ge=0)
    # benchmark_model runs at least `runs` times AND at least this long.
    min_seconds: float = Field(default=1.0, ge=0)
    timeout_s: int = Field(default=600, ge=10)
    memory_mb: int = Field(default=4096, ge=64)
    nnapi_accelerator: str | None = None
    benchmark_binary: str = "/data/local/tmp/benchmark_model"
    # The machine the device is attached to (the phone's USB host, or the CPU a litert
    # device measures on). Its benchmarks go to that machine's worker queue; none: any
    # worker of the default queue.
    host: str | None = None

    @field_validator("host")
    @classmethod
    def _host_name(cls, host: str | None) -> str | None:
        if host is not None and not _HOST.match(host):
            raise ValueError(
                f"{host!r} is not a host name (lowercase letters, digits, '-' and '.', "
                "at most 63 characters)"
            )
        return host

    @model_validator(mode="after")
    def _adb_needs_serial(self) -> Device:
        if self.backend == "adb" and not self.serial:
            raise ValueError("an adb device needs its 'serial' (as `adb devices` lists it)")
        return self


class Participants(_Strict):
    source: Literal["file", "s3"] = "file"
    path: str


class Buckets(_Strict):
    organizers: str
    submissions: str
    public: str
    results: str

    @field_validator("*")
    @classmethod
    def _bucket_name(cls, name: str) -> str:
        if not _BUCKET.match(name) or ".." in name:
            raise ValueError(
                f"{name!r} is not a valid bucket name (3-63 lowercase letters, digits, '.', '-')"
            )
        return name


class Challenge(_Strict):
    id: str = Field(pattern=_ID)
    title: str
    # What email subjects start with, in brackets: ``[MAI2021] ...``. Default: the id
    # upper-cased, underscores as spaces (``mai2021_rehearsal`` -> ``MAI2021 REHEARSAL``).
    short_name: str | None = None
    timezone: str = "America/Los_Angeles"
    deadline_time: TimeField = dt.time(17, 0)
    # The organizers' addresses: every email's Reply-To, so a team's answer reaches them.
    organizers: list[str] = []
    # Where the public bucket is served (``https://...``, no trailing slash needed):
    # the results email links each track's leaderboard page under it.
    public_url: str | None = None
    timeline: list[Event] = Field(min_length=1)
    devices: list[Device] = []
    tracks: list[Track] = []
    participants: Participants | None = None
    buckets: Buckets | None = None
    # SQS queue the submissions bucket notifies on each upload (validation server).
    uploads_queue: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,80}$")
    # The preliminary results wait for an organizer's approval in the UI (human in the
    # loop) before they are published; off: published at the instant without it.
    approval: bool = True

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        zone(name)
        return name

    @field_validator("short_name")
    @classmethod
    def _short_name(cls, name: str | None) -> str | None:
        if name is not None and not _SHORT_NAME.match(name):
            raise ValueError(
                f"{name!r} is not a short name: 1 to 24 letters, digits, spaces or . _ + & -, "
                "starting with a letter or digit (it starts every email subject)"
            )
        return name

    @field_validator("organizers")
    @classmethod
    def _addresses(cls, addresses: list[str]) -> list[str]:
        for address in addresses:
            if len(address) > 254 or not _ADDRESS.match(address):
                raise ValueError(
                    f"{address!r} is not a plain email address (name@domain, ASCII, no "
                    "display name); every email's Reply-To carries it"
                )
        return addresses

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, url: str | None) -> str | None:
        if url is not None and (len(url) > 500 or not _PUBLIC_URL.match(url)):
            raise ValueError(
                f"{url[:100]!r} is not an http(s) URL of the public bucket (letters, digits "
                "and . _ ~ % / + - in its path, no query)"
            )
        return url.rstrip("/") if url else url

    @model_validator(mode="after")
    def _default_short_name(self) -> Challenge:
        if self.short_name is None:
            object.__setattr__(self, "short_name", self.id.upper().replace("_", " "))
        return self

    def event(self, name: str) -> Event:
        for event in self.timeline:
            if event.name == name:
                return event
        raise KeyError(f"challenge {self.id} has no event {name!r}")

    def track(self, track_id: str) -> Track:
        for track in self.tracks:
            if track.id == track_id:
                return track
        raise KeyError(f"challenge {self.id} has no track {track_id!r}")

    def device(self, name: str) -> Device:
        for device in self.devices:
            if device.name == name:
                return device
        raise KeyError(f"challenge {self.id} has no device {name!r}")


@dataclass(frozen=True)
class Problem:
    """One finding about a config file: where it is, what is wrong, and how bad."""

    file: str
    field: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = f"{self.file}: {self.field}" if self.field else self.file
        return f"{where}: {self.severity}: {self.message}"


class ChallengeConfigError(NeedsOrganizer, ValueError):
    """A challenge file that cannot be used; ``problems`` lists every error found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def field_path(loc: tuple[Any, ...]) -> str:
    """("tracks", 2, "score", "formula") -> "tracks[2].score.formula"."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith("function-") or str(part).startswith("literal["):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


# The shipped files are under 10 KB; a file far larger is a mistake (a data file saved
# under the wrong name) that would slow every parse of the DAG files.
MAX_CHALLENGE_FILE_BYTES = 1024 * 1024


def read_challenge(path: str | Path) -> tuple[Challenge | None, list[Problem]]:
    """Load and check one file; return the challenge (None when unusable) and all findings.

    Never raises: whatever goes wrong with one file is a finding about that file, so
    ``mai-ops validate`` reports it and the DAG files keep every other challenge.
    """
    path = Path(path)
    try:
        return _read_challenge(path)
    except (RecursionError, MemoryError):
        return None, [Problem(str(path), "", "the file nests too deeply to be read")]
    except Exception as exc:  # noqa: BLE001 - a bug of ours met by this file; say so
        reason = f"{type(exc).__name__}: {exc}"[:300]
        return None, [Problem(str(path), "", f"cannot be checked ({reason})")]


def _read_challenge(path: Path) -> tuple[Challenge | None, list[Problem]]:
    name = str(path)
    try:
        size = path.stat().st_size
        if not path.is_file() and not path.is_dir():
            # A FIFO or a device named *.yaml: reading it could block the DAG parse.
            return None, [Problem(name, "", "not a regular file")]
        if path.is_file() and size > MAX_CHALLENGE_FILE_BYTES:
            return None, [
                Problem(
                    name,
                    "",
                    f"the file is {size:,} bytes; a challenge file is at most "
                    f"{MAX_CHALLENGE_FILE_BYTES:,}",
                )
            ]
        text = path.read_text(encoding="utf-8")
        depth, line = _yaml_depth(text)
        if depth > MAX_YAML_DEPTH:
            return None, [
                Problem(
                    name,
                    f"line {line}",
                    f"lists and mappings nest more than {MAX_YAML_DEPTH} levels deep",
                )
            ]
        raw = yaml.load(text, Loader=_DatesAsTextLoader)  # noqa: S506
    except FileNotFoundError:
        return None, [Problem(name, "", "file not found")]
    except OSError as exc:
        return None, [Problem(name, "", f"cannot read: {exc.strerror or exc}")]
    except UnicodeDecodeError as exc:
        return None, [Problem(name, "", f"not UTF-8 text: {exc.reason} at byte {exc.start}")]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc)
        return None, [Problem(name, where, f"not valid YAML: {reason}")]
    if not isinstance(raw, dict):
        return None, [Problem(name, "", "expected a mapping of challenge fields at the top")]
    try:
        challenge = Challenge.model_validate(raw)
    except ValidationError as exc:
        return None, [
            Problem(name, field_path(err["loc"]), _pydantic_message(err))
            for err in exc.errors(include_url=False)
        ]
    return challenge, semantic_problems(challenge, name)


# libyaml's safe loader when PyYAML was built with it: the DAG files parse every
# challenge file, and the pure-Python loader is most of that time.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _DatesAsTextLoader(_SafeLoader):
    """Safe YAML that keeps dates as text, so 2021-02-30 is reported, not a crash.

    PyYAML turns an unquoted date into ``datetime.date`` and raises a bare ValueError
    on an impossible one; the schema parses the text itself and names the field.
    """


_DatesAsTextLoader.add_constructor(
    "tag:yaml.org,2002:timestamp", lambda loader, node: loader.construct_scalar(node)
)


# A challenge file nests 4 levels deep. libyaml's composer recurses in C once per
# level: tens of thousands of brackets crash the process instead of raising.
MAX_YAML_DEPTH = 64


def _yaml_depth(text: str) -> tuple[int, int]:
    """How deep lists and mappings nest, from the parser's events (no recursion).

    Returns (depth, line where the deepest level opened); stops just past
    MAX_YAML_DEPTH.
    """
    depth = deepest = 0
    line = 0
    for event in yaml.parse(text, Loader=_DatesAsTextLoader):
        if isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
            depth += 1
            if depth > deepest:
                deepest, line = depth, event.start_mark.line + 1
            if depth > MAX_YAML_DEPTH:
                break
        elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
            depth -= 1
    return deepest, line


def load_challenge(path: str | Path) -> Challenge:
    """The challenge in ``path``; raises :class:`ChallengeConfigError` on any error."""
    challenge, problems = read_challenge(path)
    errors = [p for p in problems if p.severity == "error"]
    if challenge is None or errors:
        raise ChallengeConfigError(errors)
    return challenge


def _pydantic_message(err: dict[str, Any]) -> str:
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err["type"] == "extra_forbidden":
        msg = "unknown field (check the spelling)"
    return msg


def semantic_problems(ch: Challenge, file: str) -> list[Problem]:
    """Rules that span fields; each finding points at the field it is about."""
    problems: list[Problem] = []

    def error(field: str, message: str) -> None:
        problems.append(Problem(file, field, message))

    def warn(field: str, message: str) -> None:
        problems.append(Problem(file, field, message, "warning"))

    for field, items, key in (
        ("timeline", ch.timeline, "name"),
        ("tracks", ch.tracks, "id"),
        ("devices", ch.devices, "name"),
    ):
        first_at: dict[str, int] = {}
        for i, item in enumerate(items):
            value = getattr(item, key)
            if value in first_at:
                error(
                    f"{field}[{i}].{key}",
                    f"duplicate {key} {value!r} (first at {field}[{first_at[value]}])",
                )
            else:
                first_at[value] = i

    for i, track in enumerate(ch.tracks):
        if track.id == VALIDATION_PHASE:
            error(
                f"tracks[{i}].id",
                f"{track.id!r} is reserved: the validation leaderboard's folder "
                f"({leaderboard_prefix(VALIDATION_PHASE)}) sits next to the tracks'",
            )

    for i, event in enumerate(ch.timeline):
        if event.date.fixed:
            continue
        if event.phase in PHASES_NEEDING_A_DATE:
            error(
                f"timeline[{i}].date",
                f"event {event.name!r} starts the {event.phase} phase but its date "
                f"({event.date.text()}) is not fixed; fix the date before deploying",
            )
        else:
            warn(
                f"timeline[{i}].date",
                f"event {event.name!r} has no fixed date yet ({event.date.text()}); "
                "nothing is scheduled for it",
            )

    index = {e.name: i for i, e in enumerate(ch.timeline)}
    milestones = [(name, ch.timeline[index[name]]) for name in ORDERED_MILESTONES if name in index]
    fixed = [(n, e) for n, e in milestones if e.date.fixed]
    for (prev_name, prev), (name, event) in zip(fixed, fixed[1:], strict=False):
        if _when(ch, event) <= _when(ch, prev):
            error(
                f"timeline[{index[name]}].date",
                f"{name} ({event.date.text()}) must come after {prev_name} ({prev.date.text()})",
            )

    # A phone is plugged into one machine: its benchmarks cannot go to two hosts' queues.
    host_of_serial: dict[str, tuple[int, str | None]] = {}
    for i, device in enumerate(ch.devices):
        if device.backend != "adb" or not device.serial:
            continue
        first = host_of_serial.setdefault(device.serial, (i, device.host))
        if first[1] != device.host:
            error(
                f"devices[{i}].host",
                f"phone {device.serial!r} is on host {device.host or '(none)'!r} here but on "
                f"{first[1] or '(none)'!r} at devices[{first[0]}]; a phone has one host",
            )

    devices = {d.name for d in ch.devices}
    for i, track in enumerate(ch.tracks):
        if track.device not in devices:
            declared = ", ".join(sorted(devices)) or "none"
            error(f"tracks[{i}].device", f"unknown device {track.device!r}; declared: {declared}")
        for j, metric in enumerate(track.metrics):
            if metric not in METRICS:
                error(
                    f"tracks[{i}].metrics[{j}]",
                    f"unknown metric {metric!r}; known: {', '.join(sorted(METRICS))}",
                )
        clash = set(track.score.constants) & (set(METRICS) | set(MEASUREMENT_VARIABLES))
        if clash:
            error(
                f"tracks[{i}].score.constants",
                f"constant(s) {', '.join(sorted(clash))} shadow a metric or measurement",
            )
        known = set(track.metrics) | set(MEASUREMENT_VARIABLES) | set(track.score.constants)
        try:
            parse_formula(track.score.formula, known)
        except FormulaError as exc:
            error(f"tracks[{i}].score.formula", str(exc))
        for field, message in _fidelity_problems(track):
            error(f"tracks[{i}].fidelity.{field}", message)

    for i, event in enumerate(ch.timeline):
        if event.test_inputs and event.phase != Phase.RELEASE_DATA:
            error(
                f"timeline[{i}].test_inputs",
                f"event {event.name!r} has phase {event.phase}; only a release_data event "
                "publishes the test inputs",
            )
        elif event.test_inputs and not ch.tracks:
            error(
                f"timeline[{i}].test_inputs", "the challenge has no tracks whose inputs to publish"
            )

    needs_storage = ch.tracks or any(
        e.phase in PHASES_NEEDING_A_DATE or e.phase == Phase.WORKSHOP_NOTICE for e in ch.timeline
    )
    if needs_storage and ch.buckets is None:
        error("buckets", "the timeline has phases that publish or collect; name the buckets")
    if needs_storage and ch.participants is None:
        error("participants", "the timeline sends notices; say where the registered teams are")
    if any(e.phase == Phase.FINAL_COLLECTION for e in ch.timeline) and not ch.tracks:
        error("tracks", "a final_collection event needs at least one track to collect")
    return problems


def _fidelity_problems(track: Track) -> list[tuple[str, str]]:
    """(field under ``fidelity``, message) for each setting the track cannot honour."""
    settings = track.fidelity
    problems: list[tuple[str, str]] = []
    if settings.model == "model_none" and not track.fidelity_inputs:
        problems.append(
            ("model", "model_none needs the track's fidelity_inputs (the model_none.tflite spec)")
        )
    if settings.fit != "tiles":
        return problems
    if any(m in ("top1", "top3") for m in track.metrics):
        problems.append(("fit", "tiles stitches images; a top1/top3 track's output is scores"))
        return problems
    runs = [("inputs", track.inputs)]
    if settings.model == "model_none":
        runs = [("fidelity_inputs", track.fidelity_inputs or [])]
    elif settings.model == "auto" and track.fidelity_inputs:
        runs.append(("fidelity_inputs", track.fidelity_inputs))
    for name, specs in runs:
        if len(specs) != 1:
            problems.append(("fit", f"tiles needs a model with one input; {name} has {len(specs)}"))
            continue
        shape = specs[0].shape
        if len(shape) != 4 or shape[1] <= 0 or shape[2] <= 0:
            hint = " (set model: model to tile model.tflite)" if name == "fidelity_inputs" else ""
            problems.append(
                (
                    "fit",
                    f"tiles needs a fixed height and width in {name}[0].shape (batch, height, "
                    f"width, channels); it is {shape}{hint}",
                )
            )
    out = track.outputs[0].shape
    if len(out) != 4:
        problems.append(
            (
                "fit",
                f"tiles needs an image output (batch, height, width, channels); "
                f"outputs[0].shape is {out}",
            )
        )
    else:
        inp = track.inputs[0].shape
        for axis, label in ((1, "height"), (2, "width")):
            if len(inp) == 4 and inp[axis] > 0 and out[axis] > 0 and out[axis] % inp[axis]:
                problems.append(
                    (
                        "fit",
                        f"tiles needs the output {label} ({out[axis]}) to be a whole multiple "
                        f"of the input {label} ({inp[axis]})",
                    )
                )
    return problems


def _when(ch: Challenge, event: Event) -> dt.datetime:
    time = event.time or ch.deadline_time
    return dt.datetime.combine(event.date.as_date(), time, tzinfo=zone(ch.timezone))


def challenges_dirs() -> list[Path]:
    """The folders of challenge files: ``MAI_OPS_CHALLENGES_DIR`` or the project's include/.

    The variable may list several folders, separated like ``PATH`` (the local stack
    serves its rehearsal copies next to the real files this way).
    """
    env = os.environ.get("MAI_OPS_CHALLENGES_DIR")
    if env:
        return [Path(d) for d in env.split(os.pathsep) if d]
    return [PROJECT_ROOT / "include" / "challenges"]


def default_challenges_dir() -> Path:
    """The first folder of challenge files (where organizers keep the real ones)."""
    return challenges_dirs()[0]


def challenge_files(directory: str | Path | None = None) -> list[Path]:
    folders = [Path(directory)] if directory else challenges_dirs()
    return [p for d in folders for p in sorted(d.glob("*.y*ml")) if p.suffix in {".yaml", ".yml"}]


def find_challenge_file(challenge_id: str) -> Path:
    """The file defining ``challenge_id`` among the shipped challenges; LookupError if none."""
    for path in challenge_files():
        if path.stem == challenge_id:
            return path
    for path in challenge_files():
        try:
            if load_challenge(path).id == challenge_id:
                return path
        except ChallengeConfigError:
            continue
    known = ", ".join(p.stem for p in challenge_files()) or "none"
    raise LookupError(
        f"no challenge {challenge_id!r} in {default_challenges_dir()} (known: {known})"
    )


def validate_files(paths: list[Path]) -> list[Problem]:
    """Every finding across ``paths``, including a challenge id used by two files."""
    problems: list[Problem] = []
    seen: dict[str, Path] = {}
    for path in paths:
        challenge, found = read_challenge(path)
        problems.extend(found)
        if challenge is None:
            continue
        if challenge.id in seen:
            problems.append(
                Problem(
                    str(path),
                    "id",
                    f"challenge id {challenge.id!r} is also used by {seen[challenge.id]}",
                )
            )
        else:
            seen[challenge.id] = path
    return problems
