"""The ranked table checked against the Great Expectations suite of the final results.

The suite, ``include/expectations/final_results.json``, is an ExpectationSuite saved as
JSON (Great Expectations 1.x) and the one list of what must hold: one row per (track,
team), the values a ranked row needs, metric ranges, a finite positive runtime, scores
equal to the formula, ranks dense and consistent with scores. It is loaded at run time
and validated in an ephemeral context, on a pandas DataFrame of the table's rows.

Great Expectations has no formula or per-group expectation, so this module adds
derived columns, computed in Python, that the suite's expectations read:

- ``required_<metric>`` for every known metric: the row is ranked (``ok``) and its
  track measures that metric;
- ``expected_score``: the track's formula (:func:`mai_ops.models.fidelity.score_with_reason`)
  on the row's metrics and runtime with the table's constants, and
  ``score_relative_error``: ``|score - expected| / |expected|`` (``|score|`` when the
  expected score is 0; infinite when the formula cannot be computed on the row);
- ``rank_if_dense``: 1 + the number of distinct ranks below the row's in its track;
- ``rank_conflicts``: how many rows of its track are ranked the other way round from
  their scores (a better score with a worse rank, or a worse score with a better one).

Great Expectations takes seconds to import; it is imported once, when
:func:`validate_table` first runs, never when this module loads.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mai_ops import PROJECT_ROOT
from mai_ops.models.fidelity import score_with_reason
from mai_ops.models.metrics import METRICS

SUITE = PROJECT_ROOT / "include" / "expectations" / "final_results.json"
INDEX_COLUMNS = ("track", "team")
# Rows named under one failed expectation in summary(); the rest are counted.
MAX_ROWS_SHOWN = 20
_NUMERIC = ("rank", "score", "runtime_ms", *METRICS)


class SuiteError(ValueError):
    """The suite file cannot be used as it is (unreadable, or an entry GX refuses)."""


@dataclass
class ValidationReport:
    """What the suite found on a table.

    ``results``: one entry per expectation, in the suite's order: ``expectation`` (its
    type), ``description``, ``columns`` (the columns it reads), ``success``,
    ``failed_rows`` (``"<track>/<team>"`` of each row that broke it), ``details``
    (``"<column>=<value>"`` of each failed row, in the same order) and ``error`` (why
    Great Expectations could not evaluate it, else None).
    """

    challenge: str
    success: bool
    results: list[dict] = field(default_factory=list)
    rows: int = 0

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.results if not r["success"]]

    def as_json(self) -> dict[str, Any]:
        return {
            "challenge": self.challenge,
            "success": self.success,
            "rows": self.rows,
            "results": self.results,
        }

    def summary(self) -> str:
        """Which expectation failed on which rows, for a task log and an alert email."""
        total = len(self.results)
        if self.success:
            return (
                f"final results of {self.challenge}: all {total} expectations passed "
                f"on {self.rows} rows"
            )
        failed = self.failed
        lines = [
            f"final results of {self.challenge}: {len(failed)} of {total} expectations "
            f"failed on {self.rows} rows"
        ]
        for r in failed:
            lines.append(
                f"FAILED {r['description']} [{r['expectation']} on {', '.join(r['columns'])}]"
            )
            if r["error"]:
                lines.append(f"  not evaluated: {r['error']}")
            shown = list(zip(r["failed_rows"], r["details"], strict=True))
            for row, detail in shown[:MAX_ROWS_SHOWN]:
                lines.append(f"  {row}" + (f": {detail}" if detail else ""))
            if len(shown) > MAX_ROWS_SHOWN:
                lines.append(f"  and {len(shown) - MAX_ROWS_SHOWN} more rows")
        return "\n".join(lines)


def load_suite_spec(path: str | Path = SUITE) -> dict:
    """The suite file's JSON; each expectation needs a description of its own."""
    try:
        spec = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SuiteError(f"cannot read the expectation suite {path}: {exc}") from None
    descriptions = [e.get("description") for e in spec.get("expectations", [])]
    if not descriptions or not all(descriptions) or len(set(descriptions)) != len(descriptions):
        raise SuiteError(
            f"{path}: every expectation needs a description of its own (it names the "
            "expectation in the report)"
        )
    return spec


def table_frame_rows(challenge: Any, table: Mapping[str, Any]) -> list[dict]:
    """The rows validated: every row of every track with the derived columns added."""
    rows = []
    for track_id, entry in (table.get("tracks") or {}).items():
        track = _track(challenge, track_id)
        metrics = list(entry.get("metrics") or (track.metrics if track else []))
        constants = entry.get("constants")
        track_rows = [dict(r) for r in entry.get("rows") or []]
        for row in track_rows:
            row.setdefault("track", track_id)
            ranked = row.get("status") == "ok"
            for metric in METRICS:
                row.setdefault(metric, None)
                row[f"required_{metric}"] = ranked and metric in metrics
            row["expected_score"] = _expected_score(track, row, metrics, constants)
            row["score_relative_error"] = _relative_error(row.get("score"), row["expected_score"])
        _rank_columns(track_rows)
        rows.extend(track_rows)
    return rows


def _track(challenge: Any, track_id: str) -> Any:
    try:
        return challenge.track(track_id)
    except KeyError:
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _expected_score(track: Any, row: dict, metrics: list[str], constants: Any) -> float | None:
    if track is None:
        return None
    values = {m: _number(row.get(m)) for m in metrics}
    runtime = _number(row.get("runtime_ms"))
    score, _ = score_with_reason(track, values, runtime, constants=constants)
    return score


