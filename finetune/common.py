"""What every fine-tuning program shares: flags, the run (read -> model -> features -> train ->
evaluate -> predict -> save), metrics.json and the error convention.

A program describes its task with a :class:`Task` (reading files, labels, features,
evaluation, prediction files, all from :mod:`charbert.tasks`) and calls :func:`cli`.

Flags follow transformers' ``run_*_no_trainer.py``; the training flags come from
:func:`charbert.training.add_training_args`.  ``--do_train`` is on when ``--train_file`` is
given, ``--do_eval`` when ``--validation_file`` is given; ``--do_predict`` scores
``--test_file`` (default: the validation file) with the trained model, or without training
with a fine-tuned checkpoint.

Bad input (a malformed data line, an unseen label, a checkpoint with the wrong head, an
impossible flag combination) ends with one line on stderr, ``<prog>: error: <message>``
(file and line where they apply), and exit code 2.  ``CHARBERT_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from charbert.cli import (
    UsageError,
    one_line,
    run_main,
    setup_logging,
    write_json,
)
from charbert.model_card import CARD_NAME, write_model_card
from charbert.serving.onnx_runtime import is_onnx_export
from charbert.tasks.errors import TaskDataError
from charbert.tasks.features import FeatureDataset
from charbert.tasks.inference import eval_dataloader
from charbert.tasks.loading import (
    CheckpointInfo,
    ModelSetupError,
    check_head,
    inspect_checkpoint,
    load_task_model,
    load_task_tokenizer,
    max_model_length,
    task_collator,
)
from charbert.training import (
    CheckpointError,
    add_training_args,
    create_accelerator,
    save_model,
    stopped_line,
    train,
    training_config_from_args,
)
from charbert.training.lock import OutputDirError, lock_output_dir

logger = logging.getLogger("finetune")

METRICS_FILE = "metrics.json"
REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------
# What a task provides
# --------------------------------------------------------------------------------------


@dataclass
class Split:
    """One data file of a run and what was built from it."""

    name: str  # "train", "eval" or "predict"
    path: str
    data: list[Any]  # examples or sentences, as the reader returns them
    labelled: bool
    rows: list[dict[str, Any]] = field(default_factory=list)  # model features
    meta: Any = None  # per-feature metadata the evaluation needs (alignments, QA windows)


@dataclass
class EvalResult:
    metrics: dict[str, Any]  # everything, nested allowed (goes to metrics.json)
    predictions: Any  # task-specific, for write_predictions

    def scalars(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Task:
    """Interface of a fine-tuning program (see finetune/glue.py for the shortest one)."""

    name = "task"
    head = ""  # charbert.tasks.loading head kind
    default_max_seq_length = 128

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def validate(self, args) -> None: ...

    def describe(self, args) -> str:
        """The task as metrics.json names it (e.g. glue/mrpc, squad_v2)."""
        return self.name

    def family(self, args) -> str:
        """What a fine-tuned head is for: a head trained for another family is not reused silently."""
        return self.describe(args)

    def read(self, args, path: str, split: str) -> Split:
        raise NotImplementedError

    def dataset_split(self, args, split: str) -> str:
        """The --dataset_name split our split reads (predict: the validation split, as with files)."""
        return "train" if split == "train" else "validation"

    def read_dataset(self, args, rows, source: str, split: str) -> Split:
        """A Split from the rows of a `datasets` split (``rows.features`` names the columns)."""
        raise UsageError(f"{self.name} does not take --dataset_name; give data files")

    def labels(self, args, train: Split | None, checkpoint: CheckpointInfo) -> list[str] | None:
        """Label names in id order; None for tasks without a label set (QA, regression)."""
        return None

    def num_labels(self, labels: list[str] | None) -> int | None:
        return len(labels) if labels is not None else None

    def problem_type(self) -> str | None:
        return None

    def check_split_labels(self, split: Split, labels: list[str] | None) -> None: ...

    def build_features(self, args, tokenizer, split: Split, label2id: dict[str, int] | None) -> None:
        raise NotImplementedError

    def evaluate(self, args, model, accelerator, loader, split: Split, id2label) -> EvalResult:
        raise NotImplementedError

    def write_predictions(self, args, output_dir: Path, prefix: str, split: Split, result: EvalResult) -> list[str]:
        raise NotImplementedError


# --------------------------------------------------------------------------------------
# Flags
# --------------------------------------------------------------------------------------


def build_parser(prog: str, description: str, task: Task) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    m = parser.add_argument_group("model")
    m.add_argument("--model_name_or_path", required=True,
                   help="A CharBERT checkpoint (-> CharBERT), or a plain BERT/RoBERTa checkpoint folder (-> the plain "
                        "AutoModelFor... baseline with its own tokenizer; see --charbert).")
    m.add_argument("--charbert", action="store_true",
                   help="Build CharBERT on a plain BERT/RoBERTa checkpoint: backbone loaded, character encoder, "
                        "fusion and task head new (e.g. 'CharBERT initialised from MiniLM').")
    m.add_argument("--tokenizer_name", default=None,
                   help="A folder with the tokenizer files, when --model_name_or_path has none (as in transformers' examples).")
    m.add_argument("--allow_vocab_mismatch", action="store_true",
                   help="Use a character vocabulary other than the one the checkpoint was trained with (a warning, not an error).")
    m.add_argument("--new_head", action="store_true",
                   help="Drop the checkpoint's task head (another task's, or another label set) and train a new one.")
    d = parser.add_argument_group("data")
    d.add_argument("--dataset_name", type=str, default=None,
                   help="Instead of data files: a datasets Hub name, a local dataset folder or a save_to_disk folder "
                        "(its train and validation splits; needs the `datasets` extra).")
    d.add_argument("--dataset_config_name", type=str, default=None, help="The dataset's configuration (e.g. mrpc).")
    d.add_argument("--dataset_revision", type=str, default=None, help="The dataset's revision.")
    d.add_argument("--text_column_name", type=str, default=None,
                   help="The dataset's text column(s), comma-separated (default: the task's usual columns).")
    d.add_argument("--label_column_name", type=str, default=None,
                   help="The dataset's label column (default: the task's usual column).")
    d.add_argument("--train_file", type=str, default=None)
    d.add_argument("--validation_file", type=str, default=None)
    d.add_argument("--test_file", type=str, default=None,
                   help="File scored by --do_predict (labelled: metrics too; unlabelled: predictions only).")
    d.add_argument("--do_train", action=argparse.BooleanOptionalAction, default=None,
                   help="Train (default: on when --train_file is given).")
    d.add_argument("--do_eval", action=argparse.BooleanOptionalAction, default=None,
                   help="Evaluate on --validation_file (default: on when it is given).")
    d.add_argument("--do_predict", action="store_true",
                   help="Write predictions (and metrics when labelled) for --test_file (default: the validation file). "
                        "Without --train_file the checkpoint must be fine-tuned for the task.")
    d.add_argument("--max_seq_length", type=int, default=task.default_max_seq_length,
                   help="Longest input in subword tokens (longer inputs are truncated; SQuAD: split into windows).")
    d.add_argument("--max_train_samples", type=int, default=None, help="Use only the first N training examples.")
    d.add_argument("--max_eval_samples", type=int, default=None, help="Use only the first N validation examples.")
    d.add_argument("--max_predict_samples", type=int, default=None, help="Use only the first N test examples.")
    task.add_arguments(parser.add_argument_group(task.name))
    add_training_args(parser)
    return parser


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import accelerate
    import tokenizers
    import torch
    import transformers

    import charbert

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "accelerate": accelerate.__version__, "tokenizers": tokenizers.__version__, "charbert": charbert.__version__}
    try:
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5)
        if commit.returncode == 0:
            out["charbert_git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def read_split(task: Task, args, path: str | None, split: str) -> Split:
    """One split from its file, else from the --dataset_name split."""
    if path:
        return task.read(args, path, split)
    from charbert.pretraining.hf_datasets import open_dataset

    name = task.dataset_split(args, split)
    try:
        rows = open_dataset(args.dataset_name, args.dataset_config_name, name, revision=args.dataset_revision,
                            streaming=False)
    except (ImportError, ValueError, FileNotFoundError) as err:  # no datasets, no such split/dataset
        raise UsageError(f"--dataset_name {args.dataset_name}: {one_line(err)}") from None
    source = args.dataset_name + (f"/{args.dataset_config_name}" if args.dataset_config_name else "") + f"[{name}]"
    return task.read_dataset(args, rows, source, split)


def dataset_columns(rows, source: str, wanted: Sequence[str]) -> None:
    missing = [c for c in wanted if c not in rows.column_names]
    if missing:
        raise TaskDataError(f"{source} has no column {', '.join(map(repr, missing))} (columns: "
                            f"{', '.join(rows.column_names)}); set --text_column_name / --label_column_name")


def write_card(output_dir: Path, record: dict[str, Any], model, args, results: dict[str, EvalResult]) -> None:
    """The model card (README.md) of a fine-tuned model: task and eval metrics as in metrics.json."""
    config = getattr(model, "config", None)
    metrics = {f"eval_{k}": v for k, v in results["eval"].scalars().items()} if "eval" in results else {}
    data_files = [f for f in (args.train_file, args.validation_file) if f] or [args.dataset_name]
    write_model_card(output_dir, task=record["task"], metrics=metrics, base_model=args.model_name_or_path,
                     training_args=record["args"], data_files=data_files,
                     char_vocab_size=getattr(config, "char_vocab_size", None),
                     word_vocab_size=getattr(config, "word_vocab_size", None), dataset=record["task"])


def _limit(split: Split | None, n: int | None) -> None:
    if split is not None and n is not None:
        if n < 1:
            raise UsageError(f"--max_{split.name}_samples must be >= 1; got {n}")
        split.data = split.data[:n]


def run(task: Task, args, argv: Sequence[str], prog: str) -> dict[str, Any]:
    """Run one fine-tuning job; returns the metrics.json record."""
    start = time.perf_counter()
    dataset = args.dataset_name is not None
    if dataset and (args.train_file or args.validation_file):
        raise UsageError("give --dataset_name or --train_file/--validation_file, not both")
    do_train = args.do_train if args.do_train is not None else bool(args.train_file or dataset)
    do_eval = args.do_eval if args.do_eval is not None else bool(args.validation_file or dataset)
    do_predict = bool(args.do_predict)
    if do_train and not (args.train_file or dataset):
        raise UsageError("--do_train needs --train_file (or --dataset_name)")
    if do_eval and not (args.validation_file or dataset):
        raise UsageError("--do_eval needs --validation_file (or --dataset_name)")
    predict_file = args.test_file or (args.validation_file if do_predict else None)
    if do_predict and not (predict_file or dataset):
        raise UsageError("--do_predict needs --test_file (or --validation_file, or --dataset_name)")
    if not (do_train or do_eval or do_predict):
        raise UsageError("nothing to do: give --train_file, --validation_file, or --do_predict with --test_file")
    if args.max_seq_length < 8:
        raise UsageError(f"--max_seq_length must be >= 8; got {args.max_seq_length}")
    try:
        config = training_config_from_args(args)
    except ValueError as err:
        raise UsageError(str(err)) from None
    task.validate(args)
    accelerator = create_accelerator(config)
    if accelerator.is_main_process:
        lock_output_dir(config.output_dir)  # one run per folder, until this process exits
    setup_logging(("finetune", "charbert"), logging.INFO if accelerator.is_main_process else logging.WARNING)
    output_dir = Path(config.output_dir)

    # Data first: bad files fail before any model is loaded.
    train_split = read_split(task, args, args.train_file, "train") if do_train else None
    eval_split = read_split(task, args, args.validation_file, "eval") if do_eval else None
    predict_split = read_split(task, args, predict_file, "predict") if do_predict else None
    checkpoint = inspect_checkpoint(args.model_name_or_path, charbert=args.charbert)
    if do_train and is_onnx_export(checkpoint.path):
        raise UsageError(f"{checkpoint.path} is an ONNX export: it only predicts (--do_eval / --do_predict); "
                         "train from the PyTorch folder it was exported from")
    labels = task.labels(args, train_split, checkpoint)  # from the whole training file, as run_ner does
    for split in (eval_split, predict_split):
        if split is not None:
            task.check_split_labels(split, labels)
    _limit(train_split, args.max_train_samples)
    _limit(eval_split, args.max_eval_samples)
    _limit(predict_split, args.max_predict_samples)
    num_labels = task.num_labels(labels)
    check_head(checkpoint, task.head, task.family(args), num_labels or 0, labels, new_head=args.new_head)
    if not do_train and (args.new_head or not checkpoint.head_loads(task.head)):
        what = "the --charbert model built on it would have" if checkpoint.build_charbert and not checkpoint.is_charbert_checkpoint \
            else f"{checkpoint.path} has"
        raise UsageError(
            f"evaluating without training needs a checkpoint fine-tuned for this task, but {what} no trained "
            f"{task.head.replace('_', '-')} head (architecture {checkpoint.architecture}); add --train_file"
        )

    from accelerate.utils import set_seed

    set_seed(args.seed)  # the new head's initial weights
    id2label = dict(enumerate(labels)) if labels is not None else None
    model, report = load_task_model(checkpoint, task.head, id2label=id2label, num_labels=num_labels,
                                    problem_type=task.problem_type(), new_head=args.new_head)
    model.config.finetuning_task = task.family(args)  # saved with the model; checked when it is reused
    tokenizer = load_task_tokenizer(checkpoint, model, tokenizer_name=args.tokenizer_name,
                                    allow_vocab_mismatch=args.allow_vocab_mismatch)
    limit = max_model_length(model)
    if limit is not None and args.max_seq_length > limit:
        raise UsageError(f"--max_seq_length {args.max_seq_length} exceeds what {checkpoint.path} allows ({limit} tokens)")
    label2id = {label: i for i, label in enumerate(labels)} if labels is not None else None
    for split in (train_split, eval_split, predict_split):
        if split is not None:
            task.build_features(args, tokenizer, split, label2id if split.name == "train" else None)
            if not split.rows:
                raise TaskDataError(f"{split.path}: no {split.name} features could be built")
    collator = task_collator(tokenizer)
    logger.info("%s: %s (%s head: %s), %s", task.describe(args), report.model_class, task.head, report.head,
                ", ".join(f"{s.name} {len(s.data)} examples / {len(s.rows)} features"
                          for s in (train_split, eval_split, predict_split) if s is not None))

    record: dict[str, Any] = {"task": task.describe(args), "command": f"{prog} {shlex.join(list(argv))}",
                              "seed": args.seed, "versions": _versions(), "num_processes": accelerator.num_processes,
                              "model": report.to_dict(), "labels": labels}
    files: list[str] = []
    results: dict[str, EvalResult] = {}

    if do_train:
        def eval_fn(model_, accelerator_, loader):
            results["eval"] = task.evaluate(args, model_, accelerator_, loader, eval_split, id2label)
            return results["eval"].scalars()

        outcome = train(model, FeatureDataset(train_split.rows), config, collator,
                        eval_fn=eval_fn if eval_split is not None else None, accelerator=accelerator,
                        eval_dataset=FeatureDataset(eval_split.rows) if eval_split is not None else None)
        if outcome.stopped_early:
            accelerator.print(stopped_line(outcome))
            return record
        record["train"] = {"global_step": outcome.global_step, "epochs_completed": outcome.epochs_completed,
                           "train_loss": outcome.train_loss, "wall_time_s": round(outcome.wall_time_s, 2),
                           "num_examples": len(train_split.data), "num_features": len(train_split.rows),
                           "file": train_split.path}
        save_model(accelerator, model, output_dir, tokenizer=tokenizer)
        files += ["model.safetensors", CARD_NAME]
    else:
        model = accelerator.prepare_model(model, evaluation_mode=True)

    if eval_split is not None and "eval" not in results:
        loader = eval_dataloader(accelerator, FeatureDataset(eval_split.rows), collator, config.per_device_eval_batch_size)
        results["eval"] = task.evaluate(args, model, accelerator, loader, eval_split, id2label)
    if predict_split is not None:
        loader = eval_dataloader(accelerator, FeatureDataset(predict_split.rows), collator,
                                 config.per_device_eval_batch_size)
        results["predict"] = task.evaluate(args, model, accelerator, loader, predict_split, id2label)

    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        for prefix, split in (("eval", eval_split), ("predict", predict_split)):
            if prefix in results:
                written = task.write_predictions(args, output_dir, prefix, split, results[prefix])
                files += written
                record[prefix] = {**results[prefix].metrics, "file": split.path, "labelled": split.labelled,
                                  "num_examples": len(split.data), "num_features": len(split.rows),
                                  "predictions": written}
        record["files"] = files
        # (finetune.robustness's in-process word_vector_sink is not an argument: left out)
        record["args"] = {k: v for k, v in sorted(vars(args).items()) if k != "word_vector_sink"}
        record["wall_time_s"] = round(time.perf_counter() - start, 2)
        write_json(output_dir / METRICS_FILE, record)
        if do_train:  # the folder holds a model: describe it
            write_card(output_dir, record, model, args, results)
        summary = {p: results[p].scalars() for p in results}
        print(json.dumps({"output_dir": str(output_dir), **summary}, indent=None))
    accelerator.wait_for_everyone()
    return record


def cli(task: Task, prog: str, description: str, argv: Sequence[str] | None = None) -> int:
    """Parse flags and run; expected failures -> one line on stderr and exit code 2 (see charbert.cli.run_main)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog, description, task).parse_args(argv)
    return run_main(prog, lambda: run(task, args, argv, prog),
                    known_errors=(TaskDataError, ModelSetupError, CheckpointError, OutputDirError))

