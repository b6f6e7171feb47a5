"""Where CharBERT's eager inference time goes, against the plain model's, at one batch size.

    python experiments/profile_inference.py [--batch_size 16 --num_batches 8 --repeats 5]
    python experiments/profile_inference.py --ab_packing [--repeats 7]   # the fusion on real tokens, on vs off

The token-classification models of `benchmarks.bench_inference` (real MiniLM-L6-H384, plain and
CharBERT built on it) on the same real CoNLL-2003 dev batches. Each component's wall time is taken
with forward hooks (CPU ops run synchronously, so a module's pre/post hook pair brackets its own
work): the subword embeddings, the character encoder, the backbone layers (CharBERT: one call on the
stacked channels), the fusion blocks, the head; "rest" is the forward's time outside them (masks,
the stacking concat, the split). Run it on a quiet machine; prints one table (ms per batch, median
over the repeats of the per-batch mean) and the ratio of the totals.

`--ab_packing` instead times whole forwards, alternating in one process: plain, CharBERT with the
fusion's products on the real tokens only (`charbert.modeling.real_tokens`, the default), and CharBERT
with them on every padded position; median over the repeats, and each as a ratio to plain.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_inference import build, sentences, text_batches  # noqa: E402
from benchmarks.common import minilm_path, print_table  # noqa: E402


def components(model, charbert: bool) -> dict[str, list[torch.nn.Module]]:
    base = model.base_model
    if charbert:
        adapter = base.backbone_adapter
        return {"subword embeddings": [base.embeddings], "character encoder": [base.char_embeddings],
                "backbone layers": list(adapter.layers(base)), "fusion": list(base.fusion),
                "head": [model.classifier]}
    return {"subword embeddings": [base.embeddings], "backbone layers": list(base.encoder.layer), "head": [model.classifier]}


def profile(model, batches, charbert: bool, repeats: int) -> dict[str, float]:
    """ms per batch of each component and of the whole forward (median over repeats)."""
    spent: dict[str, float] = defaultdict(float)
    handles = []
    for name, modules in components(model, charbert).items():
        for module in modules:
            def pre(_module, _inputs, name=name):
                spent["_start_" + name] = time.perf_counter()

            def post(_module, _inputs, _output, name=name):
                spent[name] += time.perf_counter() - spent["_start_" + name]

            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    runs = []
    try:
        with torch.inference_mode():
            for batch in batches[:2]:  # warm-up
                model(**batch)
            for _ in range(repeats):
                spent.clear()
                start = time.perf_counter()
                for batch in batches:
                    model(**batch)
                total = time.perf_counter() - start
                row = {k: 1000 * v / len(batches) for k, v in spent.items() if not k.startswith("_start_")}
                row["total"] = 1000 * total / len(batches)
                row["rest"] = row["total"] - sum(v for k, v in row.items() if k != "total")
                runs.append(row)
    finally:
        for handle in handles:
            handle.remove()
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def whole_forward_ms(model, batches) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        for batch in batches:
            model(**batch)
    return 1000 * (time.perf_counter() - start) / len(batches)


def ab_packing(path, sents, args) -> None:
    """Plain, CharBERT packed, CharBERT padded: alternating, median of the repeats (one process, same batches)."""
    from charbert import modeling

    packs = modeling.packs_real_tokens
    plain, plain_tok = build(path, False)
    charbert, charbert_tok = build(path, True)
    plain_batches = text_batches(sents, plain_tok, args.batch_size, args.num_batches, args.max_length)
    charbert_batches = text_batches(sents, charbert_tok, args.batch_size, args.num_batches, args.max_length)
    times = defaultdict(list)
    try:
        for repeat in range(args.repeats + 1):  # the first round warms up
            for name in ("plain", "CharBERT, fusion on real tokens", "CharBERT, fusion on every position"):
                modeling.packs_real_tokens = (lambda mask: False) if name.endswith("every position") else packs
                ms = whole_forward_ms(plain, plain_batches) if name == "plain" else whole_forward_ms(charbert, charbert_batches)
                if repeat:
                    times[name].append(ms)
    finally:
        modeling.packs_real_tokens = packs
    base = statistics.median(times["plain"])
    rows = [[name, statistics.median(t), base / statistics.median(t)] for name, t in times.items()]
    print(f"eager forward, token classification, MiniLM-L6-H384, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"{args.num_batches} real CoNLL dev batches, alternating, median of {args.repeats}")
    print_table(["model", "ms / batch", "speed vs plain"], rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--num_batches", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--ab_packing", action="store_true", help="time the fusion on real tokens against on every position")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    path = minilm_path()
    sents = sentences(2000, tiny=False)
    if args.ab_packing:
        ab_packing(path, sents, args)
        return 0
    results = {}
    for name, charbert in (("plain", False), ("CharBERT", True)):
        model, tokenizer = build(path, charbert)
        batches = text_batches(sents, tokenizer, args.batch_size, args.num_batches, args.max_length)
        results[name] = profile(model, batches, charbert, args.repeats)
    keys = ["subword embeddings", "character encoder", "backbone layers", "fusion", "head", "rest", "total"]
    rows = [[k, results["plain"].get(k, 0.0), results["CharBERT"].get(k, 0.0),
             results["CharBERT"].get(k, 0.0) / results["CharBERT"]["total"]] for k in keys]
    print(f"eager forward, token classification, MiniLM-L6-H384, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"{args.num_batches} real CoNLL dev batches, median of {args.repeats}")
    print_table(["component", "plain ms", "CharBERT ms", "CharBERT share"], rows)
    ratio = results["plain"]["total"] / results["CharBERT"]["total"]
    print(f"CharBERT speed vs plain: {ratio:.3f}x sentences/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
