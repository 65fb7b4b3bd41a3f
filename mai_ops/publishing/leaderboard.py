"""A challenge's leaderboards as files anyone can read: pages, CSV, JSON and plots.

:func:`render_leaderboard` turns a ranked table (what
:func:`mai_ops.publishing.preliminary.public_table` returns, or the validation table of
:mod:`mai_ops.publishing.validation_board`) into one file tree: per track
``<track>/index.html`` (the table, sortable by any column, and the plot),
``results.csv`` and ``results.json`` (the same rows), ``plot.svg`` and ``plot.png``
(:mod:`mai_ops.publishing.plot`), and ``index.html`` linking every track's files. The
tree is written to the public bucket under the phase's prefix
(:func:`mai_ops.infra.layout.leaderboard_prefix`) by :func:`publish_leaderboard`, or to
a folder by :func:`write_leaderboard`.

- Safe to show: rows hold only the public fields (no email, no upload key, no error
  message); every string from a row is escaped by the templates (Jinja2, autoescape)
  and the SVG writer; each page allows only its own inline style and script by hash
  (Content-Security-Policy), and loads nothing from elsewhere, so it works offline.
  A CSV cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is
  written with a leading ``'`` so that a spreadsheet shows it as text.
- Where a runtime was measured: a ``litert`` row was measured by LiteRT on the
  worker's CPU, which stands in for the track's device (every ``litert`` device is the
  server's CPU, whatever its title names); an ``adb`` row on the device itself.
  Every page, plot and file says which next to the number (:func:`runtime_note`).
- The same table gives the same bytes: nothing here reads the clock.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mai_ops import PROJECT_ROOT
from mai_ops.devices.results import device_title, is_stand_in, runtime_note
from mai_ops.infra.layout import (
    FINAL_PHASE,
    LEADERBOARD_INDEX,
    LEADERBOARD_TRACK_FILES,
    VALIDATION_PHASE,
    leaderboard_file,
    leaderboard_prefix,
)

TEMPLATES = PROJECT_ROOT / "include" / "templates" / "leaderboard"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".csv": "text/csv; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# Browsers ask again before showing a stored copy: a leaderboard changes as uploads are
# scored, and the objects keep their names.
CACHE_CONTROL = "no-cache"

# The columns of results.csv (and the keys of each row in results.json), metrics after
# the team.
COLUMNS_BEFORE = ("rank", "team")
COLUMNS_AFTER = (
    "runtime_ms",
    "runtime_measured_on",
    "runtime_stand_in",
    "device",
    "backend",
    "score",
    "status",
    "error",
    "flags",
    "sha256",
    "uploaded_at",
    "track",
)
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

FLAGS = {
    "results_not_reproduced": (
        "our run of the submitted model did not reproduce the team's own results on the test inputs"
    ),
}

PHASES = {
    FINAL_PHASE: {
        "title": "Final results (preliminary)",
        "lead": (
            "Each team's final submission, scored on the hidden test set. Preliminary: "
            "the organizers may still correct them."
        ),
        "empty": "No final submission was scored on this track.",
        "caption": "the final submissions",
    },
    VALIDATION_PHASE: {
        "title": "Validation leaderboard",
        "lead": (
            "Each team's best verified validation upload (checked, measured and scored on "
            "the validation set), updated as uploads are scored."
        ),
        "empty": "No verified validation upload with a score on this track yet.",
        "caption": "each team's best validation upload",
    },
}


# ---------------------------------------------------------------------------------
# Where a runtime was measured
# ---------------------------------------------------------------------------------


def track_runtime_text(challenge: Any, entry: Mapping[str, Any]) -> str:
    """The page's line about runtimes: one note when every measured row shares it."""
    notes = {runtime_note(challenge, r) for r in entry["rows"]} - {None}
    if len(notes) == 1:
        return f"median of the timed runs, ms; {notes.pop()}"
    if notes:
        return "median of the timed runs, ms; where each was measured is said next to it"
    # Nothing measured yet: where the track's device, as configured, will measure.
    name = entry.get("device")
    try:
        backend = challenge.device(name).backend
    except KeyError:
        backend = None
    row = {"runtime_ms": 0.0, "backend": backend, "device": name}
    return f"median of the timed runs, ms; {runtime_note(challenge, row)} (nothing measured yet)"


# ---------------------------------------------------------------------------------
# Rows, CSV and JSON
# ---------------------------------------------------------------------------------


def columns(entry: Mapping[str, Any]) -> list[str]:
    return [*COLUMNS_BEFORE, *entry["metrics"], *COLUMNS_AFTER]


def file_rows(challenge: Any, entry: Mapping[str, Any]) -> list[dict]:
    """The rows of results.csv and results.json: the table's rows with where each
    runtime was measured, in the table's order."""
    out = []
    for row in entry["rows"]:
        extra = {
            "runtime_measured_on": runtime_note(challenge, row),
            "runtime_stand_in": is_stand_in(row) if row.get("runtime_ms") is not None else None,
        }
        out.append({c: extra[c] if c in extra else row.get(c) for c in columns(entry)})
    return out


