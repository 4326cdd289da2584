"""vlm2_node's parameters: declarations (with descriptors) and one validated settings object.

Every parameter is declared from the SPECS table with a description, its range or choices, and
read_only where a change only takes effect at configure (model, cameras, QoS, sizes): those are set
in the params file or on the command line. The few that are safe to change on a running node
(rate cap, query timeout, time-jump policy, warning delay) are validated again on every change.

`settings_from_values` is the one validation: a plain function from {name: value} to
`NodeSettings`, raising `ParameterError` whose message names the parameter. The node calls it at
configure and on parameter changes; tests call it directly.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from vlm2_ros.backends.runtime import BACKENDS, PROVIDER_CHOICES
from vlm2_ros.engine.number_decoding import DEFAULT_NUMBER_SAMPLES
from vlm2_ros.model.dual_memory import MEMORY_MODES
from vlm2_ros.model.episodic_memory import REPLACEMENTS
from vlm2_ros.model.presets import PRESETS

DTYPES = ("fp32", "fp16", "bf16")
QOS_RELIABILITIES = ("best_effort", "reliable")
TIME_JUMP_POLICIES = ("reset", "keep")
POSE_TYPES = ("pose_stamped", "odometry")
POSE_FRAMES = ("optical", "link")
CAMERA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


class ParameterError(ValueError):
    """A parameter has a value the node cannot use; the message names the parameter."""

    def __init__(self, parameter: str, problem: str):
        super().__init__(f"parameter '{parameter}': {problem}")
        self.parameter = parameter


@dataclass(frozen=True)
class Spec:
    name: str
    default: Any
    description: str
    low: float | None = None          # inclusive range for numbers
    high: float | None = None
    choices: tuple[str, ...] = ()
    read_only: bool = True


SPECS: tuple[Spec, ...] = (
    Spec("autostart", True,
         "configure and activate on start (standalone use); false when a lifecycle manager or "
         "launch file drives the transitions"),
    Spec("model.preset", "tiny", "model preset (sizes and component sources)",
         choices=tuple(sorted(PRESETS))),
    Spec("model.checkpoint_dir", "",
         "VLM2 checkpoint directory; empty: the checkpoint shipped for the preset, or untrained "
         "weights where none is shipped"),
    Spec("model.device", "cpu", "torch device: cpu, cuda or cuda:N"),
    Spec("model.dtype", "fp32", "model weights and activations dtype", choices=DTYPES),
    Spec("model.backend", "torch",
         "runtime of the per-frame encoders and fusion: torch, or onnx (ONNX Runtime)",
         choices=BACKENDS),
    Spec("model.onnx_dir", "",
         "ONNX export of the model (`vlm2 export`); empty: exported at configure into the cache "
         "directory (once per weights)"),
    Spec("model.onnx_provider", "auto",
         "ONNX Runtime execution provider; auto: the first of tensorrt, cuda, cpu that runs",
         choices=PROVIDER_CHOICES),
    Spec("model.onnx_provider_fallback", False,
         "run on the CPU provider when the requested one cannot run (else configure fails)"),
    Spec("model.memory_mode", "",
         "memory ablation: dual, working, episodic or none; empty: the checkpoint's own",
         choices=("",) + MEMORY_MODES),
    Spec("memory.working_size", 0,
         "working memory length L_w (recent views); 0: the checkpoint's (8 in the paper)", 0, 1024),
    Spec("memory.episodic_size", 0,
         "episodic memory capacity L_e; 0: the checkpoint's (32 in the paper)", 0, 4096),
    Spec("memory.episodic_replacement", "",
         "which entry a full episodic memory overwrites: appearance (the paper's: the most similar) "
         "or place (the one whose places other entries cover most; needs camera poses); empty: the "
         "checkpoint's", choices=("",) + REPLACEMENTS),
    Spec("memory.geometry_window", 0,
         "frames the geometry encoder attends across, L_g; 0: the checkpoint's. Per-frame cost "
         "grows with it: the Jetson profile halves it", 0, 64),
    Spec("model.max_new_tokens", 16, "longest generated answer, in tokens", 1, 4096),
    Spec("model.number_samples", DEFAULT_NUMBER_SAMPLES,
         "answers drawn for a number question; the value with the highest expected relative "
         "accuracy among them is the answer (minimum Bayes risk); 0: greedy like other answers. A "
         "model with a number head takes as many quantiles of its estimate instead (0: 16)", 0, 256),
    Spec("model.threads", 0,
         "torch CPU threads of the model; 0: all cores but one, which is left to the camera "
         "callbacks and DDS (on 2 cores this ingests 18 % more frames/s than using both)", 0, 1024),
    Spec("camera_names", ["camera"],
         "cameras to ingest; each NAME is configured by the cameras.NAME.* parameters"),
    Spec("ingest.rate_hz", 10.0,
         "cap on frames ingested per second of node-clock time, all cameras together; 0: no cap",
         0.0, 1000.0, read_only=False),
    Spec("ingest.queue_size", 4,
         "frames waiting for the model; when full the oldest is dropped (latest frames win)", 1, 1000),
    Spec("ingest.qos_reliability", "best_effort",
         "reliability of the camera subscriptions (sensor-data QoS is best_effort; reliable "
         "receives nothing from best_effort publishers)", choices=QOS_RELIABILITIES),
    Spec("ingest.qos_depth", 5, "history depth of the camera subscriptions", 1, 1000),
    Spec("ingest.time_jump_policy", "reset",
         "a frame stamped more than time_jump_threshold_s before the last ingested one (bag "
         "restarted, clock reset): reset the memory, or keep it and drop frames until time "
         "passes the last ingested stamp", choices=TIME_JUMP_POLICIES, read_only=False),
    Spec("ingest.time_jump_threshold_s", 1.0,
         "how far back a stamp must go to count as a time jump; smaller disorder (e.g. between "
         "cameras) only drops the late frame", 0.0, 86400.0),
    Spec("ingest.max_stamp_ahead_s", 60.0,
         "drop (and count as rejected) a frame stamped more than this many seconds ahead of the "
         "node clock: one such frame would make every later frame look like a time jump back; "
         "0: no check", 0.0, 86400.0, read_only=False),
    Spec("ingest.no_image_warning_s", 5.0,
         "warn (naming the likely cause) when a camera has delivered no image this many seconds "
         "after activation; 0: never", 0.0, 3600.0, read_only=False),
    Spec("query.timeout_s", 30.0,
         "wall-clock seconds a query may take when the request gives no timeout",
         0.001, 3600.0, read_only=False),
    Spec("query.max_question_length", 1000,
         "longest question accepted, in characters (options included)", 1, 100000),
    Spec("query.max_concurrent", 1, "queries answered at the same time", 1, 16),
    Spec("query.max_waiting", 4,
         "queries waiting for a free slot; beyond that a query is answered BUSY", 0, 64),
    Spec("snapshot.dir", "",
         "directory of the memory snapshot, loaded at configure and written periodically, on "
         "~/save_memory, cleanup and shutdown; empty: no snapshots"),
    Spec("snapshot.period_s", 60.0,
         "node-clock seconds between periodic snapshots (only when the memory changed); 0: "
         "only on ~/save_memory, cleanup and shutdown", 0.0, 86400.0),
    Spec("snapshot.start_fresh", False,
         "ignore the snapshot in snapshot.dir at configure (it is overwritten by the next one)"),
    Spec("status_period_s", 1.0,
         "node-clock seconds between ~/memory_status and /diagnostics messages", 0.05, 3600.0),
)

# Per-camera parameters cameras.<name>.<key>; "{name}" in a default is the camera's name.
CAMERA_SPECS: tuple[Spec, ...] = (
    Spec("image_topic", "{name}/image_raw",
         "sensor_msgs/Image topic; empty when compressed_topic is used"),
    Spec("compressed_topic", "",
         "sensor_msgs/CompressedImage (JPEG/PNG) topic, used instead of image_topic"),
    Spec("camera_info_topic", "{name}/camera_info",
         "sensor_msgs/CameraInfo topic (the latest one goes with each image); empty: none"),
    Spec("pose_topic", "",
         "camera pose topic (the latest pose goes with each image); empty: no poses"),
    Spec("pose_type", "pose_stamped", "message type of pose_topic", choices=POSE_TYPES),
    Spec("pose_frame", "optical",
         "what pose_topic poses: the camera optical frame (z forward, y down) or a REP 103 "
         "link frame (x forward, z up) at the camera", choices=POSE_FRAMES),
)


@dataclass(frozen=True)
class CameraSettings:
    name: str
    image_topic: str
    compressed_topic: str
    camera_info_topic: str
    pose_topic: str
    pose_type: str
    pose_frame: str

    @property
    def subscribed_image_topic(self) -> str:
        return self.compressed_topic or self.image_topic


@dataclass(frozen=True)
class NodeSettings:
    autostart: bool
    model_preset: str
    checkpoint_dir: str | None
    device: str
    dtype: str
    backend: str
    onnx_dir: str | None
    onnx_provider: str
    onnx_provider_fallback: bool
    memory_mode: str | None
    working_size: int | None
    episodic_size: int | None
    episodic_replacement: str | None
    geometry_window: int | None
    max_new_tokens: int
    number_samples: int
    threads: int
    cameras: tuple[CameraSettings, ...]
    ingest_rate_hz: float
    queue_size: int
    qos_reliability: str
    qos_depth: int
    time_jump_policy: str
    time_jump_threshold_s: float
    max_stamp_ahead_s: float
    no_image_warning_s: float
    query_timeout_s: float
    max_question_length: int
    max_concurrent_queries: int
    max_waiting_queries: int
    snapshot_dir: str | None
    snapshot_period_s: float
    start_fresh: bool
    status_period_s: float


def default_model_threads() -> int:
    """All cores but one (at least one): the model's intra-op threads must not compete with the
    executor and DDS threads, or every parallel region waits for a descheduled thread."""
    import os
    return max(1, (os.cpu_count() or 2) - 1)


def camera_parameter(camera: str, key: str) -> str:
    return f"cameras.{camera}.{key}"


def default_values(camera_names: list[str] | None = None) -> dict[str, Any]:
    """Every parameter's default ({name: value}), cameras included."""
    values = {spec.name: spec.default for spec in SPECS}
    for camera in camera_names if camera_names is not None else values["camera_names"]:
        for spec in CAMERA_SPECS:
            default = spec.default.format(name=camera) if isinstance(spec.default, str) else spec.default
            values[camera_parameter(camera, spec.name)] = default
    return values


