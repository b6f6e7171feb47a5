"""Score fine-tuned models on a clean test file and on character-attacked copies of it; write a report.

    python -m finetune.robustness --task ner --model_name_or_path out/ner_bert out/ner_charbert \\
        --test_file conll2003/test.txt --attacks drop,add,swap,keyboard,all --output_dir report/ner
    python -m finetune.robustness --task glue --task_name mrpc --model_name_or_path out/mrpc \\
        --test_file MRPC/dev.tsv --output_dir report/mrpc --sensitivity --greedy --max_edits 2

Each attacked file is written once (``OUTPUT_DIR/attacks/``, seeded: see ``python -m
finetune.attack``) and every model is scored on the clean file and on each attacked file by
the task's own fine-tuning program (``finetune.ner``, ``.pos``, ``.glue``, ``.squad`` with
``--do_predict``): same reader, features, model loading and metric, so the clean score here
is the score the fine-tuning program reports on that file.  Flags this program does not know
are passed to the task program (e.g. ``--tag_column xpos``, ``--version_2_with_negative``).

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
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from charbert.noise import ATTACK_TYPES, parse_attack_type
from charbert.robustness.report import CLEAN, plot_scores, render_markdown, score_drops
from charbert.tasks.errors import TaskDataError
from charbert.tasks.loading import ModelSetupError

from . import common
from .common import UsageError

PROG = "python -m finetune.robustness"
TASKS = ("ner", "pos", "glue", "squad")
DEFAULT_ATTACKS = ",".join(ATTACK_TYPES + ("all",))
logger = logging.getLogger("finetune")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2, like every other error here
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, help=f"one of {list(TASKS)}")
    p.add_argument("--task_name", default=None, help="GLUE task (mrpc, rte, sst2, ...); required with --task glue")
    p.add_argument("--model_name_or_path", nargs="+", required=True,
                   help="one or more fine-tuned checkpoints (CharBERT or plain), scored side by side")
    p.add_argument("--model_names", nargs="+", default=None, help="names for the report (default: folder names)")
    p.add_argument("--test_file", required=True, help="the clean, labelled file to attack and score")
    p.add_argument("--attacks", default=DEFAULT_ATTACKS,
                   help=f"comma-separated attack types (default {DEFAULT_ATTACKS}; 'all' = a random type per word)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--seed", type=int, default=1, help="seed of the attacks (the scoring is deterministic)")
    p.add_argument("--word_rate", type=float, default=1.0, help="share of eligible words attacked (0..1)")
    p.add_argument("--attack_context", action="store_true", help="SQuAD: attack contexts too (default: questions)")
    p.add_argument("--metric", default=None,
                   help="metric of the table (default: ner f1, pos accuracy, squad f1, glue the task's first)")
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


def _task_program(task: str):
    if task == "ner":
        from .ner import NerFinetune as cls
    elif task == "pos":
        from .pos import PosFinetune as cls
    elif task == "glue":
        from .glue import GlueFinetune as cls
    else:
        from .squad import SquadFinetune as cls
    return cls()


def _default_metric(args) -> str:
    if args.task in ("ner", "squad"):
        return "f1"
    if args.task == "pos":
        return "accuracy"
    from charbert.tasks.glue import get_glue_task

    glue = get_glue_task(args.task_name)
    return "pearson" if glue.is_regression else glue.metrics[0]


def model_names(paths: Sequence[str], names: Optional[Sequence[str]]) -> List[str]:
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


def make_attack_files(args, attacks: Sequence[str], folder: Path) -> Tuple[Dict[str, str], Dict[str, Dict[str, int]]]:
    """Write one attacked copy of the test file per attack type; returns ``(paths, stats)``."""
    from charbert.robustness.attacks import attack_column_file, attack_glue_file, attack_squad_file

    folder.mkdir(parents=True, exist_ok=True)
    test = Path(args.test_file)
    paths, stats = {}, {}
    for attack in attacks:
        out = folder / f"{test.stem}.{attack}{test.suffix}"
        common_kw = dict(attack=attack, seed=args.seed, word_rate=args.word_rate)
        if args.task in ("ner", "pos"):
            stats[attack] = attack_column_file(test, out, task=args.task, **common_kw)
        elif args.task == "glue":
            stats[attack] = attack_glue_file(args.task_name, test, out, **common_kw)
        else:
            stats[attack] = attack_squad_file(test, out, attack_context=args.attack_context, **common_kw)
        paths[attack] = str(out)
        logger.info("%s attack: %s", attack, json.dumps(stats[attack], sort_keys=True))
    return paths, stats


def score_file(task, model_path: str, test_file: str, output_dir: Path, args, passthrough: Sequence[str]) -> Dict:
    """Score one fine-tuned model on one labelled file with the task's fine-tuning program
    (``--do_predict``); returns its metrics (the ``predict`` record of metrics.json)."""
    argv = ["--model_name_or_path", model_path, "--test_file", test_file, "--do_predict",
            "--output_dir", str(output_dir), "--per_device_eval_batch_size", str(args.per_device_eval_batch_size)]
    if args.task == "glue":
        argv += ["--task_name", args.task_name]
    if args.max_seq_length is not None:
        argv += ["--max_seq_length", str(args.max_seq_length)]
    if args.max_predict_samples is not None:
        argv += ["--max_predict_samples", str(args.max_predict_samples)]
    argv += list(passthrough)
    prog = f"python -m finetune.{args.task}"
    parser = common.build_parser(prog, "", task)

    def fail(message):  # a flag the task program rejects: one line, not argparse's exit
        raise UsageError(f"{prog}: {message}")

    parser.error = fail
    task_args = parser.parse_args(argv)
    record = common.run(task, task_args, argv, prog)
    return record["predict"]


# --------------------------------------------------------------------------------------
# Analyses
# --------------------------------------------------------------------------------------


def _word_sentences(args, path: str) -> List[List[str]]:
    """The word lists whose representations S compares (one per sentence / GLUE text)."""
    if args.task == "ner":
        from charbert.tasks.ner import read_conll

        sents = [s.tokens for s in read_conll(path)]
    elif args.task == "pos":
        from charbert.tasks.pos import read_pos

        sents = [s.tokens for s in read_pos(path, tag_column=_passthrough_value(args, "--tag_column", "upos"))]
    else:
        from charbert.tasks.glue import read_glue

        sents = []
        for ex in read_glue(args.task_name, path):
            sents += [t.split() for t in (ex.text_a, ex.text_b) if t is not None]
    if args.max_predict_samples is not None and args.task != "glue":
        sents = sents[: args.max_predict_samples]
    elif args.max_predict_samples is not None:
        sents = sents[: args.max_predict_samples * (2 if _glue_is_pair(args) else 1)]
    return [s for s in sents if s]


def _glue_is_pair(args) -> bool:
    from charbert.tasks.glue import get_glue_task

    return get_glue_task(args.task_name).is_pair


def _passthrough_value(args, flag: str, default: str) -> str:
    rest = list(getattr(args, "passthrough", []))
    return rest[rest.index(flag) + 1] if flag in rest and rest.index(flag) + 1 < len(rest) else default


def _load_encoder(model_path: str):
    """The fine-tuned model (its base model gives the representations) and its tokenizer."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    import charbert  # noqa: F401  (registers CharBERT with the Auto classes)
    from charbert.tasks.loading import inspect_checkpoint, load_task_tokenizer

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a fine-tuned checkpoint has no pooler: not needed here
    try:
        model = AutoModel.from_pretrained(model_path)
    finally:
        hf_logging.set_verbosity(verbosity)
    return model, load_task_tokenizer(inspect_checkpoint(model_path), model)


