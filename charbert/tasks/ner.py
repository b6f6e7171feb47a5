"""Named-entity recognition: CoNLL reader/writer, IOB handling and metrics.

Model independent.  Tags are strings in the IOB2 scheme (``O``, ``B-TYPE``,
``I-TYPE``); :func:`read_conll` converts IOB1 input to IOB2 so training
targets and evaluation always use one scheme.  :func:`get_entities` and
:func:`ner_metrics` follow ``seqeval`` with ``mode="strict", scheme=IOB2``
exactly (checked against seqeval in ``tests/test_task_metrics.py``), the
standard way CoNLL-2003 results are reported.

Errors: bad input raises :class:`~charbert.tasks.errors.TaskDataError`
(a ``ValueError``) with ``file:line`` in its message.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PathLike, TaskDataError, data_error, location, read_text_lines

__all__ = [
    "TaskDataError",
    "Sentence",
    "read_conll",
    "to_iob2",
    "get_entities",
    "ner_metrics",
    "ner_subword_breakdown",
    "write_conll",
    "label_list",
    "check_labels",
    "aligned_columns",
    "conll_num_columns",
    "read_label_file",
    "docstart_kind",
]


@dataclass
class Sentence:
    """A tokenized sentence with one tag per token.

    Attributes:
        tokens: the words.
        tags: one tag per token, or ``None`` for unlabelled input.
        line: 1-based line number of the first token in the source file.
        token_lines: 1-based line number of every token (for error messages
            about a single token, e.g. an unseen label).
    """

    tokens: list[str]
    tags: list[str] | None
    line: int
    token_lines: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)


def _check_iob_tag(tag: str, path: PathLike, lineno: int) -> None:
    if tag == "O" or (len(tag) > 2 and tag[:2] in ("B-", "I-")):
        return
    raise data_error(
        path, lineno,
        f"tag {tag!r} is not an IOB tag (expected 'O', 'B-TYPE' or 'I-TYPE'); "
        "convert other schemes (BIOES, BILOU) before reading",
    )


def to_iob2(tags: Sequence[str]) -> list[str]:
    """Convert IOB1 (or mixed) tags to IOB2; IOB2 input is returned unchanged.

    In IOB1 an entity may begin with ``I-``; IOB2 requires ``B-``.  An
    ``I-X`` becomes ``B-X`` when it starts the sentence, follows ``O``, or
    follows a tag of another type.
    """
    out = list(tags)
    for i, tag in enumerate(tags):
        if tag.startswith("I-"):
            prev = tags[i - 1] if i > 0 else "O"
            if prev == "O" or prev[2:] != tag[2:]:
                out[i] = "B-" + tag[2:]
    return out


DOCSTART = "-DOCSTART-"


def _osa_distance(a: str, b: str) -> int:
    """Edit distance with adjacent transpositions (optimal string alignment)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def docstart_kind(fields: Sequence[str]) -> str | None:
    """``"exact"`` for a ``-DOCSTART-`` line, ``"misspelt"`` for one whose marker was itself attacked
    (TextFlint's perturbed CoNLL sets write ``-DCOSTART-``), else None.

    A misspelt marker is within two edits (transpositions count one) of ``-DOCSTART-`` and the rest of
    its line is what a document line carries (``-X-`` columns, tag ``O``): no real token is that close.
    """
    if not fields:
        return None
    if fields[0] == DOCSTART:
        return "exact"
    head = fields[0]
    if abs(len(head) - len(DOCSTART)) <= 2 and _osa_distance(head.upper(), DOCSTART) <= 2 \
            and all(f in ("-X-", "O") for f in fields[1:]):
        return "misspelt"
    return None


def _repair_fields(fields: list[str], n_columns: int, token_column: int) -> list[str] | None:
    """A line with more fields than the file's columns, read as one token that contains spaces
    (``S & P NNP I-NP I-ORG`` -> ``["S & P", "NNP", "I-NP", "I-ORG"]``), or None when ambiguous.

    Only the token column may hold the extra fields, so this needs the token first and at least
    two more columns anchored at the line's end (CoNLL-2003's POS, chunk and NER tags): in a
    ``token tag`` file an extra field could be a stray tag as well as a piece of the token.
    """
    if n_columns < 3 or token_column % n_columns != 0 or len(fields) <= n_columns:
        return None
    extra = len(fields) - n_columns
    return [" ".join(fields[: extra + 1])] + fields[extra + 1 :]


