"""python -m study --quick end to end (one seed, every stage on tiny settings): every number of the
report is produced. The values of a generator trained for seconds mean nothing, so only their
presence and type are checked; the AUCs may be NaN (a class can be empty when every sample is
wrong)."""
import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("easy", "hard", "all")


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_split_values(by_split: dict, allow_nan=False):
    assert set(by_split) == set(SPLITS)
    for value in by_split.values():
        assert is_number(value) and (allow_nan or 0.0 <= value <= 100.0), by_split


def test_quick_study_produces_every_number(tmp_path):
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "study", "--quick", "--seeds", "1", "--out", str(out),
           "--runs", str(tmp_path / "runs")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    seed = results["per_seed"][0]
    n, t1n = results["settings"]["n"], results["settings"]["t1_n"]

    # Table 1: three generators, greedy and majority@t1_n
    assert set(seed["table1"]) == {"sft_easy", "sft_all", "sft_hard"}
    for by_decoding in seed["table1"].values():
        assert set(by_decoding) == {"greedy", f"maj@{t1n}"}
        for by_split in by_decoding.values():
            check_split_values(by_split)

    # re-ranking: three evaluators x three methods x N = 1, 2, 4, ..., n
    ns = [str(2 ** i) for i in range(n.bit_length())]
    assert set(seed["rerank"]) == {"orm", "prm", "oprm"}
    for by_method in seed["rerank"].values():
        assert set(by_method) == {"majority", "weighted", "best_of_n"}
        for by_n in by_method.values():
            assert list(by_n) == ns
            for by_split in by_n.values():
                check_split_values(by_split)
    assert set(seed["auc"]) == {"orm", "prm", "oprm", "generator"}
    assert set(seed["auc"]["generator"]) == {"within_easy", "within_hard"}
    for name, aucs in seed["auc"].items():
        if name != "generator":
            assert set(aucs) == {"easy_step", "easy_outcome", "hard_step", "hard_outcome",
                                 "test_easy_outcome_min", "test_hard_outcome_min",
                                 "within_easy", "within_hard"}
        assert all(is_number(v) and (math.isnan(v) or 0.0 <= v <= 1.0) for v in aucs.values())

    # Table 2: the easy SFT policy and the five RL runs
    assert list(seed["table2"]) == ["sft_easy", "ppo", "ppo_outcome", "grpo", "dpo", "rest"]
    for by_split in seed["table2"].values():
        check_split_values(by_split)
    # the SFT row is the SFT policy on the RL runs' test problems: each run's own start
    for name in ("ppo", "grpo", "dpo"):
        start = [json.loads(line) for line in
                 (tmp_path / "runs/seed0" / name / "data/start_test.jsonl").read_text().splitlines()]
        assert 100 * sum(r["correct"] for r in start) / len(start) == pytest.approx(
            seed["table2"]["sft_easy"]["all"])

    # findings: F1 for PRM and OPRM at N = n, F2 per evaluator, F3 per RL run, F4
    # F5: generator size x evaluator size, weighted and majority Hard accuracy per pairing
    assert set(seed["f5"]) == {"sft_easy", "sft_easy_half"}
    assert set(seed["f5"]["sft_easy"]) == {"prm", "prm_half"} and set(seed["f5"]["sft_easy_half"]) == {"prm"}
    for by_ev in seed["f5"].values():
        for v in by_ev.values():
            assert set(v) == {"majority", "weighted", "within_hard_auc"}
            assert 0.0 <= v["majority"] <= 100.0 and 0.0 <= v["weighted"] <= 100.0

    # findings: F1 for PRM and OPRM at N = n, F2 per evaluator, F3 per RL run, F4, F5; each a
    # paired difference with its bootstrap interval over problems
    # F3: Easy and Hard of every RL run against its start, then PPO against PPO on easy answers
    names = [f["name"] for f in results["findings"]]
    rl = [f"F3 {m} {split}" for m in ("ppo", "ppo_outcome", "grpo", "dpo", "rest") for split in ("easy", "hard")]
    assert names == ["F1 PRM N=4", "F1 OPRM N=4", "F2 ORM N=4", "F2 PRM N=4", "F2 OPRM N=4",
                     *rl, "F3 ppo vs ppo_outcome hard", "F4",
                     "F5 evaluator 2x generator N=4", "F5 generator 2x evaluator N=4"]
    # the claim is tested on the runs rewarded by the PRM on every level; the rest are comparisons
    comparisons = {f"F3 {m} {split}" for m in ("ppo_outcome", "dpo", "rest") for split in ("easy", "hard")}
    for f in results["findings"]:
        assert (f["reproduced"] is None) if f["name"] in comparisons else isinstance(f["reproduced"], bool)
        lo, hi = f["interval"]
        assert lo <= hi and "95% over problems" in f["value"]
    report = (out / "report.md").read_text()
    assert "## Findings" in report and "## Table 2" in report and "## F5 in miniature" in report
    assert "| grpo | all | easy | yes | " in report and "| ppo_outcome | easy | easy | no | " in report
    assert 'data-rows="sft_easy,ppo,ppo_outcome,grpo,dpo,rest"' in (out / "figures" / "rl.svg").read_text()
    for name in ("hard_by_n", "all_by_n", "generators", "rl"):   # drawn and embedded
        assert (out / "figures" / f"{name}.svg").is_file() and f"(figures/{name}.svg)" in report
    with gzip.open(out / "samples" / "seed0_sft_easy.jsonl.gz", "rt") as f:
        first = json.loads(f.readline())
    assert set(first["scores"]) == {"orm", "prm", "oprm", "prm_half", "generator_min_token_prob"}


