"""The pretraining batch: character noise (NLM) and whole-word masking (MLM) on text blocks.

Per block (the paper's recipe, rates as parameters):
  1. words = `split_words(text)`; a share `noise_probability` (15%) of the *eligible* words
     (noise rules: letters only, length >= 2) get one character edit (`charbert.noise`);
  2. the edited text is tokenised, so the subword channel sees the noisy words as a user's
     typos would be seen; NLM labels = the *original* word's id in the word vocabulary on every
     subword of a noised word (unk when absent);
  3. from the words NOT noised, whole words are drawn until `mlm_probability` (10%) of the real
     tokens are chosen; each chosen token is [MASK] (80%), a random token (10%) or kept (10%);
  4. the character channel is aligned to the edited text (`chars.align`, in the tokenizer's
     layout), and the characters of every MLM-chosen token are hidden, so they cannot leak the
     answer: replaced by the mask character ("offsets"), or the token written as a single 0
     ("reference", as the authors' run_lm_finetuning.py).
Labels are -100 where unused. All randomness comes from the `rng` the training loop passes
(`needs_rng`), so a batch is the same after a resume, in any process.

Speed (a loader process must keep a GPU fed): the batch is built with a few numpy passes over all its
rows (words of ASCII blocks, the token -> word map, the padding), the draws still row by row in the order
the rules above make them, so the batches are those of the row-by-row code for the same seed
(tests/test_collator_pinned.py pins them). The noise's small draws are replayed in Python from the
generator's raw output over the whole batch (`noise._SmallRangeDraws`: numpy's values, without a numpy
call per draw), and the special-token mask and type ids follow from the tokenizer's single-text template
instead of being read off every encoding. `benchmarks/bench_pretrain.py --pipeline_only` measures it.

`objective="advbert"` gives the paper's AdvBERT baseline batch (same noise, MLM only, subword
inputs only, for a plain *ForMaskedLM); `objective="mlm"` is plain MLM (no noise).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, chain

import numpy as np
import torch
from transformers import BatchEncoding
from transformers.tokenization_utils_base import TruncationStrategy
from transformers.utils import PaddingStrategy

from ..chars import CHAR_INPUT_NAMES, PAD_ID, align_offsets_batch
from ..noise import OPERATIONS, PRETRAIN_RULES, NoiseRules, eligible_indices, noise_edits, open_draws
from ..tokenization import CharBertTokenizer, gc_paused, pad_char_arrays
from .vocab import WordVocab, word_tables

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


def edit_words(text: str, starts: Sequence[int], ends: Sequence[int], edits: dict[int, str]) -> tuple[str, list[int]]:
    """`apply_word_edits` when only the words `edits` names (index -> new form, in index order) change,
    the words given by their starts and ends: the edited text and, per edit, how much longer the word got
    (the caller shifts the ends of the words from there on). The text is cut only around the edits."""
    parts, position, growth = [], 0, []
    for k, word in edits.items():
        s, e = starts[k], ends[k]
        parts.append(text[position:s])
        parts.append(word)
        growth.append(len(word) - (e - s))
        position = e
    if not parts:
        return text, growth
    parts.append(text[position:])
    return "".join(parts), growth


class _TextWords:
    """The words of a text as a sequence that slices them out of the text when read."""

    def __init__(self, text: str, starts: np.ndarray, ends: np.ndarray, words: list[str] | None = None):
        self.text, self.starts, self.ends = text, starts.tolist(), ends.tolist()  # (plain ints index faster)
        self.words = words

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> str:
        return self.text[self.starts[i]: self.ends[i]] if self.words is None else self.words[i]


def choose_whole_words(token_word: np.ndarray, candidates: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """Draw whole words (in random order) until `target` tokens are chosen; a word whose tokens
    would overshoot the target is skipped. Returns a boolean mask over tokens."""
    if target <= 0 or len(candidates) == 0:
        return np.zeros(len(token_word), dtype=bool)
    sizes = np.bincount(token_word[token_word >= 0], minlength=int(candidates.max()) + 1).tolist()
    count, picked = 0, []
    for word in rng.permutation(candidates).tolist():
        size = sizes[word]
        if count + size > target:
            continue
        picked.append(word)
        count += size
        if count >= target:
            break
    # The picked words' tokens; word -1 (tokens outside every word) indexes the extra last slot, as token_word -1 does.
    is_picked = np.zeros(len(sizes) + 1, dtype=bool)
    is_picked[picked] = True
    return is_picked[token_word]


def token_words(offsets: np.ndarray, real: np.ndarray, word_ends: np.ndarray) -> np.ndarray:
    """The word each real token belongs to (-1 for special, padding and trailing-space tokens).

    A token belongs to the first word that ends after the token's first character, so a piece
    whose span starts with the space before its word (byte-level BPE's `Ġ` without trimmed
    offsets) still joins that word, and the pieces of a word split into several share its id.
    (`PretrainingCollator._mask` applies this rule to a whole batch at once.)
    """
    word = np.searchsorted(word_ends, offsets[:, 0], side="right")
    return np.where(real & (word < len(word_ends)), word, -1)


@dataclass
class _Encoded:
    """A batch's subword encoding as flat arrays over all its tokens, rows one after the other."""

    ids: np.ndarray  # (N,)
    offsets: np.ndarray  # (N, 2)
    special: np.ndarray  # (N,) 1 for the special tokens the template adds
    outside: np.ndarray  # (N,) bool, outside the text (special tokens: no sequence id)
    type_ids: np.ndarray  # (N,)
    bounds: list[int]  # row i is [bounds[i], bounds[i + 1])
    encodings: list  # the Rust encodings (the reference character layout reads them)
    grid: tuple | None = None  # the padded shape and each token's cell in it (`_pad_flat`)


