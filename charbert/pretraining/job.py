"""Pretraining pieces the `pretrain` program assembles: model + vocabularies, evaluation metrics,
and the built-in default job's data and tiny model.

Objectives (`--objective`):
  charbert  CharBertForPreTraining, MLM (10%) on the subword channel + NLM (15% noised words)
  advbert   a plain *ForMaskedLM trained with MLM on the *same noised text* (the paper's AdvBERT)
  mlm       a plain *ForMaskedLM with ordinary MLM (no noise)
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from ..backbones import BACKBONES
from ..chars import CHAR_VOCAB_FILE, CharVocab
from ..checkpoint import (
    check_tokenizer_files,
    check_vocab_fingerprints,
    load_weights,
    max_sequence_length,
    read_model_type,
    resolve_checkpoint,
)
from ..modeling import CharBertForPreTraining
from ..tokenization import CharBertTokenizer
from .vocab import WORD_VOCAB_FILE, WordVocab

logger = logging.getLogger(__name__)

# The plain models --objective advbert/mlm trains (the backbones CharBERT is built on, whose masked-LM
# collator and whole-word rules this package knows; an ELECTRA discriminator is no masked LM).
MLM_MODEL_TYPES = tuple(name for name, adapter in BACKBONES.items() if adapter.plain_masked_lm)


def resolve_vocabularies(model_path, word_vocab_path=None, char_vocab_path=None) -> tuple[WordVocab | None, CharVocab]:
    """The word vocabulary (NLM) and the character vocabulary, looked up in this order:
    the given paths, the word-vocabulary folder, the checkpoint folder; the default character
    set last. A CharBERT checkpoint carries both (save_pretrained writes them)."""
    if model_path is not None:  # a folder, or a hub name's snapshot (its word_vocab.txt and char_vocab.json)
        model_path = resolve_checkpoint(model_path)
    word_vocab = None
    for candidate in (word_vocab_path, model_path):
        if candidate is None:
            continue
        path = Path(candidate)
        file = path / WORD_VOCAB_FILE if path.is_dir() else path
        if file.is_file() or candidate == word_vocab_path:
            word_vocab = WordVocab.load(file)
            break
    char_vocab = None
    for candidate in (char_vocab_path, word_vocab_path, model_path):
        if candidate is None:
            continue
        path = Path(candidate)
        file = path / CHAR_VOCAB_FILE if path.is_dir() else path
        if file.is_file() and file.suffix == ".json":
            char_vocab = CharVocab.load(file)
            break
        if candidate == char_vocab_path:
            raise FileNotFoundError(f"No character vocabulary at {char_vocab_path}.")
    return word_vocab, char_vocab if char_vocab is not None else CharVocab.default()


def load_pretraining_model(model_path, objective: str, word_vocab: WordVocab | None, char_vocab: CharVocab, max_seq_length: int,
                           tokenizer_name: str | None = None, allow_vocab_mismatch: bool = False,
                           new_model: dict | None = None):
    """(model, tokenizer) for the objective, with every size and vocabulary fingerprint checked.

    The subword tokenizer comes from `tokenizer_name` when given, else from the checkpoint folder
    (one without tokenizer files is an error). `new_model`: CharBertConfig fields for a CharBERT built
    on a plain checkpoint (new_module_init, share_fusion); a CharBERT checkpoint keeps its own."""
    model_path = resolve_checkpoint(model_path)
    model_type = read_model_type(model_path)
    tokenizer_path = check_tokenizer_files(tokenizer_name or model_path)
    if objective == "charbert":
        if word_vocab is None:
            raise ValueError("The charbert objective needs a word vocabulary: pass --word_vocab (build it with python -m pretrain.vocab).")
        # Sizes are chosen only when building on a plain checkpoint; a CharBERT checkpoint keeps its own.
        if model_type == "charbert" and new_model:
            raise ValueError(f"{' / '.join('--' + k for k in new_model)} shape(s) a CharBERT built on a plain checkpoint; "
                             f"{model_path} is a CharBERT checkpoint and keeps its own.")
        sizes = {} if model_type == "charbert" else {"char_vocab_size": len(char_vocab), "word_vocab_size": len(word_vocab),
                                                      **(new_model or {})}
        model = load_weights(CharBertForPreTraining, model_path, **sizes)
        config = model.config
        if config.word_vocab_size != len(word_vocab):
            raise ValueError(
                f"The word vocabulary has {len(word_vocab)} entries but the model at {model_path} was built for "
                f"word_vocab_size={config.word_vocab_size}: pass the word vocabulary it was trained with."
            )
        if len(char_vocab) > config.char_vocab_size:
            raise ValueError(
                f"The character vocabulary has {len(char_vocab)} entries but the model at {model_path} embeds only "
                f"{config.char_vocab_size}: pass the char_vocab.json it was trained with."
            )
        check_vocab_fingerprints(config, char_vocab, word_vocab, allow_vocab_mismatch, where=model_path,
                                 new_model=model_type != "charbert")
        # The character layout and limits are the model's (a converted checkpoint keeps the authors' layout).
        tokenizer = CharBertTokenizer.from_pretrained(tokenizer_path, char_vocab=char_vocab, char_layout=config.char_layout,
                                      max_chars_per_token=config.max_chars_per_token,
                                      max_chars_per_sequence=config.max_chars_per_sequence)
    else:
        if model_type == "charbert":
            raise ValueError(f"--objective {objective} trains a plain {' / '.join(MLM_MODEL_TYPES)} masked LM; "
                             f"{model_path} is a CharBERT checkpoint.")
        if model_type not in MLM_MODEL_TYPES:
            raise ValueError(f"--objective {objective} trains a plain {' / '.join(MLM_MODEL_TYPES)} masked LM; {model_path} "
                             f"holds a {model_type!r} model.")
        model = load_weights(AutoModelForMaskedLM, model_path)
        tokenizer = CharBertTokenizer(AutoTokenizer.from_pretrained(tokenizer_path), char_vocab)
    limit = max_sequence_length(model.config)
    if limit is not None and max_seq_length > limit:
        raise ValueError(f"--max_seq_length {max_seq_length} is above what {model_path} allows ({limit}).")
    return model, tokenizer


def _per_example_sums(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Sum per-position values into their examples: values (N,), rows (N,) -> (B,)."""
    return torch.zeros(n_rows, dtype=torch.float64, device=values.device).index_add_(0, rows, values.double())


