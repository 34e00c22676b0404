"""GRPO pieces against hand-computed values (fp32, 1e-6), then scoring and sampling on a tiny
task. The learning test is in tests/test_rl_learns.py."""
import copy
import math

import pytest
import torch

from data.format import format_prompt
from e2h.grpo import (grpo_loss, grpo_update, group_advantages, k3_kl, process_advantages,
                      sample_groups, score_completion, token_mean)
from e2h.model import RewardModel
from e2h.ppo import ppo_policy_loss
from e2h.tokenizer import train_tokenizer
from test_rl_learns import sft_on_both_answers

TOL = dict(rtol=0, atol=1e-6)
EPS = 1e-4


def close(actual, expected):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float32),
                               torch.as_tensor(expected, dtype=torch.float32), **TOL)

# ----------------------------------------------------------------------------- advantages


def test_group_advantages_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 1.0, 1.0]])
    # row 0: mean 3, deviations -2 -1 0 3; Bessel variance (4 + 1 + 0 + 9) / 3 = 14 / 3
    s0 = math.sqrt(14 / 3)                                  # 2.1602469
    # row 1: mean 0.5, deviations -0.5 -0.5 0.5 0.5; variance 4 * 0.25 / 3 = 1 / 3
    s1 = math.sqrt(1 / 3)                                   # 0.5773503
    close(group_advantages(rewards), [[-2 / (s0 + EPS), -1 / (s0 + EPS), 0.0, 3 / (s0 + EPS)],
                                      [-0.5 / (s1 + EPS), -0.5 / (s1 + EPS), 0.5 / (s1 + EPS),
                                       0.5 / (s1 + EPS)]])


def test_group_advantages_without_std_dr_grpo():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 1.0, 1.0]])
    close(group_advantages(rewards, scale_rewards=False),
          [[-2.0, -1.0, 0.0, 3.0], [-0.5, -0.5, 0.5, 0.5]])


@pytest.mark.parametrize("scale_rewards", [True, False])
def test_an_all_equal_group_gives_exactly_zero(scale_rewards):
    # 0.3 six times: its float32 mean is 0.3 + 3e-8, yet the advantages are exactly 0 (not
    # 3e-8, nor 3e-8 / (std + eps) = 3e-4)
    rewards = torch.tensor([[0.3] * 6, [1.5, 0.5, 0.5, 0.5, 0.5, 0.5]])
    advantages = group_advantages(rewards, scale_rewards)
    assert torch.equal(advantages[0], torch.zeros(6))
    assert torch.isfinite(advantages).all() and (advantages[1] != 0).all()
    assert torch.equal(group_advantages(torch.tensor([[0.7]]), scale_rewards), torch.zeros(1, 1))


def test_process_advantages_by_hand():
    # one group of G = 2 on a grid of 6; completion 0 has steps ending at grid 2 and 4 (PRM
    # 0.9, 0.3), completion 1 one step ending at grid 3 (PRM 0.0); row 1 ends after grid 3
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0]], dtype=torch.float32)
    # all three step rewards together: mean 0.4, deviations 0.5, -0.1, -0.4,
    # Bessel variance (0.25 + 0.01 + 0.16) / 2 = 0.21
    s = math.sqrt(0.21) + EPS
    a, b, c = 0.5 / s, -0.1 / s, -0.4 / s
    got = process_advantages([[0.9, 0.3], [0.0]], [[2, 4], [3]], mask)
    # a token gets the steps ending at or after it: grid 1-2 both steps, 3-4 the second, 5 none
    close(got, [[0.0, a + b, a + b, b, b, 0.0], [0.0, c, c, c, 0.0, 0.0]])
    close(process_advantages([[0.9, 0.3], [0.0]], [[2, 4], [3]], mask, scale_rewards=False),
          [[0.0, 0.4, 0.4, -0.1, -0.1, 0.0], [0.0, -0.4, -0.4, -0.4, 0.0, 0.0]])


def test_process_advantages_of_equal_or_missing_steps_are_zero():
    mask = torch.ones(2, 4)
    assert torch.equal(process_advantages([[0.5], [0.5, 0.5]], [[1], [0, 2]], mask),
                       torch.zeros(2, 4))
    assert torch.equal(process_advantages([[], []], [[], []], mask), torch.zeros(2, 4))

# ----------------------------------------------------------------------------- KL and loss


