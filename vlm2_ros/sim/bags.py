"""Episodes as rosbag2 (sqlite3 or mcap) through the pure-Python `rosbags` package, and back.

Written topics (all stamped with the frame's stamp; bag time = stamp):
    /camera/image_raw             sensor_msgs/msg/Image            rgb8
    /camera/image_raw/compressed  sensor_msgs/msg/CompressedImage  "rgb8; jpeg compressed bgr8"
    /camera/camera_info           sensor_msgs/msg/CameraInfo       plumb_bob, zero distortion
    /camera/pose                  geometry_msgs/msg/PoseStamped    camera optical frame in "map"
    /camera/depth/image_raw       sensor_msgs/msg/Image            32FC1 metres (optional)
    /clock                        rosgraph_msgs/msg/Clock
plus `<bag>_questions.jsonl` and `<bag>_scene.json` next to the bag directory.

The reader does not assume our topic names: by default it picks the topics by message type
(an rgb/bgr/mono Image that is not depth, else a CompressedImage; CameraInfo; PoseStamped or
nav_msgs/Odometry), so it reads bags recorded on a real robot too; names can be given explicitly.
Poses are matched to images by nearest stamp (within `max_pose_gap_ns`).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..atomic_io import atomic_file, fsync_directory, write_json_atomic
from ..camera import CameraIntrinsics, quaternion_to_rotation, rotation_to_quaternion

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


def _stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def camera_info_msg(ts, K: CameraIntrinsics, stamp_ns: int, frame_id: str = CAMERA_FRAME):
    T = ts.types
    k = np.array([K.fx, 0, K.cx, 0, K.fy, K.cy, 0, 0, 1], np.float64)
    p = np.array([K.fx, 0, K.cx, 0, 0, K.fy, K.cy, 0, 0, 0, 1, 0], np.float64)
    return T["sensor_msgs/msg/CameraInfo"](
        header=_header(ts, stamp_ns, frame_id), height=K.height, width=K.width, distortion_model="plumb_bob",
        d=np.zeros(5), k=k, r=np.eye(3).reshape(-1), p=p, binning_x=0, binning_y=0,
        roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def intrinsics_from_camera_info(msg) -> CameraIntrinsics:
    k = np.asarray(msg.k, np.float64)
    if k.shape != (9,) or not k[0] > 0:
        raise ValueError(f"CameraInfo has no valid K matrix: {k.tolist()}")
    return CameraIntrinsics(float(k[0]), float(k[4]), float(k[2]), float(k[5]), int(msg.width), int(msg.height))


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
                put(TOPIC_INFO, camera_info_msg(ts, K, stamp), stamp)
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
                pose = np.asarray(episode.poses[i])
                q = rotation_to_quaternion(pose[:3, :3])
                put(TOPIC_POSE, T["geometry_msgs/msg/PoseStamped"](
                    header=_header(ts, stamp, WORLD_FRAME),
                    pose=T["geometry_msgs/msg/Pose"](
                        position=T["geometry_msgs/msg/Point"](x=float(pose[0, 3]), y=float(pose[1, 3]), z=float(pose[2, 3])),
                        orientation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]))), stamp)
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

@dataclass
class BagFrame:
    stamp_ns: int
    rgb: np.ndarray                       # uint8 [H, W, 3]
    intrinsics: CameraIntrinsics | None
    pose: np.ndarray | None               # float64 [4, 4] camera-to-world (as recorded), or None


def image_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) -> uint8 RGB [H, W, 3], honouring step."""
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    enc = msg.encoding.lower()
    ch = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8uc1": 1, "8uc3": 3}.get(enc)
    if ch is None:
        raise ValueError(f"unsupported image encoding {msg.encoding!r} (use rgb8, bgr8, rgba8, bgra8 or mono8)")
    buf = np.asarray(msg.data, np.uint8)
    if step < w * ch or buf.size < step * h:
        raise ValueError(f"image data too short: {buf.size} bytes for {h} rows of step {step} ({w}x{ch})")
    img = buf[: step * h].reshape(h, step)[:, : w * ch].reshape(h, w, ch)
    if ch == 1:
        return np.repeat(img, 3, axis=2)
    if enc.startswith("bgr"):
        img = img[..., 2::-1]
    return np.ascontiguousarray(img[..., :3])


