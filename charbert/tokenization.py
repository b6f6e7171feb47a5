"""CharBertTokenizerFast: a Hugging Face fast tokenizer that also returns the character channel.

`tok(texts, pairs, ...)` tokenises like any `PreTrainedTokenizerFast` (the backbone's WordPiece
or byte-level BPE lives in tokenizer.json) and adds, per sequence, the character channel from
`chars.align` (the one alignment routine): `char_input_ids`, `char_attention_mask`,
`char_start_positions`, `char_end_positions`. `tok.pad(features)` pads them too (the one
padding routine, `pad_char_arrays`, which also builds the character mask), so
`DataCollatorWithPadding(tok)`, `transformers.Trainer` and pipelines get complete batches.

`char_layout` picks how the characters are laid out (`chars.CHAR_LAYOUTS`): "offsets" (ours,
new models) or "reference" (the CharBERT authors' layout, which their released checkpoints
were trained on; a converted checkpoint saves it, so `from_pretrained` picks it up).

`CharBertTokenizer` is the same class (the name earlier code and checkpoints use); it also
wraps an existing fast tokenizer: `CharBertTokenizer(fast_tokenizer, char_vocab, char_layout)`.
"""

from __future__ import annotations

import gc
import json
import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from tokenizers import models
from transformers import BatchEncoding, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.utils import PaddingStrategy

from .chars import (
    CHAR_INPUT_NAMES,
    CHAR_VOCAB_FILE,
    MAX_CHARS_PER_TOKEN,
    PAD_ID,
    REFERENCE_CHARS_PER_TOKEN,
    CharVocab,
    align,
    align_offsets_batch,
    check_char_layout,
    saved_char_limits,
)
from .checkpoint import check_converted

logger = logging.getLogger(__name__)

# The per-row character fields a feature holds before padding (the mask is built by the padding).
CHAR_FEATURE_NAMES = ("char_input_ids", "char_start_positions", "char_end_positions")


def _require_fast(tokenizer: PreTrainedTokenizerBase) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"CharBERT needs a fast (Rust `tokenizers`) tokenizer for character offsets; got "
            f"{type(tokenizer).__name__}. Save the checkpoint with a tokenizer.json, or load it with use_fast=True."
        )


