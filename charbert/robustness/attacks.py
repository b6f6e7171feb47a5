"""Character-attack versions of task files (Pruthi et al., 2019 style).

Every misspelling comes from :mod:`charbert.noise` (``noise_words`` with the
operations of :func:`~charbert.noise.parse_attack_type`); this module only
knows where the words of each task format live and how to write the file
back with everything else unchanged:

* :func:`attack_column_file` -- NER/POS column files (CoNLL-2003, CoNLL-U,
  ``token<TAB>tag``): only the token column of token lines is rewritten;
* :func:`attack_glue_file` -- the text column(s) of a GLUE TSV;
* :func:`attack_squad_file` -- SQuAD questions and, optionally, contexts
  (answer offsets and texts are moved along with the context).

All randomness comes from ``numpy.random.default_rng(seed)`` and files are
processed in order, so one seed always gives byte-identical output.
"""

from __future__ import annotations

import bisect
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from charbert.noise import PRUTHI_RULES, NoiseRules, noise_words, parse_attack_type
from charbert.tasks.errors import PathLike, data_error, read_text_lines
from charbert.tasks.ner import docstart_kind

__all__ = [
    "attack_words",
    "attack_text",
    "attack_column_file",
    "attack_glue_file",
    "attack_squad_file",
    "noiser",
    "rewrite_texts",
    "rewrite_column_file",
    "rewrite_glue_file",
    "rewrite_squad_file",
    "rewrite_advglue_file",
    "rewrite_text_file",
]

_WS_SPLIT = re.compile(r"(\s+)")


# --------------------------------------------------------------------------- words


def attack_words(
    words: Sequence[str],
    attack: str,
    rng: np.random.Generator,
    rules: NoiseRules = PRUTHI_RULES,
    word_rate: float = 1.0,
    max_words: int | None = None,
) -> tuple[list[str], list[int]]:
    """Attack ``words`` with ``attack`` (``drop|add|swap|keyboard|all``), at most ``max_words`` of them.

    Returns ``(new_words, changed_indices)``; see :func:`charbert.noise.noise_words`.
    """
    ops = parse_attack_type(attack)
    return noise_words(list(words), rng, rules, word_rate, ops, max_words)


def _split_punct(chunk: str) -> tuple[str, str, str]:
    """``'"house,'`` -> ``('"', 'house', ',')``: strip non-alphanumeric edges."""
    i, j = 0, len(chunk)
    while i < j and not chunk[i].isalnum():
        i += 1
    while j > i and not chunk[j - 1].isalnum():
        j -= 1
    return chunk[:i], chunk[i:j], chunk[j:]


Rewrite = Callable[[list[list[str]]], list[list[str]]]
"""Rewrites the words of every sentence of a file at once (in file order), one word for one word:
an attack (:func:`noiser`) or a corrector (:mod:`charbert.robustness.correct`)."""


def noiser(ops: tuple[str, ...], rng: np.random.Generator, rules: NoiseRules, word_rate: float,
           max_words: int | None = None) -> Rewrite:
    """The character attack as a :data:`Rewrite`: :func:`~charbert.noise.noise_words` per sentence, in order."""

    def rewrite(sentences: list[list[str]]) -> list[list[str]]:
        return [noise_words(words, rng, rules, word_rate, ops, max_words)[0] for words in sentences]

    return rewrite


def _checked(rewrite: Rewrite, sentences: list[list[str]]) -> list[list[str]]:
    out = rewrite(sentences)
    if len(out) != len(sentences) or any(len(a) != len(b) for a, b in zip(out, sentences)):
        raise ValueError("a rewrite must return one word for every word of every sentence")
    return out


def _word_spans(text: str, protected: Sequence[tuple[int, int]] | None = None
                ) -> tuple[list[tuple[int, int]], list[str]]:
    """The ``[start, end)`` spans of the word cores of ``text`` (whitespace-separated pieces without
    their surrounding punctuation) and the words to rewrite: ``""`` (never rewritten) for a core with
    a position of ``protected`` strictly inside it (e.g. an answer boundary in the middle of a word)."""
    cores: list[tuple[int, int]] = []
    words: list[str] = []
    pos = 0
    for piece in _WS_SPLIT.split(text):
        if piece and not piece.isspace():
            pre, core, _ = _split_punct(piece)
            start = pos + len(pre)
            cores.append((start, start + len(core)))
            words.append(core)
        pos += len(piece)
    if protected:
        cuts = sorted({c for span in protected for c in span})
        for k, (a, b) in enumerate(cores):
            i = bisect.bisect_right(cuts, a)
            if i < len(cuts) and cuts[i] < b:
                words[k] = ""
    return cores, words


