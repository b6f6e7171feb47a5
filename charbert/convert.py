"""`python -m charbert.convert`: the CharBERT authors' released checkpoints as ordinary CharBERT folders.

    python -m charbert.convert --original_checkpoint charbert-bert-wiki \\
        --char_vocab data/dict/bert_char_vocab --term_vocab data/dict/term_vocab --output_dir charbert-bert-wiki-hf

The input is what the authors' code (wtma/CharBERT, transformers 2.4) saves -- a folder, or a hub
repo holding a copy of one (`--original_checkpoint org/name`, `--revision`; the hub cache when
offline): a `config.json`, a `pytorch_model.bin` (or a mirror's `model.safetensors`) holding the state dict of their `CharBertForMaskedLM` / `RobertaForMaskedLM`
(or of one of their fine-tuned heads: sequence classification, token classification, QA), and
`vocab.txt` (BERT) or `vocab.json` + `merges.txt` (RoBERTa). Their character and word
vocabularies are separate files (`data/dict/` of their repository), read as their loaders read
them: line i is id i, a later repeat of a line wins.

The output loads with `AutoModel*` / `CharBertTokenizer.from_pretrained` and computes the same
function as their code: every tensor is mapped (their one bidirectional GRU onto our two
unidirectional ones, their twelve aliased fusion entries onto our one shared block, checked equal),
the character-embedding and NLM-decoder rows are permuted to our vocabularies' ids, and the config
selects the authors' architecture, character layout and padding behaviour. Every one of their
tensors is used or named in an error; nothing of ours is left newly initialised.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import pickle
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .chars import PAD_ID, UNK_ID, CharVocab
from .checkpoint import read_config_dict, resolve_checkpoint
from .cli import program_name, setup_logging
from .configuration import CharBertConfig
from .model_card import write_model_card
from .modeling import (
    CharBertForPreTraining,
    CharBertForQuestionAnswering,
    CharBertForSequenceClassification,
    CharBertForTokenClassification,
)
from .pretraining.vocab import WordVocab
from .tokenization import CharBertTokenizer

PROG = program_name("python -m charbert.convert")  # the console script's name when run as one
WEIGHTS_FILE = "pytorch_model.bin"
SAFETENSORS_FILE = "model.safetensors"  # a mirror's copy of the same state dict
# The models the authors' releases were trained from, and their subword vocabularies: (name, files, entries).
AUTHORS_BASE_MODELS = {
    "bert": ("bert-base-cased", "vocab.txt", 28996),
    "roberta": ("roberta-base", "vocab.json + merges.txt", 50265),
}
logger = logging.getLogger(__name__)
AUTHORS_UNK = "<unk>"  # the last line of their character and word vocabularies
# Their model class for each (backbone, head): what the state dict's key names come from.
AUTHORS_CLASSES = {
    ("bert", "pretraining"): "CharBertForMaskedLM",
    ("bert", "sequence_classification"): "CharBertForSequenceClassification",
    ("bert", "token_classification"): "CharBertForTokenClassification",
    ("bert", "question_answering"): "CharBertForQuestionAnswering",
    ("roberta", "pretraining"): "RobertaForMaskedLM",
    ("roberta", "sequence_classification"): "RobertaForSequenceClassification",
    ("roberta", "token_classification"): "RobertaForTokenClassification",
    ("roberta", "question_answering"): "RobertaForQuestionAnswering",
}
# The authors' head -> the task a model card names (charbert.model_card.HUB_TASK_TYPES).
CARD_TASKS = {"pretraining": "pretraining", "sequence_classification": "text-classification",
              "token_classification": "token-classification", "question_answering": "question-answering"}
HEADS = {
    "pretraining": CharBertForPreTraining,
    "sequence_classification": CharBertForSequenceClassification,
    "token_classification": CharBertForTokenClassification,
    "question_answering": CharBertForQuestionAnswering,
}
# Their config fields that shape the backbone (everything else in a transformers-2.4 config is runtime state).
BACKBONE_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
    "initializer_range", "layer_norm_eps",
)
GRU_TENSORS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


class ConversionError(ValueError):
    """A checkpoint or vocabulary the converter cannot take; the message is one line for the user."""


# ---- the authors' vocabularies ---------------------------------------------------------------


def read_lines(path: str | Path, what: str) -> list[str]:
    """Their vocabulary files as their loaders read them: `readlines()` + `rstrip("\\n")`, line i = id i."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"no {what} at {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]  # = their readlines() loop
    except UnicodeDecodeError as err:
        raise ConversionError(f"{path} is not a UTF-8 {what}: {err}") from None


def last_ids(lines: list[str]) -> dict[str, int]:
    """Entry -> id, a later repeat winning (their `vocab[char] = index` loop); earlier repeats are unreachable."""
    return {entry: i for i, entry in enumerate(lines)}


