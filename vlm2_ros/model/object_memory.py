"""A memory as a list of boxes: the room, then one box per object in the order first seen, each
written into one token a language bridge reads (its semantic class one-hot, then the box's centre
and extents, and with `order_channel` its place in the order first seen).

Two producers share the layout. The synthetic world's ground truth (training.data.oracle_memory)
gives the language model a perfect memory, the diagnostic its "oracle" training stages read.
`perceive_objects` gives the same form from what a perception reads in the memory's tokens: per
token, the share of each semantic class in its patch and its world point; tokens that show one
class are grouped by place into objects. A bridge that learnt to answer from the oracle's boxes
can then read perceived ones.

`ObjectReadout` is that perception as the model's readout at question time (VLM2Config.object_readout):
a linear category head reads every token of the dual memory (episodic entries and working window),
the points the entries carry place them, and the language model reads the boxes instead of pooled
patch tokens. Its cost is fixed by the memory's capacity, like the pooled readout's.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..sim.scene import SEMANTIC_CLASSES
from .dual_memory import MemoryState, memory_entries
from .memory_readout import EPISODIC, WORKING, ReadoutTokens
from .prompt import asks_about_categories, asks_measure, expected_answer_kind

ROOM_CLASS = 0                  # semantic class 0 is the room shell (walls, floor, ceiling)
BOX_CHANNELS = 6                # centre (x, y, z) and extents (x, y, z) after the class one-hot
ORDER_CHANNELS = 1              # with order_channel: the object's rank by first sighting, after the box
MIN_EXTENT_M = 0.1              # a box perceived from one token has no spread to measure
GROUPINGS = ("greedy", "peaks")
PEAK_SIGMA_M = 0.3              # "peaks": the density's Gaussian kernel on the floor plane
PEAK_MIN_RATIO = 0.1            # ... a peak's class density over every token's density there, at least
PEAK_MIN_SUPPORT = 1.0          # ... and its class density (kernel-weighted shares), at least
# ObjectReadoutConfig fields that no weight depends on: a checkpoint runs with others (MemoryOverrides)
READOUT_SETTINGS = ("min_share", "merge_radius_m", "class_min_share", "class_merge_radius_m", "grouping",
                    "best_box_per_named_class")


def weighted_readout_fields(readout: object) -> list[str]:
    """The fields of an object_readout change that are not READOUT_SETTINGS (all, if it is no mapping):
    a checkpoint's weights were trained with its own values of those."""
    if not isinstance(readout, dict):
        return [repr(readout)]
    return sorted(set(readout) - set(READOUT_SETTINGS))


@dataclass(frozen=True)
class ObjectBox:
    semantic_class: int                     # index into the semantic classes (ROOM_CLASS: the room)
    centre: tuple[float, float, float]      # metres, world frame
    size: tuple[float, float, float]        # extents, metres
    first_seen: int = 0                     # frame index; boxes are laid out in this order
    support: float = 0.0                    # perceived: the summed class share of its tokens
    token: int = -1                         # perceived: its most certain token (index into the readings); -1: none


def object_tokens(boxes: list[ObjectBox], num_classes: int, tokens: int, dim: int, scale_m: float,
                  order_channel: bool = False) -> torch.Tensor:
    """[1,tokens,dim]: boxes[i] in token i (class one-hot, then centre and extents in units of
    scale_m); every other channel and token is 0. With `order_channel`, the channel after the
    extents holds each object's rank by first sighting (appearance_ranks), so an order is a value
    the language model compares like a distance rather than a token position it must count."""
    needed = num_classes + BOX_CHANNELS + (ORDER_CHANNELS if order_channel else 0)
    if dim < needed:
        raise ValueError(f"an object token needs {needed} channels, the language bridge reads {dim}")
    if len(boxes) > tokens:
        raise ValueError(f"{len(boxes)} boxes, more than the {tokens} tokens of the memory")
    memory = torch.zeros(1, tokens, dim)
    for slot, box in enumerate(boxes):
        memory[0, slot, box.semantic_class] = 1.0
        memory[0, slot, num_classes:num_classes + BOX_CHANNELS] = torch.tensor([*box.centre, *box.size]) / scale_m
    if order_channel:
        memory[0, :len(boxes), num_classes + BOX_CHANNELS] = torch.tensor(appearance_ranks(boxes))
    return memory


