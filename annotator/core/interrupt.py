"""SIGINT and SIGTERM for a command that writes: the first stops it at the next safe point,
the second ends the process at once.

The handler only notes the first signal; it never raises. An exception raised from a signal
handler lands wherever the main thread happens to be, inside logging's module lock or a
finaliser too, where Python prints "Exception ignored" and goes on (the run ignored the
interrupt) or leaves the lock held (every thread that logs then hangs). So the main thread
asks instead, with `check()`, at the points where stopping loses nothing: between the clips it
plans, between the batches it commits, and every fraction of a second while it waits for the
next batch (`polled`). `check()` raises `Interrupted` (a BaseException, like
KeyboardInterrupt: no `except Exception` swallows it); the command shuts down what it started
and says in one line what it kept; its exit code is 128 + the signal (130 for SIGINT, 143 for
SIGTERM, what shells and schedulers expect). Ray replaces the SIGTERM handler when it starts;
`reclaim()` puts ours back.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)
POLL_S = 0.2
"""How often a wait for the next batch looks for a signal."""


_readers: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
"""The helper threads of `polled` streams, until they end."""


class Interrupted(BaseException):
    """A SIGINT or SIGTERM reached a writing command."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.summary = f"interrupted by {signal.Signals(signum).name}"
        """The one line to print; the command that caught it says what it kept."""

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    active = False
    hit: int | None = None  # the first signal's number


def _note(signum: int, frame) -> None:
    if _State.hit is not None:  # the second: at once, whatever is running (the lock is a
        os._exit(128 + signum)  # flock, released by the kernel; commits are renames)
    _State.hit = signum


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def interruptible():
    """Note SIGINT and SIGTERM as above for the body (main thread only; elsewhere, as in a
    Ray task, the body runs with the handlers it had and `check()` never raises)."""
    if not _on_main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _State.active, _State.hit = True, None
    reclaim()
    try:
        yield
    finally:
        _State.active, _State.hit = False, None
        for s, handler in previous.items():
            signal.signal(s, handler)


def reclaim() -> None:
    """Put the handlers back after a library replaced them (ray.init sets a SIGTERM handler
    that exits mid-call and ends in an abort with a native stack dump)."""
    if _State.active and _on_main_thread():
        for s in SIGNALS:
            signal.signal(s, _note)


def check() -> None:
    """Raise Interrupted if a signal came; call it where stopping loses nothing."""
    if _State.hit is not None and _on_main_thread():
        raise Interrupted(_State.hit)


def polled(items: Iterator) -> Iterator:
    """`items`, consumed on a helper thread, so that waiting for the next one looks for a
    signal every POLL_S (a blocked iterator, like Ray Data's, never looks); its exceptions are
    raised here. When the consumer leaves early (an exception, Interrupted), the helper stops
    at the next item and closes `items`, so Ray Data shuts its executor and actors down as it
    would had the consumer closed it."""
    if not _State.active:
        yield from items
        return
    box: queue.Queue = queue.Queue(maxsize=1)
    done, left = object(), threading.Event()

    def hand(entry) -> bool:  # False once the consumer has left
        while not left.is_set():
            try:
                box.put(entry, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            for item in items:
                if not hand((item, None)):
                    break
            else:
                hand((done, None))
        except BaseException as err:  # noqa: BLE001 (handed to the consumer, raised there)
            hand((done, err))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    reader = threading.Thread(target=pump, name="polled", daemon=True)
    _readers.add(reader)
    reader.start()
    try:
        while True:
            try:
                item, err = box.get(timeout=POLL_S)
            except queue.Empty:
                check()
                continue
            if item is done:
                if err is not None:
                    raise err
                return
            yield item
            check()
    finally:
        left.set()


def settle(timeout: float) -> None:
    """Wait up to `timeout` s for the helper threads of the streams that consumers left to
    close them."""
    deadline = time.monotonic() + timeout
    for reader in list(_readers):
        reader.join(max(0.0, deadline - time.monotonic()))
