"""Model inputs of the fine-tuning tasks, one code path for CharBERT and plain BERT/RoBERTa.

Every task tokenises with ``tokenizer(texts, pairs, return_offsets_mapping=True, ...)``:
a :class:`~charbert.CharBertTokenizer` returns the subword inputs *and* the character
channel, a plain fast tokenizer the subword inputs only; everything after that reads the
same fields (input ids, ``sequence_ids``, character offsets), so CharBERT and its baseline
see exactly the same subword features.

* :func:`glue_features` -- sentences and sentence pairs (pairs are encoded as pairs, which
  CharBertTokenizer carries into the character channel too).
* :func:`word_features` -- NER and POS: the words of a sentence are joined with single
  spaces into one text, the text is tokenised, and each subword is mapped to its word
  through its character offsets (word k covers a known span of the joined text).  This is
  what CharBertTokenizer's character alignment needs (the original text and offsets), and
  plain models take the very same route.  :func:`words_from_token_predictions` maps
  per-subword predictions back to one tag per word.
* :func:`squad_features` -- question/context windows over long contexts
  (``truncation="only_second"``, ``stride``, ``return_overflowing_tokens``), answer
  character spans mapped to token start/end positions, and the per-window metadata that
  :func:`charbert.tasks.squad.postprocess_qa_predictions` reads.
* :class:`TaskCollator` -- pads a list of per-example features into a batch.

Feature rows are dicts of python lists/ints (unpadded), ready for a map-style dataset.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..chars import CHAR_INPUT_NAMES
from ..tokenization import pad_char_features

IGNORE_INDEX = -100
# Per-example fields a model takes (char_attention_mask is rebuilt by pad_char_features).
MODEL_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids", "char_input_ids",
                     "char_start_positions", "char_end_positions")
_TOKENIZE_BATCH = 512  # texts per tokenizer call: bounds the memory of the python lists


class FeatureDataset(torch.utils.data.Dataset):
    """A map-style dataset over a list of feature dicts."""

    def __init__(self, rows: Sequence[dict[str, Any]]):
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


def is_charbert_tokenizer(tokenizer) -> bool:
    from ..tokenization import CharBertTokenizer

    return isinstance(tokenizer, CharBertTokenizer)


def tokenize(tokenizer, texts: Sequence[str], pairs: Sequence[str] | None = None, **kwargs):
    """``tokenizer(texts, pairs, return_offsets_mapping=True, **kwargs)`` for either kind of tokenizer.

    Returns a BatchEncoding of python lists (no padding) that still has ``sequence_ids(row)``.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"Fine-tuning needs a fast tokenizer (character offsets); got {type(tokenizer).__name__}. "
            "Save the checkpoint with a tokenizer.json."
        )
    return tokenizer(list(texts), None if pairs is None else list(pairs), return_offsets_mapping=True, **kwargs)


def _model_row(encoding, row: int) -> dict[str, Any]:
    return {k: encoding[k][row] for k in MODEL_INPUT_NAMES if k in encoding}


def _chunks(n: int, size: int = _TOKENIZE_BATCH):
    for start in range(0, n, size):
        yield start, min(n, start + size)


# --------------------------------------------------------------------------------------
# GLUE: sentences and sentence pairs
# --------------------------------------------------------------------------------------


def glue_features(tokenizer, examples: Sequence[Any], max_length: int, label2id: dict[str, int] | None = None,
                  is_regression: bool = False) -> list[dict[str, Any]]:
    """One feature per :class:`~charbert.tasks.glue.GlueExample`, truncated to ``max_length``.

    ``labels`` is the label id (a float for regression) when the examples carry labels.
    """
    rows: list[dict[str, Any]] = []
    is_pair = bool(examples) and examples[0].text_b is not None
    for lo, hi in _chunks(len(examples)):
        chunk = examples[lo:hi]
        enc = tokenize(tokenizer, [ex.text_a for ex in chunk], [ex.text_b for ex in chunk] if is_pair else None,
                       truncation=True, max_length=max_length)
        for i, ex in enumerate(chunk):
            row = _model_row(enc, i)
            if ex.label is not None:
                row["labels"] = float(ex.label) if is_regression else int(label2id[ex.label])
            rows.append(row)
    return rows


