"""Each RL algorithm must solve a small task: a policy that answers a question with "1" (right)
or "2" (wrong) half the time each. PPO with the final-answer reward, one DPO iteration on
(right, wrong) pairs, and one ReST-EM iteration on the right samples must each lift P(right)
from 0.5 to at least 0.9 within seconds; an objective with its sign flipped, a reward read at
the wrong token or a reference that moves with the policy would not.

Rollouts stop after the answer's last token (max_new_tokens = its length), so nothing depends
on the EOS token, which PPO does not train.

GRPO learns from a PRM alone, on two hard questions the PRM scores at different levels
(``OpinionatedPRM``): only a baseline from each problem's own group takes that level away. With
the advantage's sign flipped, P(right) falls to about 0.1; with each group's mean and std taken
from the other problem's group, it stays near 0.6 (both checked once by planting the bug).
"""
import copy
import random

import pytest
import torch

from data.format import format_prompt
from e2h import dpo, grpo, rest
from e2h.defaults import EMBEDDED
from e2h.model import ModelArgs, RewardModel, Transformer
from e2h.ppo import ppo_update, rollout
from e2h.sample import generate
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


def sft_on_both_answers(tok, question=QUESTION):
    """A tiny policy after 40 SFT steps on RIGHT and WRONG: each answer about half the time."""
    torch.manual_seed(0)
    policy = Transformer(ModelArgs.from_name("tiny", vocab_size=tok.vocab_size))
    batch = sft_batch([encode_sft(tok, {"question": question, "completion": c})
                       for c in (RIGHT, WRONG)], tok.pad_id)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    for _ in range(40):
        loss, _ = loss_fn(policy, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return policy


@pytest.fixture(scope="module")
def start(tok):
    """The starting policy: SFT on both answers, so each has probability ~0.5."""
    policy = sft_on_both_answers(tok)
    assert 0.4 < p_right(policy, tok) < 0.6
    return policy


def p_right(policy, tok, question: str = QUESTION) -> float:
    """P(RIGHT) / (P(RIGHT) + P(WRONG)) under the policy, from exact sequence log-probs."""
    encoded = [encode_sft(tok, {"question": question, "completion": c}) for c in (RIGHT, WRONG)]
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


def greedy_answer(policy, tok) -> tuple[str, bool]:
    """The policy's greedy completion of QUESTION and whether it ended with EOS."""
    prompt = tok.encode(format_prompt(QUESTION), bos=True)
    s = generate(policy, [prompt], 12, temperature=0.0, eos_id=tok.eos_id)[0]
    return tok.decode(list(s.tokens)), s.finished


def test_dpo_keeps_the_answers_form_with_the_nll_term(tok, start):
    """Plain DPO at a large step raises the token "1" wherever it stands, not only after
    "# Answer": its greedy output becomes "1" alone, the form lost, although P(right) is 1 (the
    token-marginal drift bench/README.md measures on the embedded default). The chosen side's
    NLL (--rpo-alpha, on in the embedded default) keeps the form."""
    alpha = EMBEDDED["dpo"]["rpo_alpha"]
    assert alpha > 0
    outputs = {}
    for a in (0.0, alpha):
        policy = copy.deepcopy(start)
        examples, _ = dpo.dpo_iteration_data(
            policy, RewardModel.from_policy(start), tok, [PROBLEM], random.Random(0), n=8,
            temperature=1.0, top_k=None, max_new_tokens=12, gap=0.5, max_pairs=3,
            hard_gap=None, batch_size=8, generator=torch.Generator().manual_seed(0))
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-2)
        batch = dpo.collate_pairs(examples, tok.pad_id)
        for _ in range(30):
            loss, _ = dpo.loss_fn(policy, batch, beta=0.1, rpo_alpha=a)
            loss.backward()
            opt.step()
            opt.zero_grad()
        assert p_right(policy, tok) > 0.99
        outputs[a] = greedy_answer(policy, tok)
    assert not outputs[0.0][0].startswith("# Answer")   # degenerate ("1" here): form gone
    assert outputs[alpha] == (RIGHT, True)


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


# ----------------------------------------------------------------------------- grpo

QUESTIONS = ("Pick the answer.", "Pick an answer, twice.")


@pytest.fixture(scope="module")
def two_questions(tmp_path_factory):
    """A tokenizer of both questions and a policy SFT'd on both answers of each (P ~0.5)."""
    texts = [format_prompt(q) + c for q in QUESTIONS for c in (RIGHT, WRONG)] * 3
    tok = train_tokenizer(texts, tmp_path_factory.mktemp("tok2") / "tokenizer.json",
                          vocab_size=70)
    torch.manual_seed(0)
    policy = Transformer(ModelArgs.from_name("tiny", vocab_size=tok.vocab_size))
    batch = sft_batch([encode_sft(tok, {"question": q, "completion": c})
                       for q in QUESTIONS for c in (RIGHT, WRONG)], tok.pad_id)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    for _ in range(40):
        loss, _ = loss_fn(policy, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return tok, policy


class OpinionatedPRM(torch.nn.Module):
    """Logit +0.5 on the token "1", -0.5 on "2", +3 on every position of the second question's
    rows: P = 0.62 / 0.38 on the first question, 0.97 / 0.92 on the second."""

    def __init__(self, tok):
        super().__init__()
        self.one, self.two = tok.encode("1")[-1], tok.encode("2")[-1]
        first = set(tok.encode(format_prompt(QUESTIONS[0])))
        self.marker = next(t for t in tok.encode(format_prompt(QUESTIONS[1])) if t not in first)
        self.unused = torch.nn.Parameter(torch.zeros(1))    # gives the module a device

    def forward(self, tokens):                                              # (B, T) -> (B, T)
        answer = 0.5 * ((tokens == self.one).float() - (tokens == self.two).float())
        return answer + 3.0 * (tokens == self.marker).any(-1, keepdim=True).float()


def test_grpo_learns_the_answer_the_prm_prefers(two_questions):
    tok, start = two_questions
    policy = copy.deepcopy(start)
    reference = copy.deepcopy(start).requires_grad_(False)
    problems = [{"id": str(i), "question": q, "answer": "1", "level": 5}    # hard: PRM alone
                for i, q in enumerate(QUESTIONS)]
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    for k in range(10):
        batch, _ = grpo.sample_groups(policy, reference, OpinionatedPRM(tok), tok, problems,
                                      group_size=8, temperature=1.0, top_k=None,
                                      max_new_tokens=answer_tokens(tok), batch_size=16,
                                      generator=torch.Generator().manual_seed(k))
        grpo.grpo_update(policy, opt, batch, minibatch_size=8, epochs=2, clip=0.2, beta=0.01,
                         max_grad_norm=1.0, generator=torch.Generator().manual_seed(k))
    for q in QUESTIONS:
        assert p_right(policy, tok, q) > 0.9, q
