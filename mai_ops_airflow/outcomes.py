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


def settle(record: dict, label_key: str) -> dict:
    """Return a passed record; skip on the participant's failure; raise on ours.

    ``label_key`` is the context variable the task's ``map_index_template`` shows; the
    failure's code is appended to it, so the grid reads "cobalt: not_tflite".
    """
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowSkipException

    codes = failure_codes(record)
    if not codes:
        return record
    context = get_current_context()
    label = f"{context.get(label_key) or ''}: {codes[0]}".lstrip(": ")
    context[label_key] = label
    if is_ours(codes):
        raise OurSideFailure(f"{label}: a failure on our side; clear the task once it is fixed")
    raise AirflowSkipException(f"{label}: the participant's model failed; recorded and answered")
