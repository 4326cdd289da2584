"""The training loop: each sample's stream is unrolled over its clip with gradients (the model's
state is immutable, so backpropagation runs through the memory updates), then its questions are
answered from the memory with teacher forcing. A "stream" stage instead builds each sample's
memory the way inference does (every frame up to the question, through the engine, perception
frozen) once, and trains the language bridge on those memories: no train/test gap in how the
memory was filled, and a step costs only the language model. An "oracle" stage trains the bridge
the same way on the scene's ground truth instead of a memory (data.oracle_memory), and a
"perceived" stage on a streamed memory put in the oracle's form as the model's object readout
reads it at a question: its category head (the run's category probe) says what each token shows,
the point each token carries says where (model.object_memory).

Losses: depth (mean |log d - log d*| over pixels with rendered depth) on every frame's geometry
output; category (cross-entropy of a training-only linear probe on every fused token H_t and
every memory token M_t, the two things the memory stores, against the share of each semantic
class in the token's patch, from the rendered instance masks); position (squared error of a
second training-only probe on the same tokens against each class's first moment in the patch:
its share times its mean world position, from rendered depth and pose); and the answer
tokens' cross-entropy. A stage names which modules learn and weighs the losses; the paper's order
is geometry / fusion alignment first, then memory and answering.

Run directory (`out`): checkpoint/ (a VLM² checkpoint directory, loadable by every tool), and
train_state.safetensors + train_state.json (optimiser moments, RNG states, stage and step) for
--resume, log.jsonl (one line per logged step) and curves.png. All written atomically; no pickle.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..atomic_io import atomic_file, write_json_atomic
from ..engine.answer import parse_number
from ..engine.engine import SpatialMemoryEngine
from ..engine.number_decoding import relative_accuracy
from ..evaluation.streaming import hash_tensors, memory_digest, stream_episode
from ..model.checkpoint import MemoryOverrides, load_checkpoint, load_model, save_checkpoint
from ..model.dual_memory import MemoryState, memory_entries
from ..model.fusion import pool_to_grid
from ..model.language_bridge import AnswerPass, NumberHead
from ..model.memory_readout import mean_pool
from ..model.number_pointers import POINTERS, PointerReading, token_boxes
from ..model.object_memory import ROOM_CLASS, ObjectBox, token_readings
from ..model.prompt import asks_measure, question_option_texts
from ..model.vlm2 import VLM2Config, VLM2Model, input_pixel_rays, points_on_rays
from ..sim.episode import EpisodeDir
from ..sim.questions import COMPASS, DIRECTION_CLASSES, LETTERS, MEMORY_TASKS, relation_angles
from ..sim.scene import CATEGORIES, SEMANTIC_CLASSES
from .config import BRIDGE_SOURCES, MODULES, StageConfig, TrainConfig, TrainConfigError
from .data import (AskedQuestions, GeneratedSample, TrainingEpisode, generated_oracle_sample, generated_scene_seed,
                   load_frames, load_training_set, load_world_points, model_oracle_memory, oracle_boxes)
from .perception_noise import measure_perception_noise
from .readout_fit import fit_readout

STATE_TENSORS, STATE_JSON = "train_state.safetensors", "train_state.json"
STREAMED_MEMORIES = "streamed_memories.safetensors"
STREAMED_READINGS = "streamed_readings.safetensors"   # each token's class shares and point ("perceived" stages)
STREAM_SAVE_EVERY = 50          # streamed samples between saves of the memory cache
PROBE_PREFIX = "probes."
METRICS = ("loss_depth", "loss_category", "loss_position", "loss_point", "loss_objectness",   # logged every step
           "loss_answer", "loss_grounding", "category_accuracy", "position_error_m", "point_error_m",
           "grounding_error_m", "loss_gather", "gather_error_m", "loss_choice", "choice_accuracy",
           "loss_direction", "direction_accuracy", "loss_bearing", "bearing_error_deg", "loss_copy",
           "copy_attention", "loss_number", "number_accuracy", "loss_order", "order_error", "loss_pointer",
           "pointer_accuracy")
# training-only heads, each with its stage loss weight; every one after "category" came later, and
# a run saved before one of them starts it fresh
PROBES = ("category", "position", "point", "grounding", "gather", "choice", "direction", "bearing", "order")
GATHERED_OBJECTS = 5        # the gather probe's slots: a relative-distance question names five objects
BEARINGS = 2                # the bearing probe's angles: a route turns twice, a relative direction is one
BEARING_TASKS = (*DIRECTION_CLASSES, "route_planning")     # the questions the bearing probe reads


def safe_open_metadata(path: Path) -> dict:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def depth_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute log-depth error over pixels with a rendered depth: predicted, target [B,H,W]."""
    valid = torch.isfinite(target) & (target > 1e-3)
    if not bool(valid.any()):
        return predicted.sum() * 0.0
    return (predicted.clamp_min(1e-3).log() - target.clamp_min(1e-3).log()).abs()[valid].mean()


def class_shares(classes: torch.Tensor, num_classes: int, grid: tuple[int, int]) -> torch.Tensor:
    """The share of each class among each patch's pixels: classes [T,H,W] -> [T,N,K]."""
    return pool_to_grid(F.one_hot(classes.long(), num_classes).float(), grid)


def category_loss(logits: torch.Tensor, classes: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, float]:
    """Soft-label cross-entropy of per-patch class logits [T,N,K] against the share of each class
    among the patch's pixels (classes [T,H,W], N = grid h*w); and the accuracy of the logits'
    argmax on each patch's majority class."""
    shares = class_shares(classes, logits.shape[-1], grid)                              # [T,N,K]
    loss = -(shares * logits.log_softmax(dim=-1)).sum(dim=-1).mean()
    accuracy = (logits.argmax(dim=-1) == shares.argmax(dim=-1)).float().mean()
    return loss, float(accuracy)


def class_moments(classes: torch.Tensor, points: torch.Tensor, num_classes: int, grid: tuple[int, int],
                  scale_m: float) -> torch.Tensor:
    """Per patch of `grid` and per class k: share_k * mean world position of k's pixels, in units of
    scale_m: classes [T,H,W], points [T,H,W,3] -> [T,N,K*3]."""
    one_hot = F.one_hot(classes.long(), num_classes).float()                        # [T,H,W,K]
    moments = one_hot[..., :, None] * (points / scale_m)[..., None, :]              # [T,H,W,K,3]
    return pool_to_grid(moments.flatten(-2), grid)


def position_loss(predicted: torch.Tensor, classes: torch.Tensor, points: torch.Tensor, grid: tuple[int, int],
                  scale_m: float) -> tuple[torch.Tensor, float]:
    """Squared error of predicted class moments [T,N,K*3] (summed over classes and axes, mean over
    patches) against class_moments(); and, in metres, how far the position they give for each
    patch's majority class is from that class's true mean position in the patch."""
    num_classes = predicted.shape[-1] // 3
    target = class_moments(classes, points, num_classes, grid, scale_m)              # [T,N,K*3]
    loss = (predicted - target).square().sum(dim=-1).mean()
    share, major = class_shares(classes, num_classes, grid).max(dim=-1)              # [T,N]
    pick = lambda m: m.unflatten(-1, (num_classes, 3)).gather(  # noqa: E731        # [T,N,3]
        2, major[..., None, None].expand(-1, -1, 1, 3)).squeeze(2)
    error = (pick(predicted.detach()) - pick(target)).norm(dim=-1) / share * scale_m
    return loss, float(error.mean())


def point_loss(predicted: torch.Tensor, points: torch.Tensor, grid: tuple[int, int],
               scale_m: float) -> tuple[torch.Tensor, float]:
    """Squared error (summed over axes, mean over patches) of predicted patch points [T,N,3], in
    units of scale_m, against the mean world point of each patch of `grid` (points [T,H,W,3]); and
    the mean distance between the two in metres."""
    target = pool_to_grid(points / scale_m, grid)                                     # [T,N,3]
    loss = (predicted - target).square().sum(dim=-1).mean()
    return loss, float((predicted.detach() - target).norm(dim=-1).mean() * scale_m)


