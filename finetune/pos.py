"""Fine-tune and evaluate part-of-speech tagging on CoNLL-U or ``token<TAB>tag`` files.

    accelerate launch -m finetune.pos --train_file en_ewt-ud-train.conllu \\
        --validation_file en_ewt-ud-dev.conllu --model_name_or_path run1 --output_dir out/pos

CoNLL-U files use --tag_column upos (default) or xpos; other files are ``token<TAB>tag``
lines with a blank line between sentences (a one-column file is read as unlabelled tokens
for --do_predict).  Token accuracy in metrics.json; {eval,predict}_predictions.tsv hold
``token<TAB>gold<TAB>pred`` lines aligned with the input (words truncated by
--max_seq_length are counted in ``truncated_words``).
"""

from __future__ import annotations

from charbert.cli import program_name
from charbert.tasks.errors import read_text_lines
from charbert.tasks.ner import read_conll
from charbert.tasks.pos import pos_accuracy, read_pos, write_pos_predictions

from .common import Split, cli
from .tagging import WordTagging

PROG = program_name("python -m finetune.pos")  # the console script's name when run as one


class PosFinetune(WordTagging):
    name = "pos"

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--tag_column", choices=("upos", "xpos"), default="upos",
                            help="CoNLL-U tag column: upos (universal) or xpos (PTB tags for English EWT).")

    def describe(self, args):
        return f"pos/{args.tag_column}"

    def dataset_tag_column(self, args):
        return args.tag_column

    def read(self, args, path, split):
        if split == "predict" and not str(path).lower().endswith(".conllu"):
            first = next((line for line in read_text_lines(path) if line.strip()), "")
            if len(first.split("\t")) == 1:  # tokens only: predictions without a score
                return Split(split, path, read_conll(path, labelled=False), False)
        return Split(split, path, read_pos(path, tag_column=args.tag_column), True)

    def score(self, gold, predicted):
        return pos_accuracy(gold, predicted)

    def write_predictions(self, args, output_dir, prefix, split, result):
        name = f"{prefix}_predictions.tsv"
        write_pos_predictions(output_dir / name, split.data, result.predictions)
        return [name]


def main(argv=None) -> int:
    return cli(PosFinetune(), PROG, __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())