def appearance_ranks(boxes: list[ObjectBox]) -> list[float]:
    """Each box's rank among the objects' distinct first sightings, 0 (the earliest) to 1 (the
    latest); objects first seen in one frame share a rank; the room's box 0. Ranks, not frame
    indices: they stay in [0, 1] however long the robot has run."""
    rank = sighting_ranks(b.first_seen for b in boxes if b.semantic_class != ROOM_CLASS)
    return [0.0 if b.semantic_class == ROOM_CLASS else rank[b.first_seen] for b in boxes]


def sighting_ranks(frames) -> dict[int, float]:
    """Each distinct first-sighting frame's rank, 0 (the earliest) to 1 (the latest)."""
    times = sorted(set(frames))
    return {t: i / max(1, len(times) - 1) for i, t in enumerate(times)}


def perceive_objects(shares: torch.Tensor, points: torch.Tensor, frame_index: torch.Tensor,
                     min_share: float | Sequence[float] = 0.5, merge_radius_m: float | Sequence[float] = 1.0,
                     max_boxes: int | None = None, room_quantile: float = 0.02,
                     grouping: str = "greedy") -> list[ObjectBox]:
    """The room's box and the objects a memory's tokens show, as ObjectBoxes in the oracle's order.

    shares [M,K]: each token's share of each semantic class (ROOM_CLASS the room); points [M,3]:
    its world point in metres; frame_index [M]: the frame of the memory entry it is in.
    A token shows class k > 0 when its share of k is at least `min_share` (one value, or one per
    class: a small object rarely fills most of a patch, a large one often does). `grouping`
    (GROUPINGS) makes objects of those tokens, `merge_radius_m` (one value, or one per class) apart:
    - "greedy": per class, tokens are taken from the most certain down and each joins the nearest
      group of its class whose centre (share-weighted mean point) is within `merge_radius_m` on the
      floor plane, else starts one: one group, one object.
    - "peaks": per class, an object at each peak of the class's density on the floor plane
      (peak_groups), peaks at least `merge_radius_m` apart; its tokens are those that show the
      class within `merge_radius_m` of the peak. Points scattered along their rays by the depth's
      error make one peak where they make several greedy groups, and a stray label that the
      other views of its place do not share makes none.
    An object's centre is its tokens' share-weighted mean point, its extents twice their weighted
    standard deviation per axis (at least MIN_EXTENT_M), its first sighting the earliest frame of
    its tokens, its `token` the one of them with the largest share. The room's box spans the room
    tokens' points between the `room_quantile` and
    1 - `room_quantile` quantiles per axis (a few far-off points do not stretch it); its `token` is
    the one most certainly the room. With
    `max_boxes`, the best-supported objects that fit beside the room are kept.
    Returns [room, objects by first sighting]."""
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
    shares, points = shares.detach().float().cpu().numpy(), points.detach().float().cpu().numpy()
    frames = frame_index.detach().cpu().numpy().astype(np.int64)
    if not (shares.ndim == 2 and points.shape == (len(shares), 3) and frames.shape == (len(shares),)):
        raise ValueError(f"shares [M,K], points [M,3] and frame_index [M] must agree, got {shares.shape}, "
                         f"{points.shape} and {frames.shape}")
    min_shares, merge_radii = per_class(min_share, shares.shape[1]), per_class(merge_radius_m, shares.shape[1])
    room_points = points[shares[:, ROOM_CLASS] >= min_shares[ROOM_CLASS]]
    if len(room_points) == 0:
        room_points = points
    low, high = np.quantile(room_points, [room_quantile, 1 - room_quantile], axis=0)
    room = ObjectBox(ROOM_CLASS, tuple(float(v) for v in (low + high) / 2), tuple(float(v) for v in high - low),
                     support=float(len(room_points)), token=int(np.argmax(shares[:, ROOM_CLASS])))
    objects = [box for k in range(shares.shape[1]) if k != ROOM_CLASS
               for box in class_objects(k, shares[:, k], points, frames, min_shares[k], merge_radii[k], grouping)]
    if max_boxes is not None and len(objects) > max_boxes - 1:
        objects = sorted(objects, key=lambda o: -o.support)[:max_boxes - 1]
    return [room, *sorted(objects, key=lambda o: (o.first_seen, o.semantic_class))]


