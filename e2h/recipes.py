"""One recipe per algorithm of train.py: which models it builds, what data it trains on, which
phases it runs (docs/paper.md "Generators", "Reward models", "RL"). Wiring only: the objectives live
in sft.py, rm.py, dpo.py, rest.py, ppo.py and grpo.py, the step bookkeeping in loop.py.

- sft: the supervised loop on SFT examples (easy levels).
- orm / prm / oprm: e2h/rm_stage.py (labelled samples of the policy and/or --data's rows,
  then the loop on a reward head over the base model's trunk, the policy's without --model).
- dpo / rest: iterations of (sample -> build data -> one phase of the loop), each spelled out
  by dpo.iteration / rest.iteration and run by e2h/iterations.py's ``iterate``.
- ppo: ppo.ppo_step (rollout then update), one PPO step at a time; greedy validation keeps the
  best model.
- grpo: G completions per problem, group advantages, update (e2h/grpo.py), one step at a time;
  validated and kept like PPO.

Each returns a dict of closing numbers for train.py's summary line.
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial

import torch

from data import sources
from e2h.infra import distributed as dist
from e2h import dpo, grpo, ppo, rest, sft
from e2h.iterations import iterate, iteration_data, sampling
from e2h.loop import NonFiniteLoss, batch_indices, phase_steps, run_steps, train_phase
from e2h.defaults import needs_reward_model
from e2h.hf.sharded import load_into
from e2h.infra.distributed import shard_of
from e2h.rm_stage import train_rm
from e2h.run import (encode_all, finish, generator_for, load, load_or_init, make_optimizer,
                     max_len, rng_for)
from e2h.validate import Best, accuracy, closing, problems, starting_point, synthetic_data


# ----------------------------------------------------------------------------- sft


def train_sft(run) -> dict:
    args, tok = run.args, run.tok
    model = load(run, args.model, pretrained=args.model is not None)
    data = None if synthetic_data(args) else (args.data or [])
    records = sources.sft_records(data, args.math_problems, sources.parse_levels(args.levels),
                                  args.n_problems, args.seed)
    examples = encode_all(lambda r: sft.encode_sft(tok, r, max_len(run, model)), records, "SFT")
    opt = make_optimizer(model, args)
    run.restore(model, [opt])
    best = Best(run) if args.eval_every else None
    train_phase(run, model, opt, examples, partial(sft.sft_batch, pad_id=tok.pad_id), sft.loss_fn,
                evaluate=validation_every(run, model, best, phase_steps(len(examples), args)))
    if best is not None:   # trained to its best validation accuracy, not past it
        dist.say("sft: " + best.restore(model))
    acc = accuracy(run, model, save="final_test.jsonl")
    return finish(run, model, {"examples": len(examples), **acc})


def validation_every(run, model, best, steps: int):
    """``evaluate(k)`` for run_steps: greedy validation every --eval-every steps and after the
    last, the best model kept by ``best`` (None: no validation)."""
    def evaluate(k: int) -> dict:
        if best is None or (run.step % run.args.eval_every and k + 1 != steps):
            return {}
        acc = accuracy(run, model, "validation")
        best.offer(model, acc, {"step": run.step})
        return {f"eval/{key}": v for key, v in acc.items()}
    return evaluate

# ----------------------------------------------------------------------------- dpo, rest


def train_dpo(run) -> dict:
    args, tok = run.args, run.tok
    policy = load(run, args.policy)
    evaluator = load(run, args.reward_model, trainable=False)
    problems_ = problems(args)

    def sample_pairs(it: int) -> list[dict]:
        def build(mine):   # the reference log-probs are the policy's as the iteration starts
            return dpo.dpo_iteration_data(
                policy, evaluator, tok, mine, rng_for(args.seed, "dpo", it), gap=args.pair_gap,
                max_pairs=args.max_pairs, hard_gap=args.hard_gap, step_pairs=args.step_pairs,
                **sampling(args, "dpo", it, run.device))
        return iteration_data(run, it, build, problems_, policy, evaluator)

    def iteration(it: int, start: int, train_epoch):
        dpo.iteration(it, sample_pairs, train_epoch, beta=args.beta, rpo_alpha=args.rpo_alpha,
                      gap=args.pair_gap, pad_id=tok.pad_id)
    return iterate(run, policy, iteration)


def train_rest(run) -> dict:
    args, tok = run.args, run.tok
    policy = load(run, args.policy)
    # the evaluator stands in for hard answers, or checks the steps behind easy ones
    scored = needs_reward_model(args)
    evaluator = load(run, args.reward_model, trainable=False) if scored else None
    problems_ = problems(args)

    def sample_kept(it: int) -> list[dict]:
        def build(mine):   # E-step: sample from the latest policy
            return rest.rest_iteration_data(
                policy, tok, mine, rng_for(args.seed, "rest", it),
                max_per_problem=args.max_per_problem, rm=evaluator,
                hard_threshold=args.hard_threshold, easy_threshold=args.easy_threshold,
                **sampling(args, "rest", it, run.device))
        return iteration_data(run, it, build, problems_, policy, *([evaluator] if scored else []))

    def iteration(it: int, start: int, train_epoch):
        def encode(records):
            return encode_all(lambda r: sft.encode_sft(tok, r, max_len(run, policy)), records,
                              f"ReST-EM iteration {it} (no sample was kept)")

        def restart():   # M-step from the SFT model; a resumed iteration keeps its checkpoint
            if start == 0:
                load_into(policy, load_or_init(args.policy, args, tok))   # this rank's rows only
        rest.iteration(it, sample_kept, encode, restart, train_epoch, pad_id=tok.pad_id)
    return iterate(run, policy, iteration)

# ----------------------------------------------------------------------------- ppo


def ppo_shaping(args) -> ppo.Rewards:
    """PPO's reward constants from their flags (--u, --step-bonus, ..., --gamma, --lam)."""
    return ppo.Rewards(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ppo.Rewards)})


