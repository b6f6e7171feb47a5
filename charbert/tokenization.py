"""CharBertTokenizer: a fast Hugging Face tokenizer plus a CharVocab, returning every model input.

`tok(texts, pairs, ...)` calls the wrapped tokenizer with `return_offsets_mapping=True` and adds,
per sequence, the character channel from `chars.align` (the one alignment routine):
`char_input_ids`, `char_attention_mask`, `char_start_positions`, `char_end_positions`.
Character sequences are padded per batch to the longest real one (right padding).

`char_layout` picks how the characters are laid out (`chars.CHAR_LAYOUTS`): "offsets" (ours,
new models) or "reference" (the CharBERT authors' layout, which their released checkpoints
were trained on; a converted checkpoint saves it, so `from_pretrained` picks it up).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tokenizers import models
from transformers import AutoTokenizer, BatchEncoding, PreTrainedTokenizerBase

from .chars import (
    CHAR_INPUT_NAMES,
    CHAR_VOCAB_FILE,
    MAX_CHARS_PER_TOKEN,
    PAD_ID,
    REFERENCE_CHARS_PER_TOKEN,
    CharVocab,
    align,
    check_char_layout,
    saved_char_limits,
)

logger = logging.getLogger(__name__)


def _require_fast(tokenizer: PreTrainedTokenizerBase) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"CharBERT needs a fast (Rust `tokenizers`) tokenizer for character offsets; got "
            f"{type(tokenizer).__name__}. Save the checkpoint with a tokenizer.json, or load it with use_fast=True."
        )


def pad_char_features(
    features: Sequence[dict], pad_to_multiple_of: int | None = None, char_layout: str = "offsets"
) -> dict[str, torch.Tensor]:
    """Stack the character fields of unpadded per-sequence features into (B, C) / (B, L) tensors.

    Each feature holds `char_input_ids` (C_i,) and `char_start_positions`/`char_end_positions`
    (L_i,). "offsets": characters are right-padded with [PAD] to the longest C_i; positions are
    padded with 0 (the placeholder) to the longest L_i, matching right-padded subword inputs.
    "reference": rows are padded to 6 L (L = the longest L_i) and padded tokens point at the last
    position, as the authors' code does (the mask still marks each row's own characters).
    """
    n_tokens = max(len(f["char_start_positions"]) for f in features)
    if check_char_layout(char_layout) == "reference":
        n_chars = REFERENCE_CHARS_PER_TOKEN * n_tokens
        position_pad = n_chars - 1
    else:
        n_chars = max(len(f["char_input_ids"]) for f in features)
        if pad_to_multiple_of:
            n_chars = -(-n_chars // pad_to_multiple_of) * pad_to_multiple_of
        position_pad = 0
    char_ids = torch.full((len(features), n_chars), PAD_ID, dtype=torch.long)
    char_mask = torch.zeros((len(features), n_chars), dtype=torch.long)
    starts = torch.full((len(features), n_tokens), position_pad, dtype=torch.long)
    ends = torch.full((len(features), n_tokens), position_pad, dtype=torch.long)
    for i, f in enumerate(features):
        c, t = len(f["char_input_ids"]), len(f["char_start_positions"])
        char_ids[i, :c] = torch.as_tensor(f["char_input_ids"])
        char_mask[i, :c] = 1
        starts[i, :t] = torch.as_tensor(f["char_start_positions"])
        ends[i, :t] = torch.as_tensor(f["char_end_positions"])
    return dict(zip(CHAR_INPUT_NAMES, (char_ids, char_mask, starts, ends)))


def _saved_char_layout(path: Path) -> str | None:
    """The layout a tokenizer folder names: its char_vocab.json first, else the model's config.json."""
    for name in (CHAR_VOCAB_FILE, "config.json"):
        file = path / name
        if file.is_file():
            try:
                layout = json.loads(file.read_text(encoding="utf-8")).get("char_layout")
            except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                continue
            if layout is not None:
                return check_char_layout(layout)
    return None


