"""`vlm2 train`: config validation, a two-stage run that writes a loadable checkpoint, its log and
plot, resume continuing where it stopped, and the losses going down when fitting one sample."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from vlm2_ros.cli import main
from vlm2_ros.model.prompt import question_option_texts
from vlm2_ros.sim.questions import MEMORY_TASKS
from vlm2_ros.training.config import TrainConfigError, load_train_config
from vlm2_ros.training.data import clip_indices


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "data"
    assert main(["sim", "dataset", "--seed", "11", "--episodes", "2", "--frames", "12", "--width", "64",
                 "--height", "48", "--per-task", "1", "--style", "walk", "--out", str(out)]) == 0
    return out


def write_config(path, **overrides):
    config = {"data": "data", "out": "run", "clip_frames": 4, "questions_per_episode": 2, "episodes_per_step": 1,
              "checkpoint_every": 2, "log_every": 1,
              "stages": [{"name": "geometry", "steps": 2, "train": ["geometry", "semantic", "fusion"],
                          "answer_loss_weight": 0.0, "category_loss_weight": 1.0, "position_loss_weight": 1.0},
                         {"name": "answering", "steps": 2, "train": ["fusion", "memory", "readout", "bridge"],
                          "depth_loss_weight": 0.0}]}
    config.update(overrides)
    path.write_text(yaml.safe_dump(config))
    return path


def ingested_frame_by_frame(model, sample):
    """An engine over `model` that has ingested the sample's episode up to its question, one frame
    at a time with its pose and intrinsics, as a robot's stream arrives."""
    from vlm2_ros.engine.engine import SpatialMemoryEngine
    from vlm2_ros.sim.episode import EpisodeDir

    engine = SpatialMemoryEngine(model, weights="w")
    episode = EpisodeDir(sample.path)
    for i in range(sample.asked_at + 1):
        engine.ingest(episode.frame(i), int(episode.stamps_ns[i]), episode.intrinsics, episode.poses[i])
    return engine


def fit_history(trainer, stage, steps: int, lr: float = 3e-3) -> list[dict]:
    """Plain AdamW steps on the stage's losses: every step's metrics."""
    optimizer = torch.optim.AdamW(trainer.trainable_parameters(stage), lr=lr)
    history = []
    for _ in range(steps):
        loss, metrics = trainer.step_losses(stage)
        history.append(metrics)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return history


def fit(trainer, stage, steps: int):
    """fit_history at lr 3e-3: the first step's metrics and the last's."""
    history = fit_history(trainer, stage, steps)
    return history[0], history[-1]


def test_clip_ends_at_the_question_frame():
    assert clip_indices(11, 4).tolist() == [0, 4, 7, 11]
    assert clip_indices(2, 8).tolist() == [0, 1, 2]


def test_questions_per_task_asks_more_at_the_same_frame(data):
    from vlm2_ros.training.data import load_training_set

    stored = load_training_set(data, clip_frames=4, image_size=(48, 64))
    more = load_training_set(data, clip_frames=4, image_size=(48, 64), questions_per_task=3)
    for a, b in zip(stored, more, strict=True):
        assert (a.episode_id, a.asked_at) == (b.episode_id, b.asked_at)     # same memory to stream
        assert torch.equal(a.images, b.images)
        assert len(b.prompts) > len(a.prompts) and len(b.prompts) == len(b.answers) == len(b.tasks)
        assert set(a.tasks) <= set(b.tasks)
    with_memory = load_training_set(data, clip_frames=4, image_size=(48, 64), questions_per_task=3,
                                    memory_questions_per_task=2)
    for b, c in zip(more, with_memory, strict=True):
        assert c.prompts[:len(b.prompts)] == b.prompts and c.answers[:len(b.answers)] == b.answers
        assert set(c.tasks) - set(b.tasks) <= set(MEMORY_TASKS) and len(c.tasks) > len(b.tasks)


def test_balanced_picks_take_every_task_in_turn():
    from vlm2_ros.training.trainer import pick_questions

    tasks = ["direction"] * 12 + ["distance"] * 3 + ["room_size"]
    rng = np.random.default_rng(0)
    for count in (3, 7, 16, 40):
        picked = pick_questions(tasks, count, rng, balanced=True)
        assert len(picked) == len(set(picked)) == min(count, len(tasks))
        shares = [sum(tasks[i] == t for i in picked) for t in ("direction", "distance", "room_size")]
        assert shares == {3: [1, 1, 1], 7: [3, 3, 1], 16: [12, 3, 1], 40: [12, 3, 1]}[count]
    assert len(set(pick_questions(tasks, 5, rng, balanced=False))) == 5
    for balanced in (True, False):         # only the types asked for, all of them if fewer
        picked = pick_questions(tasks, 3, rng, balanced, only=["distance", "room_size"])
        assert sorted(tasks[i] for i in picked) == ["distance", "distance", "room_size"]
        assert sorted(pick_questions(tasks, 9, rng, balanced, only=["distance"])) == [12, 13, 14]


@pytest.mark.parametrize("change, message", [
    ({"stages": []}, "at least one stage"),
    ({"questions_per_task": 0}, "questions_per_task"),
    ({"memory_questions_per_task": -1}, "memory_questions_per_task"),
    ({"memory_questions_per_task": 2}, "needs questions_per_task"),
    ({"stages": [{"name": "x", "steps": 1, "train": ["wings"]}]}, "unknown modules"),
    ({"learning_rate": 1.0}, "unknown keys"),
    ({"pose_probability": 2.0}, "pose_probability"),
    ({"model": {"readout_grd": [3, 4]}}, "unknown model config fields"),
    ({"model": {"readout_pool": "objectness"}, "init_checkpoint": "ckpt"}, "from its initialisation"),
    ({"model": {"object_readout": {"enabled": False}}, "init_checkpoint": "ckpt"}, "only object_readout's"),
    ({"stages": [{"name": "x", "steps": 1, "train": ["semantic"], "objectness_loss_weight": 1.0}]},
     "add readout to train"),
    ({"stages": [{"name": "x", "steps": 1, "train": ["bridge"], "grounding_loss_weight": 1.0}]},
     "set memory to one of"),
    ({"stages": [{"name": "x", "steps": 1, "train": ["bridge"], "gather_loss_weight": 1.0}]},
     "gather_loss_weight reads the language model"),
    ({"stages": [{"name": "x", "steps": 1, "train": ["bridge"], "choice_loss_weight": 1.0}]},
     "choice_loss_weight reads the language model"),
    ({"stages": [{"name": "x", "steps": 1, "train": ["bridge"], "direction_loss_weight": 1.0}]},
     "direction_loss_weight reads the language model"),
    ({"stages": [{"name": "x", "steps": 1, "train": ["bridge"], "bearing_loss_weight": 1.0}]},
     "bearing_loss_weight reads the language model"),
    ({"stages": [{"name": "x", "steps": 1, "train": ["bridge"], "copy_loss_weight": 1.0}]},
     "copy_loss_weight reads the language model"),
    ({"stages": [{"name": "x", "steps": 1, "train": ["bridge"], "depth_loss_weight": 0.0, "memory": "stream",
                  "grounding_loss_weight": 1.0, "grounding_layer": -1}]}, "grounding_layer"),
    ({"stages": [{"name": n, "steps": 1, "train": ["bridge"], "depth_loss_weight": 0.0, "memory": "stream",
                  "grounding_loss_weight": 1.0, "grounding_layer": layer} for n, layer in (("a", 1), ("b", 2))]},
     "same layer"),
    ({"stages": [{"name": "x", "steps": 1, "train": ["bridge"], "question_types": ["quarter"]}]},
     "unknown question_types"),
    ({"stages": [{"name": "x", "steps": 1, "train": ["geometry"], "memory": "window",
                  "answer_loss_weight": 0.0, "question_types": ["memory_object_quadrant"]}]}, "asks questions"),
    ({"stages": [{"name": "x", "steps": 1, "train": ["bridge"], "scenes": "imagined"}]}, "scenes must be one of"),
    ({"questions_per_task": 2, "stages": [{"name": "x", "steps": 1, "train": ["bridge"], "depth_loss_weight": 0.0,
                                           "memory": "stream", "scenes": "generated"}]}, "set memory: oracle"),
    ({"stages": [{"name": "x", "steps": 1, "train": ["bridge"], "depth_loss_weight": 0.0, "memory": "oracle",
                  "scenes": "generated"}]}, "set questions_per_task"),
    ({"questions_per_task": 2, "stages": [{"name": "x", "steps": 1, "train": ["bridge"], "depth_loss_weight": 0.0,
                                           "memory": "oracle", "scenes": "generated",
                                           "question_types": ["memory_object_extreme"]}]},
     "memory_questions_per_task"),
    ({"questions_per_task": 2, "stages": [{"name": "x", "steps": 1, "train": ["bridge"], "depth_loss_weight": 0.0,
                                           "memory": "oracle", "generated_share": 0.5}]}, "set memory: perceived"),
    ({"questions_per_task": 2, "stages": [{"name": "x", "steps": 1, "train": ["bridge"], "depth_loss_weight": 0.0,
                                           "memory": "perceived", "generated_share": 1.0}]}, r"in \[0, 1\)"),
    ({"stages": [{"name": "x", "steps": 1, "train": ["bridge"], "depth_loss_weight": 0.0, "memory": "perceived",
                  "generated_share": 0.5}]}, "set questions_per_task"),
    ({"stages": [{"name": "x", "steps": 1, "train": ["bridge"], "depth_loss_weight": 0.0, "memory": "perceived",
                  "perception_noise": {"miss_probability": 0.2}}]}, "generated_share > 0"),
])
def test_bad_configs_name_the_problem(tmp_path, change, message):
    with pytest.raises(TrainConfigError, match=message):
        load_train_config(write_config(tmp_path / "c.yaml", **change))


def test_two_stage_run_writes_a_checkpoint_and_resumes(data, tmp_path):
    from vlm2_ros.engine.engine import SpatialMemoryEngine
    (tmp_path / "data").symlink_to(data)
    config = write_config(tmp_path / "train.yaml")
    assert main(["train", "--config", str(config)]) == 0
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["geometry"] * 2 + ["answering"] * 2
    assert all(r["loss_answer"] == 0 for r in rows[:2]) and all(r["loss_answer"] > 0 for r in rows[2:])
    assert all(r["loss_category"] > 0 for r in rows[:2]) and all(r["loss_category"] == 0 for r in rows[2:])
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    meta = json.loads((run / "checkpoint" / "vlm2_config.json").read_text())
    assert meta["trained_with"]["global_step"] == 4 and meta["trained_with"]["episodes"] == 2
    assert meta["trained_with"]["data_set"] == {"seed": 11, "episodes": 2, "frames": 12, "width": 64, "height": 48,
                                                "fps": 10.0, "per_task": 1, "style": "walk"}
    engine = SpatialMemoryEngine.from_preset("tiny", checkpoint_dir=run / "checkpoint")
    assert engine.weights.startswith("checkpoint@sha256:")
    with pytest.raises(SystemExit, match="--resume"):
        main(["train", "--config", str(config)])
    # a longer second stage: --resume continues from step 4, not from scratch
    write_config(config, stages=[{"name": "geometry", "steps": 2, "train": ["geometry", "semantic", "fusion"],
                                  "answer_loss_weight": 0.0, "category_loss_weight": 1.0},
                                 {"name": "answering", "steps": 3, "train": ["fusion", "memory", "readout", "bridge"],
                                  "depth_loss_weight": 0.0}])
    state = json.loads((run / "train_state.json").read_text())
    state.update(stage_index=1, stage_step=2)             # as if stopped after step 2 of stage 2
    (run / "train_state.json").write_text(json.dumps(state))
    from vlm2_ros.training.config import load_train_config
    from vlm2_ros.training.trainer import Trainer
    probes = Trainer(load_train_config(config), resume=True, progress=False).probes
    saved = load_file(str(run / "train_state.safetensors"))
    for name in ("category", "position"):                 # the training-only probes resume too
        assert torch.equal(probes[name].weight, saved[f"probes.{name}.weight"])
    # a stage changed under a run stopped inside it: its optimizer state no longer fits, said plainly
    changed = yaml.safe_load(config.read_text())
    changed["stages"][1]["category_loss_weight"] = 1.0
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
    with pytest.raises(SystemExit, match="'answering': the run stopped at its step 2 .* add a stage"):
        main(["train", "--config", str(tmp_path / "changed.yaml"), "--resume"])
    assert main(["train", "--config", str(config), "--resume"]) == 0
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows][-1] == 5
    # a stage added after the finished run, training other tensors: it starts its own optimizer
    added = yaml.safe_load(config.read_text())
    added["stages"].append({"name": "more", "steps": 1, "train": ["geometry"], "answer_loss_weight": 0.0})
    config.write_text(yaml.safe_dump(added))
    assert main(["train", "--config", str(config), "--resume"]) == 0
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in rows][-1] == ("more", 6)
    # a run written before the position probe (category probe only, as "category_probe.*") resumes
    from safetensors.torch import save_file
    state = load_file(str(run / "train_state.safetensors"))
    old = {k.replace("probes.category.", "category_probe."): v for k, v in state.items()
           if not k.startswith("probes.position.")}
    save_file(old, str(run / "train_state.safetensors"))
    probes = Trainer(load_train_config(config), resume=True, progress=False).probes
    assert torch.equal(probes["category"].weight, old["category_probe.weight"])