def rewrite_texts(texts: Sequence[str], rewrite: Rewrite,
                  protected: Sequence[Sequence[tuple[int, int]] | None] | None = None
                  ) -> list[tuple[list[tuple[int, int, str]], int]]:
    """Rewrite the words of several texts with one call of ``rewrite``; per text ``(edits, n_words)``
    where ``edits`` lists ``(old_start, old_end, new_core)`` of every changed core, in text order."""
    spans = [_word_spans(t, protected[i] if protected else None) for i, t in enumerate(texts)]
    new = _checked(rewrite, [list(words) for _, words in spans])
    out = []
    for (cores, words), new_words in zip(spans, new):
        edits = [(cores[k][0], cores[k][1], w) for k, (old, w) in enumerate(zip(words, new_words)) if w != old]
        out.append((edits, len(cores)))
    return out


def _attack_pieces(
    text: str,
    ops: tuple[str, ...],
    rng: np.random.Generator,
    rules: NoiseRules,
    word_rate: float,
    protected: Sequence[tuple[int, int]] | None = None,
    max_words: int | None = None,
) -> tuple[list[tuple[int, int, str]], int, int]:
    """Attack the whitespace-separated words of one text: ``(edits, n_words, n_changed)``."""
    ((edits, n_words),) = rewrite_texts([text], noiser(ops, rng, rules, word_rate, max_words), [protected])
    return edits, n_words, len(edits)


def _apply_edits(text: str, edits: Sequence[tuple[int, int, str]]) -> str:
    out: list[str] = []
    pos = 0
    for a, b, new in edits:
        out.append(text[pos:a])
        out.append(new)
        pos = b
    out.append(text[pos:])
    return "".join(out)


def attack_text(
    text: str,
    attack: str,
    rng: np.random.Generator,
    rules: NoiseRules = PRUTHI_RULES,
    word_rate: float = 1.0,
    max_words: int | None = None,
) -> tuple[str, int, int]:
    """Attack every whitespace-separated word of ``text`` (spacing kept;
    surrounding punctuation is stripped before noising and put back, so
    ``"house,"`` may become ``"hoese,"``).  Returns ``(new_text, n_words, n_changed)``."""
    ops = parse_attack_type(attack)
    edits, n_words, n_changed = _attack_pieces(text, ops, rng, rules, word_rate, max_words=max_words)
    return _apply_edits(text, edits), n_words, n_changed


# --------------------------------------------------------------------------- file helpers


def _read_raw(path: PathLike) -> tuple[str, list[str]]:
    """``(bom, lines)`` where ``"\\n".join(lines)`` is the exact file text after the BOM.

    Raises ``FileNotFoundError``/``TaskDataError`` like the task readers
    (missing file, directory, empty file).
    """
    read_text_lines(path)  # uniform checks: missing, directory, empty
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    bom = ""
    if text.startswith("\ufeff"):
        bom, text = "\ufeff", text[1:]
    return bom, text.split("\n")


def _write_raw(path: PathLike, bom: str, lines: Sequence[str]) -> None:
    out = Path(path)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="") as f:
        f.write(bom + "\n".join(lines))


def _split_cr(line: str) -> tuple[str, str]:
    return (line[:-1], "\r") if line.endswith("\r") else (line, "")


def _same_path(a: PathLike, b: PathLike) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _check_paths(in_path: PathLike, out_path: PathLike) -> None:
    if _same_path(in_path, out_path):
        raise ValueError(f"{os.fspath(out_path)}: output would overwrite the input file")


# --------------------------------------------------------------------------- NER / POS


def attack_column_file(
    in_path: PathLike,
    out_path: PathLike,
    attack: str,
    seed: int,
    word_rate: float = 1.0,
    rules: NoiseRules = PRUTHI_RULES,
    task: str | None = None,
    max_words: int | None = None,
) -> dict[str, int]:
    """Write a character-attacked copy of a NER/POS column file (:func:`rewrite_column_file`).

    The rate (and ``max_words``, the most words attacked) applies per sentence (consecutive
    token lines).  Returns ``{"sentences", "tokens", "changed"}``.
    """
    ops = parse_attack_type(attack)
    rewrite = noiser(ops, np.random.default_rng(seed), rules, word_rate, max_words)
    return rewrite_column_file(in_path, out_path, rewrite, task)


