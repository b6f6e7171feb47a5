"""A frozen copy of the pretraining collator as it was before its speed work: the reference that
tests/test_collator_pinned.py compares the fast collator against, seed by seed (same fields, same values).

Do not optimise this file: it is the specification. It still calls the library's noise, word splitting
and character alignment, whose own outputs the hashes in test_collator_pinned.py pin.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from charbert.noise import OPERATIONS, PRETRAIN_RULES, NoiseRules, noise_words
from charbert.pretraining.vocab import WordVocab, split_words
from charbert.tokenization import CharBertTokenizer, gc_paused

OBJECTIVES = ("charbert", "advbert", "mlm")


def apply_word_edits(text: str, spans: Sequence[tuple[int, int]], new_words: Sequence[str]) -> tuple[str, np.ndarray]:
    """Replace each word span by its new form; returns the edited text and the words' new starts."""
    parts, starts, position, shift = [], np.empty(len(spans), dtype=np.int64), 0, 0
    for k, ((s, e), word) in enumerate(zip(spans, new_words)):
        parts.append(text[position:s])
        starts[k] = s + shift
        parts.append(word)
        shift += len(word) - (e - s)
        position = e
    parts.append(text[position:])
    return "".join(parts), starts


def choose_whole_words(token_word: np.ndarray, candidates: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """Draw whole words (in random order) until `target` tokens are chosen; a word whose tokens
    would overshoot the target is skipped. Returns a boolean mask over tokens."""
    chosen = np.zeros(len(token_word), dtype=bool)
    if target <= 0 or len(candidates) == 0:
        return chosen
    sizes = np.bincount(token_word[token_word >= 0], minlength=int(candidates.max()) + 1)
    count = 0
    for word in rng.permutation(candidates):
        size = int(sizes[word])
        if count + size > target:
            continue
        chosen |= token_word == word
        count += size
        if count >= target:
            break
    return chosen


def token_words(offsets: np.ndarray, real: np.ndarray, word_ends: np.ndarray) -> np.ndarray:
    """The word each real token belongs to (-1 for special, padding and trailing-space tokens).

    A token belongs to the first word that ends after the token's first character, so a piece
    whose span starts with the space before its word (byte-level BPE's `Ġ` without trimmed
    offsets) still joins that word, and the pieces of a word split into several share its id.
    """
    word = np.searchsorted(word_ends, offsets[:, 0], side="right")
    return np.where(real & (word < len(word_ends)), word, -1)


class ReferencePretrainingCollator:
    """Text blocks -> a CharBERT pretraining batch (see the module docstring)."""

    needs_rng = True

    def __init__(
        self,
        tokenizer: CharBertTokenizer,
        word_vocab: WordVocab | None,
        max_seq_length: int = 128,
        mlm_probability: float = 0.10,
        noise_probability: float = 0.15,
        mask_ratio: float = 0.8,
        random_ratio: float = 0.1,
        noise_rules: NoiseRules = PRETRAIN_RULES,
        noise_operations: Sequence[str] = OPERATIONS,
        objective: str = "charbert",
    ):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}; got {objective!r}.")
        if objective == "charbert" and word_vocab is None:
            raise ValueError("The charbert objective needs a word vocabulary for its NLM labels.")
        for name, p in (("mlm_probability", mlm_probability), ("noise_probability", noise_probability)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]; got {p}.")
        if mask_ratio < 0 or random_ratio < 0 or mask_ratio + random_ratio > 1:
            raise ValueError(f"mask_ratio ({mask_ratio}) + random_ratio ({random_ratio}) must lie in [0, 1].")
        self.tokenizer = tokenizer
        # Subwords first (the masks are drawn on them), the characters after, with the chosen tokens hidden.
        self.hf_tokenizer = tokenizer.tokenizer if isinstance(tokenizer, CharBertTokenizer) else tokenizer
        if self.hf_tokenizer.mask_token_id is None:
            raise ValueError("The tokenizer has no mask token: MLM needs one.")
        self.word_vocab = word_vocab
        self.max_seq_length = max_seq_length
        self.mlm_probability = mlm_probability
        self.noise_probability = 0.0 if objective == "mlm" else noise_probability
        self.mask_ratio, self.random_ratio = mask_ratio, random_ratio
        self.noise_rules, self.noise_operations = noise_rules, tuple(noise_operations)
        self.objective = objective
        self.special_ids = np.array(sorted(self.hf_tokenizer.all_special_ids))

    def __call__(self, blocks: Sequence[str], rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        if rng is None:
            raise ValueError("PretrainingCollator draws noise and masks from the rng the training loop passes (needs_rng).")
        with gc_paused():  # it tokenises through the subword twin, so the tokenizer call's own pause does not apply
            return self._collate(blocks, rng)

    def _collate(self, blocks: Sequence[str], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        texts, word_ends, noised_words, originals = [], [], [], []
        for block in blocks:
            spans = split_words(block)
            words = [block[s:e] for s, e in spans]
            if self.noise_probability > 0:
                new_words, changed = noise_words(words, rng, self.noise_rules, self.noise_probability, self.noise_operations)
            else:
                new_words, changed = words, []
            text, starts = apply_word_edits(block, spans, new_words)
            texts.append(text)
            word_ends.append(starts + np.array([len(w) for w in new_words], dtype=np.int64))
            noised_words.append(np.asarray(changed, dtype=np.int64))
            originals.append(words)
        enc = self.hf_tokenizer(texts, truncation=True, max_length=self.max_seq_length, return_offsets_mapping=True)
        rows = [self._row(enc, i, texts[i], word_ends[i], noised_words[i], originals[i], rng) for i in range(len(texts))]
        if self.objective == "charbert":
            chars = self.tokenizer.char_features(enc, texts, hidden=[row.pop("hidden") for row in rows])
            for row, row_chars in zip(rows, chars):
                row.update(row_chars)
        return self._pad(rows)

    def _row(self, enc, i, text, word_ends, noised, words, rng) -> dict:
        input_ids = np.asarray(enc["input_ids"][i], dtype=np.int64)
        offsets = np.asarray(enc["offset_mapping"][i], dtype=np.int64).reshape(-1, 2)
        sequence_ids = enc.sequence_ids(i)
        real = np.array([s is not None for s in sequence_ids]) & (offsets[:, 1] > offsets[:, 0])
        token_word = token_words(offsets, real, word_ends)

        nlm_labels = np.full(len(input_ids), -100, dtype=np.int64)
        is_noised = np.isin(token_word, noised) & real
        if self.objective == "charbert" and is_noised.any():
            word_ids = {int(w): self.word_vocab.id(words[int(w)]) for w in np.unique(token_word[is_noised])}
            nlm_labels[is_noised] = [word_ids[int(w)] for w in token_word[is_noised]]

        candidates = np.setdiff1d(np.unique(token_word[real]), noised)
        target = int(round(self.mlm_probability * int(real.sum())))
        chosen = choose_whole_words(token_word, candidates, target, rng)
        labels = np.where(chosen, input_ids, -100)
        draw = rng.random(len(input_ids))
        masked = chosen & (draw < self.mask_ratio)
        randomised = chosen & (draw >= self.mask_ratio) & (draw < self.mask_ratio + self.random_ratio)
        input_ids = input_ids.copy()
        input_ids[masked] = self.hf_tokenizer.mask_token_id
        if randomised.any():
            input_ids[randomised] = self._random_tokens(int(randomised.sum()), rng)

        row = {"input_ids": input_ids, "labels": labels}
        if "token_type_ids" in enc:
            row["token_type_ids"] = np.asarray(enc["token_type_ids"][i], dtype=np.int64)
        if self.objective == "charbert":
            row["nlm_labels"] = nlm_labels
            row["hidden"] = chosen  # the characters of these tokens are hidden (char_features)
        return row

    def _random_tokens(self, n: int, rng) -> np.ndarray:
        """Random non-special token ids."""
        vocab = len(self.hf_tokenizer)
        ids = rng.integers(0, vocab - len(self.special_ids), size=n)
        # shift past the special ids so none is drawn (special_ids sorted)
        for special in self.special_ids:
            ids = ids + (ids >= special)
        return ids

    def _pad(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """The tokenizer's `pad` for the model inputs (characters included); the labels padded with -100."""
        label_names = [k for k in ("labels", "nlm_labels") if k in rows[0]]
        inputs = [{k: v for k, v in r.items() if k not in label_names} for r in rows]
        batch = dict(self.tokenizer.pad(inputs, return_tensors="pt"))
        length = batch["input_ids"].shape[1]
        for key in label_names:
            out = np.full((len(rows), length), -100, dtype=np.int64)
            for i, r in enumerate(rows):
                out[i, : len(r[key])] = r[key]
            batch[key] = torch.from_numpy(out)
        return batch
