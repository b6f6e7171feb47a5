"""Tests for charbert.robustness.greedy (greedy worst-case character attack)."""

from __future__ import annotations

import numpy as np
import pytest

from charbert.noise import PRUTHI_RULES, is_eligible, single_edits
from charbert.robustness.greedy import greedy_attack, model_predict_proba, replace_word, word_cores

# Toy classifier: p(class 1) grows with the number of "known" words in the example.
# "about" (a stop-word) and "cat" (too short) are known but may not be edited.
KNOWN = {"wonderful", "brilliant", "charming", "about", "cat"}


def known_count(example) -> int:
    return sum(w.lower() in KNOWN for text in example for w in word_cores(text))


def toy_proba(batch):
    n = np.array([known_count(ex) for ex in batch], dtype=float)
    p1 = (n + 0.1) / (n + 1.1)  # 0 known: 0.09, 1: 0.52, 2: 0.68, 3: 0.76
    return np.stack([1 - p1, p1], axis=1)


class Recorder:
    """Wraps a predict_proba and keeps every batch it was called with."""

    def __init__(self, fn=toy_proba):
        self.fn, self.calls = fn, []

    def __call__(self, batch):
        self.calls.append(list(batch))
        return self.fn(batch)


EXAMPLES = [
    ("the movie was wonderful, really",),           # 1 known -> broken at k=1
    ("brilliant acting and charming music",),       # 2 known -> broken at k=2
    ("about the cat: simply wonderful",),           # 3 known, only one editable -> survives
    ("boring plot with dull dialogue",),            # label 0, nothing helps the attacker
    ("plain words without anything",),              # label 1 but misclassified clean
]
LABELS = [1, 1, 1, 0, 1]


def check_edit(record):
    for t, w, old, new in record.edits:
        assert is_eligible(old, PRUTHI_RULES) and old.lower() not in PRUTHI_RULES.stopwords
        assert new in single_edits(old, "all", PRUTHI_RULES)
        assert new[0] == old[0] and new[-1] == old[-1]
        assert word_cores(record.texts[t])[w] == new


def test_word_helpers():
    assert word_cores('  "House," he  said. ') == ["House", "he", "said"]
    assert replace_word('  "House," he  said. ', 0, "Huose") == '  "Huose," he  said. '
    assert replace_word("a b\tc", 2, "x") == "a b\tx"


def test_greedy_toy_attack():
    res = greedy_attack(EXAMPLES, LABELS, toy_proba, max_edits=3)
    assert res.num_examples == 5
    assert res.accuracy == [0.8, 0.6, 0.4, 0.4]
    assert all(a <= b for a, b in zip(res.accuracy[1:], res.accuracy)) and max(res.accuracy) == res.accuracy[0]
    r0, r1, r2, r3, r4 = res.examples
    # one known word: its first edit in generation order (all tie) flips the label; punctuation kept
    assert r0.broken_at == 1 and r0.texts == ("the movie was wnderful, really",)
    assert r0.edits == [(0, 3, "wonderful", "wnderful")]
    assert r0.final_prob < 0.5 < r0.clean_prob
    # two known words: both edited, broken at 2 and not attacked in round 3
    assert r1.broken_at == 2 and {e[2] for e in r1.edits} == {"brilliant", "charming"}
    # "about"/"cat" may not be touched: after "wonderful" no candidate lowers p(1), the example survives
    assert r2.broken_at is None and known_count(r2.texts) == 2
    assert r2.edits[0][2] == "wonderful" and all(e[2] not in ("about", "cat") for e in r2.edits)
    assert r3.broken_at is None and len(r3.edits) == 3  # best (tied) edit still kept each round
    # misclassified clean: wrong at every k, never edited
    assert r4.broken_at == 0 and r4.edits == [] and r4.texts == EXAMPLES[4]
    for r in res.examples:
        check_edit(r)


