"""Peak resident memory of one CharBERT training step on a GLUE-like batch, with or without a
1 MB line in it (run by tests/test_reliability.py in a fresh process): prints JSON."""

from __future__ import annotations

import json
import resource
import sys

import torch

from charbert import CharBertTokenizer
from charbert.modeling import CharBertForSequenceClassification


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def main(checkpoint: str, long_line: bool) -> None:
    torch.manual_seed(0)
    tokenizer = CharBertTokenizer.from_pretrained(checkpoint)
    model = CharBertForSequenceClassification.from_pretrained(checkpoint, num_labels=2)
    texts = ["the quick brown fox jumps over the lazy dog again and again"] * 8
    if long_line:
        texts[3] = "x" * 1_000_000  # one line without spaces: one [UNK] token of a million characters
    before = peak_rss_mb()
    batch = tokenizer(texts, max_length=128, truncation=True, padding=True, return_tensors="pt")
    batch = {k: v for k, v in batch.items() if k != "offset_mapping"}
    out = model(**batch, labels=torch.zeros(8, dtype=torch.long))
    out.loss.backward()
    print(json.dumps({"before_mb": before, "peak_mb": peak_rss_mb(), "chars": int(batch["char_input_ids"].shape[1])}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] == "long")
