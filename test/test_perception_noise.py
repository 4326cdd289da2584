"""Perception noise for generated oracle scenes: off by default, seeded, and measured back."""
import numpy as np
import pytest
import torch

from vlm2_ros.model.object_memory import ROOM_CLASS, ObjectBox
from vlm2_ros.training.config import StageConfig, TrainConfigError
from vlm2_ros.training.data import generated_oracle_sample
from vlm2_ros.training.perception_noise import PerceptionNoise, measure_perception_noise

ROOM = ObjectBox(ROOM_CLASS, (10.0, 10.0, 1.4), (20.0, 20.0, 2.8))


def scene_boxes(rng: np.random.Generator, objects: int = 10) -> list[ObjectBox]:
    """A room and `objects` boxes of classes 1..10, in a room wide enough that a box of nothing
    seldom lands on an object of its class."""
    boxes = [ROOM]
    for i in range(objects):
        centre = (1.0 + 18.0 * rng.random(), 1.0 + 18.0 * rng.random(), 0.5)
        boxes.append(ObjectBox(1 + i % 10, centre, (0.6, 0.5, 1.0), first_seen=10 * i))
    return boxes


def test_default_noise_is_off_and_changes_nothing():
    noise = PerceptionNoise()
    assert not noise.enabled
    boxes = scene_boxes(np.random.default_rng(0))
    assert noise.apply(boxes, 200, np.random.default_rng(1)) == boxes


def test_noise_is_seeded_keeps_the_room_first_and_orders_objects_by_first_sighting():
    noise = PerceptionNoise(miss_probability=0.2, split_mean=0.3, centre_sd_m=0.3, late_probability=0.5,
                            late_mean=0.2, false_per_object=0.5, room_log_sd=(0.2, 0.2, 0.1))
    boxes = scene_boxes(np.random.default_rng(0))
    first = noise.apply(boxes, 200, np.random.default_rng(7))
    assert first == noise.apply(boxes, 200, np.random.default_rng(7))
    assert first != noise.apply(boxes, 200, np.random.default_rng(8))
    assert first[0].semantic_class == ROOM_CLASS and first[0].centre == ROOM.centre
    assert all(b.semantic_class != ROOM_CLASS for b in first[1:])
    seen = [b.first_seen for b in first[1:]]
    assert seen == sorted(seen) and max(seen) <= 200


def test_every_object_missed_leaves_the_room_alone():
    boxes = scene_boxes(np.random.default_rng(0))
    assert PerceptionNoise(miss_probability=1.0).apply(boxes, 200, np.random.default_rng(0)) == [ROOM]


def measured(noise: PerceptionNoise, scenes: int = 300) -> dict:
    rng = np.random.default_rng(3)
    pairs = []
    for _ in range(scenes):
        truth = scene_boxes(rng)
        pairs.append((noise.apply(truth, 200, rng), truth, 200))
    return measure_perception_noise(pairs)


def test_measuring_noise_gives_back_the_noise_that_made_the_boxes():
    got = measured(PerceptionNoise(miss_probability=0.3, split_mean=0.2, centre_sd_m=0.3, height_sd_m=0.1,
                                   extent_log_mean=(-0.5, -0.5, -1.0), extent_log_sd=(0.4, 0.4, 0.3),
                                   late_probability=0.4, late_mean=0.2, room_log_sd=(0.3, 0.2, 0.1)))
    assert got["objects"] == 300 * 10
    assert got["miss_probability"] == pytest.approx(0.3, abs=0.03)
    assert got["split_mean"] == pytest.approx(0.2, abs=0.03)
    assert got["centre_sd_m"] == pytest.approx(0.3, abs=0.02)
    assert got["height_sd_m"] == pytest.approx(0.1, abs=0.01)
    assert got["extent_log_mean"] == pytest.approx([-0.5, -0.5, -1.0], abs=0.03)
    assert got["extent_log_sd"] == pytest.approx([0.4, 0.4, 0.3], abs=0.03)
    assert got["late_probability"] == pytest.approx(0.4, abs=0.04)
    assert got["late_mean"] == pytest.approx(0.2, abs=0.03)
    assert got["false_per_object"] == 0.0
    assert got["room_log_sd"] == pytest.approx([0.3, 0.2, 0.1], abs=0.03)
    # boxes of nothing: anywhere in the room, or on a seen object (another class's, mostly)
    got = measured(PerceptionNoise(false_per_object=0.4, false_near_share=0.5))
    assert got["false_per_object"] == pytest.approx(0.4, abs=0.05)
    assert got["false_near_share"] == pytest.approx(0.5, abs=0.06)
    assert got["miss_probability"] == 0.0


def test_stage_config_takes_noise_for_generated_scenes_only_and_checks_its_values():
    stage = dict(name="noisy", steps=1, train=["bridge"], memory="oracle", depth_loss_weight=0.0)
    config = StageConfig(**stage, scenes="generated", perception_noise={"miss_probability": 0.3})
    assert config.perception_noise == PerceptionNoise(miss_probability=0.3)
    with pytest.raises(TrainConfigError, match="scenes: generated"):
        StageConfig(**stage, perception_noise={"miss_probability": 0.3})
    with pytest.raises(TrainConfigError, match="miss_probability"):
        StageConfig(**stage, scenes="generated", perception_noise={"miss_probability": 1.5})
    with pytest.raises(TrainConfigError, match="unknown keys"):
        StageConfig(**stage, scenes="generated", perception_noise={"misses": 0.3})


def test_generated_sample_with_noise_perceives_the_memory_but_asks_the_same_questions():
    args = (1_000_123, 2, 0, [], 40, 32, 4.0, True)
    clean = generated_oracle_sample(*args)
    noisy = generated_oracle_sample(*args, noise=PerceptionNoise(miss_probability=0.3, centre_sd_m=0.5))
    again = generated_oracle_sample(*args, noise=PerceptionNoise(miss_probability=0.3, centre_sd_m=0.5))
    assert noisy.prompts == clean.prompts and noisy.answers == clean.answers
    assert noisy.named_objects == clean.named_objects and noisy.category_ranks == clean.category_ranks
    assert not torch.equal(noisy.memory, clean.memory)
    assert torch.equal(noisy.memory, again.memory)
    assert torch.equal(noisy.memory[0, 0], clean.memory[0, 0])      # no room noise asked: the room's token stays
