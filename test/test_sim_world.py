"""Synthetic world: determinism, geometric truth of the renderer, placement, trajectories, episode I/O."""
import hashlib
import math
from pathlib import Path

import numpy as np
import pytest

from vlm2_ros.camera import CameraIntrinsics, validate_pose, world_points
from vlm2_ros.sim.api import sample_frames
from vlm2_ros.sim.episode import Episode, EpisodeDir, write_episode
from vlm2_ros.sim.render import Renderer
from vlm2_ros.sim.scene import CATEGORIES, generate_scene
from vlm2_ros.sim.trajectory import SPEED_RANGE, generate_trajectory, look_pose


def _digest(path: Path) -> dict:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_scene_is_deterministic_and_valid():
    assert generate_scene(5).to_dict() == generate_scene(5).to_dict()
    assert generate_scene(5).to_dict() != generate_scene(6).to_dict()
    assert len(CATEGORIES) >= 10
    for seed in range(12):
        s = generate_scene(seed)
        r = s.room
        assert 3 <= r.width <= 12 and 3 <= r.depth <= 12 and 2.4 <= r.height <= 3.2
        for i, a in enumerate(s.objects):
            assert np.all(a.lo >= -1e-9) and a.hi[0] <= r.width + 1e-9 and a.hi[1] <= r.depth + 1e-9
            for b in s.objects[i + 1:]:   # footprints never overlap
                overlap = np.all(np.minimum(a.hi[:2], b.hi[:2]) > np.maximum(a.lo[:2], b.lo[:2]))
                assert not overlap, (seed, a.category, b.category)
    assert any(max(generate_scene(s).count(c) for c in CATEGORIES) >= 2 for s in range(5))


@pytest.mark.parametrize("kwargs, match", [
    (dict(room_size=(2.0, 5.0, 2.8)), "room width"),
    (dict(room_size=(5.0, 5.0, 9.0)), "room height"),
    (dict(categories=["chair", "unicorn"]), "unknown object category 'unicorn'"),
    (dict(room_size=(3.0, 3.0, 2.5), counts={"bed": 6}), "cannot place|impossible placement"),
])
def test_scene_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_scene(0, **kwargs)


def test_render_depth_matches_analytic_geometry():
    scene = generate_scene(1, room_size=(6.0, 5.0, 2.8), counts={})
    K = CameraIntrinsics.from_fov(64, 48, 70)
    r = Renderer(scene, K)
    pose = look_pose((2.0, 2.5, 1.4), 0.0, 0.0)   # facing the x = 6 wall, perpendicular
    out = r.render(pose)
    assert np.allclose(out.depth[20:28, 28:36], 4.0, atol=1e-6)
    # floor pixels (bottom row): ray/plane intersection
    pose = look_pose((2.0, 2.5, 1.4), 0.3, math.radians(-30))
    out = r.render(pose)
    Kinv = np.linalg.inv(K.matrix)
    for v, u in [(47, 10), (47, 50), (40, 32)]:
        d = pose[:3, :3] @ (Kinv @ [u + 0.5, v + 0.5, 1])
        t = (0 - 1.4) / d[2] if d[2] < 0 else None
        P = pose[:3, 3] + t * d
        if 0 < P[0] < 6 and 0 < P[1] < 5:
            assert out.depth[v, u] == pytest.approx(t, rel=1e-5)
    assert out.rgb.dtype == np.uint8 and out.rgb.shape == (48, 64, 3) and (out.mask == 0).all()


def test_render_object_depth_and_mask():
    scene = generate_scene(2, room_size=(8.0, 6.0, 2.8), counts={"box": 1})
    box = scene.objects[0]
    K = CameraIntrinsics.from_fov(64, 48, 70)
    cam = np.array([box.center[0] - 2.0, box.center[1], box.hi[2] - 0.05])
    if cam[0] < 0.2:
        cam[0] = box.center[0] + 2.0
        yaw = math.pi
    else:
        yaw = 0.0
    out = Renderer(scene, K).render(look_pose(cam, yaw, 0.0))
    assert out.mask[24, 32] == box.id
    # front face distance along the optical axis
    expected = (box.lo[0] - cam[0]) if yaw == 0.0 else (cam[0] - box.hi[0])
    assert out.depth[24, 32] == pytest.approx(expected, rel=1e-5)


