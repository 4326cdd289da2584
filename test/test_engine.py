"""The engine API: ingest, query, status, reset, snapshots, thread safety, bad input."""
import threading

import numpy as np
import pytest
import torch

from conftest import make_frames
from vlm2_ros.camera import CameraIntrinsics
from vlm2_ros.engine.engine import IngestError, NotReadyError, QueryCanceled, QueryError, SpatialMemoryEngine
from vlm2_ros.engine.snapshot import SnapshotError
from vlm2_ros.model.vlm2 import input_pixel_rays

MC = "Which object is closest to the door?\nA. chair\nB. lamp\nC. sofa\nD. tv\nAnswer with the option's letter."
STAMP0 = 1_700_000_000_000_000_000


def feed(engine, n, start=0, with_pose=False):
    frames = make_frames(n, seed=start)
    for i, frame in enumerate(frames):
        pose = None
        if with_pose:
            pose = np.eye(4)
            pose[:3, 3] = [0.1 * (start + i), 0.0, 1.5]
        engine.ingest(frame, STAMP0 + (start + i) * 100_000_000, pose=pose)


def memory_stamps(engine):
    memory = engine.stream.memory
    return set(memory.working.provenance.stamp_ns.flatten().tolist()) | \
        set(memory.episodic.provenance.stamp_ns.flatten().tolist())


def test_model_step_shapes_and_dtypes(tiny_model_factory):
    model = tiny_model_factory().eval()
    h, w = model.config.image_size
    stream = model.empty_stream(2)
    with torch.no_grad():
        for i in range(3):
            stream, out = model.step(stream, torch.rand(2, 3, h, w), torch.tensor([i, i]), torch.tensor([i, i]))
    n_tok, c = model.num_tokens_per_frame, model.config.fusion.dim
    assert out.fused.shape == (2, n_tok, c) and out.fused.dtype == torch.float32
    assert out.memory.shape == (2, n_tok, c)
    assert out.depth.shape == (2, h, w) and out.camera_pose.shape == (2, 4, 4)
    assert stream.memory.working.tokens.shape == (2, 3, n_tok, c)
    readout = model.read_memory(stream)
    k = model.config.readout_grid[0] * model.config.readout_grid[1]
    assert readout.tokens.shape == (2, (3 + 3) * k, c)


def test_ingest_fills_memories_up_to_capacity(tiny_engine):
    feed(tiny_engine, 45)
    s = tiny_engine.status()
    assert s.frames_ingested == 45 and s.frames_rejected == 0
    assert s.working_entries == s.working_capacity == 8
    assert s.episodic_entries == s.episodic_capacity == 32
    assert s.episodic_replacements == 45 - 32
    assert s.last_stamp_ns == STAMP0 + 44 * 100_000_000
    wm = tiny_engine.stream.memory.working.provenance.frame_index[0].tolist()
    assert wm == list(range(37, 45))  # exactly the last L_w frames


def test_memory_entries_carry_the_world_points_of_their_frame(tiny_model_factory):
    """Each entry carries its patches' points C_t in the world frame of the given pose: the same
    frames seen from a robot standing 2 m further along x sit 2 m further along x. An episodic
    entry M_t is placed where frame t's patches were."""
    frames, memories = make_frames(4), []
    for shift in (0.0, 2.0):
        engine = SpatialMemoryEngine(tiny_model_factory(), weights="test-untrained(seed=0)")
        for i, frame in enumerate(frames):
            pose = np.eye(4)
            pose[:3, 3] = [0.1 * i + shift, 0.0, 1.5]
            engine.ingest(frame, STAMP0 + i * 100_000_000, pose=pose)
        memories.append(engine.stream.memory)
    here, there = (m.working.provenance.patch_points for m in memories)
    assert here.shape == (1, 4, engine.model.num_tokens_per_frame, 3) and here.dtype == torch.float32
    assert torch.isfinite(here).all() and here.std() > 0
    assert torch.allclose(there - here, torch.tensor([2.0, 0.0, 0.0]), atol=1e-4)
    episodic = memories[0].episodic.provenance
    for slot, frame in enumerate(episodic.frame_index[0].tolist()):
        assert torch.equal(episodic.patch_points[0, slot], here[0, frame])