def named_classes(question: str, classes: Sequence[str]) -> set[int]:
    """The indices of the object classes (not the room) that `question` names: whole words, any
    case, a plural ending allowed ("box", "boxes")."""
    return {k for k, name in enumerate(classes)
            if k != ROOM_CLASS and re.search(rf"\b{re.escape(name)}(?:e?s)?\b", question, re.IGNORECASE)}


def best_supported(boxes: Sequence[ObjectBox]) -> ObjectBox | None:
    """The box whose tokens support it most (the first of equals); None for no box. What a question
    naming one object of a class reads of the class's boxes, here and in the closed-form solver."""
    return max(boxes, key=lambda box: box.support, default=None)


def best_box_per_class(boxes: list[ObjectBox], classes: set[int]) -> list[ObjectBox]:
    """[room, objects...] with each class in `classes` down to its best_supported box; the others'
    boxes and the order kept."""
    best = {k: best_supported([box for box in boxes[1:] if box.semantic_class == k]) for k in classes}
    return [boxes[0], *(box for box in boxes[1:]
                        if box.semantic_class not in classes or box is best[box.semantic_class])]


def per_class(value: float | Sequence[float], num_classes: int) -> np.ndarray:
    """One setting per class [K] from one value or one per class."""
    values = np.asarray(value, dtype=np.float64)
    if values.ndim == 0:
        return np.full(num_classes, float(values))
    if values.shape != (num_classes,):
        raise ValueError(f"expected one value or one per class ({num_classes}), got {values.shape}")
    return values


def class_objects(k: int, share: np.ndarray, points: np.ndarray, frames: np.ndarray, min_share: float,
                  merge_radius_m: float, grouping: str) -> list[ObjectBox]:
    """The objects of class k that the tokens showing it make (perceive_objects): share [M] of k,
    points [M,3], frames [M]."""
    tokens = np.flatnonzero(share >= min_share)
    if grouping == "greedy":
        groups = greedy_groups(share[tokens], points[tokens], merge_radius_m)
    else:
        groups = peak_groups(share, points, tokens, merge_radius_m)
    objects = []
    for group in (tokens[g] for g in groups):
        weight = share[group]
        centre = (weight[:, None] * points[group]).sum(0) / weight.sum()
        spread = np.sqrt((weight[:, None] * (points[group] - centre) ** 2).sum(0) / weight.sum())
        objects.append(ObjectBox(k, tuple(float(v) for v in centre),
                                 tuple(float(v) for v in np.maximum(2 * spread, MIN_EXTENT_M)),
                                 first_seen=int(frames[group].min()), support=float(weight.sum()),
                                 token=int(group[np.argmax(weight)])))
    return objects


def greedy_groups(share: np.ndarray, points: np.ndarray, merge_radius_m: float) -> list[np.ndarray]:
    """Tokens of one class (share [m], points [m,3]) taken from the most certain down, each joining
    the nearest group whose share-weighted centre is within merge_radius_m on the floor plane,
    else starting one: index arrays into the m tokens."""
    groups: list[list[int]] = []
    centres: list[np.ndarray] = []
    for token in np.argsort(-share, kind="stable"):
        distances = [np.linalg.norm(points[token, :2] - c[:2]) for c in centres]
        nearest = int(np.argmin(distances)) if distances else -1
        if nearest < 0 or distances[nearest] > merge_radius_m:
            groups.append([token])
            centres.append(points[token])
            continue
        groups[nearest].append(token)
        weight = share[groups[nearest]]
        centres[nearest] = (weight[:, None] * points[groups[nearest]]).sum(0) / weight.sum()
    return [np.asarray(g) for g in groups]


