"""Part-of-speech tagging: CoNLL-U and token<TAB>tag readers, accuracy.

Model independent.  Sentences are :class:`charbert.tasks.ner.Sentence`
objects (tokens, tags, first line), so POS and NER share the feature code.
Errors: :class:`~charbert.tasks.errors.TaskDataError` with ``file:line``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .errors import PathLike, TaskDataError, data_error, read_text_lines
from .ner import Sentence, check_labels, label_list

__all__ = [
    "TaskDataError",
    "Sentence",
    "read_conllu",
    "read_token_tag",
    "read_pos",
    "pos_accuracy",
    "check_labels",
    "label_list",
    "write_pos_predictions",
]

_CONLLU_TAG_INDEX = {"upos": 3, "xpos": 4}


def _sentences_from_blocks(path, rows, finish) -> list[Sentence]:
    """Group ``(lineno, token, tag)`` rows (``None`` = boundary) into sentences."""
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    lines: list[int] = []
    for row in rows:
        if row is None:
            if tokens:
                sentences.append(Sentence(tokens, tags, lines[0], lines))
            tokens, tags, lines = [], [], []
            continue
        lineno, token, tag = row
        tokens.append(token)
        tags.append(tag)
        lines.append(lineno)
    if tokens:
        sentences.append(Sentence(tokens, tags, lines[0], lines))
    if not sentences:
        raise data_error(path, None, f"file contains no {finish}")
    return sentences


def read_conllu(path: PathLike, tag_column: str = "upos") -> list[Sentence]:
    """Read a CoNLL-U file (Universal Dependencies) into tagged sentences.

    Args:
        tag_column: ``"upos"`` (column 4, universal tags) or ``"xpos"``
            (column 5, language-specific tags: PTB tags for English EWT).

    ``#`` comment lines, multiword-token ranges (``1-2``) and empty nodes
    (``1.1``) are skipped: only syntactic words carry a POS tag, and the
    words of a range are listed on their own lines.  A token line must have
    exactly 10 tab-separated columns; a ``_`` (missing) tag is an error, as
    it would silently become a class of its own.
    """
    key = tag_column.lower()
    if key not in _CONLLU_TAG_INDEX:
        raise ValueError(f"tag_column must be 'upos' or 'xpos', got {tag_column!r}")
    tag_idx = _CONLLU_TAG_INDEX[key]

    def rows():
        for lineno, line in enumerate(read_text_lines(path), start=1):
            if not line.strip():
                yield None
                continue
            if line.startswith("#"):
                continue
            fields = line.split("\t")  # FORM may contain spaces: split on tabs only
            if len(fields) != 10:
                raise data_error(
                    path, lineno, f"expected 10 tab-separated CoNLL-U columns, found {len(fields)}"
                )
            word_id = fields[0]
            if "-" in word_id or "." in word_id:
                continue  # multiword range or empty node
            if not word_id.isdigit():
                raise data_error(path, lineno, f"invalid CoNLL-U ID {word_id!r}")
            tag = fields[tag_idx]
            if tag == "_":
                raise data_error(path, lineno, f"token {fields[1]!r} has no {key.upper()} tag ('_')")
            yield lineno, fields[1], tag

    return _sentences_from_blocks(path, rows(), "sentences")


def read_token_tag(path: PathLike) -> list[Sentence]:
    """Read ``token<TAB>tag`` lines, a blank line between sentences."""

    def rows():
        for lineno, line in enumerate(read_text_lines(path), start=1):
            if not line.strip():
                yield None
                continue
            fields = line.split("\t")
            if len(fields) != 2 or not fields[0] or not fields[1].strip():
                raise data_error(
                    path, lineno,
                    f"expected 'token<TAB>tag' (2 tab-separated columns), found {len(fields)} column(s)",
                )
            yield lineno, fields[0], fields[1].strip()

    return _sentences_from_blocks(path, rows(), "sentences")


def read_pos(path: PathLike, tag_column: str = "upos") -> list[Sentence]:
    """Read POS data by extension: ``.conllu`` -> :func:`read_conllu`, else
    :func:`read_token_tag` (where ``tag_column`` does not apply)."""
    if os.fspath(path).lower().endswith(".conllu"):
        return read_conllu(path, tag_column=tag_column)
    return read_token_tag(path)


def pos_accuracy(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Token accuracy ``{"accuracy": fraction}``; sentences must align in length."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted sentences")
    correct = total = 0
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted tags")
        correct += sum(a == b for a, b in zip(g, p))
        total += len(g)
    if total == 0:
        raise ValueError("pos_accuracy needs at least one token")
    return {"accuracy": correct / total}


def write_pos_predictions(path: PathLike, sentences: Sequence[Sentence], predictions: Sequence[Sequence[str]]) -> None:
    """``token<TAB>gold<TAB>pred`` lines (``token<TAB>pred`` for unlabelled sentences), a blank
    line between sentences: aligned token for token with the input file."""
    if len(sentences) != len(predictions):
        raise ValueError(f"{len(sentences)} sentences but {len(predictions)} prediction lists")
    blocks = []
    for i, (sent, pred) in enumerate(zip(sentences, predictions)):
        if len(pred) != len(sent.tokens):
            raise ValueError(f"sentence {i} (line {sent.line}): {len(sent.tokens)} tokens but {len(pred)} tags")
        rows = []
        for k, (tok, p) in enumerate(zip(sent.tokens, pred)):
            rows.append("\t".join([tok] + ([sent.tags[k]] if sent.tags is not None else []) + [p]))
        blocks.append("\n".join(rows))
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n\n".join(blocks) + "\n")
