"""Tokenizer + character alignment vs the bare fast tokenizer: sentences/s on 10,000 real sentences.

    python -m benchmarks.bench_tokenizer [--sentences 10000 --batch_size 256 --max_length 128 --repeats 5]

Both pipelines tokenise the same Brown sentences in batches (the bare one with its offsets, which
the alignment needs; ours adds the four character inputs). Python's cyclic garbage collector
decides much of what a naive timing shows: in a process with torch and transformers loaded (~400k
objects) one full collection takes ~0.25 s, as long as a third of a pass, and it runs in whichever
call crosses the collector's threshold, often not the one whose objects caused it. So this
measures two things apart:

  1. the work alone: both pipelines take turns batch by batch in this process with the collector
     off, summed over the passes; with the Rust tokenizer's threads (its default) and with one
     thread (TOKENIZERS_PARALLELISM=false; also what processes forked after a first tokenizer call
     get, such as DataLoader workers: tokenizers then turns its threads off to avoid deadlocks);
  2. as run: each pipeline in a fresh process of its own with the collector on (the default),
     processes alternating, the median pass; with the collector's own time in those passes.
     CharBertTokenizerFast pauses the collector during a call (see tokenization._gc_paused).
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import statistics
import time

from benchmarks.common import corpus_lines, minilm_path, print_table

PIPELINES = ("fast tokenizer + offsets", "CharBertTokenizer (+ alignment)")


def load_pipelines(max_length: int) -> dict:
    """name -> a function of a batch of sentences, for the two pipelines."""
    from transformers import AutoTokenizer

    from charbert import CharBertTokenizer

    path = minilm_path()
    plain, ours = AutoTokenizer.from_pretrained(path), CharBertTokenizer.from_pretrained(path)
    return {
        PIPELINES[0]: lambda b: plain(b, truncation=True, max_length=max_length, return_offsets_mapping=True),
        PIPELINES[1]: lambda b: ours(b, truncation=True, max_length=max_length),
    }


def batches_of(n_sentences: int, batch_size: int) -> list[list[str]]:
    sentences = corpus_lines("brown.txt", limit=n_sentences)
    return [sentences[i : i + batch_size] for i in range(0, len(sentences), batch_size)]


def work_alone(pipelines: dict, batches, repeats: int) -> dict[str, float]:
    """Seconds per pass of each pipeline, turns taken batch by batch, the collector off (after one
    warm-up pass), summed over `repeats` passes and divided by them."""
    spent = dict.fromkeys(pipelines, 0.0)
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for attempt in range(repeats + 1):
            for batch in batches:
                for name, fn in pipelines.items():
                    start = time.perf_counter()
                    fn(batch)
                    if attempt:
                        spent[name] += time.perf_counter() - start
    finally:
        if was_enabled:
            gc.enable()
    return {name: seconds / repeats for name, seconds in spent.items()}


def _one_process(name: str, n_sentences: int, batch_size: int, max_length: int, repeats: int) -> tuple[list, list]:
    """In a fresh process: pass times of one pipeline with the collector on, and the collector's time in each."""
    fn = load_pipelines(max_length)[name]
    batches = batches_of(n_sentences, batch_size)
    collecting, started = [0.0], [0.0]

    def clock(phase, info):
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            collecting[0] += time.perf_counter() - started[0]

    for batch in batches:  # warm-up pass
        fn(batch)
    gc.callbacks.append(clock)
    passes, collector = [], []
    for _ in range(repeats):
        collecting[0] = 0.0
        start = time.perf_counter()
        for batch in batches:
            fn(batch)
        passes.append(time.perf_counter() - start)
        collector.append(collecting[0])
    return passes, collector


def as_run(n_sentences: int, batch_size: int, max_length: int, repeats: int, rounds: int = 2) -> dict[str, tuple[float, float]]:
    """name -> (median seconds per pass, median collector seconds per pass), each pipeline in its own
    fresh process (spawned: a new interpreter, as a training script is), the processes alternating."""
    context = multiprocessing.get_context("spawn")
    passes = {name: ([], []) for name in PIPELINES}
    with context.Pool(1, maxtasksperchild=1) as pool:
        for _ in range(rounds):
            for name in PIPELINES:
                times, collector = pool.apply(_one_process, (name, n_sentences, batch_size, max_length, repeats))
                passes[name][0].extend(times)
                passes[name][1].extend(collector)
    return {name: (statistics.median(t), statistics.median(c)) for name, (t, c) in passes.items()}


def bench_tokenizer(n_sentences: int = 10_000, batch_size: int = 256, max_length: int = 128, repeats: int = 5) -> list[list]:
    """The table rows: condition, sentences/s of each pipeline, their ratio (and the collector's share as run)."""
    pipelines, batches = load_pipelines(max_length), batches_of(n_sentences, batch_size)
    n = sum(map(len, batches))
    rows = []
    threads_before = os.environ.get("TOKENIZERS_PARALLELISM")
    try:
        for threads, setting in (("Rust threads on (default)", "true"), ("one Rust thread", "false")):
            os.environ["TOKENIZERS_PARALLELISM"] = setting  # read by tokenizers at every batch call
            seconds = work_alone(pipelines, batches, repeats)
            plain, ours = (n / seconds[name] for name in PIPELINES)
            rows.append([f"work alone, collector off, {threads}", f"{plain:,.0f}", f"{ours:,.0f}", ours / plain, "-"])
    finally:
        if threads_before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = threads_before
    run = as_run(n_sentences, batch_size, max_length, repeats)
    (plain_s, plain_gc), (ours_s, ours_gc) = (run[name] for name in PIPELINES)
    rows.append(["as run: own process each, collector on, Rust threads on", f"{n / plain_s:,.0f}", f"{n / ours_s:,.0f}",
                 plain_s / ours_s, f"{plain_gc / plain_s:.0%} / {ours_gc / ours_s:.0%}"])
    return rows


def print_tokenizer_table(rows: list[list]) -> None:
    print_table(["condition", "bare sentences/s", "CharBERT sentences/s", "ratio", "collector's share (bare / ours)"], rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=10_000)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="timed passes (after one warm-up pass)")
    args = parser.parse_args(argv)
    print(f"tokenisation of {args.sentences:,} Brown sentences (batches of {args.batch_size}, max_length {args.max_length})")
    print_tokenizer_table(bench_tokenizer(args.sentences, args.batch_size, args.max_length, args.repeats))


if __name__ == "__main__":
    main()
