"""Atomic writes: a file or folder appears whole under its final name, or not at all.

Everything is written to a hidden temporary name beside the target (same filesystem, so the
final `os.replace` is atomic) and moved into place only when complete; a crash or an error
leaves at most a `.NAME.*.tmp` behind, never a half-written target.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(target: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Yields a temporary path beside `target`; when the block ends without an error, the
    temporary file or folder replaces `target` (an existing folder is removed just before:
    the one moment a reader finds neither). On an error it is removed and `target` is left
    as it was."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        if fsync and tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        if tmp.is_dir() and target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


@contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (made if missing) for the block, waiting
    for any other process that holds it: one process makes what all of them need."""
    import fcntl

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # the OS releases the lock (on kill -9 too)


def write_text(path: str | Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, payload: dict) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet(table, path: str | Path) -> None:
    """A Parquet file (zstd), synced to disk before it takes the final name."""
    import pyarrow.parquet as pq

    with replacing(path, fsync=True) as tmp:
        pq.write_table(table, tmp, compression="zstd")