def test_k3_by_hand():
    logps = torch.tensor([math.log(0.5), math.log(0.2), -1.3])
    ref_logps = torch.tensor([math.log(0.25), math.log(0.4), -1.3])
    # d = ref - logp: log 0.5 -> 0.5 - log 0.5 - 1; log 2 -> 2 - log 2 - 1; 0 -> 0
    close(k3_kl(logps, ref_logps), [0.5 + math.log(2) - 1, 2 - math.log(2) - 1, 0.0])


def loss_case():
    """A (2, 3) grid, old log-probs -1: row 0 [prompt, clipped high, clipped low], row 1
    [unclipped, low ratio with A > 0, clipped low]; the prompt entry holds garbage."""
    old = torch.full((2, 3), -1.0)
    ratio = torch.tensor([[3.0, 1.5, 0.5], [1.1, 0.5, 0.6]])
    logps = (old + ratio.log()).requires_grad_(True)
    # ref - logp: log 0.5 (row 0, clipped high), log 2 (row 1, unclipped), 0 elsewhere
    ref = logps.detach() + torch.tensor([[5.0, math.log(0.5), 0.0], [math.log(2), 0.0, 0.0]])
    advantages = torch.tensor([[100.0, 2.0, -1.0], [1.0, 1.0, -0.5]])
    mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    return logps, old, ref, advantages, mask


def test_loss_in_each_clipping_regime_with_the_kl_by_hand():
    logps, old, ref, advantages, mask = loss_case()
    losses, metrics = grpo_loss(logps, old, ref, advantages, mask, clip=0.2, beta=0.1)
    kl_half, kl_two = 0.5 + math.log(2) - 1, 2 - math.log(2) - 1     # 0.1931472, 0.3068528
    close(losses, [[0.0,
                    -2.0 * 1.2 + 0.1 * kl_half,      # ratio 1.5 > 1.2, A = 2: -A * 1.2
                    1.0 * 0.8],                      # ratio 0.5 < 0.8, A = -1: max(0.5, 0.8)
                   [-1.0 * 1.1 + 0.1 * kl_two,       # unclipped: -A * ratio
                    -1.0 * 0.5,                      # A > 0: max(-0.5, -0.8), not clipped
                    0.5 * 0.8]])                     # ratio 0.6, A = -0.5: max(0.3, 0.4)
    close(metrics["kl"], (kl_half + kl_two) / 5)
    close(metrics["clip_ratio/low_mean"], 2 / 5)
    close(metrics["clip_ratio/high_mean"], 1 / 5)
    close(metrics["clip_ratio/region_mean"], 3 / 5)
    # TRL's clipped region is exactly the tokens PPO's clipfrac counts
    _, ppo_metrics = ppo_policy_loss(logps, old, advantages, mask, clip=0.2)
    close(ppo_metrics["policy/clipfrac_avg"], metrics["clip_ratio/region_mean"])


def test_loss_gradient_clipped_tokens_keep_only_the_kl():
    logps, old, ref, advantages, mask = loss_case()
    losses, _ = grpo_loss(logps, old, ref, advantages, mask, clip=0.2, beta=0.1)
    losses.sum().backward()
    # d k3 / d logp = 1 - exp(ref - logp); d(-A ratio) / d logp = -A ratio
    close(logps.grad, [[0.0,
                        0.1 * (1 - 0.5),               # clipped: the KL's 0.05 alone
                        0.0],                          # clipped, ref = logp
                       [-1.1 + 0.1 * (1 - 2.0),        # -A ratio + beta (1 - 2) = -1.2
                        -0.5,
                        0.0]])                         # clipped


def test_token_level_aggregation_weighs_every_token_the_same():
    # completion 0 has one token with loss 2, completion 1 three with loss 1
    losses = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    close(token_mean(losses * mask, mask.sum()), (2 + 1 + 1 + 1) / 4)   # not (2 + 1) / 2 = 1.5

# ----------------------------------------------------------------------------- the step


QUESTION = "Pick the answer."
RIGHT, WRONG, STEPS = "# Answer\n\n1", "# Answer\n\n2", "a b\n\nc\n\n# Answer\n\n1"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = [format_prompt(QUESTION) + c for c in (RIGHT, WRONG, STEPS)] * 3
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "tokenizer.json", vocab_size=60)


