"""Where every reward, value and KL term of a rollout sits, on a hand-made rollout.

Stand-in models whose outputs depend only on the position make each read position visible: the
reference gives uniform logits (log-prob -log V for every token), the value model 0.1 * t at
position t, the reward model p(t) = sigmoid(0.5 t - 10). Two rollouts of one solution text, on
an easy problem (its answer may be used) and on a hard one (it may not). Grid index g holds
token g + 1 (module docstring of e2h/ppo.py); the scoring is `e2h.ppo.score_rollouts`.
"""
import math

import pytest
import torch

from data.format import format_prompt
from e2h.ppo import Rewards, score_rollouts
from e2h.sample import Sample
from e2h.tokenizer import train_tokenizer

QUESTION = "Start at 3. Add 4."
SOLUTION = "3 + 4 = 7\n\n# Answer\n\n7"
KL_COEF = 0.1


class ByPosition(torch.nn.Module):
    """out[b, t] = fn(t), whatever the tokens."""

    def __init__(self, fn):
        super().__init__()
        self.fn, self.anchor = fn, torch.nn.Parameter(torch.zeros(1))

    def forward(self, tokens):
        B, T = tokens.shape
        return self.fn(torch.arange(T, dtype=torch.float32).expand(B, T))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tok = train_tokenizer([format_prompt(QUESTION) + SOLUTION] * 4,
                          tmp_path_factory.mktemp("tok") / "tokenizer.json", vocab_size=70)
    V = tok.vocab_size
    prompt = tok.encode(format_prompt(QUESTION), bos=True)
    ids, offsets = tok.encode_with_offsets(SOLUTION)
    delim = next(c for c, (start, _) in enumerate(offsets) if start == SOLUTION.index("\n\n"))
    # sampled log-probs: 0.3 above the reference on even tokens, 0.2 below on odd ones
    d = [0.3 if c % 2 == 0 else -0.2 for c in range(len(ids))]
    sample = Sample(ids + [tok.eos_id], [-math.log(V) + x for x in d] + [-0.1], True)
    problems = [{"id": "e", "question": QUESTION, "answer": "7", "level": 2},
                {"id": "h", "question": QUESTION, "answer": "7", "level": 4}]
    models = dict(policy=ByPosition(lambda t: t), ref_model=ByPosition(lambda t: torch.zeros(*t.shape, V)),
                  value_model=ByPosition(lambda t: 0.1 * t),
                  reward_model=ByPosition(lambda t: 0.5 * t - 10.0))
    batch, metrics = score_rollouts(**models, tok=tok, problems=problems, prompts=[prompt] * 2,
                                    samples=[sample, sample], temperature=1.0, kl_coef=KL_COEF,
                                    process_reward=True, batch_size=2)
    def score(**kw):   # the same two rollouts, other reward constants
        return score_rollouts(**models, tok=tok, problems=problems, prompts=[prompt] * 2,
                              samples=[sample, sample], temperature=1.0, kl_coef=KL_COEF,
                              process_reward=True, batch_size=2, **kw)
    return dict(batch=batch, metrics=metrics, P=len(prompt), n=len(ids), delim=delim, d=d,
                score=score)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def expected_rewards(s, terminal, u=0.5, step_bonus=0.25):
    P, n = s["P"], s["n"]
    row = [0.0] * (P + n)                             # grid length = P + (n + 1) - 1
    for c in range(n):                                # the KL term on every trained token
        row[P - 1 + c] += -KL_COEF * max(s["d"][c], 0.0)
    p = sigmoid(0.5 * (P + s["delim"]) - 10.0)         # read at the delimiter token itself
    row[P - 1 + s["delim"]] += (min(p, u) - u) + step_bonus   # min-shaped, one step: bonus / 1
    row[P - 2 + n] += terminal                        # on the last trained token
    return row


