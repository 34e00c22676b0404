"""ReST-EM: fine-tuning on the generator's own correct solutions (docs/paper.md, "RL", ReST-EM;
Singh et al. 2023, "Beyond Human Data").

One iteration:
- E-step: sample n solutions per problem from the current policy (paper: 32, top-k 40, T 1.0);
  keep the final-answer-correct ones of problems whose answer may be used (easy levels),
  identical completions once, at most k per problem (paper: 10). As an option, solutions of
  hard problems whose PRM score (min step probability) reaches ``hard_threshold`` are kept
  too: the evaluator stands in for the missing answer; and with ``easy_threshold`` an easy
  solution needs that PRM score besides its right answer (on the synthetic curriculum a wrong
  walk lands on the right prime often: bench/README.md, the paper's regime).
- M-step: supervised fine-tuning on the kept solutions with the SFT loss (``e2h.sft``).
The paper runs 2 iterations (a 3rd degraded).

Restarting: the paper leaves open whether each M-step starts from the base SFT model or from
the previous iteration's model. The original ReST-EM restarts from the base, which keeps
errors of one iteration from compounding; that is the default here (``RESTART_FROM_BASE``,
applied in ``iteration``). Sampling always uses the latest model either way.
"""
from __future__ import annotations

from functools import partial

import torch

from data.format import EASY_LEVELS
from e2h.infra.distributed import gathered
from e2h.sample import sample_solutions
from e2h.score import sample_score, score_samples
from e2h.sft import loss_fn, sft_batch

RESTART_FROM_BASE = True


def filter_samples(samples: list[dict], max_per_problem: int, rng, *,
                   hard_threshold: float | None = None, easy_threshold: float | None = None,
                   answer_levels=EASY_LEVELS) -> list[dict]:
    """SFT records {"id", "question", "completion", "level"} from graded sample records.

    Kept: samples with ``correct`` True on problems whose level is in ``answer_levels`` (and,
    with ``easy_threshold``, a PRM score >= it); on other problems, only when
    ``hard_threshold`` is set, samples whose PRM score is >= it. PRM scores (min over steps)
    need "step_scores". Identical completions count once; a problem with more than
    ``max_per_problem`` keeps a random subset (``rng``: a ``random.Random``), in input order.
    """
    groups: dict[str, dict[str, dict]] = {}
    for s in samples:
        text = s["completion"].strip()
        if not text:
            continue
        if s["level"] in answer_levels:
            keep = s.get("correct") is True and (
                easy_threshold is None or sample_score(s, "min") >= easy_threshold)
        else:
            keep = hard_threshold is not None and sample_score(s, "min") >= hard_threshold
        if keep:
            groups.setdefault(s["id"], {}).setdefault(text, s)     # dedupe, first one kept
    records = []
    for group in groups.values():
        kept = list(group.values())
        if len(kept) > max_per_problem:
            picked = sorted(rng.sample(range(len(kept)), max_per_problem))
            kept = [kept[i] for i in picked]
        records += [{"id": s["id"], "question": s["question"], "completion": s["completion"],
                     "level": s["level"]} for s in kept]
    return records


def rest_iteration_data(policy, tok, problems: list[dict], rng, *, n: int, temperature: float,
                        top_k: int | None, max_new_tokens: int, max_per_problem: int,
                        hard_threshold: float | None, batch_size: int, rm=None,
                        easy_threshold: float | None = None, answer_levels=EASY_LEVELS,
                        generator: torch.Generator | None = None):
    """The E-step: SFT records for one iteration, sampled from ``policy``; (records, metrics).

    ``rm`` scores the samples only when a threshold is set (it is then required).
    """
    scored = hard_threshold is not None or easy_threshold is not None
    if scored and rm is None:
        raise ValueError("rest_iteration_data: hard_threshold / easy_threshold need a reward "
                         "model (rm)")
    with gathered(policy):     # one all-gather for all the sampling, not one per token
        samples = sample_solutions(policy, tok, problems, n=n, temperature=temperature,
                                   top_k=top_k, max_new_tokens=max_new_tokens,
                                   generator=generator, batch_size=batch_size)
    if scored:
        samples = score_samples(rm, tok, samples)
    records = filter_samples(samples, max_per_problem, rng, hard_threshold=hard_threshold,
                             easy_threshold=easy_threshold, answer_levels=answer_levels)
    graded = [s["correct"] for s in samples if s.get("correct") is not None]
    metrics = {"rest/examples": len(records),
               "rest/problems_kept": len({r["id"] for r in records}),
               "answer/accuracy": sum(graded) / max(len(graded), 1)}
    return records, metrics


def iteration(it: int, sample_kept, encode, restart, train_epoch, *, pad_id: int):
    """Iteration ``it`` of ReST-EM, as e2h/recipes.py's ``train_rest`` runs it K times.

    E-step: ``sample_kept(it)`` is ``rest_iteration_data`` on the latest policy, every rank on
    its share of the problems (the kept records are saved before training, so a resumed run
    reuses them); ``encode`` turns them into SFT examples.
    M-step: from the second iteration on, ``restart()`` puts the SFT model's weights back
    (``RESTART_FROM_BASE``), then one epoch of the SFT loss on the kept solutions:
    ``train_epoch(examples, collate, loss_fn)``.
    """
    examples = encode(sample_kept(it))
    if it > 0 and RESTART_FROM_BASE:
        restart()
    train_epoch(examples, partial(sft_batch, pad_id=pad_id), loss_fn)
