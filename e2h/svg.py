"""SVG drawn as text, without a plotting library: the pieces the study's figures
(study/figures.py) and the training curves (e2h/curves.py) share.

A figure is a list of SVG elements joined by ``document``: ``start`` (the root, a white
background, the title), then per plot ``axes`` (gridlines with their labels, the frame, the
axis labels; it returns the map from a value to its y pixel, upward), lines and points, and a
``legend``. Pixels are written to 0.01, so the same numbers give the same bytes and a figure
diffs in git. No torch here: the study, which imports no torch, draws with it.
"""
from __future__ import annotations

import math
from xml.sax.saxutils import escape

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
LEFT, RIGHT, TOP, BOTTOM = 60, 170, 40, 50   # margins (px); the legend sits in the right one
PLOT_W, PLOT_H = 420, 300


def num(x: float) -> str:
    return f"{x:.2f}"


def text(x, y, s, anchor="middle", size=12, extra="") -> str:
    return f'<text x="{num(x)}" y="{num(y)}" text-anchor="{anchor}" font-size="{size}"{extra}>{escape(s)}</text>'


def start(width, height, title: str) -> list[str]:
    """The root element, a white background and the title centred above the plots."""
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif">',
            f'<rect width="{width}" height="{height}" fill="white"/>',
            text(width / 2, TOP / 2 + 4, title, size=14)]


def document(parts: list[str]) -> str:
    return "\n".join(parts + ["</svg>"]) + "\n"


def nice_range(lo: float, hi: float, max_ticks: int = 6) -> tuple[float, float, float]:
    """(low, high, step): ``lo`` and ``hi`` widened to multiples of a step of 1, 2, 2.5 or 5
    times a power of ten, at most ``max_ticks`` steps apart; a flat series gets a unit-wide
    range around it."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"nice_range: lo={lo}, hi={hi} must be finite")
    if hi <= lo:
        pad = abs(lo) * 0.5 or 0.5
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max_ticks
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    low, high = math.floor(lo / step) * step, math.ceil(hi / step) * step
    return low, high, step


def axes(x0, y0, w, h, lo: float, hi: float, step: float, xlabel: str = "", ylabel: str = "",
         tick_format=lambda v: f"{v:g}"):
    """A plot whose top-left corner is (x0, y0), ``w`` x ``h`` px, values ``lo``..``hi``:
    horizontal gridlines every ``step`` with their labels, the frame, the axis labels. Returns
    (elements, y_of): y_of(value) is its y pixel, upward (SVG's y grows downward)."""
    y_of = lambda v: y0 + h * (hi - v) / (hi - lo)
    out = []
    for k in range(round((hi - lo) / step) + 1):
        v = lo + k * step
        out.append(f'<line x1="{x0}" x2="{x0 + w}" y1="{num(y_of(v))}" y2="{num(y_of(v))}" stroke="#ddd"/>')
        out.append(text(x0 - 6, y_of(v) + 4, tick_format(v), anchor="end", size=11))
    out.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#333"/>')
    if xlabel:
        out.append(text(x0 + w / 2, y0 + h + 38, xlabel))
    if ylabel:
        x, y = x0 - 44, y0 + h / 2
        out.append(text(x, y, ylabel, extra=f' transform="rotate(-90 {x:g} {num(y)})"'))
    return out, y_of


def legend(x: float, y0: float, entries: list[tuple[str, str, str]]) -> list[str]:
    """(label, color, extra line attributes) per entry, one row each from ``y0`` down."""
    out = []
    for i, (label, color, dash) in enumerate(entries):
        y = y0 + 10 + 18 * i
        out.append(f'<line x1="{num(x)}" x2="{num(x + 22)}" y1="{y}" y2="{y}" stroke="{color}" stroke-width="2"{dash}/>')
        out.append(text(x + 28, y + 4, label, anchor="start", size=11))
    return out
