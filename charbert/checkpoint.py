"""Checkpoint folders: what a folder holds, how long a sequence its model takes, and building
CharBERT on a plain backbone checkpoint (BERT, RoBERTa, ...: the families in backbones.py).

    resolve_checkpoint(name)      the local folder of a checkpoint: the folder itself, or a hub repo's snapshot
    read_config_dict(path)        config.json of a checkpoint (one-line errors)
    read_model_type(path)         its model_type ("charbert", "bert", "roberta", ...)
    max_sequence_length(config)   longest token sequence any BERT-like config's positions allow
    build_on_backbone(cls, path)  a new CharBERT model (class `cls`) whose backbone is the plain checkpoint
    read_checkpoint_tensors(path, names)  selected tensors of a folder's weight files

    check_tokenizer_files(path)   a one-line error when a folder holds no tokenizer
    check_converted(path)         a one-line error naming charbert.convert when a folder holds the authors' tensors
    check_vocab_fingerprints(config, ...)  the vocabularies are the ones the model was trained with

`CharBertPreTrainedModel.from_pretrained` is the public entry: a CharBERT folder loads the usual
transformers way, a plain one goes through `build_on_backbone`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import warnings
from pathlib import Path

import torch
from transformers import AutoModel

from . import backbones
from .cli import UsageError, quiet_transformers
from .configuration import CharBertConfig

logger = logging.getLogger(__name__)

# Model types whose position ids start after padding_idx (fairseq's convention): they reserve
# pad_token_id + 1 positions.
PADDING_OFFSET_MODEL_TYPES = backbones.padding_offset_model_types()

# Where a plain *ForMaskedLM checkpoint keeps its MLM head -> our names (loaded when present), per
# backbone_type: a view of the adapters' `mlm_head_keys`.
MLM_HEAD_KEYS = {name: adapter.mlm_head_keys for name, adapter in backbones.BACKBONES.items()}

# from_pretrained arguments that only a transformers loader reads; building on a backbone ignores them.
_LOADER_ONLY_KWARGS = ("local_files_only", "trust_remote_code", "ignore_mismatched_sizes")
# from_pretrained arguments that say where a hub checkpoint comes from (resolve_checkpoint's).
HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only", "force_download")
# What a checkpoint folder needs from a hub repo (not its TF/Flax/ONNX weights).
_HUB_FILES = ["*.json", "*.txt", "*.model", "*.md", "*.safetensors"]
_HUB_TORCH_BIN = ["pytorch_model*.bin", "pytorch_model*.bin.index.json"]


def hub_kwargs(kwargs: dict, pop: bool = False) -> dict:
    """The hub arguments among from_pretrained's keyword arguments (removed from `kwargs` with `pop`)."""
    return {k: (kwargs.pop(k) if pop else kwargs[k]) for k in HUB_KWARGS if k in kwargs}


