"""vlm2_node: the spatial-memory engine as a ROS 2 lifecycle (managed) node.

Lifecycle: configure validates the parameters and loads the model (and the memory snapshot when
there is a compatible one); activate subscribes to the cameras; deactivate unsubscribes (the
memory stays); cleanup snapshots and frees the model; shutdown snapshots.

Threads: image callbacks only convert and enqueue (bounded latest-frames queue, drops counted);
one worker thread drains the queue into the engine; queries wait in their own reentrant callback
group while a query pool runs them, so neither stalls image callbacks on the multi-threaded
executor.

Clocks: rate caps, snapshot periods, status periods, ingest rates and answer latencies use the
node clock (simulated time under use_sim_time). Two waits use the wall clock on purpose: query
timeouts (a caller must not wait forever because a bag is paused) and the no-image warning (it is
most needed when nothing, /clock included, arrives).
"""
from __future__ import annotations

import collections
import faulthandler
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rclpy
import rclpy.logging
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Pose, PoseStamped
from nav_msgs.msg import Odometry
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from rcl_interfaces.msg import SetParametersResult
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

from vlm2_ros.atomic_io import write_json_atomic
from vlm2_ros.camera import CameraIntrinsics
from vlm2_ros.engine.engine import IngestError, SpatialMemoryEngine
from vlm2_ros.engine.snapshot import INDEX_NAME, SnapshotError
from vlm2_ros.ros import queries
from vlm2_ros.ros.executor import PoolExecutor
from vlm2_ros.ros.image_conversion import (LINK_TO_OPTICAL, camera_info_distortion,
                                           camera_info_to_intrinsics, compressed_to_rgb, image_to_rgb,
                                           ns_to_stamp, pose_to_matrix, stamp_to_ns)
from vlm2_ros.ros.ingest_queue import IngestQueue
from vlm2_ros.ros.parameters import (CameraSettings, NodeSettings, ParameterError, declare_parameters,
                                     declared_values, settings_from_values)
from vlm2_ros.action import Ask
from vlm2_ros.msg import MemoryStatus
from vlm2_ros.srv import SpatialQuery

NODE_NAME = "vlm2_node"
FRAME_IDS_FILE = "vlm2_node_frame_ids.json"   # beside the engine's snapshot: evidence camera names
RATE_WINDOW_NS = 5_000_000_000                # ingest_rate_hz is measured over this node-clock window
_LOG_THROTTLE_S = 5.0


@dataclass
class Frame:
    """An image waiting in the ingest queue, already resized to the model's input (in the image
    callback, so the ingest worker only runs the model), with the camera pose and intrinsics
    that go with it."""
    pixels: torch.Tensor      # [3,H,W] float32, SpatialMemoryEngine.preprocess
    stamp_ns: int
    frame_id: str
    camera: str
    pose: np.ndarray | None
    intrinsics: CameraIntrinsics | None   # of the image as received (before the resize)


@dataclass
class Counters:
    received: int = 0
    ingested: int = 0
    dropped_rate_limit: int = 0
    dropped_queue_full: int = 0
    dropped_bad_image: int = 0
    dropped_rejected: int = 0
    queries_answered: int = 0
    queries_failed: int = 0
    # not frames: reported in /diagnostics
    camera_infos_rejected: int = 0
    poses_rejected: int = 0
    snapshots_written: int = 0
    snapshot_failures: int = 0


@dataclass
class CameraState:
    """What a camera's subscriptions last delivered; written by callbacks, read when enqueuing."""
    settings: CameraSettings
    intrinsics: CameraIntrinsics | None = None
    pose: np.ndarray | None = None
    pose_frame_id: str = ""
    images_since_activation: int = 0
    warned_silent: bool = False
    warned_distortion: bool = False
    subscriptions: list = field(default_factory=list)


