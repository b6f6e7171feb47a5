"""How much a converted model's outputs move between char_padding="reference" (the authors') and "exact" (ours).

    python -m benchmarks.padding_modes [--sentences 200 --batch_size 16 --size minilm --init authors --seed 0]

Builds one of the authors' CharBertForMaskedLM models with their code (../shared/reference) with
random weights: `--init authors` (default) keeps their own initialisation (what their pretraining
starts from); `--init wide` draws every weight with O(1) activations as the parity tests do, which
at MiniLM size makes the random character GRU chaotic (float rounding grows along a row, so even
row 4 below is far from 0) and is only meaningful at tiny size. It saves the model in their format, converts it with
`python -m charbert.convert` (their real character and term vocabularies; a cased WordPiece
trained on the corpus as the subword vocabulary), and encodes real corpus sentences with the
converted tokenizer (their character layout). Prints max and mean |difference| of the last hidden
states of both channels over the real tokens, for:

  1. reference vs exact, sentences in padded batches (the usual use);
  2. reference vs exact, each sentence alone (no batch padding: only their character-row padding to 6 x L);
  3. reference mode, alone vs in a padded batch (what batch padding does to the authors' model);
  4. exact mode, alone vs in a padded batch (ours: padding changes nothing, up to float rounding).

Sentences are encoded as the authors' NER/SQuAD code lays them out (`padded_tokens_last=True`: padding
tokens get no characters), so `char_attention_mask` marks exactly the real characters and the exact mode
is exact. (Their GLUE code also writes "0 0" for every padding token; those characters then count as
written ones in both modes.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import corpus_lines, print_table
from charbert import CharBertModel, CharBertTokenizer
from charbert.convert import convert
from charbert.tiny import train_tokenizer

TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"
SIZES = {  # hidden, layers, heads
    "tiny": (64, 2, 2),
    "minilm": (384, 6, 12),
}


def authors_helpers():
    sys.path.insert(0, str(TESTS_DIR))
    import reference

    try:
        reference.authors_code()
    except reference.AuthorsCodeMissing as err:
        raise SystemExit(f"padding_modes: error: {err}") from None
    return reference


def converted_model_dir(work: Path, texts: list[str], size: str, init: str, seed: int) -> Path:
    """Their random CharBertForMaskedLM of `size`, saved in their format and converted; returns our folder."""
    ref = authors_helpers()
    code = ref.authors_code()
    tokenizer = train_tokenizer(texts, "bert", vocab_size=4000, lowercase=False)  # cased, like their BERT release
    tokens = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
    hidden, layers, heads = SIZES[size]
    config = ref.authors_config("bert", len(tokens), hidden=hidden, layers=layers, heads=heads, max_len=512)
    config.intermediate_size = 4 * hidden
    torch.manual_seed(seed)
    model = code.bert.CharBertForMaskedLM(config).eval()  # their own initialisation
    if init == "wide":
        ref.randomise_(model, seed)
    src = ref.save_authors_checkpoint(model, work / "theirs", "bert", tokens)
    return convert(src, ref.CHAR_VOCAB["bert"], ref.TERM_VOCAB, work / "converted")


def hidden_states(model, tokenizer, texts: list[str], batch_size: int, max_length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per sentence: (word, char) last hidden states at its real tokens, (n_i, H) each."""
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        batch = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt", padded_tokens_last=True)
        with torch.no_grad():
            result = model(**batch)
        for i, n in enumerate(batch["attention_mask"].sum(1).tolist()):
            out.append((result.last_hidden_state[i, :n], result.char_last_hidden_state[i, :n]))
    return out


def differences(a: list, b: list) -> list[float]:
    """[word max, word mean, char max, char mean] of |a - b| over every real token of every sentence."""
    row = []
    for channel in (0, 1):
        diff = torch.cat([(x[channel] - y[channel]).abs().flatten() for x, y in zip(a, b)])
        row += [float(diff.max()), float(diff.mean())]
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.padding_modes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--size", choices=sorted(SIZES), default="minilm")
    parser.add_argument("--init", choices=("authors", "wide"), default="authors")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    texts = corpus_lines(limit=args.sentences, min_words=5)
    with tempfile.TemporaryDirectory() as work:
        out = converted_model_dir(Path(work), corpus_lines(limit=5000, min_words=5), args.size, args.init, args.seed)
        tokenizer = CharBertTokenizer.from_pretrained(out)
        models = {mode: CharBertModel.from_pretrained(out, char_padding=mode).eval() for mode in ("reference", "exact")}
        states = {
            (mode, batch): hidden_states(model, tokenizer, texts, batch, args.max_length)
            for mode, model in models.items()
            for batch in (args.batch_size, 1)
        }
    scale = torch.cat([w.abs().flatten() for w, _ in states["reference", args.batch_size]]).mean()
    b = args.batch_size
    rows = [
        [f"reference vs exact, padded batches of {b}", *differences(states["reference", b], states["exact", b])],
        ["reference vs exact, each sentence alone", *differences(states["reference", 1], states["exact", 1])],
        [f"reference: alone vs in a batch of {b}", *differences(states["reference", 1], states["reference", b])],
        [f"exact: alone vs in a batch of {b}", *differences(states["exact", 1], states["exact", b])],
    ]
    n_tokens = sum(len(w) for w, _ in states["exact", 1])
    print(f"{len(texts)} corpus sentences ({n_tokens} tokens), converted random {args.size} model (init={args.init}, "
          f"seed={args.seed}); mean |h| of the word channel = {float(scale):.3f}")
    print_table(
        ["comparison", "word max", "word mean", "char max", "char mean"],
        [[r[0]] + [f"{v:.2e}" for v in r[1:]] for r in rows],
    )


if __name__ == "__main__":
    main()
