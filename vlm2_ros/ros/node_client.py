"""Client side of vlm2_node, for the demo, tests and notebooks: start the node as its own process,
publish camera streams to it, and call its query service and ask action.

`NodeClient` is a plain rclpy node spinning on its own thread, so its methods block the caller
and nothing else; it needs `rclpy.init()` (or `NodeClient.session()`) first.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

from vlm2_ros.action import Ask
from vlm2_ros.camera import CameraIntrinsics, rotation_to_quaternion
from vlm2_ros.msg import MemoryStatus
from vlm2_ros.ros.image_conversion import fill_image, ns_to_stamp, stamp_to_ns
from vlm2_ros.srv import SpatialQuery

NODE_NAME = "vlm2_node"


class NodeClientError(RuntimeError):
    """The node did not answer in time, or a call could not be made."""


def node_command(params: dict[str, Any] | None = None, params_file: str | Path | None = None,
                 ros_args: list[str] | None = None) -> list[str]:
    """`python -m vlm2_ros.node --ros-args ...` with a params file and -p overrides."""
    command = [sys.executable, "-m", "vlm2_ros.node", "--ros-args"]
    if params_file is not None:
        command += ["--params-file", str(params_file)]
    for name, value in (params or {}).items():
        command += ["-p", f"{name}:={_param_literal(value)}"]
    return command + list(ros_args or [])


def _param_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_param_literal(v) for v in value) + "]"
    if isinstance(value, str):
        return f"'{value}'" if value == "" or value.lower() in ("true", "false") else value
    return repr(value)


def start_node_process(params: dict[str, Any] | None = None, params_file: str | Path | None = None,
                       log_path: str | Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start vlm2_node as its own process (stdout and stderr to `log_path`, else inherited)."""
    log = open(log_path, "ab") if log_path else None  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(node_command(params, params_file), stdout=log, stderr=subprocess.STDOUT if log else None,
                                env={**os.environ, **(env or {})})
    finally:
        if log:
            log.close()


