"""vlm2_node's QueryPool without a ROS graph: queries run on its threads, a query beyond
max_concurrent + max_waiting is answered BUSY, and the count of queries in flight (MemoryStatus's
queries_in_flight) rises and falls with them."""
import threading
import time
from types import SimpleNamespace

import pytest

from vlm2_ros.ros.queries import QueryFailure, QueryPool


class BlockedEngine:
    """Answers each query once released; the pool asks its status for the memory's newest stamp."""

    def __init__(self):
        self.release = threading.Event()
        self.started = 0
        self._lock = threading.Lock()

    def status(self):
        return SimpleNamespace(last_stamp_ns=7)

    def query(self, text, should_stop, on_stage):
        with self._lock:
            self.started += 1
        while not self.release.wait(0.01):
            if should_stop():
                raise RuntimeError("stopped")
        return f"answer to {text}"


def wait_until(condition, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_queries_in_flight_count_running_and_waiting_and_the_next_is_busy():
    engine = BlockedEngine()
    pool = QueryPool(engine, max_concurrent=1, max_waiting=2)
    try:
        assert pool.capacity == 3 and pool.in_flight == 0
        pending = [pool.submit(f"q{i}") for i in range(3)]
        wait_until(lambda: engine.started == 1)          # one runs, two wait
        assert pool.in_flight == 3
        with pytest.raises(QueryFailure) as busy:
            pool.submit("one too many")
        assert busy.value.code == "BUSY" and pool.in_flight == 3
        engine.release.set()
        assert [p.future.result(timeout=5) for p in pending] == [(f"answer to q{i}", 7) for i in range(3)]
        wait_until(lambda: pool.in_flight == 0)          # done callbacks run right after the result
        assert pool.submit("again").future.result(timeout=5) == ("answer to again", 7)
    finally:
        engine.release.set()
        pool.shutdown()
    assert pool.in_flight == 0
