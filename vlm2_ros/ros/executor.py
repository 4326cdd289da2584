"""vlm2_node's executor: rclpy's multi-threaded executor without its resubmission busy loop.

rclpy's executor yields, on every pass, each callback task that has not started yet, and
MultiThreadedExecutor (ros-rclpy 9.1.2, the wheels `make` installs) submits such a task to its
thread pool again without waiting: a task still queued for a pool thread comes back at once, over
and over (fixed upstream by ros2/rclpy#1547, not yet in these wheels). With four 30 Hz cameras the
node's spin thread went round about 6,500 times a second, 96% of them resubmissions, and held the
GIL that the ingest worker needs for every torch op: the CI soak saw ingest fall to 0.4 Hz and an
idle node take a minute to drain three frames.

Here a task that is queued and not yet taken by a pool thread is not submitted again: the spin
thread waits (GIL released) until a pool thread takes it. A task that ran and is pending again (a
coroutine awaiting a future) is submitted again, as rclpy intends.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from rclpy.executors import (ConditionReachedException, Executor, ExternalShutdownException, ShutdownException,
                             TimeoutException)
from rclpy.task import Future, Task

QUEUED_WAIT_S = 0.1   # longest the spin thread waits for a pool thread to take a queued task


class PoolExecutor(Executor):
    """Runs ready callbacks on `num_threads` pool threads, each queued callback submitted once."""

    def __init__(self, num_threads: int, *, context=None):
        super().__init__(context=context)
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        self._pool = ThreadPoolExecutor(num_threads, thread_name_prefix="vlm2-callback")
        self._lock = threading.Lock()
        self._queued: dict[Task, threading.Event] = {}   # submitted, not yet taken by a pool thread
        self._submitted: list[Task] = []                  # not yet seen done: their errors surface here

    def _spin_once_impl(self, timeout_sec: float | None = None,
                        wait_condition: Callable[[], bool] = lambda: False) -> None:
        try:
            task, _, _ = self.wait_for_ready_callbacks(timeout_sec, None, wait_condition)
        except (ExternalShutdownException, ShutdownException, TimeoutException, ConditionReachedException):
            return
        with self._lock:
            queued = self._queued.get(task)
            if queued is None:
                self._queued[task] = taken = threading.Event()
                self._pool.submit(self._run, task, taken)
                self._submitted.append(task)
        if queued is not None:      # yielded again before a pool thread took it: let one take it
            queued.wait(QUEUED_WAIT_S)
            return
        running = []
        for submitted in self._submitted:
            if submitted.done():
                submitted.result()   # a callback's exception stops spin(), as in rclpy's executors
            else:
                running.append(submitted)
        self._submitted = running

    def _run(self, task: Task, taken: threading.Event) -> None:
        with self._lock:
            del self._queued[task]
        taken.set()
        task()

    def spin_once(self, timeout_sec: float | None = None) -> None:
        self._spin_once_impl(timeout_sec)

    def _spin_once_until_future_complete(self, future: Future[Any], timeout_sec: float | None = None) -> None:
        self._spin_once_impl(timeout_sec, future.done)

    def spin_once_until_future_complete(self, future: Future[Any], timeout_sec: float | None = None) -> None:
        future.add_done_callback(lambda _: self.wake())
        self._spin_once_until_future_complete(future, timeout_sec)

    def shutdown(self, timeout_sec: float | None = None, *, wait_for_threads: bool = True) -> bool:
        """Stop taking callbacks, wait up to `timeout_sec` for running ones, then stop the pool."""
        success = super().shutdown(timeout_sec)
        self._pool.shutdown(wait=wait_for_threads)
        return success
