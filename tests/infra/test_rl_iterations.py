"""The wiring of iterative DPO and ReST-EM across iterations, through train.py in-process:
iteration 2 samples from the policy iteration 1 left; DPO's reference is that policy; ReST-EM's
fine-tuning restarts from the base SFT model."""
import copy
import json
import sys
from pathlib import Path

import pytest
import torch

from data.format import format_prompt
from data.synthetic import make_split, reference_completion
from e2h import dpo, iterations, rest
from e2h.hf.checkpoint import save_model
from e2h.model import ModelArgs, RewardModel, Transformer
from e2h.sequences import sequence_logps
from e2h.tokenizer import Tokenizer, train_tokenizer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import train  # noqa: E402

RUN = ["--preset", "tiny", "--max-steps", "2", "--n-problems", "2", "--eval-problems", "0",
       "--batch-size", "2", "--max-new-tokens", "16", "--n-samples", "4", "--iterations", "2",
       "--lr", "1e-2"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny policy and a reward model with opinions (random head), in the HF layout."""
    root = tmp_path_factory.mktemp("models")
    problems = make_split(10, seed=0)
    tok = train_tokenizer([format_prompt(p["question"]) + reference_completion(p) for p in problems],
                          root / "tokenizer.json", vocab_size=64)
    torch.manual_seed(0)
    policy = Transformer(ModelArgs.from_name("tiny", vocab_size=tok.vocab_size))
    rm = RewardModel.from_policy(policy)
    torch.nn.init.normal_(rm.score.weight, std=1.0)
    for model, name in ((policy, "policy"), (rm, "rm")):
        save_model(model, root / name)
        (root / name / "tokenizer.json").write_bytes((root / "tokenizer.json").read_bytes())
    return root


def params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def spy(monkeypatch, module, name, before=None, after=None):
    real = getattr(module, name)

    def wrapped(*args, **kwargs):
        if before:
            before(args, kwargs)
        out = real(*args, **kwargs)
        if after:
            after(args, kwargs)
        return out
    monkeypatch.setattr(module, name, wrapped)


def test_rest_samples_the_latest_policy_and_restarts_from_the_base(models, tmp_path, monkeypatch):
    sampled, started, ended = [], [], []
    spy(monkeypatch, rest, "rest_iteration_data", before=lambda a, k: sampled.append(params(a[0])))
    spy(monkeypatch, iterations, "train_phase", before=lambda a, k: started.append(params(a[1])),
        after=lambda a, k: ended.append(params(a[1])))
    # hard-threshold 0 on levels 4-5 keeps every hard sample: an untrained policy is never right
    assert train.main(["--algo", "rest", "--out", str(tmp_path / "rest"), *RUN,
                       "--policy", str(models / "policy"), "--reward-model", str(models / "rm"),
                       "--hard-threshold", "0", "--answer-levels", "4,5"]) == 0
    assert len(sampled) == len(started) == len(ended) == 2
    base = started[0]
    assert torch.equal(sampled[0], base)
    assert not torch.equal(ended[0], base)              # iteration 1 trained
    assert torch.equal(sampled[1], ended[0])            # iteration 2 samples the latest policy
    assert torch.equal(started[1], base)                # ... and fine-tunes from the base


def test_dpo_reference_is_the_policy_each_iteration_starts_from(models, tmp_path, monkeypatch):
    starts, ended = [], []
    spy(monkeypatch, dpo, "dpo_iteration_data", before=lambda a, k: starts.append(copy.deepcopy(a[0])))
    spy(monkeypatch, iterations, "train_phase", after=lambda a, k: ended.append(params(a[1])))
    out = tmp_path / "dpo"
    assert train.main(["--algo", "dpo", "--out", str(out), *RUN, "--policy", str(models / "policy"),
                       "--reward-model", str(models / "rm"), "--pair-gap", "0"]) == 0
    assert len(starts) == len(ended) == 2
    assert torch.equal(params(starts[1]), ended[0])     # iteration 2 starts where 1 ended
    assert not torch.equal(params(starts[0]), params(starts[1]))
    for it, policy in enumerate(starts):
        examples = [json.loads(x) for x in (out / "data" / f"dpo_iteration{it}.jsonl").read_text().splitlines()]
        assert examples
        batch = dpo.collate_pairs(examples, Tokenizer(models / "tokenizer.json").pad_id)
        with torch.no_grad():
            logps = sequence_logps(policy.eval(), batch["tokens"], batch["loss_mask"])
        # the cached reference log-probs are the iteration's starting policy's, not the base's
        torch.testing.assert_close(batch["ref_logps"], logps, rtol=0, atol=1e-5)


def test_dpo_stopped_by_sigterm_while_sampling_and_in_a_step_resumes_to_the_same_policy(
        models, tmp_path, monkeypatch, capsys):
    """A stop signal during iteration 2's sampling (no step to stop at: it stops at once, and the
    resume samples again with the same seeds), then during a step of that iteration (it saves at
    the step's end): the resumed run ends with the uninterrupted run's policy."""
    import os
    import signal
    from safetensors.torch import load_file
    from e2h.infra.errors import guard
    from e2h.run import Run
    argv = ["--algo", "dpo", *RUN, "--policy", str(models / "policy"), "--reward-model",
            str(models / "rm"), "--pair-gap", "0"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train.main([*argv, "--out", str(whole)]) == 0
    sampled = []

    def sigterm_in_iteration_2(args, kwargs):   # no step to stop at while sampling
        sampled.append(1)
        if len(sampled) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
    spy(monkeypatch, dpo, "dpo_iteration_data", before=sigterm_in_iteration_2)
    logged = Run.log

    def sigterm_in_step_3(self, record):   # saved as the step ends
        logged(self, record)
        if record.get("step") == 3 and "loss" in record and len(sampled) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(Run, "log", sigterm_in_step_3)
    ckpt = parts / "checkpoints"
    for resume, step in (([], 2), (["--resume"], 3)):
        assert guard(train.main, [*argv, "--out", str(parts), *resume]) == 143
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"SIGTERM: stopped at step {step}, checkpoint {ckpt / f'step_{step:06d}'}; the same "
            "command with --resume continues from it")
    assert guard(train.main, [*argv, "--out", str(parts), "--resume"]) == 0
    a, b = (load_file(str(out / "model" / "model.safetensors")) for out in (whole, parts))
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [[json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
             for out in (whole, parts)]
    assert [[(x["step"], x["loss"]) for x in log if "loss" in x] for log in lines] == [
        [(x["step"], x["loss"]) for x in lines[0] if "loss" in x]] * 2
