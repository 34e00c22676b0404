"""The evaluation path: sampling records, scoring, the re-ranking table and the command line."""
import json

import pytest
import torch

import e2h.sample
from data.format import format_prompt
from e2h.checkpoint import save_model
from e2h.evaluate import main, read_problems
from e2h.model import ModelArgs, RewardModel, Transformer
from e2h.rerank import format_table, rerank_table
from e2h.sample import Sample, sample_solutions
from e2h.score import score_samples
from e2h.tokenizer import train_tokenizer


def s(pid, level, answer, correct, steps):
    return {"id": pid, "question": pid, "completion": "", "answer": answer, "correct": correct,
            "level": level, "step_scores": steps, "outcome_score": None}


# Three samples per problem, step scores chosen so that the three methods disagree.
HAND = [
    # E1 (easy, truth 1/2): majority {1/2}: 2 votes vs {7}: 1 -> right;
    # weighted W(1/2) = .9*.2 + .5*.5 = .43 > W(7) = .6*.6 = .36 -> right;
    # best-of-n: min scores .2, .6, .5 -> "7" -> wrong
    s("E1", 2, "0.5", True, [0.9, 0.2]), s("E1", 2, "7", False, [0.6, 0.6]),
    s("E1", 2, "\\frac{1}{2}", True, [0.5, 0.5]),
    # E2 (easy, truth 1): no sample is right
    s("E2", 1, "2", False, [0.5]), s("E2", 1, None, False, []), s("E2", 1, "3", False, [0.9]),
    # H (hard, truth 3): majority "4" (2 votes) -> wrong; W(4) = .9*.3 + .35 = .62 > W(3) = .5
    # -> wrong; best-of-n: min scores .3, .5, .35 -> "3" -> right
    s("H", 5, "4", False, [0.9, 0.3]), s("H", 5, "3", True, [0.5]), s("H", 5, "4", False, [0.35]),
    # U (no reference answer): left out of every number
    s("U", 3, "1", None, [0.5]), s("U", 3, "1", None, [0.5]), s("U", 3, "1", None, [0.5]),
]


def close(got: dict, expected: dict):
    """Equal up to float rounding (percentages of thirds)."""
    assert got.keys() == expected.keys()
    for k in got:
        assert got[k] == pytest.approx(expected[k], rel=0, abs=1e-9), k


def test_rerank_table_by_hand():
    greedy = [s("E1", 2, "0.5", True, []), s("E2", 1, "2", False, []), s("H", 5, "3", True, [])]
    table = rerank_table(HAND, ns=[3], greedy=greedy)
    assert table["n_problems"] == {"easy": 2, "hard": 1, "all": 3}
    # All is the mean over problems (not over the two splits): majority 1 of 3 right
    m = table["methods"]
    close(m["majority"]["3"], {"easy": [50.0, 0.0], "hard": [0.0, 0.0], "all": [100 / 3, 0.0]})
    close(m["weighted"]["3"], {"easy": [50.0, 0.0], "hard": [0.0, 0.0], "all": [100 / 3, 0.0]})
    close(m["best_of_n"]["3"], {"easy": [0.0, 0.0], "hard": [100.0, 0.0], "all": [100 / 3, 0.0]})
    close(table["greedy"], {"easy": 50.0, "hard": 100.0, "all": 200 / 3})
    # per problem, in first-seen order (U has no reference answer): what paired comparisons use
    assert table["problems"] == [{"id": "E1", "split": "easy"}, {"id": "E2", "split": "easy"},
                                 {"id": "H", "split": "hard"}]
    assert table["per_problem"]["majority"]["3"] == [1.0, 0.0, 0.0]
    assert table["per_problem"]["weighted"]["3"] == [1.0, 0.0, 0.0]
    assert table["per_problem"]["best_of_n"]["3"] == [0.0, 0.0, 1.0]
    md = format_table(table)
    assert "| majority voting | 50.0 ± 0.0 | 0.0 ± 0.0 | 33.3 ± 0.0 |" in md
    assert "| best-of-n (min) | 0.0 ± 0.0 | 100.0 ± 0.0 | 33.3 ± 0.0 |" in md
    assert "| greedy | 50.0 | 100.0 | 66.7 |" in md