@dataclass
class CharVocabMapping:
    """Their character vocabulary as ours: `vocab`, and for each of our ids the row of theirs it takes."""

    vocab: CharVocab
    rows: torch.Tensor  # (len(vocab),) their row index for each of our ids
    their_to_ours: np.ndarray  # (their rows,) our id for each of their ids; -1 where no character reaches it
    dropped: list[str]  # their lines no character can reach (empty lines, repeats, whitespace but " ")


def map_char_vocab(lines: list[str]) -> CharVocabMapping:
    """Our CharVocab from their character lines (their id order) and the row permutation.

    Their id 0 (line 0, " ") is at once the space, the separator after every token, the one
    character of a special or masked token, and the padding; the reference layout writes all of
    these as our PAD id, so their row 0 goes to PAD, to our " ", and to MASK/SEP/SPECIAL (which
    the reference layout never writes: they then behave as their 0 would). `<unk>` (their last
    line) is our UNK. Whitespace lines other than " " are unreachable in their code (BERT splits on
    whitespace, byte-level BPE spells it as `Ġ`) and in ours (CharVocab folds them onto " ").
    """
    ids = last_ids(lines)
    if AUTHORS_UNK not in ids:
        raise ConversionError(f"the character vocabulary has no {AUTHORS_UNK} line: not the authors' char vocab file")
    if lines[0] != " ":
        raise ConversionError(f"line 1 of the character vocabulary is {lines[0]!r}; the authors' files start with ' ' (id 0)")
    chars = [c for c, i in sorted(ids.items(), key=lambda item: item[1]) if len(c) == 1 and (c == " " or not c.isspace())]
    vocab = CharVocab(chars)
    rows = torch.zeros(len(vocab), dtype=torch.long)  # PAD, MASK, SEP, SPECIAL (ids 0, 2, 3, 4) <- their row 0
    rows[UNK_ID] = ids[AUTHORS_UNK]
    their_to_ours = np.full(len(lines), -1, dtype=np.int64)
    their_to_ours[0] = PAD_ID
    their_to_ours[ids[AUTHORS_UNK]] = UNK_ID
    for c in chars:
        rows[vocab.char_to_id[c]] = ids[c]
        if c != " ":
            their_to_ours[ids[c]] = vocab.char_to_id[c]
    dropped = [lines[i] for i in range(len(lines)) if their_to_ours[i] < 0]
    return CharVocabMapping(vocab, rows, their_to_ours, dropped)


@dataclass
class WordVocabMapping:
    vocab: WordVocab
    rows: torch.Tensor  # (len(vocab),) their NLM-decoder row for each of our word ids
    dropped: list[str]


def map_term_vocab(lines: list[str]) -> WordVocabMapping:
    """Our WordVocab ([UNK] = 0, then their words in their id order) from their `term_vocab` (`<unk>` last)."""
    ids = last_ids(lines)
    if AUTHORS_UNK not in ids:
        raise ConversionError(f"the term vocabulary has no {AUTHORS_UNK} line: not the authors' term_vocab file")
    words = [w for w, i in sorted(ids.items(), key=lambda item: item[1]) if w != AUTHORS_UNK]
    unusable = [w for w in words if not w or any(ch.isspace() for ch in w) or w != w.lower() or w == WordVocab.UNK]
    if unusable:
        raise ConversionError(
            f"the term vocabulary holds {len(unusable)} entries a word vocabulary cannot (empty, whitespace, upper case "
            f"or {WordVocab.UNK}), e.g. {unusable[0]!r}"
        )
    vocab = WordVocab(words)
    rows = torch.tensor([ids[AUTHORS_UNK]] + [ids[w] for w in words], dtype=torch.long)
    reached = set(rows.tolist())
    return WordVocabMapping(vocab, rows, [lines[i] for i in range(len(lines)) if i not in reached])


# ---- the authors' checkpoint -----------------------------------------------------------------


@dataclass
class AuthorsCheckpoint:
    path: Path
    config: dict
    state: dict[str, torch.Tensor]
    backbone: str  # "bert" or "roberta"
    head: str  # a key of HEADS
    weights: Path | None = None  # the weights file read (pytorch_model.bin, or a mirror's model.safetensors)
    source: str | None = None  # the checkpoint as the user named it (a folder, or a hub name)

    def __post_init__(self):
        self.weights = self.weights or self.path / WEIGHTS_FILE
        self.source = self.source or str(self.path)

    @property
    def prefix(self) -> str:
        return self.backbone + "."


