"""NodeClient on its own, without a vlm2_node: a client in a ROS graph whose executor raises
(rclpy's wait sets can race another thread destroying entities) must keep spinning, or every
status wait and call after that would time out with no hint of why."""
import os
import time

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy is installed by `make` (ROS 2 wheels)")
from vlm2_ros.msg import MemoryStatus  # noqa: E402
from vlm2_ros.ros.node_client import NodeClient  # noqa: E402

pytestmark = pytest.mark.ros
DOMAIN = 30 + os.getpid() % 60


def test_a_client_keeps_spinning_after_its_executor_raises_and_says_what_it_survived():
    rclpy.init(domain_id=DOMAIN)
    client = NodeClient(name="spin_test_client")
    publisher_node = rclpy.create_node("spin_test_status")
    try:
        publisher = publisher_node.create_publisher(MemoryStatus, "/vlm2_node/memory_status", 10)
        assert client.status_age_s() is None
        spin_once, raised = client._executor.spin_once, []

        def spin_once_raising_once(timeout_sec=None):
            if not raised:
                raised.append(True)
                raise RuntimeError("cannot use Destroyable because destruction was requested")
            return spin_once(timeout_sec=timeout_sec)

        client._executor.spin_once = spin_once_raising_once
        deadline = time.monotonic() + 20
        while client.latest_status() is None and time.monotonic() < deadline:
            publisher.publish(MemoryStatus(frames_received=7))
            time.sleep(0.1)
        assert raised, "the test's error was never raised"
        assert client.wait_for_status(lambda s: s.frames_received == 7, timeout_s=5).frames_received == 7
        assert client.spin_errors == ["RuntimeError('cannot use Destroyable because destruction was requested')"]
        assert 0 <= client.status_age_s() < 5
    finally:
        publisher_node.destroy_node()
        client.close()
        rclpy.try_shutdown()