def rewrite_column_file(in_path: PathLike, out_path: PathLike, rewrite: Rewrite,
                        task: str | None = None) -> dict[str, int]:
    """Write a copy of a NER/POS column file with its tokens rewritten by ``rewrite``.

    Only the token column of token lines changes (column 1 of ``.conllu``
    files, split on tabs; otherwise the first field of the line); the number
    of lines, every other column, the separators, ``-DOCSTART-`` (also a
    misspelt one), comment and blank lines stay byte-identical.  A token the
    reader takes as one token containing spaces (``S & P``, see
    :func:`charbert.tasks.ner.read_conll`) is left as it is.

    ``task`` (``"ner"`` or ``"pos"``) additionally validates the input with
    the task reader (``read_conll`` / ``read_pos``) first, so a file of
    another format fails with a :class:`TaskDataError` naming the file.

    Returns ``{"sentences", "tokens", "changed"}``.
    """
    _check_paths(in_path, out_path)
    if task is not None:
        key = task.lower()
        if key == "ner":
            from charbert.tasks.ner import read_conll

            read_conll(in_path)
        elif key == "pos":
            from charbert.tasks.pos import read_pos

            read_pos(in_path)
        else:
            raise ValueError(f"task must be 'ner', 'pos' or None, got {task!r}")

    bom, lines = _read_raw(in_path)
    conllu = os.fspath(in_path).lower().endswith(".conllu")

    # per sentence: (line index, field start, field end) of every token
    sentences: list[list[tuple[int, int, int]]] = [[]]
    n_columns: int | None = None
    first_line = 0

    def flush() -> None:
        if sentences[-1]:
            sentences.append([])

    for idx, raw in enumerate(lines):
        body, _ = _split_cr(raw)
        lineno = idx + 1
        if not body.strip():
            flush()
            continue
        if conllu:
            if body.startswith("#"):
                continue
            fields = body.split("\t")
            if len(fields) != 10:
                raise data_error(
                    in_path, lineno, f"expected 10 tab-separated CoNLL-U columns, found {len(fields)}"
                )
            if "-" in fields[0] or "." in fields[0]:
                continue  # multiword range / empty node: surface form left as is
            start = len(fields[0]) + 1
            sentences[-1].append((idx, start, start + len(fields[1])))
            continue
        fields = body.split()
        if docstart_kind(fields) is not None:
            flush()
            continue
        if n_columns is None:
            n_columns, first_line = len(fields), lineno
        elif len(fields) > n_columns and task is not None:
            sentences[-1].append((idx, 0, 0))  # a token with spaces (validated by the reader): not rewritten
            continue
        elif len(fields) != n_columns:
            raise data_error(
                in_path, lineno,
                f"expected {n_columns} whitespace-separated columns (as on line {first_line}), "
                f"found {len(fields)}",
            )
        if "\t" in body:
            end = body.index("\t")
            start = 0
        else:
            m = re.search(r"\S+", body)
            assert m is not None
            start, end = m.start(), m.end()
        sentences[-1].append((idx, start, end))
    sentences = [s for s in sentences if s]
    if not sentences:
        raise data_error(in_path, None, "file contains no token lines")
    words = [[lines[i][a:b] for i, a, b in spans] for spans in sentences]  # "" (never rewritten): spaces inside
    new = _checked(rewrite, words)
    changed = 0
    for spans, old_words, new_words in zip(sentences, words, new):
        for (i, a, b), old, word in zip(spans, old_words, new_words):
            if word != old:
                lines[i] = lines[i][:a] + word + lines[i][b:]
                changed += 1
    _write_raw(out_path, bom, lines)
    return {"sentences": len(sentences), "tokens": sum(len(w) for w in words), "changed": changed}


# --------------------------------------------------------------------------- GLUE


def attack_glue_file(
    task_name: str,
    in_path: PathLike,
    out_path: PathLike,
    attack: str,
    seed: int,
    word_rate: float = 1.0,
    rules: NoiseRules = PRUTHI_RULES,
    max_words: int | None = None,
) -> dict[str, int]:
    """Write a character-attacked copy of a labelled GLUE TSV (:func:`rewrite_glue_file`); the rate
    and ``max_words`` apply per text.  Returns ``{"examples", "words", "changed"}``."""
    ops = parse_attack_type(attack)
    rewrite = noiser(ops, np.random.default_rng(seed), rules, word_rate, max_words)
    return rewrite_glue_file(task_name, in_path, out_path, rewrite)


