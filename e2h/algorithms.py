"""One driver per algorithm of train.py: which models it builds, what data it trains on, which
phases it runs (PAPER.md "Generators", "Reward models", "RL"). The objectives themselves live in
sft.py, rm.py, dpo.py, rest.py and ppo.py; the loop in loop.py.

- sft: the supervised loop on SFT examples (easy levels).
- orm / prm / oprm: sample solutions of easy problems from the policy when the data needs it
  (ORM labels by final answer; on the synthetic curriculum PRM labels come from the program
  checker, the stand-in for PRM800K's human raters), then the loop on a zero-initialized
  reward head over the base model's trunk (the policy's when no --model is given).
- dpo / rest: iterations of (sample -> build data -> one phase of the loop). An iteration's data
  is saved in <out>/data/ before its first step, so a resumed run trains on the same examples.
- ppo: rollout then update, one PPO step at a time; greedy validation keeps the best model.

Each returns a dict of closing numbers for train.py's summary line.
"""
from __future__ import annotations

import json
import math
import random
import time
from functools import partial

import torch
from tqdm import tqdm

from data import synthetic
from e2h import distributed as dist
from e2h import dpo, ppo, rest, rm, sft, stages, trainstate
from e2h.evaluate import accuracy_by_split, sample_solutions
from e2h.loop import NonFiniteLoss, batch_indices, lr_at, make_optimizer, prepare, train_phase
from e2h.sharded import load_into


def cached_records(run, name: str, build) -> list:
    """<out>/data/<name>: reused when resuming (same examples), else built (on every rank:
    sampling is collective) and written by rank 0."""
    path = run.out / "data" / name
    if run.args.resume and path.is_file():
        return [json.loads(line) for line in path.read_text().splitlines()]
    records = build()
    if dist.is_main():
        from data.readers import write_jsonl
        write_jsonl(path, records)
    return records


def load(run, path, trainable=True, pretrained=True):
    return prepare(run, stages.load_or_init(path, run.args, run.tok), trainable, pretrained)


def sample(run, policy, problems, n, key, temperature=None, top_k=None):
    """``n`` graded sample records per problem, each rank sampling its share (one gather)."""
    args = run.args
    temperature = args.temperature if temperature is None else temperature
    top_k = args.top_k if top_k is None else top_k

    def draw(mine):
        gen = stages.generator_for(args.seed, key, device=run.device)
        with run.autocast():
            return sample_solutions(policy, run.tok, mine, n=n, temperature=temperature,
                                    top_k=top_k or None, max_new_tokens=args.max_new_tokens,
                                    generator=gen, batch_size=args.sample_batch_size), {}
    return stages.on_every_rank(draw, problems, policy)[0]


def evaluate_policy(run, policy, split="test") -> dict:
    """Greedy accuracy (%) by split on synthetic problems of every level (0 problems: skipped)."""
    args = run.args
    if not args.eval_problems or args.hparams != "embedded":
        return {}
    problems = stages.synthetic_problems(args.eval_problems, None, args.seed, split)
    samples = sample(run, policy, problems, 1, "eval", temperature=0.0)
    acc = accuracy_by_split(samples)
    return {f"{split}_{k}_acc": v for k, v in acc.items()}


def finish(run, model, extra=None) -> dict:
    trainstate.export_model(model, run.out / "model", run.tok_path)
    summary = {"loss": run.last["loss"]} if run.last else {}
    summary.update(extra or {})
    if summary:
        run.log({"step": run.step, **{f"final/{k}": v for k, v in summary.items()}})
    return summary

# ----------------------------------------------------------------------------- sft


def max_len(run, model) -> int:
    """--max-len, cut to the positions the model has."""
    trunk = model.trunk if isinstance(model, rm.RewardModel) else model
    return min(run.args.max_len, trunk.args.max_seq_len)


def train_sft(run) -> dict:
    args, tok = run.args, run.tok
    model = load(run, args.model, pretrained=args.model is not None)
    records = stages.sft_records(args)
    examples = stages.encode_all(lambda r: stages.encode_sft(tok, r, max_len(run, model)),
                                 records, "SFT")
    opt = make_optimizer(model, args)
    run.restore(model, [opt])
    train_phase(run, model, opt, examples, partial(sft.sft_batch, pad_id=tok.pad_id), sft.loss_fn)
    return finish(run, model, {"examples": len(examples), **evaluate_policy(run, model)})

