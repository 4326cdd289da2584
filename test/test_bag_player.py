"""Publish mode of `vlm2 replay`: bag messages and /clock arrive on ROS topics in another process."""
import os
import subprocess
import sys
import threading
import time

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy is installed by `make` (ROS 2 wheels)")
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from test_replay import write_bag  # noqa: E402
from vlm2_ros.ros.bag_player import parse_remaps  # noqa: E402

DOMAIN = str(100 + os.getpid() % 100)


def test_remap_parsing():
    assert parse_remaps(["/a:=/b"]) == {"/a": "/b"}
    with pytest.raises(ValueError, match="/from:=/to"):
        parse_remaps(["/a=/b"])


def test_publish_mode_plays_images_and_clock(tmp_path):
    stamps = write_bag(tmp_path / "bag", "sqlite3", frames=6)
    env = {**os.environ, "ROS_DOMAIN_ID": DOMAIN}
    os.environ["ROS_DOMAIN_ID"] = DOMAIN
    rclpy.init()
    node = rclpy.create_node("bag_player_test")
    images, clocks = [], []
    node.create_subscription(Image, "/front/image_raw", images.append, 50)
    node.create_subscription(Clock, "/clock", clocks.append, 50)
    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(node)
    done = threading.Event()
    spinner = threading.Thread(target=lambda: [executor.spin_once(timeout_sec=0.05) for _ in iter(done.is_set, True)])
    spinner.start()
    try:
        player = subprocess.run([sys.executable, "-m", "vlm2_ros.cli", "replay", str(tmp_path / "bag"), "--publish",
                                 "--rate", "0", "--remap", "/camera/image:=/front/image_raw"],
                                env=env, capture_output=True, text=True, timeout=60)
        assert player.returncode == 0, player.stderr
        deadline = time.monotonic() + 10
        while len(images) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        done.set()
        spinner.join()
        node.destroy_node()
        rclpy.try_shutdown()
    assert [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in images] == stamps
    assert images[0].width == 64 and images[0].encoding == "rgb8"
    assert clocks and clocks[-1].clock.sec * 10**9 + clocks[-1].clock.nanosec == stamps[-1]
