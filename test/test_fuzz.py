"""Property-based tests (hypothesis) of message conversion and question parsing over arbitrary
input, and bounded fuzz runs of the message-to-tensor path (vlm2_ros/reliability/fuzz.py).

test_image_conversion.py checks conversions of well-formed messages exactly; here the input is
anything the wire can carry, and the property is: a result within the contract, or the module's
own error, never another exception.
"""
import math
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlm2_ros.engine.answer import ANSWER_KINDS, parse_choice, parse_number
from vlm2_ros.model.prompt import expected_answer_kind, question_options
from vlm2_ros.engine.engine import QueryError
from vlm2_ros.reliability.fuzz import atheris_available, decode_message, run_fuzz
from vlm2_ros.reliability.node_process import ERROR_CODE_NAMES
from vlm2_ros.ros import image_conversion as ic
from vlm2_ros.ros.image_conversion import (SUPPORTED_ENCODINGS, CameraInfoError, ImageConversionError,
                                           PoseConversionError, camera_info_to_intrinsics, compressed_to_rgb,
                                           image_to_rgb, pose_to_matrix)
from vlm2_ros.ros.queries import OPTION_LETTERS, QueryFailure, prepare_question

U32 = st.integers(0, 2**32 - 1)
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64)
RGB = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
JPEG = cv2.imencode(".jpg", RGB)[1].tobytes()
PNG = cv2.imencode(".png", RGB)[1].tobytes()


@pytest.fixture(autouse=True)
def _numpy_backend(monkeypatch):
    monkeypatch.setattr(ic, "_BRIDGE", None)
    monkeypatch.setattr(ic, "_BRIDGE_CHECKED", True)


# ----------------------------------------------------------------------------- image conversion
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(height=st.one_of(st.integers(0, 12), U32), width=st.one_of(st.integers(0, 12), U32),
       step=st.one_of(st.integers(0, 64), U32), big_endian=st.integers(0, 255),
       encoding=st.one_of(st.sampled_from(SUPPORTED_ENCODINGS + ("32FC1", "16UC1", "RGB8", " mono8 ")),
                          st.text(max_size=12)),
       data=st.binary(max_size=2048))
def test_any_image_message_converts_within_contract_or_is_rejected(height, width, step, big_endian, encoding, data):
    msg = SimpleNamespace(height=height, width=width, step=step, is_bigendian=big_endian, encoding=encoding, data=data)
    try:
        rgb = image_to_rgb(msg, backend="numpy")
    except ImageConversionError:
        return
    assert rgb.dtype == np.uint8 and rgb.shape == (height, width, 3) and rgb.flags.c_contiguous


def _mutated(data: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    out = bytearray(data)
    for position, value in edits:
        out[position % len(out)] = value
    return bytes(out[: max(2, len(out) - cut)])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(source=st.sampled_from([JPEG, PNG]), fmt=st.sampled_from(["jpeg", "png", "rgb8; jpeg compressed bgr8", ""]),
       edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
       cut=st.integers(0, 64), noise=st.one_of(st.none(), st.binary(max_size=256)))
def test_any_compressed_message_decodes_within_contract_or_is_rejected(source, fmt, edits, cut, noise):
    data = noise if noise is not None else _mutated(source, edits, cut)
    started = time.monotonic()
    try:
        rgb = compressed_to_rgb(SimpleNamespace(format=fmt, data=data))
    except ImageConversionError:
        return
    finally:
        assert time.monotonic() - started < 2.0, "a small message must not take seconds to decode"
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3


def test_png_chunk_declaring_more_than_follows_is_refused_before_decoding():
    """Found by the atheris run: OpenCV allocated a PNG chunk's declared length (4 GB here) first."""
    png = bytearray(PNG)
    idat = png.index(b"IDAT") - 4
    png[idat:idat + 4] = (0xF60000A1).to_bytes(4, "big")
    started = time.monotonic()
    with pytest.raises(ImageConversionError, match=r"corrupt PNG: chunk b'IDAT' at byte \d+ declares 4127195297 bytes"):
        compressed_to_rgb(SimpleNamespace(format="png", data=bytes(png)))
    assert time.monotonic() - started < 0.5


def test_png_chunk_declaring_too_much_after_a_malformed_iend_is_refused_too():
    """Found by the next atheris run: OpenCV read on past an IEND chunk that carried data."""
    png = bytearray(PNG)
    after_ihdr = 8 + 25
    fake_iend = (4).to_bytes(4, "big") + b"IEND" + b"data" + bytes(4)
    huge = (0xF0000000).to_bytes(4, "big") + b"IDAT" + bytes(64)
    started = time.monotonic()
    with pytest.raises(ImageConversionError, match="corrupt PNG: chunk b'IDAT'"):
        compressed_to_rgb(SimpleNamespace(format="png", data=bytes(png[:after_ihdr]) + fake_iend + huge))
    assert time.monotonic() - started < 0.5


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(k=st.lists(FLOATS, min_size=9, max_size=9), width=U32, height=U32,
       binning=st.tuples(U32, U32), roi=st.tuples(U32, U32, U32, U32))
def test_any_camera_info_gives_valid_intrinsics_or_is_rejected(k, width, height, binning, roi):
    msg = SimpleNamespace(k=k, p=k + [0.0, 0.0, 0.0], width=width, height=height, binning_x=binning[0],
                          binning_y=binning[1], roi=SimpleNamespace(x_offset=roi[0], y_offset=roi[1], width=roi[2],
                                                                    height=roi[3]))
    try:
        K = camera_info_to_intrinsics(msg)
    except CameraInfoError:
        return
    assert all(math.isfinite(v) for v in (K.fx, K.fy, K.cx, K.cy)) and K.fx > 0 and K.fy > 0
    assert K.width > 0 and K.height > 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.tuples(FLOATS, FLOATS, FLOATS), orientation=st.tuples(FLOATS, FLOATS, FLOATS, FLOATS))