def locate_checkpoint(name: str | Path, revision: str | None = None) -> Path:
    """The local folder of `name`: a folder, or a hub repo's snapshot (downloaded, or the hub cache
    when offline; `revision` passed through): `checkpoint.resolve_checkpoint`, with its errors as the
    converter's one line."""
    try:
        return resolve_checkpoint(name, revision=revision)
    except FileNotFoundError as err:
        hub = "" if Path(name).exists() or str(name).startswith((".", "/", "~")) else ", and as a hub name"
        raise ConversionError(f"no checkpoint folder at {name}{hub}: {' '.join(str(err).split())}") from None


ANSI_ESCAPES = re.compile(r"\x1b\[[0-9;]*m")


# What a plain state dict's pickle names (torch's own rebuild functions and storages).
_STATE_DICT_GLOBALS = re.compile(r"collections\.OrderedDict|torch\._utils\.\w+|torch\.\w*Storage|torch\.(Size|device|\w*float\w*|\w*int\w*|bool)")


def pickled_globals(file: Path) -> list[str]:
    """The Python names (module.attribute) a pickle file would import that a state dict does not,
    read with `pickletools` (nothing is executed): a .bin zip's data.pkl, or the pickles of a legacy file."""
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(file):
            with zipfile.ZipFile(file) as archive:
                member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                data = archive.read(member) if member else b""
        else:
            data = file.read_bytes()
    except (OSError, zipfile.BadZipFile):
        return []
    found: list[str] = []
    strings: list[str] = []
    position = 0
    try:
        while position < len(data):  # a legacy file is several pickles in a row
            for opcode, arg, pos in pickletools.genops(data[position:]):
                if isinstance(arg, str):
                    strings.append(arg)
                if opcode.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                if opcode.name == "STOP":
                    position += pos + 1
                    break
            else:
                break
            if len(found) > 1000:
                break
    except Exception:  # noqa: BLE001 -- the tensor bytes after a legacy file's pickles are no pickle
        pass
    return [name for name in dict.fromkeys(found) if not _STATE_DICT_GLOBALS.fullmatch(name)]