def test_score_completion_reads_the_prm_at_steps_and_answer(tok):
    prompt = tok.encode(format_prompt(QUESTION), bos=True)
    ids = tok.encode(STEPS) + [tok.eos_id]
    P, pieces = len(prompt), tok.token_texts(tok.encode(STEPS))
    probs = torch.arange(P + len(ids) - 1, dtype=torch.float32) / 100    # (T-1,): grid t -> t/100
    # the delimiters: the first token of each "\n\n" after a step; the answer: its last token
    steps = [c for c, p in enumerate(pieces) if p.startswith("\n")][:2]
    grid = [P - 1 + c for c in steps]
    answer = P - 1 + len(pieces) - 1
    easy = {"question": QUESTION, "answer": "1", "level": 1}
    reward, prm, bonus, step_probs, where, text = score_completion(tok, easy, ids, probs, P)
    assert where == grid and text == STEPS
    close(step_probs, [g / 100 for g in grid])
    close([reward, prm, bonus], [min(grid) / 100 + 1.0, min(grid) / 100, 1.0])
    # no step before the answer: the outcome score at the answer token; hard: no answer bonus
    ids = tok.encode(RIGHT)
    probs = torch.arange(P + len(ids) - 1, dtype=torch.float32) / 100
    hard = dict(easy, level=5)
    reward, prm, bonus, _, _, _ = score_completion(tok, hard, ids, probs, P)
    close([reward, prm, bonus], [(P - 1 + len(ids) - 1) / 100] * 2 + [0.0])
    wrong = score_completion(tok, easy, tok.encode(WRONG), probs, P)
    close(wrong[:3], [(P - 1 + len(ids) - 1) / 100] * 2 + [0.0])


@pytest.fixture(scope="module")
def policy(tok):
    """SFT on both answers: each about half the time."""
    return sft_on_both_answers(tok, QUESTION)


EASY_AND_HARD = [{"id": "e", "question": QUESTION, "answer": "1", "level": 1},
                 {"id": "h", "question": QUESTION, "answer": "1", "level": 5}]


def groups_of_four(tok, policy, reward_model, **kwargs):
    """sample_groups on one easy and one hard problem, 4 samples each (seed 0: a mixed easy
    group): (batch, metrics, which of the easy group's samples are right)."""
    batch, metrics = sample_groups(policy, copy.deepcopy(policy), reward_model, tok,
                                   EASY_AND_HARD, group_size=4, temperature=1.0, top_k=None,
                                   max_new_tokens=6, batch_size=8,
                                   generator=torch.Generator().manual_seed(0), **kwargs)
    texts = [tok.decode(row[row != tok.pad_id].tolist()) for row in batch["tokens"]]
    right = torch.tensor([float(t.endswith("# Answer\n\n1")) for t in texts[:4]])
    assert 0 < right.sum() < 4
    return batch, metrics, right


def test_sample_groups_rewards_and_advantages(tok, policy):
    reward_model = RewardModel.from_policy(policy)          # zero head: every score is 0.5
    batch, metrics, right = groups_of_four(tok, policy, reward_model)
    expected = torch.cat([0.5 + right, torch.full((4,), 0.5)])
    close(batch["rewards"], expected)
    mask = batch["mask"]
    close(batch["advantages"], group_advantages(expected.view(2, 4)).view(8, 1) * mask)
    assert torch.equal(batch["advantages"][4:], torch.zeros_like(mask[4:]))   # hard: all 0.5
    close(metrics["reward"], expected.mean())
    close(metrics["frac_reward_zero_std"], 0.5)
    # policy == reference: k3 = 0 and nothing is clipped at the first update
    before = [p.detach().clone() for p in policy.parameters()]
    policy = copy.deepcopy(policy)
    stats = grpo_update(policy, torch.optim.SGD(policy.parameters(), lr=0.1), batch,
                        minibatch_size=8, epochs=1, clip=0.2, beta=0.04, max_grad_norm=1.0)
    assert abs(stats["kl"]) <= 1e-6 and stats["clip_ratio/region_mean"] == 0.0
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))


def test_without_a_reward_model_the_reward_is_the_answer_alone(tok, policy):
    """--no-process-reward: easy answers 1/0, hard problems 0, no PRM read (the outcome row)."""
    batch, metrics, right = groups_of_four(tok, policy, None)
    expected = torch.cat([right, torch.zeros(4)])
    close(batch["rewards"], expected)
    close(batch["advantages"], group_advantages(expected.view(2, 4)).view(8, 1) * batch["mask"])
    close(metrics["rewards/prm/mean"], 0.0)
    with pytest.raises(ValueError, match="reward model"):
        groups_of_four(tok, policy, None, process=True)
