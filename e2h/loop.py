"""The step bookkeeping every trainer shares, and the supervised step.

sft, orm / prm / oprm, and each DPO or ReST-EM iteration are one *phase*: optimizer steps over a
fixed list of examples with a ``loss_fn(model, batch) -> (loss, metrics)``. The batch order is
a stream of seeded permutations, one per epoch, and the position in it is the step number, so
a resumed run sees exactly the batches an uninterrupted one would. Each global batch is split
into micro-batches, micro-batch j running on rank j % W; gradients are accumulated, AdamW
steps once per global batch with a warmup + cosine learning rate (a function of the step: no
scheduler state) after clipping the global gradient norm.

PPO's steps (a rollout batch and its updates) run through the same ``run_steps``: learning
rate, the non-finite stop, the metrics line, the progress bar and the save cadence live only
here. What a non-finite step stops and sets aside, and what a resume skips: docs/runs.md,
"Failures".
"""
from __future__ import annotations

import math
import time
from collections import defaultdict

import torch
from tqdm import tqdm

from e2h.infra import distributed as dist
from e2h.infra import preemption, trainstate
from e2h.infra.errors import NonFiniteLoss


def lr_at(step: int, steps: int, args) -> float:
    """Linear warmup over warmup_ratio of the steps, then cosine decay to min_lr_ratio * lr."""
    warmup = int(args.warmup_ratio * steps)
    if step < warmup:
        return args.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * cosine)


def set_lr(optimizers, lr: float):
    """Every parameter group's lr for this step: ``lr`` times its optimizer's ``lr_scale``
    (default 1; e2h.run.make_optimizer sets it for a model trained at another rate than --lr)."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr * getattr(opt, "lr_scale", 1.0)


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


def stop_non_finite(run, what: str):
    """Raise NonFiniteLoss for step run.step + 1: ``what`` was not finite. The weights it ran
    on are those after step run.step; a checkpoint of them is set aside (it is not good)."""
    bad = trainstate.checkpoint_dir(run.out, run.step)
    aside = f"; checkpoint {bad.name}, which holds the weights that gave it, is set aside as " \
            f"{trainstate.set_aside(bad, 'nonfinite').name}" if bad.is_dir() else ""
    good = trainstate.latest(run.out)
    raise NonFiniteLoss(
        f"{what} at step {run.step + 1}; stopped before updating or saving{aside}. Last good "
        f"checkpoint: {good or 'none'}" + ("; resuming with the flags that gave this repeats "
        "it: lower --lr (with --allow-changed-flags)" if good else ""))


def run_steps(run, steps: int, start: int, optimizers, step, save, *, iteration: int = 0,
              desc: str = "", evaluate=None, lr_key: str = "learning_rate"):
    """Steps ``start`` .. ``steps - 1`` of one phase.

    ``step(k) -> record`` does the work of step k (its "loss" and "tokens" are read here; a
    step whose "loss" or "grad_norm" is not finite must not have updated the weights);
    ``evaluate(k) -> dict`` (optional) adds validation numbers after it; ``save(k)`` writes a
    checkpoint at the end of the phase, every --save-every steps and at --stop-after.
    ``lr_key`` names the learning rate in the metrics line: TRL's Trainer-based trainers log
    "learning_rate", its PPO trainer "lr".
    A stop signal (e2h/infra/preemption.py) waits for the end of the step it arrives in; there every
    rank learns whether any was signalled, the run saves (unless it just did) and raises
    ``Preempted``.
    """
    args = run.args
    params = [p for opt in optimizers for group in opt.param_groups for p in group["params"]]

    def checked_save(k: int):
        if not dist.all_finite(params):
            raise NonFiniteLoss(f"the weights are not finite after step {run.step}; not "
                                f"saved. Last good checkpoint: "
                                f"{trainstate.latest(run.out) or 'none'}")
        save(k)

    with tqdm(total=steps, initial=start, disable=not dist.is_main(), dynamic_ncols=True,
              desc=desc) as bar, preemption.deferred():   # bar closed however the loop ends
        for k in range(start, steps):
            t0, lr = time.time(), lr_at(k, steps, args)
            set_lr(optimizers, lr)
            try:
                record = step(k)
            except NonFiniteLoss as e:
                stop_non_finite(run, str(e))
            bad = [f"{key} is {record[key]}" for key in ("loss", "grad_norm")
                   if key in record and not math.isfinite(record[key])]
            if bad:
                stop_non_finite(run, " and ".join(bad))
            run.step += 1
            record = {"step": run.step, "iteration": iteration, **record, lr_key: lr,
                      "tokens_per_s": record["tokens"] / (time.time() - t0)}
            if evaluate is not None:
                record.update(evaluate(k))
            run.log(record)
            shown = {"loss": f"{record['loss']:.4f}"}
            if "objective/rlhf_reward" in record:
                shown["reward"] = f"{record['objective/rlhf_reward']:.3f}"
            elif "reward" in record:   # GRPO, TRL's name
                shown["reward"] = f"{record['reward']:.3f}"
            bar.set_postfix(**shown, tok_s=f"{record['tokens_per_s']:.0f}")
            bar.update()
            saving = k + 1 == steps or (args.save_every and run.step % args.save_every == 0) \
                or run.step == args.stop_after
            if saving:
                checked_save(k)
            signum = dist.max_over_ranks(preemption.requested() or 0)   # every rank, every step
            if signum:
                if not saving:
                    checked_save(k)
                raise preemption.Preempted(signum)

# ----------------------------------------------------------------------------- the supervised step


def accumulate(run, model, examples: list, rows_per_micro: list[list[int]], collate,
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


def train_phase(run, model, opt, examples: list, collate, loss_fn, iteration: int = 0,
                evaluate=None):
    """The optimizer steps of one phase over ``examples``, from where a resumed run left it
    (``evaluate``: as in ``run_steps``).

    Gradients of the weighted micro-batch losses are divided by the global weight, so a step
    optimizes the mean over the whole global batch whatever the numbers of ranks and
    micro-batches: two ranks and one give the same losses."""
    args, W = run.args, dist.world_size()
    steps, start = phase_steps(len(examples), args), run.phase_start(iteration)
    if start is None:
        return
    params = [p for p in model.parameters() if p.requires_grad]

    def step(k: int) -> dict:
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
        if math.isfinite(record["loss"]) and math.isfinite(grad_norm):   # else run_steps stops
            opt.step()
        opt.zero_grad(set_to_none=True)
        return {**record, "grad_norm": grad_norm, "tokens": int(tokens)}

    def save(k: int):
        run.save(model, [opt], {"iteration": iteration, "phase_step": k + 1, "phase_steps": steps})

    multi = args.algo in ("dpo", "rest")
    run_steps(run, steps, start, [opt], step, save, iteration=iteration,
              desc=args.algo + (f" iteration {iteration}" if multi else ""), evaluate=evaluate)