def test_fitting_one_sample_lowers_both_losses(data):
    from vlm2_ros.training.config import StageConfig, TrainConfig
    from vlm2_ros.training.trainer import Trainer

    config = TrainConfig(data=str(data), out="/nonexistent-unused", clip_frames=3, questions_per_episode=2,
                         episodes_per_step=1, pose_probability=1.0,
                         stages=[StageConfig("all", steps=1, train=["geometry", "fusion", "memory", "readout",
                                                                       "bridge"], lr=3e-3, warmup_steps=0)])
    trainer = Trainer(config, progress=False)
    trainer.data = trainer.data[:1]
    first, metrics = fit(trainer, config.stages[0], steps=12)
    assert metrics["loss_depth"] < first["loss_depth"] and metrics["loss_answer"] < 0.5 * first["loss_answer"]


def test_a_clip_unrolls_to_the_tokens_and_points_the_engine_stores(data):
    """Training unrolls a clip as the engine ingests it: every pixel on its camera ray (the
    episode's intrinsics, a CameraInfo to the engine) and the given pose, so the fused tokens H_t
    and the points they carry are the ones inference will store."""
    from vlm2_ros.engine.engine import SpatialMemoryEngine
    from vlm2_ros.model.vlm2 import input_pixel_rays
    from vlm2_ros.sim.episode import EpisodeDir
    from vlm2_ros.training.config import StageConfig, TrainConfig
    from vlm2_ros.training.trainer import Trainer, unroll

    config = TrainConfig(data=str(data), out="/nonexistent-unused", clip_frames=4, questions_per_episode=2,
                         episodes_per_step=1, stages=[StageConfig("s", steps=1, train=["fusion"])])
    trainer = Trainer(config, progress=False)
    sample, model = trainer.data[0], trainer.model.eval()
    episode = EpisodeDir(sample.path)
    assert torch.equal(sample.rays, input_pixel_rays(episode.intrinsics, model.config.image_size))
    with torch.no_grad():
        stream, _, stored = unroll(model, sample, use_pose=True)
    engine = SpatialMemoryEngine(model, weights="w")
    for i in sample.frame_indices.tolist():
        engine.ingest(episode.frame(i), int(episode.stamps_ns[i]), episode.intrinsics, episode.poses[i])
    working = engine.stream.memory.working
    assert torch.allclose(working.tokens[0, -1], stored[-2], atol=1e-4)           # [H_T, M_T] per frame
    assert torch.allclose(working.provenance.patch_points, stream.memory.working.provenance.patch_points, atol=1e-4)


def test_perception_stage_teaches_the_fused_tokens_what_is_where(data):
    from vlm2_ros.training.config import StageConfig, TrainConfig
    from vlm2_ros.training.trainer import Trainer

    stage = StageConfig("perception", steps=1, train=["semantic", "fusion", "memory"], lr=3e-3, warmup_steps=0,
                        depth_loss_weight=0.0, answer_loss_weight=0.0, category_loss_weight=1.0,
                        position_loss_weight=1.0, point_loss_weight=1.0)
    config = TrainConfig(data=str(data), out="/nonexistent-unused", clip_frames=3, episodes_per_step=1,
                         pose_probability=1.0, stages=[stage])
    trainer = Trainer(config, progress=False)
    trainer.data = trainer.data[:1]
    first, metrics = fit(trainer, stage, steps=15)
    assert metrics["loss_depth"] > 0 and metrics["loss_answer"] == 0        # computed, not trained
    assert metrics["loss_category"] < 0.5 * first["loss_category"]
    assert metrics["category_accuracy"] > first["category_accuracy"]
    assert metrics["loss_position"] < 0.5 * first["loss_position"]
    assert metrics["position_error_m"] < first["position_error_m"]
    assert metrics["loss_point"] < 0.5 * first["loss_point"]
    assert metrics["point_error_m"] < first["point_error_m"]


def test_position_loss_is_skipped_on_clips_without_poses(data):
    from vlm2_ros.training.config import StageConfig, TrainConfig
    from vlm2_ros.training.trainer import Trainer

    stage = StageConfig("perception", steps=1, train=["fusion"], depth_loss_weight=0.0, answer_loss_weight=0.0,
                        position_loss_weight=1.0, point_loss_weight=1.0)
    config = TrainConfig(data=str(data), out="/nonexistent-unused", clip_frames=3, episodes_per_step=1,
                         pose_probability=0.0, stages=[stage])
    loss, metrics = Trainer(config, progress=False).step_losses(stage)
    assert metrics["loss_position"] == metrics["loss_point"] == 0 and float(loss.detach()) == 0   # frame unknown


def test_position_loss_targets_each_class_moment_per_patch():
    from vlm2_ros.training.trainer import class_moments, position_loss

    classes = torch.zeros(1, 2, 4, dtype=torch.uint8)
    classes[0, :, 3] = 2                                 # right patch of a 1x2 grid: half class 2
    points = torch.zeros(1, 2, 4, 3)
    points[..., 0] = torch.arange(4.0)                   # x = column index (metres)
    target = class_moments(classes, points, 3, (1, 2), scale_m=2.0)       # [1,2,9]
    # left patch: all class 0 at mean x 0.5; right: class 0 (share 1/2) at x 2, class 2 (1/2) at x 3
    expected = torch.zeros(1, 2, 3, 3)
    expected[0, 0, 0, 0] = 0.5 / 2
    expected[0, 1, 0, 0] = 0.5 * 2 / 2
    expected[0, 1, 2, 0] = 0.5 * 3 / 2
    assert torch.allclose(target, expected.flatten(-2))
    loss, error = position_loss(target, classes, points, (1, 2), scale_m=2.0)
    assert float(loss) == 0 and error == 0
    shifted = target.clone()
    shifted[0, 0, 0] += 0.5                              # left patch's class 0 said 1 m (0.5 x scale) off in x
    loss, error = position_loss(shifted, classes, points, (1, 2), scale_m=2.0)
    assert abs(float(loss) - 0.125) < 1e-6 and abs(error - 0.5) < 1e-6   # mean of 1 m and 0 m


def test_point_loss_targets_each_patch_mean_world_point():
    from vlm2_ros.training.trainer import point_loss

    points = torch.zeros(1, 2, 4, 3)
    points[..., 0] = torch.arange(4.0)                   # x = column index (metres)
    points[..., 2] = 1.0
    target = torch.tensor([[[0.5, 0.0, 1.0], [2.5, 0.0, 1.0]]]) / 2.0       # 1x2 grid, scale 2 m
    loss, error = point_loss(target, points, (1, 2), scale_m=2.0)
    assert float(loss) == 0 and error == 0
    shifted = target.clone()
    shifted[0, 1, 1] += 0.5                              # right patch said 1 m off in y
    loss, error = point_loss(shifted, points, (1, 2), scale_m=2.0)
    assert abs(float(loss) - 0.125) < 1e-6 and abs(error - 0.5) < 1e-6   # mean of 0 m and 1 m


def test_objectness_loss_targets_each_patch_object_share():
    from vlm2_ros.training.trainer import objectness_loss

    classes = torch.zeros(1, 2, 4, dtype=torch.uint8)
    classes[0, :, 3] = 2                                 # right patch of a 1x2 grid: half an object
    sure = torch.tensor([[-20.0, 0.0]])                  # left: surely room; right: even odds
    assert abs(float(objectness_loss(sure, classes, (1, 2))) - np.log(2) / 2) < 1e-6
    assert float(objectness_loss(-sure, classes, (1, 2))) > 9


def test_objectness_stage_needs_the_objectness_readout_and_teaches_its_score(data, tmp_path):
    from vlm2_ros.training.config import StageConfig, TrainConfig
    from vlm2_ros.training.trainer import Trainer

    (tmp_path / "data").symlink_to(data)
    stage = {"name": "p", "steps": 1, "train": ["readout"], "depth_loss_weight": 0.0, "answer_loss_weight": 0.0,
             "objectness_loss_weight": 1.0}
    with pytest.raises(SystemExit, match="readout_pool: objectness"):
        main(["train", "--config", str(write_config(tmp_path / "c.yaml", stages=[stage]))])
    stage = StageConfig(**{**stage, "lr": 3e-2, "warmup_steps": 0})
    config = TrainConfig(data=str(data), out="/nonexistent-unused", clip_frames=3, episodes_per_step=1,
                         model={"readout_pool": "objectness"}, stages=[stage])
    trainer = Trainer(config, progress=False)
    trainer.data = trainer.data[:1]
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    first, metrics = fit(trainer, stage, steps=15)
    assert metrics["loss_objectness"] < 0.8 * first["loss_objectness"]
    changed = {k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"readout.objectness.weight", "readout.objectness.bias"}


def test_window_stage_trains_depth_on_consecutive_frames_of_the_whole_episode(data, monkeypatch):
    from vlm2_ros.training import trainer as trainer_module
    from vlm2_ros.training.config import StageConfig, TrainConfig
    from vlm2_ros.training.trainer import Trainer

    stage = StageConfig("geometry", steps=1, train=["geometry"], lr=3e-3, warmup_steps=0, answer_loss_weight=0.0,
                        memory="window", episodes_per_step=2)
    config = TrainConfig(data=str(data), out="/nonexistent-unused", clip_frames=3, stages=[stage])
    trainer = Trainer(config, progress=False)
    windows = []
    load_frames = trainer_module.load_frames
    monkeypatch.setattr(trainer_module, "load_frames",
                        lambda episode, indices, size: windows.append(list(indices)) or load_frames(episode, indices, size))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    first, metrics = fit(trainer, stage, steps=10)
    length = trainer.model.config.geometry_window
    assert len(windows) == 20 and all(w == list(range(w[0], w[0] + length)) for w in windows)
    # anywhere in the 12-frame episodes, not only up to the question frame
    assert min(w[0] for w in windows) >= 0 and max(w[-1] for w in windows) <= 11 and len({w[0] for w in windows}) > 2
    assert metrics["loss_depth"] < first["loss_depth"]
    assert all(v == 0 for k, v in metrics.items() if k != "loss_depth")
    changed = {k.split(".")[0] for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"geometry"}