# --------------------------------------------------------------------------------------
# NER / POS: words -> subwords and back
# --------------------------------------------------------------------------------------


def join_words(words: Sequence[str]) -> tuple[str, list[int], list[int]]:
    """The words joined by single spaces, and each word's [start, end) character span in that text."""
    starts, ends, pos = [], [], 0
    for w in words:
        starts.append(pos)
        ends.append(pos + len(w))
        pos += len(w) + 1
    return " ".join(words), starts, ends


def token_words(offsets: Sequence[Sequence[int]], sequence_ids: Sequence[int | None], text: str,
                word_starts: Sequence[int], word_ends: Sequence[int]) -> list[int | None]:
    """The word index of every token (``None`` for special tokens and empty-span tokens).

    A token belongs to the word that holds its first non-space character, so a byte-level
    BPE token whose offsets include the preceding space still maps to its own word.
    """
    out: list[int | None] = []
    for (a, b), seq in zip(offsets, sequence_ids):
        if seq is None:
            out.append(None)
            continue
        while a < b and text[a].isspace():
            a += 1
        if a >= b:  # empty span: carries no character of any word
            out.append(None)
            continue
        k = bisect.bisect_right(word_starts, a) - 1
        out.append(k if k >= 0 and a < word_ends[k] else None)
    return out


@dataclass
class WordAlignment:
    """Where the words of one sentence went.

    ``first_token[k]``: index of word k's first subword in the feature, ``-1`` when the word
    has no subword (cut by truncation, or removed entirely by the tokenizer's normaliser).
    """

    first_token: list[int]
    truncated: int = 0  # words cut off by --max_seq_length
    unaligned: int = 0  # words with no subword although the sentence was not cut there
    token_word: list[int | None] = field(default_factory=list)  # word index of every token (None: special)

    def num_subwords(self) -> list[int]:
        """How many subwords each word got in this feature (0: truncated or dropped)."""
        counts = [0] * len(self.first_token)
        for w in self.token_word:
            if w is not None:
                counts[w] += 1
        return counts


def inside_label_map(labels: Sequence[str]) -> dict[str, str]:
    """``B-X -> I-X`` where ``I-X`` is a label (for the non-first subwords with --label_all_tokens)."""
    known = set(labels)
    return {t: "I-" + t[2:] for t in labels if t.startswith("B-") and "I-" + t[2:] in known}


def word_features(tokenizer, sentences: Sequence[Any], max_length: int, label2id: dict[str, int] | None = None,
                  label_all_tokens: bool = False) -> tuple[list[dict[str, Any]], list[WordAlignment]]:
    """Features for token classification (NER, POS) from :class:`~charbert.tasks.ner.Sentence` objects.

    Labels: the first subword of each word carries the word's label id, the others
    ``-100``; with ``label_all_tokens`` they carry it too (``B-X`` becoming ``I-X`` after the
    first subword, as in transformers' run_ner).  ``labels`` is only set when ``label2id`` is
    given and the sentence has tags.
    """
    inside = inside_label_map(list(label2id)) if label2id else {}
    rows: list[dict[str, Any]] = []
    alignments: list[WordAlignment] = []
    for lo, hi in _chunks(len(sentences)):
        chunk = sentences[lo:hi]
        joined = [join_words(s.tokens) for s in chunk]
        enc = tokenize(tokenizer, [j[0] for j in joined], truncation=True, max_length=max_length)
        for i, sent in enumerate(chunk):
            text, starts, ends = joined[i]
            words = token_words(enc["offset_mapping"][i], enc.sequence_ids(i), text, starts, ends)
            first = [-1] * len(sent.tokens)
            for t, w in enumerate(words):
                if w is not None and first[w] < 0:
                    first[w] = t
            aligned = [k for k, t in enumerate(first) if t >= 0]
            cut = len(enc["input_ids"][i]) >= max_length
            last = aligned[-1] if aligned else -1
            truncated = len(first) - (last + 1) if cut else 0
            unaligned = sum(1 for t in first if t < 0) - truncated
            alignments.append(WordAlignment(first, truncated, unaligned, words))
            row = _model_row(enc, i)
            if label2id is not None and sent.tags is not None:
                labels = []
                for t, w in enumerate(words):
                    if w is None:
                        labels.append(IGNORE_INDEX)
                    elif t == first[w]:
                        labels.append(label2id[sent.tags[w]])
                    elif label_all_tokens:
                        tag = sent.tags[w]
                        labels.append(label2id[inside.get(tag, tag)])
                    else:
                        labels.append(IGNORE_INDEX)
                row["labels"] = labels
            rows.append(row)
    return rows, alignments


