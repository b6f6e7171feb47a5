"""Character-level word noise: the one place where words get misspelt.

Two users share this module:

* pretraining (CharBERT's noisy LM, NLM): a fraction of the words of each
  sequence gets one character edit and the model predicts the original word;
* robustness evaluation: Pruthi et al. (2019) style adversarial misspellings
  (``drop``, ``add``, ``swap``, ``keyboard``, and ``all`` = a random one of
  those per word), which keep the first and last characters and skip short
  words and stop-words.

Every random choice is drawn from ONE ``numpy.random.Generator`` that the
caller passes in; nothing here touches global random state and nothing
depends on set/dict iteration order, so the same seed yields the same noise
in any process (independent of ``PYTHONHASHSEED``).

Conventions shared by all edits (see :func:`apply_operation`):

* the *edit region* of a word of length ``n`` is ``[1, n-2]`` with
  ``keep_first_last`` and ``[0, n-1]`` otherwise; insertions go between two
  characters of the word when ``keep_first_last`` (never before the first or
  after the last one), anywhere otherwise;
* an edit that is returned always differs from the input, is never empty and
  never contains whitespace;
* edits that write a letter (``add``, ``replace``, ``keyboard``) follow the
  case of the place they edit, so ``HELLO`` becomes ``HELKO``, not ``HELkO``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain

import numpy as np

__all__ = [
    "OPERATIONS",
    "ATTACK_TYPES",
    "NoiseRules",
    "ENGLISH_STOPWORDS",
    "PRUTHI_RULES",
    "PRETRAIN_RULES",
    "QWERTY_NEIGHBOURS",
    "is_eligible",
    "apply_operation",
    "noise_word",
    "noise_words",
    "noise_edits",
    "eligible_indices",
    "single_edits",
    "parse_attack_type",
]

OPERATIONS: tuple[str, ...] = ("drop", "add", "swap", "keyboard", "replace")
"""Word-level single character edits."""

ATTACK_TYPES: tuple[str, ...] = ("drop", "add", "swap", "keyboard")
"""Pruthi et al. (2019) attack types; ``"all"`` means a random one per word."""

OpsSpec = str | Sequence[str]


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class NoiseRules:
    """Which words may be edited and where.

    ``stopwords`` may be given as any iterable of strings; it is stored as a
    lower-cased ``frozenset`` (membership is tested on ``word.lower()``).
    ``alphabet`` must be non-empty and free of whitespace, because its
    characters are written into words by ``add`` and ``replace``.
    """

    min_length: int = 4
    keep_first_last: bool = True
    alphabet: str = "abcdefghijklmnopqrstuvwxyz"
    stopwords: frozenset[str] = field(default_factory=frozenset)
    letters_only: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.min_length, bool) or not isinstance(self.min_length, int):
            raise TypeError(f"min_length must be an int, got {self.min_length!r}")
        if self.min_length < 0:
            raise ValueError(f"min_length must be >= 0, got {self.min_length}")
        if not isinstance(self.alphabet, str) or not self.alphabet:
            raise ValueError("alphabet must be a non-empty string")
        if any(ch.isspace() for ch in self.alphabet):
            raise ValueError("alphabet must not contain whitespace")
        if isinstance(self.stopwords, str):
            # frozenset("the") would silently become {"t", "h", "e"}.
            raise TypeError("stopwords must be an iterable of words, not a single string")
        normalised = frozenset(str(w).lower() for w in self.stopwords)
        object.__setattr__(self, "stopwords", normalised)


# A standard English stop-word list (function words: articles, pronouns,
# auxiliaries, prepositions, conjunctions, common adverbs/determiners).
# Only alphabetic entries: contractions are not eligible words anyway.
ENGLISH_STOPWORDS: frozenset[str] = frozenset(
    """
    a about above after again against all am an and any are as at
    be because been before being below between both but by
    can could
    did do does doing down during
    each either
    few for from further
    had has have having he her here hers herself him himself his how
    i if in into is it its itself
    just
    may me might more most must my myself
    neither no nor not now
    of off on once only or other ought our ours ourselves out over own
    same shall she should so some such
    than that the their theirs them themselves then there these they this
    those through to too
    under until up upon us
    very
    was we were what when where which while who whom whose why will with
    would
    yet you your yours yourself yourselves
    also although among around because cannot else ever every however
    its many much never since though thus unless whether within without
    """.split()
)

PRUTHI_RULES = NoiseRules(min_length=4, keep_first_last=True, stopwords=ENGLISH_STOPWORDS)
"""Default rules for adversarial attacks (Pruthi et al., 2019)."""

PRETRAIN_RULES = NoiseRules(min_length=2, keep_first_last=False, stopwords=frozenset())
"""Default rules for NLM pretraining noise (any position of any word)."""


# --------------------------------------------------------------------------- keyboard


def _build_qwerty_neighbours() -> dict[str, str]:
    """Adjacent letters on a staggered QWERTY keyboard.

    Each row is shifted right by about half a key relative to the row above,
    so key ``i`` of a lower row touches keys ``i`` and ``i+1`` of the row
    above, and key ``i`` of an upper row touches keys ``i-1`` and ``i`` of the
    row below (e.g. ``g`` -> ``f h t y v b``).  Non-letter keys are ignored.
    """
    rows = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
    table: dict[str, str] = {}
    for r, row in enumerate(rows):
        for i, ch in enumerate(row):
            near: list[str] = []
            if i > 0:
                near.append(row[i - 1])
            if i + 1 < len(row):
                near.append(row[i + 1])
            if r > 0:
                above = rows[r - 1]
                near.extend(above[j] for j in (i, i + 1) if 0 <= j < len(above))
            if r + 1 < len(rows):
                below = rows[r + 1]
                near.extend(below[j] for j in (i - 1, i) if 0 <= j < len(below))
            table[ch] = "".join(near)
    return table


QWERTY_NEIGHBOURS: dict[str, str] = _build_qwerty_neighbours()


# --------------------------------------------------------------------------- helpers


def _match_case(ch: str, ref: str) -> str:
    """``ch`` in the case of ``ref`` (unchanged if ``ref`` is uncased or the
    case mapping is not a single character, e.g. ``'ß'.upper() == 'SS'``)."""
    if ref.isupper():
        out = ch.upper()
    elif ref.islower():
        out = ch.lower()
    else:
        return ch
    return out if len(out) == 1 else ch


@lru_cache(maxsize=64)
def _alphabet_chars(alphabet: str) -> tuple[str, ...]:
    """Distinct characters of ``alphabet`` in first-seen order (deterministic)."""
    return tuple(dict.fromkeys(alphabet))


@lru_cache(maxsize=4096)
def _replacements(alphabet: str, orig: str) -> tuple[str, ...]:
    """Distinct case-matched alphabet characters that differ from ``orig``."""
    out = dict.fromkeys(_match_case(c, orig) for c in _alphabet_chars(alphabet))
    out.pop(orig, None)
    return tuple(out)


def _scripts(text: str) -> set[str]:
    return {unicodedata.name(ch, "?").split(" ")[0] for ch in text if ch.isalpha()}


@lru_cache(maxsize=64)
def _alphabet_scripts(alphabet: str) -> frozenset[str]:
    return frozenset(_scripts(alphabet))


@lru_cache(maxsize=4096)
def _writing_alphabet(word: str, alphabet: str) -> str:
    """The letters ``add`` and ``replace`` write into ``word``: ``alphabet`` when the word has a letter of
    the alphabet's script (LATIN, CYRILLIC, GREEK...: the first word of the Unicode name), else the word's
    own letters (sorted, so deterministic). A Cyrillic, Greek or CJK word thus gets a letter of its own
    script, never a Latin one from the default English alphabet."""
    # Every ASCII letter is LATIN: no Unicode name to look up for an ASCII word (most words of most corpora).
    if word.isascii():
        word_scripts = {"LATIN"} if word.isalpha() or any(ch.isalpha() for ch in word) else set()
    else:
        word_scripts = _scripts(word)
    if word_scripts & _alphabet_scripts(alphabet):
        return alphabet
    own = "".join(sorted({ch.lower() for ch in word if ch.isalpha()}))
    return own or alphabet


def _check_rng(rng: object) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            "rng must be a numpy.random.Generator (e.g. numpy.random.default_rng(seed)), "
            f"got {type(rng).__name__}"
        )


def _region(n: int, keep_first_last: bool) -> tuple[int, int]:
    """Half-open range ``[lo, hi)`` of editable character positions."""
    return (1, n - 1) if keep_first_last else (0, n)


class _SmallRangeDraws:
    """``Generator.integers(lo, hi)`` for ranges below 2**32, made in Python from the bit generator's raw
    64-bit outputs: the same values, from the same stream, at a third of the call's cost.

    numpy draws such an integer by Lemire's method on 32-bit outputs of its bit generator, and PCG64 cuts
    each 64-bit output into two 32-bit ones (low half first, the high half kept for the next 32-bit draw).
    This replays both: it reads the kept half from the generator's state, draws 64-bit outputs with
    ``random_raw`` and writes the kept half back in ``close`` (before any other draw from the generator;
    ``permutation`` closes and reopens around numpy's own). Only for PCG64 (``default_rng``); tests compare
    it with ``Generator.integers`` draw by draw, interleaved with numpy's other draws.
    """

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.bit_generator = rng.bit_generator
        self.raw = self.bit_generator.random_raw
        state = self.bit_generator.state
        self.has_half, self.half = state["has_uint32"], state["uinteger"]

    def _next32(self) -> int:
        if self.has_half:
            self.has_half = 0
            return self.half
        value = self.raw()
        self.has_half, self.half = 1, value >> 32
        return value & 0xFFFFFFFF

    def integers(self, lo: int, hi: int) -> int:
        span = hi - lo - 1  # numpy's inclusive range
        if span == 0:
            return lo  # numpy draws nothing
        if span > 0xFFFFFFFF or span < 0:  # 64-bit draws (or an error): numpy's own
            self.close()
            out = int(self.rng.integers(lo, hi))
            self.__init__(self.rng)
            return out
        if span == 0xFFFFFFFF:
            return lo + self._next32()
        exclusive = span + 1
        if self.has_half:  # `_next32`, inlined: this is the hot path
            self.has_half = 0
            m = self.half * exclusive
        else:
            value = self.raw()
            self.has_half, self.half = 1, value >> 32
            m = (value & 0xFFFFFFFF) * exclusive
        if (m & 0xFFFFFFFF) < exclusive:
            m = self._redraw(m, exclusive)
        return lo + (m >> 32)

    def _redraw(self, m: int, exclusive: int) -> int:
        """Lemire's rejection: draw again while the low half of `m` (a 32-bit draw times `exclusive`)
        falls below 2**32 mod `exclusive`; the accepted product."""
        threshold = (0x100000000 - exclusive) % exclusive
        while (m & 0xFFFFFFFF) < threshold:
            m = self._next32() * exclusive
        return m

    def permutation(self, n: int) -> np.ndarray:
        self.close()
        out = self.rng.permutation(n)
        self.__init__(self.rng)
        return out

    def sample(self, n: int, k: int) -> list[int]:
        """`sorted(Generator.choice(n, k, replace=False))`, 0 < k < n, with numpy's draws: for a population
        of up to 10,000 numpy takes Floyd's algorithm (value j drawn in [0, j] for j from n - k to n - 1,
        j itself when the value is taken) then shuffles the k picks, whose order the sort discards but
        whose k - 1 draws (in [0, i], i from k - 1 down to 1) it must still consume."""
        if n > 10_000:  # numpy shuffles a tail of range(n) instead
            self.close()
            out = np.sort(self.rng.choice(n, size=k, replace=False)).tolist()
            self.__init__(self.rng)
            return out
        picked, raw, has_half, half = set(), self.raw, self.has_half, self.half
        for t, exclusive in enumerate(chain(range(n - k + 1, n + 1), range(k, 1, -1))):
            # `integers(0, exclusive)` inlined: this is the hot path
            if has_half:
                has_half, m = 0, half * exclusive
            else:
                value = raw()
                has_half, half, m = 1, value >> 32, (value & 0xFFFFFFFF) * exclusive
            if (m & 0xFFFFFFFF) < exclusive:  # Lemire's rejection may apply (odds below 2**-18 here)
                self.has_half, self.half = has_half, half
                m = self._redraw(m, exclusive)
                has_half, half = self.has_half, self.half
            if t < k:  # Floyd's step j = exclusive - 1 (the shuffle's draws after it are only consumed)
                value = m >> 32
                picked.add(exclusive - 1 if value in picked else value)
        self.has_half, self.half = has_half, half
        return sorted(picked)

    def close(self) -> None:
        state = self.bit_generator.state
        state["has_uint32"], state["uinteger"] = self.has_half, self.half
        self.bit_generator.state = state


class _GeneratorDraws:
    """The draws the edits make (`integers` as Python ints, `permutation`, `sample`), taken from the
    generator itself: for one-off edits, and for bit generators `_SmallRangeDraws` does not replay."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def integers(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi))

    def permutation(self, n: int) -> np.ndarray:
        return self.rng.permutation(n)

    def sample(self, n: int, k: int) -> list[int]:
        return np.sort(self.rng.choice(n, size=k, replace=False)).tolist()

    def close(self) -> None:
        pass


