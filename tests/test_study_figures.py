"""study/figures.py: each figure parses as SVG and claims, in its data- attributes and its
geometry, exactly the hand-written means below (log2 x axis, y upward, bars from 0)."""
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

from conftest import ROOT
from study.figures import bars_svg, curves_svg, write_figures

SVG = "{http://www.w3.org/2000/svg}"


def cells(hard, all_):
    """{n: {split: [mean, std]}} for n = 1, 2, 4, 8; easy is not drawn by the curves here."""
    return {str(n): {"easy": [90.0, 1.0], "hard": [h, 1.5], "all": [a, 0.5]}
            for n, h, a in zip((1, 2, 4, 8), hard, all_)}


MAJORITY = cells((20.0, 22.04, 24.0, 25.0), (40.0, 41.0, 42.0, 43.0))
RERANK = {
    "orm": {"majority": MAJORITY,
            "weighted": cells((20.0, 23.0, 26.0, 28.0), (40.0, 42.0, 44.0, 46.0)),
            "best_of_n": cells((20.0, 21.0, 19.96, 18.0), (40.0, 40.5, 39.0, 38.0))},
    "prm": {"majority": MAJORITY,
            "weighted": cells((20.0, 24.0, 28.0, 31.33), (40.0, 43.0, 46.0, 48.0)),
            "best_of_n": cells((20.0, 22.0, 23.0, 24.0), (40.0, 41.5, 42.5, 43.5))},
}
ROWS = {"sft_easy": {"easy": [64.8, 7.9], "hard": [30.0, 6.2], "all": [50.9, 6.9]},
        "sft_hard": {"easy": [67.8, 8.0], "hard": [47.8, 16.0], "all": [59.8, 9.1]},
        "a<b&c": {"easy": [12.0, 0.0], "hard": [6.0, 3.0], "all": [9.0, 1.0]}}


def parse(svg: str):
    root = ET.fromstring(svg)
    assert root.tag == SVG + "svg"
    assert root.get("width") and root.get("height") and root.get("viewBox")
    series = [g for g in root.iter(SVG + "g") if g.get("class") == "series"]
    assert len({g.get("data-name") for g in series}) == len(series), "a series drawn twice"
    return root, {g.get("data-name"): g for g in series}


def points(g):
    pts = [p.split(",") for p in g.find(SVG + "polyline").get("points").split()]
    return [(float(x), float(y)) for x, y in pts]


def test_curves_claim_the_means_of_the_split():
    root, series = parse(curves_svg(RERANK, "hard", "Hard"))
    # majority once (the same for every evaluator), then weighted and best-of-n per evaluator
    assert list(series) == ["majority", "ORM weighted", "ORM best_of_n", "PRM weighted", "PRM best_of_n"]
    assert series["majority"].get("data-values") == "20.0,22.0,24.0,25.0"   # 22.04 -> 22.0
    assert series["ORM best_of_n"].get("data-values") == "20.0,21.0,20.0,18.0"   # 19.96 -> 20.0
    assert series["PRM weighted"].get("data-values") == "20.0,24.0,28.0,31.3"
    assert all(g.get("data-n") == "1,2,4,8" for g in series.values())
    _, on_all = parse(curves_svg(RERANK, "all", "All"))
    assert on_all["PRM weighted"].get("data-values") == "40.0,43.0,46.0,48.0"


def test_curves_x_is_log2_and_y_grows_upward():
    _, series = parse(curves_svg(RERANK, "hard", "Hard"))
    for name, g in series.items():
        xs = [x for x, _ in points(g)]
        gaps = [b - a for a, b in zip(xs, xs[1:])]
        assert all(d > 0 for d in gaps), name
        # n = 1, 2, 4, 8 equally spaced (a linear axis would give gaps 1:2:4); pixels are
        # written to 0.01, so two rounded gaps can differ by at most 0.01
        assert max(gaps) - min(gaps) <= 0.0101, (name, gaps)
    # every plotted point: a higher accuracy sits higher, i.e. at a smaller y
    source = {"majority": MAJORITY, **{f"{ev.upper()} {m}": RERANK[ev][m] for ev in RERANK
                                       for m in ("weighted", "best_of_n")}}
    by_value = sorted((source[name][n]["hard"][0], y) for name, g in series.items()
                      for n, (_, y) in zip(("1", "2", "4", "8"), points(g)))
    for (v0, y0), (v1, y1) in zip(by_value, by_value[1:]):
        assert (y1 < y0) if v1 > v0 else (y1 == y0), (v0, y0, v1, y1)