def resolve_checkpoint(name_or_path: str | os.PathLike, revision: str | None = None, cache_dir: str | None = None,
                       token: str | bool | None = None, local_files_only: bool = False, force_download: bool = False) -> Path:
    """The local folder of the checkpoint `name_or_path`: a folder is itself; anything else is a hub
    repo id ("org/name", "bert-base-cased"), resolved by huggingface_hub: downloaded when online, the
    cached snapshot when offline (HF_HUB_OFFLINE=1, `local_files_only`); `revision` is passed through.

    Only what a PyTorch checkpoint needs is fetched (configs, vocabularies, safetensors weights;
    pytorch_model*.bin only when the repo has no safetensors).
    """
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists():
        raise FileNotFoundError(f"{name_or_path} is a file; a model checkpoint is a folder (or a hub name).")
    name = str(name_or_path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or not name.strip():
        raise FileNotFoundError(f"No model checkpoint at {name_or_path}: the folder does not exist.")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    where = dict(revision=revision, cache_dir=cache_dir, token=token, local_files_only=local_files_only)
    try:
        folder = Path(snapshot_download(name, allow_patterns=_HUB_FILES, force_download=force_download, **where))
        if not any(folder.glob("*.safetensors")) and not any(folder.glob("pytorch_model*.bin")):
            folder = Path(snapshot_download(name, allow_patterns=_HUB_TORCH_BIN, force_download=force_download, **where))
    except (OSError, ValueError, HfHubHTTPError, LocalEntryNotFoundError) as err:
        reason = " ".join(str(err).split())[:300]
        raise FileNotFoundError(
            f"No model checkpoint at {name_or_path}: not a local folder, and the hub name did not resolve "
            f"(offline: it must be in the hub cache; revision={revision or 'main'}): {reason}"
        ) from None
    return folder


def read_config_dict(path: str | os.PathLike) -> dict:
    """The config.json of a checkpoint folder (or hub name, see `resolve_checkpoint`) as a dict."""
    config_file = resolve_checkpoint(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"No model checkpoint at {path} (expected {config_file}).")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_file} is not a readable model config: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_file} is not a readable model config: a JSON object was expected.")
    return config


# A folder holds a tokenizer when it has one of these (fast tokenizer, WordPiece, BPE, SentencePiece).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")


def check_tokenizer_files(path: str | os.PathLike, flag: str = "--tokenizer_name") -> Path:
    """`path`, or FileNotFoundError when it has no tokenizer file (transformers would quietly
    build a tokenizer that maps every word to [UNK])."""
    path = Path(path)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{path} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}): copy them from the model it "
            f"was trained from, or pass {flag} with a folder that has them"
        )
    return path


# ---- the authors' checkpoints, unconverted ------------------------------------------------

# Tensor names only the CharBERT authors' code (wtma/CharBERT) writes: its character encoder (one
# bidirectional `rnn_layer`), its fusion (`fusion_layer_list` / RoBERTa's `fusion_layer`,
# `word_linear1`, `char_linear1`) and its NLM head (`adv_*`, RoBERTa's `char_dense`). Ours are
# `char_embeddings.forward_gru`, `fusion.N`, `nlm_head`: the two never meet.
AUTHORS_TENSOR_PATTERN = re.compile(
    r"(^|\.)(char_embeddings\.(rnn_layer|char_embeddings)\.|encoder\.(fusion_layer_list|fusion_layer|word_linear1"
    r"|char_linear1)\.|predictions\.adv_|lm_head\.(adv_decoder|char_dense)\.)"
)


class UnconvertedCheckpointError(UsageError):
    """A folder holds the CharBERT authors' tensors: it must go through `python -m charbert.convert` first."""


def authors_tensor_names(names) -> list[str]:
    """The names among `names` that only the CharBERT authors' code writes (see AUTHORS_TENSOR_PATTERN)."""
    return [name for name in names if AUTHORS_TENSOR_PATTERN.search(name)]


def weight_names(path: str | os.PathLike) -> list[str]:
    """The tensor names of a folder's weight files, read without loading a tensor or running pickled
    code: safetensors headers, index files' weight maps, or a .bin's pickle through
    `torch.load(weights_only=True, map_location="meta")`. An unreadable file contributes nothing
    (loading it reports why)."""
    path = Path(path)
    names: list[str] = []
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        try:
            names += list(json.loads((path / index).read_text(encoding="utf-8")).get("weight_map", {}))
        except (OSError, ValueError, AttributeError):
            pass
    if not names:
        for file in sorted(path.glob("*.safetensors")):
            names += _names_of(file)
    if not names:
        for file in sorted(path.glob("pytorch_model*.bin")):
            names += _names_of(file)
    return names


