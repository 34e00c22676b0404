"""Real-data readers: jsonl errors, level splits, counts against shared/data/SOURCES.md, and the
MATH + PRM800K -> tokenized SFT / PRM path with the Llama-2 tokenizer."""
import json
import warnings
from collections import Counter
from pathlib import Path

import pytest

from data.format import difficulty, format_solution, is_easy, tokenize_rm, tokenize_sft
from data.prm800k import load_prm800k_raw, load_prm800k_steptree
from data.other_readers import load_gsm8k, load_math_shepherd, load_metamath
from data.readers import (load_math, math_validation_split, parse_level, read_jsonl,
                          split_paragraphs, write_jsonl)
from data.sources import data_format, read_data

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                            for line in lines))
    return path


@pytest.fixture(scope="module")
def math500():
    return load_math(shared("math/math500_test.jsonl"))


@pytest.fixture(scope="module")
def pool():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the two skip warnings are checked in their own test
        return load_math(shared("math/math_train_12k.jsonl"))


@pytest.fixture(scope="module")
def easy_prm800k(pool):
    """(sft, rm, warning messages) of PRM800K phase-1 train, levels 1-3."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sft, rm = load_prm800k_steptree(shared("prm800k/phase1_train_steptree.jsonl"),
                                        levels=(1, 2, 3), math_problems=pool)
    return sft, rm, [str(w.message) for w in caught]


# ---------------------------------------------------------------------------- jsonl and levels

def test_write_then_read_jsonl_round_trip(tmp_path):
    records = [{"id": "a", "question": "1+1?", "steps": ["x"], "level": 1}, {"id": "b", "level": None}]
    write_jsonl(tmp_path / "sub" / "out.jsonl", records)
    assert read_jsonl(tmp_path / "sub" / "out.jsonl") == records
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["out.jsonl"]  # no temp file left


def test_malformed_line_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [{"a": 1}, '{"a": 2,'])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: malformed JSON"):
        read_jsonl(path)
    path = write_lines(tmp_path / "list.jsonl", ["[1, 2]"])
    with pytest.raises(ValueError, match=r"list\.jsonl:1: expected a JSON object"):
        read_jsonl(path)
    with pytest.raises(FileNotFoundError, match="absent.jsonl"):
        read_jsonl(tmp_path / "absent.jsonl")


def test_missing_field_names_the_field(tmp_path):
    row = {"problem": "p", "solution": r"$\boxed{1}$", "answer": "1", "subject": "Algebra",
           "level": 1, "unique_id": "u/1"}
    path = write_lines(tmp_path / "math.jsonl", [row, {k: v for k, v in row.items() if k != "answer"}])
    with pytest.raises(ValueError, match=r"math\.jsonl:2: missing field 'answer'"):
        load_math(path)


def test_levels_easy_hard_and_unknown():
    assert [difficulty(level) for level in (1, 2, 3, 4, 5)] == ["easy"] * 3 + ["hard"] * 2
    assert parse_level("Level 4", "f:1") == 4 and parse_level("Level ?", "f:1") is None
    for bad in (None, 0, 6, "3", True, 2.0):
        with pytest.raises(ValueError, match="unknown level"):
            is_easy(bad)
    with pytest.raises(ValueError, match=r"f:3: unknown level 7"):
        parse_level(7, "f:3")


def test_unknown_level_is_skipped_with_a_count_or_raises(tmp_path):
    row = {"problem": "p", "solution": "s", "answer": "1", "subject": "Geometry", "unique_id": "u"}
    path = write_lines(tmp_path / "m.jsonl", [{**row, "level": 2}, {**row, "level": None, "unique_id": "v"}])
    with pytest.warns(UserWarning, match=r"m\.jsonl: skipped 1 problems with an unknown level: v"):
        assert [p["level"] for p in load_math(path)] == [2]
    with pytest.raises(ValueError, match=r"m\.jsonl:2: unknown level None \(v\)"):
        load_math(path, strict=True)
    path = write_lines(tmp_path / "n.jsonl", [{**row, "level": "Level 9"}])
    with pytest.raises(ValueError, match=r"n\.jsonl:1: unknown level 'Level 9'"):
        load_math(path)


# ---------------------------------------------------------------------------- MATH

def test_math500_counts(math500):
    assert len(math500) == 500
    assert sorted(Counter(p["level"] for p in math500).items()) == [(1, 43), (2, 90), (3, 105), (4, 128), (5, 134)]
    assert sum(is_easy(p["level"]) for p in math500) == 43 + 90 + 105
    assert Counter(p["subject"] for p in math500)["Intermediate Algebra"] == 97
    first = math500[0]
    assert first["id"] == "test/precalculus/807.json"
    assert first["answer"] == r"\left( 3, \frac{\pi}{2} \right)"
    # three paragraphs; the [asy] picture with blank lines inside stays one step
    assert len(first["steps"]) == 3 and first["steps"][1].startswith("[asy]")
    assert first["steps"][1].endswith("[/asy]")


def test_math_pool_skips_unknown_levels_and_empty_answers():
    with pytest.warns(UserWarning) as record:
        pool = load_math(shared("math/math_train_12k.jsonl"))
    messages = [str(w.message) for w in record]
    assert any("skipped 2 problems with an unknown level: train/geometry/377.json, "
               "train/geometry/471.json" in m for m in messages)
    assert any("skipped 2 problems with an empty answer" in m for m in messages)
    assert len(pool) == 12000 - 2 - 2
    levels = Counter(p["level"] for p in pool)
    assert levels[1] + levels[2] + levels[3] == 5728
    assert levels[4] + levels[5] == 6270 - 2  # the two empty answers are level 5


def test_split_paragraphs_keeps_environments_whole():
    text = "First.\n\n\\begin{align*}\na &= 1\n\n b &= 2\n\\end{align*}\n\n  \nSo $\\boxed{3}$."
    assert split_paragraphs(text) == ["First.", "\\begin{align*}\na &= 1\n\n b &= 2\n\\end{align*}",
                                      "So $\\boxed{3}$."]


def test_validation_split_matches_math500(pool, math500):
    train, validation = math_validation_split(pool, math500, seed=0)
    cell = lambda problems: Counter((p["subject"], p["level"]) for p in problems)
    assert cell(validation) == cell(math500)
    assert len(validation) == 500 and len(train) == len(pool) - 500
    assert not {p["id"] for p in train} & {p["id"] for p in validation}
    assert not {p["question"] for p in validation} & {p["question"] for p in math500}
    again, other = math_validation_split(pool, math500, seed=0)[1], math_validation_split(pool, math500, seed=1)[1]
    assert [p["id"] for p in again] == [p["id"] for p in validation]
    assert [p["id"] for p in other] != [p["id"] for p in validation]
    with pytest.raises(ValueError, match="only 0 pool problems"):
        math_validation_split(pool[:10], [{"subject": "Geometry", "level": 9}], seed=0)


# ---------------------------------------------------------------------------- PRM800K

def node(i, parent, text, rating, solution=False):
    return {"id": i, "parent": parent, "text": text, "rating": rating, "is_human": rating is None,
            "is_solution": solution, "is_preferred": True}


def test_steptree_rebuilds_prefixes_and_labels(tmp_path):
    # root 0 -> 1 (chosen) -> 3 (final); 2 is a rejected alternative to 1; 4 an unrated human step
    nodes = [node(0, -1, "A", 1), node(1, 0, "B", 0), node(2, 0, "C", -1),
             node(3, 1, "D", 1, solution=True), node(4, 1, "E", None)]
    rows = [{"problem": "Q", "unique_id": "u/1", "level": 2, "nodes": nodes},
            {"problem": "R", "unique_id": None, "level": None, "nodes": [node(0, -1, "Z", 1)]}]
    path = write_lines(tmp_path / "tree.jsonl", rows)
    answers = [{"id": "u/1", "answer": "7"}]
    sft, rm = load_prm800k_steptree(path, math_problems=answers)
    assert [(r["steps"], r["step_labels"]) for r in rm] == [
        (["A"], [1]), (["A", "B"], [None, 1]), (["A", "C"], [None, 0]),  # rating 0 -> 1, -1 -> 0
        (["A", "B", "D"], [None, None, 1]), (["Z"], [1])]
    assert [(s["prompt"][len("# Question\n\nQ\n\n# Solution\n\n"):], s["completion"], s["eos"])
            for s in sft[:2]] == [("", "A\n\n", False), ("A\n\nB\n\n", "D\n\n# Answer\n\n7", True)]
    assert rm[0]["id"] == "u/1/0" and rm[0]["level"] == 2 and rm[-1]["level"] is None
    with pytest.warns(UserWarning, match=r"skipped 1 problems with an unknown level"):
        sft, rm = load_prm800k_steptree(path, levels=(1, 2, 3), math_problems=answers)
    assert len(rm) == 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sft, _ = load_prm800k_steptree(path, levels=(2,))
    assert "skipped 1 +1 final steps without a known answer" in str(caught[-1].message)
    assert str(caught[-1].message).endswith(": u/1/3")
    assert [s["completion"] for s in sft] == ["A\n\n"]
    with pytest.raises(ValueError, match=r"levels \(3, 6\)"):
        load_prm800k_steptree(path, levels=(3, 6))
    broken = write_lines(tmp_path / "broken.jsonl", [{**rows[0], "nodes": [node(0, 5, "A", 1)]}])
    with pytest.raises(ValueError, match=r"broken\.jsonl:1: node 0 has a broken parent chain at 5"):
        load_prm800k_steptree(broken)
    missing = write_lines(tmp_path / "missing.jsonl", [{**rows[0], "nodes": [{"id": 0, "parent": -1}]}])
    with pytest.raises(ValueError, match=r"missing\.jsonl:1: missing field 'nodes\[0\]\.text'"):
        load_prm800k_steptree(missing)


def test_steptree_phase1_train_easy_counts(pool, easy_prm800k):
    sft, rm, messages = easy_prm800k
    # SOURCES.md: 54 phase1_train problems are not in MATH (no level): skipped, and said so
    assert len(messages) == 1 and "skipped 54 problems with an unknown level" in messages[0]
    # SOURCES.md: level 1-3 step rows 12,209 = -1: 3532, 0: 2245, 1: 5915, null: 517
    assert Counter(r["rating"] for r in rm) == {-1: 3532, 0: 2245, 1: 5915}
    assert len(rm) == 12209 - 517 == 11692
    assert sum(r["step_labels"][-1] for r in rm) == 2245 + 5915 == 8160
    assert len(sft) == 5915 and {s["level"] for s in sft} == {1, 2, 3}
    answers = {p["id"]: p["answer"] for p in pool}
    final = [s for s in sft if s["eos"]]
    assert final and all(s["completion"].endswith("# Answer\n\n" + answers[s["id"].rsplit("/", 1)[0]])
                         for s in final)
    assert all(s["completion"].endswith("\n\n") for s in sft if not s["eos"])


def test_raw_records_phase1_and_phase2():
    sft, rm = load_prm800k_raw(shared("prm800k/raw_samples.jsonl"))
    by_record = lambda examples, n: [e for e in examples if e["id"].split("/")[2] == str(n)]
    # line 2, phase 2 (found_error): six single completions rated 1,0,1,1,1,1, then a step with
    # four alternatives (-1,1,1,1) and no chosen one, where labelling ends
    assert len(by_record(rm, 2)) == 6 + 4 and len(by_record(sft, 2)) == 5 + 3
    assert [r["step_labels"][-1] for r in by_record(rm, 2)] == [1, 1, 1, 1, 1, 1, 0, 1, 1, 1]
    # line 3, phase 1: four +1 steps, then seven alternatives (0, 1 x 6) ending in "# Answer"
    rm3, sft3 = by_record(rm, 3), by_record(sft, 3)
    assert len(rm3) == 4 + 7 and len(sft3) == 4 + 6 and sum(s["eos"] for s in sft3) == 6
    assert sft3[-1]["completion"] == "That's right!\n\n# Answer\n\n468"  # text kept as written
    assert len(rm3[-1]["steps"]) == 5 and rm3[-1]["steps"][-1].endswith("# Answer\n\n468")
    # line 5 (give_up): seven +1 steps, six -1 alternatives continued by a human step, then
    # a step whose completions are null
    assert len(by_record(rm, 5)) == 7 + 6 and len(by_record(sft, 5)) == 7


# ---------------------------------------------------------------------------- GSM8K, MetaMathQA, Math-Shepherd

def test_gsm8k():
    test, train = load_gsm8k(shared("gsm8k/test.jsonl")), load_gsm8k(shared("gsm8k/train.jsonl"))
    assert (len(test), len(train)) == (1319, 7473)
    assert test[0]["answer"] == "18" and test[0]["level"] is None
    assert test[0]["steps"][1] == "She makes 9 * 2 = $18 every day at the farmer\u2019s market."
    assert not any("<<" in s for p in test + train for s in p["steps"])
    assert all(p["answer"].lstrip("-").isdigit() for p in test + train)  # "1,080" -> "1080"
    with pytest.raises(ValueError, match="unknown level"):
        is_easy(test[0]["level"])


def test_metamath():
    problems = load_metamath(shared("metamath/birm_metamathqa_math_steps_samples.jsonl"))
    assert len(problems) == 10
    assert problems[0]["answer"] == "91" and len(problems[0]["steps"]) == 1
    assert problems[1]["answer"] == "0.175" and len(problems[1]["steps"]) == 5
    assert problems[1]["steps"][2] == "Simplifying, we find that $k = 420$."


def test_math_shepherd(tmp_path):
    examples = load_math_shepherd(shared("math_shepherd/samples.jsonl"))
    assert len(examples) == 7
    first = examples[0]
    assert first["step_labels"] == [1, 1, 1, 1, 0] and first["answer"] == "13520"
    assert first["steps"][0] == "Janet spends 3 hours + 5 hours = 8 hours per week on music lessons."
    bad = {"input": "Q Step 1: a \u043a\u0438\nStep 2: b \u043a\u0438", "label": "Q Step 1: a +\nStep 2: c +"}
    with pytest.raises(ValueError, match=r"s\.jsonl:1: 'label' does not match 'input' at step 2"):
        load_math_shepherd(write_lines(tmp_path / "s.jsonl", [bad]))


def test_trl_stepwise_rows_are_prm_examples_with_levels_from_math(tmp_path):
    # TRL's PRM rows (its Math-Shepherd conversion keeps "Step k:" and the closing answer line)
    rows = [{"prompt": "What is 2 + 3 * 4? ", "labels": [True, False, True],
             "completions": ["Step 1: 3 * 4 = 12.", "Step 2: 2 + 12 = 15.", "The answer is: 15"]},
            {"prompt": "Not a MATH problem", "completions": ["a"], "labels": [False]}]
    path = write_lines(tmp_path / "trl_prm.jsonl", rows)
    assert data_format(path) == "stepwise"
    with pytest.raises(ValueError, match=r"trl_prm\.jsonl: stepwise PRM rows .* no level; give "
                                         r"--math-problems"):
        read_data([path])
    math = write_lines(tmp_path / "math.jsonl", [{
        "problem": "What is 2 + 3 * 4?", "solution": "$\\boxed{14}$", "answer": "14",
        "subject": "Prealgebra", "level": "Level 2", "unique_id": "test/prealgebra/1.json"}])
    first, second = read_data([path], math)["rm"]
    assert (first["question"], first["level"], second["level"]) == ("What is 2 + 3 * 4?", 2, None)
    assert (first["step_labels"], first["answer"], first["outcome_label"]) == ([1, 0, 1], None, None)
    assert format_solution(first["steps"], first["answer"]) == (
        "Step 1: 3 * 4 = 12.\n\nStep 2: 2 + 12 = 15.\n\nThe answer is: 15")
    bad = [{"prompt": "Q", "completions": ["a", "b"], "labels": [True]},
           {"prompt": "Q", "completions": ["a"], "labels": ["+"]},
           {"prompt": [{"role": "user", "content": "Q"}], "completions": ["a"], "labels": [True]}]
    for row, words in zip(bad, ["2 completions but 1 labels", "'labels' must be a list of true",
                                "'prompt' must be a string"]):
        with pytest.raises(ValueError, match=rf"b\.jsonl:1: {words}"):
            read_data([write_lines(tmp_path / "b.jsonl", [row])], math)


# ---------------------------------------------------------------------------- smoke path

def test_math_prm800k_to_llama_tokens(easy_prm800k):
    from e2h.tokenizer import Tokenizer
    tok = Tokenizer(shared("tokenizer/llama2/tokenizer.json"))
    sft, rm, _ = easy_prm800k
    texts = lambda ids: tok.token_texts(ids)
    # PRM: the rated (5th) step's tokens carry its label; BOS, prompt and chosen prefix weigh 0
    example = next(r for r in rm if len(r["steps"]) == 5 and r["step_labels"][-1] == 0)
    tokens, labels, weights = tokenize_rm(tok, example["question"], example["steps"],
                                          example["answer"], example["step_labels"], None)
    weighted = "".join(t for t, w in zip(texts(tokens), weights) if w)
    assert weighted.rstrip("\n") == example["steps"][-1].strip()
    assert all(label == 0.0 for label, w in zip(labels, weights) if w)
    first_weighted = weights.index(1.0)
    assert "".join(texts(tokens[:first_weighted])).endswith(example["steps"][-2].strip() + "\n\n")
    assert sum(weights[:first_weighted]) == 0
    # SFT: only the step (and its "\n\n") is trained; EOS only after a final answer
    step = next(s for s in sft if not s["eos"] and s["prompt"].count("\n\n") > 5)
    tokens, mask = tokenize_sft(tok, step["prompt"], step["completion"], eos=step["eos"])
    assert "".join(t for t, m in zip(texts(tokens), mask) if m) == step["completion"]
    assert tokens[-1] != tok.eos_id
    final = next(s for s in sft if s["eos"])
    tokens, mask = tokenize_sft(tok, final["prompt"], final["completion"], eos=final["eos"])
    assert tokens[-1] == tok.eos_id and mask[-1] == 1
    assert "".join(t for t, m in zip(texts(tokens), mask) if m) == final["completion"]
