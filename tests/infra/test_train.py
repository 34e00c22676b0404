"""train.py end to end on the tiny preset (subprocesses), and the pieces of its loop.

Every run caps its phases with --max-steps and samples a handful of short solutions, so a
subprocess costs a few seconds, most of it importing torch. The algorithms that need an SFT
policy or a PRM share them through the stage cache of one temporary folder.
"""
import json
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--preset", "tiny", "--max-steps", "2", "--n-problems", "2", "--eval-problems", "0",
        "--batch-size", "4", "--max-new-tokens", "24", "--sample-batch-size", "8"]


def train(*argv, timeout=300, script="train.py"):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, script, *map(str, argv)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


def steps(run_dir) -> list[dict]:
    lines = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if "loss" in x]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def init_model(runs):
    """A tiny model and tokenizer saved in the HF layout, to start SFT from (--model)."""
    from data.format import format_prompt
    from data.synthetic import make_split, reference_completion
    from e2h.hf.checkpoint import save_model
    from e2h.model import ModelArgs, Transformer
    from e2h.tokenizer import train_tokenizer

    folder = runs / "init"
    problems = make_split(20, seed=0)
    tok = train_tokenizer([format_prompt(p["question"]) + reference_completion(p) for p in problems],
                          runs / "tokenizer.json", vocab_size=64)
    torch.manual_seed(0)
    save_model(Transformer(ModelArgs.from_name("tiny", vocab_size=tok.vocab_size)), folder)
    tok.save(folder / "tokenizer.json")
    return folder


def check_metrics(run_dir, n_steps, lr_key="learning_rate"):
    lines = steps(run_dir)
    assert [x["step"] for x in lines] == list(range(1, n_steps + 1))
    for x in lines:
        assert {"loss", lr_key, "grad_norm", "tokens_per_s"} <= set(x)
        assert math.isfinite(x["loss"]) and x["tokens_per_s"] > 0


def changed(before: dict, after: dict, key: str) -> bool:
    return not torch.equal(before[key], after[key])

# ----------------------------------------------------------------------------- one run per algorithm


def test_sft_from_a_model_trains_blocks_and_keeps_embeddings_frozen(runs, init_model):
    ok(train("--algo", "sft", "--out", runs / "sft", "--model", init_model, "--hparams", "embedded", *TINY))
    before, after = weights(init_model), weights(runs / "sft" / "model")
    assert changed(before, after, "model.layers.0.self_attn.q_proj.weight")
    for frozen in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
                   "model.layers.0.input_layernorm.weight"):
        assert not changed(before, after, frozen)
    check_metrics(runs / "sft", 2)
    args = json.loads((runs / "sft" / "args.json").read_text())
    assert args["algo"] == "sft" and args["max_steps"] == 2


def test_prm_trains_the_missing_sft_stage_then_a_reward_head(runs):
    result = ok(train("--algo", "prm", "--out", runs / "prm", *TINY))
    assert "no --policy given: training the SFT stage first (cached at" in result.stdout
    policy = json.loads((runs / "prm" / "args.json").read_text())["policy"]
    before, after = weights(policy), weights(runs / "prm" / "model")
    assert after["score.weight"].abs().sum() > 0      # the head starts at exactly zero
    assert changed(before, after, "model.layers.1.mlp.down_proj.weight")
    check_metrics(runs / "prm", 2)
    # a second run with the same settings (in another folder) reuses the cached stage
    again = ok(train("--algo", "prm", "--out", runs / "prm_again", *TINY))
    assert "using the SFT stage cached at" in again.stdout


def test_orm_on_given_outcome_labels(runs):
    from data.format import parse_solution
    from data.synthetic import make_split, reference_completion
    records = []
    for p in make_split(3, levels=(1, 2), seed=0):
        steps_, answer = parse_solution(reference_completion(p))
        wrong = f"{(int(answer) + 1) % 100:02d}"
        for ans, label in ((answer, 1), (wrong, 0)):
            records.append({"id": p["id"], "question": p["question"], "steps": steps_, "answer": ans,
                            "step_labels": None, "outcome_label": label, "level": p["level"]})
    data = runs / "orm.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    ok(train("--algo", "orm", "--out", runs / "orm", "--data", data, *TINY))
    assert weights(runs / "orm" / "model")["score.weight"].abs().sum() > 0
    check_metrics(runs / "orm", 2)