def test_camera_info_places_every_patch_on_its_pixel_rays(tiny_model_factory):
    """Given the camera's intrinsics, each pixel sits at the decoder's depth on its own ray, so a
    patch's point lies inside the patch's viewing frustum, and a wider lens spreads the same depths
    further sideways (x and y scale with 1/fx and 1/fy exactly). Without them the points are the
    decoder's own guess, whose x/y no loss supervises."""
    frames, points = make_frames(3), {}
    narrow, wide = CameraIntrinsics.from_fov(128, 96, 60.0), CameraIntrinsics.from_fov(128, 96, 90.0)
    for name, camera_info in (("narrow", narrow), ("wide", wide), ("none", None)):
        engine = SpatialMemoryEngine(tiny_model_factory(), weights="test-untrained(seed=0)")
        engine.ingest_batch(frames, [STAMP0 + i for i in range(3)], [camera_info] * 3, [np.eye(4)] * 3)
        points[name] = engine.stream.memory.working.provenance.patch_points[0]         # [3,N,3] camera frame
    here, there = points["narrow"], points["wide"]
    assert torch.allclose(here[..., 2], there[..., 2])                                    # the same depths
    assert torch.allclose(there[..., 0], here[..., 0] * narrow.fx / wide.fx, atol=1e-5)
    assert torch.allclose(there[..., 1], here[..., 1] * narrow.fy / wide.fy, atol=1e-5)
    assert not torch.allclose(points["none"][..., :2], here[..., :2], atol=1e-3)
    # inside the frustum: x/z between the rays of the patch's outer pixel columns
    h, w = engine.model.config.image_size
    gh, gw = engine.model.entry_grid
    rays = input_pixel_rays(narrow, (h, w))                                               # [H,W,3]
    column = torch.arange(here.shape[1]) % gw
    left, right = rays[0, column * (w // gw), 0], rays[0, (column + 1) * (w // gw) - 1, 0]
    slope = here[..., 0] / here[..., 2]                                                   # [3,N]
    assert ((slope >= left - 1e-5) & (slope <= right + 1e-5)).all()


def test_query_answer_is_typed_and_cites_evidence_in_memory(tiny_engine):
    feed(tiny_engine, 12, with_pose=True)
    for question, kind in ((MC, "choice"), ("How many chairs are in this room?", "number")):
        answer = tiny_engine.query(question)
        assert answer.kind == kind
        assert 0.0 <= answer.confidence <= 1.0 and answer.latency_s > 0
        assert 1 <= len(answer.evidence) <= 3
        assert {e.stamp_ns for e in answer.evidence} <= memory_stamps(tiny_engine)
        assert all(e.memory in ("working", "episodic") and 0 <= e.relevance <= 1 for e in answer.evidence)
        assert all(e.pose is not None and len(e.pose) == 4 for e in answer.evidence)


def test_option_text_model_answers_a_choice_by_the_options_likelihoods(tiny_model_factory):
    model = tiny_model_factory()
    model.bridge.config.choice_answer = "option_text"
    engine = SpatialMemoryEngine(model, weights="test-untrained(seed=0)")
    feed(engine, 6, with_pose=True)
    answer = engine.query(MC)
    with torch.no_grad():
        readout = model.read_memory(engine.stream)
        scores = model.bridge.score_options(readout.tokens, MC, ["chair", "lamp", "sofa", "tv"]).log_likelihoods
    best = int(scores.argmax())
    assert answer.choice == "ABCD"[best] and answer.text == f"{'ABCD'[best]}. {['chair', 'lamp', 'sofa', 'tv'][best]}"
    assert answer.confidence == pytest.approx(float(torch.softmax(scores, 0)[best]), abs=1e-5)
    assert 1 <= len(answer.evidence) <= 3
    with pytest.raises(QueryCanceled):
        engine.query(MC, should_stop=lambda: True)
    assert engine.query("How many chairs are in this room?").kind == "number"     # generated as before


def test_query_validation(tiny_engine):
    with pytest.raises(NotReadyError):
        tiny_engine.query("How many chairs?")
    feed(tiny_engine, 2)
    with pytest.raises(QueryError, match="empty"):
        tiny_engine.query("   ")
    with pytest.raises(QueryError, match="limit"):
        tiny_engine.query("x" * 5000)
    with pytest.raises(QueryError, match="text"):
        tiny_engine.query(b"bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad,match", [
    (dict(image=np.zeros((96, 128, 3), np.float32)), "uint8"),
    (dict(image=np.zeros((96, 128), np.uint8)), r"\[H,W,3\]"),
    (dict(image=np.zeros((1, 1, 3), np.uint8)), "too small"),
    (dict(stamp_ns=-5), "non-negative"),
    (dict(stamp_ns=STAMP0), "older"),
    (dict(camera_info=CameraIntrinsics(100, 100, 64, 48, 64, 48)), "camera info"),
    (dict(camera_info={"fx": 100.0}), "CameraIntrinsics"),
    (dict(pose=np.full((4, 4), np.nan)), "NaN"),
    (dict(pose=np.ones((3, 3))), "4x4"),
])
def test_bad_frames_are_rejected_counted_and_leave_memory_unchanged(tiny_engine, bad, match):
    feed(tiny_engine, 3, start=10)
    before = tiny_engine.stream
    args = dict(image=make_frames(1)[0], stamp_ns=STAMP0 + 10**12, camera_info=None, pose=None) | bad
    with pytest.raises(IngestError, match=match):
        tiny_engine.ingest(args["image"], args["stamp_ns"], args["camera_info"], args["pose"])
    assert tiny_engine.stream is before
    assert tiny_engine.status().frames_rejected == 1


def test_batched_ingest_equals_sequential(tiny_model_factory):
    frames = make_frames(5)
    stamps = [STAMP0 + i for i in range(5)]
    a = SpatialMemoryEngine(tiny_model_factory(), weights="w")
    b = SpatialMemoryEngine(tiny_model_factory(), weights="w")
    for f, s in zip(frames, stamps):
        a.ingest(f, s)
    assert b.ingest_batch(frames, stamps) == [0, 1, 2, 3, 4]
    for x, y in ((a.stream.memory.working.tokens, b.stream.memory.working.tokens),
                 (a.stream.memory.episodic.tokens, b.stream.memory.episodic.tokens)):
        assert torch.allclose(x, y, atol=1e-5)


def test_preprocessed_pixels_ingest_like_images_and_bad_pixels_are_rejected(tiny_model_factory):
    # The node resizes in its image callback and hands the worker pixels: same memory as images.
    frames = make_frames(3)
    stamps = [STAMP0 + i for i in range(3)]
    camera_infos = [None, CameraIntrinsics.from_fov(128, 96, 70.0), CameraIntrinsics.from_fov(128, 96, 70.0)]
    a = SpatialMemoryEngine(tiny_model_factory(), weights="w")
    b = SpatialMemoryEngine(tiny_model_factory(), weights="w")
    a.ingest_batch(frames, stamps, camera_infos)
    for f, s, ci in zip(frames, stamps, camera_infos):
        b.ingest_pixels(b.preprocess(f, ci)[None], [s], camera_infos=[ci])
    assert torch.equal(a.stream.memory.working.tokens, b.stream.memory.working.tokens)
    assert torch.equal(a.stream.memory.working.provenance.patch_points, b.stream.memory.working.provenance.patch_points)
    h, w = b.model.config.image_size
    with pytest.raises(IngestError, match="CameraIntrinsics"):
        b.ingest_pixels(torch.zeros(1, 3, h, w), [STAMP0 + 10], camera_infos=["intrinsics"])
    for bad in (torch.zeros(1, 3, h + 1, w), torch.zeros(1, 3, h, w, dtype=torch.float64),
                torch.zeros(2, 3, h, w), np.zeros((1, 3, h, w), np.float32)):
        with pytest.raises(IngestError, match="pixels must be float32"):
            b.ingest_pixels(bad, [STAMP0 + 10])
    with pytest.raises(IngestError, match="older than"):
        b.ingest_pixels(torch.zeros(1, 3, h, w), [STAMP0])
    assert b.status().frames_ingested == 3 and b.status().frames_rejected == 6


def test_reset_clears_memory(tiny_engine):
    feed(tiny_engine, 4)
    tiny_engine.reset()
    s = tiny_engine.status()
    assert (s.frames_ingested, s.working_entries, s.episodic_entries, s.last_stamp_ns) == (0, 0, 0, None)


def test_snapshot_round_trip_is_bit_exact(tiny_engine, tiny_model_factory, tmp_path):
    feed(tiny_engine, 40, with_pose=True)
    tiny_engine.save(tmp_path / "snap")
    other = SpatialMemoryEngine(tiny_model_factory(), weights=tiny_engine.weights)
    other.load(tmp_path / "snap")
    for name in ("working", "episodic"):
        mine, theirs = getattr(tiny_engine.stream.memory, name), getattr(other.stream.memory, name)
        assert torch.equal(mine.tokens, theirs.tokens)
        for k, v in mine.provenance.fields().items():
            assert torch.equal(v, theirs.provenance.fields()[k])
    assert torch.equal(tiny_engine.stream.geometry_window, other.stream.geometry_window)
    assert other.status().to_dict() == tiny_engine.status().to_dict()
    assert other.query(MC).text == tiny_engine.query(MC).text
    # and the restored engine keeps streaming from where it left off
    feed(other, 2, start=40)
    assert other.status().frames_ingested == 42


def test_place_replacement_streams_and_survives_a_snapshot(tmp_path):
    """A memory that replaces by place keeps that rule through a snapshot (the rule is the model's
    config, the snapshot holds the entries and the points it works on)."""
    from vlm2_ros.model.checkpoint import build_model
    from vlm2_ros.model.presets import preset_config

    torch.manual_seed(0)
    config = preset_config("tiny").with_changes({"memory": {"episodic": {"capacity": 4, "replacement": "place"}}})
    engines = [SpatialMemoryEngine(build_model(config), weights="w") for _ in range(2)]
    feed(engines[0], 10, with_pose=True)
    assert engines[0].status().episodic_replacements == 6
    engines[0].save(tmp_path / "snap")
    engines[1].load(tmp_path / "snap")
    restored = engines[1].stream.memory.episodic
    assert restored.config.replacement == "place" and restored.replacements == 6
    assert torch.equal(restored.provenance.patch_points, engines[0].stream.memory.episodic.provenance.patch_points)


def test_tampered_or_foreign_snapshot_is_refused_and_state_untouched(tiny_engine, tiny_model_factory, tmp_path):
    feed(tiny_engine, 5)
    tiny_engine.save(tmp_path / "snap")
    target = SpatialMemoryEngine(tiny_model_factory(), weights=tiny_engine.weights)
    feed(target, 3, start=100)
    before = target.stream
    tensor_file = next((tmp_path / "snap").glob("memory-*.safetensors"))
    data = tensor_file.read_bytes()
    tensor_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(SnapshotError, match="checksum"):
        target.load(tmp_path / "snap")
    assert target.stream is before
    tiny_engine.save(tmp_path / "snap2")
    foreign = SpatialMemoryEngine(tiny_model_factory(memory_mode="working"), weights=tiny_engine.weights)
    with pytest.raises(SnapshotError, match="different model"):
        foreign.load(tmp_path / "snap2")


def test_concurrent_ingest_and_query_are_safe(tiny_engine):
    feed(tiny_engine, 2)
    errors, answers = [], []

    def stream_worker():
        try:
            feed(tiny_engine, 20, start=2)
        except Exception as e:  # pragma: no cover
            errors.append(e)

    def query_worker():
        try:
            for _ in range(4):
                answer = tiny_engine.query(MC)
                answers.append(answer)
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=stream_worker)] + [threading.Thread(target=query_worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(answers) == 8 and all(a.evidence for a in answers)
    assert tiny_engine.status().frames_ingested == 22


@pytest.mark.parametrize("dtype,torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precision_engine_runs(tiny_model_factory, dtype, torch_dtype):
    engine = SpatialMemoryEngine(tiny_model_factory(), weights="w", dtype=dtype)
    feed(engine, 3)
    assert engine.stream.memory.working.tokens.dtype == torch_dtype
    assert engine.query(MC).kind == "choice"


def test_device_and_dtype_validation(tiny_model_factory):
    with pytest.raises(ValueError, match="dtype"):
        SpatialMemoryEngine(tiny_model_factory(), weights="w", dtype="int8")
    with pytest.raises(ValueError, match="device"):
        SpatialMemoryEngine(tiny_model_factory(), weights="w", device="tpu")


def test_query_reports_stages_and_can_be_canceled_mid_generation(tiny_engine):
    for i, frame in enumerate(make_frames(3)):
        tiny_engine.ingest(frame, stamp_ns=(i + 1) * 10**8)
    stages, polls = [], []

    def stop_after_three_tokens() -> bool:
        polls.append(1)
        return len(polls) > 3

    with pytest.raises(QueryCanceled):
        tiny_engine.query("Describe the room.", max_new_tokens=50, should_stop=stop_after_three_tokens,
                          on_stage=stages.append)
    assert stages == ["reading_memory", "generating"]
    assert len(polls) == 4          # polled once per token: stopped before the fourth
    # the engine is usable afterwards and memory is untouched
    assert tiny_engine.status().working_entries == 3
    assert tiny_engine.query("How many chairs are in this room?", should_stop=lambda: False).text is not None