def test_world_points_put_each_pixel_on_the_surface_it_shows():
    episode = Episode.generate(3, 20, width=64, height=48)
    room = episode.scene.room
    for i in (0, 10, 19):
        out = episode.render(i)
        points = world_points(out.depth, episode.intrinsics, episode.poses[i])       # [H,W,3]
        assert points.shape == (48, 64, 3)
        assert np.all(points >= -1e-3) and np.all(points <= np.array([room.width, room.depth, room.height]) + 1e-3)
        for obj in episode.scene.objects:                 # an object's pixels lie on its box
            on = points[out.mask == obj.id]
            assert np.all(on >= obj.lo - 1e-3) and np.all(on <= obj.lo + np.asarray(obj.size) + 1e-3)
    with pytest.raises(ValueError, match="intrinsics are for 64x48"):
        world_points(np.ones((10, 10)), episode.intrinsics, episode.poses[0])


def test_trajectory_smooth_in_free_space_and_speed_range():
    scene = generate_scene(4)
    tr = generate_trajectory(scene, 400, 4)
    assert tr.poses.shape == (400, 4, 4) and tr.stamps_ns[1] - tr.stamps_ns[0] == 100_000_000
    for p in tr.poses[::37]:
        validate_pose(p)
    xy = tr.poses[:, :2, 3]
    v = np.linalg.norm(np.diff(xy, axis=0), axis=1) * tr.fps
    assert v.max() <= SPEED_RANGE[1] + 0.05 and np.median(v) >= SPEED_RANGE[0] - 0.05
    for o in scene.objects:   # never inside an object
        inside = (xy[:, 0] > o.lo[0]) & (xy[:, 0] < o.hi[0]) & (xy[:, 1] > o.lo[1]) & (xy[:, 1] < o.hi[1])
        assert not inside.any()
    fwd = tr.poses[:, :3, 2]
    turn = np.degrees(np.arccos(np.clip((fwd[1:] * fwd[:-1]).sum(1), -1, 1))) * tr.fps
    assert turn.max() < 120   # deg/s: heading is smooth


def test_long_horizon_trajectory_leaves_early_objects_out_of_view():
    ep = Episode.generate(7, 600, width=64, height=48, style="long_horizon", room_size=(10.0, 6.0, 2.7))
    vis = ep.visibility()
    gaps = [len(ep) - last for first, last, n in vis.values()]
    assert max(gaps) > 300


def test_episode_write_read_roundtrip_and_determinism(tmp_path):
    ep = Episode.generate(3, 25, width=64, height=48)
    a = write_episode(ep, tmp_path / "a", [{"id": "q"}], chunk=10)
    b = write_episode(Episode.generate(3, 25, width=64, height=48), tmp_path / "b", [{"id": "q"}], chunk=10)
    assert _digest(a) == _digest(b)
    d = EpisodeDir(a)
    assert len(d) == 25 and d.intrinsics == ep.intrinsics
    for i in (0, 9, 10, 24):
        out = ep.render(i)
        assert np.array_equal(d.frame(i), out.rgb) and np.array_equal(d.mask(i), out.mask)
        assert np.allclose(d.depth(i), out.depth, rtol=2e-3)
    assert np.array_equal(d.poses, ep.poses) and np.array_equal(d.stamps_ns, ep.stamps_ns)
    assert d.scene.to_dict() == ep.scene.to_dict()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_write_failure_leaves_nothing(tmp_path):
    ep = Episode.generate(3, 5, width=64, height=48)

    def boom(n):
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        write_episode(ep, tmp_path / "ep", progress=boom, chunk=2)
    assert list(tmp_path.iterdir()) == []


def test_bad_episode_inputs(tmp_path):
    with pytest.raises(ValueError, match="resolution"):
        Episode.generate(0, 10, width=8, height=6)
    with pytest.raises(ValueError, match="num_frames"):
        Episode.generate(0, 0)
    with pytest.raises(ValueError, match="not an episode directory"):
        EpisodeDir(tmp_path)


def test_sample_frames():
    frames = sample_frames(3, 48, 64, 0)
    assert len(frames) == 3 and frames[0].shape == (48, 64, 3) and frames[0].dtype == np.uint8
    assert frames[0].std() > 5