def rewrite_glue_file(task_name: str, in_path: PathLike, out_path: PathLike, rewrite: Rewrite) -> dict[str, int]:
    """Write a copy of a labelled GLUE TSV with the words of its text column(s) rewritten.

    The text column(s) of every example (both sentences of a pair) are
    rewritten word by word (spacing and surrounding punctuation kept, as
    :func:`attack_text`); header, other columns, labels, blank lines and
    repeated header lines stay identical.  The input is first checked with
    :func:`charbert.tasks.glue.read_glue`.

    Returns ``{"examples", "words", "changed"}``.
    """
    from charbert.tasks.glue import get_glue_task, read_glue

    task = get_glue_task(task_name)
    _check_paths(in_path, out_path)
    read_glue(task.name, in_path, labelled=True)  # format / column / label checks

    bom, lines = _read_raw(in_path)
    header: list[str] | None = None
    text_idx: list[int] = []
    n_columns: int | None = None
    rows: list[tuple[int, list[str], str]] = []  # (line index, fields, line end)
    for idx, raw in enumerate(lines):
        body, cr = _split_cr(raw)
        if not body.strip():
            continue
        fields = body.split("\t")
        if n_columns is None:
            if task.has_header:
                header = fields
                text_idx = [header.index(str(c)) for c in task.text_columns]
                n_columns = len(header)
                continue
            text_idx = [int(c) for c in task.text_columns]
            n_columns = task.num_columns or len(fields)
        if header is not None and fields == header:
            continue
        if len(fields) != n_columns:
            raise data_error(in_path, idx + 1, f"expected {n_columns} tab-separated columns, found {len(fields)}")
        rows.append((idx, fields, cr))
    results = iter(rewrite_texts([fields[c] for _, fields, _ in rows for c in text_idx], rewrite))
    stats = {"examples": len(rows), "words": 0, "changed": 0}
    for idx, fields, cr in rows:
        for c in text_idx:
            edits, n_words = next(results)
            fields[c] = _apply_edits(fields[c], edits)
            stats["words"] += n_words
            stats["changed"] += len(edits)
        lines[idx] = "\t".join(fields) + cr
    _write_raw(out_path, bom, lines)
    return stats


def rewrite_advglue_file(in_path: PathLike, out_path: PathLike, rewrite: Rewrite) -> dict[str, int]:
    """An AdvGLUE JSON file with the text fields of every split rewritten (idx and labels kept)."""
    from charbert.tasks.glue import ADVGLUE_SPLITS

    _check_paths(in_path, out_path)
    with open(in_path, encoding="utf-8-sig") as f:
        data = json.load(f)
    slots = [(rec, key) for split, records in data.items() if split in ADVGLUE_SPLITS for rec in records
             for key in ADVGLUE_SPLITS[split][1:3] if key]
    results = rewrite_texts([rec[key] for rec, key in slots], rewrite)
    for (rec, key), (edits, _) in zip(slots, results):
        rec[key] = _apply_edits(rec[key], edits)
    Path(out_path).write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
    return {"texts": len(slots), "words": sum(n for _, n in results), "changed": sum(len(e) for e, _ in results)}


def rewrite_text_file(in_path: PathLike, out_path: PathLike, rewrite: Rewrite) -> dict[str, int]:
    """A plain text file, one sentence a line, with its words rewritten (everything else byte for byte)."""
    _check_paths(in_path, out_path)
    bom, lines = _read_raw(in_path)
    bodies = [_split_cr(line) for line in lines]
    results = rewrite_texts([body for body, _ in bodies], rewrite)
    out = [_apply_edits(body, edits) + cr for (body, cr), (edits, _) in zip(bodies, results)]
    _write_raw(out_path, bom, out)
    return {"lines": len(lines), "words": sum(n for _, n in results), "changed": sum(len(e) for e, _ in results)}


# --------------------------------------------------------------------------- SQuAD


