"""Content hashes of files, computed once: a file whose path, size, inode and mtime are
unchanged is not read again (the same test make and rsync use).

Model revisions, encoder ids and media hashes are all content hashes, so swapped weights of
the same shapes, or a re-encoded clip, never hit a stale cache; the persistent table
(`~/.cache/vaemo/file_hashes.sqlite`) makes that cost a `stat` per file on re-runs.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from pathlib import Path

_lock = threading.Lock()
_db: sqlite3.Connection | None = None


def _table() -> sqlite3.Connection | None:
    global _db
    if _db is None:
        import platformdirs

        folder = Path(os.environ.get("VAEMO_CACHE_DIR") or platformdirs.user_cache_dir("vaemo"))
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _db = sqlite3.connect(folder / "file_hashes.sqlite", timeout=30,
                                  check_same_thread=False, isolation_level=None)
            _db.execute("PRAGMA journal_mode=WAL")
            _db.execute("CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, size INT, "
                        "inode INT, mtime_ns INT, sha256 TEXT)")
        except (OSError, sqlite3.Error):  # a read-only home: hash every time, still correct
            _db = None
    return _db


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, from the cache when the file is unchanged since."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_ino, st.st_mtime_ns)
    with _lock:
        db = _table()
        if db is not None:
            try:
                found = db.execute("SELECT sha256 FROM hashes WHERE path=? AND size=? AND "
                                   "inode=? AND mtime_ns=?", key).fetchone()
            except sqlite3.Error:
                found = None
            if found:
                return found[0]
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    with _lock:
        if db is not None:
            try:
                db.execute("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?)",
                           (*key, digest))
            except sqlite3.Error:
                pass
    return digest


def folder_sha256(folder: str | Path) -> str:
    """sha256 over a folder's regular files (names and contents, recursively), so any change
    to weights, config or tokenizer changes it."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(f"{f.relative_to(folder).as_posix()}\0{file_sha256(f)}\0".encode())
    return digest.hexdigest()
