"""Pretraining text from a Hugging Face `datasets` source, streamed into the packer.

`iter_dataset_lines` yields the lines of one text column, in the form `charbert.pretraining.blocks.pack_lines`
consumes and exactly as `charbert.pretraining.corpus.iter_lines` gives the lines of a text file (each row's
text split on newlines, trailing "\\r" dropped, empty lines skipped and counted in `ReadStats`),
so the same text packs into the same blocks whichever way it comes in. `pack_dataset` is
`pack_corpus` for such a source: packed once into the cache folder, memory-mapped afterwards.

The source is what `run_*_no_trainer.py`'s `--dataset_name` takes:

* a Hub name ("wikitext", with `dataset_config_name="wikitext-103-raw-v1"`) or a builder with
  files ("text" / "json" / "csv" with `data_files`): opened with `streaming=True`, so rows are read
  as they are packed and nothing is held in memory (offline, the `datasets` cache answers);
* a local dataset folder of data files (loaded the same way);
* a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`: its Arrow files streamed
  a record batch at a time (datasets' "arrow" builder). Not `load_from_disk`: it memory-maps them
  and reads every page, and mapped pages count as resident memory while the map is open, so the
  peak RSS would grow with the size of the data set.

The "text" builder reads `TEXT_CHUNK_CHARS` characters at a time rather than its default 10M: it
holds several copies of a chunk at once (the string, its lines, the Arrow array), and with 10M
characters the peak of reading the lines rose with the corpus (+138 MB from 1x to 16x the
1.9M-word benchmark corpus, +11 MB with 1M; benchmarks/bench_pretrain.py section 3 measures it).
The rows are the same lines whatever the chunk size.

(`datasets` >= 4 no longer runs dataset loading scripts; a script folder fails with its message.)
`datasets` is optional: without it these functions raise one clear ImportError.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .corpus import ReadStats

DEFAULT_TEXT_COLUMN = "text"
TEXT_CHUNK_CHARS = 1 << 20  # characters the "text" builder reads at a time (its default: 10M)
_SAVED_DATASET_FILES = ("state.json", "dataset_info.json")  # Dataset.save_to_disk
_SAVED_DICT_FILE = "dataset_dict.json"  # DatasetDict.save_to_disk


def _require_datasets():
    try:
        import datasets
    except ImportError:
        raise ImportError("--dataset_name needs the `datasets` package: pip install datasets (the charbert[datasets] extra)") from None
    return datasets


def is_saved_dataset(path: str | os.PathLike) -> bool:
    """True for a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    path = Path(path)
    return path.is_dir() and ((path / _SAVED_DICT_FILE).is_file() or all((path / f).is_file() for f in _SAVED_DATASET_FILES))


def saved_arrow_files(path: str | os.PathLike, split: str = "train") -> list[str]:
    """The Arrow files of `split` of a `save_to_disk` folder, in row order (save_to_disk writes the
    rows with any selection applied). Read from its state.json, as `load_from_disk` does, without
    opening the files: `load_from_disk` maps them and reads every page (peak RSS = their size)."""
    path = Path(path)
    if (path / _SAVED_DICT_FILE).is_file():
        splits = json.loads((path / _SAVED_DICT_FILE).read_text(encoding="utf-8"))["splits"]
        if split not in splits:
            raise ValueError(f"{path} has no split {split!r} (splits: {', '.join(splits)})")
        path = path / split
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    return [str(path / f["filename"]) for f in state["_data_files"]]


def open_dataset(
    dataset_name: str,
    dataset_config_name: str | None = None,
    split: str = "train",
    *,
    data_files: str | list[str] | dict | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    streaming: bool = True,
):
    """The `split` of a `datasets` source as an iterable of rows (dicts). Streamed (an `IterableDataset`)
    by default, a `save_to_disk` folder included; with `streaming=False` a map-style `Dataset`
    (memory-mapped for a `save_to_disk` folder)."""
    datasets = _require_datasets()
    if is_saved_dataset(dataset_name):
        if streaming:
            return datasets.load_dataset("arrow", data_files=saved_arrow_files(dataset_name, split), split="train",
                                         streaming=True)
        loaded = datasets.load_from_disk(dataset_name)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"{dataset_name} has no split {split!r} (splits: {', '.join(loaded)})")
            loaded = loaded[split]
        return loaded
    config_kwargs = {"chunksize": TEXT_CHUNK_CHARS} if streaming and dataset_name == "text" else {}
    return datasets.load_dataset(
        dataset_name, dataset_config_name, data_files=data_files, split=split, revision=revision,
        cache_dir=cache_dir, streaming=streaming, **config_kwargs,
    )