_Draws = _SmallRangeDraws | _GeneratorDraws


def open_draws(rng: np.random.Generator) -> _Draws:
    """The draws over `rng`: `_SmallRangeDraws` where it replays numpy exactly (PCG64), else numpy's own.
    Close them before drawing from `rng` directly."""
    return _SmallRangeDraws(rng) if type(rng.bit_generator) is np.random.PCG64 else _GeneratorDraws(rng)


# --------------------------------------------------------------------------- edits


def _drop(word: str, draws: _Draws, rules: NoiseRules) -> str | None:
    n = len(word)
    lo, hi = _region(n, rules.keep_first_last)
    # Must leave >= 1 character inside the region (so never an empty word,
    # and with keep_first_last never a bare first+last pair).
    if hi - lo < 2:
        return None
    i = draws.integers(lo, hi)
    return word[:i] + word[i + 1 :]


def _add(word: str, draws: _Draws, rules: NoiseRules) -> str | None:
    n = len(word)
    # Insertion index k means "insert before word[k]".
    if rules.keep_first_last:
        if n < 2:
            return None
        lo, hi = 1, n  # k in [1, n-1]: strictly between first and last char
    else:
        lo, hi = 0, n + 1
    k = draws.integers(lo, hi)
    chars = _alphabet_chars(_writing_alphabet(word, rules.alphabet))
    c = chars[draws.integers(0, len(chars))] if len(chars) > 1 else chars[0]
    # the case of the neighbours (word[k - 1], word[k], those that exist): all upper -> upper, any lower -> lower
    left, right = word[k - 1: k] if k else "", word[k: k + 1]
    if (left or right) and (not left or left.isupper()) and (not right or right.isupper()):
        c = _match_case(c, "A")
    elif left.islower() or right.islower():
        c = _match_case(c, "a")
    return word[:k] + c + word[k:]


