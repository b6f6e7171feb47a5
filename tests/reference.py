"""The CharBERT authors' own code (../shared/reference/wtma_charbert), for parity tests and benchmarks.

Their code is read from the shared folder, never copied here: `authors_code()` puts their
`stubs/` and repository root on sys.path and imports their model modules (top-level packages
named `modeling` and `processors`; nothing of ours has those names, and a different package
already imported under them is refused). `authors_processors()` gives their feature builders. Tests call `authors_code_or_skip()`, which skips with
the reason when the folder is absent (a user's machine has none).

Then: `build_authors_model` makes one of their models at a tiny size with every weight drawn at
random (LayerNorms and biases too), `save_authors_checkpoint` writes it the way their
transformers 2.4 does (state dict with `torch.save`, their config's `to_json_file`, vocab files),
and `authors_inputs` builds a padded batch in their input format plus the same batch in ours.
"""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from charbert.convert import AUTHORS_CLASSES

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference" / "wtma_charbert"
CHAR_VOCAB = {"bert": REFERENCE_DIR / "data" / "dict" / "bert_char_vocab", "roberta": REFERENCE_DIR / "data" / "dict" / "roberta_char_vocab"}
TERM_VOCAB = REFERENCE_DIR / "data" / "dict" / "term_vocab"
# Special tokens in vocabulary order: BERT's [PAD]=0 .. [MASK]=4, RoBERTa's <s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4.
SPECIALS = {"bert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], "roberta": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]}
CLS_SEP_PAD = {"bert": (2, 3, 0), "roberta": (0, 2, 1)}
MASK_TOKEN_ID = 4
REFERENCE_CHARS_PER_TOKEN = 6  # their char rows are 6 x max_seq_length long


class AuthorsCodeMissing(RuntimeError):
    pass


def authors_code() -> SimpleNamespace:
    """Their modules: `bert` (modeling_charbert), `roberta` (modeling_roberta), `BertConfig`, `RobertaConfig`."""
    if not (REFERENCE_DIR / "modeling" / "modeling_charbert.py").is_file():
        raise AuthorsCodeMissing(f"{REFERENCE_DIR} not found: the authors' CharBERT code lives in ../shared/reference (absent here)")
    for path in (str(REFERENCE_DIR / "stubs"), str(REFERENCE_DIR)):
        if path not in sys.path:
            sys.path.insert(0, path)
    import modeling  # their package (a namespace package: no __init__.py)

    if not any(Path(p).resolve() == (REFERENCE_DIR / "modeling").resolve() for p in getattr(modeling, "__path__", [])):
        raise AuthorsCodeMissing(f"a different package named 'modeling' is already imported ({modeling!r}); cannot load the authors' code")
    from modeling import (
        configuration_bert,
        configuration_roberta,
        modeling_charbert,
        modeling_roberta,
    )

    return SimpleNamespace(
        bert=modeling_charbert, roberta=modeling_roberta,
        BertConfig=configuration_bert.BertConfig, RobertaConfig=configuration_roberta.RobertaConfig,
    )


class _Unclosable(io.BytesIO):
    def close(self):  # their glue.py rewraps sys.stdout.buffer at import; the dropped wrapper would close it
        pass


def authors_processors() -> SimpleNamespace:
    """Their feature builders: `glue`, `squad`, `utils_ner`, `utils` (InputExample) and their WordPiece `BertTokenizer`."""
    authors_code()  # puts their folders on sys.path, or raises AuthorsCodeMissing
    stdout = sys.stdout
    sys.stdout = io.TextIOWrapper(_Unclosable())
    try:
        from processors import glue, squad, tokenization_bert, utils, utils_ner
    finally:
        sys.stdout = stdout
    return SimpleNamespace(glue=glue, squad=squad, utils_ner=utils_ner, utils=utils,
                           BertTokenizer=tokenization_bert.BertTokenizer)


def authors_code_or_skip() -> SimpleNamespace:
    import pytest

    try:
        return authors_code()
    except AuthorsCodeMissing as err:
        pytest.skip(str(err))


def authors_config(backbone: str, vocab_size: int, hidden: int = 32, layers: int = 2, heads: int = 2, max_len: int = 64, num_labels: int = 3):
    """Their transformers-2.4 config of a tiny model."""
    code = authors_code()
    sizes = {
        "vocab_size": vocab_size, "hidden_size": hidden, "num_hidden_layers": layers,
        "num_attention_heads": heads, "intermediate_size": 2 * hidden,
    }
    if backbone == "roberta":  # roberta-base's conventions: positions start after padding_idx=1, one token type
        config = code.RobertaConfig(max_position_embeddings=max_len + 2, type_vocab_size=1, layer_norm_eps=1e-5, **sizes)
    else:
        config = code.BertConfig(max_position_embeddings=max_len, type_vocab_size=2, **sizes)
    config.num_labels = num_labels
    config.id2label = {i: f"TAG_{i}" for i in range(num_labels)}
    config.label2id = {v: k for k, v in config.id2label.items()}
    return config


def randomise_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Draw every parameter at random, LayerNorm weights and every bias included (shared ones once).

    Matrices get std 1/sqrt(fan_in) (embeddings 0.5), so activations stay O(1) and a wrong
    mapping anywhere moves the outputs by O(1), far above the 1e-5 tolerance.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():  # deduplicated: tied/aliased tensors drawn once
            noise = torch.randn(param.shape, generator=gen)
            if param.ndim == 1:
                is_norm_weight = name.endswith("weight")  # 1-D weights are LayerNorms'
                param.copy_(1.0 + 0.2 * noise if is_norm_weight else 0.2 * noise)
            elif "embeddings" in name:
                param.copy_(0.5 * noise)
            else:
                param.copy_(noise / math.sqrt(param[0].numel()))
    return model


def build_authors_model(backbone: str, head: str, vocab_size: int, seed: int = 0, **sizes):
    """One of their models (class from their key names, see convert.AUTHORS_CLASSES), random, eval mode."""
    code = authors_code()
    num_labels = 2 if head == "question_answering" else sizes.pop("num_labels", 3)
    config = authors_config(backbone, vocab_size, num_labels=num_labels, **sizes)
    if head == "sequence_classification":
        config.finetuning_task = "qnli"  # their run_glue.py names the task in the config
    cls = getattr(getattr(code, backbone), AUTHORS_CLASSES[backbone, head])
    torch.manual_seed(seed)
    model = cls(config)
    if head == "pretraining":  # their tie_weights: the MLM decoder IS the word embedding
        decoder = model.get_output_embeddings()
        assert decoder.weight is model.get_input_embeddings().weight
    return randomise_(model, seed).eval()


def vocab_tokens(backbone: str, size: int = 120) -> list[str]:
    """A subword vocabulary in id order: the specials, then word pieces (BERT) or byte-level symbols (RoBERTa)."""
    if backbone == "bert":
        letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
        pieces = letters + ["##" + c for c in letters] + list("0123456789.,;:!?'\"()-#") + ["the", "of", "and", "##ing", "##ed"]
    else:
        from tokenizers import pre_tokenizers

        pieces = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = SPECIALS[backbone] + pieces
    if len(tokens) < size:
        raise ValueError(f"vocab_tokens has {len(tokens)} tokens at most for {backbone}")
    return tokens[: max(size, len(SPECIALS[backbone]))]


def save_authors_checkpoint(model, out_dir: Path, backbone: str, tokens: list[str], tokenizer_config: dict | None = None) -> Path:
    """Write `model` as their code saves one: pytorch_model.bin (torch.save of the state dict, the
    aliased fusion entries included), config.json (their to_json_file) and the vocabulary files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # torch 1.2 (their requirement, and the released files) writes the legacy, non-zip format.
    torch.save(model.state_dict(), out / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    model.config.to_json_file(str(out / "config.json"))
    if backbone == "bert":
        (out / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    else:
        (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False), encoding="utf-8")
        (out / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    if tokenizer_config is not None:
        (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config), encoding="utf-8")
    return out


def authors_inputs(backbone: str, their_to_ours: np.ndarray, vocab_size: int, lengths: list[int], seq_len: int, seed: int = 0):
    """A padded batch in their input format (theirs) and the same batch in ours (ours).

    Built as their processors build features: every real token's characters then a 0, special
    and [MASK] tokens a single 0, rows padded with 0 to 6 x seq_len, padded tokens pointing at
    the last position. Characters are drawn among the ids a character can reach (their `<unk>`
    included); ours are the same ids remapped with `their_to_ours`, `char_attention_mask` 1 over
    the real characters. BERT rows are sentence pairs (token types 0 then 1).
    """
    rng = np.random.default_rng(seed)
    cls_id, sep_id, pad_id = CLS_SEP_PAD[backbone]
    reachable = np.flatnonzero(their_to_ours > 0)  # every id but 0 (space/pad) that a character reaches
    n_chars = REFERENCE_CHARS_PER_TOKEN * seq_len
    batch = len(lengths)
    input_ids = np.full((batch, seq_len), pad_id)
    token_types = np.zeros((batch, seq_len), dtype=np.int64)
    attention = np.zeros((batch, seq_len), dtype=np.int64)
    chars = np.zeros((batch, n_chars), dtype=np.int64)
    char_mask = np.zeros((batch, n_chars), dtype=np.int64)
    starts = np.full((batch, seq_len), n_chars - 1)
    ends = np.full((batch, seq_len), n_chars - 1)
    for b, n in enumerate(lengths):
        ids = rng.integers(len(SPECIALS[backbone]), vocab_size, size=n)
        ids[0], ids[-1] = cls_id, sep_id
        ids[rng.random(n) < 0.15] = MASK_TOKEN_ID
        ids[0], ids[-1] = cls_id, sep_id
        input_ids[b, :n], attention[b, :n] = ids, 1
        if backbone == "bert":
            token_types[b, n // 2 : n] = 1
        row: list[int] = []
        for t, token in enumerate(ids):
            single = token in (cls_id, sep_id, MASK_TOKEN_ID)
            word = [0] if single else list(rng.choice(reachable, size=int(rng.integers(1, 6))))
            starts[b, t], ends[b, t] = len(row), len(row) + len(word) - 1
            row += word + [0]
        assert len(row) <= n_chars
        chars[b, : len(row)], char_mask[b, : len(row)] = row, 1
    theirs = {
        "char_input_ids": chars, "start_ids": starts, "end_ids": ends,
        "input_ids": input_ids, "attention_mask": attention, "token_type_ids": token_types,
    }
    ours = {
        "input_ids": input_ids, "attention_mask": attention, "token_type_ids": token_types,
        "char_input_ids": their_to_ours[chars], "char_attention_mask": char_mask,
        "char_start_positions": starts, "char_end_positions": ends,
    }
    return _as_tensors(theirs), _as_tensors(ours)


def _as_tensors(arrays: dict) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.asarray(v), dtype=torch.long) for k, v in arrays.items()}


def authors_forward(model, backbone: str, inputs: dict) -> tuple[torch.Tensor, ...]:
    """Their model's outputs on their inputs: (word states, char states) of the base model, then the head's outputs."""
    base = getattr(model, backbone)
    args = (inputs["char_input_ids"], inputs["start_ids"], inputs["end_ids"], inputs["input_ids"])
    kwargs = {"attention_mask": inputs["attention_mask"], "token_type_ids": inputs["token_type_ids"]}
    with torch.no_grad():
        states = base(*args, **kwargs)
        head = model(*args, **kwargs)
    return (states[0], states[2]) + tuple(head)