def read_conll(
    path: PathLike,
    token_column: int = 0,
    tag_column: int = -1,
    labelled: bool = True,
    convert_to_iob2: bool = True,
    stats: dict[str, int] | None = None,
    n_columns: int | None = None,
    columns_from: str | None = None,
) -> list[Sentence]:
    """Read a CoNLL-style file (CoNLL-2003: ``token POS chunk NER``).

    * Columns are whitespace-separated; every token line must have as many
      columns as the first one (else :class:`TaskDataError` with file:line),
      except that a line with *more* fields in a file of three or more
      columns is read as one token containing spaces plus the usual tag
      columns (the CharBERT authors' attacked CoNLL test has ``S & P``,
      ``C $``; see :func:`_repair_fields`).
    * A blank line ends a sentence; ``-DOCSTART-`` lines, also misspelt ones
      (:func:`docstart_kind`), are skipped (and end the current sentence);
      empty sentences are never produced.
    * ``labelled=False`` reads only ``token_column`` (token-only files for
      prediction); ``tags`` is then ``None``.
    * Tags must be ``O``/``B-X``/``I-X``; with ``convert_to_iob2`` (default)
      IOB1 sentences are converted to IOB2 (:func:`to_iob2`).
    * ``stats``, when given, receives ``repaired_lines`` (tokens with spaces)
      and ``misspelt_docstart_lines``.
    * ``n_columns`` gives the column count instead of the first token line
      (an attacked file whose *first* token holds a space takes it from the
      clean file it aligns with, named by ``columns_from`` in errors).
    """
    lines = read_text_lines(path)
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    token_lines: list[int] = []
    given_columns, n_columns = n_columns, None
    first_token_line = 0
    counts = {"repaired_lines": 0, "misspelt_docstart_lines": 0}

    def flush() -> None:
        nonlocal tokens, tags, token_lines
        if tokens:
            sent_tags = (to_iob2(tags) if convert_to_iob2 else tags) if labelled else None
            sentences.append(Sentence(tokens, sent_tags, token_lines[0], token_lines))
        tokens, tags, token_lines = [], [], []

    for lineno, raw in enumerate(lines, start=1):
        fields = raw.split()
        if not fields:
            flush()
            continue
        kind = docstart_kind(fields)
        if kind is not None:
            counts["misspelt_docstart_lines"] += kind == "misspelt"
            flush()
            continue
        if n_columns is None:
            n_columns, first_token_line = given_columns or len(fields), lineno
            needed = [token_column] + ([tag_column] if labelled else [])
            for col in needed:
                if not -n_columns <= col < n_columns:
                    raise data_error(
                        path, lineno,
                        f"column {col} does not exist: the file has {n_columns} column(s)",
                    )
            if labelled and (token_column % n_columns) == (tag_column % n_columns):
                raise data_error(
                    path, lineno,
                    f"token and tag column are the same column ({n_columns} column(s) per line); "
                    "use labelled=False for token-only files",
                )
        if len(fields) != n_columns:  # (the first line too, when the count was given)
            repaired = _repair_fields(fields, n_columns, token_column)
            if repaired is None:
                raise data_error(
                    path, lineno,
                    f"expected {n_columns} whitespace-separated columns (as "
                    + (columns_from or f"on line {first_token_line}") + f"), found {len(fields)}",
                )
            fields = repaired
            counts["repaired_lines"] += 1
        tokens.append(fields[token_column])
        token_lines.append(lineno)
        if labelled:
            tag = fields[tag_column]
            _check_iob_tag(tag, path, lineno)
            tags.append(tag)
    flush()
    if not sentences:
        raise data_error(path, None, "file contains no sentences")
    if stats is not None:
        stats.update(counts)
    return sentences