def test_mask_covers_the_completion_without_eos(setup):
    P, n = setup["P"], setup["n"]
    mask = [0.0] * (P - 1) + [1.0] * n + [0.0]        # EOS (grid P - 1 + n) is not trained
    torch.testing.assert_close(setup["batch"]["mask"], torch.tensor([mask, mask]))


def test_each_reward_sits_on_its_token(setup):
    expected = [expected_rewards(setup, 1.0),          # easy and right: the grader's 1
                expected_rewards(setup, 0.25)]         # hard: the constant, answer unused
    torch.testing.assert_close(setup["batch"]["rewards"], torch.tensor(expected),
                               rtol=0, atol=1e-6)


def test_values_are_read_before_the_action(setup):
    P, n = setup["P"], setup["n"]
    row = [0.1 * g if P - 1 <= g < P - 1 + n else 0.0 for g in range(P + n)]
    torch.testing.assert_close(setup["batch"]["values"], torch.tensor([row, row]),
                               rtol=0, atol=1e-6)


def test_advantages_normalize_rewards_then_gae_then_whiten(setup):
    P, n = setup["P"], setup["n"]
    rewards = [expected_rewards(setup, 1.0), expected_rewards(setup, 0.25)]
    cells = [(b, g) for b in range(2) for g in range(P - 1, P - 1 + n)]
    flat = [rewards[b][g] for b, g in cells]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((x - mean) ** 2 for x in flat) / len(flat))
    normed = {(b, g): rewards[b][g] / std for b, g in cells}                 # scale only
    adv = {}
    for b in range(2):                                # gamma = lambda = 1: reward-to-go - V
        to_go = 0.0
        for g in reversed(range(P - 1, P - 1 + n)):
            to_go += normed[b, g]
            adv[b, g] = to_go - 0.1 * g
    a_mean = sum(adv.values()) / len(adv)
    a_std = math.sqrt(sum((x - a_mean) ** 2 for x in adv.values()) / len(adv))
    expected = torch.zeros(2, P + n)
    for (b, g), a in adv.items():
        expected[b, g] = (a - a_mean) / a_std
    torch.testing.assert_close(setup["batch"]["advantages"], expected, rtol=0, atol=1e-5)


def test_metrics(setup):
    m, n, d = setup["metrics"], setup["n"], setup["d"]
    assert m["answer/accuracy"] == 1.0 and m["answer/format"] == 1.0
    assert m["objective/kl"] == pytest.approx(sum(d), abs=1e-5)        # unclamped, per rollout
    assert m["objective/non_score_reward"] == pytest.approx(
        -KL_COEF * sum(max(x, 0.0) for x in d), abs=1e-6)
    assert m["rollout/length"] == n


def test_reward_constants_reach_their_terms(setup):
    shaping = Rewards(u=0.4, step_bonus=0.1, hard_reward=0.3, format_penalty=0.5, gamma=0.9,
                      lam=0.8)
    batch, _ = setup["score"](shaping=shaping)
    P, n = setup["P"], setup["n"]
    rewards = [expected_rewards(setup, 1.0, u=0.4, step_bonus=0.1),     # easy and right
               expected_rewards(setup, 0.3, u=0.4, step_bonus=0.1)]     # hard: hard_reward
    torch.testing.assert_close(batch["rewards"], torch.tensor(rewards), rtol=0, atol=1e-6)
    cells = [(b, g) for b in range(2) for g in range(P - 1, P - 1 + n)]
    flat = [rewards[b][g] for b, g in cells]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((x - mean) ** 2 for x in flat) / len(flat))
    returns = torch.zeros(2, P + n)
    for b in range(2):                                # GAE by hand: gamma 0.9, lambda 0.8
        a, v_next = 0.0, 0.0                          # terminal after the last trained token
        for g in reversed(range(P - 1, P - 1 + n)):
            delta = rewards[b][g] / std + 0.9 * v_next - 0.1 * g
            a = delta + 0.9 * 0.8 * a
            returns[b, g], v_next = a + 0.1 * g, 0.1 * g
    torch.testing.assert_close(batch["returns"], returns, rtol=0, atol=1e-5)
