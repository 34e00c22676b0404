"""PPO against the easy-trained process reward model (docs/paper.md, "RL", PPO; AlpacaFarm-style).

One PPO step (``ppo_step``), read top to bottom in this file:
1. experience (``rollout``): sample one solution per problem from the policy, then score it
   token by token (``score_rollouts``), on the token grid where index t scores token t+1 (the
   "action" taken at t):
   - process reward from the PRM at each step delimiter, "min" shaped with upper bound u:
     m_0 = u, r_k = p_k - m_{k-1} if p_k < m_{k-1} else 0, m_k = min(m_{k-1}, p_k), so
     sum_k r_k = min(min_k p_k, u) - u; plus step_bonus / K on each of the K steps; r_k sits
     on the token of step k's delimiter;
   - terminal reward on the last trained token: 1/0 from the grader where the answer may be
     used (easy problems), a constant (hard_reward) where it may not (hard), minus a format
     penalty when the "# Answer" section or the answer is missing;
   - per-token KL shaping -kl_coef * max(logps - ref_logps, 0) (the clamped k1 estimator);
   - the value model's estimates; rewards divided by their std over the batch's completion
     tokens (the scale of the paper's released code, without its per-token shift: see
     normalize_rewards), GAE (gamma, lam), advantages whitened over the batch.
2. update (``ppo_update``): clipped policy and value losses, epochs of shuffled minibatches,
   one optimizer step of each model per minibatch.
The reward constants (u, step_bonus, hard_reward, format_penalty, gamma, lam) are ``Rewards``;
train.py has a flag for each. Policy and frozen reference start from the SFT model; the value
model starts from the reward model (a ``RewardModel``: its per-token head is the value head);
the reward model is frozen. The EOS token is not trained: it is input to the forward but
outside the mask (the grid is ``e2h.sequences.trajectories``, shared with GRPO).

Deliberate simplifications: the released code splits a process reward over the two "\\n" tokens
of a delimiter and grades a partial format penalty (0.5 / 0.75 when the answer is not repeated
in the last step); here the reward sits on the delimiter's first token and the penalty is all
or nothing. With several processes, reward std and advantage whitening use each process's share
of the rollout batch.

Letters: B rollouts, T tokens of prompt + completion (right-padded), V vocab. Every per-token
tensor (logps, values, rewards, mask, ...) is (B, T-1): entry t belongs to token t+1.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from data.format import EASY_LEVELS, format_prompt, parse_solution
from e2h.infra.distributed import clip_grad_norm, gathered
from e2h.grader import grade_answer
from e2h.sample import generate
from e2h.sequences import forward_rows, token_logps, trajectories


@dataclass(frozen=True)
class Rewards:
    """The reward of a rollout and how it becomes advantages (the paper's values)."""
    u: float = 0.5                 # upper bound of the min-shaped process reward
    step_bonus: float = 0.25       # spread over a solution's steps, step_bonus / K each
    hard_reward: float = 0.25      # terminal reward where the answer may not be used
    format_penalty: float = 1.0    # subtracted when "# Answer" or the answer is missing
    gamma: float = 1.0             # GAE discount
    lam: float = 1.0               # GAE lambda

# ----------------------------------------------------------------------------- experience


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over entries where mask is 1; an all-zero mask is an error, not a NaN."""
    n = mask.sum()
    if n == 0:
        raise ValueError("ppo: the batch has no completion tokens")
    return (x * mask).sum() / n


def check_rows(mask: torch.Tensor, where: str):
    """Every sequence must own at least one completion token (mask (B, T-1))."""
    empty = (mask.sum(-1) == 0).nonzero()
    if len(empty):
        raise ValueError(f"{where}: sequence {empty[0].item()} has no completion tokens")


def min_process_rewards(step_probs: list[float], u: float = Rewards.u,
                        step_bonus: float = Rewards.step_bonus) -> list[float]:
    """Min-shaped process reward of one solution: one reward per step (K = len(step_probs))."""
    rewards, m = [], u                                    # m_0 = u
    bonus = step_bonus / len(step_probs) if step_probs else 0.0
    for p in step_probs:
        r = p - m if p < m else 0.0                       # r_k = p_k - m_{k-1} if p_k < m_{k-1}
        m = min(m, p)                                     # m_k = min(m_{k-1}, p_k)
        rewards.append(r + bonus)                         # + step_bonus / K per step
    return rewards


def terminal_reward(completion: str, truth: str | None,
                    hard_reward: float = Rewards.hard_reward,
                    format_penalty: float = Rewards.format_penalty) -> float:
    """Reward of a finished solution text. ``truth`` None: the answer may not be used (hard)."""
    _, answer = parse_solution(completion)
    score = hard_reward if truth is None else float(grade_answer(answer, truth))
    return score - (format_penalty if answer is None else 0.0)   # "# Answer" or answer missing


def kl_penalty(logps: torch.Tensor, ref_logps: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token KL shaping (B, T-1): -kl_coef * max(logps - ref_logps, 0), the clamped k1."""
    return -kl_coef * (logps.float() - ref_logps.float()).clamp(min=0.0)


def assemble_rewards(kl_rewards: torch.Tensor, step_probs: list[list[float]],
                     step_positions: list[list[int]], terminal_rewards: list[float],
                     last_positions: list[int], u: float = Rewards.u,
                     step_bonus: float = Rewards.step_bonus,
                     process_reward: bool = True):
    """Dense rewards (B, T-1) and scores (B,), the summed non-KL reward of each rollout.

    kl_rewards (B, T-1) from ``kl_penalty`` (zero outside the mask); step_positions[b] are grid
    indices of rollout b's step delimiters with PRM probabilities step_probs[b];
    last_positions[b] the grid index of its last trained token. process_reward=False gives the
    outcome-only reward (terminal reward and KL).
    """
    rewards, device = kl_rewards.float().clone(), kl_rewards.device
    terminal = torch.tensor(terminal_rewards, dtype=torch.float32, device=device)    # (B,)
    rows = torch.arange(len(last_positions), device=device)
    rewards[rows, torch.tensor(last_positions, device=device)] += terminal
    scores = terminal.clone()
    for b, (probs, positions) in enumerate(zip(step_probs, step_positions)):
        if process_reward and positions:
            r = torch.tensor(min_process_rewards(probs, u, step_bonus), device=device)
            rewards[b, positions] += r                    # on the step delimiter tokens
            scores[b] += r.sum()
    return rewards, scores


def normalize_rewards(rewards: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """r / std over the masked tokens of the batch: the spread of the rewards becomes 1, their
    sign stays; zero outside the mask.

    The paper's released code computes (r - mean) / std + mean over its whole padded rollout
    grid, where GAE also runs over the padding: the constant mean - mean / std that it adds to
    every position reaches every sequence equally. Added on the completion tokens only, that
    constant would be a reward per token, a bonus or a penalty for length; without it what is
    left is r / std (the same std).
    """
    mean = masked_mean(rewards, mask)
    var = masked_mean((rewards - mean) ** 2, mask)
    return rewards * torch.rsqrt(var + eps) * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float):
    """Generalized advantage estimation (Schulman et al. 2016, Eq. 16) -> (advantages, returns).

    rewards, values, mask: (B, T-1) with one contiguous run of 1s per row (the completion); the
    state after the last masked token is terminal (value 0). Outputs are zero outside the mask.
    """
    B, T = rewards.shape
    rewards, values, mask = rewards.float(), values.float(), mask.float()
    advantages = torch.zeros_like(rewards)
    last = next_values = next_mask = torch.zeros(B, device=rewards.device)
    for t in reversed(range(T)):
        # next_mask = 0 after the last completion token: the episode ended, V(next) = 0
        delta = rewards[:, t] + gamma * next_mask * next_values - values[:, t]   # TD error
        last = delta + gamma * lam * next_mask * last                 # A_t = d_t + g*l*A_{t+1}
        advantages[:, t] = last
        next_values, next_mask = values[:, t], mask[:, t]
    advantages = advantages * mask
    return advantages, (advantages + values) * mask                      # returns = A + V


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries of the whole batch; zero outside the mask."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


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
                   shaping: Rewards = Rewards(), recompute_logps: bool = False):
    """Rewards, values and advantages of sampled solutions (``e2h.sample.Sample``): (batch, metrics).

    batch: "tokens" (B, T) and "mask", "logps", "values", "rewards" (before normalization),
    "advantages", "returns" (B, T-1), and the "temperature" sampled at, which the update's
    log-probs must use too. A problem's reference answer is used only when its level is in
    ``answer_levels``; ``shaping`` holds the reward constants. ``reward_model`` may be None
    when process_reward is False. The old log-probs are the sampler's; recompute_logps=True
    takes them from a full forward instead (in bf16 the cached decode and the full forward
    round differently).
    """
    device = next(policy.parameters()).device
    tokens, mask, logps, steps, last, texts = trajectories(tok, prompts, samples)
    tokens, mask, logps = tokens.to(device), mask.to(device), logps.to(device)

    # same temperature as sampling: the KL compares the two distributions actually sampled from
    if recompute_logps:
        logps = forward_rows(lambda x: token_logps(policy(x), x, temperature), tokens,
                             batch_size) * mask
    ref_logps = forward_rows(lambda x: token_logps(ref_model(x), x, temperature), tokens,
                             batch_size)
    # V(state before token t+1): the value head's output at position t, never at the action
    values = forward_rows(lambda x: value_model(x)[:, :-1].float(), tokens, batch_size) * mask
    step_probs = [[] for _ in steps]
    if process_reward:   # the PRM's probability at the delimiter token itself (position t+1)
        probs = forward_rows(lambda x: torch.sigmoid(reward_model(x)[:, 1:].float()), tokens,
                             batch_size)                                      # (B, T-1)
        step_probs = [probs[b, pos].tolist() for b, pos in enumerate(steps)]
    truths = [p["answer"] if p["level"] in answer_levels else None for p in problems]
    terminal = [terminal_reward(t, truth, shaping.hard_reward, shaping.format_penalty)
                for t, truth in zip(texts, truths)]

    kl = (logps - ref_logps) * mask
    non_score = kl_penalty(logps, ref_logps, kl_coef) * mask
    rewards, scores = assemble_rewards(non_score, step_probs, steps, terminal, last, shaping.u,
                                       shaping.step_bonus, process_reward)
    advantages, returns = gae(normalize_rewards(rewards, mask), values, mask, shaping.gamma,
                              shaping.lam)
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