def _swap(word: str, draws: _Draws, rules: NoiseRules) -> str | None:
    lo, hi = _region(len(word), rules.keep_first_last)
    # Pairs (i, i+1) with both positions inside the region and different chars.
    cands = [i for i in range(lo, hi - 1) if word[i] != word[i + 1]]
    if not cands:
        return None
    i = cands[draws.integers(0, len(cands))] if len(cands) > 1 else cands[0]
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def _keyboard(word: str, draws: _Draws, rules: NoiseRules) -> str | None:
    lo, hi = _region(len(word), rules.keep_first_last)
    if word.isascii() and word.isalpha():  # every ASCII letter has QWERTY neighbours
        cands = range(lo, hi)
    else:
        cands = [i for i in range(lo, hi) if word[i].lower() in QWERTY_NEIGHBOURS]
    if not cands:
        return None
    i = cands[draws.integers(0, len(cands))] if len(cands) > 1 else cands[0]
    near = QWERTY_NEIGHBOURS[word[i].lower()]
    c = _match_case(near[draws.integers(0, len(near))], word[i])
    return word[:i] + c + word[i + 1 :]


def _replace(word: str, draws: _Draws, rules: NoiseRules) -> str | None:
    lo, hi = _region(len(word), rules.keep_first_last)
    if hi <= lo:
        return None
    i = draws.integers(lo, hi)
    alphabet = _writing_alphabet(word, rules.alphabet)
    repl = _replacements(alphabet, word[i])
    if not repl:
        # Rare (tiny alphabets): scan the region for a position that can change.
        cands = [j for j in range(lo, hi) if _replacements(alphabet, word[j])]
        if not cands:
            return None
        i = cands[draws.integers(0, len(cands))]
        repl = _replacements(alphabet, word[i])
    c = repl[draws.integers(0, len(repl))] if len(repl) > 1 else repl[0]
    return word[:i] + c + word[i + 1 :]


