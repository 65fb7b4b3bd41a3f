"""Every email's wording: Jinja2 templates in ``include/templates/email/``.

One template pair per kind of email: ``<kind>.txt`` is the plain-text part and
``<kind>.html`` the HTML part, each extending the shared layout (``_layout.txt``,
``_layout.html``); the subject is the ``subject`` block of ``<kind>.txt``, after the
challenge's short name in brackets. :mod:`mai_ops.notify.messages` gathers the data
(what happened, for which team); the templates say it.

Autoescape is on for ``.html`` templates and off for ``.txt``: the plain text is never
HTML-escaped, and every value printed into the HTML part is. Every value printed in
either part also passes :func:`_finalize`: control characters (CR and LF included)
become spaces, so a value a participant controls (a team name, a file name) cannot
break a line, forge a header-like line in the text, or carry a terminal escape. Lines
are the templates' business; values are one line each. A name the template does not
get is an error (``StrictUndefined``), never an empty gap in an email.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from mai_ops import PROJECT_ROOT
from mai_ops.notify.ledger import one_line

TEMPLATES = PROJECT_ROOT / "include" / "templates" / "email"
KINDS = (
    "event",
    "reminder",
    "release",
    "validation",
    "rejection",
    "final_upload",
    "receipt",
    "results",
)


def _finalize(value: Any) -> Any:
    if isinstance(value, Markup):
        return value
    if isinstance(value, str):
        return one_line(value)
    return value


def _ms(value: float | None) -> str:
    """A runtime for a reader: ``12.3 ms``; ``n/a`` when not measured."""
    if value is None:
        return "n/a"
    return f"{value:.3g} ms" if value < 10 else f"{value:.1f} ms"


def _number(value: float | None, digits: int = 4) -> str:
    """A metric or score: ``digits`` significant digits, ``n/a`` when missing."""
    if value is None:
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def _size(value: int | None) -> str:
    """A file size for a reader: ``1.2 MB`` (powers of 1000), exact bytes below 1 kB."""
    if value is None:
        return "n/a"
    for unit, step in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= step:
            return f"{value / step:.1f} {unit}"
    return f"{value} bytes"


@functools.cache
def environment(folder: Path = TEMPLATES) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html",), default_for_string=False, default=False
        ),
        undefined=jinja2.StrictUndefined,
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(ms=_ms, number=_number, size=_size)
    return env


def render(kind: str, context: dict[str, Any]) -> tuple[str, str, str]:
    """``(subject, text, html)`` of one email of ``kind`` with ``context``.

    ``context`` needs ``short_name`` (the subject's prefix) and whatever the kind's
    templates print; the HTML part also gets the subject (its page title).
    """
    if kind not in KINDS:
        raise ValueError(f"no email templates for {kind!r}; known: {', '.join(KINDS)}")
    env = environment()
    text_template = env.get_template(f"{kind}.txt")
    block = text_template.blocks["subject"](text_template.new_context(dict(context)))
    subject = one_line(f"[{context['short_name']}] {''.join(block)}")
    text = text_template.render(context)
    html = env.get_template(f"{kind}.html").render({**context, "subject": subject})
    return subject, _tidy(text), html


def _tidy(text: str) -> str:
    """The text part without trailing spaces or runs of blank lines the layout left."""
    # "-- " keeps its space: it is the signature separator mail clients recognise.
    lines = [line if line == "-- " else line.rstrip() for line in text.splitlines()]
    out: list[str] = []
    for line in lines:
        if line == "" and (not out or out[-1] == ""):
            continue
        out.append(line)
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"
