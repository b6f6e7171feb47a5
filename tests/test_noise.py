"""Tests for charbert.noise (character-level word noise)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from charbert.noise import (
    ATTACK_TYPES,
    ENGLISH_STOPWORDS,
    OPERATIONS,
    PRETRAIN_RULES,
    PRUTHI_RULES,
    QWERTY_NEIGHBOURS,
    NoiseRules,
    apply_operation,
    is_eligible,
    noise_word,
    noise_words,
    parse_attack_type,
    single_edits,
)

PARAGRAPH = (
    "Character aware language models read words as sequences of letters so that "
    "misspelled tokens such as those produced by hurried typing still carry useful "
    "information about their meaning. Robustness evaluation perturbs sentences with "
    "dropped, inserted, swapped and keyboard substituted characters before asking a "
    "classifier to recover the original label of every example in the benchmark."
).split()

WORDS = ["wonderful", "keyboard", "Python", "HELLO", "banana", "abcd", "mississippi",
         "Strength", "quick", "zebra", "aabb", "noise", "ab", "xyz", "supercalifragilistic"]

SEEDS = range(200)

# Hand-written neighbour table for a few keys of a physical QWERTY keyboard.
KNOWN_NEIGHBOURS = {
    "g": set("fhtyvb"),
    "a": set("qwsz"),
    "p": set("ol"),
    "m": set("njk"),
    "e": set("wrsd"),
}


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def hamming_positions(a: str, b: str) -> list[int]:
    assert len(a) == len(b)
    return [i for i, (x, y) in enumerate(zip(a, b)) if x != y]


# --------------------------------------------------------------------------- constants


def test_constants():
    assert OPERATIONS == ("drop", "add", "swap", "keyboard", "replace")
    assert ATTACK_TYPES == ("drop", "add", "swap", "keyboard")
    assert {"the", "a", "of", "and", "is", "to", "in", "it", "with", "from"} <= ENGLISH_STOPWORDS
    assert 120 <= len(ENGLISH_STOPWORDS) <= 200
    assert all(w == w.lower() and w.isalpha() for w in ENGLISH_STOPWORDS)
    assert PRUTHI_RULES.min_length == 4 and PRUTHI_RULES.keep_first_last
    assert PRUTHI_RULES.stopwords == ENGLISH_STOPWORDS
    assert PRETRAIN_RULES.min_length == 2 and not PRETRAIN_RULES.keep_first_last
    assert PRETRAIN_RULES.stopwords == frozenset()


def test_qwerty_table():
    assert set(QWERTY_NEIGHBOURS) == set("abcdefghijklmnopqrstuvwxyz")
    for key, near in KNOWN_NEIGHBOURS.items():
        assert set(QWERTY_NEIGHBOURS[key]) == near, key
    assert "p" not in QWERTY_NEIGHBOURS["g"]
    for key, near in QWERTY_NEIGHBOURS.items():
        assert near and near.isalpha() and near.islower() and key not in near
        assert len(set(near)) == len(near)
        # adjacency is symmetric
        for other in near:
            assert key in QWERTY_NEIGHBOURS[other], (key, other)


def test_rules_validation_and_normalisation():
    rules = NoiseRules(stopwords=["The", "AND"])
    assert rules.stopwords == frozenset({"the", "and"})
    assert not is_eligible("tHe", NoiseRules(min_length=1, stopwords=["The"]))
    with pytest.raises(ValueError):
        NoiseRules(alphabet="")
    with pytest.raises(ValueError):
        NoiseRules(alphabet="ab c")
    with pytest.raises(ValueError):
        NoiseRules(min_length=-1)
    with pytest.raises(TypeError):
        NoiseRules(stopwords="the")


# --------------------------------------------------------------------------- eligibility


@pytest.mark.parametrize(
    "word, expected",
    [
        ("wonderful", True),
        ("Wonderful", True),
        ("cat", False),  # shorter than 4
        ("the", False),
        ("with", False),  # stop-word of length 4
        ("With", False),  # stop-words compared lower-cased
        ("", False),
        ("abc1", False),  # letters_only
        ("don't", False),
        ("😀😀😀😀", False),
        ("two words", False),
        ("漢字漢字", True),  # CJK isalpha
    ],
)
def test_is_eligible_pruthi(word, expected):
    assert is_eligible(word, PRUTHI_RULES) is expected


def test_is_eligible_non_letters_allowed():
    rules = NoiseRules(letters_only=False)
    assert is_eligible("abc1", rules)
    assert not is_eligible("ab c1", rules)  # whitespace never eligible
    assert not is_eligible("", NoiseRules(min_length=0))
    assert not is_eligible(None, rules)  # type: ignore[arg-type]


def test_ineligible_words_untouched():
    for seed in range(50):
        for word in ["cat", "dog", "ab", "the", "THROUGH", "which", "1234", "😀😀😀😀😀"]:
            assert noise_word(word, rng(seed), PRUTHI_RULES) == word
            assert noise_word(word, rng(seed), PRUTHI_RULES, "all") == word
            for op in OPERATIONS:
                assert apply_operation(word, op, rng(seed), PRUTHI_RULES) is None
    # "ab" with min_length 4 is untouched whatever the ops
    assert noise_word("ab", rng(0), NoiseRules(min_length=4, keep_first_last=False)) == "ab"


# --------------------------------------------------------------------------- each operation


@pytest.mark.parametrize("op", OPERATIONS)
def test_keep_first_last(op):
    for seed in SEEDS:
        for word in WORDS:
            out = apply_operation(word, op, rng(seed), PRUTHI_RULES)
            if out is None:
                continue
            assert out != word
            assert out[0] == word[0] and out[-1] == word[-1], (op, word, out)


def test_drop():
    for seed in SEEDS:
        word = "wonderful"
        out = apply_operation(word, "drop", rng(seed), PRUTHI_RULES)
        assert len(out) == len(word) - 1
        assert out in {word[:i] + word[i + 1:] for i in range(1, len(word) - 1)}
    # keep_first_last: a drop must leave at least one internal character
    assert apply_operation("abc", "drop", rng(0), NoiseRules(min_length=1)) is None
    assert apply_operation("abcd", "drop", rng(0), NoiseRules(min_length=1)) in {"acd", "abd"}
    # without keep_first_last: never empty
    assert apply_operation("a", "drop", rng(0), NoiseRules(min_length=1, keep_first_last=False)) is None
    assert apply_operation("ab", "drop", rng(0), PRETRAIN_RULES) in {"a", "b"}


def test_drop_covers_all_internal_positions():
    outs = {apply_operation("abcdef", "drop", rng(s), PRUTHI_RULES) for s in SEEDS}
    assert outs == {"acdef", "abdef", "abcef", "abcdf"}
    outs = {apply_operation("abcdef", "drop", rng(s), PRETRAIN_RULES) for s in SEEDS}
    assert outs == {"bcdef", "acdef", "abdef", "abcef", "abcdf", "abcde"}


def test_add():
    alphabet = set(PRUTHI_RULES.alphabet)
    positions = set()
    for seed in SEEDS:
        word = "wonderful"
        out = apply_operation(word, "add", rng(seed), PRUTHI_RULES)
        assert len(out) == len(word) + 1
        # find an insertion index k with out == word[:k] + c + word[k:]
        ks = [k for k in range(1, len(word)) if out[:k] + out[k + 1:] == word and out[k] in alphabet]
        assert ks, out
        positions.update(ks)
    assert positions == set(range(1, len("wonderful")))  # never before first / after last
    # two-letter word: insertion strictly between the letters
    for seed in range(30):
        out = apply_operation("ab", "add", rng(seed), NoiseRules(min_length=2))
        assert len(out) == 3 and out[0] == "a" and out[2] == "b" and out[1] in alphabet


def test_add_custom_alphabet():
    rules = NoiseRules(min_length=1, alphabet="xy")
    outs = {apply_operation("abcd", "add", rng(s), rules) for s in range(100)}
    assert outs == {"axbcd", "aybcd", "abxcd", "abycd", "abcxd", "abcyd"}


def test_swap():
    for seed in SEEDS:
        for word in ["wonderful", "keyboard", "abcdef", "Strength"]:
            out = apply_operation(word, "swap", rng(seed), PRUTHI_RULES)
            assert sorted(out) == sorted(word)
            diff = hamming_positions(word, out)
            assert len(diff) == 2 and diff[1] == diff[0] + 1
            i = diff[0]
            assert out[i] == word[i + 1] and out[i + 1] == word[i]
            assert 1 <= i and i + 1 <= len(word) - 2


def test_swap_impossible():
    assert apply_operation("aaaa", "swap", rng(0), NoiseRules(min_length=1)) is None
    assert apply_operation("abbc", "swap", rng(0), NoiseRules(min_length=1)) is None  # internal "bb"
    assert apply_operation("abc", "swap", rng(0), NoiseRules(min_length=1)) is None  # one internal char
    # without keep_first_last the outer letters may move
    assert apply_operation("abbc", "swap", rng(0), PRETRAIN_RULES) in {"babc", "abcb"}
    # only the one differing adjacent internal pair can be swapped
    for seed in range(30):
        assert apply_operation("xaaabx", "swap", rng(seed), NoiseRules(min_length=1)) == "xaabax"


def test_keyboard():
    for seed in SEEDS:
        for word in ["wonderful", "magpie", "garage"]:
            out = apply_operation(word, "keyboard", rng(seed), PRUTHI_RULES)
            diff = hamming_positions(word, out)
            assert len(diff) == 1
            i = diff[0]
            assert out[i] in QWERTY_NEIGHBOURS[word[i]]
            if word[i] in KNOWN_NEIGHBOURS:
                assert out[i] in KNOWN_NEIGHBOURS[word[i]]
    outs = {apply_operation("agga", "keyboard", rng(s), NoiseRules(min_length=1)) for s in SEEDS}
    replaced = {o[1] if o[1] != "g" else o[2] for o in outs}
    assert replaced == KNOWN_NEIGHBOURS["g"]
    assert "p" not in replaced


def test_keyboard_only_letters_with_neighbours():
    rules = NoiseRules(min_length=1, letters_only=False)
    assert apply_operation("a12b", "keyboard", rng(0), rules) is None
    assert apply_operation("xéx", "keyboard", rng(0), rules) is None
    assert apply_operation("漢字漢字", "keyboard", rng(0), PRETRAIN_RULES) is None
    for seed in range(50):
        out = apply_operation("a1g2b", "keyboard", rng(seed), rules)
        assert out[:2] == "a1" and out[3:] == "2b" and out[2] in KNOWN_NEIGHBOURS["g"]


def test_keyboard_case_preserved():
    for seed in SEEDS:
        out = apply_operation("HELLO", "keyboard", rng(seed), PRUTHI_RULES)
        assert out.isupper() and len(out) == 5
        (i,) = hamming_positions("HELLO", out)
        assert out[i].lower() in QWERTY_NEIGHBOURS["HELLO"[i].lower()]
        out = apply_operation("HeLlO", "keyboard", rng(seed), PRETRAIN_RULES)
        (i,) = hamming_positions("HeLlO", out)
        assert out[i].isupper() == "HeLlO"[i].isupper()


def test_replace():
    for seed in SEEDS:
        word = "wonderful"
        out = apply_operation(word, "replace", rng(seed), PRUTHI_RULES)
        diff = hamming_positions(word, out)
        assert len(diff) == 1 and 1 <= diff[0] <= len(word) - 2
        assert out[diff[0]] in PRUTHI_RULES.alphabet
        out = apply_operation("HELLO", "replace", rng(seed), PRUTHI_RULES)
        assert out.isupper() and len(hamming_positions("HELLO", out)) == 1
    # alphabet of one letter: positions that already hold it cannot change
    rules = NoiseRules(min_length=1, alphabet="a")
    assert apply_operation("xaaax", "replace", rng(0), rules) is None
    for seed in range(30):
        assert apply_operation("xaabx", "replace", rng(seed), rules) == "xaaax"


def test_add_and_replace_case():
    for seed in range(100):
        out = apply_operation("HELLO", "add", rng(seed), PRUTHI_RULES)
        assert out.isupper() and len(out) == 6
        out = apply_operation("Hello", "add", rng(seed), PRUTHI_RULES)
        assert out[0] == "H" and out[1:].islower()


def test_unknown_op():
    with pytest.raises(ValueError, match="keyboard"):
        apply_operation("wonderful", "typo", rng(0), PRUTHI_RULES)
    with pytest.raises(ValueError, match="replace"):
        noise_word("wonderful", rng(0), PRUTHI_RULES, ops=("drop", "typo"))
    with pytest.raises(ValueError):
        noise_words(["wonderful"], rng(0), PRUTHI_RULES, 0.5, ops="typo")
    with pytest.raises(ValueError):
        noise_word("wonderful", rng(0), PRUTHI_RULES, ops=())


def test_rng_must_be_generator():
    with pytest.raises(TypeError):
        noise_word("wonderful", np.random.RandomState(0), PRUTHI_RULES)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- noise_word


def test_noise_word_ops_spec():
    for seed in range(50):
        out = noise_word("wonderful", rng(seed), PRUTHI_RULES, ops="drop")
        assert len(out) == 8
        out = noise_word("wonderful", rng(seed), PRUTHI_RULES, ops=["add"])
        assert len(out) == 10
    # "all" = the Pruthi attacks: drop (shorter), add (longer), swap/keyboard (same length)
    lengths = {len(noise_word("wonderful", rng(s), PRUTHI_RULES, "all")) for s in range(100)}
    assert lengths == {8, 9, 10}


def test_noise_word_falls_back_to_other_ops():
    rules = NoiseRules(min_length=1)
    # swap is impossible on "aaaa" but drop is possible: always falls back to drop
    for seed in range(30):
        assert noise_word("aaaa", rng(seed), rules, ops=("swap", "drop")) == "aaa"
    # nothing possible: unchanged
    assert noise_word("aaaa", rng(0), rules, ops="swap") == "aaaa"
    assert noise_word("abc", rng(0), rules, ops=("swap", "drop")) == "abc"


def test_noise_word_uses_all_ops():
    outs = {noise_word("wonderful", rng(s), PRUTHI_RULES) for s in range(300)}
    lengths = {len(o) for o in outs}
    assert lengths == {8, 9, 10}
    swaps = {o for o in outs if len(o) == 9 and sorted(o) == sorted("wonderful")}
    assert swaps


# --------------------------------------------------------------------------- noise_words


def test_determinism():
    a = noise_words(PARAGRAPH, rng(123), PRUTHI_RULES, 0.5, "all")
    b = noise_words(PARAGRAPH, rng(123), PRUTHI_RULES, 0.5, "all")
    c = noise_words(PARAGRAPH, rng(124), PRUTHI_RULES, 0.5, "all")
    assert a == b
    assert a[0] != c[0]
    assert a[1]  # something actually changed
    d = noise_words(PARAGRAPH, rng(123), PRETRAIN_RULES, 0.15)
    assert d == noise_words(PARAGRAPH, rng(123), PRETRAIN_RULES, 0.15)


@pytest.mark.slow
def test_determinism_across_processes():
    code = (
        "import numpy as np; from charbert.noise import *; "
        f"print(noise_words({PARAGRAPH!r}, np.random.default_rng(7), PRUTHI_RULES, 0.5, 'all'))"
    )
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={"PYTHONHASHSEED": str(h), "PATH": ""}, cwd=str(_repo_root())).stdout
        for h in (1, 2)
    ]
    assert runs[0] == runs[1]
    assert runs[0].strip() == repr(noise_words(PARAGRAPH, rng(7), PRUTHI_RULES, 0.5, "all"))


def _repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]


def test_noise_words_rate_one():
    words = ["the", "wonderful", "cat", "aaaa", "Keyboard", "x1yz", "of", "banana", "abba"]
    for seed in range(30):
        out, changed = noise_words(words, rng(seed), PRUTHI_RULES, 1.0, ops="swap")
        # eligible: wonderful, aaaa, Keyboard, banana, abba; swap impossible on aaaa and abba ("bb")
        assert changed == [1, 4, 7]
        for i, (w, o) in enumerate(zip(words, out)):
            assert (o != w) == (i in changed)
    out, changed = noise_words(words, rng(0), PRUTHI_RULES, 1.0)
    assert changed == [1, 3, 4, 7, 8]  # drop/add/... possible on every eligible word


def test_noise_words_rate_zero_and_input_untouched():
    words = list(PARAGRAPH)
    out, changed = noise_words(words, rng(0), PRUTHI_RULES, 0.0)
    assert out == words and changed == []
    out, changed = noise_words(words, rng(0), PRUTHI_RULES, 1.0)
    assert words == PARAGRAPH  # input list not modified
    assert out is not words
    assert noise_words([], rng(0), PRUTHI_RULES, 0.5) == ([], [])


def test_noise_words_rate_count():
    r = rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(r.choice(letters, size=int(r.integers(5, 12)))) for _ in range(2000)]
    assert all(is_eligible(w, PRETRAIN_RULES) for w in words)
    for seed in range(5):
        out, changed = noise_words(words, rng(seed), PRETRAIN_RULES, 0.15)
        assert abs(len(changed) - 300) <= 1
        assert changed == sorted(set(changed))
        assert [i for i, (a, b) in enumerate(zip(words, out)) if a != b] == changed


def test_noise_words_only_eligible_changed_and_uniform():
    words = (["the", "cat", "wonderful", "banana"] * 25)
    counts = np.zeros(len(words))
    for seed in range(200):
        out, changed = noise_words(words, rng(seed), PRUTHI_RULES, 0.5)
        assert len(changed) == 25
        assert all(words[i] in ("wonderful", "banana") for i in changed)
        counts[changed] += 1
    eligible_counts = counts[[i for i, w in enumerate(words) if w in ("wonderful", "banana")]]
    assert counts.sum() == eligible_counts.sum()
    # each eligible word is picked about half the time (200 * 0.5 = 100)
    assert eligible_counts.min() > 60 and eligible_counts.max() < 140


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), "abc"])
def test_bad_rate(rate):
    with pytest.raises(ValueError):
        noise_words(["wonderful"], rng(0), PRUTHI_RULES, rate)


# --------------------------------------------------------------------------- properties


def test_never_empty_or_whitespace():
    words = WORDS + PARAGRAPH + ["a", "ab", "abc", "I", "Zz", "漢字", "漢字漢字", "😀", "x" * 500,
                                 "don't", "e-mail", "naïve", "STRASSE", "straße", "", " ", "a b"]
    rules_list = [PRUTHI_RULES, PRETRAIN_RULES, NoiseRules(min_length=1, letters_only=False),
                  NoiseRules(min_length=0, keep_first_last=False, letters_only=False, alphabet="aß")]
    for seed in range(40):
        r = rng(seed)
        for rules in rules_list:
            for word in words:
                for op in OPERATIONS:
                    out = apply_operation(word, op, r, rules)
                    if out is None:
                        continue
                    assert out and out != word
                    assert not any(ch.isspace() for ch in out)
                out = noise_word(word, r, rules)
                assert out == word or (out and not any(ch.isspace() for ch in out))


def test_long_word():
    word = "abcdefghij" * 50
    for op in OPERATIONS:
        out = apply_operation(word, op, rng(0), PRUTHI_RULES)
        assert out is not None and out != word
        assert out[0] == word[0] and out[-1] == word[-1]
    out, changed = noise_words([word] * 10, rng(0), PRETRAIN_RULES, 1.0)
    assert changed == list(range(10))


# --------------------------------------------------------------------------- attack types


def test_parse_attack_type():
    assert parse_attack_type("drop") == ("drop",)
    assert parse_attack_type("keyboard") == ("keyboard",)
    assert parse_attack_type("all") == ATTACK_TYPES
    assert parse_attack_type(" Swap ") == ("swap",)
    with pytest.raises(ValueError, match="keyboard"):
        parse_attack_type("typo")
    with pytest.raises(ValueError):
        parse_attack_type("replace")


# --------------------------------------------------------------------------- single_edits (exhaustive)

EDIT_WORDS = ["wonderful", "keyboard", "Python", "HELLO", "abcd", "aabb", "mississippi", "Strength", "tests"]
EDIT_RULES = [PRUTHI_RULES, PRETRAIN_RULES, NoiseRules(min_length=1, letters_only=False, alphabet="aB-")]


@pytest.mark.parametrize("op", OPERATIONS)
def test_single_edits_cover_random_edits(op):
    for rules in EDIT_RULES:
        for word in EDIT_WORDS:
            every = single_edits(word, (op,), rules)
            assert word not in every and len(every) == len(set(every))
            seen = set()
            small = op in ("drop", "swap", "keyboard")
            for seed in range(30 * len(every) if small else 300):
                out = apply_operation(word, op, rng(seed), rules)
                if out is not None:
                    assert out in every, (word, op, out)
                    seen.add(out)
            if small:  # ~20+ expected draws of even the rarest edit: all of them are reached
                assert seen == set(every), (word, op, set(every) - seen)
            else:
                assert bool(seen) == bool(every)


def test_single_edits_by_hand():
    assert single_edits("word", "swap", PRUTHI_RULES) == ["wrod"]
    assert sorted(single_edits("tests", "drop", PRUTHI_RULES)) == ["tess", "tets", "tsts"]
    assert single_edits("aabb", "swap", PRUTHI_RULES) == ["abab"]
    assert single_edits("abcd", "drop", PRUTHI_RULES) == ["acd", "abd"]
    # keyboard: neighbours of the inner letters, case kept
    assert set(single_edits("HGPA", "keyboard", PRUTHI_RULES)) == (
        {"H" + c.upper() + "PA" for c in KNOWN_NEIGHBOURS["g"]} | {"HG" + c.upper() + "A" for c in KNOWN_NEIGHBOURS["p"]}
    )
    # add: strictly inside, in the case of the neighbours, from the alphabet
    rules = NoiseRules(alphabet="xy")
    assert single_edits("Abcd", "add", rules) == ["Axbcd", "Aybcd", "Abxcd", "Abycd", "Abcxd", "Abcyd"]
    assert single_edits("ABCD", "add", rules)[:2] == ["AXBCD", "AYBCD"]
    # without keep_first_last the edges can change too
    assert "ord" in single_edits("word", "drop", PRETRAIN_RULES) and "xword" in single_edits("word", "add", PRETRAIN_RULES)


def test_single_edits_rules_and_ops():
    for word in ["wonderful", "keyboard", "Strength", "tests"]:
        every = single_edits(word, "all", PRUTHI_RULES)
        assert every == single_edits(word, ATTACK_TYPES, PRUTHI_RULES)
        assert every and all(w[0] == word[0] and w[-1] == word[-1] for w in every)
        assert set(single_edits(word, ("drop", "swap"), PRUTHI_RULES)) == (
            set(single_edits(word, "drop", PRUTHI_RULES)) | set(single_edits(word, "swap", PRUTHI_RULES)))
        assert single_edits(word, "all", PRUTHI_RULES) == every  # deterministic
    for word in ["the", "about", "Which", "cat", "ab", "", "e-mail", "don't", "abc1"]:
        assert single_edits(word, "all", PRUTHI_RULES) == [], word
    with pytest.raises(ValueError):
        single_edits("wonderful", "typo", PRUTHI_RULES)
