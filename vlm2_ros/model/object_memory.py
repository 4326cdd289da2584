"""A memory as a list of boxes: the room, then one box per object in the order first seen, each
written into one token a language bridge reads (its semantic class one-hot, then the box's centre
and extents).

Two producers share the layout. The synthetic world's ground truth (training.data.oracle_memory)
gives the language model a perfect memory, the diagnostic its "oracle" training stages read.
`perceive_objects` gives the same form from what a perception reads in the memory's tokens: per
token, the share of each semantic class in its patch and its world point; tokens that show one
class are grouped by place into objects. A bridge that learnt to answer from the oracle's boxes
can then read perceived ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

ROOM_CLASS = 0                  # semantic class 0 is the room shell (walls, floor, ceiling)
BOX_CHANNELS = 6                # centre (x, y, z) and extents (x, y, z) after the class one-hot
MIN_EXTENT_M = 0.1              # a box perceived from one token has no spread to measure


@dataclass(frozen=True)
class ObjectBox:
    semantic_class: int                     # index into the semantic classes (ROOM_CLASS: the room)
    centre: tuple[float, float, float]      # metres, world frame
    size: tuple[float, float, float]        # extents, metres
    first_seen: int = 0                     # frame index; boxes are laid out in this order
    support: float = 0.0                    # perceived: the summed class share of its tokens


def object_tokens(boxes: list[ObjectBox], num_classes: int, tokens: int, dim: int, scale_m: float) -> torch.Tensor:
    """[1,tokens,dim]: boxes[i] in token i (class one-hot, then centre and extents in units of
    scale_m); every other channel and token is 0."""
    if dim < num_classes + BOX_CHANNELS:
        raise ValueError(f"an object token needs {num_classes + BOX_CHANNELS} channels, the language bridge "
                         f"reads {dim}")
    if len(boxes) > tokens:
        raise ValueError(f"{len(boxes)} boxes, more than the {tokens} tokens of the memory")
    memory = torch.zeros(1, tokens, dim)
    for slot, box in enumerate(boxes):
        memory[0, slot, box.semantic_class] = 1.0
        memory[0, slot, num_classes:num_classes + BOX_CHANNELS] = torch.tensor([*box.centre, *box.size]) / scale_m
    return memory


def perceive_objects(shares: torch.Tensor, points: torch.Tensor, frame_index: torch.Tensor,
                     min_share: float = 0.5, merge_radius_m: float = 1.0, max_boxes: int | None = None,
                     room_quantile: float = 0.02) -> list[ObjectBox]:
    """The room's box and the objects a memory's tokens show, as ObjectBoxes in the oracle's order.

    shares [M,K]: each token's share of each semantic class (ROOM_CLASS the room); points [M,3]:
    its world point in metres; frame_index [M]: the frame of the memory entry it is in.
    A token shows class k > 0 when its share of k is at least `min_share`. Per class, tokens are
    taken from the most certain down and each joins the nearest group of its class whose centre
    (share-weighted mean point) is within `merge_radius_m` on the floor plane, else starts one:
    one group, one object. Its centre is that mean, its extents twice the weighted standard
    deviation of the points per axis (at least MIN_EXTENT_M), its first sighting the earliest
    frame of its tokens. The room's box spans the room tokens' points between the
    `room_quantile` and 1 - `room_quantile` quantiles per axis (a few far-off points do not
    stretch it). With `max_boxes`, the best-supported objects that fit beside the room are kept.
    Returns [room, objects by first sighting]."""
    shares, points = shares.detach().float().cpu().numpy(), points.detach().float().cpu().numpy()
    frames = frame_index.detach().cpu().numpy().astype(np.int64)
    if not (shares.ndim == 2 and points.shape == (len(shares), 3) and frames.shape == (len(shares),)):
        raise ValueError(f"shares [M,K], points [M,3] and frame_index [M] must agree, got {shares.shape}, "
                         f"{points.shape} and {frames.shape}")
    room_points = points[shares[:, ROOM_CLASS] >= min_share]
    if len(room_points) == 0:
        room_points = points
    low, high = np.quantile(room_points, [room_quantile, 1 - room_quantile], axis=0)
    room = ObjectBox(ROOM_CLASS, tuple(float(v) for v in (low + high) / 2), tuple(float(v) for v in high - low),
                     support=float(len(room_points)))
    objects = []
    for k in range(shares.shape[1]):
        if k == ROOM_CLASS:
            continue
        tokens = np.flatnonzero(shares[:, k] >= min_share)
        groups: list[list[int]] = []
        centres: list[np.ndarray] = []
        for token in tokens[np.argsort(-shares[tokens, k], kind="stable")]:
            distances = [np.linalg.norm(points[token, :2] - c[:2]) for c in centres]
            nearest = int(np.argmin(distances)) if distances else -1
            if nearest < 0 or distances[nearest] > merge_radius_m:
                groups.append([token])
                centres.append(points[token])
                continue
            groups[nearest].append(token)
            weight = shares[groups[nearest], k]
            centres[nearest] = (weight[:, None] * points[groups[nearest]]).sum(0) / weight.sum()
        for group, centre in zip(groups, centres):
            weight = shares[group, k]
            spread = np.sqrt((weight[:, None] * (points[group] - centre) ** 2).sum(0) / weight.sum())
            objects.append(ObjectBox(k, tuple(float(v) for v in centre),
                                     tuple(float(v) for v in np.maximum(2 * spread, MIN_EXTENT_M)),
                                     first_seen=int(frames[group].min()), support=float(weight.sum())))
    if max_boxes is not None and len(objects) > max_boxes - 1:
        objects = sorted(objects, key=lambda o: -o.support)[:max_boxes - 1]
    return [room, *sorted(objects, key=lambda o: (o.first_seen, o.semantic_class))]