def objectness_loss(logits: torch.Tensor, classes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Binary cross-entropy of per-patch objectness logits [T,N] against the share of each patch
    of `grid` that is not the room shell (class 0; classes [T,H,W])."""
    room = class_shares(classes, len(SEMANTIC_CLASSES), grid)[..., 0]           # [T,N]
    return F.binary_cross_entropy_with_logits(logits, 1.0 - room)


def unroll(model: VLM2Model, episode: TrainingEpisode, use_pose: bool):
    """Stream the clip through the model: (final stream, mean depth loss over its frames, the
    tokens the memory stores for its frames: H_t and, with an episodic memory, M_t [T or 2T,N,C]).
    The camera's intrinsics are always known here, as they are to the engine given a CameraInfo."""
    stream, losses, stored = model.empty_stream(1), [], []
    device = next(model.parameters()).device
    rays = episode.rays[None].to(device)
    for t in range(episode.images.shape[0]):
        pose = episode.poses[t:t + 1].to(device) if use_pose else None
        stream, out = model.step(stream, episode.images[t:t + 1].to(device).float() / 255.0,
                                 episode.stamps_ns[t:t + 1], episode.frame_indices[t:t + 1], pose, rays)
        losses.append(depth_loss(out.depth, episode.depth[t:t + 1].to(device)))
        stored += [out.fused] if out.memory is None else [out.fused, out.memory]
    return stream, torch.stack(losses).mean(), torch.cat(stored)


def pick_questions(tasks: list[str], count: int, rng: np.random.Generator, balanced: bool,
                   only: list[str] | None = None) -> list[int]:
    """Indices of `count` distinct questions (all if fewer), of the types in `only` if given.
    Balanced: task by task in a random order, a random unused question of each in turn, so that a
    task the data set asks rarely (one room size per episode) weighs as much as one it asks often."""
    allowed = [i for i, task in enumerate(tasks) if not only or task in only]
    if not balanced:
        return [allowed[i] for i in rng.choice(len(allowed), size=min(count, len(allowed)), replace=False)]
    pools: dict[str, list[int]] = {}
    for index in rng.permutation(allowed).tolist():
        pools.setdefault(tasks[index], []).append(index)
    order = [pools[t] for t in rng.permutation(sorted(pools))]
    picked: list[int] = []
    while len(picked) < min(count, len(allowed)):
        picked += [pool.pop() for pool in order if pool][:count - len(picked)]
    return picked


def streamed_memory(engine: SpatialMemoryEngine, episode: TrainingEpisode) -> torch.Tensor:
    """The memory tokens [1,M,C] the model reads at the sample's question, built exactly as at
    inference: every frame up to the question, with its pose and intrinsics, through the engine
    (every box: no question picks them, object_readout.best_box_per_named_class)."""
    stream_episode(engine, EpisodeDir(episode.path), episode.asked_at)
    with torch.no_grad():
        return engine.model.read_memory(engine.stream).tokens.clone()   # a normal (not inference) tensor


def model_parts(model: VLM2Model) -> dict[str, torch.nn.Module]:
    """The model's modules by the names training configs use (MODULES)."""
    parts = {"geometry": model.geometry, "semantic": model.semantic, "depth_refinement": model.depth_refinement,
             "fusion": model.fusion, "memory": model.memory, "readout": model.readout,
             "object_readout": model.object_readout, "bridge": model.bridge}
    assert set(parts) == set(MODULES)
    return parts


def set_trainable(model: VLM2Model, modules: list[str]) -> list[torch.nn.Parameter]:
    """Only `modules` (config.TRAINABLE) learn; returns their parameters."""
    parts = model_parts(model)
    if "number_head" in modules:
        if model.bridge.number_head is None:
            raise TrainConfigError("train names number_head, and this model writes numbers as text: set "
                                   "model: {bridge: {number_head: true}}")
        parts["number_head"] = model.bridge.number_head
    if "depth_refinement" in modules and not model.config.depth_refinement.enabled:
        raise TrainConfigError("train names depth_refinement, but the model's is disabled: set "
                               "model: {depth_refinement: {enabled: true}}")
    model.requires_grad_(False)
    for name in modules:
        parts[name].requires_grad_(True)
    if "bridge" in modules and model.bridge.config.freeze_language_model:
        model.bridge.decoder.requires_grad_(False)     # a real backbone LM stays frozen
        model.bridge.lm_head.requires_grad_(False)
    frozen = model.semantic.frozen_backbone()
    if "semantic" in modules and frozen is not None:
        frozen.requires_grad_(False)                   # a pretrained CNN: only its projector learns
    return [p for p in model.parameters() if p.requires_grad]


def copy_modules(source: VLM2Model, target: VLM2Model, modules: list[str], where: str) -> None:
    """Copy the weights of `modules` from source (the checkpoint at `where`) into target; their
    configs and every tensor's shape must agree (TrainConfigError names what does not). The
    memory's sizes and episodic replacement rule hold no weights, nor does how the object readout
    groups and writes what its head reads (only its classes do), nor whether training leaves the
    semantic encoder's pretrained backbone alone: a run may change them. A bridge
    without a number head may be copied into one with a fresh head, and a number head without
    memory pointers into one with fresh pointers (to learn them)."""
    def weight_config(config: VLM2Config, name: str):
        # every module but the readout has a config of its name in VLM2Config
        part = getattr(config, name, None)
        if name == "memory":
            return dataclasses.replace(part, working=None, episodic=None)
        if name == "object_readout":
            return (part.enabled, part.classes)
        if name == "semantic":
            return dataclasses.replace(part, freeze_backbone=True)
        return dataclasses.replace(part, number_head=False, number_pointers=False) if name == "bridge" else part

    for name in modules:
        theirs, ours = weight_config(source.config, name), weight_config(target.config, name)
        if theirs != ours:
            raise TrainConfigError(f"init_modules: {name!r} of {where} has another config than this "
                                   f"run's model:\n  {theirs}\n  {ours}")
        # a bridge may gain a fresh number head, or its number head fresh memory pointers
        theirs_head, ours_head = source.bridge.number_head, target.bridge.number_head
        if name != "bridge" or ours_head is None:
            fresh = ()
        elif theirs_head is None:
            fresh = ("number_head.",)
        elif theirs_head.pointers is None and ours_head.pointers is not None:
            fresh = ("number_head.pointers.", "number_head.measure_weights.")
        else:
            fresh = ()
        try:
            missing, unexpected = model_parts(target)[name].load_state_dict(model_parts(source)[name].state_dict(),
                                                                            strict=not fresh)
        except RuntimeError as e:
            raise TrainConfigError(f"init_modules: cannot copy {name!r} from {where} ({e})") from None
        if unexpected or any(not key.startswith(fresh) for key in missing):
            raise TrainConfigError(f"init_modules: cannot copy {name!r} from {where} (missing {missing}, "
                                   f"unexpected {unexpected})")


def run_probes(probes: dict[str, str]) -> dict[str, torch.Tensor]:
    """The tensors of each training-only probe in the training state of the run directory it maps
    to (init_probes)."""
    unknown = sorted(set(probes) - set(PROBES))
    if unknown:
        raise TrainConfigError(f"init_probes: unknown probes {unknown}; choose from {PROBES}")
    tensors: dict[str, torch.Tensor] = {}
    for run in sorted(set(probes.values())):
        path = Path(run) / STATE_TENSORS
        if not path.is_file():
            raise TrainConfigError(f"init_probes: {run} holds no training state ({STATE_TENSORS})")
        state = load_file(str(path))
        for probe in (p for p in PROBES if probes.get(p) == run):
            taken = {k[len(PROBE_PREFIX):]: v for k, v in state.items() if k.startswith(f"{PROBE_PREFIX}{probe}.")}
            if not taken:
                raise TrainConfigError(f"init_probes: the training state of {run} holds no {probe!r} probe")
            tensors.update(taken)
    return tensors


def data_set_record(data: str | Path) -> dict | None:
    """What `vlm2 sim dataset` recorded about the training data (seed, sizes, episode count), so a
    checkpoint says how to make its data again; None for data without a dataset.json."""
    try:
        record = json.loads((Path(data) / "dataset.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return {**{k: v for k, v in record.items() if k != "episodes"}, "episodes": len(record.get("episodes", []))}


def code_version() -> str:
    """The commit the code is at, "-dirty" when tracked files differ from it (a run's record must
    not claim a commit its code has left)."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], capture_output=True,
                              text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclasses.dataclass
class NumberPass:
    """The number head over the rows of an answer pass whose question it answers."""
    rows: list[int]                       # the rows (Trainer.number_rows)
    values: list[float]                   # their true answers
    mean: torch.Tensor | None = None      # [N] log-value Gaussian's mean, None when no row
    std: torch.Tensor | None = None       # [N]
    reading: PointerReading | None = None  # what the memory pointers read; None without them


class Trainer:
    def __init__(self, config: TrainConfig, resume: bool = False, progress: bool = True):
        self.config, self.progress = config, progress
        self.out = Path(config.out)
        if config.threads:
            torch.set_num_threads(config.threads)
        has_state = (self.out / STATE_JSON).is_file()
        if has_state and not resume:
            raise FileExistsError(f"{self.out} holds a training run; pass --resume to continue it or "
                                  f"choose another out directory")
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.stage_index, self.stage_step, self.global_step = 0, 0, 0
        self._optimizer_state: dict | None = None
        self._probe_state: dict | None = None
        if resume and has_state:
            self.model, self.weights = load_checkpoint(self.out / "checkpoint")
            self._load_state()
        else:
            # from the preset's fresh initialisation unless init_checkpoint says otherwise, never
            # silently from the weights shipped in the package
            if config.init_modules:
                # the preset's fresh model (with config.model), then each named module from its checkpoint
                self.model, self.weights = load_model(config.preset, seed=config.seed, use_shipped=False,
                                                      config_changes=config.model)
                by_checkpoint: dict[str, list[str]] = {}
                for module in (m for m in MODULES if m in config.init_modules):
                    by_checkpoint.setdefault(config.init_modules[module], []).append(module)
                for checkpoint, modules in by_checkpoint.items():
                    source, source_weights = load_checkpoint(checkpoint)
                    copy_modules(source, self.model, modules, checkpoint)
                    self.weights += f"+{','.join(modules)} from {source_weights}"
            else:
                # beside a checkpoint, model changes only the readout's run-time settings (TrainConfig)
                from_checkpoint = config.init_checkpoint is not None
                self.model, self.weights = load_model(
                    config.preset, checkpoint_dir=config.init_checkpoint, seed=config.seed, use_shipped=False,
                    overrides=MemoryOverrides(readout=config.model.get("object_readout")) if from_checkpoint else None,
                    config_changes=None if from_checkpoint else config.model)
            if config.init_probes:
                self._probe_state = run_probes(config.init_probes)
        layers = self.model.bridge.num_layers
        for stage in config.stages:
            if stage.probes_language_model and stage.grounding_layer > layers:
                raise TrainConfigError(f"stage {stage.name!r}: grounding_layer {stage.grounding_layer} is past the "
                                       f"language model's {layers} layers")
            if stage.copy_loss_weight > 0 and not -layers <= stage.copy_layer < layers:
                raise TrainConfigError(f"stage {stage.name!r}: copy_layer {stage.copy_layer} is not one of the "
                                       f"language model's {layers} layers")
        if any(s.copy_loss_weight > 0 for s in config.stages):
            # the copy loss reads attention weights, which the fused attention kernels do not return
            self.model.bridge.decoder.set_attn_implementation("eager")
        if self.model.bridge.number_head is None and any(s.number_loss_weight > 0 for s in config.stages):
            raise TrainConfigError("number_loss_weight trains the language bridge's number head, and this model "
                                   "writes numbers as text: set model: {bridge: {number_head: true}}")
        head = self.model.bridge.number_head
        if (head is None or head.pointers is None) and any(s.pointer_loss_weight > 0 for s in config.stages):
            raise TrainConfigError("pointer_loss_weight trains the number head's memory pointers, and this model's "
                                   "has none: set model: {bridge: {number_head: true, number_pointers: true}}")
        if self.model.readout.objectness is None and any(s.objectness_loss_weight > 0 for s in config.stages):
            raise TrainConfigError("objectness_loss_weight trains the readout's objectness score, and this model "
                                   "pools its memory by the mean: set model: {readout_pool: objectness}")
        self.model.to(config.device).train()
        # training-only heads for the category, position, point and grounding losses; kept in the
        # training state, not the checkpoint; but the category probe of a model with an object
        # readout is its category head
        dim, classes = self.model.config.fusion.dim, len(SEMANTIC_CLASSES)
        object_readout = self.model.config.object_readout
        if object_readout.enabled and object_readout.classes != SEMANTIC_CLASSES:
            raise TrainConfigError(f"the object readout tells apart {object_readout.classes}; the synthetic world's "
                                   f"category loss {SEMANTIC_CLASSES}")
        if not object_readout.enabled and any(s.memory == "perceived" for s in config.stages):
            raise TrainConfigError("a perceived stage trains the language model on the memory read as objects, "
                                   "the way the model's object readout reads it at a question: set "
                                   "model: {object_readout: {enabled: true}}")
        self.probes = torch.nn.ModuleDict({"category": self.model.object_readout.category
                                           or torch.nn.Linear(dim, classes),
                                           "position": torch.nn.Linear(dim, 3 * classes),
                                           "point": torch.nn.Linear(dim, 3),
                                           "grounding": torch.nn.Linear(self.model.bridge.hidden_size, 3),
                                           "gather": torch.nn.Linear(self.model.bridge.hidden_size,
                                                                     3 * GATHERED_OBJECTS),
                                           "choice": torch.nn.Linear(self.model.bridge.hidden_size,
                                                                     GATHERED_OBJECTS),
                                           "direction": torch.nn.Linear(self.model.bridge.hidden_size, len(COMPASS)),
                                           "bearing": torch.nn.Linear(self.model.bridge.hidden_size, 2 * BEARINGS),
                                           "order": torch.nn.Linear(self.model.bridge.hidden_size, 1),
                                           }).to(config.device)
        if self._probe_state is not None:   # a run from before a later probe starts that one fresh
            resumed = resume and has_state
            where = self.out if resumed else f"init_probes {config.init_probes}"
            try:
                missing, unexpected = self.probes.load_state_dict(self._probe_state, strict=False)
            except RuntimeError as e:       # another model's sizes
                raise TrainConfigError(f"{where}: its probes do not fit this run's model ({e})") from None
            if unexpected or (resumed and any(k.startswith("category.") for k in missing)):
                raise ValueError(f"{where}: training state has probe tensors {unexpected} it should not, "
                                 f"or lacks {missing}")
        self.data = load_training_set(config.data, config.clip_frames, self.model.config.image_size,
                                      config.questions_per_task, config.memory_questions_per_task)
        self._streamed: list[torch.Tensor] | None = None   # per sample, for "stream" stages
        self._oracle: list[torch.Tensor] | None = None     # per sample, for "oracle" stages
        self._perceived: list[torch.Tensor] | None = None  # per sample, for "perceived" stages
        self._episodes: dict[str, EpisodeDir] = {}            # opened on demand, for "window" and "oracle" stages
        self._samples_asking: dict[tuple[str, ...], np.ndarray] = {}   # by question_types, for stage_samples
        self._answer_losses: dict[str, list[float]] = {}   # by question type, each question's since the last log line

    def stream_memories(self) -> list[torch.Tensor]:
        """Every sample's inference-time memory under the current weights, computed once at the
        first "stream" stage (those stages freeze everything before the bridge). Kept in the run
        directory under each sample's stream_key, valid for memory_digest: --resume streams
        nothing again, a run on a larger data set streams only the episodes it adds, and measuring
        the run on another data set (--memory-reliance) adds its episodes beside the others."""
        if self._streamed is None:
            self._streamed = self.streamed(STREAMED_MEMORIES, memory_digest(self.model), streamed_memory)
        return self._streamed

    def streamed(self, file: str, digest: str, read) -> list[torch.Tensor]:
        """read(engine, sample) -> tensor, for every sample, once: cached in the run directory's
        `file` under each sample's stream_key, valid while `digest` (what the tensors depend on) is
        the file's; entries of samples not in this run's data stay."""
        cache = self.out / file
        cached: dict[str, torch.Tensor] = {}
        if cache.is_file() and safe_open_metadata(cache).get("memory_digest") == digest:
            cached = load_file(str(cache))     # other data sets' entries stay: same weights, same memories

        def save() -> None:
            self.out.mkdir(parents=True, exist_ok=True)
            with atomic_file(cache) as tmp:
                save_file({k: t.contiguous() for k, t in cached.items()}, str(tmp), metadata={"memory_digest": digest})

        missing = [e for e in self.data if e.stream_key not in cached]
        if missing:
            engine = SpatialMemoryEngine(self.model, weights=self.weights, device=self.config.device)
            for done, episode in enumerate(tqdm(missing, desc=f"streaming ({file})", unit="sample",
                                                disable=not self.progress), start=1):
                cached[episode.stream_key] = read(engine, episode)
                if done % STREAM_SAVE_EVERY == 0 or done == len(missing):   # an interrupted run keeps these
                    save()
            self.model.train()       # the engine put the shared model in eval mode
        return [cached[e.stream_key] for e in self.data]

    def token_readings(self, memory: MemoryState) -> torch.Tensor:
        """object_memory.token_readings by the run's category probe: [E*N, K+4]."""
        return token_readings(self.probes["category"], memory)

    def perceived_boxes(self, readings: torch.Tensor) -> list[ObjectBox]:
        """The room and the objects token_readings show, grouped as the model's object readout groups them."""
        return self.model.object_readout.boxes(readings)

    def perceived_readings(self) -> list[torch.Tensor]:
        """Every sample's token_readings [E*N, K+4] of its streamed memory by the run's category
        probe (cached in the run directory)."""
        if "category" not in self.trained_probes():
            raise TrainConfigError("perceived memories are read by the category probe; this run has not "
                                   "trained it (train it, or take it with init_probes)")
        digest = hashlib.sha256(memory_digest(self.model).encode())
        hash_tensors(digest, {name: t for name, t in self.probes.state_dict().items()
                              if name.split(".")[0] == "category"})

        def read(engine: SpatialMemoryEngine, sample: TrainingEpisode) -> torch.Tensor:
            stream_episode(engine, EpisodeDir(sample.path), sample.asked_at)
            with torch.no_grad():
                return self.token_readings(engine.stream.memory).cpu()

        return self.streamed(STREAMED_READINGS, digest.hexdigest(), read)

    def perceived_memories(self) -> list[torch.Tensor]:
        """Every sample's memory in the oracle's form (model.object_memory), from its streamed
        memory: the run's category probe reads what each token shows, the token's carried point
        places it ("perceived" stages)."""
        if self._perceived is None:
            self._perceived = [self.model.object_readout.memory_tokens(self.perceived_boxes(readings))
                               for readings in self.perceived_readings()]
        return self._perceived

    def perception_noise(self) -> dict:
        """How the run's perceived boxes differ from the truth on its data set's samples, as
        PerceptionNoise's fields (perception_noise.measure_perception_noise), for a generated
        stage's `perception_noise`."""
        pairs = [(self.perceived_boxes(readings), truth, asked_at) for readings, truth, asked_at in self.read_truth()]
        return {"samples": len(pairs), "readout": dataclasses.asdict(self.model.config.object_readout),
                **measure_perception_noise(pairs)}

    def fit_readout(self) -> dict:
        """Per-class object readout settings (readout_fit.fit_readout) fit on the run's data set's
        samples' streamed memories, the run's readout scored beside them."""
        c = self.model.config.object_readout
        pairs = [(readings.numpy(), truth) for readings, truth, _ in self.read_truth()]
        return {"samples": len(pairs), "readout": dataclasses.asdict(c),
                **fit_readout(pairs, c.classes, c.grouping, (c.per_class("min_share"), c.per_class("merge_radius_m")))}

    def read_truth(self):
        """Each sample's (token readings, data.oracle_boxes at its asking frame, asking frame)."""
        for sample, readings in zip(self.data, self.perceived_readings()):
            episode = self._episodes.setdefault(sample.path, EpisodeDir(sample.path))
            yield readings, oracle_boxes(episode.scene, episode.visibility(), sample.asked_at), sample.asked_at

    def oracle_memories(self) -> list[torch.Tensor]:
        """Every sample's oracle memory (data.oracle_memory)."""
        if self._oracle is None:
            self._oracle = []
            for sample in self.data:
                episode = self._episodes.setdefault(sample.path, EpisodeDir(sample.path))
                self._oracle.append(model_oracle_memory(self.model, episode.scene, episode.visibility(),
                                                        sample.asked_at).to(self.config.device))
        return self._oracle

    def memories(self, source: str) -> list[torch.Tensor]:
        """Every sample's memory for a stage reading BRIDGE_SOURCES `source`."""
        return {"oracle": self.oracle_memories, "perceived": self.perceived_memories,
                "stream": self.stream_memories}[source]()

    def memory_reliance(self, samples: int = 60) -> dict[str, dict[str, float]]:
        """Does the language model read the memory? Per question type, the mean teacher-forced
        answer loss of up to `samples` samples' questions over their own memory (streamed, or the
        oracle's for a run whose last bridge stage read those) and over the memory of the next
        picked sample (another scene). Equal losses: the answers come from the question alone.
        For multiple-choice types also the accuracy of the option the model picks with each memory
        (as the engine does: the likeliest first letter, or with choice_answer "option_text" the
        likeliest option text); and once the run has trained its grounding probe, the
        probe's mean error (metres) on the objects the questions name, with each memory; once it has
        trained its choice probe, the probe's accuracy on the questions it picks a named object for;
        and with a number head, its median's relative accuracy (VSI-Bench's score) on the number
        questions, with each memory. Rows {type: {own, other, questions[, own_accuracy, other_accuracy]
        [, own_grounding_m, other_grounding_m][, own_choice_probe, other_choice_probe]
        [, own_number_score, other_number_score]}} and "all"."""
        # what the run's language model learnt to read: its last stage's memories
        source = next((s.memory for s in reversed(self.config.stages) if s.memory in BRIDGE_SOURCES), "stream")
        memories = self.memories(source)
        picks = np.random.default_rng(self.config.seed).choice(len(self.data), min(samples, len(self.data)),
                                                                replace=False)
        bridge = self.model.bridge
        # the probes read one layer (TrainConfig checks), passed to answer_pass only when one is measured
        measured = {"grounding", "choice"} & set(self.trained_probes())
        probe_layer = (next((s.grounding_layer for s in self.config.stages if s.probes_language_model), None)
                       if measured else None)
        letter_ids = torch.tensor([bridge.answer_ids(letter)[0] for letter in LETTERS])

        def chosen_letter(memory: torch.Tensor, prompt: str) -> str:
            # as the engine answers: by the listed options' texts, else the likeliest first letter
            options = bridge.listed_options(prompt)
            if options:
                return bridge.pick_option(memory, prompt, options).letter
            return LETTERS[int(bridge.next_token_logits(memory, [prompt])[0, letter_ids].argmax())]
        losses: dict[str, list[tuple[float, float]]] = {}
        hits: dict[str, list[tuple[bool, bool]]] = {}
        grounding: dict[str, list[tuple[float, float]]] = {}
        choices: dict[str, list[tuple[bool, bool]]] = {}
        numbers: dict[str, list[tuple[float, float]]] = {}
        self.model.eval()
        with torch.no_grad():
            for own, other in zip(picks, np.roll(picks, 1)):
                sample = self.data[int(own)]
                # all of a sample's questions in one pass per memory (the memory prefix runs once)
                passes = [bridge.answer_pass(memories[int(m)], [sample.prompts], [sample.answers], probe_layer)
                          for m in (own, other)]
                number_scores = {}       # row -> the number head's score with each memory
                if bridge.number_head is not None:
                    heads = [self.number_head_pass(p, memories[int(m)].expand(len(sample.prompts), -1, -1),
                                                   sample.prompts, sample.answers) for p, m in zip(passes, (own, other))]
                    scores = [self.number_loss(p, h)[1] for p, h in zip(passes, heads)]
                    number_scores = {row: (float(scores[0][j]), float(scores[1][j]))
                                     for j, row in enumerate(heads[0].rows)}
                for i, (prompt, answer, task, named) in enumerate(zip(sample.prompts, sample.answers, sample.tasks,
                                                                      sample.named_objects)):
                    for key in (task, "all"):
                        losses.setdefault(key, []).append(tuple(float(p.question_losses[i]) for p in passes))
                    if answer in tuple(LETTERS):
                        hits.setdefault(task, []).append(tuple(chosen_letter(memories[int(m)], prompt) == answer
                                                               for m in (own, other)))
                    if i in number_scores:
                        numbers.setdefault(task, []).append(number_scores[i])
                    if "grounding" in measured and named:
                        errors = [self.grounding_loss(p.hidden[i:i + 1], [prompt], [named])[1] for p in passes]
                        for key in (task, "all"):
                            grounding.setdefault(key, []).extend(zip(errors[0].tolist(), errors[1].tolist()))
                    if "choice" in measured and named:
                        right = [self.choice_loss(p.hidden[i:i + 1], [prompt], [answer], [named])[1] for p in passes]
                        if len(right[0]):
                            choices.setdefault(task, []).append((bool(right[0][0]), bool(right[1][0])))
        self.model.train()
        rows = {task: {"own": float(np.mean([a for a, _ in pairs])), "other": float(np.mean([b for _, b in pairs])),
                       "questions": len(pairs)} for task, pairs in sorted(losses.items())}
        for name, values in (("accuracy", hits), ("grounding_m", grounding), ("choice_probe", choices),
                             ("number_score", numbers)):
            for task, pairs in values.items():
                rows[task].update({f"own_{name}": float(np.mean([a for a, _ in pairs])),
                                   f"other_{name}": float(np.mean([b for _, b in pairs]))})
        return rows

    def room_size_probe(self, folds: int = 5, ridge: float = 100.0) -> dict[str, float]:
        """Does the memory hold the room's extent? A ridge regression from each sample's streamed
        memory (mean, max and min over its tokens) to the log of its room-size answer, scored by
        k-fold cross-validation as VSI-Bench scores numbers (mean relative accuracy), beside always
        answering the training folds' mean. Needs a room-size question in at least `folds` samples."""
        features, areas = [], []
        for sample, memory in zip(self.data, self.stream_memories()):
            answers = [float(a) for a, task in zip(sample.answers, sample.tasks) if task == "room_size_estimation"]
            if answers:
                tokens = memory[0].float()                                              # [M,C]
                features.append(torch.cat([tokens.mean(0), tokens.amax(0), tokens.amin(0)]).numpy())
                areas.append(answers[0])
        if len(areas) < folds:
            raise ValueError(f"{len(areas)} samples ask the room size; the probe needs at least {folds}")
        x, y = np.asarray(features, np.float64), np.log(np.asarray(areas))
        order = np.random.default_rng(self.config.seed).permutation(len(y))
        probe, mean = np.zeros(len(y)), np.zeros(len(y))
        for test in np.array_split(order, folds):
            train = np.setdiff1d(order, test)
            mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
            a = (x[train] - mu) / sd
            w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ (y[train] - y[train].mean()))
            probe[test] = ((x[test] - mu) / sd) @ w + y[train].mean()
            mean[test] = y[train].mean()
        truth = np.exp(y)
        score = lambda log_area: float(relative_accuracy(np.exp(log_area), truth).diagonal().mean())  # noqa: E731
        return {"samples": len(y), "probe_mra": score(probe), "mean_mra": score(mean),
                "log_correlation": float(np.corrcoef(probe, y)[0, 1])}

    def trained_probes(self) -> list[str]:
        """The probes a stage of this run has trained so far (their loss weight > 0), those it
        took trained from other runs (init_probes), and the category probe where it is the object
        readout's head and came with the weights the run starts from (init_checkpoint, or
        init_modules' object_readout): a chain of runs from shipped weights needs no run directory."""
        run = self.config.stages[:self.stage_index + 1]
        with_weights = self.model.object_readout.category is not None and (
            self.config.init_checkpoint is not None or "object_readout" in self.config.init_modules)
        return [name for name in PROBES if name in self.config.init_probes
                or (name == "category" and with_weights)
                or any(getattr(stage, f"{name}_loss_weight") > 0 for stage in run)]

    def position_probe(self, episodes: int = 8, min_share: float = 0.3) -> dict:
        """Does the memory hold where each object is, in a form a reader could use? Each of the
        first `episodes` episodes is streamed as at inference up to its question frame; the run's
        own probes then read every memory token (at the entry grid, and pooled to the readout grid
        the language model reads, by the mean and by the model's own pool): the category probe
        gives each token's share of each category, and the point probe its world point (or, for
        runs trained with the class-moment probe instead, the moment divided by the share); a
        further row takes each entry-grid token's carried point instead of the probe's read.
        A category's position is the share-weighted mean over the tokens where its share is at
        least `min_share`. Scored on the objects that are the only one of their category
        (floor-plane distance to the object's centre), beside guessing the room's centre.
        Recognition: per object, the largest share any token gives its category (the median over
        objects, and how many objects some token gives at least 0.5). Also the objects a
        "perceived" memory would hold (perceived_boxes, the model's object_readout settings):
        how many an episode gives against how many it has seen, the same objects' errors (to the
        nearest perceived box of their category), and the perceived room's floor area over the
        true one. And the depth error (mean |log d - log d*|) of the newest frame of the geometry
        windows the engine decodes, every 20 frames of the same streams (the depth the fusion
        places pixels at, and the decoder's before any depth refinement), with the median
        floor-plane error of the patch points the fusion gets from that depth and the given pose
        (C_t): how well any reader of the memory could place a patch."""
        trained = self.trained_probes()
        reader = "point" if "point" in trained else "position" if "position" in trained else None
        if "category" not in trained or reader is None:
            raise ValueError("the run has not trained the category probe and the point (or class-moment) "
                             "probe; a stage with category_loss_weight and point_loss_weight > 0 trains them")
        first_samples: dict[str, TrainingEpisode] = {}
        for sample in self.data:
            first_samples.setdefault(sample.path, sample)
        picked = list(first_samples.values())[:episodes]
        engine = SpatialMemoryEngine(self.model, weights=self.weights, device=self.config.device)
        scale, hs_ws, classes = self.model.config.fusion.position_scale_m, self.model.entry_grid, SEMANTIC_CLASSES
        grid, pool_kind = self.model.config.readout_grid, self.model.config.readout_pool
        readout_grid = "x".join(map(str, grid))
        entry_grid = f"{hs_ws[0]}x{hs_ws[1]}"
        grids = {entry_grid: lambda entries: entries, f"{entry_grid} carried": lambda entries: entries,
                 f"{readout_grid} mean": lambda entries: mean_pool(entries, hs_ws, grid)}
        if pool_kind != "mean":                          # what the language model reads, beside the mean
            grids[f"{readout_grid} {pool_kind}"] = self.model.readout.pool
        rows = {name: {"objects": 0, "errors": [], "room_centre_errors": [], "best_shares": []} for name in grids}
        depth_errors, decoder_depth_errors, patch_errors = [], [], []
        perceived = {"objects": 0, "errors": [], "boxes": [], "seen": [], "room_area_ratios": []}
        with torch.no_grad():
            for sample in tqdm(picked, desc="position probe", unit="episode", disable=not self.progress):
                episode = EpisodeDir(sample.path)
                stream_episode(engine, episode, sample.asked_at)
                memory = engine.stream.memory
                entries, carried, _ = memory_entries(memory)                                   # [1,E,N,C], [1,E,N,3]
                entries = entries.float()
                scene, room = episode.scene, episode.scene.room
                for name, pool in grids.items():
                    tokens = pool(entries).flatten(0, 2)                                              # [M,C]
                    shares = self.probes["category"](tokens).softmax(dim=-1)                         # [M,K]
                    row = rows[name]
                    points = (carried.flatten(0, 2).to(tokens.device) if name.endswith("carried")
                              else self.probes["point"](tokens) * scale if reader == "point" else None)  # [M,3]
                    for obj in scene.unique_objects():
                        k = classes.index(obj.category)
                        weight = shares[:, k] * (shares[:, k] >= min_share)                           # [M]
                        row["objects"] += 1
                        row["best_shares"].append(float(shares[:, k].max()))     # is it recognised at all?
                        if float(weight.sum()) == 0:
                            continue
                        if points is not None:
                            where = points
                        else:
                            moments = self.probes["position"](tokens).unflatten(-1, (-1, 3))[:, k] * scale
                            where = moments / shares[:, k, None].clamp_min(1e-6)
                        found = (weight[:, None] * where).sum(dim=0) / weight.sum()
                        row["errors"].append(float(np.linalg.norm(found[:2].numpy() - np.asarray(obj.center[:2]))))
                        row["room_centre_errors"].append(float(np.linalg.norm(
                            np.asarray([room.width / 2, room.depth / 2]) - np.asarray(obj.center[:2]))))
                room_box, *boxes = self.perceived_boxes(self.token_readings(memory))
                perceived["boxes"].append(len(boxes))
                perceived["seen"].append(sum(v[0] <= sample.asked_at for v in episode.visibility().values()))
                area = room_box.size[0] * room_box.size[1]
                perceived["room_area_ratios"].append(area / (room.width * room.depth))
                for obj in scene.unique_objects():
                    perceived["objects"] += 1
                    k = classes.index(obj.category)
                    distances = [np.linalg.norm(np.asarray(b.centre[:2]) - np.asarray(obj.center[:2]))
                                 for b in boxes if b.semantic_class == k]
                    if distances:
                        perceived["errors"].append(float(min(distances)))
                length, model, device = self.model.config.geometry_window, self.model, self.config.device
                rays = input_pixel_rays(episode.intrinsics, model.config.image_size)[None].to(device)
                for end in range(length - 1, sample.asked_at + 1, 20):
                    images, depth = load_frames(episode, range(end - length + 1, end + 1), model.config.image_size)
                    images, target = images.to(device).float() / 255.0, depth[-1:].to(device)
                    tokens = model.geometry.encode_frames(images)          # the window's; semantic: the newest's
                    pose = torch.from_numpy(episode.poses[end].astype(np.float32))[None].to(device)
                    # the patch points C_t the fusion gets (the depth on the camera's rays, given pose),
                    # against the rendered ones
                    _, predicted, fused_depth, geo = model.fuse_window(tokens[None], model.semantic(images[-1:]),
                                                                       pose, rays=rays)
                    decoder_depth_errors.append(float(depth_loss(geo.depth[:, -1], target)))
                    depth_errors.append(float(depth_loss(fused_depth, target)))
                    truth = pool_to_grid(load_world_points(episode, [end], model.config.image_size), hs_ws)[0]
                    patch_errors += (predicted[0, :, :2].cpu() - truth[:, :2]).norm(dim=-1).tolist()
        self.model.train()
        median = lambda values: float(np.median(values)) if values else None  # noqa: E731
        grouping = self.model.config.object_readout
        objects = {"objects": perceived["objects"], "located": len(perceived["errors"]),
                   "median_error_m": median(perceived["errors"]),
                   "boxes_per_episode": float(np.mean(perceived["boxes"])),
                   "seen_per_episode": float(np.mean(perceived["seen"])),
                   "median_room_area_ratio": median(perceived["room_area_ratios"]),
                   "min_share": grouping.min_share, "merge_m": grouping.merge_radius_m,
                   "grouping": grouping.grouping}
        return {"episodes": len(picked), "reader": reader, "min_share": min_share, "perceived_objects": objects,
                "depth_error": float(np.mean(depth_errors)) if depth_errors else None,
                "decoder_depth_error": float(np.mean(decoder_depth_errors)) if decoder_depth_errors else None,
                "patch_point_error_m": median(patch_errors),
                "grids": {name: {"objects": row["objects"], "located": len(row["errors"]),
                                 "median_error_m": median(row["errors"]),
                                 "room_centre_median_error_m": median(row["room_centre_errors"]),
                                 "median_best_share": median(row["best_shares"]),
                                 "recognised": int(sum(share >= 0.5 for share in row["best_shares"]))}
                          for name, row in rows.items()}}

    # ------------------------------------------------------------------ state
    def _save_state(self, optimizer: torch.optim.Optimizer) -> None:
        state = optimizer.state_dict()
        tensors = {"torch_rng": torch.get_rng_state()}
        tensors.update({PROBE_PREFIX + k: v.detach().cpu().contiguous() for k, v in self.probes.state_dict().items()})
        for index, moments in state["state"].items():
            for key, value in moments.items():
                tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
        with atomic_file(self.out / STATE_TENSORS) as tmp:
            save_file(tensors, str(tmp))
        write_json_atomic(self.out / STATE_JSON, {
            "stage_index": self.stage_index, "stage_step": self.stage_step, "global_step": self.global_step,
            "param_groups": state["param_groups"], "numpy_rng": self.rng.bit_generator.state})

    def _load_state(self) -> None:
        meta = json.loads((self.out / STATE_JSON).read_text())
        tensors = load_file(str(self.out / STATE_TENSORS))
        self.stage_index, self.stage_step, self.global_step = meta["stage_index"], meta["stage_step"], meta["global_step"]
        self.rng.bit_generator.state = meta["numpy_rng"]
        torch.set_rng_state(tensors.pop("torch_rng"))
        for key in [k for k in tensors if k.startswith("category_probe.")]:   # runs from before the position probe
            tensors[PROBE_PREFIX + "category." + key.removeprefix("category_probe.")] = tensors.pop(key)
        self._probe_state = {k[len(PROBE_PREFIX):]: tensors.pop(k) for k in list(tensors)
                             if k.startswith(PROBE_PREFIX)} or None
        moments: dict[int, dict] = {}
        for key, value in tensors.items():
            _, index, name = key.split(".", 2)
            moments.setdefault(int(index), {})[name] = value
        self._optimizer_state = {"state": moments, "param_groups": meta["param_groups"]}

    def save(self, optimizer: torch.optim.Optimizer) -> None:
        c = self.config
        save_checkpoint(self.model, self.out / "checkpoint", trained_with={
            "data": str(c.data), "data_set": data_set_record(c.data),
            "episodes": len({e.episode_id for e in self.data}), "samples": len(self.data),
            "code_version": code_version(), "config": c.to_dict(), "global_step": self.global_step,
            "stage": c.stages[min(self.stage_index, len(c.stages) - 1)].name, "init_weights": self.weights})
        self._save_state(optimizer)

    # ------------------------------------------------------------------ loop
    def trainable_parameters(self, stage: StageConfig) -> list[torch.nn.Parameter]:
        """The parameters a stage trains: its modules', and each probe's whose loss it weighs."""
        params = set_trainable(self.model, stage.train)
        for name in PROBES:
            if getattr(stage, f"{name}_loss_weight") > 0:
                params += list(self.probes[name].parameters())
        return params

    def step_losses(self, stage: StageConfig) -> tuple[torch.Tensor, dict[str, float]]:
        """The stage's weighted loss for one step, and each loss (and the probes' accuracy and
        error) as numbers for the log, averaged over the samples that computed it; a loss the stage
        does not compute is 0."""
        c = self.config
        count = stage.episodes_per_step or c.episodes_per_step
        questions = stage.questions_per_episode or c.questions_per_episode
        if stage.scenes == "generated":
            samples = self.generated_samples(stage, count)
            return self.memory_answer_loss(stage, [s.memory for s in samples], samples, questions)
        generated = self.generated_samples(stage, round(count * stage.generated_share))
        eligible = self.stage_samples(stage)
        picks = eligible[self.rng.choice(len(eligible), size=min(count - len(generated), len(eligible)),
                                         replace=False)]
        if stage.memory in BRIDGE_SOURCES:
            memories = self.memories(stage.memory)
            return self.memory_answer_loss(stage,
                                           [memories[int(i)] for i in picks] + [s.memory for s in generated],
                                           [self.data[int(i)] for i in picks] + generated, questions)
        if stage.memory == "window":
            return self.window_depth_loss(stage, picks)
        total, sums, counts = 0.0, dict.fromkeys(METRICS, 0.0), dict.fromkeys(METRICS, 0)

        def log(**values: float) -> None:
            for key, value in values.items():
                sums[key] += value
                counts[key] += 1

        for index in picks:
            episode = self.data[int(index)]
            use_pose = bool(self.rng.random() < c.pose_probability)
            stream, loss_depth, stored = unroll(self.model, episode, use_pose)
            loss = stage.depth_loss_weight * loss_depth
            log(loss_depth=float(loss_depth.detach()))
            per_token = len(stored) // len(episode.classes)      # H_t, and M_t with an episodic memory
            classes = episode.classes.repeat_interleave(per_token, dim=0).to(stored.device)
            if stage.category_loss_weight > 0:
                loss_category, accuracy = category_loss(self.probes["category"](stored), classes, self.model.entry_grid)
                loss = loss + stage.category_loss_weight * loss_category
                log(loss_category=float(loss_category.detach()), category_accuracy=accuracy)
            if stage.position_loss_weight > 0 and use_pose:   # without poses the tokens' frame is the window's
                points = episode.points.repeat_interleave(per_token, dim=0).to(stored.device)
                loss_position, error = position_loss(self.probes["position"](stored), classes, points,
                                                     self.model.entry_grid, self.model.config.fusion.position_scale_m)
                loss = loss + stage.position_loss_weight * loss_position
                log(loss_position=float(loss_position.detach()), position_error_m=error)
            if stage.point_loss_weight > 0 and use_pose:
                points = episode.points.repeat_interleave(per_token, dim=0).to(stored.device)
                loss_point, error = point_loss(self.probes["point"](stored), points, self.model.entry_grid,
                                               self.model.config.fusion.position_scale_m)
                loss = loss + stage.point_loss_weight * loss_point
                log(loss_point=float(loss_point.detach()), point_error_m=error)
            if stage.objectness_loss_weight > 0:
                loss_objectness = objectness_loss(self.model.readout.objectness(stored).squeeze(-1), classes,
                                                  self.model.entry_grid)
                loss = loss + stage.objectness_loss_weight * loss_objectness
                log(loss_objectness=float(loss_objectness.detach()))
            if stage.answer_loss_weight > 0:
                asked = pick_questions(episode.tasks, questions, self.rng, stage.balance_tasks, stage.question_types)
                tokens = self.model.read_memory(stream).tokens                          # [1,M,C]
                loss_answer = self.model.bridge.loss(tokens.expand(len(asked), -1, -1),
                                                     [episode.prompts[i] for i in asked],
                                                     [episode.answers[i] for i in asked])
                loss = loss + stage.answer_loss_weight * loss_answer
                log(loss_answer=float(loss_answer.detach()))
            total = total + loss / len(picks)
        return total, {k: sums[k] / max(1, counts[k]) for k in METRICS}

    def stage_samples(self, stage: StageConfig) -> np.ndarray:
        """Indices of the samples a stage draws from: all, or with question_types those that ask
        one (found once per set of types, not every step)."""
        types = tuple(stage.question_types)
        if types not in self._samples_asking:
            eligible = np.array([i for i, sample in enumerate(self.data)
                                 if not types or any(task in types for task in sample.tasks)], dtype=np.int64)
            if len(eligible) == 0:
                hint = "; memory tasks need memory_questions_per_task > 0" if set(types) & set(MEMORY_TASKS) else ""
                raise TrainConfigError(f"stage {stage.name!r}: no sample in {self.config.data} asks any of "
                                       f"{list(types)}{hint}")
            self._samples_asking[types] = eligible
        return self._samples_asking[types]

    def window_depth_loss(self, stage: StageConfig, picks) -> tuple[torch.Tensor, dict[str, float]]:
        """Depth loss over every frame of one random window of geometry_window consecutive frames
        from each picked sample's episode (anywhere in it), decoded together as the engine does. With
        a depth refinement, on the depth it gives (each frame's pixels on the episode's camera rays,
        as the engine places them given a CameraInfo)."""
        length, device = self.model.config.geometry_window, self.config.device
        images, depth, rays = [], [], []
        for index in picks:
            sample = self.data[int(index)]
            episode = self._episodes.setdefault(sample.path, EpisodeDir(sample.path))
            start = int(self.rng.integers(max(1, len(episode) - length + 1)))
            frames = load_frames(episode, range(start, min(start + length, len(episode))), self.model.config.image_size)
            images.append(frames[0])
            depth.append(frames[1])
            rays.append(sample.rays)
        count = min(len(i) for i in images)          # an episode shorter than the window shortens them all
        images = torch.stack([i[-count:] for i in images]).to(device).float() / 255.0   # [B,L,3,H,W]
        depth = torch.stack([d[-count:] for d in depth]).to(device)                      # [B,L,H,W]
        model = self.model
        tokens = model.geometry.encode_frames(images.flatten(0, 1))                      # [B*L,P,D]
        out = model.geometry.decode_window(tokens.unflatten(0, images.shape[:2]), model.geometry_grid)
        predicted = out.depth.flatten(0, 1)                                              # [B*L,H,W]
        if model.config.depth_refinement.enabled:
            rays = torch.stack(rays).to(device)[:, None].expand(-1, count, -1, -1, -1)   # [B,L,H,W,3]
            local = points_on_rays(out.local_points.flatten(0, 1), rays.flatten(0, 1))
            local = model.depth_refinement(model.semantic(images.flatten(0, 1)), local,
                                           out.confidence.flatten(0, 1), out.geometry_tokens.flatten(0, 1))
            predicted = local[..., 2]
        loss = depth_loss(predicted, depth.flatten(0, 1))
        return stage.depth_loss_weight * loss, {**dict.fromkeys(METRICS, 0.0), "loss_depth": float(loss.detach())}

    def generated_samples(self, stage: StageConfig, count: int) -> list[GeneratedSample]:
        """`count` new scenes for this step (a "generated" stage), each asking at least one of the
        stage's question types; scenes that ask none (too few objects) are passed over."""
        c, model = self.config, self.model.config
        samples, index = [], 0
        while len(samples) < count:
            if index >= 10 * count:
                raise TrainConfigError(f"stage {stage.name!r}: {index} generated scenes, {len(samples)} of them "
                                       f"asking any of {stage.question_types}")
            sample = generated_oracle_sample(
                generated_scene_seed(c.seed, self.global_step, index), c.questions_per_task,
                c.memory_questions_per_task, stage.question_types, self.model.readout_tokens, model.bridge.memory_dim,
                model.fusion.position_scale_m, model.object_readout.order_channel, stage.perception_noise)
            index += 1
            if sample.prompts:
                samples.append(sample)
        return samples

    def memory_answer_loss(self, stage: StageConfig, memories: list[torch.Tensor], samples: list[AskedQuestions],
                           questions: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The samples' questions (TrainingEpisode or GeneratedSample) in one teacher-forced batch
        over their memories [1,M,C] each (streamed or oracle, the stage's memory; moved to the run's
        device here), plus the loss of each language probe (grounding, gather, choice, direction,
        bearing, order) the stage gives a weight."""
        tokens, prompts, answers, named, tasks, directions, ranks = [], [], [], [], [], [], []
        for memory, sample in zip(memories, samples):
            asked = pick_questions(sample.tasks, questions, self.rng, stage.balance_tasks, stage.question_types)
            tokens.append(memory.to(self.config.device))
            prompts.append([sample.prompts[i] for i in asked])
            answers.append([sample.answers[i] for i in asked])
            named += [sample.named_objects[i] for i in asked]
            tasks += [sample.tasks[i] for i in asked]
            directions += [sample.directions[i] for i in asked]
            ranks += [sample.category_ranks] * len(asked)
        # a stage that trains the number head alone keeps the frozen bridge's running statistics
        self.model.bridge.train("bridge" in stage.train)
        if self.model.bridge.number_head is not None:
            self.model.bridge.number_head.train()
        result = self.model.bridge.answer_pass(torch.cat(tokens), prompts, answers,
                                               stage.grounding_layer if stage.probes_language_model else None,
                                               stage.copy_layer if stage.copy_loss_weight > 0 else None)
        for task, question_loss in zip(tasks, result.question_losses.tolist()):
            self._answer_losses.setdefault(task, []).append(question_loss)
        loss = stage.answer_loss_weight * result.loss
        metrics = {**dict.fromkeys(METRICS, 0.0), "loss_answer": float(result.loss.detach())}
        flat_prompts = [p for ps in prompts for p in ps]
        flat_answers = [a for row in answers for a in row]
        head = self.model.bridge.number_head
        # each row's memory tokens, for memory pointers only (a copy of every memory per question)
        row_memory = (torch.cat([m.expand(len(ps), -1, -1) for m, ps in zip(tokens, prompts)])   # [Q,M,C]
                      if head is not None and head.pointers is not None else None)
        number_pass = functools.cache(lambda: self.number_head_pass(result, row_memory, flat_prompts, flat_answers))
        # the language probes and the copy loss: weight, the metric of their per-item measure, and the loss
        language_losses = {
            "grounding": (stage.grounding_loss_weight, "grounding_error_m",
                          lambda: self.grounding_loss(result.hidden, flat_prompts, named)),
            "gather": (stage.gather_loss_weight, "gather_error_m",
                       lambda: self.gather_loss(result.hidden, flat_prompts, named)),
            "choice": (stage.choice_loss_weight, "choice_accuracy",
                       lambda: self.choice_loss(result.hidden, flat_prompts, flat_answers, named)),
            "direction": (stage.direction_loss_weight, "direction_accuracy",
                          lambda: self.direction_loss(result.hidden, flat_prompts, directions)),
            "bearing": (stage.bearing_loss_weight, "bearing_error_deg",
                        lambda: self.bearing_loss(result.hidden, flat_prompts, tasks, named)),
            "order": (stage.order_loss_weight, "order_error",
                      lambda: self.order_loss(result.hidden, flat_prompts, ranks)),
            "copy": (stage.copy_loss_weight, "copy_attention",
                     lambda: self.copy_loss(result.attention, result.row_start, flat_prompts, flat_answers)),
            "number": (stage.number_loss_weight, "number_accuracy",
                       lambda: self.number_loss(result, number_pass())),
            "pointer": (stage.pointer_loss_weight, "pointer_accuracy",
                        lambda: self.pointer_loss(result, number_pass(), row_memory, flat_prompts, tasks, named)),
        }
        for name, (weight, measure, item_loss) in language_losses.items():
            if weight > 0:
                value, per_item = item_loss()
                loss = loss + weight * value
                metrics[f"loss_{name}"] = float(value.detach())
                metrics[measure] = float(per_item.float().mean()) if len(per_item) else 0.0
        return loss, metrics

    def copy_loss(self, attention: torch.Tensor, row_start: int, prompts: list[str],
                  answers: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of the copy head's attention (head 0 of attention [Q,H,L,K], the rows' positions
        over the prompt's keys, row token j at key row_start + j): at the position that predicts
        each answer token that is a word of an object category's name and is in the question, minus
        the log of the attention mass on the question's tokens equal to it; and that mass [N] per
        such answer token (N = 0 when no answer names a category; the loss is then 0)."""
        bridge = self.model.bridge
        words = {t for category in CATEGORIES for t in bridge.answer_ids(category)[:-1]}   # EOS dropped
        rows, queries, keys = [], [], []
        for row, (prompt, answer) in enumerate(zip(prompts, answers)):
            question = bridge.question_ids(prompt)
            for k, token in enumerate(bridge.target_ids(prompt, answer)):
                sources = [j for j, t in enumerate(question) if t == token]
                if token in words and sources:
                    rows.append(row)
                    queries.append(len(question) + k - 1)      # the position that predicts answer token k
                    keys.append(sources)
        if not rows:
            return attention.sum() * 0.0, attention.new_zeros(0)
        weights = attention[rows, 0, queries]                                             # [N,K]
        mask = torch.zeros_like(weights, dtype=torch.bool)
        for n, sources in enumerate(keys):
            mask[n, [row_start + j for j in sources]] = True
        mass = (weights * mask).sum(dim=-1)                                               # [N]
        return -mass.clamp(min=1e-6).log().mean(), mass.detach()

    def number_rows(self, prompts: list[str], answers: list[str]) -> tuple[list[int], list[float]]:
        """The rows whose question the number head answers (a measure: asks_measure) with a positive
        answer, and the answers' values."""
        rows, values = [], []
        for row, (prompt, answer) in enumerate(zip(prompts, answers)):
            value = parse_number(answer) if asks_measure(prompt) else None
            if value is not None and value > 0:
                rows.append(row)
                values.append(value)
        return rows, values

    def number_head_pass(self, result: AnswerPass, memory: torch.Tensor, prompts: list[str],
                         answers: list[str]) -> NumberPass:
        """The number head at the last prompt token of the rows it answers (number_rows; result:
        their answer_pass; memory [Q,M,C] the memory tokens each row read, read by memory pointers
        only: None without them). One pass serves the number and the pointer losses."""
        rows, values = self.number_rows(prompts, answers)
        if not rows:
            return NumberPass(rows, values)
        states = self.answer_states(result.final, [prompts[r] for r in rows], rows)
        if self.model.bridge.number_head.pointers is None:
            return NumberPass(rows, values, *self.model.bridge.number_head(states))
        inputs = self.model.bridge.pointer_inputs(result, [prompts[r] for r in rows], rows, memory[rows])
        return NumberPass(rows, values, *self.model.bridge.number_head(states, inputs))

    @staticmethod
    def number_loss(result: AnswerPass, number: NumberPass) -> tuple[torch.Tensor, torch.Tensor]:
        """Negative log-likelihood of each positive number answer under the number head's Gaussian
        (number: its pass over result's rows); and the relative accuracy (MRA) of the Gaussian's
        median [N] (N = 0 when no question asks a measure; the loss is then 0)."""
        if not number.rows:
            return result.final.sum() * 0.0, result.final.new_zeros(0)
        truth = torch.tensor(number.values, device=result.final.device)
        median = number.mean.detach().exp().cpu().numpy()
        accuracy = relative_accuracy(median, truth.cpu().numpy()).diagonal()
        return NumberHead.nll(number.mean, number.std, truth).mean(), torch.tensor(accuracy)

    def pointer_loss(self, result: AnswerPass, number: NumberPass, memory: torch.Tensor, prompts: list[str],
                     tasks: list[str], named: list[list[tuple[str, tuple[float, float, float]]]]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The memory pointers' supervision (StageConfig.pointer_loss_weight) on the measure questions
        (number: the head's pass over result's rows), mean over questions; and for each pointer with
        a target, whether its largest memory weight is on it [N] (N = 0 when no measure question has
        one; the loss is then 0)."""
        if not number.rows:
            return result.final.sum() * 0.0, result.final.new_zeros(0)
        rows, reading = number.rows, number.reading
        bridge = self.model.bridge
        classes = self.model.config.object_readout.classes

        def attention_cost(logits: torch.Tensor, targets) -> torch.Tensor:
            # cross-entropy of a softmax over `logits` [K] on the set `targets`
            targets = torch.as_tensor(targets, device=logits.device)
            return torch.logsumexp(logits, 0) - torch.logsumexp(logits[targets], 0)

        terms, hits = [], []
        for i, row in enumerate(rows):
            read, prompt = token_boxes(memory[row], bridge.number_head.pointers.layout), prompts[row]   # [M]
            # each name: (its words in the question, its class, its true centre or None for the room)
            names = [(bridge.phrase_positions(prompt, classes[ROOM_CLASS]), ROOM_CLASS, None)] \
                if tasks[row] == "room_size_estimation" else \
                [(bridge.phrase_positions(prompt, category), classes.index(category), centre)
                 for category, centre in named[row][:POINTERS] if category in classes]
            targets = []
            for words, k, centre in names:
                candidates = (read.classes == k).nonzero().flatten()
                if len(candidates) and centre is not None:   # the one of its class nearest the object's true centre
                    near = (read.boxes[candidates, :3] - read.boxes.new_tensor(centre)).norm(dim=-1)
                    candidates = candidates[near.argmin()][None]
                targets.append((words, candidates))
            if not targets or any(len(w) == 0 or len(t) == 0 for w, t in targets):
                continue
            # a distance is the same either way round: A and B may take the two objects in either order
            orders = [targets] if len(targets) == 1 else [targets, targets[::-1]]
            costs = [sum(attention_cost(reading.word_logits[i, p], w) + attention_cost(reading.logits[i, p], t)
                         for p, (w, t) in enumerate(order)) for order in orders]
            best = min(range(len(orders)), key=lambda j: float(costs[j]))
            terms.append(costs[best] / len(targets))
            hits += [bool(torch.isin(reading.logits[i, p].argmax(), t)) for p, (_, t) in enumerate(orders[best])]
        if not terms:
            return result.final.sum() * 0.0, result.final.new_zeros(0)
        return torch.stack(terms).mean(), torch.tensor(hits, dtype=torch.float32)

    def grounding_loss(self, hidden: torch.Tensor, prompts: list[str],
                       named: list[list[tuple[str, tuple[float, float, float]]]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared error (summed over axes, in units of position_scale_m, mean over names) of the
        grounding probe's world centre at the last token of every name of a named object (hidden
        [Q,L,d], the questions' rows) against the object's centre; and each name's error in metres
        [N] (N = 0 when no question names an object alone in its category; the loss is then 0)."""
        rows, columns, centres = self.at_names(prompts, named)
        if not rows:
            return hidden.sum() * 0.0, hidden.new_zeros(0)
        scale = self.model.config.fusion.position_scale_m
        predicted = self.probes["grounding"](hidden[rows, columns])                      # [N,3]
        target = torch.tensor(centres, device=hidden.device) / scale                     # [N,3]
        loss = (predicted - target).square().sum(dim=-1).mean()
        return loss, (predicted.detach() - target).norm(dim=-1) * scale

    def gather_loss(self, hidden: torch.Tensor, prompts: list[str],
                    named: list[list[tuple[str, tuple[float, float, float]]]]) -> tuple[torch.Tensor, torch.Tensor]:
        """As grounding_loss, for the gather probe: at each question's last prompt token (hidden
        [Q,L,d]), the centres of the objects it names in the order it first names them (slot k:
        the k-th, up to GATHERED_OBJECTS); and each slot's error in metres [N]."""
        rows, slots, centres = [], [], []
        for row, (prompt, objects) in enumerate(zip(prompts, named)):
            for slot, (_, centre) in enumerate(self.named_in_order(prompt, objects)):
                rows.append(row)
                slots.append(slot)
                centres.append(centre)
        if not rows:
            return hidden.sum() * 0.0, hidden.new_zeros(0)
        predicted = self.probes["gather"](self.answer_states(hidden, prompts))                 # [Q,5*3]
        predicted = predicted.view(len(prompts), GATHERED_OBJECTS, 3)[rows, slots]            # [N,3]
        scale = self.model.config.fusion.position_scale_m
        target = torch.tensor(centres, device=hidden.device) / scale                           # [N,3]
        loss = (predicted - target).square().sum(dim=-1).mean()
        return loss, (predicted.detach() - target).norm(dim=-1) * scale

    def choice_loss(self, hidden: torch.Tensor, prompts: list[str], answers: list[str],
                    named: list[list[tuple[str, tuple[float, float, float]]]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of the choice probe: at each question's last prompt token (hidden [Q,L,d]),
        which of the objects it names (slot in the order named, as for gather_loss) its answer
        names first; and whether the probe's pick was right [N], for the N questions whose answer
        (a letter's option text, or the text itself) is one of their named objects or, for an
        appearance order, lists one first (the object seen first: the order's first comparison)."""
        rows, slots = [], []
        for row, (prompt, answer, objects) in enumerate(zip(prompts, answers, named)):
            text = question_option_texts(prompt).get(answer.strip(), answer.strip())
            first = text.split(", ")[0]
            order = [category for category, _ in self.named_in_order(prompt, objects)]
            if first in order:
                rows.append(row)
                slots.append(order.index(first))
        return self.classifier_loss("choice", hidden, prompts, rows, slots)

    def direction_loss(self, hidden: torch.Tensor, prompts: list[str],
                       directions: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of the direction probe: at each question's last prompt token (hidden
        [Q,L,d]), which COMPASS direction it asks; and whether the probe's pick was right [N], for
        the N questions that ask one (the memory comparisons)."""
        rows = [row for row, direction in enumerate(directions) if direction is not None]
        return self.classifier_loss("direction", hidden, prompts, rows,
                                    [list(COMPASS).index(directions[r]) for r in rows])

    def bearing_loss(self, hidden: torch.Tensor, prompts: list[str], tasks: list[str],
                     named: list[list[tuple[str, tuple[float, float, float]]]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared error of the bearing probe: at each relative-direction or route question's last
        prompt token (hidden [Q,L,d]), (cos, sin) of each angle the question turns on
        (sim.questions.relation_angles over its named objects; slot k: the k-th angle); and each
        angle's error in degrees [N] (N = 0 when no question asks a direction or a route)."""
        rows, slots, targets = [], [], []
        for row, (task, objects) in enumerate(zip(tasks, named)):
            if task not in BEARING_TASKS:
                continue
            for slot, angle in enumerate(relation_angles(task, [centre for _, centre in objects])):
                rows.append(row)
                slots.append(slot)
                targets.append((math.cos(math.radians(angle)), math.sin(math.radians(angle))))
        if not rows:
            return hidden.sum() * 0.0, hidden.new_zeros(0)
        predicted = self.probes["bearing"](self.answer_states(hidden, prompts))             # [Q,2*2]
        predicted = predicted.view(len(prompts), BEARINGS, 2)[rows, slots]                 # [N,2]
        target = torch.tensor(targets, device=hidden.device)                               # [N,2]
        loss = (predicted - target).square().sum(dim=-1).mean()
        p, t = predicted.detach(), target
        error = torch.atan2(p[:, 0] * t[:, 1] - p[:, 1] * t[:, 0], (p * t).sum(dim=-1)).abs()
        return loss, torch.rad2deg(error)

    def order_loss(self, hidden: torch.Tensor, prompts: list[str],
                   ranks: list[dict[str, float]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared error (mean over names) of the order probe at the last token of every name of a
        category the question names (hidden [Q,L,d], the questions' rows) against the rank of the
        category's first sighting (ranks: per question, data.first_sighting_ranks); and each
        name's absolute error in rank [N] (N = 0 when no question names a category seen)."""
        rows, columns, targets = self.at_names(prompts, [r.items() for r in ranks])
        if not rows:
            return hidden.sum() * 0.0, hidden.new_zeros(0)
        predicted = self.probes["order"](hidden[rows, columns])[:, 0]                    # [N]
        target = torch.tensor(targets, device=hidden.device, dtype=predicted.dtype)      # [N]
        return (predicted - target).square().mean(), (predicted.detach() - target).abs()

    def at_names(self, prompts: list[str], values) -> tuple[list[int], list[int], list]:
        """Where a probe reads each question's names: for every (category, value) of values[row],
        the row, the column of the last token of each name of the category in prompts[row], and
        the value there."""
        rows, columns, targets = [], [], []
        for row, (prompt, by_category) in enumerate(zip(prompts, values)):
            for category, value in by_category:
                if category not in prompt:      # spares tokenizing the prompt for a category it does not name
                    continue
                for column in self.model.bridge.phrase_positions(prompt, category):
                    rows.append(row)
                    columns.append(column)
                    targets.append(value)
        return rows, columns, targets

    def classifier_loss(self, probe: str, hidden: torch.Tensor, prompts: list[str], rows: list[int],
                        classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of a classifying language probe at the last prompt token of the questions
        `rows` (hidden [Q,L,d]) against their `classes`, and whether its pick was right [N]."""
        if not rows:
            return hidden.sum() * 0.0, torch.zeros(0, dtype=torch.bool)
        logits = self.probes[probe](self.answer_states(hidden, [prompts[r] for r in rows], rows))   # [N,K]
        target = torch.tensor(classes, device=hidden.device)
        return F.cross_entropy(logits, target), (logits.detach().argmax(dim=-1) == target).cpu()

    def named_in_order(self, prompt: str, objects: list[tuple[str, tuple[float, float, float]]]) -> list:
        """The (category, centre) of the objects `prompt` names, in the order it first names them,
        up to GATHERED_OBJECTS (the gather and choice probes' slots)."""
        bridge = self.model.bridge
        first = sorted((min(positions), category, centre) for category, centre in objects
                       if (positions := bridge.phrase_positions(prompt, category)))
        return [(category, centre) for _, category, centre in first[:GATHERED_OBJECTS]]

    def answer_states(self, hidden: torch.Tensor, prompts: list[str], rows: list[int] | None = None) -> torch.Tensor:
        """[len(prompts),d]: each prompt's hidden state at its last prompt token, from hidden's row
        `rows[i]` (default: row i)."""
        rows = range(len(prompts)) if rows is None else rows
        at = torch.tensor([self.model.bridge.answer_position(p) for p in prompts], device=hidden.device)
        return hidden[torch.tensor(list(rows), device=hidden.device), at]

    def run(self) -> Path:
        c = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        log_path = self.out / "log.jsonl"
        started = time.perf_counter()
        optimizer = None
        for self.stage_index in range(self.stage_index, len(c.stages)):
            stage = c.stages[self.stage_index]
            params = self.trainable_parameters(stage)
            optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=c.weight_decay)
            # resuming inside this stage; a stage added after a finished run starts its optimizer
            # fresh, as every stage of an unbroken run does
            if self._optimizer_state is not None and self.stage_step > 0:
                saved = len(self._optimizer_state["param_groups"][0]["params"])
                if saved != len(params):
                    raise TrainConfigError(
                        f"stage {stage.name!r}: the run stopped at its step {self.stage_step} training {saved} "
                        f"tensors, and the config now trains {len(params)} (its modules or probe loss weights "
                        f"changed); a stage's optimizer state resumes only as it was: change the stages "
                        f"after it, or add a stage")
                optimizer.load_state_dict(self._optimizer_state)
            self._optimizer_state = None
            schedule = lambda s, st=stage: min(1.0, (s + 1) / max(1, st.warmup_steps)) * 0.5 * (  # noqa: E731
                1 + math.cos(math.pi * min(1.0, s / st.steps)))
            bar = tqdm(total=stage.steps, initial=self.stage_step, desc=f"stage {stage.name}", unit="step",
                       disable=not self.progress)
            while self.stage_step < stage.steps:
                for group in optimizer.param_groups:
                    group["lr"] = stage.lr * schedule(self.stage_step)
                loss, metrics = self.step_losses(stage)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
                optimizer.step()
                self.stage_step += 1
                self.global_step += 1
                bar.update(1)
                bar.set_postfix({k.removeprefix("loss_"): f"{v:.3f}" for k, v in metrics.items() if v})
                if self.stage_step % c.log_every == 0 or self.stage_step == stage.steps:
                    # the answer loss by question type, over every question since the last line
                    by_type = {t: float(np.mean(v)) for t, v in sorted(self._answer_losses.items())}
                    self._answer_losses.clear()
                    with log_path.open("a") as log:
                        log.write(json.dumps({"stage": stage.name, "step": self.global_step,
                                              "loss": float(loss.detach()), **metrics,
                                              **({"loss_answer_by_type": by_type} if by_type else {}),
                                              "lr": optimizer.param_groups[0]["lr"],
                                              "seconds": round(time.perf_counter() - started, 1)}) + "\n")
                if self.stage_step % c.checkpoint_every == 0:
                    self.save(optimizer)
            bar.close()
            self.save(optimizer)
            self.stage_step = 0
        self.stage_index = len(c.stages)
        if optimizer is not None:
            self.save(optimizer)
        plot_curves(log_path, self.out / "curves.png")
        return self.out / "checkpoint"


def plot_curves(log_path: Path, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()] if log_path.exists() else []
    if not rows:
        return
    panels = (("loss_depth", "depth: mean |log d - log d*|"), ("loss_category", "patch category: cross-entropy"),
              ("position_error_m", "patch category position: error (m)"),
              ("point_error_m", "patch world point: error (m)"),
              ("loss_objectness", "readout objectness: cross-entropy"),
              ("loss_answer", "answer tokens: cross-entropy"),
              ("grounding_error_m", "grounding probe at named objects: error (m)"),
              ("gather_error_m", "gather probe at the answer: error (m)"),
              ("choice_accuracy", "choice probe at the answer: accuracy"),
              ("direction_accuracy", "direction probe at the answer: accuracy"),
              ("bearing_error_deg", "bearing probe at the answer: error (degrees)"),
              ("order_error", "order probe at named categories: rank error"),
              ("copy_attention", "copy head: attention on the answer's name"),
              ("number_accuracy", "number head: relative accuracy (MRA) of its median"))
    fig, axes = plt.subplots(3, 5, figsize=(25, 11.4))
    by_type = axes.flat[len(panels)]
    for task in dict.fromkeys(t for r in rows for t in r.get("loss_answer_by_type", {})):
        points = [(r["step"], r["loss_answer_by_type"][task]) for r in rows if task in r.get("loss_answer_by_type", {})]
        by_type.plot(*zip(*points), label=task)
    # log scale: a new type's first steps (10 and more) would flatten the learnt ones' (0.01-1)
    by_type.set(xlabel="step", title="answer tokens by question type: cross-entropy", yscale="log")
    for ax, (key, title) in zip(axes.flat, panels):
        for index, stage in enumerate(dict.fromkeys(r["stage"] for r in rows)):
            # a loss a step did not compute is logged as 0 (the position loss skips clips without poses)
            points = [(r["step"], r[key]) for r in rows if r["stage"] == stage and r.get(key)]
            if points:      # one colour per stage in every panel, whichever stages a panel has
                ax.plot(*zip(*points), label=stage, color=f"C{index % 10}")
        ax.set(xlabel="step", title=title)
    for ax in axes.flat[len(panels) + 1:]:       # the grid's spare cells
        ax.remove()
    for ax in axes.flat[:len(panels) + 1]:
        if ax.lines:
            ax.legend(fontsize=8)
        else:                        # a loss no stage of this run weighs
            ax.text(0.5, 0.5, "not in this run", ha="center", va="center", transform=ax.transAxes, color="grey")
            ax.set(xticks=[], yticks=[])
    fig.tight_layout()
    with atomic_file(png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