def words_from_token_predictions(predictions: Sequence[int], alignment: WordAlignment, id2label: dict[int, str],
                                 fallback: str) -> list[str]:
    """One tag per word from per-subword label ids: each word takes its first subword's prediction;
    a word without a subword (truncated away) gets ``fallback``."""
    out = []
    for t in alignment.first_token:
        out.append(fallback if t < 0 or t >= len(predictions) else id2label[int(predictions[t])])
    return out


# --------------------------------------------------------------------------------------
# SQuAD: question/context windows
# --------------------------------------------------------------------------------------


@dataclass
class QAFeature:
    """What post-processing needs of one window (see charbert.tasks.squad)."""

    example_id: str
    offset_mapping: list[tuple[int, int] | None]  # context tokens only, None elsewhere
    token_is_max_context: list[bool] = field(default_factory=list)

    def __getitem__(self, key):  # postprocess_qa_predictions reads features as mappings
        return getattr(self, key)

    def get(self, key, default=None):
        return getattr(self, key, default)


def truncate_question(tokenizer, question: str, max_query_length: int) -> str:
    """The question cut after its ``max_query_length``-th subword (unchanged when shorter)."""
    inner = tokenizer.tokenizer if is_charbert_tokenizer(tokenizer) else tokenizer
    enc = inner(question, add_special_tokens=False, return_offsets_mapping=True)
    if len(enc["input_ids"]) <= max_query_length:
        return question
    return question[: enc["offset_mapping"][max_query_length - 1][1]]


def answer_token_span(offsets: Sequence[Sequence[int]], sequence_ids: Sequence[int | None],
                      start_char: int, end_char: int) -> tuple[int, int]:
    """Token (start, end) of the smallest run of context tokens covering [start_char, end_char),
    or (0, 0) -- the [CLS] position -- when the answer is not entirely inside this window."""
    context = [t for t, s in enumerate(sequence_ids) if s == 1]
    if not context:
        return 0, 0
    first, last = context[0], context[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return 0, 0
    start = first
    while start <= last and offsets[start][0] <= start_char:
        start += 1
    start -= 1
    end = last
    while end >= first and offsets[end][1] >= end_char:
        end -= 1
    end += 1
    return start, end


def _max_context_flags(windows: list[list[tuple[int, int] | None]]) -> list[list[bool]]:
    """For every context token of every window of one example: is this the window where the
    token has the most context on both sides (score ``min(left, right) + 0.01 * length``, the
    original BERT rule; the first such window wins ties)?"""
    best: dict[tuple[int, int], tuple[float, int]] = {}
    positions = []
    for w, offsets in enumerate(windows):
        ctx = [t for t, o in enumerate(offsets) if o is not None]
        positions.append(ctx)
        n = len(ctx)
        for j, t in enumerate(ctx):
            key = tuple(offsets[t])
            score = min(j, n - 1 - j) + 0.01 * n
            if key not in best or score > best[key][0]:
                best[key] = (score, w)
    flags = []
    for w, offsets in enumerate(windows):
        row = [False] * len(offsets)
        for t in positions[w]:
            row[t] = best[tuple(offsets[t])][1] == w
        flags.append(row)
    return flags


def squad_features(tokenizer, examples: Sequence[Any], max_length: int, doc_stride: int, max_query_length: int = 64,
                   training: bool = False) -> tuple[list[dict[str, Any]], list[QAFeature]]:
    """Windows over (question, context) pairs of :class:`~charbert.tasks.squad.SquadExample` objects.

    ``doc_stride`` is the number of context tokens consecutive windows share (the
    tokenizer's ``stride``, as in transformers' run_qa).  With ``training`` each row gets
    ``start_positions``/``end_positions`` of the first gold answer (0/0, the [CLS] token,
    when the window does not contain it or the question is unanswerable).  Returns the rows
    and one :class:`QAFeature` per row.
    """
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    if max_length - max_query_length - specials <= doc_stride:
        raise ValueError(
            f"--doc_stride {doc_stride} leaves no room for new context: with --max_seq_length {max_length}, "
            f"--max_query_length {max_query_length} and {specials} special tokens a window has at most "
            f"{max_length - max_query_length - specials} context tokens; use a smaller --doc_stride."
        )
    pad_right = getattr(tokenizer, "padding_side", "right") == "right"
    if not pad_right:
        raise ValueError("squad_features expects a tokenizer with padding_side='right'.")
    rows: list[dict[str, Any]] = []
    metas: list[QAFeature] = []
    for lo, hi in _chunks(len(examples), 256):
        chunk = examples[lo:hi]
        questions = [truncate_question(tokenizer, ex.question.lstrip(), max_query_length) for ex in chunk]
        enc = tokenize(tokenizer, questions, [ex.context for ex in chunk], truncation="only_second",
                       max_length=max_length, stride=doc_stride, return_overflowing_tokens=True)
        sample_of_row = enc["overflow_to_sample_mapping"]
        windows_of: dict[int, list[int]] = {}
        for row_idx in range(len(enc["input_ids"])):
            windows_of.setdefault(int(sample_of_row[row_idx]), []).append(row_idx)
        for sample, row_ids in windows_of.items():
            ex = chunk[sample]
            windows = []
            for r in row_ids:
                seq = enc.sequence_ids(r)
                windows.append([tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][r], seq)])
            flags = _max_context_flags(windows)
            for r, offsets, flag in zip(row_ids, windows, flags):
                row = _model_row(enc, r)
                if training:
                    if ex.answers:
                        start_char = ex.answers[0]["answer_start"]
                        end_char = start_char + len(ex.answers[0]["text"])
                        s, e = answer_token_span(enc["offset_mapping"][r], enc.sequence_ids(r), start_char, end_char)
                    else:
                        s, e = 0, 0
                    row["start_positions"], row["end_positions"] = s, e
                rows.append(row)
                metas.append(QAFeature(ex.id, offsets, flag))
    return rows, metas