@dataclass(frozen=True)
class _SingleTextTemplate:
    """Where the special tokens of a one-text encoding sit: `prefix` before the text, `suffix` after it
    (their type ids), and the text's own type id. Every single-text template of `tokenizers` (BERT's
    `[CLS] $A [SEP]`, RoBERTa's `<s> $A </s>`, XLNet's `$A <sep> <cls>`, none) has this shape."""

    prefix: tuple[int, ...]
    text: int
    suffix: tuple[int, ...]


def single_text_template(backend, probes: Sequence[str] = ("", "a", "a b c, d.", "x " * 9)) -> _SingleTextTemplate | None:
    """The template of `backend` (truncation and padding off or as the caller set them) read off a few
    probe encodings, or None when they do not show one (then the special-token mask and type ids are
    read off every encoding)."""
    found, specials_only = set(), set()
    for text in probes:
        e = backend.encode(text, add_special_tokens=True)
        mask, types, n = e.special_tokens_mask, e.type_ids, len(e.ids)
        p = next((i for i, m in enumerate(mask) if not m), n)  # the leading special tokens
        s = n - p - next((i for i, m in enumerate(mask[p:]) if m), n - p)  # the trailing ones
        if mask != [1] * p + [0] * (n - p - s) + [1] * s or len(set(types[p: n - s])) > 1:
            return None
        if n > p + s:
            found.add((tuple(types[:p]), types[p], tuple(types[n - s:])))
        else:  # an empty text: the special tokens alone
            specials_only.add(tuple(types))
    if len(found) != 1:
        return None
    prefix, text_type, suffix = found.pop()
    if specials_only - {prefix + suffix}:
        return None
    return _SingleTextTemplate(prefix, text_type, suffix)