def test_window_stage_trains_the_depth_refinement_alone(data):
    from vlm2_ros.training.config import StageConfig, TrainConfig
    from vlm2_ros.training.trainer import Trainer

    stage = StageConfig("refine", steps=1, train=["depth_refinement"], lr=3e-3, warmup_steps=0,
                        answer_loss_weight=0.0, memory="window", episodes_per_step=2)
    config = TrainConfig(data=str(data), out="/nonexistent-unused", clip_frames=3, stages=[stage],
                         model={"depth_refinement": {"enabled": True}})
    trainer = Trainer(config, progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    first, metrics = fit(trainer, stage, steps=10)
    assert metrics["loss_depth"] < first["loss_depth"]
    changed = {k.split(".")[0] for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"depth_refinement"}      # the decoder, the semantic encoder frozen


def test_training_a_disabled_depth_refinement_is_refused(data):
    from vlm2_ros.training.config import StageConfig, TrainConfig
    from vlm2_ros.training.trainer import Trainer

    stage = StageConfig("refine", steps=1, train=["depth_refinement"], answer_loss_weight=0.0, memory="window")
    trainer = Trainer(TrainConfig(data=str(data), out="/nonexistent-unused", clip_frames=3, stages=[stage]),
                      progress=False)
    with pytest.raises(TrainConfigError, match="depth_refinement.*disabled"):
        trainer.trainable_parameters(stage)


def test_category_loss_targets_each_patch_class_share():
    from vlm2_ros.training.trainer import category_loss

    classes = torch.zeros(1, 4, 4, dtype=torch.uint8)
    classes[0, :2, :2] = 3                               # top-left patch of a 2x2 grid: all class 3
    classes[0, 2:, 2:3] = 1                              # bottom-right: half class 1, half class 0
    right = torch.full((1, 4, 5), -10.0)
    right[0, :, 0] = 10.0
    right[0, 0] = torch.tensor([-10.0, -10, -10, 10, -10])
    right[0, 3] = torch.tensor([10.0, 10, -10, -10, -10])
    loss, accuracy = category_loss(right, classes, (2, 2))
    assert accuracy == 1.0 and abs(float(loss) - 0.25 * np.log(2)) < 1e-3   # only the mixed patch's entropy
    wrong_loss, wrong_accuracy = category_loss(right.roll(1, dims=-1), classes, (2, 2))
    assert wrong_accuracy == 0.0 and float(wrong_loss) > 10


def test_semantic_classes_follow_the_instance_mask():
    from vlm2_ros.sim.scene import SEMANTIC_CLASSES, generate_scene, semantic_classes

    scene = generate_scene(4)
    mask = np.array([[0] + [o.id for o in scene.objects]], dtype=np.uint16)
    assert [SEMANTIC_CLASSES[c] for c in semantic_classes(scene, mask)[0]] == ["room"] + [o.category for o in scene.objects]


def test_stream_stage_memory_is_the_inference_memory_and_training_lowers_the_loss(data, tmp_path, monkeypatch):
    from vlm2_ros.training.config import StageConfig, TrainConfig
    from vlm2_ros.training.trainer import Trainer

    stage = StageConfig("read", steps=1, train=["bridge"], lr=3e-3, warmup_steps=0, depth_loss_weight=0.0,
                        memory="stream")
    config = TrainConfig(data=str(data), out=str(tmp_path / "run"), questions_per_episode=4,
                         episodes_per_step=1, stages=[stage])
    trainer = Trainer(config, progress=False)
    trainer.data = trainer.data[:1]
    sample = trainer.data[0]
    # the memory a "stream" stage trains on is what the engine reads after ingesting frame by frame
    expected = trainer.model.read_memory(ingested_frame_by_frame(trainer.model, sample).stream).tokens
    assert torch.allclose(trainer.stream_memories()[0], expected, atol=1e-5)
    assert not trainer.stream_memories()[0].is_inference()
    # kept in the run directory for --resume, per sample, keyed by the weights before the bridge:
    # a run on more episodes streams only those it adds
    import vlm2_ros.training.trainer as trainer_module
    calls = []
    monkeypatch.setattr(trainer_module, "streamed_memory", lambda engine, e: calls.append(e) or expected.clone())
    again = Trainer(config, progress=False)
    assert len(again.data) == 2
    assert torch.equal(again.stream_memories()[0], trainer.stream_memories()[0])
    assert [e.stream_key for e in calls] == [again.data[1].stream_key]
    # streaming another data set's episode keeps the entries it does not use
    other = Trainer(config, progress=False)
    other.data = [dataclasses.replace(other.data[1], stream_key="another-episode@7")]
    other.stream_memories()
    assert set(load_file(str(tmp_path / "run" / "streamed_memories.safetensors"))) == {
        e.stream_key for e in again.data} | {"another-episode@7"}
    with torch.no_grad():
        next(again.model.fusion.parameters()).add_(1.0)
    calls.clear()
    again._streamed = None
    again.stream_memories()
    assert len(calls) == 2             # other weights: streamed again
    from vlm2_ros.evaluation.streaming import memory_digest
    digest = memory_digest(again.model)
    again.model.config.readout_grid = (3, 4)
    assert memory_digest(again.model) != digest      # so is another memory layout with the same weights
    again.model.config.readout_grid = (2, 2)
    trainer.model.train()
    first, metrics = fit(trainer, stage, steps=10)
    assert metrics["loss_depth"] == 0.0 and metrics["loss_answer"] < 0.5 * first["loss_answer"]


@pytest.mark.parametrize("stage", [
    {"name": "s", "steps": 1, "train": ["geometry", "fusion"], "answer_loss_weight": 0.0, "memory": "window"},
    {"name": "s", "steps": 1, "train": ["geometry"], "memory": "window"},
    {"name": "s", "steps": 1, "train": ["depth_refinement", "semantic"], "answer_loss_weight": 0.0,
     "memory": "window"},
    {"name": "s", "steps": 1, "train": [], "answer_loss_weight": 0.0, "memory": "window"},
    {"name": "s", "steps": 1, "train": ["geometry"], "answer_loss_weight": 0.0, "point_loss_weight": 1.0,
     "memory": "window"},
    {"name": "s", "steps": 1, "train": ["geometry"], "depth_loss_weight": 0.0, "answer_loss_weight": 0.0,
     "category_loss_weight": 1.0, "memory": "window"},
    {"name": "s", "steps": 1, "train": ["bridge", "fusion"], "depth_loss_weight": 0.0, "memory": "stream"},
    {"name": "s", "steps": 1, "train": ["bridge"], "memory": "stream"},
    {"name": "s", "steps": 1, "train": ["bridge"], "depth_loss_weight": 0.0, "memory": "video"},
    {"name": "s", "steps": 1, "train": ["bridge", "memory"], "depth_loss_weight": 0.0, "memory": "oracle"},
    {"name": "s", "steps": 1, "train": ["bridge"], "depth_loss_weight": 0.0, "category_loss_weight": 1.0,
     "memory": "stream"},
])
def test_stream_and_window_stage_settings_are_validated(tmp_path, stage):
    with pytest.raises(TrainConfigError, match="memory"):
        load_train_config(write_config(tmp_path / "c.yaml", stages=[stage]))


def test_memory_reliance_compares_own_and_another_scenes_memory(data, tmp_path, capsys):
    from vlm2_ros.training.config import load_train_config
    from vlm2_ros.training.trainer import Trainer

    (tmp_path / "data").symlink_to(data)
    config = write_config(tmp_path / "train.yaml", stages=[{"name": "a", "steps": 1, "train": ["bridge"],
                                                            "depth_loss_weight": 0.0}])
    with pytest.raises(SystemExit, match="no training run"):
        main(["train", "--config", str(config), "--memory-reliance"])
    assert main(["train", "--config", str(config)]) == 0
    assert main(["train", "--config", str(config), "--memory-reliance", "2"]) == 0
    rows = json.loads((tmp_path / "run" / "memory_reliance.json").read_text())
    questions = sum(len(s.prompts) for s in Trainer(load_train_config(config), resume=True, progress=False).data)
    assert rows["all"]["questions"] == questions == sum(r["questions"] for t, r in rows.items() if t != "all")
    assert rows["all"]["own"] != rows["all"]["other"]            # two scenes' memories: different losses
    assert "| all |" in capsys.readouterr().out
    choices = {t for s in Trainer(load_train_config(config), resume=True, progress=False).data
               for t, a in zip(s.tasks, s.answers) if a in ("A", "B", "C", "D")}
    assert choices and {t for t, r in rows.items() if "own_accuracy" in r} == choices
    assert all(0 <= r[k] <= 1 for r in rows.values() for k in ("own_accuracy", "other_accuracy") if k in r)
    # a language model that never sees the memory loses the same with either
    trainer = Trainer(load_train_config(config), resume=True, progress=False)
    trainer.model.bridge.projector.forward = lambda x: torch.zeros(*x.shape[:-1], trainer.model.bridge.hidden_size)
    rows = trainer.memory_reliance(samples=2)
    assert rows["all"]["own"] == rows["all"]["other"]
    assert all(r["own_accuracy"] == r["other_accuracy"] for r in rows.values() if "own_accuracy" in r)


def test_room_size_probe_finds_the_room_in_the_memory_when_it_is_there(data, tmp_path):
    import dataclasses

    from vlm2_ros.training.config import load_train_config
    from vlm2_ros.training.trainer import Trainer

    (tmp_path / "data").symlink_to(data)
    config = write_config(tmp_path / "train.yaml", stages=[{"name": "a", "steps": 1, "train": ["bridge"],
                                                            "depth_loss_weight": 0.0}])
    assert main(["train", "--config", str(config)]) == 0
    with pytest.raises(SystemExit, match="the probe needs at least 5"):   # the fixture asks 2 room sizes
        main(["train", "--config", str(config), "--room-size-probe"])
    trainer = Trainer(load_train_config(config), resume=True, progress=False)
    areas = np.linspace(9.0, 90.0, 20)
    template = trainer.data[0]
    trainer.data = [dataclasses.replace(template, answers=[f"{a:.1f}"], tasks=["room_size_estimation"])
                    for a in areas]
    noise = torch.Generator().manual_seed(0)
    trainer._streamed = [torch.randn(1, 8, 4, generator=noise) for _ in areas]
    blind = trainer.room_size_probe(folds=5, ridge=1.0)
    for memory, area in zip(trainer._streamed, areas):
        memory[..., 0] = float(np.log(area))                     # the memory says how large the room is
    seeing = trainer.room_size_probe(folds=5, ridge=1.0)
    assert seeing["samples"] == blind["samples"] == 20 and seeing["mean_mra"] == blind["mean_mra"]
    assert seeing["probe_mra"] > 0.9 > blind["probe_mra"] and seeing["log_correlation"] > 0.99


@pytest.mark.parametrize("reader, pool", [("point", "objectness"), ("position", "mean")])
def test_position_probe_reads_where_each_object_is(data, tmp_path, reader, pool):
    from vlm2_ros.sim.episode import EpisodeDir
    from vlm2_ros.sim.scene import SEMANTIC_CLASSES
    from vlm2_ros.training.config import load_train_config
    from vlm2_ros.training.trainer import Trainer

    (tmp_path / "data").symlink_to(data)
    untrained = write_config(tmp_path / "a.yaml", out="a", stages=[{"name": "a", "steps": 1, "train": ["bridge"],
                                                                     "depth_loss_weight": 0.0}])
    assert main(["train", "--config", str(untrained)]) == 0
    with pytest.raises(SystemExit, match="has not trained the category probe"):
        main(["train", "--config", str(untrained), "--position-probe", "1"])
    config = write_config(tmp_path / "b.yaml", out="b", pose_probability=1.0, model={"readout_pool": pool}, stages=[
        {"name": "p", "steps": 1, "train": ["fusion"], "depth_loss_weight": 0.0, "answer_loss_weight": 0.0,
         "category_loss_weight": 1.0, f"{reader}_loss_weight": 1.0}])
    assert main(["train", "--config", str(config)]) == 0
    assert main(["train", "--config", str(config), "--position-probe", "2"]) == 0
    result = json.loads((tmp_path / "b" / "position_probe.json").read_text())
    assert result["episodes"] == 2 and result["reader"] == reader and result["depth_error"] > 0
    assert result["patch_point_error_m"] > 0
    assert result["perceived_objects"]["objects"] > 0
    assert set(result["grids"]) == {"6x8", "6x8 carried", "2x2 mean"} | (
        {"2x2 objectness"} if pool == "objectness" else set())
    # Probes that say every token shows one object, at its centre: the reader finds exactly it.
    trainer = Trainer(load_train_config(config), resume=True, progress=False)
    scene = EpisodeDir(trainer.data[0].path).scene
    target = scene.unique_objects()[0]
    k, scale = SEMANTIC_CLASSES.index(target.category), trainer.model.config.fusion.position_scale_m
    with torch.no_grad():
        for probe in trainer.probes.values():
            probe.weight.zero_()
            probe.bias.zero_()
        trainer.probes["category"].bias[k] = 20.0
        centre = torch.tensor(target.center) / scale
        trainer.probes["point"].bias.copy_(centre)
        trainer.probes["position"].bias.view(-1, 3)[k] = centre      # share ~1: the moment is the point
    result = trainer.position_probe(episodes=1)
    # read from the carried points, the target is where the memory's points are on average
    carried = ingested_frame_by_frame(trainer.model, trainer.data[0]).stream.memory
    mean = torch.cat([carried.episodic.provenance.patch_points, carried.working.provenance.patch_points],
                     dim=1).flatten(0, 2).mean(dim=0)
    room = scene.room
    for name, row in result["grids"].items():
        assert row["objects"] == len(scene.unique_objects()) and row["located"] == 1 and row["recognised"] == 1
        expected = float(np.hypot(*(mean[:2].numpy() - np.asarray(target.center[:2])))) if "carried" in name else 0
        assert abs(row["median_error_m"] - expected) < 1e-3
        others = [0.0] * (len(scene.unique_objects()) - 1)       # every token shows the target only
        assert abs(row["median_best_share"] - float(np.median([1.0] + others))) < 0.01
        assert abs(row["room_centre_median_error_m"] - float(np.hypot(room.width / 2 - target.center[0],
                                                                      room.depth / 2 - target.center[1]))) < 1e-6
    objects = result["perceived_objects"]        # boxes of the target's category only, one of them the closest
    assert objects["boxes_per_episode"] >= 1 and objects["located"] == 1
    assert objects["objects"] == len(scene.unique_objects()) and objects["seen_per_episode"] > 1


def test_a_pretrained_cnn_backbone_stays_frozen_unless_asked():
    from vlm2_ros.model.checkpoint import load_model
    from vlm2_ros.training.trainer import set_trainable

    for freeze in (True, False):
        model, _ = load_model("tiny", use_shipped=False, config_changes={
            "semantic": {"kind": "efficientnet_lite0", "freeze_backbone": freeze}})
        trainable = {id(p) for p in set_trainable(model, ["semantic", "fusion"])}
        backbone = list(model.semantic.backend.backbone.parameters())
        assert all((id(p) in trainable) != freeze for p in backbone)
        assert all(id(p) in trainable for p in model.semantic.backend.projector.parameters())
        assert all(id(p) in trainable for p in model.fusion.parameters())


@pytest.mark.parametrize("change, message", [
    ({"init_modules": ["geometry"]}, "maps each module to the checkpoint"),
    ({"init_modules": {"wings": "ckpt"}}, "unknown modules"),
    ({"init_modules": {"geometry": "ckpt"}, "init_checkpoint": "ckpt"}, "use one"),
    ({"init_probes": "../out/run"}, "maps each training-only probe"),
])
def test_bad_init_modules_name_the_problem(tmp_path, change, message):
    with pytest.raises(TrainConfigError, match=message):
        load_train_config(write_config(tmp_path / "c.yaml", **change))


def test_init_modules_take_each_module_from_its_checkpoint_under_a_new_semantic_encoder(data, tmp_path):
    from vlm2_ros.model.checkpoint import load_model, save_checkpoint
    from vlm2_ros.model.efficientnet_lite import packaged_weights_path
    from vlm2_ros.model.episodic_memory import EpisodicMemoryConfig
    from vlm2_ros.training.trainer import Trainer

    (tmp_path / "data").symlink_to(data)
    sources = {}
    for name, seed in (("perception", 5), ("answering", 6)):
        sources[name], _ = load_model("tiny", use_shipped=False, seed=seed)
        with torch.no_grad():
            for p in sources[name].parameters():
                p.add_(0.01 * seed)                         # weights no fresh model has
        save_checkpoint(sources[name], tmp_path / name)
    taken = {"geometry": "perception", "fusion": "perception", "bridge": "answering"}
    config = load_train_config(write_config(
        tmp_path / "c.yaml", clip_frames=3, episodes_per_step=1, model={"semantic": {"kind": "efficientnet_lite0"}},
        init_modules={module: source for module, source in taken.items()},       # relative to the config's folder
        stages=[{"name": "p", "steps": 1, "train": ["semantic"], "answer_loss_weight": 0.0,
                 "category_loss_weight": 1.0}]))
    assert config.init_modules["bridge"] == str(tmp_path / "answering")
    trainer = Trainer(config, progress=False)
    model = trainer.model
    for name, source in taken.items():
        theirs = getattr(sources[source], name).state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in getattr(model, name).state_dict().items())
    theirs = sources["perception"].memory.state_dict()      # the rest is the run's own initialisation
    assert any(not torch.equal(v, theirs[k]) for k, v in model.memory.state_dict().items())
    stored = torch.load(packaged_weights_path(), weights_only=True)
    assert all(torch.equal(v, stored[k]) for k, v in model.semantic.backend.backbone.state_dict().items())
    assert "+geometry,fusion from perception@sha256:" in trainer.weights
    assert "+bridge from answering@sha256:" in trainer.weights
    # init_probes takes each named probe from the run it maps to; the others start fresh
    from safetensors.torch import save_file
    hidden, dim = model.bridge.hidden_size, model.config.fusion.dim
    for run in ("answering_run", "perception_run"):
        (tmp_path / run).mkdir()
    save_file({"probes.grounding.weight": torch.full((3, hidden), 0.5), "probes.grounding.bias": torch.ones(3),
               "probes.point.weight": torch.full((3, dim), 9.0), "probes.point.bias": torch.ones(3)},
              str(tmp_path / "answering_run" / "train_state.safetensors"))
    save_file({"probes.point.weight": torch.full((3, dim), 0.25), "probes.point.bias": torch.zeros(3)},
              str(tmp_path / "perception_run" / "train_state.safetensors"))
    with_probes = dataclasses.replace(config, init_probes={"grounding": str(tmp_path / "answering_run"),
                                                           "point": str(tmp_path / "perception_run")})
    trainer = Trainer(with_probes, progress=False)
    probes = trainer.probes
    assert torch.equal(probes["grounding"].weight, torch.full((3, hidden), 0.5))
    assert torch.equal(probes["point"].weight, torch.full((3, dim), 0.25))       # not the answering run's
    assert not torch.equal(probes["gather"].weight[:3], torch.full((3, hidden), 0.5))
    assert {"grounding", "point"} <= set(trainer.trained_probes())                # taken trained
    for probes_taken, message in (({"wings": str(tmp_path / "answering_run")}, "unknown probes"),
                                  ({"choice": str(tmp_path / "answering_run")}, "holds no 'choice' probe"),
                                  ({"grounding": str(tmp_path)}, "holds no training state")):
        with pytest.raises(TrainConfigError, match=message):
            Trainer(dataclasses.replace(config, init_probes=probes_taken), progress=False)
    save_file({"probes.grounding.weight": torch.ones(3, hidden + 1)},
              str(tmp_path / "answering_run" / "train_state.safetensors"))
    with pytest.raises(TrainConfigError, match="do not fit"):
        Trainer(dataclasses.replace(with_probes, init_probes={"grounding": str(tmp_path / "answering_run")}),
                progress=False)
    # a module whose config differs cannot be taken
    other_semantic = dataclasses.replace(config, init_modules={"semantic": str(tmp_path / "perception")})
    with pytest.raises(TrainConfigError, match="another config"):
        Trainer(other_semantic, progress=False)
    # the memory's sizes and replacement rule hold no weights: a run may change them
    other_rule = dataclasses.replace(config, init_modules={"memory": str(tmp_path / "perception")}, model={
        **config.model, "memory": {"episodic": {"capacity": 8, "replacement": "place"}}})
    trainer = Trainer(other_rule, progress=False)
    assert trainer.model.memory.config.episodic == EpisodicMemoryConfig(capacity=8, replacement="place")
    theirs = sources["perception"].memory.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in trainer.model.memory.state_dict().items())


