"""The study's figures as SVG text: accuracy against N (the paper's Figures 3-4) and grouped bars
for Tables 1 and 2, drawn from the ``summary`` that study/report.py writes into results.json.

Why by hand: the design card allows no plotting library, and an SVG is only text (the drawing
pieces are e2h/svg.py, which the training curves share). It is written byte for byte the same
from the same numbers, so it diffs in git, and every series carries the means it plots
(``<g class="series" data-name=... data-values=...>``, one decimal like the report's tables),
so a test reads back what a figure claims instead of trusting the picture.
"""
from __future__ import annotations

import math
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from e2h import svg
from e2h.infra.files import write_text
from e2h.svg import BOTTOM, COLORS, LEFT, PLOT_H, PLOT_W, RIGHT, TOP

DASH = {"weighted": "", "best_of_n": ' stroke-dasharray="6 3"'}   # the method, at a glance
_f, _text = svg.num, svg.text


def _y_axis(lo: float, hi: float) -> tuple[float, float, float]:
    """A padded range (a multiple of the tick step at both ends, inside 0-100) and its tick
    step, so that small differences between methods still fill the plot (the paper's figures
    zoom the same way)."""
    pad = max(2.0, 0.1 * (hi - lo))
    span = (hi - lo) + 2 * pad
    step = next(s for s in (1, 2, 5, 10, 20, 25, 50) if span / s <= 8)
    lo = max(0.0, math.floor((lo - pad) / step) * step)
    return lo, min(100.0, math.ceil((hi + pad) / step) * step), step


def _frame(title: str, width: float, lo: float, hi: float, step: float, xlabel: str):
    """The root, title, y gridlines with labels and axis labels; returns them and the map from
    accuracy to a y pixel (upward: SVG's y grows downward)."""
    plot, y_of = svg.axes(LEFT, TOP, PLOT_W, PLOT_H, lo, hi, step, xlabel, "accuracy (%)")
    return svg.start(width, TOP + PLOT_H + BOTTOM, title) + plot, y_of


def _series(rerank: dict) -> list[tuple[str, str, str, dict]]:
    """(name, color, method, {n: {split: [mean, std]}}): majority once (it ignores the
    evaluator), then weighted and best-of-n for every evaluator in the summary's order, a color
    per evaluator and a dash per method."""
    out = [("majority", "#000", "majority", by_m["majority"]) for by_m in rerank.values() if "majority" in by_m]
    return out[:1] + [(f"{ev.upper()} {m}", COLORS[k % len(COLORS)], m, by_m[m]) for k, (ev, by_m)
                      in enumerate(rerank.items()) for m in ("weighted", "best_of_n") if m in by_m]


def curves_svg(rerank: dict, split: str, title: str) -> str:
    """Accuracy on ``split`` against N on a log2 axis, a line per (evaluator, method) with its
    mean ± std band over seeds: ``rerank[evaluator][method][n][split] = [mean, std]``."""
    series = _series(rerank)
    if not series:
        raise ValueError("curves_svg: rerank has no majority, weighted or best_of_n entries")
    ns = sorted({int(n) for *_, by_n in series for n in by_n})
    cells = [v[split] for *_, by_n in series for v in by_n.values()]
    lo, hi, step = _y_axis(min(m - s for m, s in cells), max(m + s for m, s in cells))
    out, y_of = _frame(title, LEFT + PLOT_W + RIGHT, lo, hi, step, "N (samples per problem, log2 scale)")
    span = math.log2(ns[-1] / ns[0]) or 1.0   # one n alone sits at the left edge
    x_of = lambda n: LEFT + 20 + (PLOT_W - 40) * math.log2(n / ns[0]) / span
    for n in ns:
        out.append(f'<line x1="{_f(x_of(n))}" x2="{_f(x_of(n))}" y1="{TOP}" y2="{TOP + PLOT_H}" stroke="#eee"/>')
        out.append(_text(x_of(n), TOP + PLOT_H + 16, str(n), size=11))
    entries = []
    for name, color, method, by_n in series:
        dash = DASH.get(method, ' stroke-dasharray="2 2"')   # majority: dotted
        pts = sorted((int(n), *v[split]) for n, v in by_n.items())   # (n, mean, std)
        outline = [(x_of(n), y_of(m + s)) for n, m, s in pts] + [(x_of(n), y_of(m - s)) for n, m, s in pts[::-1]]
        line = " ".join(f"{_f(x_of(n))},{_f(y_of(m))}" for n, m, _ in pts)
        out.append(f'<g class="series" data-name={quoteattr(name)} data-n="{",".join(str(n) for n, _, _ in pts)}" '
                   f'data-values="{",".join(f"{m:.1f}" for _, m, _ in pts)}">')
        band = " ".join(f"{_f(x)},{_f(y)}" for x, y in outline)
        out.append(f'<polygon points="{band}" fill="{color}" fill-opacity="0.12"/>')   # mean ± std
        out.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        for n, m, s in pts:
            out.append(f'<circle cx="{_f(x_of(n))}" cy="{_f(y_of(m))}" r="3" fill="{color}">'
                       f'<title>{escape(f"{name}, N={n}: {m:.1f} ± {s:.1f}")}</title></circle>')
        out.append("</g>")
        entries.append((name, color, dash))
    out += svg.legend(LEFT + PLOT_W + 14, TOP, entries)
    return svg.document(out)


