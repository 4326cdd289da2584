"""Bounded ingest queue between the image callbacks and the ingest worker (no ROS imports).

Under overload the *latest* frames win: putting into a full queue displaces the oldest waiting
frame, which is counted as dropped. Frames leave in arrival order, because the engine's stream is
sequential in time (a newer frame ingested before an older one would make the older one a time
jump backwards). The queue never grows beyond its capacity, so a slow model costs dropped frames,
never unbounded memory or latency.
"""
from __future__ import annotations

import collections
import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class IngestQueue(Generic[T]):
    """Thread-safe bounded FIFO that displaces its oldest item when full."""

    def __init__(self, capacity: int):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an integer >= 1, got {capacity!r}")
        self.capacity = capacity
        self._items: collections.deque[T] = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self._closed = False
        self._dropped = 0

    def put(self, item: T) -> T | None:
        """Enqueue `item`; returns the item it displaced (counted as dropped), else None.

        After close() the item itself is dropped and returned.
        """
        with self._ready:
            if self._closed:
                self._dropped += 1
                return item
            displaced = None
            if len(self._items) >= self.capacity:
                displaced = self._items.popleft()
                self._dropped += 1
            self._items.append(item)
            self._ready.notify()
            return displaced

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest waiting item; None when `timeout` passes first or the queue is closed and empty."""
        with self._ready:
            if not self._ready.wait_for(lambda: self._items or self._closed, timeout):
                return None
            return self._items.popleft() if self._items else None

    def clear(self) -> int:
        """Discard every waiting item (not counted as dropped); returns how many there were."""
        with self._ready:
            count = len(self._items)
            self._items.clear()
            return count

    def close(self) -> None:
        """Wake every waiting get(); later puts are dropped. Items already waiting can still be got."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    @property
    def dropped(self) -> int:
        """Items displaced by newer ones (or put after close) since construction."""
        with self._ready:
            return self._dropped

    def __len__(self) -> int:
        with self._ready:
            return len(self._items)
