"""SQuAD v1.1 / v2.0: JSON reader, official evaluation and answer post-processing.

Model independent: :func:`read_squad` validates the data, :func:`squad_evaluate`
reproduces the official evaluation scripts, and
:func:`postprocess_qa_predictions` turns start/end logits of (possibly several,
overlapping) features per question into answer strings.

Feature convention (as Hugging Face ``run_qa.py``)
--------------------------------------------------
Each feature given to :func:`postprocess_qa_predictions` is a mapping with

* ``"example_id"``: the :attr:`SquadExample.id` it was built from;
* ``"offset_mapping"``: one entry per token position, ``(start_char,
  end_char)`` into the example's **context** for context tokens, and
  ``None`` for every other token (question, special and padding tokens);
* optionally ``"token_is_max_context"``: ``{str(token_index): bool}``; a
  span may only *start* at a token whose value is true (the doc-stride trick
  of the original BERT code); int keys or a list of bools also work.

Position 0 of each feature must hold the [CLS]/<s> token: its start+end
logits give the "no answer" score for SQuAD v2.0.
"""

from __future__ import annotations

import collections
import json
import math
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import PathLike, TaskDataError, data_error, location, read_text_lines

__all__ = [
    "SquadExample",
    "read_squad",
    "normalize_answer",
    "get_tokens",
    "compute_exact",
    "compute_f1",
    "squad_evaluate",
    "postprocess_qa_predictions",
]


@dataclass
class SquadExample:
    """One SQuAD question.

    ``answers`` is a list of ``{"text": str, "answer_start": int}`` (character
    offset into ``context``); it is empty for unanswerable (v2.0) questions,
    whose ``plausible_answers`` (v2.0 only) are kept for analysis but never
    used as gold answers.
    """

    id: str
    title: str
    question: str
    context: str
    answers: list[dict[str, Any]]
    is_impossible: bool = False
    plausible_answers: list[dict[str, Any]] = field(default_factory=list)


def _qa_error(path: PathLike, qid: str, message: str) -> TaskDataError:
    return TaskDataError(f"{location(path)}: question id {qid!r}: {message}")


def _check_answers(answers: Any, context: str, path: PathLike, qid: str, key: str) -> list[dict[str, Any]]:
    if not isinstance(answers, list):
        raise _qa_error(path, qid, f"{key!r} must be a list")
    out = []
    for k, ans in enumerate(answers):
        if not isinstance(ans, Mapping) or "text" not in ans or "answer_start" not in ans:
            raise _qa_error(path, qid, f"{key}[{k}] must have 'text' and 'answer_start'")
        text, start = ans["text"], ans["answer_start"]
        if not isinstance(text, str) or isinstance(start, bool) or not isinstance(start, int):
            raise _qa_error(path, qid, f"{key}[{k}] has a non-string text or non-integer answer_start")
        # The span is what a model is trained to point at: a shifted offset
        # would teach it the wrong tokens without any visible failure.
        if start < 0 or context[start:start + len(text)] != text:
            found = context[max(start, 0):max(start, 0) + len(text)]
            raise _qa_error(
                path, qid,
                f"{key}[{k}] answer_start={start} does not match its text: context has "
                f"{found!r} there, answer text is {text!r}",
            )
        out.append({"text": text, "answer_start": start})
    return out


