"""vlm2_node end to end: the node runs as its own process (`python -m vlm2_ros.node`), a synthetic
episode reaches it over real ROS 2 topics, and the test calls its services and action.

One node process serves the tests of this module in order (pytest runs them top to bottom);
the restart test replaces it with a new process on the same snapshot directory. The model is the
tiny preset with untrained weights saved by the test, with long answers (untrained weights rarely
emit end-of-sequence), so that a query lasts long enough to cancel.
"""
import json
import os
import subprocess
import time

import pytest
import torch

rclpy = pytest.importorskip("rclpy", reason="rclpy is installed by `make` (ROS 2 wheels)")
from action_msgs.msg import GoalStatus  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from vlm2_ros.model.prompt import build_prompt  # noqa: E402
from vlm2_ros.model.checkpoint import build_model, save_checkpoint  # noqa: E402
from vlm2_ros.model.presets import preset_config  # noqa: E402
from vlm2_ros.ros.image_conversion import ns_to_stamp  # noqa: E402
from vlm2_ros.ros.node_client import (CameraPublisher, NodeClient, node_command, start_node_process,  # noqa: E402
                                      stamps_of, stop_node_process)
from vlm2_ros.sim.api import sample_episode  # noqa: E402
from vlm2_ros.srv import SpatialQuery  # noqa: E402

pytestmark = pytest.mark.ros
DOMAIN = 150 + os.getpid() % 80
BASE_NS = 1_700_000_000 * 10**9          # episode stamps start here (room for a time jump back)
FRAMES = 16


@pytest.fixture(scope="module")
def episode():
    return sample_episode(seed=5, num_frames=FRAMES, width=128, height=96)


@pytest.fixture(scope="module")
def stamps(episode):
    return [BASE_NS + int(s) for s in episode.stamps_ns]


@pytest.fixture(scope="module")
def node_params(tmp_path_factory):
    root = tmp_path_factory.mktemp("node")
    torch.manual_seed(0)
    save_checkpoint(build_model(preset_config("tiny")), root / "checkpoint")
    return {
        "model.checkpoint_dir": str(root / "checkpoint"),
        "model.max_new_tokens": 400,
        "camera_names": ["front", "jpeg"],
        "cameras.front.pose_topic": "front/pose",
        "cameras.jpeg.image_topic": "",
        "cameras.jpeg.compressed_topic": "jpeg/image_raw/compressed",
        "ingest.rate_hz": 0.0,
        "ingest.queue_size": 64,
        "snapshot.dir": str(root / "snapshot"),
        "snapshot.period_s": 0.0,
        "status_period_s": 0.2,
        "ingest.no_image_warning_s": 0.0,
    }


