"""Fine-tune and evaluate on a GLUE task (CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE, WNLI).

    accelerate launch -m finetune.glue --task_name mrpc --train_file MRPC/train.tsv \\
        --validation_file MRPC/dev.tsv --model_name_or_path run1 --output_dir out/mrpc

Sentence pairs are encoded as pairs (in both channels for CharBERT); STS-B is a regression
(one output).  Writes metrics.json (official GLUE metrics), {eval,predict}_predictions.tsv
(``index<TAB>prediction``, the GLUE submission format) and the fine-tuned model.
"""

from __future__ import annotations

import numpy as np

from charbert.cli import program_name
from charbert.tasks.errors import TaskDataError
from charbert.tasks.features import glue_features
from charbert.tasks.glue import (
    GLUE_TASKS,
    GlueExample,
    check_glue_texts,
    get_glue_task,
    glue_file_has_labels,
    glue_metrics,
    read_glue,
    write_glue_predictions,
)
from charbert.tasks.inference import gather_predictions
from charbert.tasks.loading import SEQUENCE_CLASSIFICATION

from .common import EvalResult, Split, Task, UsageError, cli, dataset_columns

PROG = program_name("python -m finetune.glue")  # the console script's name when run as one
# The text columns of the Hub's `glue` dataset (as run_glue_no_trainer.py's task_to_keys).
DATASET_TEXT_COLUMNS = {
    "cola": ("sentence",), "sst2": ("sentence",), "mrpc": ("sentence1", "sentence2"),
    "stsb": ("sentence1", "sentence2"), "qqp": ("question1", "question2"), "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2"), "wnli": ("sentence1", "sentence2"),
}


class GlueFinetune(Task):
    name = "glue"
    head = SEQUENCE_CLASSIFICATION

    def add_arguments(self, parser):
        parser.add_argument("--task_name", required=True, help=f"One of {sorted(GLUE_TASKS)} (sst-2, sts-b accepted).")

    def validate(self, args):
        try:
            self.task = get_glue_task(args.task_name)
        except ValueError as err:
            raise UsageError(str(err)) from None

    def describe(self, args):
        return f"glue/{self.task.name}"

    def read(self, args, path, split):
        labelled = split != "predict" or glue_file_has_labels(self.task.name, path)
        examples = read_glue(self.task.name, path, labelled=labelled)
        check_glue_texts(examples, path)
        return Split(split, path, examples, labelled)

    def dataset_split(self, args, split):
        if split != "train" and self.task.name == "mnli":
            return "validation_matched"
        return super().dataset_split(args, split)

    def read_dataset(self, args, rows, source, split):
        columns = args.text_column_name.split(",") if args.text_column_name else DATASET_TEXT_COLUMNS[self.task.name]
        label_column = args.label_column_name or "label"
        dataset_columns(rows, source, [*columns, label_column])
        if len(columns) != len(self.task.text_columns):
            raise UsageError(f"{self.task.name} takes {len(self.task.text_columns)} text column(s); got {columns}")
        names = getattr(rows.features[label_column], "names", None)  # a ClassLabel's names
        examples = []
        for i, row in enumerate(rows):
            label = self.dataset_label(row[label_column], names, source, i)
            examples.append(GlueExample(str(row.get("idx", i)), row[columns[0]],
                                        row[columns[1]] if len(columns) > 1 else None, label, i + 1))
        labelled = all(ex.label is not None for ex in examples)
        if split != "predict" and not labelled:
            raise TaskDataError(f"{source}: rows without a label (-1) in the {split} split")
        check_glue_texts(examples, source)
        return Split(split, source, examples, labelled)

    def dataset_label(self, value, names, source, row):
        """Our label string (or float) of a dataset's label value; None for the test split's -1."""
        if value is None or value == -1:
            return None
        if self.task.is_regression:
            return float(value)
        for candidate in ((names[value] if names and isinstance(value, int) else None), str(value)):
            if candidate in self.task.labels:  # by name (MNLI, QNLI, RTE), else by id (binary tasks)
                return candidate
        raise TaskDataError(f"{source} row {row}: label {value!r} is not a {self.task.name} label "
                            f"(expected one of {list(self.task.labels)})")

    def labels(self, args, train, checkpoint):
        return list(self.task.labels) if self.task.labels is not None else None

    def num_labels(self, labels):
        return self.task.num_labels

    def problem_type(self):
        return "regression" if self.task.is_regression else "single_label_classification"

    def build_features(self, args, tokenizer, split, label2id):
        split.rows = glue_features(tokenizer, split.data, args.max_seq_length, self.task.label2id,
                                   self.task.is_regression)
        if split.name != "train":  # evaluation reads the gold labels from the examples
            for row in split.rows:
                row.pop("labels", None)

    def evaluate(self, args, model, accelerator, loader, split, id2label):
        (logits,) = gather_predictions(model, accelerator, loader, lambda out: (out.logits,))
        logits = np.stack(logits)
        predictions = logits[:, 0] if self.task.is_regression else logits.argmax(-1)
        metrics = {}
        if split.labelled:
            gold = [ex.label if self.task.is_regression else self.task.label2id[ex.label] for ex in split.data]
            metrics = glue_metrics(self.task.name, predictions, gold)
        return EvalResult(metrics, predictions)

    def write_predictions(self, args, output_dir, prefix, split, result):
        name = f"{prefix}_predictions.tsv"
        write_glue_predictions(output_dir / name, self.task.name, result.predictions)
        return [name]


def main(argv=None) -> int:
    return cli(GlueFinetune(), PROG, __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())
