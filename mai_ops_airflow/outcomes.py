"""What a mapped task's end state says about one submission: red means an organizer is needed.

- success (green): the submission was judged and passed;
- skipped (pink), labelled ``<team>: <code>`` in the grid: the participant's model
  failed (wrong shape, not a TFLite file, over quota...). It is recorded and answered;
  nobody needs to act;
- failed (red): a failure on our side (a code the registry in ``mai_ops.errors``
  retries: a device offline, a crash of ours, a frozen copy changed; or storage down):
  an organizer fixes the cause and clears the task.

Imported by tasks at run time only.
"""

from __future__ import annotations


class OurSideFailure(RuntimeError):
    """A submission failed for a reason of ours; Airflow retries, then shows it red."""


def failure_codes(record: dict) -> list[str]:
    """The codes of a record that did not pass (none for an ``ok`` record)."""
    if record.get("status") == "ok":
        return []
    return [e["code"] for e in record.get("errors") or []] or ["internal_error"]


def is_ours(codes: list[str]) -> bool:
    """Whether a failure is ours: a code the registry retries, or one it does not know."""
    from mai_ops.errors import CODES

    return any(code not in CODES or CODES[code].retry for code in codes)


def upload_label(key: str) -> str:
    """``<track>/<phase>/<team>/<file>`` as the grid shows it: ``<team>/<file>``."""
    parts = key.split("/")
    return "/".join(parts[2:]) if len(parts) >= 4 else key


def uploads_label(keys: list[str]) -> str:
    """A batch of one team's uploads in the grid: ``borealis/a.zip, b.zip``."""
    first, rest = upload_label(keys[0]), [k.rsplit("/", 1)[-1] for k in keys[1:]]
    return ", ".join([first, *rest])


def settle_uploads(results: list[dict], label_key: str) -> list[dict]:
    """:func:`settle` for one team's batch of uploads, each judged on its own.

    Any failure of ours fails the task; a batch whose every upload failed on the
    participant's side is skipped; otherwise it passes. Each failed upload's code
    joins the label: "borealis/a.zip, b.zip: not_tflite".
    """
    parts, failed = [], []
    for result in results:
        codes = failure_codes(result)
        name = result["key"].rsplit("/", 1)[-1] if parts else upload_label(result["key"])
        parts.append(f"{name}: {codes[0]}" if codes else name)
        failed += [codes] if codes else []
    _conclude(label_key, ", ".join(parts), failed, len(results))
    return results


def settle(record: dict, label_key: str) -> dict:
    """Return a passed record; skip on the participant's failure; raise on ours.

    ``label_key`` is the context variable the task's ``map_index_template`` shows; the
    failure's code is appended to it, so the grid reads "cobalt: not_tflite".
    """
    from airflow.sdk import get_current_context

    codes = failure_codes(record)
    if codes:
        label = f"{get_current_context().get(label_key) or ''}: {codes[0]}".lstrip(": ")
        _conclude(label_key, label, [codes], 1)
    return record


def _conclude(label_key: str, label: str, failed: list[list[str]], total: int) -> None:
    """Show ``label`` in the grid; raise on a failure of ours, skip when all failed."""
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowSkipException

    get_current_context()[label_key] = label
    if is_ours([code for codes in failed for code in codes]):
        raise OurSideFailure(f"{label}: a failure on our side; clear the task once it is fixed")
    if failed and len(failed) == total:
        raise AirflowSkipException(f"{label}: the participant's failure; recorded and answered")
