"""The sensitivity analysis of the CharBERT paper: how far noise moves a word's representation.

For each word, S is the cosine distance ``1 - cos(h_clean, h_noisy)`` between its output
representation in the clean sentence and in the noised one; the reported numbers are the
means over all words, over the noised words and over the untouched ones (untouched words
can move too: they attend to their noised neighbours).

Words are matched across the two sentences by *word index*, not by subword position: a
noised word is usually split into a different number of subwords, but the attack files keep
one token one token, so the clean and noisy sentences have the same number of words.

* :func:`cosine_distances` and :func:`sensitivity_stats` -- the arithmetic (numpy, float64);
* :func:`sensitivity_from_encoder` -- S for any ``encode(sentences) -> word vectors``;
* :func:`word_vectors` -- the real encoder: per-word means of a model's subword outputs,
  tokenised exactly as fine-tuning tokenises (:func:`charbert.tasks.features.word_features`);
* :func:`sensitivity` -- the two together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

__all__ = ["cosine_distances", "sensitivity_stats", "sensitivity_from_encoder", "word_vectors", "sensitivity"]

Words = Sequence[str]
Encoder = Callable[[list[list[str]]], list[np.ndarray]]


def cosine_distances(clean: np.ndarray, noisy: np.ndarray) -> np.ndarray:
    """Row-wise ``1 - cos(clean[i], noisy[i])`` of two (N, D) arrays, as an (N,) float64 array.

    Computed in float64 so identical rows give 0 up to ~1e-16 even for float32 inputs.
    A zero vector has no direction, so cosine is undefined there; we define the distance
    as 0 when *both* rows are zero (nothing changed) and 1 when exactly one is (as far as
    an orthogonal vector).  Rows holding NaN give NaN (:func:`sensitivity_stats` skips them).
    """
    a = np.asarray(clean, dtype=np.float64)
    b = np.asarray(noisy, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"cosine_distances needs two (N, D) arrays of one shape; got {a.shape} and {b.shape}.")
    norm_a, norm_b = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):  # zero rows are fixed up below
        dist = 1.0 - np.einsum("ij,ij->i", a, b) / (norm_a * norm_b)
    zero_a, zero_b = norm_a == 0, norm_b == 0
    dist[zero_a & zero_b] = 0.0
    dist[zero_a ^ zero_b] = 1.0
    return np.clip(dist, 0.0, 2.0)  # rounding can step just outside [0, 2]; NaN stays NaN


def sensitivity_stats(distances: Sequence[float], noised_mask: Sequence[bool]) -> dict[str, float | None]:
    """Mean distances overall (``S``), over noised words (``S_noised``) and untouched ones (``S_untouched``).

    NaN distances (a word without a representation, e.g. cut by truncation) are left out of
    every mean and counted in ``num_skipped``; ``num_words`` and ``num_noised`` count the
    words that *were* averaged.  A mean over an empty group is ``None``, not NaN, so a
    missing number cannot be mistaken for a measured one.
    """
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    noised = np.asarray(noised_mask, dtype=bool).reshape(-1)
    if d.shape != noised.shape:
        raise ValueError(f"{d.size} distances but {noised.size} noised flags.")
    valid = ~np.isnan(d)

    def mean(selected: np.ndarray) -> float | None:
        return float(d[selected].mean()) if selected.any() else None

    return {
        "S": mean(valid),
        "S_noised": mean(valid & noised),
        "S_untouched": mean(valid & ~noised),
        "num_words": int(valid.sum()),
        "num_noised": int((valid & noised).sum()),
        "num_skipped": int((~valid).sum()),
    }


def _check_pairs(clean: Sequence[Words], noisy: Sequence[Words]) -> None:
    if len(clean) != len(noisy):
        raise ValueError(f"{len(clean)} clean sentences but {len(noisy)} noisy ones: they must pair up one to one.")
    for i, (c, n) in enumerate(zip(clean, noisy)):
        if len(c) != len(n):
            raise ValueError(
                f"Sentence {i}: the clean sentence has {len(c)} words, the noisy one {len(n)}; "
                "words are matched by index, so noise must keep one word one word."
            )


def _noised_mask(clean: Sequence[Words], noisy: Sequence[Words], changed: Sequence[Sequence[int]] | None) -> np.ndarray:
    """One flag per word of all sentences, in order: was this word noised?"""
    if changed is None:  # default: a word was noised when its string differs
        return np.array([c != n for cs, ns in zip(clean, noisy) for c, n in zip(cs, ns)], dtype=bool)
    if len(changed) != len(clean):
        raise ValueError(f"changed has {len(changed)} entries but there are {len(clean)} sentences.")
    flags = []
    for i, (words, idx) in enumerate(zip(clean, changed)):
        row = np.zeros(len(words), dtype=bool)
        bad = [k for k in idx if not 0 <= k < len(words)]
        if bad:
            raise ValueError(f"Sentence {i}: changed word indices {bad} are outside its {len(words)} words.")
        row[list(idx)] = True
        flags.append(row)
    return np.concatenate(flags) if flags else np.zeros(0, dtype=bool)


def _stack(vectors: list[np.ndarray], sentences: Sequence[Words], side: str) -> np.ndarray:
    """The encoder's per-sentence (n_words_i, D) arrays as one (sum n_words_i, D) array, checked."""
    if len(vectors) != len(sentences):
        raise ValueError(f"The encoder returned {len(vectors)} arrays for {len(sentences)} {side} sentences.")
    arrays = [np.asarray(v, dtype=np.float64) for v in vectors]
    for i, (v, words) in enumerate(zip(arrays, sentences)):
        if v.ndim != 2 or v.shape[0] != len(words):
            raise ValueError(f"The encoder returned shape {v.shape} for {side} sentence {i} of {len(words)} words.")
    return np.concatenate(arrays) if arrays else np.zeros((0, 0))


