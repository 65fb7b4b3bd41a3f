"""``mai-ops check-model``: the conversion checks on one .tflite file.

Exit 0 when every check passes, 1 when one fails, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from typing import Any

from mai_ops.challenge.config import (
    DELEGATES,
    DTYPES,
    ChallengeConfigError,
    Track,
    challenge_files,
    find_challenge_file,
    load_challenge,
)
from mai_ops.infra.child import ChildLimits
from mai_ops.models.checks import CheckReport, ModelSpec, check_model

_MB = 1024 * 1024


class UsageError(ValueError):
    """Bad command-line input: exit status 2."""


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,544,960,4"`` (or ``1x544x960x4``; ``-1`` or ``?`` for dynamic) -> a tuple."""
    parts = [p.strip() for p in text.replace("x", ",").replace("[", "").replace("]", "").split(",")]
    try:
        shape = tuple(-1 if p in ("?", "-1", "None") else int(p) for p in parts if p)
    except ValueError:
        raise UsageError(
            f"bad shape {text!r}: expected comma-separated sizes like 1,224,224,3"
        ) from None
    if not shape or any(d == 0 or d < -1 for d in shape):
        raise UsageError(f"bad shape {text!r}: sizes must be positive, or -1 for dynamic")
    return shape


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-model",
        help="run the conversion checks on a .tflite model",
        description=(
            "Run the conversion checks (SPEC section 5) on a .tflite model, against a "
            "track of a challenge or against shapes given here. Exit 0 when every check "
            "passes, 1 when one fails, 2 on a usage error."
        ),
    )
    p.add_argument("model", help="path to the .tflite file")
    p.add_argument("--challenge", help="challenge id (include/challenges/<id>.yaml)")
    p.add_argument("--track", help="track id within the challenge")
    p.add_argument(
        "--fidelity", action="store_true", help="check the track's fidelity (dynamic) model"
    )
    p.add_argument(
        "--input-shape",
        action="append",
        metavar="1,H,W,C",
        help="an input shape (-1 = dynamic); repeat for several inputs",
    )
    p.add_argument("--input-dtype", action="append", metavar="DTYPE", help="default float32")
    p.add_argument("--output-shape", action="append", metavar="1,H,W,C")
    p.add_argument("--output-dtype", action="append", metavar="DTYPE", help="default: input's")
    p.add_argument("--resize-to", action="append", metavar="1,H,W,C", help="fidelity test shape")
    p.add_argument("--quantization", choices=("any", "float", "int8"), default=None)
    p.add_argument("--int8", action="store_true", help="same as --quantization int8")
    p.add_argument("--delegate", choices=DELEGATES, default=None)
    p.add_argument("--max-size-mb", type=float, default=None)
    p.add_argument("--timeout", type=float, default=ChildLimits.timeout_s, help="seconds")
    p.add_argument("--memory-mb", type=int, default=ChildLimits.memory_mb)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_check_model_command)


def _check_model_command(args: argparse.Namespace) -> int:
    try:
        spec = spec_from_args(args)
    except UsageError as exc:
        print(f"mai-ops check-model: error: {exc}", file=sys.stderr)
        return 2
    if args.timeout <= 0 or args.memory_mb <= 0:
        print(
            "mai-ops check-model: error: --timeout and --memory-mb must be positive",
            file=sys.stderr,
        )
        return 2
    report = check_model(
        args.model, spec, ChildLimits(timeout_s=args.timeout, memory_mb=args.memory_mb)
    )
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(format_report(report))
    return 0 if report.ok else 1