def compressed_to_rgb(msg) -> np.ndarray:
    import cv2
    img = cv2.imdecode(np.asarray(msg.data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot decode compressed image (format {msg.format!r})")
    return np.ascontiguousarray(img[..., ::-1])


def _pose_matrix(msg) -> np.ndarray:
    pose = msg.pose.pose if hasattr(msg, "twist") else msg.pose       # Odometry has pose.pose
    p, o = pose.position, pose.orientation
    T = np.eye(4)
    T[:3, :3] = quaternion_to_rotation(o.x, o.y, o.z, o.w)
    T[:3, 3] = [p.x, p.y, p.z]
    return T


class BagReader:
    """Frames of a rosbag2 (sqlite3 or mcap), ours or a robot's."""

    def __init__(self, path: str | Path, *, image_topic: str | None = None, info_topic: str | None = None,
                 pose_topic: str | None = None, prefer: str = "raw", max_pose_gap_ns: int = 50_000_000):
        from rosbags.rosbag2 import Reader
        self.path = Path(path)
        if not self.path.exists():
            raise ValueError(f"bag {self.path} does not exist")
        if prefer not in ("raw", "compressed"):
            raise ValueError(f"prefer must be 'raw' or 'compressed', got {prefer!r}")
        self._Reader = Reader
        self.ts = _typestore()
        self.max_pose_gap_ns = max_pose_gap_ns
        try:
            with Reader(self.path) as r:
                self.topics = {c.topic: c.msgtype for c in r.connections}
        except Exception as e:   # rosbags raises its own error types for unreadable bags
            raise ValueError(f"cannot open bag {self.path}: {e}") from e

        def pick(given, types, avoid=("depth",)):
            if given is not None:
                if given not in self.topics:
                    raise ValueError(f"topic {given!r} not in bag {self.path}; topics: {sorted(self.topics)}")
                return given
            cands = sorted(t for t, m in self.topics.items() if m in types and not any(a in t for a in avoid))
            return cands[0] if cands else None

        raw_t = pick(image_topic if image_topic and self.topics.get(image_topic) == "sensor_msgs/msg/Image" else None,
                     ("sensor_msgs/msg/Image",))
        comp_t = pick(image_topic if image_topic and self.topics.get(image_topic) == "sensor_msgs/msg/CompressedImage"
                      else None, ("sensor_msgs/msg/CompressedImage",))
        if image_topic is not None and image_topic not in self.topics:
            raise ValueError(f"topic {image_topic!r} not in bag {self.path}; topics: {sorted(self.topics)}")
        order = (raw_t, comp_t) if prefer == "raw" else (comp_t, raw_t)
        if image_topic is not None:
            order = (image_topic,)
        self.image_topic = next((t for t in order if t), None)
        if self.image_topic is None:
            raise ValueError(f"bag {self.path} has no sensor_msgs Image or CompressedImage topic; "
                             f"topics: {sorted(self.topics)}")
        self.info_topic = pick(info_topic, ("sensor_msgs/msg/CameraInfo",), avoid=("depth",))
        self.pose_topic = pick(pose_topic, ("geometry_msgs/msg/PoseStamped", "nav_msgs/msg/Odometry"), avoid=())

    def _messages(self, topics):
        with self._Reader(self.path) as r:
            conns = [c for c in r.connections if c.topic in topics]
            for c, t, raw in r.messages(connections=conns):
                yield c.topic, t, self.ts.deserialize_cdr(raw, c.msgtype)

    def frames(self) -> Iterator[BagFrame]:
        aux = [t for t in (self.info_topic, self.pose_topic) if t]
        poses: list[tuple[int, np.ndarray]] = []
        info = None
        infos: dict[int, CameraIntrinsics] = {}
        for topic, _, msg in self._messages(aux):
            if topic == self.pose_topic:
                poses.append((_stamp_ns(msg.header), _pose_matrix(msg)))
            else:
                info = intrinsics_from_camera_info(msg)
                infos[_stamp_ns(msg.header)] = info
        pose_stamps = np.array([s for s, _ in poses], np.int64)
        info_stamps = np.array(sorted(infos), np.int64)
        compressed = self.topics[self.image_topic] == "sensor_msgs/msg/CompressedImage"
        for _, _, msg in self._messages([self.image_topic]):
            stamp = _stamp_ns(msg.header)
            rgb = compressed_to_rgb(msg) if compressed else image_to_rgb(msg)
            pose = None
            if len(pose_stamps):
                j = int(np.argmin(np.abs(pose_stamps - stamp)))
                if abs(int(pose_stamps[j]) - stamp) <= self.max_pose_gap_ns:
                    pose = poses[j][1]
            K = None
            if len(info_stamps):
                j = int(np.argmin(np.abs(info_stamps - stamp)))
                K = infos[int(info_stamps[j])]
            yield BagFrame(stamp, rgb, K, pose)


def read_bag(path: str | Path, **kwargs) -> list[BagFrame]:
    return list(BagReader(path, **kwargs).frames())
