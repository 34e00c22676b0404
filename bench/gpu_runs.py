"""The entry-point runs of bench/gpu.py and the files they read.

- evaluate: the re-ranking evaluation exactly as `python -m e2h.evaluate` runs it (sample N
  per problem, score each sample with the reward model, re-rank), on a Llemma-7B-shaped policy
  and reward model with random bf16 weights: samples/s, the checkpoint loading left out.
- ppo, dpo: `python train.py --algo ppo` (two steps) and `--algo dpo` (one step) from small
  random checkpoints: both finish and every logged loss is finite.

Only the command lines and the Hugging Face checkpoint layout (e2h/hf/checkpoint.py) are relied
on, so the code behind them may move. Random models need help to give DPO its pairs: pairs
need samples whose reward-model scores differ, and a sample is scored only at its step
delimiters ("\\n\\n"); the small tokenizer here holds "\\n\\n" as one of about 300 tokens, so
near-uniform random logits draw it in a good share of 48-token samples.

Also here: ``Ctx`` and ``child_main``, what every check process of bench/gpu.py starts from.
torch is imported only inside the functions that need it: the ppo and dpo check processes
start train.py and import nothing heavy themselves.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LLAMA2_TOKENIZER = ROOT.parent / "shared" / "data" / "tokenizer" / "llama2" / "tokenizer.json"
SHM = Path("/dev/shm")
SPECIALS = ["<unk>", "<s>", "</s>"]   # e2h/tokenizer.py: UNK 0, BOS 1, EOS 2


@dataclass
class Ctx:
    dry: bool
    work: Path         # shared by the checks of one run: setup's inputs, results, logs
    deadline: float    # time.monotonic() at which this check's budget ends
    tokenizer: str | None
    result_path: Path

    @property
    def device(self):
        import torch
        return torch.device("cpu" if self.dry else "cuda")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self, result: dict):
        """Atomically: what the table shows if the check is killed at its budget."""
        tmp = self.result_path.with_name(self.result_path.name + ".tmp")
        tmp.write_text(json.dumps(result))
        os.replace(tmp, self.result_path)

    def result_of(self, name: str) -> dict:
        path = self.work / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else {}


def child_main(args, module: str) -> int:
    """Run one check, ``module.check_NAME``, or one kernel-check worker, and save its result
    (a raised error too)."""
    import importlib
    sys.path.insert(0, str(ROOT))   # e2h
    worker = args.kernel_worker
    name = f"kernel-{worker[0]}" if worker else args.child
    ctx = Ctx(args.dry, args.work, time.monotonic() + args.seconds,
              str(args.tokenizer) if args.tokenizer else None, args.work / f"{name}.json")
    try:
        if worker:
            importlib.import_module("gpu_attention").kernel_worker(ctx, *worker)
            return 0
        result = getattr(importlib.import_module(module), f"check_{name}")(ctx)
    except Exception as e:
        traceback.print_exc()
        partial = ctx.result_of(name)
        partial["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ctx.save(partial)
        return 1
    ctx.save({**ctx.result_of(name), **result})
    return 0


def problems(n: int) -> list[dict]:
    """n canonical problem records (e2h.evaluate.read_problems), levels 1-5 in turn."""
    return [{"id": f"sum-{i}", "question": f"What is {3 * i + 1} + {7 * i + 2}?",
             "answer": str(10 * i + 3), "level": 1 + i % 5} for i in range(n)]


def write_tokenizer(path: Path) -> int:
    """A byte-level BPE of about 300 tokens with the e2h specials and "\\n\\n" as one token;
    returns its vocabulary size."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\n+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    texts = [f"{p['question']}\n\n{p['question'][8:-1]} = {p['answer']}\n\nSo the sum is "
             f"{p['answer']}.\n\n# Answer\n\n{p['answer']}" for p in problems(200)]
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if len(tok.encode("a\n\nb").ids) != 3:
        raise ValueError(f"{path}: the trained tokenizer splits \"\\n\\n\"")
    tok.save(str(path))
    return tok.get_vocab_size()


def random_model(preset: str, vocab_size: int | None, dtype, device):
    """A preset Transformer with seeded random weights, built on the meta device and
    initialized in place (no float32 copy of a 7B model)."""
    import torch

    from e2h.model import ModelArgs, Transformer
    torch.manual_seed(0)
    overrides = {"vocab_size": vocab_size} if vocab_size else {}
    with torch.device("meta"):
        model = Transformer(ModelArgs.from_name(preset, **overrides))
    model = model.to(dtype).to_empty(device=device)
    model.init_weights()
    return model.eval()