def train_ppo(run) -> dict:
    args, W = run.args, dist.world_size()
    if args.rollouts % args.batch_size or args.batch_size % W:
        raise ValueError(f"--rollouts {args.rollouts} must be a multiple of --batch-size "
                         f"{args.batch_size}, itself a multiple of the {W} ranks")
    policy = load(run, args.policy)
    reference = load(run, args.policy, trainable=False)
    value = load(run, args.reward_model)                 # the value model starts as the PRM
    reward = None if args.no_process_reward else load(run, args.reward_model, trainable=False)
    both = torch.nn.ModuleDict({"policy": policy, "value": value})
    opts = [make_optimizer(policy, args), make_optimizer(value, args, lr=args.value_lr)]
    run.restore(both, opts)
    problems_ = problems(args)
    steps = min(args.ppo_steps, args.max_steps) if args.max_steps else args.ppo_steps
    start = run.phase_start(0)
    start = steps if start is None else start
    before, best = starting_point(run, policy, validated=bool(args.eval_every))

    def step(k: int) -> dict:
        """One rollout per problem of this rank's share of step k's problems, then the update."""
        mine = [problems_[i] for i in batch_indices(len(problems_), k, args.rollouts, args.seed)]
        with run.autocast():
            batch, metrics = ppo.ppo_step(
                policy, reference, value, reward, *opts, run.tok, shard_of(mine),
                shaping=ppo_shaping(args), kl_coef=args.kl_coef,
                answer_levels=sources.parse_levels(args.answer_levels),
                temperature=args.temperature, top_k=args.top_k or None,
                max_new_tokens=args.max_new_tokens, sample_batch_size=args.sample_batch_size,
                minibatch_size=args.batch_size // W,
                microbatch_size=min(args.micro_batch_size, args.batch_size // W),
                epochs=max(1, int(args.epochs)), clip=args.clip, value_clip=args.value_clip,
                vf_coef=args.vf_coef, max_grad_norm=args.grad_clip,
                train_policy=k >= args.value_warmup_steps,
                generator=generator_for(args.seed, "ppo", k, device=run.device),
                minibatch_generator=generator_for(args.seed, "ppo-minibatches", k))
        metrics = dist.all_reduce_mean(metrics)
        loss = metrics["loss/policy_avg"] + args.vf_coef * metrics["loss/value_avg"]
        if not math.isfinite(metrics["objective/rlhf_reward"]):
            raise NonFiniteLoss(f"PPO reward is {metrics['objective/rlhf_reward']}")
        tokens = dist.all_reduce_sum({"tokens": batch["tokens"].numel()})["tokens"]
        return {"loss": loss, "grad_norm": metrics["policy/grad_norm"], "tokens": int(tokens),
                **metrics}

    def save(k: int):
        meta = {"iteration": 0, "phase_step": k + 1, "phase_steps": steps}
        run.save(both, opts, meta, export=policy)

    run_steps(run, steps, start, opts, step, save, desc="ppo", lr_key="lr",
              evaluate=validation_every(run, policy, best, steps))
    return closing(run, policy, best, before)


# ----------------------------------------------------------------------------- grpo


def train_grpo(run) -> dict:
    args, W = run.args, dist.world_size()
    G = args.group_size
    if G < 2:
        raise ValueError(f"--group-size {G}: GRPO needs at least 2 completions per problem "
                         "(a group of one is its own baseline: every advantage is 0)")
    if args.rollouts % (G * W) or args.rollouts % args.batch_size or args.batch_size % W:
        raise ValueError(f"--rollouts {args.rollouts} must be a multiple of --group-size {G} x "
                         f"{W} ranks and of --batch-size {args.batch_size}, itself a multiple "
                         f"of the {W} ranks")
    policy = load(run, args.policy)
    reference = load(run, args.policy, trainable=False)
    reward = None if args.no_process_reward else load(run, args.reward_model, trainable=False)
    opt = make_optimizer(policy, args)
    run.restore(policy, [opt])
    problems_ = problems(args)
    steps = min(args.grpo_steps, args.max_steps) if args.max_steps else args.grpo_steps
    start = run.phase_start(0)
    start = steps if start is None else start
    before, best = starting_point(run, policy)

    def step(k: int) -> dict:
        """G completions of each of this rank's share of step k's problems, then the update."""
        mine = [problems_[i] for i in batch_indices(len(problems_), k, args.rollouts // G,
                                                     args.seed)]
        with run.autocast():
            batch, metrics = grpo.sample_groups(
                policy, reference, reward, run.tok, shard_of(mine), group_size=G,
                temperature=args.temperature, top_k=args.top_k or None,
                max_new_tokens=args.max_new_tokens, batch_size=args.sample_batch_size,
                answer_levels=sources.parse_levels(args.answer_levels),
                scale_rewards=not args.no_scale_rewards, process=args.process_advantages,
                generator=generator_for(args.seed, "grpo", k, device=run.device))
            metrics |= grpo.grpo_update(
                policy, opt, batch, minibatch_size=args.batch_size // W,
                microbatch_size=min(args.micro_batch_size, args.batch_size // W),
                epochs=max(1, int(args.epochs)), clip=args.clip, beta=args.kl_coef,
                max_grad_norm=args.grad_clip,
                generator=generator_for(args.seed, "grpo-minibatches", k))
        metrics = dist.all_reduce_mean(metrics)
        if not math.isfinite(metrics["reward"]):
            raise NonFiniteLoss(f"GRPO reward is {metrics['reward']}")
        tokens = dist.all_reduce_sum({"tokens": batch["tokens"].numel()})["tokens"]
        return {**metrics, "tokens": int(tokens)}

    def save(k: int):
        run.save(policy, [opt], {"iteration": 0, "phase_step": k + 1, "phase_steps": steps},
                 export=policy)

    run_steps(run, steps, start, [opt], step, save, desc="grpo",
              evaluate=validation_every(run, policy, best if args.eval_every else None, steps))
    return closing(run, policy, best, before)


TRAIN = {"sft": train_sft, "orm": train_rm, "prm": train_rm, "oprm": train_rm, "dpo": train_dpo,
         "rest": train_rest, "ppo": train_ppo, "grpo": train_grpo}