def test_oprm_labels_the_solutions_the_prm_sampled(runs):
    samples = runs / "prm" / "data" / "samples.jsonl"
    ok(train("--algo", "oprm", "--out", runs / "oprm", "--samples", samples, *TINY))
    assert weights(runs / "oprm" / "model")["score.weight"].abs().sum() > 0
    check_metrics(runs / "oprm", 2)

    def records(run):
        rows = (runs / run / "data" / "rm_train.jsonl").read_text().splitlines()
        return [(r["id"], r["steps"], r["answer"], r["step_labels"]) for r in map(json.loads, rows)]
    # 2 problems per level x levels 1-3 x the embedded PRM's 16 samples, one PRM record each;
    # the OPRM has those same records (program-labelled steps) and then its outcome-only ones
    n = 2 * 3 * 16
    assert len(samples.read_text().splitlines()) == n == len(records("prm"))
    assert records("oprm")[:n] == records("prm")
    assert all(r[3] == [None] * len(r[1]) for r in records("oprm")[n:])


def test_samples_from_other_problems_are_refused(runs, tmp_path):
    bad = tmp_path / "samples.jsonl"
    bad.write_text(json.dumps({"id": "syn-elsewhere", "question": "q", "completion": "c",
                               "answer": None, "correct": False}) + "\n")
    result = train("--algo", "orm", "--out", tmp_path / "orm", "--samples", bad, *TINY)
    assert result.returncode == 1
    assert f"{bad}:1: --samples id 'syn-elsewhere' is not among this run's 6 problems" in result.stderr
    assert train("--algo", "sft", "--samples", bad, *TINY).returncode == 2


@pytest.mark.parametrize("algo, extra, n_steps", [
    ("dpo", ["--pair-gap", "0", "--iterations", "1"], 2),    # tiny models are never right: pair on PRM score
    ("rest", ["--levels", "all", "--hard-threshold", "0", "--iterations", "1"], 2),
    ("ppo", ["--rollouts", "4"], 2),
    # outcome rewards: the tiny policy's 24-token samples may hold no step to score per step
    ("grpo", ["--rollouts", "4", "--group-size", "2"], 2),
])
def test_rl_from_the_cached_policy_and_prm(runs, algo, extra, n_steps):
    result = ok(train("--algo", algo, "--out", runs / algo, *TINY, *extra))
    assert "no --reward-model given" in result.stdout
    policy = json.loads((runs / algo / "args.json").read_text())["policy"]
    assert changed(weights(policy), weights(runs / algo / "model"), "model.layers.0.mlp.up_proj.weight")
    check_metrics(runs / algo, n_steps, "lr" if algo == "ppo" else "learning_rate")   # TRL's keys
    # the run's curves, written as it ends: the loss of every step and the algorithm's signals
    svg = ET.parse(runs / algo / "curves.svg").getroot()
    series = {g.get("data-key"): g.get("data-steps") for g in svg.iter()
              if g.get("class") == "series"}
    assert series["loss"] == ",".join(str(x["step"]) for x in steps(runs / algo))
    assert {"ppo": "objective/kl", "dpo": "rewards/margins", "rest": "learning_rate",
            "grpo": "reward"}[algo] in series

# ----------------------------------------------------------------------------- resume, guards


SFT = ["--algo", "sft", "--preset", "tiny", "--n-problems", "4", "--batch-size", "4",
       "--micro-batch-size", "2", "--epochs", "1", "--eval-problems", "0", "--save-every", "2"]


