"""Publish mode of `vlm2 replay`: play a rosbag2 onto ROS topics with /clock, like
`ros2 bag play --clock` (which is not installable from PyPI), for a running vlm2_node with
use_sim_time. Messages go out as the serialized bytes stored in the bag (no re-encoding)."""
from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

import rclpy
from rclpy.duration import Duration
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock

from ..bag_stream import BagError, open_bag
from .image_conversion import ns_to_stamp


def parse_remaps(remaps: list[str]) -> dict[str, str]:
    table = {}
    for remap in remaps:
        source, sep, target = remap.partition(":=")
        if not sep or not source or not target:
            raise ValueError(f"remap {remap!r} must look like /from:=/to")
        table[source] = target
    return table


def message_class(msgtype: str):
    package, _, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.msg"), name)
    except (ImportError, AttributeError) as e:
        raise BagError(f"message type {msgtype} is not installed here ({e})") from e


def wait_for_subscribers(node, publishers, timeout_s: float) -> bool:
    """Give discovery time to match: wait until some topic of the bag has a subscriber (or the
    timeout passes), then a little longer so the other subscribers of that reader match too."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p.get_subscription_count() > 0 for p in publishers):
            time.sleep(0.3)
            return True
        time.sleep(0.05)
    return False


def play_bag(bag: str | Path, *, rate: float = 1.0, remaps: list[str] = (), wait_for_subscribers_s: float = 5.0,
             node_name: str = "vlm2_bag_player") -> int:
    """Publish every message of the bag on its (remapped) topic, paced by bag time / rate
    (rate 0: as fast as possible), each preceded by /clock at the message's bag time."""
    try:
        table = parse_remaps(list(remaps))
        reader = open_bag(bag)
    except (BagError, ValueError) as e:
        print(f"vlm2 replay --publish: {e}", file=sys.stderr)
        return 2
    rclpy.init()
    node = rclpy.create_node(node_name)
    try:
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)  # matches best-effort readers too
        publishers = {c.id: node.create_publisher(message_class(c.msgtype), table.get(c.topic, c.topic), qos)
                      for c in reader.connections}
        clock = node.create_publisher(Clock, "/clock", 10)
        if not wait_for_subscribers(node, publishers.values(), wait_for_subscribers_s):
            print(f"no subscriber appeared within {wait_for_subscribers_s:.0f} s; publishing anyway", file=sys.stderr)
        start_wall, start_bag, count = time.monotonic(), None, 0
        for connection, bag_ns, raw in reader.messages():
            start_bag = bag_ns if start_bag is None else start_bag
            if rate > 0:
                delay = (bag_ns - start_bag) / 1e9 / rate - (time.monotonic() - start_wall)
                if delay > 0:
                    time.sleep(delay)
            clock.publish(Clock(clock=ns_to_stamp(bag_ns)))
            publishers[connection.id].publish(bytes(raw))
            count += 1
        # A writer destroyed with samples in flight drops them: let reliable readers acknowledge.
        for publisher in publishers.values():
            publisher.wait_for_all_acked(Duration(seconds=5))
        print(f"published {count} messages from {bag} in {time.monotonic() - start_wall:.1f} s")
        return 0
    except BagError as e:
        print(f"vlm2 replay --publish: {e}", file=sys.stderr)
        return 2
    finally:
        reader.close()
        node.destroy_node()
        rclpy.try_shutdown()
