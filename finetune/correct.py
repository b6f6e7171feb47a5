"""Correct typos with the NLM head of a pretrained CharBERT (or a dictionary baseline).

    python -m finetune.correct --model_name_or_path out/pretrain --input dev.swap.txt --format ner \\
        --output dev.swap.corrected.txt --reference conll2003/dev.txt
    python -m finetune.correct --method dictionary --model_name_or_path out/pretrain --input notes.txt \\
        --output notes.fixed.txt

Each word whose NLM prediction (a word of the pretraining word vocabulary) is confident
(probability >= --threshold) and differs from it is rewritten, in its case pattern; everything
else stays byte for byte.  --format picks the file type: text (one sentence a line) or a task
file as the attack tool writes them (ner/pos column files, glue TSV with --task_name, squad
JSON, questions and with --correct_context contexts too): one token stays one token, labels and
answer offsets stay valid.  --method dictionary is the baseline: an out-of-vocabulary word ->
the most frequent word of the same vocabulary within one edit.  With --reference (the clean
file the input was attacked from; ner/pos) it also prints the share of attacked words restored
exactly and the share of clean words wrongly changed.  Errors: one line
``python -m finetune.correct: error: ...``, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from charbert.cli import program_name
from charbert.robustness.correct import DEFAULT_THRESHOLD

PROG = program_name("python -m finetune.correct")  # the console script's name when run as one
FORMATS = ("text", "ner", "pos", "glue", "squad")


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--model_name_or_path", required=True,
                   help="a CharBERT pretraining checkpoint (its NLM head and word_vocab.txt)")
    p.add_argument("--input", required=True, help="the file to correct")
    p.add_argument("--output", required=True, help="where to write the corrected copy")
    p.add_argument("--format", default="text", choices=FORMATS, help="file type (default: text, one sentence a line)")
    p.add_argument("--task_name", default=None, help="--format glue: the GLUE task (mrpc, sst2, ...)")
    p.add_argument("--correct_context", action="store_true", help="--format squad: correct contexts too")
    p.add_argument("--method", default="nlm", choices=("nlm", "dictionary"),
                   help="nlm: the NLM head (default); dictionary: most frequent vocabulary word within one edit")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"NLM probability a replacement needs (default {DEFAULT_THRESHOLD})")
    p.add_argument("--correct_known_words", action="store_true",
                   help="nlm: also rewrite words the word vocabulary knows (default: unknown words only; "
                        "the head was trained on noised words)")
    p.add_argument("--per_device_eval_batch_size", type=int, default=32)
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--reference", default=None, help="ner/pos: the clean file, to measure restored/wrongly changed")
    return p


def make_corrector(args):
    from charbert.pretraining.vocab import WordVocab
    from charbert.robustness.correct import DictionaryCorrector, NlmCorrector

    if args.method == "dictionary":
        return DictionaryCorrector(WordVocab.load(args.model_name_or_path))
    return NlmCorrector.from_pretrained(args.model_name_or_path, threshold=args.threshold,
                                        batch_size=args.per_device_eval_batch_size, max_length=args.max_seq_length,
                                        only_unknown=not args.correct_known_words)


def correct(args) -> dict:
    from charbert.robustness.attacks import rewrite_text_file
    from charbert.robustness.tasks import get_attack_task

    if not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold must be in [0, 1]; got {args.threshold}")
    if args.reference and args.format not in ("ner", "pos"):
        raise ValueError("--reference applies to --format ner or pos")
    corrector = make_corrector(args)
    if args.format == "text":
        stats = rewrite_text_file(args.input, args.output, corrector.correct_sentences)
    else:
        task = get_attack_task(args.format)
        task_args = argparse.Namespace(task_name=args.task_name, attack_context=args.correct_context)
        task.validate(task_args)
        stats = task.correct_file(task_args, corrector.correct_sentences, args.input, args.output)
        if args.reference:
            from charbert.robustness.correct import correction_scores

            ns = argparse.Namespace(max_predict_samples=None)
            words = [task.word_sentences(ns, None, path) for path in (args.reference, args.input, args.output)]
            stats.update(correction_scores(*words))
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(list(argv) if argv is not None else None)
        stats = correct(args)
        print(f"{args.method} corrector: changed {stats['changed']} words -> {args.output} "
              f"{json.dumps(stats, sort_keys=True)}", flush=True)
        return 0
    except (_UsageError, ValueError, OSError, json.JSONDecodeError) as e:
        text = " ".join(str(e).split()) or type(e).__name__
        print(f"{PROG}: error: {text}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