# ------------------------------------------------------------- all single edits
#
# Exhaustive counterparts of the random edits above, used by worst-case
# (greedy) attacks: each yields every string the random edit of the same name
# can return, under the same region / insertion / case rules.  Keep the two in
# step: tests/test_noise.py checks that the random outputs lie in these sets.


def _all_drop(word: str, rules: NoiseRules):
    lo, hi = _region(len(word), rules.keep_first_last)
    if hi - lo < 2:
        return
    for i in range(lo, hi):
        yield word[:i] + word[i + 1 :]


def _all_add(word: str, rules: NoiseRules):
    n = len(word)
    if rules.keep_first_last:
        if n < 2:
            return
        lo, hi = 1, n
    else:
        lo, hi = 0, n + 1
    for k in range(lo, hi):
        neighbours = [word[j] for j in (k - 1, k) if 0 <= j < n]
        for c in _alphabet_chars(_writing_alphabet(word, rules.alphabet)):
            if neighbours and all(ch.isupper() for ch in neighbours):
                c = _match_case(c, "A")
            elif any(ch.islower() for ch in neighbours):
                c = _match_case(c, "a")
            yield word[:k] + c + word[k:]


def _all_swap(word: str, rules: NoiseRules):
    lo, hi = _region(len(word), rules.keep_first_last)
    for i in range(lo, hi - 1):
        if word[i] != word[i + 1]:
            yield word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def _all_keyboard(word: str, rules: NoiseRules):
    lo, hi = _region(len(word), rules.keep_first_last)
    for i in range(lo, hi):
        for near in QWERTY_NEIGHBOURS.get(word[i].lower(), ""):
            yield word[:i] + _match_case(near, word[i]) + word[i + 1 :]


