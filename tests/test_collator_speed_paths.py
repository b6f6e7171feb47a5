"""The fast paths the pretraining collator takes give what the plain routines give.

* `vocab.word_tables` (ASCII texts classified in numpy, a batch at once) == `split_words` on every text;
* `noise._SmallRangeDraws` replays `Generator.integers(lo, hi)` draw for draw, interleaved with numpy's
  own draws (permutation, random, choice, integers), and `sorted(Generator.choice(n, k, replace=False))`
  with its `sample`, rejected draws included;
* `noise.noise_edits` with the eligible indices given == `noise_words`; `eligible_indices` == `is_eligible`;
* `collator.edit_words` (cuts only around the edits) == `apply_word_edits`;
* the special-token mask and type ids `_encode_flat` builds from a tokenizer's single-text template == those
  the encodings carry, for BERT's, RoBERTa's and XLNet's templates and none; a template it cannot read
  is not used.
"""

from __future__ import annotations

import numpy as np
import pytest

from charbert.noise import (
    OPERATIONS,
    PRETRAIN_RULES,
    PRUTHI_RULES,
    NoiseRules,
    _SmallRangeDraws,
    eligible_indices,
    is_eligible,
    noise_edits,
    noise_words,
)
from charbert.pretraining.collator import _encode_flat, apply_word_edits, edit_words, single_text_template
from charbert.pretraining.vocab import split_words, word_table, word_tables
from charbert.tiny import train_tokenizer

TEXTS = [
    "", " ", "a", "ab", "Don't stop, C# rocks!", "  x_1 _ \x00\x1c\x1f ab\x0bcd\n", "\n\t", "a1b2 c3 __ 42",
    "The committee met on Tuesday, 14 March 2019.\nOfficials said the $2.5-billion plan would add 120 buses.",
    "caf\u00e9 na\u00efve \u043f\u0440\u0438\u0432\u0435\u0442 \u6771\u4eac\u90fd \U0001f600 e\u0301t\u00e9",  # non-ASCII: split_words
    "https://example.org/reports/2019/transport-budget-final.pdf",
]


def random_ascii(rng: np.random.Generator, n: int) -> str:
    """Any ASCII character, spaces and letters more often (runs of words and of separators)."""
    pool = [chr(c) for c in range(128)] + list(" " * 40) + list("abcdefghijklmnopqrstuvwxyzABC" * 3) + list("0123456789_" * 2)
    return "".join(pool[i] for i in rng.integers(0, len(pool), size=n))


def test_word_tables_split_as_split_words():
    rng = np.random.default_rng(0)
    texts = TEXTS + [random_ascii(rng, int(rng.integers(0, 200))) for _ in range(300)]
    for start in range(0, len(texts), 16):
        batch = texts[start: start + 16]
        for text, (words, starts, ends, letters_only), (no_words, *same) in zip(batch, word_tables(batch),
                                                                                  word_tables(batch, with_words=False)):
            spans = split_words(text)
            assert list(zip(starts.tolist(), ends.tolist())) == spans, repr(text)
            assert words == [text[s:e] for s, e in spans], repr(text)
            if text.isascii():
                assert letters_only.tolist() == [w.isalpha() for w in words], repr(text)
                assert no_words is None
            else:
                assert letters_only is None and no_words == words
            assert all(np.array_equal(a, b) for a, b in zip(same[:2], (starts, ends)))
        assert [w for w, *_ in word_tables(batch)] == [word_table(t)[0] for t in batch]


@pytest.mark.parametrize("seed", range(6))
def test_small_range_draws_replay_generator_integers(seed):
    ours, numpy_own = np.random.default_rng(seed), np.random.default_rng(seed)
    draws = _SmallRangeDraws(ours)
    pick = np.random.default_rng(100 + seed)  # what to draw next (its own stream)
    for step in range(4000):
        kind = int(pick.integers(0, 20))
        if kind < 16:  # ranges from empty-but-one to the full 32 bits, and a few 64-bit ones
            lo = int(pick.integers(-5, 5))
            width = [1, 2, 3, 5, 26, 27, 100, 2**31 + 7, 2**32 - 1, 2**32, 2**32 + 1, 2**40][kind % 12]
            assert draws.integers(lo, lo + width) == int(numpy_own.integers(lo, lo + width)), (step, lo, width)
        elif kind == 16:
            n = int(pick.integers(1, 12))
            assert np.array_equal(draws.permutation(n), numpy_own.permutation(n))
        else:  # numpy's own draws in between: close, draw, reopen
            draws.close()
            if kind == 17:
                assert ours.random() == numpy_own.random()
            elif kind == 18:
                assert np.array_equal(ours.choice(40, 6, replace=False), numpy_own.choice(40, 6, replace=False))
            else:
                assert np.array_equal(ours.integers(0, 9, size=5), numpy_own.integers(0, 9, size=5))
            draws = _SmallRangeDraws(ours)
    draws.close()
    assert ours.bit_generator.state == numpy_own.bit_generator.state


def test_sample_replays_choice_without_replacement():
    pick = np.random.default_rng(7)
    for trial in range(400):
        n = int(pick.choice([2, 3, 5, 17, 64, 200, 9_999, 10_000, 10_001, 30_000]))
        k = int(pick.integers(1, min(n, 400)))
        ours, numpy_own = np.random.default_rng(trial), np.random.default_rng(trial)
        if trial % 2:  # start with a kept 32-bit half in the generator's state
            assert ours.integers(0, 5) == numpy_own.integers(0, 5)
        draws = _SmallRangeDraws(ours)
        got = draws.sample(n, k)
        draws.close()
        assert got == sorted(numpy_own.choice(n, size=k, replace=False).tolist()), (n, k, trial)
        assert ours.bit_generator.state == numpy_own.bit_generator.state


