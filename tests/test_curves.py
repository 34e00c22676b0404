"""e2h/curves.py and e2h/svg.py: each series of the training curves claims, in its data-
attributes and its geometry, exactly the numbers of the hand-written logs below (x linear in
the step from 0 at the frame's left edge, y linear and upward, inside its frame), runs overlay in
one panel per quantity, and a run folder without a log is a one-line error."""
import json
import xml.etree.ElementTree as ET

import pytest

from e2h.curves import curves_svg, main, read_metrics, write_curves
from e2h.infra.errors import guard
from e2h.svg import nice_range

SVG = "{http://www.w3.org/2000/svg}"
# PPO names its learning rate "lr", the other trainers "learning_rate" (TRL's names)
PPO = ([{"step": 0, "eval/validation_easy_acc": 40.0, "eval/validation_hard_acc": 10.0}]
       + [{"step": s, "loss": 1.0 / s, "lr": 1e-5 * s, "objective/kl": 0.01 * s,
           "objective/scores": 0.5, "policy/approxkl_avg": 0.002, "loss/value_avg": 2.0 / s}
          for s in (1, 2, 3, 4)]
       + [{"step": 4, "eval/validation_easy_acc": 46.0, "eval/validation_hard_acc": 12.5}])
DPO = [{"step": s, "loss": 0.7 - 0.1 * s, "learning_rate": 3e-5, "rewards/margins": 0.2 * s,
        "rewards/accuracies": 0.5 + 0.1 * s} for s in (1, 2, 3)]
RM = [{"step": 1, "loss": 0.69}, {"step": 2, "loss": float("nan")}, {"step": 3, "loss": 0.5},
      {"step": 3, "final/easy_step_auc": 0.8, "final/hard_step_auc": 0.7}]


def parse(text: str):
    root = ET.fromstring(text)
    assert root.tag == SVG + "svg" and root.get("viewBox")
    series = {(g.get("data-run"), g.get("data-key")): g for g in root.iter(SVG + "g")
              if g.get("class") == "series"}
    frames = [tuple(float(r.get(k)) for k in ("x", "y", "width", "height"))
              for r in root.iter(SVG + "rect") if r.get("fill") == "none"]
    return root, series, frames


def claims(g):
    return ([int(s) for s in g.get("data-steps").split(",")],
            [float(v) for v in g.get("data-values").split(",")])


def points(g):
    return [tuple(map(float, p.split(","))) for p in g.find(SVG + "polyline").get("points").split()]


def test_nice_range_by_hand():
    assert nice_range(0.13, 0.87, 5) == (0.0, 1.0, 0.2)      # raw step 0.148 -> 0.2
    assert nice_range(0, 40, 6) == (0, 40, 10)               # raw 6.7 -> 10
    assert nice_range(3.0, 3.0, 6) == (1.5, 4.5, 0.5)        # flat: +-1.5 around it
    with pytest.raises(ValueError, match="finite"):
        nice_range(0.0, float("nan"))


