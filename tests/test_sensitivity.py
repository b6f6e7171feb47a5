"""Sensitivity S (mean 1 - cos of a word's representation before/after noise): arithmetic and real tiny models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from charbert.robustness.attacks import attack_words
from charbert.robustness.sensitivity import (
    cosine_distances,
    sensitivity,
    sensitivity_from_encoder,
    sensitivity_stats,
    word_vectors,
)

# ---------------------------------------------------------------------------- toy encoder

# Fixed 2-D word vectors, chosen so every distance is easy to compute by hand.
TOY = {
    "the": (1.0, 1.0),
    "cat": (3.0, 4.0), "cta": (4.0, 3.0),  # cos = (12 + 12) / (5 * 5) = 24/25 -> distance 0.04
    "sat": (0.0, 2.0),
    "dog": (1.0, 0.0), "dgo": (0.0, 1.0),  # orthogonal -> distance 1
    "god": (-1.0, 0.0),                    # opposite of "dog" -> distance 2
    "ran": (5.0, 0.0),
    "cut": (math.nan, math.nan),           # a word without a representation (e.g. truncated)
}


def toy_encode(sentences):
    return [np.array([TOY[w] for w in words], dtype=np.float64).reshape(len(words), 2) for words in sentences]


CLEAN = [["the", "cat", "sat"], ["dog", "ran"]]
NOISY = [["the", "cta", "sat"], ["dgo", "ran"]]


def test_cosine_distances_by_hand():
    clean = np.array([[3, 4], [1, 0], [1, 0], [2, 2], [0, 0], [0, 0], [1, 1]], dtype=np.float32)
    noisy = np.array([[4, 3], [0, 1], [-1, 0], [5, 5], [0, 0], [0, 3], [math.nan, 1]], dtype=np.float32)
    d = cosine_distances(clean, noisy)
    assert d.dtype == np.float64 and d.shape == (7,)
    np.testing.assert_allclose(d[:6], [0.04, 1.0, 2.0, 0.0, 0.0, 1.0], atol=1e-12)  # zero/zero 0, zero/non-zero 1
    assert math.isnan(d[6])
    with pytest.raises(ValueError, match="one shape"):
        cosine_distances(np.ones((3, 2)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="one shape"):
        cosine_distances(np.ones(3), np.ones(3))


def test_sensitivity_stats_by_hand_with_nan():
    stats = sensitivity_stats([0.5, math.nan, 0.1, 0.3], [True, True, False, False])
    assert stats["num_words"] == 3 and stats["num_noised"] == 1 and stats["num_skipped"] == 1
    assert stats["S"] == pytest.approx(0.9 / 3, abs=1e-12)
    assert stats["S_noised"] == pytest.approx(0.5, abs=1e-12)
    assert stats["S_untouched"] == pytest.approx(0.2, abs=1e-12)
    only_clean = sensitivity_stats([0.2, 0.4], [False, False])
    assert only_clean["S_noised"] is None and only_clean["S_untouched"] == pytest.approx(0.3)
    empty = sensitivity_stats([], [])
    assert empty["S"] is None and empty["num_words"] == 0
    with pytest.raises(ValueError, match="2 distances but 3"):
        sensitivity_stats([0.1, 0.2], [True, False, True])


def test_toy_encoder_identical_inputs_give_zero():
    stats = sensitivity_from_encoder(toy_encode, CLEAN, CLEAN)
    assert abs(stats["S"]) < 1e-6 and stats["S_noised"] is None and stats["num_noised"] == 0
    assert stats["num_words"] == 5


def test_toy_encoder_by_hand():
    # distances per word: the 0, cat/cta 0.04, sat 0 | dog/dgo 1, ran 0; noised (strings differ): cat, dog
    stats = sensitivity_from_encoder(toy_encode, CLEAN, NOISY)
    assert stats["S"] == pytest.approx(1.04 / 5, abs=1e-12)
    assert stats["S_noised"] == pytest.approx((0.04 + 1.0) / 2, abs=1e-12)
    assert stats["S_untouched"] == pytest.approx(0.0, abs=1e-12)
    assert (stats["num_words"], stats["num_noised"], stats["num_skipped"]) == (5, 2, 0)
    # explicit `changed` overrides string comparison: dog -> dgo now counts as untouched
    stats = sensitivity_from_encoder(toy_encode, CLEAN, NOISY, changed=[[1], []])
    assert stats["S_noised"] == pytest.approx(0.04, abs=1e-12)
    assert stats["S_untouched"] == pytest.approx(1.0 / 4, abs=1e-12)
    assert stats["num_noised"] == 1
    # a flipped vector counts as distance 2
    stats = sensitivity_from_encoder(toy_encode, [["dog"]], [["god"]])
    assert stats["S"] == pytest.approx(2.0, abs=1e-12)


def test_nan_rows_are_skipped_and_counted():
    stats = sensitivity_from_encoder(toy_encode, [["cat", "cut", "the"]], [["cta", "cut", "the"]])
    assert stats["num_skipped"] == 1 and stats["num_words"] == 2
    assert stats["S"] == pytest.approx(0.02, abs=1e-12)  # (0.04 + 0) / 2: the NaN word does not dilute S
    assert stats["S_noised"] == pytest.approx(0.04, abs=1e-12)


def test_mismatched_inputs_raise():
    with pytest.raises(ValueError, match=r"Sentence 1: the clean sentence has 2 words, the noisy one 3"):
        sensitivity_from_encoder(toy_encode, CLEAN, [["the", "cta", "sat"], ["dgo", "ran", "the"]])
    with pytest.raises(ValueError, match="2 clean sentences but 1 noisy"):
        sensitivity_from_encoder(toy_encode, CLEAN, NOISY[:1])
    with pytest.raises(ValueError, match="outside its 2 words"):
        sensitivity_from_encoder(toy_encode, CLEAN, NOISY, changed=[[1], [2]])
    with pytest.raises(ValueError, match="changed has 1 entries"):
        sensitivity_from_encoder(toy_encode, CLEAN, NOISY, changed=[[1]])
    with pytest.raises(ValueError, match="encoder returned shape"):
        sensitivity_from_encoder(lambda s: [np.zeros((1, 2)) for _ in s], CLEAN, NOISY)


# ---------------------------------------------------------------------------- real tiny models

SENTENCES = [
    ["Xylophonists", "played", "in", "Zanzibarian", "halls", "."],
    ["The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "near", "the", "river", "bank", "."],
    ["A", "short", "one"],
]


def load(path, charbert: bool):
    from transformers import AutoModel, AutoTokenizer

    from charbert.modeling import CharBertModel
    from charbert.tokenization import CharBertTokenizer

    torch.manual_seed(0)  # CharBERT's character modules are newly initialised
    if charbert:
        return CharBertModel.from_pretrained(path), CharBertTokenizer.from_pretrained(path)
    return AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def noised(sentences, seed=0):
    rng = np.random.default_rng(seed)
    pairs = [attack_words(words, "swap", rng) for words in sentences]
    return [p[0] for p in pairs], [p[1] for p in pairs]


@pytest.mark.slow
@pytest.mark.parametrize("charbert", [True, False], ids=["charbert", "plain"])
def test_identical_inputs_give_zero_real_models(backbone_dir, charbert):
    model, tok = load(backbone_dir, charbert)
    model.train()  # dropout on: word_vectors must switch to eval, else identical inputs would differ
    stats = sensitivity(model, tok, SENTENCES, SENTENCES, batch_size=2)
    assert model.training, "the model's train mode is restored"
    assert stats["S"] is not None and abs(stats["S"]) < 1e-6
    assert stats["num_words"] == sum(map(len, SENTENCES)) and stats["num_skipped"] == 0


@pytest.mark.parametrize("charbert", [True, False], ids=["charbert", "plain"])
def test_length_sorted_batches_equal_one_sentence_at_a_time(bert_dir, charbert):
    model, tok = load(bert_dir, charbert)
    sentences = [SENTENCES[2], SENTENCES[1], SENTENCES[0], SENTENCES[2][:1], SENTENCES[1][:7]]  # lengths mixed
    batched = word_vectors(model, tok, sentences, batch_size=2)  # sorted into batches, returned in input order
    for sentence, vec in zip(sentences, batched):
        (alone,) = word_vectors(model, tok, [sentence], batch_size=1)  # no padding at all
        assert vec.shape == (len(sentence), alone.shape[1])
        np.testing.assert_allclose(vec, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("charbert", [True, False], ids=["charbert", "plain"])
def test_word_vector_is_mean_of_its_subwords(bert_dir, charbert):
    model, tok = load(bert_dir, charbert)
    model.eval()
    H = model.config.hidden_size
    vecs = word_vectors(model, tok, SENTENCES, batch_size=3)  # one padded batch
    assert [v.shape for v in vecs] == [(len(s), 2 * H if charbert else H) for s in SENTENCES]
    assert all(np.isfinite(v).all() for v in vecs)

    # Word 0 of sentence 0 by hand: its subwords are the tokens whose characters lie in "Xylophonists".
    text = " ".join(SENTENCES[0])
    inner = tok.tokenizer if charbert else tok
    offsets = inner(text, return_offsets_mapping=True)["offset_mapping"]
    idx = [t for t, (a, b) in enumerate(offsets) if b > a and b <= len("Xylophonists")]
    assert len(idx) > 1, "the test word must be split into several subwords"
    with torch.no_grad():
        out = model(**tok(text, return_tensors="pt"))
    states = torch.cat([out.last_hidden_state, out.char_last_hidden_state], -1) if charbert else out.last_hidden_state
    expected = states[0, idx].mean(0).double().numpy()
    np.testing.assert_allclose(vecs[0][0], expected, atol=1e-5)


def test_for_model_uses_its_base_model(bert_dir):
    from charbert.modeling import CharBertForSequenceClassification
    from charbert.tokenization import CharBertTokenizer

    torch.manual_seed(0)
    clf = CharBertForSequenceClassification.from_pretrained(bert_dir, num_labels=2).eval()
    tok = CharBertTokenizer.from_pretrained(bert_dir)
    a = word_vectors(clf, tok, SENTENCES[:1])[0]
    b = word_vectors(clf.charbert, tok, SENTENCES[:1])[0]
    assert a.shape == (6, 2 * clf.config.hidden_size)
    np.testing.assert_array_equal(a, b)
    assert not clf.training


def test_truncated_words_are_nan_and_skipped(bert_dir):
    model, tok = load(bert_dir, charbert=True)
    long = SENTENCES[1] * 3  # 42 words, far more than 12 tokens
    (vec,) = word_vectors(model, tok, [long], max_length=12)
    kept = ~np.isnan(vec).any(axis=1)
    assert 0 < kept.sum() < len(long) and not kept[-1] and kept[0]
    noisy, changed = noised([long])
    (noisy_vec,) = word_vectors(model, tok, noisy, max_length=12)
    both = kept & ~np.isnan(noisy_vec).any(axis=1)  # a word is compared only where both sides represent it
    stats = sensitivity(model, tok, [long], noisy, changed, max_length=12)
    assert stats["num_words"] == both.sum() > 0
    assert stats["num_skipped"] == len(long) - both.sum()


@pytest.mark.parametrize("charbert", [True, False], ids=["charbert", "plain"])
def test_noise_moves_the_noised_words(bert_dir, charbert):
    model, tok = load(bert_dir, charbert)
    noisy, changed = noised(SENTENCES)
    assert sum(map(len, changed)) >= 5 and noisy != SENTENCES
    stats = sensitivity(model, tok, SENTENCES, noisy, changed)
    assert stats["num_noised"] == sum(map(len, changed))
    assert stats["S_noised"] > 1e-3  # versus < 1e-6 for identical inputs
    # (no S_noised > S_untouched check: in a random tiny model the short untouched words move more)