class Vlm2Node(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        declare_parameters(self)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._settings: NodeSettings | None = None
        self._state = "unconfigured"
        self._configure_error = ""
        self._engine: SpatialMemoryEngine | None = None
        self._queue: IngestQueue[Frame] | None = None
        self._worker: threading.Thread | None = None
        self._query_pool: queries.QueryPool | None = None
        self._cameras: dict[str, CameraState] = {}
        self._counters = Counters()
        self._lock = threading.Lock()                 # counters, frame ids, rate state
        self._save_lock = threading.Lock()            # one snapshot write at a time
        self._frame_ids: dict[int, str] = {}          # stamp_ns -> header frame_id of ingested frames
        self._ingest_times: collections.deque[int] = collections.deque()
        self._last_enqueued_ns: int | None = None     # node clock, for the rate cap
        self._last_frame = (None, "")                 # (stamp_ns, frame_id) of the newest ingested frame
        self._memory_version = 0                      # bumped on every memory change
        self._saved_version = 0
        self._last_snapshot_ns = 0
        self._last_snapshot_error = ""                # of the latest snapshot attempt; "" when it worked
        self._jump_dropping = False
        self._activated_at = 0.0
        self._snapshot_timer = None

        self._sensor_group = MutuallyExclusiveCallbackGroup()
        self._query_group = ReentrantCallbackGroup()
        self._memory_group = MutuallyExclusiveCallbackGroup()
        self._monitor_group = MutuallyExclusiveCallbackGroup()

        self._status_pub = self.create_publisher(MemoryStatus, "~/memory_status", 10)
        self._answers_pub = self.create_publisher(String, "~/answers", 10)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_service(SpatialQuery, "~/query", self._on_query, callback_group=self._query_group)
        self.create_service(Trigger, "~/reset_memory", self._on_reset, callback_group=self._memory_group)
        self.create_service(Trigger, "~/save_memory", self._on_save, callback_group=self._memory_group)
        self._ask_server = ActionServer(
            self, Ask, "~/ask", execute_callback=self._on_ask, callback_group=self._query_group,
            goal_callback=lambda _goal: GoalResponse.ACCEPT,
            cancel_callback=lambda _goal: CancelResponse.ACCEPT)
        self.create_timer(self.get_parameter("status_period_s").value, self._publish_status,
                          callback_group=self._monitor_group)
        self.create_timer(1.0, self._check_silent_cameras, callback_group=self._monitor_group,
                          clock=Clock(clock_type=ClockType.STEADY_TIME))

    # ------------------------------------------------------------------ lifecycle
    @property
    def executor_threads(self) -> int:
        """Threads the executor needs: one per running or waiting query, plus sensors, memory
        services, monitoring timers, lifecycle services and a spare for answering BUSY."""
        return self.get_parameter("query.max_concurrent").value + self.get_parameter("query.max_waiting").value + 5

    def on_configure(self, state) -> TransitionCallbackReturn:
        try:
            settings = settings_from_values(declared_values(self))
        except ParameterError as exc:
            return self._configure_failed(str(exc))
        torch.set_num_threads(settings.threads)
        try:
            engine = SpatialMemoryEngine.from_preset(
                settings.model_preset, checkpoint_dir=settings.checkpoint_dir,
                memory_mode=settings.memory_mode, working_size=settings.working_size,
                episodic_size=settings.episodic_size, geometry_window=settings.geometry_window,
                episodic_replacement=settings.episodic_replacement, device=settings.device, dtype=settings.dtype,
                backend=settings.backend, onnx_dir=settings.onnx_dir, onnx_provider=settings.onnx_provider,
                onnx_fallback=settings.onnx_provider_fallback,
                max_new_tokens=settings.max_new_tokens, number_samples=settings.number_samples,
                max_question_chars=settings.max_question_length)
        except Exception as exc:  # CheckpointError, ValueError (device, dtype), OSError, torch errors
            source = settings.checkpoint_dir or "its shipped or default weights"
            return self._configure_failed(
                f"cannot load model preset {settings.model_preset!r} from {source}: {exc}")
        self._settings, self._engine = settings, engine
        self._counters = Counters()
        self._cameras = {c.name: CameraState(c) for c in settings.cameras}
        self._frame_ids, self._last_frame = {}, (None, "")
        self._ingest_times.clear()
        self._last_enqueued_ns = None
        self._memory_version = self._saved_version = 0
        self._load_snapshot()
        self._queue = IngestQueue(settings.queue_size)
        self._worker = threading.Thread(target=self._ingest_loop, args=(self._queue,), name="vlm2-ingest",
                                        daemon=True)
        self._worker.start()
        self._query_pool = queries.QueryPool(engine, settings.max_concurrent_queries, settings.max_waiting_queries)
        if settings.snapshot_dir and settings.snapshot_period_s > 0:
            self._snapshot_timer = self.create_timer(
                settings.snapshot_period_s, lambda: self._save_snapshot("periodic", only_if_changed=True),
                callback_group=self._memory_group)
        status = engine.status()
        self.get_logger().info(
            f"configured: preset {status.preset} ({status.weights}) on {status.device}/{status.dtype} "
            f"({settings.threads} torch threads, {status.backend}), "
            f"memory {status.memory_mode}, cameras {[c.name for c in settings.cameras]}")
        self._configure_error = ""
        self._state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def _configure_failed(self, reason: str) -> TransitionCallbackReturn:
        self._configure_error = reason
        self.get_logger().error(f"configure failed: {reason}")
        return TransitionCallbackReturn.FAILURE

    def on_activate(self, state) -> TransitionCallbackReturn:
        settings = self._settings
        qos = QoSProfile(history=qos_profile_sensor_data.history, depth=settings.qos_depth,
                         reliability=ReliabilityPolicy.BEST_EFFORT if settings.qos_reliability == "best_effort"
                         else ReliabilityPolicy.RELIABLE,
                         durability=qos_profile_sensor_data.durability)
        try:
            for camera in self._cameras.values():
                self._subscribe(camera, qos)
        except Exception as exc:  # e.g. a topic name that only fails once expanded
            self._unsubscribe()
            self.get_logger().error(f"activate failed: cannot subscribe: {exc}")
            return TransitionCallbackReturn.FAILURE
        self._activated_at = time.monotonic()
        self._state = "active"
        topics = {c.settings.name: c.subscriptions[0].topic_name for c in self._cameras.values()}
        self.get_logger().info(f"active: ingesting {topics} ({settings.qos_reliability}, depth {settings.qos_depth})")
        return super().on_activate(state)

    def _subscribe(self, camera: CameraState, qos: QoSProfile) -> None:
        c, name = camera.settings, camera.settings.name
        camera.images_since_activation, camera.warned_silent = 0, False
        if c.compressed_topic:
            camera.subscriptions.append(self.create_subscription(
                CompressedImage, c.compressed_topic, lambda m: self._on_image(name, m, compressed=True), qos,
                callback_group=self._sensor_group))
        else:
            camera.subscriptions.append(self.create_subscription(
                Image, c.image_topic, lambda m: self._on_image(name, m, compressed=False), qos,
                callback_group=self._sensor_group))
        if c.camera_info_topic:
            camera.subscriptions.append(self.create_subscription(
                CameraInfo, c.camera_info_topic, lambda m: self._on_camera_info(name, m), qos,
                callback_group=self._sensor_group))
        if c.pose_topic:
            pose_type = Odometry if c.pose_type == "odometry" else PoseStamped
            camera.subscriptions.append(self.create_subscription(
                pose_type, c.pose_topic, lambda m: self._on_pose(name, m), qos,
                callback_group=self._sensor_group))

    def _unsubscribe(self) -> None:
        for camera in self._cameras.values():
            for subscription in camera.subscriptions:
                self.destroy_subscription(subscription)
            camera.subscriptions.clear()

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self._unsubscribe()
        self._state = "inactive"
        self.get_logger().info("inactive: camera subscriptions removed; memory and services kept")
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._release("cleanup")
        self._state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self._release("shutdown")
        self._state = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state) -> TransitionCallbackReturn:
        self.get_logger().error(f"error in a transition from {state.label}: releasing the model")
        self._release("error")
        self._state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def release(self) -> None:
        """Snapshot and free everything; for the process exit path, where the ROS context may
        already be shut down (no lifecycle transition possible)."""
        self._release("shutdown")
        self._state = "finalized"

    def _release(self, reason: str) -> None:
        self._unsubscribe()
        if self._engine is None:
            return
        if self._snapshot_timer is not None:
            self.destroy_timer(self._snapshot_timer)
            self._snapshot_timer = None
        self._queue.clear()
        self._queue.close()
        self._worker.join(timeout=30.0)
        self._query_pool.shutdown()
        self._save_snapshot(reason, only_if_changed=False)
        engine, self._engine = self._engine, None
        if engine.device.type == "cuda":
            del engine
            torch.cuda.empty_cache()
        self.get_logger().info(f"{reason}: model released")

    # ------------------------------------------------------------------ parameters at runtime
    def _on_set_parameters(self, params) -> SetParametersResult:
        if self._settings is None:   # declaration time, or not configured: configure validates
            return SetParametersResult(successful=True)
        values = declared_values(self)
        values.update({p.name: p.value for p in params})
        try:
            settings = settings_from_values(values)
        except ParameterError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self._settings = settings
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ camera callbacks
    def _on_image(self, camera_name: str, msg, compressed: bool) -> None:
        camera, settings = self._cameras[camera_name], self._settings
        now = self.get_clock().now().nanoseconds
        with self._lock:
            self._counters.received += 1
            camera.images_since_activation += 1
            last = self._last_enqueued_ns
            if settings.ingest_rate_hz > 0 and last is not None and 0 <= now - last < 1e9 / settings.ingest_rate_hz:
                self._counters.dropped_rate_limit += 1
                return
        try:
            rgb = compressed_to_rgb(msg) if compressed else image_to_rgb(msg)
            stamp_ns = stamp_to_ns(msg.header.stamp)
        except Exception as exc:  # ConversionError, or a bug: one message must never stop the node
            with self._lock:
                self._counters.dropped_bad_image += 1
            self.get_logger().error(f"camera {camera_name}: dropped a bad image: {exc}",
                                    throttle_duration_sec=_LOG_THROTTLE_S)
            return
        # A frame from the future (or before 1970) would make every later frame look like a time jump
        # back (memory reset or frames dropped). A node clock of 0 (sim time before /clock) is no reference.
        ahead_s = (stamp_ns - now) / 1e9
        if stamp_ns < 0 or (now and settings.max_stamp_ahead_s and ahead_s > settings.max_stamp_ahead_s):
            with self._lock:
                self._counters.dropped_rejected += 1
            self.get_logger().error(
                f"camera {camera_name}: dropped a frame stamped {ahead_s:.3f} s ahead of the node clock (stamps "
                f"must be >= 0 and at most ingest.max_stamp_ahead_s = {settings.max_stamp_ahead_s:g} s ahead): "
                f"bad stamp, or clocks not synchronised", throttle_duration_sec=_LOG_THROTTLE_S)
            return
        engine = self._engine
        if engine is None:   # released while this callback ran
            return
        try:
            pixels = engine.preprocess(rgb, camera.intrinsics)
        except IngestError as exc:
            self._reject_frame(camera_name, exc)
            return
        frame = Frame(pixels, stamp_ns, msg.header.frame_id, camera_name, camera.pose, camera.intrinsics)
        displaced = self._queue.put(frame)
        with self._lock:
            self._last_enqueued_ns = now
            if displaced is not None:
                self._counters.dropped_queue_full += 1

    def _on_camera_info(self, camera_name: str, msg) -> None:
        camera = self._cameras[camera_name]
        try:
            camera.intrinsics = camera_info_to_intrinsics(msg)
        except Exception as exc:  # ConversionError, or a bug: one message must never stop the node
            camera.intrinsics = None
            with self._lock:
                self._counters.camera_infos_rejected += 1
            self.get_logger().warning(f"camera {camera_name}: ignoring camera info: {exc}",
                                      throttle_duration_sec=_LOG_THROTTLE_S)
            return
        if not camera.warned_distortion and camera_info_distortion(msg) is not None:
            camera.warned_distortion = True
            self.get_logger().warning(
                f"camera {camera_name}: camera info declares lens distortion ({msg.distortion_model}); the "
                f"model assumes undistorted images: subscribe to a rectified image topic if there is one")

    def _on_pose(self, camera_name: str, msg) -> None:
        camera = self._cameras[camera_name]
        try:
            pose = pose_to_matrix(msg)
        except Exception as exc:  # ConversionError, or a bug: one message must never stop the node
            camera.pose = None
            with self._lock:
                self._counters.poses_rejected += 1
            self.get_logger().warning(f"camera {camera_name}: ignoring pose: {exc}",
                                      throttle_duration_sec=_LOG_THROTTLE_S)
            return
        camera.pose = pose @ LINK_TO_OPTICAL if camera.settings.pose_frame == "link" else pose
        camera.pose_frame_id = msg.header.frame_id

    # ------------------------------------------------------------------ ingestion (worker thread)
    def _ingest_loop(self, queue: IngestQueue[Frame]) -> None:
        while (frame := queue.get()) is not None:
            try:
                self._ingest(frame)
            except Exception as exc:  # never let the worker die: the node would silently stop ingesting
                with self._lock:
                    self._counters.dropped_rejected += 1
                self.get_logger().error(f"ingest failed unexpectedly: {exc!r}", throttle_duration_sec=_LOG_THROTTLE_S)

    def _ingest(self, frame: Frame) -> None:
        engine, settings = self._engine, self._settings
        last = engine.status().last_stamp_ns
        if last is not None and frame.stamp_ns < last:
            behind_s = (last - frame.stamp_ns) / 1e9
            if behind_s <= settings.time_jump_threshold_s:
                with self._lock:
                    self._counters.dropped_rejected += 1
                self.get_logger().debug(f"dropped a frame {behind_s:.3f} s older than the last ingested one")
                return
            if settings.time_jump_policy == "reset":
                self.get_logger().warning(
                    f"time jumped back {behind_s:.3f} s (stamp {frame.stamp_ns} ns after {last} ns: bag "
                    f"restarted?): memory reset (ingest.time_jump_policy: reset)")
                self._reset_memory()
            else:
                if not self._jump_dropping:
                    self._jump_dropping = True
                    self.get_logger().warning(
                        f"time jumped back {behind_s:.3f} s (stamp {frame.stamp_ns} ns after {last} ns: bag "
                        f"restarted?): memory kept, frames dropped until stamps pass {last} ns "
                        f"(ingest.time_jump_policy: keep)")
                with self._lock:
                    self._counters.dropped_rejected += 1
                return
        try:
            engine.ingest_pixels(frame.pixels[None], [frame.stamp_ns], [frame.pose], [frame.intrinsics])
        except IngestError as exc:
            self._reject_frame(frame.camera, exc)
            return
        self._jump_dropping = False
        now = self.get_clock().now().nanoseconds
        with self._lock:
            self._counters.ingested += 1
            self._memory_version += 1
            self._frame_ids[frame.stamp_ns] = frame.frame_id
            self._last_frame = (frame.stamp_ns, frame.frame_id)
            self._ingest_times.append(now)
            while self._ingest_times and not 0 <= now - self._ingest_times[0] <= RATE_WINDOW_NS:
                self._ingest_times.popleft()
            if len(self._frame_ids) > 2 * self._memory_capacity() + 64:
                self._prune_frame_ids()

    def _reject_frame(self, camera_name: str, exc: IngestError) -> None:
        """Count and report a frame the engine refused (in the callback's resize or at ingest)."""
        with self._lock:
            self._counters.dropped_rejected += 1
        self.get_logger().warning(f"camera {camera_name}: frame rejected: {exc}", throttle_duration_sec=_LOG_THROTTLE_S)

    def _memory_capacity(self) -> int:
        status = self._engine.status()
        return status.working_capacity + status.episodic_capacity

    def _memory_stamps(self) -> set[int]:
        memory = self._engine.stream.memory
        return {int(s) for part in (memory.working, memory.episodic) for s in part.provenance.stamp_ns.flatten().tolist()}

    def _prune_frame_ids(self) -> None:
        """Keep frame ids only for frames still in memory (caller holds self._lock)."""
        keep = self._memory_stamps()
        self._frame_ids = {s: f for s, f in self._frame_ids.items() if s in keep}

    def _frame_id_of(self, stamp_ns: int) -> str:
        with self._lock:
            return self._frame_ids.get(stamp_ns, "")

    def _reset_memory(self) -> None:
        self._engine.reset()
        with self._lock:
            self._frame_ids.clear()
            self._last_frame = (None, "")
            self._ingest_times.clear()
            self._memory_version += 1

    # ------------------------------------------------------------------ snapshots
    def _load_snapshot(self) -> None:
        settings = self._settings
        if not settings.snapshot_dir:
            return
        directory = Path(settings.snapshot_dir)
        if settings.start_fresh:
            self.get_logger().info(f"snapshot.start_fresh: not loading {directory}; starting with empty memory")
            return
        if not (directory / INDEX_NAME).is_file():
            self.get_logger().info(f"no snapshot in {directory}: starting with empty memory")
            return
        try:
            self._engine.load(directory)
        except SnapshotError as exc:
            self.get_logger().warning(f"ignoring snapshot: {exc}; starting with empty memory "
                                      f"(the next snapshot replaces it)")
            return
        try:
            stored = json.loads((directory / FRAME_IDS_FILE).read_text())
            self._frame_ids = {int(stamp): str(frame_id) for stamp, frame_id in stored.items()}
        except (OSError, ValueError, AttributeError):
            self._frame_ids = {}   # only the cameras' names in evidence are lost
        status = self._engine.status()
        self._last_frame = (status.last_stamp_ns, self._frame_ids.get(status.last_stamp_ns, ""))
        self.get_logger().info(
            f"memory restored from {directory}: {status.frames_ingested} frames, working "
            f"{status.working_entries}/{status.working_capacity}, episodic "
            f"{status.episodic_entries}/{status.episodic_capacity}")

    def _save_snapshot(self, reason: str, only_if_changed: bool) -> tuple[bool, str]:
        directory = self._settings.snapshot_dir if self._settings else None
        if self._engine is None:
            return False, "no model loaded: configure the node first"
        if not directory:
            return False, "snapshot.dir is not set"
        with self._save_lock:
            version = self._memory_version
            if only_if_changed and version == self._saved_version:
                return True, "memory unchanged since the last snapshot"
            try:
                index = self._engine.save(directory)
                # what was written, not what is in memory now: the worker may have ingested since
                frames = json.loads(index.read_text())["metadata"]["frames"]
                with self._lock:
                    self._prune_frame_ids()
                    frame_ids = {str(s): f for s, f in self._frame_ids.items()}
                write_json_atomic(Path(directory) / FRAME_IDS_FILE, frame_ids)
                for stale in Path(directory).glob(f".{FRAME_IDS_FILE}.*.tmp"):   # left by a crash mid-write
                    stale.unlink(missing_ok=True)
            except Exception as exc:  # disk full, permissions: log, count, keep running
                with self._lock:
                    self._counters.snapshot_failures += 1
                self._last_snapshot_error = f"{reason} snapshot to {directory} failed: {exc}"
                message = f"{self._last_snapshot_error} (the previous snapshot, if any, is kept)"
                if reason == "periodic":   # repeats every snapshot.period_s while the disk stays full
                    self.get_logger().error(message, throttle_duration_sec=_LOG_THROTTLE_S)
                else:
                    self.get_logger().error(message)
                return False, f"snapshot failed: {exc}"
            with self._lock:
                self._counters.snapshots_written += 1
            self._last_snapshot_error = ""
            self._saved_version = version
            self._last_snapshot_ns = self.get_clock().now().nanoseconds
        self.get_logger().info(f"{reason} snapshot: {frames} frames written to {directory}")
        return True, f"memory ({frames} frames) saved to {directory}"

    # ------------------------------------------------------------------ services and action
    def _on_reset(self, request, response):
        if self._engine is None:
            response.success, response.message = False, f"node is {self._state}: nothing to reset"
            return response
        self._reset_memory()
        self.get_logger().info("memory reset (~/reset_memory)")
        response.success, response.message = True, "memory reset"
        return response

    def _on_save(self, request, response):
        response.success, response.message = self._save_snapshot("requested", only_if_changed=False)
        return response

    def _on_query(self, request, response):
        return self._answer(request, response)

    def _on_ask(self, goal_handle):
        accepted = time.monotonic()

        def feedback(stage: str) -> None:
            goal_handle.publish_feedback(Ask.Feedback(
                stage=stage, progress=queries.STAGE_PROGRESS[stage], elapsed_s=time.monotonic() - accepted))

        result = self._answer(goal_handle.request, Ask.Result(), feedback=feedback,
                              cancel_requested=lambda: goal_handle.is_cancel_requested)
        if result.error_code == result.CANCELED and goal_handle.is_cancel_requested:
            goal_handle.canceled()
        elif result.error_code == result.OK:
            goal_handle.succeed()
        else:
            goal_handle.abort()
        return result

    def _answer(self, request, result, **wait_hooks):
        """Answer a SpatialQuery request or Ask goal into `result`; never raises."""
        started = self.get_clock().now()

        def latency() -> float:
            return (self.get_clock().now() - started).nanoseconds / 1e9

        try:
            settings, pool = self._settings, self._query_pool
            if self._state != "active":
                raise queries.QueryFailure("NOT_READY", f"node is {self._state}: queries are answered when active")
            question = queries.prepare_question(
                request.question, list(request.options), request.answer_type, request.timeout_s,
                max_length=settings.max_question_length, default_timeout_s=settings.query_timeout_s)
            outcome = queries.run_query(pool, question, **wait_hooks)
        except queries.QueryFailure as failure:
            self._count_query(ok=False)
            self.get_logger().info(f"query failed ({failure.code}): {failure}")
            return queries.fill_failure(result, failure, latency())
        except Exception as exc:  # a bug or a model failure: report it, keep serving
            self._count_query(ok=False)
            self.get_logger().error(f"query failed: {exc!r}")
            return queries.fill_failure(result, queries.QueryFailure("INTERNAL_ERROR", repr(exc)), latency())
        elapsed = latency()
        self._count_query(ok=True)
        queries.fill_result(result, outcome, elapsed, self._frame_id_of, Pose)
        self._answers_pub.publish(String(data=json.dumps(queries.answer_record(outcome, elapsed, self._frame_id_of))))
        return result

    def _count_query(self, ok: bool) -> None:
        with self._lock:
            if ok:
                self._counters.queries_answered += 1
            else:
                self._counters.queries_failed += 1

    # ------------------------------------------------------------------ status and diagnostics
    def memory_status(self) -> MemoryStatus:
        msg = MemoryStatus()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.lifecycle_state = self._state
        engine, queue = self._engine, self._queue
        if engine is not None:
            s = engine.status()
            msg.model_preset, msg.weights, msg.device, msg.dtype = s.preset, s.weights, s.device, s.dtype
            msg.memory_mode, msg.backend = s.memory_mode, s.backend
            msg.working_memory_size, msg.working_memory_capacity = s.working_entries, s.working_capacity
            msg.episodic_memory_size, msg.episodic_memory_capacity = s.episodic_entries, s.episodic_capacity
            msg.episodic_replacements = s.episodic_replacements
            msg.mean_ingest_ms = s.mean_ingest_ms
        if queue is not None:
            msg.queue_depth, msg.queue_capacity = len(queue), queue.capacity
        if self._query_pool is not None:
            msg.queries_in_flight, msg.queries_capacity = self._query_pool.in_flight, self._query_pool.capacity
        msg.header.frame_id = next((c.pose_frame_id for c in self._cameras.values() if c.pose_frame_id), "")
        with self._lock:
            c = self._counters
            msg.frames_received, msg.frames_ingested = c.received, c.ingested
            msg.frames_dropped_rate_limit, msg.frames_dropped_queue_full = c.dropped_rate_limit, c.dropped_queue_full
            msg.frames_dropped_bad_image, msg.frames_dropped_rejected = c.dropped_bad_image, c.dropped_rejected
            msg.frames_dropped = (c.dropped_rate_limit + c.dropped_queue_full + c.dropped_bad_image
                                  + c.dropped_rejected)
            msg.queries_answered, msg.queries_failed = c.queries_answered, c.queries_failed
            times = list(self._ingest_times)
            last_stamp, last_frame_id = self._last_frame
        if len(times) >= 2 and times[-1] > times[0]:
            msg.ingest_rate_hz = (len(times) - 1) / ((times[-1] - times[0]) / 1e9)
        if last_stamp is not None:
            msg.last_frame_stamp, msg.last_frame_id = ns_to_stamp(last_stamp), last_frame_id
            if times:
                msg.last_ingest_stamp = ns_to_stamp(times[-1])
        if self._last_snapshot_ns:
            msg.last_snapshot_stamp = ns_to_stamp(self._last_snapshot_ns)
        return msg

    def _publish_status(self) -> None:
        status = self.memory_status()
        self._status_pub.publish(status)
        self._diagnostics_pub.publish(self._diagnostics(status))

    def _diagnostics(self, status: MemoryStatus) -> DiagnosticArray:
        level, message = DiagnosticStatus.OK, "ingesting"
        if self._state != "active":
            level = DiagnosticStatus.WARN
            message = f"{self._state}" + (f": configure failed: {self._configure_error}" if self._configure_error else "")
        else:
            silent = [c.settings.name for c in self._cameras.values() if c.warned_silent]
            if silent:
                level, message = DiagnosticStatus.WARN, f"no images from camera(s) {', '.join(silent)}"
            elif self._last_snapshot_error:
                level, message = DiagnosticStatus.WARN, self._last_snapshot_error
        fields = {name: getattr(status, name) for name in (
            "frames_received", "frames_ingested", "frames_dropped", "frames_dropped_rate_limit",
            "frames_dropped_queue_full", "frames_dropped_bad_image", "frames_dropped_rejected",
            "queue_depth", "working_memory_size", "episodic_memory_size", "queries_answered",
            "queries_failed", "queries_in_flight", "model_preset", "device", "backend")}
        fields["ingest_rate_hz"] = f"{status.ingest_rate_hz:.2f}"
        with self._lock:
            c = self._counters
            fields.update(camera_infos_rejected=c.camera_infos_rejected, poses_rejected=c.poses_rejected,
                          snapshots_written=c.snapshots_written, snapshot_failures=c.snapshot_failures)
        array = DiagnosticArray()
        array.header.stamp = status.header.stamp
        array.status = [DiagnosticStatus(level=level, name=f"{self.get_fully_qualified_name()}: spatial memory",
                                         message=message, hardware_id="",
                                         values=[KeyValue(key=k, value=str(v)) for k, v in fields.items()])]
        return array

    def _check_silent_cameras(self) -> None:
        settings = self._settings
        if self._state != "active" or not settings.no_image_warning_s:
            return
        if time.monotonic() - self._activated_at < settings.no_image_warning_s:
            return
        for camera in self._cameras.values():
            if camera.images_since_activation or camera.warned_silent or not camera.subscriptions:
                continue
            camera.warned_silent = True
            self.get_logger().warning(
                f"camera {camera.settings.name}: no image {settings.no_image_warning_s:g} s after activation: "
                f"{self.silent_camera_cause(camera)}")

    def silent_camera_cause(self, camera: CameraState) -> str:
        """The likely reason a camera subscription has received nothing, from the ROS graph."""
        subscription = camera.subscriptions[0]
        topic = subscription.topic_name
        expected = "sensor_msgs/msg/CompressedImage" if camera.settings.compressed_topic else "sensor_msgs/msg/Image"
        publishers = self.get_publishers_info_by_topic(topic)
        if not publishers:
            similar = [name for name, types in self.get_topic_names_and_types() if expected in types and name != topic]
            return (f"no publisher on {topic}: wrong topic name or remapping, or the camera driver is not "
                    f"running" + (f" (topics of type {expected}: {', '.join(similar)})" if similar else ""))
        wrong_type = sorted({p.topic_type for p in publishers if p.topic_type != expected})
        if wrong_type:
            return f"the publisher(s) on {topic} publish {', '.join(wrong_type)}, not {expected}"
        best_effort = [p for p in publishers if p.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT]
        if self._settings.qos_reliability == "reliable" and best_effort:
            return (f"QoS reliability mismatch: {len(best_effort)} publisher(s) on {topic} offer best_effort "
                    f"but this node requests reliable: set ingest.qos_reliability to best_effort")
        return (f"{len(publishers)} publisher(s) on {topic} with compatible QoS, but nothing arrived: they "
                f"may not be publishing; large images over best_effort QoS with Fast DDS need "
                f"FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA on both sides")

    # ------------------------------------------------------------------ standalone start
    def start(self) -> bool:
        """configure + activate (autostart); False when either fails (the reason is logged)."""
        return (self.trigger_configure() == TransitionCallbackReturn.SUCCESS
                and self.trigger_activate() == TransitionCallbackReturn.SUCCESS)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(args: list[str] | None = None) -> int:
    """Run vlm2_node until SIGINT/SIGTERM: exit code 0, 1 when autostart fails, 2 for bad parameters.

    rclpy's own signal handler would shut the ROS context down before the node's final snapshot
    and log lines; instead SIGINT and SIGTERM stop the executor and the node releases itself (and
    snapshots) with the context still up. The executor's 1 s monitor timer bounds the delay."""
    rclpy.init(args=args if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    faulthandler.register(signal.SIGUSR1, all_threads=True)   # `kill -USR1 PID`: every thread's stack, for hangs
    logger = rclpy.logging.get_logger(NODE_NAME)
    try:
        node = Vlm2Node()
    except (ParameterException, ParameterError) as exc:
        logger.fatal(f"invalid parameters: {exc}")
        rclpy.try_shutdown()
        return 2
    code = 0
    executor = PoolExecutor(num_threads=node.executor_threads)
    executor.add_node(node)
    try:
        if node.get_parameter("autostart").value and not node.start():
            logger.fatal("autostart failed (reason above); exiting")
            code = 1
        else:
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        logger.info("shutting down")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # a second Ctrl-C must not cut the snapshot short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        node.release()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return code
