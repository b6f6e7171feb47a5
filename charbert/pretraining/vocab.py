"""The word splitter and the word vocabulary of the noisy LM (NLM) head.

`split_words` is THE definition of a "word" in charbert: the NLM vocabulary is counted with it
and the pretraining collator picks the words to noise with it, so the two always agree.

A word is

* a word character (``\\w``: Unicode letters, digits, underscore) followed by the maximal run
  of word characters *and combining marks* (Unicode categories Mn, Mc, Me), or
* any other single non-space character (punctuation, symbols, emoji: ``,`` ``.`` ``#`` ``😀``,
  or a stray combining mark after a space), together with the combining marks that directly
  follow it.

* a CJK ideograph, alone (with the combining marks that follow it): Chinese and Japanese are written
  without spaces, so a run of ideographs is not one word; each ideograph is one, as BERT's own
  tokenizer splits them (the same Unicode blocks as its ``_is_chinese_char``). Kana, Hangul and every
  other script keep the rule above (Korean separates words with spaces; a run of kana stays one word).

Whitespace is never part of a word. The combining marks are what plain ``\\w+`` gets wrong:
Python's ``\\w`` does not match them, so ``\\w+|[^\\w\\s]`` cuts Devanagari ``हिन्दी`` into six
pieces, a decomposed ``é`` (``e`` + U+0301) into two, and ``❤️`` (``❤`` + variation selector
U+FE0F) into two. With the marks added every such word stays whole; on text without
combining marks or CJK ideographs (e.g. all of English) the result is exactly ``\\w+|[^\\w\\s]``.

The word vocabulary is lower-cased (:func:`normalize_word`); id 0 is ``[UNK]``.
"""

from __future__ import annotations

import heapq
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Union

import numpy as np

__all__ = [
    "WORD_VOCAB_FILE",
    "WordCounter",
    "WordVocab",
    "count_corpus",
    "normalize_word",
    "split_words",
    "word_table",
    "word_tables",
    "words_of",
]

PathLike = Union[str, "os.PathLike[str]"]

WORD_VOCAB_FILE = "word_vocab.txt"


def _combining_marks_class() -> str:
    """A regex class body holding every combining mark (categories Mn, Mc, Me).

    `re` has no ``\\p{M}``; the ranges come from `unicodedata` (this Python's Unicode version).
    Marks only live in planes 0, 1 and 14, so scanning those is complete (~10 ms at import).
    """
    ranges: list[tuple[int, int]] = []
    for block in (range(0, 0x20000), range(0xE0000, 0xE1000)):
        for cp in block:
            if unicodedata.category(chr(cp))[0] == "M":
                if ranges and ranges[-1][1] == cp - 1:
                    ranges[-1] = (ranges[-1][0], cp)
                else:
                    ranges.append((cp, cp))
    return "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)


_MARKS = _combining_marks_class()
# CJK ideographs (BERT's `_is_chinese_char` blocks): each one is a word of its own.
CJK_IDEOGRAPHS = ("\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff\U00020000-\U0002a6df\U0002a700-\U0002b73f"
                  "\U0002b740-\U0002b81f\U0002b820-\U0002ceaf\U0002f800-\U0002fa1f")
WORD_PATTERN = (rf"[{CJK_IDEOGRAPHS}][{_MARKS}]*"  # one ideograph
                rf"|[^\W{CJK_IDEOGRAPHS}](?:[^\W{CJK_IDEOGRAPHS}]|[{_MARKS}])*"  # a run of other word characters and marks
                rf"|[^\w\s][{_MARKS}]*")  # any other single non-space character
_WORD_RE = re.compile(WORD_PATTERN)
# ASCII text has no combining marks, and there the pattern above is exactly this one, which is
# ~3x faster (the big class of marks is slow to test in `re`): used whenever `text.isascii()`.
_ASCII_WORD_RE = re.compile(r"\w+|[^\w\s]")


def _word_re(text: str) -> re.Pattern:
    return _ASCII_WORD_RE if text.isascii() else _WORD_RE