def read_squad(path: PathLike, labelled: bool = True) -> list[SquadExample]:
    """Read a SQuAD v1.1 or v2.0 JSON file (``{"data": [articles]}``).

    Every answer (and v2.0 plausible answer) is checked:
    ``context[answer_start:answer_start + len(text)] == text``; a mismatch,
    a whitespace-only question, a duplicate id, an answerable question
    without answers (when ``labelled``) or an ``is_impossible`` question with
    answers raises :class:`TaskDataError` naming the file and question id.

    Args:
        labelled: set false for a prediction-only file whose questions carry
            no answers.
    """
    text = "\n".join(read_text_lines(path))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise data_error(path, e.lineno, f"invalid JSON: {e.msg}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("data"), list):
        raise data_error(path, None, "not a SQuAD file: expected an object with a 'data' list")

    examples: list[SquadExample] = []
    seen: dict[str, int] = {}
    for a_idx, article in enumerate(data["data"]):
        title = article.get("title", "") if isinstance(article, Mapping) else ""
        paragraphs = article.get("paragraphs") if isinstance(article, Mapping) else None
        if not isinstance(paragraphs, list):
            raise data_error(path, None, f"data[{a_idx}] has no 'paragraphs' list")
        for p_idx, para in enumerate(paragraphs):
            where = f"data[{a_idx}].paragraphs[{p_idx}]"
            if not isinstance(para, Mapping) or not isinstance(para.get("context"), str) \
                    or not isinstance(para.get("qas"), list):
                raise data_error(path, None, f"{where} needs a string 'context' and a 'qas' list")
            context = para["context"]
            for q_idx, qa in enumerate(para["qas"]):
                if not isinstance(qa, Mapping) or "id" not in qa:
                    raise data_error(path, None, f"{where}.qas[{q_idx}] has no 'id'")
                qid = str(qa["id"])
                if qid in seen:
                    raise _qa_error(path, qid, "duplicate question id")
                seen[qid] = 1
                question = qa.get("question")
                if not isinstance(question, str) or not question.strip():
                    raise _qa_error(path, qid, "question is empty or whitespace-only")
                is_impossible = bool(qa.get("is_impossible", False))
                answers = _check_answers(qa.get("answers", []), context, path, qid, "answers")
                plausible = _check_answers(
                    qa.get("plausible_answers", []), context, path, qid, "plausible_answers"
                )
                if is_impossible and answers:
                    raise _qa_error(path, qid, "is_impossible is true but the question has answers")
                if labelled and not is_impossible and not answers:
                    raise _qa_error(
                        path, qid,
                        "no answers and not marked is_impossible (use labelled=False for "
                        "unlabelled prediction files)",
                    )
                examples.append(
                    SquadExample(
                        id=qid, title=title, question=question, context=context,
                        answers=answers, is_impossible=is_impossible, plausible_answers=plausible,
                    )
                )
    if not examples:
        raise data_error(path, None, "file contains no questions")
    return examples


# ----------------------------------------------------------------------------
# Official evaluation (semantics of evaluate-v1.1.py / evaluate-v2.0.py).
# ----------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, drop ASCII punctuation and the articles a/an/the, squash spaces.

    Exactly the official order: lower -> remove punctuation -> remove
    articles (whole words only, so "theater" stays) -> collapse whitespace.
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def get_tokens(s: str) -> list[str]:
    """Normalized whitespace tokens; ``[]`` for an empty/None answer."""
    if not s:
        return []
    return normalize_answer(s).split()


def compute_exact(a_gold: str, a_pred: str) -> int:
    """1 if the normalized strings are equal, else 0."""
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold: str, a_pred: str) -> float:
    """Token-overlap F1 between normalized answers (v2.0 semantics).

    If either side normalizes to no tokens, the score is 1.0 when both do
    (a correct "no answer") and 0.0 otherwise.
    """
    gold_toks = get_tokens(a_gold)
    pred_toks = get_tokens(a_pred)
    if not gold_toks or not pred_toks:
        return float(gold_toks == pred_toks)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_toks)
    recall = num_same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def _gold_texts(example: SquadExample) -> list[str]:
    # As evaluate-v2.0.py: golds that normalize to nothing are dropped, and an
    # unanswerable question's only gold is the empty string.
    golds = [a["text"] for a in example.answers if normalize_answer(a["text"])]
    return golds or [""]