def _all_replace(word: str, rules: NoiseRules):
    lo, hi = _region(len(word), rules.keep_first_last)
    alphabet = _writing_alphabet(word, rules.alphabet)
    for i in range(lo, hi):
        for c in _replacements(alphabet, word[i]):
            yield word[:i] + c + word[i + 1 :]


_ALL_EDITS = {
    "drop": _all_drop,
    "add": _all_add,
    "swap": _all_swap,
    "keyboard": _all_keyboard,
    "replace": _all_replace,
}


_EDITS = {
    "drop": _drop,
    "add": _add,
    "swap": _swap,
    "keyboard": _keyboard,
    "replace": _replace,
}
assert tuple(_EDITS) == OPERATIONS == tuple(_ALL_EDITS)


def _check_op(op: object) -> str:
    if op not in _EDITS:
        raise ValueError(f"unknown noise operation {op!r}; valid operations are {list(OPERATIONS)}")
    return op  # type: ignore[return-value]


@lru_cache(maxsize=256)
def _normalise_ops_cached(ops: tuple[str, ...]) -> tuple[str, ...]:
    for op in ops:
        _check_op(op)
    out = tuple(dict.fromkeys(ops))  # de-duplicate, keep order (deterministic)
    if not out:
        raise ValueError(f"ops must name at least one operation out of {list(OPERATIONS)}")
    return out


def _normalise_ops(ops: OpsSpec) -> tuple[str, ...]:
    """``"all"`` -> ATTACK_TYPES, ``"drop"`` -> ("drop",), sequence -> validated tuple."""
    if isinstance(ops, str):
        if ops == "all":
            return ATTACK_TYPES
        return (_check_op(ops),)
    try:
        key = tuple(ops)
    except TypeError:
        raise TypeError(f"ops must be an operation name, 'all' or a sequence of names, got {ops!r}") from None
    try:
        return _normalise_ops_cached(key)
    except TypeError:  # unhashable elements
        raise ValueError(f"unknown noise operation in {ops!r}; valid operations are {list(OPERATIONS)}") from None


# --------------------------------------------------------------------------- public API


def _letters_and_marks(word: str) -> bool:
    """Letters and combining marks only, starting with a letter (``हिन्दी``: vowel signs are marks)."""
    return word[0].isalpha() and all(ch.isalpha() or unicodedata.category(ch)[0] == "M" for ch in word)