def test_an_object_readouts_head_is_taken_whatever_the_run_groups_and_writes_but_not_for_other_classes():
    from vlm2_ros.model.checkpoint import build_model
    from vlm2_ros.model.presets import preset_config
    from vlm2_ros.training.trainer import copy_modules

    def model(**readout):
        return build_model(preset_config("tiny").with_changes({"object_readout": {"enabled": True, **readout}}))

    source = model(min_share=0.3)
    target = model(min_share=0.5, grouping="peaks", order_channel=True)
    copy_modules(source, target, ["object_readout"], "source")
    assert torch.equal(target.object_readout.category.weight, source.object_readout.category.weight)
    with pytest.raises(TrainConfigError, match="another config"):
        copy_modules(source, model(classes=["room", "chair"]), ["object_readout"], "source")


def test_a_semantic_encoder_is_taken_whether_or_not_the_run_trains_its_pretrained_backbone():
    from vlm2_ros.model.checkpoint import build_model
    from vlm2_ros.model.presets import preset_config
    from vlm2_ros.training.trainer import copy_modules

    def model(**semantic):
        return build_model(preset_config("tiny").with_changes({"semantic": {"kind": "efficientnet_lite0", **semantic}}))

    source = model()
    target = model(freeze_backbone=False)
    copy_modules(source, target, ["semantic"], "source")
    theirs = source.semantic.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in target.semantic.state_dict().items())
    assert target.semantic.frozen_backbone() is None and source.semantic.frozen_backbone() is not None
    with pytest.raises(TrainConfigError, match="another config"):
        copy_modules(source, model(cnn_input_size=[192, 256]), ["semantic"], "source")


def test_the_recipe_configs_are_valid():
    from pathlib import Path

    from vlm2_ros.model.vlm2 import VLM2Config

    recipe = Path(__file__).resolve().parent.parent / "config" / "train_tiny.yaml"
    config = load_train_config(recipe)
    assert [s.name for s in config.stages] == ["geometry", "perception", "compare1", "compare2", "directions",
                                               "perceived_directions", "all_types", "perceived_all", "perceived_vsi",
                                               "compare4", "all_types_order", "route_back", "perceived_order",
                                               "comparisons", "perceived_comparisons"]
    readout = VLM2Config(**config.model).object_readout          # its model changes make a valid config
    assert readout.enabled and readout.order_channel
    assert config.stages[-1].order_loss_weight > 0 and config.stages[-1].memory == "perceived"
    # the last two are route_back, longer, and the perceived stage after it again
    assert config.stages[-2] == dataclasses.replace(config.stages[-4], name="comparisons", steps=800)
    assert config.stages[-1] == dataclasses.replace(config.stages[-3], name="perceived_comparisons")
    # its oracle stages are the first of the oracle curriculum's
    oracle = load_train_config(recipe.with_name("train_tiny_oracle.yaml"))
    assert config.stages[2:5] == oracle.stages[:3]
    assert [s.name for s in oracle.stages] == ["compare1", "compare2", "directions", "directions2", "names1", "names2",
                                                   "names3"]
    assert all(s.scenes == "generated" and s.memory == "oracle" for s in oracle.stages)
    assert oracle.stages[-1].bearing_loss_weight > 0 and oracle.stages[-1].copy_loss_weight > 0
    # stage 15: the same model with memory pointers, the number head alone learning
    # on perfect scenes made as wrong as the perception
    pointers = load_train_config(recipe.with_name("train_tiny_pointers.yaml"))
    assert [(s.scenes, s.memory) for s in pointers.stages] == [("generated", "oracle")]
    assert pointers.stages[0].perception_noise.miss_probability > 0
    assert {**pointers.model, "bridge": {**pointers.model["bridge"], "number_pointers": False}} == {
        **config.model, "bridge": {**config.model["bridge"], "number_pointers": False}}
    assert all(s.train == ["number_head"] and s.pointer_loss_weight > 0 and "object_counting" not in s.question_types
               for s in pointers.stages)
    # stage 16: stage 2's losses again on the same model, Lite0 learning too
    perception = load_train_config(recipe.with_name("train_tiny_perception.yaml"))
    assert perception.model == {**pointers.model, "semantic": {**pointers.model["semantic"], "freeze_backbone": False}}
    assert [s.train for s in perception.stages] == [["semantic", "fusion", "memory", "readout", "object_readout"]]
    assert perception.stages[0].category_loss_weight > 0 and perception.stages[0].answer_loss_weight == 0
    # stage 17, the shipped weights' last run: stage 15 again on that model, its perception noise measured
    # on the new perception
    numbers = load_train_config(recipe.with_name("train_tiny_numbers.yaml"))
    assert numbers.model == perception.model       # to the letter: the stream cache's memory digest hashes it
    [stage] = numbers.stages
    assert stage == dataclasses.replace(pointers.stages[0], name=stage.name, perception_noise=stage.perception_noise)
    assert 0 < stage.perception_noise.miss_probability < pointers.stages[0].perception_noise.miss_probability


def test_named_objects_are_the_questions_objects_alone_in_their_category(data):
    from vlm2_ros.sim.episode import EpisodeDir
    from vlm2_ros.training.data import load_training_set, named_objects

    samples = load_training_set(data, 4, (48, 64), questions_per_task=2, memory_questions_per_task=1)
    assert any(named for sample in samples for named in sample.named_objects)
    for sample in samples:
        assert len(sample.named_objects) == len(sample.prompts)
        scene = EpisodeDir(sample.path).scene
        centres = {o.category: tuple(float(v) for v in o.center) for o in scene.unique_objects()}
        for prompt, named in zip(sample.prompts, sample.named_objects):
            for category, centre in named:
                assert centres[category] == centre and category in prompt
    counting = {"object_ids": [o.id for o in scene.objects if scene.count(o.category) > 1]}
    assert named_objects(scene, counting) == []