def stop_node_process(process: subprocess.Popen, timeout_s: float = 30.0) -> int:
    """SIGINT (the node snapshots and exits 0), then SIGKILL after `timeout_s`; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclass
class AskOutcome:
    status: int                               # action_msgs/GoalStatus.STATUS_*
    result: Any                               # Ask.Result
    feedback: list = field(default_factory=list)  # Ask.Feedback in arrival order


class NodeClient:
    """Talks to one vlm2_node (`/<namespace>/vlm2_node/...`)."""

    def __init__(self, namespace: str = "", name: str = "vlm2_client"):
        base = f"{namespace.rstrip('/')}/{NODE_NAME}" if namespace else f"/{NODE_NAME}"
        self.node = rclpy.create_node(name)
        self.base = base
        self._query = self.node.create_client(SpatialQuery, f"{base}/query")
        self._reset = self.node.create_client(Trigger, f"{base}/reset_memory")
        self._save = self.node.create_client(Trigger, f"{base}/save_memory")
        self._change_state = self.node.create_client(ChangeState, f"{base}/change_state")
        self._ask = ActionClient(self.node, Ask, f"{base}/ask")
        self._lock = threading.Lock()
        self.statuses: list[MemoryStatus] = []
        self._status_received_at: float | None = None    # time.monotonic() of the latest status
        self.answers: list[str] = []
        self.spin_errors: list[str] = []                  # what the spinner survived (see _spin)
        self.node.create_subscription(MemoryStatus, f"{base}/memory_status", self._on_status, 10)
        self.node.create_subscription(String, f"{base}/answers", self._on_answer, 50)
        self._executor = SingleThreadedExecutor()
        self._executor.add_node(self.node)
        self._stop = threading.Event()
        self._spinner = threading.Thread(target=self._spin, name="vlm2-client", daemon=True)
        self._spinner.start()

    @classmethod
    @contextlib.contextmanager
    def session(cls, namespace: str = "", domain_id: int | None = None) -> Iterator["NodeClient"]:
        """rclpy.init() + a client, both torn down on exit."""
        context_args = {"domain_id": domain_id} if domain_id is not None else {}
        rclpy.init(**context_args)
        client = cls(namespace)
        try:
            yield client
        finally:
            client.close()
            rclpy.try_shutdown()

    def _spin(self) -> None:
        # rclpy's executors can raise from a wait set that races another thread destroying
        # entities (InvalidHandle, ros2/rclpy#1355). A spinner that died would freeze this
        # client without a word (statuses stop, calls time out): keep spinning, keep the error.
        while not self._stop.is_set():
            try:
                self._executor.spin_once(timeout_sec=0.05)
            except Exception as exc:  # noqa: BLE001 - any error: the spinner must outlive it
                with self._lock:
                    self.spin_errors.append(repr(exc))
                    del self.spin_errors[:-20]
                print(f"{self.node.get_name()}: spin_once raised {exc!r}; still spinning", file=sys.stderr)
                self._stop.wait(0.05)

    def close(self) -> None:
        self._stop.set()
        self._spinner.join()
        self._executor.shutdown()
        self.node.destroy_node()

    def _on_status(self, msg: MemoryStatus) -> None:
        with self._lock:
            self.statuses.append(msg)
            del self.statuses[:-100]
            self._status_received_at = time.monotonic()

    def _on_answer(self, msg: String) -> None:
        with self._lock:
            self.answers.append(msg.data)

    # ------------------------------------------------------------------ waiting
    def wait_for_node(self, timeout_s: float = 60.0) -> None:
        """Until the query service, the action and a status message are all there."""
        deadline = time.monotonic() + timeout_s
        if not self._query.wait_for_service(timeout_sec=timeout_s):
            raise NodeClientError(f"{self.base}/query did not appear within {timeout_s:g} s")
        if not self._ask.wait_for_server(timeout_sec=max(0.1, deadline - time.monotonic())):
            raise NodeClientError(f"{self.base}/ask did not appear within {timeout_s:g} s")
        self.wait_for_status(lambda s: s.lifecycle_state == "active", max(0.1, deadline - time.monotonic()))

    def latest_status(self) -> MemoryStatus | None:
        with self._lock:
            return self.statuses[-1] if self.statuses else None

    def status_age_s(self) -> float | None:
        """Seconds since the latest status message arrived (None: none yet). A node publishes
        every status_period_s, so an age well past that means it, or this client, has stalled."""
        with self._lock:
            received_at = self._status_received_at
        return None if received_at is None else time.monotonic() - received_at

    def wait_for_status(self, condition, timeout_s: float = 30.0) -> MemoryStatus:
        """The first status message (from now on, or the latest one) for which condition(status) holds."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.latest_status()
            if status is not None and condition(status):
                return status
            time.sleep(0.05)
        raise NodeClientError(f"no matching {self.base}/memory_status within {timeout_s:g} s; "
                              f"last: {self.latest_status()}")

    def _call(self, client, request, timeout_s: float):
        if not client.wait_for_service(timeout_sec=timeout_s):
            raise NodeClientError(f"{client.srv_name} is not available")
        future = client.call_async(request)
        done = threading.Event()
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(timeout_s):
            client.remove_pending_request(future)
            raise NodeClientError(f"{client.srv_name} gave no response within {timeout_s:g} s")
        return future.result()

    # ------------------------------------------------------------------ services and action
    def query(self, question: str, options: list[str] | None = None, answer_type: int = 0,
              timeout_s: float = 0.0, call_timeout_s: float = 120.0):
        """SpatialQuery.Response of ~/query (error_code tells success)."""
        request = SpatialQuery.Request(question=question, options=list(options or []), answer_type=answer_type,
                                       timeout_s=float(timeout_s))
        return self._call(self._query, request, call_timeout_s)

    def reset_memory(self, timeout_s: float = 30.0):
        return self._call(self._reset, Trigger.Request(), timeout_s)

    def save_memory(self, timeout_s: float = 60.0):
        return self._call(self._save, Trigger.Request(), timeout_s)

    def change_state(self, transition_id: int, timeout_s: float = 60.0) -> bool:
        """Lifecycle transition (lifecycle_msgs/Transition.TRANSITION_*); True when it succeeded."""
        request = ChangeState.Request(transition=Transition(id=transition_id))
        return self._call(self._change_state, request, timeout_s).success

    def ask(self, question: str, options: list[str] | None = None, answer_type: int = 0, timeout_s: float = 0.0,
            cancel_at_stage: str | None = None, call_timeout_s: float = 120.0) -> AskOutcome:
        """Send an ~/ask goal and wait for its result; with cancel_at_stage, request a cancel as
        soon as feedback reports that stage."""
        goal = Ask.Goal(question=question, options=list(options or []), answer_type=answer_type,
                        timeout_s=float(timeout_s))
        feedback: list = []
        handle_box: list = []
        cancel_sent = threading.Event()

        def on_feedback(message) -> None:
            feedback.append(message.feedback)
            if cancel_at_stage and message.feedback.stage == cancel_at_stage and not cancel_sent.is_set():
                cancel_sent.set()
                handle_box[0].cancel_goal_async()

        if not self._ask.wait_for_server(timeout_sec=call_timeout_s):
            raise NodeClientError(f"{self.base}/ask is not available")
        accepted = threading.Event()
        goal_future = self._ask.send_goal_async(goal, feedback_callback=on_feedback)
        goal_future.add_done_callback(lambda f: (handle_box.append(f.result()), accepted.set()))
        if not accepted.wait(call_timeout_s):
            raise NodeClientError(f"{self.base}/ask did not accept the goal within {call_timeout_s:g} s")
        handle = handle_box[0]
        if not handle.accepted:
            raise NodeClientError(f"{self.base}/ask rejected the goal")
        finished = threading.Event()
        result_future = handle.get_result_async()
        result_future.add_done_callback(lambda _f: finished.set())
        if not finished.wait(call_timeout_s):
            raise NodeClientError(f"{self.base}/ask gave no result within {call_timeout_s:g} s")
        wrapped = result_future.result()
        return AskOutcome(wrapped.status, wrapped.result, feedback)


