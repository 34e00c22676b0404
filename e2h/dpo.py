"""Iterative DPO against the easy-trained evaluator (docs/paper.md, "RL", DPO; Rafailov et al. 2023).

Loss on summed completion log-probs (Rafailov et al. 2023, Eq. 7):

    loss = -log sigmoid(beta * [(logps_w - ref_logps_w) - (logps_l - ref_logps_l)])

Pairs: per problem, N sampled solutions are scored by ``pair_score`` = PRM score in [0, 1]
(the min over step probabilities) + 1 if the final answer is correct, where the answer may be
used (easy problems). A pair (chosen, rejected) needs a score gap > ``gap`` (1.0: on an easy
problem a correct solution beats a wrong one only if its PRM score is also higher); at most
``max_pairs`` pairs per problem, drawn at random among the eligible ones.

Hard problems, where no answer may be used (the paper leaves this open), follow ``hard_gap``:
None (default) skips them, as the paper's DPO row that trains on easy problems only; a float
pairs them on the PRM score alone with that gap (the score then lies in [0, 1], so the gap
must be below 1).

NLL on the chosen side (``rpo_alpha``; Pang et al. 2024, "Iterative Reasoning Preference
Optimization"; TRL's ``rpo_alpha``): the loss adds alpha times the chosen solution's negative
log-likelihood per token. Plain DPO only asks the margin to grow and on math often lowers the
chosen solution's probability too; the NLL term keeps the correct solution likely.

    loss = DPO loss + alpha * (-logps_w / |y_w|)        (|y_w|: the chosen completion's tokens)

Iterations: sample -> pairs -> one epoch, K times (``iteration``); each iteration's reference is
the model it starts from. Reference log-probs are computed once per iteration, before any step, and carried
in the examples, so no reference model sits in memory while DPO trains.

Letters: B pairs, T tokens, V vocab.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from data.format import (EASY_LEVELS, STEP_SEP, format_prompt, format_solution, parse_solution,
                         tokenize_sft)
from e2h.infra.distributed import gathered
from e2h.sample import sample_solutions
from e2h.score import sample_score, score_samples
from e2h.sequences import collate, sequence_logps


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float):
    """Sigmoid DPO loss per pair (B,), inputs are summed log-probs (B,).

    Metrics (detached means over pairs): rewards/chosen = beta * (logps_w - ref_logps_w),
    rewards/rejected likewise, rewards/margins = their difference, rewards/accuracies = share
    of pairs with chosen reward > rejected reward; logps/chosen, logps/rejected the summed
    log-probs themselves (TRL's names). The loss only asks margins to grow: the
    chosen reward often falls too (both log-probs drop, the rejected one faster), which is not
    a bug.
    """
    chosen_rewards = beta * (chosen_logps.float() - ref_chosen_logps.float())
    rejected_rewards = beta * (rejected_logps.float() - ref_rejected_logps.float())
    margins = chosen_rewards - rejected_rewards
    losses = -F.logsigmoid(margins)                                   # Eq. 7, DPO
    with torch.no_grad():
        metrics = {"rewards/chosen": chosen_rewards.mean(),
                   "rewards/rejected": rejected_rewards.mean(),
                   "rewards/margins": margins.mean(),
                   "rewards/accuracies": (margins > 0).float().mean(),
                   "logps/chosen": chosen_logps.detach().float().mean(),
                   "logps/rejected": rejected_logps.detach().float().mean()}
    return losses, metrics

# ----------------------------------------------------------------------------- pairs


def pair_score(sample: dict, answer_known: bool) -> float:
    """PRM score (min step probability) + final-answer 1/0 when the answer may be used."""
    prm = sample_score(sample, "min")
    return prm + (float(bool(sample["correct"])) if answer_known else 0.0)


def by_problem(samples: list[dict], answer_levels) -> list[tuple[list[dict], bool]]:
    """(a problem's samples, whether its answer may be used) per problem ``id``, in input order;
    identical completions count once (the first is kept). The answer may be used when the
    problem's level is in ``answer_levels`` and its samples are graded."""
    groups: dict[str, dict[str, dict]] = {}
    for s in samples:
        groups.setdefault(s["id"], {}).setdefault(s["completion"].strip(), s)
    out = []
    for group in (list(g.values()) for g in groups.values()):
        known = group[0]["level"] in answer_levels and all(s.get("correct") is not None
                                                            for s in group)
        out.append((group, known))
    return out


def build_pairs(samples: list[dict], gap: float, max_pairs: int, rng, *,
                hard_gap: float | None = None, answer_levels=EASY_LEVELS) -> list[dict]:
    """Preference pairs from scored sample records, per problem as ``by_problem`` groups them.

    Pairs need a score difference strictly above the gap (ties never pair); ``rng`` (a
    ``random.Random``) draws ``max_pairs`` of the eligible ones. Returns {"id", "question",
    "level", "chosen", "rejected", "chosen_score", "rejected_score"}, problems in input order.
    """
    pairs = []
    for group, known in by_problem(samples, answer_levels):
        need = gap if known else hard_gap
        if need is None:
            continue
        scores = [pair_score(s, known) for s in group]
        eligible = [(w, l) for w in range(len(group)) for l in range(len(group))
                    if scores[w] - scores[l] > need]
        for w, l in rng.sample(eligible, min(max_pairs, len(eligible))):
            pairs.append({"id": group[w]["id"], "question": group[w]["question"],
                          "level": group[w]["level"], "chosen": group[w]["completion"],
                          "rejected": group[l]["completion"], "chosen_score": scores[w],
                          "rejected_score": scores[l]})
    return pairs


def pairable(samples: list[dict], gap: float, hard_gap: float | None,
             answer_levels=EASY_LEVELS) -> list[dict]:
    """The samples ``build_pairs`` could pair whatever the PRM says, the only ones worth
    scoring. A PRM score lies in [0, 1], so two scores differ by at most 1, plus 1 where the
    answer is known and one is right, the other wrong: at gap 1 an easy problem whose samples
    are all right or all wrong never pairs, nor does a hard one while ``hard_gap`` is None."""
    kept = []
    for group, known in by_problem(samples, answer_levels):
        need = gap if known else hard_gap
        answers = {bool(s["correct"]) for s in group} if known else {False}
        widest = 1.0 + (1.0 if answers == {True, False} else 0.0)
        if len(group) > 1 and need is not None and widest > need:
            kept += group
    return kept


def written_result(step: str) -> str:
    """What a step concludes: the text after its last "=" (the whole step when it has none)."""
    return step.rsplit("=", 1)[-1].strip()


def step_pair(pair: dict) -> dict:
    """``pair`` cut down to the step where its two solutions part (Step-DPO, Lai et al. 2024).

    Steps are compared by their written result, so two ways of writing one step (``23+0=23``
    and ``23-0=23``) are no difference: at the first step k whose results differ, the chosen
    solution's steps before k join the prompt ("prefix") and each side keeps only its own step
    k (no EOS: the solution goes on). Solutions whose steps never part keep their answer lines
    (with EOS). Why: a whole-solution pair also differs wherever the sampler wrote a free choice
    differently; the loss cannot tell those tokens from the decision and moves them all.
    """
    chosen, chosen_answer = parse_solution(pair["chosen"])
    rejected, rejected_answer = parse_solution(pair["rejected"])
    k = 0
    while k < min(len(chosen), len(rejected)) and \
            written_result(chosen[k]) == written_result(rejected[k]):
        k += 1
    prefix = format_solution(chosen[:k], None) + STEP_SEP if k else ""
    if k < len(chosen) and k < len(rejected):
        sides, eos = (chosen[k], rejected[k]), False
    else:
        sides = (format_solution(chosen[k:], chosen_answer),
                 format_solution(rejected[k:], rejected_answer))
        eos = True
    return {**pair, "prefix": prefix, "chosen": sides[0], "rejected": sides[1], "eos": eos}

# ----------------------------------------------------------------------------- training data


def encode_pair(tok, pair: dict) -> dict:
    """Tokens and loss masks of both sides of a pair (``data.format.tokenize_sft``); a step
    pair's "prefix" is part of the prompt, and its "eos" says whether the sides end there."""
    prompt = format_prompt(pair["question"]) + pair.get("prefix", "")
    eos = pair.get("eos", True)
    chosen_tokens, chosen_mask = tokenize_sft(tok, prompt, pair["chosen"], eos)
    rejected_tokens, rejected_mask = tokenize_sft(tok, prompt, pair["rejected"], eos)
    return {"chosen_tokens": chosen_tokens, "chosen_mask": chosen_mask,
            "rejected_tokens": rejected_tokens, "rejected_mask": rejected_mask}


def collate_pairs(examples: list[dict], pad_id: int) -> dict:
    """One batch, chosen rows first: "tokens", "loss_mask" (2B, T), "ref_logps" (2B,) if cached."""
    batch = {"tokens": collate([e["chosen_tokens"] for e in examples]
                               + [e["rejected_tokens"] for e in examples], pad_id),
             "loss_mask": collate([e["chosen_mask"] for e in examples]
                                  + [e["rejected_mask"] for e in examples], 0)}
    if "ref_chosen_logps" in examples[0]:
        batch["ref_logps"] = torch.tensor([e["ref_chosen_logps"] for e in examples]
                                          + [e["ref_rejected_logps"] for e in examples],
                                          dtype=torch.float32)
    return batch


@torch.no_grad()
def cache_ref_logps(model, examples: list[dict], pad_id: int, batch_size: int = 8) -> list[dict]:
    """Add "ref_chosen_logps" and "ref_rejected_logps" (floats) to each example, in place."""
    device = next(model.parameters()).device
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        batch = collate_pairs(chunk, pad_id)
        logps = sequence_logps(model, batch["tokens"].to(device), batch["loss_mask"].to(device))
        chosen, rejected = logps.float().cpu().chunk(2)                # (B,), (B,)
        for e, c, r in zip(chunk, chosen.tolist(), rejected.tolist()):
            e["ref_chosen_logps"], e["ref_rejected_logps"] = c, r
    return examples


def loss_fn(model, batch: dict, *, beta: float, rpo_alpha: float = 0.0):
    """Mean DPO loss (+ ``rpo_alpha`` x the chosen side's per-token NLL) over the pairs of a
    ``collate_pairs`` batch with cached reference log-probs.

    Metrics are detached; ``n_pairs`` lets a loop weigh accumulated micro-batches; "nll_loss"
    is the chosen side's mean per-token NLL whatever alpha.
    """
    chosen_logps, rejected_logps = sequence_logps(model, batch["tokens"],
                                                  batch["loss_mask"]).chunk(2)
    ref_chosen_logps, ref_rejected_logps = batch["ref_logps"].chunk(2)
    losses, metrics = dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps,
                               ref_rejected_logps, beta)
    chosen_tokens = batch["loss_mask"][:len(losses), 1:].sum(-1)    # what sequence_logps sums
    nll = -chosen_logps.float() / chosen_tokens                       # (B,) per token
    loss = (losses + rpo_alpha * nll).mean() if rpo_alpha else losses.mean()
    return loss, {"loss": loss.detach(), "n_pairs": torch.tensor(float(len(losses))),
                  "nll_loss": nll.detach().mean(), **metrics}


def dpo_iteration_data(policy, rm, tok, problems: list[dict], rng, *, n: int, temperature: float,
                       top_k: int | None, max_new_tokens: int, gap: float, max_pairs: int,
                       hard_gap: float | None, batch_size: int, answer_levels=EASY_LEVELS,
                       generator: torch.Generator | None = None, step_pairs: bool = False):
    """One iteration's training examples: sample n per problem from ``policy``, score those that
    could pair (``pairable``) with ``rm``, build pairs (cut to their first differing step with
    ``step_pairs``: ``step_pair``) and cache ``policy``'s log-probs as the reference (so call
    this before the iteration's first step). ``batch_size``: problems per sampling call, pairs
    per reference forward. Returns (examples for ``collate_pairs``, metrics); the number of
    examples differs between processes."""
    # full parameters for the whole stage: ranks run different numbers of forwards (tokens
    # per sample, pairs per rank) and a sharded model would wait on the others at each one
    with gathered(policy):
        samples = sample_solutions(policy, tok, problems, n=n, temperature=temperature,
                                   top_k=top_k, max_new_tokens=max_new_tokens,
                                   generator=generator, batch_size=batch_size)
        scored = score_samples(rm, tok, pairable(samples, gap, hard_gap, answer_levels))
        pairs = build_pairs(scored, gap, max_pairs, rng, hard_gap=hard_gap,
                            answer_levels=answer_levels)
        pairs = [step_pair(p) for p in pairs] if step_pairs else pairs
        examples = cache_ref_logps(policy, [encode_pair(tok, p) for p in pairs], tok.pad_id,
                                   batch_size)
    graded = [s["correct"] for s in samples if s.get("correct") is not None]
    metrics = {"dpo/pairs": len(pairs), "dpo/problems_paired": len({p["id"] for p in pairs}),
               "answer/accuracy": sum(graded) / max(len(graded), 1)}
    return examples, metrics


def iteration(it: int, sample_pairs, train_epoch, *, beta: float, rpo_alpha: float, gap: float,
              pad_id: int):
    """Iteration ``it`` of iterative DPO, as e2h/recipes.py's ``train_dpo`` runs it K times.

    1. sample -> pairs: ``sample_pairs(it)`` is ``dpo_iteration_data`` on the policy as the
       iteration starts (its log-probs become this iteration's reference), every rank on its
       share of the problems; the pairs are saved before training, so a resumed run reuses them.
    2. one epoch of the DPO loss on the pairs: ``train_epoch(pairs, collate, loss_fn)``.
    """
    pairs = sample_pairs(it)
    if not pairs:
        raise ValueError(f"dpo iteration {it}: no preference pairs (no problem had two samples "
                         f"whose scores differ by more than --pair-gap {gap}); a policy that is "
                         "never right needs more SFT or a smaller gap")
    train_epoch(pairs, partial(collate_pairs, pad_id=pad_id),
                partial(loss_fn, beta=beta, rpo_alpha=rpo_alpha))
