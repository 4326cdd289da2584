"""Episodes as training samples, cached in memory: an evenly spaced clip of frames up to the
frame the questions are asked at, resized to the model's input, with depth, semantic classes,
world points, poses and stamps."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ..camera import world_points
from ..evaluation.data import episode_dirs
from ..evaluation.predictors import format_prompt
from ..model.object_memory import ObjectBox, object_tokens, sighting_ranks
from ..model.vlm2 import input_pixel_rays
from ..sim.episode import EpisodeDir
from ..sim.questions import Balancer, QuestionGenerator, generate_questions
from ..sim.scene import SEMANTIC_CLASSES, Scene, generate_scene, semantic_classes
from .perception_noise import PerceptionNoise

# `vlm2 sim dataset` gives its episodes seeds below this (sim.cli.episode_seed), so a scene generated
# for training from a seed at or above it is in no data set, held-out ones included.
GENERATED_SCENE_SEEDS = 1_000_000


@dataclass(frozen=True)
class TrainingEpisode:
    episode_id: str
    images: torch.Tensor        # [T,3,H,W] uint8 at the model's input size
    depth: torch.Tensor         # [T,H,W] float32 metres (rendered z-depth)
    classes: torch.Tensor       # [T,H,W] uint8 sim.scene.SEMANTIC_CLASSES index (rendered masks)
    points: torch.Tensor        # [T,H,W,3] float32 world point of each pixel (rendered depth + pose)
    poses: torch.Tensor         # [T,4,4] float32 camera-to-world
    rays: torch.Tensor          # [H,W,3] float32 the camera's pixel ray (z = 1) at the model's input size
    stamps_ns: torch.Tensor     # [T] int64
    frame_indices: torch.Tensor  # [T] int64, in the episode
    prompts: list[str]          # questions as the model reads them (VSI-Bench prompt)
    answers: list[str]          # ground truth as answer text
    tasks: list[str]            # each question's question_type
    # per question: (category, world centre in metres) of each object it names that is alone in its
    # category in the scene, so its name in the question means that one object
    named_objects: list[list[tuple[str, tuple[float, float, float]]]]
    directions: list[str | None]   # per question: the compass word a memory comparison asks, else None
    path: str                   # the episode directory (every frame, for streamed memories)
    asked_at: int               # frame index the questions are asked at
    stream_key: str             # which frames a streamed memory holds: the episode's content and asked_at
    category_ranks: dict[str, float]   # first_sighting_ranks at asked_at


def clip_indices(asked_at: int, clip_frames: int) -> np.ndarray:
    """clip_frames indices evenly spaced over [0, asked_at], always ending at asked_at."""
    return np.unique(np.linspace(0, asked_at, num=min(clip_frames, asked_at + 1)).round().astype(int))


def load_frames(episode: EpisodeDir, indices, image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames `indices` of an episode at the model's input size (H, W): images [T,3,H,W] uint8 and
    rendered depth [T,H,W] float32 metres (nearest-neighbour, so no depth blends two surfaces)."""
    h, w = image_size
    images = np.stack([cv2.resize(episode.frame(i), (w, h), interpolation=cv2.INTER_AREA) for i in indices])
    depth = np.stack([cv2.resize(episode.depth(i), (w, h), interpolation=cv2.INTER_NEAREST) for i in indices])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(depth)


def load_world_points(episode: EpisodeDir, indices, image_size: tuple[int, int]) -> torch.Tensor:
    """The world point of every pixel of frames `indices` (rendered depth and pose) at the model's
    input size: [T,H,W,3] float32 metres (nearest-neighbour like depth and classes, so a pixel's
    point and class belong together)."""
    h, w = image_size
    return torch.from_numpy(np.stack([cv2.resize(world_points(episode.depth(i), episode.intrinsics, episode.poses[i]),
                                                 (w, h), interpolation=cv2.INTER_NEAREST) for i in indices]))


def named_objects(scene: Scene, question: dict) -> list[tuple[str, tuple[float, float, float]]]:
    """(category, world centre) of the objects `question` names (its object_ids) that are the only
    one of their category: a counting question's instances, say, have no single position."""
    by_id = {o.id: o for o in scene.objects}
    named = (by_id[int(i)] for i in question.get("object_ids", ()))
    return [(o.category, tuple(float(v) for v in o.center)) for o in named if scene.count(o.category) == 1]


