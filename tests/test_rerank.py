"""Majority voting, weighted voting and best-of-n on hand-made answer lists."""
import pytest

from e2h.rerank import best_of_n, group_answers, majority_vote, weighted_vote


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