def _encode_flat(tokenizer, texts: list[str], max_length: int, template: _SingleTextTemplate | None = None) -> _Encoded:
    """`tokenizer(texts, truncation=True, max_length=max_length)` read straight from the Rust encodings
    (the same encodings: the same truncation and special-token settings, then `encode_batch`). With the
    tokenizer's `template`, the special-token mask and type ids follow from the row lengths."""
    tokenizer.set_truncation_and_padding(PaddingStrategy.DO_NOT_PAD, TruncationStrategy.LONGEST_FIRST, max_length, 0, None, None)
    backend = tokenizer.backend_tokenizer
    if backend.encode_special_tokens != tokenizer.split_special_tokens:
        backend.encode_special_tokens = tokenizer.split_special_tokens
    encodings = backend.encode_batch(texts, add_special_tokens=True)
    lengths = [len(e.ids) for e in encodings]
    n = sum(lengths)
    bounds = [0, *accumulate(lengths)]
    if template is not None and min(lengths, default=0) >= len(template.prefix) + len(template.suffix):
        special, type_ids = _template_columns(template, np.asarray(bounds), n)
    else:
        special = np.fromiter(chain.from_iterable(e.special_tokens_mask for e in encodings), dtype=np.int64, count=n)
        type_ids = np.fromiter(chain.from_iterable(e.type_ids for e in encodings), dtype=np.int64, count=n)
    return _Encoded(
        ids=np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.int64, count=n),
        offsets=np.fromiter(chain.from_iterable(chain.from_iterable(e.offsets for e in encodings)), dtype=np.int64,
                            count=2 * n).reshape(n, 2),
        special=special,
        outside=special.astype(bool),  # one text a row: its special tokens are those with no sequence id
        type_ids=type_ids,
        bounds=bounds,
        encodings=encodings,
    )


