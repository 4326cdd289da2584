"""vlm2_node's PoolExecutor: a callback waiting for a pool thread is submitted once and the spin
thread sleeps meanwhile (rclpy 9.1.2's MultiThreadedExecutor spins, resubmitting it); callbacks
still run, coroutine callbacks still resume, and a callback's exception still reaches spin."""
import os
import threading
import time

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy is installed by `make` (ROS 2 wheels)")
from rclpy.callback_groups import ReentrantCallbackGroup  # noqa: E402
from rclpy.task import Future  # noqa: E402

from vlm2_ros.ros.executor import PoolExecutor  # noqa: E402

pytestmark = pytest.mark.ros


@pytest.fixture
def context_and_node():
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=1 + (os.getpid() + 37) % 100)
    node = rclpy.create_node(f"executor_test_{os.getpid()}", context=context)
    try:
        yield context, node
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def spin_for(executor: PoolExecutor, seconds: float, wake_hz: float = 0.0) -> tuple[int, float]:
    """spin_once calls made in `seconds` and the CPU seconds this (the spin) thread used, with the
    executor woken `wake_hz` times a second meanwhile (as finishing callbacks and new messages do)."""
    stop = threading.Event()

    def wake():
        while not stop.wait(1.0 / wake_hz):
            executor.wake()

    waker = threading.Thread(target=wake, daemon=True)
    if wake_hz:
        waker.start()
    calls, cpu0, end = 0, time.thread_time(), time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
            calls += 1
    finally:
        stop.set()
    return calls, time.thread_time() - cpu0


def test_a_queued_callback_is_submitted_once_and_the_spin_thread_sleeps(context_and_node):
    context, node = context_and_node
    group, release = ReentrantCallbackGroup(), threading.Event()
    runs = {"blocker": 0, "queued": 0}

    def blocker():          # holds the only pool thread until released
        if runs["blocker"] == 0:
            runs["blocker"] += 1
            release.wait(10)

    def queued():
        runs["queued"] += 1

    blocker_timer = node.create_timer(0.01, blocker, callback_group=group)
    executor = PoolExecutor(num_threads=1, context=context)
    executor.add_node(node)
    try:
        spin_for(executor, 0.2)                 # the blocker now holds the pool thread
        assert runs["blocker"] == 1
        blocker_timer.cancel()
        node.create_timer(0.01, queued, callback_group=group)
        # the queued timer callback waits for the pool thread; rclpy's MultiThreadedExecutor
        # resubmits it on every wake-up (about 1,000 spins here, most of a core)
        calls, cpu_s = spin_for(executor, 1.0, wake_hz=1000)
        assert runs["queued"] == 0
        assert calls < 60, f"{calls} spins in 1 s with a callback queued"
        assert cpu_s < 0.1, f"the spin thread used {cpu_s:.2f} CPU s in 1 s with a callback queued"
        release.set()
        spin_for(executor, 0.3)
        assert runs["queued"] >= 1              # the queued callback runs once the thread is free
    finally:
        release.set()
        executor.shutdown(timeout_sec=1.0)


def test_a_coroutine_callback_resumes_when_its_future_completes(context_and_node):
    context, node = context_and_node
    awaited, results = Future(), []

    async def waiter():
        results.append(await awaited)

    timer = node.create_timer(0.01, waiter, callback_group=ReentrantCallbackGroup())
    executor = PoolExecutor(num_threads=2, context=context)
    executor.add_node(node)
    try:
        spin_for(executor, 0.1)
        timer.cancel()
        assert results == []
        threading.Timer(0.1, awaited.set_result, args=("done",)).start()
        spin_for(executor, 0.5)
        assert results and set(results) == {"done"}
    finally:
        executor.shutdown(timeout_sec=1.0)


def test_a_callback_exception_reaches_spin(context_and_node):
    context, node = context_and_node

    def broken():
        raise RuntimeError("callback failed")

    node.create_timer(0.01, broken)
    executor = PoolExecutor(num_threads=2, context=context)
    executor.add_node(node)
    try:
        with pytest.raises(RuntimeError, match="callback failed"):
            spin_for(executor, 1.0)
    finally:
        executor.shutdown(timeout_sec=1.0)


def test_at_least_one_thread(context_and_node):
    context, _ = context_and_node
    with pytest.raises(ValueError, match="num_threads"):
        PoolExecutor(num_threads=0, context=context)
