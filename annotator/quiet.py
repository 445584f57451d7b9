"""Keep the console for the tool's own lines and real problems.

Native libraries write some harmless notices straight to the process's stderr (file
descriptor 2), past Python's warnings and logging: Ray's core worker logs an error line for
every Ray Data actor pool, whose constructor arguments Ray Data itself puts in the object store
(ray-project/ray#53727), although nothing of ours is lost when such an actor restarts.
`native_stderr_filtered` drops exactly those lines and passes everything else through.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

HARMLESS = (
    re.compile(rb"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in "
               rb"the object store and max_restarts > 0"),
)
"""Lines (bytes) a native library writes to fd 2 that say nothing a user can act on."""


@contextmanager
def native_stderr_filtered(patterns=HARMLESS) -> Iterator[None]:
    """While the block runs, fd 2 goes through a pipe that drops the lines matching
    `patterns` and copies every other line to the real stderr. Python's own `sys.stderr`
    (the progress display, messages) keeps writing to the real stderr directly, so a terminal
    stays a terminal and nothing of ours waits in the pipe."""
    sys.stderr.flush()
    real = os.dup(2)
    python_stderr = sys.stderr
    if _fileno(python_stderr) == 2:  # else it writes elsewhere already (a test's capture)
        sys.stderr = os.fdopen(os.dup(real), "w", buffering=1,
                               encoding=python_stderr.encoding, errors=python_stderr.errors)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as source:
            while chunk := source.read(65536):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    if not any(p.search(line) for p in patterns):
                        os.write(real, line + b"\n")
            if pending and not any(p.search(pending) for p in patterns):
                os.write(real, pending)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        if sys.stderr is not python_stderr:
            sys.stderr.close()
            sys.stderr = python_stderr
        os.dup2(real, 2)  # closes the pipe's last write end: the pump drains and ends
        thread.join(timeout=5)
        os.close(real)


def _fileno(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None