# ----------------------------------------------------------------------------- reward models


def rm_records(run) -> list[dict]:
    """ORM / PRM / OPRM records: --data's RM rows and/or labelled samples from the policy."""
    args = run.args
    synthetic_data = args.hparams == "embedded" and not args.data
    given = [] if synthetic_data else stages.read_data(args.data, args.math_problems)["rm"]
    given = [r for r in given if stages.keep_level(r, stages.parse_levels(args.levels))]
    if not stages.rm_samples_policy(args):
        return given
    problems = stages.problems(args)
    if args.samples:
        samples = read_samples(args.samples, problems)
    else:
        def draw():
            return sample(run, load(run, args.policy, trainable=False), problems, args.n_samples,
                          "rm-data")
        samples = cached_records(run, "samples.jsonl", draw)   # what --samples reads
    records = []
    if args.algo in ("prm", "oprm"):
        # program-checked steps on the synthetic curriculum; rated steps from --data otherwise
        records += rm.prm_examples(samples, problems, synthetic.label_solution) \
            if synthetic_data else given
    if args.algo in ("orm", "oprm"):
        orm = rm.orm_examples(samples, random.Random(args.seed))
        if not orm and args.algo == "orm":
            raise ValueError(f"no ORM examples: no problem had both a correct and a wrong "
                             f"one among its {args.n_samples} samples ({len(samples)} samples, "
                             f"{sum(bool(s['correct']) for s in samples)} correct)")
        records += orm
    return records


def read_samples(path, problems: list[dict]) -> list[dict]:
    """Graded samples written by another RM run (its <out>/data/samples.jsonl), checked to
    belong to this run's problems: ORM, PRM and OPRM can label the very same solutions."""
    from data.readers import numbered_rows
    ids = {p["id"] for p in problems}
    samples = []
    for lineno, s in numbered_rows(path, ("id", "question", "completion", "answer", "correct")):
        if s["id"] not in ids:
            raise ValueError(f"{path}:{lineno}: --samples id {s['id']!r} is not among this run's "
                             f"{len(problems)} problems (use the --seed, --levels and "
                             f"--n-problems of the run that wrote it)")
        samples.append(s)
    return samples


def encode_rm(tok, record, max_len):
    tokens, labels, weights = rm.encode_rm(tok, record)
    tokens, labels, weights = tokens[:max_len], labels[:max_len], weights[:max_len]
    return (tokens, labels, weights) if sum(weights) else None


def evaluate_rm(run, model) -> dict:
    """Step / outcome ROC-AUC on held-out synthetic solutions, easy and hard problems apart."""
    args = run.args
    if not args.eval_problems or args.hparams != "embedded" or args.data:
        return {}
    policy = load(run, args.policy, trainable=False)
    problems = stages.synthetic_problems(args.eval_problems, None, args.seed, "validation")
    samples = sample(run, policy, problems, 1, "rm-eval")
    records = rm.prm_examples(samples, problems, synthetic.label_solution)
    out = {}
    with dist.gathered(model):
        for split, levels in (("easy", (1, 2, 3)), ("hard", (4, 5))):
            held_out = [r for r in records if r["level"] in levels]
            auc = rm.step_and_outcome_auc(model, run.tok, held_out)
            out[f"{split}_step_auc"] = auc["step_auc"]
            out[f"{split}_outcome_auc"] = auc["outcome_auc"]
    return out


def train_rm(run) -> dict:
    args, tok = run.args, run.tok
    records = cached_records(run, "rm_train.jsonl", lambda: rm_records(run))
    base = args.model or args.policy
    trunk = stages.load_or_init(base, args, tok)
    model = trunk if isinstance(trunk, rm.RewardModel) else rm.RewardModel(trunk)
    model = prepare(run, model, pretrained=base is not None)
    examples = stages.encode_all(lambda r: encode_rm(tok, r, max_len(run, model)), records,
                                 args.algo.upper())
    opt = make_optimizer(model, args)
    run.restore(model, [opt])
    train_phase(run, model, opt, examples, partial(rm.rm_batch, pad_id=tok.pad_id), rm.loss_fn)
    return finish(run, model, {"examples": len(examples), **evaluate_rm(run, model)})

