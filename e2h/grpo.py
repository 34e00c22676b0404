"""GRPO against the easy-trained process reward model (Shao et al. 2024, DeepSeekMath, Sec. 4.1).

Group Relative Policy Optimization replaces PPO's value model by a baseline made of the other
samples of the same problem. One step: sample G completions of each of N problems from the
policy, score each, turn the G rewards of a problem into advantages relative to their group,
then a clipped update with a per-token KL to a frozen reference inside the loss.

- Reward of a completion (``e2h.dpo.pair_score``): the PRM's outcome score (the min over its
  step probabilities, ``e2h.score.sample_score(sample, "min")``) + 1 if the final answer is
  correct, where the answer may be used (levels in ``answer_levels``: easy problems). Without
  a reward model (``reward_model=None``, train.py's --no-process-reward) the reward is the
  answer's 1/0 alone: the paper's "PPO on easy final answers" comparison, for GRPO.
- Outcome advantages (GRPO Eq. for outcome supervision), one per completion, on every token:
      A_i = (r_i - mean(r)) / (std(r) + eps)      over the G rewards of one problem
  ``scale_rewards=False`` drops the division ("Dr. GRPO", Liu et al. 2025: dividing by the std
  weighs problems whose samples nearly agree most). A group whose rewards are all equal gives
  exactly 0. std is Bessel-corrected and eps = 1e-4, as in TRL.
- Process advantages (DeepSeekMath Sec. 4.1.3), ``process_advantages``: the PRM's step
  probabilities of all G completions of a problem are normalised together as above, and a
  token's advantage is the sum of the normalised rewards of the steps that end at or after it
  (a step ends at its delimiter token). The answer's 1/0, where known, is added as an outcome
  advantage of its own group; on hard problems it is 0.
- Loss per completion token (Eq. 3, GRPO), with ratio = exp(logps - old_logps):
      max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps)) + beta * k3
      k3 = exp(ref_logps - logps) - (ref_logps - logps) - 1  (>= 0; Schulman's k3 estimator)
  the first term is e2h/ppo.py's ``ppo_policy_loss``.
- Aggregation, token-level over the whole update batch: the per-token losses of every
  completion are summed and divided by the number of completion tokens in the minibatch
  (DAPO, Yu et al. 2025, Eq. 12; TRL's default ``loss_type="dapo"``). The original GRPO
  averages each sequence first, so a token of a short completion weighs more than one of a
  long completion: a long wrong solution is pushed down less per token than a short one.
  Token-level weighs every token the same and does not depend on how the batch is cut into
  micro-batches; Dr. GRPO's constant (batch x max length) would tie the step size to
  --max-new-tokens.

Deliberate differences from TRL's GRPOTrainer: the EOS token is input but not trained (the
token grid of e2h's PPO, ``e2h.sequences.trajectories``); the old log-probs are the sampler's.
No value model.

Letters: N problems, G completions per problem, B = N * G completions (problem-major: row
n * G + g is completion g of problem n), T tokens. Per-token tensors are (B, T-1): entry t
belongs to token t+1.
"""
from __future__ import annotations

from collections import defaultdict

import torch

from data.format import EASY_LEVELS, format_prompt, parse_solution, score_positions
from e2h.infra.distributed import clip_grad_norm, gathered
from e2h.dpo import pair_score
from e2h.grader import grade_answer
from e2h.ppo import masked_mean, ppo_policy_loss
from e2h.sample import generate
from e2h.sequences import forward_rows, token_logps, trajectories

# ----------------------------------------------------------------------------- pure pieces


def group_advantages(rewards: torch.Tensor, scale_rewards: bool = True,
                     eps: float = 1e-4) -> torch.Tensor:
    """(r - group mean) [/ (group std + eps)] of rewards (N, G), one group per row; a row whose
    rewards are all equal (or a single reward) gives exactly 0."""
    rewards = rewards.float()
    advantages = rewards - rewards.mean(-1, keepdim=True)                 # (N, G)
    if scale_rewards and rewards.shape[-1] > 1:
        advantages = advantages / (rewards.std(-1, keepdim=True) + eps)   # Bessel std, TRL's eps
    all_equal = (rewards == rewards[:, :1]).all(-1, keepdim=True)          # (N, 1)
    return advantages.masked_fill(all_equal, 0.0)


