"""Fine-tune and evaluate named-entity recognition on CoNLL files (CoNLL-2003 and alike).

    accelerate launch -m finetune.ner --train_file conll2003/train.txt \\
        --validation_file conll2003/dev.txt --model_name_or_path run1 --output_dir out/ner

IOB1 or IOB2 input (converted to IOB2), -DOCSTART- lines skipped, label set from the training
data or --labels.  Entity-level precision/recall/F1 (seqeval strict IOB2) overall and per
type in metrics.json; {eval,predict}_predictions.txt are ``token gold pred`` lines aligned
token for token with the input (words truncated by --max_seq_length get "O"; their number is
``truncated_words`` in metrics.json).
"""

from __future__ import annotations

from charbert.cli import program_name
from charbert.tasks.ner import (
    aligned_columns,
    conll_num_columns,
    ner_metrics,
    ner_subword_breakdown,
    read_conll,
    write_conll,
)

from .common import Split, cli
from .tagging import WordTagging

PROG = program_name("python -m finetune.ner")  # the console script's name when run as one


class NerFinetune(WordTagging):
    name = "ner"

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--tag_column", type=int, default=-1,
                            help="Column of the NER tag (0-based, negative from the end; default: the last).")

    def dataset_tag_column(self, args):
        return "ner_tags"

    def read(self, args, path, split):
        labelled = split != "predict" or conll_num_columns(path) > 1
        stats = {}  # lines the reader repaired (tokens with spaces, misspelt -DOCSTART-): reported in metrics
        sentences = read_conll(path, tag_column=args.tag_column, labelled=labelled, stats=stats,
                               **aligned_columns(path, getattr(args, "aligned_with", None)))
        self.read_stats = {**getattr(self, "read_stats", {}), str(path): {k: v for k, v in stats.items() if v}}
        return Split(split, path, sentences, labelled)

    def score(self, gold, predicted):
        return ner_metrics(gold, predicted)

    def evaluate(self, args, model, accelerator, loader, split, id2label):
        result = super().evaluate(args, model, accelerator, loader, split, id2label)
        result.metrics.update(getattr(self, "read_stats", {}).get(str(split.path), {}))
        if split.labelled:  # entities of one-subword words vs split words (robustness analysis)
            result.metrics["by_subwords"] = ner_subword_breakdown(
                [s.tags for s in split.data], result.predictions, [a.num_subwords() for a in split.meta])
        return result

    def write_predictions(self, args, output_dir, prefix, split, result):
        name = f"{prefix}_predictions.txt"
        write_conll(output_dir / name, split.data, result.predictions)
        return [name]


def main(argv=None) -> int:
    return cli(NerFinetune(), PROG, __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())
