"""vlm2_ros.ros.image_conversion: every encoding to exact RGB, malformed messages rejected with a
message naming the problem, camera info, poses and stamps. Messages are duck-typed stand-ins;
the last tests repeat the main cases on real sensor_msgs types when the ROS wheels are installed.
"""
import array
import math
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlm2_ros.camera import validate_pose
from vlm2_ros.ros import image_conversion as ic
from vlm2_ros.ros.image_conversion import (
    LINK_TO_OPTICAL, CameraInfoError, ConversionError, ImageConversionError, PoseConversionError,
    Stamp, camera_info_distortion, camera_info_to_intrinsics, compressed_to_rgb, fill_image,
    image_to_rgb, ns_to_stamp, pose_to_matrix, stamp_to_ns)

RNG = np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _numpy_backend(monkeypatch):
    """Pin the backend to the numpy path (no cv_bridge here anyway) for repeatable results."""
    monkeypatch.setattr(ic, "_BRIDGE", None)
    monkeypatch.setattr(ic, "_BRIDGE_CHECKED", True)


# ----------------------------------------------------------------------------- helpers
def image_msg(rows: np.ndarray, encoding: str, pad: int = 0, big_endian: bool = False, data_type=bytes):
    """Image look-alike from [H, W, C] (or [H, W]) values; `pad` garbage bytes end every row."""
    rows = np.asarray(rows)
    height, width = rows.shape[:2]
    if rows.dtype == np.uint16:
        rows = rows.astype(">u2" if big_endian else "<u2")
    raw = np.ascontiguousarray(rows).view(np.uint8).reshape(height, -1)
    padded = np.concatenate([raw, np.full((height, pad), 0xAB, np.uint8)], axis=1)
    data = padded.tobytes()
    if data_type is not bytes:
        data = data_type(data) if data_type is not list else list(data)
    return SimpleNamespace(height=height, width=width, encoding=encoding,
                           is_bigendian=int(big_endian), step=padded.shape[1], data=data)


def random_rgb(height=5, width=6):
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def pack_422(y: np.ndarray, u: np.ndarray, v: np.ndarray, order: str) -> np.ndarray:
    """Y [H, W], U and V [H, W/2] -> packed [H, W, 2] bytes in UYVY or YUYV order."""
    height, width = y.shape
    quads = np.empty((height, width // 2, 4), np.uint8)
    if order == "uyvy":
        quads[..., 0], quads[..., 1], quads[..., 2], quads[..., 3] = u, y[:, 0::2], v, y[:, 1::2]
    else:
        quads[..., 0], quads[..., 1], quads[..., 2], quads[..., 3] = y[:, 0::2], u, y[:, 1::2], v
    return quads.reshape(height, width, 2)


def bayer_mosaic(rgb: tuple, pattern: str, height=8, width=10, dtype=np.uint8) -> np.ndarray:
    colour = dict(zip("rgb", rgb))
    mosaic = np.zeros((height, width), dtype)
    mosaic[0::2, 0::2], mosaic[0::2, 1::2] = colour[pattern[0]], colour[pattern[1]]
    mosaic[1::2, 0::2], mosaic[1::2, 1::2] = colour[pattern[2]], colour[pattern[3]]
    return mosaic


# ----------------------------------------------------------------------------- raw encodings
@pytest.mark.parametrize("pad", [0, 3])
def test_rgb_bgr_rgba_bgra_give_exact_rgb(pad):
    rgb = random_rgb()
    alpha = RNG.integers(0, 256, rgb.shape[:2] + (1,), dtype=np.uint8)
    cases = {
        "rgb8": rgb,
        "bgr8": rgb[:, :, ::-1],
        "rgba8": np.concatenate([rgb, alpha], axis=2),
        "bgra8": np.concatenate([rgb[:, :, ::-1], alpha], axis=2),
    }
    for encoding, rows in cases.items():
        out = image_to_rgb(image_msg(rows, encoding, pad=pad))
        assert out.dtype == np.uint8 and out.shape == rgb.shape and out.flags.c_contiguous
        np.testing.assert_array_equal(out, rgb, err_msg=encoding)


def test_output_is_a_writable_copy_not_a_view_of_the_message():
    rgb = random_rgb()
    msg = image_msg(rgb, "rgb8")
    out = image_to_rgb(msg)
    out[:] = 0
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


@pytest.mark.parametrize("data_type", [bytes, bytearray, list, lambda b: array.array("B", b),
                                       lambda b: np.frombuffer(b, np.uint8)])
def test_data_field_types(data_type):
    rgb = random_rgb()
    np.testing.assert_array_equal(image_to_rgb(image_msg(rgb, "rgb8", pad=2, data_type=data_type)), rgb)


def test_mono8_is_grey_rgb():
    grey = RNG.integers(0, 256, (4, 7), dtype=np.uint8)
    out = image_to_rgb(image_msg(grey[:, :, None], "mono8", pad=1))
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))