def continuation_prefix(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The prefix that marks a word-internal piece ("##" for WordPiece); None for BPE."""
    model = tokenizer.backend_tokenizer.model
    return model.continuing_subword_prefix if isinstance(model, models.WordPiece) else None


class CharBertTokenizer:
    """Wraps a fast tokenizer (BERT WordPiece or RoBERTa byte-level BPE) and a character vocabulary.

    Attributes not defined here (pad_token_id, convert_ids_to_tokens, model_max_length, ...)
    are those of the wrapped tokenizer.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, char_vocab: CharVocab | None = None, char_layout: str = "offsets",
                 max_chars_per_token: int | None = MAX_CHARS_PER_TOKEN, max_chars_per_sequence: int | None = None):
        _require_fast(tokenizer)
        self.max_chars_per_token, self.max_chars_per_sequence = max_chars_per_token, max_chars_per_sequence
        self.tokenizer = tokenizer
        self.char_vocab = char_vocab if char_vocab is not None else CharVocab.default()
        self.char_layout = check_char_layout(char_layout)
        self.continuation_prefix = continuation_prefix(tokenizer)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, char_vocab: CharVocab | str | None = None, char_layout: str | None = None, **kwargs
    ):
        """Load the subword tokenizer at `path` and the character vocabulary beside it.

        When the folder has no `char_vocab.json` (a plain BERT/RoBERTa checkpoint) the built-in
        default character set is used (printable ASCII, Latin-1, common typographic marks);
        build one from your corpus with `python -m pretrain.vocab` for other scripts.
        The layout is `char_layout` if given, else the one the folder's char_vocab.json or
        config.json names, else "offsets".
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
        if char_layout is None:
            char_layout = _saved_char_layout(Path(path)) or "offsets"
        return cls(tokenizer, char_vocab, char_layout, **saved_char_limits(path))

    def save_pretrained(self, path: str | os.PathLike) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(path))
        vocab_file = self.char_vocab.save(Path(path) / CHAR_VOCAB_FILE)
        payload = json.loads(vocab_file.read_text(encoding="utf-8"))  # the layout travels with the characters
        payload["char_layout"] = self.char_layout
        vocab_file.write_text(json.dumps(payload, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")

    def __getattr__(self, name):
        # Only called for attributes not found on the wrapper: delegate to the subword tokenizer.
        if name in ("tokenizer", "char_vocab", "char_layout", "continuation_prefix", "max_chars_per_token",
                    "max_chars_per_sequence"):
            raise AttributeError(name)
        return getattr(self.tokenizer, name)

    def __len__(self) -> int:
        return len(self.tokenizer)

    def align_row(self, encoding: BatchEncoding, row: int, seg_texts: Sequence[str], hidden: np.ndarray | None = None,
                  padded_tokens_last: bool = False):
        """`chars.align` for one row of a fast-tokenizer encoding, in this tokenizer's layout.

        `hidden` flags tokens whose characters are hidden (MLM). `padded_tokens_last` (reference
        layout): padding tokens point at the row's last position (the authors' NER/SQuAD code)
        instead of being laid out as special tokens (their GLUE/pretraining code).
        """
        offsets = np.asarray(encoding["offset_mapping"][row])
        sequence_ids = encoding.sequence_ids(row)
        if self.char_layout == "offsets":
            return align(offsets, sequence_ids, seg_texts, self.char_vocab, hidden=hidden,
                         max_chars_per_token=self.max_chars_per_token, max_chars_per_sequence=self.max_chars_per_sequence)
        ids = np.asarray(encoding["input_ids"][row])
        padding = np.array([s is None for s in sequence_ids]) & (ids == self.tokenizer.pad_token_id)
        unknown = ids == self.tokenizer.unk_token_id if self.tokenizer.unk_token_id is not None else None
        return align(
            offsets, sequence_ids, seg_texts, self.char_vocab, layout="reference", tokens=encoding.tokens(row),
            hidden=hidden, unknown=unknown, padding=padding, padded_tokens_last=padded_tokens_last,
            continuation_prefix=self.continuation_prefix,
        )

    def char_features(self, encoding: BatchEncoding, texts: Sequence[str], text_pairs: Sequence[str] | None = None,
                      padded_tokens_last: bool = False):
        """Per-row character features of a batch encoding made with return_offsets_mapping=True.

        Rows map to texts through `overflow_to_sample_mapping` when windows overflow (SQuAD).
        Returns a list of dicts of numpy arrays, one per row (unpadded).
        """
        sample_of_row = encoding.get("overflow_to_sample_mapping")
        out = []
        for row in range(len(encoding["offset_mapping"])):
            sample = int(sample_of_row[row]) if sample_of_row is not None else row
            seg_texts = (texts[sample],) if text_pairs is None else (texts[sample], text_pairs[sample])
            char_ids, starts, ends = self.align_row(encoding, row, seg_texts, padded_tokens_last=padded_tokens_last)
            out.append({"char_input_ids": char_ids, "char_start_positions": starts, "char_end_positions": ends})
        return out

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        return_tensors: str | None = None,
        return_offsets_mapping: bool = False,
        padded_tokens_last: bool = False,
        **kwargs,
    ) -> BatchEncoding:
        """Tokenise like the wrapped tokenizer and add the character inputs.

        Takes the usual keyword arguments (padding, truncation, max_length, stride,
        return_overflowing_tokens, ...). With return_tensors="pt", character fields are padded
        to the batch's longest character sequence. `padded_tokens_last`: see `align_row`.
        In the reference layout a row has 6 L characters: pass padding="max_length" with the
        authors' max_seq_length to get exactly their inputs.
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
        features = self.char_features(enc, texts, pairs, padded_tokens_last=padded_tokens_last)
        data = dict(enc)
        if not return_offsets_mapping:
            data.pop("offset_mapping")
        if return_tensors == "pt":
            lengths = {len(ids) for ids in enc["input_ids"]}
            if len(lengths) > 1:
                raise ValueError("Sequences have different lengths: pass padding=True with return_tensors='pt'.")
            data = {k: torch.as_tensor(v) for k, v in data.items()}
            data.update(pad_char_features(features, char_layout=self.char_layout))
        else:
            data["char_input_ids"] = [f["char_input_ids"].tolist() for f in features]
            data["char_attention_mask"] = [[1] * len(f["char_input_ids"]) for f in features]
            data["char_start_positions"] = [f["char_start_positions"].tolist() for f in features]
            data["char_end_positions"] = [f["char_end_positions"].tolist() for f in features]
            if single and len(features) == 1:
                data = {k: v[0] for k, v in data.items()}
        return BatchEncoding(data, encoding=enc.encodings, tensor_type=None)