def _names_of(file: Path) -> list[str]:
    stat = file.stat()
    return list(_cached_names(str(file), stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=32)
def _cached_names(file: str, size: int, mtime_ns: int) -> tuple[str, ...]:
    try:
        if file.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(file, framework="pt") as f:
                return tuple(f.keys())
        with warnings.catch_warnings():  # e.g. torch's note on an old pickle protocol
            warnings.simplefilter("ignore")
            state = torch.load(file, map_location="meta", weights_only=True)
    except Exception:  # noqa: BLE001 -- corrupt, truncated or not a state dict: the loader reports it
        return ()
    return tuple(k for k in state if isinstance(k, str)) if isinstance(state, dict) else ()


CONVERT_COMMAND = "python -m charbert.convert"


def convert_hint(path: str | os.PathLike, backbone: str | None = None) -> str:
    """The converter's command line for the authors' folder `path`."""
    chars = f"{backbone}_char_vocab" if backbone else "bert_char_vocab|roberta_char_vocab"
    return (f"{CONVERT_COMMAND} --original_checkpoint {path} --char_vocab <their data/dict/{chars}> "
            f"--term_vocab <their data/dict/term_vocab> --output_dir <a new folder>")


def check_converted(path: str | os.PathLike, model_type: str | None = None) -> None:
    """UnconvertedCheckpointError (one line naming charbert.convert) when the folder `path` holds the
    CharBERT authors' tensors, whatever its config.json says (a hub copy saying "bert", or none).

    THE check: every load path calls it (checkpoint.load_weights, build_on_backbone,
    tasks.loading.inspect_checkpoint, the tokenizer, and any `from_pretrained` once charbert is
    imported, see `guard_from_pretrained`). `model_type`, when known, skips the work for charbert folders.
    """
    path = Path(path)
    if not path.is_dir():
        return
    if model_type is None:
        try:
            model_type = read_model_type(path)
        except (OSError, ValueError):
            model_type = ""
    if model_type == CharBertConfig.model_type:
        return
    found = authors_tensor_names(weight_names(path))
    if found:
        backbone = found[0].split(".", 1)[0] if found[0].startswith(("bert.", "roberta.")) else None
        raise UnconvertedCheckpointError(
            f"{path} is an unconverted CharBERT checkpoint (the authors' tensors, e.g. {found[0]}; config.json says "
            f"model_type={model_type or None!r}): loading it would run plain {(backbone or 'BERT').upper()} with the "
            f"character channel dropped. Convert it first: {convert_hint(path, backbone)}"
        )


def guard_from_pretrained() -> None:
    """Make every `PreTrainedModel.from_pretrained` (the Auto classes, pipelines, BertFor...) refuse an
    unconverted CharBERT checkpoint (`check_converted`), instead of loading it as plain BERT with the
    character channel silently dropped. Installed once, by `import charbert`."""
    from transformers import PreTrainedModel

    current = PreTrainedModel.from_pretrained.__func__  # the classmethod's function
    if getattr(current, "_charbert_guard", False):
        return

    @functools.wraps(current)
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        name = pretrained_model_name_or_path
        local = isinstance(name, (str, os.PathLike)) and Path(name).is_dir()
        if local:
            check_converted(name)
        model = current(cls, pretrained_model_name_or_path, *args, **kwargs)
        if not local and isinstance(name, str):  # a hub name: its files are in the cache now
            loaded = model[0] if isinstance(model, tuple) else model
            if getattr(loaded.config, "model_type", None) != CharBertConfig.model_type:
                try:
                    folder = resolve_checkpoint(name, local_files_only=True, revision=kwargs.get("revision"),
                                                cache_dir=kwargs.get("cache_dir"))
                except FileNotFoundError:
                    folder = None
                if folder is not None:
                    check_converted(folder, loaded.config.model_type)
        return model

    from_pretrained._charbert_guard = True
    PreTrainedModel.from_pretrained = classmethod(from_pretrained)


# Weight files a checkpoint folder may hold (transformers' names).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def load_weights(model_cls, path: str | os.PathLike, **kwargs):
    """``model_cls.from_pretrained(path, **kwargs)`` with one-line errors naming the file: no
    weights in the folder, an unreadable (truncated, garbage) weights file, or a config.json
    whose sizes do not match the weights."""
    path = Path(path)
    check_converted(path)
    present = [name for name in WEIGHT_FILES if (path / name).is_file()]
    if not present:
        raise FileNotFoundError(f"{path} has no model weights (none of {', '.join(WEIGHT_FILES)})")
    try:
        return model_cls.from_pretrained(str(path), **kwargs)
    except Exception as err:  # noqa: BLE001 -- torch/safetensors errors name neither file nor cause
        text = " ".join(str(err).split())
        if "size mismatch" in text or "ignore_mismatched_sizes" in text or "mismatched" in text.lower():
            detail = next((part.strip() for part in str(err).splitlines() if "size mismatch" in part or "shape" in part), "")
            raise ValueError(f"{path / 'config.json'} does not match the weights in {path / present[0]}: the sizes differ"
                             + (f" ({' '.join(detail.split())[:200]})" if detail else "")) from None
        if type(err).__name__ == "SafetensorError" or isinstance(err, (OSError, EOFError, RuntimeError)) \
                or "pickle" in text.lower() or "header" in text.lower():
            raise ValueError(f"{path / present[0]} is not a readable weights file (truncated or corrupt?): "
                             f"{type(err).__name__}: {text[:200]}") from None
        raise


def check_vocab_fingerprints(config, char_vocab=None, word_vocab=None, allow_mismatch: bool = False,
                             where: str | os.PathLike = "the checkpoint", new_model: bool = False) -> None:
    """Compare the vocabularies' fingerprints with those saved in a CharBertConfig, then record
    theirs in it (so the model saved after the run names the vocabularies it was trained with).

    A different vocabulary is a ValueError, or with `allow_mismatch` (--allow_vocab_mismatch) a
    warning. A config saved before fingerprints existed (None) is not checked (a warning says so);
    `new_model` (CharBERT just built on a plain checkpoint): nothing to check, only recorded.
    """
    for field_name, vocab, what in (("char_vocab_hash", char_vocab, "character"), ("word_vocab_hash", word_vocab, "word")):
        if vocab is None or not hasattr(config, field_name):
            continue
        saved, given = getattr(config, field_name), vocab.fingerprint()
        if new_model:
            pass
        elif saved is None:
            logger.warning("%s has no %s; the %s vocabulary is not checked (saved before fingerprints existed)",
                        where, field_name, what)
        elif saved != given:
            message = (f"The {what} vocabulary is not the one {where} was trained with ({field_name} {given} != "
                       f"{saved})")
            if not allow_mismatch:
                raise ValueError(f"{message}: pass the model's own, or --allow_vocab_mismatch to use this one on purpose")
            logger.warning("%s; using it anyway (--allow_vocab_mismatch)", message)
        setattr(config, field_name, given)


def read_model_type(path: str | os.PathLike) -> str:
    """The folder's model_type ("" when its config names none)."""
    return read_config_dict(path).get("model_type") or ""


def max_sequence_length(config) -> int | None:
    """Longest token sequence the position embeddings of `config` allow (None when it has none)."""
    if isinstance(config, CharBertConfig):
        return config.max_sequence_length
    limit = getattr(config, "max_position_embeddings", None)
    if limit is None:
        return None
    if getattr(config, "model_type", None) in PADDING_OFFSET_MODEL_TYPES:
        return int(limit) - int(getattr(config, "pad_token_id", 1)) - 1
    return int(limit)


def read_checkpoint_tensors(path: str | os.PathLike, names: dict[str, str]) -> dict[str, torch.Tensor]:
    """Read the tensors `names` (checkpoint name -> our name) that a checkpoint folder holds, if any."""
    from safetensors import safe_open

    found: dict[str, torch.Tensor] = {}
    files = sorted(Path(path).glob("*.safetensors"))
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if key in names:
                    found[names[key]] = f.get_tensor(key)
    if not files:
        for file in sorted(Path(path).glob("pytorch_model*.bin")):
            state = torch.load(file, map_location="cpu", weights_only=True)
            found.update({names[k]: v for k, v in state.items() if k in names})
    return found


def build_on_backbone(model_cls, path: str | os.PathLike, **config_kwargs):
    """A new `model_cls` (a CharBERT class) whose backbone (embeddings, layers, pooler) is the plain
    checkpoint at `path` (any family in backbones.BACKBONES).

    Every backbone weight is copied (and a *ForMaskedLM head, when the checkpoint has one and the
    model has an MLM head); the character modules and the fusion are new. `model.loading_info`
    lists what was loaded and what was initialised. `config_kwargs` set CharBertConfig fields.
    """
    path = resolve_checkpoint(path, **hub_kwargs(config_kwargs, pop=True))
    model_type = read_model_type(path)
    check_converted(path, model_type)
    if model_type not in backbones.BACKBONES:
        raise ValueError(
            f"{path} holds a {model_type!r} model; CharBERT loads CharBERT checkpoints or plain "
            f"{backbones.supported()} checkpoints."
        )
    output_loading_info = config_kwargs.pop("output_loading_info", False)
    for loader_only in _LOADER_ONLY_KWARGS:
        config_kwargs.pop(loader_only, None)
    attn_implementation = config_kwargs.pop("attn_implementation", None)
    dtype = config_kwargs.pop("dtype", None) or config_kwargs.pop("torch_dtype", None)
    with quiet_transformers():  # we report what was loaded ourselves, below
        backbone, backbone_info = AutoModel.from_pretrained(str(path), output_loading_info=True)
    config = CharBertConfig.from_backbone_config(backbone.config, **config_kwargs)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    model = model_cls(config)
    loaded = _copy_backbone(model, model_cls.base_model_prefix, backbone, backbone_info, path)
    if config.new_module_init == "identity":  # needs the backbone's own layer norms, so only now
        model.base_model.init_identity_fusion()
    if hasattr(model, "mlm_head"):
        head_state = read_checkpoint_tensors(path, backbones.get_adapter(config.backbone_type).mlm_head_keys)
        if head_state:
            model.load_state_dict(head_state, strict=False)
            loaded += sorted(head_state)
    new = sorted(k for k in model.state_dict() if k not in set(loaded))
    model.loading_info = {"loaded_keys": loaded, "initialized_keys": new, "source": str(path)}
    logger.warning(
        "CharBERT built on the %s checkpoint %s: %d backbone tensors loaded; newly initialised: %s",
        config.backbone_type, path, len(loaded), ", ".join(sorted({k.rsplit(".", 1)[0] for k in new})),
    )
    if dtype is not None and dtype != "auto":
        model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    if output_loading_info:  # the transformers contract: (model, info) like any from_pretrained
        return model, {"missing_keys": new, "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    return model


def _copy_backbone(model, prefix: str, backbone, backbone_info: dict, path) -> list[str]:
    """Load the plain backbone's weights into the model's CharBertModel; returns the model's keys loaded."""
    base = model.base_model  # a head holds its CharBertModel under `prefix`
    own = base.state_dict()
    absent = set(backbone_info.get("missing_keys", ()))  # e.g. a pooler the checkpoint never had
    backbone_state = {k: v for k, v in backbone.state_dict().items() if k in own and k not in absent}
    missing = sorted(k for k in base.backbone_state_names() if k not in backbone_state and k not in absent)
    if missing:
        raise ValueError(f"{path} lacks backbone weights CharBERT needs: {missing[:5]}...")
    base.load_state_dict(backbone_state, strict=False)
    key_prefix = "" if base is model else prefix + "."
    return [key_prefix + k for k in sorted(backbone_state)]
