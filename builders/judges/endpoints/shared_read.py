"""An async read made once and shared by every caller that needs it at the same time.

    limits = SharedRead(read_info, retry_after_s=LIMIT_RETRY_S)
    value = await limits.get()  # the first caller starts the read; the others await the same one

``read()`` returns the value, or None when it cannot be had now (a server that did not answer):
that outcome is kept for ``retry_after_s`` seconds and then read again (never, when None). A
value is kept for good. A read that failed or did not finish on another event loop (each
``run_sync`` has its own) is started again on the current one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")

LIMIT_RETRY_S = 30.0  # a server that did not say its input limit is asked again this much later


class SharedRead(Generic[T]):
    def __init__(self, read: Callable[[], Awaitable[T | None]], retry_after_s: float | None = None):
        self._read = read
        self.retry_after_s = retry_after_s
        self._task: asyncio.Future | None = None
        self._started = 0.0

    async def get(self) -> T | None:
        task = self._task
        if task is not None and task.done() and not task.cancelled() and task.exception() is None \
                and task.result() is not None:
            return task.result()
        stale = task is not None and task.done() and self.retry_after_s is not None \
            and time.monotonic() - self._started > self.retry_after_s
        if task is None or stale or task.get_loop() is not asyncio.get_running_loop():
            self._started = time.monotonic()
            self._task = task = asyncio.ensure_future(self._read())
        return await asyncio.shield(task)
