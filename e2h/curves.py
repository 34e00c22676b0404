"""Training curves: a train.py run's metrics.jsonl as one SVG, or several runs overlaid.

    python -m e2h.curves RUN_DIR [RUN_DIR ...] [--out FILE]

One panel per quantity any of the runs logged, against the optimizer step: the loss, the
learning rate (``learning_rate``; PPO's ``lr``, as TRL names them), PPO's reward, KL, approximate
KL and value loss, DPO's reward margin and accuracy, the reward models' held-out AUCs (logged
once, at the end) and the greedy validation accuracy of each checkpoint (key names: e2h/ppo.py,
e2h/dpo.py, e2h/loop.py, docs/huggingface.md). A color per run, a dash per quantity in a panel.
train.py writes ``<out>/curves.svg`` as a run ends; this command draws it again, or lays runs
over one another (default file: ``RUN_DIR/curves.svg`` for one run, ``curves.svg`` for several).
Each series carries the numbers it plots (``<g class="series" data-run data-key data-steps
data-values>``), so a test reads back what the figure claims.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from xml.sax.saxutils import quoteattr

from e2h import svg
from e2h.infra.errors import guard
from e2h.infra.files import read_log, write_text

LOG = "metrics.jsonl"   # e2h/infra/runfolder.py's LOG
# (panel title, series: (label, keys; the first key a run logged is its series))
PANELS = [
    ("loss", [("loss", ("loss",))]),
    ("learning rate", [("learning rate", ("learning_rate", "lr"))]),
    ("PPO reward", [("scores", ("objective/scores",)), ("rlhf_reward", ("objective/rlhf_reward",))]),
    ("PPO KL", [("kl", ("objective/kl",))]),
    ("PPO approximate KL", [("approxkl", ("policy/approxkl_avg",))]),
    ("PPO value loss", [("value loss", ("loss/value_avg",))]),
    ("GRPO reward", [("reward", ("reward",)), ("reward std", ("reward_std",))]),
    ("GRPO KL", [("kl", ("kl",))]),
    ("DPO reward margin", [("margin", ("rewards/margins",))]),
    ("DPO reward accuracy", [("accuracy", ("rewards/accuracies",))]),
    ("RM held-out AUC", [(f"{split} {level}", (f"final/{split}_{level}_auc",))
                         for split in ("easy", "hard") for level in ("step", "outcome")]),
    ("validation accuracy (%)", [(split, (f"eval/validation_{split}_acc",))
                                 for split in ("easy", "hard", "all")]),
]
DASHES = ("", ' stroke-dasharray="6 3"', ' stroke-dasharray="2 2"', ' stroke-dasharray="8 3 2 3"')
PANEL_W, PANEL_H, PAD_L, PAD_T, PAD_B, PAD_R = 340, 180, 70, 30, 60, 30   # px per panel
COLUMNS = 2


def read_metrics(run: Path) -> list[dict]:
    """The lines of ``run``/metrics.jsonl with a step; a torn last line (a killed run) is left
    out. A missing or empty log is an error naming the file."""
    path = Path(run) / LOG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (is {run} a train.py run folder?)")
    lines = read_log(path)
    if not lines:
        raise ValueError(f"{path}: empty (the run logged no step yet)")
    return lines


def series_of(lines: list[dict], keys: tuple[str, ...]) -> tuple[str, list[tuple[int, float]]] | None:
    """(key, [(step, value)]) of the first of ``keys`` the log holds, finite values only, in
    step order (a resumed run's log is cut back, so a step appears once); None if none."""
    for key in keys:
        points = [(x["step"], float(x[key])) for x in lines
                  if isinstance(x.get(key), (int, float)) and math.isfinite(x[key])]
        if points:
            return key, sorted(points)
    return None


def panels(runs: dict[str, list[dict]]) -> list[tuple[str, list[tuple[str, str, str, list]]]]:
    """(title, [(run, label, key, points)]) of every panel some run has data for."""
    out = []
    for title, specs in PANELS:
        lines = [(run, label, *found) for label, keys in specs for run, log in runs.items()
                 if (found := series_of(log, keys)) is not None]
        if lines:
            out.append((title, lines))
    return out


def _panel(x0: float, y0: float, title: str, lines: list, colors: dict, dashes: dict) -> list[str]:
    """One panel: its frame and ticks, a polyline (and points) per (run, quantity)."""
    values = [v for *_, pts in lines for _, v in pts]
    lo, hi, step = svg.nice_range(min(values), max(values), max_ticks=5)
    out, y_of = svg.axes(x0, y0, PANEL_W, PANEL_H, lo, hi, step, tick_format=lambda v: f"{v:.4g}")
    _, last, xstep = svg.nice_range(0, max(s for *_, pts in lines for s, _ in pts) or 1, max_ticks=6)
    x_of = lambda s: x0 + PANEL_W * s / last
    for k in range(round(last / xstep) + 1):
        out.append(svg.text(x_of(k * xstep), y0 + PANEL_H + 14, f"{k * xstep:g}", size=10))
    out.append(svg.text(x0 + PANEL_W / 2, y0 - 8, title, size=12))
    for run, label, key, pts in lines:
        color, dash = colors[run], dashes[label]
        out.append(f'<g class="series" data-run={quoteattr(run)} data-key={quoteattr(key)} '
                   f'data-steps="{",".join(str(s) for s, _ in pts)}" '
                   f'data-values="{",".join(f"{v:.6g}" for _, v in pts)}">')
        xy = " ".join(f"{svg.num(x_of(s))},{svg.num(y_of(v))}" for s, v in pts)
        out.append(f'<polyline points="{xy}" fill="none" stroke="{color}" stroke-width="1.5"{dash}/>')
        if len(pts) <= 30:   # few points (validation, AUCs): each one marked
            out += [f'<circle cx="{svg.num(x_of(s))}" cy="{svg.num(y_of(v))}" r="2.5" fill="{color}"/>'
                    for s, v in pts]
        out.append("</g>")
    labels = list(dict.fromkeys(label for _, label, _, _ in lines))
    if len(labels) > 1:   # which dash is which quantity, under the step axis
        for i, label in enumerate(labels):
            x, y = x0 + i * PANEL_W / len(labels), y0 + PANEL_H + 36
            out.append(f'<line x1="{svg.num(x)}" x2="{svg.num(x + 18)}" y1="{y}" y2="{y}" '
                       f'stroke="#333" stroke-width="1.5"{dashes[label]}/>')
            out.append(svg.text(x + 22, y + 4, label, anchor="start", size=10))
    return out


def curves_svg(runs: dict[str, list[dict]], title: str = "training curves") -> str:
    """Every panel some run has data for, two per row, x the optimizer step; ``runs``: {name:
    metrics lines}, a color each, in order."""
    drawn = panels(runs)
    if not drawn:
        raise ValueError(f"{', '.join(runs)}: no quantity to draw in {LOG}")
    colors = {run: svg.COLORS[i % len(svg.COLORS)] for i, run in enumerate(runs)}
    cell_w, cell_h = PAD_L + PANEL_W + PAD_R, PAD_T + PANEL_H + PAD_B
    rows = -(-len(drawn) // COLUMNS)
    width, height = COLUMNS * cell_w + svg.RIGHT, svg.TOP + rows * cell_h
    out = svg.start(width, height, f"{title} (x: optimizer step)")
    for i, (name, lines) in enumerate(drawn):
        labels = list(dict.fromkeys(label for _, label, _, _ in lines))
        dashes = {label: DASHES[k % len(DASHES)] for k, label in enumerate(labels)}
        x0 = (i % COLUMNS) * cell_w + PAD_L
        y0 = svg.TOP + (i // COLUMNS) * cell_h + PAD_T
        out += _panel(x0, y0, name, lines, colors, dashes)
    out += svg.legend(COLUMNS * cell_w + 10, svg.TOP, [(run, colors[run], "") for run in runs])
    return svg.document(out)


def write_curves(runs: list, out) -> Path:
    """``out``, the curves of the run folders ``runs`` (named by their paths), written whole."""
    names = [str(Path(r)) for r in runs]
    twice = [n for i, n in enumerate(names) if n in names[:i]]
    if twice:
        raise ValueError(f"{twice[0]}: run folder given twice")
    svg_text = curves_svg({name: read_metrics(r) for name, r in zip(names, runs)},
                          "training curves" if len(runs) > 1 else f"training curves of {names[0]}")
    return write_text(out, svg_text)


def main(argv=None):
    p = argparse.ArgumentParser(description="Training curves of train.py runs as one SVG.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="train.py run folders (--out)")
    p.add_argument("--out", default=None, help="SVG file (default: RUN_DIR/curves.svg for one "
                                               "run, curves.svg for several)")
    args = p.parse_args(argv)
    out = args.out or (Path(args.runs[0]) / "curves.svg" if len(args.runs) == 1 else "curves.svg")
    print(write_curves(args.runs, out))


if __name__ == "__main__":
    sys.exit(guard(main))