def squad_evaluate(examples: Sequence[SquadExample], predictions: Mapping[str, str]) -> dict[str, float]:
    """Score ``predictions`` (question id -> answer text, ``""`` = no answer).

    Returns ``exact``, ``f1`` (percent, 0-100, each the max over gold
    answers, averaged over all questions), ``total`` and ``missing`` (number
    of questions without a prediction: each counts as wrong, unlike the v2.0
    script which drops them from the total).  When the set contains
    unanswerable questions the ``HasAns_*`` and ``NoAns_*`` exact/f1/total
    breakdown is added (a part with no questions is left out).
    Predictions for ids not in ``examples`` are ignored.
    """
    if not examples:
        raise ValueError("squad_evaluate needs at least one example")
    exact: dict[str, float] = {}
    f1: dict[str, float] = {}
    has_ans: dict[str, bool] = {}
    missing = 0
    for ex in examples:
        has_ans[ex.id] = bool(ex.answers)
        if ex.id not in predictions:
            missing += 1
            exact[ex.id] = 0.0
            f1[ex.id] = 0.0
            continue
        pred = predictions[ex.id]
        if not isinstance(pred, str):
            raise ValueError(f"prediction for question id {ex.id!r} is {type(pred).__name__}, expected str")
        golds = _gold_texts(ex)
        exact[ex.id] = float(max(compute_exact(g, pred) for g in golds))
        f1[ex.id] = max(compute_f1(g, pred) for g in golds)

    def summary(ids: list[str], prefix: str = "") -> dict[str, float]:
        n = len(ids)
        return {
            f"{prefix}exact": 100.0 * sum(exact[i] for i in ids) / n,
            f"{prefix}f1": 100.0 * sum(f1[i] for i in ids) / n,
            f"{prefix}total": n,
        }

    all_ids = [ex.id for ex in examples]
    out = summary(all_ids)
    out["missing"] = missing
    no_ans = [i for i in all_ids if not has_ans[i]]
    if no_ans:
        with_ans = [i for i in all_ids if has_ans[i]]
        if with_ans:
            out.update(summary(with_ans, "HasAns_"))
        out.update(summary(no_ans, "NoAns_"))
    return out


# ----------------------------------------------------------------------------
# Logits -> answer text.
# ----------------------------------------------------------------------------


def _field(obj: Any, name: str) -> Any:
    return obj[name] if isinstance(obj, Mapping) else getattr(obj, name)


def _valid_offset(offsets: Sequence[Any], index: int) -> bool:
    if index >= len(offsets):  # logits may be padded beyond the feature's tokens
        return False
    o = offsets[index]
    return o is not None and len(o) >= 2


def _is_max_context(max_context: Any, index: int) -> bool:
    # HF datasets store {str(i): bool} (JSON keys), the original BERT code {i: bool}.
    if isinstance(max_context, Mapping):
        return bool(max_context.get(str(index), max_context.get(index, False)))
    return index < len(max_context) and bool(max_context[index])