def oracle_memory(scene: Scene, visibility: dict[int, tuple[int, int, int]], asked_at: int, tokens: int,
                  dim: int, scale_m: float, order_channel: bool = False) -> torch.Tensor:
    """What a perfect memory would hand the language model at frame `asked_at` ("oracle" stages):
    [1,tokens,dim] in model.object_memory's layout, the room's box first, then each object seen up
    to that frame (`visibility`: id -> (first seen, ...)), in the order first seen (and with
    `order_channel` each one's rank in it: object_tokens)."""
    boxes = oracle_boxes(scene, visibility, asked_at)
    if len(boxes) > tokens:
        raise ValueError(f"scene {scene.name}: {len(boxes) - 1} objects seen by frame {asked_at}, more than the "
                         f"{tokens - 1} tokens an oracle memory has for them")
    return object_tokens(boxes, len(SEMANTIC_CLASSES), tokens, dim, scale_m, order_channel)


def model_oracle_memory(model, scene: Scene, visibility: dict[int, tuple[int, int, int]], asked_at: int) -> torch.Tensor:
    """oracle_memory in `model`'s (a VLM2Model's) readout layout: its token count, memory width,
    position scale and order channel."""
    c = model.config
    return oracle_memory(scene, visibility, asked_at, model.readout_tokens, c.bridge.memory_dim,
                         c.fusion.position_scale_m, c.object_readout.order_channel)


def oracle_boxes(scene: Scene, visibility: dict[int, tuple[int, int, int]], asked_at: int) -> list[ObjectBox]:
    """The truth at frame `asked_at` as object_memory boxes: the room's, then each object seen by
    then (`visibility`: id -> (first seen, ...)) in the order first seen."""
    seen = sorted((visibility[o.id][0], o.id, o) for o in scene.objects
                  if o.id in visibility and visibility[o.id][0] <= asked_at)
    room = scene.room
    boxes = [ObjectBox(0, (room.width / 2, room.depth / 2, room.height / 2), (room.width, room.depth, room.height))]
    return boxes + [ObjectBox(SEMANTIC_CLASSES.index(o.category), tuple(o.center), tuple(o.size), first_seen)
                    for first_seen, _, o in seen]


def first_sighting_ranks(scene: Scene, visibility: dict[int, tuple[int, int, int]], asked_at: int) -> dict[str, float]:
    """Each category seen by frame `asked_at`: the rank of its first sighting (its earliest object's)
    among the seen objects' distinct first sightings, 0 the earliest to 1 the latest, the scale of
    the object tokens' order channel (model.object_memory.appearance_ranks). An appearance order
    sorts the categories it names by these."""
    first = {o.id: visibility[o.id][0] for o in scene.objects if o.id in visibility and visibility[o.id][0] <= asked_at}
    rank = sighting_ranks(first.values())
    earliest: dict[str, int] = {}
    for o in scene.objects:
        if o.id in first:
            earliest[o.category] = min(earliest.get(o.category, first[o.id]), first[o.id])
    return {category: rank[t] for category, t in earliest.items()}


def question_fields(scene: Scene, questions: list[dict]) -> tuple[list[str], list[str], list[str], list, list]:
    """A sample's question fields from question records (AskedQuestions): the prompts as the model
    reads them, the ground truths as answer text, the question types, each one's named objects and
    the compass direction it asks (None for all but the memory comparisons)."""
    return ([format_prompt(q) for q in questions], [str(q["ground_truth"]) for q in questions],
            [str(q["question_type"]) for q in questions], [named_objects(scene, q) for q in questions],
            [q.get("direction") for q in questions])


class AskedQuestions(Protocol):
    """A sample's questions as the answer loss reads them (TrainingEpisode, GeneratedSample)."""
    prompts: list[str]
    answers: list[str]
    tasks: list[str]
    named_objects: list[list[tuple[str, tuple[float, float, float]]]]
    directions: list[str | None]
    category_ranks: dict[str, float]


@dataclass(frozen=True)
class GeneratedSample:
    """A scene generated for one training step of an oracle stage, never rendered: its oracle
    memory and questions, fields as in TrainingEpisode."""
    scene_seed: int
    memory: torch.Tensor        # [1,M,C] data.oracle_memory
    prompts: list[str]
    answers: list[str]
    tasks: list[str]
    named_objects: list[list[tuple[str, tuple[float, float, float]]]]
    directions: list[str | None]
    category_ranks: dict[str, float]    # first_sighting_ranks once every object is seen


def generated_scene_seed(run_seed: int, step: int, index: int) -> int:
    """The scene seed of sample `index` of training step `step` (a function of the three, so a
    resumed run draws the same scenes), at or above GENERATED_SCENE_SEEDS."""
    offset = int(np.random.SeedSequence([int(run_seed), int(step), int(index)]).generate_state(1)[0])
    return GENERATED_SCENE_SEEDS + offset % (2**31 - GENERATED_SCENE_SEEDS)