def test_grounding_stage_teaches_the_language_model_where_named_objects_are(data, tmp_path):
    from vlm2_ros.training.config import StageConfig, TrainConfig
    from vlm2_ros.training.trainer import Trainer

    stage = StageConfig("ground", steps=1, train=["bridge"], lr=3e-3, warmup_steps=0, depth_loss_weight=0.0,
                        memory="stream", grounding_loss_weight=1.0, grounding_layer=2)
    config = TrainConfig(data=str(data), out=str(tmp_path / "run"), questions_per_episode=8, episodes_per_step=2,
                         questions_per_task=2, memory_questions_per_task=2, stages=[stage])
    trainer = Trainer(config, progress=False)
    assert "grounding" in dict(trainer.probes.named_children())
    first, last = fit(trainer, stage, steps=30)
    assert first["grounding_error_m"] > 0 and last["grounding_error_m"] < 0.5 * first["grounding_error_m"]
    assert last["loss_answer"] > 0
    # a probe at a layer the language model does not have is refused at start
    with pytest.raises(TrainConfigError, match="past the language model"):
        Trainer(dataclasses.replace(config, out=str(tmp_path / "other"),
                                    stages=[dataclasses.replace(stage, grounding_layer=99)]), progress=False)


def test_gather_probe_reads_the_answer_position_for_the_objects_in_the_order_named(data, tmp_path):
    from vlm2_ros.training.trainer import GATHERED_OBJECTS, Trainer

    (tmp_path / "data").symlink_to(data)
    config = write_config(tmp_path / "train.yaml", questions_per_task=2, memory_questions_per_task=2, stages=[{
        "name": "gather", "steps": 1, "train": ["bridge"], "depth_loss_weight": 0.0, "memory": "oracle",
        "gather_loss_weight": 1.0, "episodes_per_step": 2, "questions_per_episode": 8}])
    trainer = Trainer(load_train_config(config), progress=False)
    # it learns: the answer position comes to hold where the named objects are (steps ask few
    # questions, so the error is averaged over the first and the last ten)
    errors = [m["gather_error_m"] for m in fit_history(trainer, trainer.config.stages[0], steps=60, lr=1e-3)]
    assert min(errors) > 0 and np.mean(errors[-10:]) < 0.4 * np.mean(errors[:10])
    bridge, scale = trainer.model.bridge, trainer.model.config.fusion.position_scale_m
    prompt = "On the map, which lies further north: the chair or the table?"
    chair, table = (1.0, 2.0, 0.5), (3.0, 0.5, 0.4)
    hidden = torch.zeros(1, bridge.answer_position(prompt) + 3, bridge.hidden_size)
    hidden[0, bridge.answer_position(prompt), 0] = 1.0          # only the answer position reaches the probe
    probe = trainer.probes["gather"]
    with torch.no_grad():
        probe.weight.zero_()
        probe.bias.zero_()
        probe.weight[:6, 0] = torch.tensor([*chair, *table]) / scale   # slot 0 the chair, named first
    loss, errors = trainer.gather_loss(hidden, [prompt], [[("table", table), ("chair", chair)]])
    assert float(loss) < 1e-10 and errors.shape == (2,) and float(errors.max()) < 1e-5
    loss, errors = trainer.gather_loss(hidden, [prompt.replace("chair or the table", "table or the chair")],
                                       [[("table", table), ("chair", chair)]])
    assert float(errors.min()) > 1.0                                  # slots now ask for them the other way
    hidden[0, bridge.answer_position(prompt), 0] = 0.0                # the probe reads no other position
    assert float(trainer.gather_loss(hidden, [prompt], [[("chair", chair)]])[1][0]) > 1.0
    assert probe.out_features == 3 * GATHERED_OBJECTS
    # a question naming no object alone in its category: nothing to gather, a zero loss
    loss, errors = trainer.gather_loss(hidden, ["How many chair(s) are in this room?"], [[]])
    assert float(loss) == 0.0 and len(errors) == 0


def test_choice_probe_names_the_answers_slot_among_the_objects_named(data, tmp_path):
    from vlm2_ros.model.prompt import build_prompt
    from vlm2_ros.training.trainer import GATHERED_OBJECTS, Trainer

    (tmp_path / "data").symlink_to(data)
    config = write_config(tmp_path / "train.yaml", questions_per_task=2, memory_questions_per_task=2, stages=[{
        "name": "choice", "steps": 1, "train": ["bridge"], "depth_loss_weight": 0.0, "memory": "oracle",
        "choice_loss_weight": 1.0, "episodes_per_step": 2, "questions_per_episode": 8,
        "question_types": ["memory_object_pair"]}])
    trainer = Trainer(load_train_config(config), progress=False)
    loss, metrics = trainer.step_losses(trainer.config.stages[0])    # every pair question is scored
    assert metrics["loss_choice"] > 0 and 0.0 <= metrics["choice_accuracy"] <= 1.0
    loss.backward()
    assert trainer.probes["choice"].weight.grad.abs().sum() > 0
    bridge = trainer.model.bridge
    question = "On the map, which lies further north: the chair or the table?"
    prompt = build_prompt(question, ["table", "chair"])
    named = [[("table", (3.0, 0.5, 0.4)), ("chair", (1.0, 2.0, 0.5))]]
    hidden = torch.zeros(1, bridge.answer_position(prompt) + 3, bridge.hidden_size)
    hidden[0, bridge.answer_position(prompt), 0] = 1.0          # only the answer position reaches the probe
    probe = trainer.probes["choice"]
    with torch.no_grad():
        probe.weight.zero_()
        probe.bias.zero_()
        probe.weight[1, 0] = 50.0                                  # picks slot 1: the second object named
    # the answer's letter is read through the listed options: B is the chair, named first (slot 0)
    loss, hits = trainer.choice_loss(hidden, [prompt], ["B"], named)
    assert float(loss) > 10 and hits.tolist() == [False]
    loss, hits = trainer.choice_loss(hidden, [prompt], ["A"], named)   # the table, named second
    assert float(loss) < 1e-6 and hits.tolist() == [True]
    swapped = build_prompt(question.replace("chair or the table", "table or the chair"), ["table", "chair"])
    loss, hits = trainer.choice_loss(hidden, [swapped], ["A"], named)   # named first now
    assert hits.tolist() == [False]
    hidden[0, bridge.answer_position(prompt), 0] = 0.0            # the probe reads no other position
    assert trainer.choice_loss(hidden, [prompt], ["A"], named)[1].tolist() == [False]
    assert probe.out_features == GATHERED_OBJECTS
    # an appearance order: the choice is the object its answer lists first (seen first)
    order = build_prompt("What will be the first-time appearance order of the following categories in the video: "
                         "sofa, table, lamp, chair?", ["sofa, table, lamp, chair", "table, sofa, chair, lamp"])
    hidden = torch.zeros(1, bridge.answer_position(order) + 3, bridge.hidden_size)
    hidden[0, bridge.answer_position(order), 0] = 1.0
    named = [[("chair", (1.0, 2.0, 0.5)), ("table", (3.0, 0.5, 0.4)), ("sofa", (0.5, 0.5, 0.4))]]
    assert trainer.choice_loss(hidden, [order], ["B"], named)[1].tolist() == [True]    # table: named second
    assert trainer.choice_loss(hidden, [order], ["A"], named)[1].tolist() == [False]   # sofa: named first
    # an answer that is no named object (a count, a direction): nothing to choose, a zero loss
    loss, hits = trainer.choice_loss(hidden, ["How many chair(s) are in this room?"], ["3"], [[]])
    assert float(loss) == 0.0 and len(hits) == 0


def test_direction_probe_classifies_the_compass_word_a_comparison_asks(data, tmp_path):
    from vlm2_ros.sim.questions import COMPASS
    from vlm2_ros.training.trainer import Trainer

    (tmp_path / "data").symlink_to(data)
    config = write_config(tmp_path / "train.yaml", questions_per_task=2, memory_questions_per_task=2, stages=[{
        "name": "direction", "steps": 1, "train": ["bridge"], "depth_loss_weight": 0.0, "memory": "oracle",
        "direction_loss_weight": 1.0, "episodes_per_step": 2, "questions_per_episode": 8,
        "question_types": ["memory_object_pair", "memory_object_quadrant"]}])
    trainer = Trainer(load_train_config(config), progress=False)
    # the samples carry each question's asked direction: the comparisons one, the quarter none
    for sample in trainer.data:
        for task, prompt, direction in zip(sample.tasks, sample.prompts, sample.directions):
            assert (direction is not None) == (task in ("memory_object_pair", "memory_object_extreme"))
            assert direction is None or f" {direction}" in prompt.split("\n")[0]
    loss, metrics = trainer.step_losses(trainer.config.stages[0])
    assert metrics["loss_direction"] > 0 and 0.0 <= metrics["direction_accuracy"] <= 1.0
    loss.backward()
    assert trainer.probes["direction"].weight.grad.abs().sum() > 0
    bridge = trainer.model.bridge
    prompts = ["On the map, which lies further north: the chair or the table?", "Which quarter is the sofa in?"]
    length = max(bridge.answer_position(p) for p in prompts) + 3
    hidden = torch.zeros(2, length, bridge.hidden_size)
    hidden[0, bridge.answer_position(prompts[0]), 0] = 1.0     # only the answer position reaches the probe
    probe = trainer.probes["direction"]
    with torch.no_grad():
        probe.weight.zero_()
        probe.bias.zero_()
        probe.weight[list(COMPASS).index("north"), 0] = 50.0
    loss, hits = trainer.direction_loss(hidden, prompts, ["north", None])   # the quarter asks none: skipped
    assert float(loss) < 1e-6 and hits.tolist() == [True]
    assert trainer.direction_loss(hidden, prompts, ["south", None])[1].tolist() == [False]
    hidden[0, bridge.answer_position(prompts[0]), 0] = 0.0
    assert trainer.direction_loss(hidden, prompts, ["north", None])[1].tolist() == [False]
    loss, hits = trainer.direction_loss(hidden, prompts, [None, None])
    assert float(loss) == 0.0 and len(hits) == 0 and probe.out_features == len(COMPASS)


def test_bearing_probe_gives_the_angles_a_direction_or_route_turns_on(data, tmp_path):
    from vlm2_ros.sim.questions import relation_angles
    from vlm2_ros.training.trainer import BEARINGS, Trainer

    (tmp_path / "data").symlink_to(data)
    config = write_config(tmp_path / "train.yaml", questions_per_task=2, stages=[{
        "name": "bearing", "steps": 1, "train": ["bridge"], "depth_loss_weight": 0.0, "memory": "oracle",
        "bearing_loss_weight": 1.0, "episodes_per_step": 2, "questions_per_episode": 8,
        "question_types": ["object_rel_direction_hard", "route_planning", "object_counting"]}])
    trainer = Trainer(load_train_config(config), progress=False)
    loss, metrics = trainer.step_losses(trainer.config.stages[0])
    assert metrics["loss_bearing"] > 0 and 0.0 <= metrics["bearing_error_deg"] <= 180.0
    loss.backward()
    assert trainer.probes["bearing"].weight.grad.abs().sum() > 0
    bridge = trainer.model.bridge
    prompts = ["If I am standing by the sofa and facing the table, is the chair to my left or right?",
               "How many chair(s) are in this room?"]
    sofa, table, chair = (0.0, 0.0, 0.4), (0.0, 2.0, 0.4), (-1.0, 1.0, 0.5)      # the chair 45 degrees left
    named = [[("sofa", sofa), ("table", table), ("chair", chair)], []]
    tasks = ["object_rel_direction_easy", "object_counting"]
    length = max(bridge.answer_position(p) for p in prompts) + 3
    hidden = torch.zeros(2, length, bridge.hidden_size)
    hidden[0, bridge.answer_position(prompts[0]), 0] = 1.0     # only the answer position reaches the probe
    probe = trainer.probes["bearing"]
    angle = math.radians(relation_angles(tasks[0], [sofa, table, chair])[0])
    with torch.no_grad():
        probe.weight.zero_()
        probe.bias.zero_()
        probe.weight[:2, 0] = torch.tensor([math.cos(angle), math.sin(angle)])   # slot 0: the one angle asked
    loss, errors = trainer.bearing_loss(hidden, prompts, tasks, named)       # counting turns on none: skipped
    assert float(loss) < 1e-10 and errors.shape == (1,) and float(errors[0]) < 1e-3
    mirrored = [[("sofa", sofa), ("table", table), ("chair", (1.0, 1.0, 0.5))], []]    # now 45 degrees right
    assert float(trainer.bearing_loss(hidden, prompts, tasks, mirrored)[1][0]) == pytest.approx(90.0, abs=1e-3)
    hidden[0, bridge.answer_position(prompts[0]), 0] = 0.0     # the probe reads no other position
    assert float(trainer.bearing_loss(hidden, prompts, tasks, named)[0]) == pytest.approx(1.0)
    loss, errors = trainer.bearing_loss(hidden, prompts[1:], tasks[1:], named[1:])
    assert float(loss) == 0.0 and len(errors) == 0 and probe.out_features == 2 * BEARINGS


