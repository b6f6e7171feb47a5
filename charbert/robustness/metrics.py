"""Attack metrics in the convention of TextAttack (Morris et al., 2020), defined once.

Every attack, random (an attacked copy of the test file) or searched (the greedy attack), ends
in one :class:`Outcome` per example: was the clean input classified correctly, is the attacked
one, how many of its words were perturbed, how many model queries the attack spent.  From
those, :func:`attack_metrics` computes

* ``original_accuracy``: correct on the clean inputs / all examples;
* ``skipped``: examples already wrong on the clean input (TextAttack does not attack them);
* ``successful`` / ``failed``: attacked examples that became wrong / stayed correct;
* ``accuracy_under_attack``: failed / all examples (a skipped example counts as wrong even when
  its attacked copy happens to be right: the attack is only credited on examples it attacked);
* ``attack_success_rate``: successful / (successful + failed), None when nothing was attacked;
* ``avg_perturbed_word_share``: mean over the attacked examples of perturbed words / words;
* ``avg_words_per_input``: mean words per clean input, over all examples;
* ``avg_num_queries``: mean model queries over the attacked examples (None when not counted).

For sequence labelling (NER, POS) there is no single "correct": :func:`labelling_attack_metrics`
gives the share of sentences whose predicted tags changed under the attack (the score under
attack, entity F1 or token accuracy, is the task's own metric on the attacked file).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Outcome", "attack_metrics", "labelling_attack_metrics", "perturbed_words"]


@dataclass(frozen=True)
class Outcome:
    """What an attack did to one example."""

    clean_correct: bool
    attacked_correct: bool
    num_words: int  # words of the clean input
    perturbed_words: int  # words the attack changed
    num_queries: int | None = None  # model calls the attack spent (searched attacks only)


def perturbed_words(clean: Sequence[str], attacked: Sequence[str]) -> int:
    """How many words differ, position by position (attacks keep one word one word)."""
    if len(clean) != len(attacked):
        raise ValueError(f"{len(clean)} clean words but {len(attacked)} attacked ones: attacks keep one word one word")
    return sum(a != b for a, b in zip(clean, attacked))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def attack_metrics(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """The TextAttack summary of a classification attack (see the module docstring)."""
    if not outcomes:
        raise ValueError("attack_metrics needs at least one outcome")
    n = len(outcomes)
    attacked = [o for o in outcomes if o.clean_correct]
    successful = sum(not o.attacked_correct for o in attacked)
    failed = len(attacked) - successful
    queries = [o.num_queries for o in attacked if o.num_queries is not None]
    return {
        "num_examples": n,
        "original_accuracy": len(attacked) / n,
        "accuracy_under_attack": failed / n,
        "attack_success_rate": successful / len(attacked) if attacked else None,
        "successful": successful,
        "failed": failed,
        "skipped": n - len(attacked),
        "avg_perturbed_word_share": _mean([o.perturbed_words / o.num_words if o.num_words else 0.0 for o in attacked]),
        "avg_words_per_input": sum(o.num_words for o in outcomes) / n,
        "avg_num_queries": _mean([float(q) for q in queries]) if queries else None,
    }


def labelling_attack_metrics(clean_predictions: Sequence[Sequence[str]], attacked_predictions: Sequence[Sequence[str]],
                             clean_words: Sequence[Sequence[str]],
                             attacked_words: Sequence[Sequence[str]]) -> dict[str, Any]:
    """NER/POS: share of sentences whose predicted tags changed, and the perturbation statistics."""
    if not (len(clean_predictions) == len(attacked_predictions) == len(clean_words) == len(attacked_words)):
        raise ValueError("clean and attacked predictions and words must cover the same sentences")
    if not clean_words:
        raise ValueError("labelling_attack_metrics needs at least one sentence")
    n = len(clean_words)
    changed = sum(list(c) != list(a) for c, a in zip(clean_predictions, attacked_predictions))
    perturbed = [perturbed_words(c, a) for c, a in zip(clean_words, attacked_words)]
    return {
        "num_sentences": n,
        "changed_prediction_share": changed / n,
        "avg_perturbed_word_share": _mean([p / len(w) if w else 0.0 for p, w in zip(perturbed, clean_words)]),
        "avg_words_per_input": sum(len(w) for w in clean_words) / n,
    }
