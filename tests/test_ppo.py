"""PPO pieces against hand-computed values (fp32, 1e-6), then one tiny rollout + update."""
import copy
import math

import pytest
import torch

from data.format import format_prompt, format_solution
from e2h.ppo import (assemble_rewards, gae, kl_penalty, masked_mean, min_process_rewards,
                     normalize_rewards, ppo_policy_loss, ppo_update, ppo_value_loss, rollout,
                     terminal_reward, whiten)
from e2h.model import ModelArgs, RewardModel, Transformer
from e2h.sample import generate
from e2h.sequences import token_logps, trajectories
from e2h.tokenizer import train_tokenizer

TOL = dict(rtol=0, atol=1e-6)


def close(actual, expected):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float32),
                               torch.tensor(expected, dtype=torch.float32), **TOL)

# ----------------------------------------------------------------------------- GAE


def test_gae_gamma_09_lambda_08_by_hand():
    # row 0: grid [prompt, c1, c2, c3]; row 1: [c1, c2, pad, pad] (ended early)
    rewards = torch.tensor([[0.0, 1.0, 0.0, 2.0], [0.5, 1.0, 7.0, 0.0]])
    values = torch.tensor([[9.0, 0.5, 1.0, 1.5], [0.2, 0.4, 3.0, 3.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0, backwards (g*l = 0.72), the state after c3 is terminal:
    a3 = 2.0 - 1.5                                  # 0.5
    a2 = (0.0 + 0.9 * 1.5 - 1.0) + 0.72 * a3        # 0.35 + 0.36 = 0.71
    a1 = (1.0 + 0.9 * 1.0 - 0.5) + 0.72 * a2        # 1.4 + 0.5112 = 1.9112
    # row 1: the pad's reward 7.0 and value 3.0 must not leak into c2
    b1 = 1.0 - 0.4                                  # 0.6
    b0 = (0.5 + 0.9 * 0.4 - 0.2) + 0.72 * b1        # 0.66 + 0.432 = 1.092
    close(advantages, [[0.0, a1, a2, a3], [b0, b1, 0.0, 0.0]])
    close(returns, [[0.0, a1 + 0.5, a2 + 1.0, a3 + 1.5], [b0 + 0.2, b1 + 0.4, 0.0, 0.0]])


def test_gae_gamma_lambda_1_returns_are_reward_to_go():
    rewards = torch.tensor([[0.1, -0.2, 0.3, 1.0]])
    values = torch.tensor([[0.4, 0.1, -0.3, 0.2]])
    advantages, returns = gae(rewards, values, torch.ones(1, 4), gamma=1.0, lam=1.0)
    close(returns, [[1.2, 1.1, 1.3, 1.0]])          # 0.1-0.2+0.3+1, -0.2+0.3+1, 0.3+1, 1
    close(advantages, [[1.2 - 0.4, 1.1 - 0.1, 1.3 + 0.3, 1.0 - 0.2]])

# ----------------------------------------------------------------------------- policy loss


def test_policy_loss_clipped_high():
    # ratio 1.5 > 1 + 0.2 with A = 2: -A * ratio = -3.0, -A * 1.2 = -2.4; max -> -2.4 (clipped)
    logps = torch.tensor([[math.log(1.5) - 1.0]], requires_grad=True)
    losses, metrics = ppo_policy_loss(logps, torch.tensor([[-1.0]]), torch.tensor([[2.0]]),
                                      torch.ones(1, 1), clip=0.2)
    close(losses, [[-2.4]])
    close(metrics["policy/clipfrac_avg"], 1.0)
    close(metrics["policy/approxkl_avg"], 0.5 * math.log(1.5) ** 2)   # 0.5 * (log ratio)^2
    losses.sum().backward()
    close(logps.grad, [[0.0]])                     # clipped: no push beyond 1 + clip


def test_policy_loss_clipped_low():
    # ratio 0.5 < 1 - 0.2 with A = -2: -A * ratio = 1.0, -A * 0.8 = 1.6; max -> 1.6 (clipped)
    logps = torch.tensor([[math.log(0.5)]], requires_grad=True)
    losses, metrics = ppo_policy_loss(logps, torch.tensor([[0.0]]), torch.tensor([[-2.0]]),
                                      torch.ones(1, 1), clip=0.2)
    close(losses, [[1.6]])
    close(metrics["policy/clipfrac_avg"], 1.0)
    losses.sum().backward()
    close(logps.grad, [[0.0]])


def test_policy_loss_unclipped_and_masked():
    # token 0: ratio 1.1 inside [0.8, 1.2], A = 2: loss -2.2, gradient -A * ratio = -2.2
    # token 1: ratio 1.5 but A = -3: -A * ratio = 4.5 > -A * 1.2 = 3.6, the unclipped term wins
    # token 2: masked, contributes nothing to losses or metrics
    logps = torch.tensor([[math.log(1.1), math.log(1.5), 5.0]], requires_grad=True)
    losses, metrics = ppo_policy_loss(logps, torch.zeros(1, 3), torch.tensor([[2.0, -3.0, 9.0]]),
                                      torch.tensor([[1.0, 1.0, 0.0]]), clip=0.2)
    close(losses, [[-2.2, 4.5, 0.0]])
    close(metrics["policy/clipfrac_avg"], 0.0)
    close(metrics["policy/approxkl_avg"], 0.5 * (math.log(1.1) ** 2 + math.log(1.5) ** 2) / 2)
    losses.sum().backward()
    close(logps.grad, [[-2.2, 4.5, 0.0]])          # d(-A * ratio)/d logps = -A * ratio

# ----------------------------------------------------------------------------- value loss


def test_value_loss_clip():
    values = torch.tensor([[1.5, 1.5, 1.1]])
    old_values = torch.tensor([[1.0, 1.0, 1.0]])
    returns = torch.tensor([[2.0, 1.0, 2.0]])
    losses, metrics = ppo_value_loss(values, old_values, returns, torch.ones(1, 3), clip=0.2)
    # 0: clipped value 1.0 + 0.2 = 1.2: (1.2 - 2)^2 = 0.64 > (1.5 - 2)^2 = 0.25 -> 0.5 * 0.64
    # 1: (1.2 - 1)^2 = 0.04 < (1.5 - 1)^2 = 0.25 -> 0.5 * 0.25, not clipped
    # 2: inside the clip range, both (1.1 - 2)^2 = 0.81 -> 0.5 * 0.81
    close(losses, [[0.32, 0.125, 0.405]])
    close(metrics["val/clipfrac_avg"], 1 / 3)

# ----------------------------------------------------------------------------- rewards


def test_kl_penalty_is_clamped_k1():
    logps = torch.tensor([[-1.0, -2.0, -0.5]])
    ref_logps = torch.tensor([[-1.5, -1.0, -0.5]])
    # differences 0.5, -1.0, 0.0 -> clamped 0.5, 0, 0 -> times -0.1
    close(kl_penalty(logps, ref_logps, kl_coef=0.1), [[-0.05, 0.0, 0.0]])


def test_min_process_rewards_by_hand():
    # u = 0.5, K = 4, bonus 0.25 / 4 = 0.0625 per step
    # p 0.9 >= m 0.5: r 0          | p 0.4 < 0.5: r -0.1, m 0.4
    # p 0.6 >= 0.4: r 0            | p 0.2 < 0.4: r -0.2, m 0.2
    rewards = min_process_rewards([0.9, 0.4, 0.6, 0.2], u=0.5, step_bonus=0.25)
    close(rewards, [0.0625, -0.0375, 0.0625, -0.1375])
    close(sum(rewards), min(0.2, 0.5) - 0.5 + 0.25)      # telescopes to min(min p, u) - u + bonus
    assert min_process_rewards([], u=0.5, step_bonus=0.25) == []


@pytest.mark.parametrize("completion, truth, expected", [
    ("2 + 3 = 5\n\n# Answer\n\n5", "5", 1.0),       # easy, correct
    ("2 + 3 = 6\n\n# Answer\n\n6", "5", 0.0),       # easy, wrong
    ("2 + 3 = 5\n\n# Answer\n\n5", None, 0.25),     # hard: the constant, whatever the answer
    ("2 + 3 = 5", "5", -1.0),                       # no "# Answer": 0 - penalty 1
    ("2 + 3 = 5\n\n# Answer\n\n", "5", -1.0),       # heading without an answer
    ("2 + 3 = 5", None, 0.25 - 1.0),                # hard and no answer section
])
def test_terminal_reward(completion, truth, expected):
    close(terminal_reward(completion, truth, hard_reward=0.25, format_penalty=1.0), expected)


def test_assemble_rewards_places_process_and_terminal_rewards():
    kl_rewards = torch.tensor([[0.0, -0.01, -0.02, 0.0, -0.03], [0.0, 0.0, -0.04, -0.05, 0.0]])
    step_probs, step_positions = [[0.9, 0.4], []], [[1, 3], []]
    terminal, last = [1.0, -0.75], [4, 3]
    rewards, scores = assemble_rewards(kl_rewards, step_probs, step_positions, terminal, last,
                                       u=0.5, step_bonus=0.25)
    # row 0: K = 2, bonus 0.125; r = [0 + 0.125, (0.4 - 0.5) + 0.125] at grid 1 and 3
    close(rewards, [[0.0, -0.01 + 0.125, -0.02, 0.025, -0.03 + 1.0],
                    [0.0, 0.0, -0.04, -0.05 - 0.75, 0.0]])
    close(scores, [0.125 + 0.025 + 1.0, -0.75])
    outcome_only, scores = assemble_rewards(kl_rewards, step_probs, step_positions, terminal,
                                            last, process_reward=False)
    expected = kl_rewards.clone()
    expected[0, 4] += 1.0
    expected[1, 3] += -0.75
    close(outcome_only, expected.tolist())
    close(scores, [1.0, -0.75])


def test_normalize_rewards_scales_by_std_and_whiten_centres():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    std = math.sqrt(2 / 3)                          # mean 2, var (1 + 0 + 1) / 3
    # r / std: the spread becomes 1, nothing is added; the masked 100 is ignored
    close(normalize_rewards(x, mask), [[1 / std, 2 / std, 3 / std, 0.0]])
    close(whiten(x, mask), [[-1 / std, 0.0, 1 / std, 0.0]])


def test_normalized_rewards_carry_no_reward_for_length():
    # two solutions with the same terminal reward, 3 and 5 tokens long: the same return at
    # their first token (a per-token shift, such as + mean - mean / std, would differ by 2 x it)
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    normed = normalize_rewards(rewards, mask)
    _, returns = gae(normed, torch.zeros(2, 5), mask, gamma=1.0, lam=1.0)
    std = math.sqrt(0.25 - 0.25 ** 2)               # 2 ones among 8 tokens: mean 1/4
    close(returns[:, 0], [1 / std, 1 / std])


def test_no_completion_tokens_is_an_error():
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="sequence 1 has no completion tokens"):
        ppo_policy_loss(torch.zeros(2, 2), torch.zeros(2, 2), torch.ones(2, 2), mask, 0.2)
    with pytest.raises(ValueError, match="sequence 1 has no completion tokens"):
        ppo_value_loss(torch.zeros(2, 2), torch.zeros(2, 2), torch.ones(2, 2), mask, 0.2)
    with pytest.raises(ValueError, match="no completion tokens"):
        masked_mean(torch.ones(2, 2), torch.zeros(2, 2))

# ----------------------------------------------------------------------------- with a model


PROBLEMS = [{"id": str(i), "question": f"Start at {i}. Add {i + 2}.", "answer": str(2 * i + 2),
             "level": 1 + i % 5} for i in range(4)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    corpus = [format_prompt(p["question"]) + format_solution([f"{p['question'][9:]} = x"],
                                                              p["answer"]) for p in PROBLEMS]
    return train_tokenizer(corpus * 5, tmp_path_factory.mktemp("tok") / "tokenizer.json",
                           vocab_size=80)


@pytest.fixture(scope="module")
def models(tok):
    torch.manual_seed(0)
    policy = Transformer(ModelArgs.from_name("tiny", vocab_size=tok.vocab_size))
    reward_model = RewardModel.from_policy(policy)
    torch.nn.init.normal_(reward_model.score.weight, std=0.5)   # a PRM with opinions
    return policy, reward_model


def test_sampled_logps_equal_training_forward_at_same_temperature(tok, models):
    policy, _ = models
    prompts = [tok.encode(format_prompt(p["question"]), bos=True) for p in PROBLEMS]
    samples = generate(policy, prompts, 40, temperature=0.7, top_k=10, eos_id=tok.eos_id,
                       generator=torch.Generator().manual_seed(1))
    tokens, mask, logps, *_ = trajectories(tok, prompts, samples)
    ended = [s.tokens[-1] == tok.eos_id for s in samples]
    assert any(ended) and not all(ended)            # seed 1: both kinds of rollout
    # EOS is input but not trained: one mask entry per completion token before it
    assert mask.sum(-1).tolist() == [len(s.tokens) - e for s, e in zip(samples, ended)]
    with torch.no_grad():
        recomputed = token_logps(policy(tokens), tokens, temperature=0.7)   # (B, T-1)
    torch.testing.assert_close(recomputed * mask, logps, **TOL)


def test_rollout_then_update(tok, models):
    policy, reward_model = models
    policy = copy.deepcopy(policy)
    ref_model, value_model = copy.deepcopy(policy), copy.deepcopy(reward_model)
    batch, metrics = rollout(policy, ref_model, value_model, reward_model, tok, PROBLEMS,
                             temperature=0.7, top_k=10, max_new_tokens=12, kl_coef=0.01,
                             process_reward=True, batch_size=16,
                             generator=torch.Generator().manual_seed(1))
    mask = batch["mask"]
    assert mask.shape == (4, batch["tokens"].shape[1] - 1)
    close(masked_mean(batch["advantages"], mask), 0.0)          # whitened over the batch
    close(masked_mean(batch["advantages"] ** 2, mask), 1.0)
    # policy == reference: the KL is a sum over the rollout's tokens, 1e-6 budget per token
    assert abs(metrics["objective/kl"]) <= 1e-6 * metrics["rollout/length"]
    before = [p.detach().clone() for p in policy.parameters()]
    stats = ppo_update(policy, value_model, torch.optim.SGD(policy.parameters(), lr=0.1),
                       torch.optim.SGD(value_model.parameters(), lr=0.1), batch,
                       minibatch_size=4, microbatch_size=2, epochs=1, clip=0.2,
                       value_clip=0.2, vf_coef=0.1, max_grad_norm=1.0)
    # one minibatch, first step: the policy is the sampling policy, so the ratio is 1
    close(stats["policy/clipfrac_avg"], 0.0)
    close(stats["policy/approxkl_avg"], 0.0)
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))


def test_value_warmup_update_moves_the_value_model_only(tok, models):
    policy, reward_model = (copy.deepcopy(m) for m in models)
    ref_model, value_model = copy.deepcopy(policy), copy.deepcopy(reward_model)
    batch, _ = rollout(policy, ref_model, value_model, reward_model, tok, PROBLEMS,
                       temperature=0.7, top_k=10, max_new_tokens=12, kl_coef=0.01,
                       process_reward=True, batch_size=16, generator=torch.Generator().manual_seed(1))
    policy_before = [p.detach().clone() for p in policy.parameters()]
    value_before = [p.detach().clone() for p in value_model.parameters()]
    policy_opt = torch.optim.SGD(policy.parameters(), lr=0.1)
    stats = ppo_update(policy, value_model, policy_opt,
                       torch.optim.SGD(value_model.parameters(), lr=0.1), batch,
                       minibatch_size=4, microbatch_size=2, epochs=1, clip=0.2,
                       value_clip=0.2, vf_coef=0.1, max_grad_norm=1.0, train_policy=False)
    assert all(torch.equal(a, b) for a, b in zip(policy_before, policy.parameters()))
    assert all(p.grad is None for p in policy.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(value_before, value_model.parameters()))
    assert stats["policy/grad_norm"] == 0.0 and stats["val/grad_norm"] > 0
