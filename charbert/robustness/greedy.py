"""Greedy worst-case character attack on sequence classifiers (Pruthi et al., 2019 style).

Where :mod:`charbert.robustness.attacks` misspells words at random, this attack
searches: in each round it tries every single-character edit
(:func:`charbert.noise.single_edits`) of every eligible word not edited yet,
keeps the edit that lowers the probability of the true class most, and stops
as soon as the prediction is wrong.  Accuracy after round ``k`` is the
accuracy under an attacker allowed to misspell up to ``k`` words.

Words are the whitespace-separated pieces of a text with surrounding
punctuation kept aside (``"house,"`` -> ``"house"``, as in
:mod:`~charbert.robustness.attacks`); only the word core is edited, so
spacing and punctuation stay as they were.  An example is a tuple of one or
two texts (a sentence or a sentence pair); words of both texts are attacked.

The model is only seen through ``predict_proba(list of example tuples) ->
(N, C) probabilities``; :func:`model_predict_proba` builds one for a
CharBERT or plain Hugging Face sequence classifier.
"""

from __future__ import annotations

import itertools
import operator
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from charbert.noise import PRUTHI_RULES, NoiseRules, OpsSpec, _normalise_ops, single_edits
from charbert.robustness.attacks import _split_punct

__all__ = ["GreedyResult", "GreedyExample", "greedy_attack", "greedy_outcomes", "model_predict_proba", "word_cores",
           "replace_word"]

Example = tuple[str, ...]
PredictProba = Callable[[list[Example]], np.ndarray]
Edit = tuple[int, int, str, str]  # (text_index, word_index, old_core, new_core)

# re.split with one capturing group alternates [word, space, word, ..., word]:
# words sit at the even indices (possibly empty at the text's ends).
_WS_SPLIT = re.compile(r"(\s+)")


# --------------------------------------------------------------------------- words


def word_cores(text: str) -> list[str]:
    """The words of ``text`` without their surrounding punctuation, in order."""
    return [_split_punct(p)[1] for p in _WS_SPLIT.split(text)[::2] if p]


def replace_word(text: str, word_index: int, new_core: str) -> str:
    """``text`` with the core of word ``word_index`` replaced (spacing and punctuation kept)."""
    pieces = _WS_SPLIT.split(text)
    slot = [i for i in range(0, len(pieces), 2) if pieces[i]][word_index]
    pre, _, post = _split_punct(pieces[slot])
    pieces[slot] = pre + new_core + post
    return "".join(pieces)


def _apply(texts: Example, edit: Edit) -> Example:
    t, w, _, new = edit
    return texts[:t] + (replace_word(texts[t], w, new),) + texts[t + 1 :]


def _candidates(texts: Example, edited: set, ops: tuple[str, ...], rules: NoiseRules) -> list[Edit]:
    """Every single edit of every eligible, not yet edited word of every text."""
    return [
        (t, w, core, new)
        for t, text in enumerate(texts)
        for w, core in enumerate(word_cores(text))
        if (t, w) not in edited
        for new in single_edits(core, ops, rules)  # [] for ineligible words
    ]


# --------------------------------------------------------------------------- results


@dataclass
class GreedyExample:
    """What the attack did to one example.

    ``broken_at`` is the number of edited words after which the prediction
    became wrong: ``0`` for an example misclassified clean, ``None`` if it
    survived every round.
    """

    texts: Example  # final texts (the clean ones when nothing was edited)
    label: int
    edits: list[Edit] = field(default_factory=list)
    clean_prob: float = 0.0  # true-class probability on the clean texts
    final_prob: float = 0.0  # ... on the final texts
    broken_at: int | None = None
    num_queries: int = 0  # candidate texts of this example scored by the model


@dataclass
class GreedyResult:
    """``accuracy[k]``: accuracy with up to ``k`` edited words per example (``[0]``: clean)."""

    accuracy: list[float]
    num_examples: int
    num_queries: int  # candidate texts scored by the model (clean predictions not counted)
    examples: list[GreedyExample]


# --------------------------------------------------------------------------- scoring


