"""A track's fidelity-vs-runtime plot, as SVG and as PNG, drawn from its ranked rows.

x is the runtime (ms, log scale), y the track's first metric. Each ranked team is a
point labelled with its rank and team id; the Pareto front (the teams no other team
beats on both: at least as fast and at least as good, better on one) is marked and
joined by its staircase; the score's iso-lines are the curves of equal score through
the points of the top teams, with the other variables of the formula fixed at that
team's values. They are computed with the track's own scorer
(:func:`mai_ops.models.fidelity.score_with_reason`) on a grid over the plot, then
traced (marching squares), so a plot follows whatever formula the track has.

One drawing (:class:`Scene`, in pixels) is written twice: as SVG text by hand
(:func:`render_svg`) and as a PNG by Pillow (:func:`render_png`, at twice the size,
drawn at four times and scaled down so that lines are smooth). The same rows give the
same bytes: nothing depends on the clock, and no text in either file is left to a
library's defaults (the PNG has no metadata). Every string from a row (team ids) is
escaped in the SVG and shortened in labels; the full id is in the point's tooltip.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

WIDTH, HEIGHT = 800, 540
LEFT, RIGHT, TOP, BOTTOM = 76, 24, 72, 74
FONT = "DejaVu Sans, Arial, Helvetica, sans-serif"
# The PNG is drawn at SUPERSAMPLE x PNG_SCALE and scaled down to PNG_SCALE.
PNG_SCALE, SUPERSAMPLE = 2, 2
# How many iso-lines: through the points of this many top distinct scores.
ISO_LINES = 4
GRID_X, GRID_Y = 48, 36
LABEL_CHARS = 26
# The width of an average character, in font sizes (DejaVu Sans and Aileron are a
# little under): what a label's box is reckoned with when labels are placed.
CHAR_WIDTH = 0.6

INK, GRID, MUTED = "#1f2328", "#e4e7eb", "#6e7781"
POINT, FRONT, ISO = "#2f6fb3", "#d1600a", "#8c959f"


# ---------------------------------------------------------------------------------
# The drawing
# ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """A polyline (``points``), or separate segments when ``pairs`` is set."""

    points: tuple[tuple[float, float], ...]
    stroke: str
    width: float = 1.0
    dash: tuple[float, ...] = ()
    pairs: bool = False
    css: str = ""


@dataclass(frozen=True)
class Dot:
    x: float
    y: float
    r: float
    fill: str
    stroke: str = "#ffffff"
    css: str = ""
    tooltip: str = ""
    team: str = ""


@dataclass(frozen=True)
class Text:
    x: float
    y: float  # the baseline
    text: str
    size: float = 12.0
    anchor: str = "start"  # start, middle, end
    fill: str = INK
    bold: bool = False
    vertical: bool = False  # read bottom to top (the y axis title)
    css: str = ""


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    w: float
    h: float
    fill: str = "none"
    stroke: str = "none"


@dataclass
class Scene:
    width: int
    height: int
    title: str
    description: str
    items: list = field(default_factory=list)


# ---------------------------------------------------------------------------------
# The Pareto front
# ---------------------------------------------------------------------------------


def pareto_front(points: Sequence[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the points (runtime, fidelity) that no other point dominates.

    A point dominates another when it is at least as fast and at least as good (in
    the metric's direction), and strictly better on one of the two. Equal points are
    both on the front. Returned fastest first (then better first, then by index).
    """
    sign = 1.0 if higher_is_better else -1.0
    front = []
    for i, (rt, fid) in enumerate(points):
        dominated = any(
            o_rt <= rt and sign * o_fid >= sign * fid and (o_rt < rt or sign * o_fid > sign * fid)
            for j, (o_rt, o_fid) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -sign * points[i][1], i))


# ---------------------------------------------------------------------------------
# Axes
# ---------------------------------------------------------------------------------


