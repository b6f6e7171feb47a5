"""Streaming reading of plain-text pretraining corpora (plain files or ``.gz``).

Two functions:

* :func:`expand_paths` turns command-line arguments (files or glob patterns) into a list of
  files, failing early and clearly on anything missing or empty, before a long pass starts;
* :func:`iter_lines` streams the lines of those files one at a time, never holding a file in
  memory.

Decoding is done per line from bytes, so one invalid byte costs exactly one line: that line is
skipped and counted in :class:`ReadStats` (a documented skip, never a crash and never a silent
drop). Empty and whitespace-only lines are skipped and counted too.
"""

from __future__ import annotations

import glob
import gzip
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

__all__ = ["ReadStats", "expand_paths", "iter_lines", "open_binary"]

PathLike = Union[str, "os.PathLike[str]"]

_GLOB_CHARS = frozenset("*?[")
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


@dataclass
class ReadStats:
    """What :func:`iter_lines` did. All counts accumulate over every file read.

    lines: lines yielded (valid UTF-8, not blank).
    skipped_non_utf8: lines skipped because they are not valid UTF-8.
    empty_lines: empty or whitespace-only lines skipped.
    files: files opened.
    """

    lines: int = 0
    skipped_non_utf8: int = 0
    empty_lines: int = 0
    files: int = 0

    def as_dict(self) -> dict:
        return {
            "lines": self.lines,
            "skipped_non_utf8": self.skipped_non_utf8,
            "empty_lines": self.empty_lines,
            "files": self.files,
        }


def _is_gzip(path: Path) -> bool:
    return path.suffix.lower() == ".gz"


def open_binary(path: PathLike) -> BinaryIO:
    """Open a corpus file for binary, buffered, streaming reading (``.gz`` by suffix)."""
    path = Path(path)
    return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")


def _has_content(path: Path) -> bool:
    """True when the file holds at least one (decompressed) byte."""
    if path.stat().st_size == 0:
        return False
    if not _is_gzip(path):
        return True
    try:
        with gzip.open(path, "rb") as f:
            return len(f.read(1)) > 0
    except _GZIP_ERRORS as err:
        raise ValueError(f"{path}: not a readable gzip file ({err})") from None


def expand_paths(patterns: Sequence[PathLike]) -> list[Path]:
    """Files named by `patterns`, in argument order; each glob pattern expands sorted.

    * A pattern (``*``, ``?``, ``[``; ``**`` recurses) keeps only the regular files it matches.
      A file named twice (overlapping patterns) is kept once, at its first place, so it is never
      counted twice.
    * A path that does not exist, or a pattern matching no file, raises ``FileNotFoundError``
      naming every such argument (all of them at once, not only the first).
    * A directory, a FIFO or another non-regular file given as a path, an empty file (0 bytes, or a ``.gz`` that decompresses to
      nothing) or an unreadable ``.gz`` raises ``ValueError`` naming it.
    """
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    found: list[Path] = []
    seen: set[Path] = set()
    missing: list[str] = []
    for pattern in patterns:
        text = os.path.expanduser(os.fspath(pattern))
        if _GLOB_CHARS.intersection(text):
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True)) if os.path.isfile(m)]
            if not matches:
                missing.append(f"{text} (pattern matches no file)")
                continue
        else:
            path = Path(text)
            if not path.exists():
                missing.append(text)
                continue
            if path.is_dir():
                raise ValueError(f"{path} is a directory; pass its files or a pattern such as {path / '*.txt'}")
            if not path.is_file():  # a FIFO, socket or device: read more than once (cache key, packing), so refused
                raise ValueError(f"{path} is not a regular file (a pipe, socket or device); corpus files are read "
                                 "more than once: write the stream to a file first")
            matches = [path]
        for path in matches:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                found.append(path)
    if missing:
        raise FileNotFoundError("no such file: " + ", ".join(missing))
    for path in found:
        if not _has_content(path):
            raise ValueError(f"{path} is empty")
    return found


def iter_lines(paths: Iterable[PathLike] | PathLike, stats: ReadStats | None = None) -> Iterator[str]:
    """Every line of every file in `paths`, in order, streamed (one buffered line at a time).

    * ``.gz`` files (by suffix) are decompressed on the fly; anything else is read as plain text.
    * The trailing ``\\n`` / ``\\r\\n`` / ``\\r`` is stripped; nothing else (leading spaces stay).
      Lines are split on ``\\n`` only: U+2028, U+0085 etc. inside a line stay inside it.
    * A UTF-8 byte-order mark at the start of a file is dropped.
    * Empty or whitespace-only lines are skipped and counted in ``stats.empty_lines``.
    * A line that is not valid UTF-8 is skipped and counted in ``stats.skipped_non_utf8``;
      the other lines of the file are still read.
    * A corrupt or truncated ``.gz`` raises ``ValueError`` naming the file.

    `paths` are taken as given (use :func:`expand_paths` for patterns and early checks).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if stats is None:
        stats = ReadStats()
    for path in paths:
        path = Path(path)
        with open_binary(path) as f:
            stats.files += 1
            first = True
            try:
                for raw in f:
                    if first:
                        first = False
                        if raw.startswith(b"\xef\xbb\xbf"):
                            raw = raw[3:]
                    raw = raw.rstrip(b"\n").rstrip(b"\r")
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError:
                        stats.skipped_non_utf8 += 1
                        continue
                    if not line or line.isspace():
                        stats.empty_lines += 1
                        continue
                    stats.lines += 1
                    yield line
            except _GZIP_ERRORS as err:
                raise ValueError(f"{path}: corrupt or truncated gzip file ({err})") from None
