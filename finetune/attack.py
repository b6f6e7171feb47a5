"""Write a character-attacked copy of a task file (robustness evaluation).

    python -m finetune.attack --task ner --input dev.txt --attack swap --seed 1 --output dev.swap.txt
    python -m finetune.attack --task glue --task_name mrpc --input dev.tsv --attack all --output x.tsv
    python -m finetune.attack --task squad --input dev.json --attack keyboard --attack_context --output y.json

Attacks (Pruthi et al., 2019): drop, add, swap, keyboard, all (a random one
per word); see :mod:`charbert.robustness.attacks`.  Prints a one-line
summary; bad input ends with one line ``python -m finetune.attack: error: ...``
on stderr and exit status 2 (``CHARBERT_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from charbert.cli import ArgumentParser, UsageError, program_name, run_main
from charbert.noise import ATTACK_TYPES, parse_attack_type
from charbert.robustness.tasks import ATTACK_TASKS, check_family_options, get_attack_task
from charbert.tasks.errors import TaskDataError

PROG = program_name("python -m finetune.attack")  # the console script's name when run as one
TASKS = tuple(ATTACK_TASKS)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Write a character-attacked copy of a task file.")
    p.add_argument("--task", required=True, help=f"one of {list(TASKS)}")
    p.add_argument("--task_name", default=None, help="GLUE task (mrpc, sst2, ...); required with --task glue")
    p.add_argument("--input", required=True, help="task file to attack")
    p.add_argument("--output", required=True, help="where to write the attacked copy")
    p.add_argument("--attack", required=True, help=f"one of {list(ATTACK_TYPES) + ['all']}")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--word_rate", type=float, default=1.0, help="share of eligible words attacked (0..1)")
    p.add_argument("--max_words", type=int, default=None,
                   help="attack at most K eligible words per sentence, chosen at random (default: no cap)")
    p.add_argument("--attack_context", action="store_true", help="SQuAD: attack contexts too")
    return p


def _run(args) -> str:
    try:  # flag checks: reported like argparse's own errors
        task = get_attack_task(args.task)
        check_family_options(task, args)
        task.validate(args)
        parse_attack_type(args.attack)
    except ValueError as err:
        raise UsageError(str(err)) from None
    stats = task.attack_file(args, args.input, args.output, args.attack, args.seed, args.word_rate, args.max_words)
    budget = f", max_words {args.max_words}" if args.max_words is not None else ""
    return (
        f"{args.attack} attack (seed {args.seed}, word_rate {args.word_rate:g}{budget}): changed "
        f"{stats['changed']} of {stats[task.size_key]} words -> {args.output} {json.dumps(stats, sort_keys=True)}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    def run() -> None:
        args = build_parser().parse_args(list(argv) if argv is not None else None)
        print(_run(args), flush=True)

    return run_main(PROG, run, known_errors=(TaskDataError,))  # the readers' errors name file and line


if __name__ == "__main__":
    sys.exit(main())
