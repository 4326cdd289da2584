"""Offline bag replay: rosbag2 (sqlite3 and mcap) -> engine -> answers with evidence from the bag."""
import json

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from vlm2_ros.bag_stream import BagError, iter_frames, open_bag, resolve_topics
from vlm2_ros.cli import main

TS = get_typestore(Stores.ROS2_KILTED)
T = TS.types
STAMP0 = 1_700_000_000_000_000_000
W, H = 64, 48


def header(ns, frame_id="camera"):
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9),
                                    frame_id=frame_id)


def write_bag(path, storage, frames=12, compressed=False, bad_frame=None):
    rng = np.random.default_rng(0)
    plugin = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}[storage]
    stamps = []
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        kind = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
        image_conn = writer.add_connection("/camera/image", kind, typestore=TS)
        info_conn = writer.add_connection("/camera/camera_info", "sensor_msgs/msg/CameraInfo", typestore=TS)
        pose_conn = writer.add_connection("/camera/pose", "geometry_msgs/msg/PoseStamped", typestore=TS)
        roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        for i in range(frames):
            ns = STAMP0 + i * 100_000_000
            k = np.array([50.0, 0, W / 2, 0, 50.0, H / 2, 0, 0, 1])
            info = T["sensor_msgs/msg/CameraInfo"](header=header(ns), height=H, width=W, distortion_model="plumb_bob",
                                                   d=np.zeros(5), k=k, r=np.eye(3).ravel(),
                                                   p=np.array([50.0, 0, W / 2, 0, 0, 50.0, H / 2, 0, 0, 0, 1, 0]),
                                                   binning_x=0, binning_y=0, roi=roi)
            writer.write(info_conn, ns, TS.serialize_cdr(info, info.__msgtype__))
            pose = T["geometry_msgs/msg/PoseStamped"](header=header(ns, "map"), pose=T["geometry_msgs/msg/Pose"](
                position=T["geometry_msgs/msg/Point"](x=0.1 * i, y=0.0, z=1.5),
                orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)))
            writer.write(pose_conn, ns, TS.serialize_cdr(pose, pose.__msgtype__))
            rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
            if compressed:
                ok, jpeg = cv2.imencode(".jpg", rgb[..., ::-1])
                msg = T["sensor_msgs/msg/CompressedImage"](header=header(ns), format="jpeg", data=jpeg.ravel())
            else:
                data = rgb.ravel() if i != bad_frame else rgb.ravel()[:100]   # truncated data: malformed
                msg = T["sensor_msgs/msg/Image"](header=header(ns), height=H, width=W, encoding="rgb8",
                                                 is_bigendian=0, step=W * 3, data=data)
            writer.write(image_conn, ns, TS.serialize_cdr(msg, msg.__msgtype__))
            stamps.append(ns)
    return stamps


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
@pytest.mark.parametrize("compressed", [False, True])
def test_bag_stream_pairs_images_with_camera_info_and_pose(tmp_path, storage, compressed):
    stamps = write_bag(tmp_path / "bag", storage, frames=5, compressed=compressed)
    reader = open_bag(tmp_path / "bag")
    topics = resolve_topics(reader)
    assert (topics.image, topics.camera_info, topics.pose) == ("/camera/image", "/camera/camera_info", "/camera/pose")
    frames = list(iter_frames(reader, topics))
    reader.close()
    assert [f.stamp_ns for f in frames] == stamps
    assert all(f.image.shape == (H, W, 3) and f.image.dtype == np.uint8 for f in frames)
    assert frames[0].camera_info is not None and frames[0].camera_info.fx == 50.0
    assert np.allclose(frames[3].pose[:3, 3], [0.3, 0.0, 1.5])


def test_replay_cli_ingests_bag_and_cites_bag_stamps(tmp_path, capsys):
    stamps = write_bag(tmp_path / "bag", "mcap", frames=12, bad_frame=4)
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "Which is closer to the camera?", "options": ["chair", "lamp"],
                                     "ground_truth": "A"}) + "\n")
    rc = main(["replay", str(tmp_path / "bag"), "--questions", str(questions), "--question",
               "How many chairs are in this room?", "--answers", str(tmp_path / "answers.jsonl"),
               "--json", str(tmp_path / "summary.json")])
    assert rc == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["frames_ingested"] == 11 and summary["frames_skipped"] == 1 and summary["questions"] == 2
    answers = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert answers[0]["question"] == ("Which is closer to the camera?\nOptions:\nA. chair\nB. lamp\n"
                                      "Answer with the option's letter from the given choices directly.")
    assert answers[0]["kind"] == "choice" and answers[0]["ground_truth"] == "A"
    assert answers[1]["kind"] == "number"
    for a in answers:
        assert a["evidence_stamps_ns"] and set(a["evidence_stamps_ns"]) <= set(stamps)
    assert "ground truth: A" in capsys.readouterr().out


def test_replay_errors_are_clear(tmp_path, capsys):
    assert main(["replay", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    write_bag(tmp_path / "bag", "sqlite3", frames=2)
    with pytest.raises(BagError, match="topic '/nope'"):
        resolve_topics(open_bag(tmp_path / "bag"), image_topic="/nope")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok"}\n{not json}\n')
    assert main(["replay", str(tmp_path / "bag"), "--questions", str(bad)]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err


def test_every_way_into_the_engine_builds_the_prompt_the_model_learnt():
    from vlm2_ros.model.prompt import CHOICE_INSTRUCTION, OPEN_INSTRUCTION, build_prompt
    from vlm2_ros.evaluation.predictors import format_prompt
    from vlm2_ros.ros.queries import prepare_question

    choice = "Q?\nOptions:\nA. x\nB. y\n" + CHOICE_INSTRUCTION
    assert build_prompt("Q?", ["A. x", "B. y"]) == build_prompt(" Q? ", ["x", "y"]) == choice
    # evaluation, training and replay read records; the node reads a request's fields
    assert format_prompt({"question": "Q?", "options": ["A. x", "B. y"], "question_type": "route_planning"}) == choice
    assert prepare_question("Q?", ["x", "y"], 0, 0.0, max_length=1000, default_timeout_s=1.0).text == choice
    assert format_prompt({"question": "How far?"}) == "How far?\n" + OPEN_INSTRUCTION
    assert prepare_question("How far?", [], 1, 0.0, max_length=1000, default_timeout_s=1.0).text == \
        "How far?\n" + OPEN_INSTRUCTION
