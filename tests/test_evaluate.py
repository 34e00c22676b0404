"""The evaluation command: sample, score and re-rank end to end, problem files, the command line."""
import json

import pytest
import torch

from e2h.hf.checkpoint import save_model
from e2h.evaluate import default_tokenizer, main, parse_args, read_problems
from e2h.model import ModelArgs, RewardModel, Transformer
from e2h.rerank import format_table, rerank_table
from e2h.sample import sample_solutions
from e2h.score import score_samples


# the sampling tests' problems and tokenizer fixture (tests/test_sample.py)
from test_sample import PROBLEMS, tok  # noqa: E402,F401


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
    (tmp_path / "policy" / "tokenizer.json").write_bytes(tok.path.read_bytes())   # as train.py
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    records = tmp_path / "rm_records.jsonl"
    records.write_text("".join(json.dumps({"question": "Start at 7.", "steps": ["7 + 5 = 12"],
                                           "answer": "12", "step_labels": [y], "outcome_label": y,
                                           "level": level}) + "\n"
                               for level in (2, 5) for y in (0, 1)))
    out = tmp_path / "out"
    main(["--policy", str(tmp_path / "policy"), "--rm", str(tmp_path / "rm"), "--data", str(data),
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


def test_the_tokenizer_is_the_one_beside_the_models(tmp_path):
    for name in ("policy", "rm"):
        (tmp_path / name).mkdir()
    args = parse_args(["--policy", str(tmp_path / "policy"), "--data", "d.jsonl",
                       "--rm", str(tmp_path / "rm"), "--out", str(tmp_path / "out")])
    assert args.tokenizer is None and args.sample_batch_size == 8
    with pytest.raises(ValueError, match=r"--tokenizer not given and no tokenizer.json in "
                                         r"\S+policy, \S+rm: give --tokenizer"):
        default_tokenizer(args)
    (tmp_path / "rm" / "tokenizer.json").write_text("{}")
    assert default_tokenizer(args) == str(tmp_path / "rm" / "tokenizer.json")
    (tmp_path / "policy" / "tokenizer.json").write_text("{}")   # the policy's comes first
    assert default_tokenizer(args) == str(tmp_path / "policy" / "tokenizer.json")
    rescore = parse_args(["--samples", "s.jsonl", "--rm", f"prm={tmp_path / 'rm'}",
                          "--out", str(tmp_path / "out")])
    assert default_tokenizer(rescore) == str(tmp_path / "rm" / "tokenizer.json")


def test_command_line_needs_a_job(tmp_path):
    with pytest.raises(SystemExit):
        main(["--tokenizer", "t", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["--tokenizer", "t", "--out", str(tmp_path), "--rm-records", "r.jsonl"])
