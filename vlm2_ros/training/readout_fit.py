"""Per-class object readout settings, fit to the truth of the training scenes.

The category head gives each token the share of each class in its patch. A large object (a bed,
a sofa) fills whole patches from many views, so a high share threshold keeps its stray labels out
and a wide merge radius keeps it one box; a small one (a lamp, a trash can) rarely fills half a
patch, so a single threshold either misses it or lets the large classes' stray labels in.

`fit_readout` tries every (min_share, merge_radius_m) of a grid per class and keeps the one with
the best F1 of boxes against true objects: each box is matched one to one to the nearest unmatched
true object of its class within MATCH_RADIUS_M (floor plane); a box left over is a false positive
(a box of nothing, or an object's second box), an object left over a miss. Pure numpy on the token
readings (model.object_memory.token_readings) and data.oracle_boxes; `vlm2 train --fit-readout`
runs it on a run's streamed memories.
"""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from ..model.object_memory import ROOM_CLASS, ObjectBox, class_objects
from .perception_noise import MATCH_RADIUS_M

SHARE_GRID = (0.05, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MERGE_GRID_M = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0)


def match_counts(boxes: list[ObjectBox], truth: list[ObjectBox]) -> tuple[int, int, int]:
    """(matched, boxes left over, objects left over) of one class's perceived boxes against its true
    objects: pairs taken nearest first (floor plane), each at most MATCH_RADIUS_M apart."""
    if not boxes or not truth:
        return 0, len(boxes), len(truth)
    b = np.array([box.centre[:2] for box in boxes])                                   # [B,2]
    t = np.array([obj.centre[:2] for obj in truth])                                   # [T,2]
    distance = np.linalg.norm(b[:, None] - t[None], axis=-1)                          # [B,T]
    matched, used_b, used_t = 0, set(), set()
    for flat in np.argsort(distance, axis=None, kind="stable"):
        i, j = divmod(int(flat), len(truth))
        if distance[i, j] > MATCH_RADIUS_M:
            break
        if i not in used_b and j not in used_t:
            used_b.add(i)
            used_t.add(j)
            matched += 1
    return matched, len(boxes) - matched, len(truth) - matched


def f1_score(matched: int, extra: int, missed: int) -> float:
    return 2 * matched / max(1, 2 * matched + extra + missed)


def fit_readout(pairs: list[tuple[np.ndarray, list[ObjectBox]]], classes: tuple[str, ...], grouping: str = "greedy",
                current: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
                shares: tuple[float, ...] = SHARE_GRID, radii_m: tuple[float, ...] = MERGE_GRID_M,
                progress: bool = True) -> dict:
    """Each class's best (min_share, merge_radius_m) on `pairs` of (token readings [M,K+4], true
    boxes [room, objects...] at the same frame). `current`: the readout's (min_share per class,
    merge_radius_m per class), scored beside the fit. Returns {"classes": {name: {min_share,
    merge_radius_m, objects, matched, extra, missed, f1[, current: {...}]}}, "object_readout":
    {class_min_share, class_merge_radius_m}} (the config fields that give the fit)."""
    k_all = len(classes)
    for readings, _ in pairs:
        if readings.ndim != 2 or readings.shape[1] != k_all + 4:
            raise ValueError(f"token readings must be [M,{k_all + 4}] for {k_all} classes, got {readings.shape}")
    if not pairs:
        raise ValueError("no samples to fit the readout on")

    def counts(k: int, min_share: float, radius_m: float) -> tuple[int, int, int]:
        total = np.zeros(3, dtype=np.int64)
        for readings, truth in pairs:
            boxes = class_objects(k, readings[:, k], readings[:, k_all:k_all + 3], readings[:, k_all + 3], min_share,
                                  radius_m, grouping)
            total += match_counts(boxes, [b for b in truth[1:] if b.semantic_class == k])
        return tuple(int(v) for v in total)

    result: dict = {"classes": {}, "object_readout": {"class_min_share": {}, "class_merge_radius_m": {}}}
    grid = [(s, r) for r in radii_m for s in shares]
    for k in tqdm([k for k in range(k_all) if k != ROOM_CLASS], desc="fit readout", unit="class", disable=not progress):
        scored = [(f1_score(*c), s, r, c) for s, r in grid for c in [counts(k, s, r)]]
        f1, share, radius, (matched, extra, missed) = max(scored, key=lambda row: row[0])   # the first of ties
        row = {"min_share": share, "merge_radius_m": radius, "objects": matched + missed, "matched": matched,
               "extra": extra, "missed": missed, "f1": round(f1, 4)}
        if current is not None:
            c = counts(k, current[0][k], current[1][k])
            row["current"] = {"min_share": current[0][k], "merge_radius_m": current[1][k], "matched": c[0],
                              "extra": c[1], "missed": c[2], "f1": round(f1_score(*c), 4)}
        result["classes"][classes[k]] = row
        result["object_readout"]["class_min_share"][classes[k]] = share
        result["object_readout"]["class_merge_radius_m"][classes[k]] = radius
    return result