# ----------------------------------------------------------------------------- update


def ppo_policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip: float):
    """Clipped surrogate (Schulman et al. 2017, Eq. 7), per token (B, T-1), zero outside mask.

    The caller sums over tokens and divides by the token count. Metrics (detached, masked
    token means, TRL's PPO names): policy/clipfrac_avg, policy/approxkl_avg = 0.5 *
    mean(log ratio ^ 2).
    """
    check_rows(mask, "ppo_policy_loss")
    logratio = logps.float() - old_logps.float()
    ratio = torch.exp(logratio)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    pg_losses = torch.max(pg_loss1, pg_loss2) * mask                     # Eq. 7: min of -objective
    with torch.no_grad():
        metrics = {"policy/clipfrac_avg": masked_mean((pg_loss2 > pg_loss1).float(), mask),
                   "policy/approxkl_avg": 0.5 * masked_mean(logratio ** 2, mask)}
    return pg_losses, metrics


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                   mask: torch.Tensor, clip: float):
    """Clipped value loss 0.5 * max((V - R)^2, (V_clipped - R)^2), per token (B, T-1).

    V_clipped = old_values + clamp(values - old_values, -clip, clip). Metric: val/clipfrac_avg.
    """
    check_rows(mask, "ppo_value_loss")
    values = values.float()
    v_loss_unclipped = (values - returns) ** 2
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    v_loss_clipped = (v_clipped - returns) ** 2
    vf_losses = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped) * mask
    with torch.no_grad():
        clipped = (v_loss_clipped > v_loss_unclipped).float()
        metrics = {"val/clipfrac_avg": masked_mean(clipped, mask)}
    return vf_losses, metrics


