"""DPO loss and rewards by hand (beta 0.5, fp32, 1e-6), pair rules, cached reference log-probs."""
import copy
import math
import random

import pytest
import torch

import e2h.dpo as dpo
from data.format import format_prompt
from e2h.dpo import build_pairs, cache_ref_logps, collate_pairs, dpo_loss, loss_fn, pair_score
from e2h.sequences import sequence_logps
from e2h.model import ModelArgs, Transformer
from e2h.tokenizer import train_tokenizer

TOL = dict(rtol=0, atol=1e-6)


def close(actual, expected):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float32),
                               torch.tensor(expected, dtype=torch.float32), **TOL)


def test_dpo_loss_and_rewards_by_hand():
    chosen, rejected = torch.tensor([-10.0, -8.0]), torch.tensor([-12.0, -7.0])
    ref_chosen, ref_rejected = torch.tensor([-11.0, -8.0]), torch.tensor([-11.0, -9.0])
    losses, metrics = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.5)
    # pair 0: chosen 0.5 * (-10 + 11) = 0.5, rejected 0.5 * (-12 + 11) = -0.5, margin 1
    # pair 1: chosen 0.5 * (-8 + 8) = 0.0, rejected 0.5 * (-7 + 9) = 1.0, margin -1
    # -log sigmoid(m) = log(1 + exp(-m))
    close(losses, [math.log1p(math.exp(-1.0)), math.log1p(math.exp(1.0))])
    close(metrics["rewards/chosen"], (0.5 + 0.0) / 2)
    close(metrics["rewards/rejected"], (-0.5 + 1.0) / 2)
    close(metrics["rewards/margins"], (1.0 - 1.0) / 2)
    close(metrics["rewards/accuracies"], 0.5)


def test_dpo_loss_gradient_raises_chosen_lowers_rejected():
    chosen = torch.tensor([-10.0], requires_grad=True)
    rejected = torch.tensor([-12.0], requires_grad=True)
    losses, _ = dpo_loss(chosen, rejected, torch.tensor([-11.0]), torch.tensor([-11.0]), beta=0.5)
    losses.sum().backward()
    # d/d chosen of -log sigmoid(beta * m) = -beta * sigmoid(-beta * m) with beta * m = 1
    g = 0.5 * (1 / (1 + math.exp(1.0)))
    close(chosen.grad, [-g])
    close(rejected.grad, [g])

# ----------------------------------------------------------------------------- pairs


def sample(pid, text, prm, correct, level=2):
    return {"id": pid, "question": f"q{pid}", "completion": text, "level": level,
            "correct": correct, "step_scores": [prm, 1.0], "outcome_score": None}


def test_pair_score():
    # min(0.6, 1.0) = 0.6, + 1 for a correct answer only when the answer may be used
    close(pair_score(sample("a", "x", 0.6, True), answer_known=True), 1.6)
    close(pair_score(sample("a", "x", 0.6, True), answer_known=False), 0.6)
    close(pair_score(sample("a", "x", 0.6, False), answer_known=True), 0.6)
    no_steps = {"step_scores": [], "outcome_score": 0.7, "correct": False}
    close(pair_score(no_steps, answer_known=True), 0.7)      # no step: the outcome score
    nothing = {"step_scores": [], "outcome_score": None, "correct": False}
    assert pair_score(nothing, answer_known=True) == 0.0


def test_pairs_need_a_gap_above_one():
    group = [sample("p", "A", 0.9, True),     # 1.9
             sample("p", "B", 0.3, True),     # 1.3
             sample("p", "C", 0.5, False),    # 0.5
             sample("p", "D", 0.95, False)]   # 0.95
    # gaps: A-C 1.4 (pair), A-D 0.95, B-C 0.8, B-D 0.35: only (A, C)
    pairs = build_pairs(group, gap=1.0, max_pairs=3, rng=random.Random(0))
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("A", "C")]
    assert (pairs[0]["chosen_score"], pairs[0]["rejected_score"]) == pytest.approx((1.9, 0.5))


def test_ties_and_exact_gaps_never_pair():
    group = [sample("p", "A", 0.5, True), sample("p", "B", 0.5, False),   # 1.5 - 0.5 = 1.0
             sample("p", "C", 0.5, False)]                               # C ties B
    assert build_pairs(group, gap=1.0, max_pairs=3, rng=random.Random(0)) == []