def test_sample_redraws_as_integers_does():
    """A 32-bit draw of 0 is rejected for every range that does not divide 2**32: a stream that starts
    with zeros takes `sample`'s rejection branch, which must draw as `integers` does."""
    stream = [0, 0, 0] + np.random.default_rng(1).integers(0, 2**63, size=100).tolist()
    a, b = _SmallRangeDraws(np.random.default_rng(0)), _SmallRangeDraws(np.random.default_rng(0))
    for draws in (a, b):
        draws.has_half, draws.raw = 0, iter(stream).__next__
    n, k = 10, 4
    picked = set()
    for j in range(n - k, n):  # Floyd's steps, then the shuffle's draws
        value = b.integers(0, j + 1)
        picked.add(j if value in picked else value)
    for i in range(k - 1, 0, -1):
        b.integers(0, i + 1)
    assert a.sample(n, k) == sorted(picked)
    assert (a.has_half, a.half, a.raw()) == (b.has_half, b.half, b.raw())


def test_noise_edits_and_eligible_indices_match_noise_words():
    rules_list = [PRETRAIN_RULES, PRUTHI_RULES, NoiseRules(min_length=3, letters_only=False, stopwords={"the"})]
    for text in TEXTS[4:] * 3:
        words = [text[s:e] for s, e in split_words(text)] + ["", "x y", "ABCD", "h\u00e9llo"]
        for rules in rules_list:
            assert eligible_indices(words, rules) == [i for i, w in enumerate(words) if is_eligible(w, rules)]
            for seed in range(5):
                new, changed = noise_words(words, np.random.default_rng(seed), rules, 0.5, OPERATIONS)
                edits = noise_edits(words, eligible_indices(words, rules), np.random.default_rng(seed), rules, 0.5, OPERATIONS)
                assert list(edits) == changed and [edits.get(i, w) for i, w in enumerate(words)] == new
    # a generator other than PCG64 takes numpy's own draws: still the same edits
    words = "many words here to noise at once please".split()
    a = noise_words(words, np.random.Generator(np.random.MT19937(3)), PRETRAIN_RULES, 1.0)
    b = noise_edits(words, eligible_indices(words, PRETRAIN_RULES), np.random.Generator(np.random.MT19937(3)), PRETRAIN_RULES, 1.0)
    assert a[1] == list(b) and a[0] == [b.get(i, w) for i, w in enumerate(words)]


def test_edit_words_matches_apply_word_edits():
    rng = np.random.default_rng(1)
    for text in TEXTS + [random_ascii(rng, 120) for _ in range(50)]:
        spans = split_words(text)
        if not spans:
            assert edit_words(text, [], [], {}) == (text, [])
            continue
        changed = sorted(set(rng.integers(0, len(spans), size=3).tolist()))
        edits = {k: "x" * int(rng.integers(1, 6)) for k in changed}
        new_words = [edits.get(k, text[s:e]) for k, (s, e) in enumerate(spans)]
        expected_text, new_starts = apply_word_edits(text, spans, new_words)
        got_text, growth = edit_words(text, [s for s, _ in spans], [e for _, e in spans], edits)
        assert got_text == expected_text
        ends = np.array([e for _, e in spans])
        shift = np.zeros(len(spans), dtype=np.int64)
        shift[changed] = growth
        assert np.array_equal(ends + np.cumsum(shift), new_starts + np.array([len(w) for w in new_words]))


@pytest.mark.parametrize("template", ["bert", "roberta", "xlnet", "none", "pair-like"])
def test_template_columns_equal_the_encodings(template):
    from tokenizers import processors
    from transformers.tokenization_utils_base import TruncationStrategy
    from transformers.utils import PaddingStrategy

    texts = TEXTS + ["word " * 80, "a"]
    tok = train_tokenizer(TEXTS * 5, "bert", vocab_size=120)
    backend = tok.backend_tokenizer
    cls, sep = tok.cls_token_id, tok.sep_token_id
    if template == "roberta":
        backend.post_processor = processors.RobertaProcessing(("[SEP]", sep), ("[CLS]", cls))
    elif template == "xlnet":  # XLNet: the specials after the text, the last with type id 2
        backend.post_processor = processors.TemplateProcessing(
            single="$A:0 [SEP]:0 [CLS]:2", pair="$A:0 [SEP]:0 $B:1 [SEP]:1 [CLS]:2", special_tokens=[("[SEP]", sep), ("[CLS]", cls)])
    elif template == "none":
        backend.post_processor = None
    elif template == "pair-like":  # a special token inside the text's run: no template to read
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[SEP]", sep), ("[CLS]", cls)])
    for max_length in (6, 32, 512):
        tok.set_truncation_and_padding(PaddingStrategy.DO_NOT_PAD, TruncationStrategy.LONGEST_FIRST, max_length, 0, None, None)
        found = single_text_template(backend)
        assert (found is None) == (template == "pair-like")
        read = _encode_flat(tok, texts, max_length)
        built = _encode_flat(tok, texts, max_length, found)
        for name in ("ids", "offsets", "special", "outside", "type_ids"):
            assert np.array_equal(getattr(read, name), getattr(built, name)), (template, max_length, name)
        if template == "xlnet":
            assert found.suffix == (0, 2) and 2 in built.type_ids.tolist()