def load_state(weights_file: Path) -> dict:
    """The state dict in `weights_file`, loaded safely: safetensors, or torch.load(weights_only=True)
    (no pickled code runs). Anything else is a one-line ConversionError that says what the file is."""
    try:
        with warnings.catch_warnings():  # e.g. torch's note on the pickle protocol: not for the user
            warnings.simplefilter("ignore")
            if weights_file.suffix == ".safetensors":
                from safetensors.torch import load_file

                return load_file(str(weights_file))
            return torch.load(weights_file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        names = re.findall(r"Unsupported global: GLOBAL (\S+)", str(err)) or pickled_globals(weights_file)
        if names:
            raise ConversionError(
                f"{weights_file} holds pickled Python objects, not only tensors ({names[0]}: e.g. a whole model saved "
                f"with torch.save(model), or code): it is not loaded, for safety; give the authors' file, or a state "
                f"dict saved with torch.save(model.state_dict(), ...)"
            ) from None
        raise ConversionError(f"{weights_file} is not a readable PyTorch state dict (truncated or corrupt?)") from None
    except Exception as err:  # noqa: BLE001 -- truncated, garbage, not a PyTorch file: say so in one line
        detail = ANSI_ESCAPES.sub("", " ".join(str(err).split()))
        detail = detail.split(". ")[0][:120] if detail else ""
        raise ConversionError(
            f"{weights_file} is not a readable {'safetensors' if weights_file.suffix == '.safetensors' else 'PyTorch'} "
            f"state dict (truncated or corrupt?): {type(err).__name__}" + (f": {detail}" if detail else "")
        ) from None


def read_authors_checkpoint(path: str | Path, backbone: str | None = None, head: str | None = None,
                            revision: str | None = None, source: str | None = None) -> AuthorsCheckpoint:
    """Read and classify one of their checkpoint folders, or a hub repo holding a copy of one
    (one-line ConversionError when it is not one). `source` names it in messages (default: `path`)."""
    source = source or str(path)
    path = locate_checkpoint(path, revision)
    expected = (f"an authors' CharBERT checkpoint has config.json + {WEIGHTS_FILE} (or a mirror's {SAFETENSORS_FILE}) "
                f"+ vocab.txt (or vocab.json/merges.txt)")
    if not (path / "config.json").is_file():
        raise ConversionError(f"{source} has no config.json: not an authors' CharBERT checkpoint ({expected})")
    try:
        config = read_config_dict(path)
    except ValueError as err:  # not JSON, or not an object
        raise ConversionError(str(err)) from None
    if config.get("model_type") == CharBertConfig.model_type:
        raise ConversionError(f"{source} is already a charbert checkpoint: load it with from_pretrained, nothing to convert")
    weights_file = next((path / n for n in (WEIGHTS_FILE, SAFETENSORS_FILE) if (path / n).is_file()), None)
    if weights_file is None:
        raise ConversionError(f"{source} has no {WEIGHTS_FILE} (nor {SAFETENSORS_FILE}): not an authors' CharBERT "
                              f"checkpoint ({expected})")
    state = load_state(weights_file)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{weights_file} is not a state dict (a dict of tensors)")
    backbone = _backbone_of(state, config, backbone, weights_file)
    prefix = backbone + "."
    if not any(k.startswith(prefix + "char_embeddings.") for k in state):
        if any(k.startswith(prefix + "encoder.layer.") for k in state):
            raise ConversionError(
                f"{source} is a plain {backbone.upper()} checkpoint (no {prefix}char_embeddings.*, no fusion): "
                f"nothing to convert; build a new CharBERT on it with CharBertForPreTraining.from_pretrained({source!r})"
            )
        raise ConversionError(f"{source} holds no {prefix}* CharBERT tensors: not an authors' CharBERT checkpoint")
    found_head = _head_of(state, config, backbone, head, weights_file)
    return AuthorsCheckpoint(path, config, state, backbone, found_head, weights=weights_file, source=source)


def _backbone_of(state: dict, config: dict, backbone: str | None, weights: Path) -> str:
    """bert or roberta: from the state dict's prefix (their configs of transformers 2.4 name no model_type)."""
    found = [b for b in ("bert", "roberta") if any(k.startswith(b + ".") for k in state)]
    named = config.get("model_type")
    if backbone is not None:
        if found and backbone not in found:
            raise ConversionError(f"--backbone {backbone} but {weights} holds {found[0]}.* tensors")
        return backbone
    if len(found) == 1:
        return found[0]
    if named in ("bert", "roberta"):
        return named
    raise ConversionError(
        f"{weights} has no bert.* or roberta.* tensors: not an authors' CharBERT checkpoint (or pass --backbone)"
    )


def _head_of(state: dict, config: dict, backbone: str, head: str | None, weights: Path) -> str:
    """Which of their model classes saved the state dict (their key names)."""
    if any(k.startswith(("cls.", "lm_head.")) for k in state):
        found = "pretraining"
    elif "qa_outputs.weight" in state:
        found = "question_answering"
    elif "char_classifier.weight" in state:  # their RobertaForSequenceClassification
        found = "sequence_classification"
    elif "classifier.weight" in state:
        if backbone == "roberta":
            found = "token_classification"  # their RoBERTa sequence head is `char_classifier`
        elif head in ("sequence_classification", "token_classification"):
            found = head
        elif head is not None:
            raise ConversionError(f"--head {head} but {weights} holds a `classifier` (their sequence or token classification head)")
        elif config.get("finetuning_task"):  # their run_glue.py sets it, their run_ner.py does not
            found = "sequence_classification"
        else:
            raise ConversionError(
                f"{weights.parent}: its `classifier` fits both their sequence and token classification heads and config.json "
                f"names no finetuning_task: pass --head sequence_classification or --head token_classification"
            )
    else:
        raise ConversionError(f"{weights} has no head this converter knows (cls.*, lm_head.*, classifier, qa_outputs)")
    if head is not None and head != found:
        raise ConversionError(f"--head {head} but {weights} holds their {found} head")
    return found


# ---- tensors ---------------------------------------------------------------------------------


class _Taker:
    """Hands out the authors' tensors by name and remembers which were used, so leftovers are an error."""

    def __init__(self, ckpt: AuthorsCheckpoint):
        self.ckpt = ckpt
        self.used: set[str] = set()

    def __call__(self, key: str) -> torch.Tensor:
        if key not in self.ckpt.state:
            raise ConversionError(f"{self.ckpt.weights} lacks the tensor {key!r} that their model has")
        self.used.add(key)
        return self.ckpt.state[key]

    def aliased(self, keys: list[str], what: str) -> torch.Tensor:
        """One tensor saved under several names (their ModuleList repeating one module): all must be equal."""
        tensors = [self(k) for k in keys]
        for key, tensor in zip(keys[1:], tensors[1:]):
            if tensor.shape != tensors[0].shape or not torch.equal(tensor, tensors[0]):
                raise ConversionError(
                    f"{key} differs from {keys[0]}: their code saves one {what} under {len(keys)} names, so these "
                    f"must be equal (a modified or corrupted checkpoint)"
                )
        return tensors[0]

    def leftovers(self) -> list[str]:
        return sorted(k for k in self.ckpt.state if k not in self.used)


def convert_state_dict(
    ckpt: AuthorsCheckpoint, chars: CharVocabMapping, words: WordVocabMapping | None
) -> dict[str, torch.Tensor]:
    """Their state dict -> ours (our key names, our vocabulary ids). Every one of their tensors is used."""
    take = _Taker(ckpt)
    p = ckpt.prefix
    out: dict[str, torch.Tensor] = {}
    for key in ckpt.state:  # the backbone's own modules keep their (transformers) names
        for module in ("embeddings.", "encoder.layer.", "pooler."):
            if key.startswith(p + module):
                out["charbert." + key[len(p):]] = take(key)

    char_embedding = take(p + "char_embeddings.char_embeddings.weight")
    if char_embedding.size(0) != len(chars.their_to_ours):
        raise ConversionError(
            f"the character vocabulary has {len(chars.their_to_ours)} lines but the checkpoint's character embedding has "
            f"{char_embedding.size(0)} rows: pass the char vocab the model was trained with "
            f"(their data/dict/bert_char_vocab: 1001 lines, roberta_char_vocab: 1050)"
        )
    out["charbert.char_embeddings.embeddings.weight"] = char_embedding[chars.rows]
    for name in GRU_TENSORS:  # one bidirectional GRU -> our forward and backward GRUs
        out[f"charbert.char_embeddings.forward_gru.{name}"] = take(f"{p}char_embeddings.rnn_layer.{name}")
        out[f"charbert.char_embeddings.backward_gru.{name}"] = take(f"{p}char_embeddings.rnn_layer.{name}_reverse")

    fusion = "charbert.fusion.0."
    out[fusion + "word_proj.weight"] = take(p + "encoder.word_linear1.weight")
    out[fusion + "char_proj.weight"] = take(p + "encoder.char_linear1.weight")
    n_layers = int(ckpt.config.get("num_hidden_layers", 0))
    for name in ("weight", "bias"):
        if any(k.startswith(p + "encoder.fusion_layer_list.") for k in ckpt.state):  # BERT: one Conv1d in a ModuleList
            keys = [f"{p}encoder.fusion_layer_list.{i}.{name}" for i in range(n_layers)]
            out[fusion + "fuse." + name] = take.aliased(keys, "fusion Conv1d")
        else:  # RoBERTa: the Conv1d itself
            out[fusion + "fuse." + name] = take(f"{p}encoder.fusion_layer.{name}")
        out[fusion + "word_norm." + name] = take(f"{p}encoder.word_norm.{name}")
        out[fusion + "char_norm." + name] = take(f"{p}encoder.char_norm.{name}")

    out.update(_convert_head(ckpt, take, words))
    leftovers = take.leftovers()
    if leftovers:
        raise ConversionError(
            f"{len(leftovers)} tensors of {ckpt.weights} have no place in CharBERT: {', '.join(leftovers[:5])}"
        )
    return {k: v.detach().clone().contiguous() for k, v in out.items()}  # no shared storage (safetensors)


def _convert_head(ckpt: AuthorsCheckpoint, take: _Taker, words: WordVocabMapping | None) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if ckpt.head == "pretraining":
        if words is None:
            raise ConversionError("--term_vocab is required: the checkpoint has the NLM head (adv_decoder over their term_vocab)")
        embeddings = ckpt.state.get(ckpt.prefix + "embeddings.word_embeddings.weight")
        if ckpt.backbone == "bert":
            head = "cls.predictions."
            names = {"transform.dense": "mlm_head.dense", "transform.LayerNorm": "mlm_head.LayerNorm",
                     "adv_transform.dense": "nlm_head.dense", "adv_transform.LayerNorm": "nlm_head.LayerNorm"}
        else:  # their RobertaLMHead: ONE layer_norm serves both branches -> copied into both of ours
            head = "lm_head."
            names = {"dense": "mlm_head.dense", "char_dense": "nlm_head.dense", "layer_norm": "mlm_head.LayerNorm"}
            if ckpt.config.get("hidden_act", "gelu") != "gelu":
                raise ConversionError(f"their RoBERTa LM head hard-codes gelu but config.json says hidden_act={ckpt.config['hidden_act']!r}")
        for theirs, ours in names.items():
            for name in ("weight", "bias"):
                out[f"{ours}.{name}"] = take(f"{head}{theirs}.{name}")
        if ckpt.backbone == "roberta":
            for name in ("weight", "bias"):
                out[f"nlm_head.LayerNorm.{name}"] = out[f"mlm_head.LayerNorm.{name}"]
        out["mlm_head.bias"] = take(head + "bias")
        decoder = take(head + "decoder.weight")
        if embeddings is None or decoder.shape != embeddings.shape or not torch.equal(decoder, embeddings):
            raise ConversionError(f"{head}decoder.weight is not tied to the word embeddings as their code ties it")
        adv_weight, adv_bias = take(head + "adv_decoder.weight"), take(head + "adv_decoder.bias")
        if adv_weight.size(0) != len(words.rows):
            raise ConversionError(
                f"the term vocabulary has {len(words.rows)} words but the checkpoint's NLM decoder has {adv_weight.size(0)} rows: "
                f"pass the term_vocab the model was trained with (their data/dict/term_vocab: 30001 lines)"
            )
        out["nlm_head.decoder.weight"] = adv_weight[words.rows]
        out["nlm_head.bias"] = adv_bias[words.rows]
    elif ckpt.head == "question_answering":
        out["qa_outputs.weight"], out["qa_outputs.bias"] = take("qa_outputs.weight"), take("qa_outputs.bias")
    else:
        theirs = "char_classifier" if ckpt.head == "sequence_classification" and ckpt.backbone == "roberta" else "classifier"
        out["classifier.weight"], out["classifier.bias"] = take(theirs + ".weight"), take(theirs + ".bias")
    return out


# ---- config and tokenizer --------------------------------------------------------------------


def build_config(ckpt: AuthorsCheckpoint, state: dict[str, torch.Tensor], word_vocab_size: int | None) -> CharBertConfig:
    """The CharBertConfig that reproduces their model: their sizes, the authors' architecture,
    their character layout and their padding behaviour (`char_padding="reference"`)."""
    theirs = ckpt.config
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size") if k not in theirs]
    if missing:
        raise ConversionError(f"{ckpt.path}/config.json lacks {', '.join(missing)}: not a BERT/RoBERTa config")
    if theirs.get("pruned_heads") or theirs.get("is_decoder"):
        raise ConversionError(f"{ckpt.path}/config.json has pruned heads or is a decoder: not what the authors released")
    fields = {k: theirs[k] for k in BACKBONE_FIELDS if k in theirs}
    rows = state["charbert.embeddings.word_embeddings.weight"].size(0)
    if rows != fields["vocab_size"]:
        raise ConversionError(f"config.json says vocab_size={fields['vocab_size']} but the word embedding has {rows} rows")
    char_embedding = state["charbert.char_embeddings.embeddings.weight"]
    conv = state["charbert.fusion.0.fuse.weight"]  # (H, 2H, k)
    head_fields: dict = {}
    if ckpt.head in ("sequence_classification", "token_classification"):
        num_labels = state["classifier.weight"].size(0)
        id2label = {int(k): v for k, v in (theirs.get("id2label") or {}).items()}
        if len(id2label) != num_labels:
            id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
        head_fields = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
    config = CharBertConfig(
        backbone_type=ckpt.backbone,
        char_vocab_size=char_embedding.size(0),
        char_embedding_size=char_embedding.size(1),
        char_hidden_size=state["charbert.char_embeddings.forward_gru.weight_hh_l0"].size(1),
        fusion_kernel_size=conv.size(2),
        share_fusion=True,
        word_vocab_size=word_vocab_size if word_vocab_size is not None else 30001,
        char_pad_token_id=PAD_ID,
        char_token_norm=False,
        fusion_activation=False,
        fusion_bias=False,
        char_padding="reference",
        char_layout="reference",
        **head_fields,
        **fields,
    )
    config.architectures = [HEADS[ckpt.head].__name__]
    return config


def read_do_lower_case(path: Path) -> bool | None:
    """do_lower_case as the folder's own tokenizer files say (tokenizer_config.json), or None."""
    file = path / "tokenizer_config.json"
    if not file.is_file():
        return None
    try:
        value = json.loads(file.read_text(encoding="utf-8")).get("do_lower_case")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, bool) else None


