"""Sentence embeddings from CharBERT (both channels) and plain encoders, as sentence-transformers models.

A CharBERT embedding model is an ordinary `SentenceTransformer` made of sentence-transformers' own
modules, so `SentenceTransformer(folder)` opens it (after `import charbert`, which registers the
model type) and `save` / `push_to_hub` work as for any other:

    Transformer  CharBertModel.both_channels: both channels after the last layer   (B, L, 2H)
    Dense        [w ; c] -> W [w ; c], no bias, no activation, W starting as [I | 0] (B, L, H)
    Pooling      the backbone's pooling (mean for all-MiniLM-L6-v2)               (B, H)
    Normalize    when the backbone has it

Why this pooling: the task heads read both channels concatenated, and the projection back to H keeps
the backbone's width, pooling and normalisation (vectors of the same size and kind as the model it
was built on). Starting at [I | 0] on a CharBERT with the identity start (`new_module_init="identity"`)
makes a fresh model encode exactly as its backbone; training then moves the character half in.
Summing the channels, or concatenating without a projection, would change the vectors on the first
step; the character channel alone would throw the subword channel's meaning away.

`load_embedding_model` opens any of: a sentence-transformers folder (ours or anyone's), a CharBERT
folder without modules.json (a pretraining output: both channels, mean pooling), or a plain Hugging
Face encoder folder (sentence-transformers' default: mean pooling). `build_charbert_embedding` builds
CharBERT on a plain sentence-transformers model, keeping its pooling and normalisation. Inputs longer
than the model takes are truncated and counted (`truncation_count`).

The training side (the program is finetune/embedding.py): `read_pairs` reads (query, positive) pairs,
`PairCollator` tokenises them (and noises the queries, `QueryNoise`), `ContrastiveModel` computes the
multiple-negatives ranking loss with in-batch negatives and, optionally, self-teaching, query alignment
and a teacher's vectors as targets (`teacher`: e.g. the plain model CharBERT is built on).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from . import backbones
from .chars import CHAR_VOCAB_FILE
from .noise import ATTACK_TYPES, OPERATIONS, PRETRAIN_RULES, PRUTHI_RULES, NoiseRules
from .tasks.errors import TaskDataError, data_error

logger = logging.getLogger(__name__)

# The Transformer module of a CharBERT embedding model reads this CharBertModel method (not `forward`):
# both channels concatenated, (B, L, 2H).
CHANNELS_METHOD = "both_channels"
CHARBERT_MODALITY_CONFIG = {"text": {"method": CHANNELS_METHOD, "method_output_name": None}}
TOKEN_EMBEDDINGS = "token_embeddings"
# sentence-transformers' MultipleNegativesRankingLoss scale: cosine similarities x 20 are the logits.
DEFAULT_SCALE = 20.0
# The score of an in-batch passage that is not a negative (the same text as the row's positive).
EXCLUDED_SCORE = -1e4
NOISE_RULES = {"pruthi": PRUTHI_RULES, "pretrain": PRETRAIN_RULES}


class NotAnEmbeddingModel(ValueError):
    """A path that holds neither a sentence-transformers model, a CharBERT nor a Hugging Face encoder."""


# ---- the model -------------------------------------------------------------------------


def _require_sentence_transformers():
    try:
        import sentence_transformers
    except ImportError:
        raise ImportError("sentence embeddings need the `sentence-transformers` package: "
                          "pip install 'charbert[embeddings]'") from None
    return sentence_transformers


def _sentence_transformer_class():
    SentenceTransformer = _require_sentence_transformers().SentenceTransformer

    class EmbeddingModel(SentenceTransformer):
        """sentence-transformers' model that also counts the inputs cut to `max_seq_length`
        (`truncated_inputs`; read it with `truncation_count`)."""

        truncated_inputs: int = 0

        def preprocess(self, inputs, prompt=None, **kwargs):
            features = super().preprocess(inputs, prompt=prompt, **kwargs)
            self.truncated_inputs = self.truncated_inputs + count_truncated(self, inputs, features)
            return features

    EmbeddingModel.__name__ = EmbeddingModel.__qualname__ = "EmbeddingModel"
    EmbeddingModel.__module__ = __name__
    return EmbeddingModel


_EMBEDDING_MODEL_CLASS = None


def embedding_model_class():
    """`EmbeddingModel`: SentenceTransformer counting truncated inputs (made on first use, so that this
    module imports without sentence-transformers; `charbert.embedding.EmbeddingModel` names it too)."""
    global _EMBEDDING_MODEL_CLASS
    if _EMBEDDING_MODEL_CLASS is None:
        _EMBEDDING_MODEL_CLASS = _sentence_transformer_class()
    return _EMBEDDING_MODEL_CLASS


def __getattr__(name: str):
    if name == "EmbeddingModel":
        return embedding_model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def count_truncated(model, inputs: Sequence[Any], features: dict) -> int:
    """How many of `inputs` (texts) the tokenizer cut to the model's `max_seq_length`.

    Only rows that fill the whole padded width can have been cut; those are tokenised again without
    truncation (subword ids only) to tell a cut text from one that fits exactly."""
    mask = features.get("attention_mask") if isinstance(features, Mapping) else None
    limit = getattr(model, "max_seq_length", None)
    if not isinstance(mask, torch.Tensor) or mask.ndim != 2 or limit is None or mask.size(1) < limit:
        return 0
    full = (mask.sum(1) >= limit).nonzero().flatten().tolist()
    texts = [inputs[i] for i in full if isinstance(inputs[i], str)]
    if not texts:
        return 0
    backend = model.tokenizer.backend_tokenizer
    truncation, padding = backend.truncation, backend.padding
    backend.no_truncation()
    backend.no_padding()
    try:
        lengths = [len(e.ids) for e in backend.encode_batch(texts)]
    finally:
        if truncation is not None:
            backend.enable_truncation(**{k: v for k, v in truncation.items() if k in
                                         ("max_length", "stride", "strategy", "direction")})
        if padding is not None:
            backend.enable_padding(**{k: v for k, v in padding.items() if k in
                                      ("direction", "pad_to_multiple_of", "pad_id", "pad_type_id", "pad_token", "length")})
    return sum(n > limit for n in lengths)


def truncation_count(model, reset: bool = False) -> int:
    """Inputs cut to `max_seq_length` since the model was opened (or since the last reset)."""
    count = int(getattr(model, "truncated_inputs", 0))
    if reset and hasattr(model, "truncated_inputs"):
        model.truncated_inputs = 0
    return count


def channel_projection(hidden_size: int) -> nn.Module:
    """sentence-transformers' Dense on the token states: [w ; c] (2H) -> H, no bias, no activation,
    starting as [I | 0] (the subword channel as it is)."""
    from sentence_transformers.base.modules import Dense

    weight = torch.cat([torch.eye(hidden_size), torch.zeros(hidden_size, hidden_size)], dim=1)  # (H, 2H)
    return Dense(2 * hidden_size, hidden_size, bias=False, activation_function=nn.Identity(), init_weight=weight,
                 module_input_name=TOKEN_EMBEDDINGS)


def charbert_transformer(model, tokenizer, max_seq_length: int | None = None):
    """sentence-transformers' Transformer module around a CharBertModel and its CharBertTokenizer, reading
    both channels (`CharBertModel.both_channels`). The module loads from a folder: the model is written to
    a temporary one first."""
    from sentence_transformers.base.modules import Transformer

    with tempfile.TemporaryDirectory(prefix="charbert-embedding-") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        module = Transformer(tmp, modality_config=CHARBERT_MODALITY_CONFIG, module_output_name=TOKEN_EMBEDDINGS,
                             max_seq_length=max_seq_length)
    return module


def is_charbert_embedding(model) -> bool:
    """Whether a SentenceTransformer encodes with CharBERT's two channels."""
    config = getattr(model[0], "modality_config", None) if len(model) else None
    return isinstance(config, dict) and config.get("text") == CHARBERT_MODALITY_CONFIG["text"]


