"""Task metrics against hand-computed values (and seqeval for NER)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest

from charbert.tasks.glue import (
    average_ranks,
    binary_f1,
    glue_metrics,
    matthews_corrcoef,
    pearson_corrcoef,
    spearman_corrcoef,
)
from charbert.tasks.ner import get_entities, label_list, ner_metrics, read_conll
from charbert.tasks.pos import pos_accuracy
from charbert.tasks.squad import (
    SquadExample,
    compute_exact,
    compute_f1,
    normalize_answer,
    postprocess_qa_predictions,
    squad_evaluate,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# ---------------------------------------------------------------------------
# GLUE
# ---------------------------------------------------------------------------

# Confusion matrix: TP=3, TN=2, FP=1, FN=2.
REFS = [1, 1, 1, 1, 1, 0, 0, 0]
PREDS = [1, 1, 1, 0, 0, 0, 0, 1]


def test_matthews_by_hand():
    expected = (3 * 2 - 1 * 2) / math.sqrt((3 + 1) * (3 + 2) * (2 + 1) * (2 + 2))  # 4/sqrt(240)
    assert matthews_corrcoef(PREDS, REFS) == pytest.approx(expected)
    assert matthews_corrcoef(REFS, REFS) == pytest.approx(1.0)
    assert matthews_corrcoef([1 - r for r in REFS], REFS) == pytest.approx(-1.0)
    assert matthews_corrcoef([1] * 8, REFS) == 0.0  # undefined -> 0 (majority-class model)
    assert glue_metrics("cola", PREDS, REFS) == {"matthews_correlation": pytest.approx(0.2581988897)}


def test_multiclass_matthews_matches_confusion_formula():
    # 3 classes; sklearn's formula: (c*s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)).
    refs = [0, 0, 1, 1, 2, 2]
    preds = [0, 1, 1, 1, 2, 0]
    t, p, c, s = np.array([2, 2, 2]), np.array([2, 3, 1]), 4, 6
    expected = (c * s - t @ p) / math.sqrt((s * s - p @ p) * (s * s - t @ t))
    assert matthews_corrcoef(preds, refs) == pytest.approx(expected)


def test_f1_and_accuracy_by_hand():
    assert binary_f1(PREDS, REFS) == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))  # P=3/4, R=3/5
    assert binary_f1([0] * 8, REFS) == 0.0
    out = glue_metrics("mrpc", PREDS, REFS)
    assert out == {"accuracy": pytest.approx(5 / 8), "f1": pytest.approx(2 / 3)}
    assert set(glue_metrics("qqp", PREDS, REFS)) == {"accuracy", "f1"}
    for task in ("sst2", "sst-2", "mnli", "qnli", "rte", "wnli"):
        assert glue_metrics(task, PREDS, REFS) == {"accuracy": pytest.approx(5 / 8)}


def test_pearson_and_spearman_by_hand():
    # dx = [-1.5,-.5,.5,1.5], dy = [-3,-1,0,4]: r = 11 / sqrt(5 * 26)
    assert pearson_corrcoef([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / math.sqrt(130))
    # Ties: ranks x = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4] -> r = 4.5 / sqrt(4.5 * 5)
    assert list(average_ranks([10, 20, 20, 30])) == [1.0, 2.5, 2.5, 4.0]
    assert list(average_ranks([3.0, 1.0, 3.0, 3.0, 0.5])) == [4.0, 2.0, 4.0, 4.0, 1.0]
    assert spearman_corrcoef([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    # Spearman is invariant to monotone transforms, Pearson is not.
    x = [0.1, 0.5, 0.7, 2.0, 3.5]
    assert spearman_corrcoef(x, np.exp(x)) == pytest.approx(1.0)
    out = glue_metrics("stsb", [1, 2, 2, 3], [1, 3, 2, 4])
    assert set(out) == {"pearson", "spearmanr"}
    assert out["spearmanr"] == pytest.approx(4.5 / math.sqrt(22.5))
    assert math.isnan(pearson_corrcoef([1, 1, 1], [1, 2, 3]))  # undefined, as scipy


def test_glue_metrics_input_checks():
    with pytest.raises(ValueError, match="3 predictions but 2 references"):
        glue_metrics("rte", [0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="argmax"):
        glue_metrics("rte", [[0.1, 0.9]], [1])
    with pytest.raises(ValueError, match="zero examples"):
        glue_metrics("cola", [], [])
    with pytest.raises(ValueError, match="non-integral"):
        glue_metrics("sst2", [0.7, 1.0], [0, 1])  # probabilities, not label ids
    assert glue_metrics("sst2", np.array([1.0, 0.0]), [1, 1]) == {"accuracy": 0.5}


# ---------------------------------------------------------------------------
# SQuAD evaluation
# ---------------------------------------------------------------------------


def test_normalize_answer_edge_cases():
    assert normalize_answer("The  Cat!") == "cat"
    assert normalize_answer("theater") == "theater"  # articles only as whole words
    assert normalize_answer("The Theater, an  Anthem") == "theater anthem"
    assert normalize_answer("?!...") == ""
    assert normalize_answer("") == ""
    assert compute_exact("The  Cat!", "cat") == 1
    assert compute_exact("theater", "ater") == 0


def test_f1_by_hand():
    # gold tokens {quick, brown, fox}, pred {brown, fox, jumps}: P = R = 2/3.
    assert compute_f1("the quick brown fox", "brown fox jumps") == pytest.approx(2 / 3)
    # gold {a b c d} vs pred {b}: P = 1, R = 1/4 -> F1 = 0.4 (counts, not sets)
    assert compute_f1("x y z w", "y") == pytest.approx(0.4)
    assert compute_f1("fox fox", "fox") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert compute_f1("cat", "dog") == 0.0
    # v2.0 semantics for empty answers
    assert compute_f1("", "") == 1.0 and compute_exact("", "") == 1
    assert compute_f1("", "cat") == 0.0 and compute_f1("cat", "") == 0.0
    assert compute_f1("the", "") == 1.0  # both normalize to nothing


def ex(qid, answers, context="ctx"):
    return SquadExample(qid, "t", "q?", context,
                        [{"text": a, "answer_start": 0} for a in answers], is_impossible=not answers)


def test_squad_evaluate_max_over_golds_and_split():
    examples = [
        ex("a", ["Denver Broncos", "Broncos", "the Broncos team"]),
        ex("b", ["quick brown fox"]),
        ex("c", []),
        ex("d", []),
    ]
    preds = {"a": "broncos", "b": "brown fox jumps", "c": "", "d": "something", "zzz": "ignored"}
    out = squad_evaluate(examples, preds)
    # a: exact 1, f1 1 ; b: exact 0, f1 2/3 ; c: 1, 1 ; d: 0, 0
    assert out["total"] == 4 and out["missing"] == 0
    assert out["exact"] == pytest.approx(100 * 2 / 4)
    assert out["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1 + 0) / 4)
    assert (out["HasAns_total"], out["NoAns_total"]) == (2, 2)
    assert out["HasAns_exact"] == pytest.approx(50.0)
    assert out["HasAns_f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert out["NoAns_exact"] == pytest.approx(50.0) and out["NoAns_f1"] == pytest.approx(50.0)


def test_squad_evaluate_v1_and_missing():
    examples = [ex("a", ["cat"]), ex("b", ["dog"])]
    out = squad_evaluate(examples, {"a": "The cat."})
    assert out == {"exact": 50.0, "f1": 50.0, "total": 2, "missing": 1}  # no HasAns/NoAns for v1


# ---------------------------------------------------------------------------
# SQuAD post-processing from logits
# ---------------------------------------------------------------------------

CONTEXT = "The cat sat on the mat."
# Two overlapping windows over the context: [CLS] q [SEP] ctx... [SEP] [PAD]
OFFSETS_A = [None, None, None, (0, 3), (4, 7), (8, 11), (12, 14), None, None]  # The cat sat on
OFFSETS_B = [None, None, None, (12, 14), (15, 18), (19, 22), (22, 23), None, None]  # on the mat .
FEATURES = [{"example_id": "q", "offset_mapping": OFFSETS_A}, {"example_id": "q", "offset_mapping": OFFSETS_B}]


def qa_logits(cls_a=(1.0, 1.0)):
    start = np.zeros((2, 10))  # one column longer than the offsets: padding is ignored
    end = np.zeros((2, 10))
    start[0, [0, 3, 4, 8]] = [cls_a[0], 0.5, 2.0, 5.0]  # 8 = [PAD]: high but invalid
    end[0, [0, 4]] = [cls_a[1], 1.5]  # "cat" = 2.0 + 1.5 = 3.5
    start[1, [0, 4]] = [3.0, 2.5]
    end[1, [0, 3, 5]] = [2.0, 4.0, 2.0]  # "the mat" = 2.5 + 2.0 = 4.5; (4 -> 3) has end < start
    return start, end


def test_postprocess_v1_picks_best_span_across_features():
    start, end = qa_logits()
    examples = [SquadExample("q", "t", "Where?", CONTEXT, [])]
    preds, nbest = postprocess_qa_predictions(examples, FEATURES, start, end)
    assert preds == {"q": "the mat"}
    texts = [(c["text"], c["score"]) for c in nbest["q"][:3]]
    assert texts == [("the mat", 4.5), ("on", 4.0), ("cat", 3.5)]
    assert sum(c["probability"] for c in nbest["q"]) == pytest.approx(1.0)
    assert nbest["q"][0]["offsets"] == (15, 22)
    # Length limit: two-token "the mat" is no longer allowed.
    preds, _ = postprocess_qa_predictions(examples, FEATURES, start, end, max_answer_length=1)
    assert preds == {"q": "on"}
    # n_best_size also limits the candidate start/end indices per window:
    # with 1, window B only tries start 0 ([CLS], invalid) and A only start 8 ([PAD]).
    preds, nbest = postprocess_qa_predictions(examples, FEATURES, start, end, n_best_size=1)
    assert preds == {"q": ""} and nbest["q"] == []


def test_postprocess_v2_null_answer():
    examples = [SquadExample("q", "t", "Where?", CONTEXT, [])]
    start, end = qa_logits()
    # null = min(1+1, 3+2) = 2.0; best span 4.5 -> odds -2.5
    preds, nbest, odds = postprocess_qa_predictions(
        examples, FEATURES, start, end, version_2_with_negative=True, return_null_odds=True)
    assert preds == {"q": "the mat"} and odds["q"] == pytest.approx(-2.5)
    null = [c for c in nbest["q"] if c["offsets"] is None]
    assert len(null) == 1 and null[0]["text"] == "" and null[0]["score"] == pytest.approx(2.0)
    preds, _ = postprocess_qa_predictions(
        examples, FEATURES, start, end, version_2_with_negative=True, null_score_diff_threshold=-3.0)
    assert preds == {"q": ""}
    # CLS of window A now 10 -> null = min(10, 5) = 5 > 4.5 -> no answer.
    start, end = qa_logits(cls_a=(5.0, 5.0))
    preds, nbest, odds = postprocess_qa_predictions(
        examples, FEATURES, start, end, version_2_with_negative=True, return_null_odds=True)
    assert preds == {"q": ""} and odds["q"] == pytest.approx(0.5)
    assert nbest["q"][0]["text"] == ""
    # v1 ignores the null score
    preds, _ = postprocess_qa_predictions(examples, FEATURES, start, end)
    assert preds == {"q": "the mat"}


def test_postprocess_checks_and_max_context():
    examples = [SquadExample("q", "t", "Where?", CONTEXT, [])]
    start, end = qa_logits()
    with pytest.raises(ValueError, match="2 features but 1 rows"):
        postprocess_qa_predictions(examples, FEATURES, start[:1], end[:1])
    with pytest.raises(ValueError, match="example_id 'x'"):
        postprocess_qa_predictions(examples, [{"example_id": "x", "offset_mapping": OFFSETS_A}], start[:1], end[:1])
    # A span may not start at a token that has more context in another window.
    feats = [dict(FEATURES[0]), dict(FEATURES[1], token_is_max_context={"3": True, "4": False, "5": True, "6": True})]
    preds, _ = postprocess_qa_predictions(examples, feats, start, end)
    assert preds == {"q": "on"}
    feats[1]["token_is_max_context"] = {3: True, 4: False}  # int keys (original BERT code)
    assert postprocess_qa_predictions(examples, feats, start, end)[0] == {"q": "on"}
    # Ragged (unpadded) rows of logits are fine.
    ragged_s, ragged_e = [start[0][:9], start[1][:8]], [end[0][:9], end[1][:8]]
    assert postprocess_qa_predictions(examples, FEATURES, ragged_s, ragged_e)[0] == {"q": "the mat"}


# ---------------------------------------------------------------------------
# NER
# ---------------------------------------------------------------------------


def test_get_entities_strict_iob2_boundaries():
    assert get_entities(["O", "I-PER", "I-PER"]) == []  # I- after O is not an entity
    assert get_entities(["I-PER"]) == []
    assert get_entities(["B-PER", "I-LOC"]) == [("PER", 0, 0)]  # I-LOC continues nothing
    assert get_entities(["B-PER", "B-PER"]) == [("PER", 0, 0), ("PER", 1, 1)]
    assert get_entities(["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-LOC"]) == [("PER", 0, 1), ("LOC", 3, 5)]
    assert get_entities(["B-ORG", "I-ORG", "I-PER", "I-PER"]) == [("ORG", 0, 1)]
    assert get_entities([]) == []
    with pytest.raises(ValueError, match="invalid IOB2 tag 'S-PER'"):
        get_entities(["S-PER"])


def test_ner_metrics_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["I-ORG", "O"]]
    out = ner_metrics(gold, pred)
    # gold: PER(0-1), LOC(3), ORG ; pred: PER(0-1), ORG(3) -> tp=1, P=1/2, R=1/3
    assert out["precision"] == pytest.approx(0.5) and out["recall"] == pytest.approx(1 / 3)
    assert out["f1"] == pytest.approx(0.4)
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert out["per_type"]["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert out["per_type"]["LOC"]["support"] == 1
    with pytest.raises(ValueError, match="sentence 1: 2 gold tags but 1 predicted"):
        ner_metrics(gold, [pred[0], ["O"]])


def test_pos_accuracy():
    assert pos_accuracy([["NN", "VB"], ["DT"]], [["NN", "NN"], ["DT"]]) == {"accuracy": pytest.approx(2 / 3)}
    with pytest.raises(ValueError, match="sentence 0"):
        pos_accuracy([["NN"]], [["NN", "VB"]])


@pytest.mark.slow  # reads a whole real data set
@pytest.mark.data
def test_ner_metrics_match_seqeval_on_corrupted_conll_dev():
    seqeval_metrics = pytest.importorskip("seqeval.metrics", reason="seqeval not installed")
    from seqeval.scheme import IOB2, Entities

    path = DATA / "conll2003" / "dev.txt"
    if not path.is_file():
        pytest.skip(f"../shared/data not found: {path}")
    gold = [s.tags for s in read_conll(path)]
    labels = label_list(gold)
    rng = random.Random(0)
    for rate in (0.15,):
        # Random tag swaps create every boundary case: stray I-, type changes, splits.
        pred = [[rng.choice(labels) if rng.random() < rate else t for t in tags] for tags in gold]
        ours = ner_metrics(gold, pred)
        report = seqeval_metrics.classification_report(gold, pred, output_dict=True, mode="strict", scheme=IOB2)
        micro = report["micro avg"]  # = precision_score/recall_score/f1_score(mode="strict")
        assert ours["precision"] == pytest.approx(micro["precision"])
        assert ours["recall"] == pytest.approx(micro["recall"])
        assert ours["f1"] == pytest.approx(micro["f1-score"])
        assert ours["accuracy"] == pytest.approx(seqeval_metrics.accuracy_score(gold, pred))
        for typ, scores in ours["per_type"].items():
            ref = report[typ]
            assert scores["precision"] == pytest.approx(ref["precision"])
            assert scores["recall"] == pytest.approx(ref["recall"])
            assert scores["f1"] == pytest.approx(ref["f1-score"])
            assert scores["support"] == ref["support"]
        assert set(ours["per_type"]) == set(report) - {"micro avg", "macro avg", "weighted avg"}
        # Entity spans agree exactly too (seqeval's end is exclusive).
        theirs = {(e.sent_id, e.tag, e.start, e.end - 1) for sent in Entities(pred, IOB2).entities for e in sent}
        assert theirs == {(i, *e) for i, tags in enumerate(pred) for e in get_entities(tags)}


def test_ner_subword_breakdown_by_hand():
    from charbert.tasks.ner import ner_subword_breakdown

    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-MISC"]]
    subwords = [[1, 2, 1, 1], [1, 3]]
    # single: gold LOC, ORG; predicted ORG (hit) -> p 1, r 1/2.  multi (a split word inside):
    # gold PER; predicted PER (hit) and MISC over the 3-subword word -> p 1/2, r 1.
    out = ner_subword_breakdown(gold, pred, subwords)
    assert out["single"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert out["multi"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    with pytest.raises(ValueError, match="subword counts"):
        ner_subword_breakdown(gold, pred, [[1, 1, 1, 1], [1]])