def ppo_update(policy, value_model, policy_opt, value_opt, batch: dict, *, minibatch_size: int,
               epochs: int, clip: float, value_clip: float, vf_coef: float, max_grad_norm: float,
               microbatch_size: int | None = None, generator: torch.Generator | None = None,
               train_policy: bool = True) -> dict:
    """``epochs`` passes over the rollout batch in shuffled minibatches, one optimizer step of
    each model per minibatch; losses are token means over the minibatch, accumulated over
    micro-batches of ``microbatch_size`` rows. Returns metrics averaged over the run.

    ``train_policy`` False (the value warm-up): the value model alone learns; the policy's loss
    is computed for the metrics, without a gradient, and its optimizer does not step.

    ``batch`` comes from ``rollout``; its log-probs are taken at the temperature it sampled at.
    """
    temperature = batch["temperature"]
    batch = {k: v for k, v in batch.items() if k != "temperature"}
    B = batch["tokens"].shape[0]
    sums, counts = defaultdict(float), defaultdict(int)

    def log(stats: dict):
        for k, v in stats.items():
            sums[k] += float(v)
            counts[k] += 1

    for _ in range(epochs):
        order = torch.randperm(B, generator=generator)
        for start in range(0, B, minibatch_size):
            rows = order[start:start + minibatch_size]
            n_tokens = batch["mask"][rows].sum()
            for micro in rows.split(microbatch_size or minibatch_size):
                mb = {k: v[micro.to(v.device)] for k, v in batch.items()}
                with torch.set_grad_enabled(train_policy):
                    logps = token_logps(policy(mb["tokens"]), mb["tokens"], temperature)
                pg_losses, pm = ppo_policy_loss(logps, mb["logps"], mb["advantages"],
                                                mb["mask"], clip)
                values = value_model(mb["tokens"])[:, :-1]
                vf_losses, vm = ppo_value_loss(values, mb["values"], mb["returns"], mb["mask"],
                                               value_clip)
                # two models, one backward: each gets the gradient of its own term
                loss = (pg_losses.sum() + vf_coef * vf_losses.sum()) / n_tokens
                loss.backward()
                log({**pm, **vm, "loss/policy_avg": masked_mean(pg_losses.detach(), mb["mask"]),
                     "loss/value_avg": masked_mean(vf_losses.detach(), mb["mask"])})
            log({"policy/grad_norm": clip_grad_norm(list(policy.parameters()), max_grad_norm)
                 if train_policy else 0.0,
                 "val/grad_norm": clip_grad_norm(list(value_model.parameters()), max_grad_norm)})
            for opt in (policy_opt, value_opt) if train_policy else (value_opt,):
                opt.step()
                opt.zero_grad(set_to_none=True)
    return {k: sums[k] / counts[k] for k in sums}