def postprocess_qa_predictions(
    examples: Sequence[Any],
    features: Sequence[Mapping[str, Any]],
    all_start_logits,
    all_end_logits,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    version_2_with_negative: bool = False,
    null_score_diff_threshold: float = 0.0,
    return_null_odds: bool = False,
):
    """Pick the answer span of each example from its features' logits.

    Args:
        examples: :class:`SquadExample` objects (or mappings with ``id`` and
            ``context``).
        features: one mapping per model input window, see the module
            docstring (``example_id``, ``offset_mapping``, optional
            ``token_is_max_context``).
        all_start_logits, all_end_logits: one row of logits per feature, e.g.
            arrays ``(num_features, seq_len)``; rows may be longer than
            ``offset_mapping`` (padding is ignored) and may differ in length.
        n_best_size: start and end candidates per feature, and the length of
            each n-best list.
        max_answer_length: longest answer in tokens.
        version_2_with_negative: allow "no answer" (SQuAD v2.0).
        null_score_diff_threshold: predict ``""`` when
            ``null_score - best_span_score > threshold``.
        return_null_odds: also return ``{id: null_score - best_span_score}``
            (v2.0 only; the score the threshold is compared with).

    Returns:
        ``(predictions, nbest)`` or ``(predictions, nbest, null_odds)``:
        ``predictions[id]`` is the answer text (``""`` for no answer, or when
        no valid span exists); ``nbest[id]`` is a list, best first, of dicts
        ``text, start_logit, end_logit, score, probability`` (softmax of
        ``score`` over the list) plus ``offsets`` (char span in the context,
        ``None`` for the null answer).

    The null score of an example is the *minimum* over its features of
    ``start_logits[0] + end_logits[0]`` (as in run_qa.py: the window that
    most believes the answer is present decides).
    """
    # One 1-D row per feature; rows may differ in length (unpadded batches).
    start_all = [np.asarray(row, dtype=np.float64) for row in all_start_logits]
    end_all = [np.asarray(row, dtype=np.float64) for row in all_end_logits]
    if len(start_all) != len(features) or len(end_all) != len(features):
        raise ValueError(
            f"{len(features)} features but {len(start_all)} rows of start logits and "
            f"{len(end_all)} rows of end logits"
        )
    for f_idx, (s_row, e_row) in enumerate(zip(start_all, end_all)):
        if s_row.ndim != 1 or s_row.shape != e_row.shape or len(s_row) == 0:
            raise ValueError(
                f"feature {f_idx}: start/end logits must be 1-D rows of equal length, got "
                f"shapes {s_row.shape} and {e_row.shape}"
            )
    if n_best_size < 1 or max_answer_length < 1:
        raise ValueError("n_best_size and max_answer_length must be >= 1")

    example_ids = [str(_field(ex, "id")) for ex in examples]
    features_per_example: dict[str, list[int]] = {i: [] for i in example_ids}
    for f_idx, feat in enumerate(features):
        ex_id = str(feat["example_id"])
        if ex_id not in features_per_example:
            raise ValueError(f"feature {f_idx} has example_id {ex_id!r}, which is not among the examples")
        features_per_example[ex_id].append(f_idx)

    predictions: dict[str, str] = {}
    all_nbest: dict[str, list[dict[str, Any]]] = {}
    null_odds: dict[str, float] = {}

    for ex, ex_id in zip(examples, example_ids):
        context = _field(ex, "context")
        candidates: list[dict[str, Any]] = []
        null: dict[str, Any] | None = None
        for f_idx in features_per_example[ex_id]:
            offsets = features[f_idx]["offset_mapping"]
            # Positions past the feature's tokens (batch padding) carry arbitrary logits: cut them, so
            # they cannot take n-best slots and the answer does not depend on how examples were batched.
            start_logits, end_logits = start_all[f_idx][: len(offsets)], end_all[f_idx][: len(offsets)]
            max_context = features[f_idx].get("token_is_max_context")
            feature_null = start_logits[0] + end_logits[0]
            if null is None or feature_null < null["score"]:
                null = {"offsets": None, "score": float(feature_null),
                        "start_logit": float(start_logits[0]), "end_logit": float(end_logits[0])}
            # Top-n indices, best first (stable so ties keep index order).
            starts = np.argsort(-start_logits, kind="stable")[:n_best_size]
            ends = np.argsort(-end_logits, kind="stable")[:n_best_size]
            for s in starts.tolist():
                if not _valid_offset(offsets, s):
                    continue
                if max_context is not None and not _is_max_context(max_context, s):
                    continue
                for e in ends.tolist():
                    if not _valid_offset(offsets, e) or e < s or e - s + 1 > max_answer_length:
                        continue
                    candidates.append({
                        "offsets": (int(offsets[s][0]), int(offsets[e][1])),
                        "score": float(start_logits[s] + end_logits[e]),
                        "start_logit": float(start_logits[s]),
                        "end_logit": float(end_logits[e]),
                    })

        # Sort (stable) and keep n_best; the null answer competes for v2.0
        # and is appended if it fell off the list, so its score is reported.
        pool = candidates + ([null] if version_2_with_negative and null is not None else [])
        nbest = sorted(pool, key=lambda c: c["score"], reverse=True)[:n_best_size]
        if version_2_with_negative and null is not None and not any(c is null for c in nbest):
            nbest.append(null)
        for c in nbest:
            c["text"] = "" if c["offsets"] is None else context[c["offsets"][0]:c["offsets"][1]]
        if nbest:
            scores = np.array([c["score"] for c in nbest])
            probs = np.exp(scores - scores.max())
            probs /= probs.sum()
            for c, p in zip(nbest, probs):
                c["probability"] = float(p)
        all_nbest[ex_id] = [
            {k: c[k] for k in ("text", "start_logit", "end_logit", "score", "probability", "offsets")}
            for c in nbest
        ]

        best_span = max(candidates, key=lambda c: c["score"]) if candidates else None
        best_text = "" if best_span is None else context[best_span["offsets"][0]:best_span["offsets"][1]]
        if not version_2_with_negative:
            predictions[ex_id] = best_text
            continue
        if best_span is None:
            # No valid span anywhere: "no answer" is the only option.
            predictions[ex_id] = ""
            null_odds[ex_id] = math.inf
            continue
        assert null is not None
        diff = null["score"] - best_span["score"]
        null_odds[ex_id] = float(diff)
        predictions[ex_id] = "" if diff > null_score_diff_threshold else best_text

    if return_null_odds:
        return predictions, all_nbest, null_odds
    return predictions, all_nbest
