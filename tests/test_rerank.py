"""Majority voting, weighted voting and best-of-n on hand-made answer lists, and the N-subset
table (``rerank_table``) on hand-scored samples."""
import pytest

from e2h.rerank import (best_of_n, format_table, group_answers, majority_vote, rerank_table,
                        weighted_vote)


def test_group_answers_merges_equivalent_spellings():
    # "0.5", "\frac{1}{2}" and "1/2" are one answer; None has no group
    groups = group_answers(["0.5", "3", "\\frac{1}{2}", None, "1/2", "3.0"])
    assert groups.tolist() == [0, 1, 0, -1, 0, 1]
    # "03" is the integer 3 (the grader decides); an answer that normalizes to nothing is none
    assert group_answers(["3", "4", "03", "$ $"]).tolist() == [0, 1, 0, -1]


def test_majority_counts_equivalent_answers_together():
    # "3" appears twice verbatim, the half three times in three spellings: the half wins,
    # returned as its first spelling
    answers = ["3", "\\frac{1}{2}", "3", "0.5", "\\frac12"]
    assert majority_vote(answers) == "\\frac{1}{2}"


def test_majority_tie_goes_to_the_earliest_answer():
    # 2 votes each; "7" occurs first
    assert majority_vote(["7", "0.5", "\\frac{1}{2}", "7"]) == "7"
    assert majority_vote(["0.5", "7", "7", "\\frac{1}{2}"]) == "0.5"


def test_none_never_wins_unless_all_none():
    assert majority_vote([None, None, None, "4"]) == "4"
    assert majority_vote([None, None]) is None
    assert weighted_vote([None, "4"], [0.9, 0.1]) == "4"
    assert best_of_n([None, "4", "5"], [0.99, 0.2, 0.1]) == "4"
    assert best_of_n([None], [0.5]) is None


def test_weighted_vote_sums_scores_per_equivalent_answer():
    # W(3) = 0.4 + 0.1 = 0.5, W(1/2) = 0.3 + 0.3 = 0.6: the half wins although "3" holds the
    # single best sample and as many votes
    answers = ["3", "0.5", "\\frac{1}{2}", "3"]
    assert weighted_vote(answers, [0.4, 0.3, 0.3, 0.1]) == "0.5"
    # plain sum, no softmax: W(a) = 0.9 < W(b) = 0.5 + 0.5 = 1.0
    assert weighted_vote(["2", "5", "5"], [0.9, 0.5, 0.5]) == "5"


def test_weighted_vote_tie_goes_to_the_earliest_answer():
    # W(3) = 0.25 + 0.25 = 0.5 = W(1/2) (exact in binary floating point): "3" comes first
    assert weighted_vote(["3", "0.5", "\\frac{1}{2}", "3"], [0.25] * 4) == "3"


def test_best_of_n_takes_the_highest_score_earliest_on_ties():
    assert best_of_n(["1", "2", "3"], [0.2, 0.7, 0.5]) == "2"
    assert best_of_n(["1", "2", "3"], [0.7, 0.2, 0.7]) == "1"
    # best-of-n ignores agreement: two votes for "3" do not beat one better sample
    assert best_of_n(["3", "3", "4"], [0.6, 0.6, 0.61]) == "4"


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 answers but 1 scores"):
        weighted_vote(["1", "2"], [0.5])
    with pytest.raises(ValueError, match="2 answers but 3 scores"):
        best_of_n(["1", "2"], [0.5, 0.1, 0.2])


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