def test_any_pose_gives_a_rigid_transform_or_is_rejected(position, orientation):
    xyz = SimpleNamespace(x=position[0], y=position[1], z=position[2])
    quaternion = SimpleNamespace(x=orientation[0], y=orientation[1], z=orientation[2], w=orientation[3])
    try:
        matrix = pose_to_matrix(SimpleNamespace(pose=SimpleNamespace(position=xyz, orientation=quaternion)))
    except PoseConversionError:
        return
    rotation = matrix[:3, :3]
    assert np.all(np.isfinite(matrix)) and np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-6)
    assert np.isclose(np.linalg.det(rotation), 1.0, atol=1e-6)


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=512))
def test_fuzz_input_decoder_keeps_every_field_in_its_wire_range(data):
    kind, msg = decode_message(data)
    if kind == 0:
        assert 0 <= msg.height < 2**16 and 0 <= msg.width < 2**16 and msg.step >= 0
        assert -(2**31) <= msg.header.stamp.sec < 2**31 and 0 <= msg.header.stamp.nanosec < 2**32


# ----------------------------------------------------------------------------- question parsing
TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=300)


@settings(max_examples=400, deadline=None)
@given(question=TEXT, options=st.lists(st.text(max_size=20), max_size=10), answer_type=st.integers(0, 255),
       timeout=FLOATS, max_length=st.integers(1, 400))
def test_any_request_becomes_a_question_or_a_known_error_code(question, options, answer_type, timeout, max_length):
    try:
        q = prepare_question(question, options, answer_type, timeout, max_length=max_length, default_timeout_s=30.0)
    except QueryFailure as failure:
        assert failure.code in ERROR_CODE_NAMES.values() and str(failure)
        return
    assert q.text.strip() and len(q.text) <= max_length
    assert q.option_letters == tuple(OPTION_LETTERS[: len(options)]) and len(options) != 1
    assert math.isfinite(q.timeout_s) and q.timeout_s > 0


@settings(max_examples=400, deadline=None)
@given(question=st.text(max_size=300), answer=st.text(max_size=60))
def test_question_and_answer_parsing_invariants(question, answer):
    letters = question_options(question)
    assert letters == [] or (len(letters) >= 2 and len(set(letters)) == len(letters) and set(letters) <= set("ABCDEFGH"))
    assert expected_answer_kind(question) in ANSWER_KINDS
    value = parse_number(answer)
    assert value is None or math.isfinite(value)
    assert parse_choice(answer, letters) in [None, *letters]


def test_numbers_too_large_for_a_float_are_not_parsed():
    assert parse_number("1e999 meters") is None and parse_number("9" * 400) is None and parse_number("2.5") == 2.5


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(question=st.text(alphabet=st.characters(), max_size=40))     # surrogates and controls included
def test_engine_answers_any_text_or_refuses_it_as_a_query_error(tiny_model_factory, question):
    engine = _engine(tiny_model_factory)
    try:
        answer = engine.query(question, max_new_tokens=1)
    except QueryError:
        return
    assert answer.kind in ANSWER_KINDS and 0 <= answer.confidence <= 1


_ENGINES: dict = {}


def _engine(factory):
    """One engine with a few frames for the property above (built once: hypothesis calls it often)."""
    if "engine" not in _ENGINES:
        from vlm2_ros.engine.engine import SpatialMemoryEngine
        engine = SpatialMemoryEngine(factory(), weights="w")
        for i, frame in enumerate(np.random.default_rng(0).integers(0, 256, (2, 96, 128, 3), dtype=np.uint8)):
            engine.ingest(frame, i + 1)
        _ENGINES["engine"] = engine
    return _ENGINES["engine"]


# ----------------------------------------------------------------------------- bounded fuzz runs
def test_random_mutation_fuzz_of_the_message_to_tensor_path(tmp_path):
    result = run_fuzz(4.0, tmp_path, seed=2, engine="random")
    assert result["failures"] == 0, result["failure_examples"]
    assert result["executions"] > 200 and result["accepted"] > 0 and result["rejected"] > 0, result


def test_atheris_fuzz_of_the_message_to_tensor_path(tmp_path):
    if not atheris_available():
        pytest.skip("atheris is not installed (requirements.txt pins it where a wheel exists); "
                    "the random-mutation run above covers the same target without coverage feedback")
    result = run_fuzz(8.0, tmp_path, seed=2, engine="atheris")
    assert result["failures"] == 0, result["failure_examples"]
    assert result["executions"] > 1000 and result["coverage_edges"] > 0, result