def test_within_problem_auc_by_hand():
    from e2h.score import within_problem_auc
    rows = [  # (problem id, level, score, correct)
        ("a", 1, 0.9, True), ("a", 1, 0.2, False), ("a", 1, 0.5, True),   # both right above: 1.0
        ("b", 2, 0.3, True), ("b", 2, 0.6, False),                         # right below: 0.0
        ("c", 3, 0.1, True), ("c", 3, 0.4, True),                          # no wrong one: skipped
        ("d", 4, 0.5, True), ("d", 4, 0.5, False),                         # a tie: 0.5
    ]
    samples = [{"id": i, "level": lvl, "correct": ok} for i, lvl, _, ok in rows]
    got = within_problem_auc(samples, [score for _, _, score, _ in rows])
    assert got == {"easy": (1.0 + 0.0) / 2, "easy_problems": 2, "hard": 0.5, "hard_problems": 1}


def test_min_token_probs_match_a_token_by_token_softmax(tmp_path):
    import torch
    from data import synthetic
    from data.format import format_prompt
    from e2h.model import ModelArgs, Transformer
    from e2h.score import encode_completion, min_token_probs
    from e2h.tokenizer import train_tokenizer
    torch.set_num_threads(1)
    problems = synthetic.make_split(2, seed=0, split="sft")
    texts = [format_prompt(p["question"]) + synthetic.reference_completion(p) for p in problems]
    tok = train_tokenizer(texts, tmp_path / "tok.json", vocab_size=64)
    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_name("tiny", vocab_size=tok.vocab_size)).eval()
    samples = [{"question": p["question"], "completion": synthetic.reference_completion(p)}
               for p in problems[:3]]
    samples[1]["completion"] = samples[1]["completion"][:12]          # a shorter one in the batch
    got = min_token_probs(model, tok, samples, batch_size=2)
    for s, value in zip(samples, got):
        prompt, completion = encode_completion(tok, s["question"], s["completion"])
        ids = prompt + completion
        probs = []
        for t in range(len(prompt), len(ids)):      # one forward per token, no padding
            with torch.no_grad():
                logits = model(torch.tensor([ids[:t]]))[0, -1].double()
            probs.append(torch.softmax(logits, -1)[ids[t]].item())
        assert abs(value - min(probs)) < 1e-5, (value, min(probs))


def test_full_study_trains_at_the_embedded_defaults():
    """The full study's training stages give only the flags where the study differs from the
    embedded defaults (study/main.py says why for each); every other value is the default's."""
    from e2h.defaults import EMBEDDED
    from e2h.flags import get_args
    from study.main import FULL, seed_jobs
    cfg = {k: v for k, v in FULL.items() if k != "seeds"}
    run = {"algo", "out", "resume", "seed", "preset", "hparams", "eval_problems", "tokenizer",
           "test_problems"}
    own = {"sft_easy": set(), "sft_all": {"levels"}, "sft_hard": {"levels"}, "sft_easy_half": set(),
           "prm": {"policy"}, "prm_half": {"policy", "samples", "model"},
           "orm": {"policy", "samples", "max_steps"}, "oprm": {"policy", "samples", "max_steps"},
           "ppo_outcome": {"policy", "reward_model", "levels", "no_process_reward"},
           **{m: {"policy", "reward_model"} for m in ("ppo", "grpo", "dpo", "rest")}}
    stages = {}
    for job in seed_jobs(0, cfg, ROOT / "never-written", quick=False):
        argv = [str(a) for a in job.argv]
        if "train.py" in argv:
            stages[job.name.split("/")[1]] = get_args(argv[argv.index("train.py") + 1:])
    assert set(stages) == set(own)
    for name, args in stages.items():
        assert set(args.explicit) - run == own[name], name
        for key, value in EMBEDDED[args.algo].items():   # the default's budget and optimizer
            assert getattr(args, key) == value or key in own[name], (name, key)
    assert [stages[n].levels for n in ("sft_easy", "sft_all", "sft_hard")] == ["1,2,3", "1,2,3,4,5", "4,5"]
    assert (stages["orm"].max_steps, stages["oprm"].max_steps, stages["prm"].max_steps) == (300, 900, 0)
    assert stages["ppo"].eval_problems == 250   # RL validation: 250 per level
    assert (stages["ppo"].test_problems, stages["sft_easy"].test_problems) == (500, 100)