def bars_svg(rows: dict[str, dict], title: str) -> str:
    """A group per row (a generator, an RL method), an Easy and a Hard bar in each with its
    ± std whisker and mean: ``rows[name][split] = [mean, std]``. Bars start at 0, so the axis
    runs from 0 to the data's top; the labels carry the small differences bars cannot show."""
    if not rows:
        raise ValueError("bars_svg: no rows")
    splits = [("easy", "Easy", COLORS[0]), ("hard", "Hard", COLORS[1])]
    top = max(v[k][0] + v[k][1] for v in rows.values() for k, _, _ in splits)
    hi = min(100.0, math.ceil((top + 5) / 10) * 10)
    out, y_of = _frame(title, LEFT + PLOT_W + RIGHT, 0.0, hi, 10.0, "")
    group = PLOT_W / len(rows)
    bar = min(40.0, 0.8 * group / len(splits))
    for g, name in enumerate(rows):
        out.append(_text(LEFT + group * (g + 0.5), TOP + PLOT_H + 16, name, size=11))
    for j, (key, label, color) in enumerate(splits):
        out.append(f'<g class="series" data-name="{label}" data-rows={quoteattr(",".join(rows))} '
                   f'data-values="{",".join(f"{v[key][0]:.1f}" for v in rows.values())}">')
        for g, (name, v) in enumerate(rows.items()):
            m, s = v[key]
            x = LEFT + group * (g + 0.5) + bar * (j - len(splits) / 2)
            out.append(f'<rect class="bar" data-row={quoteattr(name)} x="{_f(x)}" y="{_f(y_of(m))}" '
                       f'width="{_f(bar)}" height="{_f(y_of(0) - y_of(m))}" fill="{color}"/>')
            cx, y_top, y_low = x + bar / 2, y_of(min(hi, m + s)), y_of(max(0.0, m - s))
            out.append(f'<line x1="{_f(cx)}" x2="{_f(cx)}" y1="{_f(y_top)}" y2="{_f(y_low)}" stroke="#333"/>')
            out.append(_text(cx, y_top - 4, f"{m:.1f}", size=10))
        out.append("</g>")
    out += svg.legend(LEFT + PLOT_W + 14, TOP, [(label, color, "") for _, label, color in splits])
    return svg.document(out)


def write_figures(out: Path, summary: dict) -> dict[str, str]:
    """``out/figures/*.svg``, each written whole (e2h.infra.files: a temporary file beside, then
    os.replace); returns {figure: path relative to ``out``} for the report to link, leaving
    out a figure whose part of the summary is missing or empty."""
    rerank = summary.get("rerank") or {}
    generators = {g: by_dec["greedy"] for g, by_dec in (summary.get("table1") or {}).items() if "greedy" in by_dec}
    svgs = {}
    for split in ("hard", "all"):
        if _series(rerank):
            svgs[f"{split}_by_n"] = curves_svg(rerank, split, f"{split.capitalize()} accuracy against N: "
                                               "easy SFT samples re-ranked by easy-trained evaluators")
    if generators:
        svgs["generators"] = bars_svg(generators, "Greedy accuracy of each generator (Table 1)")
    if summary.get("table2"):
        svgs["rl"] = bars_svg(summary["table2"], "Greedy accuracy after RL from the easy SFT policy (Table 2)")
    written = {}
    for name, svg in svgs.items():
        write_text(Path(out) / "figures" / f"{name}.svg", svg)
        written[name] = f"figures/{name}.svg"
    return written