def _template_columns(template: _SingleTextTemplate, bounds: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The special-token mask and type ids of rows laid out by `template` (every row at least as long as
    its special tokens), from the rows' bounds in the flat batch."""
    special = np.zeros(n, dtype=np.int64)
    type_ids = np.full(n, template.text, dtype=np.int64)
    starts, ends = bounds[:-1], bounds[1:]
    for j, type_id in enumerate(template.prefix):
        special[starts + j] = 1
        type_ids[starts + j] = type_id
    for j, type_id in enumerate(template.suffix):
        special[ends - len(template.suffix) + j] = 1
        type_ids[ends - len(template.suffix) + j] = type_id
    return special, type_ids


class PretrainingCollator:
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
        if tokenizer.padding_side != "right":  # the labels and the character positions index right-padded rows
            raise ValueError(f"PretrainingCollator pads on the right; the tokenizer pads on the {tokenizer.padding_side}.")
        self.word_vocab = word_vocab
        self.max_seq_length = max_seq_length
        self.mlm_probability = mlm_probability
        self.noise_probability = 0.0 if objective == "mlm" else noise_probability
        self.mask_ratio, self.random_ratio = mask_ratio, random_ratio
        self.noise_rules, self.noise_operations = noise_rules, tuple(noise_operations)
        self.objective = objective
        self.special_ids = np.array(sorted(self.hf_tokenizer.all_special_ids), dtype=np.int64)
        self._special_steps = self.special_ids - np.arange(len(self.special_ids))
        self._vocab_size = len(self.hf_tokenizer)
        # the special-token mask and type ids follow from the row lengths (read off every encoding without it)
        self.hf_tokenizer.set_truncation_and_padding(PaddingStrategy.DO_NOT_PAD, TruncationStrategy.LONGEST_FIRST,
                                                     max_seq_length, 0, None, None)
        self._template = single_text_template(self.hf_tokenizer.backend_tokenizer)

    def __call__(self, blocks: Sequence[str], rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        if rng is None:
            raise ValueError("PretrainingCollator draws noise and masks from the rng the training loop passes (needs_rng).")
        with gc_paused():  # it tokenises through the subword twin, so the tokenizer call's own pause does not apply
            return self._collate(blocks, rng)

    def _collate(self, blocks: Sequence[str], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        # 1. noise: per block, the words (spans: one numpy pass for the batch's ASCII blocks), the edits,
        # the edited text and how much each edit grew its word (the ends shift in `_mask`).
        rules, ops = self.noise_rules, self.noise_operations
        texts, word_ends, growths, noised_words, noised_originals = [], [], [], [], []
        draws = open_draws(rng)  # the noise's draws, open over the batch (nothing else draws meanwhile)
        try:
            for block, (words, starts, ends, letters_only) in zip(blocks, word_tables(blocks, with_words=False)):
                # an ASCII block's words are read off the text where needed
                words = _TextWords(block, starts, ends, words)
                edits = {}
                if self.noise_probability > 0:
                    if letters_only is not None and rules.letters_only:  # ASCII: the eligible words off the table
                        eligible = np.flatnonzero(letters_only & (ends - starts >= max(rules.min_length, 1))).tolist()
                        if rules.stopwords:
                            eligible = [i for i in eligible if words[i].lower() not in rules.stopwords]
                    else:
                        eligible = eligible_indices(words, rules)
                    edits = noise_edits(words, eligible, rng, rules, self.noise_probability, ops, draws=draws)
                text, growth = edit_words(block, words.starts, words.ends, edits)
                texts.append(text)
                word_ends.append(ends)
                growths.append(growth)
                noised_words.append(list(edits))
                noised_originals.append([words[i] for i in edits])
        finally:
            draws.close()
        # 2. the subwords of the edited text; 3. NLM labels, whole-word MLM masks (the rng row by row).
        enc = _encode_flat(self.hf_tokenizer, texts, self.max_seq_length, self._template)
        input_ids, labels, nlm_labels, chosen = self._mask(enc, texts, word_ends, growths, noised_words, noised_originals, rng)
        batch = self._pad_subwords(enc, input_ids)
        # 4. the characters of the edited text, those of the MLM-chosen tokens hidden.
        if self.objective == "charbert":
            batch.update(self._char_batch(enc, texts, chosen, batch["input_ids"].shape[1]))
        batch["labels"] = self._pad_flat(enc, labels, -100)
        if self.objective == "charbert":
            batch["nlm_labels"] = self._pad_flat(enc, nlm_labels, -100)
        return batch

    def _mask(self, enc: _Encoded, texts, word_ends, growths, noised_words, noised_originals, rng):
        """NLM labels and the MLM choice over the whole batch's tokens (flat, rows one after the other).

        `word_ends[i]`: the ends of block i's words before the edits; `growths[i]`: how much longer each
        of its edits (`noised_words[i]`) made its word. Every token gets its word's index in the batch (one
        `searchsorted` over all rows' edited word ends, each row's text shifted past the previous ones); the
        random draws then go row by row, in the order a row-by-row loop makes them: the words' permutation,
        the 80/10/10 draw, the random tokens.
        """
        n_rows = len(texts)
        lengths = np.diff(enc.bounds)
        row_of_token = np.repeat(np.arange(n_rows), lengths)
        n_words = np.fromiter(map(len, word_ends), dtype=np.int64, count=n_rows)
        word_base = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(n_words, out=word_base[1:])
        text_base = np.zeros(n_rows, dtype=np.int64)
        np.cumsum([len(t) + 1 for t in texts[:-1]], out=text_base[1:])
        n_all = int(word_base[-1])
        noised_in_batch = [w + base for changed, base in zip(noised_words, word_base.tolist()) for w in changed]
        # The words' ends in the edited texts, one after the other: each edit shifts the ends from its word on.
        growth = np.zeros(n_all, dtype=np.int64)
        growth[noised_in_batch] = list(chain.from_iterable(growths))
        grown = np.zeros(n_all + 1, dtype=np.int64)  # grown[k]: the growth of the batch's words before word k
        np.cumsum(growth, out=grown[1:])
        shift = grown[1:] - np.repeat(grown[word_base[:-1]], n_words)  # within each row, up to the word itself
        all_ends = (np.concatenate(word_ends) if n_rows else np.zeros(0, dtype=np.int64)) + np.repeat(text_base, n_words) + shift
        offsets = enc.offsets
        real = ~enc.outside & (offsets[:, 1] > offsets[:, 0])
        word = np.searchsorted(all_ends, offsets[:, 0] + text_base[row_of_token], side="right")
        in_word = real & (word < word_base[1:][row_of_token])
        # (N,) the token's word in the batch: the first word that ends after the token's first character, so
        # a piece whose span starts with the space before its word (byte-level BPE's `Ġ` without trimmed
        # offsets) joins that word; n_all (an extra slot) for special tokens and real ones past the last word.
        word = np.where(in_word, word, n_all)

        is_noised_word = np.zeros(n_all + 1, dtype=bool)
        is_noised_word[noised_in_batch] = True
        is_noised = is_noised_word[word]
        nlm_labels = np.full(len(word), -100, dtype=np.int64)
        if self.objective == "charbert" and is_noised.any():
            word_ids = dict(zip(noised_in_batch, self.word_vocab.ids(chain.from_iterable(noised_originals)).tolist()))
            nlm_labels[is_noised] = [word_ids[w] for w in word[is_noised].tolist()]

        # MLM candidates: the words of real tokens that were not noised, per row in order.
        present = np.zeros(n_all + 1, dtype=bool)
        present[word[in_word]] = True
        candidates = np.flatnonzero(present[:n_all] & ~is_noised_word[:n_all])
        candidate_bounds = np.searchsorted(candidates, word_base).tolist()
        sizes = np.bincount(word[in_word], minlength=n_all + 1).tolist()
        targets = [int(round(self.mlm_probability * n)) for n in np.bincount(row_of_token[real], minlength=n_rows).tolist()]
        outside_word = np.bincount(row_of_token[real & ~in_word], minlength=n_rows).tolist()
        is_picked = np.zeros(n_all + 1, dtype=bool)
        chosen = np.zeros(len(word), dtype=bool)
        draw = np.empty(len(word), dtype=np.float64)
        low, high = self.mask_ratio, self.mask_ratio + self.random_ratio
        random_ids = []
        for i, (a, b) in enumerate(zip(enc.bounds, enc.bounds[1:])):
            if outside_word[i]:  # a real token after the last word (rare): the per-row rule, -1 and all
                token_word = token_words(offsets[a:b], real[a:b], all_ends[word_base[i]: word_base[i + 1]] - text_base[i])
                row_candidates = np.setdiff1d(np.unique(token_word[real[a:b]]), noised_words[i])
                chosen[a:b] = choose_whole_words(token_word, row_candidates, targets[i], rng)
            else:
                row_candidates = candidates[candidate_bounds[i]: candidate_bounds[i + 1]]
                if targets[i] > 0 and len(row_candidates):
                    self._pick_words(row_candidates, sizes, targets[i], rng, is_picked)
                    chosen[a:b] = is_picked[word[a:b]]
            rng.random(out=draw[a:b])  # (the draws of rng.random(b - a))
            n_random = sum(low <= x < high for x in draw[a:b][chosen[a:b]].tolist())
            if n_random:
                random_ids.append(self._random_tokens(n_random, rng))
        labels = np.where(chosen, enc.ids, -100)
        input_ids = enc.ids.copy()
        input_ids[chosen & (draw < low)] = self.hf_tokenizer.mask_token_id
        if random_ids:
            input_ids[chosen & (draw >= low) & (draw < high)] = np.concatenate(random_ids)
        return input_ids, labels, nlm_labels, chosen

    @staticmethod
    def _pick_words(candidates: np.ndarray, sizes: list[int], target: int, rng, is_picked: np.ndarray) -> None:
        """`choose_whole_words` on the batch's word indices: flags the picked words in `is_picked`."""
        count = 0
        for word in rng.permutation(candidates).tolist():
            size = sizes[word]
            if count + size > target:
                continue
            is_picked[word] = True
            count += size
            if count >= target:
                break

    def _random_tokens(self, n: int, rng) -> np.ndarray:
        """Random non-special token ids: a draw k among the non-special ids is the k-th of them."""
        ids = rng.integers(0, self._vocab_size - len(self.special_ids), size=n)
        # k + (the specials at or below the answer): with the specials sorted, special j is at or below
        # the answer when k >= special_j - j
        return ids + np.searchsorted(self._special_steps, ids, side="right")

    @staticmethod
    def _pad_flat(enc: _Encoded, values: np.ndarray, pad: int) -> torch.Tensor:
        """A value per token of the batch (flat) -> (B, longest row) int64, right-padded with `pad`."""
        if enc.grid is None:  # where each token sits in the padded grid, for every field of the batch
            lengths = np.diff(enc.bounds)
            enc.grid = (len(lengths), int(lengths.max(initial=0))), \
                np.flatnonzero(np.arange(int(lengths.max(initial=0)))[None, :] < lengths[:, None])
        shape, cells = enc.grid
        out = np.full(shape, pad, dtype=np.int64)
        out.ravel()[cells] = values
        return torch.from_numpy(out)

    def _pad_subwords(self, enc: _Encoded, input_ids: np.ndarray) -> dict[str, torch.Tensor]:
        """The subword inputs padded as the tokenizer's `pad` pads them (right, to the longest row)."""
        tok = self.tokenizer
        batch = {"input_ids": self._pad_flat(enc, input_ids, tok.pad_token_id)}
        if "token_type_ids" in self.hf_tokenizer.model_input_names:
            batch["token_type_ids"] = self._pad_flat(enc, enc.type_ids, tok.pad_token_type_id)
        if "attention_mask" in tok.model_input_names:
            batch["attention_mask"] = self._pad_flat(enc, np.ones(len(input_ids), dtype=np.int64), 0)
        return batch

    def _char_batch(self, enc: _Encoded, texts: list[str], hidden: np.ndarray, width: int) -> dict[str, torch.Tensor]:
        """The character inputs of the batch (`CharBertTokenizer.char_features` then its padding, at once)."""
        tok = self.tokenizer
        n_rows = len(texts)
        lengths = np.diff(enc.bounds)
        if tok.char_layout != "offsets":  # the reference layout: row by row, through the tokenizer's own routines
            encoding = BatchEncoding({"input_ids": [e.ids for e in enc.encodings]}, encoding=enc.encodings)
            bounds = enc.bounds
            columns = tok.char_columns(encoding, texts, hidden=[hidden[a:b] for a, b in zip(bounds, bounds[1:])])
            arrays = pad_char_arrays(*columns, n_tokens=width, char_layout=tok.char_layout)
            return {name: torch.from_numpy(a) for name, a in arrays.items()}
        row_of_token = np.repeat(np.arange(n_rows), lengths)
        chars, row_starts, starts, ends = align_offsets_batch(
            enc.offsets, row_of_token, -enc.special, [(t,) for t in texts], tok.char_vocab, n_rows, hidden,
            max_chars_per_token=tok.max_chars_per_token, max_chars_per_sequence=tok.max_chars_per_sequence)
        # Padded as `pad_char_arrays` pads: characters with [PAD] to the longest row, positions with 0.
        char_lengths = np.diff(row_starts)
        n_chars = int(char_lengths.max(initial=0))
        char_ids = np.full((n_rows, n_chars), PAD_ID, dtype=np.int64)
        column = np.arange(len(chars)) - np.repeat(row_starts[:-1], char_lengths)
        char_ids[np.repeat(np.arange(n_rows), char_lengths), column] = chars
        token_column = np.arange(len(row_of_token)) - np.repeat(np.asarray(enc.bounds[:-1]), lengths)
        padded_starts = np.zeros((n_rows, width), dtype=np.int64)
        padded_ends = np.zeros((n_rows, width), dtype=np.int64)
        padded_starts[row_of_token, token_column] = starts
        padded_ends[row_of_token, token_column] = ends
        mask = (np.arange(n_chars)[None, :] < char_lengths[:, None]).astype(np.int64)
        return {name: torch.from_numpy(a) for name, a in zip(CHAR_INPUT_NAMES, (char_ids, mask, padded_starts, padded_ends))}