def pretraining_metrics(model, accelerator, dataloader) -> dict[str, float]:
    """MLM loss/perplexity over masked tokens; NLM loss and accuracy@1/@5 over noised words.

    A noised word counts once for accuracy, at its first subword (where a run of equal NLM
    labels starts). Statistics are per example and gathered with `gather_for_metrics`, so the
    samples accelerate repeats to even out the last batch are not counted twice.
    """
    columns = ("mlm_loss_sum", "mlm_tokens", "nlm_loss_sum", "nlm_tokens", "nlm_top1", "nlm_top5", "nlm_words")
    totals = torch.zeros(len(columns), dtype=torch.float64)
    for batch in dataloader:
        outputs = model(**batch)
        labels = batch["labels"]
        n_rows = labels.size(0)
        selected = labels != -100
        rows = selected.nonzero()[:, 0]
        logits = outputs.mlm_logits if hasattr(outputs, "mlm_logits") else outputs.logits
        if logits.dim() == 3:  # a plain *ForMaskedLM scores every position
            logits = logits[selected]
        losses = torch.nn.functional.cross_entropy(logits.float(), labels[selected], reduction="none")
        stats = [_per_example_sums(losses, rows, n_rows), _per_example_sums(torch.ones_like(losses), rows, n_rows)]
        nlm_labels = batch.get("nlm_labels")
        if nlm_labels is not None and getattr(outputs, "nlm_logits", None) is not None:
            chosen = nlm_labels != -100
            nlm_rows = chosen.nonzero()[:, 0]
            gold = nlm_labels[chosen]
            previous = torch.nn.functional.pad(nlm_labels, (1, 0), value=-100)[:, :-1]
            word_start = (previous != nlm_labels)[chosen]  # (N,) first subword of each noised word
            nlm_losses = torch.nn.functional.cross_entropy(outputs.nlm_logits.float(), gold, reduction="none")
            top5 = outputs.nlm_logits.topk(min(5, outputs.nlm_logits.size(-1)), dim=-1).indices
            hit1 = (top5[:, 0] == gold) & word_start
            hit5 = (top5 == gold[:, None]).any(-1) & word_start
            for values in (nlm_losses, torch.ones_like(nlm_losses), hit1, hit5, word_start):
                stats.append(_per_example_sums(values.double(), nlm_rows, n_rows))
        else:
            stats += [torch.zeros(n_rows, dtype=torch.float64, device=labels.device)] * 5
        per_example = torch.stack(stats, dim=1)  # (B, 7)
        totals += accelerator.gather_for_metrics(per_example).sum(0).cpu()
    sums = dict(zip(columns, totals.tolist()))
    mlm_loss = sums["mlm_loss_sum"] / max(sums["mlm_tokens"], 1.0)
    metrics = {"mlm_loss": mlm_loss, "mlm_perplexity": math.exp(min(mlm_loss, 50.0)), "mlm_tokens": sums["mlm_tokens"]}
    if sums["nlm_words"] > 0:
        metrics.update(
            nlm_loss=sums["nlm_loss_sum"] / sums["nlm_tokens"],
            nlm_accuracy=sums["nlm_top1"] / sums["nlm_words"],
            nlm_accuracy_top5=sums["nlm_top5"] / sums["nlm_words"],
            nlm_words=sums["nlm_words"],
        )
    return metrics


