"""One run per output folder: an exclusive ``fcntl.flock`` on ``OUTPUT_DIR/.lock``.

The lock is held by the main process from the start of a program until it exits (the kernel
drops it when the process dies, so a crashed run never leaves a stale lock); the file keeps
the PID of the holder for the error message of a second run.  Other processes of a
multi-process run never take it.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import os
from pathlib import Path

LOCK_NAME = ".lock"

_held: dict[Path, int] = {}  # resolved output folder -> fd of its lock file, in this process


class OutputDirError(ValueError):
    """--output_dir is unusable: a file, not writable, or in use by another run."""


def prepare_output_dir(output_dir: str | os.PathLike) -> Path:
    """Create the folder, or explain in one line why it cannot be written."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"--output_dir {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputDirError(f"--output_dir {path} cannot be created ({err.strerror or err})") from None
    if not os.access(path, os.W_OK):
        raise OutputDirError(f"--output_dir {path} is not writable")
    return path


def lock_output_dir(output_dir: str | os.PathLike) -> Path:
    """Take the run's exclusive lock on ``output_dir`` (created if needed); a no-op if this process holds it."""
    path = prepare_output_dir(output_dir)
    key = path.resolve()
    if key in _held:
        return path
    lock_file = path / LOCK_NAME
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise OutputDirError(f"--output_dir {path} is not writable ({err.strerror or err})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise OutputDirError(f"--output_dir {path} cannot be locked ({err.strerror or err})") from None
        raise OutputDirError(
            f"--output_dir {path} is in use by another run (PID {holder}, lock {lock_file}): wait for it to end "
            "or choose another --output_dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    _held[key] = fd
    return path


def release_output_dir(output_dir: str | os.PathLike) -> None:
    """Drop the lock (also done at exit)."""
    fd = _held.pop(Path(output_dir).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


@atexit.register
def _release_all() -> None:
    for key in list(_held):
        release_output_dir(key)
