"""e2h/infra/distributed.py: one process without a process group, and two gloo ranks under torchrun
(FSDP2 gradients, parameters gathered once for sampling, state export, e2h.evaluate spread over
the ranks writing what one process writes, a sharded run that matches one process, stops on a
SIGTERM to torchrun and resumes on another number of ranks)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from data.format import format_prompt
from e2h.infra import distributed as dist
from e2h import evaluate
from e2h.hf.checkpoint import save_model
from e2h.model import ModelArgs, RewardModel, Transformer
from e2h.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


GLOO_TEARDOWN_ABORT = "terminate called without an active exception"


def run(cmd, timeout=240):
    result = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0 and GLOO_TEARDOWN_ABORT in result.stderr:
        # On a loaded 2-core machine a gloo rank occasionally aborts in its C++ teardown after
        # the script has finished (seen about once in ten runs); one rerun tells that apart from
        # a real failure, which fails again.
        result = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True,
                                timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_without_a_process_group_everything_is_local():
    assert "RANK" not in os.environ
    assert dist.init() == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert not dist.is_distributed() and (dist.rank(), dist.world_size(), dist.is_main()) == (0, 1, True)
    assert dist.all_reduce_sum({"b": 2.0, "a": 1.0}) == {"b": 2.0, "a": 1.0}
    assert dist.all_reduce_mean({"a": 3.0}) == {"a": 3.0}
    assert dist.all_gather_objects([1, 2]) == [[1, 2]] and dist.broadcast_object("x") == "x"
    model = Transformer(ModelArgs.from_name("tiny"))
    assert dist.shard(model) is model and type(model) is Transformer   # no FSDP wrapping
    with dist.gathered(model) as m:
        assert m is model
    state = dist.full_state_dict(model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


SCRIPT = r'''
import json, sys, torch
torch.set_num_threads(1)
from e2h.infra import distributed as dist, trainstate
from e2h.hf.checkpoint import load_model
from e2h.model import ModelArgs, RewardModel, Transformer
from e2h.sample import generate

dist.init()
r, W = dist.rank(), dist.world_size()
torch.manual_seed(0)
ref = Transformer(ModelArgs.from_name("tiny"))
model = Transformer(ModelArgs.from_name("tiny"))
model.load_state_dict(ref.state_dict())
model.embed_tokens.requires_grad_(False)
ref.embed_tokens.requires_grad_(False)
dist.shard(model)
tokens = torch.randint(3, 64, (4, 10), generator=torch.Generator().manual_seed(1))

# rank r takes rows r, r + 2; FSDP averages: the gradient of the mean over both halves
loss = lambda m, t: m.logits(m.hidden(t)).logsumexp(-1).mean()   # the registered methods
loss(model, tokens[r::W]).backward()
(0.5 * loss(ref, tokens[0::2]) + 0.5 * loss(ref, tokens[1::2])).backward()
grad = max((p.grad.full_tensor() - q.grad).abs().max().item()
           for p, q in zip(model.parameters(), ref.parameters()) if q.grad is not None)
frozen = model.embed_tokens.weight.grad is None

# inside gathered() no forward communicates: rank r runs r + 1 forwards and samples
# 2 + 4r tokens; a per-forward all-gather would hang here
with dist.gathered(model), torch.no_grad():
    outs = [model(tokens[:1]) for _ in range(r + 1)]
    samples = generate(model, [[1, 5, 6]], max_new_tokens=2 + 4 * r, temperature=0.0)
forward = (outs[-1] - ref(tokens[:1])).abs().max().item()
greedy = generate(ref, [[1, 5, 6]], max_new_tokens=2 + 4 * r, temperature=0.0)[0].tokens == samples[0].tokens

full = dist.full_state_dict(model)
state = max((full[k] - v).abs().max().item() for k, v in ref.state_dict().items()) if r == 0 else 0.0
rm = RewardModel(Transformer(ModelArgs.from_name("tiny")))
torch.nn.init.normal_(rm.score.weight)
plain = {k: v.clone() for k, v in rm.state_dict().items()}
dist.shard(rm)
trainstate.export_model(rm, sys.argv[1])
exported = load_model(sys.argv[1]).state_dict()
rm_export = max((v - plain[k]).abs().max().item() for k, v in exported.items())   # no LM head
rm_export += float("score.weight" not in exported)
sums = dist.all_reduce_sum({"rank": float(r), "one": 1.0})
gathered = dist.all_gather_objects([r] * (r + 1))
if r == 0:
    print(json.dumps({"grad": grad, "frozen": frozen, "forward": forward, "greedy": greedy,
                      "state": state, "rm_export": rm_export, "sums": sums, "gathered": gathered}))
from e2h import evaluate   # each rank samples and scores its share of the problems
argv = json.loads(sys.argv[2])
evaluate.main(argv[0])
evaluate.main(argv[1])     # and re-scores its share of the samples
dist.shutdown()
'''


def evaluations(tmp_path, out: str) -> list[list[str]]:
    """e2h.evaluate's two commands (sample, score and re-rank; re-score the samples) on five
    problems with a tiny policy and a reward model whose head is not zero."""
    m = tmp_path / "models"
    if not m.exists():
        questions = [f"Start at {k}. Add 5." for k in range(5)]
        tok = train_tokenizer([format_prompt(q) + "x = 12\n\n# Answer\n\n12" for q in questions],
                              m / "tokenizer.json", vocab_size=60)
        torch.manual_seed(0)
        policy = Transformer(ModelArgs.from_name("tiny", vocab_size=tok.vocab_size))
        rm = RewardModel.from_policy(policy)
        torch.nn.init.normal_(rm.score.weight)
        save_model(policy, m / "policy")
        save_model(rm, m / "rm")
        (m / "problems.jsonl").write_text("".join(json.dumps(
            {"id": f"p{k}", "question": q, "answer": "12", "level": 1 + k}) + "\n"
            for k, q in enumerate(questions)))
        # samples with steps and answers to score (a random policy writes neither)
        (m / "samples.jsonl").write_text("".join(json.dumps(
            {"id": f"p{k}", "question": q, "level": 1 + k, "answer": str(10 + j),
             "correct": j == 2, "completion": f"x = {k}\n\nx + {j} = 1{j}\n\n# Answer\n\n1{j}"})
            + "\n" for k, q in enumerate(questions) for j in range(3)))
    common = ["--tokenizer", str(m / "tokenizer.json"), "--max-new-tokens", "6", "--n-subsets",
              "2", "--device", "cpu"]
    return [["--policy", str(m / "policy"), "--rm", str(m / "rm"), "--data",
             str(m / "problems.jsonl"), "--n-samples", "3", "--out", f"{tmp_path / out}/eval", *common],
            ["--samples", str(m / "samples.jsonl"), "--rm", f"prm={m / 'rm'}",
             "--confidence", str(m / "policy"), "--out", f"{tmp_path / out}/rescore", *common]]


def evaluation_files(folder) -> dict:
    table = json.loads((folder / "eval" / "table.json").read_text())
    del table["args"]
    return {"table": table, **{name: (folder / "eval" / name).read_text()
                               for name in ("samples.jsonl", "greedy.jsonl")},
            "rerank": (folder / "rescore" / "rerank.json").read_text()}


def test_two_gloo_ranks_fsdp2_gradients_gathered_sampling_evaluate_and_export(tmp_path):
    script = tmp_path / "check.py"
    script.write_text(SCRIPT)
    for argv in evaluations(tmp_path, "one"):   # one process, as the reference
        evaluate.main(argv)
    result = run(TORCHRUN + [str(script), str(tmp_path / "rm"),
                             json.dumps(evaluations(tmp_path, "two"))])
    one, two = evaluation_files(tmp_path / "one"), evaluation_files(tmp_path / "two")
    assert len(one["samples.jsonl"].splitlines()) == 15 and one["table"]["ns"] == [1, 2, 3]
    assert len(json.loads(one["rerank"])["prm"]["methods"]["best_of_n"]["3"]["all"]) == 2
    assert two == one
    # rank 0 alone shows its progress: 3 problems of 5 (9 samples), 8 samples of 15 re-scored
    bars = [x.strip() for x in result.stderr.replace("\r", "\n").splitlines()
            if x.startswith(("sampling:", "scoring:"))]
    assert any(x.startswith("sampling:") and " 0/9 [" in x and "sample/s" in x for x in bars)
    assert any(x.startswith("scoring:") and " 0/8 [" in x for x in bars)
    assert not [x for x in bars if any(f" 0/{k} [" in x for k in (2, 6, 7, 15))], bars
    out = json.loads(next(x for x in result.stdout.splitlines() if x.startswith('{"grad"')))
    assert out["grad"] < 1e-6 and out["frozen"]
    assert out["forward"] < 1e-6 and out["greedy"]
    assert out["state"] == 0.0 and out["rm_export"] == 0.0
    assert out["sums"] == {"one": 2.0, "rank": 1.0}
    assert out["gathered"] == [[0], [1, 1]]


SFT = ["train.py", "--algo", "sft", "--preset", "tiny", "--n-problems", "4", "--batch-size", "4",
       "--micro-batch-size", "2", "--epochs", "1", "--eval-problems", "0"]


def losses(folder):
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return [(x["step"], x["loss"], x["tokens"]) for x in lines if "loss" in x]


def test_two_ranks_match_one_and_a_sigterm_to_torchrun_resumes_on_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run([sys.executable, *SFT, "--out", str(one)])
    # two ranks, each one micro-batch of 2 per step; a scheduler's SIGTERM to torchrun as step 1
    # ends (tests/infra/signal_at.py), which torchrun forwards to both ranks: they save step 1 and stop
    stopped = subprocess.run(TORCHRUN + ["tests/infra/signal_at.py", "1", "launcher", *SFT[1:], "--out",
                                         str(two)], cwd=ROOT, env=ENV, capture_output=True,
                             text=True, timeout=240)
    assert stopped.returncode != 0
    assert (f"SIGTERM: stopped at step 1, checkpoint {two / 'checkpoints' / 'step_000001'}; the "
            "same command with --resume continues from it") in stopped.stderr.splitlines()
    shards = sorted(p.name for p in (two / "checkpoints" / "step_000001" / "state").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]
    expected = losses(one)
    assert len(expected) == 3 and len(losses(two)) == 1
    for (s1, l1, t1), (s2, l2, t2) in zip(expected, losses(two)):
        assert s1 == s2 and t1 == t2 and abs(l1 - l2) < 1e-5   # same tokens: the data is split, not copied
    # the sharded checkpoint resumes on one process
    run([sys.executable, *SFT, "--out", str(two), "--resume"])
    assert [s for s, _, _ in losses(two)] == [1, 2, 3]
    for (_, l1, _), (_, l2, _) in zip(expected[1:], losses(two)[1:]):
        assert abs(l1 - l2) < 1e-5
    a, b = load_file(str(one / "model" / "model.safetensors")), load_file(str(two / "model" / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