def _split_tag(tag: str) -> tuple[str, str]:
    """(prefix, type) exactly as seqeval's ``Token`` parses a tag."""
    if not tag or tag[0] not in "BIO":
        raise ValueError(f"invalid IOB2 tag {tag!r}: expected 'O', 'B-TYPE' or 'I-TYPE'")
    return tag[0], tag[1:].strip("-") or "_"


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entities ``(type, start, end_inclusive)`` under strict IOB2.

    Same result as ``seqeval`` with ``mode="strict", scheme=IOB2``: an entity
    starts at ``B-X`` and extends over the following ``I-X``; anything else
    ends it.  An ``I-X`` that does not continue a ``B-X``/``I-X`` run (after
    ``O``, at the start, or after another type) belongs to no entity, so
    ``B-PER I-LOC`` is one entity (PER over token 0) and ``O I-PER`` none.
    Adjacent ``B-PER B-PER`` are two entities.
    """
    parsed = [_split_tag(t) for t in tags]
    entities: list[tuple[str, int, int]] = []
    i, n = 0, len(parsed)
    while i < n:
        prefix, typ = parsed[i]
        if prefix != "B":
            i += 1
            continue
        j = i + 1
        while j < n and parsed[j] == ("I", typ):
            j += 1
        entities.append((typ, i, j - 1))
        i = j
    return entities


def _check_lengths(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], what: str) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted sentences")
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(
                f"sentence {i}: {len(g)} gold {what} but {len(p)} predicted {what}"
            )


def _prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    # Zero denominators give 0.0, as seqeval (zero_division="warn" -> 0).
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def ner_metrics(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, object]:
    """Entity-level micro precision/recall/F1, token accuracy, per-type scores.

    Args:
        gold, pred: one tag list per sentence (IOB2 strings), same lengths.

    Returns:
        ``{"precision", "recall", "f1", "accuracy", "per_type"}`` where
        ``per_type[TYPE] = {"precision", "recall", "f1", "support"}``
        (support = number of gold entities) for every type found in gold or
        predictions.  Fractions in [0, 1].
    """
    _check_lengths(gold, pred, "tags")
    n_tokens = sum(len(g) for g in gold)
    if n_tokens == 0:
        raise ValueError("ner_metrics needs at least one token")
    correct_tokens = sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p))

    gold_ents = {(s, *e) for s, g in enumerate(gold) for e in get_entities(g)}
    pred_ents = {(s, *e) for s, p in enumerate(pred) for e in get_entities(p)}
    hits = gold_ents & pred_ents
    gold_by_type = Counter(e[1] for e in gold_ents)
    pred_by_type = Counter(e[1] for e in pred_ents)
    hit_by_type = Counter(e[1] for e in hits)

    precision, recall, f1 = _prf(len(hits), len(pred_ents), len(gold_ents))
    per_type: dict[str, dict[str, float]] = {}
    for typ in sorted(set(gold_by_type) | set(pred_by_type)):
        p, r, f = _prf(hit_by_type[typ], pred_by_type[typ], gold_by_type[typ])
        per_type[typ] = {"precision": p, "recall": r, "f1": f, "support": gold_by_type[typ]}
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "accuracy": correct_tokens / n_tokens,
        "per_type": per_type,
    }


def ner_subword_breakdown(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]],
                          num_subwords: Sequence[Sequence[int]]) -> dict[str, dict[str, float]]:
    """Entity scores split by how the tokenizer cut the entity's words.

    ``single``: every word of the entity span is one subword; ``multi``: at least one word
    was split into several (or lost to truncation, 0 subwords).  The group is a property of
    the span, so gold and predicted entities over the same span fall in the same group and
    precision, recall and F1 are well defined per group.  Under a character attack words
    move from ``single`` to ``multi``: this shows whether a model copes with words it sees as
    unfamiliar pieces.  Returns ``{group: {"precision", "recall", "f1", "support"}}``
    (support = gold entities in the group).
    """
    _check_lengths(gold, pred, "tags")
    _check_lengths(gold, num_subwords, "subword counts")

    def group(s: int, start: int, end: int) -> str:
        return "single" if all(n == 1 for n in num_subwords[s][start:end + 1]) else "multi"

    gold_ents = {(s, *e) for s, g in enumerate(gold) for e in get_entities(g)}
    pred_ents = {(s, *e) for s, p in enumerate(pred) for e in get_entities(p)}
    counts = {name: Counter() for name in ("single", "multi")}
    for ents, key in ((gold_ents, "gold"), (pred_ents, "pred"), (gold_ents & pred_ents, "hit")):
        for s, _, a, b in ents:
            counts[group(s, a, b)][key] += 1
    out: dict[str, dict[str, float]] = {}
    for name, c in counts.items():
        p, r, f = _prf(c["hit"], c["pred"], c["gold"])
        out[name] = {"precision": p, "recall": r, "f1": f, "support": c["gold"]}
    return out


def write_conll(path: PathLike, sentences: Sequence[Sentence], predictions: Sequence[Sequence[str]]) -> None:
    """Write ``token gold pred`` lines (``token pred`` for unlabelled sentences).

    One line per input token, in input order, a blank line between
    sentences: the format ``conlleval`` reads, aligned token for token with
    the file the sentences came from.
    """
    if len(sentences) != len(predictions):
        raise ValueError(f"{len(sentences)} sentences but {len(predictions)} prediction lists")
    blocks = []
    for i, (sent, pred) in enumerate(zip(sentences, predictions)):
        if len(pred) != len(sent.tokens):
            raise ValueError(
                f"sentence {i} (line {sent.line}): {len(sent.tokens)} tokens but {len(pred)} predicted tags"
            )
        rows = []
        for k, (tok, p) in enumerate(zip(sent.tokens, pred)):
            tok = "_".join(tok.split())  # a token read with spaces ("S & P") stays one column
            cols = [tok] + ([sent.tags[k]] if sent.tags is not None else []) + [p]
            if any(not c or any(ch.isspace() for ch in c) for c in cols):
                raise ValueError(f"sentence {i}, token {k}: empty or whitespace-containing field in {cols!r}")
            rows.append(" ".join(cols))
        blocks.append("\n".join(rows))
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n\n".join(blocks))
        f.write("\n")


def _tag_lists(items: Iterable[Sentence | Sequence[str]]) -> Iterable[Sequence[str]]:
    for item in items:
        if isinstance(item, Sentence):
            if item.tags is not None:
                yield item.tags
        else:
            yield item


def label_list(sentences: Iterable[Sentence | Sequence[str]]) -> list[str]:
    """Sorted tags seen in ``sentences`` (Sentences or tag lists), ``"O"`` first.

    Label id = index in this list; keep the list with the model (it is what
    maps ids back to tags at prediction time).
    """
    seen = {t for tags in _tag_lists(sentences) for t in tags}
    return (["O"] if "O" in seen else []) + sorted(seen - {"O"})


def check_labels(
    dev_labels: Iterable[Sentence | Sequence[str] | str],
    train_label_list: Sequence[str],
    path: PathLike,
) -> None:
    """Fail if the dev/test data uses a tag never seen in training.

    A model cannot predict a label it has no output for, and mapping it to
    some id would corrupt the score silently.

    Args:
        dev_labels: Sentences (their ``token_lines`` give the exact line),
            tag lists, or a flat iterable of tag strings.
        train_label_list: the labels of the training set.
        path: the dev file, named in the error.

    Raises:
        TaskDataError: ``file:line: label 'X' ...`` for the first unseen
            label (line when known), listing every unseen label.
    """
    known = set(train_label_list)
    first: tuple[str, int | None] | None = None
    unseen = set()
    for item in dev_labels:
        if isinstance(item, Sentence):
            if item.tags is None:
                continue
            lines = item.token_lines or [item.line] * len(item.tags)
            pairs = zip(item.tags, lines)
        elif isinstance(item, str):
            pairs = iter([(item, None)])
        else:
            pairs = ((t, None) for t in item)
        for tag, line in pairs:
            if tag not in known:
                unseen.add(tag)
                if first is None:
                    first = (tag, line)
    if first is not None:
        tag, line = first
        raise TaskDataError(
            f"{location(path, line)}: label {tag!r} never occurs in the training data "
            f"(unseen labels: {sorted(unseen)}; training labels: {list(train_label_list)})"
        )


def conll_num_columns(path: PathLike) -> int:
    """Columns of the first token line (``-DOCSTART-`` and blank lines skipped); 1 means an
    unlabelled token-only file."""
    for raw in read_text_lines(path):
        fields = raw.split()
        if fields and docstart_kind(fields) is None:
            return len(fields)
    raise data_error(path, None, "file contains no sentences")


def aligned_columns(path, clean_file) -> dict:
    """read_conll's column count for a file that aligns with the clean ``clean_file`` (an attacked copy):
    the clean file's, since the copy's first token may hold a space (``S & P``); {} for the clean file itself."""
    if not clean_file or Path(path) == Path(clean_file):
        return {}
    return {"n_columns": conll_num_columns(clean_file), "columns_from": f"in the clean --test_file {clean_file}"}


def read_label_file(path: PathLike) -> list[str]:
    """A label list, one label a line (blank lines skipped); duplicates are an error."""
    labels: list[str] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(read_text_lines(path), start=1):
        label = raw.strip()
        if not label:
            continue
        if label in seen:
            raise data_error(path, lineno, f"label {label!r} repeats line {seen[label]}")
        seen[label] = lineno
        labels.append(label)
    return labels
