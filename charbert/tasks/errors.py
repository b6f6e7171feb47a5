"""Error type and file helpers shared by the task readers.

Every reader in :mod:`charbert.tasks` reports bad input with a
:class:`TaskDataError` whose message starts with ``<file>:<line>:`` (or names
the SQuAD question id), so a user can jump straight to the offending line
instead of debugging a silently wrong training set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]


class TaskDataError(ValueError):
    """Malformed task data (bad column count, unknown label, bad offset, ...).

    A subclass of :class:`ValueError` so callers that only know about
    ``ValueError`` still catch it.
    """


def location(path: PathLike, line: int | None = None) -> str:
    """``"file:line"`` (1-based line) or just ``"file"`` when no line applies."""
    return f"{os.fspath(path)}:{line}" if line is not None else os.fspath(path)


def data_error(path: PathLike, line: int | None, message: str) -> TaskDataError:
    """Build a :class:`TaskDataError` whose message starts with ``file:line:``."""
    return TaskDataError(f"{location(path, line)}: {message}")


def read_text_lines(path: PathLike) -> list[str]:
    """Read a UTF-8 text file into lines without their line terminators.

    * A missing file raises :class:`FileNotFoundError` naming the path (the
      default message of ``open`` does too, but we raise it before anything
      else so the error is uniform across readers).
    * A file with no non-whitespace content raises :class:`TaskDataError`
      saying it is empty: an empty train/dev file is always a mistake (a
      failed download, a wrong path), never something to train on.
    * A byte that is not UTF-8 raises :class:`TaskDataError` naming the file and line.
    * A UTF-8 byte-order mark is dropped (``utf-8-sig``): some GLUE copies
      carry one and it would otherwise end up in the first header name.
    * Lines are split on ``\\n`` only (``\\r`` stripped); ``str.splitlines``
      would also split on U+2028, U+0085 etc., which occur inside real
      sentences and would shift every later line number.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{os.fspath(path)}: no such file")
    if p.is_dir():
        raise IsADirectoryError(f"{os.fspath(path)}: is a directory, expected a file")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:  # name the line and the byte, not only a byte offset
        line = data.count(b"\n", 0, err.start) + 1
        raise data_error(path, line, f"not valid UTF-8 (byte 0x{data[err.start]:02x}); convert the file to UTF-8") from None
    if not text.strip():
        raise data_error(path, None, "file is empty")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline does not start another line
    return [line[:-1] if line.endswith("\r") else line for line in lines]