def split_words(text: str) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` (end exclusive) of the words of `text`, in order.

    See the module docstring for what a word is. Spans never overlap, never cover whitespace,
    and every non-space character of `text` is in exactly one span.

    >>> [("Don't stop, C# rocks!"[s:e]) for s, e in split_words("Don't stop, C# rocks!")]
    ['Don', "'", 't', 'stop', ',', 'C', '#', 'rocks', '!']
    """
    return [m.span() for m in _word_re(text).finditer(text)]


# Each ASCII character's class under `_ASCII_WORD_RE`, read off `re` itself: 0 whitespace, 1 letter,
# 2 other word character (digit, underscore), 3 anything else (a word of its own).
_ASCII_CLASS = np.array([0 if re.fullmatch(r"\s", chr(c)) else (1 if chr(c).isalpha() else 2) if re.fullmatch(r"\w", chr(c))
                         else 3 for c in range(128)], dtype=np.int8)


def word_table(text: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray | None]:
    """The words of `text` (as :func:`split_words` splits it) with their starts and ends (int64 arrays)
    and, for ASCII text, which words are letters only (bool array; None for other text).

    ASCII text is classified character by character in numpy (a word starts where a run of word
    characters starts, or at any other non-space character), the same split as the pattern's, at a
    fraction of the cost of one match object per word; other text goes through :func:`split_words`.
    """
    return word_tables([text])[0]


def word_tables(texts: Sequence[str], with_words: bool = True
                ) -> list[tuple[list[str] | None, np.ndarray, np.ndarray, np.ndarray | None]]:
    """:func:`word_table` of each text; the ASCII ones in one numpy pass over them all, joined by newlines
    (whitespace: no word crosses it). `with_words=False`: the ASCII texts' words are not listed (None;
    the spans say where they are), which saves a regex pass when few of them are read."""
    tables: list = [None] * len(texts)
    ascii_rows = []
    for i, text in enumerate(texts):
        if text.isascii():
            ascii_rows.append(i)
        else:
            spans = split_words(text)
            bounds = np.array(spans, dtype=np.int64).reshape(-1, 2)
            tables[i] = ([text[s:e] for s, e in spans], bounds[:, 0], bounds[:, 1], None)
    if not ascii_rows:
        return tables
    joined = "\n".join(texts[i] for i in ascii_rows)
    kind = _ASCII_CLASS[np.frombuffer(joined.encode("ascii"), dtype=np.uint8)]
    is_word_char = (kind == 1) | (kind == 2)
    alone = kind == 3
    edge = np.diff(is_word_char.astype(np.int8), prepend=0, append=0)  # +1 where a run starts, -1 after it ends
    starts = np.flatnonzero(alone | (edge[:-1] == 1))
    ends = np.flatnonzero(alone | (edge[1:] == -1)) + 1
    non_letters = np.zeros(len(kind) + 1, dtype=np.int64)
    np.cumsum(kind != 1, out=non_letters[1:])
    letters_only = non_letters[ends] == non_letters[starts]
    words = _ASCII_WORD_RE.findall(joined) if with_words else None
    text_starts = np.zeros(len(ascii_rows) + 1, dtype=np.int64)  # where each text begins in `joined`
    np.cumsum([len(texts[i]) + 1 for i in ascii_rows], out=text_starts[1:])
    cuts = np.searchsorted(starts, text_starts).tolist()
    for k, i in enumerate(ascii_rows):
        a, b, shift = cuts[k], cuts[k + 1], text_starts[k]
        tables[i] = (words[a:b] if with_words else None, starts[a:b] - shift, ends[a:b] - shift, letters_only[a:b])
    return tables


def words_of(text: str) -> list[str]:
    """The words of `text` as strings (same split as :func:`split_words`, faster when the
    spans are not needed)."""
    return _word_re(text).findall(text)


def normalize_word(word: str) -> str:
    """The vocabulary form of a word: lower-cased with ``str.lower``."""
    return word.lower()


def _valid_entry(word: str) -> bool:
    """A word that can be a vocabulary entry: a non-empty string without whitespace
    (so one word per line always round-trips through the file)."""
    return isinstance(word, str) and bool(word) and not any(ch.isspace() for ch in word)


# ---- counting -----------------------------------------------------------------------------


class WordCounter:
    """Streaming, memory-bounded count of normalized words.

    Feed it texts with :meth:`add`. It keeps at most about `max_tracked` distinct words (plus
    the distinct words of the one text being added): whenever it tracks more, it prunes the
    rarest ones, dropping every entry whose count is <= a threshold, where the threshold is
    the smallest that brings the table down to ``max_tracked // 2`` entries (so a prune,
    costing one pass over the table, happens at most once per ``max_tracked // 2`` new words).

    After a prune the counts are approximate: a word dropped and seen again starts over, so
    its count is a lower bound, short by at most the sum of the thresholds of the prunes that
    dropped it. Only words that were among the rarest when a prune happened are affected;
    frequent words are never dropped, so the top-30k of any realistic corpus (whose 30k-th
    word occurs far more often than the prune thresholds) is exact. ``prunes`` and
    ``max_threshold`` tell whether and how much pruning happened. ``total`` (all word
    occurrences) is always exact.
    """

    def __init__(self, max_tracked: int = 2_000_000):
        if max_tracked < 1:
            raise ValueError(f"max_tracked must be >= 1; got {max_tracked}.")
        self.max_tracked = int(max_tracked)
        self.counts: Counter = Counter()
        self.total = 0
        self.prunes = 0
        self.max_threshold = 0

    def add(self, text: str) -> None:
        words = _word_re(text).findall(text)
        self.total += len(words)
        self.counts.update(map(str.lower, words))  # = normalize_word, at C speed
        if len(self.counts) > self.max_tracked:
            self.prune()

    def update(self, texts: Iterable[str]) -> WordCounter:
        for text in texts:
            self.add(text)
        return self

    def prune(self) -> None:
        """Drop the rarest entries (see the class docstring); one pass plus a histogram."""
        target = max(self.max_tracked // 2, 1)
        histogram = Counter(self.counts.values())
        remaining = len(self.counts)
        threshold = 0
        for count in sorted(histogram):
            if remaining <= target:
                break
            remaining -= histogram[count]
            threshold = count
        if threshold == 0:
            return
        self.counts = Counter({w: n for w, n in self.counts.items() if n > threshold})
        self.prunes += 1
        self.max_threshold = max(self.max_threshold, threshold)

    @property
    def approximate(self) -> bool:
        """True when a prune happened, so rare words' counts (and `distinct`) are approximate."""
        return self.prunes > 0

    @property
    def distinct(self) -> int:
        """Distinct words tracked now: exact when nothing was pruned, a lower bound otherwise."""
        return len(self.counts)


def count_corpus(lines: Iterable[str], max_tracked: int = 2_000_000) -> tuple[WordCounter, Counter]:
    """One pass over `lines` counting words (as :class:`WordVocab` does) and characters.

    Returns ``(word_counter, char_counts)``: a :class:`WordCounter` (``.counts``, ``.total``)
    and a ``Counter`` of the characters of the lines (bounded by nature: at most the number of
    distinct code points). Feed the results to ``WordVocab.from_counts`` and
    ``CharVocab.from_counts``.
    """
    words = WordCounter(max_tracked)
    chars: Counter = Counter()
    for line in lines:
        words.add(line)
        chars.update(line)
    return words, chars


# ---- vocabulary ---------------------------------------------------------------------------


class WordVocab:
    """Lower-cased words -> ids for the NLM head. Id 0 is ``[UNK]``, then the words in order.

    ``word in vocab`` is True exactly when ``vocab.id(word) != 0``; lookups normalize first, so
    ``vocab.id("The") == vocab.id("the")``.
    """

    UNK = "[UNK]"
    UNK_ID = 0

    def __init__(self, words: Sequence[str]):
        words = list(words)
        index: dict[str, int] = {}
        for i, word in enumerate(words, start=1):
            if not _valid_entry(word):
                raise ValueError(f"Not a valid vocabulary word (empty, not a string or holding whitespace): {word!r}.")
            if word == self.UNK:
                raise ValueError(f"{self.UNK} is id 0 implicitly; do not list it among the words.")
            if normalize_word(word) != word:
                raise ValueError(f"Vocabulary words are normalized (lower-cased); got {word!r}.")
            if word in index:
                raise ValueError(f"Word {word!r} appears twice in the vocabulary.")
            index[word] = i
        self.words: tuple[str, ...] = tuple(words)
        self._index = index
        self._id_to_word = (self.UNK,) + self.words

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def build(
        cls, texts: Iterable[str], max_size: int = 30000, min_count: int = 1, max_tracked: int = 2_000_000
    ) -> WordVocab:
        """The `max_size` most frequent normalized words of `texts` with count >= `min_count`.

        One streaming pass with bounded memory (see :class:`WordCounter` for the pruning of
        rare words beyond `max_tracked` distinct words and why it cannot change the top words
        of a realistic corpus). ``len(vocab) == max_size + 1`` ([UNK] extra) when the corpus
        has enough words.
        """
        return cls.from_counts(WordCounter(max_tracked).update(texts), max_size=max_size, min_count=min_count)

    @classmethod
    def from_counts(
        cls, counts: Mapping[str, int] | WordCounter, max_size: int = 30000, min_count: int = 1
    ) -> WordVocab:
        """The `max_size` most frequent words with count >= `min_count`, ordered by count
        (descending) then by the word itself (code points), so the result is deterministic.

        Counts are folded through :func:`normalize_word` first (``The`` and ``the`` add up);
        entries that cannot be vocabulary words (empty, holding whitespace or a newline) are
        ignored.
        """
        if isinstance(counts, WordCounter):
            counts = counts.counts
        if max_size < 0:
            raise ValueError(f"max_size must be >= 0; got {max_size}.")
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1; got {min_count}.")
        folded: Counter = Counter()
        for word, n in counts.items():
            if _valid_entry(word):
                folded[normalize_word(word)] += n
        candidates = ((-n, w) for w, n in folded.items() if n >= min_count)
        ranked = heapq.nsmallest(max_size, candidates)
        return cls([w for _, w in ranked])

    # ---- persistence ----------------------------------------------------------------------
    def save(self, path: PathLike) -> Path:
        """Write UTF-8 text, one word per line, ``[UNK]`` first (a directory gets
        ``word_vocab.txt`` inside it). Returns the file written."""
        path = Path(path)
        if path.is_dir():
            path = path / WORD_VOCAB_FILE
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(self._id_to_word) + "\n")
        return path

    @classmethod
    def load(cls, path: PathLike) -> WordVocab:
        """Read a file written by :meth:`save` (a directory means its ``word_vocab.txt``)."""
        path = Path(path)
        if path.is_dir():
            path = path / WORD_VOCAB_FILE
        if not path.is_file():
            raise FileNotFoundError(f"No word vocabulary at {path}.")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not a charbert word vocabulary (not UTF-8: {err}).") from None
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the final newline
        lines = [line[:-1] if line.endswith("\r") else line for line in lines]
        if not lines or lines[0].lstrip("\ufeff") != cls.UNK:
            head = lines[0][:40] if lines else ""
            raise ValueError(f"{path} is not a charbert word vocabulary (the first line must be {cls.UNK}, got {head!r}).")
        first_line: dict[str, int] = {}
        for number, word in enumerate(lines[1:], start=2):
            if not word:
                raise ValueError(f"{path}:{number}: empty line in a word vocabulary.")
            if not _valid_entry(word):
                raise ValueError(f"{path}:{number}: word {word!r} holds whitespace.")
            if word == cls.UNK or word in first_line:
                seen_at = 1 if word == cls.UNK else first_line[word]
                raise ValueError(f"{path}:{number}: duplicate word {word!r} (already on line {seen_at}).")
            if normalize_word(word) != word:
                raise ValueError(f"{path}:{number}: word {word!r} is not lower-cased.")
            first_line[word] = number
        return cls(lines[1:])

    # ---- lookup ---------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """A short hash of the id -> word assignment (saved in the model config as word_vocab_hash)."""
        from ..chars import vocab_fingerprint

        return vocab_fingerprint(self._id_to_word)

    def __len__(self) -> int:
        return len(self._id_to_word)

    def __contains__(self, word: object) -> bool:
        return isinstance(word, str) and normalize_word(word) in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WordVocab) and self.words == other.words

    __hash__ = None  # mutable-free but compared by content; not meant as a dict key

    def __repr__(self) -> str:
        head = ", ".join(repr(w) for w in self.words[:5])
        return f"WordVocab(size={len(self)}, words=[{head}{', ...' if len(self.words) > 5 else ''}])"

    def id(self, word: str) -> int:
        """Id of the normalized `word`; 0 ([UNK]) when absent."""
        return self._index.get(normalize_word(word), self.UNK_ID)

    def ids(self, words: Iterable[str]) -> np.ndarray:
        """Ids of `words`, shape (n,), int64."""
        get = self._index.get
        return np.fromiter((get(w.lower(), 0) for w in words), dtype=np.int64)

    def word(self, i: int) -> str:
        """The word with id `i` (``[UNK]`` for 0)."""
        i = int(i)
        if not 0 <= i < len(self._id_to_word):
            raise IndexError(f"Word id {i} out of range for a vocabulary of {len(self)}.")
        return self._id_to_word[i]