def visibly_cased(pieces: list[str]) -> bool:
    """Does a subword vocabulary hold upper-case pieces (beyond its [SPECIAL] tokens)? An uncased
    vocabulary has none; bert-base-cased's has thousands."""
    words = [p for p in pieces if p and not (p.startswith("[") and p.endswith("]"))]
    upper = sum(any(c.isupper() for c in p) for p in words)
    return upper >= max(1, len(words) // 100)


def _missing_vocab(ckpt: AuthorsCheckpoint, folder: Path, tokenizer_name: str | None) -> str:
    base, files, entries = AUTHORS_BASE_MODELS[ckpt.backbone]
    if tokenizer_name is not None:
        return f"--tokenizer_name {tokenizer_name}: {folder} has no {files} (the {ckpt.backbone.upper()} subword vocabulary)"
    return (f"{ckpt.source} has no {files}: the released {ckpt.backbone.upper()} CharBERT uses {base}'s ({files}, "
            f"{entries:,} entries); put {'it' if ckpt.backbone == 'bert' else 'them'} in the folder, or pass "
            f"--tokenizer_name {base} (a hub name, or a folder holding {'it' if ckpt.backbone == 'bert' else 'them'})")


def build_tokenizer(ckpt: AuthorsCheckpoint, config: CharBertConfig, do_lower_case: bool | None,
                    tokenizer_name: str | None = None):
    """A fast subword tokenizer from their vocab.txt (BERT, cased unless told) or vocab.json + merges.txt,
    in the checkpoint folder or in `tokenizer_name` (a folder or hub name, e.g. bert-base-cased)."""
    from transformers import BertTokenizerFast, RobertaTokenizerFast

    path = ckpt.path
    if tokenizer_name is not None:
        try:
            path = locate_checkpoint(tokenizer_name)
        except ConversionError as err:
            raise ConversionError(f"--tokenizer_name: {err}") from None
    if ckpt.backbone == "bert":
        vocab_file = path / "vocab.txt"
        if not vocab_file.is_file():
            raise ConversionError(_missing_vocab(ckpt, path, tokenizer_name))
        pieces = read_lines(vocab_file, "BERT vocabulary")
        if do_lower_case is None:  # the released BERT CharBERT is bert-base-cased
            do_lower_case = bool(read_do_lower_case(path))
            if do_lower_case and visibly_cased(pieces):
                logger.warning(
                    "%s says do_lower_case=true but %s holds upper-case pieces (a cased vocabulary, as the released "
                    "bert-base-cased one): lower-casing makes them unreachable; pass --no-do_lower_case unless the "
                    "model was trained lower-cased", path / "tokenizer_config.json", vocab_file)
        # Positional: the vocabulary argument is `vocab_file` in transformers 4.x, `vocab` in 5.x.
        tokenizer = BertTokenizerFast(str(vocab_file), do_lower_case=do_lower_case)
        n_lines = len(pieces)
    else:
        vocab_file, merges_file = path / "vocab.json", path / "merges.txt"
        if not vocab_file.is_file() or not merges_file.is_file():
            raise ConversionError(_missing_vocab(ckpt, path, tokenizer_name))
        tokenizer = RobertaTokenizerFast(str(vocab_file), str(merges_file))
        try:
            n_lines = len(json.loads(vocab_file.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConversionError(f"{vocab_file} is not readable JSON: {err}") from None
    if len(tokenizer) < n_lines or len(tokenizer) > config.vocab_size:
        raise ConversionError(
            f"the tokenizer built from {vocab_file} has {len(tokenizer)} pieces ({n_lines} entries in the file) but the "
            f"word embedding has {config.vocab_size} rows: not this checkpoint's vocabulary"
        )
    tokenizer.model_max_length = config.max_sequence_length
    return tokenizer


# ---- the conversion --------------------------------------------------------------------------


def _check_against_model(state: dict[str, torch.Tensor], config: CharBertConfig, head: str) -> None:
    """The converted tensors are exactly what our model of that head (plus the pooler) holds, shape for shape."""
    with torch.device("meta"):
        model = HEADS[head](config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    expected.update({k: v.shape for k, v in state.items() if k.startswith("charbert.pooler.")})
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k]) != tuple(state[k].shape))
    if missing or extra or wrong:
        raise ConversionError(
            f"the converted weights do not fit CharBERT (missing {missing[:3]}, unexpected {extra[:3]}, wrong shape {wrong[:3]})"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _model_card(ckpt: AuthorsCheckpoint, config: CharBertConfig, chars: CharVocabMapping, words: WordVocabMapping | None,
                sources: dict[str, Path], do_lower_case: bool | None) -> str:
    rows = [f"| {what} | `{path.name}` | `{_sha256(path)[:16]}` |" for what, path in sources.items()]
    lower = "" if ckpt.backbone != "bert" else f" Tokenizer: `do_lower_case={do_lower_case}`."
    nlm = f", NLM word vocabulary `word_vocab.txt` ({len(words.vocab)} words, `[UNK]` first)" if words else ""
    return "\n".join([
        f"## Conversion: CharBERT ({ckpt.backbone}) from the authors' checkpoint",
        "",
        f"Converted with `python -m charbert.convert` from `{ckpt.source}`, a checkpoint of the CharBERT authors' code",
        "(Ma et al., COLING 2020, https://github.com/wtma/CharBERT, transformers 2.4):",
        f"their `{AUTHORS_CLASSES[ckpt.backbone, ckpt.head]}` -> our `{config.architectures[0]}`.",
        "",
        "| source | file | sha256 (first 16) |",
        "|---|---|---|",
        *rows,
        "",
        "Architecture: the authors' (`char_token_norm=False`, `fusion_activation=False`, `fusion_bias=False`,",
        "`share_fusion=True`); their character layout (`char_layout=\"reference\"`) and their padding behaviour",
        "(`char_padding=\"reference\"`: one Bi-GRU over the padded row, the fusion conv and the sequence mean see",
        "padded tokens), so outputs equal their code's. Set `char_padding=\"exact\"` in config.json to make padding",
        f"never change a real token's output (see charbert's docs/released_checkpoints.md).{lower}",
        f"Character vocabulary `char_vocab.json` ({len(chars.vocab)} ids, their characters remapped to ours){nlm}.",
        f"Their vocabulary lines no character or word reaches (not converted): {len(chars.dropped)} character lines"
        + (f", {len(words.dropped)} word lines." if words else "."),
        "",
    ])


def base_model_of(ckpt: AuthorsCheckpoint, config) -> str | None:
    """The model the authors' release was trained from (bert-base-cased / roberta-base), when the
    checkpoint has its shape (their code trains nothing else); None for a checkpoint of other sizes."""
    name, _, entries = AUTHORS_BASE_MODELS[ckpt.backbone]
    base_shape = (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (entries, 768, 12)
    return name if base_shape else None


def convert(
    original_checkpoint: str | Path,
    char_vocab: str | Path,
    term_vocab: str | Path | None,
    output_dir: str | Path,
    backbone: str | None = None,
    do_lower_case: bool | None = None,
    head: str | None = None,
    revision: str | None = None,
    tokenizer_name: str | None = None,
) -> Path:
    """Convert one authors' checkpoint (a folder, or a hub name: `revision`, the hub cache when offline);
    returns the output folder. Raises ConversionError."""
    from safetensors.torch import save_file

    source = str(original_checkpoint) + (f"@{revision}" if revision else "")
    src = locate_checkpoint(original_checkpoint, revision)
    out = Path(output_dir)
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise ConversionError(
            f"--output_dir {output_dir} is {'' if out.resolve() == src.resolve() else 'inside '}--original_checkpoint "
            f"{original_checkpoint}: the conversion would overwrite the authors' config.json and tokenizer files; "
            f"give a new folder"
        )
    ckpt = read_authors_checkpoint(src, backbone, head, source=source)
    chars = map_char_vocab(read_lines(char_vocab, "character vocabulary"))
    words = map_term_vocab(read_lines(term_vocab, "term vocabulary")) if term_vocab is not None and ckpt.head == "pretraining" else None
    state = convert_state_dict(ckpt, chars, words)
    config = build_config(ckpt, state, len(words.vocab) if words else None)
    config.char_vocab_hash = chars.vocab.fingerprint()  # checked by the programs that load it
    config.word_vocab_hash = words.vocab.fingerprint() if words is not None else None
    _check_against_model(state, config, ckpt.head)
    tokenizer = build_tokenizer(ckpt, config, do_lower_case, tokenizer_name)

    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(out))
    CharBertTokenizer(tokenizer, chars.vocab, char_layout="reference").save_pretrained(out)
    sources = {"weights": ckpt.weights, "character vocabulary": Path(char_vocab)}
    if words is not None:
        words.vocab.save(out)
        sources["term vocabulary"] = Path(term_vocab)
    lower = getattr(tokenizer, "do_lower_case", None)
    write_model_card(
        out, task=CARD_TASKS[ckpt.head], metrics=None, base_model=base_model_of(ckpt, config), training_args=None,
        data_files=None, char_vocab_size=len(chars.vocab), word_vocab_size=len(words.vocab) if words is not None else None,
        source=ckpt.source, notes=_model_card(ckpt, config, chars, words, sources, lower),
    )
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--original_checkpoint", required=True,
                        help="the authors' folder (config.json, pytorch_model.bin or model.safetensors, vocab files), "
                             "or a hub name holding a copy (e.g. imvladikon/charbert-bert-wiki; the cache when offline)")
    parser.add_argument("--revision", default=None, help="the hub revision of --original_checkpoint (branch, tag or commit)")
    parser.add_argument("--tokenizer_name", default=None,
                        help="a folder or hub name with the subword vocabulary, when the release lacks it "
                             "(bert-base-cased: vocab.txt; roberta-base: vocab.json + merges.txt)")
    parser.add_argument("--char_vocab", required=True, help="their character vocabulary (data/dict/bert_char_vocab or roberta_char_vocab)")
    parser.add_argument("--term_vocab", default=None, help="their NLM word vocabulary (data/dict/term_vocab); needed for pretraining checkpoints, unused by task ones")
    parser.add_argument("--output_dir", required=True, help="where to write the CharBERT folder")
    parser.add_argument("--backbone", choices=("bert", "roberta"), default=None, help="when the checkpoint cannot tell")
    parser.add_argument(
        "--do_lower_case", action=argparse.BooleanOptionalAction, default=None,
        help="lower-case in the BERT tokenizer (default: what the folder's tokenizer_config.json says, else cased)",
    )
    parser.add_argument("--head", choices=sorted(HEADS), default=None, help="their head, when the keys cannot tell (BERT `classifier`)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    setup_logging(("charbert",), logging.WARNING)  # the converter's warnings (e.g. do_lower_case) reach the user
    args = parse_args(argv)
    try:
        out = convert(
            args.original_checkpoint, args.char_vocab, args.term_vocab, args.output_dir,
            backbone=args.backbone, do_lower_case=args.do_lower_case, head=args.head, revision=args.revision,
            tokenizer_name=args.tokenizer_name,
        )
    except ConversionError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(f"Converted {args.original_checkpoint} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
