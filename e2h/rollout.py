"""PPO's experience: sample one solution per problem, then score it token by token (docs/paper.md,
"RL", PPO): the process reward from the PRM at each step delimiter, the terminal reward from
the grader where the answer may be used, the KL penalty against the reference, the value
model's estimates, and the advantages GAE makes of them (the pieces are in e2h/ppo.py).

Letters: B rollouts, T tokens of prompt + completion (right-padded). Every per-token tensor is
(B, T-1): grid index t holds token t+1, the "action" taken at t.
"""
from __future__ import annotations

import torch

from data.format import EASY_LEVELS, format_prompt, parse_solution, score_positions
from e2h.distributed import gathered
from e2h.grader import grade_answer
from e2h.ppo import assemble_rewards, gae, kl_penalty, normalize_rewards, terminal_reward, whiten
from e2h.sample import generate
from e2h.sequences import collate, token_logps


def _trajectories(tok, prompts: list[list[int]], samples):
    """Sampled ids -> tokens (B, T), mask and recorded logps (B, T-1), grid positions of step
    delimiters and of each last trained token, and the completion texts."""
    seqs, masks, logps, steps, last, texts = [], [], [], [], [], []
    for b, (prompt, s) in enumerate(zip(prompts, samples)):
        completion = list(s.tokens)
        if not completion:
            raise ValueError(f"rollout: sample {b} has no completion tokens")
        # EOS is not trained, unless it is all there is (its format penalty needs a token)
        n = len(completion) - (completion[-1] == tok.eos_id and len(completion) > 1)
        P, tail = len(prompt), len(completion) - n   # completion token c sits at grid P-1+c
        seqs.append(prompt + completion)
        masks.append([0] * (P - 1) + [1] * n + [0] * tail)                 # len(seq) - 1
        logps.append([0.0] * (P - 1) + list(s.logps[:n]) + [0.0] * tail)
        step_positions, _ = score_positions(tok, completion[:n])
        steps.append([P - 1 + c for c in step_positions])
        last.append(P - 2 + n)
        texts.append(tok.decode(completion))
    return (collate(seqs, tok.pad_id), collate(masks, 0).float(), collate(logps, 0.0).float(),
            steps, last, texts)


def _forward(fn, tokens: torch.Tensor, batch_size: int) -> torch.Tensor:
    """fn over row chunks of tokens (B, T), concatenated along the batch."""
    return torch.cat([fn(x) for x in tokens.split(batch_size)])


@torch.no_grad()
def rollout(policy, ref_model, value_model, reward_model, tok, problems: list[dict], *,
            temperature: float, top_k: int | None, max_new_tokens: int, batch_size: int,
            generator: torch.Generator | None = None, **scoring):
    """One sampled solution per problem, scored and turned into advantages: (batch, metrics).

    ``scoring`` are the keyword arguments of ``score_rollouts`` (kl_coef, process_reward, ...).
    """
    prompts = [tok.encode(format_prompt(p["question"]), bos=True) for p in problems]
    with gathered(policy):                # sampling runs one forward per token and per rank
        # every rollout streams through batch_size rows (continuous batching)
        samples = generate(policy, prompts, max_new_tokens, temperature=temperature, top_k=top_k,
                           eos_id=tok.eos_id, generator=generator, max_rows=batch_size)
    return score_rollouts(policy, ref_model, value_model, reward_model, tok, problems, prompts,
                          samples, temperature=temperature, batch_size=batch_size, **scoring)


@torch.no_grad()
def score_rollouts(policy, ref_model, value_model, reward_model, tok, problems: list[dict],
                   prompts: list[list[int]], samples, *, temperature: float, kl_coef: float,
                   process_reward: bool, batch_size: int, answer_levels=EASY_LEVELS,
                   u: float = 0.5, step_bonus: float = 0.25, hard_reward: float = 0.25,
                   format_penalty: float = 1.0, gamma: float = 1.0, lam: float = 1.0,
                   recompute_logps: bool = False):
    """Rewards, values and advantages of sampled solutions (``e2h.sample.Sample``): (batch, metrics).

    batch: "tokens" (B, T) and "mask", "logps", "values", "rewards" (before normalization),
    "advantages", "returns" (B, T-1), and the "temperature" sampled at, which the update's
    log-probs must use too. A problem's reference answer is used only when its level is in
    ``answer_levels``. ``reward_model`` may be None when process_reward is False. The old
    log-probs are the sampler's; recompute_logps=True takes them from a full forward instead
    (in bf16 the cached decode and the full forward round differently).
    """
    device = next(policy.parameters()).device
    tokens, mask, logps, steps, last, texts = _trajectories(tok, prompts, samples)
    tokens, mask, logps = tokens.to(device), mask.to(device), logps.to(device)

    # same temperature as sampling: the KL compares the two distributions actually sampled from
    if recompute_logps:
        logps = _forward(lambda x: token_logps(policy(x), x, temperature), tokens, batch_size)
        logps = logps * mask
    ref_logps = _forward(lambda x: token_logps(ref_model(x), x, temperature), tokens, batch_size)
    # V(state before token t+1): the value head's output at position t, never at the action
    values = _forward(lambda x: value_model(x)[:, :-1].float(), tokens, batch_size) * mask
    step_probs = [[] for _ in steps]
    if process_reward:   # the PRM's probability at the delimiter token itself (position t+1)
        probs = _forward(lambda x: torch.sigmoid(reward_model(x)[:, 1:].float()), tokens,
                         batch_size)                                          # (B, T-1)
        step_probs = [probs[b, pos].tolist() for b, pos in enumerate(steps)]
    truths = [p["answer"] if p["level"] in answer_levels else None for p in problems]
    terminal = [terminal_reward(t, truth, hard_reward, format_penalty)
                for t, truth in zip(texts, truths)]

    kl = (logps - ref_logps) * mask
    non_score = kl_penalty(logps, ref_logps, kl_coef) * mask
    rewards, scores = assemble_rewards(non_score, step_probs, steps, terminal, last, u,
                                       step_bonus, process_reward)
    advantages, returns = gae(normalize_rewards(rewards, mask), values, mask, gamma, lam)
    advantages = whiten(advantages, mask)

    answers = [parse_solution(t)[1] for t in texts]
    correct = [grade_answer(a, p["answer"]) for a, p in zip(answers, problems) if p.get("answer")]
    metrics = {"objective/kl": kl.sum(-1).mean().item(),                   # TRL's names
               "objective/entropy": (-logps * mask).sum(-1).mean().item(),
               "objective/non_score_reward": non_score.sum(-1).mean().item(),
               "objective/scores": scores.mean().item(),
               "objective/rlhf_reward": (rewards * mask).sum(-1).mean().item(),
               "answer/accuracy": sum(correct) / max(len(correct), 1),
               "answer/format": sum(a is not None for a in answers) / len(answers),
               "rollout/length": mask.sum(-1).mean().item()}
    batch = {"tokens": tokens, "mask": mask, "logps": logps, "values": values, "rewards": rewards,
             "advantages": advantages, "returns": returns, "temperature": temperature}
    return batch, metrics
