"""The training loop every supervised algorithm shares, and what a run carries between phases.

sft, orm / prm / oprm, and each DPO or ReST-EM iteration are one *phase*: optimizer steps over a
fixed list of examples with a ``loss_fn(model, batch) -> (loss, metrics)``. The batch order is
a stream of seeded permutations, one per epoch, and the position in it is the step number, so
a resumed run sees exactly the batches an uninterrupted one would. Each global batch is split
into micro-batches, micro-batch j running on rank j % W; gradients are accumulated, AdamW
steps once per global batch with a warmup + cosine learning rate (a function of the step: no
scheduler state) after clipping the global gradient norm.

A phase is identified by its iteration number; a checkpoint records (iteration, step within
the phase, steps in the phase), which is all a resumed run needs to skip finished phases.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from e2h import distributed as dist
from e2h import trainstate
from e2h.tokenizer import Tokenizer


class NonFiniteLoss(RuntimeError):
    pass


class Stopped(Exception):
    pass


@dataclass
class Run:
    """What every phase of one run shares."""
    args: argparse.Namespace
    out: Path
    device: torch.device
    tok: Tokenizer
    tok_path: Path
    resume: dict | None = None   # trainer.json of the checkpoint resumed from, and its "path"
    step: int = 0                # optimizer steps so far, over all phases
    last: dict | None = None     # the latest metrics line

    def resume_from(self, ckpt: Path):
        """Continue after checkpoint ``ckpt``: its step, and metrics.jsonl cut back to it."""
        self.resume = {**json.loads((ckpt / "trainer.json").read_text()), "path": ckpt}
        self.step = self.resume["step"]
        if dist.is_main():
            log = self.out / "metrics.jsonl"
            lines = log.read_text().splitlines() if log.exists() else []
            log.write_text("".join(x + "\n" for x in lines if json.loads(x)["step"] <= self.step))

    def autocast(self):
        # under FSDP the mixed-precision policy casts; a single process autocasts
        bf16 = self.compute_dtype() == torch.bfloat16 and not dist.is_distributed()
        return torch.autocast(self.device.type, torch.bfloat16) if bf16 else nullcontext()

    def compute_dtype(self):
        if self.args.dtype == "auto":
            return torch.bfloat16 if self.device.type == "cuda" else torch.float32
        return getattr(torch, self.args.dtype)

    def log(self, record: dict):
        self.last = record
        if dist.is_main():
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def phase_start(self, iteration: int) -> int | None:
        """Step within phase ``iteration`` to start from; None when the checkpoint is past it."""
        m = self.resume
        if m is None or m["iteration"] < iteration:
            return 0
        if m["iteration"] > iteration or m["phase_step"] >= m["phase_steps"]:
            return None
        return m["phase_step"]

    def restore(self, model, optimizers):
        """Load the checkpoint being resumed from, if any, into model and optimizers."""
        if self.resume is not None:
            trainstate.load(self.resume["path"], model, optimizers)

    def save(self, model, optimizers, meta: dict, export=None):
        path = trainstate.save(self.out, self.step, model, optimizers, meta, export=export,
                               tokenizer_path=self.tok_path, keep=self.args.keep)
        if self.args.stop_after and self.step >= self.args.stop_after:
            raise Stopped(f"stopped after {self.step} steps (--stop-after); checkpoint {path}; "
                          "continue with --resume")


def prepare(run: Run, model, trainable: bool = True, pretrained: bool = True):
    """Freeze as the paper does (embeddings, norms, LM head; not in a model trained from
    scratch), move to the device and shard (FSDP2 under torchrun); a checkpoint is read only
    now, each rank reading its shards. Frozen models are sharded too: PPO holds four models."""
    from e2h.sft import freeze_embeddings
    from e2h.sharded import place
    if not trainable:
        model.requires_grad_(False).eval()
    elif pretrained and not run.args.unfreeze_embeddings:
        freeze_embeddings(model)
    param_dtype = run.compute_dtype() if run.compute_dtype() != torch.float32 else None
    return place(model, run.device, param_dtype, run.args.activation_checkpointing)


def make_optimizer(model, args):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=args.lr, betas=tuple(args.betas),
                             weight_decay=args.weight_decay)


def lr_at(step: int, steps: int, args) -> float:
    """Linear warmup over warmup_ratio of the steps, then cosine decay to min_lr_ratio * lr."""
    warmup = int(args.warmup_ratio * steps)
    if step < warmup:
        return args.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * cosine)


def batch_indices(n: int, step: int, batch_size: int, seed: int) -> list[int]:
    """Examples of global batch ``step``: positions [step*B, (step+1)*B) of the stream
    perm_0 + perm_1 + ..., perm_e a seeded permutation of range(n) for epoch e. The position in
    the data is the step alone, so a resumed run sees exactly the batches it would have seen."""
    perms, out = {}, []
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, i = divmod(pos, n)
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        out.append(perms[epoch][i].item())
    return out


def phase_steps(n_examples: int, args) -> int:
    steps = max(1, math.ceil(args.epochs * n_examples / args.batch_size))
    return min(steps, args.max_steps) if args.max_steps else steps


def accumulate(run: Run, model, examples: list, rows_per_micro: list[list[int]], collate,
               loss_fn) -> dict[str, float]:
    """Forward and backward over this rank's micro-batches; sums over all ranks of "weight",
    "tokens" and every metric times its micro-batch weight. A micro-batch weighs its metric
    ``n_tokens`` (``n_pairs`` for DPO, else its size): the losses are token (pair) means."""
    sums = defaultdict(float)
    for rows in rows_per_micro:
        batch = {key: v.to(run.device) for key, v in collate([examples[i] for i in rows]).items()}
        with run.autocast():
            loss, metrics = loss_fn(model, batch)
        weight = metrics.pop("n_tokens", None)
        weight = float(metrics.pop("n_pairs", len(rows)) if weight is None else weight)
        (loss * weight).backward()
        sums["weight"] += weight
        sums["tokens"] += batch["tokens"].numel()
        for key, value in {"loss": loss.detach(), **metrics}.items():
            sums[key] += float(value) * weight
    return dist.all_reduce_sum(sums)


def train_phase(run: Run, model, opt, examples: list, collate, loss_fn, iteration: int = 0):
    """The optimizer steps of one phase over ``examples``, from where a resumed run left it.

    Gradients of the weighted micro-batch losses are divided by the global weight, so a step
    optimizes the mean over the whole global batch whatever the numbers of ranks and
    micro-batches: two ranks and one give the same losses."""
    args, W = run.args, dist.world_size()
    steps, start = phase_steps(len(examples), args), run.phase_start(iteration)
    if start is None:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    bar = tqdm(total=steps, initial=start, disable=not dist.is_main(), dynamic_ncols=True,
               desc=args.algo + (f" iteration {iteration}" if args.algo in ("dpo", "rest") else ""))
    for k in range(start, steps):
        t0, lr = time.time(), lr_at(k, steps, args)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = batch_indices(len(examples), k, args.batch_size, args.seed + 1000 * iteration)
        mb = args.micro_batch_size
        micro = [idx[i:i + mb] for i in range(0, len(idx), mb)]   # micro-batch j: rank j % W
        sums = accumulate(run, model, examples, micro[dist.rank()::W], collate, loss_fn)
        total, tokens = max(sums.pop("weight"), 1e-12), sums.pop("tokens")
        for p in params:   # FSDP averaged over ranks; rescale to the global weighted mean
            if p.grad is not None:
                p.grad.mul_(W / total)
        record = {key: v / total for key, v in sums.items()}
        grad_norm = dist.clip_grad_norm(params, args.grad_clip)
        if not (math.isfinite(record["loss"]) and math.isfinite(grad_norm)):
            raise NonFiniteLoss(f"loss is {record['loss']} (gradient norm {grad_norm}) at step "
                                f"{run.step + 1}; stopped without updating. Last good checkpoint: "
                                f"{trainstate.latest(run.out) or 'none'}")
        opt.step()
        opt.zero_grad(set_to_none=True)
        run.step += 1
        tokens_per_s = tokens / (time.time() - t0)
        run.log({"step": run.step, "iteration": iteration, **record, "lr": lr,
                 "grad_norm": grad_norm, "tokens": int(tokens), "tokens_per_s": tokens_per_s})
        bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{tokens_per_s:.0f}")
        bar.update()
        if k + 1 == steps or (args.save_every and run.step % args.save_every == 0) or \
                run.step == args.stop_after:
            meta = {"iteration": iteration, "phase_step": k + 1, "phase_steps": steps}
            run.save(model, [opt], meta)
    bar.close()