def test_no_candidates_and_pairs():
    # sentence pair: the known word is in the second text
    rec = Recorder()
    res = greedy_attack([("the dog", "so charming!"), ("a cat sat", "it is")], [1, 1], rec, max_edits=2)
    r = res.examples[0]
    assert r.broken_at == 1 and r.edits == [(1, 1, "charming", "carming")] and r.texts == ("the dog", "so carming!")
    # second example: nothing eligible, it keeps its state and costs no query
    assert res.examples[1].broken_at is None and res.examples[1].edits == []
    assert res.accuracy == [1.0, 0.5, 0.5]
    assert res.num_queries == len(single_edits("charming", "all", PRUTHI_RULES))
    assert sum(len(c) for c in rec.calls) == 2 + res.num_queries


def test_misclassified_are_not_attacked():
    rec = Recorder()
    res = greedy_attack(EXAMPLES[3:], [1, 1], rec, max_edits=2)  # both wrong clean
    assert res.accuracy == [0.0, 0.0, 0.0] and res.num_queries == 0 and len(rec.calls) == 1


def test_max_edits_zero():
    rec = Recorder()
    res = greedy_attack(EXAMPLES, LABELS, rec, max_edits=0)
    assert res.accuracy == [0.8] and res.num_queries == 0
    assert len(rec.calls) == 1 and all(r.edits == [] for r in res.examples)


def test_batching_pools_examples():
    rec = Recorder()
    res = greedy_attack(EXAMPLES, LABELS, rec, max_edits=2, batch_size=7)
    assert max(len(c) for c in rec.calls) <= 7
    assert sum(len(c) for c in rec.calls) == len(EXAMPLES) + res.num_queries
    # some candidate batch mixes examples (a candidate keeps most words of its source in place)
    def source(ex):
        words = ex[0].split()
        return max(range(len(EXAMPLES)), key=lambda j: sum(a == b for a, b in zip(words, EXAMPLES[j][0].split())))

    assert any(len({source(ex) for ex in call}) > 1 for call in rec.calls[1:])
    # the batch size does not change the result
    assert greedy_attack(EXAMPLES, LABELS, toy_proba, max_edits=2, batch_size=1000) == res


def test_max_candidates_sampling_and_determinism():
    full = greedy_attack(EXAMPLES, LABELS, toy_proba, max_edits=2)
    a = greedy_attack(EXAMPLES, LABELS, toy_proba, max_edits=2, max_candidates=5, seed=3)
    b = greedy_attack(EXAMPLES, LABELS, toy_proba, max_edits=2, max_candidates=5, seed=3)
    assert a == b and greedy_attack(EXAMPLES, LABELS, toy_proba, max_edits=2) == full
    # at most 5 candidates per attacked example and round
    assert a.num_queries <= 5 * (4 + 3) < full.num_queries
    for r in a.examples:
        check_edit(r)
    # sampling only weakens the attack
    assert all(x >= y for x, y in zip(a.accuracy, full.accuracy))
    seeds = {tuple(tuple(r.edits) for r in greedy_attack(EXAMPLES, LABELS, toy_proba, max_edits=2,
                                                          max_candidates=5, seed=s).examples) for s in range(4)}
    assert len(seeds) > 1  # the sample depends on the seed
    # a cap above the number of candidates is the full search
    assert greedy_attack(EXAMPLES, LABELS, toy_proba, max_edits=2, max_candidates=10**6) == full


def test_ops_restrict_edits():
    res = greedy_attack(EXAMPLES[:2], LABELS[:2], toy_proba, ops="swap", max_edits=2)
    for r in res.examples:
        for _, _, old, new in r.edits:
            assert new in single_edits(old, "swap", PRUTHI_RULES)


def test_input_validation():
    with pytest.raises(ValueError, match="labels"):
        greedy_attack(EXAMPLES, LABELS[:2], toy_proba)
    with pytest.raises(ValueError, match="max_edits"):
        greedy_attack(EXAMPLES, LABELS, toy_proba, max_edits=-1)
    with pytest.raises(ValueError, match="empty"):
        greedy_attack([], [], toy_proba)
    with pytest.raises(ValueError, match="shape"):
        greedy_attack(EXAMPLES, LABELS, lambda b: toy_proba(b)[:, :1].ravel())
    with pytest.raises(ValueError, match="shape"):
        greedy_attack(EXAMPLES, LABELS, lambda b: toy_proba(b)[:-1])
    with pytest.raises(ValueError, match="class ids"):
        greedy_attack(EXAMPLES, [1, 1, 1, 0, 2], toy_proba)
    with pytest.raises(ValueError, match="1 or 2 texts"):
        greedy_attack([("a", "b", "c")], [0], toy_proba)
    with pytest.raises(ValueError, match="max_candidates"):
        greedy_attack(EXAMPLES, LABELS, toy_proba, max_candidates=0)
    with pytest.raises(ValueError, match="unknown noise operation"):
        greedy_attack(EXAMPLES, LABELS, toy_proba, ops="typo")