@pytest.mark.parametrize("big_endian", [False, True])
def test_mono16_scales_like_cv_bridge_and_honours_endianness(big_endian):
    values = np.array([[0, 128, 129, 257, 385, 386], [32767, 32768, 65278, 65279, 65534, 65535]], np.uint16)
    expected = np.array([[0, 0, 1, 1, 1, 2], [127, 128, 254, 254, 255, 255]], np.uint8)
    # round(v * 255 / 65535), the scaling cv_bridge's convertTo uses
    assert np.array_equal(expected, np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8))
    out = image_to_rgb(image_msg(values[:, :, None], "mono16", pad=2, big_endian=big_endian))
    np.testing.assert_array_equal(out, np.repeat(expected[:, :, None], 3, axis=2))


@pytest.mark.parametrize("encoding,order", [("yuv422", "uyvy"), ("uyvy", "uyvy"),
                                            ("yuyv", "yuyv"), ("yuv422_yuy2", "yuyv")])
def test_yuv422_known_pixels(encoding, order):
    # Neutral chroma gives grey: R = G = B = round(1.164 * (Y - 16)) clipped (BT.601 video range).
    y = np.array([[16, 235, 0, 255, 126, 127]], np.uint8)
    u = v = np.full((1, 3), 128, np.uint8)
    out = image_to_rgb(image_msg(pack_422(y, u, v, order), encoding, pad=4))
    grey = [0, 255, 0, 255, 128, 129]
    np.testing.assert_array_equal(out[0], np.repeat(np.array(grey, np.uint8)[:, None], 3, axis=1))
    # Saturated chroma: red-ish and blue-ish pairs, values from OpenCV's BT.601 conversion.
    y = np.array([[81, 81, 41, 41]], np.uint8)
    u, v = np.array([[90, 240]], np.uint8), np.array([[240, 110]], np.uint8)
    out = image_to_rgb(image_msg(pack_422(y, u, v, order), encoding))
    np.testing.assert_array_equal(out[0], [[254, 0, 0], [254, 0, 0], [0, 0, 255], [0, 0, 255]])


@pytest.mark.parametrize("order", ["uyvy", "yuyv"])
def test_yuv422_numpy_path_is_bit_exact_with_opencv(order, monkeypatch):
    packed = RNG.integers(0, 256, (9, 16, 2), dtype=np.uint8)
    code = cv2.COLOR_YUV2RGB_UYVY if order == "uyvy" else cv2.COLOR_YUV2RGB_YUYV
    reference = cv2.cvtColor(packed, code)
    monkeypatch.setattr(ic, "cv2", None)
    np.testing.assert_array_equal(image_to_rgb(image_msg(packed, order, pad=1)), reference)


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("bits", [8, 16])
def test_bayer_patterns_demosaic_a_flat_colour_exactly(pattern, bits):
    colour = (200, 100, 50)
    if bits == 8:
        mosaic = bayer_mosaic(colour, pattern)
    else:
        mosaic = bayer_mosaic(tuple(c * 257 for c in colour), pattern, dtype=np.uint16)
    out = image_to_rgb(image_msg(mosaic, f"bayer_{pattern}{bits}", pad=2))
    assert out.shape == (8, 10, 3)
    np.testing.assert_array_equal(out.reshape(-1, 3), np.tile(colour, (80, 1)))


