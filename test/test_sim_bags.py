"""Episode <-> rosbag2 round trip (sqlite3 and mcap), and reading a robot-style bag."""
import json

import numpy as np
import pytest

from vlm2_ros.camera import quaternion_to_rotation, rotation_to_quaternion
from vlm2_ros.bag_stream import BagError, open_bag, read_frames, resolve_topics
from vlm2_ros.sim.bags import questions_path, write_episode_bag
from vlm2_ros.sim.episode import Episode, EpisodeDir, write_episode
from vlm2_ros.sim.questions import generate_questions


@pytest.fixture(scope="module")
def episode():
    return Episode.generate(21, 12, width=64, height=48)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_bag_round_trip(tmp_path, episode, storage):
    qs = generate_questions(episode, per_task=1)
    bag = write_episode_bag(episode, tmp_path / f"ep_{storage}", storage=storage, questions=qs, depth=True)
    assert json.loads(questions_path(bag).read_text().splitlines()[0]) == json.loads(json.dumps(qs[0]))
    reader = open_bag(bag)
    topics = resolve_topics(reader)
    assert (topics.image, topics.camera_info, topics.pose) == ("/camera/image_raw", "/camera/camera_info",
                                                               "/camera/pose")
    assert {c.topic for c in reader.connections} >= {"/clock", "/camera/image_raw/compressed", "/camera/depth/image_raw"}
    reader.close()
    frames = read_frames(bag)
    assert len(frames) == len(episode)
    for i, f in enumerate(frames):      # each image goes with its own camera info and pose
        assert f.stamp_ns == int(episode.stamps_ns[i]) and f.frame_id == "camera_optical_frame"
        assert np.array_equal(f.image, episode.frame(i))
        assert f.camera_info == episode.intrinsics
        assert np.allclose(f.pose, episode.poses[i], atol=1e-9)
    comp = read_frames(bag, image_topic="/camera/image_raw/compressed")
    assert all(np.abs(c.image.astype(int) - f.image).mean() < 6 for c, f in zip(comp, frames))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bag_from_episode_dir_and_bad_inputs(tmp_path, episode):
    d = EpisodeDir(write_episode(episode, tmp_path / "ep"))
    bag = write_episode_bag(d, tmp_path / "b", storage="mcap", compressed=False)
    assert [f.stamp_ns for f in read_frames(bag)] == d.stamps_ns.tolist()
    with pytest.raises(ValueError, match="unknown bag storage 'zip'"):
        write_episode_bag(episode, tmp_path / "c", storage="zip")
    with pytest.raises(BagError, match="does not exist"):
        read_frames(tmp_path / "missing")
    with pytest.raises(BagError, match="topic '/nope' .* is not in the bag"):
        read_frames(bag, image_topic="/nope")


def test_robot_style_bag_bgr_odometry(tmp_path):
    """Other topic names, bgr8 with padded rows, nav_msgs/Odometry, no /clock: still readable."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore
    ts = get_typestore(Stores.ROS2_KILTED)
    T = ts.types
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    bgr = np.zeros((6, 16), np.uint8)
    bgr[:, :15] = rgb[..., ::-1].reshape(6, 15)
    hdr = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=3, nanosec=5), frame_id="cam")
    with Writer(tmp_path / "robot", version=9, storage_plugin=StoragePlugin.MCAP) as w:
        ci = w.add_connection("/front/color", "sensor_msgs/msg/Image", typestore=ts)
        co = w.add_connection("/odom", "nav_msgs/msg/Odometry", typestore=ts)
        img = T["sensor_msgs/msg/Image"](header=hdr, height=6, width=5, encoding="bgr8", is_bigendian=0, step=16,
                                         data=bgr.reshape(-1))
        q = rotation_to_quaternion(np.eye(3))
        odom = T["nav_msgs/msg/Odometry"](
            header=hdr, child_frame_id="base",
            pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=T["geometry_msgs/msg/Pose"](
                position=T["geometry_msgs/msg/Point"](x=1.0, y=2.0, z=0.5),
                orientation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3])), covariance=np.zeros(36)),
            twist=T["geometry_msgs/msg/TwistWithCovariance"](twist=T["geometry_msgs/msg/Twist"](
                linear=T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0),
                angular=T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0)), covariance=np.zeros(36)))
        # odometry received just before the image: the latest pose at the image goes with it
        w.write(co, 3_000_000_000, ts.serialize_cdr(odom, odom.__msgtype__))
        w.write(ci, 3_000_000_005, ts.serialize_cdr(img, img.__msgtype__))
    (f,) = read_frames(tmp_path / "robot")
    assert f.stamp_ns == 3_000_000_005 and np.array_equal(f.image, rgb) and f.camera_info is None
    assert np.allclose(f.pose[:3, 3], [1, 2, 0.5])


def test_quaternion_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(50):
        Q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        Q *= np.sign(np.linalg.det(Q))
        assert np.allclose(quaternion_to_rotation(*rotation_to_quaternion(Q)), Q, atol=1e-12)