def test_copy_loss_trains_the_copy_heads_attention_onto_the_answers_name(data, tmp_path):
    from vlm2_ros.model.prompt import build_prompt
    from vlm2_ros.training.trainer import Trainer

    (tmp_path / "data").symlink_to(data)
    config = write_config(tmp_path / "train.yaml", questions_per_task=2, memory_questions_per_task=2,
                          model={"bridge": {"choice_answer": "option_text"}}, stages=[{
        "name": "copy", "steps": 1, "train": ["bridge"], "depth_loss_weight": 0.0, "memory": "oracle",
        "copy_loss_weight": 1.0, "copy_layer": -2, "episodes_per_step": 2, "questions_per_episode": 8,
        "question_types": ["memory_object_pair", "object_counting"]}])
    trainer = Trainer(load_train_config(config), progress=False)
    bridge = trainer.model.bridge
    assert bridge.decoder.config._attn_implementation == "eager"     # the fused kernels return no weights
    loss, metrics = trainer.step_losses(trainer.config.stages[0])
    assert metrics["loss_copy"] > 0 and 0.0 < metrics["copy_attention"] < 1.0
    loss.backward()
    assert bridge.decoder.layers[-2].self_attn.q_proj.weight.grad.abs().sum() > 0    # the copy layer's query learns

    question = "On the map, which lies further north: the chair or the table?"
    prompt = build_prompt(question, ["table", "chair"])
    ids = bridge.question_ids(prompt)
    chair = bridge.answer_ids("chair")[0]
    sources = [j for j, t in enumerate(ids) if t == chair]
    assert len(sources) == 2                                       # named in the question and listed as B
    row_start, keys = 7, 7 + len(ids) + 2
    attention = torch.full((1, 2, len(ids) + 2, keys), 1e-3)
    query = len(ids) - 1                                           # the position that predicts the answer's first token
    attention[0, 0, query, row_start + sources[0]] = 0.25
    attention[0, 0, query, row_start + sources[1]] = 0.25
    attention[0, 1, query] = 0.0                                   # only head 0 is the copy head
    loss, mass = trainer.copy_loss(attention, row_start, [prompt], ["B"])   # B: the chair
    assert mass.shape == (1,) and float(mass[0]) == pytest.approx(0.5)
    assert float(loss) == pytest.approx(-math.log(0.5))
    loss, mass = trainer.copy_loss(attention, row_start, [prompt], ["A"])   # A: the table, not attended
    assert float(mass[0]) == pytest.approx(1e-3 * ids.count(bridge.answer_ids("table")[0]))
    # an answer that names no object (a count): nothing to copy, a zero loss
    loss, mass = trainer.copy_loss(attention, row_start, ["How many chair(s) are in this room?"], ["3"])
    assert float(loss) == 0.0 and len(mass) == 0
    # an appearance order copies every category it lists, one per answer word, whether or not the
    # room holds one object of it; the words of "trash can" are two copies
    order = ["chair, trash can, sofa, lamp", "lamp, sofa, trash can, chair", "sofa, chair, lamp, trash can",
             "trash can, lamp, chair, sofa"]
    prompt = build_prompt("What will be the first-time appearance order of the following categories in the "
                          "video: sofa, chair, lamp, trash can?", order)
    ids = bridge.question_ids(prompt)
    answer = bridge.target_ids(prompt, "A")
    attention = torch.full((1, 1, len(ids) + len(answer), len(ids) + len(answer)), 0.0)
    loss, mass = trainer.copy_loss(attention, 0, [prompt], ["A"])
    assert len(mass) == 5 and float(loss) == pytest.approx(-math.log(1e-6))
    chair = bridge.answer_ids("chair")[0]
    attention[0, 0, len(ids) - 1, [j for j, t in enumerate(ids) if t == chair]] = 0.2   # predicts "chair"
    loss, mass = trainer.copy_loss(attention, 0, [prompt], ["A"])
    assert float(mass[0]) == pytest.approx(0.2 * ids.count(chair)) and float(mass[1:].sum()) == 0.0


def test_answer_pass_returns_a_layers_attention_over_the_whole_prompt():
    from vlm2_ros.model.language_bridge import LanguageBridge, LanguageBridgeConfig

    bridge = LanguageBridge(LanguageBridgeConfig(memory_dim=8, tiny_lm={"hidden_size": 32, "intermediate_size": 64,
                                                                        "num_hidden_layers": 2}))
    memory = torch.randn(1, 6, 8)
    questions, answers = [["How many chair(s) are in this room?", "Is it?"]], [["3", "no"]]
    with pytest.raises(ValueError, match="eager"):
        bridge.answer_pass(memory, questions, answers, attention_layer=0)
    plain = bridge.answer_pass(memory, questions, answers)
    bridge.decoder.set_attn_implementation("eager")
    result = bridge.answer_pass(memory, questions, answers, attention_layer=-1)
    assert torch.allclose(result.loss, plain.loss, atol=1e-5)            # the same model, only its weights returned
    rows = result.attention.shape[2]
    assert result.attention.shape[:2] == (2, bridge.decoder.config.num_attention_heads)
    assert result.attention.shape[3] == result.row_start + rows and result.row_start > 6   # prefix + memory first
    assert torch.allclose(result.attention.sum(dim=-1)[1, :, :len(bridge.question_ids("Is it?"))],
                          torch.ones(1))                                 # each real position's weights sum to 1
    with pytest.raises(ValueError, match="attention_layer"):
        bridge.answer_pass(memory, questions, answers, attention_layer=2)


def test_memory_reliance_reports_the_grounding_error_and_the_choice_probe_with_each_memory(data, tmp_path):
    from vlm2_ros.training.config import load_train_config
    from vlm2_ros.training.trainer import Trainer

    (tmp_path / "data").symlink_to(data)
    config = write_config(tmp_path / "train.yaml", questions_per_task=2, memory_questions_per_task=1,
                          stages=[{"name": "a", "steps": 2, "train": ["bridge"], "depth_loss_weight": 0.0,
                                   "memory": "stream", "grounding_loss_weight": 1.0, "grounding_layer": 1,
                                   "choice_loss_weight": 1.0}])
    assert main(["train", "--config", str(config)]) == 0
    rows = Trainer(load_train_config(config), resume=True, progress=False).memory_reliance(samples=2)
    named = [t for t, r in rows.items() if "own_grounding_m" in r]
    assert "all" in named and "memory_object_quadrant" in named and "room_size_estimation" not in named
    assert all(r["own_grounding_m"] > 0 and r["other_grounding_m"] > 0 for t, r in rows.items() if t in named)
    # the choice probe: scored where the answer is a named object (pair, furthest), never on a count
    chosen = {t for t, r in rows.items() if "own_choice_probe" in r}
    assert chosen and chosen <= {"memory_object_pair", "memory_object_extreme", "object_rel_distance",
                                 "obj_appearance_order"}
    assert all(0 <= rows[t][k] <= 1 for t in chosen for k in ("own_choice_probe", "other_choice_probe"))


def test_oracle_memory_is_the_room_then_each_object_seen_by_the_question_in_order(data):
    from vlm2_ros.sim.episode import EpisodeDir
    from vlm2_ros.sim.scene import SEMANTIC_CLASSES
    from vlm2_ros.training.data import oracle_memory

    episode = EpisodeDir(sorted(p for p in data.iterdir() if p.is_dir())[0])
    visibility, scene = episode.visibility(), episode.scene
    asked_at = sorted(v[0] for v in visibility.values())[1]       # after the first two objects seen
    memory = oracle_memory(scene, visibility, asked_at, tokens=12, dim=32, scale_m=4.0)
    classes = len(SEMANTIC_CLASSES)
    assert memory.shape == (1, 12, 32)
    room = scene.room
    assert memory[0, 0, :classes].tolist() == [1.0] + [0.0] * (classes - 1)
    assert torch.allclose(memory[0, 0, classes:classes + 6], torch.tensor(
        [room.width / 2, room.depth / 2, room.height / 2, room.width, room.depth, room.height]) / 4.0)
    seen = sorted((v[0], i) for i, v in visibility.items() if v[0] <= asked_at)
    by_id = {o.id: o for o in scene.objects}
    for slot, (_, object_id) in enumerate(seen, start=1):
        o = by_id[object_id]
        assert int(memory[0, slot, :classes].argmax()) == SEMANTIC_CLASSES.index(o.category)
        assert torch.allclose(memory[0, slot, classes:classes + 6], torch.tensor([*o.center, *o.size]) / 4.0)
    assert 2 <= len(seen) < len(visibility)
    assert not memory[0, 1 + len(seen):].any() and not memory[..., classes + 6:].any()
    ordered = oracle_memory(scene, visibility, asked_at, tokens=12, dim=32, scale_m=4.0, order_channel=True)
    times = sorted({t for t, _ in seen})
    assert ordered[0, 1:1 + len(seen), classes + 6].tolist() == pytest.approx(
        [times.index(t) / max(1, len(times) - 1) for t, _ in seen])
    assert torch.equal(ordered[..., :classes + 6], memory[..., :classes + 6])
    with pytest.raises(ValueError, match="channels"):
        oracle_memory(scene, visibility, asked_at, tokens=12, dim=classes + 5, scale_m=4.0)
    with pytest.raises(ValueError, match="more than"):
        oracle_memory(scene, visibility, asked_at, tokens=len(seen), dim=32, scale_m=4.0)


def test_oracle_stage_trains_the_language_model_on_the_scene_and_reliance_reads_it(data, tmp_path):
    from vlm2_ros.training.config import load_train_config
    from vlm2_ros.training.trainer import Trainer

    (tmp_path / "data").symlink_to(data)
    config = write_config(tmp_path / "train.yaml", questions_per_episode=4, questions_per_task=2,
                          stages=[{"name": "a", "steps": 1, "train": ["bridge"], "depth_loss_weight": 0.0,
                                   "memory": "oracle", "lr": 3e-3, "warmup_steps": 0}])
    trainer = Trainer(load_train_config(config), progress=False)
    memories = trainer.memories("oracle")
    assert len(memories) == len(trainer.data) and memories[0].shape == (1, 160, 256)
    assert not (tmp_path / "run" / "streamed_memories.safetensors").exists()     # nothing streamed
    first, last = fit(trainer, trainer.config.stages[0], steps=10)
    assert last["loss_answer"] < 0.5 * first["loss_answer"]
    assert main(["train", "--config", str(config)]) == 0
    assert main(["train", "--config", str(config), "--memory-reliance", "2"]) == 0
    rows = json.loads((tmp_path / "run" / "memory_reliance.json").read_text())
    assert rows["all"]["own"] != rows["all"]["other"]
    assert not (tmp_path / "run" / "streamed_memories.safetensors").exists()     # read the oracle memories