def test_at_most_max_pairs_per_problem_and_duplicates_count_once():
    right = [sample("p", f"R{i}", 0.9, True) for i in range(3)]
    wrong = [sample("p", f"W{i}", 0.1, False) for i in range(3)]
    dupes = [sample("p", "R0", 0.9, True), sample("p", " W0 ", 0.1, False)]
    other = [sample("o", "R", 0.9, True), sample("o", "W", 0.1, False)]
    pairs = build_pairs(right + wrong + dupes + other, gap=1.0, max_pairs=3, rng=random.Random(0))
    p_pairs = [(p["chosen"], p["rejected"]) for p in pairs if p["id"] == "p"]
    assert len(p_pairs) == 3 == len(set(p_pairs))             # 9 eligible, 3 drawn, distinct
    assert all(c.startswith("R") and r.startswith("W") for c, r in p_pairs)
    assert [(p["chosen"], p["rejected"]) for p in pairs if p["id"] == "o"] == [("R", "W")]
    again = build_pairs(right + wrong + dupes + other, gap=1.0, max_pairs=3, rng=random.Random(0))
    assert pairs == again                                     # the rng decides, reproducibly


def test_hard_problems_skipped_or_paired_on_prm_score_alone():
    hard = [sample("h", "A", 0.9, False, level=5),
            sample("h", "B", 0.2, True, level=5),    # correct, but the answer may not be used
            sample("h", "C", 0.5, False, level=5)]
    assert build_pairs(hard, gap=1.0, max_pairs=3, rng=random.Random(0)) == []   # default: skip
    # PRM only: A-B 0.7 > 0.45 pairs; A-C 0.4 and C-B 0.3 do not
    pairs = build_pairs(hard, gap=1.0, max_pairs=3, rng=random.Random(0), hard_gap=0.45)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("A", "B")]
    close([pairs[0]["chosen_score"], pairs[0]["rejected_score"]], [0.9, 0.2])

# ----------------------------------------------------------------------------- with a model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(ModelArgs.from_name("tiny"))


def examples():
    # [BOS, prompt..., completion..., EOS] with loss masks on completion + EOS (as tokenize_sft)
    return [{"chosen_tokens": [1, 5, 6, 7, 8, 2], "chosen_mask": [0, 0, 0, 1, 1, 1],
             "rejected_tokens": [1, 5, 6, 9, 2], "rejected_mask": [0, 0, 0, 1, 1]},
            {"chosen_tokens": [1, 10, 11, 2], "chosen_mask": [0, 0, 1, 1],
             "rejected_tokens": [1, 10, 12, 13, 14, 15, 2], "rejected_mask": [0, 0, 1, 1, 1, 1, 1]}]


def test_cached_reference_is_the_starting_model(model):
    exs = cache_ref_logps(model, examples(), pad_id=0, batch_size=1)
    batch = collate_pairs(exs, pad_id=0)
    loss, metrics = loss_fn(model, batch, beta=0.5)
    # the policy is its own reference: every reward is 0 and the loss is -log sigmoid(0)
    close(loss, math.log(2.0))
    close(metrics["rewards/chosen"], 0.0)
    close(metrics["rewards/margins"], 0.0)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_iteration_data_caches_the_policy_as_reference(monkeypatch, tmp_path):
    problems = [{"id": "0", "question": "Add 2 and 3.", "answer": "5", "level": 1}]
    texts = ["2 + 3 = 5\n\n# Answer\n\n5", "2 + 3 = 6\n\n# Answer\n\n6"]
    tok = train_tokenizer([format_prompt(problems[0]["question"]) + t for t in texts] * 5,
                          tmp_path / "tokenizer.json", vocab_size=60)
    drawn = [dict(sample("0", t, prm, t.endswith("5"), level=1), question="Add 2 and 3.")
             for t, prm in zip(texts, [0.8, 0.3])]
    monkeypatch.setattr(dpo, "sample_solutions", lambda *a, **k: [dict(s) for s in drawn])
    monkeypatch.setattr(dpo, "score_samples", lambda rm, tok, samples: samples)
    torch.manual_seed(1)
    policy = Transformer(ModelArgs.from_name("tiny", vocab_size=tok.vocab_size))
    exs, metrics = dpo.dpo_iteration_data(policy, None, tok, problems, random.Random(0), n=8,
                                          temperature=1.0, top_k=None, max_new_tokens=768,
                                          gap=1.0, max_pairs=3, hard_gap=None, batch_size=16)
    assert metrics["dpo/pairs"] == 1 and len(exs) == 1               # 1.8 vs 0.3: gap 1.5
    batch = collate_pairs(exs, tok.pad_id)
    with torch.no_grad():
        logps = sequence_logps(policy, batch["tokens"], batch["loss_mask"])
    close(batch["ref_logps"], logps.tolist())                        # chosen, rejected
    # --step-pairs: the one step where they part, without the answer lines and EOS
    cut, _ = dpo.dpo_iteration_data(policy, None, tok, problems, random.Random(0), n=8,
                                    temperature=1.0, top_k=None, max_new_tokens=768, gap=1.0,
                                    max_pairs=3, hard_gap=None, batch_size=16, step_pairs=True)
    for side, step in (("chosen", "2 + 3 = 5"), ("rejected", "2 + 3 = 6")):
        trained = [t for t, m in zip(cut[0][f"{side}_tokens"], cut[0][f"{side}_mask"]) if m]
        assert tok.decode(trained) == step


