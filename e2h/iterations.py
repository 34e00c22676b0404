"""The loop DPO and ReST-EM share: K iterations of (sample from the current policy -> build
that iteration's data -> one phase of the training loop -> greedy validation), the best policy
kept by validation (docs/paper.md "RL": iterative DPO, ReST-EM). What an iteration builds and
trains on is the algorithm's own (``dpo.iteration``, ``rest.iteration``); this file is the
bookkeeping around it:

- an iteration's data is sampled on every rank's share of the problems and saved in
  <out>/data/ before its first step, so a resumed run trains on the same examples;
- each iteration begun from its first step gets a fresh optimizer (so its warmup matters: the
  first bias-corrected AdamW steps move every weight by about the learning rate);
- the reference of iteration k is the policy as k starts (the algorithms cache it then).
"""
from __future__ import annotations

from data import sources
from e2h.infra import distributed as dist
from e2h.loop import train_phase
from e2h.run import cached_records, generator_for, make_optimizer, on_every_rank
from e2h.validate import Best, accuracy, closing, starting_point


def iteration_data(run, it: int, build, problems_, *models) -> list:
    """The examples of DPO / ReST-EM iteration ``it``: ``build(my_problems) -> (examples,
    metrics)`` on every rank's share, saved before training (reused on resume); the
    sampling metrics are printed and logged."""
    def built():
        with run.autocast():
            examples, metrics = on_every_rank(build, problems_, *models)
        run.log({"step": run.step, "iteration": it, **{f"data/{k}": v for k, v in metrics.items()}})
        dist.say(f"{run.args.algo} iteration {it}: {len(examples)} examples; "
                 + ", ".join(f"{k} {v:.3g}" for k, v in metrics.items()))
        return examples
    return cached_records(run, f"{run.args.algo}_iteration{it}.jsonl", built)


def sampling(args, key: str, it: int, device) -> dict:
    """The sampling settings of one DPO / ReST-EM iteration, as keyword arguments."""
    return dict(n=args.n_samples, temperature=args.temperature, top_k=args.top_k or None,
                max_new_tokens=args.max_new_tokens, batch_size=args.sample_batch_size,
                answer_levels=sources.parse_levels(args.answer_levels),
                generator=generator_for(args.seed, key, it, device=device))


def validate(run, policy, best: Best, it: int):
    """Greedy validation after iteration ``it``; the best policy so far is kept in <out>/best."""
    acc = accuracy(run, policy, "validation")
    if acc:
        run.log({"step": run.step, "iteration": it, **{f"eval/{k}": v for k, v in acc.items()}})
    best.offer(policy, acc, {"iteration": it + 1, "step": run.step})


def iterate(run, policy, iteration) -> dict:
    """The loop DPO and ReST-EM share. For each iteration not finished yet,
    ``iteration(it, start, train_epoch)`` (``dpo.iteration`` / ``rest.iteration`` bound to this
    run) builds that iteration's data and trains on it through ``train_epoch(examples,
    collate, loss_fn)``: one phase of the loop, with a fresh optimizer for an iteration begun
    from its first step. Greedy validation after each iteration keeps the best policy."""
    args = run.args
    opt = make_optimizer(policy, args)
    run.restore(policy, [opt])
    before, best = starting_point(run, policy)
    for it in range(args.iterations):
        start = run.phase_start(it)
        if start is None:
            continue

        def train_epoch(examples, collate, loss_fn):
            nonlocal opt
            opt = opt if start > 0 else make_optimizer(policy, args)
            train_phase(run, policy, opt, examples, collate, loss_fn, iteration=it)
        iteration(it, start, train_epoch)
        validate(run, policy, best, it)
    return closing(run, policy, best, before)
