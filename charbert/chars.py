"""Character vocabulary and the one alignment routine (offsets -> character ids + token spans).

The character channel reads the *original text*, not subword strings. A fast tokenizer gives
each token the span of text it covers (its offsets); from those we build, per sequence:

    char_ids   (C,)  [SPECIAL] + chars of segment A's covered text (+ [SEP] + chars of segment B's)
    starts     (L,)  index in char_ids of each token's first character
    ends       (L,)  index in char_ids of each token's last character

Special tokens ([CLS], [SEP], <s>, </s>, padding) point at position 0, which holds the
[SPECIAL] placeholder, so every token has a valid index and never borrows another token's
characters. WordPiece and byte-level BPE go through the same code: no `##` stripping, an
[UNK] token still sees its real characters, and the spaces between words stay visible.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import chain
from pathlib import Path

import numpy as np

CHAR_VOCAB_FILE = "char_vocab.json"
CHAR_VOCAB_FORMAT = "charbert-char-vocab"

PAD, UNK, MASK, SEP, SPECIAL = "[PAD]", "[UNK]", "[MASK]", "[SEP]", "[SPECIAL]"
SPECIAL_CHARS = (PAD, UNK, MASK, SEP, SPECIAL)  # ids 0..4, always in this order
PAD_ID, UNK_ID, MASK_ID, SEP_ID, SPECIAL_ID = range(5)

# The model inputs the character channel adds: named once, here.
CHAR_INPUT_NAMES = ("char_input_ids", "char_attention_mask", "char_start_positions", "char_end_positions")

# Code points below this always have a slot in the lookup table, so every Unicode space
# (U+00A0, U+2003, U+3000 ...) can be folded onto " ".
_MIN_TABLE_SIZE = 0x3001


def _default_chars() -> list[str]:
    """Printable ASCII, Latin-1 letters and common typographic marks: used when no vocabulary
    was built from a corpus (documented fallback of `CharBertTokenizer.from_pretrained`)."""
    chars = [chr(c) for c in range(0x20, 0x7F)]
    chars += [chr(c) for c in range(0xA1, 0x100) if chr(c).isprintable() and c != 0xAD]
    chars += list("\u2018\u2019\u201c\u201d\u2013\u2014\u2026\u20ac\u2022")
    return chars


class CharVocab:
    """Characters -> ids. Ids 0-4 are [PAD], [UNK], [MASK], [SEP], [SPECIAL]; then one id per character.

    Every whitespace character maps to the id of " " (tokenizers treat all whitespace alike); any
    character not in the vocabulary maps to [UNK]. No input string can make `encode` fail.
    """

    def __init__(self, chars: Sequence[str]):
        seen = set()
        for ch in chars:
            if not isinstance(ch, str) or len(ch) != 1:
                raise ValueError(f"A character vocabulary holds single characters; got {ch!r}.")
            if ch in seen:
                raise ValueError(f"Character {ch!r} appears twice in the vocabulary.")
            seen.add(ch)
        self.chars = list(chars)
        self.char_to_id = {ch: i + len(SPECIAL_CHARS) for i, ch in enumerate(self.chars)}
        self._table = self._lookup_table()

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def default(cls) -> CharVocab:
        return cls(_default_chars())

    @classmethod
    def from_counts(cls, counts: Counter | dict, max_size: int = 1024, min_count: int = 1) -> CharVocab:
        """The most frequent characters (ties broken by code point, so the result is deterministic),
        at most `max_size` ids in total including the 5 special ids. Whitespace is folded onto " "."""
        if max_size <= len(SPECIAL_CHARS):
            raise ValueError(f"max_size must exceed the {len(SPECIAL_CHARS)} special ids; got {max_size}.")
        folded: Counter = Counter()
        for ch, n in counts.items():
            folded[" " if ch.isspace() else ch] += n
        ranked = sorted((ch for ch, n in folded.items() if n >= min_count and len(ch) == 1), key=lambda c: (-folded[c], c))
        chars = ranked[: max_size - len(SPECIAL_CHARS)]
        if " " not in chars:  # the space is what separates words: always keep it
            chars = chars[:-1] + [" "] if len(chars) == max_size - len(SPECIAL_CHARS) else chars + [" "]
        return cls(chars)

    @classmethod
    def build(cls, texts: Iterable[str], max_size: int = 1024, min_count: int = 1) -> CharVocab:
        counts: Counter = Counter()
        for text in texts:
            counts.update(text)
        return cls.from_counts(counts, max_size=max_size, min_count=min_count)

    # ---- persistence --------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write a readable JSON file (a directory gets `char_vocab.json` inside it)."""
        path = Path(path)
        if path.is_dir():
            path = path / CHAR_VOCAB_FILE
        payload = {"format": CHAR_VOCAB_FORMAT, "version": 1, "special_tokens": list(SPECIAL_CHARS), "chars": self.chars}
        path.write_text(json.dumps(payload, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharVocab:
        path = Path(path)
        if path.is_dir():
            path = path / CHAR_VOCAB_FILE
        if not path.is_file():
            raise FileNotFoundError(f"No character vocabulary at {path}.")
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not a readable character vocabulary (JSON): {err}") from None
        if not isinstance(payload, dict) or payload.get("format") != CHAR_VOCAB_FORMAT:
            raise ValueError(f"{path} is not a charbert character vocabulary (missing format={CHAR_VOCAB_FORMAT!r}).")
        if payload.get("special_tokens") != list(SPECIAL_CHARS):
            raise ValueError(f"{path} has special tokens {payload.get('special_tokens')}, expected {list(SPECIAL_CHARS)}.")
        return cls(payload["chars"])

    # ---- lookup -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(SPECIAL_CHARS) + len(self.chars)

    def __eq__(self, other) -> bool:
        return isinstance(other, CharVocab) and self.chars == other.chars

    def fingerprint(self) -> str:
        """A short hash of the id -> character assignment (saved in the model config as char_vocab_hash)."""
        return vocab_fingerprint([*SPECIAL_CHARS, *self.chars])

    def _lookup_table(self) -> np.ndarray:
        """Dense code point -> id table; the last slot catches every code point beyond it."""
        max_cp = max([ord(c) for c in self.chars] + [_MIN_TABLE_SIZE - 1])
        table = np.full(max_cp + 2, UNK_ID, dtype=np.int64)
        for ch, i in self.char_to_id.items():
            table[ord(ch)] = i
        space_id = self.char_to_id.get(" ", UNK_ID)
        for cp in range(_MIN_TABLE_SIZE):
            if chr(cp).isspace():
                table[cp] = space_id
        return table

    def encode(self, text: str) -> np.ndarray:
        """Character ids of `text`, shape (len(text),), int64. Vectorised over code points."""
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        return self._table.take(codes, mode="clip")  # code points past the table: its last slot

    def decode(self, ids: Iterable[int]) -> str:
        """Inverse of encode for inspection: special ids print as their names."""
        out = []
        for i in ids:
            i = int(i)
            out.append(SPECIAL_CHARS[i] if i < len(SPECIAL_CHARS) else self.chars[i - len(SPECIAL_CHARS)])
        return "".join(out)


def vocab_fingerprint(entries: Sequence[str]) -> str:
    """16 hex digits of the SHA-256 of the entries in id order (any change of an entry or an id changes it)."""
    return hashlib.sha256(json.dumps(list(entries), ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def saved_char_limits(path: str | os.PathLike) -> dict[str, int | None]:
    """The max_chars_per_token / max_chars_per_sequence a checkpoint folder's config.json names
    (the defaults when it names none, or there is no config)."""
    limits: dict[str, int | None] = {"max_chars_per_token": MAX_CHARS_PER_TOKEN, "max_chars_per_sequence": None}
    file = Path(path) / "config.json"
    try:
        config = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        config = {}
    if isinstance(config, dict):
        limits.update({k: config[k] for k in limits if k in config})
    return limits


# ---- alignment -------------------------------------------------------------------------

# "offsets": the characters of the text each token covers (ours, the default for new models).
# "reference": the CharBERT authors' layout, built from the subword strings (converted checkpoints).
CHAR_LAYOUTS = ("offsets", "reference")
# The authors' `char_maxlen_for_word`: a row holds 6 characters per subword position.
REFERENCE_CHARS_PER_TOKEN = 6
# Bounded memory whatever the text ("offsets" layout): a token covering more characters than
# this (a URL, a 1 MB line without spaces that became one [UNK]) keeps its first and last
# characters (10 + 10), so its first/last GRU states still read the word's two ends; a run
# of text between two tokens (whitespace, characters the tokenizer dropped) is cut the same
# way. A row then holds at most 1 + L x 2 x MAX_CHARS_PER_TOKEN characters for L tokens.
MAX_CHARS_PER_TOKEN = 20


def check_char_layout(layout: str) -> str:
    if layout not in CHAR_LAYOUTS:
        raise ValueError(f"char_layout must be one of {CHAR_LAYOUTS}; got {layout!r}.")
    return layout


def align(
    offsets: np.ndarray,
    sequence_ids: Sequence[int | None],
    texts: Sequence[str],
    vocab: CharVocab,
    layout: str = "offsets",
    tokens: Sequence[str] | None = None,
    hidden: np.ndarray | None = None,
    unknown: np.ndarray | None = None,
    padding: np.ndarray | None = None,
    padded_tokens_last: bool = False,
    continuation_prefix: str | None = None,
    max_chars_per_token: int | None = MAX_CHARS_PER_TOKEN,
    max_chars_per_sequence: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Character ids and per-token first/last character positions for one tokenised sequence.

    Args:
        offsets: (L, 2) character offsets of each token into its own segment's text (fast tokenizer).
        sequence_ids: length L; 0/1 = which text the token comes from, None = special or padding token.
        texts: the segment texts (one, or two for a pair such as question/context).
        vocab: the character vocabulary.
        layout: "offsets" or "reference" (see `CHAR_LAYOUTS`).
        tokens: the L subword strings (the reference layout spells them).
        hidden: (L,) bool, tokens whose characters the model must not see (MLM-chosen): their
            characters become [MASK] ("offsets") or the token a single 0 ("reference", as the authors').
        unknown: (L,) bool, [UNK] tokens: the reference layout spells their text (offsets), not "[UNK]".
        padding: (L,) bool, the padding tokens (reference layout). They are laid out as special
            tokens (their GLUE code), or, with `padded_tokens_last`, left out and pointed at the
            row's last position (their NER and SQuAD code). Either way the row returned ends with
            the last real token: the padding's characters are 0s, what `pad_char_features` fills
            in, so the character mask covers exactly the real tokens.
        continuation_prefix: the WordPiece prefix ("##") the reference layout removes; None for BPE.
        max_chars_per_token: ("offsets") a longer token keeps its first and last characters (half of
            the budget each), and so does a longer run of text between tokens; None: no cap.
        max_chars_per_sequence: ("offsets") the row is cut after this many characters; tokens past
            the cut point at its last position. None: no cap beyond the per-token one. The
            reference layout ignores both: it is cut at 6 L, as the authors'.

    Returns:
        char_ids (C,), starts (L,), ends (L,), all int64.
        "offsets": special and padding tokens get 0/0 (the [SPECIAL] placeholder); a token with an
        empty span (possible with byte-level BPE on repeated spaces) points at its start character.
        "reference": C <= 6 L (padded to 6 L by `tokenization.pad_char_features`), see `_reference_layout`.
    """
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    if check_char_layout(layout) == "reference":
        if tokens is None or len(tokens) != len(offsets):
            raise ValueError("The reference layout spells the subword strings: pass tokens (one per offset).")
        return _reference_layout(offsets, sequence_ids, texts, vocab, tokens, hidden, unknown, padding, padded_tokens_last,
                                 continuation_prefix)
    segment = np.fromiter((-1 if s is None else s for s in sequence_ids), dtype=np.int64, count=len(offsets))
    char_ids, _, starts, ends = align_offsets_batch(offsets, np.zeros(len(offsets), dtype=np.int64), segment, [texts], vocab, 1,
                                                    hidden, max_chars_per_token, max_chars_per_sequence)
    return char_ids, starts, ends


def _token_spellings(offsets, sequence_ids, texts, vocab, tokens, hidden, unknown, prefix) -> list[np.ndarray | None]:
    """The characters the reference layout writes for each token; None = a single placeholder 0.

    As the authors: the subword string without its WordPiece prefix, RoBERTa's `Ġ` included;
    special and hidden tokens are a placeholder. Unlike theirs: only the prefix is removed
    (their `strip("##")` also eats every `#` at either end, so a lone `#` token vanished and
    shifted every later span), and an [UNK] token spells the text it covers, not nothing.
    """
    spellings: list[np.ndarray | None] = []
    for k, (token, segment) in enumerate(zip(tokens, sequence_ids)):
        if segment is None or (hidden is not None and hidden[k]):
            spellings.append(None)
            continue
        if unknown is not None and unknown[k]:
            s, e = offsets[k]
            chars = vocab.encode(texts[segment][s:e])
        else:
            if prefix and token.startswith(prefix) and len(token) > len(prefix):
                token = token[len(prefix):]
            chars = vocab.encode(token)
        spellings.append(chars if len(chars) else None)
    return spellings


def _reference_layout(offsets, sequence_ids, texts, vocab, tokens, hidden, unknown, padding, padded_tokens_last, prefix):
    """The authors' layout: each token's characters then a 0; a placeholder token is "0 0".

    The row is cut at 6 L characters (`pad_char_features` pads it with 0 = [PAD] to 6 L, as
    theirs). A token that starts past the cut, a padding token with `padded_tokens_last`, and
    the end of a token cut in the middle, point at the last position 6 L - 1 (what their code
    leaves in its position lists).
    """
    n_tokens = len(tokens)
    size = REFERENCE_CHARS_PER_TOKEN * n_tokens
    if n_tokens == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    spellings = _token_spellings(offsets, sequence_ids, texts, vocab, tokens, hidden, unknown, prefix)
    # Every token writes its characters (or one placeholder) and a 0 after them.
    written = np.array([2 if chars is None else len(chars) + 1 for chars in spellings], dtype=np.int64)
    is_padding = np.zeros(n_tokens, dtype=bool) if padding is None else np.asarray(padding, dtype=bool)
    if padded_tokens_last:
        written[is_padding] = 0
    starts = np.concatenate([[0], np.cumsum(written)[:-1]]).astype(np.int64)
    ends = starts + np.maximum(written - 2, 0)
    laid_out = written > 0
    starts = np.where(laid_out & (starts < size), starts, size - 1)
    ends = np.where(laid_out & (ends < size), ends, size - 1)
    # The row ends with the last real token: trailing padding blocks are 0s, what padding adds anyway.
    n_real = int(np.flatnonzero(~is_padding).max(initial=-1)) + 1
    blocks = [np.zeros(2, dtype=np.int64) if chars is None else np.append(chars, PAD_ID)
              for chars, n in zip(spellings[:n_real], written[:n_real]) if n > 0]
    row = np.concatenate(blocks)[:size] if blocks else np.zeros(0, dtype=np.int64)
    return row, starts, ends


def hide_characters(
    char_ids: np.ndarray, starts: np.ndarray, ends: np.ndarray, hidden: np.ndarray, mask_id: int = MASK_ID
) -> np.ndarray:
    """Replace the characters of the tokens flagged in `hidden` by `mask_id` (in a copy).

    Works on one sequence (C,), (L,) or on a padded batch (B, C), (B, L): the spans are
    marked with a difference array, so the cost is O(C + L), no loop over tokens.
    """
    char_ids = np.array(char_ids, copy=True)
    batched = char_ids.ndim == 2
    if not batched:
        char_ids, starts, ends, hidden = char_ids[None], starts[None], ends[None], np.asarray(hidden)[None]
    n_rows, n_chars = char_ids.shape
    delta = np.zeros((n_rows, n_chars + 1), dtype=np.int64)
    rows = np.broadcast_to(np.arange(n_rows)[:, None], starts.shape)
    flag = np.asarray(hidden, dtype=bool)
    np.add.at(delta, (rows[flag], starts[flag]), 1)
    np.add.at(delta, (rows[flag], ends[flag] + 1), -1)
    covered = np.cumsum(delta, axis=1)[:, :n_chars] > 0
    char_ids[covered] = mask_id
    return char_ids if batched else char_ids[0]


def align_offsets_batch(
    offsets: np.ndarray, row_of_token: np.ndarray, segment: np.ndarray, texts: Sequence[Sequence[str]], vocab: CharVocab,
    n_rows: int, hidden: np.ndarray | None = None, max_chars_per_token: int | None = MAX_CHARS_PER_TOKEN,
    max_chars_per_sequence: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """THE "offsets" layout (`align(..., layout="offsets")` is this with one row), vectorised over a batch.

    Each row is [SPECIAL] + the text its segment-A tokens cover (+ [SEP] + segment B's); tokens point
    at their first/last character, special and padding tokens at the placeholder (position 0).

    Args:
        offsets: (N, 2) the offsets of every token of the batch, rows one after the other.
        row_of_token: (N,) the row each token belongs to.
        segment: (N,) 0/1 = which text of its row the token comes from, -1 = special or padding token.
        texts: per row, its segment texts (one, or two for a pair).
        hidden: (N,) bool, tokens whose characters become [MASK] (see `align`).
        max_chars_per_token, max_chars_per_sequence: the caps of `align`.

    Returns:
        chars (C_total,) the rows' character ids one after the other; row_starts (B + 1,) where each
        row's characters begin in `chars`; starts, ends (N,) each token's first/last character
        position within its own row.
    """
    if max_chars_per_token is not None and max_chars_per_token < 2:
        raise ValueError(f"max_chars_per_token must be >= 2 (a first and a last character); got {max_chars_per_token}.")
    if max_chars_per_sequence is not None and max_chars_per_sequence < 1:
        raise ValueError(f"max_chars_per_sequence must be >= 1; got {max_chars_per_sequence}.")
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    row_of_token = np.asarray(row_of_token, dtype=np.int64)
    segment = np.asarray(segment, dtype=np.int64)
    real = segment >= 0  # the tokens of a text (not special, not padding)
    # One group per (row, segment) that has tokens, laid out in that order.
    n_segments = max(2, int(segment.max(initial=0)) + 1)
    group_key = row_of_token[real] * n_segments + segment[real]
    if len(group_key) > 1 and np.any(group_key[1:] < group_key[:-1]):
        return _in_group_order(offsets, row_of_token, segment, texts, vocab, n_rows, hidden, max_chars_per_token,
                               max_chars_per_sequence)
    is_first = np.empty(len(group_key), dtype=bool)
    is_first[:1] = True
    np.not_equal(group_key[1:], group_key[:-1], out=is_first[1:])
    group_starts = np.flatnonzero(is_first)
    group_sizes = np.empty_like(group_starts)  # each group's tokens, one run after the other
    np.subtract(group_starts[1:], group_starts[:-1], out=group_sizes[:-1])
    group_sizes[-1:] = len(group_key) - group_starts[-1:]
    keys = group_key[group_starts]
    group_row, group_seg = keys // n_segments, keys % n_segments
    n_groups = len(keys)
    token_first, token_last = offsets[:, 0][real], offsets[:, 1][real]
    first = np.minimum.reduceat(token_first, group_starts) if n_groups else np.zeros(0, dtype=np.int64)
    last = np.maximum.reduceat(token_last, group_starts) if n_groups else np.zeros(0, dtype=np.int64)
    one_text_per_row = n_groups == n_rows and not group_seg.any()  # then group i is row i's text: the common case
    if one_text_per_row:
        pieces = [row_texts[0][a:b] for row_texts, a, b in zip(texts, first.tolist(), last.tolist())]
    else:
        pieces = []  # the text each group's tokens cover
        for row, seg, a, b in zip(group_row.tolist(), group_seg.tolist(), first.tolist(), last.tolist()):
            row_texts = texts[row]
            if seg >= len(row_texts):
                raise ValueError(f"The encoding has segment {seg} but only {len(row_texts)} text(s) were given.")
            pieces.append(row_texts[seg][a:b])
    lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=n_groups)
    # Row layout: [SPECIAL] + group chars, with a [SEP] before every segment after the first.
    sep = (group_seg > 0).astype(np.int64)
    width = sep + lengths
    row_len = 1 + np.bincount(group_row, weights=width, minlength=n_rows).astype(np.int64)
    row_starts = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(row_len, out=row_starts[1:])
    opens_row = np.ones(n_groups, dtype=bool)
    opens_row[1:] = group_row[1:] != group_row[:-1]
    # Where each group's characters start in `chars`: a [SPECIAL] per row so far, and the groups (and [SEP]s) before it.
    group_origin = group_row + 1 + np.cumsum(width) - lengths
    if np.count_nonzero(opens_row) == n_rows:  # every row has text: the batch in one string, one code per placeholder
        if one_text_per_row:  # " " before each row's text: its [SPECIAL] placeholder
            chars = vocab.encode(" " + " ".join(pieces))  # (C_total,)
        else:
            placeholders = [("", " ", "  ")[k] for k in (opens_row + sep).tolist()]
            chars = vocab.encode("".join(chain.from_iterable(zip(placeholders, pieces))))  # (C_total,)
    else:  # rows with no text at all (empty strings): scatter the groups' characters into place
        encoded = vocab.encode("".join(pieces))
        chars = np.zeros(int(row_starts[-1]), dtype=np.int64)
        chars[np.repeat(group_origin - (np.cumsum(lengths) - lengths), lengths) + np.arange(len(encoded))] = encoded
    chars[row_starts[:-1]] = SPECIAL_ID
    chars[group_origin[sep > 0] - 1] = SEP_ID
    # Token spans within their row; a group that covers no character leaves its tokens on the placeholder.
    group_in_row = group_origin - row_starts[group_row]
    shift, limit = np.repeat(group_in_row - first, group_sizes), np.repeat(group_in_row + lengths - 1, group_sizes)
    real_starts = token_first + shift
    real_ends = np.minimum(np.maximum(token_last - 1 + shift, real_starts), limit)  # an empty span: its start character
    np.minimum(real_starts, limit, out=real_starts)
    _skip_leading_spaces(chars, np.repeat(row_starts[group_row], group_sizes), real_starts, real_ends, vocab)
    covers = None if np.all(lengths) else np.repeat(lengths > 0, group_sizes)
    if covers is not None:
        real_starts[~covers], real_ends[~covers] = 0, 0
    starts, ends = np.zeros(len(segment), dtype=np.int64), np.zeros(len(segment), dtype=np.int64)
    starts[real], ends[real] = real_starts, real_ends
    if max_chars_per_token is not None and _has_long_span(real_starts, real_ends, is_first, max_chars_per_token):
        token_origin = row_starts[row_of_token]
        in_text = np.flatnonzero(real) if covers is None else np.flatnonzero(real)[covers]  # tokens that cover characters
        chars, row_starts, starts, ends = _keep_span_ends(chars, row_starts, starts + token_origin, ends + token_origin,
                                                          in_text, group_origin, lengths, max_chars_per_token)
        token_origin = row_starts[row_of_token]
        starts, ends = starts - token_origin, ends - token_origin
    if max_chars_per_sequence is not None and np.diff(row_starts).max(initial=0) > max_chars_per_sequence:
        # Tokens past the cut point at the row's last kept position.
        chars, row_starts = _cut_rows(chars, row_starts, max_chars_per_sequence)
        np.minimum(starts, max_chars_per_sequence - 1, out=starts)
        np.minimum(ends, max_chars_per_sequence - 1, out=ends)
    if hidden is not None and np.any(hidden):
        flag = np.asarray(hidden, dtype=bool)
        token_origin = row_starts[row_of_token[flag]]
        size = len(chars) + 1
        delta = np.bincount(starts[flag] + token_origin, minlength=size) - np.bincount(ends[flag] + 1 + token_origin, minlength=size)
        chars[np.cumsum(delta)[:-1] > 0] = MASK_ID
    return chars, row_starts, starts, ends


def _skip_leading_spaces(chars, token_origin, starts, ends, vocab) -> None:
    """Move the first character of a token whose span starts with spaces onto its first other character
    (in place). SentencePiece's offsets count the space its "▁" stands for as part of the word's first
    piece ("▁world" covers " world"); the token's first character is the word's. A span of spaces only
    (a lone "▁") keeps its last one. WordPiece and trimmed byte-level BPE offsets never start with one."""
    space = vocab.encode(" ")
    if not len(space):
        return
    while True:
        lead = (starts < ends) & (chars[token_origin + starts] == space[0])
        if not lead.any():
            return
        starts[lead] += 1


def _in_group_order(offsets, row_of_token, segment, texts, vocab, n_rows, hidden, *caps):
    """`align_offsets_batch` of tokens that do not come row by row, segment A before B (a hand-made
    sequence_ids list): laid out in that order, positions returned in the tokens' own order."""
    order = np.lexsort((segment, row_of_token))
    chars, row_starts, s, e = align_offsets_batch(offsets[order], row_of_token[order], segment[order], texts, vocab, n_rows,
                                                  None if hidden is None else np.asarray(hidden)[order], *caps)
    starts, ends = np.empty_like(s), np.empty_like(e)
    starts[order], ends[order] = s, e
    return chars, row_starts, starts, ends


def _has_long_span(s: np.ndarray, e: np.ndarray, opens_group: np.ndarray, cap: int) -> bool:
    """Whether a token, or what lies between two neighbouring tokens of one group, spans more than `cap`
    characters (a cheap test that never misses one; `_keep_span_ends` then finds them exactly)."""
    if not len(s):
        return False
    if (e - s).max() >= cap:
        return True
    same = ~opens_group[1:]
    return bool(np.any(same & ((s[1:] - e[:-1] - 1 > cap) | (s[1:] < s[:-1]))))


def _keep_span_ends(chars, row_starts, starts, ends, in_text, group_origin, lengths, cap):
    """Cut every token span and every run of text between spans longer than `cap` to its first
    (cap+1)//2 and last cap//2 characters; the placeholders stay. Positions are in `chars` coordinates."""
    head, tail = (cap + 1) // 2, cap // 2
    size = len(chars) + 1
    s, e = starts[in_text], ends[in_text] + 1  # token spans [s, e)
    covered = np.cumsum(np.bincount(s, minlength=size) - np.bincount(e, minlength=size))[:-1] > 0
    in_group = np.cumsum(np.bincount(group_origin, minlength=size) - np.bincount(group_origin + lengths, minlength=size))[:-1] > 0
    # Runs of a group's text that no token covers (between tokens: each group's first and last characters are covered).
    edges = np.diff(np.concatenate([[0], (in_group & ~covered).astype(np.int8), [0]]))
    lo, hi = np.concatenate([s, np.flatnonzero(edges == 1)]), np.concatenate([e, np.flatnonzero(edges == -1)])
    short = hi - lo <= cap
    cut_lo, cut_hi = np.where(short, hi, lo + head), np.where(short, hi, hi - tail)  # [lo, cut_lo) and [cut_hi, hi) stay
    delta = (np.bincount(lo, minlength=size) - np.bincount(cut_lo, minlength=size)
             + np.bincount(cut_hi, minlength=size) - np.bincount(hi, minlength=size))
    kept = (np.cumsum(delta)[:-1] > 0) | ~in_group
    index = np.cumsum(kept) - 1  # old position -> position among the kept ones
    new_row_starts = np.append(index[row_starts[:-1]], np.count_nonzero(kept))
    return chars[kept], new_row_starts, index[starts], index[ends]


def _cut_rows(chars: np.ndarray, row_starts: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Every row cut after `limit` characters."""
    row_len = np.diff(row_starts)
    position = np.arange(len(chars)) - np.repeat(row_starts[:-1], row_len)
    new_row_starts = np.zeros_like(row_starts)
    np.cumsum(np.minimum(row_len, limit), out=new_row_starts[1:])
    return chars[position < limit], new_row_starts