def test_loss_fn_uses_the_cached_reference_not_the_policy(model):
    batch = collate_pairs(examples(), pad_id=0)
    with torch.no_grad():
        logps = sequence_logps(model, batch["tokens"], batch["loss_mask"])   # (2B,)
    batch["ref_logps"] = logps + torch.tensor([1.0, -2.0, 0.5, 0.5])          # chosen, rejected
    loss, metrics = loss_fn(model, batch, beta=0.5)
    # reward = beta * (logps - ref): chosen 0.5 * (-1, +2) = (-0.5, 1.0), rejected
    # 0.5 * (-0.5, -0.5) = (-0.25, -0.25): margins -0.25 and 1.25
    expected = (math.log1p(math.exp(0.25)) + math.log1p(math.exp(-1.25))) / 2
    close(loss, expected)
    close(metrics["rewards/margins"], (-0.25 + 1.25) / 2)
    close(metrics["logps/chosen"], logps[:2].mean().item())
    close(metrics["logps/rejected"], logps[2:].mean().item())


def test_rpo_alpha_adds_the_chosen_per_token_nll(model):
    batch = collate_pairs(examples(), pad_id=0)
    with torch.no_grad():
        logps = sequence_logps(model, batch["tokens"], batch["loss_mask"])   # (2B,)
    batch["ref_logps"] = logps.clone()                        # margins 0: DPO loss log 2 per pair
    # chosen completions: pair 0 has 3 target tokens (7, 8, EOS), pair 1 has 2 (11, EOS); the
    # rejected sides (2 and 5 tokens) never enter the NLL
    nll = [-logps[0].item() / 3, -logps[1].item() / 2]
    loss, metrics = loss_fn(model, batch, beta=0.5, rpo_alpha=0.7)
    close(loss, math.log(2.0) + 0.7 * (nll[0] + nll[1]) / 2)
    close(metrics["nll_loss"], (nll[0] + nll[1]) / 2)
    plain, plain_metrics = loss_fn(model, batch, beta=0.5)
    close(plain, math.log(2.0))                               # alpha 0: plain DPO
    close(plain_metrics["nll_loss"], (nll[0] + nll[1]) / 2)
    # the NLL term's gradient alone (loss - plain DPO) raises both chosen log-probs
    trained = copy.deepcopy(model)
    opt = torch.optim.SGD(trained.parameters(), lr=0.05)
    (loss_fn(trained, batch, beta=0.5, rpo_alpha=0.7)[0]
     - loss_fn(trained, batch, beta=0.5)[0]).backward()
    opt.step()
    with torch.no_grad():
        after = sequence_logps(trained, batch["tokens"], batch["loss_mask"])
    assert (after[:2] > logps[:2]).all()


