"""The bad-input matrix (vlm2_ros/reliability/bad_inputs.py): every message field, request and
file that can be wrong gets a clear error and a counted rejection, the node stays up, and the
memory is unchanged.

Messages and requests go to ONE node process for the module (a tiny untrained checkpoint saved
by the test, reliable QoS, time-jump policy `keep`); `BadInputHarness.try_case` checks, after each,
that the rejection was counted (~/memory_status or /diagnostics), that the node is alive and that
the memory did not change. Files are damaged copies of a good snapshot and checkpoint, loaded at
engine level; the cases an existing test already checks are listed with it and not repeated.
"""
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

from vlm2_ros.model.checkpoint import WEIGHTS_NAME, build_model, save_checkpoint
from vlm2_ros.model.presets import preset_config
from vlm2_ros.reliability.bad_inputs import (FILE_CASES, REQUEST_CASES, TOPIC_CASES, BadInputHarness,
                                             file_case_fixtures, run_file_case)

DOMAIN = 20 + os.getpid() % 50
ROOT = Path(__file__).resolve().parents[1]


def case_id(case) -> str:
    return case.name.replace(" ", "-")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(build_model(preset_config("tiny")), tmp_path_factory.mktemp("matrix") / "checkpoint")


@pytest.fixture(scope="module")
def harness(checkpoint, tmp_path_factory):
    pytest.importorskip("rclpy", reason="rclpy is installed by `make` (ROS 2 wheels)")
    with BadInputHarness(tmp_path_factory.mktemp("bad-input-node"), DOMAIN, checkpoint_dir=str(checkpoint)) as h:
        yield h


# ---------------------------------------------------------------------------- messages and requests
@pytest.mark.ros
@pytest.mark.parametrize("case", TOPIC_CASES + REQUEST_CASES, ids=case_id)
def test_bad_message_or_request_is_rejected_counted_and_harmless(harness, case):
    result = harness.try_case(case)
    assert result.ok, result.detail


@pytest.mark.ros
def test_question_that_is_not_utf8_cannot_leave_the_client(harness):
    """ROS strings are UTF-8: rclpy refuses to serialize a lone surrogate, so nothing reaches the
    node (invalid UTF-8 from other clients is decoded with U+FFFD, see the next test)."""
    before = harness.settled_status()
    with pytest.raises(UnicodeEncodeError):
        harness.client.query("\udcff how many chairs?")
    time.sleep(0.5)
    assert harness.node.alive()
    assert harness.settled_status().queries_failed == before.queries_failed


@pytest.mark.ros
def test_frame_id_not_utf8_on_the_wire_is_decoded_with_replacement_characters(harness):
    """A frame_id only labels evidence: the frame is ingested, its id shows U+FFFD."""
    from rclpy.serialization import serialize_message

    from vlm2_ros.reliability.bad_inputs import _image
    before = harness.settled_status()
    raw = bytearray(serialize_message(_image(harness.context)))
    at = raw.index(b"cam_optical_frame")
    raw[at:at + 3] = b"\xff\xfe\xfd"
    harness.publishers["image"].publish(bytes(raw))
    status = harness.client.wait_for_status(lambda s: s.frames_ingested == before.frames_ingested + 1, timeout_s=15)
    assert "\ufffd" in status.last_frame_id and status.last_frame_id.endswith("_optical_frame")


@pytest.mark.ros
def test_pose_with_a_huge_quaternion_is_normalised_not_fatal(harness):
    """Regression: a finite quaternion too large for its norm (hypothesis found 1.3e154) raised a
    ValueError the pose callback did not catch, and the executor took the node down (exit 1)."""
    from vlm2_ros.reliability.bad_inputs import _image, _pose
    before = harness.settled_status()
    harness.publishers["pose"].publish(_pose(harness.context, orientation=(0.0, 0.0, 0.0, 1.3407807929942597e154)))
    time.sleep(0.3)
    harness.publishers["image"].publish(_image(harness.context))
    harness.client.wait_for_status(lambda s: s.frames_ingested == before.frames_ingested + 1, timeout_s=15)
    assert harness.node.alive()
    response = harness.client.query("How many chairs are in this room?")
    assert response.error_code == response.OK, response.error_message


@pytest.mark.ros
def test_restart_on_a_tampered_snapshot_starts_empty_and_says_why(harness):
    from vlm2_ros.reliability.bad_inputs import _retensor
    assert harness.node.stop() == 0, harness.node.log()[-3000:]
    snapshot = Path(harness.node.params["snapshot.dir"])
    _retensor(snapshot, lambda t: t.update({"episodic.tokens": t["episodic.tokens"][:, :, :2]}))
    harness.client.statuses.clear()
    harness.node.start()
    status = harness.client.wait_for_status(lambda s: s.lifecycle_state == "active", timeout_s=180)
    assert (status.working_memory_size, status.episodic_memory_size, status.frames_ingested) == (0, 0, 0)
    log = harness.node.log()
    assert "ignoring snapshot" in log and "'episodic.tokens' has shape" in log, log[-3000:]
    response = harness.client.query("How many chairs are in this room?")
    assert response.error_code == response.MEMORY_EMPTY


def test_node_start_with_a_broken_checkpoint_exits_1_naming_the_file(checkpoint, tmp_path):
    pytest.importorskip("rclpy", reason="rclpy is installed by `make` (ROS 2 wheels)")
    from vlm2_ros.ros.node_client import node_command
    broken = tmp_path / "checkpoint"
    broken.mkdir()
    for f in checkpoint.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = broken / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result = subprocess.run(node_command({"model.checkpoint_dir": str(broken)}), capture_output=True, text=True,
                            env={**os.environ, "ROS_DOMAIN_ID": str(DOMAIN + 50)}, timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"{weights}: checksum mismatch" in output, output


# ---------------------------------------------------------------------------- files
@pytest.fixture(scope="module")
def file_fixtures(tmp_path_factory):
    return file_case_fixtures(tmp_path_factory.mktemp("files"))


@pytest.mark.parametrize("case", [c for c in FILE_CASES if not c.covered_by], ids=case_id)
def test_bad_file_is_refused_naming_the_problem_and_memory_is_unchanged(file_fixtures, case, tmp_path):
    engine, snapshot, good_checkpoint = file_fixtures
    result = run_file_case(case, engine, snapshot, good_checkpoint, tmp_path)
    assert result.ok, result.detail


def test_file_cases_not_run_here_name_the_test_that_covers_them():
    for case in FILE_CASES:
        if case.covered_by:
            path, test = case.covered_by.split("::")
            assert f"def {test}(" in (ROOT / path).read_text(), case.covered_by