def _log_range(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi / lo < 1.0001:
        return math.log10(lo / 2.5), math.log10(hi * 2.5)
    pad = max((hi / lo) ** 0.08, 1.3)
    return math.log10(lo / pad), math.log10(hi * pad)


def _linear_range(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        half = max(abs(lo) * 0.05, 0.01)
        return lo - half, hi + half
    pad = (hi - lo) * 0.14
    return lo - pad, hi + pad


def _log_ticks(lx0: float, lx1: float) -> list[float]:
    for mantissas in ((1, 2, 5), (1,), (1, 1.5, 2, 3, 5, 7)):
        ticks = [
            m * 10.0**k
            for k in range(math.floor(lx0) - 1, math.ceil(lx1) + 1)
            for m in mantissas
            if lx0 <= math.log10(m * 10.0**k) <= lx1
        ]
        if 2 <= len(ticks) <= 9:
            return ticks
    return ticks


def _nice_step(span: float) -> float:
    raw = span / 5
    power = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * power >= raw:
            return m * power
    return 10 * power


def _linear_ticks(y0: float, y1: float) -> tuple[list[float], int]:
    step = _nice_step(y1 - y0)
    first = math.ceil(y0 / step)
    ticks = [k * step for k in range(first, math.floor(y1 / step) + 1)]
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if round(step / 10.0 ** math.floor(math.log10(step)), 6) == 2.5:
        decimals += 1
    return ticks, decimals


def _tick_text(value: float) -> str:
    return f"{value:g}"


# ---------------------------------------------------------------------------------
# Iso-lines
# ---------------------------------------------------------------------------------


def track_scorer(formula: str, constants: Mapping[str, float]):
    """The track's scorer over (metrics, runtime): :func:`score_with_reason`, nothing else."""
    from mai_ops.models.fidelity import score_with_reason

    track = SimpleNamespace(id="plot", score=SimpleNamespace(formula=formula, constants={}))

    def score(metrics: Mapping[str, float], runtime_ms: float) -> float | None:
        value, _ = score_with_reason(track, metrics, runtime_ms, constants=constants)
        return value

    return score


def _formula_reads(formula: str, metrics: Sequence[str], constants: Mapping) -> set[str]:
    from mai_ops.challenge.formula import FormulaError, formula_names, parse_formula
    from mai_ops.models.metrics import MEASUREMENT_VARIABLES, METRICS

    try:
        known = set(METRICS) | set(MEASUREMENT_VARIABLES) | set(constants) | set(metrics)
        return formula_names(parse_formula(formula, known))
    except FormulaError:
        return set()


@dataclass(frozen=True)
class ScoreGrid:
    """The score over the plot: ``values[i][j]`` at (``xs[i]``, ``ys[j]``), None where
    it cannot be computed; x is log10 of the runtime."""

    xs: tuple[float, ...]
    ys: tuple[float, ...]
    values: tuple[tuple[float | None, ...], ...]


def score_grid(
    score,
    metric: str,
    others: Mapping[str, float],
    lx: tuple[float, float],
    yr: tuple[float, float],
) -> ScoreGrid:
    """The score on a GRID_X x GRID_Y grid over the plot, the other variables fixed."""
    xs = tuple(lx[0] + (lx[1] - lx[0]) * i / GRID_X for i in range(GRID_X + 1))
    ys = tuple(yr[0] + (yr[1] - yr[0]) * j / GRID_Y for j in range(GRID_Y + 1))
    values = tuple(tuple(score({**others, metric: y}, 10.0**x) for y in ys) for x in xs)
    return ScoreGrid(xs, ys, values)


def iso_segments(
    grid: ScoreGrid, level: float
) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Segments (in (log10 runtime, metric) space) where the score equals ``level``.

    Traced on the grid by marching squares. Where every score is positive the grid
    is read as their logarithm (the MAI formulas are then linear in log runtime and
    the metric, so the trace is exact). Cells with a score that cannot be computed
    are left out.
    """
    known = [v for column in grid.values for v in column if v is not None and math.isfinite(v)]
    if not known:
        return []
    use_log = min(known) > 0 and level > 0
    target = math.log(level) if use_log else level

    def t(v: float | None) -> float | None:
        if v is None or not math.isfinite(v):
            return None
        return math.log(v) if use_log else v

    xs, ys = grid.xs, grid.ys
    tg = [[t(v) for v in column] for column in grid.values]
    segments = []
    for i in range(len(xs) - 1):
        for j in range(len(ys) - 1):
            corners = (
                (xs[i], ys[j], tg[i][j]),
                (xs[i + 1], ys[j], tg[i + 1][j]),
                (xs[i + 1], ys[j + 1], tg[i + 1][j + 1]),
                (xs[i], ys[j + 1], tg[i][j + 1]),
            )
            if any(c[2] is None for c in corners):
                continue
            crossings = []
            for k in range(4):
                (xa, ya, va), (xb, yb, vb) = corners[k], corners[(k + 1) % 4]
                if (va < target) != (vb < target):
                    f = (target - va) / (vb - va)
                    crossings.append((xa + f * (xb - xa), ya + f * (yb - ya)))
            for k in range(0, len(crossings) - 1, 2):
                segments.append((crossings[k], crossings[k + 1]))
    return segments


# ---------------------------------------------------------------------------------
# The scene of one track
# ---------------------------------------------------------------------------------


def _short(text: str, limit: int = LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fmt(value: float) -> str:
    return format(value, ".4g")


def plotted_rows(entry: Mapping[str, Any]) -> list[dict]:
    """The rows that are points: ranked, with a positive runtime and a finite first metric."""
    metric = entry["metrics"][0]
    out = []
    for row in entry["rows"]:
        runtime, value = row.get("runtime_ms"), row.get(metric)
        if row.get("rank") is None or runtime is None or value is None:
            continue
        if runtime > 0 and math.isfinite(runtime) and math.isfinite(value):
            out.append(row)
    return out


def plot_scene(
    entry: Mapping[str, Any],
    *,
    title: str,
    higher_is_better: bool,
    runtime_note: str | None = None,
) -> Scene:
    """The drawing of one track (``entry``: a track of the public table)."""
    metric = entry["metrics"][0]
    direction = "higher is better" if higher_is_better else "lower is better"
    rows = plotted_rows(entry)
    scene = Scene(
        WIDTH,
        HEIGHT,
        title=f"{title}: {metric} against runtime",
        description=(
            f"Each ranked team is a point: runtime in ms (log scale) across, {metric} "
            f"({direction}) up. Orange points form the Pareto front; grey curves join "
            "the places of equal score through the top teams' points."
        ),
    )
    add = scene.items.append
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    add(Box(0, 0, WIDTH, HEIGHT, fill="#ffffff"))
    add(Text(LEFT, 26, _short(scene.title, 80), size=17, bold=True))
    add(Box(LEFT, TOP, pw, ph, stroke=MUTED))
    x_title = "runtime, ms (log scale)"
    add(Text(LEFT + pw / 2, HEIGHT - 34, x_title, size=13, anchor="middle"))
    if runtime_note:
        add(Text(LEFT + pw / 2, HEIGHT - 13, _short(runtime_note, 100), 12, "middle", MUTED))
    add(Text(20, TOP + ph / 2, f"{metric} ({direction})", 13, "middle", vertical=True))
    if not rows:
        add(Text(LEFT + pw / 2, TOP + ph / 2, "no ranked submission yet", 14, "middle", MUTED))
        return scene

    runtimes = [float(r["runtime_ms"]) for r in rows]
    values = [float(r[metric]) for r in rows]
    lx, yr = _log_range(runtimes), _linear_range(values)

    def px(log_x: float) -> float:
        return LEFT + (log_x - lx[0]) / (lx[1] - lx[0]) * pw

    def py(y: float) -> float:
        return TOP + (1 - (y - yr[0]) / (yr[1] - yr[0])) * ph

    # Grid and ticks.
    for tick in _log_ticks(*lx):
        x = px(math.log10(tick))
        add(Line(((x, TOP), (x, TOP + ph)), GRID))
        add(Text(x, TOP + ph + 17, _tick_text(tick), 12, "middle", MUTED))
    yticks, decimals = _linear_ticks(*yr)
    for tick in yticks:
        y = py(tick)
        add(Line(((LEFT, y), (LEFT + pw, y)), GRID))
        add(Text(LEFT - 6, y + 4, f"{tick:.{decimals}f}", 12, "end", MUTED))

    # Iso-lines through the top teams' points, each with the other variables of the
    # formula at that team's values (one grid per set of values).
    score = track_scorer(entry["formula"], entry["constants"])
    reads = _formula_reads(entry["formula"], entry["metrics"], entry["constants"])
    levels: list[tuple[float, dict]] = []
    for row in rows:
        if len(levels) < ISO_LINES and row.get("score") is not None:
            others = {
                m: float(row[m])
                for m in entry["metrics"][1:]
                if m in reads and row.get(m) is not None
            }
            if (row["score"], others) not in levels:
                levels.append((row["score"], others))
    grids: dict[tuple, ScoreGrid] = {}
    curves = []
    for level, others in levels:
        key = tuple(sorted(others.items()))
        if key not in grids:
            grids[key] = score_grid(score, metric, others, lx, yr)
        segments = iso_segments(grids[key], level)
        if segments:
            pixels = [((px(a[0]), py(a[1])), (px(b[0]), py(b[1]))) for a, b in segments]
            curves.append((level, pixels))
            add(Line(tuple(p for pair in pixels for p in pair), ISO, 1.2, pairs=True, css="iso"))

    # The Pareto front: its staircase, then every point on top.
    points = list(zip(runtimes, values, strict=True))
    front = pareto_front(points, higher_is_better)
    stairs: list[tuple[float, float]] = []
    for k, i in enumerate(front):
        x, y = px(math.log10(points[i][0])), py(points[i][1])
        if k:
            stairs.append((x, stairs[-1][1]))
        stairs.append((x, y))
    if len(stairs) > 1:
        add(Line(tuple(stairs), FRONT, 1.5, dash=(5, 4), css="front-line"))

    taken: list[tuple[float, float, float, float]] = []
    dots = []
    for i, row in enumerate(rows):
        x, y = px(math.log10(runtimes[i])), py(values[i])
        on_front = i in front
        tooltip = (
            f"{row['rank']}. {row['team']}: {metric} {_fmt(values[i])}, "
            f"{_fmt(runtimes[i])} ms, score {_fmt(row['score'])}"
            + (" (Pareto front)" if on_front else "")
        )
        css = "point front" if on_front else "point"
        fill = FRONT if on_front else POINT
        dots.append(
            Dot(x, y, 6 if on_front else 5, fill, css=css, tooltip=tooltip, team=row["team"])
        )
        taken.append((x - 7, y - 7, x + 7, y + 7))
    for i, dot in enumerate(dots):
        text = _short(f"{rows[i]['rank']}. {rows[i]['team']}")
        add(_place_label(dot.x, dot.y, text, taken))
    # Each curve's score where it has room, the rightmost place first; none if crowded.
    for level, pixels in curves:
        text = f"score {_fmt(level)}"
        width = CHAR_WIDTH * 11 * len(text)
        middles = sorted(
            (((a[0] + b[0]) / 2, (a[1] + b[1]) / 2) for a, b in pixels), key=lambda p: -p[0]
        )
        for x, y in middles[::3]:
            box = (x - width - 2, y + 3, x - 2, y + 15)
            if _free(box, taken):
                taken.append(box)
                add(Text(x - 2, y + 14, text, 11, "end", ISO, css="iso-label"))
                break
    scene.items.extend(dots)

    # The legend, above the plot.
    x, y = float(LEFT), 52.0
    for mark, text in (
        (Dot(0, 0, 5, POINT), "ranked team"),
        (Dot(0, 0, 6, FRONT), "Pareto front (no team both faster and better)"),
        (Line(((0, 0), (26, 0)), ISO, 1.2), "equal score"),
    ):
        if isinstance(mark, Dot):
            add(Dot(x + 6, y - 4, mark.r, mark.fill))
            x += 16
        else:
            add(Line(((x, y - 4), (x + 26, y - 4)), ISO, 1.2))
            x += 32
        add(Text(x, y, text, 12))
        x += CHAR_WIDTH * 12 * len(text) + 22
    return scene


def _place_label(x: float, y: float, text: str, taken: list) -> Text:
    """The first of right, left, above, below that overlaps nothing placed and stays inside."""
    size = 12.0
    width = CHAR_WIDTH * size * len(text)
    options = (
        (x + 9, y + 4, "start", (x + 9, y - 8, x + 9 + width, y + 6)),
        (x - 9, y + 4, "end", (x - 9 - width, y - 8, x - 9, y + 6)),
        (x, y - 10, "middle", (x - width / 2, y - 22, x + width / 2, y - 8)),
        (x, y + 20, "middle", (x - width / 2, y + 8, x + width / 2, y + 22)),
    )

    fallback = options[0] if x < LEFT + 200 else options[1]
    chosen = next((o for o in options if _free(o[3], taken)), fallback)
    taken.append(chosen[3])
    return Text(chosen[0], chosen[1], text, size, chosen[2], INK, css="label")


def _free(box: tuple[float, float, float, float], taken: list) -> bool:
    """Inside the plot, and overlapping nothing in ``taken`` (boxes as x0, y0, x1, y1)."""
    inside = box[0] >= LEFT + 2 and box[2] <= WIDTH - RIGHT - 2
    inside = inside and box[1] >= TOP + 2 and box[3] <= HEIGHT - BOTTOM - 2
    return inside and not any(
        box[0] < o[2] and o[0] < box[2] and box[1] < o[3] and o[1] < box[3] for o in taken
    )


# ---------------------------------------------------------------------------------
# SVG
# ---------------------------------------------------------------------------------


def _n(value: float) -> str:
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _attr(value: str) -> str:
    return html.escape(value, quote=True)


def render_svg(scene: Scene, element_id: str = "plot") -> bytes:
    """The scene as a standalone SVG document (also fit to be inlined in a page)."""
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {scene.width} {scene.height}" '
        f'width="{scene.width}" height="{scene.height}" role="img" '
        f'aria-labelledby="{element_id}-title {element_id}-desc" '
        f'font-family="{_attr(FONT)}" class="plot">',
        f'<title id="{element_id}-title">{html.escape(scene.title)}</title>',
        f'<desc id="{element_id}-desc">{html.escape(scene.description)}</desc>',
    ]
    for item in scene.items:
        out.append(_svg_item(item))
    out.append("</svg>")
    return ("\n".join(out) + "\n").encode()


def _css(css: str) -> str:
    return f' class="{_attr(css)}"' if css else ""


def _svg_item(item) -> str:
    if isinstance(item, Box):
        return (
            f'<rect x="{_n(item.x)}" y="{_n(item.y)}" width="{_n(item.w)}" '
            f'height="{_n(item.h)}" fill="{item.fill}" stroke="{item.stroke}"/>'
        )
    if isinstance(item, Line):
        if item.pairs:
            pairs = zip(item.points[::2], item.points[1::2], strict=True)
            d = " ".join(f"M{_n(a[0])} {_n(a[1])}L{_n(b[0])} {_n(b[1])}" for a, b in pairs)
        else:
            d = "M" + "L".join(f"{_n(x)} {_n(y)}" for x, y in item.points)
        dash = f' stroke-dasharray="{" ".join(_n(d) for d in item.dash)}"' if item.dash else ""
        return (
            f'<path{_css(item.css)} d="{d}" fill="none" stroke="{item.stroke}" '
            f'stroke-width="{_n(item.width)}" stroke-linecap="round"{dash}/>'
        )
    if isinstance(item, Dot):
        team = f' data-team="{_attr(item.team)}"' if item.team else ""
        tip = f"<title>{html.escape(item.tooltip)}</title>" if item.tooltip else ""
        return (
            f'<circle{_css(item.css)}{team} cx="{_n(item.x)}" cy="{_n(item.y)}" '
            f'r="{_n(item.r)}" fill="{item.fill}" stroke="{item.stroke}" '
            f'stroke-width="1.5">{tip}</circle>'
        )
    if isinstance(item, Text):
        anchor = f' text-anchor="{item.anchor}"' if item.anchor != "start" else ""
        weight = ' font-weight="bold"' if item.bold else ""
        turn = f' transform="rotate(-90 {_n(item.x)} {_n(item.y)})"' if item.vertical else ""
        return (
            f'<text{_css(item.css)} x="{_n(item.x)}" y="{_n(item.y)}" '
            f'font-size="{_n(item.size)}" fill="{item.fill}"{anchor}{weight}{turn}>'
            f"{html.escape(item.text)}</text>"
        )
    raise TypeError(f"cannot draw {item!r}")


# ---------------------------------------------------------------------------------
# PNG
# ---------------------------------------------------------------------------------


def render_png(scene: Scene) -> bytes:
    """The scene as a PNG of PNG_SCALE times its size, with no metadata."""
    from PIL import Image, ImageDraw

    k = PNG_SCALE * SUPERSAMPLE
    image = Image.new("RGB", (scene.width * k, scene.height * k), "#ffffff")
    draw = ImageDraw.Draw(image)
    for item in scene.items:
        _png_item(image, draw, item, k)
    final = image.resize((scene.width * PNG_SCALE, scene.height * PNG_SCALE), Image.LANCZOS)
    buffer = io.BytesIO()
    final.save(buffer, format="PNG")
    return buffer.getvalue()


def _font(size: float):
    from PIL import ImageFont

    return ImageFont.load_default(size=max(1, round(size)))


def _dashed(points, dash: tuple[float, ...]):
    """The drawn pieces of a dashed polyline (pattern lengths in the points' units)."""
    pieces, pattern, index, left, on = [], list(dash), 0, dash[0], True
    current = [points[0]]
    for (xa, ya), (xb, yb) in zip(points, points[1:], strict=False):
        length = math.hypot(xb - xa, yb - ya)
        done = 0.0
        while length - done > left:
            done += left
            point = (xa + (xb - xa) * done / length, ya + (yb - ya) * done / length)
            if on:
                pieces.append([*current, point])
            current = [point]
            index = (index + 1) % len(pattern)
            left, on = pattern[index], not on
        left -= length - done
        current.append((xb, yb))
    if on and len(current) > 1:
        pieces.append(current)
    return pieces


def _png_item(image, draw, item, k: int) -> None:
    from PIL import Image, ImageDraw

    if isinstance(item, Box):
        box = [item.x * k, item.y * k, (item.x + item.w) * k, (item.y + item.h) * k]
        fill = None if item.fill == "none" else item.fill
        outline = None if item.stroke == "none" else item.stroke
        draw.rectangle(box, fill=fill, outline=outline, width=k)
    elif isinstance(item, Line):
        width = max(1, round(item.width * k))
        points = [(x * k, y * k) for x, y in item.points]
        if item.pairs:
            pieces = [points[i : i + 2] for i in range(0, len(points), 2)]
        elif item.dash:
            pieces = _dashed(points, tuple(d * k for d in item.dash))
        else:
            pieces = [points]
        for piece in pieces:
            draw.line(piece, fill=item.stroke, width=width, joint="curve")
            for x, y in (piece[0], piece[-1]):  # round caps, as in the SVG
                r = width / 2
                draw.ellipse([x - r, y - r, x + r, y + r], fill=item.stroke)
    elif isinstance(item, Dot):
        r, x, y = item.r * k, item.x * k, item.y * k
        ring = round(1.5 * k)
        draw.ellipse(
            [x - r - ring / 2, y - r - ring / 2, x + r + ring / 2, y + r + ring / 2],
            fill=item.stroke,
        )
        draw.ellipse(
            [x - r + ring / 2, y - r + ring / 2, x + r - ring / 2, y + r - ring / 2], fill=item.fill
        )
    elif isinstance(item, Text):
        font = _font(item.size * k)
        anchor = {"start": "ls", "middle": "ms", "end": "rs"}[item.anchor]
        stroke = max(1, k // 3) if item.bold else 0
        if not item.vertical:
            draw.text(
                (item.x * k, item.y * k),
                item.text,
                fill=item.fill,
                font=font,
                anchor=anchor,
                stroke_width=stroke,
                stroke_fill=item.fill,
            )
            return
        left, top, right, bottom = font.getbbox(item.text, anchor="ls")
        w, h = right - left, bottom - top
        label = Image.new("L", (w + 2 * k, h + 2 * k), 0)
        ImageDraw.Draw(label).text((k - left, k - top), item.text, fill=255, font=font, anchor="ls")
        turned = label.rotate(90, expand=True)
        # As the SVG's rotate(-90) about (x, y): the baseline (column k - top of the
        # turned image) on x, the text centred on y.
        cx, cy = item.x * k, item.y * k
        corner = (round(cx - (k - top)), round(cy - turned.height / 2))
        image.paste(Image.new("RGB", turned.size, item.fill), corner, turned)
    else:
        raise TypeError(f"cannot draw {item!r}")
