"""Bounded concurrency with a bounded queue: at most ``workers`` scans scored at once, at most
``waiting`` more admitted to wait for a worker, every other one refused at once.

A scan is admitted (:meth:`ScoringQueue.submit`) or refused with :class:`~ldm_ood.errors.QueueFullError`
(HTTP 429) when ``workers + waiting`` scans are already admitted, or :class:`~ldm_ood.errors.ServiceClosedError`
(503) once :meth:`ScoringQueue.close` was called. Closing refuses new scans only: the admitted ones
(running or waiting) still run, so a shutdown drains the queue. An admitted scan leaves the queue when
its job returns or raises, or when it is cancelled before it started (its slot is given back either way).
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, TypeVar

from ..errors import QueueFullError, ServiceClosedError

T = TypeVar("T")


@dataclass(frozen=True)
class QueueState:
    """A snapshot: scans ``running`` and ``waiting``, the limits, whether the queue is ``closing``."""

    running: int
    waiting: int
    workers: int
    max_waiting: int
    closing: bool


class ScoringQueue:
    """``workers`` threads scoring, at most ``waiting`` admitted scans waiting for one (module docstring)."""

    def __init__(self, workers: int = 1, waiting: int = 4):
        if workers < 1 or waiting < 0:
            raise ValueError(f"workers must be >= 1 and waiting >= 0, got {workers} and {waiting}")
        self.workers, self.max_waiting = workers, waiting
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ldm-ood-score")
        self._lock = threading.Lock()
        self._admitted = 0
        self._running = 0
        # set without the lock: close() runs in a signal handler, which may interrupt a holder of the lock
        self.closing = False

    def state(self) -> QueueState:
        with self._lock:
            return QueueState(self._running, self._admitted - self._running, self.workers, self.max_waiting,
                              self.closing)

    def submit(self, job: Callable[[], T]) -> Future[T]:
        """Admit ``job`` (run on a worker thread when one is free), or raise ``QueueFullError`` /
        ``ServiceClosedError``. The future's result is ``(job's result, seconds it waited)``."""
        with self._lock:
            if self.closing:
                raise ServiceClosedError("the service is shutting down and takes no new scans; send it again "
                                         "once the service is back")
            if self._admitted >= self.workers + self.max_waiting:
                raise QueueFullError(f"the queue is full: {self._running} scan(s) being scored and "
                                     f"{self._admitted - self._running} waiting, the most this service takes "
                                     f"({self.workers} at once, {self.max_waiting} waiting); send it again later")
            self._admitted += 1
        admitted_at = time.perf_counter()

        def run() -> tuple[T, float]:
            waited = time.perf_counter() - admitted_at
            with self._lock:
                self._running += 1
            try:
                return job(), waited
            finally:
                with self._lock:
                    self._running -= 1

        try:
            future = self._executor.submit(run)
        except RuntimeError:  # the executor was shut down in between
            self._release(None)
            raise ServiceClosedError("the service is shutting down and takes no new scans") from None
        future.add_done_callback(self._release)  # done, failed, or cancelled before it started
        return future

    async def run(self, job: Callable[[], T]) -> tuple[T, float]:
        """:meth:`submit`, awaited: ``(job's result, seconds it waited for a worker)``; its exception if it raised."""
        return await asyncio.wrap_future(self.submit(job))

    def _release(self, _future: Future | None) -> None:
        with self._lock:
            self._admitted -= 1

    def close(self) -> None:
        """Refuse new scans from now on; the admitted ones still run."""
        self.closing = True

    def shutdown(self, wait: bool = True) -> None:
        """Close, then stop the workers once the admitted scans are done (``wait``: block until then)."""
        self.close()
        self._executor.shutdown(wait=wait)
