"""The TextAttack-convention attack metrics on hand-made outcomes."""

from __future__ import annotations

import pytest

from charbert.robustness.metrics import Outcome, attack_metrics, labelling_attack_metrics, perturbed_words


def test_metrics_by_hand_with_skipped_examples():
    outcomes = [
        Outcome(True, False, 10, 2, 5),  # successful
        Outcome(True, True, 4, 1, 7),  # failed
        Outcome(False, True, 6, 3, None),  # skipped (even though its attacked copy is right)
        Outcome(True, False, 8, 4, 3),  # successful
    ]
    m = attack_metrics(outcomes)
    assert (m["successful"], m["failed"], m["skipped"], m["num_examples"]) == (2, 1, 1, 4)
    assert m["original_accuracy"] == pytest.approx(3 / 4)
    assert m["accuracy_under_attack"] == pytest.approx(1 / 4)
    assert m["attack_success_rate"] == pytest.approx(2 / 3)
    assert m["avg_perturbed_word_share"] == pytest.approx((2 / 10 + 1 / 4 + 4 / 8) / 3)  # attacked only
    assert m["avg_words_per_input"] == pytest.approx(28 / 4)  # all examples
    assert m["avg_num_queries"] == pytest.approx(15 / 3)


def test_zero_success_and_all_skipped():
    m = attack_metrics([Outcome(True, True, 5, 1), Outcome(True, True, 5, 0)])
    assert m["attack_success_rate"] == 0.0 and m["accuracy_under_attack"] == 1.0 == m["original_accuracy"]
    assert m["avg_num_queries"] is None and m["avg_perturbed_word_share"] == pytest.approx(0.1)
    m = attack_metrics([Outcome(False, False, 3, 1), Outcome(False, True, 3, 1)])
    assert m["skipped"] == 2 and m["attack_success_rate"] is None and m["avg_perturbed_word_share"] is None
    assert m["original_accuracy"] == 0.0 == m["accuracy_under_attack"]
    with pytest.raises(ValueError):
        attack_metrics([])


def test_labelling_metrics_and_perturbed_words():
    m = labelling_attack_metrics([["O", "B-PER"], ["O"]], [["O", "O"], ["O"]],
                                 [["I", "am"], ["here"]], [["I", "ma"], ["here"]])
    assert m["changed_prediction_share"] == 0.5 and m["num_sentences"] == 2
    assert m["avg_perturbed_word_share"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["avg_words_per_input"] == 1.5
    assert perturbed_words(["a", "b", "c"], ["a", "x", "y"]) == 2
    with pytest.raises(ValueError, match="one word one word"):
        perturbed_words(["a"], ["a", "b"])