def peak_groups(share: np.ndarray, points: np.ndarray, showing: np.ndarray, merge_radius_m: float,
                sigma_m: float = PEAK_SIGMA_M, min_ratio: float = PEAK_MIN_RATIO,
                min_support: float = PEAK_MIN_SUPPORT) -> list[np.ndarray]:
    """One class's objects as peaks of its density on the floor plane: share [M] of every token,
    points [M,3], showing [m] the tokens that show the class. At each showing token, the class
    density is the Gaussian-weighted (sigma_m) sum of every token's share, and its ratio is that
    over the same sum of ones (how much of what was seen there is this class). A peak is a
    showing token whose density no other within merge_radius_m exceeds, with support >=
    min_support and ratio >= min_ratio; each showing token joins the nearest peak within
    merge_radius_m. Index arrays into `showing`, one per peak, densest first."""
    if len(showing) == 0:
        return []
    d2 = ((points[showing, None, :2] - points[None, :, :2]) ** 2).sum(-1)        # [m,M]
    kernel = np.exp(-0.5 * d2 / sigma_m ** 2)
    density = kernel @ share                                                      # [m]
    ratio = density / kernel.sum(1)
    between = d2[:, showing]                                                      # [m,m]
    near = between <= merge_radius_m ** 2
    # ties go to the earlier token, so a plateau gives one peak
    order = np.arange(len(showing))
    beaten = near & ((density[None, :] > density[:, None])
                     | ((density[None, :] == density[:, None]) & (order[None, :] < order[:, None])))
    peaks = np.flatnonzero(~beaten.any(1) & (density >= min_support) & (ratio >= min_ratio))
    peaks = peaks[np.argsort(-density[peaks], kind="stable")]
    if len(peaks) == 0:
        return []
    nearest = np.argmin(between[:, peaks], axis=1)                                # [m]
    joins = near[np.arange(len(showing)), peaks[nearest]]
    return [np.flatnonzero(joins & (nearest == i)) for i in range(len(peaks))]


@dataclass
class ObjectReadoutConfig:
    enabled: bool = False               # the language model reads objects; False: no weights, pooled patch tokens
    classes: tuple[str, ...] = SEMANTIC_CLASSES   # what the category head tells apart; classes[0] is the room shell
    min_share: float = 0.5              # perceive_objects: a token shows a class from this share on
    merge_radius_m: float = 1.0         # ... and joins an object of its class this close on the floor plane
    # ... per class, over the two above: {class: value} (vlm2 train --fit-readout measures them)
    class_min_share: dict[str, float] = field(default_factory=dict)
    class_merge_radius_m: dict[str, float] = field(default_factory=dict)
    grouping: str = "greedy"            # ... GROUPINGS
    order_channel: bool = False         # each object token also holds its rank by first sighting (object_tokens)
    # A multiple-choice question about one object of a class ("the chair": the directions, the
    # route, the relative distance; not the appearance order of whole categories) reads only that
    # class's best-supported box (best_box_per_class): a split object's pieces and stray labels of
    # the class, which a long run gathers, would otherwise stand beside it. So does a measure of
    # one object (a distance, a size) when the number head points at the boxes it measures
    # (ObjectReadout's pointed_measures): a pointer spread over a split object's boxes measures
    # their mean box. A head without pointers reads every box for a measure: from one, it
    # measured distances worse (docs/design.md).
    best_box_per_named_class: bool = True

    def __post_init__(self) -> None:
        self.classes = tuple(self.classes)
        if len(self.classes) < 2:
            raise ValueError(f"object_readout.classes needs the room and at least one category, got {self.classes}")
        for name in ("min_share", "merge_radius_m"):
            per = getattr(self, f"class_{name}")
            if not isinstance(per, dict) or set(per) - set(self.classes):
                raise ValueError(f"object_readout.class_{name} maps classes of {self.classes} to values, got {per!r}")
        for share in (self.min_share, *self.class_min_share.values()):
            if not 0 < share <= 1:
                raise ValueError(f"object_readout.min_share must be in (0, 1], got {share}")
        for radius in (self.merge_radius_m, *self.class_merge_radius_m.values()):
            if not radius > 0:
                raise ValueError(f"object_readout.merge_radius_m must be > 0, got {radius}")
        if self.grouping not in GROUPINGS:
            raise ValueError(f"object_readout.grouping must be one of {GROUPINGS}, got {self.grouping!r}")
        if not isinstance(self.best_box_per_named_class, bool):     # "false" from a JSON setting would be true
            raise ValueError("object_readout.best_box_per_named_class must be true or false, got "
                             f"{self.best_box_per_named_class!r}")

    def per_class(self, name: str) -> tuple[float, ...]:
        """"min_share" or "merge_radius_m" for each of the classes."""
        default, per = getattr(self, name), getattr(self, f"class_{name}")
        return tuple(float(per.get(c, default)) for c in self.classes)


