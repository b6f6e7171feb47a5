"""Score fine-tuned models on a clean test file and on character-attacked copies of it; write a report.

    python -m finetune.robustness --task ner --model_name_or_path out/ner_bert out/ner_charbert \\
        --test_file conll2003/test.txt --attacks drop,add,swap,keyboard,all --output_dir report/ner
    python -m finetune.robustness --task glue --task_name mrpc --model_name_or_path out/mrpc \\
        --test_file MRPC/dev.tsv --output_dir report/mrpc --sensitivity --greedy --max_edits 2
    python -m finetune.robustness --task retrieval --model_name_or_path all-MiniLM-L6-v2/ runs/embedding \\
        --test_file squad/v1.1-dev.json --output_dir report/retrieval

Each attacked file is written once (``OUTPUT_DIR/attacks/``, seeded: see ``python -m
finetune.attack``) and every model is scored on the clean file and on each attacked file by
the task's own fine-tuning program (``finetune.ner``, ``.pos``, ``.glue``, ``.squad`` with
``--do_predict``): same reader, features, model loading and metric, so the clean score here
is the score the fine-tuning program reports on that file.  ``--task retrieval`` has no
fine-tuning program to score with: embedding models (sentence-transformers folders, plain or
CharBERT) rank a SQuAD file's paragraphs for each of its questions, clean and attacked, and
are scored by R@1, R@10, MRR@10 and nDCG@10 (:mod:`charbert.robustness.retrieval`), each
model's corpus encoded once.  Flags this program does not know
are passed to the task program (e.g. ``--tag_column xpos``, ``--version_2_with_negative``),
which parses them once with its own parser.  What differs between task families (attack-file
writing, default metric, word lists, prediction files) lives in
:mod:`charbert.robustness.tasks`; this program has no branch on the task name.

``--max_words K [K ...]`` attacks at most K words per sentence, one set of attacked files per K
(rows ``drop K=1``, ...; retrieval's default is K = 1 and 2); ``--attacked_file NAME=PATH`` and
``--advglue FILE`` add files attacked elsewhere; ``--correct_with PRETRAINED`` adds every file
after the NLM-head typo corrector (``python -m finetune.correct``).  Every attacked file gets
the attack metrics of :mod:`charbert.robustness.metrics` (TextAttack's convention).

Writes ``report.json``, ``report.md`` (clean score, each attack's score, absolute and relative
drop, for every model side by side), ``scores.png`` (a bar chart), the attacked files, and
each scoring run's ``metrics.json`` and predictions under ``runs/<model>/<file>/``.

Optional analyses: ``--sensitivity`` (the CharBERT paper's S: mean cosine distance of a word's
representation before and after the attack; NER, POS, GLUE), ``--greedy`` (GLUE
classification: a worst-case attack choosing the most damaging one-character edits, up to
``--max_edits`` words).  NER reports always split entity F1 by one-subword vs split words.
Errors end with one line ``python -m finetune.robustness: error: ...`` and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from charbert.cli import (
    ArgumentParser,
    UsageError,
    program_name,
    quiet_transformers,
    run_main,
    setup_logging,
    write_json,
)
from charbert.noise import ATTACK_TYPES, parse_attack_type
from charbert.robustness.report import CLEAN, plot_scores, render_markdown, score_drops
from charbert.robustness.tasks import ATTACK_TASKS, check_family_options, get_attack_task
from charbert.serving.onnx_runtime import is_onnx_export
from charbert.tasks.errors import TaskDataError
from charbert.tasks.loading import ModelSetupError

from . import common

PROG = program_name("python -m finetune.robustness")  # the console script's name when run as one
TASKS = tuple(ATTACK_TASKS)
DEFAULT_ATTACKS = ",".join(ATTACK_TYPES + ("all",))
CORRECTED = "corrected"
logger = logging.getLogger("finetune")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, help=f"one of {list(TASKS)}")
    p.add_argument("--task_name", default=None, help="GLUE task (mrpc, rte, sst2, ...); required with --task glue")
    p.add_argument("--model_name_or_path", nargs="+", required=True,
                   help="one or more fine-tuned checkpoints (CharBERT or plain), scored side by side")
    p.add_argument("--model_names", nargs="+", default=None, help="names for the report (default: folder names)")
    p.add_argument("--test_file", required=True, help="the clean, labelled file to attack and score")
    p.add_argument("--attacks", default=DEFAULT_ATTACKS,
                   help=f"comma-separated attack types (default {DEFAULT_ATTACKS}; 'all' = a random type per word; "
                        "'none' = only outside files)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--seed", type=int, default=1, help="seed of the attacks (the scoring is deterministic)")
    p.add_argument("--word_rate", type=float, default=1.0, help="share of eligible words attacked (0..1)")
    p.add_argument("--max_words", type=int, nargs="+", default=None, metavar="K",
                   help="attack at most K eligible words per sentence, chosen at random and seeded (Pruthi et al. "
                        "2019 use K = 1, 2); several values: one set of attacks per K, rows 'drop K=1', ... "
                        "(default: every eligible word, as the CharBERT attack sets; retrieval: 1 2)")
    p.add_argument("--attack_context", action="store_true", help="SQuAD: attack contexts too (default: questions)")
    p.add_argument("--attacked_file", action="append", default=[], metavar="NAME=PATH",
                   help="score a file someone else attacked, side by side with the generated ones (repeatable); "
                        "NER/POS files must align token for token with --test_file")
    p.add_argument("--advglue", default=None, metavar="FILE",
                   help="GLUE: the AdvGLUE dev JSON; scores the task's split(s) as outside sets")
    p.add_argument("--correct_with", default=None, metavar="PRETRAINED",
                   help="a pretrained CharBERT checkpoint: also score every file after its NLM head corrected the "
                        "typos (rows '<file> corrected'; see python -m finetune.correct)")
    p.add_argument("--correct_threshold", type=float, default=None,
                   help="confidence the corrector needs (default: finetune.correct's)")
    p.add_argument("--metric", default=None,
                   help="metric of the table (default: ner f1, pos accuracy, squad f1, glue the task's first, "
                        "retrieval mrr@10; retrieval also has recall@1, recall@10, ndcg@10)")
    p.add_argument("--max_seq_length", type=int, default=None, help="passed to the task program (default: its own)")
    p.add_argument("--per_device_eval_batch_size", type=int, default=64)
    p.add_argument("--max_predict_samples", type=int, default=None, help="score only the first N examples")
    a = p.add_argument_group("analyses")
    a.add_argument("--sensitivity", action="store_true", help="compute the sensitivity S per attack (ner, pos, glue)")
    a.add_argument("--greedy", action="store_true", help="greedy worst-case attack (glue classification tasks)")
    a.add_argument("--max_edits", type=int, default=2, help="greedy: most words edited per example")
    a.add_argument("--max_candidates", type=int, default=None,
                   help="greedy: sample at most this many candidate edits per example and step (default: all)")
    a.add_argument("--greedy_max_examples", type=int, default=None, help="greedy: attack only the first N examples")
    return p


# --------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------


def model_names(paths: Sequence[str], names: Sequence[str] | None) -> list[str]:
    """Report names: the given ones, else the shortest distinct path suffixes ('bert', 'run2/ner')."""
    if names is not None:
        if len(names) != len(paths):
            raise UsageError(f"--model_names gives {len(names)} names for {len(paths)} models")
        if len(set(names)) != len(names):
            raise UsageError(f"--model_names must be distinct; got {list(names)}")
        return list(names)
    parts = [Path(os.path.abspath(p)).parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        out = ["/".join(p[-depth:]) for p in parts]
        if len(set(out)) == len(out):
            return out
    raise UsageError(f"the same model is given twice: {list(paths)}")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def attack_budgets(args, task) -> list[int | None]:
    """The budgets K of ``--max_words`` (the task's default when not given; ``[None]``: no budget)."""
    if args.max_words:
        return list(args.max_words)
    return list(task.default_max_words) or [None]


def attack_label(attack: str, budget: int | None, budgets: Sequence[int | None]) -> str:
    """The report's row of one attack: its type, and ``K=<budget>`` when there are several budgets."""
    return f"{attack} K={budget}" if len(budgets) > 1 else attack


def make_attack_files(args, task, attacks: Sequence[str], folder: Path) -> tuple[dict[str, str], dict[str, dict]]:
    """Write one attacked copy of the test file per attack type and budget; returns ``(paths, stats)``
    keyed by :func:`attack_label`."""
    folder.mkdir(parents=True, exist_ok=True)
    test = Path(args.test_file)
    paths, stats = {}, {}
    budgets = attack_budgets(args, task)
    for k in budgets:
        for attack in attacks:
            label = attack_label(attack, k, budgets)
            out = folder / f"{test.stem}.{attack}{f'.k{k}' if k is not None else ''}{test.suffix}"
            stats[label] = task.attack_file(args, test, out, attack, args.seed, args.word_rate, k)
            paths[label] = str(out)
            logger.info("%s attack: %s", label, json.dumps(stats[label], sort_keys=True))
    return paths, stats


def outside_files(args, task, task_args, folder: Path) -> tuple[dict[str, str], dict[str, dict], list[str]]:
    """``--attacked_file NAME=PATH`` and ``--advglue``: ``(paths, read stats, names paired with the clean file)``."""
    paths: dict[str, str] = {}
    stats: dict[str, dict] = {}
    paired: list[str] = []
    for spec in args.attacked_file:
        name, sep, path = spec.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise UsageError(f"--attacked_file expects NAME=PATH; got {spec!r}")
        if not Path(path).is_file():
            raise UsageError(f"--attacked_file {name}: {path}: no such file")
        paths[name] = path
        paired.append(name)
    if args.advglue:
        from charbert.tasks.glue import ADVGLUE_SPLITS, get_glue_task, write_advglue_split

        folder.mkdir(parents=True, exist_ok=True)
        glue = get_glue_task(args.task_name).name
        splits = [s for s, spec in ADVGLUE_SPLITS.items() if spec[0] == glue]  # mnli: mnli and mnli-mm
        if not splits:
            raise UsageError(f"AdvGLUE has no {glue} split (it has {sorted(ADVGLUE_SPLITS)})")
        for split in splits:
            name = "advglue" + split[len(glue):]
            out = folder / f"advglue.{split}.json"
            stats[name] = {"examples": write_advglue_split(args.advglue, out, glue, split)}
            paths[name] = str(out)
    for name, path in paths.items():
        if name in paired:
            try:
                stats[name] = task.check_outside(args, task_args, args.test_file, path)
            except ValueError as err:
                raise UsageError(f"--attacked_file {name}: {err}") from None
    return paths, stats, paired


class Scorer(NamedTuple):
    """The task's fine-tuning program and its parsed flags: what :func:`score_file` runs."""

    program: Any  # a finetune.common.Task
    prog: str
    argv: list[str]
    task_args: argparse.Namespace


def program_args(task, args, passthrough: Sequence[str]) -> Scorer:
    """The scoring program's flags for the clean file, parsed once by its own parser
    (``parse_known_args``); flags neither program knows are an error."""
    if task.in_process:  # scored here: no program to pass flags to
        if passthrough:
            raise UsageError(f"unrecognized arguments: {' '.join(passthrough)}")
        return Scorer(None, PROG, [], argparse.Namespace(test_file=args.test_file))
    program = task.program_task()
    prog = f"python -m {task.program.split(':')[0]}"
    argv = ["--model_name_or_path", args.model_name_or_path[0], "--test_file", args.test_file, "--do_predict",
            "--output_dir", str(args.output_dir), "--per_device_eval_batch_size", str(args.per_device_eval_batch_size),
            *task.program_argv(args)]
    if args.max_seq_length is not None:
        argv += ["--max_seq_length", str(args.max_seq_length)]
    if args.max_predict_samples is not None:
        argv += ["--max_predict_samples", str(args.max_predict_samples)]
    argv += list(passthrough)
    parser = common.build_parser(prog, "", program)
    parser.exit_on_error = False  # a bad value raises argparse.ArgumentError instead of exiting
    try:
        task_args, unknown = parser.parse_known_args(argv)
    except argparse.ArgumentError as err:
        raise UsageError(f"{prog}: {err}") from None
    if unknown:
        raise UsageError(f"unrecognized arguments (neither {PROG} nor {prog} knows them): {' '.join(unknown)}")
    return Scorer(program, prog, argv, task_args)


def score_file(scorer: Scorer, model_path: str, test_file: str, output_dir: Path,
               word_vectors: list | None = None) -> dict:
    """Score one fine-tuned model on one labelled file with the task's fine-tuning program
    (``--do_predict``); returns its metrics (the ``predict`` record of metrics.json).
    ``word_vectors`` (a list; tagging tasks): filled with ``(words, (n_words, D) vectors)`` per
    sentence from the same forward pass, for the sensitivity S."""
    program, prog, argv, task_args = scorer
    run_args = argparse.Namespace(**vars(task_args))
    run_args.model_name_or_path, run_args.test_file, run_args.output_dir = model_path, test_file, str(output_dir)
    run_args.word_vector_sink = word_vectors
    # An attacked copy aligns with the clean --test_file (readers take its column count from there).
    run_args.aligned_with = task_args.test_file if test_file != task_args.test_file else None
    run_argv = list(argv)
    for flag, value in (("--model_name_or_path", model_path), ("--test_file", test_file),
                        ("--output_dir", str(output_dir))):
        run_argv[run_argv.index(flag) + 1] = value
    record = common.run(program, run_args, run_argv, prog)
    return record["predict"]


# --------------------------------------------------------------------------------------
# Analyses
# --------------------------------------------------------------------------------------


def _load_encoder(model_path: str):
    """The fine-tuned model (its base model gives the representations) and its tokenizer."""
    from transformers import AutoModel

    import charbert  # noqa: F401  (registers CharBERT with the Auto classes)
    from charbert.tasks.loading import inspect_checkpoint, load_task_tokenizer

    with quiet_transformers():  # a fine-tuned checkpoint has no pooler: not needed here
        model = AutoModel.from_pretrained(model_path)
    return model, load_task_tokenizer(inspect_checkpoint(model_path), model)


def _sensitivity_step(entry: dict, label: str, vectors: list, clean_vectors: list | None) -> list | None:
    """S of one attacked file from the vectors its scoring pass kept (``vectors``: (words, array) per
    sentence); the clean file's are returned to be kept. Sentences without words are left out, as
    ``task.word_sentences`` does."""
    pairs = [(words, vec) for words, vec in vectors if words]  # (the program applied --max_predict_samples)
    if label == CLEAN:
        return pairs
    from charbert.robustness.sensitivity import sensitivity_from_vectors

    clean_words, clean_vecs = zip(*clean_vectors) if clean_vectors else ((), ())
    noisy_words, noisy_vecs = zip(*pairs) if pairs else ((), ())
    stats = sensitivity_from_vectors(clean_words, noisy_words, clean_vecs, noisy_vecs)
    entry.setdefault("sensitivity", {})[label] = stats
    logger.info("sensitivity %s: %s", label, json.dumps(stats))
    return clean_vectors


def run_sensitivity(args, task, task_args, model_path: str, attack_files: dict[str, str]) -> dict[str, dict[str, Any]]:
    from charbert.robustness.sensitivity import sensitivity_from_encoder, word_vectors

    model, tokenizer = _load_encoder(model_path)
    clean = task.word_sentences(args, task_args, args.test_file)
    max_length = args.max_seq_length or 128

    def encode(sentences):
        return word_vectors(model, tokenizer, sentences, max_length=max_length, batch_size=args.per_device_eval_batch_size)

    clean_vectors = encode(clean)  # once, not once per attack

    def encode_cached(sentences):
        return clean_vectors if sentences == clean else encode(sentences)

    out = {}
    for attack, path in attack_files.items():
        out[attack] = sensitivity_from_encoder(encode_cached, clean, task.word_sentences(args, task_args, path))
        logger.info("sensitivity %s: %s", attack, json.dumps(out[attack]))
    return out


def run_greedy(args, task, model_path: str, clean_run: Path) -> dict[str, Any]:
    from transformers import AutoModelForSequenceClassification

    import charbert  # noqa: F401
    from charbert.robustness.greedy import greedy_attack, greedy_outcomes, model_predict_proba
    from charbert.robustness.metrics import attack_metrics
    from charbert.tasks.loading import inspect_checkpoint, load_task_tokenizer

    glue = task.glue(args)
    examples = task.examples(args, args.test_file)
    if args.greedy_max_examples is not None:  # (task.examples already applies --max_predict_samples)
        examples = examples[: args.greedy_max_examples]
    model = AutoModelForSequenceClassification.from_pretrained(model_path)
    tokenizer = load_task_tokenizer(inspect_checkpoint(model_path), model)
    texts = [(ex.text_a,) if ex.text_b is None else (ex.text_a, ex.text_b) for ex in examples]
    labels = [glue.label2id[ex.label] for ex in examples]
    predict = model_predict_proba(model, tokenizer, max_length=args.max_seq_length or 128,
                                  batch_size=args.per_device_eval_batch_size)
    start = time.perf_counter()
    clean = [glue.label2id[p] for p in task.read_predictions(clean_run)][: len(examples)]  # scored once already
    result = greedy_attack(texts, labels, predict, ops="all", max_edits=args.max_edits,
                           max_candidates=args.max_candidates, batch_size=args.per_device_eval_batch_size,
                           seed=args.seed, progress=True, clean_predictions=clean)
    record = {"accuracy": result.accuracy, "num_examples": result.num_examples, "num_queries": result.num_queries,
              "attack_metrics": attack_metrics(greedy_outcomes(result)),
              "wall_time_s": round(time.perf_counter() - start, 2)}
    logger.info("greedy attack: %s", json.dumps(record))
    return record


def corrected_files(args, task, files: dict[str, str], folder: Path) -> tuple[dict[str, str], dict[str, dict]]:
    """Every file after the NLM-head corrector (``--correct_with``): ``({'<label> corrected': path}, stats)``."""
    from charbert.robustness.correct import DEFAULT_THRESHOLD, NlmCorrector

    corrector = NlmCorrector.from_pretrained(args.correct_with, threshold=args.correct_threshold
                                             if args.correct_threshold is not None else DEFAULT_THRESHOLD,
                                             batch_size=args.per_device_eval_batch_size)
    folder.mkdir(parents=True, exist_ok=True)
    paths, stats = {}, {}
    for label, path in files.items():
        out = folder / f"{_safe(label)}.{CORRECTED}{Path(path).suffix}"
        stats[f"{label} {CORRECTED}"] = task.correct_file(args, corrector.correct_sentences, path, out)
        paths[f"{label} {CORRECTED}"] = str(out)
    return paths, stats


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


def validate(args):
    """Flag checks that need no model; returns ``(task, attacks)``."""
    try:
        task = get_attack_task(args.task)
        check_family_options(task, args)
        task.validate(args)
    except ValueError as err:
        raise UsageError(str(err)) from None
    args.task = task.name
    attacks = [a.strip().lower() for a in args.attacks.split(",") if a.strip()]
    if attacks == ["none"]:
        attacks = []
        if not (args.attacked_file or args.advglue):
            raise UsageError("--attacks none needs --attacked_file or --advglue")
    elif not attacks:
        raise UsageError("--attacks is empty")
    for a in attacks:
        try:
            parse_attack_type(a)
        except ValueError as err:
            raise UsageError(str(err)) from None
    if len(set(attacks)) != len(attacks):
        raise UsageError(f"--attacks names a type twice: {attacks}")
    if not 0.0 <= args.word_rate <= 1.0:
        raise UsageError(f"--word_rate must be in [0, 1]; got {args.word_rate}")
    if args.max_words is not None and min(args.max_words) < 1:
        raise UsageError(f"--max_words must be >= 1; got {min(args.max_words)}")
    if args.max_words is not None and len(set(args.max_words)) != len(args.max_words):
        raise UsageError(f"--max_words names a budget twice: {args.max_words}")
    if args.sensitivity and not task.sensitivity:
        raise UsageError(f"--sensitivity supports {[t.name for t in ATTACK_TASKS.values() if t.sensitivity]} "
                         f"(not --task {task.name})")
    if args.greedy:
        if not task.is_classification(args):
            families = " or ".join(f"--task {t.name}" for t in ATTACK_TASKS.values() if t.classifies)
            what = f"{args.task_name} is a regression" if task.classifies else f"use it with {families}"
            raise UsageError(f"--greedy is for sequence classification: {what}")
        if args.max_edits < 1:
            raise UsageError(f"--max_edits must be >= 1; got {args.max_edits}")
    if args.advglue and not task.classifies:
        raise UsageError("--advglue only applies to --task glue")
    if args.advglue and not Path(args.advglue).is_file():
        raise UsageError(f"--advglue {args.advglue}: no such file")
    if args.max_candidates is not None and args.max_candidates < 1:
        raise UsageError(f"--max_candidates must be >= 1; got {args.max_candidates}")
    test = Path(args.test_file)
    if not test.is_file():
        raise UsageError(f"--test_file {args.test_file}: no such file")
    if test.stat().st_size == 0 or not test.read_text(encoding="utf-8", errors="replace").strip():
        raise UsageError(f"--test_file {args.test_file} is empty")
    for path in args.model_name_or_path:
        if not Path(path).is_dir():
            raise UsageError(f"--model_name_or_path {path}: no such checkpoint folder")
        if (args.sensitivity or args.greedy) and is_onnx_export(path):
            raise UsageError(f"--model_name_or_path {path} is an ONNX export: it is scored like any model, but "
                             "--sensitivity and --greedy need the PyTorch folder it was exported from")
    if args.correct_with and not Path(args.correct_with).is_dir():
        raise UsageError(f"--correct_with {args.correct_with}: no such checkpoint folder")
    return task, attacks


def _score_model(args, task, task_args, scorer, metric, name, path, files, paired, out,
                 sensitivity_of: Sequence[str] = ()) -> dict[str, Any]:
    """Score one model on every file; ``sensitivity_of``: the attacks whose S comes from the same
    forward passes (``task.vectors_from_scoring``), the clean vectors kept once."""
    entry: dict[str, Any] = {"name": name, "path": str(path), "scores": {}, "metrics": {}, "attack_metrics": {}}
    runs = {}
    clean_vectors = None
    if task.in_process:  # one call for every file (retrieval: the corpus encoded once); no prediction files
        logger.info("scoring %s on %s", name, ", ".join(files))
        for label, metrics in task.score_model(args, path, files).items():
            _check_metric(metric, metrics)
            entry["scores"][label] = metrics[metric]
            entry["metrics"][label] = metrics
        entry["drops"] = score_drops(entry["scores"], [label for label in files if label != CLEAN])
        return entry
    for label, file in files.items():
        logger.info("scoring %s on %s (%s)", name, label, file)
        runs[label] = out / "runs" / _safe(name) / _safe(label)
        vectors = [] if sensitivity_of and (label == CLEAN or label in sensitivity_of) else None
        metrics = score_file(scorer, path, file, runs[label], word_vectors=vectors)
        if vectors is not None:
            clean_vectors = _sensitivity_step(entry, label, vectors, clean_vectors)
        _check_metric(metric, metrics)
        entry["scores"][label] = metrics[metric]
        entry["metrics"][label] = metrics
        if "by_subwords" in metrics:
            entry.setdefault("by_subwords", {})[label] = metrics["by_subwords"]
    for label in paired:
        summary = task.attack_summary(args, task_args, args.test_file, files[label], runs[CLEAN], runs[label])
        if summary is not None:
            entry["attack_metrics"][label] = summary
    entry["drops"] = score_drops(entry["scores"], [label for label in files if label != CLEAN])
    return entry


def _check_metric(metric: str, metrics: dict[str, Any]) -> None:
    if metric not in metrics:
        raise UsageError(f"--metric {metric!r} is not one of the task's metrics: "
                         f"{sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))}")


def robustness(args, argv: Sequence[str]) -> dict[str, Any]:
    start = time.perf_counter()
    task, attacks = validate(args)
    names = model_names(args.model_name_or_path, args.model_names)
    out = Path(args.output_dir)
    scorer = program_args(task, args, args.passthrough)
    task_args = scorer.task_args
    metric = args.metric or task.default_metric(args)
    out.mkdir(parents=True, exist_ok=True)
    attack_files, attack_stats = make_attack_files(args, task, attacks, out / "attacks")
    budgets = attack_budgets(args, task)
    outside, outside_stats, outside_paired = outside_files(args, task, task_args, out / "attacks")
    clash = sorted((set(outside) & set(attack_files)) | ({CLEAN} & set(outside)))
    if clash:
        raise UsageError(f"--attacked_file names {clash} clash with the generated attacks or 'clean'")
    files = {CLEAN: args.test_file, **attack_files, **outside}
    corrected, corrected_stats = {}, {}
    if args.correct_with:
        corrected, corrected_stats = corrected_files(args, task, files, out / CORRECTED)
    unpaired = set(outside) - set(outside_paired)  # AdvGLUE: other examples than the test file's
    paired = list(attack_files) + outside_paired + [f"{label} {CORRECTED}" for label in files
                                                    if corrected and label not in unpaired]
    models = []
    for name, path in zip(names, args.model_name_or_path):
        shared = list(attack_files) if args.sensitivity and task.vectors_from_scoring else []
        entry = _score_model(args, task, task_args, scorer, metric, name, path, {**files, **corrected}, paired, out,
                             sensitivity_of=shared)
        if args.sensitivity and not shared:
            entry["sensitivity"] = run_sensitivity(args, task, task_args, path, attack_files)
        if args.greedy:
            entry["greedy"] = run_greedy(args, task, path, out / "runs" / _safe(name) / CLEAN)
        models.append(entry)

    report = {
        "task": args.task, "task_name": args.task_name, "test_file": str(args.test_file), "metric": metric,
        "attacks": list(attack_files), "attack_types": attacks, "seed": args.seed, "word_rate": args.word_rate,
        "max_words": budgets[0] if len(budgets) == 1 else budgets,
        "attack_context": args.attack_context, "max_predict_samples": args.max_predict_samples,
        "attack_files": {a: os.path.relpath(p, out) for a, p in attack_files.items()}, "attack_stats": attack_stats,
        "outside": list(outside), "outside_files": {k: str(v) for k, v in outside.items()},
        "outside_stats": outside_stats, "corrected": list(corrected), "corrected_stats": corrected_stats,
        "correct_with": args.correct_with,
        "greedy_settings": {"max_edits": args.max_edits, "max_candidates": args.max_candidates,
                            "max_examples": args.greedy_max_examples or args.max_predict_samples}
        if args.greedy else None,
        "models": models, "command": f"{PROG} {shlex.join(list(argv))}",
        "wall_time_s": round(time.perf_counter() - start, 2),
    }
    write_json(out / "report.json", report)
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    plot_scores(report, out / "scores.png")
    print(render_markdown(report))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def run() -> None:
        args, passthrough = build_parser().parse_known_args(argv)
        args.passthrough = passthrough
        setup_logging(("finetune",))
        robustness(args, argv)

    return run_main(PROG, run, known_errors=(TaskDataError, ModelSetupError, json.JSONDecodeError))


if __name__ == "__main__":
    raise SystemExit(main())
