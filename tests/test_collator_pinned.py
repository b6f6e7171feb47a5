"""The pretraining collator's output, pinned: the same seed gives the same batch, field by field.

Two guards, so that any speed work on the collator (and on the noise, word splitting, alignment and
padding it calls) is proven output-identical:

* hashes of whole batches (every field's dtype, shape and values) on fixed text with tokenizers trained
  on that text, recorded from the collator before its speed work (`PINNED`);
* the collator against `tests/collator_reference.py`, a frozen copy of that collator, on many seeds,
  both backbones' tokenizers, both character layouts and the three objectives.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
import torch
from collator_reference import ReferencePretrainingCollator
from transformers import PreTrainedTokenizerFast

from charbert import CharBertTokenizer
from charbert.pretraining.collator import PretrainingCollator
from charbert.pretraining.vocab import WordVocab
from charbert.tiny import BERT_SPECIALS, train_tokenizer

# Real-looking text: prose, numbers, hyphens and apostrophes, quotes and dashes, accented and
# non-Latin words, a CJK run, an emoji, a long URL (longer than the per-token character cap),
# repeated spaces and a line break inside a block.
SENTENCES = [
    "The committee met on Tuesday, 14 March 2019, to discuss the city's new transport budget.",
    "Officials said the $2.5-billion plan would add 120 buses and extend the night service.",
    "\u201cWe can't keep waiting,\u201d said Maria L\u00f3pez, who chairs the residents' association.",
    "Critics argue the scheme favours suburbs \u2014 not the inner-city neighbourhoods that need it most.",
    "A spokesperson for the mayor declined to comment beyond a short written statement.",
    "Meanwhile, the caf\u00e9 on Rue de la Paix reopened after three months of renovation work.",
    "Researchers at the university published their findings in Nature last week.",
    "The model was trained for 320,000 steps on two GPUs; results improved steadily.",
    "See https://example.org/reports/2019/transport-budget-final-version-with-appendices.pdf for details.",
    "In Moscow the word \u043f\u0440\u0438\u0432\u0435\u0442 greets friends, and in Tokyo \u6771\u4eac\u90fd\u5e81 is the city hall.",
    "Fans cheered \U0001f600 as the home team scored twice in the final   ten minutes.",
    "Dr. Smith's lab (room 4B) measured a 3.7% rise in yields - well above forecasts.",
    "Her grandmother's recipe calls for flour, butter, sugar and a pinch of salt.",
    "Storms knocked out power to 40,000 homes across the northern counties overnight.",
    "The e-mail, sent at 09:45, asked staff to work from home until further notice.",
    "Shares of the company fell 12 per cent after it cut its full-year profit forecast.",
]


def make_blocks(n_blocks: int, seed: int = 0) -> list[str]:
    """Blocks of 4-9 sentences in a fixed pseudo-random order, some with a line break inside."""
    rng = np.random.default_rng(seed)
    blocks = []
    for _ in range(n_blocks):
        picked = [SENTENCES[int(i)] for i in rng.integers(0, len(SENTENCES), size=int(rng.integers(4, 10)))]
        cut = int(rng.integers(1, len(picked)))
        blocks.append(" ".join(picked[:cut]) + "\n" + " ".join(picked[cut:]))
    return blocks


def batch_digest(batch: dict[str, torch.Tensor]) -> str:
    """16 hex digits of the SHA-256 over every field: its name, dtype, shape and values."""
    digest = hashlib.sha256()
    for key in sorted(batch):
        value = batch[key].contiguous()
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()[:16]


def wordpiece_on(texts: list[str], n_words: int = 400):
    """A BERT WordPiece tokenizer with a vocabulary fixed by the text: the specials, every character (alone
    and as a continuation), the most frequent words (ties by spelling). WordPiece *training* is not
    deterministic across processes, so the pinned batches do not use it."""
    from collections import Counter

    from tokenizers import models

    base = train_tokenizer(texts, "bert", vocab_size=200)  # BERT's normaliser, pre-tokeniser and template
    counts = Counter(w for t in texts for w in re.findall(r"\w+|[^\w\s]", t))
    chars = sorted({ch for t in texts for ch in t if not ch.isspace()})
    entries = list(BERT_SPECIALS) + chars + [f"##{ch}" for ch in chars]
    entries += [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if w not in entries][:n_words]
    backend = base.backend_tokenizer
    backend.model = models.WordPiece({w: i for i, w in enumerate(entries)}, unk_token="[UNK]", max_input_chars_per_word=100)
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


@pytest.fixture(scope="module")
def pinned_tokenizers() -> dict[str, CharBertTokenizer]:
    texts = make_blocks(200, seed=1) + SENTENCES
    bert = wordpiece_on(texts)
    return {
        "bert": CharBertTokenizer(bert),
        "roberta": CharBertTokenizer(train_tokenizer(texts, "roberta", vocab_size=600)),  # BPE training is deterministic
        "bert-reference": CharBertTokenizer(bert, char_layout="reference"),
    }


@pytest.fixture(scope="module")
def pinned_vocab() -> WordVocab:
    return WordVocab.build(SENTENCES, max_size=120)


# (tokenizer, objective, max_seq_length) -> digest of the batches of seeds 0, 1, 2 (16 blocks each),
# recorded from the collator before its speed work.
PINNED = {
    ("bert", "charbert", 128): "a921ca49c1855fa5",
    ("bert", "charbert", 48): "1190213ccfcba0e3",
    ("roberta", "charbert", 128): "33eadfa012384da0",
    ("bert-reference", "charbert", 128): "859ed7887f89272f",
    ("bert", "advbert", 128): "f7c46bbf7150ae5c",
    ("bert", "mlm", 128): "ce2912d0307df995",
}


def seeds_digest(collator, blocks: list[str]) -> str:
    return batch_digest({f"{seed}/{k}": v for seed in range(3)
                         for k, v in collator(blocks[16 * seed: 16 * seed + 16], rng=np.random.default_rng(seed)).items()})


@pytest.mark.parametrize("case", sorted(PINNED, key=str))
def test_batches_match_the_pinned_digests(case, pinned_tokenizers, pinned_vocab):
    tokenizer, objective, length = case
    vocab = pinned_vocab if objective == "charbert" else None
    collator = PretrainingCollator(pinned_tokenizers[tokenizer], vocab, max_seq_length=length, objective=objective)
    assert seeds_digest(collator, make_blocks(48)) == PINNED[case], (
        f"{case}: the collator's batches changed; compare with tests/collator_reference.py to find the field")


@pytest.mark.parametrize("tokenizer", ["bert", "roberta", "bert-reference"])
@pytest.mark.parametrize("objective", ["charbert", "advbert", "mlm"])
def test_batches_equal_the_reference_collator(tokenizer, objective, pinned_tokenizers, pinned_vocab):
    vocab = pinned_vocab if objective == "charbert" else None
    tok = pinned_tokenizers[tokenizer]
    blocks = make_blocks(120, seed=5)
    for length, seeds in ((128, range(12)), (40, range(12, 18))):
        fast = PretrainingCollator(tok, vocab, max_seq_length=length, objective=objective)
        frozen = ReferencePretrainingCollator(tok, vocab, max_seq_length=length, objective=objective)
        for seed in seeds:
            rows = blocks[(seed * 7) % 100: (seed * 7) % 100 + 4 + seed % 13]
            a = fast(rows, rng=np.random.default_rng(seed))
            b = frozen(rows, rng=np.random.default_rng(seed))
            assert sorted(a) == sorted(b), (seed, sorted(a), sorted(b))
            for key in b:
                assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), (tokenizer, objective, length, seed, key)


def test_rates_the_pinned_text_exercises(pinned_tokenizers, pinned_vocab):
    """The pinned text does exercise what it must: noise, MLM (masked, random, kept), hidden characters."""
    tok = pinned_tokenizers["bert"]
    batch = PretrainingCollator(tok, pinned_vocab, max_seq_length=128)(make_blocks(16), rng=np.random.default_rng(0))
    chosen = batch["labels"] != -100
    assert int(chosen.sum()) > 50 and int((batch["nlm_labels"] != -100).sum()) > 50
    assert int((batch["input_ids"][chosen] == tok.mask_token_id).sum()) > 0
    assert int((batch["input_ids"][chosen] != batch["labels"][chosen]).sum()) > int((batch["input_ids"][chosen] == tok.mask_token_id).sum())


@pytest.mark.parametrize("tokenizer", ["bert", "roberta"])
def test_rows_with_tokens_past_the_last_word_equal_the_reference(tokenizer, pinned_tokenizers, pinned_vocab, monkeypatch):
    """Trailing whitespace gives byte-level BPE a real token after the last word: the collator then takes
    its per-row rule (the reference's set difference, -1 and all), and the batches still agree."""
    from charbert.pretraining import collator as collator_module

    per_row_rule = []
    original = collator_module.choose_whole_words
    monkeypatch.setattr(collator_module, "choose_whole_words", lambda *a: per_row_rule.append(1) or original(*a))
    tok = pinned_tokenizers[tokenizer]
    blocks = [b + ["  ", "\n", " \n ", "\t", ""][k % 5] for k, b in enumerate(make_blocks(40, seed=9))]
    fast = PretrainingCollator(tok, pinned_vocab, max_seq_length=512)
    frozen = ReferencePretrainingCollator(tok, pinned_vocab, max_seq_length=512)
    for seed in range(8):
        rows = blocks[seed * 5: seed * 5 + 5]
        a, b = fast(rows, rng=np.random.default_rng(seed)), frozen(rows, rng=np.random.default_rng(seed))
        assert all(torch.equal(a[k], b[k]) for k in b), (tokenizer, seed)
    assert bool(per_row_rule) == (tokenizer == "roberta")