def test_rerank_table_subsets_are_shared_by_methods():
    table = rerank_table(HAND, ns=[1, 2, 3], n_subsets=50, seed=1)
    m = table["methods"]
    # with one sample there is nothing to choose: every method scores that sample
    assert m["majority"]["1"] == m["weighted"]["1"] == m["best_of_n"]["1"]
    mean, std = m["majority"]["1"]["easy"]
    assert 0 < mean < 50 and std > 0              # E1 right 2/3 of the time, E2 never
    assert m["majority"]["1"]["hard"][0] < 100
    # E1's hit rate over the 50 draws averages to the table's number: (rate_E1 + 0) / 2 easy problems
    assert 50 * table["per_problem"]["majority"]["1"][0] == pytest.approx(mean, abs=1e-3)
    again = rerank_table(HAND, ns=[1, 2, 3], n_subsets=50, seed=1)
    assert again == table


def test_rerank_table_without_scores_and_bad_n():
    table = rerank_table(HAND, ns=[3], with_rm=False)
    assert list(table["methods"]) == ["majority"] and table["auc"] is None
    with pytest.raises(ValueError, match="n=4 but a problem has only 3 samples"):
        rerank_table(HAND, ns=[4])


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    corpus = [format_prompt("Start at 7.") + "7 + 5 = 12\n\n# Answer\n\n12"] * 20
    return train_tokenizer(corpus, tmp_path_factory.mktemp("tok") / "tokenizer.json", vocab_size=60)


PROBLEMS = [{"id": "a", "question": "Start at 7.", "answer": "12", "level": 1},
            {"id": "b", "question": "Start at 8.", "answer": "13", "level": 4},
            {"id": "c", "question": "Start at 9.", "answer": "14", "level": 5}]


def test_sample_solutions_records(tok, monkeypatch):
    calls = []

    def fake_generate(model, prompts, max_new_tokens, temperature, top_k, n, eos_id, stop_fn, generator,
                      max_rows, seeds):
        calls.append((len(prompts), n, temperature, top_k, eos_id, max_rows))
        assert prompts == [tok.encode(format_prompt(p["question"]), bos=True) for p in PROBLEMS]
        # sample 0 answers 12 and ends with EOS; sample 1 is cut by the length limit
        return [Sample(tok.encode("7 + 5 = 12\n\n# Answer\n\n12", eos=True)) if i % 2 == 0
                else Sample(tok.encode("7 + 5 = 1")) for i in range(len(prompts) * n)]

    monkeypatch.setattr(e2h.sample, "generate", fake_generate)
    samples = sample_solutions(None, tok, PROBLEMS, n=2, temperature=0.7, top_k=20,
                               max_new_tokens=512, batch_size=2)
    # every problem streams through one call, on batch_size x n rows
    assert calls == [(3, 2, 0.7, 20, tok.eos_id, 4)]
    assert [x["id"] for x in samples] == ["a", "a", "b", "b", "c", "c"]        # problem-major
    assert samples[0]["completion"] == "7 + 5 = 12\n\n# Answer\n\n12"          # no EOS text
    assert [x["answer"] for x in samples[:2]] == ["12", None]
    assert [x["correct"] for x in samples] == [True, False, False, False, False, False]
    assert [x["level"] for x in samples[::2]] == [1, 4, 5]


def test_sample_score_and_table_end_to_end(tok):
    torch.manual_seed(0)
    policy = Transformer(ModelArgs.from_name("tiny", vocab_size=tok.vocab_size))
    rm = RewardModel.from_policy(policy)
    gen = torch.Generator().manual_seed(0)
    samples = sample_solutions(policy, tok, PROBLEMS, n=4, temperature=0.7, top_k=20,
                               max_new_tokens=12, generator=gen, batch_size=2)
    assert len(samples) == 12 and all(len(tok.encode(x["completion"])) <= 12 for x in samples)
    samples[0]["completion"] = "7 + 5 = 12\n\n# Answer\n\n12"                 # one scoreable sample
    score_samples(rm, tok, samples, batch_size=5)
    assert samples[0]["step_scores"] == [0.5] and samples[0]["outcome_score"] == 0.5   # zero head
    table = rerank_table(samples, n_subsets=3, with_rm=True)
    assert table["ns"] == [1, 2, 4] and set(table["methods"]) == {"majority", "weighted", "best_of_n"}