# ----------------------------------------------------------------------------- one step


def ppo_step(policy, reference, value_model, reward_model, policy_opt, value_opt, tok,
             problems: list[dict], *, shaping: Rewards, kl_coef: float, answer_levels,
             temperature: float, top_k: int | None, max_new_tokens: int, sample_batch_size: int,
             minibatch_size: int, microbatch_size: int, epochs: int, clip: float,
             value_clip: float, vf_coef: float, max_grad_norm: float, train_policy: bool = True,
             generator: torch.Generator | None = None,
             minibatch_generator: torch.Generator | None = None):
    """One PPO step: the experience of one rollout per problem (``rollout``), then the update
    (``ppo_update``). ``reward_model`` None: the outcome reward alone (no process reward).
    Returns (batch, metrics): the rollout batch and the metrics of both halves."""
    batch, metrics = rollout(policy, reference, value_model, reward_model, tok, problems,
                             temperature=temperature, top_k=top_k, max_new_tokens=max_new_tokens,
                             kl_coef=kl_coef, process_reward=reward_model is not None,
                             answer_levels=answer_levels, shaping=shaping,
                             batch_size=sample_batch_size, generator=generator)
    metrics |= ppo_update(policy, value_model, policy_opt, value_opt, batch,
                          minibatch_size=minibatch_size, microbatch_size=microbatch_size,
                          epochs=epochs, clip=clip, value_clip=value_clip, vf_coef=vf_coef,
                          max_grad_norm=max_grad_norm, train_policy=train_policy,
                          generator=minibatch_generator)
    return batch, metrics