def test_bayer_without_opencv_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(ic, "cv2", None)
    with pytest.raises(ImageConversionError, match="bayer_rggb8 needs OpenCV"):
        image_to_rgb(image_msg(bayer_mosaic((1, 2, 3), "rggb"), "bayer_rggb8"))


_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "mono16": 1}


@settings(max_examples=60, deadline=None)
@given(encoding=st.sampled_from(sorted(_CHANNELS)), height=st.integers(1, 9), width=st.integers(1, 9),
       pad=st.integers(0, 9), big_endian=st.booleans(), seed=st.integers(0, 2 ** 32 - 1))
def test_property_round_trip_with_any_size_step_and_endianness(encoding, height, width, pad, big_endian, seed):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (height, width, 1), dtype=np.uint8)
    if encoding == "mono16":
        values = rng.integers(0, 65536, (height, width, 1), dtype=np.uint16)
        rows, expected = values, np.repeat(((values.astype(np.uint32) + 128) // 257).astype(np.uint8), 3, axis=2)
    elif encoding == "mono8":
        rows = rgb[:, :, :1]
        expected = np.repeat(rows, 3, axis=2)
    else:
        rows = {"rgb8": rgb, "bgr8": rgb[:, :, ::-1], "rgba8": np.concatenate([rgb, alpha], axis=2),
                "bgra8": np.concatenate([rgb[:, :, ::-1], alpha], axis=2)}[encoding]
        expected = rgb
    out = image_to_rgb(image_msg(rows, encoding, pad=pad, big_endian=big_endian))
    np.testing.assert_array_equal(out, expected)


@settings(max_examples=30, deadline=None)
@given(height=st.integers(1, 6), pairs=st.integers(1, 6), pad=st.integers(0, 5),
       encoding=st.sampled_from(["yuv422", "uyvy", "yuyv", "yuv422_yuy2"]), seed=st.integers(0, 2 ** 32 - 1))
def test_property_yuv422_matches_opencv(height, pairs, pad, encoding, seed):
    packed = np.random.default_rng(seed).integers(0, 256, (height, 2 * pairs, 2), dtype=np.uint8)
    code = cv2.COLOR_YUV2RGB_UYVY if encoding in ("yuv422", "uyvy") else cv2.COLOR_YUV2RGB_YUYV
    np.testing.assert_array_equal(image_to_rgb(image_msg(packed, encoding, pad=pad)), cv2.cvtColor(packed, code))


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_fill_image_round_trips(encoding):
    rgb = random_rgb(7, 3)
    msg = fill_image(SimpleNamespace(), rgb, encoding)
    assert (msg.encoding, msg.step, msg.is_bigendian, type(msg.data)) == (encoding, 9, 0, bytes)
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


# ----------------------------------------------------------------------------- malformed images
def _msg(**overrides):
    base = dict(height=4, width=5, encoding="rgb8", is_bigendian=0, step=15, data=bytes(60))
    base.update(overrides)
    return SimpleNamespace(**base)


@pytest.mark.parametrize("overrides,match", [
    (dict(data=bytes(59)), r"59 bytes, shorter than step x height = 15 x 4 = 60"),
    (dict(step=20, data=bytes(79)), r"shorter than step x height = 20 x 4 = 80"),
    (dict(width=0), r"zero size \(0x4\)"),
    (dict(height=0, data=b""), r"zero size \(5x0\)"),
    (dict(step=14), r"step 14 is smaller than width x bytes per pixel = 5 x 3 = 15 for rgb8"),
    (dict(encoding="mono16", step=9), r"step 9 is smaller than .* = 10 for mono16"),
    (dict(encoding="rgb9"), r"unsupported image encoding 'rgb9'; supported: rgb8, bgr8"),
    (dict(encoding=""), r"unsupported image encoding ''"),
    (dict(encoding="16UC1"), r"depth image \(encoding '16UC1'\)"),
    (dict(encoding="32FC1"), r"depth image \(encoding '32FC1'\)"),
    (dict(encoding="yuv422", step=10), r"width must be even, got 5"),
    (dict(encoding="bayer_rggb8", height=1, step=5), r"at least 2x2"),
    (dict(data=[300] * 60), r"not a byte sequence"),
    (dict(data=np.zeros(60, np.float32)), r"must be bytes \(uint8\)"),
])
def test_malformed_images_are_rejected_with_a_useful_message(overrides, match):
    with pytest.raises(ImageConversionError, match=match):
        image_to_rgb(_msg(**overrides))


def test_huge_images_are_rejected_before_touching_data():
    with pytest.raises(ImageConversionError, match=r"20x20 = 400 pixels exceeds the limit of 399"):
        image_to_rgb(_msg(height=20, width=20, step=60, data=bytes(1200)), max_pixels=399)
    # A corrupt header claiming 100k x 100k must fail on size, not try to allocate.
    with pytest.raises(ImageConversionError, match="exceeds the limit"):
        image_to_rgb(_msg(height=100_000, width=100_000, step=300_000, data=b""))


def test_not_an_image_and_bad_backend():
    with pytest.raises(ImageConversionError, match="not an Image message"):
        image_to_rgb(object())
    with pytest.raises(ValueError, match="backend must be"):
        image_to_rgb(_msg(), backend="pil")
    with pytest.raises(ImageConversionError, match="no ROS 2 cv_bridge is installed"):
        image_to_rgb(_msg(), backend="cv_bridge")
    assert ImageConversionError.__mro__[1:3] == (ConversionError, ValueError)


def test_cv_bridge_is_used_when_installed_after_the_same_validation(monkeypatch):
    calls = []
    rgb = random_rgb(4, 5)

    class FakeBridge:
        def imgmsg_to_cv2(self, msg, desired_encoding):
            calls.append(desired_encoding)
            if msg.encoding == "bgr8":
                raise RuntimeError("[bgr8] conversion exploded")
            return rgb

    monkeypatch.setattr(ic, "_BRIDGE", FakeBridge())
    assert ic.image_backend() == "cv_bridge"
    np.testing.assert_array_equal(image_to_rgb(_msg()), rgb)
    assert calls == ["rgb8"]
    with pytest.raises(ImageConversionError, match="shorter than step x height"):
        image_to_rgb(_msg(data=bytes(10)))          # validated before the bridge sees it
    with pytest.raises(ImageConversionError, match="cv_bridge could not convert bgr8 image: .*exploded"):
        image_to_rgb(_msg(encoding="bgr8"))
    assert len(calls) == 2
    np.testing.assert_array_equal(image_to_rgb(_msg(), backend="numpy"), np.zeros((4, 5, 3), np.uint8))


# ----------------------------------------------------------------------------- compressed images
def compressed(data: bytes, fmt: str = "jpeg"):
    return SimpleNamespace(format=fmt, data=data)


def encode(ext: str, image: np.ndarray, *params) -> bytes:
    ok, buffer = cv2.imencode(ext, image, list(params))
    assert ok
    return buffer.tobytes()


def smooth_rgb(height=48, width=64):
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 90)], axis=2).astype(np.uint8)


