"""Build the NLM word vocabulary and the character vocabulary of a pretraining corpus.

    python -m pretrain.vocab --train_file data/*.txt more/*.gz --output_dir vocab/

One streaming pass over every line (plain or .gz) counts words and characters at the same
time, then writes into `output_dir`:

    word_vocab.txt    one word per line, [UNK] first (charbert.pretraining.vocab.WordVocab)
    char_vocab.json   the character vocabulary (charbert.chars.CharVocab)
    vocab_stats.json  what was read and how well the vocabularies cover it

Lines that are not valid UTF-8 are skipped and counted (printed and in vocab_stats.json).
Bad input (a missing file, a pattern matching nothing, an empty file) ends with one line on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from charbert.chars import CHAR_VOCAB_FILE, CharVocab
from charbert.cli import UsageError, program_name, run_main
from charbert.pretraining.corpus import ReadStats, expand_paths, iter_lines
from charbert.pretraining.vocab import WORD_VOCAB_FILE, WordCounter, WordVocab, count_corpus

STATS_FILE = "vocab_stats.json"
PROG = program_name("python -m pretrain.vocab")  # the console script's name when run as one


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--train_file", nargs="+", required=True, help="text files or glob patterns (plain or .gz)")
    p.add_argument("--output_dir", required=True, help="where to write the vocabularies (created if needed)")
    p.add_argument("--word_vocab_size", type=int, default=30000, help="number of words, [UNK] extra (default 30000)")
    p.add_argument("--char_vocab_size", type=int, default=1024, help="total character ids incl. the 5 specials (default 1024)")
    p.add_argument("--min_count", type=int, default=1, help="minimum count of a word or character to get an id (default 1)")
    p.add_argument(
        "--max_tracked",
        type=int,
        default=2_000_000,
        help="distinct words tracked before the rarest are pruned, bounding memory (default 2000000)",
    )
    return p


def word_coverage(vocab: WordVocab, counter: WordCounter) -> float:
    """Share of the word occurrences whose word has its own id."""
    covered = sum(counter.counts.get(w, 0) for w in vocab.words)
    return covered / counter.total if counter.total else 0.0


def char_coverage(vocab: CharVocab, counts: Counter) -> float:
    """Share of the character occurrences that do not map to [UNK] (whitespace folds onto " ")."""
    total = sum(counts.values())
    covered = sum(n for ch, n in counts.items() if (" " if ch.isspace() else ch) in vocab.char_to_id)
    return covered / total if total else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.word_vocab_size < 1:
        parser.error(f"--word_vocab_size must be >= 1; got {args.word_vocab_size}")
    if args.char_vocab_size <= 5:
        parser.error(f"--char_vocab_size counts the 5 special ids and must exceed 5; got {args.char_vocab_size}")
    if args.min_count < 1:
        parser.error(f"--min_count must be >= 1; got {args.min_count}")
    if args.max_tracked < 2:
        parser.error(f"--max_tracked must be >= 2; got {args.max_tracked}")
    return run_main(PROG, lambda: build_vocabularies(args), known_errors=(ValueError, OSError))


def build_vocabularies(args) -> dict:
    """Count the corpus, write the vocabularies and their stats; returns the stats."""
    paths = expand_paths(args.train_file)
    output_dir = Path(args.output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create --output_dir {output_dir}: {err}") from err

    start = time.perf_counter()
    stats = ReadStats()
    lines = tqdm(iter_lines(paths, stats), desc="counting", unit=" lines", unit_scale=True, mininterval=0.5)
    try:
        words, chars = count_corpus(lines, max_tracked=args.max_tracked)
    finally:
        lines.close()
    if stats.lines == 0:
        raise ValueError(
            f"no text in {len(paths)} file(s): {stats.empty_lines} blank and "
            f"{stats.skipped_non_utf8} non-UTF-8 line(s), nothing to count"
        )

    word_vocab = WordVocab.from_counts(words, max_size=args.word_vocab_size, min_count=args.min_count)
    char_vocab = CharVocab.from_counts(chars, max_size=args.char_vocab_size, min_count=args.min_count)
    word_file = word_vocab.save(output_dir / WORD_VOCAB_FILE)
    char_file = char_vocab.save(output_dir / CHAR_VOCAB_FILE)
    elapsed = time.perf_counter() - start

    report = {
        **stats.as_dict(),
        "train_files": [str(p) for p in paths],
        "word_occurrences": words.total,
        "distinct_words": words.distinct,
        "distinct_words_exact": not words.approximate,
        "word_count_prunes": words.prunes,
        "word_vocab_size": len(word_vocab),
        "word_coverage": round(word_coverage(word_vocab, words), 6),
        "char_occurrences": sum(chars.values()),
        "distinct_chars": len(chars),
        "char_vocab_size": len(char_vocab),
        "char_coverage": round(char_coverage(char_vocab, chars), 6),
        "min_count": args.min_count,
        "seconds": round(elapsed, 2),
    }
    stats_file = output_dir / STATS_FILE
    stats_file.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    print(
        f"Read {stats.lines:,} lines from {stats.files} file(s) in {elapsed:.1f}s "
        f"({stats.empty_lines:,} blank skipped, {stats.skipped_non_utf8:,} non-UTF-8 skipped)."
    )
    if stats.skipped_non_utf8:
        print(f"Skipped {stats.skipped_non_utf8:,} line(s) that are not valid UTF-8.")
    approx = " (approximate: rare words were pruned)" if words.approximate else ""
    print(
        f"Words: {words.total:,} occurrences, {words.distinct:,} distinct{approx}; "
        f"vocabulary {len(word_vocab):,} ids incl. [UNK], coverage {report['word_coverage']:.2%} -> {word_file}"
    )
    print(
        f"Characters: {report['char_occurrences']:,} occurrences, {len(chars):,} distinct; "
        f"vocabulary {len(char_vocab):,} ids incl. 5 specials, coverage {report['char_coverage']:.2%} -> {char_file}"
    )
    print(f"Stats -> {stats_file}")
    return report


if __name__ == "__main__":
    raise SystemExit(main())