def write_checkpoints(model, policy_dir: Path, rm_dir: Path, max_shard_bytes: int = 5 * 2**30):
    """``model`` as an HF policy and as an HF reward model on the same trunk, with a random
    score head (so that scores differ between samples). The trunk's shards are written once
    and hard-linked into the reward model's folder: 13 GB written for a 7B pair, not 27."""
    import torch
    from safetensors.torch import save_file

    from e2h.hf.hf_config import RM_ARCH, hf_config
    trunk = {"model." + n: p.detach() for n, p in model.named_parameters() if n != "lm_head.weight"}
    shards, size = [[]], 0
    for key, t in trunk.items():
        if shards[-1] and size + t.numel() * t.element_size() > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += t.numel() * t.element_size()
    names = [f"trunk-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for folder in (policy_dir, rm_dir):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    for name, keys in zip(names, shards):
        save_file({k: trunk[k].cpu().contiguous() for k in keys}, str(policy_dir / name),
                  metadata={"format": "pt"})
        os.link(policy_dir / name, rm_dir / name)
    w = model.lm_head.weight.detach()
    score = torch.randn(1, w.shape[1], generator=torch.Generator().manual_seed(0)) * 0.02
    heads = {policy_dir: {"lm_head.weight": w.cpu()},
             rm_dir: {"score.weight": score.to(w.dtype),                   # (1, C)
                      "score.bias": torch.zeros(1, dtype=w.dtype)}}
    for folder, head in heads.items():
        save_file(head, str(folder / "head.safetensors"), metadata={"format": "pt"})
        config = hf_config(model, w.dtype)
        if folder == rm_dir:
            config.update(architectures=[RM_ARCH], num_labels=1)
        weight_map = {k: name for name, keys in zip(names, shards) for k in keys}
        weight_map.update({k: "head.safetensors" for k in head})
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (folder / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"format": "pt"}, "weight_map": weight_map}, indent=2) + "\n")


