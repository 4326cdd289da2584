"""ROS 2 messages -> the project's numpy conventions (see vlm2_ros/camera.py).

Images come out as uint8 [H, W, 3] RGB, poses as float64 4x4 camera-to-world, stamps as int
nanoseconds, camera info as `CameraIntrinsics`. Nothing here imports rclpy: messages are read by
duck typing (the attribute names of sensor_msgs/Image, CompressedImage, CameraInfo,
geometry_msgs/PoseStamped, nav_msgs/Odometry, builtin_interfaces/Time), so the functions work on
rclpy messages, on `rosbags` messages and on plain test objects alike.

Raw images (`image_to_rgb`) go through cv_bridge when a ROS 2 cv_bridge is installed (a real ROS
install), otherwise through the numpy path below; `backend=` forces one. Either way the message is
validated first, so malformed input fails with the same `ImageConversionError` message. The numpy
path supports rgb8, bgr8, rgba8, bgra8, mono8, mono16, yuv422/uyvy, yuyv/yuv422_yuy2, and (with
OpenCV) the 8- and 16-bit Bayer patterns. Depth images (16UC1, 32FC1) are rejected explicitly:
the model sees colour only and predicts geometry itself, so a depth topic wired to the image input
is a configuration mistake worth naming. 16-bit data becomes 8-bit as round(v * 255 / 65535),
the scaling cv_bridge uses; YUV 4:2:2 uses OpenCV's BT.601 fixed-point conversion (bit-exact
with and without OpenCV).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlm2_ros.camera import CameraIntrinsics, quaternion_to_rotation, validate_pose

try:  # optional: YUV speed-up, Bayer demosaicing, JPEG/PNG decoding
    import cv2
except ImportError:  # pragma: no cover - cv2 is in requirements.txt
    cv2 = None

# Larger images are refused before any pixel is touched (a 16k x 16k frame is almost surely a
# corrupt header or a misconfigured driver, and would stall ingestion).
DEFAULT_MAX_PIXELS = 40_000_000

_NS_PER_S = 1_000_000_000


class ConversionError(ValueError):
    """A message could not be converted; the message says what is wrong with it."""


class ImageConversionError(ConversionError):
    """An Image or CompressedImage could not be converted to RGB."""


class CameraInfoError(ConversionError):
    """A CameraInfo does not describe a usable pinhole camera."""


class PoseConversionError(ConversionError):
    """A pose message does not hold a valid rigid transform."""


# --------------------------------------------------------------------------- encodings
@dataclass(frozen=True)
class _Encoding:
    channels: int
    itemsize: int          # bytes per channel value
    kind: str              # "rgb", "bgr", "rgba", "bgra", "mono", "yuv422", "bayer"
    detail: str = ""       # byte order for yuv422 ("uyvy" / "yuyv"), pattern for bayer

    @property
    def bytes_per_pixel(self) -> int:
        return self.channels * self.itemsize


_ENCODINGS: dict[str, _Encoding] = {
    "rgb8": _Encoding(3, 1, "rgb"),
    "bgr8": _Encoding(3, 1, "bgr"),
    "rgba8": _Encoding(4, 1, "rgba"),
    "bgra8": _Encoding(4, 1, "bgra"),
    "mono8": _Encoding(1, 1, "mono"),
    "mono16": _Encoding(1, 2, "mono"),
    # sensor_msgs "yuv422" is UYVY byte order (U0 Y0 V0 Y1); Kilted also names it "uyvy".
    "yuv422": _Encoding(2, 1, "yuv422", "uyvy"),
    "uyvy": _Encoding(2, 1, "yuv422", "uyvy"),
    "yuv422_yuy2": _Encoding(2, 1, "yuv422", "yuyv"),
    "yuyv": _Encoding(2, 1, "yuv422", "yuyv"),
    **{f"bayer_{p}8": _Encoding(1, 1, "bayer", p) for p in ("rggb", "bggr", "gbrg", "grbg")},
    **{f"bayer_{p}16": _Encoding(1, 2, "bayer", p) for p in ("rggb", "bggr", "gbrg", "grbg")},
}

_DEPTH_ENCODINGS = {"16uc1", "32fc1"}

SUPPORTED_ENCODINGS = tuple(_ENCODINGS)

# ROS names the Bayer pattern by its first two rows; OpenCV by the 2x2 block at (1, 1).
_CV_BAYER_TO_RGB = {"rggb": "COLOR_BayerBG2RGB", "bggr": "COLOR_BayerRG2RGB",
                    "gbrg": "COLOR_BayerGR2RGB", "grbg": "COLOR_BayerGB2RGB"}


def _lookup_encoding(encoding: Any) -> tuple[str, _Encoding]:
    name = str(encoding).strip().lower()
    if name in _DEPTH_ENCODINGS:
        raise ImageConversionError(
            f"depth image (encoding {encoding!r}) on a colour input: the model takes colour images "
            f"only; point this input at the camera's colour topic")
    if name not in _ENCODINGS:
        raise ImageConversionError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}")
    return name, _ENCODINGS[name]


# --------------------------------------------------------------------------- raw images
def image_to_rgb(msg: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS, backend: str = "auto") -> np.ndarray:
    """sensor_msgs/Image -> new C-contiguous uint8 [H, W, 3] RGB array.

    backend: "auto" (cv_bridge when a ROS 2 cv_bridge is installed, else numpy), "numpy" or
    "cv_bridge". Raises ImageConversionError naming the problem.
    """
    if backend not in ("auto", "numpy", "cv_bridge"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'cv_bridge', got {backend!r}")
    height, width, step, data, spec_name, spec = _validated_image(msg, max_pixels)
    bridge = _cv_bridge() if backend in ("auto", "cv_bridge") else None
    if backend == "cv_bridge" and bridge is None:
        raise ImageConversionError("backend 'cv_bridge' requested but no ROS 2 cv_bridge is installed")
    if bridge is not None:
        try:
            rgb = bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")
        except Exception as exc:  # CvBridgeError or anything numpy raises inside it
            raise ImageConversionError(f"cv_bridge could not convert {spec_name} image: {exc}") from exc
        return _checked_rgb(np.array(rgb, copy=True), height, width, "cv_bridge")
    return _numpy_image_to_rgb(height, width, step, data, bool(msg.is_bigendian), spec_name, spec)


def _validated_image(msg: Any, max_pixels: int):
    try:
        height, width, step = int(msg.height), int(msg.width), int(msg.step)
        encoding, data = msg.encoding, msg.data
    except AttributeError as exc:
        raise ImageConversionError(f"not an Image message: {exc}") from exc
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"image has zero size ({width}x{height})")
    if height * width > max_pixels:
        raise ImageConversionError(
            f"image of {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} pixels")
    name, spec = _lookup_encoding(encoding)
    row_bytes = width * spec.bytes_per_pixel
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is smaller than width x bytes per pixel = {width} x {spec.bytes_per_pixel} "
            f"= {row_bytes} for {name}")
    if spec.kind == "yuv422" and width % 2:
        raise ImageConversionError(f"{name} packs pixel pairs: width must be even, got {width}")
    if spec.kind == "bayer" and (width < 2 or height < 2):
        raise ImageConversionError(f"{name} needs at least 2x2 pixels, got {width}x{height}")
    buffer = _as_bytes(data)
    needed = step * height
    if buffer.size < needed:
        raise ImageConversionError(
            f"image data has {buffer.size} bytes, shorter than step x height = {step} x {height} = {needed}")
    return height, width, step, buffer[:needed], name, spec


def _as_bytes(data: Any) -> np.ndarray:
    """The message's data field as a flat uint8 array (no copy when it supports the buffer protocol)."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ImageConversionError(f"image data must be bytes (uint8), got an array of {data.dtype}")
        return data.reshape(-1)
    try:
        return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    except TypeError:
        pass
    try:  # list of ints (e.g. a message built by hand)
        return np.asarray(data, dtype=np.uint8).reshape(-1)
    except (OverflowError, ValueError, TypeError) as exc:
        raise ImageConversionError(f"image data is not a byte sequence: {exc}") from exc