def _score(predict_proba: PredictProba, batch: list[Example], num_classes: int | None) -> np.ndarray:
    probs = np.asarray(predict_proba(batch), dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != len(batch) or probs.shape[1] < 1 or (
        num_classes is not None and probs.shape[1] != num_classes
    ):
        want = f"({len(batch)}, {num_classes if num_classes is not None else 'C'})"
        raise ValueError(f"predict_proba returned shape {probs.shape} for {len(batch)} examples; expected {want}")
    return probs


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


# --------------------------------------------------------------------------- attack


def _check_inputs(examples, labels, max_edits, max_candidates, batch_size) -> tuple[list[Example], list[int]]:
    examples = [(ex,) if isinstance(ex, str) else tuple(ex) for ex in examples]
    if not examples:
        raise ValueError("examples is empty")
    if len(labels) != len(examples):
        raise ValueError(f"{len(examples)} examples but {len(labels)} labels")
    for ex in examples:
        if len(ex) not in (1, 2) or not all(isinstance(t, str) for t in ex):
            raise ValueError(f"an example is a tuple of 1 or 2 texts, got {ex!r}")
    if len({len(ex) for ex in examples}) > 1:
        raise ValueError("examples mix single sentences and sentence pairs")
    if isinstance(max_edits, bool) or not isinstance(max_edits, int) or max_edits < 0:
        raise ValueError(f"max_edits must be an int >= 0, got {max_edits!r}")
    if max_candidates is not None and (not isinstance(max_candidates, int) or max_candidates < 1):
        raise ValueError(f"max_candidates must be None or an int >= 1, got {max_candidates!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    try:
        labels = [operator.index(y) for y in labels]
    except TypeError:
        raise ValueError("labels must be int class ids") from None
    return examples, labels


def greedy_attack(
    examples: Sequence[Example],
    labels: Sequence[int],
    predict_proba: PredictProba,
    *,
    ops: OpsSpec = "all",
    rules: NoiseRules = PRUTHI_RULES,
    max_edits: int = 2,
    max_candidates: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
    clean_predictions: Sequence[int] | None = None,
) -> GreedyResult:
    """Greedy worst-case misspelling attack; returns accuracy under 0..``max_edits`` edited words.

    Round 0 predicts the clean examples; a misclassified one is wrong at every
    ``k`` and not attacked.  Each round ``k >= 1`` scores, for every example
    still classified correctly, all single edits (``ops``, ``rules``) of its
    eligible words not edited yet and keeps the one with the lowest
    true-class probability (ties: the first in text/word/edit order).  If
    the prediction is then wrong the example is broken at ``k`` and left
    alone; if it has no candidate left it keeps its state.

    ``max_candidates`` scores only a uniform sample (without replacement,
    ``numpy.random.default_rng(seed)``) of that many candidates per example
    and round: a cheaper approximation of the full search (a weaker attack,
    so accuracies are upper bounds of the exhaustive ones).

    ``predict_proba`` gets at most ``batch_size`` examples per call; the
    candidates of all examples under attack in a round are pooled into the
    same batches, and only the best candidate per example is kept in memory.

    ``clean_predictions`` (the class ids a scoring run already predicted for the clean
    examples) replaces round 0, so the clean texts are not encoded twice; the clean
    probabilities are then unknown (``clean_prob`` NaN).
    """
    examples, labels = _check_inputs(examples, labels, max_edits, max_candidates, batch_size)
    ops_t = _normalise_ops(ops)
    rng = np.random.default_rng(seed)

    if clean_predictions is not None:
        if len(clean_predictions) != len(examples):
            raise ValueError(f"{len(clean_predictions)} clean predictions for {len(examples)} examples")
        num_classes = None  # known after the first scored batch
        records = [GreedyExample(texts=ex, label=y, clean_prob=float("nan"), final_prob=float("nan"),
                                 broken_at=None if int(p) == y else 0)
                   for ex, y, p in zip(examples, labels, clean_predictions)]
    else:
        clean = np.concatenate([_score(predict_proba, b, None) for b in _chunks(iter(examples), batch_size)])
        num_classes = clean.shape[1]
        if any(not 0 <= y < num_classes for y in labels):
            raise ValueError(f"labels must be class ids in [0, {num_classes})")
        records = [
            GreedyExample(texts=ex, label=y, clean_prob=float(p[y]), final_prob=float(p[y]),
                          broken_at=None if int(np.argmax(p)) == y else 0)
            for ex, y, p in zip(examples, labels, clean)
        ]
    edited: list[set] = [set() for _ in examples]
    num_queries = 0

    for k in range(1, max_edits + 1):
        active = [i for i, r in enumerate(records) if r.broken_at is None]

        def pooled() -> Iterator[tuple[int, Edit]]:
            # Generated lazily, example by example: memory stays at one batch.
            for i in active:
                cands = _candidates(records[i].texts, edited[i], ops_t, rules)
                if max_candidates is not None and len(cands) > max_candidates:
                    keep = np.sort(rng.choice(len(cands), size=max_candidates, replace=False))
                    cands = [cands[j] for j in keep]  # sorted: ties still go to the first
                for edit in cands:
                    yield i, edit

        best: dict = {}  # example index -> (true-class prob, edit, probabilities)
        # Candidates are generated lazily, so the bar counts batches without a total.
        bar = tqdm(_chunks(pooled(), batch_size), desc=f"greedy round {k}/{max_edits}", unit="batch",
                   disable=not progress, file=sys.stderr)
        for batch in bar:
            probs = _score(predict_proba, [_apply(records[i].texts, e) for i, e in batch], num_classes)
            num_classes = probs.shape[1]
            num_queries += len(batch)
            for (i, edit), p in zip(batch, probs):
                records[i].num_queries += 1
                if i not in best or p[labels[i]] < best[i][0]:  # strict: the first of equals wins
                    best[i] = (p[labels[i]], edit, p)

        for i, (p_true, edit, p) in best.items():
            r = records[i]
            r.texts = _apply(r.texts, edit)
            r.edits.append(edit)
            r.final_prob = float(p_true)
            edited[i].add(edit[:2])
            if int(np.argmax(p)) != r.label:
                r.broken_at = k
        if progress:
            broken = sum(r.broken_at == k for r in records)
            print(f"greedy attack: round {k}/{max_edits}: {len(active)} attacked, {broken} broken, "
                  f"{num_queries} queries so far", file=sys.stderr)

    n = len(records)
    accuracy = [sum(r.broken_at is None or r.broken_at > k for r in records) / n for k in range(max_edits + 1)]
    return GreedyResult(accuracy=accuracy, num_examples=n, num_queries=num_queries, examples=records)


def greedy_outcomes(result: GreedyResult) -> list:
    """One :class:`charbert.robustness.metrics.Outcome` per attacked example (for ``attack_metrics``)."""
    from charbert.robustness.metrics import Outcome

    out = []
    for r in result.examples:
        clean_words = sum(len(word_cores(t)) for t in r.texts)  # edits keep the number of words
        out.append(Outcome(clean_correct=r.broken_at != 0, attacked_correct=r.broken_at is None,
                           num_words=clean_words, perturbed_words=len(r.edits), num_queries=r.num_queries))
    return out


# --------------------------------------------------------------------------- models


def model_predict_proba(model, tokenizer, max_length: int = 128, batch_size: int = 64) -> PredictProba:
    """A ``predict_proba`` for a sequence classifier (CharBERT or a plain HF model).

    The examples are featurised exactly like GLUE fine-tuning data
    (:func:`charbert.tasks.features.glue_features`, so a CharBertTokenizer
    adds the character channel) and run in eval mode without gradients on
    the model's device; the model's train/eval mode is restored afterwards.
    """
    import torch

    from charbert.cli import eval_mode
    from charbert.tasks.features import glue_features
    from charbert.tasks.glue import GlueExample
    from charbert.tasks.loading import task_collator

    collate = task_collator(tokenizer)

    def predict_proba(examples: list[Example]) -> np.ndarray:
        if not examples:
            return np.zeros((0, model.config.num_labels))
        if len({len(ex) for ex in examples}) > 1:  # glue_features encodes all as pairs or none
            raise ValueError("a batch must not mix single sentences and sentence pairs")
        glue = [GlueExample(guid="", text_a=ex[0], text_b=ex[1] if len(ex) > 1 else None, label=None, line=0)
                for ex in examples]
        features = glue_features(tokenizer, glue, max_length)
        device = next(model.parameters()).device
        out = []
        with eval_mode(model), torch.inference_mode():
            for lo in range(0, len(features), batch_size):
                batch = {k: v.to(device) for k, v in collate(features[lo : lo + batch_size]).items()}
                out.append(model(**batch).logits.float().softmax(-1).cpu().numpy())
        return np.concatenate(out)

    return predict_proba