def sensitivity_from_encoder(encode: Encoder, clean_sentences: Sequence[Words], noisy_sentences: Sequence[Words],
                             changed: Sequence[Sequence[int]] | None = None) -> dict[str, float | None]:
    """S for sentence pairs under any encoder.

    ``encode(list_of_word_lists)`` returns one (n_words_i, D) array per sentence (NaN rows
    for words it has no representation of).  ``changed[i]`` lists the word indices of
    sentence ``i`` that were noised (as :func:`charbert.robustness.attacks.attack_words`
    returns them); by default, the words whose strings differ.  Returns the dict of
    :func:`sensitivity_stats`.
    """
    clean = [list(s) for s in clean_sentences]
    noisy = [list(s) for s in noisy_sentences]
    _check_pairs(clean, noisy)
    mask = _noised_mask(clean, noisy, changed)  # validated before the (costly) encoding
    return _sensitivity(clean, noisy, encode(clean), encode(noisy), mask)


def sensitivity_from_vectors(clean_sentences: Sequence[Words], noisy_sentences: Sequence[Words],
                             clean_vectors: Sequence[np.ndarray], noisy_vectors: Sequence[np.ndarray],
                             changed: Sequence[Sequence[int]] | None = None) -> dict[str, float | None]:
    """S from word vectors already computed (one (n_words_i, D) array per sentence, as an encoder
    returns them): what a scoring pass that also kept the vectors gives, with no second encoding."""
    clean = [list(s) for s in clean_sentences]
    noisy = [list(s) for s in noisy_sentences]
    _check_pairs(clean, noisy)
    return _sensitivity(clean, noisy, clean_vectors, noisy_vectors, _noised_mask(clean, noisy, changed))


def _sensitivity(clean, noisy, clean_vectors, noisy_vectors, mask) -> dict[str, float | None]:
    distances = cosine_distances(_stack(clean_vectors, clean, "clean"), _stack(noisy_vectors, noisy, "noisy"))
    return sensitivity_stats(distances, mask)


def word_means(states: np.ndarray, token_word: Sequence[int | None], n_words: int) -> np.ndarray:
    """(n_words, D) float64: each word's mean over its subword rows of ``states`` (L, D); NaN rows for
    words with none (truncated, dropped by the normaliser, or indexed past the L rows). One
    (n_words, L) @ (L, D) product, also for D = a 30k-word vocabulary (the NLM corrector)."""
    pairs = [(w, t) for t, w in enumerate(token_word) if w is not None and t < len(states)]
    average = np.zeros((n_words, len(states)), dtype=np.float64)
    if pairs:
        words, tokens = np.array(pairs, dtype=np.intp).T
        average[words, tokens] = 1.0
    counts = average.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (average / counts[:, None]) @ states
    out[counts == 0] = np.nan  # no representation
    return out


def word_vectors(model, tokenizer, sentences: Sequence[Words], max_length: int = 128,
                 batch_size: int = 32) -> list[np.ndarray]:
    """One (n_words, D) float64 array per sentence: each word's mean subword output of ``model``.

    Tokenisation is fine-tuning's own (:func:`~charbert.tasks.features.word_features`), so
    the subwords and their word alignment are what the NER/POS heads see.  The model's
    *base model* runs in eval mode (no dropout: identical inputs give identical vectors);
    for CharBERT the token vector is ``[last_hidden_state, char_last_hidden_state]``
    (D = 2H, the input of the fine-tuning heads), for plain BERT/RoBERTa
    ``last_hidden_state`` (D = H).  Words past ``max_length`` get NaN rows.
    The model's train/eval mode is restored afterwards.
    """
    from charbert.cli import eval_mode
    from charbert.tasks.features import word_features
    from charbert.tasks.inference import length_order
    from charbert.tasks.loading import task_collator
    from charbert.tasks.ner import Sentence

    words = [list(s) for s in sentences]
    rows, alignments = word_features(tokenizer, [Sentence(tokens=w, tags=None, line=0) for w in words], max_length)
    collate = task_collator(tokenizer)
    base = model.base_model  # HF: the bare encoder of a *For* model, or the model itself
    device = next(base.parameters()).device
    # Longest first, in batches of similar length (little padding); results go back to input order.
    order = length_order(rows) or list(range(len(rows)))
    out: list[np.ndarray | None] = [None] * len(rows)
    with eval_mode(model), torch.inference_mode():
        for lo in range(0, len(order), batch_size):
            ids = order[lo:lo + batch_size]
            batch = {k: v.to(device) for k, v in collate([rows[i] for i in ids]).items()}
            output = base(**batch)
            states = output.last_hidden_state  # (B, L, H)
            char = getattr(output, "char_last_hidden_state", None)
            if char is not None:  # CharBERT: both channels, as the heads see them
                states = torch.cat([states, char], dim=-1)  # (B, L, 2H)
            states = states.float().cpu().numpy()
            for row, i in enumerate(ids):
                align = alignments[i]
                out[i] = word_means(states[row], align.token_word, len(align.first_token))
    return out


def sensitivity(model, tokenizer, clean_sentences: Sequence[Words], noisy_sentences: Sequence[Words],
                changed: Sequence[Sequence[int]] | None = None, max_length: int = 128,
                batch_size: int = 32) -> dict[str, float | None]:
    """S of a real model: :func:`sensitivity_from_encoder` with :func:`word_vectors`."""

    def encode(sentences: list[list[str]]) -> list[np.ndarray]:
        return word_vectors(model, tokenizer, sentences, max_length=max_length, batch_size=batch_size)

    return sensitivity_from_encoder(encode, clean_sentences, noisy_sentences, changed)
