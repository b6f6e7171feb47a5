"""What every command-line program of charbert shares: the error convention, logging, JSON output,
and two context managers.

The error convention: bad input (a malformed data line, flags that cannot work together, a
missing file) ends with one line on stderr, ``<prog>: error: <message>``, and exit code 2;
``CHARBERT_DEBUG=1`` re-raises instead, so the traceback shows.  A program is::

    def main(argv=None) -> int:
        args = build_parser().parse_args(argv)
        return run_main(PROG, lambda: run(args), known_errors=(TaskDataError,))

API: :class:`UsageError`, :class:`ArgumentParser`, :func:`run_main`, :func:`one_line`,
:func:`report_error`, :func:`program_name`, :func:`shutdown_distributed`, :func:`setup_logging`, :func:`json_safe`,
:func:`write_json`, :func:`quiet_transformers`, :func:`eval_mode`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

DEBUG_ENV = "CHARBERT_DEBUG"
USAGE_EXIT_CODE = 2
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def program_name(module_command: str) -> str:
    """How the running program is called, for usage and error lines: its console script's name
    (``charbert-finetune-ner``) when started as one, else ``module_command`` (``python -m finetune.ner``)."""
    script = Path(sys.argv[0]).name.removesuffix(".exe") if sys.argv and sys.argv[0] else ""
    return script if script.startswith("charbert-") else module_command


class UsageError(ValueError):
    """Flags that cannot work together (reported like bad data: one line, exit code 2)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors raise :class:`UsageError` (one line through :func:`run_main`, no usage dump)."""

    def error(self, message: str):
        raise UsageError(message)


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


def one_line(err: BaseException) -> str:
    """The message of an exception on one line (a missing file's name is always part of it)."""
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, FileNotFoundError) and err.filename and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    return text


def report_error(prog: str, message: str) -> None:
    """``prog: error: message`` on stderr, once per job (by the process of rank 0)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)


def shutdown_distributed() -> None:
    """Destroy the torch.distributed process group if a run created one (avoids a warning at exit)."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run_main(prog: str, run: Callable[[], Any], known_errors: Iterable[type[BaseException]] = ()) -> int:
    """Call ``run()``; return its int result (0 if it returns something else), or 2 on bad input.

    ``known_errors`` (plus :class:`UsageError`, FileNotFoundError, IsADirectoryError) are
    reported by their message alone; any other ValueError or OSError also gets its type and the
    hint to set ``CHARBERT_DEBUG=1``.  Other exceptions are bugs and propagate with their traceback.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    known = (UsageError, FileNotFoundError, IsADirectoryError, *known_errors)
    try:
        result = run()
        code = result if isinstance(result, int) and not isinstance(result, bool) else 0
    except known as err:
        if os.environ.get(DEBUG_ENV):
            raise
        report_error(prog, one_line(err))
        code = USAGE_EXIT_CODE
    except (ValueError, OSError) as err:  # e.g. a config value out of range, an unreadable file
        if os.environ.get(DEBUG_ENV):
            raise
        report_error(prog, f"{one_line(err)} ({type(err).__name__}; set {DEBUG_ENV}=1 for the traceback)")
        code = USAGE_EXIT_CODE
    finally:
        shutdown_distributed()
    return code


# --------------------------------------------------------------------------------------
# Logging and output
# --------------------------------------------------------------------------------------


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the record (so it survives output capture)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(names: Iterable[str] = ("charbert",), level: int = logging.INFO) -> None:
    """Send the named loggers' records of ``level`` and above to stderr, once (calling again only sets the level).

    Pass ``logging.WARNING`` on processes other than the main one.
    """
    for name in names:
        named = logging.getLogger(name)
        named.setLevel(level)
        if not any(isinstance(h, StderrHandler) for h in named.handlers):
            handler = StderrHandler()
            handler.setFormatter(logging.Formatter(LOG_FORMAT, "%H:%M:%S"))
            named.addHandler(handler)


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf as None, numpy scalars as Python numbers, tuples as lists, keys as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / 0-d torch scalars
        return json_safe(value.item())
    return value


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``json_safe(obj)`` indented, with a final newline; returns the path."""
    path = Path(path)
    path.write_text(json.dumps(json_safe(obj), indent=2) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------
# Context managers
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' logging below ERROR inside the block (e.g. its report of newly
    initialised weights, when the caller reports what was loaded itself); restored afterwards."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


@contextlib.contextmanager
def eval_mode(model) -> Iterator[Any]:
    """``model.eval()`` inside the block; the model's previous train/eval mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