def _text_column(row: dict, requested: str | None, source: str) -> str:
    if requested is not None:
        if requested not in row:
            raise ValueError(f"{source} has no column {requested!r} (columns: {', '.join(row)}); set --text_column_name")
        return requested
    if DEFAULT_TEXT_COLUMN in row:
        return DEFAULT_TEXT_COLUMN
    for name, value in row.items():  # as run_mlm_no_trainer.py: the first text column
        if isinstance(value, str):
            return name
    raise ValueError(f"{source} has no text column (columns: {', '.join(row)}); set --text_column_name")


def iter_text_lines(rows: Iterable[dict], text_column_name: str | None = None, stats: ReadStats | None = None,
                    source: str = "the dataset") -> Iterator[str]:
    """The lines of one text column of `rows`, as `iter_lines` gives a file's lines."""
    if stats is None:
        stats = ReadStats()
    column = None
    for row in rows:
        if column is None:
            column = _text_column(row, text_column_name, source)
        text = row[column]
        if not isinstance(text, str):
            if text is not None:
                raise ValueError(f"column {column!r} of {source} holds {type(text).__name__} values, not text")
            stats.empty_lines += 1
            continue
        for line in text.split("\n"):
            line = line.rstrip("\r")
            if not line or line.isspace():
                stats.empty_lines += 1
                continue
            stats.lines += 1
            yield line


def iter_dataset_lines(
    dataset_name: str,
    dataset_config_name: str | None = None,
    split: str = "train",
    text_column_name: str | None = None,
    *,
    data_files: str | list[str] | dict | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    stats: ReadStats | None = None,
) -> Iterator[str]:
    """Stream the text lines of a `datasets` source (see the module docstring) for `pack_lines`."""
    dataset = open_dataset(dataset_name, dataset_config_name, split, data_files=data_files, revision=revision,
                           cache_dir=cache_dir)
    if stats is not None:
        stats.files += 1
    source = dataset_name if dataset_config_name is None else f"{dataset_name}/{dataset_config_name}"
    yield from iter_text_lines(dataset, text_column_name, stats, f"{source} [{split}]")


def dataset_fingerprint(dataset_name: str, dataset_config_name: str | None, split: str, text_column_name: str | None,
                        data_files: Any, revision: str | None) -> str:
    """Identifies a dataset source for the packed-corpus cache: its name, config, split, column and
    revision, plus (path, size, mtime) of every file of a local folder or `data_files`.

    A Hub dataset is identified by name and revision only: pass a pinned `revision` to be sure a
    cached packing matches upstream."""
    h = hashlib.sha256(repr((dataset_name, dataset_config_name, split, text_column_name, revision)).encode())
    local: list[Path] = []
    if Path(dataset_name).is_dir():
        local += sorted(p for p in Path(dataset_name).rglob("*") if p.is_file())
    files = data_files.values() if isinstance(data_files, dict) else [data_files]
    for entry in files:
        for f in [entry] if isinstance(entry, (str, os.PathLike)) else (entry or []):
            local += sorted(Path().glob(str(f))) if any(c in str(f) for c in "*?[") else [Path(f)]
    for p in local:
        if p.is_file():
            st = p.stat()
            h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def pack_dataset(
    dataset_name: str,
    tokenizer,
    cache_dir: str | os.PathLike,
    max_tokens: int,
    dataset_config_name: str | None = None,
    split: str = "train",
    text_column_name: str | None = None,
    *,
    data_files: str | list[str] | dict | None = None,
    revision: str | None = None,
    show_progress: bool = True,
):
    """`pack_corpus` for a `datasets` source: stream it once into packed blocks under
    `cache_dir/<fingerprint>/` (reused when present) and return the memory-mapped `PackedBlocks`."""
    from .blocks import pack_lines_into, tokenizer_fingerprint

    _require_datasets()
    name = dataset_fingerprint(dataset_name, dataset_config_name, split, text_column_name, data_files, revision)
    target = Path(cache_dir) / hashlib.sha256(f"{name}|{tokenizer_fingerprint(tokenizer)}|{max_tokens}".encode()).hexdigest()[:16]
    stats = ReadStats()
    lines = iter_dataset_lines(dataset_name, dataset_config_name, split, text_column_name, data_files=data_files,
                               revision=revision, stats=stats)
    source = {"dataset": {"name": str(dataset_name), "config": dataset_config_name, "split": split,
                          "text_column": text_column_name, "revision": revision}}
    return pack_lines_into(target, lines, stats, tokenizer, max_tokens, source, show_progress)