def _read_json(path: Path) -> dict | list | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def embedding_kind(name_or_path: str | os.PathLike) -> str:
    """What a path holds: "sentence-transformers" (modules.json), "charbert" (a CharBERT folder without
    modules.json), "encoder" (a Hugging Face model folder) or "hub" (not a local path: a Hub name).
    Anything else raises NotAnEmbeddingModel with a one-line reason."""
    path = Path(name_or_path)
    if not path.exists():
        if str(name_or_path).count("/") == 1 and not str(name_or_path).startswith(("/", ".")):
            return "hub"
        raise NotAnEmbeddingModel(f"{name_or_path}: no such folder")
    if not path.is_dir():
        raise NotAnEmbeddingModel(f"{name_or_path} is a file, not a model folder")
    if (path / "modules.json").is_file():
        if not isinstance(_read_json(path / "modules.json"), list):
            raise NotAnEmbeddingModel(f"{path / 'modules.json'} is not a sentence-transformers module list")
        return "sentence-transformers"
    if not (path / "config.json").is_file():
        raise NotAnEmbeddingModel(f"{name_or_path} is not an embedding model: it has neither modules.json "
                                  "(sentence-transformers) nor config.json (a Hugging Face encoder)")
    config = _read_json(path / "config.json")
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type == "charbert":
        return "charbert"
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise NotAnEmbeddingModel(f"{path / 'config.json'} has model_type={model_type!r}, which is not a model "
                                  "transformers knows: not an embedding model")
    return "encoder"


def _open(name_or_path: str, device: str | None):
    cls = embedding_model_class()
    try:
        return cls(str(name_or_path), device=device)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        raise NotAnEmbeddingModel(f"{name_or_path} does not open as an embedding model: {message}") from None


def load_embedding_model(name_or_path: str, device: str | None = None):
    """A `SentenceTransformer` (an `EmbeddingModel`, counting truncated inputs) for a sentence-transformers
    folder (ours, with CharBERT, or anyone's), a CharBERT folder without modules.json (both channels, mean
    pooling) or a plain Hugging Face encoder folder (sentence-transformers' default: mean pooling).
    Raises NotAnEmbeddingModel (one line) for anything else."""
    kind = embedding_kind(name_or_path)
    if kind == "charbert":
        return build_charbert_embedding(name_or_path, device=device)
    return _open(name_or_path, device)