def _numpy_image_to_rgb(height: int, width: int, step: int, data: np.ndarray, big_endian: bool,
                        name: str, spec: _Encoding) -> np.ndarray:
    rows = data.reshape(height, step)[:, : width * spec.bytes_per_pixel]
    if spec.itemsize == 2:
        values = np.ascontiguousarray(rows).view(">u2" if big_endian else "<u2")
        values = _to_uint8(values.astype(np.uint16))
    else:
        values = rows
    if spec.kind == "yuv422":
        return _yuv422_to_rgb(np.ascontiguousarray(values).reshape(height, width * 2), spec.detail)
    if spec.kind == "bayer":
        return _bayer_to_rgb(np.ascontiguousarray(values).reshape(height, width), spec.detail, name)
    pixels = values.reshape(height, width, spec.channels)
    # Always a new array: `pixels` may be a read-only view of the message's buffer.
    if spec.kind == "mono":
        return np.repeat(pixels, 3, axis=2)
    if spec.kind in ("rgb", "rgba"):
        return np.array(pixels[:, :, :3], order="C")
    return np.array(pixels[:, :, 2::-1], order="C")  # bgr, bgra


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """16-bit -> 8-bit as round(v * 255 / 65535) = round(v / 257) (exact; cv_bridge's scaling)."""
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


