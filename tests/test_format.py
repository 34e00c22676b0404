"""The text format: prompts, parsing, SFT masks, per-token RM labels and score positions."""
import pytest

from conftest import LLAMA2_TOKENIZER
from data.format import (format_prompt, format_solution, parse_solution, score_positions,
                         tokenize_rm, tokenize_sft)
from e2h.tokenizer import Tokenizer, train_tokenizer

STEPS = ["7 + 5 = 12", "12 * 2 = 24"]
SOLUTION = "7 + 5 = 12\n\n12 * 2 = 24\n\n# Answer\n\n24"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    corpus = [format_prompt("Start at 7. Add 5, then double.") + SOLUTION] * 20
    return train_tokenizer(corpus, tmp_path_factory.mktemp("tok") / "tokenizer.json", vocab_size=60)


def pieces(tok, ids):
    return tok.token_texts(ids)


def test_format_and_parse_round_trip():
    assert format_prompt("  What is 2+2? ") == "# Question\n\nWhat is 2+2?\n\n# Solution\n\n"
    assert format_solution(STEPS, "24") == SOLUTION
    assert parse_solution(SOLUTION) == (STEPS, "24")
    assert parse_solution("7 + 5 = 12\n\n12 * 2") == (["7 + 5 = 12", "12 * 2"], None)
    assert parse_solution("x\n\n# Answer\n\n") == (["x"], None)


def test_sft_mask_covers_completion_and_eos_only(tok):
    prompt = format_prompt("Start at 7. Add 5, then double.")
    tokens, mask = tokenize_sft(tok, prompt, SOLUTION)
    assert tokens[0] == tok.bos_id and tokens[-1] == tok.eos_id and len(tokens) == len(mask)
    texts = pieces(tok, tokens)
    target_text = "".join(t for t, m in zip(texts, mask) if m)
    prompt_text = "".join(t for t, m in zip(texts, mask) if not m)
    assert target_text == SOLUTION          # EOS adds no text but is a target
    assert mask[-1] == 1 and prompt_text == prompt
    _, mask_no_eos = tokenize_sft(tok, prompt, SOLUTION, eos=False)
    assert mask_no_eos == mask[:-1]


def test_rm_labels_follow_steps_then_outcome(tok):
    # step 1 correct, step 2 wrong, answer section labelled by the outcome (0)
    tokens, labels, weights = tokenize_rm(tok, "Start at 7. Add 5, then double.", STEPS, "24",
                                          step_labels=[1, 0], outcome_label=0)
    texts = pieces(tok, tokens)
    by_label = {}
    for t, l, w in zip(texts, labels, weights):
        if w:
            by_label.setdefault(l, []).append(t)
    # every token of step 1 incl. its "\n\n" is positive; step 2 + "\n\n" and the answer negative
    assert "".join(by_label[1.0]) == "7 + 5 = 12\n\n"
    assert "".join(by_label[0.0]) == "12 * 2 = 24\n\n# Answer\n\n24"
    assert weights[0] == 0 and weights[-1] == 0          # BOS, EOS
    n_prompt = len(tok.encode(format_prompt("Start at 7. Add 5, then double.")))
    assert sum(weights[1:1 + n_prompt]) == 0


def test_rm_labels_prefix_unlabelled_and_orm(tok):
    # PRM800K-style: a chosen prefix (None) and one rated step; no outcome
    tokens, labels, weights = tokenize_rm(tok, "Q", STEPS, None, [None, 1], None)
    texts = pieces(tok, tokens)
    assert "".join(t for t, w in zip(texts, weights) if w) == "12 * 2 = 24\n\n"
    # ORM: outcome on every solution token
    tokens, labels, weights = tokenize_rm(tok, "Q", STEPS, "24", None, 1)
    texts = pieces(tok, tokens)
    assert "".join(t for t, w in zip(texts, weights) if w) == SOLUTION
    assert all(l == 1.0 for l, w in zip(labels, weights) if w)
    with pytest.raises(ValueError, match="2 steps but 1 step labels"):
        tokenize_rm(tok, "Q", STEPS, "24", [1], None)


def test_score_positions(tok):
    completion = tok.encode(SOLUTION, eos=True)
    texts = pieces(tok, completion)
    steps, answer = score_positions(tok, completion)
    assert len(steps) == 2
    for p in steps:                                  # the first token of each step delimiter
        assert texts[p].startswith("\n")
    assert "".join(texts[:steps[0]]) == "7 + 5 = 12"
    assert "".join(texts[:steps[1]]) == "7 + 5 = 12\n\n12 * 2 = 24"
    assert "".join(texts[:answer + 1]) == SOLUTION   # last answer token, before EOS
    # a truncated sample: one finished step, no answer
    steps, answer = score_positions(tok, tok.encode("7 + 5 = 12\n\n12 *"))
    assert len(steps) == 1 and answer is None


def test_llama_tokenizer_positions():
    # The Llama-2 tokenizer spells "\n\n" as two byte tokens ("\n" = id 13), so reading a step
    # score one character late lands one token late: on the delimiter's second "\n".
    if not LLAMA2_TOKENIZER.exists():
        pytest.skip(f"{LLAMA2_TOKENIZER} not found (the Llama-2 tokenizer of shared/data)")
    tok = Tokenizer(LLAMA2_TOKENIZER)
    # "Add 2.\n\nSo $x=3$.\n\n# Answer\n\n3" + EOS is, token by token:
    #   0 " Add"  1 " "  2 "2"  3 "."  4 "\n"  5 "\n"  6 "So"  7 " $"  8 "x"  9 "="  10 "3"
    #   11 "$."  12 "\n"  13 "\n"  14 "#"  15 " Answer"  16 "\n"  17 "\n"  18 "3"  19 EOS
    # step 1 "Add 2." ends at token 3, its delimiter's first token is 4; step 2 "So $x=3$."
    # ends at 11, its delimiter starts at 12; the answer "3" is token 18, just before EOS
    completion = tok.encode("Add 2.\n\nSo $x=3$.\n\n# Answer\n\n3", eos=True)
    assert completion[4:6] == completion[12:14] == [13, 13] and len(completion) == 20
    assert score_positions(tok, completion) == ([4, 12], 18)
    # "\n\n\n" before "# Answer" is one delimiter, read at its first token:
    #   0 " We"  1 " add"  2 "."  3 "\n"  4 "\n"  5 "So"  6 " $"  7 "x"  8 "="  9 "3"  10 "$."
    #   11 "\n"  12 "\n"  13 "\n"  14 "#"  15 " Answer"  16 "\n"  17 "\n"  18 "3"  19 EOS
    completion = tok.encode("We add.\n\nSo $x=3$.\n\n\n# Answer\n\n3", eos=True)
    assert completion[11:14] == [13, 13, 13] and len(completion) == 20
    assert score_positions(tok, completion) == ([3, 11], 18)
