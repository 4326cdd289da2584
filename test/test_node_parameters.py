"""vlm2_node's parameters without a ROS graph: config/vlm2.yaml documents exactly what the node
declares (same names, same defaults), and validation rejects bad values naming the parameter."""
from pathlib import Path

import pytest
import yaml

pytest.importorskip("rclpy", reason="topic-name validation uses rclpy (installed by `make`)")
from vlm2_ros.ros.parameters import (CAMERA_SPECS, SPECS, ParameterError, camera_parameter,  # noqa: E402
                                     default_values, settings_from_values)

CONFIG = Path(__file__).resolve().parents[1] / "config" / "vlm2.yaml"


def flatten(tree: dict, prefix: str = "") -> dict:
    """ROS params-file nesting (a: {b: 1}) to dotted names ({'a.b': 1}), as rclpy reads it."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def test_config_file_documents_every_parameter_with_its_default():
    doc = yaml.safe_load(CONFIG.read_text())
    values = flatten(doc["/**"]["ros__parameters"])
    assert values == default_values(values["camera_names"])
    lines = [line.strip() for line in CONFIG.read_text().splitlines()]
    for spec in SPECS:      # every parameter sits in a commented block (blank-line separated)
        i = next(i for i, line in enumerate(lines) if line.startswith(spec.name + ":"))
        block = []
        while i > 0 and lines[i - 1]:
            i -= 1
            block.append(lines[i])
        assert any(line.startswith("#") for line in block), f"{spec.name} has no comment in config/vlm2.yaml"
    assert settings_from_values(values).cameras[0].image_topic == "camera/image_raw"


def test_every_spec_has_a_description_and_a_consistent_range():
    for spec in SPECS + CAMERA_SPECS:
        assert spec.description
        if spec.low is not None:
            assert spec.low <= spec.default <= spec.high, spec.name
        if spec.choices:
            assert spec.default in spec.choices, spec.name


def test_defaults_validate():
    s = settings_from_values({})
    assert s.model_preset == "tiny" and s.device == "cpu" and s.checkpoint_dir is None
    assert [c.name for c in s.cameras] == ["camera"] and s.qos_reliability == "best_effort"
    assert s.episodic_replacement is None                                # the checkpoint's
    assert settings_from_values({"memory.episodic_replacement": "place"}).episodic_replacement == "place"


@pytest.mark.parametrize("values, parameter, fragment", [
    ({"model.preset": "gpt5"}, "model.preset", "must be one of"),
    ({"model.device": "tpu"}, "model.device", "'cpu', 'cuda' or 'cuda:N'"),
    ({"model.dtype": "int4"}, "model.dtype", "must be one of"),
    ({"ingest.rate_hz": -1.0}, "ingest.rate_hz", "must be in"),
    ({"ingest.rate_hz": float("nan")}, "ingest.rate_hz", "finite"),
    ({"ingest.queue_size": 0}, "ingest.queue_size", "must be in"),
    ({"ingest.queue_size": 2.5}, "ingest.queue_size", "type int"),
    ({"snapshot.start_fresh": 1}, "snapshot.start_fresh", "type bool"),
    ({"query.timeout_s": 0.0}, "query.timeout_s", "must be in"),
    ({"camera_names": []}, "camera_names", "at least one camera"),
    ({"camera_names": ["a", "a"]}, "camera_names", "duplicates"),
    ({"camera_names": ["1cam"]}, "camera_names", "must be a letter"),
    ({"camera_names": "camera"}, "camera_names", "list of strings"),
    ({"cameras.camera.image_topic": "bad topic!"}, "cameras.camera.image_topic", "not a valid topic name"),
    ({"cameras.camera.image_topic": ""}, "cameras.camera.image_topic", "exactly one of"),
    ({"cameras.camera.compressed_topic": "camera/image_raw/compressed"}, "cameras.camera.image_topic",
     "exactly one of"),
    ({"cameras.camera.pose_type": "tf"}, "cameras.camera.pose_type", "must be one of"),
    ({"memory.episodic_replacement": "newest"}, "memory.episodic_replacement", "must be one of"),
])
def test_bad_values_are_rejected_naming_the_parameter(values, parameter, fragment):
    with pytest.raises(ParameterError, match=fragment) as info:
        settings_from_values(values)
    assert info.value.parameter == parameter
    assert f"parameter '{parameter}'" in str(info.value)


def test_camera_defaults_follow_the_camera_name():
    s = settings_from_values({"camera_names": ["front", "rear"],
                              camera_parameter("rear", "pose_topic"): "rear/odom",
                              camera_parameter("rear", "pose_type"): "odometry"})
    front, rear = s.cameras
    assert front.image_topic == "front/image_raw" and front.camera_info_topic == "front/camera_info"
    assert rear.pose_topic == "rear/odom" and rear.pose_type == "odometry" and front.pose_topic == ""


def test_jetson_profile_names_only_declared_parameters_and_validates():
    profile = yaml.safe_load((CONFIG.parent / "jetson_orin.yaml").read_text())
    values = flatten(profile["/**"]["ros__parameters"])
    assert set(values) <= set(default_values())
    settings = settings_from_values(values)
    assert (settings.backend, settings.dtype, settings.device, settings.geometry_window) == ("onnx", "fp16", "cuda", 4)
