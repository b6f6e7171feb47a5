"""datasets in: a `load_dataset("text")` source, a save_to_disk folder (Dataset and DatasetDict) and a
data folder give the same packed blocks as the same text from a file."""

from __future__ import annotations

import builtins
import json
import math

import pytest

datasets = pytest.importorskip("datasets", reason="the datasets extra is not installed")

from charbert.pretraining.blocks import PackedBlocks, pack_corpus, pack_lines  # noqa: E402
from charbert.pretraining.corpus import ReadStats, iter_lines  # noqa: E402
from charbert.pretraining.hf_datasets import (  # noqa: E402
    is_saved_dataset,
    iter_dataset_lines,
    iter_text_lines,
    open_dataset,
    pack_dataset,
)

MAX_TOKENS = 60


@pytest.fixture(scope="module")
def tokenizer(tiny_texts):
    from charbert.tiny import train_tokenizer

    return train_tokenizer(tiny_texts[:400], "bert", vocab_size=500)


@pytest.fixture(scope="module")
def lines(tiny_texts) -> list[str]:
    """Corpus lines with what a file reader must handle: blank lines, CRLF, a line longer than a block, accents."""
    body = tiny_texts[:120]
    return [*body[:40], "", "   ", body[40] + "\r", "Café — naïve façade “quoted”", " ".join(body[41:50]), *body[50:]]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    return path


@pytest.fixture(scope="module")
def file_blocks(text_file, tokenizer, tmp_path_factory) -> list[str]:
    packed = pack_corpus([text_file], tokenizer, tmp_path_factory.mktemp("cache"), MAX_TOKENS, show_progress=False)
    blocks = list(packed)
    assert len(blocks) > 10 and packed.meta["read_stats"]["empty_lines"] == 2
    return blocks


def test_text_builder_streams_the_same_blocks_as_the_file(text_file, tokenizer, file_blocks):
    assert isinstance(open_dataset("text", data_files=str(text_file)), datasets.IterableDataset), "streamed, not loaded"
    stats = ReadStats()
    streamed = iter_dataset_lines("text", data_files=str(text_file), stats=stats)
    assert list(pack_lines(streamed, tokenizer, MAX_TOKENS)) == file_blocks
    from_file = ReadStats()
    file_lines = list(iter_lines([text_file], from_file))
    assert list(iter_dataset_lines("text", data_files=str(text_file))) == file_lines
    assert (stats.lines, stats.empty_lines) == (from_file.lines, from_file.empty_lines) == (len(file_lines), 2)


def test_text_builder_chunks_do_not_change_the_lines(text_file, monkeypatch):
    # the builder reads TEXT_CHUNK_CHARS at a time (memory); chunk ends fall inside lines and CRLFs here
    file_lines = list(iter_lines([text_file], ReadStats()))
    monkeypatch.setattr("charbert.pretraining.hf_datasets.TEXT_CHUNK_CHARS", 37)
    assert list(iter_dataset_lines("text", data_files=str(text_file))) == file_lines


def test_save_to_disk_folders_give_the_same_blocks(lines, tmp_path, tokenizer, file_blocks):
    # one row a line, as a text file; and one row a document holding several lines
    datasets.Dataset.from_dict({"id": list(range(len(lines))), "text": lines}).save_to_disk(tmp_path / "rows")
    documents = ["\n".join(lines[i:i + 7]) for i in range(0, len(lines), 7)]
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"body": documents, "n": list(range(len(documents)))}),
        "validation": datasets.Dataset.from_dict({"body": ["held out"], "n": [0]}),
    }).save_to_disk(tmp_path / "docs")
    assert is_saved_dataset(tmp_path / "rows") and is_saved_dataset(tmp_path / "docs")
    # streamed from the Arrow files (load_from_disk's memory map would make RSS grow with the data set)
    assert isinstance(open_dataset(str(tmp_path / "docs"), split="train"), datasets.IterableDataset)
    assert isinstance(open_dataset(str(tmp_path / "docs"), split="train", streaming=False), datasets.Dataset)
    assert list(pack_lines(iter_dataset_lines(str(tmp_path / "rows")), tokenizer, MAX_TOKENS)) == file_blocks
    # no "text" column: the first text column is used, as run_mlm_no_trainer.py does
    docs = iter_dataset_lines(str(tmp_path / "docs"), split="train")
    assert list(pack_lines(docs, tokenizer, MAX_TOKENS)) == file_blocks
    assert list(iter_dataset_lines(str(tmp_path / "docs"), split="validation", text_column_name="body")) == ["held out"]
    with pytest.raises(ValueError, match="no split 'test'"):
        list(iter_dataset_lines(str(tmp_path / "docs"), split="test"))
    with pytest.raises(ValueError, match="no column 'content'.*body"):
        list(iter_dataset_lines(str(tmp_path / "docs"), text_column_name="content"))