def _offset_mapper(edits: Sequence[tuple[int, int, str]]):
    """Map a character boundary of the old text to the new one.

    Boundaries outside edited cores shift by the accumulated length change;
    a core's start/end map to the new core's start/end (answers never start
    or end strictly inside an edited core, see ``protected``).
    """
    starts = [a for a, _, _ in edits]
    # cumulative delta *before* edit k, and the new start of edit k
    deltas: list[int] = []
    d = 0
    for a, b, new in edits:
        deltas.append(d)
        d += len(new) - (b - a)

    def mapper(pos: int) -> int:
        k = bisect.bisect_right(starts, pos) - 1  # last edit with start <= pos
        if k < 0:
            return pos
        a, b, new = edits[k]
        if pos == a:
            return a + deltas[k]
        if pos >= b:
            return pos + deltas[k] + len(new) - (b - a)
        # strictly inside an edited core (not expected): clamp into the new core
        return a + deltas[k] + min(pos - a, len(new))

    return mapper


def attack_squad_file(
    in_path: PathLike,
    out_path: PathLike,
    attack: str,
    seed: int,
    attack_context: bool = False,
    word_rate: float = 1.0,
    rules: NoiseRules = PRUTHI_RULES,
    max_words: int | None = None,
) -> dict[str, int]:
    """Write a character-attacked copy of a SQuAD v1.1/v2.0 JSON file (:func:`rewrite_squad_file`);
    the rate and ``max_words`` apply per question and per context."""
    ops = parse_attack_type(attack)
    rewrite = noiser(ops, np.random.default_rng(seed), rules, word_rate, max_words)
    return rewrite_squad_file(in_path, out_path, rewrite, rewrite_context=attack_context)


def rewrite_squad_file(in_path: PathLike, out_path: PathLike, rewrite: Rewrite,
                       rewrite_context: bool = False) -> dict[str, int]:
    """Write a copy of a SQuAD v1.1/v2.0 JSON file with its questions (and contexts) rewritten.

    Questions are always rewritten; with ``rewrite_context`` each paragraph's
    context is too, and every ``answers``/``plausible_answers`` entry gets
    its ``answer_start`` moved and its ``text`` set to the rewritten span, so
    ``context[start:start + len(text)] == text`` still holds.  Words with an
    answer boundary strictly inside them are left alone.  The input is first
    checked with :func:`charbert.tasks.squad.read_squad` (unlabelled mode).

    Returns ``{"questions", "contexts", "words", "changed", "answers_changed"}``.
    """
    from charbert.tasks.squad import read_squad

    _check_paths(in_path, out_path)
    read_squad(in_path, labelled=False)  # structure + answer offset checks
    with open(in_path, encoding="utf-8-sig") as f:
        data = json.load(f)

    # Every text in file order (per paragraph: its context, then its questions), rewritten at once.
    texts: list[str] = []
    protected: list[list[tuple[int, int]] | None] = []
    paragraphs = [para for article in data["data"] for para in article["paragraphs"]]
    for para in paragraphs:
        if rewrite_context:
            texts.append(para["context"])
            protected.append([(int(a["answer_start"]), int(a["answer_start"]) + len(a["text"]))
                              for a in _answers(para)])
        for qa in para["qas"]:
            texts.append(qa["question"])
            protected.append(None)
    results = iter(rewrite_texts(texts, rewrite, protected))

    stats = {"questions": 0, "contexts": 0, "words": 0, "changed": 0, "answers_changed": 0}
    for para in paragraphs:
        if rewrite_context:
            edits, n_words = next(results)
            new_context = _apply_edits(para["context"], edits)
            mapper = _offset_mapper(edits)
            for ans in _answers(para):
                s, e = int(ans["answer_start"]), int(ans["answer_start"]) + len(ans["text"])
                ns, ne = mapper(s), mapper(e)
                new_text = new_context[ns:ne]
                if new_text != ans["text"]:
                    stats["answers_changed"] += 1
                ans["answer_start"] = ns
                ans["text"] = new_text
            para["context"] = new_context
            stats["contexts"] += 1
            stats["words"] += n_words
            stats["changed"] += len(edits)
        for qa in para["qas"]:
            edits, n_words = next(results)
            qa["question"] = _apply_edits(qa["question"], edits)
            stats["questions"] += 1
            stats["words"] += n_words
            stats["changed"] += len(edits)

    out = Path(out_path)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="") as f:
        json.dump(data, f, ensure_ascii=False)
    return stats


def _answers(para) -> list[dict]:
    return [ans for qa in para["qas"] for key in ("answers", "plausible_answers") for ans in (qa.get(key) or [])]