# --------------------------------------------------------------------------- real tiny models

PAIRS = [
    ("The committee approved the proposal yesterday.", "The proposal was accepted by the committee."),
    ("Markets fell sharply after the announcement.", "Stocks dropped following the news."),
    ("She enjoys reading historical novels.", "He prefers watching football matches."),
    ("The library opens early on weekdays.", "Weekday mornings the library is open."),
    ("Engineers repaired the damaged bridge.", "The weather forecast predicts heavy rain."),
    ("Children played happily in the garden.", "Kids were playing outside in the garden."),
]


def _model(bert_dir, kind):
    if kind == "bert":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        return (AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=2),
                AutoTokenizer.from_pretrained(bert_dir))
    from charbert.modeling import CharBertForSequenceClassification
    from charbert.tokenization import CharBertTokenizer

    return (CharBertForSequenceClassification.from_pretrained(bert_dir, num_labels=2),
            CharBertTokenizer.from_pretrained(bert_dir))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bert", "charbert"])
def test_real_model_attack(bert_dir, kind):
    model, tok = _model(bert_dir, kind)
    model.train()
    predict = model_predict_proba(model, tok, max_length=64, batch_size=4)
    probs = predict(PAIRS)
    assert probs.shape == (len(PAIRS), 2) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert model.training  # mode restored
    # padding does not change an example's probabilities
    assert np.allclose(predict(PAIRS[:1]), probs[:1], atol=1e-5)
    singles = predict([(a,) for a, _ in PAIRS])
    assert singles.shape == (len(PAIRS), 2) and np.allclose(singles.sum(1), 1.0, atol=1e-5)

    labels = [int(i) for i in probs.argmax(1)]  # random head: attack its own clean predictions
    labels[0] = 1 - labels[0]  # ... except one, misclassified clean
    rec = Recorder(predict)
    res = greedy_attack(PAIRS, labels, rec, max_edits=2, max_candidates=20, batch_size=16)
    assert res.accuracy[0] == pytest.approx(5 / 6)
    assert res.accuracy[2] <= res.accuracy[1] <= res.accuracy[0]
    assert 0 < res.num_queries <= 20 * 5 * 2 and max(len(c) for c in rec.calls) <= 16
    for r in res.examples[1:]:
        assert 1 <= len(r.edits) <= (2 if r.broken_at is None else r.broken_at)
        assert len({(t, w) for t, w, _, _ in r.edits}) == len(r.edits)  # no word edited twice
        check_edit(r)
        assert r.final_prob == pytest.approx(float(predict([r.texts])[0, r.label]), abs=1e-5)


def test_clean_predictions_replace_round_zero_and_queries_are_counted_per_example():
    full = greedy_attack(EXAMPLES, LABELS, toy_proba, max_edits=3)
    clean = toy_proba(EXAMPLES).argmax(1).tolist()
    recorder = Recorder()
    reused = greedy_attack(EXAMPLES, LABELS, recorder, max_edits=3, clean_predictions=clean)
    assert reused.accuracy == full.accuracy and reused.num_queries == full.num_queries
    assert all(ex not in EXAMPLES for call in recorder.calls for ex in call)  # the clean texts were not scored again
    assert [r.edits for r in reused.examples] == [r.edits for r in full.examples]
    assert sum(r.num_queries for r in full.examples) == full.num_queries and full.examples[4].num_queries == 0
    with pytest.raises(ValueError, match="clean predictions"):
        greedy_attack(EXAMPLES, LABELS, toy_proba, clean_predictions=clean[:2])
