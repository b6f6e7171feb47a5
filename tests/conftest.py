"""Shared fixtures: tiny random BERT, RoBERTa and ELECTRA checkpoints built from local text, and the data folder."""

from __future__ import annotations

import csv
import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest


def skip_module_without(*modules: str, reason: str | None = None) -> None:
    """Skip the calling test module when a package is not installed, without importing it (pytest.importorskip
    imports it at collection: onnx, onnxruntime and tensorboard cost seconds the fast loop would pay)."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(reason or f"{', '.join(missing)} not installed", allow_module_level=True)


def pytest_ignore_collect(collection_path, config):
    """Under `-m "not slow"` (the fast loop), a module marked slow as a whole is not even imported: importing
    transformers' common suites alone costs seconds, for tests that would all be deselected."""
    if config.getoption("markexpr", "").strip() != "not slow" or collection_path.suffix != ".py":
        return None
    if not collection_path.name.startswith("test_"):
        return None
    text = collection_path.read_text(encoding="utf-8")
    return True if "\npytestmark = pytest.mark.slow" in text else None

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


def mrpc_pairs(n: int) -> list[tuple[str, str]]:
    """The first ``n`` sentence pairs of the real MRPC dev set (skips when absent)."""
    with open(shared_data("glue/MRPC/dev.tsv"), encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    return [(r[3], r[4]) for r in rows[:n]]


def gloo_available() -> bool:
    """Can two processes run torch.distributed here (the gloo backend)?"""
    import torch

    return torch.distributed.is_available() and torch.distributed.is_gloo_available()


def free_port() -> int:
    """A local TCP port free now, for a torchrun / accelerate rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to n inside the block, and back to what they were after it."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture
def one_torch_thread():
    """Tiny models run fastest single-threaded; extra threads only spin when the machine is busy."""
    with torch_threads(1):
        yield


def reset_accelerate() -> None:
    """accelerate keeps process-wide singletons (AcceleratorState, PartialState, GradientState);
    every run in this process starts from a clean state (a no-op until accelerate is imported)."""
    if "accelerate" not in sys.modules:
        return
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)  # True: PartialState too
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    reset_accelerate()
    yield
    reset_accelerate()


def run_cli(program: str, *argv) -> int:
    """`python -m finetune.<program> argv...` in this process, with accelerate's singletons reset."""
    import importlib

    reset_accelerate()  # a test may run several programs
    return importlib.import_module(f"finetune.{program}").main([str(a) for a in argv])


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


@pytest.fixture(scope="session")
def electra_dir(tmp_path_factory, tiny_texts) -> Path:
    """A tiny ELECTRA discriminator (ElectraForPreTraining) with embedding_size 16 < hidden_size 32."""
    from charbert.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_electra"), "electra", tiny_texts, vocab_size=600, hidden_size=32)


@pytest.fixture(params=["bert", "roberta"])
def backbone_dir(request, bert_dir, roberta_dir) -> Path:
    return bert_dir if request.param == "bert" else roberta_dir


# ---- fine-tuning: tiny task files (synthetic, from the same local text) ------------------


def _words(texts, n_sentences, start, max_words=24):
    """Sentences of whitespace tokens from `texts`, taken in order from paragraph `start`."""
    out, i = [], start
    while len(out) < n_sentences:
        words = texts[i % len(texts)].split()[:max_words]
        i += 1
        if len(words) >= 3:
            out.append(words)
    return out


def _ner_tags(words):
    """A deterministic tagging rule: capitalised runs are entities, typed by their first letter."""
    tags, prev = [], "O"
    for w in words:
        if w[:1].isupper():
            typ = "PER" if w[0] <= "M" else "LOC"
            tag = ("I-" if prev != "O" and prev[2:] == typ else "B-") + typ
        else:
            tag = "O"
        tags.append(tag)
        prev = tag
    return tags


def _pos_tag(w):
    if w[:1].isupper():
        return "PROPN"
    if any(c.isdigit() for c in w):
        return "NUM"
    if not any(c.isalnum() for c in w):
        return "PUNCT"
    return "NOUN" if len(w) > 5 else "VERB"


def _write_conll(path, sentences, docstart=True):
    lines = ["-DOCSTART- -X- -X- O", ""] if docstart else []
    for words in sentences:
        lines += [f"{w} NN O {t}" for w, t in zip(words, _ner_tags(words))] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")


def _write_conllu(path, sentences):
    lines = []
    for k, words in enumerate(sentences):
        lines += [f"# sent_id = s{k}", f"# text = {' '.join(words)}"]
        if k == 0:
            lines.append(f"1-2\t{words[0]}{words[1]}\t_\t_\t_\t_\t_\t_\t_\t_")  # a multiword range: skipped
        lines += [f"{i + 1}\t{w}\t{w.lower()}\t{_pos_tag(w)}\tNN\t_\t0\tdep\t_\t_" for i, w in enumerate(words)]
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _squad_json(texts, n_articles, start, v2, seed):
    import random

    rng = random.Random(seed)
    data, qid = [], 0
    for a in range(n_articles):
        paragraphs = []
        for p in range(2):
            words, k = [], start + a * 40 + p * 20
            while len(words) < 90:  # long enough to need several windows at 64 tokens
                words += texts[k % len(texts)].split()
                k += 1
            context = " ".join(words[:120])
            words = context.split()
            qas = []
            for q in range(3):
                i = rng.randrange(len(words) - 3)
                answer = " ".join(words[i:i + rng.randint(1, 3)])
                pos = len(" ".join(words[:i])) + (1 if i else 0)
                assert context[pos:pos + len(answer)] == answer
                question = "What " + " ".join(rng.sample(words, 4)) + "?"
                qid += 1
                if v2 and q == 2:
                    qas.append({"id": f"q{seed}-{qid}", "question": question, "answers": [], "is_impossible": True,
                                "plausible_answers": [{"text": answer, "answer_start": pos}]})
                else:
                    qas.append({"id": f"q{seed}-{qid}", "question": question,
                                "answers": [{"text": answer, "answer_start": pos}]}
                               | ({"is_impossible": False} if v2 else {}))
            paragraphs.append({"context": context, "qas": qas})
        data.append({"title": f"article{a}", "paragraphs": paragraphs})
    return {"version": "v2.0" if v2 else "1.1", "data": data}


@pytest.fixture(scope="session")
def task_files(tmp_path_factory, tiny_texts) -> dict:
    """Small train/dev files of every fine-tuning task, written from the tiny text."""
    import json
    import random

    root = tmp_path_factory.mktemp("task_files")
    rng = random.Random(0)
    files = {}
    sents = [" ".join(w) for w in _words(tiny_texts, 80, 0, 20)]
    for name, lo, hi in (("train", 0, 48), ("dev", 48, 61)):  # 13 dev examples: not a multiple of 2 x 4
        mrpc = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
        sst = ["sentence\tlabel"]
        stsb = ["sentence1\tsentence2\tscore"]
        for i in range(lo, hi):
            same = rng.random() < 0.5
            other = sents[i + 1] if same else sents[(i * 7 + 3) % len(sents)]
            mrpc.append(f"{int(same)}\t{i}\t{i + 1000}\t{sents[i]}\t{other}")
            sst.append(f"{sents[i]}\t{i % 2}")
            stsb.append(f"{sents[i]}\t{other}\t{rng.uniform(0, 5):.2f}")
        for task, lines in (("mrpc", mrpc), ("sst2", sst), ("stsb", stsb)):
            path = root / f"{task}_{name}.tsv"
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
            files[f"{task}_{name}"] = path
    train_words = _words(tiny_texts, 60, 100)
    train_words.append(["Alpha", "Beta", "and", "Omega", "Zulu", "met", "in", "2024", "."])  # every tag occurs
    dev_words = _words(tiny_texts, 11, 300)
    dev_words.append(" ".join(tiny_texts[400:430]).split()[:200])  # longer than any window: truncated words
    _write_conll(root / "ner_train.txt", train_words)
    _write_conll(root / "ner_dev.txt", dev_words)
    _write_conllu(root / "pos_train.conllu", train_words)
    _write_conllu(root / "pos_dev.conllu", dev_words)
    files.update(ner_train=root / "ner_train.txt", ner_dev=root / "ner_dev.txt",
                 pos_train=root / "pos_train.conllu", pos_dev=root / "pos_dev.conllu")
    for version, v2 in (("v1", False), ("v2", True)):
        for name, n, start, seed in (("train", 4, 500, 1), ("dev", 2, 600, 2)):
            path = root / f"squad_{version}_{name}.json"
            path.write_text(json.dumps(_squad_json(tiny_texts, n, start, v2, seed)), encoding="utf-8")
            files[f"squad_{version}_{name}"] = path
    return files
