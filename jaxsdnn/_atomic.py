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
import stat
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

    Text modes write UTF-8 with ``\\n`` line endings on every platform. A symlink is written
    through (its target is replaced, the link stays); a directory, device, FIFO or socket at
    ``path`` is refused (``OSError`` naming ``path``), never replaced by a regular file.

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
    given = os.fspath(path)
    path = _destination(given)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, f"no such directory {directory!r} to write into", given)
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
        try:
            _destination(given)  # still a regular file (or nothing) at the moment of the rename
            os.replace(tmp, path)
        except OSError as e:  # name the user's path, never the temporary file
            if e.errno is None or e.filename == given:
                raise
            raise type(e)(e.errno, e.strerror, given) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(os.path.dirname(os.path.abspath(path)))


def _destination(path: str) -> str:
    """Where the new content goes: ``path``, or the target of a symlink (written through, the link
    stays). Refuses a directory, device, FIFO or socket, which a rename would replace."""
    target = os.path.realpath(path) if os.path.islink(path) else path
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            raise FileNotFoundError(errno.ENOENT, f"symlink to a missing {os.readlink(path)!r}", path) from None
        return target
    if not stat.S_ISREG(mode):
        what = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise IsADirectoryError(errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL,
                                f"is {what}; refusing to replace it", path)
    return target