# --------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------


class TaskCollator:
    """Pads per-example feature dicts into a batch of tensors (right padding).

    Built from a tokenizer (``TaskCollator(tokenizer)``: its pad id and character layout) or
    from a pad id and ``char_layout``.  Sequence fields are padded to the longest in the batch:
    ``input_ids`` with the tokenizer's pad id, ``labels`` with -100, masks and token types with 0; the character
    fields go through :func:`charbert.tokenization.pad_char_features` in ``char_layout``
    (pass the tokenizer's: the reference layout pads rows to 6 L).  Scalar fields
    (sequence labels, answer positions) are stacked, floats as float32.
    """

    def __init__(self, pad_token_id, char_layout: str = "offsets"):
        if hasattr(pad_token_id, "pad_token_id"):  # a tokenizer: its pad id and its character layout
            char_layout = getattr(pad_token_id, "char_layout", char_layout)
            pad_token_id = pad_token_id.pad_token_id
        self.pad_token_id = int(pad_token_id)
        self.char_layout = char_layout  # the tokenizer's (CharBertTokenizer.char_layout): how to pad characters

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        keys = list(features[0].keys())
        for key in keys:
            if key in CHAR_INPUT_NAMES:
                continue
            values = [f[key] for f in features]
            if isinstance(values[0], (list, tuple, np.ndarray)):
                pad = self.pad_token_id if key == "input_ids" else IGNORE_INDEX if key == "labels" else 0
                width = max(len(v) for v in values)
                out = torch.full((len(values), width), pad, dtype=torch.long)
                for i, v in enumerate(values):
                    out[i, : len(v)] = torch.as_tensor(v, dtype=torch.long)
                batch[key] = out
            elif isinstance(values[0], float):
                batch[key] = torch.tensor(values, dtype=torch.float32)
            else:
                batch[key] = torch.tensor(values, dtype=torch.long)
        if "char_input_ids" in keys:
            batch.update(pad_char_features(features, char_layout=self.char_layout))
        return batch