def test_read_problems(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"unique_id": "x/1", "problem": "1+1?", "answer": "2", "level": 1}) + "\n"
                    + json.dumps({"id": "y", "question": "2+2?", "level": 2}) + "\n")
    with pytest.raises(ValueError, match=r"p.jsonl:2: missing key 'answer'"):
        read_problems(path)
    with pytest.raises(FileNotFoundError, match="nope.jsonl: problem file not found"):
        read_problems(tmp_path / "nope.jsonl")
    path.write_text(path.read_text().splitlines()[0] + "\n")
    assert read_problems(path)[0]["id"] == "x/1" and read_problems(path)[0]["question"] == "1+1?"


def test_command_line(tok, tmp_path):
    torch.manual_seed(0)
    policy = Transformer(ModelArgs.from_name("tiny", vocab_size=tok.vocab_size))
    save_model(policy, tmp_path / "policy")
    save_model(RewardModel.from_policy(policy), tmp_path / "rm")
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    records = tmp_path / "rm_records.jsonl"
    records.write_text("".join(json.dumps({"question": "Start at 7.", "steps": ["7 + 5 = 12"],
                                           "answer": "12", "step_labels": [y], "outcome_label": y,
                                           "level": level}) + "\n"
                               for level in (2, 5) for y in (0, 1)))
    out = tmp_path / "out"
    main(["--policy", str(tmp_path / "policy"), "--rm", str(tmp_path / "rm"), "--data", str(data), "--tokenizer", str(tok.path),
          "--n", "2", "--max-new-tokens", "8", "--out", str(out), "--device", "cpu",
          "--n-subsets", "2", "--rm-records", str(records)])
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    greedy = (out / "greedy.jsonl").read_text().splitlines()
    table = json.loads((out / "table.json").read_text())
    assert len(samples) == 6 and len(greedy) == 3
    assert set(samples[0]) == {"id", "question", "completion", "answer", "correct", "level",
                               "step_scores", "outcome_score"}
    assert table["ns"] == [1, 2] and table["args"]["n"] == 2
    assert (out / "table.md").read_text() == format_table(table)
    # the untrained head scores everything 0.5: every positive ties every negative, AUC 1/2
    auc = json.loads((out / "rm_auc.json").read_text())
    assert auc["easy"] == auc["hard"] == {"step_auc": 0.5, "n_steps": 2, "outcome_auc": 0.5,
                                          "n_outcomes": 2}
    assert auc["all"]["n_steps"] == 4


def test_command_line_needs_a_job(tmp_path):
    with pytest.raises(SystemExit):
        main(["--tokenizer", "t", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["--tokenizer", "t", "--out", str(tmp_path), "--rm-records", "r.jsonl"])


def test_each_method_ranks_by_its_own_aggregation():
    # P1 (easy, truth 5): X "5" steps [.95]; Y "6" twice with steps [.9, .5].
    #   weighted voting sums prods: W(5) = .95 > W(6) = .45 + .45 = .90 -> right
    #   (summing means would give W(6) = .7 + .7 = 1.4 and pick the wrong "6")
    #   majority: "6" -> wrong; best-of-n: min .95 > .5 -> right
    # P2 (hard, truth 1): A "1" [.6, .6]; B "2" [.9, .5].
    #   best-of-n by min: .6 > .5 -> right (by prod .36 < .45 or by mean .6 < .7: wrong)
    #   weighted: W(1) = .36 < W(2) = .45 -> wrong; majority: a tie, the earliest "1" -> right
    samples = [s("P1", 1, "5", True, [0.95]), s("P1", 1, "6", False, [0.9, 0.5]),
               s("P1", 1, "6", False, [0.9, 0.5]),
               s("P2", 4, "1", True, [0.6, 0.6]), s("P2", 4, "2", False, [0.9, 0.5])]
    samples.append(s("P2", 4, None, False, []))       # three samples each: no answer never wins
    m = rerank_table(samples, ns=[3])["methods"]
    close(m["majority"]["3"], {"easy": [0.0, 0.0], "hard": [100.0, 0.0], "all": [50.0, 0.0]})
    close(m["weighted"]["3"], {"easy": [100.0, 0.0], "hard": [0.0, 0.0], "all": [50.0, 0.0]})
    close(m["best_of_n"]["3"], {"easy": [100.0, 0.0], "hard": [100.0, 0.0], "all": [100.0, 0.0]})