def test_pack_dataset_builds_once_and_matches_pack_corpus(text_file, tmp_path, tokenizer, file_blocks):
    folder = tmp_path / "data"  # a local dataset folder of data files
    folder.mkdir()
    (folder / "train.txt").write_bytes(text_file.read_bytes())
    packed = pack_dataset(str(folder), tokenizer, tmp_path / "cache", MAX_TOKENS, show_progress=False)
    assert isinstance(packed, PackedBlocks) and list(packed) == file_blocks
    meta = json.loads((packed.directory / "meta.json").read_text())
    assert meta["dataset"]["name"] == str(folder) and meta["read_stats"]["empty_lines"] == 2
    again = pack_dataset(str(folder), tokenizer, tmp_path / "cache", MAX_TOKENS, show_progress=False)
    assert again.directory == packed.directory  # reused from the cache
    (folder / "train.txt").write_text("changed text here\n")  # the files are part of the identity
    changed = pack_dataset(str(folder), tokenizer, tmp_path / "cache", MAX_TOKENS, show_progress=False)
    assert changed.directory != packed.directory and list(changed) == ["changed text here"]


def test_rows_become_lines_like_a_file():
    stats = ReadStats()
    rows = [{"text": "a\r\nb"}, {"text": ""}, {"text": None}, {"text": "  \n c "}]
    assert list(iter_text_lines(rows, stats=stats)) == ["a", "b", " c "]
    assert (stats.lines, stats.empty_lines) == (3, 3)
    with pytest.raises(ValueError, match="holds int values"):
        list(iter_text_lines([{"text": 3}]))
    with pytest.raises(ValueError, match="no text column"):
        list(iter_text_lines([{"label": 1}]))


def test_without_datasets_the_error_is_one_clear_line(monkeypatch):
    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets" or name.startswith("datasets."):
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(ImportError, match="pip install datasets"):
        list(iter_dataset_lines("wikitext"))


# ---- the programs take --dataset_name ------------------------------------------------------------


def _pretrain_losses(bert_dir, vocab_dir, out, *data_flags) -> list[float]:
    from pretrain.__main__ import main
    from tests.conftest import reset_accelerate

    reset_accelerate()
    assert main(["--model_name_or_path", str(bert_dir), *data_flags, "--word_vocab", str(vocab_dir),
                 "--max_seq_length", "48", "--per_device_train_batch_size", "4", "--max_train_steps", "3",
                 "--logging_steps", "1", "--seed", "5", "--output_dir", str(out)]) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


@pytest.mark.slow
def test_pretrain_dataset_name_trains_on_the_same_blocks_as_the_file(bert_dir, tiny_texts, lines, text_file, tmp_path):
    from charbert.pretraining.vocab import WordVocab

    vocab = tmp_path / "vocab"
    vocab.mkdir()
    WordVocab.build(tiny_texts, max_size=200).save(vocab)
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"id": list(range(len(lines))), "body": lines})}
                         ).save_to_disk(str(saved))
    from_file = _pretrain_losses(bert_dir, vocab, tmp_path / "file", "--train_file", str(text_file))
    from_disk = _pretrain_losses(bert_dir, vocab, tmp_path / "disk", "--dataset_name", str(saved),
                                 "--text_column_name", "body")
    assert len(from_file) == len(from_disk) == 3 and all(map(math.isfinite, from_disk))

    def trained_blocks(out):
        (folder,) = [p for p in (out / "cache").iterdir() if p.is_dir()]
        return list(PackedBlocks(folder))

    assert trained_blocks(tmp_path / "disk") == trained_blocks(tmp_path / "file")
    from charbert.model_card import read_model_card

    assert read_model_card(tmp_path / "disk")["charbert"]["data_files"] == [str(saved)]


def test_pretrain_dataset_flags_are_checked(capsys, monkeypatch):
    from pretrain.__main__ import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--model_name_or_path", "m", "--train_file", "a.txt", "--dataset_name", "text"])
    assert "not both" in capsys.readouterr().err
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "datasets" else object())
    with pytest.raises(SystemExit):
        parse_args(["--model_name_or_path", "m", "--dataset_name", "wikitext"])
    assert "pip install 'charbert[datasets]'" in capsys.readouterr().err