def is_eligible(word: str, rules: NoiseRules) -> bool:
    """Whether ``word`` may be edited at all under ``rules``.

    Not eligible: non-strings, empty words, words shorter than
    ``rules.min_length``, words containing whitespace, non-alphabetic words
    when ``rules.letters_only`` (letters of any script, CJK included, and the
    combining marks of scripts such as Devanagari count), and stop-words
    (compared lower-cased).

    Outside English: ``drop`` and ``swap`` work in every script; ``add`` and
    ``replace`` write letters of the word's own script (see
    ``_writing_alphabet``); ``keyboard`` knows only the QWERTY layout, so a
    word with no Latin letter has no keyboard edit (``all`` then picks another).
    """
    if not isinstance(word, str) or not word or len(word) < rules.min_length:
        return False
    if rules.letters_only:
        if not word.isalpha() and not _letters_and_marks(word):
            return False
    elif any(ch.isspace() for ch in word):
        return False
    return word.lower() not in rules.stopwords


def eligible_indices(words: Sequence[str], rules: NoiseRules) -> list[int]:
    """The indices of the words :func:`is_eligible` accepts (the same tests, one pass over the list)."""
    shortest = max(rules.min_length, 1)  # never an empty word
    if rules.letters_only:
        indices = [i for i, w in enumerate(words)
                   if isinstance(w, str) and len(w) >= shortest and (w.isalpha() or _letters_and_marks(w))]
    else:
        indices = [i for i, w in enumerate(words)
                   if isinstance(w, str) and len(w) >= shortest and not any(ch.isspace() for ch in w)]
    if rules.stopwords:
        indices = [i for i in indices if words[i].lower() not in rules.stopwords]
    return indices


def apply_operation(word: str, op: str, rng: np.random.Generator, rules: NoiseRules) -> str | None:
    """Apply one edit of type ``op`` to ``word``; ``None`` if it cannot change it.

    ``None`` is returned for ineligible words (see :func:`is_eligible`) and
    whenever the edit is structurally impossible inside the edit region:
    ``drop`` needs >= 2 characters in the region (so >= 1 remains; with
    ``keep_first_last`` that means length >= 4), ``swap`` needs two adjacent
    differing characters in the region, ``keyboard`` a QWERTY letter in the
    region, ``replace`` a region position with a different alphabet character.

    A returned string always differs from ``word``, is non-empty and contains
    no whitespace.  Raises ``ValueError`` for an unknown ``op``.
    """
    edit = _EDITS[_check_op(op)]
    _check_rng(rng)
    if not is_eligible(word, rules):
        return None
    return edit(word, _GeneratorDraws(rng), rules)


def single_edits(word: str, ops: OpsSpec, rules: NoiseRules) -> list[str]:
    """Every distinct string one edit of a type in ``ops`` can make of ``word``.

    ``ops`` is a name, a sequence of names or ``"all"`` (as for
    :func:`noise_word`).  The result is exactly the set of values
    :func:`apply_operation` can return for these operations (same edit
    region, insertion positions, alphabet, case matching and keyboard
    table), listed in generation order (operations in the order given, then
    position, then character) without duplicates and without ``word``
    itself.  Ineligible words give ``[]``.
    """
    ops_t = _normalise_ops(ops)
    if not is_eligible(word, rules):
        return []
    out = dict.fromkeys(new for op in ops_t for new in _ALL_EDITS[op](word, rules))
    out.pop(word, None)  # e.g. a case-less keyboard neighbour; never "no edit"
    return list(out)


def noise_word(word: str, rng: np.random.Generator, rules: NoiseRules, ops: OpsSpec = OPERATIONS) -> str:
    """One random edit of ``word`` drawn from ``ops``.

    ``ops`` is a sequence of operation names, a single name, or ``"all"``
    (= :data:`ATTACK_TYPES`).  A random operation is tried first; if it does
    not apply, the others are tried in a random order.  Returns ``word``
    unchanged if the word is not eligible or no operation applies.
    """
    ops_t = _normalise_ops(ops)
    _check_rng(rng)
    if not is_eligible(word, rules):
        return word
    return _noise_eligible(word, _GeneratorDraws(rng), rules, ops_t)


def _noise_eligible(word: str, draws: _Draws, rules: NoiseRules, ops: tuple[str, ...]) -> str:
    n = len(ops)
    first = draws.integers(0, n) if n > 1 else 0
    out = _EDITS[ops[first]](word, draws, rules)
    if out is not None:
        return out
    if n > 1:
        rest = [op for j, op in enumerate(ops) if j != first]
        for j in draws.permutation(len(rest)).tolist():
            out = _EDITS[rest[j]](word, draws, rules)
            if out is not None:
                return out
    return word