class CameraPublisher:
    """Publishes one camera's images (raw rgb8 or JPEG), camera info and optical-frame poses."""

    def __init__(self, node, prefix: str = "camera", compressed: bool = False, pose_topic: str | None = None,
                 frame_id: str = "camera_optical_frame", world_frame: str = "map", reliable: bool = True,
                 depth: int = 100):
        # depth: reliable samples kept until acknowledged; a burst longer than this loses the oldest
        qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
        self.compressed, self.frame_id, self.world_frame = compressed, frame_id, world_frame
        image_type, topic = (CompressedImage, f"{prefix}/image_raw/compressed") if compressed else (Image, f"{prefix}/image_raw")
        self.image = node.create_publisher(image_type, topic, qos)
        self.info = node.create_publisher(CameraInfo, f"{prefix}/camera_info", qos)
        self.pose = node.create_publisher(PoseStamped, pose_topic, qos) if pose_topic else None

    def wait_for_subscribers(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        publishers = [p for p in (self.image, self.info, self.pose) if p is not None]
        while any(p.get_subscription_count() == 0 for p in publishers):
            if time.monotonic() > deadline:
                missing = [p.topic_name for p in publishers if p.get_subscription_count() == 0]
                raise NodeClientError(f"no subscriber on {missing} within {timeout_s:g} s")
            time.sleep(0.05)

    def publish(self, rgb: np.ndarray, stamp_ns: int, intrinsics: CameraIntrinsics | None = None,
                pose: np.ndarray | None = None) -> None:
        """Camera info and pose first, so they are the latest ones when the image arrives."""
        stamp = ns_to_stamp(stamp_ns)
        if intrinsics is not None:
            self.info.publish(camera_info(intrinsics, stamp, self.frame_id))
        if pose is not None and self.pose is not None:
            msg = PoseStamped()
            msg.header.stamp, msg.header.frame_id = stamp, self.world_frame
            msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in pose[:3, 3])
            o = msg.pose.orientation
            o.x, o.y, o.z, o.w = rotation_to_quaternion(pose[:3, :3])
            self.pose.publish(msg)
        if self.compressed:
            import cv2
            ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90])
            msg = CompressedImage(format="rgb8; jpeg compressed bgr8", data=jpeg.tobytes())
        else:
            msg = fill_image(Image(), rgb, "rgb8")
        msg.header.stamp, msg.header.frame_id = stamp, self.frame_id
        self.image.publish(msg)


def camera_info(intrinsics: CameraIntrinsics, stamp, frame_id: str) -> CameraInfo:
    """Pinhole CameraInfo without distortion (what a rectified image topic's info looks like)."""
    K = intrinsics
    msg = CameraInfo(width=K.width, height=K.height, distortion_model="plumb_bob", d=[0.0] * 5,
                     k=[K.fx, 0.0, K.cx, 0.0, K.fy, K.cy, 0.0, 0.0, 1.0],
                     r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                     p=[K.fx, 0.0, K.cx, 0.0, 0.0, K.fy, K.cy, 0.0, 0.0, 0.0, 1.0, 0.0])
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    return msg


def stamps_of(msgs) -> list[int]:
    """Nanosecond stamps of builtin_interfaces/Time values."""
    return [stamp_to_ns(s) for s in msgs]
