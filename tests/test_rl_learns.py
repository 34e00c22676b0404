"""Each RL algorithm must solve a small task: a policy that answers a question with "1" (right)
or "2" (wrong) half the time each. PPO with the final-answer reward, one DPO iteration on
(right, wrong) pairs, and one ReST-EM iteration on the right samples must each lift P(right)
from 0.5 to at least 0.9 within seconds; an objective with its sign flipped, a reward read at
the wrong token or a reference that moves with the policy would not.

Rollouts stop after the answer's last token (max_new_tokens = its length), so nothing depends
on the EOS token, which PPO does not train.
"""
import copy
import random

import pytest
import torch

from data.format import format_prompt
from e2h import dpo, rest
from e2h.model import ModelArgs, RewardModel, Transformer
from e2h.ppo import ppo_update
from e2h.rollout import rollout
from e2h.sequences import sequence_logps
from e2h.sft import encode_sft, loss_fn, sft_batch
from e2h.tokenizer import train_tokenizer

QUESTION = "Pick the answer."
RIGHT, WRONG = "# Answer\n\n1", "# Answer\n\n2"
PROBLEM = {"id": "0", "question": QUESTION, "answer": "1", "level": 1}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = [format_prompt(QUESTION) + c for c in (RIGHT, WRONG)] * 3
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "tokenizer.json", vocab_size=60)


@pytest.fixture(scope="module")
def start(tok):
    """The starting policy: SFT on both answers, so each has probability ~0.5."""
    torch.manual_seed(0)
    policy = Transformer(ModelArgs.from_name("tiny", vocab_size=tok.vocab_size))
    batch = sft_batch([encode_sft(tok, {"question": QUESTION, "completion": c})
                       for c in (RIGHT, WRONG)], tok.pad_id)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    for _ in range(40):
        loss, _ = loss_fn(policy, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert 0.4 < p_right(policy, tok) < 0.6
    return policy


def p_right(policy, tok) -> float:
    """P(RIGHT) / (P(RIGHT) + P(WRONG)) under the policy, from exact sequence log-probs."""
    encoded = [encode_sft(tok, {"question": QUESTION, "completion": c}) for c in (RIGHT, WRONG)]
    batch = sft_batch([(t[:-1], m[:-1]) for t, m in encoded], tok.pad_id)   # without EOS
    with torch.no_grad():
        p = sequence_logps(policy, batch["tokens"], batch["loss_mask"]).exp()
    return (p[0] / p.sum()).item()


def answer_tokens(tok) -> int:
    return len(tok.encode(RIGHT))


def test_ppo_learns_the_right_answer(tok, start):
    policy = copy.deepcopy(start)
    reference = copy.deepcopy(start).requires_grad_(False)
    value = RewardModel.from_policy(start)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (policy, value)]
    for k in range(10):
        batch, _ = rollout(policy, reference, value, None, tok, [PROBLEM] * 16,
                           temperature=1.0, top_k=None, max_new_tokens=answer_tokens(tok),
                           batch_size=16, kl_coef=0.01, process_reward=False,
                           generator=torch.Generator().manual_seed(k))
        ppo_update(policy, value, *opts, batch, minibatch_size=8, epochs=2, clip=0.2,
                   value_clip=0.2, vf_coef=0.1, max_grad_norm=1.0,
                   generator=torch.Generator().manual_seed(k))
    assert p_right(policy, tok) > 0.9


def test_dpo_learns_the_right_answer(tok, start):
    policy = copy.deepcopy(start)
    evaluator = RewardModel.from_policy(start)        # zero head: every step scores 0.5
    examples, metrics = dpo.dpo_iteration_data(
        policy, evaluator, tok, [PROBLEM], random.Random(0), n=8, temperature=1.0, top_k=None,
        max_new_tokens=answer_tokens(tok), gap=0.5, max_pairs=3, hard_gap=None, batch_size=8,
        generator=torch.Generator().manual_seed(0))
    assert metrics["dpo/pairs"] == 1                  # two distinct answers: one pair
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    batch = dpo.collate_pairs(examples, tok.pad_id)
    for _ in range(30):
        loss, _ = dpo.loss_fn(policy, batch, beta=0.1)
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert p_right(policy, tok) > 0.9


def test_rest_learns_the_right_answer(tok, start):
    policy = copy.deepcopy(start)
    records, metrics = rest.rest_iteration_data(
        policy, tok, [PROBLEM], random.Random(0), n=8, temperature=1.0, top_k=None,
        max_new_tokens=answer_tokens(tok), max_per_problem=10, hard_threshold=None,
        batch_size=8, generator=torch.Generator().manual_seed(0))
    assert [r["completion"] for r in records] == [RIGHT]   # the right one, once
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    batch = sft_batch([encode_sft(tok, r) for r in records], tok.pad_id)
    for _ in range(40):
        loss, _ = loss_fn(policy, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert p_right(policy, tok) > 0.9