def test_each_series_claims_its_log_lines_and_runs_share_a_panel():
    root, series, frames = parse(curves_svg({"ppo": PPO, "dpo": DPO, "rm": RM}))
    titles = [t.text for t in root.iter(SVG + "text")]
    for title in ("loss", "learning rate", "PPO reward", "PPO KL", "PPO approximate KL",
                  "PPO value loss", "DPO reward margin", "DPO reward accuracy", "RM held-out AUC",
                  "validation accuracy (%)"):
        assert titles.count(title) == 1, title
    assert len(frames) == 10                                  # a panel per quantity, once
    assert claims(series["ppo", "lr"]) == ([1, 2, 3, 4], [1e-5, 2e-5, 3e-5, 4e-5])
    assert claims(series["dpo", "learning_rate"]) == ([1, 2, 3], [3e-5] * 3)
    assert claims(series["ppo", "eval/validation_hard_acc"]) == ([0, 4], [10.0, 12.5])
    assert claims(series["dpo", "rewards/margins"])[1] == pytest.approx([0.2, 0.4, 0.6], abs=1e-6)
    assert claims(series["rm", "loss"]) == ([1, 3], [0.69, 0.5])          # the NaN step left out
    assert claims(series["rm", "final/hard_step_auc"]) == ([3], [0.7])
    assert ("rm", "lr") not in series and ("dpo", "objective/kl") not in series
    # a color per run, the same in every panel; the legend names the runs
    colors = {run: {g.find(SVG + "polyline").get("stroke") for (r, _), g in series.items() if r == run}
              for run in ("ppo", "dpo", "rm")}
    assert all(len(c) == 1 for c in colors.values()) and len(set.union(*colors.values())) == 3
    assert {"ppo", "dpo", "rm"} <= set(titles)
    # the loss panel holds all three runs: their points lie in one frame
    loss_frames = {next(f for f in frames if inside(f, points(series[run, "loss"])[0]))
                   for run in ("ppo", "dpo", "rm")}
    assert len(loss_frames) == 1


def inside(frame, point, tol=0.0101):
    x0, y0, w, h = frame
    x, y = point
    return x0 - tol <= x <= x0 + w + tol and y0 - tol <= y <= y0 + h + tol


@pytest.mark.parametrize("key", ["loss", "eval/validation_easy_acc", "objective/kl", "lr"])
def test_x_is_the_step_from_the_left_edge_and_y_grows_upward(key):
    _, series, frames = parse(curves_svg({"ppo": PPO, "dpo": DPO}))
    g = series["ppo", key]
    steps, values = claims(g)
    pts = points(g)
    assert len(pts) == len(steps)
    frame = next(f for f in frames if inside(f, pts[0]))
    assert all(inside(frame, p) for p in pts)
    x0, y0, w, h = frame
    # x = x0 + w * step / last, the same scale in a panel: step 0 at the left edge
    scale = (pts[-1][0] - x0) / steps[-1]
    assert scale > 0 and all(abs(x - (x0 + scale * s)) <= 0.0101 for (x, _), s in zip(pts, steps))
    if key == "eval/validation_easy_acc":
        assert abs(pts[0][0] - x0) <= 0.0101
    # y linear in the value, a larger value higher up (a smaller y)
    (v0, (_, ya)), (v1, (_, yb)) = (values[0], pts[0]), (values[-1], pts[-1])
    slope = (yb - ya) / (v1 - v0)
    assert slope < 0
    assert all(abs(y - (ya + slope * (v - v0))) <= 0.0101 for (_, y), v in zip(pts, values))


def test_runs_from_folders_and_one_line_errors(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    # a torn last line (a killed run) is left out
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in DPO) + '{"step": 4, "lo')
    assert read_metrics(run) == DPO
    assert main([str(run)]) is None
    _, series, _ = parse((run / "curves.svg").read_text())
    assert claims(series[str(run), "loss"])[0] == [1, 2, 3]
    assert sorted(p.name for p in run.iterdir()) == ["curves.svg", "metrics.jsonl"]   # no temp left
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    for folder, words in ((tmp_path / "nothing", "metrics.jsonl: not found"),
                          (tmp_path / "empty", "metrics.jsonl: empty")):
        assert guard(main, [str(run), str(folder), "--out", str(tmp_path / "x.svg")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {folder}/") and words in err[0], err
    assert not (tmp_path / "x.svg").exists()
    (tmp_path / "ppo").mkdir()
    (tmp_path / "ppo" / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in PPO))
    write_curves([run, tmp_path / "ppo"], tmp_path / "two.svg")   # several runs: one file
    _, series, _ = parse((tmp_path / "two.svg").read_text())
    assert {(str(tmp_path / "ppo"), "lr"), (str(run), "learning_rate")} <= set(series)
    with pytest.raises(ValueError, match="run folder given twice"):
        write_curves([run, tmp_path / "run"], tmp_path / "x.svg")