# ---- the built-in default job ----------------------------------------------------------

DEFAULT_JOB_SIZES = dict(vocab_size=2000, hidden_size=128, layers=2, heads=2, max_len=128, word_vocab_size=5000)


def prepare_default_job(directory: str | os.PathLike, seed: int = 42) -> dict[str, str]:
    """English text that every Python install has (the standard library's docstrings), split
    into train/validation files, a tiny random BERT with a WordPiece tokenizer trained on it,
    and the word and character vocabularies. Built once; reused when present."""
    from ..tiny import make_tiny_checkpoint, stdlib_paragraphs

    directory = Path(directory)
    paths = {
        "train_file": directory / "data" / "train.txt",
        "validation_file": directory / "data" / "validation.txt",
        "model": directory / "init",
        "vocab": directory / "vocab",
    }
    if not (paths["vocab"] / WORD_VOCAB_FILE).is_file():
        texts = list(stdlib_paragraphs())
        n_valid = max(len(texts) // 20, 1)
        paths["train_file"].parent.mkdir(parents=True, exist_ok=True)
        paths["train_file"].write_text("\n".join(texts[n_valid:]) + "\n", encoding="utf-8")
        paths["validation_file"].write_text("\n".join(texts[:n_valid]) + "\n", encoding="utf-8")
        sizes = DEFAULT_JOB_SIZES
        make_tiny_checkpoint(
            paths["model"], "bert", texts[n_valid:], vocab_size=sizes["vocab_size"], hidden_size=sizes["hidden_size"],
            layers=sizes["layers"], heads=sizes["heads"], max_len=sizes["max_len"], seed=seed,
        )
        paths["vocab"].mkdir(parents=True, exist_ok=True)
        CharVocab.build(texts[n_valid:], max_size=512).save(paths["vocab"])
        WordVocab.build(texts[n_valid:], max_size=sizes["word_vocab_size"]).save(paths["vocab"])  # written last
    return {k: str(v) for k, v in paths.items()}