def test_step_pair_cuts_at_the_first_step_whose_result_differs():
    # steps 1-2 write the same results (23, 23) with a free sign on a do-nothing slot: no
    # difference; step 3 concludes 19 against 27: the pair becomes that step, after the chosen
    # side's first two steps
    pair = {"question": "q", "chosen": "23-0=23\n\n23+0=23\n\n23-4=19\n\n19+0=19\n\n# Answer\n\n19",
            "rejected": "23+0=23\n\n23-0=23\n\n23+4=27\n\n27+0=27\n\n# Answer\n\n27"}
    cut = dpo.step_pair(pair)
    assert cut["prefix"] == "23-0=23\n\n23+0=23\n\n"
    assert (cut["chosen"], cut["rejected"], cut["eos"]) == ("23-4=19", "23+4=27", False)
    assert cut["question"] == "q"
    # the same results at every step: the answer lines differ, and they end the solution
    same = dpo.step_pair({"chosen": "05+0=05\n\n# Answer\n\n05", "rejected": "05-0=05\n\n# Answer\n\n07"})
    assert (same["prefix"], same["chosen"], same["rejected"], same["eos"]) == \
        ("05+0=05\n\n", "# Answer\n\n05", "# Answer\n\n07", True)
    # parting at the first step: nothing joins the prompt
    first = dpo.step_pair({"chosen": "11+2=13\n\n# Answer\n\n13", "rejected": "11-4=07\n\n# Answer\n\n07"})
    assert (first["prefix"], first["chosen"], first["rejected"]) == ("", "11+2=13", "11-4=07")


def test_encode_pair_puts_the_prefix_in_the_prompt_and_no_eos_after_a_step(tmp_path):
    prompt = format_prompt("q")
    texts = [prompt + "23-0=23\n\n23-4=19", prompt + "23+4=27\n\n# Answer\n\n27"]
    tok = train_tokenizer(texts * 5, tmp_path / "tokenizer.json", vocab_size=60)
    pair = {"question": "q", "prefix": "23-0=23\n\n", "chosen": "23-4=19", "rejected": "23+4=27",
            "eos": False}
    e = dpo.encode_pair(tok, pair)
    for side in ("chosen", "rejected"):
        tokens, mask = e[f"{side}_tokens"], e[f"{side}_mask"]
        assert tokens[-1] != tok.eos_id
        # the trained tokens spell that side's step, and nothing before it
        assert tok.decode([t for t, m in zip(tokens, mask) if m]) == pair[side]
        assert tok.decode([t for t, m in zip(tokens[1:], mask[1:]) if not m]) == prompt + pair["prefix"]
    whole = dpo.encode_pair(tok, {"question": "q", "chosen": "23-4=19", "rejected": "23+4=27"})
    assert whole["chosen_tokens"][-1] == tok.eos_id and whole["chosen_mask"][-1] == 1


def test_only_samples_that_could_pair_are_scored():
    # easy: mixed answers (kept, its duplicate once), all right / all wrong (never pair at gap 1),
    # one distinct completion; hard: kept only when hard_gap pairs them
    drawn = [sample("mix", "R", 0, True), sample("mix", " R ", 0, True),
             sample("mix", "W", 0, False),
             sample("right", "A", 0, True), sample("right", "B", 0, True),
             sample("wrong", "A", 0, False), sample("wrong", "B", 0, False),
             sample("one", "A", 0, True), sample("one", "A", 0, True),
             sample("hard", "A", 0, False, level=5), sample("hard", "B", 0, False, level=5)]
    kept = lambda **k: [(s["id"], s["completion"]) for s in dpo.pairable(drawn, **k)]
    assert kept(gap=1.0, hard_gap=None) == [("mix", "R"), ("mix", "W")]
    assert kept(gap=1.0, hard_gap=0.45) == [("mix", "R"), ("mix", "W"),
                                            ("hard", "A"), ("hard", "B")]
    # below gap 1 two right (or two wrong) answers may pair on the PRM score
    assert [i for i, _ in kept(gap=0.5, hard_gap=None)] == (["mix"] * 2 + ["right"] * 2
                                                             + ["wrong"] * 2)
    assert kept(gap=2.0, hard_gap=1.0) == []           # no two scores differ by more than 2
    # whatever the PRM scores, the pairs are those of every sample
    rng = random.Random(1)
    for gap, hard_gap in ((1.0, None), (1.0, 0.3), (0.4, None), (1.5, 0.9)):
        for _ in range(20):
            scored = [dict(s, step_scores=[rng.choice([0.0, 0.2, 0.5, 0.9, 1.0])]) for s in drawn]
            everything = build_pairs(scored, gap, 3, random.Random(0), hard_gap=hard_gap)
            assert build_pairs(dpo.pairable(scored, gap, hard_gap), gap, 3, random.Random(0),
                               hard_gap=hard_gap) == everything