def test_jpeg_decodes_to_rgb():
    rgb = smooth_rgb()
    out = compressed_to_rgb(compressed(encode(".jpg", rgb[:, :, ::-1], cv2.IMWRITE_JPEG_QUALITY, 95)))
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).mean() < 2.0        # lossy, but the channel order is right
    assert out[:, -1, 0].mean() > 200 and out[:, 0, 0].mean() < 30


def test_png_variants_decode_exactly():
    rgb = random_rgb(6, 7)
    np.testing.assert_array_equal(compressed_to_rgb(compressed(encode(".png", rgb[:, :, ::-1]), "png")), rgb)
    bgra = np.concatenate([rgb[:, :, ::-1], np.full((6, 7, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(compressed_to_rgb(compressed(encode(".png", bgra), "rgba8; png compressed")), rgb)
    grey = rgb[:, :, 0]
    np.testing.assert_array_equal(compressed_to_rgb(compressed(encode(".png", grey), "png")),
                                  np.repeat(grey[:, :, None], 3, axis=2))
    grey16 = np.array([[0, 129, 65535]], np.uint16)
    np.testing.assert_array_equal(compressed_to_rgb(compressed(encode(".png", grey16), "mono16; png")),
                                  np.repeat(np.array([[0, 1, 255]], np.uint8)[:, :, None], 3, axis=2))


def test_malformed_compressed_images_are_rejected():
    jpeg = encode(".jpg", smooth_rgb())
    png = encode(".png", random_rgb())
    with pytest.raises(ImageConversionError, match="has no data"):
        compressed_to_rgb(compressed(b""))
    with pytest.raises(ImageConversionError, match="neither JPEG nor PNG"):
        compressed_to_rgb(compressed(b"GIF89a" + bytes(40)))
    with pytest.raises(ImageConversionError, match="truncated JPEG"):
        compressed_to_rgb(compressed(jpeg[: len(jpeg) // 2]))
    with pytest.raises(ImageConversionError, match="corrupt JPEG"):
        compressed_to_rgb(compressed(b"\xff\xd8" + RNG.integers(0, 256, 500, dtype=np.uint8).tobytes() + b"\xff\xd9"))
    # valid header, scrambled entropy-coded data: header parses, decoding must fail or be rejected
    corrupt = bytearray(jpeg)
    start = corrupt.index(b"\xff\xda")                      # start of scan
    corrupt[start + 2: start + 4] = b"\x00\x01"             # impossible SOS length
    with pytest.raises(ImageConversionError, match="corrupt JPEG"):
        compressed_to_rgb(compressed(bytes(corrupt)))
    with pytest.raises(ImageConversionError, match="corrupt PNG"):
        compressed_to_rgb(compressed(png[:40] + bytes(30), "png"))
    with pytest.raises(ImageConversionError, match="compressed depth image"):
        compressed_to_rgb(compressed(png, "16UC1; compressedDepth png"))
    with pytest.raises(ImageConversionError, match="not a CompressedImage"):
        compressed_to_rgb(object())


def test_compressed_size_limit_is_checked_from_the_header():
    jpeg = encode(".jpg", smooth_rgb())
    with pytest.raises(ImageConversionError, match=r"JPEG of 64x48 = 3072 pixels exceeds the limit of 3000"):
        compressed_to_rgb(compressed(jpeg), max_pixels=3000)
    png = bytearray(encode(".png", random_rgb()))
    png[16:20] = (200_000).to_bytes(4, "big")               # IHDR width of a decompression bomb
    with pytest.raises(ImageConversionError, match=r"PNG of 200000x5 = 1000000 pixels exceeds the limit of 999999"):
        compressed_to_rgb(compressed(bytes(png), "png"), max_pixels=999_999)


# ----------------------------------------------------------------------------- camera info
def camera_info(**overrides):
    base = dict(width=640, height=480, distortion_model="plumb_bob", d=[0.0] * 5,
                k=[500.0, 0, 320.5, 0, 510.0, 240.25, 0, 0, 1],
                p=[400.0, 0, 300.0, 0, 0, 410.0, 200.0, 0, 0, 0, 1, 0],
                binning_x=0, binning_y=0,
                roi=SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0, do_rectify=False))
    base.update(overrides)
    return SimpleNamespace(**base)


def test_camera_info_to_intrinsics():
    k = camera_info_to_intrinsics(camera_info())
    assert (k.fx, k.fy, k.cx, k.cy, k.width, k.height) == (500.0, 510.0, 320.5, 240.25, 640, 480)
    p = camera_info_to_intrinsics(camera_info(), use_projection=True)
    assert (p.fx, p.fy, p.cx, p.cy) == (400.0, 410.0, 300.0, 200.0)
    binned = camera_info_to_intrinsics(camera_info(
        binning_x=2, binning_y=2, roi=SimpleNamespace(x_offset=100, y_offset=40, width=400, height=300)))
    assert (binned.fx, binned.fy, binned.cx, binned.cy, binned.width, binned.height) == (
        250.0, 255.0, 110.25, 100.125, 200, 150)


@pytest.mark.parametrize("overrides,match", [
    (dict(k=[0.0] * 9), "all zeros: the camera is not calibrated"),
    (dict(k=[500.0, 0, 320, 0, float("nan"), 240, 0, 0, 1]), "NaN or inf"),
    (dict(k=[-500.0, 0, 320, 0, 500, 240, 0, 0, 1]), "focal lengths must be positive"),
    (dict(k=[500.0, 0, 320]), "K has 3 values, expected 9"),
    (dict(width=0), r"zero image size \(0x480\)"),
    (dict(roi=SimpleNamespace(x_offset=600, y_offset=0, width=100, height=100)), "does not fit"),
])
def test_bad_camera_info_is_rejected(overrides, match):
    with pytest.raises(CameraInfoError, match=match):
        camera_info_to_intrinsics(camera_info(**overrides))


def test_distortion_is_reported():
    assert camera_info_distortion(camera_info()) is None
    assert camera_info_distortion(camera_info(d=[])) is None
    d = camera_info_distortion(camera_info(d=[-0.1, 0.01, 0, 0, 0]))
    assert d.model == "plumb_bob" and d.coefficients == (-0.1, 0.01, 0.0, 0.0, 0.0)


# ----------------------------------------------------------------------------- poses
def _vec(x, y, z, w=None):
    return SimpleNamespace(x=x, y=y, z=z) if w is None else SimpleNamespace(x=x, y=y, z=z, w=w)


def pose(position=(1.0, 2.0, 3.0), quaternion=(0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4))):
    return SimpleNamespace(position=_vec(*position), orientation=_vec(*quaternion))


YAW_90 = np.array([[0.0, -1, 0, 1], [1, 0, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]])


def test_pose_message_shapes():
    stamped = SimpleNamespace(header=SimpleNamespace(frame_id="map"), pose=pose())
    odometry = SimpleNamespace(header=None, child_frame_id="base", pose=SimpleNamespace(pose=pose(), covariance=[0.0] * 36))
    transform = SimpleNamespace(header=None, transform=SimpleNamespace(
        translation=_vec(1.0, 2.0, 3.0), rotation=_vec(0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4))))
    for msg in (pose(), stamped, odometry, transform):
        matrix = pose_to_matrix(msg)
        assert matrix.dtype == np.float64
        np.testing.assert_allclose(matrix, YAW_90, atol=1e-12)


def test_pose_quaternion_is_normalised_and_bad_ones_rejected():
    q = 2 * np.array([0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4)])
    np.testing.assert_allclose(pose_to_matrix(pose(quaternion=tuple(q))), YAW_90, atol=1e-12)
    with pytest.raises(PoseConversionError, match="quaternion is zero"):
        pose_to_matrix(pose(quaternion=(0.0, 0.0, 0.0, 0.0)))
    with pytest.raises(PoseConversionError, match="NaN or inf"):
        pose_to_matrix(pose(position=(float("inf"), 0.0, 0.0)))
    with pytest.raises(PoseConversionError, match="holds no pose"):
        pose_to_matrix(SimpleNamespace(header=None))


def test_link_to_optical():
    validate_pose(LINK_TO_OPTICAL)
    # optical z (forward) is link x, optical x (right) is link -y, optical y (down) is link -z
    np.testing.assert_array_equal(LINK_TO_OPTICAL[:3, :3] @ [0, 0, 1], [1, 0, 0])
    np.testing.assert_array_equal(LINK_TO_OPTICAL[:3, :3] @ [1, 0, 0], [0, -1, 0])
    np.testing.assert_array_equal(LINK_TO_OPTICAL[:3, :3] @ [0, 1, 0], [0, 0, -1])


# ----------------------------------------------------------------------------- stamps
def test_stamps():
    t = Stamp(sec=1_700_000_000, nanosec=123_456_789)
    assert stamp_to_ns(t) == 1_700_000_000_123_456_789
    assert stamp_to_ns(SimpleNamespace(stamp=t, frame_id="cam")) == 1_700_000_000_123_456_789
    assert stamp_to_ns(SimpleNamespace(header=SimpleNamespace(stamp=t, frame_id="cam"))) == 1_700_000_000_123_456_789
    back = ns_to_stamp(1_700_000_000_123_456_789, Stamp)
    assert (back.sec, back.nanosec) == (1_700_000_000, 123_456_789)
    neg = ns_to_stamp(-1, Stamp)
    assert (neg.sec, neg.nanosec) == (-1, 999_999_999)
    with pytest.raises(ConversionError, match=r"nanosec must be in \[0, 1e9\)"):
        stamp_to_ns(Stamp(0, 1_000_000_000))
    with pytest.raises(ConversionError, match="int32 seconds"):
        ns_to_stamp(2 ** 31 * 1_000_000_000, Stamp)
    with pytest.raises(ConversionError, match="whole nanoseconds"):
        ns_to_stamp(1.5, Stamp)
    with pytest.raises(ConversionError, match="not a Time"):
        stamp_to_ns(object())


@settings(max_examples=200, deadline=None)
@given(st.integers(-(2 ** 31) * 10 ** 9, 2 ** 31 * 10 ** 9 - 1))
def test_property_stamp_round_trip_is_exact(ns):
    stamp = ns_to_stamp(ns, Stamp)
    assert 0 <= stamp.nanosec < 10 ** 9
    assert stamp_to_ns(stamp) == ns


# ----------------------------------------------------------------------------- real message types
def test_real_ros_message_types():
    sensor_msgs = pytest.importorskip("sensor_msgs.msg", reason="ROS 2 message wheels not installed")
    geometry_msgs = pytest.importorskip("geometry_msgs.msg")
    nav_msgs = pytest.importorskip("nav_msgs.msg")
    builtin = pytest.importorskip("builtin_interfaces.msg")

    rgb = random_rgb(6, 8)
    image = fill_image(sensor_msgs.Image(), rgb, "bgr8")
    np.testing.assert_array_equal(image_to_rgb(image), rgb)
    image.data = image.data[:-1]
    with pytest.raises(ImageConversionError, match="shorter than step x height"):
        image_to_rgb(image)

    jpeg = sensor_msgs.CompressedImage(format="jpeg", data=encode(".png", rgb[:, :, ::-1]))
    np.testing.assert_array_equal(compressed_to_rgb(jpeg), rgb)

    info = sensor_msgs.CameraInfo(width=640, height=480, k=[500.0, 0, 320, 0, 500, 240, 0, 0, 1])
    assert camera_info_to_intrinsics(info).fx == 500.0
    assert camera_info_distortion(info) is None

    stamped = geometry_msgs.PoseStamped()
    stamped.pose.position.x, stamped.pose.orientation.w = 4.0, 1.0
    odometry = nav_msgs.Odometry()
    odometry.pose.pose = stamped.pose
    for msg in (stamped, odometry):
        np.testing.assert_array_equal(pose_to_matrix(msg)[:3, 3], [4.0, 0.0, 0.0])
    np.testing.assert_array_equal(pose_to_matrix(geometry_msgs.PoseStamped()), np.eye(4))  # w defaults to 1
    with pytest.raises(PoseConversionError, match="quaternion is zero"):
        pose_to_matrix(geometry_msgs.Pose(orientation=geometry_msgs.Quaternion(w=0.0)))

    stamp = ns_to_stamp(1_700_000_000_000_000_001)
    assert isinstance(stamp, builtin.Time)
    image.header.stamp = stamp
    assert stamp_to_ns(image) == stamp_to_ns(image.header) == 1_700_000_000_000_000_001