def generated_oracle_sample(scene_seed: int, questions_per_task: int, memory_questions_per_task: int,
                            question_types: list[str], tokens: int, dim: int, scale_m: float,
                            order_channel: bool = False, noise: PerceptionNoise | None = None) -> GeneratedSample:
    """A new scene from `scene_seed` with its oracle memory and questions (only `question_types`
    if given). No camera walks it: every object counts as seen, one a frame in a random order, and
    the questions are asked after the last (the data sets' episodes see 89-97 % of their objects by
    the question), so the memory holds every object and appearance order is the order of its tokens;
    with `noise`, its boxes are made as wrong as a perception's (PerceptionNoise)."""
    scene = generate_scene(scene_seed)
    order = np.random.default_rng([scene_seed, 0x0DE]).permutation([o.id for o in scene.objects])
    visibility = {int(object_id): (frame, frame, 1) for frame, object_id in enumerate(order)}
    stamps_ns = np.arange(len(order) + 1) * 100_000_000              # 10 Hz; asked after the last object
    questions = QuestionGenerator(scene, visibility, stamps_ns, episode_id=f"generated_{scene_seed}",
                                  seed=scene_seed).generate(questions_per_task, memory_questions_per_task,
                                                            question_types)
    boxes = oracle_boxes(scene, visibility, len(order))
    if noise is not None and noise.enabled:
        # the questions and the probes' targets stay the truth: only what the memory says is perceived
        boxes = noise.apply(boxes, len(order), np.random.default_rng([scene_seed, 0x9015E]))[:tokens]
    memory = object_tokens(boxes, len(SEMANTIC_CLASSES), tokens, dim, scale_m, order_channel)
    return GeneratedSample(scene_seed, memory, *question_fields(scene, questions),
                           first_sighting_ranks(scene, visibility, len(order)))


def load_training_episode(path: Path, clip_frames: int, image_size: tuple[int, int],
                          questions_per_task: int | None = None,
                          balancer: Balancer | None = None,
                          memory_questions_per_task: int = 0) -> list[TrainingEpisode]:
    """One sample per question frame of the episode (the generator asks at one frame per episode).
    With `questions_per_task`, the questions are generated again from the episode's scene at the
    same frame, that many per task (the frames, and so the memory they stream into, are unchanged),
    plus `memory_questions_per_task` of each training-only MEMORY_TASKS; `balancer` is then the data
    set's shared answer balancer."""
    episode = EpisodeDir(path)
    h, w = image_size
    by_frame: dict[int, list[dict]] = {}
    for q in episode.questions():
        by_frame.setdefault(int(q.get("frame_index", len(episode) - 1)), []).append(q)
    if questions_per_task is not None:
        by_frame = {asked_at: generate_questions(episode, questions_per_task, frame_index=asked_at, balancer=balancer,
                                                      memory_per_task=memory_questions_per_task)
                    for asked_at in by_frame}
    digest = episode.content_digest()
    samples = []
    for asked_at, questions in sorted(by_frame.items()):
        idx = clip_indices(asked_at, clip_frames)
        images, depth = load_frames(episode, idx, image_size)
        classes = np.stack([cv2.resize(semantic_classes(episode.scene, episode.mask(i)), (w, h),
                                       interpolation=cv2.INTER_NEAREST) for i in idx])
        points = load_world_points(episode, idx, image_size)
        samples.append(TrainingEpisode(
            episode.episode_id, images, depth, torch.from_numpy(classes), points,
            torch.from_numpy(episode.poses[idx].astype(np.float32)),
            input_pixel_rays(episode.intrinsics, image_size),
            torch.from_numpy(episode.stamps_ns[idx].astype(np.int64)), torch.from_numpy(idx.astype(np.int64)),
            *question_fields(episode.scene, questions),
            str(path), asked_at, f"{digest}@{asked_at}", first_sighting_ranks(episode.scene, episode.visibility(),
                                                                               asked_at)))
    return samples


def load_training_set(data: str | Path, clip_frames: int, image_size: tuple[int, int],
                      questions_per_task: int | None = None,
                      memory_questions_per_task: int = 0) -> list[TrainingEpisode]:
    paths = episode_dirs(data)
    if not paths:
        raise ValueError(f"{data}: no episode directories (write some with `vlm2 sim dataset`)")
    balancer = Balancer()
    samples = []
    for path in tqdm(paths, desc="loading episodes", unit="episode"):
        samples += load_training_episode(path, clip_frames, image_size, questions_per_task, balancer,
                                         memory_questions_per_task)
    return samples
