"""The bad-input matrix: every message field, request and file that can be wrong, tried against
vlm2_node (messages, requests) and the engine / checkpoint loader (files).

Each case states what must happen: which counter the rejection is counted in (a MemoryStatus
field, or a /diagnostics key for what is not a frame), or which error code / exception comes back.
`BadInputHarness.try_case` sends one case to a running node and checks, besides that, that the
node is still running and that the memory (sizes, replacements, newest stamp, frames ingested)
is unchanged. `run_file_cases` does the same for files at engine level. The tests
(test/test_bad_input_matrix.py) and `vlm2 bench reliability-report` both run these lists.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .node_process import ERROR_CODE_NAMES, NodeProcess

WIDTH, HEIGHT = 128, 96
SEED_FRAMES = 12


@dataclass
class Context:
    """What case builders need: fresh stamps, the newest ingested stamp, good pixels."""
    last_stamp_ns: int = 0
    rgb: np.ndarray = field(default_factory=lambda: np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3),
                                                                                          dtype=np.uint8))

    @staticmethod
    def fresh_stamp() -> int:
        return time.time_ns()

    def jpeg(self) -> bytes:
        import cv2
        return cv2.imencode(".jpg", self.rgb[:, :, ::-1])[1].tobytes()

    def png(self) -> bytes:
        import cv2
        return cv2.imencode(".png", self.rgb[:, :, ::-1])[1].tobytes()


@dataclass(frozen=True)
class TopicCase:
    name: str
    topic: str                        # "image", "compressed", "camera_info" or "pose"
    build: Callable[[Context], Any]   # a message, bytes (serialized, published raw on `topic`) or a list
    counter: str                      # MemoryStatus field, or "diagnostics:<key>"
    restore: Callable[[Context], Any] | None = None   # sent afterwards on the same topic


@dataclass(frozen=True)
class RequestCase:
    name: str
    request: dict                     # SpatialQuery.Request / Ask.Goal fields
    code: str                         # expected error code name
    state: str = "active"             # "inactive" or "unconfigured": the node is put there first
    via: str = "service"              # or "action"


@dataclass
class CaseResult:
    name: str
    kind: str
    expected: str
    ok: bool
    detail: str = ""


# ----------------------------------------------------------------------------- message cases
def _image(ctx: Context, encoding: str = "rgb8", **fields) -> Any:
    from sensor_msgs.msg import Image

    from ..ros.image_conversion import fill_image, ns_to_stamp
    msg = fill_image(Image(), ctx.rgb, "rgb8")
    msg.encoding = encoding
    for name, value in fields.items():
        setattr(msg, name, value)
    msg.header.stamp, msg.header.frame_id = ns_to_stamp(ctx.fresh_stamp()), "cam_optical_frame"
    return msg


def _stamped_image(ctx: Context, stamp_ns: int) -> Any:
    from ..ros.image_conversion import ns_to_stamp
    msg = _image(ctx)
    msg.header.stamp = ns_to_stamp(stamp_ns)
    return msg


def _bad_nanosec(ctx: Context) -> Any:
    msg = _image(ctx)
    msg.header.stamp.nanosec = 1_500_000_000      # a uint32 on the wire, but >= 1e9
    return msg


def _negative_stamp(ctx: Context) -> Any:
    msg = _image(ctx)
    msg.header.stamp.sec = -5
    return msg


def _not_utf8_encoding(ctx: Context) -> bytes:
    """Serialized Image whose encoding string holds invalid UTF-8 (as a C or Rust driver could send)."""
    from rclpy.serialization import serialize_message
    raw = bytearray(serialize_message(_image(ctx)))
    at = raw.index(b"rgb8")
    raw[at:at + 4] = b"\xff\xfeg8"
    return bytes(raw)


def _compressed(ctx: Context, data: bytes, fmt: str = "jpeg") -> Any:
    from sensor_msgs.msg import CompressedImage

    from ..ros.image_conversion import ns_to_stamp
    msg = CompressedImage(format=fmt, data=data)
    msg.header.stamp, msg.header.frame_id = ns_to_stamp(ctx.fresh_stamp()), "jpeg_optical_frame"
    return msg


def _huge_jpeg_header(ctx: Context) -> bytes:
    jpeg = bytearray(ctx.jpeg())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5: sof + 9] = (60000).to_bytes(2, "big") + (60000).to_bytes(2, "big")
    return bytes(jpeg)


def _camera_info(ctx: Context, size: tuple[int, int] = (WIDTH, HEIGHT), k: list | None = None, **fields) -> Any:
    from ..camera import CameraIntrinsics
    from ..ros.image_conversion import ns_to_stamp
    from ..ros.node_client import camera_info
    width, height = size
    msg = camera_info(CameraIntrinsics(100.0, 100.0, width / 2, height / 2, width, height),
                      ns_to_stamp(ctx.fresh_stamp()), "cam_optical_frame")
    if k is not None:
        msg.k = k
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


def _roi_outside(ctx: Context) -> Any:
    msg = _camera_info(ctx)
    msg.roi.x_offset, msg.roi.width, msg.roi.height = 100, 100, 50
    return msg


def _pose(ctx: Context, position=(0.0, 0.0, 1.0), orientation=(0.0, 0.0, 0.0, 1.0)) -> Any:
    from geometry_msgs.msg import PoseStamped

    from ..ros.image_conversion import ns_to_stamp
    msg = PoseStamped()
    msg.header.stamp, msg.header.frame_id = ns_to_stamp(ctx.fresh_stamp()), "map"
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = position
    o = msg.pose.orientation
    o.x, o.y, o.z, o.w = orientation
    return msg


_TOPIC_OF = {"Image": "image", "CompressedImage": "compressed", "CameraInfo": "camera_info", "PoseStamped": "pose"}
K_GOOD = [100.0, 0.0, 64.0, 0.0, 100.0, 48.0, 0.0, 0.0, 1.0]
BAD_IMAGE, REJECTED = "frames_dropped_bad_image", "frames_dropped_rejected"
INFO_REJECTED, POSE_REJECTED = "diagnostics:camera_infos_rejected", "diagnostics:poses_rejected"

TOPIC_CASES: tuple[TopicCase, ...] = (
    # sensor_msgs/Image fields
    TopicCase("encoding unknown", "image", lambda c: _image(c, "hsv8"), BAD_IMAGE),
    TopicCase("encoding empty", "image", lambda c: _image(c, ""), BAD_IMAGE),
    TopicCase("encoding depth (32FC1) on a colour input", "image",
              lambda c: _image(c, "32FC1", step=WIDTH * 4, data=bytes(WIDTH * HEIGHT * 4)), BAD_IMAGE),
    TopicCase("encoding not UTF-8 on the wire", "image", _not_utf8_encoding, BAD_IMAGE),
    TopicCase("step smaller than a row", "image", lambda c: _image(c, step=WIDTH * 3 - 1), BAD_IMAGE),
    TopicCase("data shorter than step x height", "image",
              lambda c: _image(c, data=bytes(WIDTH * 3 * HEIGHT - 1)), BAD_IMAGE),
    TopicCase("data empty", "image", lambda c: _image(c, data=b""), BAD_IMAGE),
    TopicCase("size zero", "image", lambda c: _image(c, height=0, width=0, step=0, data=b""), BAD_IMAGE),
    TopicCase("size huge (header only)", "image",
              lambda c: _image(c, height=100_000, width=100_000, step=300_000, data=bytes(12)), BAD_IMAGE),
    TopicCase("yuv422 with an odd width", "image",
              lambda c: _image(c, "yuv422", width=WIDTH - 1, step=2 * (WIDTH - 1)), BAD_IMAGE),
    TopicCase("bayer smaller than 2x2", "image",
              lambda c: _image(c, "bayer_rggb8", height=1, width=1, step=1, data=b"\x00"), BAD_IMAGE),
    TopicCase("stamp nanosec >= 1e9", "image", _bad_nanosec, BAD_IMAGE),
    TopicCase("stamp negative", "image", _negative_stamp, REJECTED),
    TopicCase("stamp slightly out of order", "image",
              lambda c: _stamped_image(c, c.last_stamp_ns - 300_000_000), REJECTED),
    TopicCase("stamp far in the past", "image", lambda c: _stamped_image(c, c.last_stamp_ns - 3600 * 10**9), REJECTED),
    TopicCase("stamp far in the future", "image", lambda c: _stamped_image(c, time.time_ns() + 86400 * 10**9),
              REJECTED),
    # sensor_msgs/CompressedImage
    TopicCase("compressed data empty", "compressed", lambda c: _compressed(c, b""), BAD_IMAGE),
    TopicCase("compressed data neither JPEG nor PNG", "compressed",
              lambda c: _compressed(c, bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8))),
              BAD_IMAGE),
    TopicCase("JPEG corrupt", "compressed", lambda c: _compressed(c, b"\xff\xd8\xff\xe0 not a jpeg \xff\xd9"),
              BAD_IMAGE),
    TopicCase("JPEG truncated", "compressed", lambda c: _compressed(c, c.jpeg()[: len(c.jpeg()) // 2]), BAD_IMAGE),
    TopicCase("JPEG header claims 60000x60000", "compressed", lambda c: _compressed(c, _huge_jpeg_header(c)),
              BAD_IMAGE),
    TopicCase("PNG header corrupt", "compressed", lambda c: _compressed(c, c.png()[:40] + bytes(30), "png"),
              BAD_IMAGE),
    TopicCase("compressed depth on a colour input", "compressed",
              lambda c: _compressed(c, c.png(), "16UC1; compressedDepth png"), BAD_IMAGE),
    # sensor_msgs/CameraInfo
    TopicCase("camera info K has NaN", "camera_info", lambda c: _camera_info(c, k=[math.nan] + K_GOOD[1:]),
              INFO_REJECTED),
    TopicCase("camera info K has inf", "camera_info", lambda c: _camera_info(c, k=K_GOOD[:4] + [math.inf] + K_GOOD[5:]),
              INFO_REJECTED),
    TopicCase("camera info K all zero (uncalibrated)", "camera_info", lambda c: _camera_info(c, k=[0.0] * 9),
              INFO_REJECTED),
    TopicCase("camera info negative focal length", "camera_info",
              lambda c: _camera_info(c, k=[-100.0] + K_GOOD[1:]), INFO_REJECTED),
    TopicCase("camera info size zero", "camera_info", lambda c: _camera_info(c, width=0, height=0), INFO_REJECTED),
    TopicCase("camera info roi outside the image", "camera_info", _roi_outside, INFO_REJECTED),
    TopicCase("camera info for another image size", "camera_info", lambda c: [_camera_info(c, (640, 480)), _image(c)],
              REJECTED, restore=lambda c: _camera_info(c)),
    # geometry_msgs/PoseStamped
    TopicCase("pose position NaN", "pose", lambda c: _pose(c, position=(math.nan, 0.0, 1.0)), POSE_REJECTED),
    TopicCase("pose orientation inf", "pose", lambda c: _pose(c, orientation=(0.0, math.inf, 0.0, 1.0)),
              POSE_REJECTED),
    TopicCase("pose quaternion zero", "pose", lambda c: _pose(c, orientation=(0.0, 0.0, 0.0, 0.0)), POSE_REJECTED),
)

REQUEST_CASES: tuple[RequestCase, ...] = (
    RequestCase("question empty", {"question": ""}, "EMPTY_QUESTION"),
    RequestCase("question only whitespace and newlines", {"question": "\n\t \r\n"}, "EMPTY_QUESTION"),
    RequestCase("question oversized (1 MiB)", {"question": "x" * 2**20}, "QUESTION_TOO_LONG"),
    RequestCase("options push the question over the limit",
                {"question": "y" * 990, "options": ["a lamp", "a sofa"]}, "QUESTION_TOO_LONG"),
    RequestCase("answer_type unknown", {"question": "How many chairs?", "answer_type": 9}, "INVALID_REQUEST"),
    RequestCase("options: 9 (more than 8)", {"question": "Which one?", "options": [f"o{i}" for i in range(9)]},
                "INVALID_REQUEST"),
    RequestCase("option blank", {"question": "Which one?", "options": ["the lamp", "  "]}, "INVALID_REQUEST"),
    RequestCase("timeout negative", {"question": "How many chairs?", "timeout_s": -1.0}, "INVALID_REQUEST"),
    RequestCase("timeout NaN", {"question": "How many chairs?", "timeout_s": math.nan}, "INVALID_REQUEST"),
    RequestCase("timeout inf", {"question": "How many chairs?", "timeout_s": math.inf}, "INVALID_REQUEST"),
    RequestCase("ask action: question empty", {"question": " "}, "EMPTY_QUESTION", via="action"),
    RequestCase("query while inactive", {"question": "How many chairs?"}, "NOT_READY", state="inactive"),
    RequestCase("query while unconfigured", {"question": "How many chairs?"}, "NOT_READY", state="unconfigured"),
)


def harness_params(workdir: Path, checkpoint_dir: str = "") -> dict:
    return {
        "model.checkpoint_dir": checkpoint_dir,
        "camera_names": ["cam", "jpeg"],
        "cameras.cam.pose_topic": "cam/pose",
        "cameras.jpeg.image_topic": "",
        "cameras.jpeg.compressed_topic": "jpeg/image_raw/compressed",
        "ingest.rate_hz": 0.0,
        "ingest.queue_size": 64,
        "ingest.qos_reliability": "reliable",      # every bad message must arrive
        "ingest.time_jump_policy": "keep",        # a stamp far back drops the frame, memory kept
        "ingest.no_image_warning_s": 0.0,
        "snapshot.dir": str(Path(workdir) / "snapshot"),
        "snapshot.period_s": 0.0,
        "status_period_s": 0.1,
    }


class BadInputHarness:
    """One node process, a client, publishers for every input; `try_case` runs one case."""

    def __init__(self, workdir: Path, domain_id: int, checkpoint_dir: str = ""):
        self.node = NodeProcess(harness_params(workdir, checkpoint_dir), Path(workdir), domain_id, name="bad-input-node")
        self.domain_id = domain_id
        self.context = Context()
        self.diagnostics: dict[str, str] = {}

    def __enter__(self) -> "BadInputHarness":
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import CameraInfo

        from ..ros.node_client import CameraPublisher, NodeClient
        rclpy.init(domain_id=self.domain_id)
        try:
            self.client = NodeClient(name="bad_input_client")
            node = self.client.node
            self.cam = CameraPublisher(node, "cam", pose_topic="cam/pose", frame_id="cam_optical_frame")
            self.jpeg = CameraPublisher(node, "jpeg", compressed=True, frame_id="jpeg_optical_frame")
            self.publishers = {"image": self.cam.image, "compressed": self.jpeg.image,
                               "camera_info": node.create_publisher(CameraInfo, "cam/camera_info", 10),
                               "pose": node.create_publisher(PoseStamped, "cam/pose", 10)}
            node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
            self.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        import rclpy
        if self.node.alive():
            self.node.stop()
        if getattr(self, "client", None) is not None:
            self.client.close()
        rclpy.try_shutdown()

    def start(self) -> None:
        """Start the node and fill its memory with good frames (camera info and poses included)."""
        from ..camera import CameraIntrinsics
        self.client.statuses.clear()
        self.node.start()
        try:
            self.client.wait_for_node(timeout_s=180)
        except Exception as exc:
            raise RuntimeError(f"node did not come up: {exc}\n{self.node.log()[-3000:]}") from None
        self.cam.wait_for_subscribers()
        self.jpeg.wait_for_subscribers()
        before = self.client.latest_status().frames_ingested
        intrinsics = CameraIntrinsics(100.0, 100.0, WIDTH / 2, HEIGHT / 2, WIDTH, HEIGHT)
        # Camera QoS is best effort (sensor data), and a subscription that has only just matched
        # can miss a frame: send again what did not arrive, a few times, before calling it a failure.
        ingested = lambda s: s.frames_ingested >= before + SEED_FRAMES and s.queue_depth == 0  # noqa: E731
        missing, i = SEED_FRAMES, 0
        for attempt in range(3):
            for _ in range(missing):
                pose = np.eye(4)
                pose[:3, 3] = [0.1 * i, 0.0, 1.5]
                self.cam.publish(self.context.rgb, time.time_ns(), intrinsics, pose)
                i += 1
                time.sleep(0.02)
            try:
                self.client.wait_for_status(ingested, timeout_s=60 if attempt == 2 else 15)
                return
            except Exception as exc:
                missing = before + SEED_FRAMES - self.client.latest_status().frames_ingested
                if attempt == 2:
                    raise RuntimeError(f"the node did not ingest the {SEED_FRAMES} good frames: {exc}\n"
                                       f"{self.node.log()[-3000:]}") from None

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name.endswith("spatial memory"):
                self.diagnostics = {kv.key: kv.value for kv in status.values}

    # ------------------------------------------------------------------ reading the node
    def settled_status(self):
        """A status published from now on, after the ingest queue drained."""
        self.client.statuses.clear()
        return self.client.wait_for_status(lambda s: s.queue_depth == 0, timeout_s=30)

    def counter(self, name: str, status) -> int:
        if name.startswith("diagnostics:"):
            return int(self.diagnostics.get(name.split(":", 1)[1], -1))
        return int(getattr(status, name))

    @staticmethod
    def memory(status, with_counter: bool = True) -> tuple:
        """What must not change: memory sizes, replacements, the newest stamp (and frames ingested)."""
        from ..ros.image_conversion import stamp_to_ns
        key = (status.working_memory_size, status.episodic_memory_size, status.episodic_replacements,
               stamp_to_ns(status.last_frame_stamp))
        return key + ((status.frames_ingested,) if with_counter else ())

    # ------------------------------------------------------------------ cases
    def try_case(self, case: TopicCase | RequestCase) -> CaseResult:
        try:
            if isinstance(case, TopicCase):
                return self._try_topic(case)
            return self._try_request(case)
        except Exception as exc:  # the case could not be run: a failure, with the reason
            return CaseResult(case.name, type(case).__name__, "", False, f"{type(exc).__name__}: {exc}")

    def _wait(self, condition, timeout_s: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.05)
        return False

    def _try_topic(self, case: TopicCase) -> CaseResult:
        from ..ros.image_conversion import stamp_to_ns
        before = self.settled_status()
        self._wait(lambda: self.diagnostics)
        count_before = self.counter(case.counter, before)
        self.context.last_stamp_ns = stamp_to_ns(before.last_frame_stamp)
        built = case.build(self.context)
        for k, message in enumerate(built if isinstance(built, list) else [built]):
            if k:
                time.sleep(0.5)    # different topics: let the node take the previous message first
            self.publishers[_TOPIC_OF.get(type(message).__name__, case.topic)].publish(message)
        counted = self._wait(lambda: self.counter(case.counter, self.client.latest_status()) >= count_before + 1)
        after = self.settled_status()
        if case.restore is not None:
            self.publishers[case.topic].publish(case.restore(self.context))
        alive = self.node.alive()
        unchanged = self.memory(after) == self.memory(before)
        ok = counted and alive and unchanged
        detail = "" if ok else (f"counted {counted} ({case.counter} {count_before} -> "
                                f"{self.counter(case.counter, after)}), alive {alive}, memory unchanged {unchanged} "
                                f"({self.memory(before)} -> {self.memory(after)})")
        return CaseResult(case.name, "message", f"rejection counted in {case.counter.split(':')[-1]}", ok, detail)

    def _try_request(self, case: RequestCase) -> CaseResult:
        from lifecycle_msgs.msg import Transition
        before = self.settled_status()
        if case.state in ("inactive", "unconfigured"):
            self.client.change_state(Transition.TRANSITION_DEACTIVATE)
        if case.state == "unconfigured":
            self.client.change_state(Transition.TRANSITION_CLEANUP)     # snapshots, frees the model
        self.client.wait_for_status(lambda s: s.lifecycle_state == case.state, timeout_s=30)
        failed_before = self.client.latest_status().queries_failed
        if case.via == "action":
            outcome = self.client.ask(**case.request, call_timeout_s=60)
            response = outcome.result
        else:
            response = self.client.query(**case.request, call_timeout_s=60)
        code = ERROR_CODE_NAMES.get(response.error_code, str(response.error_code))
        counted = self._wait(lambda: self.client.latest_status().queries_failed >= failed_before + 1)
        if case.state == "unconfigured":
            self.client.change_state(Transition.TRANSITION_CONFIGURE)  # reloads the snapshot
        if case.state in ("inactive", "unconfigured"):
            self.client.change_state(Transition.TRANSITION_ACTIVATE)
        after = self.client.wait_for_status(lambda s: s.lifecycle_state == "active" and s.queue_depth == 0)
        alive = self.node.alive()
        with_counter = case.state != "unconfigured"       # counters restart at configure; memory must not
        unchanged = self.memory(after, with_counter) == self.memory(before, with_counter)
        ok = code == case.code and bool(response.error_message) and counted and alive and unchanged
        detail = "" if ok else (f"code {code} ({response.error_message!r}), counted {counted}, alive {alive}, "
                                f"memory unchanged {unchanged}")
        return CaseResult(case.name, "request", case.code, ok, detail)


# ----------------------------------------------------------------------------- file cases
@dataclass(frozen=True)
class FileCase:
    name: str
    kind: str                              # "snapshot" or "checkpoint"
    damage: Callable[[Path], None]
    match: str                             # in the error message
    covered_by: str = ""                   # an existing test that already checks it


def _index(directory: Path) -> dict:
    from ..engine.snapshot import INDEX_NAME
    return json.loads((directory / INDEX_NAME).read_text())


def _edit_index(directory: Path, edit: Callable[[dict], None]) -> None:
    from ..engine.snapshot import INDEX_NAME
    index = _index(directory)
    edit(index)
    (directory / INDEX_NAME).write_text(json.dumps(index))


def _tensor_path(directory: Path) -> Path:
    return directory / _index(directory)["tensor_file"]


def _retensor(directory: Path, edit: Callable[[dict], None]) -> None:
    """Change the tensors and re-checksum them: tampering the checksum cannot catch."""
    from safetensors.torch import load_file, save_file

    from ..atomic_io import sha256_file
    path = _tensor_path(directory)
    tensors = load_file(str(path))
    edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    _edit_index(directory, lambda index: index.update(sha256=sha256_file(path)))


def _symlink_outside(directory: Path) -> None:
    outside = directory.parent / "outside.safetensors"
    _tensor_path(directory).rename(outside)
    os.symlink(outside.resolve(), directory / _index(directory)["tensor_file"])


def _set_meta(key: str, value) -> Callable[[Path], None]:
    return lambda d: _edit_index(d, lambda index: index["metadata"].update({key: value}))


def _edit_checkpoint_config(directory: Path, edit: Callable[[dict], None]) -> None:
    from ..model.checkpoint import CONFIG_NAME
    meta = json.loads((directory / CONFIG_NAME).read_text())
    edit(meta)
    (directory / CONFIG_NAME).write_text(json.dumps(meta))


def _garbage_weights(directory: Path) -> None:
    from ..atomic_io import sha256_file
    from ..model.checkpoint import WEIGHTS_NAME
    (directory / WEIGHTS_NAME).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}" + bytes(100))
    _edit_checkpoint_config(directory, lambda m: m.update(weights_sha256=sha256_file(directory / WEIGHTS_NAME)))


def _nan_tokens(tensors: dict) -> None:
    tensors["working.tokens"][0, 0, 0, 0] = math.nan


SNAPSHOT_TEST = "test/test_snapshot_and_answer.py::test_damaged_snapshot_is_refused_with_clear_error"
CONFINEMENT_TEST = "test/test_security.py::test_snapshot_reads_are_confined_to_the_snapshot_directory"
CHECKPOINT_TEST = "test/test_checkpoint.py::test_broken_checkpoints_are_refused_naming_file_and_key"
FILE_CASES: tuple[FileCase, ...] = (
    FileCase("snapshot tensor file truncated", "snapshot",
             lambda d: _tensor_path(d).write_bytes(_tensor_path(d).read_bytes()[:-7]), "checksum", SNAPSHOT_TEST),
    FileCase("snapshot tensor file tampered", "snapshot",
             lambda d: _tensor_path(d).write_bytes(b"X" + _tensor_path(d).read_bytes()[1:]), "checksum", SNAPSHOT_TEST),
    FileCase("snapshot tensor file missing", "snapshot", lambda d: _tensor_path(d).unlink(), "does not exist",
             SNAPSHOT_TEST),
    FileCase("snapshot index missing", "snapshot", lambda d: (d / "snapshot.json").unlink(), "no snapshot there",
             SNAPSHOT_TEST),
    FileCase("snapshot index not JSON", "snapshot", lambda d: (d / "snapshot.json").write_text("{"), "invalid JSON",
             SNAPSHOT_TEST),
    FileCase("snapshot index wrong version", "snapshot", lambda d: _edit_index(d, lambda i: i.update(version=99)),
             "version 99", SNAPSHOT_TEST),
    FileCase("snapshot index wrong format", "snapshot",
             lambda d: _edit_index(d, lambda i: i.update(format="other")), "not a vlm2-memory-snapshot"),
    FileCase("snapshot index not an object", "snapshot", lambda d: (d / "snapshot.json").write_text("[1, 2]"),
             "not a vlm2-memory-snapshot"),
    FileCase("snapshot names a file outside (../)", "snapshot",
             lambda d: _edit_index(d, lambda i: i.update(tensor_file="../x.safetensors")), "invalid tensor_file",
             CONFINEMENT_TEST),
    FileCase("snapshot names an absolute path", "snapshot",
             lambda d: _edit_index(d, lambda i: i.update(tensor_file="/tmp/x.safetensors")), "invalid tensor_file",
             CONFINEMENT_TEST),
    FileCase("snapshot tensor file is a symlink out of the directory", "snapshot", _symlink_outside,
             "leads outside the snapshot directory", CONFINEMENT_TEST),
    FileCase("snapshot metadata not an object", "snapshot", lambda d: _edit_index(d, lambda i: i.update(metadata=[1])),
             "'metadata' is not an object"),
    FileCase("snapshot engine state version wrong", "snapshot", _set_meta("engine_state_version", 1),
             "engine state version 1"),
    FileCase("snapshot from another model", "snapshot", _set_meta("fingerprint", {"preset": "other"}),
             "different model", "test/test_engine.py::test_tampered_or_foreign_snapshot_is_refused_and_state_untouched"),
    FileCase("snapshot frame count invalid", "snapshot", _set_meta("frames", -1), "invalid frame count"),
    FileCase("snapshot last stamp not a number", "snapshot", _set_meta("last_stamp_ns", "soon"), "invalid metadata"),
    FileCase("snapshot tokens of the wrong shape (re-checksummed)", "snapshot",
             lambda d: _retensor(d, lambda t: t.update({"working.tokens": t["working.tokens"][..., :3]})),
             "'working.tokens' has shape"),
    FileCase("snapshot tokens NaN (re-checksummed)", "snapshot", lambda d: _retensor(d, _nan_tokens),
             "holds NaN or inf"),
    FileCase("snapshot tensor missing (re-checksummed)", "snapshot",
             lambda d: _retensor(d, lambda t: t.pop("episodic.pose")), "'episodic.pose' is missing"),
    FileCase("snapshot stamps of the wrong dtype (re-checksummed)", "snapshot",
             lambda d: _retensor(d, lambda t: t.update({"working.stamp_ns": t["working.stamp_ns"].double()})),
             "'working.stamp_ns' has dtype"),
    FileCase("snapshot geometry window of the wrong shape (re-checksummed)", "snapshot",
             lambda d: _retensor(d, lambda t: t.update({"geometry_window": t["geometry_window"][:, :, :5]})),
             "'geometry_window' has shape"),
    FileCase("checkpoint config missing", "checkpoint", lambda d: (d / "vlm2_config.json").unlink(), "does not exist",
             CHECKPOINT_TEST),
    FileCase("checkpoint weights missing", "checkpoint", lambda d: (d / "vlm2_weights.safetensors").unlink(),
             "does not exist", CHECKPOINT_TEST),
    FileCase("checkpoint config not JSON", "checkpoint", lambda d: (d / "vlm2_config.json").write_text("{"),
             "invalid JSON", CHECKPOINT_TEST),
    FileCase("checkpoint wrong version", "checkpoint", lambda d: _edit_checkpoint_config(d, lambda m: m.update(version=7)),
             "version 7 is not supported", CHECKPOINT_TEST),
    FileCase("checkpoint weights truncated", "checkpoint",
             lambda d: (d / "vlm2_weights.safetensors").write_bytes((d / "vlm2_weights.safetensors").read_bytes()[:-100]),
             "checksum mismatch", CHECKPOINT_TEST),
    FileCase("checkpoint wrong format", "checkpoint",
             lambda d: _edit_checkpoint_config(d, lambda m: m.update(format="other")), "not a vlm2-checkpoint"),
    FileCase("checkpoint config not an object", "checkpoint", lambda d: (d / "vlm2_config.json").write_text("[]"),
             "not a vlm2-checkpoint"),
    FileCase("checkpoint config has an unknown field", "checkpoint",
             lambda d: _edit_checkpoint_config(d, lambda m: m["config"].update(bogus=1)), "invalid 'config'"),
    FileCase("checkpoint weights not safetensors (re-checksummed)", "checkpoint", _garbage_weights,
             "unreadable safetensors file"),
)


def run_file_case(case: FileCase, engine, source: Path, checkpoint: Path, workdir: Path) -> CaseResult:
    """Damage a copy of a good snapshot / checkpoint; loading it must fail naming the problem and,
    for a snapshot, leave the engine's memory exactly as it was."""
    import shutil

    from ..engine.snapshot import SnapshotError
    from ..model.checkpoint import CheckpointError, load_checkpoint
    target = workdir / case.name.replace(" ", "_").replace("/", "_")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    directory = target / case.kind
    shutil.copytree(source if case.kind == "snapshot" else checkpoint, directory)
    case.damage(directory)
    before = engine.stream
    error_type = SnapshotError if case.kind == "snapshot" else CheckpointError
    try:
        engine.load(directory) if case.kind == "snapshot" else load_checkpoint(directory)
    except error_type as exc:
        ok = case.match in str(exc) and engine.stream is before
        return CaseResult(case.name, "file", f"{error_type.__name__}: ...{case.match}...", ok,
                          "" if ok else f"message {str(exc)!r}; memory unchanged {engine.stream is before}")
    except Exception as exc:  # anything else is a failure: it would escape the node's handling
        return CaseResult(case.name, "file", error_type.__name__, False, f"{type(exc).__name__}: {exc}")
    return CaseResult(case.name, "file", error_type.__name__, False, "loaded without an error")


def file_case_fixtures(workdir: Path):
    """(engine with memory, its snapshot directory, a checkpoint directory) for run_file_case."""
    import torch

    from ..engine.engine import SpatialMemoryEngine
    from ..model.checkpoint import build_model, save_checkpoint
    from ..model.presets import preset_config
    torch.manual_seed(0)
    model = build_model(preset_config("tiny"))
    save_checkpoint(model, workdir / "good-checkpoint")
    engine = SpatialMemoryEngine(model, weights="bad-input-matrix")
    rng = np.random.default_rng(0)
    for i in range(10):
        pose = np.eye(4)
        pose[:3, 3] = [0.1 * i, 0.0, 1.0]
        engine.ingest(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8), 10**9 + i * 10**8, pose=pose)
    engine.save(workdir / "good-snapshot")
    return engine, workdir / "good-snapshot", workdir / "good-checkpoint"


def run_file_cases(workdir: Path, cases: tuple[FileCase, ...] = FILE_CASES) -> list[CaseResult]:
    engine, snapshot, checkpoint = file_case_fixtures(Path(workdir))
    return [run_file_case(case, engine, snapshot, checkpoint, Path(workdir)) for case in cases]
