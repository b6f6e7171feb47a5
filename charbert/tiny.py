"""Tiny tokenizers and checkpoints built from local text: for tests, benchmarks and the default job.

Nothing here downloads. `stdlib_paragraphs()` reads English text that every Python install
has (the docstrings of the standard library, parsed with `ast`, never imported);
`train_tokenizer` trains the family's kind of tokenizer on it (WordPiece: BERT, ELECTRA; byte-level BPE:
RoBERTa, ModernBERT; SentencePiece unigram: XLM-RoBERTa, CamemBERT, DeBERTa-v2), with the family's special
tokens, and `make_tiny_checkpoint` saves a random plain checkpoint folder (a *ForMaskedLM, or an ELECTRA
discriminator).
"""

from __future__ import annotations

import ast
import os
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForMaskedLM,
    BertConfig,
    CamembertConfig,
    DebertaV2Config,
    ElectraConfig,
    ElectraForPreTraining,
    ModernBertConfig,
    PreTrainedTokenizerFast,
    RobertaConfig,
    XLMRobertaConfig,
)

from .backbones import BACKBONES, BYTE_LEVEL_BPE, SENTENCEPIECE, WORDPIECE
from .chars import CharVocab

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
# Families whose released tokenizers use BERT's special tokens whatever their kind (the others: RoBERTa's).
BERT_SPECIALS_FAMILIES = ("bert", "electra", "deberta-v2", "modernbert")


def stdlib_paragraphs(max_paragraphs: int | None = None, min_words: int = 4) -> Iterator[str]:
    """Paragraphs of English prose from the standard library's docstrings, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    count = 0
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if "test" in path.parts[-2:][0] or path.name.startswith("test"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            for para in doc.split("\n\n"):
                text = " ".join(para.split())
                if len(text.split()) >= min_words and not text.startswith(">>>"):
                    yield text
                    count += 1
                    if max_paragraphs is not None and count >= max_paragraphs:
                        return


def train_tokenizer(texts: Iterable[str], backbone: str = "bert", vocab_size: int = 1000, lowercase: bool = False):
    """A fast tokenizer trained on `texts` of the family's kind (`BackboneAdapter.tokenizer_kind`) and with its
    special tokens: WordPiece with BERT's pipeline, byte-level BPE as RoBERTa's (or ModernBERT's, with BERT's
    specials), or a SentencePiece unigram model ("▁" marks a word's first piece) as XLM-RoBERTa's or DeBERTa's."""
    texts = list(texts)
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}; got {backbone!r}.")
    kind = BACKBONES[backbone].tokenizer_kind
    bert_specials = backbone in BERT_SPECIALS_FAMILIES
    specials = BERT_SPECIALS if bert_specials else ROBERTA_SPECIALS
    if kind == WORDPIECE:
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
        steps = [normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()] if lowercase else [normalizers.NFC()]
        tok.normalizer = normalizers.Sequence([normalizers.BertNormalizer(clean_text=True, lowercase=False, strip_accents=False)] + steps)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
        tok.decoder = decoders.WordPiece()
    elif kind == BYTE_LEVEL_BPE:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.train_from_iterator(
            texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
        )
        tok.decoder = decoders.ByteLevel()
    elif kind == SENTENCEPIECE:
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tok.train_from_iterator(
            texts, trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token=specials[1 if bert_specials else 3]),
        )
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    else:  # pragma: no cover - every registered family has one of the kinds above
        raise ValueError(f"no tiny tokenizer for the kind {kind!r}")
    if bert_specials:
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
        )
        names = dict(unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    else:
        tok.post_processor = processors.RobertaProcessing(
            ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")), add_prefix_space=False, trim_offsets=True
        )
        names = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", sep_token="</s>", cls_token="<s>",
                     pad_token="<pad>", mask_token="<mask>")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, **names)
    if backbone in ("roberta", "xlm-roberta", "camembert", "modernbert"):  # no token types in these families
        tokenizer.model_input_names = ["input_ids", "attention_mask"]
    return tokenizer


def tiny_backbone_config(backbone: str, vocab_size: int, pad_token_id: int, hidden_size: int = 64, layers: int = 2, heads: int = 2,
                         max_len: int = 128, embedding_size: int | None = None):
    """A small random config of the family: ELECTRA's word embeddings are `embedding_size` wide (default
    hidden_size / 2, so the projection to hidden_size is exercised); DeBERTa-v2 is configured as v3 is
    (relative attention with position buckets, no absolute positions, no token types); ModernBERT
    alternates global and 8-token sliding-window attention (so padded test batches cross the window)."""
    common = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * hidden_size, pad_token_id=pad_token_id,
    )
    if backbone in ("roberta", "xlm-roberta", "camembert"):
        config_class = {"roberta": RobertaConfig, "xlm-roberta": XLMRobertaConfig, "camembert": CamembertConfig}[backbone]
        return config_class(max_position_embeddings=max_len + pad_token_id + 1, type_vocab_size=1, **common)
    if backbone == "electra":
        size = embedding_size if embedding_size is not None else hidden_size // 2
        return ElectraConfig(max_position_embeddings=max_len, embedding_size=size, **common)
    if backbone == "deberta-v2":
        return DebertaV2Config(max_position_embeddings=max_len, relative_attention=True, position_buckets=32,
                               max_relative_positions=-1, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm",
                               share_att_key=True, position_biased_input=False, type_vocab_size=0, **common)
    if backbone == "modernbert":
        return ModernBertConfig(max_position_embeddings=max_len, local_attention=8, global_attn_every_n_layers=2,
                                bos_token_id=None, eos_token_id=None, cls_token_id=None, sep_token_id=None, **common)
    return BertConfig(max_position_embeddings=max_len, **common)


def make_tiny_checkpoint(
    out_dir: str | os.PathLike,
    backbone: str = "bert",
    texts: Iterable[str] | None = None,
    vocab_size: int = 1000,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 2,
    max_len: int = 128,
    seed: int = 0,
    char_vocab: bool = False,
) -> Path:
    """Save a random plain checkpoint (config, safetensors weights, tokenizer) to `out_dir`: a *ForMaskedLM,
    or for ELECTRA a discriminator (ElectraForPreTraining, as ELECTRA checkpoints are released).

    With `char_vocab=True` a character vocabulary built from the same text is saved beside it.
    """
    import torch

    texts = list(texts) if texts is not None else list(stdlib_paragraphs(3000))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(texts, backbone, vocab_size)
    config = tiny_backbone_config(backbone, len(tokenizer), tokenizer.pad_token_id, hidden_size, layers, heads, max_len)
    torch.manual_seed(seed)
    model = ElectraForPreTraining(config) if backbone == "electra" else AutoModelForMaskedLM.from_config(config)
    model.save_pretrained(out)
    tokenizer.model_max_length = max_len
    tokenizer.save_pretrained(out)
    if char_vocab:
        CharVocab.build(texts, max_size=256).save(out)
    return out