# ----------------------------------------------------------------------------- dpo, rest


def iteration_data(run, it: int, build, problems, *models) -> list:
    """The examples of DPO / ReST-EM iteration ``it``: ``build(my_problems) -> (examples,
    metrics)`` on every rank's share, saved before training (reused on resume); the
    sampling metrics are printed and logged."""
    def built():
        with run.autocast():
            examples, metrics = stages.on_every_rank(build, problems, *models)
        run.log({"step": run.step, "iteration": it, **{f"data/{k}": v for k, v in metrics.items()}})
        say(f"{run.args.algo} iteration {it}: {len(examples)} examples; "
            + ", ".join(f"{k} {v:.3g}" for k, v in metrics.items()))
        return examples
    return cached_records(run, f"{run.args.algo}_iteration{it}.jsonl", built)


def say(text: str):
    if dist.is_main():
        print(text, flush=True)


def train_dpo(run) -> dict:
    args, tok = run.args, run.tok
    policy = load(run, args.policy)
    evaluator = load(run, args.reward_model, trainable=False)
    opt = make_optimizer(policy, args)
    run.restore(policy, [opt])
    problems = stages.problems(args)
    for it in range(args.iterations):
        start = run.phase_start(it)
        if start is None:
            continue

        def build(mine):   # the reference log-probs are the policy's as the iteration starts
            return dpo.dpo_iteration_data(
                policy, evaluator, tok, mine, stages.rng_for(args.seed, "dpo", it),
                n=args.n_samples, temperature=args.temperature, top_k=args.top_k or None,
                max_new_tokens=args.max_new_tokens, gap=args.pair_gap, max_pairs=args.max_pairs,
                hard_gap=args.hard_gap, answer_levels=stages.parse_levels(args.answer_levels),
                generator=stages.generator_for(args.seed, "dpo", it, device=run.device),
                batch_size=args.sample_batch_size)
        examples = iteration_data(run, it, build, problems, policy, evaluator)
        if not examples:
            raise ValueError(f"dpo iteration {it}: no preference pairs (no problem had two samples "
                             f"whose scores differ by more than --pair-gap {args.pair_gap}); a "
                             "policy that is never right needs more SFT or a smaller gap")
        opt = opt if start > 0 else make_optimizer(policy, args)
        train_phase(run, policy, opt, examples, partial(dpo.collate_pairs, pad_id=tok.pad_id),
                    partial(dpo.loss_fn, beta=args.beta), iteration=it)
    return finish(run, policy, evaluate_policy(run, policy))


def train_rest(run) -> dict:
    args, tok = run.args, run.tok
    policy = load(run, args.policy)
    scored = args.hard_threshold is not None   # the evaluator stands in for hard answers
    evaluator = load(run, args.reward_model, trainable=False) if scored else None
    opt = make_optimizer(policy, args)
    run.restore(policy, [opt])
    problems = stages.problems(args)
    for it in range(args.iterations):
        start = run.phase_start(it)
        if start is None:
            continue

        def build(mine):   # E-step: sample from the latest policy
            return rest.rest_iteration_data(
                policy, tok, mine, stages.rng_for(args.seed, "rest", it), n=args.n_samples,
                temperature=args.temperature, top_k=args.top_k or None,
                max_new_tokens=args.max_new_tokens, max_per_problem=args.max_per_problem,
                rm=evaluator, hard_threshold=args.hard_threshold,
                answer_levels=stages.parse_levels(args.answer_levels),
                generator=stages.generator_for(args.seed, "rest", it, device=run.device),
                batch_size=args.sample_batch_size)
        records = iteration_data(run, it, build, problems, policy, *([evaluator] if scored else []))
        examples = stages.encode_all(lambda r: stages.encode_sft(tok, r, max_len(run, policy)),
                                     records, f"ReST-EM iteration {it} (no sample was kept)")
        if start == 0 and it > 0 and rest.RESTART_FROM_BASE:   # M-step from the SFT model
            load_into(policy, stages.load_or_init(args.policy, args, tok))
        opt = opt if start > 0 else make_optimizer(policy, args)
        train_phase(run, policy, opt, examples, partial(sft.sft_batch, pad_id=tok.pad_id),
                    sft.loss_fn, iteration=it)
    return finish(run, policy, evaluate_policy(run, policy))