def token_readings(category: nn.Linear, memory: MemoryState) -> torch.Tensor:
    """What every token of a one-stream memory (episodic entries in slot order, then the working
    window) tells of its patch: [E*N, K+4], its share of each of the K classes (`category`: the
    head, tokens [.,C] -> logits [.,K]), the world point it carries (metres) and the frame its place
    was first seen at (Provenance.first_seen)."""
    if memory.working.tokens.shape[0] != 1:
        raise ValueError(f"objects are read from one stream's memory, got a batch of {memory.working.tokens.shape[0]}")
    entries, points, first_seen = (part[0] for part in memory_entries(memory))               # [E,N,C], [E,N,3], [E,N]
    tokens = entries.flatten(0, 1).to(category.weight.dtype)                                 # [E*N,C]
    shares = category(tokens).float().softmax(dim=-1)                                        # [E*N,K]
    frames = first_seen.flatten().to(shares.device).float()[:, None]                         # [E*N,1]
    return torch.cat([shares, points.flatten(0, 1).to(shares), frames], dim=1)


class ObjectReadout(nn.Module):
    """The dual memory read as objects: the room's box and one token per perceived object
    (object_tokens), `tokens` in all, `bridge_dim` channels (the language bridge's memory_dim),
    positions in units of `scale_m`. The category head reads the memory's `token_dim`-channel
    tokens. `pointed_measures`: the language bridge's number head measures the boxes it points at
    (bridge.number_pointers), so a measure of one object reads one box per named class too
    (best_box_per_named_class). Disabled: no weights."""

    def __init__(self, config: ObjectReadoutConfig, token_dim: int, tokens: int, bridge_dim: int, scale_m: float,
                 pointed_measures: bool = False):
        super().__init__()
        self.config, self.tokens, self.bridge_dim, self.scale_m = config, tokens, bridge_dim, scale_m
        self.pointed_measures = pointed_measures
        self.category = nn.Linear(token_dim, len(config.classes)) if config.enabled else None

    def boxes(self, readings: torch.Tensor) -> list[ObjectBox]:
        """The room and the objects token_readings [M,K+4] show (perceive_objects, this config)."""
        k, c = len(self.config.classes), self.config
        return perceive_objects(readings[:, :k], readings[:, k:k + 3], readings[:, k + 3].round().long(),
                                c.per_class("min_share"), c.per_class("merge_radius_m"), self.tokens,
                                grouping=c.grouping)

    def memory_boxes(self, memory: MemoryState) -> list[ObjectBox]:
        """The room and the objects this readout sees in a one-stream memory."""
        if self.category is None:
            raise RuntimeError("the object readout is disabled (model config object_readout.enabled)")
        return self.boxes(token_readings(self.category, memory))

    def memory_tokens(self, boxes: list[ObjectBox]) -> torch.Tensor:
        """boxes as the language model reads them: [1,tokens,bridge_dim] (object_tokens), on the head's device."""
        tokens = object_tokens(boxes, len(self.config.classes), self.tokens, self.bridge_dim, self.scale_m,
                               self.config.order_channel)
        return tokens if self.category is None else tokens.to(self.category.weight.device)

    def question_boxes(self, boxes: list[ObjectBox], question: str) -> list[ObjectBox]:
        """The boxes the language model reads for `question` (best_box_per_named_class)."""
        about_one_object = expected_answer_kind(question) == "choice" or (
            self.pointed_measures and asks_measure(question))
        if not self.config.best_box_per_named_class or not about_one_object or asks_about_categories(question):
            return boxes
        return best_box_per_class(boxes, named_classes(question, self.config.classes))

    def forward(self, memory: MemoryState, question: str | None = None) -> ReadoutTokens:
        """The memory as the language model reads it; for `question`, if given (question_boxes)."""
        boxes = self.memory_boxes(memory)
        if question is not None:
            boxes = self.question_boxes(boxes, question)
        tokens = self.memory_tokens(boxes)                                                   # [1,M,bridge_dim]
        # entries in token_readings' order; each box (the room's too) points at the entry of its
        # most certain token
        episodic, working = len(memory.episodic), len(memory.working)
        source = torch.tensor([[EPISODIC] * episodic + [WORKING] * working])                # [1,E]
        slot = torch.cat([torch.arange(episodic), torch.arange(working)])[None]               # [1,E]
        per_entry = memory.working.tokens.shape[2]
        token_entry = torch.full((1, self.tokens), -1)
        for i, box in enumerate(boxes):
            if box.token >= 0:
                token_entry[0, i] = box.token // per_entry
        return ReadoutTokens(tokens, source, slot, token_entry)