def pad_char_arrays(
    char_ids: Sequence, starts: Sequence, ends: Sequence, n_tokens: int | None = None, char_layout: str = "offsets",
    pad_to_multiple_of: int | None = None, lengths: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """THE character padding: per-row character fields -> (B, C) / (B, L) int64 arrays + the mask.

    `char_ids[i]` (C_i,), `starts[i]`/`ends[i]` (L_i,); `lengths[i]` = the real characters of row
    i (default C_i; rows that are already padded pass their mask's sum). `n_tokens` is the padded
    subword length L (default the longest L_i). "offsets": characters are right-padded with [PAD]
    to the longest row (rounded up to `pad_to_multiple_of`); positions are padded with 0 (the
    placeholder). "reference": rows are padded to 6 L and padded tokens point at the last
    position, as the authors' code does. `char_attention_mask` marks each row's real characters.
    """
    n_rows = len(char_ids)
    lengths = [len(c) for c in char_ids] if lengths is None else [int(n) for n in lengths]
    if n_tokens is None:
        n_tokens = max((len(s) for s in starts), default=0)
    if check_char_layout(char_layout) == "reference":
        n_chars = REFERENCE_CHARS_PER_TOKEN * n_tokens
        position_pad = n_chars - 1
    else:
        n_chars = max(lengths, default=0)
        if pad_to_multiple_of:
            n_chars = -(-n_chars // pad_to_multiple_of) * pad_to_multiple_of
        position_pad = 0
    out_ids = np.full((n_rows, n_chars), PAD_ID, dtype=np.int64)
    out_starts = np.full((n_rows, n_tokens), position_pad, dtype=np.int64)
    out_ends = np.full((n_rows, n_tokens), position_pad, dtype=np.int64)
    for i in range(n_rows):
        c, t = lengths[i], len(starts[i])
        out_ids[i, :c] = np.asarray(char_ids[i][:c], dtype=np.int64)
        out_starts[i, :t] = starts[i]
        out_ends[i, :t] = ends[i]
    mask = (np.arange(n_chars)[None, :] < np.asarray(lengths, dtype=np.int64)[:, None]).astype(np.int64)
    return dict(zip(CHAR_INPUT_NAMES, (out_ids, mask, out_starts, out_ends)))


def pad_char_features(
    features: Sequence[dict], pad_to_multiple_of: int | None = None, char_layout: str = "offsets",
    n_tokens: int | None = None,
) -> dict[str, torch.Tensor]:
    """`pad_char_arrays` over a list of feature dicts, as torch tensors (collators)."""
    lengths = [sum(f["char_attention_mask"]) if "char_attention_mask" in f else len(f["char_input_ids"]) for f in features]
    arrays = pad_char_arrays([f["char_input_ids"] for f in features], [f["char_start_positions"] for f in features],
                             [f["char_end_positions"] for f in features], n_tokens, char_layout, pad_to_multiple_of, lengths)
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def continuation_prefix(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The prefix that marks a word-internal piece ("##" for WordPiece); None for BPE."""
    model = tokenizer.backend_tokenizer.model
    return model.continuing_subword_prefix if isinstance(model, models.WordPiece) else None


def _subword_input_names(backend) -> list[str]:
    """The subword inputs a backbone's models take: BERT's include token types, RoBERTa's do not."""
    if isinstance(backend.model, models.WordPiece):
        return ["input_ids", "token_type_ids", "attention_mask"]
    return ["input_ids", "attention_mask"]


# Attributes of a wrapped tokenizer that travel into CharBertTokenizerFast (the rest is in tokenizer.json).
_WRAPPED_INIT_KEYS = ("model_max_length", "padding_side", "truncation_side", "clean_up_tokenization_spaces",
                      "do_lower_case", "add_prefix_space", "trim_offsets", "strip_accents", "tokenize_chinese_chars")


class CharBertTokenizerFast(PreTrainedTokenizerFast):
    """A fast tokenizer (BERT WordPiece or RoBERTa byte-level BPE, from tokenizer.json) plus a
    character vocabulary; `__call__` and `pad` handle the character inputs too.

    Build it with `from_pretrained(folder_or_hub_name)` (a CharBERT folder, or a plain BERT/RoBERTa
    one: its tokenizer.json and the default character vocabulary), or wrap a loaded fast tokenizer:
    `CharBertTokenizerFast(fast_tokenizer, char_vocab=None, char_layout="offsets")`.
    """

    vocab_files_names = {"tokenizer_file": "tokenizer.json", "char_vocab_file": CHAR_VOCAB_FILE}
    model_input_names = ["input_ids", "token_type_ids", "attention_mask", *CHAR_INPUT_NAMES]
    slow_tokenizer_class = None

    def __init__(self, tokenizer: PreTrainedTokenizerBase | None = None, char_vocab: CharVocab | str | os.PathLike | None = None,
                 char_layout: str | None = None, char_vocab_file: str | None = None,
                 max_chars_per_token: int | None = MAX_CHARS_PER_TOKEN, max_chars_per_sequence: int | None = None,
                 **kwargs):
        # Memory bound (see chars.align): the checkpoint's limits, from its config.json in from_pretrained.
        self.max_chars_per_token, self.max_chars_per_sequence = max_chars_per_token, max_chars_per_sequence
        if tokenizer is not None:  # wrap a loaded fast tokenizer (the CharBertTokenizer(tokenizer, ...) form)
            _require_fast(tokenizer)
            kwargs.setdefault("tokenizer_object", tokenizer.backend_tokenizer)
            for key, value in tokenizer.special_tokens_map.items():
                kwargs.setdefault(key, value)
            for key in _WRAPPED_INIT_KEYS:
                if key in tokenizer.init_kwargs or key in ("model_max_length", "padding_side", "truncation_side"):
                    kwargs.setdefault(key, getattr(tokenizer, key, tokenizer.init_kwargs.get(key)))
            kwargs.setdefault("name_or_path", tokenizer.name_or_path)
            subword_names = [n for n in tokenizer.model_input_names if n not in CHAR_INPUT_NAMES]
            kwargs.setdefault("model_input_names", subword_names + list(CHAR_INPUT_NAMES))
        saved_layout = None
        if char_vocab is None and char_vocab_file is not None:
            char_vocab, saved_layout = CharVocab.load(char_vocab_file), _layout_in_file(char_vocab_file)
        elif isinstance(char_vocab, (str, os.PathLike)):
            char_vocab, saved_layout = CharVocab.load(char_vocab), _layout_in_file(char_vocab)
        if char_vocab is None:
            logger.info("No %s: using the default character vocabulary.", CHAR_VOCAB_FILE)
            char_vocab = CharVocab.default()
        self.char_vocab = char_vocab
        self.char_layout = check_char_layout(char_layout or saved_layout or "offsets")
        super().__init__(**kwargs)
        if "model_input_names" not in kwargs:
            self.model_input_names = _subword_input_names(self.backend_tokenizer) + list(CHAR_INPUT_NAMES)
        self.init_kwargs["char_layout"] = self.char_layout
        self.continuation_prefix = continuation_prefix(self)

    # ---- loading and saving -------------------------------------------------------------
    @classmethod
    def convert_to_native_format(cls, trust_remote_code=False, **kwargs):
        """Load tokenizer.json as it is (the base class rebuilds the backend of classes with their own
        __init__ from the bare vocabulary, which would drop the normaliser and pre-tokeniser)."""
        tokenizer_file = kwargs.get("tokenizer_file")
        if tokenizer_file is None or not os.path.isfile(tokenizer_file):
            check_converted(kwargs.get("name_or_path") or "")  # the authors' folder: name the converter
            raise ValueError(f"CharBERT needs a fast tokenizer: no tokenizer.json in {kwargs.get('name_or_path', 'the folder')} "
                             "(a release of the CharBERT authors has none: convert it with python -m charbert.convert).")
        return super().convert_to_native_format(trust_remote_code=True, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *inputs, char_vocab: CharVocab | str | None = None,
                        char_layout: str | None = None, **kwargs):
        """Load the tokenizer of a folder or hub name (transformers' resolution: the hub cache, HF_HUB_OFFLINE,
        `revision`, ...) and the character vocabulary beside it.

        When there is no `char_vocab.json` (a plain BERT/RoBERTa checkpoint) the built-in default
        character set is used (printable ASCII, Latin-1, common typographic marks); build one from
        your corpus with `python -m pretrain.vocab` for other scripts. The layout is `char_layout`
        if given, else the one the folder's char_vocab.json or config.json names, else "offsets".
        """
        kwargs.pop("use_fast", None)
        if char_vocab is not None:
            kwargs["char_vocab"] = char_vocab if isinstance(char_vocab, CharVocab) else CharVocab.load(char_vocab)
        if char_layout is None and char_vocab is None:
            char_layout = _config_char_layout(pretrained_model_name_or_path, kwargs)
        if char_layout is not None:
            kwargs["char_layout"] = char_layout
        if Path(pretrained_model_name_or_path).is_dir():
            check_converted(pretrained_model_name_or_path)  # the authors' release: default characters would be wrong
            for key, value in saved_char_limits(pretrained_model_name_or_path).items():
                kwargs.setdefault(key, value)
        return super().from_pretrained(pretrained_model_name_or_path, *inputs, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        files = super().save_pretrained(save_directory, *args, **kwargs)
        vocab_file = self.char_vocab.save(Path(save_directory) / CHAR_VOCAB_FILE)
        payload = json.loads(vocab_file.read_text(encoding="utf-8"))  # the layout travels with the characters
        payload["char_layout"] = self.char_layout
        vocab_file.write_text(json.dumps(payload, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
        return (*files, str(vocab_file))

    @property
    def tokenizer(self) -> PreTrainedTokenizerFast:
        """The same subword tokenizer without the character channel (packing a corpus, counting tokens)."""
        if getattr(self, "_subword_tokenizer", None) is None:
            names = [n for n in self.model_input_names if n not in CHAR_INPUT_NAMES]
            self._subword_tokenizer = PreTrainedTokenizerFast(
                tokenizer_object=self.backend_tokenizer, model_input_names=names, model_max_length=self.model_max_length,
                padding_side=self.padding_side, truncation_side=self.truncation_side, **self.special_tokens_map,
            )
        return self._subword_tokenizer

    # ---- the character channel ----------------------------------------------------------
    def align_row(self, encoding: BatchEncoding, row: int, seg_texts: Sequence[str], hidden: np.ndarray | None = None,
                  padded_tokens_last: bool = False):
        """`chars.align` for one row of a fast-tokenizer encoding, in this tokenizer's layout.

        `hidden` flags tokens whose characters are hidden (MLM). `padded_tokens_last` (reference
        layout): padding tokens point at the row's last position (the authors' NER/SQuAD code)
        instead of being laid out as special tokens (their GLUE/pretraining code).
        """
        row_encoding = encoding.encodings[row] if encoding.encodings else None
        if row_encoding is not None:
            offsets, sequence_ids = np.asarray(row_encoding.offsets, dtype=np.int64), row_encoding.sequence_ids
        else:
            offsets, sequence_ids = np.asarray(encoding["offset_mapping"][row], dtype=np.int64), encoding.sequence_ids(row)
        if self.char_layout == "offsets":
            return align(offsets, sequence_ids, seg_texts, self.char_vocab, hidden=hidden,
                         max_chars_per_token=self.max_chars_per_token, max_chars_per_sequence=self.max_chars_per_sequence)
        ids = np.asarray(row_encoding.ids if row_encoding is not None else encoding["input_ids"][row])
        tokens = row_encoding.tokens if row_encoding is not None else encoding.tokens(row)
        padding = np.array([s is None for s in sequence_ids]) & (ids == self.pad_token_id)
        unknown = ids == self.unk_token_id if self.unk_token_id is not None else None
        return align(
            offsets, sequence_ids, seg_texts, self.char_vocab, layout="reference", tokens=tokens,
            hidden=hidden, unknown=unknown, padding=padding, padded_tokens_last=padded_tokens_last,
            continuation_prefix=self.continuation_prefix,
        )

    def char_columns(self, encoding: BatchEncoding, texts: Sequence[str], text_pairs: Sequence[str] | None = None,
                     padded_tokens_last: bool = False, hidden: Sequence[np.ndarray] | None = None,
                     special_template: tuple[int, int] | None = None) -> tuple[list, list, list]:
        """The character fields of a batch encoding of `texts` (and `text_pairs`), unpadded, per row:
        (char_input_ids, char_start_positions, char_end_positions), each a list with one sequence per row.

        Rows map to texts through `overflow_to_sample_mapping` when windows overflow (SQuAD).
        `hidden[row]` flags the tokens whose characters the model must not see (pretraining's MLM);
        by default the mask tokens of the text (fill-mask). The "offsets" layout is aligned for the
        whole batch at once (`chars.align_offsets_batch`, which also applies the character limits),
        the "reference" layout row by row.
        `special_template` (unpadded single texts only): how many special tokens the post-processor
        puts before and after every text, which saves reading each row's special-tokens mask.
        """
        n_rows = len(encoding["input_ids"])
        sample_of_row = encoding.get("overflow_to_sample_mapping")
        if sample_of_row is None and text_pairs is None:  # the common case, without an index per row
            seg_texts = [(t,) for t in texts]
        else:
            samples = range(n_rows) if sample_of_row is None else [int(s) for s in sample_of_row]
            seg_texts = [(texts[s],) if text_pairs is None else (texts[s], text_pairs[s]) for s in samples]
        if self.char_layout == "reference":
            rows = [self.align_row(encoding, row, seg_texts[row], hidden[row] if hidden is not None else self._mask_tokens(encoding, row),
                                   padded_tokens_last=padded_tokens_last) for row in range(n_rows)]
            return tuple(list(column) for column in zip(*rows)) if rows else ([], [], [])
        encodings = encoding.encodings
        lengths = np.fromiter(map(len, encoding["input_ids"]), dtype=np.int64, count=n_rows)
        n_tokens = int(lengths.sum())
        # The offsets the base class already turned into lists, else straight from Rust, read while fresh.
        offset_rows = encoding["offset_mapping"] if "offset_mapping" in encoding else (e.offsets for e in encodings)
        offsets = np.fromiter(chain.from_iterable(chain.from_iterable(offset_rows)), dtype=np.int64, count=2 * n_tokens)
        if text_pairs is None:  # one segment: the special tokens (and padding) are the only ones outside it
            segment = _template_segments(lengths, special_template) if special_template else None
            if segment is None:
                special = np.fromiter(chain.from_iterable(e.special_tokens_mask for e in encodings), dtype=np.int64,
                                      count=n_tokens)
                segment = -special
        else:
            segment = np.fromiter((-1 if s is None else s for e in encodings for s in e.sequence_ids), dtype=np.int64,
                                  count=n_tokens)
        if hidden is not None:
            flags = np.concatenate([np.asarray(h, dtype=bool) for h in hidden]) if n_rows else None
        elif (mask := self.mask_token) is not None and mask in "\n".join(chain(texts, text_pairs or ())):
            ids = np.fromiter(chain.from_iterable(encoding["input_ids"]), dtype=np.int64, count=n_tokens)
            flags = ids == self.mask_token_id
        else:
            flags = None
        row_of_token = np.repeat(np.arange(n_rows), lengths)
        chars, row_starts, starts, ends = align_offsets_batch(
            offsets, row_of_token, segment, seg_texts, self.char_vocab, n_rows, flags,
            max_chars_per_token=self.max_chars_per_token, max_chars_per_sequence=self.max_chars_per_sequence)
        # Characters row by row straight from the array.
        char_bounds, token_bounds = row_starts.tolist(), [0, *np.cumsum(lengths).tolist()]
        starts, ends = starts.tolist(), ends.tolist()
        return ([chars[i:j].tolist() for i, j in zip(char_bounds, char_bounds[1:])],
                [starts[i:j] for i, j in zip(token_bounds, token_bounds[1:])],
                [ends[i:j] for i, j in zip(token_bounds, token_bounds[1:])])

    def char_features(self, encoding: BatchEncoding, texts: Sequence[str], text_pairs: Sequence[str] | None = None,
                      padded_tokens_last: bool = False, hidden: Sequence[np.ndarray] | None = None) -> list[dict]:
        """`char_columns` as one dict per row (unpadded), the form collators and datasets hold."""
        columns = self.char_columns(encoding, texts, text_pairs, padded_tokens_last, hidden)
        return [dict(zip(CHAR_FEATURE_NAMES, row)) for row in zip(*columns)]

    def _special_template(self, add_special_tokens: bool) -> tuple[int, int] | None:
        """(special tokens before, after) a single text, read off the encoding of a probe text."""
        mask = self._tokenizer.encode("a", add_special_tokens=add_special_tokens).special_tokens_mask
        if 0 not in mask:
            return None
        before = mask.index(0)
        return before, len(mask) - 1 - max(i for i, m in enumerate(mask) if m == 0)

    def _mask_tokens(self, encoding: BatchEncoding, row: int) -> np.ndarray | None:
        """The mask tokens of a row: their characters are hidden, as pretraining hides those of every
        MLM-chosen token (the model never saw the characters of "[MASK]"); None when there are none."""
        if self.mask_token_id is None:
            return None
        ids = np.asarray(encoding.encodings[row].ids if encoding.encodings else encoding["input_ids"][row])
        is_mask = ids == self.mask_token_id
        return is_mask if is_mask.any() else None

    def _encode_plus(self, *args, **kwargs) -> BatchEncoding:
        # A batch call builds tens of thousands of lists and tuples (the base class's and ours) and no
        # cycles; the collector would walk them at every automatic pass, and the rest of the process at a
        # full one. Paused for the call, it runs once afterwards (benchmarks/bench_tokenizer.py measures both ways).
        with gc_paused():
            return self._encode_with_chars(*args, **kwargs)

    def _encode_with_chars(self, text, text_pair=None, padding_strategy: PaddingStrategy = PaddingStrategy.DO_NOT_PAD,
                     pad_to_multiple_of: int | None = None, return_tensors=None, return_offsets_mapping: bool = False,
                     is_split_into_words: bool = False, padded_tokens_last: bool = False, **kwargs) -> BatchEncoding:
        """The subword encoding of the base class plus the character inputs (padded with the
        subwords when `padding` asks for it, or when tensors are returned).

        `padded_tokens_last`: see `align_row`. In the reference layout a row has 6 L characters:
        pass padding="max_length" with the authors' max_seq_length to get exactly their inputs.
        """
        if is_split_into_words:
            raise ValueError("CharBertTokenizerFast aligns characters to the text: pass strings, not pre-split words "
                             "(join the words with spaces; finetune.ner does).")
        batched = isinstance(text, (list, tuple))
        texts = list(text) if batched else [text]
        pairs = None if text_pair is None else (list(text_pair) if batched else [text_pair])
        if batched and pairs is None and texts and all(isinstance(t, (list, tuple)) and len(t) == 2 for t in texts):
            texts, pairs = [t[0] for t in texts], [t[1] for t in texts]  # a batch of (text, pair), as transformers takes
        if not set(map(type, chain(texts, pairs or ()))) <= {str}:  # (the types in one pass in C; subclasses of str pass)
            for t in chain(texts, pairs or ()):
                if not isinstance(t, str):
                    raise TypeError(f"CharBertTokenizerFast takes strings; got {type(t).__name__}.")
        enc = super()._encode_plus(texts, pairs, padding_strategy=padding_strategy, pad_to_multiple_of=pad_to_multiple_of,
                                   return_tensors=None, return_offsets_mapping=return_offsets_mapping, **kwargs)
        padded = padding_strategy != PaddingStrategy.DO_NOT_PAD
        template = None if padded or pairs is not None else self._special_template(kwargs.get("add_special_tokens", True))
        char_ids, starts, ends = self.char_columns(enc, texts, pairs, padded_tokens_last=padded_tokens_last,
                                                   special_template=template)
        data = dict(enc)
        if padded or return_tensors is not None:
            lengths = {len(ids) for ids in enc["input_ids"]}
            if len(lengths) > 1:
                raise ValueError("Sequences have different lengths: pass padding=True to return tensors.")
            chars = pad_char_arrays(char_ids, starts, ends, n_tokens=lengths.pop() if lengths else 0,
                                    char_layout=self.char_layout, pad_to_multiple_of=pad_to_multiple_of)
            data.update(chars if return_tensors is not None else {k: v.tolist() for k, v in chars.items()})
        else:
            if self.char_layout == "reference":  # the offsets layout's columns are lists already
                char_ids, starts, ends = ([_as_list(row) for row in column] for column in (char_ids, starts, ends))
            data["char_input_ids"] = char_ids
            data["char_attention_mask"] = [[1] * len(c) for c in char_ids]
            data["char_start_positions"] = starts
            data["char_end_positions"] = ends
        if not batched and return_tensors is None and "overflow_to_sample_mapping" not in data:
            data = {k: v[0] for k, v in data.items()}
        return BatchEncoding(data, encoding=enc.encodings, tensor_type=return_tensors)

    def pad(self, encoded_inputs, padding=True, max_length: int | None = None, pad_to_multiple_of: int | None = None,
            padding_side: str | None = None, return_attention_mask: bool | None = None, return_tensors=None,
            verbose: bool = True) -> BatchEncoding:
        """The base class's padding of the subword fields plus `pad_char_arrays` for the character fields."""
        rows = _feature_rows(encoded_inputs)
        if rows is None or not rows or "char_input_ids" not in rows[0]:
            return super().pad(encoded_inputs, padding, max_length, pad_to_multiple_of, padding_side,
                               return_attention_mask, return_tensors, verbose)
        subwords = [{k: v for k, v in r.items() if k not in CHAR_INPUT_NAMES} for r in rows]
        batch = super().pad(subwords, padding, max_length, pad_to_multiple_of, padding_side, return_attention_mask,
                            None, verbose)
        widths = {len(ids) for ids in batch["input_ids"]}
        if len(widths) > 1:  # padding=False/do_not_pad: the character fields stay per row too
            for key in CHAR_INPUT_NAMES:
                batch[key] = [_as_list(r[key]) if key in r else [1] * len(_as_list(r["char_input_ids"])) for r in rows]
            return BatchEncoding(dict(batch), tensor_type=return_tensors)
        if self.padding_side != "right" and (padding_side or self.padding_side) != "right":
            raise ValueError("CharBertTokenizerFast pads on the right (the character positions index real tokens).")
        lengths = [int(np.sum(_as_list(r["char_attention_mask"]))) if "char_attention_mask" in r
                   else len(_as_list(r["char_input_ids"])) for r in rows]
        chars = pad_char_arrays([_as_list(r["char_input_ids"]) for r in rows], [_as_list(r["char_start_positions"]) for r in rows],
                                [_as_list(r["char_end_positions"]) for r in rows], n_tokens=widths.pop(),
                                char_layout=self.char_layout, pad_to_multiple_of=pad_to_multiple_of, lengths=lengths)
        data = dict(batch)
        data.update(chars if return_tensors is not None else {k: v.tolist() for k, v in chars.items()})
        return BatchEncoding(data, tensor_type=return_tensors)


@contextmanager
def gc_paused():
    """Pause Python's cyclic garbage collector inside the block (left as it is when already off).
    Reference counting still frees everything; only cycle detection waits until the block ends. The
    switch is process-wide: other threads' cycles also wait for the end of the call (milliseconds)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# The name earlier code, checkpoints and docs use: the same class.
CharBertTokenizer = CharBertTokenizerFast


def _template_segments(lengths: np.ndarray, template: tuple[int, int]) -> np.ndarray | None:
    """Segment ids (-1 special, 0 text) of unpadded single-text rows whose special tokens follow the template;
    None when a row is too short for it (then the rows' own masks are read)."""
    before, after = template
    if len(lengths) and int(lengths.min()) < before + after:
        return None
    segment = np.zeros(int(lengths.sum()), dtype=np.int64)
    row_ends = np.cumsum(lengths)
    for k in range(before):
        segment[row_ends - lengths + k] = -1
    for k in range(1, after + 1):
        segment[row_ends - k] = -1
    return segment


def _as_list(value):
    return value if isinstance(value, list) else value.tolist() if hasattr(value, "tolist") else list(value)


def _feature_rows(encoded_inputs) -> list[dict] | None:
    """Features as a list of per-row dicts (from a list of dicts or a dict of batched columns); None if neither."""
    if isinstance(encoded_inputs, (list, tuple)):
        return [dict(r) for r in encoded_inputs] if all(isinstance(r, Mapping) for r in encoded_inputs) else None
    if isinstance(encoded_inputs, Mapping) and "input_ids" in encoded_inputs:
        ids = encoded_inputs["input_ids"]
        if len(ids) and not isinstance(_as_list(ids)[0], (list, tuple)):  # one unbatched example
            return [dict(encoded_inputs)]
        return [{k: v[i] for k, v in encoded_inputs.items()} for i in range(len(ids))]
    return None


def _layout_in_file(path: str | os.PathLike) -> str | None:
    path = Path(path)
    if path.is_dir():
        path = path / CHAR_VOCAB_FILE
    try:
        layout = json.loads(path.read_text(encoding="utf-8")).get("char_layout")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return None if layout is None else check_char_layout(layout)


def _config_char_layout(name_or_path, kwargs: dict) -> str | None:
    """The layout a checkpoint's config.json names when its char_vocab.json names none (or is absent)."""
    from transformers.utils import cached_file

    hub_keys = ("cache_dir", "revision", "local_files_only", "token", "subfolder")
    try:
        vocab = cached_file(name_or_path, CHAR_VOCAB_FILE, _raise_exceptions_for_missing_entries=False,
                            _raise_exceptions_for_connection_errors=False, **{k: kwargs[k] for k in hub_keys if k in kwargs})
        if vocab and _layout_in_file(vocab):
            return None  # the char vocabulary names it: read there
        config = cached_file(name_or_path, "config.json", _raise_exceptions_for_missing_entries=False,
                             _raise_exceptions_for_connection_errors=False, **{k: kwargs[k] for k in hub_keys if k in kwargs})
    except OSError:
        return None
    return _layout_in_file(config) if config else None