def _check(spec: Spec, name: str, value: Any) -> Any:
    """Type, range and choices of one value, as the descriptor declares them."""
    expected = type(spec.default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is list:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ParameterError(name, f"must be a list of strings, got {value!r}")
        return list(value)
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        raise ParameterError(name, f"must be of type {expected.__name__}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ParameterError(name, f"must be finite, got {value!r}")
    if spec.low is not None and not spec.low <= value <= spec.high:
        raise ParameterError(name, f"must be in [{spec.low}, {spec.high}], got {value!r}")
    if spec.choices and value not in spec.choices:
        shown = ", ".join(repr(c) for c in spec.choices)
        raise ParameterError(name, f"must be one of {shown}, got {value!r}")
    return value


def _check_camera_name(camera: str) -> None:
    if not CAMERA_NAME.match(camera):
        raise ParameterError("camera_names", f"camera name {camera!r} must be a letter followed by "
                                             f"letters, digits or underscores")


def _check_topic(name: str, topic: str) -> None:
    from rclpy.validate_topic_name import validate_topic_name  # ROS glue: rclpy is here anyway
    try:
        validate_topic_name(topic)
    except Exception as exc:  # InvalidTopicNameException and friends; message says where
        raise ParameterError(name, f"{topic!r} is not a valid topic name ({exc})") from None


def settings_from_values(values: dict[str, Any]) -> NodeSettings:
    """Validate {parameter name: value} (missing ones take their defaults) into NodeSettings."""
    merged = {**default_values([]), **values}
    v = {spec.name: _check(spec, spec.name, merged[spec.name]) for spec in SPECS}

    names = v["camera_names"]
    if not names:
        raise ParameterError("camera_names", "must name at least one camera")
    if len(set(names)) != len(names):
        raise ParameterError("camera_names", f"has duplicates: {names}")
    cameras = []
    for camera in names:
        _check_camera_name(camera)
        defaults = default_values([camera])
        c = {}
        for spec in CAMERA_SPECS:
            name = camera_parameter(camera, spec.name)
            c[spec.name] = _check(spec, name, merged.get(name, defaults[name]))
        if bool(c["image_topic"]) == bool(c["compressed_topic"]):
            raise ParameterError(camera_parameter(camera, "image_topic"),
                                 f"set exactly one of {camera_parameter(camera, 'image_topic')} and "
                                 f"{camera_parameter(camera, 'compressed_topic')} (got "
                                 f"{c['image_topic']!r} and {c['compressed_topic']!r})")
        for key in ("image_topic", "compressed_topic", "camera_info_topic", "pose_topic"):
            if c[key]:
                _check_topic(camera_parameter(camera, key), c[key])
        cameras.append(CameraSettings(name=camera, **c))

    if not DEVICE.match(v["model.device"]):
        raise ParameterError("model.device", f"must be 'cpu', 'cuda' or 'cuda:N', got {v['model.device']!r}")
    return NodeSettings(
        autostart=v["autostart"],
        model_preset=v["model.preset"], checkpoint_dir=v["model.checkpoint_dir"] or None,
        device=v["model.device"], dtype=v["model.dtype"], backend=v["model.backend"],
        onnx_dir=v["model.onnx_dir"] or None, onnx_provider=v["model.onnx_provider"],
        onnx_provider_fallback=v["model.onnx_provider_fallback"],
        memory_mode=v["model.memory_mode"] or None, max_new_tokens=v["model.max_new_tokens"],
        number_samples=v["model.number_samples"],
        threads=v["model.threads"] or default_model_threads(),
        working_size=v["memory.working_size"] or None, episodic_size=v["memory.episodic_size"] or None,
        episodic_replacement=v["memory.episodic_replacement"] or None,
        geometry_window=v["memory.geometry_window"] or None,
        cameras=tuple(cameras),
        ingest_rate_hz=v["ingest.rate_hz"], queue_size=v["ingest.queue_size"],
        qos_reliability=v["ingest.qos_reliability"], qos_depth=v["ingest.qos_depth"],
        time_jump_policy=v["ingest.time_jump_policy"],
        time_jump_threshold_s=v["ingest.time_jump_threshold_s"],
        max_stamp_ahead_s=v["ingest.max_stamp_ahead_s"],
        no_image_warning_s=v["ingest.no_image_warning_s"],
        query_timeout_s=v["query.timeout_s"], max_question_length=v["query.max_question_length"],
        max_concurrent_queries=v["query.max_concurrent"], max_waiting_queries=v["query.max_waiting"],
        snapshot_dir=v["snapshot.dir"] or None, snapshot_period_s=v["snapshot.period_s"],
        start_fresh=v["snapshot.start_fresh"], status_period_s=v["status_period_s"])


# ----------------------------------------------------------------------------- rclpy side
def _descriptor(spec: Spec, name: str):
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
    descriptor = ParameterDescriptor(name=name, description=spec.description, read_only=spec.read_only)
    if spec.choices:
        descriptor.additional_constraints = "one of: " + ", ".join(repr(c) for c in spec.choices)
    if isinstance(spec.default, float):
        descriptor.floating_point_range = [FloatingPointRange(
            from_value=float(spec.low), to_value=float(spec.high), step=0.0)]
    elif isinstance(spec.default, int) and not isinstance(spec.default, bool) and spec.low is not None:
        descriptor.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=0)]
    return descriptor


def declare_parameters(node) -> None:
    """Declare every parameter on `node`: the fixed ones, then cameras.NAME.* for each camera.

    rclpy checks overrides against the descriptors here, so an out-of-range or mistyped value on
    the command line raises rclpy.exceptions.ParameterException (naming the parameter)."""
    for spec in SPECS:
        node.declare_parameter(spec.name, spec.default, _descriptor(spec, spec.name))
    for camera in node.get_parameter("camera_names").value:
        _check_camera_name(camera)
        for spec in CAMERA_SPECS:
            name = camera_parameter(camera, spec.name)
            default = spec.default.format(name=camera) if isinstance(spec.default, str) else spec.default
            node.declare_parameter(name, default, _descriptor(spec, name))


def declared_values(node) -> dict[str, Any]:
    """{name: value} of every parameter declare_parameters declared."""
    names = [spec.name for spec in SPECS]
    for camera in node.get_parameter("camera_names").value:
        names += [camera_parameter(camera, spec.name) for spec in CAMERA_SPECS]
    return {name: node.get_parameter(name).value for name in names}