def run_sensitivity(args, model_path: str, attack_files: Dict[str, str]) -> Dict[str, Dict[str, Any]]:
    from charbert.robustness.sensitivity import sensitivity_from_encoder, word_vectors

    model, tokenizer = _load_encoder(model_path)
    clean = _word_sentences(args, args.test_file)
    max_length = args.max_seq_length or 128

    def encode(sentences):
        return word_vectors(model, tokenizer, sentences, max_length=max_length, batch_size=args.per_device_eval_batch_size)

    clean_vectors = encode(clean)  # once, not once per attack

    def encode_cached(sentences):
        return clean_vectors if sentences == clean else encode(sentences)

    out = {}
    for attack, path in attack_files.items():
        out[attack] = sensitivity_from_encoder(encode_cached, clean, _word_sentences(args, path))
        logger.info("sensitivity %s: %s", attack, json.dumps(out[attack]))
    return out


def run_greedy(args, model_path: str) -> Dict[str, Any]:
    from transformers import AutoModelForSequenceClassification

    import charbert  # noqa: F401
    from charbert.robustness.greedy import greedy_attack, model_predict_proba
    from charbert.tasks.glue import get_glue_task, read_glue
    from charbert.tasks.loading import inspect_checkpoint, load_task_tokenizer

    glue = get_glue_task(args.task_name)
    examples = read_glue(glue.name, args.test_file)
    limit = args.greedy_max_examples or args.max_predict_samples
    if limit is not None:
        examples = examples[:limit]
    model = AutoModelForSequenceClassification.from_pretrained(model_path)
    tokenizer = load_task_tokenizer(inspect_checkpoint(model_path), model)
    texts = [(ex.text_a,) if ex.text_b is None else (ex.text_a, ex.text_b) for ex in examples]
    labels = [glue.label2id[ex.label] for ex in examples]
    predict = model_predict_proba(model, tokenizer, max_length=args.max_seq_length or 128,
                                  batch_size=args.per_device_eval_batch_size)
    start = time.perf_counter()
    result = greedy_attack(texts, labels, predict, ops="all", max_edits=args.max_edits,
                           max_candidates=args.max_candidates, batch_size=args.per_device_eval_batch_size,
                           seed=args.seed, progress=True)
    record = {"accuracy": result.accuracy, "num_examples": result.num_examples, "num_queries": result.num_queries,
              "wall_time_s": round(time.perf_counter() - start, 2)}
    logger.info("greedy attack: %s", json.dumps(record))
    return record


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


