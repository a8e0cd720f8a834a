"""Every file amsim writes is written atomically: a temporary file beside it, flushed and fsync'ed, then renamed
over the target. A failed write (full disk, no permission, an exception while producing the contents) leaves
the previous file exactly as it was and raises one error that names the file and the cause."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from ._errors import AmsimError

__all__ = ["atomic_write", "atomic_writer", "WriteError"]


class WriteError(AmsimError, OSError):
    """A file could not be written; the previous version (if any) is unchanged."""


@contextlib.contextmanager
def atomic_writer(path, mode: str = "wb", **open_kwargs):
    """Context manager yielding a file object whose contents replace ``path`` only if the block succeeds.

    Arguments:
        path: the target file; its directory must exist.
        mode: "wb" or "w" (text; ``open_kwargs`` such as ``newline=""`` or ``encoding`` are passed on).

    Raises:
        WriteError: the file could not be written (the old file is intact).
    """
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"cannot write {path}: it is a directory.")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {exc.strerror or exc}.") from None
    try:
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise WriteError(f"could not write {path}: {exc.strerror or exc}; the previous file, if any, is "
                             "unchanged.") from None
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def atomic_write(path, data) -> Path:
    """Write ``data`` (bytes or str) to ``path`` atomically; returns the path."""
    with atomic_writer(path, "wb" if isinstance(data, (bytes, bytearray, memoryview)) else "w",
                       **({} if isinstance(data, (bytes, bytearray, memoryview)) else {"encoding": "utf-8"})) as fh:
        fh.write(data)
    return Path(path)
