"""Pretraining data: text files streamed once into packed text blocks stored on disk.

A *block* is whole lines of the corpus, joined by "\\n", whose clean tokenisation fits in
`max_tokens` subwords. Blocks stay *text* (not token ids) because the noisy-LM objective edits
characters before tokenisation: the collator noises a block, then tokenises it (one code path
for both channels).

The packed corpus lives in a folder holding `blocks.bin` (all blocks, UTF-8, concatenated),
`blocks.idx.npy` (n+1 byte offsets) and `meta.json` (written last: a folder without it is an
interrupted build and is rebuilt). Each process builds in its own temporary folder and
publishes it with one atomic rename; when two build the same corpus at once, the later one
uses the first one's complete folder. `PackedBlocks` memory-maps it, so a corpus of any size
costs no memory, every block is reachable by index (exact resume, per-process sharding by the
training loop's sampler), and the build is done once and reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .corpus import ReadStats, expand_paths, iter_lines

BLOCKS_FILE, INDEX_FILE, META_FILE = "blocks.bin", "blocks.idx.npy", "meta.json"
LINE_SEPARATOR = "\n"  # lines of a block are joined by a newline: never glued together


class PackedBlocks(Dataset):
    """Map-style dataset of text blocks from a packed-corpus folder (memory-mapped)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        meta = self.directory / META_FILE
        if not meta.is_file():
            raise FileNotFoundError(f"{self.directory} is not a packed corpus (no {META_FILE}); build it with pack_corpus().")
        self.meta = json.loads(meta.read_text(encoding="utf-8"))
        self.offsets = np.load(self.directory / INDEX_FILE, mmap_mode="r")
        size = int(self.offsets[-1])
        self.data = np.memmap(self.directory / BLOCKS_FILE, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> str:
        if not -len(self) <= index < len(self):
            raise IndexError(f"block {index} out of range ({len(self)} blocks)")
        index %= len(self)
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return bytes(self.data[start:end]).decode("utf-8")


def split_long_line(line: str, token_offsets: np.ndarray, max_tokens: int) -> list[str]:
    """Cut a line whose tokens exceed `max_tokens` into pieces of at most that many tokens,
    preferring to cut where a token starts a new word (after whitespace)."""
    pieces, first = [], 0
    n = len(token_offsets)
    while n - first > max_tokens:
        cut = first + max_tokens
        for k in range(cut, first, -1):  # the latest word start that keeps the piece within budget
            start = int(token_offsets[k, 0])
            if start > 0 and line[start - 1].isspace():
                cut = k
                break
        a = int(token_offsets[first, 0])
        b = int(token_offsets[cut, 0])
        pieces.append(line[a:b].strip())
        first = cut
    pieces.append(line[int(token_offsets[first, 0]) :].strip())
    return [p for p in pieces if p]


def pack_lines(lines: Iterable[str], tokenizer, max_tokens: int, chunk_size: int = 1000) -> Iterator[str]:
    """Greedily pack whole lines into blocks of at most `max_tokens` subwords (no special tokens).

    A line longer than the budget is split at word starts into pieces that each fit. Lines are
    tokenised in chunks with the fast tokenizer's batch call (the cost of packing).
    """
    if max_tokens < 8:
        raise ValueError(f"max_tokens={max_tokens} is too small to pack text into blocks.")
    block: list[str] = []
    block_tokens = 0

    def chunks():
        chunk = []
        for line in lines:
            chunk.append(line)
            if len(chunk) == chunk_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    for chunk in chunks():
        enc = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        for line, offsets in zip(chunk, enc["offset_mapping"]):
            n = len(offsets)
            if n == 0:
                continue
            parts = [(line, n)] if n <= max_tokens else None
            if parts is None:
                pieces = split_long_line(line, np.asarray(offsets), max_tokens)
                counts = [len(x) for x in tokenizer(pieces, add_special_tokens=False, verbose=False)["input_ids"]]
                parts = list(zip(pieces, counts))
            for text, count in parts:
                if block and block_tokens + count > max_tokens:
                    yield LINE_SEPARATOR.join(block)
                    block, block_tokens = [], 0
                block.append(text)
                block_tokens += count
    if block:
        yield LINE_SEPARATOR.join(block)


def corpus_fingerprint(paths: Sequence[Path], tokenizer_name: str, max_tokens: int) -> str:
    """Identifies a packed corpus: the files (path, size, mtime), the tokenizer and the budget."""
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(f"{tokenizer_name}|{max_tokens}".encode())
    return h.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """The tokenizer's part of a packed corpus's identity: its name and size."""
    return f"{getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)}|{len(tokenizer)}"


def pack_corpus(
    patterns: Sequence[str | os.PathLike],
    tokenizer,
    cache_dir: str | os.PathLike,
    max_tokens: int,
    show_progress: bool = True,
) -> PackedBlocks:
    """Stream the text files once into packed blocks under `cache_dir/<fingerprint>/` (reused when present).

    Lines that are empty or not valid UTF-8 are skipped and counted (`meta.json`: read_stats).
    """
    paths = expand_paths(patterns)
    target = Path(cache_dir) / corpus_fingerprint(paths, tokenizer_fingerprint(tokenizer), max_tokens)
    stats = ReadStats()
    return pack_lines_into(target, iter_lines(paths, stats), stats, tokenizer, max_tokens,
                           {"files": [str(p) for p in paths]}, show_progress)


def pack_lines_into(
    target: Path,
    lines: Iterable[str],
    stats: ReadStats,
    tokenizer,
    max_tokens: int,
    source: dict,
    show_progress: bool = True,
) -> PackedBlocks:
    """Pack `lines` (read lazily; `stats` counts what their reader skipped) into the folder `target`,
    unless a complete build is already there. `source` (e.g. {"files": [...]}) goes into meta.json."""
    if (target / META_FILE).is_file():
        return PackedBlocks(target)
    # Each builder writes its own temporary folder and publishes it with one atomic rename:
    # two processes building the same cache never see each other's half-written files.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        _write_packed(tmp, lines, stats, tokenizer, max_tokens, source, show_progress)
        os.chmod(tmp, 0o755)  # mkdtemp's folder is private
        if target.is_dir() and not (target / META_FILE).is_file():  # left by an interrupted build of an old version
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)  # fails if another process published first
        except OSError:
            if not (target / META_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after the rename; the loser's copy otherwise
    return PackedBlocks(target)


def _write_packed(tmp: Path, lines, stats: ReadStats, tokenizer, max_tokens: int, source: dict,
                  show_progress: bool) -> None:
    """Write blocks.bin, the index and meta.json (last) into the folder `tmp`."""
    offsets = array("q", [0])  # 8 bytes a block (a list of ints: 40, which grew the peak with the corpus)
    if show_progress:
        lines = tqdm(lines, desc="packing corpus", unit=" lines", mininterval=1.0)
    with open(tmp / BLOCKS_FILE, "wb") as out:
        for block in pack_lines(lines, tokenizer, max_tokens):
            data = block.encode("utf-8")
            out.write(data)
            offsets.append(offsets[-1] + len(data))
    if len(offsets) == 1:
        where = source.get("files", source)
        raise ValueError(f"No text to pretrain on in {where} (every line empty or unreadable: {stats.as_dict()}).")
    np.save(tmp / INDEX_FILE, np.frombuffer(offsets, dtype=np.int64))
    meta = {
        **source,
        "tokenizer": getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
        "max_tokens": max_tokens,
        "blocks": len(offsets) - 1,
        "read_stats": stats.as_dict(),
    }
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")  # last: marks the build complete
