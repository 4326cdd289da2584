"""Episodes as rosbag2 (sqlite3 or mcap) through the pure-Python `rosbags` package, and back.

Written topics (all stamped with the frame's stamp; bag time = stamp):
    /camera/image_raw             sensor_msgs/msg/Image            rgb8
    /camera/image_raw/compressed  sensor_msgs/msg/CompressedImage  "rgb8; jpeg compressed bgr8"
    /camera/camera_info           sensor_msgs/msg/CameraInfo       plumb_bob, zero distortion
    /camera/pose                  geometry_msgs/msg/PoseStamped    camera optical frame in "map"
    /camera/depth/image_raw       sensor_msgs/msg/Image            32FC1 metres (optional)
    /clock                        rosgraph_msgs/msg/Clock
plus `<bag>_questions.jsonl` and `<bag>_scene.json` next to the bag directory.

Reading is vlm2_ros.bag_stream's (the same code reads bags recorded on a robot).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..atomic_io import atomic_file, fsync_directory, write_json_atomic
from ..camera import CameraIntrinsics, rotation_to_quaternion

STORAGES = ("sqlite3", "mcap")
TOPIC_IMAGE = "/camera/image_raw"
TOPIC_COMPRESSED = "/camera/image_raw/compressed"
TOPIC_INFO = "/camera/camera_info"
TOPIC_POSE = "/camera/pose"
TOPIC_DEPTH = "/camera/depth/image_raw"
TOPIC_CLOCK = "/clock"
CAMERA_FRAME = "camera_optical_frame"
WORLD_FRAME = "map"


def _typestore():
    from rosbags.typesys import Stores, get_typestore
    return get_typestore(Stores.ROS2_KILTED)


def _time(ts, stamp_ns: int):
    return ts.types["builtin_interfaces/msg/Time"](sec=int(stamp_ns // 1_000_000_000),
                                                  nanosec=int(stamp_ns % 1_000_000_000))


def _header(ts, stamp_ns: int, frame_id: str):
    return ts.types["std_msgs/msg/Header"](stamp=_time(ts, stamp_ns), frame_id=frame_id)


def camera_info_msg(ts, K: CameraIntrinsics, stamp_ns: int, frame_id: str = CAMERA_FRAME):
    T = ts.types
    k = np.array([K.fx, 0, K.cx, 0, K.fy, K.cy, 0, 0, 1], np.float64)
    p = np.array([K.fx, 0, K.cx, 0, 0, K.fy, K.cy, 0, 0, 0, 1, 0], np.float64)
    return T["sensor_msgs/msg/CameraInfo"](
        header=_header(ts, stamp_ns, frame_id), height=K.height, width=K.width, distortion_model="plumb_bob",
        d=np.zeros(5), k=k, r=np.eye(3).reshape(-1), p=p, binning_x=0, binning_y=0,
        roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def write_episode_bag(episode, path: str | Path, *, storage: str = "sqlite3", questions: list[dict] | None = None,
                      compressed: bool = True, raw: bool = True, depth: bool = False, jpeg_quality: int = 90,
                      progress=None) -> Path:
    """Write `episode` (an Episode or an EpisodeDir) as a rosbag2 directory at `path` (replaced
    atomically: the bag is written under a temporary name and renamed when complete)."""
    import cv2
    from rosbags.rosbag2 import StoragePlugin, Writer

    if storage not in STORAGES:
        raise ValueError(f"unknown bag storage {storage!r}; use one of {STORAGES}")
    if not (raw or compressed):
        raise ValueError("write at least one of the raw and compressed image topics")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ts = _typestore()
    T = ts.types
    plugin = StoragePlugin.SQLITE3 if storage == "sqlite3" else StoragePlugin.MCAP
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        bag = tmpdir / path.name
        with Writer(bag, version=9, storage_plugin=plugin) as w:
            conns = {}

            def conn(topic, msgtype):
                if topic not in conns:
                    conns[topic] = w.add_connection(topic, msgtype, typestore=ts)
                return conns[topic]

            def put(topic, msg, stamp):
                w.write(conn(topic, msg.__msgtype__), stamp, ts.serialize_cdr(msg, msg.__msgtype__))

            K = episode.intrinsics
            for i in range(len(episode)):
                stamp = int(episode.stamps_ns[i])
                if hasattr(episode, "render") and depth:
                    out = episode.render(i)
                    rgb, dep = out.rgb, out.depth
                else:
                    rgb = episode.frame(i)
                    dep = episode.depth(i) if depth else None
                put(TOPIC_CLOCK, T["rosgraph_msgs/msg/Clock"](clock=_time(ts, stamp)), stamp)
                # camera info and pose before the images: a player delivers them in this order,
                # and readers (the node, bag_stream) pair an image with the latest of each
                put(TOPIC_INFO, camera_info_msg(ts, K, stamp), stamp)
                pose = np.asarray(episode.poses[i])
                q = rotation_to_quaternion(pose[:3, :3])
                put(TOPIC_POSE, T["geometry_msgs/msg/PoseStamped"](
                    header=_header(ts, stamp, WORLD_FRAME),
                    pose=T["geometry_msgs/msg/Pose"](
                        position=T["geometry_msgs/msg/Point"](x=float(pose[0, 3]), y=float(pose[1, 3]), z=float(pose[2, 3])),
                        orientation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]))), stamp)
                if raw:
                    put(TOPIC_IMAGE, T["sensor_msgs/msg/Image"](
                        header=_header(ts, stamp, CAMERA_FRAME), height=rgb.shape[0], width=rgb.shape[1],
                        encoding="rgb8", is_bigendian=0, step=rgb.shape[1] * 3,
                        data=np.ascontiguousarray(rgb).reshape(-1)), stamp)
                if compressed:
                    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                           [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
                    if not ok:
                        raise RuntimeError("JPEG encoding failed")
                    put(TOPIC_COMPRESSED, T["sensor_msgs/msg/CompressedImage"](
                        header=_header(ts, stamp, CAMERA_FRAME), format="rgb8; jpeg compressed bgr8",
                        data=np.frombuffer(jpg.tobytes(), np.uint8)), stamp)
                if dep is not None:
                    d32 = np.ascontiguousarray(dep, dtype="<f4")
                    put(TOPIC_DEPTH, T["sensor_msgs/msg/Image"](
                        header=_header(ts, stamp, CAMERA_FRAME), height=d32.shape[0], width=d32.shape[1],
                        encoding="32FC1", is_bigendian=0, step=d32.shape[1] * 4,
                        data=np.frombuffer(d32.tobytes(), np.uint8)), stamp)
                if progress:
                    progress(1)
        for f in bag.rglob("*"):
            if f.is_file():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(bag, path)
        fsync_directory(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    if questions is not None:
        with atomic_file(questions_path(path)) as tmp:
            tmp.write_text("".join(json.dumps(q, sort_keys=True) + "\n" for q in questions))
    if hasattr(episode, "scene"):
        write_json_atomic(path.with_name(path.name + "_scene.json"), episode.scene.to_dict())
    return path


def questions_path(bag_path: str | Path) -> Path:
    bag_path = Path(bag_path)
    return bag_path.with_name(bag_path.name + "_questions.jsonl")


# ----------------------------------------------------------------------------------------------
