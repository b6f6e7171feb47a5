"""GLUE task definitions, TSV readers and metrics (model independent).

The nine GLUE tasks are described by :data:`GLUE_TASKS`; :func:`read_glue`
turns one of the official TSV files into :class:`GlueExample` objects and
:func:`glue_metrics` scores label-id predictions with the official metric of
each task.  Metrics are implemented here with numpy only (no sklearn/scipy),
and checked against hand-computed values in ``tests/test_task_metrics.py``.

Label ids
---------
For classification tasks the label id of a label string is its index in
``GLUE_TASKS[task].labels`` (the order used by Hugging Face's GLUE processors,
so ids agree with checkpoints fine-tuned elsewhere).  STS-B is a regression
task: its label is a float and ``labels`` is ``None``.

Errors
------
Malformed input raises :class:`~charbert.tasks.errors.TaskDataError` (a
``ValueError``) whose message starts with ``file:line:``; a missing file
raises :class:`FileNotFoundError`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import PathLike, TaskDataError, data_error, read_text_lines

__all__ = [
    "TaskDataError",
    "GlueTask",
    "GlueExample",
    "GLUE_TASKS",
    "get_glue_task",
    "read_glue",
    "glue_metrics",
    "accuracy",
    "binary_f1",
    "matthews_corrcoef",
    "pearson_corrcoef",
    "spearman_corrcoef",
    "average_ranks",
    "check_glue_texts",
    "glue_file_has_labels",
    "write_glue_predictions",
    "ADVGLUE_SPLITS",
    "is_advglue_file",
    "read_advglue",
]

Column = str | int


@dataclass(frozen=True)
class GlueTask:
    """How to read and score one GLUE task.

    Attributes:
        name: canonical task name (``"sst2"``, ``"stsb"``, ...).
        text_columns: one or two columns holding the text(s); header names
            when ``has_header`` is true, 0-based indices otherwise.
        label_column: column holding the label (header name or index).
        labels: label strings in label-id order, ``None`` for regression.
        is_regression: true for STS-B (float label, one output).
        has_header: whether the train/dev files start with a header line.
        metrics: names of the keys :func:`glue_metrics` returns.
        num_columns: for headerless files, the exact number of columns.
        dev_files: file names of the dev split(s) in the official layout.
        test_text_columns: header names of the text columns in the official
            *unlabelled* test file (which, for CoLA, has a header although
            train/dev do not).
    """

    name: str
    text_columns: tuple[Column, ...]
    label_column: Column
    labels: tuple[str, ...] | None
    is_regression: bool
    has_header: bool
    metrics: tuple[str, ...]
    num_columns: int | None = None
    dev_files: tuple[str, ...] = ("dev.tsv",)
    test_text_columns: tuple[str, ...] = field(default=())

    @property
    def num_labels(self) -> int:
        """Output size of the classifier head (1 for regression)."""
        return 1 if self.labels is None else len(self.labels)

    @property
    def label2id(self) -> dict[str, int]:
        if self.labels is None:
            return {}
        return {label: i for i, label in enumerate(self.labels)}

    @property
    def id2label(self) -> dict[int, str]:
        if self.labels is None:
            return {}
        return dict(enumerate(self.labels))

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in [
        # Headerless: source, label, original mark, sentence.
        GlueTask("cola", (3,), 1, _BINARY, False, False, ("matthews_correlation",),
                 num_columns=4, test_text_columns=("sentence",)),
        GlueTask("sst2", ("sentence",), "label", _BINARY, False, True, ("accuracy",)),
        GlueTask("mrpc", ("#1 String", "#2 String"), "Quality", _BINARY, False, True,
                 ("accuracy", "f1")),
        GlueTask("stsb", ("sentence1", "sentence2"), "score", None, True, True,
                 ("pearson", "spearmanr")),
        GlueTask("qqp", ("question1", "question2"), "is_duplicate", _BINARY, False, True,
                 ("accuracy", "f1")),
        GlueTask("mnli", ("sentence1", "sentence2"), "gold_label",
                 ("contradiction", "entailment", "neutral"), False, True, ("accuracy",),
                 dev_files=("dev_matched.tsv", "dev_mismatched.tsv")),
        GlueTask("qnli", ("question", "sentence"), "label", _NLI2, False, True, ("accuracy",)),
        GlueTask("rte", ("sentence1", "sentence2"), "label", _NLI2, False, True, ("accuracy",)),
        GlueTask("wnli", ("sentence1", "sentence2"), "label", _BINARY, False, True, ("accuracy",)),
    ]
}
# Headered tasks use the same text column names in their unlabelled test files.
for _name, _task in list(GLUE_TASKS.items()):
    if _task.has_header and not _task.test_text_columns:
        GLUE_TASKS[_name] = replace(_task, test_text_columns=tuple(str(c) for c in _task.text_columns))

_ALIASES = {"sst-2": "sst2", "sts-b": "stsb"}


def get_glue_task(task_name: str) -> GlueTask:
    """Look up a task by name, case-insensitively; accepts ``sst-2``/``sts-b``."""
    key = task_name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in GLUE_TASKS:
        raise ValueError(
            f"unknown GLUE task {task_name!r}; expected one of {sorted(GLUE_TASKS)} "
            f"(or aliases {sorted(_ALIASES)})"
        )
    return GLUE_TASKS[key]


@dataclass
class GlueExample:
    """One GLUE example.

    ``label`` is the label *string* for classification tasks (map it with
    ``task.label2id``), a float for STS-B, and ``None`` when read with
    ``labelled=False``.  ``line`` is the 1-based line number in the file.
    """

    guid: str
    text_a: str
    text_b: str | None
    label: str | float | None
    line: int


def _split_tsv(line: str, path: PathLike, lineno: int) -> list[str]:
    # QUOTE_NONE: GLUE text contains unbalanced quotes ('"the witness"', '12"'),
    # which the default dialect would treat as multi-line quoted fields and
    # silently merge examples.
    try:
        return next(csv.reader([line], delimiter="\t", quoting=csv.QUOTE_NONE))
    except csv.Error as e:  # e.g. a stray NUL byte
        raise data_error(path, lineno, f"cannot parse TSV line: {e}") from None


def _parse_label(task: GlueTask, raw: str, path: PathLike, lineno: int) -> str | float:
    value = raw.strip()
    if task.is_regression:
        try:
            score = float(value)
        except ValueError:
            raise data_error(path, lineno, f"{task.name} label {raw!r} is not a number") from None
        if not math.isfinite(score):
            raise data_error(path, lineno, f"{task.name} label {raw!r} is not finite")
        return score
    assert task.labels is not None
    if value not in task.labels:
        raise data_error(
            path, lineno, f"label {raw!r} is not a {task.name} label (expected one of {list(task.labels)})"
        )
    return value


def read_glue(task_name: str, path: PathLike, labelled: bool = True) -> list[GlueExample]:
    """Read a GLUE TSV file of ``task_name``.

    Args:
        task_name: a key of :data:`GLUE_TASKS` (or ``sst-2``/``sts-b``).
        path: the TSV file (train, dev or test split).
        labelled: if false, labels are not read (``label=None``); use it for
            the official unlabelled test files, which lack the label column.
            Files that do have a label column can be read this way too.

    Files with a header are read by column *name*, so extra or reordered
    columns are fine.  A line repeating the header is skipped (files built by
    concatenating two TSVs carry one in the middle).  Blank lines are skipped.
    Every other line must have exactly as many columns as the header (or
    ``task.num_columns`` for headerless files), else :class:`TaskDataError`
    naming ``file:line``.

    Returns:
        examples in file order; ``guid`` is ``"<file stem>-<n>"`` with ``n``
        the 0-based example index (unique even when the file's own index
        column is not, as in concatenated files).
    """
    task = get_glue_task(task_name)
    if is_advglue_file(path):
        return read_advglue(path, task.name)
    lines = read_text_lines(path)
    stem = Path(path).stem
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]

    # Decide between header mode (columns by name) and headerless mode.
    first_lineno, first_line = numbered[0]
    first_fields = _split_tsv(first_line, path, first_lineno)
    if task.has_header:
        use_header = True
        text_names: Sequence[Column] = task.text_columns
    else:
        # Headerless task (CoLA): train/dev have no header, but the official
        # unlabelled test file does ("index<TAB>sentence").
        use_header = not labelled and all(c in first_fields for c in task.test_text_columns)
        text_names = task.test_text_columns

    if use_header:
        header = first_fields
        wanted = list(text_names) + ([task.label_column] if labelled else [])
        missing = [c for c in wanted if c not in header]
        if missing:
            raise data_error(
                path, first_lineno,
                f"header lacks column(s) {missing} needed for {task.name} (header: {header})",
            )
        text_idx = [header.index(c) for c in text_names]
        label_idx = header.index(task.label_column) if labelled else None
        n_columns = len(header)
        body = numbered[1:]
    else:
        header = None
        text_idx = [int(c) for c in task.text_columns]
        label_idx = int(task.label_column) if labelled else None
        n_columns = task.num_columns
        body = numbered

    examples: list[GlueExample] = []
    for lineno, line in body:
        fields = _split_tsv(line, path, lineno)
        if header is not None and fields == header:
            continue  # repeated header of an appended file
        if n_columns is not None and len(fields) != n_columns:
            raise data_error(
                path, lineno,
                f"expected {n_columns} tab-separated columns for {task.name}, found {len(fields)}",
            )
        label = _parse_label(task, fields[label_idx], path, lineno) if label_idx is not None else None
        examples.append(
            GlueExample(
                guid=f"{stem}-{len(examples)}",
                text_a=fields[text_idx[0]],
                text_b=fields[text_idx[1]] if len(text_idx) > 1 else None,
                label=label,
                line=lineno,
            )
        )
    if not examples:
        raise data_error(path, None, "file contains a header but no examples")
    return examples


# ----------------------------------------------------------------------------
# Metrics (numpy only).
# ----------------------------------------------------------------------------


def _as_1d(values, name: str, dtype) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D (one value per example), got shape {arr.shape}; "
            "take the argmax of logits first"
        )
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric label ids/scores, got dtype {arr.dtype}")
    if np.issubdtype(dtype, np.integer) and arr.dtype.kind == "f" and np.any(arr != np.round(arr)):
        # Truncating 0.7 to 0 would give a silently wrong score.
        raise ValueError(f"{name} must be integer label ids, got non-integral floats")
    return arr.astype(dtype)


def _check_pair(predictions, references, dtype) -> tuple[np.ndarray, np.ndarray]:
    p = _as_1d(predictions, "predictions", dtype)
    r = _as_1d(references, "references", dtype)
    if len(p) != len(r):
        raise ValueError(f"{len(p)} predictions but {len(r)} references")
    if len(p) == 0:
        raise ValueError("cannot compute a metric on zero examples")
    return p, r


def accuracy(predictions, references) -> float:
    """Fraction of exact matches."""
    p, r = _check_pair(predictions, references, np.int64)
    return float(np.mean(p == r))


def binary_f1(predictions, references, positive: int = 1) -> float:
    """F1 of the ``positive`` class (GLUE MRPC/QQP use label id 1).

    Returns 0.0 when there are no true or predicted positives (sklearn's
    ``zero_division=0`` behaviour) rather than NaN.
    """
    p, r = _check_pair(predictions, references, np.int64)
    tp = int(np.sum((p == positive) & (r == positive)))
    fp = int(np.sum((p == positive) & (r != positive)))
    fn = int(np.sum((p != positive) & (r == positive)))
    denom = 2 * tp + fp + fn
    return 2.0 * tp / denom if denom else 0.0


def matthews_corrcoef(predictions, references) -> float:
    """Matthews correlation coefficient (multi-class form, as sklearn).

    For two classes this is ``(TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))``.
    Returns 0.0 when undefined (a constant prediction or reference), which
    is what the GLUE leaderboard reports for a majority-class CoLA model.
    """
    p, r = _check_pair(predictions, references, np.int64)
    classes, inverse = np.unique(np.concatenate([r, p]), return_inverse=True)
    k = len(classes)
    r_idx, p_idx = inverse[: len(r)], inverse[len(r):]
    confusion = np.zeros((k, k), dtype=np.float64)
    np.add.at(confusion, (r_idx, p_idx), 1.0)
    t_sum = confusion.sum(axis=1)  # true count per class
    p_sum = confusion.sum(axis=0)  # predicted count per class
    n_correct = np.trace(confusion)
    n = confusion.sum()
    # float64 throughout: the products overflow int64 on QQP-sized sets.
    cov_tp = n_correct * n - t_sum @ p_sum
    cov_pp = n * n - p_sum @ p_sum
    cov_tt = n * n - t_sum @ t_sum
    if cov_pp == 0 or cov_tt == 0:
        return 0.0
    return float(cov_tp / math.sqrt(cov_tt * cov_pp))


def pearson_corrcoef(x, y) -> float:
    """Pearson correlation; NaN when either input is constant (as scipy)."""
    a, b = _check_pair(x, y, np.float64)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("correlation inputs must be finite")
    a = a - a.mean()
    b = b - b.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    if denom == 0.0:
        return float("nan")
    # Clip: rounding can push |r| a hair above 1 for perfectly correlated data.
    return float(np.clip((a @ b) / denom, -1.0, 1.0))


def average_ranks(values) -> np.ndarray:
    """1-based ranks, tied values getting the mean of their positions.

    ``average_ranks([10, 20, 20, 30]) == [1, 2.5, 2.5, 4]`` (scipy's
    ``rankdata(method="average")``).
    """
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts_run = np.r_[True, xs[1:] != xs[:-1]] if len(xs) else np.zeros(0, bool)
    run_id = np.cumsum(starts_run) - 1
    starts = np.flatnonzero(starts_run)
    ends = np.r_[starts[1:], len(xs)]  # exclusive
    mean_rank = (starts + ends - 1) / 2.0 + 1.0  # mean of 1-based positions start+1..end
    ranks = np.empty(len(xs), dtype=np.float64)
    ranks[order] = mean_rank[run_id]
    return ranks


def spearman_corrcoef(x, y) -> float:
    """Spearman rank correlation: Pearson correlation of average ranks."""
    a, b = _check_pair(x, y, np.float64)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("correlation inputs must be finite")
    return pearson_corrcoef(average_ranks(a), average_ranks(b))


def glue_metrics(task_name: str, predictions, references) -> dict[str, float]:
    """Official GLUE metric(s) of ``task_name``.

    Args:
        predictions, references: 1-D sequences of label ids (ints, index
            into ``GLUE_TASKS[task].labels``), or of floats for STS-B.

    Returns:
        cola: ``{"matthews_correlation"}``; mrpc, qqp: ``{"accuracy", "f1"}``
        (F1 of label id 1); stsb: ``{"pearson", "spearmanr"}``; others:
        ``{"accuracy"}``.  Values are fractions in [0, 1] (or [-1, 1]).
    """
    task = get_glue_task(task_name)
    if task.is_regression:
        return {
            "pearson": pearson_corrcoef(predictions, references),
            "spearmanr": spearman_corrcoef(predictions, references),
        }
    out: dict[str, float] = {}
    for metric in task.metrics:
        if metric == "matthews_correlation":
            out[metric] = matthews_corrcoef(predictions, references)
        elif metric == "accuracy":
            out[metric] = accuracy(predictions, references)
        elif metric == "f1":
            out[metric] = binary_f1(predictions, references, positive=1)
        else:  # pragma: no cover - GLUE_TASKS only names the metrics above
            raise AssertionError(metric)
    return out


# ----------------------------------------------------------------------------
# Fine-tuning helpers: input checks, label presence, prediction files.
# ----------------------------------------------------------------------------


def check_glue_texts(examples: Sequence[GlueExample], path: PathLike) -> None:
    """Fail on an example whose sentence (or either sentence of a pair) is empty or blank.

    Such a line is a broken row (a shifted column, a lost field), never a real example: the
    model would be trained or scored on [CLS] [SEP] alone.
    """
    for ex in examples:
        for name, text in (("first", ex.text_a), ("second", ex.text_b)):
            if text is not None and not text.strip():
                raise data_error(path, ex.line, f"the {name} sentence is empty")


def glue_file_has_labels(task_name: str, path: PathLike) -> bool:
    """Does this GLUE file carry labels (train/dev) or not (the official unlabelled test files)?"""
    task = get_glue_task(task_name)
    if is_advglue_file(path):
        return True
    first = next((line for line in read_text_lines(path) if line.strip()), "")
    fields = _split_tsv(first, path, 1)
    if task.has_header:
        return task.label_column in fields
    # CoLA: train/dev are headerless with 4 columns; the test file has an "index sentence" header.
    return not all(c in fields for c in task.test_text_columns)


def write_glue_predictions(path: PathLike, task_name: str, predictions) -> None:
    """The GLUE submission format: ``index<TAB>prediction`` with a header line; predictions are
    label strings (label ids are mapped through the task's labels) or scores for STS-B."""
    task = get_glue_task(task_name)
    lines = ["index\tprediction"]
    for i, p in enumerate(predictions):
        value = f"{float(p):.6f}" if task.is_regression else task.labels[int(p)]
        lines.append(f"{i}\t{value}")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------
# AdvGLUE (Wang et al., 2021): adversarial dev sets in one JSON file.
# ----------------------------------------------------------------------------

# split -> (GLUE task, field of text_a, field of text_b, labels in the file's id order).
# AdvGLUE numbers labels as the GLUE datasets on the Hugging Face hub do (MNLI: 0 entailment,
# 1 neutral, 2 contradiction), which is not the label order of GLUE_TASKS: map through names.
ADVGLUE_SPLITS: dict[str, tuple[str, str, str | None, tuple[str, ...]]] = {
    "sst2": ("sst2", "sentence", None, _BINARY),
    "qqp": ("qqp", "question1", "question2", _BINARY),
    "mnli": ("mnli", "premise", "hypothesis", ("entailment", "neutral", "contradiction")),
    "mnli-mm": ("mnli", "premise", "hypothesis", ("entailment", "neutral", "contradiction")),
    "qnli": ("qnli", "question", "sentence", ("entailment", "not_entailment")),
    "rte": ("rte", "sentence1", "sentence2", ("entailment", "not_entailment")),
}


def is_advglue_file(path: PathLike) -> bool:
    """Is this an AdvGLUE JSON file (an object, not a TSV)? Reads only the first characters."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            head = f.read(256).lstrip()
    except (OSError, UnicodeDecodeError):
        return False
    return head.startswith("{")


def read_advglue(path: PathLike, task_name: str, split: str | None = None) -> list[GlueExample]:
    """Read one split of the AdvGLUE dev JSON (``{"sst2": [{"idx", "label", "sentence"}, ...], ...}``).

    ``split`` defaults to the task's name (``mnli`` has two: ``mnli`` and ``mnli-mm``).  Labels
    become the task's label strings (GLUE's label order, :data:`GLUE_TASKS`); ``guid`` is
    ``advglue-<split>-<idx>``; ``line`` is the record's 1-based position in its split.
    """
    import json

    task = get_glue_task(task_name)
    key = split or task.name
    if key not in ADVGLUE_SPLITS:
        raise ValueError(f"unknown AdvGLUE split {key!r}; expected one of {sorted(ADVGLUE_SPLITS)}")
    split_task, field_a, field_b, file_labels = ADVGLUE_SPLITS[key]
    if split_task != task.name:
        raise ValueError(f"AdvGLUE split {key!r} belongs to {split_task}, not {task.name}")
    try:
        data = json.loads("\n".join(read_text_lines(path)))
    except json.JSONDecodeError as e:
        raise data_error(path, e.lineno, f"invalid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise data_error(path, None, "not an AdvGLUE file: expected an object keyed by task")
    if key not in data:
        raise data_error(path, None, f"no AdvGLUE split {key!r} (the file has {sorted(data)})")
    records = data[key]
    if not isinstance(records, list) or not records:
        raise data_error(path, None, f"AdvGLUE split {key!r} is not a non-empty list of records")
    examples: list[GlueExample] = []
    for n, rec in enumerate(records, start=1):
        where = f"{key}[{n - 1}]"
        wanted = [field_a] + ([field_b] if field_b else []) + ["label"]
        if not isinstance(rec, dict) or any(k not in rec for k in wanted):
            raise data_error(path, None, f"{where} lacks one of the fields {wanted}")
        label = rec["label"]
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(file_labels):
            raise data_error(path, None, f"{where} has label {label!r}; expected an id in [0, {len(file_labels)})")
        texts = [rec[field_a]] + ([rec[field_b]] if field_b else [])
        if not all(isinstance(t, str) and t.strip() for t in texts):
            raise data_error(path, None, f"{where} has an empty or non-string text")
        examples.append(GlueExample(guid=f"advglue-{key}-{rec.get('idx', n - 1)}", text_a=texts[0],
                                    text_b=texts[1] if field_b else None, label=file_labels[label], line=n))
    return examples


def write_advglue_split(in_path: PathLike, out_path: PathLike, task_name: str, split: str) -> int:
    """Write one AdvGLUE split as a one-split file under the task's key (so ``--test_file`` of
    ``finetune.glue`` reads it, e.g. ``mnli-mm`` as ``mnli``); returns its number of records."""
    import json

    task = get_glue_task(task_name)
    read_advglue(in_path, task.name, split)  # checks
    data = json.loads("\n".join(read_text_lines(in_path)))
    Path(out_path).write_text(json.dumps({task.name: data[split]}, ensure_ascii=False) + "\n", encoding="utf-8")
    return len(data[split])
