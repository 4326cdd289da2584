"""Read camera streams from rosbag2 files (sqlite3 or mcap) without ROS, via `rosbags`.

Works on the project's synthetic episode bags and on bags recorded on a robot: each image
(sensor_msgs/Image or CompressedImage) is paired with the latest CameraInfo and the latest pose
(geometry_msgs/PoseStamped or nav_msgs/Odometry) received at or before it. Topics are found by
message type unless named. Messages are converted by the same duck-typed functions the node uses.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from rosbags.highlevel import AnyReader

from .camera import CameraIntrinsics
from .ros.image_conversion import (ConversionError, camera_info_to_intrinsics, compressed_to_rgb, image_to_rgb,
                                   pose_to_matrix, stamp_to_ns)

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
POSE_TYPES = ("geometry_msgs/msg/PoseStamped", "nav_msgs/msg/Odometry")


class BagError(RuntimeError):
    """A bag cannot be read or lacks what was asked for."""


@dataclass(frozen=True)
class BagFrame:
    image: np.ndarray                     # uint8 [H,W,3] RGB
    stamp_ns: int                         # header stamp
    frame_id: str
    camera_info: CameraIntrinsics | None  # latest at or before the image
    pose: np.ndarray | None               # latest camera-to-world at or before the image


@dataclass(frozen=True)
class BagTopics:
    image: str
    camera_info: str | None
    pose: str | None


def _pick(connections, types: tuple[str, ...], name: str | None, what: str) -> str | None:
    by_topic = {c.topic: c.msgtype for c in connections}
    if name is not None:
        if name not in by_topic:
            raise BagError(f"topic {name!r} ({what}) is not in the bag; it has {sorted(by_topic)}")
        if by_topic[name] not in types:
            raise BagError(f"topic {name!r} has type {by_topic[name]}, expected one of {types}")
        return name
    # Depth images are sensor_msgs/Image too; only a named topic picks them.
    candidates = sorted(t for t, ty in by_topic.items() if ty in types and "depth" not in t.lower())
    # Prefer raw images over compressed ones when both exist (no decode cost, no JPEG loss).
    candidates.sort(key=lambda t: types.index(by_topic[t]))
    return candidates[0] if candidates else None


def open_bag(path: str | Path) -> AnyReader:
    path = Path(path)
    if not path.exists():
        raise BagError(f"bag {path} does not exist")
    try:
        reader = AnyReader([path])
        reader.open()
    except Exception as e:  # rosbags raises several unrelated types for unreadable bags
        raise BagError(f"cannot read bag {path}: {e}") from e
    return reader


def resolve_topics(reader: AnyReader, image_topic: str | None = None, camera_info_topic: str | None = None,
                   pose_topic: str | None = None) -> BagTopics:
    image = _pick(reader.connections, IMAGE_TYPES, image_topic, "images")
    if image is None:
        raise BagError(f"the bag has no image topic (types {IMAGE_TYPES})")
    return BagTopics(image, _pick(reader.connections, (CAMERA_INFO_TYPE,), camera_info_topic, "camera info"),
                     _pick(reader.connections, POSE_TYPES, pose_topic, "pose"))


def count_images(reader: AnyReader, topics: BagTopics) -> int:
    return sum(c.msgcount for c in reader.connections if c.topic == topics.image)


def iter_frames(reader: AnyReader, topics: BagTopics, errors: list[str] | None = None) -> Iterator[BagFrame]:
    """Frames in bag order. Images that fail to convert are skipped and described in `errors`."""
    wanted = [c for c in reader.connections if c.topic in (topics.image, topics.camera_info, topics.pose)]
    camera_info: CameraIntrinsics | None = None
    pose: np.ndarray | None = None
    for connection, _, raw in reader.messages(connections=wanted):
        msg = reader.deserialize(raw, connection.msgtype)
        try:
            if connection.topic == topics.camera_info:
                camera_info = camera_info_to_intrinsics(msg)
            elif connection.topic == topics.pose:
                pose = pose_to_matrix(msg)
            else:
                convert = compressed_to_rgb if connection.msgtype.endswith("CompressedImage") else image_to_rgb
                yield BagFrame(convert(msg), stamp_to_ns(msg.header.stamp), msg.header.frame_id,
                               camera_info if _matches(camera_info, msg) else None, pose)
        except ConversionError as e:
            if errors is not None:
                errors.append(f"{connection.topic} @ {stamp_to_ns(msg.header.stamp)} ns: {e}")


def read_frames(path: str | Path, image_topic: str | None = None, camera_info_topic: str | None = None,
                pose_topic: str | None = None) -> list[BagFrame]:
    """Every frame of a bag at once (tests, notebooks); raises BagError for a bad image too."""
    errors: list[str] = []
    reader = open_bag(path)
    try:
        frames = list(iter_frames(reader, resolve_topics(reader, image_topic, camera_info_topic, pose_topic), errors))
    finally:
        reader.close()
    if errors:
        raise BagError(f"{len(errors)} image(s) of {path} could not be converted; first: {errors[0]}")
    return frames


def _matches(camera_info: CameraIntrinsics | None, image_msg) -> bool:
    """Camera info applies only to images of its size (compressed images carry no size)."""
    if camera_info is None:
        return False
    width, height = getattr(image_msg, "width", None), getattr(image_msg, "height", None)
    return width is None or (camera_info.width, camera_info.height) == (width, height)