def test_sigterm_then_resume_ends_with_exactly_the_uninterrupted_weights(runs):
    ok(train(*SFT, "--out", runs / "whole"))
    # a scheduler's SIGTERM as step 1 ends (tests/infra/signal_at.py): saved at once, though
    # --save-every 2 would not save it
    stopped = train("1", "self", *SFT, "--out", runs / "parts", script="tests/infra/signal_at.py")
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"SIGTERM: stopped at step 1, checkpoint {runs / 'parts' / 'checkpoints' / 'step_000001'}; "
        "the same command with --resume continues from it")
    assert len(steps(runs / "parts")) == 1
    ok(train(*SFT, "--out", runs / "parts", "--resume"))
    whole, parts = weights(runs / "whole" / "model"), weights(runs / "parts" / "model")
    assert all(torch.equal(whole[k], parts[k]) for k in whole)
    assert [x["loss"] for x in steps(runs / "whole")] == [x["loss"] for x in steps(runs / "parts")]


def test_nan_loss_stops_and_sets_the_checkpoint_that_gave_it_aside(runs):
    # lr 1e30: the first update blows the weights up (finite, ~1e30), the second step's loss is
    # NaN, so the checkpoint saved after step 1 holds weights that give NaN: it is not good
    out = runs / "nan"
    result = train(*SFT, "--out", out, "--lr", "1e30", "--warmup-ratio", "0", "--save-every", "1")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: loss is nan and grad_norm is nan at step 2; stopped before")
    assert "step_000001.nonfinite. Last good checkpoint: none" in last
    assert [x["step"] for x in steps(out)] == [1]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000001.nonfinite"]


@pytest.mark.parametrize("argv, message", [
    (["--algo", "ppx"], "invalid choice: 'ppx'"),
    (["--algo", "sft", "--batch-size", "0"], "--batch-size: must be > 0"),
    (["--algo", "sft", "--dtype", "float8"], "invalid choice: 'float8'"),
    (["--algo", "sft", "--batch-size", "6", "--micro-batch-size", "4"], "must be a multiple of"),
    (["--algo", "sft", "--levels", "1,7"], "--levels '1,7'"),
])
def test_bad_flags_are_argparse_errors(argv, message):
    result = train(*argv)
    assert result.returncode == 2
    assert message in result.stderr and "usage:" in result.stderr


def test_a_preset_name_given_as_model_says_to_use_preset(tmp_path, monkeypatch):
    from e2h.run import check_model_dir
    monkeypatch.chdir(tmp_path)   # no folder of that name here
    with pytest.raises(ValueError, match=r"^--model llemma_7b: not a folder \(an HF Llama directory "
                                         r"with config.json\); for a random model of the preset "
                                         r"'llemma-7b' use --preset llemma-7b$"):
        check_model_dir("model", "llemma_7b")
    with pytest.raises(ValueError, match=r"config.json\)$"):   # --policy has no preset to offer
        check_model_dir("policy", "llemma-7b")


def test_missing_file_empty_data_and_oversized_tokenizer_are_one_line_errors(runs, init_model):
    from data.format import format_prompt
    from data.synthetic import make_split, reference_completion
    from e2h.tokenizer import train_tokenizer
    missing = train("--algo", "sft", "--data", runs / "nope.jsonl", "--out", runs / "e1", *TINY)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == f"error: {runs / 'nope.jsonl'}: data file not found"
    (runs / "empty.jsonl").write_text("\n")
    empty = train("--algo", "sft", "--data", runs / "empty.jsonl", "--out", runs / "e2", *TINY)
    assert empty.returncode == 1 and "error: " in empty.stderr and "empty data file" in empty.stderr
    texts = [format_prompt(p["question"]) + reference_completion(p) for p in make_split(20, seed=0)]
    big = train_tokenizer(texts, runs / "big" / "tokenizer.json", vocab_size=100)
    assert big.vocab_size > 64
    result = train("--algo", "sft", "--model", init_model, "--tokenizer", big.path, "--hparams",
                   "embedded", "--out", runs / "e3", *TINY)
    assert result.returncode == 1
    assert f"tokenizer has {big.vocab_size} tokens but the model's embedding has only 64 rows" in result.stderr

# ----------------------------------------------------------------------------- loop pieces