def spec_from_args(args: argparse.Namespace) -> ModelSpec:
    """The spec the command line asks for; :class:`UsageError` when it is not one."""
    by_track = args.challenge is not None or args.track is not None
    by_shape = bool(args.input_shape)
    if by_track and by_shape:
        raise UsageError("give either --challenge/--track or --input-shape, not both")
    if not by_track and not by_shape:
        raise UsageError("say what to check against: --challenge ID --track ID, or --input-shape")
    if args.fidelity and not by_track:
        raise UsageError(
            "--fidelity needs --challenge/--track (with --input-shape use --resize-to)"
        )
    if by_track:
        if not (args.challenge and args.track):
            raise UsageError("--challenge and --track go together")
        track = _find_track(args.challenge, args.track)
        try:
            spec = ModelSpec.from_track(track, fidelity=args.fidelity)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        overrides: dict[str, Any] = {}
        if args.max_size_mb is not None:
            overrides["max_size_mb"] = args.max_size_mb
        if args.delegate:
            overrides["delegate"] = args.delegate
        if args.int8 or args.quantization:
            overrides["quantization"] = "int8" if args.int8 else args.quantization
        return _replace(spec, **overrides)

    inputs = [parse_shape(s) for s in args.input_shape]
    in_dtypes = _dtypes(args.input_dtype, len(inputs), "float32", "--input-dtype")
    outputs = None
    if args.output_shape:
        shapes = [parse_shape(s) for s in args.output_shape]
        out_dtypes = _dtypes(args.output_dtype, len(shapes), in_dtypes[0], "--output-dtype")
        outputs = tuple(zip(shapes, out_dtypes, strict=True))
    elif args.output_dtype:
        raise UsageError("--output-dtype needs --output-shape")
    resize_to = tuple(parse_shape(s) for s in args.resize_to) if args.resize_to else None
    if resize_to and any(d < 1 for s in resize_to for d in s):
        raise UsageError("--resize-to needs concrete sizes (no -1)")
    if args.int8 and args.quantization not in (None, "int8"):
        raise UsageError(f"--int8 contradicts --quantization {args.quantization}")
    quantization = "int8" if args.int8 else (args.quantization or "any")
    if args.max_size_mb is not None and args.max_size_mb <= 0:
        raise UsageError("--max-size-mb must be positive")
    try:
        return ModelSpec(
            inputs=tuple(zip(inputs, in_dtypes, strict=True)),
            outputs=outputs,
            quantization=quantization,
            delegate=args.delegate or "cpu",
            max_size_mb=args.max_size_mb,
            resize_to=resize_to,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _replace(spec: ModelSpec, **changes: Any) -> ModelSpec:
    try:
        return replace(spec, **changes)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _dtypes(given: list[str] | None, count: int, default: str, flag: str) -> list[str]:
    given = given or [default]
    for dtype in given:
        if dtype not in DTYPES:
            raise UsageError(f"{flag}: unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    if len(given) == 1:
        return given * count
    if len(given) != count:
        raise UsageError(f"{flag} given {len(given)} times for {count} tensor(s)")
    return given


def _find_track(challenge_id: str, track_id: str) -> Track:
    try:
        challenge = load_challenge(find_challenge_file(challenge_id))
    except LookupError:
        known = ", ".join(p.stem for p in challenge_files()) or "none"
        raise UsageError(f"unknown challenge {challenge_id!r} (known: {known})") from None
    except ChallengeConfigError as exc:
        raise UsageError(f"challenge {challenge_id!r} does not load:\n{exc}") from None
    try:
        return challenge.track(track_id)
    except KeyError:
        known = ", ".join(t.id for t in challenge.tracks) or "none"
        raise UsageError(
            f"challenge {challenge.id} has no track {track_id!r} (known: {known})"
        ) from None


def format_report(report: CheckReport) -> str:
    """The report as text for a terminal or an email."""
    size = report.size_bytes
    size = f"{size / _MB:.2f} MB" if size >= _MB // 10 else f"{size / 1024:.1f} KB"
    lines = [f"{'PASS' if report.ok else 'FAIL'} {report.path} ({size})"]
    for error in report.errors:
        lines.append(f"  [{error.code}] {error.message}")
    for kind, tensors in (("input", report.inputs), ("output", report.outputs)):
        for i, t in enumerate(tensors):
            q = t["quantization"]
            quant = f", scale {q['scale']}, zero point {q['zero_point']}" if q else ""
            lines.append(f"  {kind} {i}: {t['name']} {t['shape']} {t['dtype']}{quant}")
    if report.ops:
        lines.append(f"  ops: {', '.join(report.ops)}")
    return "\n".join(lines)