def test_perceived_stage_reads_the_object_readouts_objects_out_of_streamed_memories(data, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    import vlm2_ros.training.trainer as trainer_module
    from vlm2_ros.model.checkpoint import load_model, save_checkpoint
    from vlm2_ros.model.object_memory import object_tokens, perceive_objects
    from vlm2_ros.sim.scene import SEMANTIC_CLASSES
    from vlm2_ros.training.trainer import Trainer

    (tmp_path / "data").symlink_to(data)
    perception, _ = load_model("tiny", use_shipped=False, seed=3)
    save_checkpoint(perception, tmp_path / "perception" / "checkpoint")
    dim, classes = perception.config.fusion.dim, len(SEMANTIC_CLASSES)
    generator = torch.Generator().manual_seed(0)
    save_file({"probes.category.weight": torch.randn(classes, dim, generator=generator),
               "probes.category.bias": torch.zeros(classes),
               "probes.point.weight": 0.1 * torch.randn(3, dim, generator=generator),
               "probes.point.bias": torch.ones(3)},
              str(tmp_path / "perception" / "train_state.safetensors"))
    stage = {"name": "read", "steps": 1, "train": ["bridge"], "depth_loss_weight": 0.0, "memory": "perceived",
             "warmup_steps": 0}
    settings = dict(questions_per_episode=4, questions_per_task=2, stages=[stage],
                    init_modules={module: "perception/checkpoint" for module in
                                  ("geometry", "semantic", "fusion", "memory", "readout")})
    # the language model learns to read what the model's object readout gives it at a question
    with pytest.raises(TrainConfigError, match="object_readout"):
        Trainer(load_train_config(write_config(tmp_path / "off.yaml", **settings)), progress=False)
    settings["model"] = {"object_readout": {"enabled": True, "min_share": 0.2}}
    bare = write_config(tmp_path / "bare.yaml", **settings)
    untaken = Trainer(load_train_config(bare), progress=False)
    with pytest.raises(TrainConfigError, match="has not trained"):
        untaken.memories("perceived")
    with pytest.raises(SystemExit, match="has not trained"):     # measured before any training: init_modules
        main(["train", "--config", str(bare), "--memory-reliance", "1"])
    config = write_config(tmp_path / "train.yaml", init_probes={"category": "perception"}, **settings)
    trainer = Trainer(load_train_config(config), progress=False)
    trainer.data = trainer.data[:1]
    sample = trainer.data[0]
    # the room and objects in every token the engine's memory holds at the question: what the
    # category probe reads in it, placed at the point it carries
    memory = ingested_frame_by_frame(trainer.model, sample).stream.memory
    with torch.no_grad():
        tokens = torch.cat([memory.episodic.tokens, memory.working.tokens], dim=1)[0].flatten(0, 1)
        shares = trainer.probes["category"](tokens).softmax(-1)
    points = torch.cat([memory.episodic.provenance.patch_points, memory.working.provenance.patch_points],
                       dim=1)[0].flatten(0, 1)
    # each token's first sighting: its place's earliest in the memory (Provenance.first_seen)
    frames = torch.cat([memory.episodic.provenance.first_seen, memory.working.provenance.first_seen], dim=1)[0]
    frames = frames.flatten()
    boxes = perceive_objects(shares, points, frames, 0.2)
    assert len(boxes) > 1
    expected = object_tokens(boxes, classes, 160, trainer.model.config.bridge.memory_dim,
                             trainer.model.config.fusion.position_scale_m)
    assert torch.allclose(trainer.memories("perceived")[0], expected, atol=1e-5)
    # weights whose object readout carries the head read with it, no run directory needed
    save_checkpoint(trainer.model, tmp_path / "readout" / "checkpoint")
    chained = {k: v for k, v in settings.items() if k not in ("init_modules", "model")}
    taken = Trainer(load_train_config(write_config(tmp_path / "chained.yaml", init_checkpoint="readout/checkpoint",
                                                   **chained)), progress=False)
    taken.data = taken.data[:1]
    assert "category" in taken.trained_probes()
    assert torch.allclose(taken.memories("perceived")[0], expected, atol=1e-5)
    # the category probe is the object readout's head: the model reads the same at a question
    assert trainer.probes["category"] is trainer.model.object_readout.category
    with torch.no_grad():
        read = trainer.model.read_memory(ingested_frame_by_frame(trainer.model, sample).stream)
    assert torch.allclose(read.tokens, expected, atol=1e-5)
    # the readings are kept in the run directory: a run with the same weights and probes streams nothing
    assert (tmp_path / "run" / "streamed_readings.safetensors").is_file()
    monkeypatch.setattr(trainer_module, "stream_episode", lambda *a: pytest.fail("streamed again"))
    again = Trainer(load_train_config(config), progress=False)
    again.data = again.data[:1]
    assert torch.allclose(again.memories("perceived")[0], expected, atol=1e-5)
    first, _ = fit(again, again.config.stages[0], steps=1)
    assert first["loss_answer"] > 0
    # --perception-noise: those boxes against the truth at the question, as a generated stage's noise
    from vlm2_ros.sim.episode import EpisodeDir
    from vlm2_ros.training.data import oracle_boxes
    from vlm2_ros.training.perception_noise import PerceptionNoise, measure_perception_noise
    episode = EpisodeDir(sample.path)
    noise = again.perception_noise()
    assert noise["samples"] == 1 and noise["readout"]["min_share"] == 0.2
    truth = oracle_boxes(episode.scene, episode.visibility(), sample.asked_at)
    assert {k: v for k, v in noise.items() if k not in ("samples", "readout")} == measure_perception_noise(
        [(boxes, truth, sample.asked_at)])
    PerceptionNoise(**{k: v for k, v in noise.items() if k not in ("samples", "readout", "objects")})
    # --fit-readout: each class's readout settings against the same truth; a run from the weights takes them
    measured = again.fit_readout()
    assert measured["samples"] == 1 and set(measured["classes"]) == set(SEMANTIC_CLASSES[1:])
    monkeypatch.undo()                                           # the command streams every sample
    assert main(["train", "--config", str(config), "--fit-readout"]) == 0
    assert set(json.loads((tmp_path / "run" / "readout_fit.json").read_text())["classes"]) == set(SEMANTIC_CLASSES[1:])
    refit = Trainer(load_train_config(write_config(tmp_path / "refit.yaml", init_checkpoint="readout/checkpoint",
                                                   model={"object_readout": measured["object_readout"]}, **chained)),
                    progress=False)
    refit.data = refit.data[:1]
    fitted = refit.model.config.object_readout
    assert fitted.class_min_share == measured["object_readout"]["class_min_share"]
    expected = object_tokens(perceive_objects(shares, points, frames, fitted.per_class("min_share"),
                                              fitted.per_class("merge_radius_m")), classes, 160,
                             trainer.model.config.bridge.memory_dim, trainer.model.config.fusion.position_scale_m)
    assert torch.allclose(refit.memories("perceived")[0], expected, atol=1e-5)
    # the object readout's grouping groups the same readings otherwise (nothing streamed again)
    settings["model"] = {"object_readout": {"enabled": True, "min_share": 0.2, "grouping": "peaks"}}
    peaks = write_config(tmp_path / "peaks.yaml", init_probes={"category": "perception"}, **settings)
    by_peaks = Trainer(load_train_config(peaks), progress=False)
    by_peaks.data = by_peaks.data[:1]
    expected = object_tokens(perceive_objects(shares, points, frames, 0.2, grouping="peaks"), classes, 160,
                             trainer.model.config.bridge.memory_dim, trainer.model.config.fusion.position_scale_m)
    assert torch.allclose(by_peaks.memories("perceived")[0], expected, atol=1e-5)


def test_option_text_run_teaches_and_scores_the_options_text(data, tmp_path):
    from vlm2_ros.model.checkpoint import load_checkpoint
    from vlm2_ros.training.config import load_train_config
    from vlm2_ros.training.trainer import Trainer

    (tmp_path / "data").symlink_to(data)
    config = write_config(tmp_path / "train.yaml", questions_per_episode=4, questions_per_task=2,
                          model={"bridge": {"choice_answer": "option_text"}},
                          stages=[{"name": "a", "steps": 1, "train": ["bridge"], "depth_loss_weight": 0.0,
                                   "memory": "oracle", "warmup_steps": 0}])
    assert main(["train", "--config", str(config)]) == 0
    model, _ = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert model.bridge.config.choice_answer == "option_text"
    trainer = Trainer(load_train_config(config), resume=True, progress=False)
    scored = []
    score_options = trainer.model.bridge.score_options
    trainer.model.bridge.score_options = lambda memory, prompt, options, **kw: scored.append(
        (question_option_texts(prompt), options)) or score_options(memory, prompt, options, **kw)
    rows = trainer.memory_reliance(samples=2)
    choices = {t for s in trainer.data for t, a in zip(s.tasks, s.answers) if a in ("A", "B", "C", "D")}
    assert choices and {t for t, r in rows.items() if "own_accuracy" in r} == choices
    # each multiple-choice question is answered as the engine does, by its listed options' texts,
    # once with its own memory and once with another scene's
    assert len(scored) == 2 * sum(r["questions"] for t, r in rows.items() if t in choices)
    assert all(list(texts.values()) == options for texts, options in scored)


def test_question_types_stage_asks_only_those_questions(data, tmp_path):
    from vlm2_ros.training.config import load_train_config
    from vlm2_ros.training.trainer import Trainer

    (tmp_path / "data").symlink_to(data)
    config = write_config(tmp_path / "train.yaml", questions_per_episode=6, questions_per_task=2,
                          memory_questions_per_task=2,
                          stages=[{"name": "lookup", "steps": 1, "train": ["bridge"], "depth_loss_weight": 0.0,
                                   "memory": "oracle", "question_types": list(MEMORY_TASKS)}])
    trainer = Trainer(load_train_config(config), progress=False)
    asked = []
    answer_pass = trainer.model.bridge.answer_pass
    trainer.model.bridge.answer_pass = lambda memory, prompts, answers, *layers: asked.append(prompts) or \
        answer_pass(memory, prompts, answers, *layers)
    trainer.step_losses(trainer.config.stages[0])
    memory_prompts = {p for s in trainer.data for p, t in zip(s.prompts, s.tasks) if t in MEMORY_TASKS}
    flat = [p for prompts in asked[0] for p in prompts]
    assert flat and set(flat) <= memory_prompts
    # a data set without such questions is refused when the stage starts, by name
    without = write_config(tmp_path / "without.yaml", questions_per_task=2,
                           stages=[{"name": "lookup", "steps": 1, "train": ["bridge"], "depth_loss_weight": 0.0,
                                    "memory": "oracle", "question_types": list(MEMORY_TASKS)}])
    trainer = Trainer(load_train_config(without), progress=False)
    with pytest.raises(TrainConfigError, match="memory_questions_per_task"):
        trainer.step_losses(trainer.config.stages[0])


def test_generated_scenes_are_new_reproducible_and_fully_seen():
    from vlm2_ros.sim.cli import episode_seed
    from vlm2_ros.training.data import GENERATED_SCENE_SEEDS, generated_oracle_sample, generated_scene_seed

    seeds = {generated_scene_seed(0, step, index) for step in range(50) for index in range(8)}
    assert len(seeds) == 400 and min(seeds) >= GENERATED_SCENE_SEEDS
    assert generated_scene_seed(0, 3, 1) == generated_scene_seed(0, 3, 1) != generated_scene_seed(1, 3, 1)
    # no data set's episode is a generated scene, whatever its seed
    assert max(episode_seed(seed, index) for seed in range(20) for index in range(200)) < GENERATED_SCENE_SEEDS

    types = ["memory_object_quadrant", "object_rel_distance"]
    sample = generated_oracle_sample(generated_scene_seed(0, 0, 0), 2, 2, types, tokens=160, dim=256, scale_m=5.0)
    again = generated_oracle_sample(sample.scene_seed, 2, 2, types, tokens=160, dim=256, scale_m=5.0)
    assert sample.prompts and set(sample.tasks) <= set(types)
    assert sample.prompts == again.prompts and torch.equal(sample.memory, again.memory)
    from vlm2_ros.sim.scene import generate_scene
    objects = len(generate_scene(sample.scene_seed).objects)
    assert int(sample.memory[0].any(dim=-1).sum()) == 1 + objects          # the room, then every object
    everything = generated_oracle_sample(sample.scene_seed, 1, 1, [], tokens=160, dim=256, scale_m=5.0)
    assert {"object_counting", "route_planning", *MEMORY_TASKS} <= set(everything.tasks)
    empty_room = 2054715861                       # generate_scene gives this seed no objects
    assert not generate_scene(empty_room).objects
    assert not generated_oracle_sample(empty_room, 1, 1, list(MEMORY_TASKS), tokens=160, dim=256, scale_m=5.0).prompts
    assert generated_oracle_sample(empty_room, 1, 1, [], tokens=160, dim=256, scale_m=5.0).tasks == [
        "room_size_estimation"]


def test_generated_stage_trains_on_new_scenes_each_step(data, tmp_path):
    from vlm2_ros.training.config import load_train_config
    from vlm2_ros.training.data import generated_scene_seed
    from vlm2_ros.training.trainer import Trainer

    (tmp_path / "data").symlink_to(data)
    config = write_config(tmp_path / "train.yaml", questions_per_task=1, memory_questions_per_task=2,
                          stages=[{"name": "generated", "steps": 3, "train": ["bridge"], "depth_loss_weight": 0.0,
                                   "memory": "oracle", "scenes": "generated", "episodes_per_step": 2,
                                   "questions_per_episode": 3, "question_types": list(MEMORY_TASKS),
                                   "grounding_loss_weight": 1.0}])
    trainer = Trainer(load_train_config(config), progress=False)
    asked = []
    answer_pass = trainer.model.bridge.answer_pass
    trainer.model.bridge.answer_pass = lambda memory, prompts, answers, *layers: asked.append(
        (memory, prompts)) or answer_pass(memory, prompts, answers, *layers)
    trainer.run()
    assert len(asked) == 3 and all(memory.shape == (2, 160, 256) for memory, _ in asked)
    data_prompts = {p for s in trainer.data for p in s.prompts}
    memory_prompts = [p for _, prompts in asked for ps in prompts for p in ps]
    assert memory_prompts and not set(memory_prompts) & data_prompts
    assert all("north" in p or "south" in p or "east" in p or "west" in p for p in memory_prompts)
    # every step new scenes, and the same ones again for the same step (a resumed run)
    memories = [memory for memory, _ in asked]
    assert not torch.equal(memories[0], memories[1])
    again = trainer.generated_samples(trainer.config.stages[0], 2)
    assert again[0].scene_seed == generated_scene_seed(0, trainer.global_step, 0)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all(row["loss_answer"] > 0 and row["grounding_error_m"] > 0 for row in log)
    # the answer loss by question type, of the questions the step asked
    word = {"memory_object_quadrant": " quarter ", "memory_object_extreme": " furthest ", "memory_object_pair": " further "}
    asked_types = [{t for t in MEMORY_TASKS if any(word[t] in p for ps in prompts for p in ps)} for _, prompts in asked]
    assert [set(row["loss_answer_by_type"]) for row in log] == asked_types
    assert all(v > 0 for row in log for v in row["loss_answer_by_type"].values())


def test_generated_share_mixes_new_scenes_into_each_step_of_perceived_memories(data, tmp_path):
    from vlm2_ros.training.config import load_train_config
    from vlm2_ros.training.trainer import Trainer

    (tmp_path / "data").symlink_to(data)
    config = write_config(tmp_path / "train.yaml", questions_per_task=1,
                          model={"object_readout": {"enabled": True}},
                          stages=[{"name": "mixed", "steps": 2, "train": ["bridge"], "depth_loss_weight": 0.0,
                                   "memory": "perceived", "generated_share": 0.5, "episodes_per_step": 2,
                                   "questions_per_episode": 2, "perception_noise": {"miss_probability": 0.5}}])
    trainer = Trainer(load_train_config(config), progress=False)
    # the data set's perceived memories as the stage reads them (their reading is tested above)
    generator = torch.Generator().manual_seed(0)
    streamed = trainer._perceived = [torch.randn(1, trainer.model.readout_tokens, trainer.model.config.bridge.memory_dim,
                                                 generator=generator) for _ in trainer.data]
    asked = []
    answer_pass = trainer.model.bridge.answer_pass
    trainer.model.bridge.answer_pass = lambda memory, prompts, answers, *layers: asked.append(
        (memory, prompts)) or answer_pass(memory, prompts, answers, *layers)
    trainer.run()
    data_prompts = {p for s in trainer.data for p in s.prompts}
    assert len(asked) == 2
    for memory, prompts in asked:
        # one of the data set's streamed memories with its questions, then one generated scene's
        assert memory.shape[0] == 2 and any(torch.equal(memory[:1], m) for m in streamed)
        assert set(prompts[0]) <= data_prompts and not set(prompts[1]) & data_prompts
        assert not any(torch.equal(memory[1:], m) for m in streamed)


def test_a_model_with_the_order_channel_gets_it_in_every_oracle_memory(data, tmp_path):
    from vlm2_ros.sim.scene import SEMANTIC_CLASSES
    from vlm2_ros.training.config import load_train_config
    from vlm2_ros.training.trainer import Trainer

    (tmp_path / "data").symlink_to(data)
    stage = {"name": "order", "steps": 1, "train": ["bridge"], "depth_loss_weight": 0.0, "memory": "oracle",
             "question_types": ["obj_appearance_order"]}
    config = write_config(tmp_path / "train.yaml", questions_per_task=1, model={"object_readout": {
        "enabled": True, "order_channel": True}}, stages=[stage, {**stage, "name": "generated", "scenes": "generated"}])
    trainer = Trainer(load_train_config(config), progress=False)
    order = len(SEMANTIC_CLASSES) + 6
    generated = trainer.generated_samples(trainer.config.stages[1], 1)[0].memory
    for memory in (generated, trainer.oracle_memories()[0]):
        ranks = memory[0, :, order]
        # the room 0, the first object 0, the last seen 1, and nothing past the channel
        assert ranks[0] == 0 and ranks.max() == 1 and not memory[..., order + 1:].any()


def test_first_sighting_ranks_sort_an_appearance_orders_categories_as_its_answer():
    from vlm2_ros.training.data import generated_oracle_sample, generated_scene_seed

    checked = 0
    for index in range(4):
        sample = generated_oracle_sample(generated_scene_seed(3, 0, index), 2, 0, ["obj_appearance_order"],
                                         tokens=160, dim=256, scale_m=5.0)
        ranks = sample.category_ranks
        # the earliest category 0; the last object seen may be of a category seen before
        assert min(ranks.values()) == 0.0 and max(ranks.values()) <= 1.0
        for prompt, answer in zip(sample.prompts, sample.answers):
            order = question_option_texts(prompt)[answer].split(", ")
            assert sorted(order, key=ranks.__getitem__) == order
            checked += 1
    assert checked >= 4


def test_order_probe_gives_each_named_categorys_first_sighting_rank_at_its_names(data, tmp_path):
    from vlm2_ros.training.trainer import Trainer

    (tmp_path / "data").symlink_to(data)
    config = write_config(tmp_path / "train.yaml", questions_per_task=2, stages=[{
        "name": "order", "steps": 1, "train": ["bridge"], "depth_loss_weight": 0.0, "memory": "oracle",
        "order_loss_weight": 1.0, "episodes_per_step": 2, "questions_per_episode": 8}])
    trainer = Trainer(load_train_config(config), progress=False)
    assert all(s.category_ranks for s in trainer.data)
    loss, metrics = trainer.step_losses(trainer.config.stages[0])
    assert metrics["loss_order"] > 0 and metrics["order_error"] > 0
    loss.backward()
    assert trainer.probes["order"].weight.grad.abs().sum() > 0
    bridge = trainer.model.bridge
    prompts = ["Order these categories by when they are first seen in the video: chair, box, table, lamp.",
               "How many plant(s) are in this room?"]
    ranks = [{"chair": 0.5, "box": 0.0, "table": 1.0, "lamp": 0.25, "sofa": 0.75}, {"sofa": 0.0}]
    length = max(bridge.answer_position(p) for p in prompts) + 3
    hidden = torch.zeros(2, length, bridge.hidden_size)
    for category, rank in ranks[0].items():         # each name's last token holds its rank
        for column in bridge.phrase_positions(prompts[0], category):
            hidden[0, column, 0] = rank
    probe = trainer.probes["order"]
    with torch.no_grad():
        probe.weight.zero_()
        probe.bias.zero_()
        probe.weight[0, 0] = 1.0
        # four names in the first question (the sofa is not named), none in the second (no plant seen)
        loss, errors = trainer.order_loss(hidden, prompts, ranks)
        assert float(loss) < 1e-12 and errors.shape == (4,)
        loss, errors = trainer.order_loss(hidden, prompts[1:], ranks[1:])
        assert float(loss) == 0.0 and len(errors) == 0


def test_number_stage_teaches_the_bridges_number_head_which_a_bridge_without_one_gains_fresh(data, tmp_path):
    from vlm2_ros.model.checkpoint import load_model, save_checkpoint
    from vlm2_ros.model.language_bridge import AnswerPass
    from vlm2_ros.training.trainer import Trainer

    (tmp_path / "data").symlink_to(data)
    stage = {"name": "numbers", "steps": 1, "train": ["bridge"], "depth_loss_weight": 0.0, "memory": "oracle",
             "scenes": "generated", "episodes_per_step": 2, "questions_per_episode": 4, "balance_tasks": True,
             "question_types": ["object_counting", "object_abs_distance", "object_size_estimation",
                                "room_size_estimation"], "number_loss_weight": 1.0}
    with pytest.raises(TrainConfigError, match="number_head: true"):
        Trainer(load_train_config(write_config(tmp_path / "plain.yaml", questions_per_task=2, stages=[stage])),
                progress=False)
    source, _ = load_model("tiny", use_shipped=False, seed=4)
    save_checkpoint(source, tmp_path / "answering")
    config = load_train_config(write_config(tmp_path / "train.yaml", questions_per_task=2, stages=[stage],
                                            model={"bridge": {"number_head": True}},
                                            init_modules={"bridge": "answering"}))
    trainer = Trainer(config, progress=False)
    bridge = trainer.model.bridge
    assert bridge.number_head is not None
    assert torch.equal(bridge.projector.fc1.weight, source.bridge.projector.fc1.weight)
    # it learns: the answers' likelihood under the head rises (negative log-likelihood, averaged
    # over the first and the last ten steps of new scenes)
    history = fit_history(trainer, trainer.config.stages[0], steps=40, lr=1e-3)
    losses = [m["loss_number"] for m in history]
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.5 and all(0 <= m["number_accuracy"] <= 1 for m in history)
    # only the measures' answers (a count the language model writes), read at the answer position
    # of the final layer
    final = torch.zeros(3, 30, bridge.hidden_size)
    result = AnswerPass(torch.zeros(()), torch.zeros(3), None, final=final)
    number = trainer.number_head_pass(result, torch.zeros(3, 8, bridge.config.memory_dim),
                                      ["What is the distance in meters between the sofa and the bed?",
                                       "How many chair(s) are in this room?",
                                       "Which is nearer?\nA. sofa\nB. lamp"], ["1.5", "3", "A"])
    loss, measured = trainer.number_loss(result, number)
    assert number.rows == [0] and measured.shape == (1,) and torch.isfinite(loss)
    # --memory-reliance scores the head's median on the measure questions, with each memory
    rows = trainer.memory_reliance(samples=2)
    scored = {t for t, r in rows.items() if "own_number_score" in r}
    assert scored and scored <= {"object_abs_distance", "object_size_estimation", "room_size_estimation"}
    assert all(0 <= r[k] <= 1 for r in rows.values() for k in ("own_number_score", "other_number_score") if k in r)


def test_pointer_stage_trains_the_number_head_alone_and_its_pointers_find_the_named_objects(data, tmp_path):
    from vlm2_ros.model.checkpoint import load_model, save_checkpoint
    from vlm2_ros.training.trainer import Trainer

    (tmp_path / "data").symlink_to(data)
    measure_types = ["object_abs_distance", "object_size_estimation", "room_size_estimation"]   # not counts
    stage = {"name": "pointers", "steps": 1, "train": ["number_head"], "depth_loss_weight": 0.0,
             "memory": "oracle", "scenes": "generated", "episodes_per_step": 4, "questions_per_episode": 4,
             "balance_tasks": True, "question_types": measure_types, "number_loss_weight": 1.0,
             "pointer_loss_weight": 1.0}
    readout = {"object_readout": {"enabled": True}}
    with pytest.raises(TrainConfigError, match="number_pointers: true"):
        Trainer(load_train_config(write_config(tmp_path / "plain.yaml", questions_per_task=2, stages=[stage],
                                               model={**readout, "bridge": {"number_head": True}})), progress=False)
    # a bridge whose number head has no pointers gains fresh ones, everything else copied
    source, _ = load_model("tiny", use_shipped=False, seed=4,
                           config_changes={**readout, "bridge": {"number_head": True}})
    save_checkpoint(source, tmp_path / "answering")
    config = load_train_config(write_config(
        tmp_path / "train.yaml", questions_per_task=2, stages=[stage],
        model={**readout, "bridge": {"number_head": True, "number_pointers": True}},
        init_modules={"bridge": "answering"}))
    trainer = Trainer(config, progress=False)
    bridge = trainer.model.bridge
    assert torch.equal(bridge.number_head.fc1.weight, source.bridge.number_head.fc1.weight)
    assert bridge.number_head.pointers is not None
    frozen = {k: v.clone() for k, v in bridge.state_dict().items() if not k.startswith("number_head.")}
    pointers_before = {k: v.clone() for k, v in bridge.number_head.pointers.state_dict().items()}
    history = fit_history(trainer, trainer.config.stages[0], steps=60, lr=3e-3)
    # the pointers learn to find the named objects' words and tokens (and the room's)
    first, last = history[:10], history[-10:]
    assert np.mean([m["loss_pointer"] for m in last]) < np.mean([m["loss_pointer"] for m in first]) - 0.5
    assert all(0 <= m["pointer_accuracy"] <= 1 for m in history)
    # and nothing but the number head changed: not the language model, not the projector's statistics
    after = bridge.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    assert not all(torch.equal(v, pointers_before[k]) for k, v in bridge.number_head.pointers.state_dict().items())