def csv_cell(value: Any) -> str:
    """One CSV cell: numbers exactly, lists joined by ``; ``, text safe from formulas."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = "; ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def render_csv(challenge: Any, entry: Mapping[str, Any]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    names = columns(entry)
    writer.writerow(names)
    for row in file_rows(challenge, entry):
        writer.writerow([csv_cell(row[c]) for c in names])
    return out.getvalue().encode()


def track_ids(table: Mapping[str, Any], challenge: Any) -> list[str]:
    """The table's tracks in the challenge's order (a stored table's keys are sorted),
    then any the challenge no longer has, by id."""
    order = [t.id for t in getattr(challenge, "tracks", [])]
    return sorted(table["tracks"], key=lambda t: (order.index(t) if t in order else len(order), t))


def _constants(entry: Mapping[str, Any]) -> dict:
    return dict(sorted(entry["constants"].items()))


def render_json(table: Mapping[str, Any], track_id: str, challenge: Any) -> bytes:
    from mai_ops.models.metrics import METRICS

    entry = table["tracks"][track_id]
    document = {
        "challenge": table["challenge"],
        "phase": table["phase"],
        "track": track_id,
        "title": _track(challenge, track_id).get("title", track_id),
        "formula": entry["formula"],
        "constants": _constants(entry),
        "metrics": entry["metrics"],
        "higher_is_better": {
            m: METRICS[m].higher_is_better for m in entry["metrics"] if m in METRICS
        },
        "device": entry["device"],
        "device_title": device_title(challenge, entry["device"]),
        "columns": columns(entry),
        "rows": file_rows(challenge, entry),
    }
    return (json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


# ---------------------------------------------------------------------------------
# Pages
# ---------------------------------------------------------------------------------


def _track(challenge: Any, track_id: str) -> dict:
    try:
        track = challenge.track(track_id)
    except KeyError:
        return {"title": track_id, "task": ""}
    return {"title": track.title, "task": track.task}


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, f".{digits}g")


def _sort_key(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return repr(value)


def _hash(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def _environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    return Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _page_parts(script: bool) -> dict:
    """The page's own style and script (files of ours, inserted as they are) and the
    Content-Security-Policy that allows exactly these two, by their hashes."""
    from markupsafe import Markup

    css = (TEMPLATES / "board.css").read_text()
    js = (TEMPLATES / "sort.js").read_text() if script else ""
    csp = (
        f"default-src 'none'; style-src '{_hash(css)}'; img-src 'self'; "
        + (f"script-src '{_hash(js)}'; " if script else "")
        + "base-uri 'none'; form-action 'none'"
    )
    return {"css": Markup(css), "js": Markup(js), "csp": csp}


def _footer(table: Mapping[str, Any]) -> str:
    return (
        f"{table['challenge']}: {PHASES[table['phase']]['title'].lower()}. "
        "The same rows as results.csv and results.json; runtimes are medians in ms."
    )


def _constants_text(constants: Mapping[str, float]) -> str:
    return ", ".join(f"{k} = {_number(v, 6)}" for k, v in constants.items())


def _ranking_text(entry: Mapping[str, Any]) -> str:
    metric = entry["metrics"][0]
    return (
        f"higher score first; equal scores: the better {metric}, then the earlier upload; "
        "failed and excluded entries follow, unranked"
    )


def render_track_page(table: Mapping[str, Any], track_id: str, challenge: Any, svg: bytes) -> bytes:
    from markupsafe import Markup

    from mai_ops.models.metrics import METRICS

    entry = table["tracks"][track_id]
    phase = PHASES[table["phase"]]
    metrics = []
    for m in entry["metrics"]:
        info = METRICS.get(m)
        higher = info.higher_is_better if info else True
        metrics.append(
            {
                "name": m,
                "higher_is_better": higher,
                "arrow": "↑" if higher else "↓",
                "direction": "higher is better" if higher else "lower is better",
                "description": info.description if info else m,
            }
        )
    rows = [_page_row(challenge, entry, row) for row in entry["rows"]]
    ranked = sum(1 for r in entry["rows"] if r.get("rank") is not None)
    context = {
        **_page_parts(script=True),
        "challenge": {"id": table["challenge"], "title": getattr(challenge, "title", "")},
        "phase": phase,
        "track": {
            "id": track_id,
            **_track(challenge, track_id),
            "formula": entry["formula"],
            "constants": _constants_text(_constants(entry)),
            "runtime_text": track_runtime_text(challenge, entry),
            "ranking": _ranking_text(entry),
            "ranked": ranked,
            "unranked": len(entry["rows"]) - ranked,
        },
        "metrics": metrics,
        "rows": rows,
        # Written by mai_ops.publishing.plot, which escapes every string it holds.
        "plot_svg": Markup(svg.decode()),
        "plot_caption": (
            f"{entry['metrics'][0]} against runtime (log scale) for {phase['caption']}: "
            "orange points form the Pareto front (no other team both faster and better), "
            "grey curves join equal scores through the top teams' points. "
            "Also as plot.svg and plot.png."
        ),
        "footer": _footer(table),
    }
    return _environment().get_template("track.html.j2").render(context).encode()


def _page_row(challenge: Any, entry: Mapping[str, Any], row: Mapping[str, Any]) -> dict:
    from mai_ops.errors import CODES

    error = row.get("error")
    runtime = row.get("runtime_ms")
    return {
        "rank": row["rank"] if row.get("rank") is not None else "–",
        "rank_sort": _sort_key(row.get("rank")),
        "team": str(row.get("team")),
        "metrics": [
            {"text": _number(row.get(m), 5), "sort": _sort_key(row.get(m))}
            for m in entry["metrics"]
        ],
        "runtime": f"{_number(runtime)} ms" if runtime is not None else "–",
        "runtime_sort": _sort_key(runtime),
        "runtime_note": runtime_note(challenge, row),
        "score": _number(row.get("score"), 5),
        "score_sort": _sort_key(row.get("score")),
        "flags": [
            {"name": str(f), "meaning": FLAGS.get(str(f), str(f))} for f in row.get("flags") or []
        ],
        "status": str(row.get("status")),
        "error": error,
        "error_meaning": CODES[error].meaning if error in CODES else "",
        "check": f"{row.get('status')} {error or ''}".strip(),
    }


def render_index(table: Mapping[str, Any], challenge: Any) -> bytes:
    tracks = []
    for track_id in track_ids(table, challenge):
        entry = table["tracks"][track_id]
        ranked = [r for r in entry["rows"] if r.get("rank") is not None]
        leader = ranked[0] if ranked else None
        tracks.append(
            {
                "id": track_id,
                **_track(challenge, track_id),
                "ranked": len(ranked),
                "unranked": len(entry["rows"]) - len(ranked),
                "leader": str(leader["team"]) if leader else None,
                "leader_score": _number(leader.get("score"), 5) if leader else None,
                "runtime_text": track_runtime_text(challenge, entry),
            }
        )
    context = {
        **_page_parts(script=False),
        "challenge": {"id": table["challenge"], "title": getattr(challenge, "title", "")},
        "phase": PHASES[table["phase"]],
        "tracks": tracks,
        "footer": _footer(table),
    }
    return _environment().get_template("index.html.j2").render(context).encode()


# ---------------------------------------------------------------------------------
# The tree
# ---------------------------------------------------------------------------------


def render_leaderboard(table: Mapping[str, Any], challenge: Any) -> dict[str, bytes]:
    """Every file of the table's leaderboard, by path relative to the phase's prefix.

    ``index.html``, then per track ``<track>/index.html``, ``results.csv``,
    ``results.json``, ``plot.svg`` and ``plot.png``.
    """
    from mai_ops.models.metrics import METRICS
    from mai_ops.publishing.plot import plot_scene, render_png, render_svg

    if table["phase"] not in PHASES:
        raise ValueError(f"no leaderboard for phase {table['phase']!r}")
    files = {LEADERBOARD_INDEX: render_index(table, challenge)}
    for track_id in track_ids(table, challenge):
        entry = table["tracks"][track_id]
        metric = entry["metrics"][0]
        notes = {runtime_note(challenge, r) for r in entry["rows"] if r.get("rank") is not None}
        notes.discard(None)
        scene = plot_scene(
            entry,
            title=_track(challenge, track_id)["title"],
            higher_is_better=METRICS[metric].higher_is_better if metric in METRICS else True,
            runtime_note=notes.pop() if len(notes) == 1 else None,
        )
        svg = render_svg(scene)
        made = {
            "index.html": render_track_page(table, track_id, challenge, svg),
            "results.csv": render_csv(challenge, entry),
            "results.json": render_json(table, track_id, challenge),
            "plot.svg": svg,
            "plot.png": render_png(scene),
        }
        for name in LEADERBOARD_TRACK_FILES:
            files[leaderboard_file(track_id, name)] = made[name]
    return files


def content_type(path: str) -> str:
    return CONTENT_TYPES[Path(path).suffix]


def write_leaderboard(files: Mapping[str, bytes], folder: str | Path) -> list[Path]:
    """Write the tree under ``folder`` (created as needed); returns the paths written."""
    written = []
    for relative, body in files.items():
        path = Path(folder) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        written.append(path)
    return written


def publish_leaderboard(s3: Any, bucket: str, phase: str, files: Mapping[str, bytes]) -> list[str]:
    """Put the tree under the phase's prefix in ``bucket``, each with its Content-Type.

    The track pages first and the index last, so a link on the index never leads to a
    page that is not there yet. Returns the keys written.
    """
    prefix = leaderboard_prefix(phase)
    order = sorted(files, key=lambda p: (p == LEADERBOARD_INDEX, p.endswith("index.html"), p))
    keys = []
    for relative in order:
        s3.put_object(
            Bucket=bucket,
            Key=prefix + relative,
            Body=files[relative],
            ContentType=content_type(relative),
            CacheControl=CACHE_CONTROL,
        )
        keys.append(prefix + relative)
    return keys