def test_curves_sort_n_numerically():
    shuffled = {"orm": {m: {n: by_n[n] for n in ("8", "1", "4", "2")} for m, by_n in RERANK["orm"].items()}}
    _, series = parse(curves_svg(shuffled, "hard", "Hard"))
    assert series["ORM weighted"].get("data-n") == "1,2,4,8"
    assert series["ORM weighted"].get("data-values") == "20.0,23.0,26.0,28.0"
    assert [x for x, _ in points(series["ORM weighted"])] == sorted(x for x, _ in points(series["ORM weighted"]))


def test_bars_one_rect_per_row_and_split_heights_from_zero():
    root, series = parse(bars_svg(ROWS, "Table 1"))
    assert list(series) == ["Easy", "Hard"]
    assert series["Easy"].get("data-values") == "64.8,67.8,12.0"
    assert series["Hard"].get("data-values") == "30.0,47.8,6.0"
    bars = [(float(v), float(r.get("height")), r.get("data-row"))
            for g in series.values() for v, r in zip(g.get("data-values").split(","), g.iter(SVG + "rect"))]
    assert len([r for r in root.iter(SVG + "rect") if r.get("class") == "bar"]) == len(bars) == 6
    assert [row for *_, row in bars] == ["sft_easy", "sft_hard", "a<b&c"] * 2
    bars.sort()
    assert all(h0 < h1 for (_, h0, _), (_, h1, _) in zip(bars, bars[1:]))
    # the axis starts at 0: every bar stands on the plot's bottom edge, and height / value is
    # one scale for every bar (pixels written to 0.01)
    frame = next(r for r in root.iter(SVG + "rect") if r.get("fill") == "none")
    bottom = float(frame.get("y")) + float(frame.get("height"))
    assert all(abs(float(r.get("y")) + float(r.get("height")) - bottom) <= 0.0101
               for r in root.iter(SVG + "rect") if r.get("class") == "bar")
    scale = bars[-1][1] / bars[-1][0]
    assert all(abs(h - v * scale) <= 0.005 + 0.005 * v / bars[-1][0] for v, h, _ in bars)
    # grouped left to right in row order, Easy then Hard in each group, never overlapping
    spans = sorted(((row, split), float(r.get("x")), float(r.get("width"))) for split, g in enumerate(series.values())
                   for row, r in enumerate(g.iter(SVG + "rect")))
    assert all(x0 + w0 <= x1 + 0.0101 for (_, x0, w0), (_, x1, _) in zip(spans, spans[1:]))
    labels = [t.text for t in root.iter(SVG + "text")]
    assert "a<b&c" in labels and "64.8" in labels and "6.0" in labels


def test_same_input_same_bytes_under_any_hash_seed():
    """A figure may not depend on set or hash order: another process, another seed, same text."""
    code = ("import json, sys; from study.figures import bars_svg, curves_svg; rerank, rows = json.load(sys.stdin); "
            "sys.stdout.write(curves_svg(rerank, 'hard', 'Hard') + bars_svg(rows, 't'))")
    here = curves_svg(RERANK, "hard", "Hard") + bars_svg(ROWS, "t")
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                             input=json.dumps([RERANK, ROWS]), capture_output=True, text=True, check=True)
        assert out.stdout == here


def test_write_figures_writes_whole_files_and_skips_missing_parts(tmp_path):
    table1 = {g: {"greedy": v, "maj@16": {k: [99.0, 0.0] for k in v}} for g, v in ROWS.items()}
    summary = {"rerank": RERANK, "table1": table1, "table2": {"sft_easy": ROWS["sft_easy"], "ppo": ROWS["sft_hard"]}}
    names = write_figures(tmp_path, summary)
    assert names == {"hard_by_n": "figures/hard_by_n.svg", "all_by_n": "figures/all_by_n.svg",
                     "generators": "figures/generators.svg", "rl": "figures/rl.svg"}
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(f"{n}.svg" for n in names)
    _, generators = parse((tmp_path / names["generators"]).read_text())
    assert generators["Easy"].get("data-values") == "64.8,67.8,12.0"   # greedy, not maj@16
    _, rl = parse((tmp_path / names["rl"]).read_text())
    assert rl["Hard"].get("data-values") == "30.0,47.8"
    assert (tmp_path / names["hard_by_n"]).read_text() == curves_svg(RERANK, "hard", (
        "Hard accuracy against N: easy SFT samples re-ranked by easy-trained evaluators"))

    again = tmp_path / "again"
    assert write_figures(again, {"rerank": RERANK, "table1": table1}) == {
        k: v for k, v in names.items() if k != "rl"}
    assert write_figures(again / "empty", {"rerank": RERANK, "table1": table1, "table2": {}}).keys() == {
        "hard_by_n", "all_by_n", "generators"}
    assert sorted(p.name for p in (again / "figures").iterdir()) == ["all_by_n.svg", "generators.svg", "hard_by_n.svg"]
    assert write_figures(again / "nothing", {}) == {} and not (again / "nothing").exists()
