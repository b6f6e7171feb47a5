"""How far a freshly built CharBERT is from the plain checkpoint it was built on, before any training.

    python experiments/start_distortion.py                               # MiniLM, 48 WikiText sentences
    python experiments/start_distortion.py --word_vocab runs/r19/vocab   # + step-0 MLM / NLM losses on held-out text
    python experiments/start_distortion.py --model_name_or_path DIR --output_json out.json

For each start (`CharBertConfig.new_module_init`, shared or per-layer fusion, our previous
architecture variant) it builds `CharBertForPreTraining` on the plain checkpoint and compares its
subword channel's last hidden state with the plain `AutoModel`'s on the same real tokens:

* mean / min cosine and mean relative error ||h_charbert - h_plain|| / ||h_plain|| over real tokens;
* the cosine between the two channels' last states (what the character channel receives);
* with --word_vocab: the step-0 MLM and NLM losses (and NLM acc@1) on held-out blocks noised and
  masked as in pretraining, through `charbert.pretraining.job.pretraining_metrics`.

The pretraining budget is spent rebuilding whatever distance this table shows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# label -> CharBertConfig fields of that start
STARTS = {
    "normal": {"new_module_init": "normal"},
    "reference (authors' init)": {"new_module_init": "reference"},
    "previous variant (PREVIOUS_VARIANT)": {"new_module_init": "normal", "previous": True},
    "identity, shared fusion": {"new_module_init": "identity"},
    "normal, per-layer fusion": {"new_module_init": "normal", "share_fusion": False},
    "reference, per-layer fusion": {"new_module_init": "reference", "share_fusion": False},
    "identity, per-layer fusion": {"new_module_init": "identity", "share_fusion": False},
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_name_or_path", default=None, help="a plain BERT/RoBERTa folder (default: MiniLM-L6-H384)")
    p.add_argument("--text_file", default=None, help="held-out text, one paragraph a line (default: WikiText-2)")
    p.add_argument("--sentences", type=int, default=48, help="lines compared (the first N with >= 8 words)")
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--word_vocab", default=None, help="a pretrain.vocab folder: adds the step-0 MLM and NLM losses")
    p.add_argument("--starts", default=None, help=f"comma-separated labels of {list(STARTS)} (default: all)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--output_json", default=None)
    return p


def token_figures(plain: torch.Tensor, word: torch.Tensor, char: torch.Tensor, mask: torch.Tensor) -> dict:
    """Cosine and relative error between (B, L, H) states over the real tokens of `mask` (B, L)."""
    real = mask.bool()
    a, b, c = word[real].double(), plain[real].double(), char[real].double()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    rel = (a - b).norm(dim=-1) / b.norm(dim=-1)
    channels = torch.nn.functional.cosine_similarity(a, c, dim=-1)
    return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()), "rel_error": float(rel.mean()),
            "char_word_cos": float(channels.mean())}


def step0_losses(model, tokenizer, word_vocab, blocks: list[str], max_seq_length: int, seed: int) -> dict:
    from accelerate import Accelerator

    from charbert.pretraining.collator import PretrainingCollator
    from charbert.pretraining.job import pretraining_metrics

    collator = PretrainingCollator(tokenizer, word_vocab, max_seq_length)
    rng = np.random.default_rng(seed)
    batches = [collator(blocks[i:i + 16], rng=rng) for i in range(0, len(blocks), 16)]
    with torch.no_grad():
        metrics = pretraining_metrics(model, Accelerator(cpu=True), batches)
    return {k: metrics[k] for k in ("mlm_loss", "nlm_loss", "nlm_accuracy") if k in metrics}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from accelerate.utils import set_seed
    from transformers import AutoModel

    from benchmarks.common import corpus_lines, minilm_path
    from charbert import CharBertForPreTraining, CharBertTokenizer
    from charbert.chars import CharVocab
    from charbert.configuration import PREVIOUS_VARIANT
    from charbert.pretraining.vocab import WordVocab

    base = args.model_name_or_path or str(minilm_path())
    if args.text_file:
        lines = [line.strip() for line in open(args.text_file, encoding="utf-8") if len(line.split()) >= 8]
    else:
        lines = corpus_lines(min_words=8)
    sentences = lines[:args.sentences]
    blocks = [" ".join(line.split()[:90]) for line in lines[args.sentences:args.sentences + 64]]
    char_vocab = CharVocab.load(Path(args.word_vocab) / "char_vocab.json") if args.word_vocab else CharVocab.default()
    word_vocab = WordVocab.load(args.word_vocab) if args.word_vocab else None
    tokenizer = CharBertTokenizer.from_pretrained(base, char_vocab=char_vocab)
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=args.max_seq_length, return_tensors="pt")
    plain = AutoModel.from_pretrained(base).eval()
    with torch.no_grad():
        plain_states = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             token_type_ids=batch.get("token_type_ids")).last_hidden_state
    wanted = list(STARTS) if args.starts is None else [s.strip() for s in args.starts.split(",")]
    unknown = [s for s in wanted if s not in STARTS]
    if unknown:
        sys.exit(f"start_distortion: unknown start(s) {unknown}; choose from {list(STARTS)}")
    rows = {}
    for label in wanted:
        fields = dict(STARTS[label])
        if fields.pop("previous", False):
            fields.update(PREVIOUS_VARIANT)
        set_seed(args.seed)  # every start draws its new modules from the same seed
        sizes = {"char_vocab_size": len(char_vocab), "word_vocab_size": len(word_vocab) if word_vocab else 30001}
        model = CharBertForPreTraining.from_pretrained(base, **sizes, **fields).eval()
        with torch.no_grad():
            out = model.charbert(**batch)
        row = token_figures(plain_states, out.last_hidden_state, out.char_last_hidden_state, batch["attention_mask"])
        if word_vocab is not None:
            row.update(step0_losses(model, tokenizer, word_vocab, blocks, args.max_seq_length, args.seed))
        rows[label] = row
        print(label, json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)
    columns = ["cos_mean", "cos_min", "rel_error", "char_word_cos", "mlm_loss", "nlm_loss", "nlm_accuracy"]
    print("\n| start | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns))
    for label, row in rows.items():
        print(f"| {label} | " + " | ".join(f"{row[c]:.4f}" if c in row else "-" for c in columns) + " |")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps({"model": base, "sentences": len(sentences), "rows": rows},
                                                     indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