def test_lr_warms_up_linearly_then_follows_the_cosine():
    from argparse import Namespace
    from e2h.loop import lr_at
    args = Namespace(lr=1.0, warmup_ratio=0.2, min_lr_ratio=0.0)
    # 10 steps, 2 of warmup: (step + 1) / 2, then 0.5 * (1 + cos(pi * (step - 2) / 8))
    assert [lr_at(s, 10, args) for s in (0, 1, 2, 6, 10)] == pytest.approx(
        [0.5, 1.0, 1.0, 0.5, 0.0], abs=1e-12)
    args.min_lr_ratio = 0.1                    # 0.1 + 0.9 * 0.5 at the middle
    assert lr_at(6, 10, args) == pytest.approx(0.55, abs=1e-12)


def test_a_model_at_its_own_lr_follows_the_schedule_scaled():
    from argparse import Namespace
    from e2h.loop import set_lr
    from e2h.run import make_optimizer
    args = Namespace(lr=0.1, betas=[0.9, 0.95], weight_decay=0.0)
    model = torch.nn.Linear(2, 2)
    main, other = make_optimizer(model, args), make_optimizer(model, args, lr=0.3)
    set_lr([main, other], 0.05)                  # a step where the schedule is at half of --lr
    assert main.param_groups[0]["lr"] == pytest.approx(0.05, abs=1e-15)
    assert other.param_groups[0]["lr"] == pytest.approx(0.15, abs=1e-15)
    # a resumed run loads the optimizer's state: the scale comes from the flags, not from it
    other.load_state_dict(main.state_dict())
    set_lr([other], 0.05)
    assert other.param_groups[0]["lr"] == pytest.approx(0.15, abs=1e-15)


def test_ppo_value_warmup_trains_the_value_model_only(runs):
    ok(train("--algo", "ppo", "--out", runs / "ppo_warm", *TINY, "--rollouts", "4",
             "--value-warmup-steps", "2", "--value-lr", "1e-3"))
    policy = json.loads((runs / "ppo_warm" / "args.json").read_text())["policy"]
    before, after = weights(policy), weights(runs / "ppo_warm" / "model")
    assert all(torch.equal(before[k], after[k]) for k in before)
    lines = steps(runs / "ppo_warm")
    assert [x["policy/grad_norm"] for x in lines] == [0.0, 0.0]
    assert all(x["val/grad_norm"] > 0 for x in lines)


def test_batches_walk_one_seeded_permutation_per_epoch():
    from e2h.loop import batch_indices
    perm0 = torch.randperm(3, generator=torch.Generator().manual_seed(7)).tolist()
    perm1 = torch.randperm(3, generator=torch.Generator().manual_seed(8)).tolist()
    assert batch_indices(3, 0, 2, seed=7) == perm0[:2]
    assert batch_indices(3, 1, 2, seed=7) == [perm0[2], perm1[0]]   # crosses into epoch 1
    assert batch_indices(3, 2, 2, seed=7) == perm1[1:]


def test_a_checkpoint_killed_while_writing_leaves_the_previous_one(tmp_path, monkeypatch):
    from e2h.infra import distributed, trainstate
    from e2h.model import ModelArgs, Transformer
    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_name("tiny"))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 3, dtype=torch.long)).sum().backward()
    opt.step()
    first = trainstate.save(tmp_path, 1, model, [opt], {"iteration": 0})

    def killed(*a, **k):
        raise KeyboardInterrupt("killed while writing")
    monkeypatch.setattr(distributed, "save_state", killed)
    with pytest.raises(KeyboardInterrupt):
        trainstate.save(tmp_path, 2, model, [opt], {"iteration": 0})
    assert trainstate.latest(tmp_path) == first
    assert (tmp_path / "checkpoints" / "step_000002.tmp").is_dir()   # the unfinished write
    monkeypatch.undo()
    fresh = Transformer(ModelArgs.from_name("tiny"))
    fresh_opt = torch.optim.AdamW(fresh.parameters())
    meta = trainstate.load(first, fresh, [fresh_opt])
    assert meta == {"step": 1, "iteration": 0}
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))
    exp_avg = [opt.state[p]["exp_avg"] for p in model.parameters()]
    assert all(torch.equal(a, fresh_opt.state[p]["exp_avg"]) for a, p in zip(exp_avg, fresh.parameters()))
