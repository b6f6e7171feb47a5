"""CharBertTokenizer: a fast Hugging Face tokenizer plus a CharVocab, returning every model input.

`tok(texts, pairs, ...)` calls the wrapped tokenizer with `return_offsets_mapping=True` and adds,
per sequence, the character channel from `chars.align` (the one alignment routine):
`char_input_ids`, `char_attention_mask`, `char_start_positions`, `char_end_positions`.
Character sequences are padded per batch to the longest real one (right padding).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, BatchEncoding, PreTrainedTokenizerBase

from .chars import CHAR_INPUT_NAMES, CHAR_VOCAB_FILE, PAD_ID, CharVocab, align

logger = logging.getLogger(__name__)


def _require_fast(tokenizer: PreTrainedTokenizerBase) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"CharBERT needs a fast (Rust `tokenizers`) tokenizer for character offsets; got "
            f"{type(tokenizer).__name__}. Save the checkpoint with a tokenizer.json, or load it with use_fast=True."
        )


def pad_char_features(features: Sequence[dict], pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Stack the character fields of unpadded per-sequence features into (B, C) / (B, L) tensors.

    Each feature holds `char_input_ids` (C_i,) and `char_start_positions`/`char_end_positions`
    (L_i,). Characters are right-padded with [PAD] to the longest C_i; positions are padded with 0
    (the placeholder) to the longest L_i, matching right-padded subword inputs.
    """
    n_chars = max(len(f["char_input_ids"]) for f in features)
    n_tokens = max(len(f["char_start_positions"]) for f in features)
    if pad_to_multiple_of:
        n_chars = -(-n_chars // pad_to_multiple_of) * pad_to_multiple_of
    char_ids = torch.full((len(features), n_chars), PAD_ID, dtype=torch.long)
    char_mask = torch.zeros((len(features), n_chars), dtype=torch.long)
    starts = torch.zeros((len(features), n_tokens), dtype=torch.long)
    ends = torch.zeros((len(features), n_tokens), dtype=torch.long)
    for i, f in enumerate(features):
        c, t = len(f["char_input_ids"]), len(f["char_start_positions"])
        char_ids[i, :c] = torch.as_tensor(f["char_input_ids"])
        char_mask[i, :c] = 1
        starts[i, :t] = torch.as_tensor(f["char_start_positions"])
        ends[i, :t] = torch.as_tensor(f["char_end_positions"])
    return dict(zip(CHAR_INPUT_NAMES, (char_ids, char_mask, starts, ends)))


class CharBertTokenizer:
    """Wraps a fast tokenizer (BERT WordPiece or RoBERTa byte-level BPE) and a character vocabulary.

    Attributes not defined here (pad_token_id, convert_ids_to_tokens, model_max_length, ...)
    are those of the wrapped tokenizer.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, char_vocab: CharVocab | None = None):
        _require_fast(tokenizer)
        self.tokenizer = tokenizer
        self.char_vocab = char_vocab if char_vocab is not None else CharVocab.default()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, char_vocab: CharVocab | str | None = None, **kwargs):
        """Load the subword tokenizer at `path` and the character vocabulary beside it.

        When the folder has no `char_vocab.json` (a plain BERT/RoBERTa checkpoint) the built-in
        default character set is used (printable ASCII, Latin-1, common typographic marks);
        build one from your corpus with `python -m pretrain.vocab` for other scripts.
        """
        if not Path(path).exists():
            raise FileNotFoundError(f"No tokenizer folder at {path} (charbert never downloads from a hub).")
        kwargs.setdefault("use_fast", True)
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        if isinstance(char_vocab, (str, os.PathLike)):
            char_vocab = CharVocab.load(char_vocab)
        elif char_vocab is None:
            vocab_file = Path(path) / CHAR_VOCAB_FILE
            if vocab_file.is_file():
                char_vocab = CharVocab.load(vocab_file)
            else:
                logger.info("No %s in %s: using the default character vocabulary.", CHAR_VOCAB_FILE, path)
                char_vocab = CharVocab.default()
        return cls(tokenizer, char_vocab)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(path))
        self.char_vocab.save(Path(path) / CHAR_VOCAB_FILE)

    def __getattr__(self, name):
        # Only called for attributes not found on the wrapper: delegate to the subword tokenizer.
        if name in ("tokenizer", "char_vocab"):
            raise AttributeError(name)
        return getattr(self.tokenizer, name)

    def __len__(self) -> int:
        return len(self.tokenizer)

    def char_features(self, encoding: BatchEncoding, texts: Sequence[str], text_pairs: Sequence[str] | None = None):
        """Per-row character features of a batch encoding made with return_offsets_mapping=True.

        Rows map to texts through `overflow_to_sample_mapping` when windows overflow (SQuAD).
        Returns a list of dicts of numpy arrays, one per row (unpadded).
        """
        sample_of_row = encoding.get("overflow_to_sample_mapping")
        out = []
        for row, offsets in enumerate(encoding["offset_mapping"]):
            sample = int(sample_of_row[row]) if sample_of_row is not None else row
            seg_texts = (texts[sample],) if text_pairs is None else (texts[sample], text_pairs[sample])
            char_ids, starts, ends = align(np.asarray(offsets), encoding.sequence_ids(row), seg_texts, self.char_vocab)
            out.append({"char_input_ids": char_ids, "char_start_positions": starts, "char_end_positions": ends})
        return out

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        return_tensors: str | None = None,
        return_offsets_mapping: bool = False,
        **kwargs,
    ) -> BatchEncoding:
        """Tokenise like the wrapped tokenizer and add the character inputs.

        Takes the usual keyword arguments (padding, truncation, max_length, stride,
        return_overflowing_tokens, ...). With return_tensors="pt", character fields are padded
        to the batch's longest character sequence.
        """
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        pairs = None
        if text_pair is not None:
            pairs = [text_pair] if isinstance(text_pair, str) else list(text_pair)
            if len(pairs) != len(texts):
                raise ValueError(f"Got {len(texts)} texts but {len(pairs)} text pairs.")
        for t in texts + (pairs or []):
            if not isinstance(t, str):
                raise TypeError(f"CharBertTokenizer takes strings; got {type(t).__name__}.")
        if return_tensors not in (None, "pt"):
            raise ValueError(f"CharBertTokenizer returns lists or PyTorch tensors; got return_tensors={return_tensors!r}.")
        enc = self.tokenizer(texts, pairs, return_offsets_mapping=True, **kwargs)
        features = self.char_features(enc, texts, pairs)
        data = dict(enc)
        if not return_offsets_mapping:
            data.pop("offset_mapping")
        if return_tensors == "pt":
            lengths = {len(ids) for ids in enc["input_ids"]}
            if len(lengths) > 1:
                raise ValueError("Sequences have different lengths: pass padding=True with return_tensors='pt'.")
            data = {k: torch.as_tensor(v) for k, v in data.items()}
            data.update(pad_char_features(features))
        else:
            data["char_input_ids"] = [f["char_input_ids"].tolist() for f in features]
            data["char_attention_mask"] = [[1] * len(f["char_input_ids"]) for f in features]
            data["char_start_positions"] = [f["char_start_positions"].tolist() for f in features]
            data["char_end_positions"] = [f["char_end_positions"].tolist() for f in features]
            if single and len(features) == 1:
                data = {k: v[0] for k, v in data.items()}
        return BatchEncoding(data, encoding=enc.encodings, tensor_type=None)
