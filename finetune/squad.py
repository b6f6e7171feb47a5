"""Fine-tune and evaluate extractive question answering on SQuAD v1.1 / v2.0 JSON files.

    accelerate launch -m finetune.squad --version_2_with_negative --train_file v2.0-train.json \\
        --validation_file v2.0-dev.json --model_name_or_path run1 --output_dir out/squad2

Long contexts are split into windows of --max_seq_length tokens sharing --doc_stride tokens;
answers are mapped to token spans through the character offsets ([CLS] when a window does not
contain the answer); predictions take the best span of n-best candidates per window
(--n_best_size, --max_answer_length, each token scored in its max-context window) and, for
v2.0, "no answer" when null score - best span score > --null_score_diff_threshold.
Writes metrics.json (official exact match / F1), {eval,predict}_predictions.json
({id: answer}), *_nbest_predictions.json and, for v2.0, *_null_odds.json.
"""

from __future__ import annotations

import json
import math

from charbert.cli import program_name
from charbert.tasks.errors import TaskDataError
from charbert.tasks.features import squad_features
from charbert.tasks.inference import gather_predictions
from charbert.tasks.loading import QUESTION_ANSWERING
from charbert.tasks.squad import SquadExample, _check_answers, postprocess_qa_predictions, read_squad, squad_evaluate

from .common import EvalResult, Split, Task, UsageError, cli, dataset_columns

PROG = program_name("python -m finetune.squad")  # the console script's name when run as one


class SquadFinetune(Task):
    name = "squad"
    head = QUESTION_ANSWERING
    default_max_seq_length = 384

    def add_arguments(self, parser):
        parser.add_argument("--version_2_with_negative", action="store_true",
                            help="SQuAD v2.0: some questions have no answer.")
        parser.add_argument("--doc_stride", type=int, default=128,
                            help="Tokens of context shared by consecutive windows of a long context.")
        parser.add_argument("--max_query_length", type=int, default=64, help="Questions are cut to this many tokens.")
        parser.add_argument("--n_best_size", type=int, default=20,
                            help="Start/end candidates per window and length of the n-best lists.")
        parser.add_argument("--max_answer_length", type=int, default=30, help="Longest answer in tokens.")
        parser.add_argument("--null_score_diff_threshold", type=float, default=0.0,
                            help="v2.0: predict no answer when null score - best span score exceeds this.")

    def validate(self, args):
        for flag in ("doc_stride", "max_query_length", "n_best_size", "max_answer_length"):
            if getattr(args, flag) < 1:
                raise UsageError(f"--{flag} must be >= 1; got {getattr(args, flag)}")

    def describe(self, args):
        return "squad_v2" if args.version_2_with_negative else "squad_v1"

    def family(self, args):
        return "squad"  # a v2.0 model answers v1.1 questions too

    def read(self, args, path, split):
        return self.checked_split(args, path, split, read_squad(path, labelled=split != "predict"))

    def read_dataset(self, args, rows, source, split):
        """The Hub's squad / squad_v2 columns: id, title, context, question, answers{text, answer_start}."""
        dataset_columns(rows, source, ["id", "question", "context", "answers"])
        examples = []
        for row in rows:
            spans = row["answers"] or {"text": [], "answer_start": []}
            answers = [{"text": t, "answer_start": int(a)} for t, a in zip(spans["text"], spans["answer_start"])]
            answers = _check_answers(answers, row["context"], source, str(row["id"]), "answers")
            examples.append(SquadExample(str(row["id"]), row.get("title") or "", row["question"], row["context"],
                                         answers, is_impossible=not answers))
        return self.checked_split(args, source, split, examples)

    def checked_split(self, args, path, split, examples):
        labelled = all(ex.answers or ex.is_impossible for ex in examples)
        impossible = sum(ex.is_impossible for ex in examples)
        if impossible and not args.version_2_with_negative:
            raise TaskDataError(
                f"{path}: {impossible} questions are unanswerable (is_impossible): this is SQuAD v2.0 data, "
                "pass --version_2_with_negative"
            )
        return Split(split, path, examples, labelled)

    def build_features(self, args, tokenizer, split, label2id):
        split.rows, split.meta = squad_features(tokenizer, split.data, args.max_seq_length, args.doc_stride,
                                                args.max_query_length, training=split.name == "train")

    def evaluate(self, args, model, accelerator, loader, split, id2label):
        starts, ends = gather_predictions(model, accelerator, loader, lambda out: (out.start_logits, out.end_logits),
                                          pad_index=-1e4)
        predictions, nbest, null_odds = postprocess_qa_predictions(
            split.data, split.meta, starts, ends, n_best_size=args.n_best_size,
            max_answer_length=args.max_answer_length, version_2_with_negative=args.version_2_with_negative,
            null_score_diff_threshold=args.null_score_diff_threshold, return_null_odds=True)
        metrics = squad_evaluate(split.data, predictions) if split.labelled else {}
        return EvalResult(metrics, (predictions, nbest, null_odds))

    def write_predictions(self, args, output_dir, prefix, split, result):
        predictions, nbest, null_odds = result.predictions
        files = {f"{prefix}_predictions.json": predictions, f"{prefix}_nbest_predictions.json": nbest}
        if args.version_2_with_negative:  # the official script's --na-prob-file (finite: JSON has no inf)
            files[f"{prefix}_null_odds.json"] = {k: (v if math.isfinite(v) else 1e30) for k, v in null_odds.items()}
        for name, content in files.items():
            (output_dir / name).write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return list(files)


def main(argv=None) -> int:
    return cli(SquadFinetune(), PROG, __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())
