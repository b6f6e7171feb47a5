"""Shared fixtures: tiny random BERT and RoBERTa checkpoints built from local text, and the data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(relative: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason."""
    path = DATA_DIR / relative
    if not path.exists():
        pytest.skip(f"{path} not found: this test reads the real data in ../shared/data (absent on this machine)")
    return path


def corpus_lines(n: int = 400) -> list[str]:
    """The first non-empty lines of the shared pretraining corpus files (skips when absent)."""
    lines = []
    for name in ("brown.txt", "webtext.txt", "wikitext2_valid_test.txt"):
        with open(shared_data(f"corpus/{name}"), encoding="utf-8") as f:
            taken = 0
            for line in f:
                if line.strip():
                    lines.append(line.rstrip("\n"))
                    taken += 1
                if taken >= n // 3:
                    break
    return lines


@pytest.fixture(scope="session")
def tiny_texts() -> list[str]:
    from charbert.tiny import stdlib_paragraphs

    return list(stdlib_paragraphs(1500))


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory, tiny_texts) -> Path:
    from charbert.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_bert"), "bert", tiny_texts, vocab_size=600, hidden_size=32)


@pytest.fixture(scope="session")
def roberta_dir(tmp_path_factory, tiny_texts) -> Path:
    from charbert.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_roberta"), "roberta", tiny_texts, vocab_size=600, hidden_size=32)


@pytest.fixture(params=["bert", "roberta"])
def backbone_dir(request, bert_dir, roberta_dir) -> Path:
    return bert_dir if request.param == "bert" else roberta_dir