def query_document_model(query_model, document_model, device: str | None = None):
    """One model that encodes queries with `query_model` and documents with `document_model`
    (sentence-transformers' Router: `encode_query` and `encode_document`; a plain `encode` takes the
    document route). A query encoder trained to land where `document_model` puts clean queries (the
    teacher-only losses of `finetune.embedding`) keeps every document vector `document_model` already
    made valid: nothing is re-indexed. `save(folder)` writes one folder that `SentenceTransformer(folder)`
    opens (after `import charbert`)."""
    from sentence_transformers.base.modules import Router

    router = Router.for_query_document(query_modules=list(query_model), document_modules=list(document_model),
                                       default_route="document")
    return embedding_model_class()(modules=[router], device=device)


def is_query_document_model(model) -> bool:
    """Whether a SentenceTransformer routes queries and documents to modules of their own."""
    from sentence_transformers.base.modules import Router

    return len(model) == 1 and isinstance(model[0], Router)


def _encoder_folder(path: Path) -> Path:
    """The folder of a sentence-transformers model's Transformer module (the root, or e.g. 0_Transformer)."""
    modules = _read_json(path / "modules.json") or []
    first = modules[0] if modules and isinstance(modules[0], dict) else {}
    return path / first.get("path", "")


# The CharBertConfig fields that shape the character encoder (CharEncoder) and its input: what a character encoder
# taken from another CharBERT brings with it.
CHAR_ENCODER_FIELDS = ("char_vocab_size", "char_embedding_size", "char_hidden_size", "char_pad_token_id",
                       "char_token_norm", "char_padding", "char_layout", "max_chars_per_token", "char_vocab_hash")


def character_encoder_of(folder: str | os.PathLike) -> tuple[dict, dict, Path | None]:
    """The character encoder of a CharBERT folder (a pretraining output, or a CharBERT sentence-transformers
    folder): its config fields (CHAR_ENCODER_FIELDS), its weights (`CharBertModel.char_embeddings`' state dict)
    and its character vocabulary file (None: the default vocabulary). One line (NotAnEmbeddingModel) when the
    folder holds no CharBERT."""
    from .modeling import CharBertModel

    path = Path(folder)
    if embedding_kind(path) == "sentence-transformers":
        path = _encoder_folder(path)
    if (_read_json(path / "config.json") or {}).get("model_type") != "charbert":
        raise NotAnEmbeddingModel(f"{folder}: no CharBERT there to take a character encoder from")
    source = CharBertModel.from_pretrained(str(path))
    fields = {name: getattr(source.config, name) for name in CHAR_ENCODER_FIELDS}
    vocab = path / CHAR_VOCAB_FILE
    return fields, source.char_embeddings.state_dict(), vocab if vocab.is_file() else None


def _charbert_already(name_or_path, char_encoder_from) -> NotAnEmbeddingModel:
    return NotAnEmbeddingModel(f"{name_or_path} is a CharBERT already: a character encoder from {char_encoder_from} "
                               "goes into a CharBERT built on a plain model")


def build_charbert_embedding(name_or_path: str | os.PathLike, device: str | None = None,
                             max_seq_length: int | None = None, char_encoder_from: str | os.PathLike | None = None,
                             **config_kwargs):
    """A CharBERT embedding model (see the module docstring) on:

    * a plain sentence-transformers folder: CharBERT is built on its Transformer's weights with the identity
      start (one fusion block per layer), and its other modules (pooling, normalisation, ...) are kept;
    * a plain Hugging Face encoder folder: the same, with mean pooling;
    * a CharBERT folder (e.g. a pretraining output): used as it is, with mean pooling;
    * a CharBERT sentence-transformers folder: opened as it is.

    `config_kwargs` set CharBertConfig fields of a new CharBERT (default new_module_init="identity",
    share_fusion=False). A fresh model encodes as its backbone does (exactly when no layer norm has more
    than one dead dimension, see `identity_fusion_`). `char_encoder_from` (a CharBERT folder, e.g. a
    pretraining output) gives a new CharBERT that folder's character encoder and character vocabulary
    instead of random ones: the backbone stays as it is, the fusion still starts at the identity (so the
    model still encodes as its backbone), and training starts from a character channel that already reads
    misspelt words (NLM)."""
    _require_sentence_transformers()
    from sentence_transformers.sentence_transformer.modules import Pooling

    from .modeling import CharBertModel
    from .tokenization import CharBertTokenizer

    kind = embedding_kind(name_or_path)
    if kind == "hub":
        raise NotAnEmbeddingModel(f"{name_or_path}: build a CharBERT embedding model from a local folder "
                                  "(download the model first)")
    path = Path(name_or_path)
    rest, limit = None, max_seq_length
    if kind == "sentence-transformers":
        base = _open(str(path), "cpu")
        if is_query_document_model(base):
            raise NotAnEmbeddingModel(f"{name_or_path} is a query/document model: build CharBERT on one of its two "
                                      "models instead")
        if is_charbert_embedding(base):
            if char_encoder_from is not None:
                raise _charbert_already(name_or_path, char_encoder_from)
            if max_seq_length is not None:
                base.max_seq_length = max_seq_length
            return base.to(device) if device is not None else base
        rest = list(base)[1:]
        limit = max_seq_length or base.max_seq_length
        path = _encoder_folder(path)
    model_type = (_read_json(path / "config.json") or {}).get("model_type")
    own_chars = path / CHAR_VOCAB_FILE
    char_vocab = own_chars if own_chars.is_file() else None
    if model_type == "charbert":
        if char_encoder_from is not None:
            raise _charbert_already(name_or_path, char_encoder_from)
        model = CharBertModel.from_pretrained(str(path))
    elif model_type in backbones.BACKBONES:
        config_kwargs = {"new_module_init": "identity", "share_fusion": False, **config_kwargs}
        char_weights = None
        if char_encoder_from is not None:
            char_fields, char_weights, char_vocab = character_encoder_of(char_encoder_from)
            config_kwargs.update(char_fields)
        model = CharBertModel.from_pretrained(str(path), **config_kwargs)
        if char_weights is not None:
            model.char_embeddings.load_state_dict(char_weights)
            logger.info("character encoder and vocabulary from %s", char_encoder_from)
    else:
        raise NotAnEmbeddingModel(f"{path} holds a {model_type!r} model; CharBERT is built on "
                                  f"{backbones.supported()} encoders")
    tokenizer = CharBertTokenizer.from_pretrained(str(path), char_vocab=char_vocab)
    tokenizer.max_chars_per_token = model.config.max_chars_per_token
    tokenizer.max_chars_per_sequence = model.config.max_chars_per_sequence
    if limit is not None:
        limit = min(limit, model.config.max_sequence_length)
    hidden = model.config.hidden_size
    modules = [charbert_transformer(model, tokenizer, limit), channel_projection(hidden)]
    modules += rest if rest is not None else [Pooling(hidden, "mean")]
    return embedding_model_class()(modules=modules, device=device)


