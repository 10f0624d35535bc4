"""Atomic file writes: readers see the old file or the complete new one, never a partial file.

The new content goes to a temporary file in the destination's directory (same file system, so the
final ``os.replace`` is an atomic rename), is flushed and fsync'ed, then replaces the destination.
On any exception the temporary file is removed and the destination is left untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from typing import IO

__all__ = ["atomic_write"]

_MODES = ("w", "wt", "wb")


def _create_temp(path: str) -> tuple[int, str]:
    directory, name = os.path.split(path)
    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            # 0o666 minus the umask: the final file gets the same mode a plain open() would give.
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path}: could not create a unique temporary file next to it")


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Opens ``path`` for writing so that it is replaced atomically when the block exits cleanly.

    Text modes write UTF-8 with ``\\n`` line endings on every platform.

    Args:
        path: the destination file; its directory must exist.
        mode: ``"w"``/``"wt"`` (text) or ``"wb"`` (binary).

    Yields:
        The open temporary file.

    Raises:
        ValueError: for any other ``mode``.

    Example:
        >>> with atomic_write("out.tsv") as f:  # doctest: +SKIP
        ...     f.write("1\\t1\\t6.250000e-02\\n")
    """
    if mode not in _MODES:
        raise ValueError(f"atomic_write: mode {mode!r} is not one of {_MODES}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, f"no such directory {directory!r} to write into", path)
    fd, tmp = _create_temp(path)
    try:
        if "b" in mode:
            f = os.fdopen(fd, "wb")
        else:
            f = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(os.path.dirname(os.path.abspath(path)))