def write_inputs(work: Path, preset: str) -> str:
    """Tokenizer, problems and a small random policy / reward model under work/inputs."""
    import torch
    inputs = work / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(inputs / "tokenizer.json")
    (inputs / "problems.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems(16)))
    model = random_model(preset, vocab, torch.float32, "cpu")
    write_checkpoints(model, inputs / "policy", inputs / "rm")
    return f"inputs: {vocab}-token tokenizer, {preset} policy and reward model"

# ----------------------------------------------------------------------------- evaluate


def scratch(work: Path) -> Path:
    """Where the 7B checkpoints go (13.5 GB): /dev/shm when it has room, so that a slow disk
    cannot eat the budget, else the work folder."""
    in_memory = SHM / f"e2h-gpu-{work.name}"
    if in_memory.exists() or (SHM.is_dir() and shutil.disk_usage(SHM).free > 20e9):
        return in_memory
    return work / "scratch"


def run_module_timed(module: str, argv: list[str], device) -> tuple[float, float]:
    """Run ``python -m module argv`` in this process: (wall seconds, seconds inside
    e2h.hf.checkpoint.load_model)."""
    import runpy

    import torch

    import e2h.hf.checkpoint as checkpoint
    plain, loading = checkpoint.load_model, [0.0]

    def timed_load(*args, **kwargs):
        t0 = time.perf_counter()
        model = plain(*args, **kwargs)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        loading[0] += time.perf_counter() - t0
        return model
    checkpoint.load_model = timed_load
    sys.argv = [module, *argv]
    t0 = time.perf_counter()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if e.code not in (0, None):
            raise RuntimeError(f"python -m {module} exited with {e.code}") from None
    finally:
        checkpoint.load_model = plain
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, loading[0]


def check_evaluate(ctx) -> dict:
    import torch
    inputs, out = ctx.work / "inputs", ctx.work / "evaluate"
    if ctx.dry:
        policy, rm, tokenizer = inputs / "policy", inputs / "rm", inputs / "tokenizer.json"
        n_problems, n, new, batch, rm_batch, dtype, written = 4, 4, 16, 2, 8, "float32", ""
    else:
        tokenizer = Path(ctx.tokenizer or (LLAMA2_TOKENIZER if LLAMA2_TOKENIZER.is_file()
                                           else inputs / "tokenizer.json"))
        n_problems, n, new, batch, rm_batch, dtype = 16, 16, 128, 8, 64, "bfloat16"
        where = scratch(ctx.work)
        policy, rm = where / "policy-7b", where / "rm-7b"
        t0 = time.perf_counter()
        model = random_model("llemma-7b", None, torch.bfloat16, ctx.device)
        write_checkpoints(model, policy, rm)
        del model
        torch.cuda.empty_cache()
        written = f"; 7B checkpoints written to {where} in {time.perf_counter() - t0:.0f} s"
    ctx.save({"ok": False, "summary": "checkpoints written" + written})
    argv = ["--policy", str(policy), "--rm", str(rm), "--data", str(inputs / "problems.jsonl"),
            "--tokenizer", str(tokenizer), "--out", str(out / "run"), "--limit", str(n_problems),
            "--n-samples", str(n), "--max-new-tokens", str(new), "--sample-batch-size", str(batch),
            "--rm-batch-size", str(rm_batch), "--no-greedy", "--device", str(ctx.device),
            "--dtype", dtype]
    try:
        seconds, loading = run_module_timed("e2h.evaluate", argv, ctx.device)
    finally:
        if not ctx.dry:
            shutil.rmtree(where, ignore_errors=True)
    samples = [json.loads(x) for x in (out / "run" / "samples.jsonl").read_text().splitlines()]
    scored = sum(bool(s.get("step_scores")) or s.get("outcome_score") is not None for s in samples)
    ok = len(samples) == n_problems * n and (out / "run" / "table.md").is_file()
    return {"ok": ok,
            "summary": f"{'7B-shaped' if not ctx.dry else 'tiny'} policy + reward model, "
                       f"{n_problems} problems x N {n}, <= {new} new tokens, tokenizer "
                       f"{tokenizer.parent.name}/{tokenizer.name}: {len(samples)} samples "
                       f"({scored} with a score position) in {seconds - loading:.1f} s = "
                       f"{len(samples) / (seconds - loading):.1f} samples/s; loading "
                       f"{loading:.1f} s{written}"}

# ----------------------------------------------------------------------------- ppo, dpo


def run_train(ctx, algo: str, flags: list[str]) -> list[dict]:
    """``python train.py --algo algo`` from setup's random checkpoints: its metrics records."""
    inputs, out = ctx.work / "inputs", ctx.work / algo
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, str(ROOT / "train.py"), "--algo", algo, "--out", str(out),
           "--policy", str(inputs / "policy"), "--reward-model", str(inputs / "rm"),
           "--tokenizer", str(inputs / "tokenizer.json"), "--eval-problems", "0",
           "--max-new-tokens", "48", "--sample-batch-size", "8", *flags]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          timeout=max(1.0, ctx.left() - 2))
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout + proc.stderr)
        raise RuntimeError(f"train.py --algo {algo} exited with {proc.returncode}: "
                           f"{lines[-1] if lines else ''}")
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def losses_report(records: list[dict], want: int) -> tuple[bool, str]:
    """Whether exactly ``want`` records carry a loss and every logged number is finite."""
    steps = [r for r in records if "loss" in r]
    numbers = [v for r in records for v in r.values() if isinstance(v, float)]
    ok = len(steps) == want and all(map(math.isfinite, numbers))
    losses = ", ".join(f"{r['loss']:.4g}" for r in steps)
    return ok, (f"{len(steps)} steps, losses {losses}; {len(numbers)} logged numbers, all "
                f"finite: {all(map(math.isfinite, numbers))}")


def check_ppo(ctx) -> dict:
    records = run_train(ctx, "ppo", ["--ppo-steps", "2", "--rollouts", "8", "--batch-size", "8",
                                     "--n-problems", "4", "--eval-every", "0"])
    ok, report = losses_report(records, 2)
    rewards = ", ".join(f"{r['objective/rlhf_reward']:.3g}" for r in records
                       if "objective/rlhf_reward" in r)
    return {"ok": ok, "summary": f"train.py --algo ppo: {report}; rewards {rewards}"}


def check_dpo(ctx) -> dict:
    records = run_train(ctx, "dpo", ["--iterations", "1", "--max-steps", "1", "--n-problems", "4",
                                     "--n-samples", "8", "--batch-size", "4", "--pair-gap", "0",
                                     "--hard-gap", "0"])
    ok, report = losses_report(records, 1)
    return {"ok": ok, "summary": f"train.py --algo dpo: {report}"}