def new_module_names(model) -> list[str]:
    """Parameter names (of the SentenceTransformer) of what CharBERT added to its backbone: the character
    encoder, the fusion blocks and the channel projection."""
    if not is_charbert_embedding(model):
        return []
    return [name for name, _ in model.named_parameters()
            if ".char_embeddings." in name or ".fusion." in name or name.startswith("1.")]


# ---- training pairs --------------------------------------------------------------------


@dataclass
class Pair:
    query: str
    positive: str | None = None  # None: a text without a passage (a texts file, for the query-only losses)


def _is_squad(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("data"), list)


def read_pairs(path: str | os.PathLike, query_column: str = "query", positive_column: str = "positive") -> list[Pair]:
    """(query, positive) pairs from a file:

    * a SQuAD JSON (v1.1/v2.0 layout): (question, paragraph) for every question;
    * JSON lines: one object a line with the two fields;
    * TSV (a .tsv file): a header row naming the columns, then one pair a line;
    * plain text (a .txt file): one text a line, no passages (`Pair.positive` None), for the losses that
      read the queries only (a teacher's vectors as targets): any corpus is training data for them.

    A missing or empty field ends with one line naming the file, the line and the column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise TaskDataError(f"{path}: the file is empty")
    if path.suffix == ".json":
        data = None
        try:
            data = json.loads(text)
        except ValueError:
            pass
        if _is_squad(data):
            from .tasks.squad import read_squad

            return [Pair(e.question, e.context) for e in read_squad(path, labelled=False)]
    if path.suffix in (".tsv", ".tab"):
        return _tsv_pairs(path, text, query_column, positive_column)
    if path.suffix == ".txt":
        return [Pair(line.strip()) for line in text.splitlines() if line.strip()]
    return _jsonl_pairs(path, text, query_column, positive_column)


def _field(path, line, row, column) -> str:
    if column not in row:
        raise data_error(path, line, f"no {column!r} field (fields: {', '.join(map(str, row)) or 'none'}); "
                                     "set --query_column / --positive_column")
    value = row[column]
    if not isinstance(value, str) or not value.strip():
        raise data_error(path, line, f"the {column!r} field is empty")
    return value


def _jsonl_pairs(path, text, query_column, positive_column) -> list[Pair]:
    pairs = []
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError:
            raise data_error(path, line, "not a JSON object (pairs files are JSON lines, a .tsv with a header, "
                                         "or a SQuAD .json)") from None
        if not isinstance(row, dict):
            raise data_error(path, line, "not a JSON object")
        pairs.append(Pair(_field(path, line, row, query_column), _field(path, line, row, positive_column)))
    return pairs


def _tsv_pairs(path, text, query_column, positive_column) -> list[Pair]:
    rows = list(csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE))
    header = rows[0]
    for column in (query_column, positive_column):
        if column not in header:
            raise data_error(path, 1, f"no {column!r} column (columns: {', '.join(header)}); "
                                      "set --query_column / --positive_column")
    qi, pi = header.index(query_column), header.index(positive_column)
    pairs = []
    for line, row in enumerate(rows[1:], 2):
        if not any(cell.strip() for cell in row):
            continue
        named = {header[i]: cell for i, cell in enumerate(row) if i < len(header)}
        pairs.append(Pair(_field(path, line, named, header[qi]), _field(path, line, named, header[pi])))
    return pairs


def pairs_from_rows(rows, source: str, query_column: str = "query", positive_column: str = "positive") -> list[Pair]:
    """(query, positive) pairs from a `datasets` split (one row a pair)."""
    missing = [c for c in (query_column, positive_column) if c not in rows.column_names]
    if missing:
        raise TaskDataError(f"{source} has no column {', '.join(map(repr, missing))} (columns: "
                            f"{', '.join(rows.column_names)}); set --query_column / --positive_column")
    pairs = []
    for i, row in enumerate(rows):
        for column in (query_column, positive_column):
            if not isinstance(row[column], str) or not row[column].strip():
                raise TaskDataError(f"{source} row {i}: the {column!r} column is empty")
        pairs.append(Pair(row[query_column], row[positive_column]))
    return pairs


# ---- query noise -----------------------------------------------------------------------


def parse_operations(spec: str) -> tuple[str, ...]:
    """--noise_operations: "all" (the attacks' drop, add, swap, keyboard) or a comma-separated list of
    charbert.noise.OPERATIONS."""
    names = [s.strip().lower() for s in str(spec).split(",") if s.strip()]
    if names == ["all"]:
        return ATTACK_TYPES
    unknown = [n for n in names if n not in OPERATIONS]
    if unknown or not names:
        raise ValueError(f"--noise_operations: unknown operation(s) {unknown or [spec]}; "
                         f"give 'all' or a comma-separated list of {', '.join(OPERATIONS)}")
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class QueryNoise:
    """Misspell a share of a query's eligible words (charbert.noise: `rules` say which words and where),
    at most `max_words` of them, each with one edit drawn from `operations`; punctuation and spacing kept."""

    probability: float = 0.25
    operations: tuple[str, ...] = ATTACK_TYPES
    rules: NoiseRules = PRUTHI_RULES
    max_words: int | None = 2

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        from .robustness.attacks import _apply_edits, noiser, rewrite_texts

        ((edits, _),) = rewrite_texts([text], noiser(self.operations, rng, self.rules, self.probability, self.max_words))
        return _apply_edits(text, edits)


# ---- batches and the loss ---------------------------------------------------------------


class PairCollator:
    """(query, positive) examples -> {"query": features, "positive": features[, "noised_query": features]
    [, "teacher_query": features]}, each tokenised by the model's (or the teacher's) own input module
    (`SentenceTransformer.preprocess`); "positive" and "same_positive" are None with passages=False (then
    the examples need no passages: a texts file). words=True adds each of those query features' word
    index ("query_words", "noised_query_words", "teacher_query_words", `word_index`), for the word-level
    teacher term. The noise is a function of the batch's generator (the training loop's `collator_rng`):
    the same seed, the same typos."""

    needs_rng = True

    def __init__(self, model, noise: QueryNoise | None = None, teacher=None, passages: bool = True,
                 words: bool = False):
        self.model, self.noise, self.teacher, self.passages, self.words = model, noise, teacher, passages, words

    def __call__(self, examples: Sequence[Pair | dict], rng: np.random.Generator | None = None) -> dict:
        queries = [e.query if isinstance(e, Pair) else e["query"] for e in examples]
        batch = {"positive": None, "same_positive": None}
        if self.passages:  # a loss that reads the queries only (ContrastiveModel.reads_passages) needs no passages
            positives = [e.positive if isinstance(e, Pair) else e["positive"] for e in examples]
            batch = {"positive": self.model.preprocess(positives), "same_positive": same_positive_mask(positives)}
        ends = [text_word_ends(q) for q in queries] if self.words else None
        self.add_queries(batch, "query", self.model, queries, ends)
        if self.noise is not None:
            rng = rng if rng is not None else np.random.default_rng(0)
            noised = [self.noise(q, rng) for q in queries]
            noised_ends = [text_word_ends(q) for q in noised] if self.words else None
            self.add_queries(batch, "noised_query", self.model, noised, noised_ends)
            if self.words:  # a misspelt copy whose words do not pair one to one with the clean text's: no word targets
                apart = torch.tensor([len(a) != len(b) for a, b in zip(noised_ends, ends)], dtype=torch.bool)
                batch["noised_query_words"][apart] = -1
        if self.teacher is not None:  # the clean queries in the teacher's own tokenisation
            self.add_queries(batch, "teacher_query", self.teacher, queries, ends)
        return batch

    @staticmethod
    def add_queries(batch: dict, name: str, model, texts: list[str], word_ends: list[np.ndarray] | None) -> None:
        """batch[name]: the texts' features; with word_ends (words=True) also batch[name + "_words"]."""
        if word_ends is None:
            batch[name] = model.preprocess(texts)
            return
        features = model.preprocess(texts, processing_kwargs=WITH_OFFSETS)
        batch[f"{name}_words"] = word_index(features, word_ends)
        batch[name] = features