def noise_words(
    words: list[str],
    rng: np.random.Generator,
    rules: NoiseRules,
    rate: float,
    ops: OpsSpec = OPERATIONS,
    max_words: int | None = None,
    eligible: Sequence[int] | None = None,
) -> tuple[list[str], list[int]]:
    """Noise ``round(rate * n_eligible)`` eligible words of ``words``, at most ``max_words``.

    The words are chosen uniformly without replacement among the eligible
    ones (``rate=1.0`` -> all of them) and each is edited with
    :func:`noise_word`.  Python's ``round`` is used (half to even).  Returns a
    new list (the input is not modified) and the sorted indices of the words
    that actually changed (a chosen word whose edits are all impossible stays
    as it is and is not listed).  ``max_words`` is the budget of Pruthi et
    al. (2019): at most that many words per call (a sentence), chosen at
    random; None = no cap.  ``eligible``: the indices of the eligible words in increasing order, when
    the caller has them already (they must be what :func:`is_eligible` accepts; the pretraining collator
    reads them off its word table); None = tested here.  Raises ``ValueError`` for ``rate`` outside
    ``[0, 1]``, a negative ``max_words`` or an unknown operation.
    """
    try:
        rate_f = float(rate)
    except (TypeError, ValueError):
        raise ValueError(f"rate must be a number in [0, 1], got {rate!r}") from None
    if not 0.0 <= rate_f <= 1.0:  # also rejects NaN
        raise ValueError(f"rate must be in [0, 1], got {rate!r}")
    if max_words is not None and (isinstance(max_words, bool) or not isinstance(max_words, int) or max_words < 0):
        raise ValueError(f"max_words must be None or an int >= 0, got {max_words!r}")
    ops_t = _normalise_ops(ops)
    _check_rng(rng)

    out = list(words)
    edits = noise_edits(out, eligible_indices(out, rules) if eligible is None else list(eligible), rng, rules, rate_f,
                        ops_t, max_words)
    for i, new in edits.items():
        out[i] = new
    return out, list(edits)


def noise_edits(
    words: Sequence[str],
    eligible: Sequence[int],
    rng: np.random.Generator,
    rules: NoiseRules,
    rate: float,
    ops: OpsSpec = OPERATIONS,
    max_words: int | None = None,
    draws: _Draws | None = None,
) -> dict[int, str]:
    """The draws and edits of :func:`noise_words`, given the eligible words' indices (increasing) and the
    checked arguments: ``{index: new word}`` of the words that changed, in index order. ``words`` is
    read only at the chosen indices, so it may be any sequence (the pretraining collator passes one that
    slices its text on demand). ``draws``: draws already open over ``rng`` (``open_draws``; the
    collator keeps one open over a batch's blocks), else they are opened and closed here."""
    ops = _normalise_ops(ops)
    k = min(len(eligible), int(round(rate * len(eligible))))
    if max_words is not None:
        k = min(k, max_words)
    if k == 0:
        return {}
    own_draws = draws is None
    if own_draws:
        draws = open_draws(rng)
    edits: dict[int, str] = {}
    try:
        chosen = list(eligible) if k == len(eligible) else [eligible[j] for j in draws.sample(len(eligible), k)]
        for i in chosen:
            word = words[i]
            new = _noise_eligible(word, draws, rules, ops)
            if new != word:
                edits[i] = new
    finally:
        if own_draws:
            draws.close()
    return edits


def parse_attack_type(name: str) -> tuple[str, ...]:
    """Attack name -> operations: ``"drop"`` -> ``("drop",)``, ``"all"`` -> :data:`ATTACK_TYPES`.

    Case and surrounding whitespace are ignored.  Unknown names raise
    ``ValueError`` listing the allowed ones (``replace`` is not a Pruthi
    attack and is rejected here).
    """
    allowed = ATTACK_TYPES + ("all",)
    key = name.strip().lower() if isinstance(name, str) else name
    if key == "all":
        return ATTACK_TYPES
    if key in ATTACK_TYPES:
        return (key,)
    raise ValueError(f"unknown attack type {name!r}; allowed: {list(allowed)}")
