"""Background file writes for the batch engine: encoding and writing an item's outputs on a writer thread.

Writers (:func:`~gie_cli.io.atomic.atomic_save_image`, :func:`~gie_cli.io.latents.save_latent`, ...) hand their
work to :func:`run_or_defer`. Outside :func:`collect_writes` (the default) it runs at once, as before. Inside, it is
queued on a :class:`BackgroundWriter` (a bounded queue, so memory stays flat however far compute runs ahead) and
the caller gets the futures of the writes it made, to settle the item once they are on disk.
"""

from __future__ import annotations

import contextlib
import contextvars
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

__all__ = ["BackgroundWriter", "collect_writes", "run_or_defer"]

_ACTIVE: contextvars.ContextVar[tuple[BackgroundWriter, list[Future]] | None] = contextvars.ContextVar(
    "gie_background_writes", default=None
)


class BackgroundWriter:
    """One thread running queued writes in order.

    Args:
        max_pending: writes queued at most; :meth:`submit` blocks while the queue is full.
    """

    def __init__(self, max_pending: int = 16) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, max_pending))
        self._thread = threading.Thread(target=self._loop, name="gie-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            task = self._queue.get()
            if task is None:
                return
            fut, fn, args, kwargs = task
            if not fut.set_running_or_notify_cancel():
                continue
            t0 = time.perf_counter()
            try:
                fn(*args, **kwargs)
            except BaseException as e:  # noqa: BLE001 - handed to the item that made the write
                fut.set_exception(e)
            else:
                fut.set_result((time.perf_counter() - t0) * 1000)

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """Queue ``fn(*args, **kwargs)``; the future's result is its duration in ms."""
        fut: Future = Future()
        self._queue.put((fut, fn, args, kwargs))
        return fut

    def close(self) -> None:
        """Finish the queued writes and stop the thread."""
        self._queue.put(None)
        self._thread.join()


@contextlib.contextmanager
def collect_writes(writer: BackgroundWriter | None) -> Iterator[list[Future]]:
    """Within the block, :func:`run_or_defer` queues on ``writer`` (None: runs at once); yields the futures."""
    writes: list[Future] = []
    if writer is None:
        yield writes
        return
    token = _ACTIVE.set((writer, writes))
    try:
        yield writes
    finally:
        _ACTIVE.reset(token)


def run_or_defer(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run ``fn(*args, **kwargs)`` now, or queue it on the active background writer (see :func:`collect_writes`).

    The arguments must not change after the call (they are used later on the writer thread).
    """
    active = _ACTIVE.get()
    if active is None:
        fn(*args, **kwargs)
        return
    writer, writes = active
    writes.append(writer.submit(fn, *args, **kwargs))