def _relative_error(score: Any, expected: float | None) -> float | None:
    if score is None:
        return None
    value = _number(score)
    if value is None or expected is None or not math.isfinite(value):
        return math.inf
    difference = abs(value - expected)
    return difference / abs(expected) if expected else difference


def _rank_columns(rows: list[dict]) -> None:
    """``rank_if_dense`` and ``rank_conflicts`` of one track's rows."""
    ranks = sorted({r for row in rows if (r := _number(row.get("rank"))) is not None})
    scored = [
        (rank, score)
        for row in rows
        if (rank := _number(row.get("rank"))) is not None
        and (score := _number(row.get("score"))) is not None
    ]
    for row in rows:
        rank, score = _number(row.get("rank")), _number(row.get("score"))
        row["rank_if_dense"] = None if rank is None else 1 + ranks.index(rank)
        if rank is None or score is None:
            row["rank_conflicts"] = None
            continue
        row["rank_conflicts"] = sum(
            1 for r, s in scored if (s > score and r > rank) or (s < score and r < rank)
        )


def validate_table(
    challenge: Any, table: Mapping[str, Any], suite_path: str | Path = SUITE
) -> ValidationReport:
    """Validate the ranked ``table`` of ``challenge`` against the suite.

    Great Expectations' own warnings (deprecations of its dependencies) are silenced:
    they would land in a task log or in ``mai-ops score --json``'s output.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _validate(challenge, table, suite_path)


def _validate(challenge: Any, table: Mapping[str, Any], suite_path: str | Path) -> ValidationReport:
    spec = load_suite_spec(suite_path)
    rows = table_frame_rows(challenge, table)
    import great_expectations as gx  # seconds to import: only when a table is validated
    import pandas as pd
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    suite = gx.ExpectationSuite(
        name=spec.get("name") or "final_results",
        expectations=spec["expectations"],
        notes=spec.get("notes"),
        meta=spec.get("meta") or None,
    )
    if len(suite.expectations) != len(spec["expectations"]):
        accepted = {e.description for e in suite.expectations}
        refused = [
            e["description"] for e in spec["expectations"] if e["description"] not in accepted
        ]
        raise SuiteError(f"{suite_path}: Great Expectations refused: {'; '.join(refused)}")
    frame = _frame(pd, rows)
    batch = (
        context.data_sources.add_pandas("final_results")
        .add_dataframe_asset("ranked_table")
        .add_batch_definition_whole_dataframe("whole_table")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    outcome = batch.validate(
        suite,
        result_format={
            "result_format": "COMPLETE",
            "unexpected_index_column_names": list(INDEX_COLUMNS),
            "return_unexpected_index_query": False,
        },
    )
    order = {e["description"]: i for i, e in enumerate(spec["expectations"])}
    results = sorted(
        (_result(r) for r in outcome.results), key=lambda r: order.get(r["description"], 0)
    )
    return ValidationReport(
        challenge=getattr(challenge, "id", str(challenge)),
        success=all(r["success"] for r in results),
        results=results,
        rows=len(rows),
    )


def _frame(pd: Any, rows: list[dict]) -> Any:
    columns = list(
        dict.fromkeys(
            [*INDEX_COLUMNS, "status", *_NUMERIC, "rank_if_dense", "rank_conflicts"]
            + [c for row in rows for c in row]
        )
    )
    frame = pd.DataFrame.from_records(rows, columns=columns)
    for column in (*_NUMERIC, "expected_score", "score_relative_error"):
        if column in frame:
            try:
                frame[column] = frame[column].astype("float64")
            except (TypeError, ValueError):
                pass  # a value that is not a number: the expectations on it say so
    # Lists (flags) are left as they are: no expectation reads them.
    return frame


def _result(result: Any) -> dict:
    config = result.expectation_config
    kwargs = config.kwargs
    columns = [
        c
        for c in (
            kwargs.get("column"),
            kwargs.get("column_A"),
            kwargs.get("column_B"),
            *(kwargs.get("column_list") or []),
        )
        if c
    ]
    failed_rows, details = [], []
    seen = set()
    for item in (result.result or {}).get("unexpected_index_list") or []:
        name = f"{item.get('track')}/{item.get('team')}"
        detail = ", ".join(f"{k}={_shown(v)}" for k, v in item.items() if k not in INDEX_COLUMNS)
        if (name, detail) in seen:
            continue
        seen.add((name, detail))
        failed_rows.append(name)
        details.append(detail)
    return {
        "expectation": config.type,
        "description": config.description,
        "columns": columns,
        "success": bool(result.success),
        "failed_rows": failed_rows,
        "details": details,
        "error": _exception(result.exception_info),
    }


def _shown(value: Any) -> str:
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float):
        return "null" if math.isnan(value) else format(value, ".10g")
    return str(value)


def _exception(info: Any) -> str | None:
    """The message of an exception GX caught while evaluating, or None."""
    if not info:
        return None
    if "raised_exception" in info:
        return info.get("exception_message") if info.get("raised_exception") else None
    for entry in info.values():  # keyed by metric when a metric failed
        if isinstance(entry, Mapping) and entry.get("raised_exception"):
            return entry.get("exception_message")
    return None