def validate(args) -> List[str]:
    """Flag checks that need no model; returns the attack list."""
    args.task = args.task.strip().lower()
    if args.task not in TASKS:
        raise UsageError(f"unknown --task {args.task!r}; allowed: {list(TASKS)}")
    if args.task == "glue" and not args.task_name:
        raise UsageError("--task glue needs --task_name (e.g. mrpc)")
    if args.task != "glue" and args.task_name:
        raise UsageError("--task_name only applies to --task glue")
    if args.task == "glue":
        from charbert.tasks.glue import get_glue_task

        try:
            get_glue_task(args.task_name)
        except ValueError as err:
            raise UsageError(str(err)) from None
    if args.attack_context and args.task != "squad":
        raise UsageError("--attack_context only applies to --task squad")
    attacks = [a.strip().lower() for a in args.attacks.split(",") if a.strip()]
    if not attacks:
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
    if args.sensitivity and args.task == "squad":
        raise UsageError("--sensitivity supports ner, pos and glue (SQuAD: not implemented)")
    if args.greedy:
        if args.task != "glue":
            raise UsageError("--greedy is for sequence classification: use it with --task glue")
        if _is_regression(args):
            raise UsageError(f"--greedy needs a classification task; {args.task_name} is a regression")
        if args.max_edits < 1:
            raise UsageError(f"--max_edits must be >= 1; got {args.max_edits}")
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
    return attacks


def _is_regression(args) -> bool:
    from charbert.tasks.glue import get_glue_task

    return get_glue_task(args.task_name).is_regression


def robustness(args, argv: Sequence[str]) -> Dict[str, Any]:
    start = time.perf_counter()
    attacks = validate(args)
    names = model_names(args.model_name_or_path, args.model_names)
    metric = args.metric or _default_metric(args)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    attack_files, attack_stats = make_attack_files(args, attacks, out / "attacks")

    task = _task_program(args.task)
    files = {CLEAN: args.test_file, **attack_files}
    models = []
    for name, path in zip(names, args.model_name_or_path):
        entry: Dict[str, Any] = {"name": name, "path": str(path), "scores": {}, "metrics": {}}
        for label, file in files.items():
            logger.info("scoring %s on %s (%s)", name, label, file)
            metrics = score_file(task, path, file, out / "runs" / _safe(name) / label, args, args.passthrough)
            if metric not in metrics:
                raise UsageError(f"--metric {metric!r} is not one of the task's metrics: "
                                 f"{sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))}")
            entry["scores"][label] = metrics[metric]
            entry["metrics"][label] = metrics
            if "by_subwords" in metrics:
                entry.setdefault("by_subwords", {})[label] = metrics["by_subwords"]
        entry["drops"] = score_drops(entry["scores"], attacks)
        if args.sensitivity:
            entry["sensitivity"] = run_sensitivity(args, path, attack_files)
        if args.greedy:
            entry["greedy"] = run_greedy(args, path)
        models.append(entry)

    report = {
        "task": args.task, "task_name": args.task_name, "test_file": str(args.test_file), "metric": metric,
        "attacks": attacks, "seed": args.seed, "word_rate": args.word_rate, "attack_context": args.attack_context,
        "max_predict_samples": args.max_predict_samples,
        "attack_files": {a: os.path.relpath(p, out) for a, p in attack_files.items()}, "attack_stats": attack_stats,
        "greedy_settings": {"max_edits": args.max_edits, "max_candidates": args.max_candidates,
                            "max_examples": args.greedy_max_examples or args.max_predict_samples} if args.greedy else None,
        "models": models, "command": f"{PROG} {shlex.join(list(argv))}",
        "wall_time_s": round(time.perf_counter() - start, 2),
    }
    (out / "report.json").write_text(json.dumps(common._json_safe(report), indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    plot_scores(report, out / "scores.png")
    print(render_markdown(report))
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, passthrough = build_parser().parse_known_args(argv)
        args.passthrough = passthrough
        _setup_logging()
        robustness(args, argv)
        code = 0
    except (UsageError, TaskDataError, ModelSetupError, FileNotFoundError, IsADirectoryError, ValueError,
            OSError, json.JSONDecodeError) as err:
        if os.environ.get("CHARBERT_DEBUG"):
            raise
        common._report(PROG, common._one_line(err))
        code = 2
    common._shutdown()
    return code


def _setup_logging() -> None:
    named = logging.getLogger("finetune")
    named.setLevel(logging.INFO)
    if not any(isinstance(h, common._StderrHandler) for h in named.handlers):
        handler = common._StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        named.addHandler(handler)


if __name__ == "__main__":
    raise SystemExit(main())
