"""GPU check: CharBERT pretraining (MLM + NLM) and BertForMaskedLM in fp32, bf16 and fp16.

    python -m benchmarks.gpu_check --output gpu_check.json          # on a CUDA machine, BERT-base, length 384
    python -m benchmarks.gpu_check --smoke --output smoke.json       # tiny sizes on CPU, seconds (tests)

For each model and precision it trains `--steps` optimizer steps from the same initial weights on
the same synthetic batches (same seed), and reports:

* tokens/s (word tokens of the batch, timed after `--warmup` steps, synchronised);
* model FLOPs utilisation (MFU): FLOPs counted analytically per step (see `flops_per_sequence`)
  over wall time, divided by the device's dense peak for that precision (`PEAK_TFLOPS`, by device
  name; `--peak_tflops` overrides it; fp32 means plain FP32, TF32 off, unless `--tf32`);
* peak memory (CUDA: max allocated; CPU: the process's max RSS);
* the loss after the last step and its difference from the fp32 run (bf16/fp16 should stay close).

Mixed precision is `torch.autocast` over fp32 master weights (the parameters stay fp32; checked),
with `torch.amp.GradScaler` for fp16, exactly what `accelerate --mixed_precision` does. Dropout is
off so that the three precisions compute the same function on the same data.

Two more questions, answered in the same run:

* the character encoder's share of the CharBERT step (embedding, the two GRUs over every character and
  the gathers at each token's first and last character; forward and backward, timed alone on the same
  batches and precision): `char_encoder_step_s` and `char_encoder_share` on each CharBERT row;
* whether the data pipeline keeps up: the pretraining collator at `--seq_len` in a DataLoader with
  `--dataloader_num_workers` worker processes (as `python -m pretrain` runs it) on real webtext blocks and
  the MiniLM tokenizer when they are installed (a tiny tokenizer on Python's docstrings otherwise; the
  report says which), its real tokens/s against the fastest CharBERT step measured, and the workers
  that rate needs at one core's collator speed (`loader` in the report).

The synthetic batch has the pretraining collator's shape: full-length sequences, ~5 characters a
token (word pieces plus the spaces), 10% MLM labels (whole tokens, their characters hidden) and 15%
NLM labels on other tokens.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from charbert import CharBertConfig, CharBertForPreTraining
from charbert.chars import MASK_ID, SPECIAL_ID

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Dense (no sparsity) peak TFLOP/s by precision; fp32 is plain FP32 (CUDA cores), "tf32" the
# tensor-core TF32 rate used with --tf32. Matched against torch.cuda.get_device_name(), first hit wins.
PEAK_TFLOPS = {
    "H200": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0},
    "H100": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},  # SXM
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
    "V100": {"fp32": 15.7, "tf32": None, "bf16": None, "fp16": 125.0},  # SXM2; no bf16 tensor cores
}

FIELDS = ("model", "precision", "params_m", "tokens_per_s", "step_time_s", "tflops_per_s", "peak_tflops", "mfu",
          "peak_memory_mib", "final_loss", "loss_diff_vs_fp32", "skipped_steps", "param_dtype")


@dataclass
class Sizes:
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    vocab_size: int = 28996  # bert-base-cased
    word_vocab_size: int = 30001
    char_vocab_size: int = 1024
    seq_len: int = 384
    batch_size: int = 32
    chars_per_token: float = 5.0


SMOKE = Sizes(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=500,
              word_vocab_size=300, char_vocab_size=100, seq_len=32, batch_size=2)


def charbert_config(sizes: Sizes) -> CharBertConfig:
    return CharBertConfig(
        backbone_type="bert", hidden_size=sizes.hidden_size, num_hidden_layers=sizes.num_hidden_layers,
        num_attention_heads=sizes.num_attention_heads, intermediate_size=sizes.intermediate_size,
        vocab_size=sizes.vocab_size, word_vocab_size=sizes.word_vocab_size, char_vocab_size=sizes.char_vocab_size,
        max_position_embeddings=max(512, sizes.seq_len), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )


# ---- synthetic batches ------------------------------------------------------------------


def synthetic_pretraining_batch(config: CharBertConfig, batch_size: int, seq_len: int, generator: torch.Generator,
                                chars_per_token: float = 5.0, mlm_probability: float = 0.10,
                                nlm_probability: float = 0.15) -> dict[str, torch.Tensor]:
    """A batch shaped like `PretrainingCollator`'s: [CLS] tokens [SEP], every token spanning
    1..(2 * chars_per_token - 3) characters followed by a space (so ~chars_per_token characters a
    token), MLM and NLM labels on disjoint tokens."""
    B, L = batch_size, seq_len
    special = 5  # ids below this are special in both vocabularies of a tiny/real BERT
    input_ids = torch.randint(special, config.vocab_size, (B, L), generator=generator)
    input_ids[:, 0], input_ids[:, -1] = 2, 3  # [CLS], [SEP] (the ids do not matter to the cost)
    real = torch.ones(B, L, dtype=torch.bool)
    real[:, 0] = real[:, -1] = False

    top = max(1, round(2 * chars_per_token - 3))  # token lengths 1..top: mean (top + 1) / 2, + a space
    lengths = torch.randint(1, top + 1, (B, L), generator=generator) * real  # (B, L), 0 for specials
    ends_excl = 1 + torch.cumsum(lengths + real.long(), dim=1) - real.long()  # after each token's last char
    starts = (ends_excl - lengths).masked_fill(~real, 0)
    ends = (ends_excl - 1).masked_fill(~real, 0)  # specials point at position 0 ([SPECIAL])
    num_chars = ends_excl.max(dim=1).values + 1  # (B,)
    C = int(num_chars.max())
    positions = torch.arange(C).expand(B, C)
    char_attention_mask = (positions < num_chars[:, None]).long()
    char_input_ids = torch.randint(5, config.char_vocab_size, (B, C), generator=generator) * char_attention_mask
    char_input_ids[:, 0] = SPECIAL_ID

    draw = torch.rand(B, L, generator=generator)
    mlm = real & (draw < mlm_probability)
    nlm = real & (draw >= mlm_probability) & (draw < mlm_probability + nlm_probability)
    labels = input_ids.masked_fill(~mlm, -100)
    input_ids = input_ids.masked_fill(mlm, 4)  # [MASK]
    nlm_labels = torch.randint(1, config.word_vocab_size, (B, L), generator=generator).masked_fill(~nlm, -100)
    # the collator hides the characters of MLM tokens
    hidden = torch.zeros(B, C, dtype=torch.bool)
    for b, t in mlm.nonzero().tolist():
        hidden[b, int(starts[b, t]): int(ends[b, t]) + 1] = True
    char_input_ids = char_input_ids.masked_fill(hidden, MASK_ID)
    return {
        "input_ids": input_ids, "attention_mask": torch.ones(B, L, dtype=torch.long),
        "token_type_ids": torch.zeros(B, L, dtype=torch.long), "labels": labels, "nlm_labels": nlm_labels,
        "char_input_ids": char_input_ids, "char_attention_mask": char_attention_mask,
        "char_start_positions": starts, "char_end_positions": ends,
    }


BERT_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")


# ---- FLOPs --------------------------------------------------------------------------------


def encoder_layer_flops(H: int, inter: int, L: int) -> int:
    """Forward FLOPs of one transformer layer on one sequence of L tokens (2 FLOPs a multiply-add)."""
    dense = 2 * L * (4 * H * H + 2 * H * inter)  # Q, K, V, O projections and the feed-forward
    attention = 2 * 2 * L * L * H  # QK^T and attention x V
    return dense + attention


def flops_per_sequence(config, L: int, chars: float, mlm_tokens: float, nlm_tokens: float, charbert: bool) -> float:
    """Training FLOPs (forward x 3: the backward costs twice the forward) of one sequence.

    CharBERT: every layer runs on both channels, the fusion (two H x H maps and a Conv1d 2H -> H of
    width k) after each layer, two GRUs over the `chars` characters, and the heads only at labelled
    positions. BertForMaskedLM: the layers once and its MLM head at every position (HF computes
    full logits). Embedding lookups, norms, activations and softmax are not counted (as in nanoGPT's
    estimate_mfu, which counts 6 N per token plus attention).
    """
    H = config.hidden_size
    head_mlm = 2 * (H * H + H * config.vocab_size)
    if not charbert:
        return 3.0 * (encoder_flops(config, L, 0.0, charbert=False) + L * head_mlm)
    heads = mlm_tokens * head_mlm + nlm_tokens * 2 * (H * H + H * config.word_vocab_size)
    return 3.0 * (encoder_flops(config, L, chars, charbert=True) + heads)


def encoder_flops(config, L: int, chars: float, charbert: bool) -> float:
    """Forward FLOPs of the encoder without heads on one sequence of L tokens (and ``chars`` characters):
    the layers once (plain), or on both channels with the fusion after each plus the two GRUs and the
    character projection (CharBERT)."""
    H, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    if not charbert:
        return layers * encoder_layer_flops(H, inter, L)
    G, E, k = config.char_hidden_size, config.char_embedding_size, config.fusion_kernel_size
    gru = 2 * 2 * 3 * (E * G + G * G) * chars  # two GRUs, three gates, input and recurrent maps
    projection = 0 if config.char_token_size == H else 2 * L * config.char_token_size * H
    fusion = layers * 2 * L * (2 * H * H + 2 * H * H * k)
    layers_both = 2 * layers * encoder_layer_flops(H, inter, L)
    return gru + projection + fusion + layers_both


def batch_flops(config, batch: dict, charbert: bool) -> float:
    B, L = batch["input_ids"].shape
    if not charbert:
        return B * flops_per_sequence(config, L, 0.0, 0.0, 0.0, charbert=False)
    chars = float(batch["char_attention_mask"].sum()) / B
    mlm = float((batch["labels"] != -100).sum()) / B
    nlm = float((batch["nlm_labels"] != -100).sum()) / B
    return B * flops_per_sequence(config, L, chars, mlm, nlm, charbert=True)


def peak_tflops_for(device: torch.device, precision: str, tf32: bool, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    key = "tf32" if precision == "fp32" and tf32 else precision
    for pattern, peaks in PEAK_TFLOPS.items():
        if pattern.lower() in name.lower():
            return peaks.get(key)
    return None


# ---- one run --------------------------------------------------------------------------------


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_steps(model, initial_state: dict, batches: list[dict], precision: str, device: torch.device,
                warmup: int, lr: float) -> dict:
    """`len(batches)` AdamW steps from `initial_state` under `precision`; timings after `warmup` steps."""
    model.load_state_dict(initial_state)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    dtype = DTYPES[precision]
    use_autocast = precision != "fp32"
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    losses, start, skipped = [], None, 0
    for step, batch in enumerate(batches):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=dtype, enabled=use_autocast):
            loss = model(**batch).loss
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scale = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            skipped += scaler.get_scale() < scale  # an overflow: the scaler skipped this step
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    synchronize(device)
    seconds = time.perf_counter() - start
    timed = len(batches) - warmup
    return {
        "losses": [float(x) for x in losses],
        "step_time_s": seconds / timed,
        "peak_memory_mib": peak_memory_mib(device),
        "param_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "skipped_steps": int(skipped),
    }


def char_encoder_steps(model, batches: list[dict], precision: str, device: torch.device, warmup: int) -> float:
    """Seconds a step of the character encoder alone takes (forward and backward on the batches' characters)."""
    encoder = model.charbert.char_embeddings
    names = ("char_input_ids", "char_attention_mask", "char_start_positions", "char_end_positions")
    dtype, start = DTYPES[precision], None
    for step, batch in enumerate(batches):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        inputs = [batch[k].to(device, non_blocking=True) for k in names]
        with torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32"):
            tokens = encoder(*inputs)  # (B, L, H)
        tokens.float().sum().backward()
        model.zero_grad(set_to_none=True)
    synchronize(device)
    return (time.perf_counter() - start) / (len(batches) - warmup)


def run_model(name: str, model, batches: list[dict], config, charbert: bool, precisions: list[str],
              device: torch.device, args) -> list[dict]:
    initial = copy.deepcopy(model.state_dict())
    flops = sum(batch_flops(config, b, charbert) for b in batches[args.warmup:]) / (len(batches) - args.warmup)
    tokens = batches[0]["input_ids"].numel()
    params = sum(p.numel() for p in model.parameters())
    rows, reference = [], None
    for precision in precisions:
        try:
            result = train_steps(model, initial, batches, precision, device, args.warmup, args.learning_rate)
        except (RuntimeError, torch.OutOfMemoryError) as err:  # one failing precision must not lose the others
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            print(f"  {name} {precision}: FAILED: {first_line}", flush=True)
            rows.append({"model": name, "precision": precision, "error": first_line} | dict.fromkeys(FIELDS[2:]))
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        final = result["losses"][-1]
        if precision == "fp32":
            reference = final
        achieved = flops / result["step_time_s"] / 1e12
        peak = peak_tflops_for(device, precision, args.tf32, args.peak_tflops)
        rows.append({
            "model": name,
            "precision": precision,
            "params_m": params / 1e6,
            "tokens_per_s": tokens / result["step_time_s"],
            "step_time_s": result["step_time_s"],
            "flops_per_token": flops / tokens,
            "tflops_per_s": achieved,
            "peak_tflops": peak,
            "mfu": achieved / peak if peak else None,
            "peak_memory_mib": result["peak_memory_mib"],
            "final_loss": final,
            "loss_diff_vs_fp32": None if reference is None else abs(final - reference),
            "param_dtype": result["param_dtype"],
            "skipped_steps": result["skipped_steps"],
            "losses": result["losses"],
        })
        if charbert:  # the character encoder alone, from the trained weights (its cost does not depend on them)
            char_s = char_encoder_steps(model, batches, precision, device, args.warmup)
            rows[-1].update(char_encoder_step_s=char_s, char_encoder_share=char_s / result["step_time_s"])
        print(f"  {name} {precision}: {rows[-1]['tokens_per_s']:.0f} tokens/s, loss {final:.4f}", flush=True)
    model.to("cpu")
    return rows


def loader_inputs(smoke: bool):
    """(tokenizer, word vocabulary, text lines, what they are): MiniLM and real webtext when both are
    installed (and not --smoke), else a tiny tokenizer trained on Python's docstrings."""
    from charbert import CharBertTokenizer
    from charbert.pretraining.vocab import WordVocab

    if not smoke:
        try:
            from benchmarks.common import corpus_lines, minilm_path

            lines = corpus_lines("webtext.txt", limit=20000)
            tok = CharBertTokenizer.from_pretrained(minilm_path())
            return tok, WordVocab.build(lines, max_size=30000), lines, "MiniLM tokenizer, real webtext blocks"
        except SystemExit:  # benchmarks.common's way of saying the checkpoint or the corpus is absent
            pass
    import tempfile

    from charbert.tiny import make_tiny_checkpoint, stdlib_paragraphs

    lines = list(stdlib_paragraphs(3000))
    folder = make_tiny_checkpoint(tempfile.mkdtemp(prefix="gpu_check_tok_"), texts=lines, vocab_size=2000, hidden_size=32)
    return (CharBertTokenizer.from_pretrained(folder), WordVocab.build(lines, max_size=5000), lines,
            "tiny tokenizer on Python's docstrings (MiniLM or the corpus not installed)")


def loader_rate(collator, blocks: list[str], batch_size: int, workers: int, n_batches: int, seed: int) -> float:
    """Real tokens/s of the pretraining DataLoader with `workers` processes (wall clock, after its first batch)."""
    from torch.utils.data import DataLoader

    from charbert.training.determinism import IndexedCollator, IndexedDataset

    untimed = max(1, workers)  # the first batch pays for starting the workers, and each worker's first is ready with it
    n_blocks = min(len(blocks), (n_batches + untimed) * batch_size)
    loader = DataLoader(IndexedDataset(blocks[:n_blocks]), batch_size=batch_size, collate_fn=IndexedCollator(collator, seed),
                        num_workers=workers)
    tokens, start = 0, None
    for k, batch in enumerate(loader):
        if k < untimed:
            start = time.perf_counter()
            continue
        tokens += int(batch["attention_mask"].sum())
    return tokens / (time.perf_counter() - start)


def loader_check(sizes: Sizes, workers: int, n_batches: int, step_tokens_per_s: float | None, smoke: bool, seed: int) -> dict:
    """Does the collator, in `workers` loader processes, make tokens as fast as the fastest step consumes them?"""
    import math

    import numpy as np

    from charbert.pretraining.blocks import pack_lines
    from charbert.pretraining.collator import PretrainingCollator

    tok, word_vocab, lines, source = loader_inputs(smoke)
    blocks = list(pack_lines(lines, tok.tokenizer, int((sizes.seq_len - 2) * 0.9)))
    while len(blocks) < (n_batches + max(1, workers)) * sizes.batch_size:  # a small corpus: go round it again
        blocks += blocks
    collator = PretrainingCollator(tok, word_vocab, sizes.seq_len)
    collator(blocks[: sizes.batch_size], rng=np.random.default_rng(seed))  # warm the caches
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core, as in a worker
    try:
        per_core = loader_rate(collator, blocks, sizes.batch_size, 0, n_batches, seed)
    finally:
        torch.set_num_threads(torch_threads)
    rate = per_core if workers == 0 else loader_rate(collator, blocks, sizes.batch_size, workers, n_batches, seed)
    report = {"source": source, "seq_len": sizes.seq_len, "batch_size": sizes.batch_size, "workers": workers,
              "tokens_per_s": rate, "tokens_per_s_one_core": per_core, "step_tokens_per_s": step_tokens_per_s,
              "keeps_up": None, "workers_needed": None}
    if step_tokens_per_s:
        report["keeps_up"] = rate >= step_tokens_per_s
        report["workers_needed"] = math.ceil(step_tokens_per_s / per_core)
    return report


def supported_precisions(device: torch.device, requested: list[str]) -> tuple[list[str], dict[str, str]]:
    """The requested precisions this device runs, fp32 first (the reference); the others with why not."""
    skipped = {}
    keep = ["fp32"]
    for p in requested:
        if p == "fp32":
            continue
        if device.type == "cpu" and p == "fp16":
            skipped[p] = "fp16 autocast is a GPU path (V100-class); not measured on CPU"
        elif device.type == "cuda" and p == "bf16" and not torch.cuda.is_bf16_supported():
            skipped[p] = "this GPU has no bf16"
        else:
            keep.append(p)
    return keep, skipped


def format_table(rows: list[dict]) -> str:
    headers = ["model", "precision", "tokens/s", "step s", "TFLOP/s", "peak TFLOP/s", "MFU", "peak MiB", "loss", "|Δ fp32|", "scaler skips"]

    def fmt(v, spec):
        return "n/a" if v is None else format(v, spec)

    cells = [headers] + [[
        r["model"], r["precision"], fmt(r["tokens_per_s"], ".0f"), fmt(r["step_time_s"], ".4f"),
        fmt(r["tflops_per_s"], ".3g"), fmt(r["peak_tflops"], ".4g"), fmt(r["mfu"], ".1%"),
        fmt(r["peak_memory_mib"], ".0f"), fmt(r["final_loss"], ".4f"), fmt(r["loss_diff_vs_fp32"], ".2e"),
        fmt(r["skipped_steps"], "d"),
    ] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (seconds): checks the script, measures nothing")
    p.add_argument("--device", help="default: cuda when available, else cpu (--smoke: cpu)")
    p.add_argument("--precisions", default="fp32,bf16,fp16", help="comma-separated; fp32 always runs first (the reference)")
    p.add_argument("--batch_size", type=int)
    p.add_argument("--seq_len", type=int)
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per run (the loss is compared after the last)")
    p.add_argument("--warmup", type=int, default=5, help="steps not timed")
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls in the fp32 run (then MFU uses the TF32 peak)")
    p.add_argument("--peak_tflops", type=float, help="peak TFLOP/s for MFU, for every precision (overrides the table)")
    p.add_argument("--models", default="charbert,bert", help="comma-separated: charbert (CharBertForPreTraining), bert (BertForMaskedLM)")
    p.add_argument("--dataloader_num_workers", type=int, default=4,
                   help="loader processes for the data-pipeline check (0: in the main process)")
    p.add_argument("--loader_batches", type=int, default=24, help="batches the data-pipeline check times")
    p.add_argument("--skip_loader", action="store_true", help="leave out the data-pipeline check")
    p.add_argument("--output", help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.steps <= args.warmup:
        p.error(f"--steps ({args.steps}) must be larger than --warmup ({args.warmup})")
    if args.dataloader_num_workers < 0 or args.loader_batches < 1:
        p.error("--dataloader_num_workers must be >= 0 and --loader_batches >= 1")
    bad = set(args.precisions.split(",")) - set(DTYPES)
    if bad:
        p.error(f"unknown precision(s) {sorted(bad)}; choose from {sorted(DTYPES)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.smoke:
        sizes = copy.copy(SMOKE)
        args.steps, args.warmup = min(args.steps, 4), min(args.warmup, 1)
        args.dataloader_num_workers, args.loader_batches = min(args.dataloader_num_workers, 1), min(args.loader_batches, 4)
    else:
        sizes = Sizes()
    sizes.batch_size = args.batch_size or sizes.batch_size
    sizes.seq_len = args.seq_len or sizes.seq_len
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    precisions, skipped = supported_precisions(device, args.precisions.split(","))
    config = charbert_config(sizes)
    generator = torch.Generator().manual_seed(args.seed)
    batches = [synthetic_pretraining_batch(config, sizes.batch_size, sizes.seq_len, generator, sizes.chars_per_token)
               for _ in range(args.steps)]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"gpu_check on {device_name}: B={sizes.batch_size} L={sizes.seq_len} H={sizes.hidden_size} "
          f"layers={sizes.num_hidden_layers}, {args.steps} steps ({args.warmup} warmup), precisions {precisions}", flush=True)
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(args.seed)
        if name == "charbert":
            rows += run_model("CharBertForPreTraining", CharBertForPreTraining(config), batches, config, True,
                              precisions, device, args)
        elif name == "bert":
            from transformers import BertForMaskedLM

            bert_batches = [{k: b[k] for k in BERT_INPUTS} for b in batches]  # the same tokens and MLM labels
            rows += run_model("BertForMaskedLM", BertForMaskedLM(config.backbone_config()), bert_batches, config, False,
                              precisions, device, args)
        else:
            raise SystemExit(f"python -m benchmarks.gpu_check: error: unknown model {name!r} (charbert, bert)")
    charbert_rates = [r["tokens_per_s"] for r in rows if r["model"] == "CharBertForPreTraining" and r.get("tokens_per_s")]
    loader = None
    if not args.skip_loader:
        loader = loader_check(sizes, args.dataloader_num_workers, args.loader_batches,
                              max(charbert_rates) if charbert_rates else None, args.smoke, args.seed)
    report = {
        "device": device_name,
        "device_type": device.type,
        "torch": torch.__version__,
        "sizes": asdict(sizes),
        "steps": args.steps,
        "warmup": args.warmup,
        "tf32": args.tf32,
        "peak_tflops_table": PEAK_TFLOPS,
        "peak_tflops_override": args.peak_tflops,
        "memory": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process max RSS",
        "skipped": skipped,
        "results": rows,
        "loader": loader,
    }
    print(format_table(rows))
    print("scaler skips: optimizer steps the fp16 GradScaler skipped after an overflow")
    for r in rows:
        if r.get("error"):
            print(f"FAILED {r['model']} {r['precision']}: {r['error']}")
    for p, why in skipped.items():
        print(f"skipped {p}: {why}")
    for r in rows:
        if r.get("char_encoder_share") is not None:
            print(f"character encoder (embedding + Bi-GRU + gathers), {r['precision']}: {r['char_encoder_step_s']:.4f} s "
                  f"forward+backward, {r['char_encoder_share']:.1%} of the CharBERT step")
    if loader is not None:
        verdict = "n/a (no CharBERT step measured)" if loader["keeps_up"] is None else (
            "keeps up" if loader["keeps_up"] else f"does NOT keep up: give it {loader['workers_needed']} workers")
        step = "n/a" if loader["step_tokens_per_s"] is None else f"{loader['step_tokens_per_s']:.0f}"
        print(f"loader ({loader['source']}, L={loader['seq_len']}): {loader['tokens_per_s']:.0f} real tokens/s with "
              f"{loader['workers']} workers ({loader['tokens_per_s_one_core']:.0f} on one core in-process) vs the "
              f"fastest CharBERT step's {step} tokens/s: {verdict}; workers needed at one core's rate: {loader['workers_needed']}")
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1), encoding="utf-8")
        print(f"wrote {args.output}")
    return report


if __name__ == "__main__":
    main()