class Harness:
    def __init__(self, params, log_path):
        self.params, self.log_path = params, log_path
        self.env = {"ROS_DOMAIN_ID": str(DOMAIN)}
        self.process = None

    def start(self):
        self.process = start_node_process(self.params, log_path=self.log_path, env=self.env)
        try:
            self.client.wait_for_node(timeout_s=90)
        except Exception:
            raise AssertionError(f"node did not come up: {self.log()}") from None

    def stop(self) -> int:
        return stop_node_process(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def harness(node_params, tmp_path_factory):
    h = Harness(node_params, tmp_path_factory.mktemp("logs") / "node.log")
    rclpy.init(domain_id=DOMAIN)
    h.client = NodeClient()
    h.front = CameraPublisher(h.client.node, "front", pose_topic="front/pose")
    h.jpeg = CameraPublisher(h.client.node, "jpeg", compressed=True)
    h.start()
    yield h
    if h.process.poll() is None:
        h.stop()
    h.client.close()
    rclpy.try_shutdown()


def stream_episode(harness, episode, stamps, frames=None):
    """Publishes one frame at a time, the next once the node has counted the last: camera topics are
    best effort with a short history, and a burst into a node busy ingesting on a loaded 2-core CI
    machine overflowed it (11 of 16 frames received, none dropped by the node)."""
    harness.front.wait_for_subscribers()
    received = harness.client.wait_for_status(lambda s: True, timeout_s=30).frames_received
    for i in frames if frames is not None else range(len(episode)):
        harness.front.publish(episode.frame(i), stamps[i], episode.intrinsics, episode.poses[i])
        received += 1
        harness.client.wait_for_status(lambda s, n=received: s.frames_received >= n, timeout_s=30)


def test_streamed_episode_is_ingested_and_counted(harness, episode, stamps):
    started_ns = time.time_ns()
    stream_episode(harness, episode, stamps)
    status = harness.client.wait_for_status(lambda s: s.frames_ingested == FRAMES, timeout_s=60)
    # when the newest frame entered memory, on the node's (system) clock
    assert started_ns < stamps_of([status.last_ingest_stamp])[0] <= time.time_ns()
    assert status.frames_received == FRAMES and status.frames_dropped == 0
    assert status.working_memory_size == 8 and status.working_memory_capacity == 8
    assert 0 < status.episodic_memory_size <= status.episodic_memory_capacity == 32
    assert status.model_preset == "tiny" and status.device == "cpu" and status.lifecycle_state == "active"
    assert stamps_of([status.last_frame_stamp]) == [stamps[-1]]
    assert status.last_frame_id == "camera_optical_frame"
    assert status.ingest_rate_hz > 0
    assert status.queries_in_flight == 0 and status.queries_capacity == 5   # query.max_concurrent + max_waiting


def test_query_service_answers_with_evidence_from_the_episode(harness, stamps):
    response = harness.client.query("How many chairs are in the room?")
    assert response.error_code == SpatialQuery.Response.OK, response.error_message
    assert response.answer_type == SpatialQuery.Response.ANSWER_NUMBER
    assert response.evidence_stamps and set(stamps_of(response.evidence_stamps)) <= set(stamps)
    assert all(response.evidence_has_pose) and set(response.evidence_memory) <= {"working", "episodic"}
    assert all(f == "camera_optical_frame" for f in response.evidence_frame_ids)
    assert response.latency_s > 0 and 0 <= response.confidence <= 1
    assert stamps_of([response.memory_stamp]) == [stamps[-1]]
    deadline = time.monotonic() + 10
    while not harness.client.answers and time.monotonic() < deadline:
        time.sleep(0.05)
    echoed = json.loads(harness.client.answers[-1])
    assert echoed["question"] == build_prompt("How many chairs are in the room?")     # as the model read it
    assert echoed["answer"] == response.answer


def test_multiple_choice_request_is_typed(harness):
    response = harness.client.query("Which is closer to the camera?", options=["the sofa", "the bed"],
                                    answer_type=SpatialQuery.Request.ANSWER_CHOICE)
    assert response.error_code == SpatialQuery.Response.OK, response.error_message
    assert response.answer_type == SpatialQuery.Response.ANSWER_CHOICE
    assert response.choice in ("", "A", "B") and response.choice_index in (-1, 0, 1)


@pytest.mark.parametrize("question, options, code", [
    ("   ", [], "EMPTY_QUESTION"),
    ("x" * 1001, [], "QUESTION_TOO_LONG"),
    ("Which one?", ["only one"], "INVALID_REQUEST"),
])
def test_bad_requests_get_error_codes_not_exceptions(harness, question, options, code):
    response = harness.client.query(question, options=options)
    assert response.error_code == getattr(SpatialQuery.Response, code), response.error_message
    assert response.error_message


def test_ask_action_reports_stages_and_succeeds(harness, stamps):
    outcome = harness.client.ask("What is the length of the longest dimension of the table (in centimeters)?")
    assert outcome.status == GoalStatus.STATUS_SUCCEEDED, outcome.result.error_message
    assert outcome.result.error_code == outcome.result.OK
    assert set(stamps_of(outcome.result.evidence_stamps)) <= set(stamps)
    stages = [f.stage for f in outcome.feedback]
    assert stages == ["queued", "reading_memory", "generating", "parsing"]
    progress = [f.progress for f in outcome.feedback]
    assert progress == sorted(progress)


def test_ask_action_cancel_stops_generation(harness):
    started = time.monotonic()
    outcome = harness.client.ask("Describe the room.", cancel_at_stage="generating")
    assert outcome.status == GoalStatus.STATUS_CANCELED
    assert outcome.result.error_code == outcome.result.CANCELED
    assert "generating" in [f.stage for f in outcome.feedback]
    assert time.monotonic() - started < 30


def test_malformed_images_are_dropped_and_counted(harness, episode, stamps):
    before = harness.client.latest_status()
    short = Image(height=96, width=128, encoding="rgb8", step=384, data=bytes(100))
    empty = Image(height=0, width=0, encoding="rgb8", step=0, data=b"")
    unknown = Image(height=2, width=2, encoding="hsv8", step=6, data=bytes(12))
    for k, msg in enumerate((short, empty, unknown)):
        msg.header.stamp = ns_to_stamp(stamps[-1] + (k + 1) * 1000)
        harness.front.image.publish(msg)
    harness.jpeg.wait_for_subscribers()
    corrupt = CompressedImage(format="jpeg", data=b"\xff\xd8\xff\xe0 this is not a jpeg")
    corrupt.header.stamp = ns_to_stamp(stamps[-1] + 5000)
    harness.jpeg.image.publish(corrupt)
    status = harness.client.wait_for_status(
        lambda s: s.frames_dropped_bad_image == before.frames_dropped_bad_image + 4, timeout_s=30)
    assert status.frames_ingested == before.frames_ingested
    # the node stays up: a good JPEG from the second camera is ingested after the bad ones
    harness.jpeg.publish(episode.frame(0), stamps[-1] + 10**8, episode.intrinsics)
    status = harness.client.wait_for_status(lambda s: s.frames_ingested == before.frames_ingested + 1, timeout_s=30)
    assert status.last_frame_id == "camera_optical_frame"
    assert "dropped a bad image" in harness.log()


def test_lifecycle_deactivate_pauses_queries_and_ingestion(harness):
    assert harness.client.change_state(Transition.TRANSITION_DEACTIVATE)
    response = harness.client.query("How many chairs are in the room?")
    assert response.error_code == SpatialQuery.Response.NOT_READY
    assert harness.client.change_state(Transition.TRANSITION_ACTIVATE)
    harness.client.wait_for_status(lambda s: s.lifecycle_state == "active")


def test_restart_restores_memory_from_snapshot(harness, node_params, stamps):
    before = harness.client.wait_for_status(lambda s: s.queue_depth == 0)
    assert harness.stop() == 0, harness.log()
    snapshot = os.listdir(node_params["snapshot.dir"])
    assert snapshot, "no snapshot written on shutdown"
    harness.client.statuses.clear()
    harness.start()
    after = harness.client.wait_for_status(lambda s: s.lifecycle_state == "active")
    assert after.frames_ingested == 0    # counters start at configure; the memory does not
    assert (after.working_memory_size, after.episodic_memory_size) == (before.working_memory_size,
                                                                       before.episodic_memory_size)
    assert stamps_of([after.last_frame_stamp]) == stamps_of([before.last_frame_stamp])
    assert "memory restored from" in harness.log()
    response = harness.client.query("How many tables are in the room?")
    assert response.error_code == SpatialQuery.Response.OK, response.error_message
    restored_stamps = set(stamps) | {stamps[-1] + 10**8}
    assert set(stamps_of(response.evidence_stamps)) <= restored_stamps


def test_time_jump_back_resets_memory(harness, episode, stamps):
    harness.front.wait_for_subscribers()
    harness.front.publish(episode.frame(1), BASE_NS - 3600 * 10**9, episode.intrinsics, episode.poses[1])
    status = harness.client.wait_for_status(lambda s: s.frames_ingested == 1, timeout_s=30)
    assert status.working_memory_size == 1
    assert "time jumped back" in harness.log()


def test_reset_and_save_services(harness):
    assert harness.client.save_memory().success
    reset = harness.client.reset_memory()
    assert reset.success
    status = harness.client.wait_for_status(lambda s: s.working_memory_size == 0, timeout_s=10)
    assert status.episodic_memory_size == 0
    response = harness.client.query("How many chairs are in the room?")
    assert response.error_code == SpatialQuery.Response.MEMORY_EMPTY


# ---------------------------------------------------------------------------- start-up failures
def run_node(params, timeout=120):
    env = {**os.environ, "ROS_DOMAIN_ID": str(DOMAIN + 1)}
    return subprocess.run(node_command(params), env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("params, exit_code, message", [
    ({"ingest.rate_hz": -1.0}, 2, "ingest.rate_hz"),
    ({"model.dtype": "fp8"}, 1, "parameter 'model.dtype': must be one of"),
    ({"camera_names": ["front camera"]}, 2, "camera name 'front camera'"),
    ({"cameras.camera.compressed_topic": "camera/image_raw/compressed"}, 1, "set exactly one of"),
    ({"model.checkpoint_dir": "/nonexistent/vlm2"}, 1, "/nonexistent/vlm2"),
])
def test_bad_parameters_stop_the_node_with_a_clear_message(params, exit_code, message):
    result = run_node(params)
    output = result.stdout + result.stderr
    assert result.returncode == exit_code, output
    assert message in output, output