# ---- words ------------------------------------------------------------------------------

WITH_OFFSETS = {"text": {"return_offsets_mapping": True}}
_WORD = re.compile(r"\S+")


def text_word_ends(text: str) -> np.ndarray:
    """Where each word of a text ends (words: whitespace-separated, as the query noise keeps them)."""
    return np.fromiter((m.end() for m in _WORD.finditer(text)), dtype=np.int64)


def word_index(features: dict, word_ends: Sequence[np.ndarray]) -> torch.Tensor:
    """(B, L) long: the word of its text each token belongs to (0-based; word_ends: each text's
    `text_word_ends`), -1 for special and padding tokens; takes the offsets out of `features` (tokenised
    with `WITH_OFFSETS`), since the model does not read them. The token-to-word rule is the pretraining
    collator's `token_words`."""
    from .pretraining.collator import token_words

    offsets = features.pop("offset_mapping").numpy()  # (B, L, 2)
    real = (offsets[..., 1] > offsets[..., 0]) & features["attention_mask"].bool().numpy()  # (B, L)
    rows = [token_words(offsets[b], real[b], ends) for b, ends in enumerate(word_ends)]
    return torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, 0, dtype=torch.long)


def word_vectors(states: torch.Tensor, words: torch.Tensor, num_words: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each word's mean token state: states (B, L, H), words (B, L) (-1: no word) -> (B, W, H) and the
    token counts (B, W) (0: the word has no token here, e.g. cut by truncation)."""
    member = (words.unsqueeze(1) == torch.arange(num_words, device=words.device)[None, :, None])  # (B, W, L)
    counts = member.sum(-1)  # (B, W)
    sums = member.to(states.dtype) @ states  # (B, W, H)
    return sums / counts.clamp(min=1).unsqueeze(-1).to(states.dtype), counts


def same_positive_mask(positives: Sequence[str]) -> torch.Tensor:
    """(B, B) bool: True where another row of the batch has the same positive passage (e.g. two SQuAD
    questions on one paragraph). Those columns are not negatives of the row: the loss leaves them out."""
    ids = {}
    groups = torch.tensor([ids.setdefault(p, len(ids)) for p in positives])  # (B,)
    same = groups[:, None] == groups[None, :]  # (B, B)
    return same & ~torch.eye(len(positives), dtype=torch.bool)


@dataclass
class ContrastiveOutput(ModelOutput):
    """loss: what is trained; the parts (logged by the training loop): retrieval_loss (clean queries),
    noised_retrieval_loss (noised queries, --query_noise), self_teaching_loss, query_alignment_loss,
    teacher_loss and teacher_word_loss (before their weights)."""

    loss: torch.FloatTensor | None = None
    retrieval_loss: torch.FloatTensor | None = None
    noised_retrieval_loss: torch.FloatTensor | None = None
    self_teaching_loss: torch.FloatTensor | None = None
    query_alignment_loss: torch.FloatTensor | None = None
    teacher_loss: torch.FloatTensor | None = None
    teacher_word_loss: torch.FloatTensor | None = None


def in_batch_scores(queries: torch.Tensor, passages: torch.Tensor, scale: float = DEFAULT_SCALE) -> torch.Tensor:
    """(B, D), (B, D) -> (B, B): scale x cosine similarity of every query with every passage of the batch
    (row i's positive is column i; the other columns are its in-batch negatives)."""
    return scale * F.normalize(queries.float(), dim=-1) @ F.normalize(passages.float(), dim=-1).T


def multiple_negatives_ranking_loss(scores: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each query's positive against the batch's other passages (scores (B, B))."""
    return F.cross_entropy(scores, torch.arange(scores.size(0), device=scores.device))


def self_teaching_loss(clean_scores: torch.Tensor, noised_scores: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(clean || noised) of the two score distributions over the batch's passages, mean over queries.

    The clean query's distribution is the target (no gradient flows through it): the noised query is
    pulled towards what the model does with the clean one, as in CharacterBERT-DR's self-teaching."""
    target = F.log_softmax(clean_scores.detach() / temperature, dim=-1)  # (B, B)
    student = F.log_softmax(noised_scores / temperature, dim=-1)  # (B, B)
    return F.kl_div(student, target, log_target=True, reduction="batchmean")


def cosine_alignment_loss(targets: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """1 - cos(vector, its target), mean over the batch ((B, D) each); no gradient flows through the targets.

    Query alignment: the targets are the clean queries' vectors, the vectors the noised queries' (where
    self-teaching matches the noised query's ranking of the batch's few passages, this asks for the clean
    query's whole vector, which every passage of the corpus is scored against). Teacher: the targets are a
    fixed model's vectors of the clean queries."""
    cosine = F.cosine_similarity(vectors.float(), targets.detach().float(), dim=-1)  # (B,)
    return (1.0 - cosine).mean()


def word_alignment_loss(target_states: torch.Tensor, target_words: torch.Tensor, states: torch.Tensor,
                        words: torch.Tensor) -> torch.Tensor:
    """1 - cos(a word's mean token state, the target's mean token state of the same word), mean over the words
    that have tokens on both sides; no gradient flows through the targets. States (B, L, H) and (B, L', H),
    words (B, L) and (B, L') from `word_index` (the two tokenisations may differ: a misspelt word is split
    into other pieces, a teacher has its own vocabulary). The sentence-level terms say where the whole
    query goes; this says it of every word, the misspelt ones included, so each gets its own target."""
    num_words = 1 + max((int(w.max()) for w in (target_words, words) if w.numel()), default=-1)
    targets, target_counts = word_vectors(target_states.detach().float(), target_words, num_words)  # (B, W, H)
    vectors, counts = word_vectors(states.float(), words, num_words)  # (B, W, H)
    both = (target_counts > 0) & (counts > 0)  # (B, W)
    if not both.any():
        return states.sum() * 0.0  # no word to align: a zero that keeps the graph
    cosine = F.cosine_similarity(vectors[both], targets[both], dim=-1)  # (N,)
    return (1.0 - cosine).mean()


class ContrastiveModel(nn.Module):
    """A SentenceTransformer trained on (query, positive) batches with in-batch negatives.

    loss = ranking_weight x MNRL(clean queries)                               without noise
         = ranking_weight x (MNRL(clean) + MNRL(noised)) / 2                  query_noise (typos-aware training)
         + self_teaching x KL(clean || noised)                                self_teaching > 0
         + query_alignment x (1 - cos(noised, clean))                         query_alignment > 0
         + teacher_weight x mean of (1 - cos(q, teacher's clean q))           teacher given
           over the clean queries and (with noise) the noised ones, the clean
           part weighted teacher_clean_weight to the noised part's 1
         + teacher_word_weight x the same, word by word                       teacher_word_weight > 0
           (`word_alignment_loss`: each word's mean token state against the teacher's of the clean word)

    The teacher is a fixed SentenceTransformer with the same vector size (usually the plain model CharBERT
    was built on): its vectors of the clean queries keep the trained model's clean queries where they were
    and pull the misspelt ones there. It is never trained (its parameters do not require gradients and it
    stays in eval mode) and is not part of the saved model. With ranking_weight 0 and no self-teaching the
    passages are not encoded: the loss needs the queries only. The word-level term needs the batch's word
    indices (`PairCollator(..., words=True)`) and compares token states after the model's last token-level
    module (CharBERT's channel projection, or the plain model's transformer) with the teacher's.
    """

    def __init__(self, encoder, scale: float = DEFAULT_SCALE, query_noise: bool = False, self_teaching: float = 0.0,
                 temperature: float = 1.0, query_alignment: float = 0.0, teacher=None, teacher_weight: float = 1.0,
                 ranking_weight: float = 1.0, teacher_word_weight: float = 0.0, word_side_base_lr: bool = False,
                 teacher_clean_weight: float = 1.0):
        super().__init__()
        self.encoder = encoder
        self.scale, self.query_noise = scale, query_noise
        self.self_teaching, self.temperature = self_teaching, temperature
        self.query_alignment = query_alignment
        self.teacher, self.teacher_weight, self.ranking_weight = teacher, teacher_weight, ranking_weight
        self.teacher_word_weight, self.word_side_base_lr = teacher_word_weight, word_side_base_lr
        self.teacher_clean_weight = teacher_clean_weight
        for role, model in (("the model trained", encoder), ("the teacher", teacher)):
            if model is not None and is_query_document_model(model):  # its forward would take the document route
                raise NotAnEmbeddingModel(f"{role} is a query/document model: give one of its two models instead")
        if teacher_word_weight > 0 and teacher is None:
            raise ValueError("the word-level teacher term (teacher_word_weight > 0) needs a teacher")
        if teacher is not None:
            teacher.requires_grad_(False).eval()
        self.loading_info = {"initialized_keys": [f"encoder.{n}" for n in new_module_names(encoder)]}

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # a fixed target: no dropout
        return self

    def encode(self, features: dict) -> dict:
        return self.encoder(dict(features))  # sentence_embedding (B, D), token_embeddings (B, L, H); a copy

    def embed(self, features: dict) -> torch.Tensor:
        return self.encode(features)["sentence_embedding"]  # (B, D)

    def scores(self, queries: torch.Tensor, passages: torch.Tensor, same_positive: torch.Tensor | None) -> torch.Tensor:
        """(B, D), (B, D) -> (B, B) in-batch scores; a passage equal to the row's positive is left out (a large
        negative score, not -inf, so that the self-teaching KL stays finite)."""
        scores = in_batch_scores(queries, passages, self.scale)  # (B, B)
        return scores if same_positive is None else scores.masked_fill(same_positive, EXCLUDED_SCORE)

    @property
    def reads_passages(self) -> bool:
        """Whether the loss needs the passages (the ranking terms or self-teaching)."""
        return self.ranking_weight > 0 or self.self_teaching > 0

    def base_lr_parts(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """With word_side_base_lr, on a CharBERT encoder: the subword side of the modules CharBERT adds, as
        (parameter, mask of its elements), which the optimizer keeps at the base learning rate under
        --new_module_lr_multiplier (`charbert.training.setup.damp_updates`), so that only the character side
        is sped up: the projection's subword half, and in each fusion block the word map, the conv's subword
        half and its bias, and the word norm. Those carry the plain model's own path (the identity start);
        at 20x they rewrite it (docs/results.md)."""
        if not self.word_side_base_lr or not is_charbert_embedding(self.encoder):
            return []
        parts = []
        for name, param in self.encoder.named_parameters():
            mask = None
            if name.startswith("1.") and param.dim() == 2:  # the projection W (H, 2H) = [subword | character]
                mask = torch.zeros_like(param, dtype=torch.bool)
                mask[:, :param.size(0)] = True
            elif ".fusion." in name and name.endswith("fuse.weight"):  # (H, 2H, k): [subword | character] inputs
                mask = torch.zeros_like(param, dtype=torch.bool)
                mask[:, :param.size(0)] = True
            elif ".fusion." in name and (name.endswith("fuse.bias") or ".word_proj." in name or ".word_norm." in name):
                mask = torch.ones_like(param, dtype=torch.bool)
            if mask is not None:
                parts.append((param, mask))
        return parts

    @property
    def reads_words(self) -> bool:
        """Whether the loss needs the queries' word indices (`PairCollator(..., words=True)`)."""
        return self.teacher is not None and self.teacher_word_weight > 0

    def forward(self, query: dict, positive: dict | None, noised_query: dict | None = None,
                same_positive: torch.Tensor | None = None, teacher_query: dict | None = None,
                query_words: torch.Tensor | None = None, noised_query_words: torch.Tensor | None = None,
                teacher_query_words: torch.Tensor | None = None) -> ContrastiveOutput:
        words = {"query": query_words, "noised_query": noised_query_words, "teacher_query": teacher_query_words}
        if not self.reads_passages or (self.ranking_weight == 0 and noised_query is None):
            return self.queries_only(query, noised_query, teacher_query, words)
        passages = self.embed(positive)  # (B, D)
        clean_out = self.encode(query)
        clean = self.scores(clean_out["sentence_embedding"], passages, same_positive)  # (B, B)
        retrieval = multiple_negatives_ranking_loss(clean)
        noised_out = noised = noised_retrieval = None
        if noised_query is not None:
            noised_out = self.encode(noised_query)
            noised = self.scores(noised_out["sentence_embedding"], passages, same_positive)  # (B, B)
            noised_retrieval = multiple_negatives_ranking_loss(noised)
        ranking = (retrieval + noised_retrieval) / 2 if self.query_noise and noised is not None else retrieval
        loss = self.ranking_weight * ranking
        teaching = None
        if noised is not None and self.self_teaching > 0:
            teaching = self_teaching_loss(clean, noised, self.temperature)
            loss = loss + self.self_teaching * teaching
        loss, parts = self.add_alignment(loss, clean_out, noised_out, teacher_query, words)
        return ContrastiveOutput(loss=loss, retrieval_loss=retrieval, noised_retrieval_loss=noised_retrieval,
                                 self_teaching_loss=teaching, **parts)

    def queries_only(self, query: dict, noised_query: dict | None, teacher_query: dict | None,
                     words: dict) -> ContrastiveOutput:
        """The loss without the ranking terms: the alignment and teacher terms, which read the queries only."""
        clean_out = self.encode(query)
        noised_out = self.encode(noised_query) if noised_query is not None else None
        zero = clean_out["sentence_embedding"].new_zeros(())
        loss, parts = self.add_alignment(zero, clean_out, noised_out, teacher_query, words)
        return ContrastiveOutput(loss=loss, **parts)

    def add_alignment(self, loss, clean: dict, noised: dict | None, teacher_query: dict | None,
                      words: dict) -> tuple[torch.Tensor, dict]:
        """loss + the query-alignment and teacher terms there are (clean, noised: the queries' encoder
        outputs); returns the loss and the terms by their ContrastiveOutput names."""
        parts = {}
        if noised is not None and self.query_alignment > 0:
            parts["query_alignment_loss"] = cosine_alignment_loss(clean["sentence_embedding"], noised["sentence_embedding"])
            loss = loss + self.query_alignment * parts["query_alignment_loss"]
        if self.teacher is None:
            return loss, parts
        if teacher_query is None:
            raise ValueError("a ContrastiveModel with a teacher needs the batch's teacher_query: "
                             "PairCollator(model, noise, teacher) makes it")
        with torch.no_grad():
            target = self.teacher(dict(teacher_query))  # sentence_embedding (B, D), token_embeddings (B, L, H)
        queries = [("query", clean)] + ([("noised_query", noised)] if noised is not None else [])
        weights = [self.teacher_clean_weight, 1.0][:len(queries)]  # clean, noised (1, 1: the plain mean of the two)

        def weighted_mean(losses: list[torch.Tensor]) -> torch.Tensor:
            return sum(w * part for w, part in zip(weights, losses)) / sum(weights)

        parts["teacher_loss"] = weighted_mean([cosine_alignment_loss(target["sentence_embedding"], out["sentence_embedding"])
                                               for _, out in queries])
        loss = loss + self.teacher_weight * parts["teacher_loss"]
        if self.reads_words:
            if words.get("teacher_query") is None:
                raise ValueError("the word-level teacher term needs the batch's word indices: "
                                 "PairCollator(..., words=True) makes them")
            parts["teacher_word_loss"] = weighted_mean([
                word_alignment_loss(target["token_embeddings"], words["teacher_query"], out["token_embeddings"], words[name])
                for name, out in queries])
            loss = loss + self.teacher_word_weight * parts["teacher_word_loss"]
        return loss, parts
