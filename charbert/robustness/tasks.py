"""What the robustness tools need of each task family, behind one interface and a registry.

``python -m finetune.attack`` and ``python -m finetune.robustness`` know no task by name: they
look the family up in :data:`ATTACK_TASKS` (:func:`get_attack_task`) and ask it

* :meth:`AttackTask.attack_file` -- write an attacked copy of a file (:mod:`.attacks`);
* :meth:`AttackTask.default_metric` -- the score of the report's table;
* :meth:`AttackTask.word_sentences` -- the word lists the sensitivity S compares;
* :meth:`AttackTask.read_predictions` -- the predictions a scoring run wrote (its task program's
  ``write_predictions``), for the attack metrics of :mod:`.metrics`;
* :meth:`AttackTask.attack_summary` -- those metrics for one clean / attacked pair of runs;
* :meth:`AttackTask.check_outside` -- whether a file someone else attacked can be scored against
  the clean one (NER/POS: token for token);
* :meth:`AttackTask.correct_file` -- the typo corrector applied to a file of the family.

Scoring itself is the family's fine-tuning program (``program``, a :class:`finetune.common.Task`),
imported lazily so this module does not depend on the programs; a family without one
(``in_process``: retrieval) scores a model on all the files at once itself
(:meth:`AttackTask.score_model`).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from charbert.robustness.attacks import (
    attack_column_file,
    attack_glue_file,
    attack_squad_file,
    rewrite_advglue_file,
    rewrite_column_file,
    rewrite_glue_file,
    rewrite_squad_file,
)
from charbert.robustness.greedy import word_cores
from charbert.robustness.metrics import Outcome, attack_metrics, labelling_attack_metrics, perturbed_words
from charbert.tasks.errors import TaskDataError, location

__all__ = ["AttackTask", "ATTACK_TASKS", "get_attack_task", "register"]

ATTACK_TASKS: dict[str, AttackTask] = {}


def register(cls: type) -> type:
    """Class decorator: one instance of each family in :data:`ATTACK_TASKS`, under its ``name``."""
    ATTACK_TASKS[cls.name] = cls()
    return cls


def get_attack_task(name: str) -> AttackTask:
    key = (name or "").strip().lower()
    if key not in ATTACK_TASKS:
        raise ValueError(f"unknown --task {name!r}; allowed: {list(ATTACK_TASKS)}")
    return ATTACK_TASKS[key]


def option_owner(option: str) -> list[str]:
    """The families that take a family-specific flag (``task_name``, ``attack_context``)."""
    return [t.name for t in ATTACK_TASKS.values() if option in t.options]


def _prediction_file(run_dir: Path) -> Path:
    record = json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8"))
    return Path(run_dir) / record["predict"]["predictions"][0]


class AttackTask:
    """One task family for the robustness tools (see the module docstring)."""

    name = ""
    program = ""  # "module:Class" of the fine-tuning program that scores files
    options: tuple[str, ...] = ()  # family-specific flags of the robustness tools
    sensitivity = False  # does S apply (word-aligned inputs)?
    vectors_from_scoring = False  # does the scoring program hand back the word vectors of S (one pass per file)?
    classifies = False  # sequence classification: the greedy attack and the TextAttack summary apply
    size_key = "words"  # the attack statistic counting the words seen
    in_process = False  # scored by score_model here rather than by a fine-tuning program
    default_max_words: tuple[int, ...] = ()  # attack budgets K when --max_words is not given (default: none)

    def program_task(self):
        module, cls = self.program.split(":")
        return getattr(importlib.import_module(module), cls)()

    def validate(self, args) -> None:
        """Family-specific flag checks (``args``: the robustness or attack tool's flags)."""

    def program_argv(self, args) -> list[str]:
        """Flags the scoring program needs beyond model, file and output folder."""
        return []

    def default_metric(self, args) -> str:
        raise NotImplementedError

    def is_classification(self, args) -> bool:
        """Does the TextAttack summary (and the greedy attack) apply to this run?"""
        return self.classifies

    def attack_file(self, args, in_path, out_path, attack: str, seed: int, word_rate: float,
                    max_words: int | None) -> dict[str, int]:
        raise NotImplementedError

    def word_sentences(self, args, task_args, path: str) -> list[list[str]]:
        raise NotImplementedError(f"--sensitivity does not support --task {self.name}")

    def read_predictions(self, run_dir: Path) -> list[Any]:
        raise NotImplementedError

    def attack_summary(self, args, task_args, clean_file: str, attacked_file: str, clean_run: Path,
                       attacked_run: Path) -> dict[str, Any] | None:
        return None

    def check_outside(self, args, task_args, clean_file: str, attacked_file: str) -> dict[str, Any]:
        """Check that an outside attacked file can be scored against ``clean_file``; returns what the
        reader repaired on the way (empty when nothing)."""
        return {}

    def correct_file(self, args, correct_words, in_path, out_path) -> dict[str, int]:
        """Write ``in_path`` with its words rewritten by ``correct_words`` (a
        :data:`charbert.robustness.attacks.Rewrite`), labels and format kept."""
        raise NotImplementedError(f"the corrector does not support --task {self.name}")

    def score_model(self, args, model_path: str, files: dict[str, str]) -> dict[str, dict[str, Any]]:
        """``in_process`` families: the metrics of one model on every file, ``{label: metrics}``."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------
# NER and POS: column files, one word per line
# --------------------------------------------------------------------------------------


class _Tagging(AttackTask):
    sensitivity = True
    vectors_from_scoring = True  # finetune.tagging fills ``word_vector_sink``
    size_key = "tokens"

    def attack_file(self, args, in_path, out_path, attack, seed, word_rate, max_words):
        return attack_column_file(in_path, out_path, attack=attack, seed=seed, word_rate=word_rate, task=self.name,
                                  max_words=max_words)

    def read_sentences(self, task_args, path: str, stats: dict[str, int] | None = None):
        raise NotImplementedError

    def word_sentences(self, args, task_args, path):
        sents = [s.tokens for s in self.read_sentences(task_args, path)]
        if args.max_predict_samples is not None:
            sents = sents[: args.max_predict_samples]
        return [s for s in sents if s]

    def read_predictions(self, run_dir):
        """The last column of ``token [gold] pred`` blocks (``write_conll`` / ``write_pos_predictions``)."""
        out: list[list[str]] = [[]]
        for line in _prediction_file(run_dir).read_text(encoding="utf-8").split("\n"):
            if line.strip():
                out[-1].append(line.split()[-1])
            elif out[-1]:
                out.append([])
        return [s for s in out if s]

    def attack_summary(self, args, task_args, clean_file, attacked_file, clean_run, attacked_run):
        clean = [s.tokens for s in self.read_sentences(task_args, clean_file)]
        attacked = [s.tokens for s in self.read_sentences(task_args, attacked_file)]
        clean_pred, attacked_pred = self.read_predictions(clean_run), self.read_predictions(attacked_run)
        n = len(clean_pred)
        return labelling_attack_metrics(clean_pred, attacked_pred, clean[:n], attacked[:n])

    def check_outside(self, args, task_args, clean_file, attacked_file):
        stats: dict[str, int] = {}
        clean = self.read_sentences(task_args, clean_file)
        attacked = self.read_sentences(task_args, attacked_file, stats)
        for c, a in zip(clean, attacked):
            for k in range(max(len(c), len(a))):
                if k >= len(c) or k >= len(a) or (c.tags is not None and c.tags[k] != a.tags[k]):
                    lines = a.token_lines or [a.line]
                    line = lines[min(k, len(lines) - 1)]
                    what = "a sentence ends" if k >= len(a) or k >= len(c) else \
                        f"tag {a.tags[k]!r} where {location(clean_file, c.token_lines[k])} has {c.tags[k]!r}"
                    raise TaskDataError(f"{location(attacked_file, line)}: does not align token for token with "
                                        f"--test_file ({what}; sentence of line {c.line} there)")
        if len(clean) != len(attacked):
            raise TaskDataError(f"{attacked_file}: {len(attacked)} sentences, --test_file {clean_file} has "
                                f"{len(clean)}: the files do not align")
        return {k: v for k, v in stats.items() if v}

    def correct_file(self, args, correct_words, in_path, out_path):
        return rewrite_column_file(in_path, out_path, correct_words, task=self.name)


@register
class NerAttackTask(_Tagging):
    name = "ner"
    program = "finetune.ner:NerFinetune"

    def default_metric(self, args):
        return "f1"

    def read_sentences(self, task_args, path, stats=None):
        from charbert.tasks.ner import aligned_columns, read_conll

        return read_conll(path, tag_column=getattr(task_args, "tag_column", -1), stats=stats,
                          **aligned_columns(path, getattr(task_args, "test_file", None)))


@register
class PosAttackTask(_Tagging):
    name = "pos"
    program = "finetune.pos:PosFinetune"

    def default_metric(self, args):
        return "accuracy"

    def read_sentences(self, task_args, path, stats=None):
        from charbert.tasks.pos import read_pos

        return read_pos(path, tag_column=getattr(task_args, "tag_column", "upos"))


# --------------------------------------------------------------------------------------
# GLUE: a TSV of one or two texts per example
# --------------------------------------------------------------------------------------


@register
class GlueAttackTask(AttackTask):
    name = "glue"
    program = "finetune.glue:GlueFinetune"
    options = ("task_name",)
    sensitivity = True
    classifies = True

    def glue(self, args):
        from charbert.tasks.glue import get_glue_task

        return get_glue_task(args.task_name)

    def validate(self, args):
        if not args.task_name:
            raise ValueError("--task glue needs --task_name (e.g. mrpc)")
        self.glue(args)

    def program_argv(self, args):
        return ["--task_name", args.task_name]

    def default_metric(self, args):
        glue = self.glue(args)
        return "pearson" if glue.is_regression else glue.metrics[0]

    def is_classification(self, args):
        return not self.glue(args).is_regression

    def attack_file(self, args, in_path, out_path, attack, seed, word_rate, max_words):
        return attack_glue_file(args.task_name, in_path, out_path, attack=attack, seed=seed, word_rate=word_rate,
                                max_words=max_words)

    def examples(self, args, path: str):
        from charbert.tasks.glue import read_glue

        examples = read_glue(self.glue(args).name, path)
        return examples if args.max_predict_samples is None else examples[: args.max_predict_samples]

    def word_sentences(self, args, task_args, path):
        sents = [t.split() for ex in self.examples(args, path) for t in (ex.text_a, ex.text_b) if t is not None]
        return [s for s in sents if s]

    def read_predictions(self, run_dir):
        """The label strings of ``index<TAB>prediction`` (``write_glue_predictions``)."""
        lines = _prediction_file(run_dir).read_text(encoding="utf-8").split("\n")[1:]
        return [line.split("\t")[1] for line in lines if line.strip()]

    def attack_summary(self, args, task_args, clean_file, attacked_file, clean_run, attacked_run):
        if not self.is_classification(args):
            return None
        clean, attacked = self.examples(args, clean_file), self.examples(args, attacked_file)
        if len(clean) != len(attacked):  # an outside set of other examples (AdvGLUE): no pairing
            return None
        clean_pred, attacked_pred = self.read_predictions(clean_run), self.read_predictions(attacked_run)
        outcomes = []
        for c, a, pc, pa in zip(clean, attacked, clean_pred, attacked_pred):
            words_c = [w for t in (c.text_a, c.text_b) if t is not None for w in word_cores(t)]
            words_a = [w for t in (a.text_a, a.text_b) if t is not None for w in word_cores(t)]
            changed = perturbed_words(words_c, words_a) if len(words_c) == len(words_a) else \
                sum(x != y for x, y in zip(words_c, words_a)) + abs(len(words_c) - len(words_a))
            outcomes.append(Outcome(pc == c.label, pa == a.label, len(words_c), changed))
        return attack_metrics(outcomes)

    def check_outside(self, args, task_args, clean_file, attacked_file):
        clean, attacked = self.examples(args, clean_file), self.examples(args, attacked_file)
        for c, a in zip(clean, attacked):
            if c.label != a.label:
                raise TaskDataError(f"{location(attacked_file, a.line)}: label {a.label!r} where "
                                    f"{location(clean_file, c.line)} has {c.label!r}: the files do not align")
        if len(clean) != len(attacked):
            raise TaskDataError(f"{attacked_file}: {len(attacked)} examples, --test_file {clean_file} has "
                                f"{len(clean)}: the files do not align")
        return {}

    def correct_file(self, args, correct_words, in_path, out_path):
        from charbert.tasks.glue import is_advglue_file

        if is_advglue_file(in_path):
            return rewrite_advglue_file(in_path, out_path, correct_words)
        return rewrite_glue_file(args.task_name, in_path, out_path, correct_words)


# --------------------------------------------------------------------------------------
# SQuAD: questions (and contexts) in JSON
# --------------------------------------------------------------------------------------


@register
class SquadAttackTask(AttackTask):
    name = "squad"
    program = "finetune.squad:SquadFinetune"
    options = ("attack_context",)

    def default_metric(self, args):
        return "f1"

    def attack_file(self, args, in_path, out_path, attack, seed, word_rate, max_words):
        return attack_squad_file(in_path, out_path, attack=attack, seed=seed, attack_context=args.attack_context,
                                 word_rate=word_rate, max_words=max_words)

    def read_predictions(self, run_dir):
        return json.loads(_prediction_file(run_dir).read_text(encoding="utf-8"))

    def correct_file(self, args, correct_words, in_path, out_path):
        return rewrite_squad_file(in_path, out_path, correct_words, rewrite_context=args.attack_context)


# --------------------------------------------------------------------------------------
# Retrieval: SQuAD questions against their paragraphs, with an embedding model
# --------------------------------------------------------------------------------------


@register
class RetrievalAttackTask(AttackTask):
    """Question -> paragraph retrieval on a SQuAD JSON file (:mod:`.retrieval`); the questions are
    attacked, the paragraphs never.  Scored here, each model's corpus encoded once."""

    name = "retrieval"
    in_process = True
    default_max_words = (1, 2)

    def validate(self, args):
        from charbert.robustness.retrieval import METRICS

        metric = getattr(args, "metric", None)  # (finetune.attack has no --metric)
        if metric is not None and metric not in METRICS:
            raise ValueError(f"--metric {metric!r}: --task retrieval has {list(METRICS)}")

    def default_metric(self, args):
        return "mrr@10"

    def attack_file(self, args, in_path, out_path, attack, seed, word_rate, max_words):
        from charbert.robustness.retrieval import attack_squad_questions

        return attack_squad_questions(in_path, out_path, attack, seed, max_words=max_words, word_rate=word_rate)

    def check_outside(self, args, task_args, clean_file, attacked_file):
        from charbert.robustness.retrieval import read_squad_retrieval

        clean, attacked = read_squad_retrieval(clean_file), read_squad_retrieval(attacked_file)
        if attacked.query_ids != clean.query_ids:
            raise TaskDataError(f"{attacked_file}: {len(attacked.query_ids)} questions, --test_file {clean_file} has "
                                f"{len(clean.query_ids)}: the questions do not align (same ids, same order)")
        return {}

    def correct_file(self, args, correct_words, in_path, out_path):
        return rewrite_squad_file(in_path, out_path, correct_words, rewrite_context=False)

    def score_model(self, args, model_path, files):
        from charbert.embedding import load_embedding_model
        from charbert.robustness.retrieval import evaluate_retrieval, read_squad_retrieval
        from charbert.tasks.loading import ModelSetupError

        data = read_squad_retrieval(args.test_file, args.max_predict_samples)
        query_sets = {}
        for label, path in files.items():
            queries = data if path == args.test_file else read_squad_retrieval(path, args.max_predict_samples)
            if queries.query_ids != data.query_ids:
                raise TaskDataError(f"{path}: its questions do not align with --test_file {args.test_file}")
            query_sets[label] = queries.queries
        try:
            model = load_embedding_model(model_path)
        except ValueError as err:  # NotAnEmbeddingModel: one line naming the folder
            raise ModelSetupError(f"--model_name_or_path {model_path}: {err}") from None
        if args.max_seq_length is not None:
            model.max_seq_length = args.max_seq_length
        return evaluate_retrieval(model, data, query_sets, batch_size=args.per_device_eval_batch_size, progress=True)


def check_family_options(task: AttackTask, args, options: Sequence[str] = ("task_name", "attack_context")) -> None:
    """A family-specific flag given for another family is an error naming the family it belongs to."""
    for option in options:
        if getattr(args, option, None) and option not in task.options:
            owners = " or ".join(f"--task {o}" for o in option_owner(option))
            raise ValueError(f"--{option} only applies to {owners}")