def process_advantages(step_rewards: list[list[float]], step_positions: list[list[int]],
                       mask: torch.Tensor, scale_rewards: bool = True,
                       eps: float = 1e-4) -> torch.Tensor:
    """Process-supervised advantages (G, T-1) of one group: every step reward of the G
    completions normalised together (``group_advantages`` of their flat list), then token t of
    completion g gets the sum of those of its steps ending at grid index >= t."""
    G = mask.shape[0]
    flat = torch.tensor([r for rs in step_rewards for r in rs], dtype=torch.float32)
    normed = group_advantages(flat[None], scale_rewards, eps)[0] if len(flat) else flat
    ends = torch.zeros(G, mask.shape[1])
    rows = [g for g, ps in enumerate(step_positions) for _ in ps]
    cols = [p for ps in step_positions for p in ps]
    ends[rows, cols] = normed                                              # r~ at each step's end
    return ends.flip(-1).cumsum(-1).flip(-1) * mask                        # sum over ends >= t


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate k3 = exp(ref - logp) - (ref - logp) - 1 (Eq. 4, GRPO)."""
    delta = ref_logps.float() - logps.float()
    return torch.exp(delta) - delta - 1


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor,
              advantages: torch.Tensor, mask: torch.Tensor, clip: float, beta: float):
    """Per-token GRPO loss (B, T-1), zero outside the mask: the clipped surrogate plus beta * k3.

    The caller sums and divides by the token count (``token_mean``). Metrics (detached masked
    token means, TRL's names): kl; clip_ratio/low_mean (ratio < 1 - clip where A < 0, the
    tokens whose push down is clipped), clip_ratio/high_mean (ratio > 1 + clip where A > 0),
    clip_ratio/region_mean (either).
    """
    pg_losses, _ = ppo_policy_loss(logps, old_logps, advantages, mask, clip)
    kl = k3_kl(logps, ref_logps)
    losses = pg_losses + beta * kl * mask
    with torch.no_grad():
        ratio = torch.exp(logps.float() - old_logps.float())
        low = ((ratio < 1 - clip) & (advantages < 0)).float()
        high = ((ratio > 1 + clip) & (advantages > 0)).float()
        metrics = {"kl": masked_mean(kl, mask), "clip_ratio/low_mean": masked_mean(low, mask),
                   "clip_ratio/high_mean": masked_mean(high, mask),
                   "clip_ratio/region_mean": masked_mean(torch.maximum(low, high), mask)}
    return losses, metrics


def token_mean(losses: torch.Tensor, n_tokens) -> torch.Tensor:
    """Token-level aggregation: the sum of per-token losses over the batch / its token count."""
    return losses.sum() / n_tokens

# ----------------------------------------------------------------------------- the step


def score_completion(tok, problem: dict, ids: list[int], probs: torch.Tensor, prompt_len: int,
                     answer_levels=EASY_LEVELS):
    """(reward, PRM score, answer 1/0, step probabilities, step grid positions, text) of one
    sampled completion ``ids``; ``probs`` (T-1,) are the PRM's probabilities on its row's grid
    (entry t: token t+1). The answer counts only where it may be used (0 elsewhere)."""
    ids = ids[:-1] if len(ids) > 1 and ids[-1] == tok.eos_id else ids      # as trajectories
    steps, answer_at = score_positions(tok, ids)
    grid = [prompt_len - 1 + c for c in steps]                              # completion c: P-1+c
    step_probs = probs[grid].tolist()
    outcome = probs[prompt_len - 1 + answer_at].item() if answer_at is not None else None
    text = tok.decode(ids)
    known = problem["level"] in answer_levels and problem.get("answer") is not None
    correct = known and grade_answer(parse_solution(text)[1], problem["answer"])
    scored = {"step_scores": step_probs, "outcome_score": outcome, "correct": correct}
    return (pair_score(scored, known), pair_score(scored, answer_known=False), float(correct),
            step_probs, grid, text)


def rollout_metrics(grouped: torch.Tensor, prm: torch.Tensor, bonus: torch.Tensor, samples,
                    texts: list[str], problems: list[dict]) -> dict:
    """What a step's completions scored, under TRL GRPOTrainer's names; grouped rewards (N, G),
    the rest one entry per completion."""
    rewards = grouped.reshape(-1)
    lengths = torch.tensor([len(s.tokens) for s in samples], dtype=torch.float32)   # EOS in
    finished = torch.tensor([float(s.finished) for s in samples])
    answers = [parse_solution(t)[1] for t in texts]
    graded = [grade_answer(a, p["answer"]) for a, p in zip(answers, problems) if p.get("answer")]
    return {"reward": rewards.mean().item(), "reward_std": rewards.std().item(),
            "frac_reward_zero_std": (grouped == grouped[:, :1]).all(-1).float().mean().item(),
            "rewards/prm/mean": prm.mean().item(), "rewards/prm/std": prm.std().item(),
            "rewards/answer/mean": bonus.mean().item(), "rewards/answer/std": bonus.std().item(),
            "completions/mean_length": lengths.mean().item(),
            "completions/min_length": lengths.min().item(),
            "completions/max_length": lengths.max().item(),
            "completions/clipped_ratio": 1.0 - finished.mean().item(),   # cut by max_new_tokens
            "answer/accuracy": sum(graded) / max(len(graded), 1),
            "answer/format": sum(a is not None for a in answers) / len(answers)}


@torch.no_grad()
def sample_groups(policy, ref_model, reward_model, tok, problems: list[dict], *, group_size: int,
                  temperature: float, top_k: int | None, max_new_tokens: int, batch_size: int,
                  answer_levels=EASY_LEVELS, scale_rewards: bool = True,
                  process: bool = False, generator: torch.Generator | None = None):
    """G completions per problem, scored, with their advantages: (batch, metrics). Sampling
    streams them through ``batch_size`` rows; the scoring forwards take ``batch_size`` rows.

    batch: "tokens" (B, T); "mask", "logps" (the sampler's), "ref_logps", "advantages"
    (B, T-1); "rewards" (B,); "temperature". Metrics carry TRL GRPOTrainer's names.
    """
    G, device = group_size, next(policy.parameters()).device
    prompts = [tok.encode(format_prompt(p["question"]), bos=True) for p in problems]
    with gathered(policy):
        samples = generate(policy, prompts, max_new_tokens, temperature=temperature, top_k=top_k,
                           n=G, eos_id=tok.eos_id, generator=generator, max_rows=batch_size)
    prompts = [p for p in prompts for _ in range(G)]                        # one per completion
    tokens, mask, logps, *_ = trajectories(tok, prompts, samples)
    tokens, mask, logps = tokens.to(device), mask.to(device), logps.to(device)
    # same temperature as sampling: the KL compares the distributions actually sampled from
    ref_logps = forward_rows(lambda x: token_logps(ref_model(x), x, temperature), tokens,
                             batch_size)
    if reward_model is None and process:
        raise ValueError("process advantages need the PRM's step scores: a reward model")
    if reward_model is None:   # scored at 0 everywhere: only the answer's 1/0 is left
        probs = torch.zeros(tokens.shape[0], tokens.shape[1] - 1)            # (B, T-1)
    else:
        probs = forward_rows(lambda x: torch.sigmoid(reward_model(x)[:, 1:].float()), tokens,
                             batch_size).cpu()                                  # (B, T-1)
    parts = [score_completion(tok, problems[b // G], list(s.tokens), probs[b], len(prompts[b]),
                              answer_levels) for b, s in enumerate(samples)]
    rewards, prm, bonus = (torch.tensor([x[i] for x in parts]) for i in range(3))   # (B,)
    rewards = bonus if reward_model is None else rewards
    if process:   # steps normalised per group, plus the answer's own group advantage
        advantages = torch.cat([process_advantages(
            [x[3] for x in parts[n * G:(n + 1) * G]], [x[4] for x in parts[n * G:(n + 1) * G]],
            mask[n * G:(n + 1) * G].cpu(), scale_rewards) for n in range(len(problems))])
        advantages = advantages + group_advantages(bonus.view(-1, G), scale_rewards).view(-1, 1)
    else:
        advantages = group_advantages(rewards.view(-1, G), scale_rewards).view(-1, 1)
    advantages = advantages.to(device) * mask                               # (B, T-1)

    metrics = rollout_metrics(rewards.view(-1, G), prm, bonus, samples,
                              [x[5] for x in parts], [problems[b // G] for b in range(len(parts))])
    batch = {"tokens": tokens, "mask": mask, "logps": logps, "ref_logps": ref_logps,
             "advantages": advantages, "rewards": rewards.to(device), "temperature": temperature}
    return batch, metrics


def grpo_update(policy, opt, batch: dict, *, minibatch_size: int, epochs: int, clip: float,
                beta: float, max_grad_norm: float, microbatch_size: int | None = None,
                generator: torch.Generator | None = None) -> dict:
    """``epochs`` passes (GRPO's mu) over the batch in shuffled minibatches, one optimizer step
    per minibatch; the loss of a minibatch is its token mean (``token_mean``), accumulated over
    micro-batches of ``microbatch_size`` rows. Returns metrics averaged over the run."""
    temperature = batch["temperature"]
    batch = {k: v for k, v in batch.items() if k not in ("temperature", "rewards")}
    B = batch["tokens"].shape[0]
    sums, counts = defaultdict(float), defaultdict(int)
    for _ in range(epochs):
        order = torch.randperm(B, generator=generator)
        for start in range(0, B, minibatch_size):
            rows = order[start:start + minibatch_size]
            n_tokens = batch["mask"][rows].sum()
            for micro in rows.split(microbatch_size or minibatch_size):
                mb = {k: v[micro.to(v.device)] for k, v in batch.items()}
                logps = token_logps(policy(mb["tokens"]), mb["tokens"], temperature)
                losses, metrics = grpo_loss(logps, mb["logps"], mb["ref_logps"],
                                            mb["advantages"], mb["mask"], clip, beta)
                token_mean(losses, n_tokens).backward()
                for k, v in {**metrics, "loss": masked_mean(losses.detach(), mb["mask"])}.items():
                    sums[k] += float(v)
                    counts[k] += 1
            sums["grad_norm"] += clip_grad_norm(list(policy.parameters()), max_grad_norm)
            counts["grad_norm"] += 1
            opt.step()
            opt.zero_grad(set_to_none=True)
    return {k: sums[k] / counts[k] for k in sums}