# ----------------------------------------------------------------------------- ppo


def ppo_step(run, k: int, steps: int, policy, reference, value, reward, opts, problems) -> dict:
    """PPO step k: one rollout per problem of this rank's share of the step's problems, then
    ``ppo_update``; returns the metrics line (means over ranks)."""
    args, W, t0 = run.args, dist.world_size(), time.time()
    lr = lr_at(k, steps, args)
    for opt in opts:
        for group in opt.param_groups:
            group["lr"] = lr
    mine = [problems[i] for i in batch_indices(len(problems), k, args.rollouts, args.seed)]
    with run.autocast():
        batch, metrics = ppo.rollout(
            policy, reference, value, reward, run.tok, mine[dist.rank()::W],
            temperature=args.temperature, top_k=args.top_k or None,
            max_new_tokens=args.max_new_tokens, kl_coef=args.kl_coef,
            process_reward=reward is not None,
            answer_levels=stages.parse_levels(args.answer_levels),
            batch_size=args.sample_batch_size,
            generator=stages.generator_for(args.seed, "ppo", k, device=run.device))
        metrics |= ppo.ppo_update(
            policy, value, *opts, batch, minibatch_size=args.batch_size // W,
            microbatch_size=min(args.micro_batch_size, args.batch_size // W),
            epochs=max(1, int(args.epochs)), clip=args.clip, value_clip=args.value_clip,
            vf_coef=args.vf_coef, max_grad_norm=args.grad_clip, temperature=args.temperature,
            generator=stages.generator_for(args.seed, "ppo-minibatches", k))
    metrics = dist.all_reduce_mean(metrics)
    loss = metrics["loss/policy"] + args.vf_coef * metrics["loss/value"]
    if not all(map(math.isfinite, (loss, metrics["objective/reward"]))):
        raise NonFiniteLoss(f"PPO loss {loss} at step {run.step + 1}; stopped. Last good "
                            f"checkpoint: {trainstate.latest(run.out) or 'none'}")
    tokens = dist.all_reduce_sum({"tokens": batch["tokens"].numel()})["tokens"]
    return {"step": run.step + 1, "loss": loss, "lr": lr, "grad_norm": metrics["policy/grad_norm"],
            "tokens": int(tokens), "tokens_per_s": tokens / (time.time() - t0), **metrics}


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
    opts = [make_optimizer(policy, args), make_optimizer(value, args)]
    run.restore(both, opts)
    problems = stages.problems(args)
    steps = min(args.ppo_steps, args.max_steps) if args.max_steps else args.ppo_steps
    start = run.phase_start(0)
    start = steps if start is None else start
    best = (run.resume or {}).get("best")
    bar = tqdm(total=steps, initial=start, disable=not dist.is_main(), dynamic_ncols=True,
               desc="ppo")
    for k in range(start, steps):
        record = ppo_step(run, k, steps, policy, reference, value, reward, opts, problems)
        run.step += 1
        if args.eval_every and (run.step % args.eval_every == 0 or k + 1 == steps):
            acc = evaluate_policy(run, policy, "validation")   # greedy, held-out problems
            record.update({f"eval/{key}": v for key, v in acc.items()})
            if acc and (best is None or acc["validation_all_acc"] > best):
                best = acc["validation_all_acc"]
                trainstate.export_model(policy, run.out / "best", run.tok_path)
        run.log(record)
        bar.set_postfix(loss=f"{record['loss']:.4f}", reward=f"{record['objective/reward']:.3f}",
                        tok_s=f"{record['tokens_per_s']:.0f}")
        bar.update()
        if k + 1 == steps or (args.save_every and run.step % args.save_every == 0) or \
                run.step == args.stop_after:
            meta = {"iteration": 0, "phase_step": k + 1, "phase_steps": steps, "best": best}
            run.save(both, opts, meta, export=policy)
    bar.close()
    return finish(run, policy, {"best_validation_acc": best, **evaluate_policy(run, policy)})


TRAIN = {"sft": train_sft, "orm": train_rm, "prm": train_rm, "oprm": train_rm, "dpo": train_dpo,
         "rest": train_rest, "ppo": train_ppo}