# OpenCV's BT.601 (video range) fixed-point constants for YUV 4:2:2 -> RGB (color_yuv.simd.hpp).
_CY, _CUB, _CUG, _CVG, _CVR, _SHIFT = 1220542, 2116026, -409993, -852492, 1673527, 20


def _yuv422_to_rgb(packed: np.ndarray, order: str) -> np.ndarray:
    """[H, 2W] packed 4:2:2 bytes -> [H, W, 3] RGB, bit-exact with cv2.COLOR_YUV2RGB_UYVY/_YUYV."""
    height, width = packed.shape[0], packed.shape[1] // 2
    if cv2 is not None:
        code = cv2.COLOR_YUV2RGB_UYVY if order == "uyvy" else cv2.COLOR_YUV2RGB_YUYV
        return cv2.cvtColor(packed.reshape(height, width, 2), code)
    quads = packed.reshape(height, width // 2, 4).astype(np.int64)
    if order == "uyvy":
        u, y0, v, y1 = quads[..., 0], quads[..., 1], quads[..., 2], quads[..., 3]
    else:
        y0, u, y1, v = quads[..., 0], quads[..., 1], quads[..., 2], quads[..., 3]
    uu, vv = u - 128, v - 128
    half = 1 << (_SHIFT - 1)
    ruv, guv, buv = half + _CVR * vv, half + _CVG * vv + _CUG * uu, half + _CUB * uu
    y = np.stack([y0, y1], axis=-1)                                     # [H, W/2, 2]
    y = np.maximum(y - 16, 0) * _CY
    rgb = np.stack([y + ruv[..., None], y + guv[..., None], y + buv[..., None]], axis=-1) >> _SHIFT
    return np.clip(rgb, 0, 255).astype(np.uint8).reshape(height, width, 3)


def _bayer_to_rgb(mosaic: np.ndarray, pattern: str, name: str) -> np.ndarray:
    if cv2 is None:
        raise ImageConversionError(f"{name} needs OpenCV (cv2) for demosaicing, which is not installed")
    return cv2.cvtColor(np.ascontiguousarray(mosaic), getattr(cv2, _CV_BAYER_TO_RGB[pattern]))


def _checked_rgb(rgb: np.ndarray, height: int, width: int, source: str) -> np.ndarray:
    if rgb.shape != (height, width, 3) or rgb.dtype != np.uint8:
        raise ImageConversionError(
            f"{source} returned {rgb.dtype} {rgb.shape}, expected uint8 ({height}, {width}, 3)")
    return np.ascontiguousarray(rgb)


_BRIDGE: Any = None
_BRIDGE_CHECKED = False


def _cv_bridge():
    """A CvBridge when the ROS 2 cv_bridge is installed (registered in the ament index), else None.

    The ament-index check keeps out the unrelated PyPI `cv-bridge` (a ROS 1 port that fails with
    numpy 2), which would otherwise import under the same name.
    """
    global _BRIDGE, _BRIDGE_CHECKED
    if not _BRIDGE_CHECKED:
        _BRIDGE_CHECKED = True
        try:
            from ament_index_python.packages import get_package_share_directory
            get_package_share_directory("cv_bridge")
            from cv_bridge import CvBridge
            _BRIDGE = CvBridge()
        except Exception:  # not installed, not a ROS 2 one, or broken: the numpy path does it all
            _BRIDGE = None
    return _BRIDGE


def image_backend() -> str:
    """Which backend image_to_rgb(..., backend="auto") uses here: "cv_bridge" or "numpy"."""
    return "cv_bridge" if _cv_bridge() is not None else "numpy"


def fill_image(msg: Any, rgb: np.ndarray, encoding: str = "rgb8") -> Any:
    """Fill a sensor_msgs/Image (or look-alike) from a uint8 [H, W, 3] RGB array; returns msg.

    encoding: "rgb8" or "bgr8". Uses bytes for data (assigning a numpy array to an rclpy message
    field is ~300x slower).
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 [H, W, 3] RGB array, got {rgb.dtype} {rgb.shape}")
    if encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"encoding must be 'rgb8' or 'bgr8', got {encoding!r}")
    pixels = rgb if encoding == "rgb8" else rgb[:, :, ::-1]
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding, msg.is_bigendian, msg.step = encoding, 0, int(rgb.shape[1]) * 3
    msg.data = np.ascontiguousarray(pixels).tobytes()
    return msg


# --------------------------------------------------------------------------- compressed images
def compressed_to_rgb(msg: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """sensor_msgs/CompressedImage (JPEG or PNG) -> new uint8 [H, W, 3] RGB array.

    The image size is read from the JPEG/PNG header and checked against max_pixels before
    decoding. Raises ImageConversionError for empty, corrupt or truncated data, depth streams
    (compressedDepth) and unsupported formats.
    """
    try:
        fmt, data = str(msg.format), msg.data
    except AttributeError as exc:
        raise ImageConversionError(f"not a CompressedImage message: {exc}") from exc
    if "compresseddepth" in fmt.lower():
        raise ImageConversionError(
            f"compressed depth image (format {fmt!r}) on a colour input: the model takes colour "
            f"images only")
    raw = _as_bytes(data)
    if raw.size == 0:
        raise ImageConversionError(f"compressed image (format {fmt!r}) has no data")
    if cv2 is None:
        raise ImageConversionError("compressed images need OpenCV (cv2), which is not installed")
    head = raw[:64].tobytes()
    kind = "jpeg" if head.startswith(b"\xff\xd8") else "png" if head.startswith(b"\x89PNG\r\n\x1a\n") else None
    if kind is None:
        raise ImageConversionError(
            f"compressed image (format {fmt!r}, {raw.size} bytes) is neither JPEG nor PNG "
            f"(starts with {head[:8].hex()})")
    size = _compressed_size(raw, kind)
    if size is None:
        raise ImageConversionError(f"corrupt {kind.upper()}: no readable image header in {raw.size} bytes")
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageConversionError(f"corrupt {kind.upper()}: header says {width}x{height}")
    if width * height > max_pixels:
        raise ImageConversionError(
            f"{kind.upper()} of {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{max_pixels} pixels")
    if kind == "jpeg" and b"\xff\xd9" not in raw[-32:].tobytes():
        raise ImageConversionError(f"truncated JPEG: no end-of-image marker in {raw.size} bytes")
    if kind == "png":
        _check_png_chunks(raw)
    image = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageConversionError(f"corrupt {kind.upper()}: OpenCV could not decode {raw.size} bytes")
    if image.dtype == np.uint16:
        image = _to_uint8(image)
    elif image.dtype != np.uint8:
        raise ImageConversionError(f"{kind.upper()} decoded to unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.shape[2] <= 2:  # grey, grey + alpha
        image = np.repeat(image[:, :, :1], 3, axis=2)
    else:  # OpenCV decodes to BGR / BGRA
        image = image[:, :, 2::-1]
    return _checked_rgb(image, height, width, f"{kind.upper()} decoder")


def _check_png_chunks(raw: np.ndarray) -> None:
    """Refuse a PNG with a chunk that declares more bytes than follow it, anywhere in the data
    (OpenCV's decoder allocates a chunk's declared length before reading it, and does not stop at
    a malformed IEND: 200-byte PNGs declaring a 4 GB chunk, found by fuzzing, cost 4 GB of memory
    and seconds per message)."""
    data, pos = memoryview(raw), 8
    while pos + 8 <= len(data):
        length, name = int.from_bytes(data[pos:pos + 4], "big"), bytes(data[pos + 4:pos + 8])
        if length > len(data) - pos - 12:
            raise ImageConversionError(
                f"corrupt PNG: chunk {name!r} at byte {pos} declares {length} bytes but only "
                f"{max(0, len(data) - pos - 12)} follow")
        pos += 12 + length


def _compressed_size(raw: np.ndarray, kind: str) -> tuple[int, int] | None:
    """(width, height) from a PNG IHDR or a JPEG SOFn segment, or None when not found."""
    data = memoryview(raw)[: 1 << 20]  # headers (EXIF thumbnails included) sit in the first MiB
    if kind == "png":
        if len(data) < 24 or bytes(data[12:16]) != b"IHDR":
            return None
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:          # fill byte
            pos += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:   # markers without a length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2: pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > len(data):
                return None
            height = int.from_bytes(data[pos + 5: pos + 7], "big")
            width = int.from_bytes(data[pos + 7: pos + 9], "big")
            return width, height
        if length < 2:
            return None
        pos += 2 + length
    return None


# --------------------------------------------------------------------------- camera info
@dataclass(frozen=True)
class Distortion:
    model: str                  # distortion_model, e.g. "plumb_bob", "rational_polynomial", "equidistant"
    coefficients: tuple[float, ...]


def camera_info_to_intrinsics(msg: Any, *, use_projection: bool = False) -> CameraIntrinsics:
    """sensor_msgs/CameraInfo -> CameraIntrinsics of the image as published.

    Uses K (the raw image's intrinsics), or P when use_projection is set (for rectified image
    topics such as image_rect). Binning and the region of interest are applied, since K and P
    describe the full-resolution sensor. Distortion is not applied here: see
    camera_info_distortion(). Raises CameraInfoError naming the problem.
    """
    try:
        width, height = int(msg.width), int(msg.height)
        matrix = msg.p if use_projection else msg.k
        binning_x, binning_y, roi = int(msg.binning_x), int(msg.binning_y), msg.roi
    except AttributeError as exc:
        raise CameraInfoError(f"not a CameraInfo message: {exc}") from exc
    name = "P" if use_projection else "K"
    values = np.asarray(list(matrix), dtype=np.float64)
    if values.size != (12 if use_projection else 9):
        raise CameraInfoError(f"{name} has {values.size} values, expected {12 if use_projection else 9}")
    if not np.all(np.isfinite(values)):
        raise CameraInfoError(f"{name} contains NaN or inf: {values.tolist()}")
    if not np.any(values):
        raise CameraInfoError(f"{name} is all zeros: the camera is not calibrated")
    m = values.reshape(3, -1)
    fx, fy, cx, cy = m[0, 0], m[1, 1], m[0, 2], m[1, 2]
    if fx <= 0 or fy <= 0:
        raise CameraInfoError(f"focal lengths must be positive, got fx={fx} fy={fy} in {name}")
    if width <= 0 or height <= 0:
        raise CameraInfoError(f"camera info has zero image size ({width}x{height})")
    bx, by = max(binning_x, 1), max(binning_y, 1)
    x0, y0 = int(roi.x_offset), int(roi.y_offset)
    roi_w, roi_h = int(roi.width), int(roi.height)
    if roi_w == 0 and roi_h == 0:       # all-zero roi means full resolution
        x0 = y0 = 0
        roi_w, roi_h = width, height
    elif roi_w <= 0 or roi_h <= 0 or x0 + roi_w > width or y0 + roi_h > height:
        raise CameraInfoError(
            f"roi {roi_w}x{roi_h}+{x0}+{y0} does not fit the {width}x{height} calibrated image")
    try:
        return CameraIntrinsics(fx / bx, fy / by, (cx - x0) / bx, (cy - y0) / by, roi_w // bx, roi_h // by)
    except ValueError as exc:
        raise CameraInfoError(str(exc)) from exc


def camera_info_distortion(msg: Any) -> Distortion | None:
    """The lens distortion a CameraInfo declares, or None when there is none (all zero / empty).

    The model assumes pinhole images: a node receiving distorted images should say so (or
    subscribe to a rectified topic and use use_projection=True above).
    """
    coefficients = tuple(float(v) for v in getattr(msg, "d", ()) or ())
    if not any(coefficients):
        return None
    return Distortion(str(getattr(msg, "distortion_model", "")), coefficients)


# --------------------------------------------------------------------------- poses
def pose_to_matrix(msg: Any) -> np.ndarray:
    """Pose-like message -> float64 [4, 4] transform (the pose of the child in the parent frame).

    Accepts geometry_msgs Pose, PoseStamped, PoseWithCovariance(Stamped), Transform,
    TransformStamped and nav_msgs/Odometry. The quaternion is normalised; a zero or non-finite
    one raises PoseConversionError. The caller is responsible for the frame convention: the
    engine wants camera (optical frame) to world; see LINK_TO_OPTICAL.
    """
    translation = rotation = None
    inner = msg
    # Descend Odometry.pose.pose, PoseWithCovarianceStamped.pose.pose, PoseStamped.pose,
    # TransformStamped.transform until a Pose (position, orientation) or Transform is reached.
    for _ in range(4):
        if hasattr(inner, "position") and hasattr(inner, "orientation"):
            translation, rotation = inner.position, inner.orientation
            break
        if hasattr(inner, "translation") and hasattr(inner, "rotation"):
            translation, rotation = inner.translation, inner.rotation
            break
        inner = getattr(inner, "pose", getattr(inner, "transform", None))
    if translation is None:
        raise PoseConversionError(
            f"{type(msg).__name__} holds no pose (position/orientation or translation/rotation)")
    t = np.array([translation.x, translation.y, translation.z], dtype=np.float64)
    q = np.array([rotation.x, rotation.y, rotation.z, rotation.w], dtype=np.float64)
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(q))):
        raise PoseConversionError(f"pose contains NaN or inf: position {t.tolist()}, orientation {q.tolist()}")
    scale = float(np.abs(q).max())
    if scale < 1e-9:
        raise PoseConversionError("orientation quaternion is zero (an uninitialised pose?)")
    q = q / scale                 # first: the norm of a finite but huge quaternion overflows to inf
    matrix = np.eye(4)
    matrix[:3, :3] = quaternion_to_rotation(*(q / np.linalg.norm(q)))
    matrix[:3, 3] = t
    try:
        return validate_pose(matrix)
    except ValueError as exc:  # e.g. a translation too large to stay finite in the transform
        raise PoseConversionError(str(exc)) from exc


# Pose of a camera's optical frame (x right, y down, z forward) in its body/link frame (x forward,
# y left, z up, REP 103): T_world_optical = T_world_link @ LINK_TO_OPTICAL.
LINK_TO_OPTICAL = np.array([[0.0, 0.0, 1.0, 0.0],
                            [-1.0, 0.0, 0.0, 0.0],
                            [0.0, -1.0, 0.0, 0.0],
                            [0.0, 0.0, 0.0, 1.0]])


# --------------------------------------------------------------------------- stamps
def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (or a message with a header / stamp) -> int nanoseconds, exactly."""
    if not hasattr(stamp, "sec") and hasattr(stamp, "header"):   # a message: its header
        stamp = stamp.header
    if not hasattr(stamp, "sec") and hasattr(stamp, "stamp"):     # a header: its stamp
        stamp = stamp.stamp
    try:
        sec, nanosec = int(stamp.sec), int(stamp.nanosec)
    except AttributeError as exc:
        raise ConversionError(f"not a Time: {exc}") from exc
    if not 0 <= nanosec < _NS_PER_S:
        raise ConversionError(f"nanosec must be in [0, 1e9), got {nanosec}")
    return sec * _NS_PER_S + nanosec


@dataclass
class Stamp:
    """Stand-in for builtin_interfaces/Time where that package is not installed."""
    sec: int = 0
    nanosec: int = 0


def ns_to_stamp(ns: int, time_type: Any = None) -> Any:
    """int nanoseconds -> builtin_interfaces/Time (or time_type(sec=, nanosec=)), exactly.

    Without time_type, builtin_interfaces.msg.Time is used when installed, else `Stamp`.
    Raises ConversionError when the time does not fit Time's int32 seconds.
    """
    if isinstance(ns, (float, np.floating)):
        if not math.isfinite(ns) or ns != int(ns):
            raise ConversionError(f"stamp must be whole nanoseconds, got {ns!r}")
    ns = int(ns)
    sec, nanosec = divmod(ns, _NS_PER_S)
    if not -(2 ** 31) <= sec < 2 ** 31:
        raise ConversionError(f"stamp {ns} ns does not fit builtin_interfaces/Time (int32 seconds)")
    if time_type is None:
        time_type = _time_type()
    return time_type(sec=sec, nanosec=nanosec)


def _time_type():
    module = sys.modules.get("builtin_interfaces.msg")
    if module is None:
        try:
            from builtin_interfaces import msg as module
        except ImportError:
            return Stamp
    return module.Time
