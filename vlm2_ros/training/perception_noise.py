"""Perfect object boxes made as wrong as a perception's, for the language bridge's oracle stages.

An oracle stage on generated scenes trains the bridge on as many scenes as it takes steps, but on
boxes no perception gives: every object seen, found once, where it is, as large as it is, first
seen when it was. A perceived stage gives the real errors, on the few scenes streamed for it (100
memories). `PerceptionNoise` puts errors of the measured kinds and sizes into the oracle's boxes,
so the bridge meets them on unlimited scenes: objects missed, found twice, placed off, their
extents wrong, first seen late; boxes of nothing; the room's box scaled. `measure_perception_noise`
gives the same numbers from a perception's boxes against the truth they were read from (`vlm2
train --perception-noise`), so the config's values are measured, not guessed.

A pure function of the boxes and a numpy Generator: the same seed gives the same boxes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..model.object_memory import MIN_EXTENT_M, ROOM_CLASS, ObjectBox
from ..sim.scene import SEMANTIC_CLASSES

MATCH_RADIUS_M = 1.5        # a perceived box of an object's class this close (floor plane) is a box of it
ON_TIME = 0.02              # first seen within this share of the asking frame of the truth: on time
FALSE_NEAR_M = 1.0          # a box of nothing this close (floor plane) to a true object lies on it


@dataclass
class PerceptionNoise:
    """Each field is off at its default. Lateness is in shares of the frame the question is asked at."""
    miss_probability: float = 0.0          # an object gets no box
    split_mean: float = 0.0                # a found object gets Poisson(this) more boxes
    centre_sd_m: float = 0.0               # each box's centre moves by N(0, sd) along x and y
    height_sd_m: float = 0.0               # ... and along z
    extent_log_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)   # log(perceived / true extent) per axis
    extent_log_sd: tuple[float, float, float] = (0.0, 0.0, 0.0)
    late_probability: float = 0.0          # a box's first sighting comes late: ON_TIME and ...
    late_mean: float = 0.0                 # ... an exponential share of the asking frame with this mean
    false_per_object: float = 0.0          # boxes of nothing: Poisson(this x objects seen) of them ...
    false_near_share: float = 0.0          # ... this share on a seen object (part of it mislabelled), the rest anywhere
    room_log_sd: tuple[float, float, float] = (0.0, 0.0, 0.0)       # log(perceived / true room extent) per axis

    def __post_init__(self) -> None:
        self.extent_log_mean, self.extent_log_sd, self.room_log_sd = (
            tuple(float(v) for v in x) for x in (self.extent_log_mean, self.extent_log_sd, self.room_log_sd))
        shares = ("miss_probability", "late_probability", "false_near_share")
        bad = [name for name in shares if not 0 <= getattr(self, name) <= 1]
        bad += [name for name in ("split_mean", "centre_sd_m", "height_sd_m", "late_mean", "false_per_object")
                if getattr(self, name) < 0]
        bad += [name for name in ("extent_log_mean", "extent_log_sd", "room_log_sd") if len(getattr(self, name)) != 3]
        bad += [name for name in ("extent_log_sd", "room_log_sd") if min(getattr(self, name), default=0) < 0]
        if bad:
            raise ValueError(f"perception_noise: {', '.join(bad)} out of range (shares in [0, 1], spreads >= 0, "
                             "per-axis values three numbers)")

    @property
    def enabled(self) -> bool:
        return any(v != 0 and v != (0.0, 0.0, 0.0) for v in asdict(self).values())

    def apply(self, boxes: list[ObjectBox], asked_at: int, rng: np.random.Generator) -> list[ObjectBox]:
        """[room, objects...] (the oracle's boxes) -> the same form as a perception with these
        errors would give it: [room, objects by first sighting]."""
        room, objects = boxes[0], boxes[1:]
        if room.semantic_class != ROOM_CLASS:
            raise ValueError("boxes[0] must be the room's box")
        room_size = np.multiply(room.size, np.exp(rng.normal(0, self.room_log_sd)))
        room = ObjectBox(ROOM_CLASS, room.centre, tuple(float(v) for v in room_size))
        low = np.subtract(room.centre, np.divide(room.size, 2))
        noisy = []
        for box in objects:
            if rng.random() < self.miss_probability:
                continue
            copies = 1 + rng.poisson(self.split_mean)
            noisy += [self._perceived(box, asked_at, rng) for _ in range(copies)]
        for _ in range(rng.poisson(self.false_per_object * len(objects))):
            if objects and rng.random() < self.false_near_share:
                centre = np.asarray(objects[rng.integers(len(objects))].centre)
            else:
                centre = low + rng.random(3) * np.asarray(room.size)
            # any category (a mislabel need not be one the scene holds), half a metre across before the extent error
            label = int(rng.integers(ROOM_CLASS + 1, len(SEMANTIC_CLASSES)))
            noisy.append(self._perceived(ObjectBox(label, tuple(centre), (0.5, 0.5, 0.5),
                                                   int(rng.integers(asked_at + 1))), asked_at, rng))
        return [room, *sorted(noisy, key=lambda b: (b.first_seen, b.semantic_class))]

    def _perceived(self, box: ObjectBox, asked_at: int, rng: np.random.Generator) -> ObjectBox:
        centre = np.asarray(box.centre) + rng.normal(0, [self.centre_sd_m, self.centre_sd_m, self.height_sd_m])
        size = np.maximum(np.asarray(box.size) * np.exp(rng.normal(self.extent_log_mean, self.extent_log_sd)),
                          MIN_EXTENT_M)
        first_seen = box.first_seen
        if self.late_mean > 0 and rng.random() < self.late_probability:
            late = ON_TIME + rng.exponential(self.late_mean)
            first_seen = min(asked_at, first_seen + int(np.ceil(late * asked_at)))
        return ObjectBox(box.semantic_class, tuple(float(v) for v in centre), tuple(float(v) for v in size),
                         first_seen)


def measure_perception_noise(pairs: list[tuple[list[ObjectBox], list[ObjectBox], int]]) -> dict:
    """PerceptionNoise's fields, measured: `pairs` of (perceived boxes, true boxes, asking frame),
    each list [room, objects...] (a perception's readout and data.oracle_boxes at the same frame).
    A true object's boxes are the perceived ones of its class within MATCH_RADIUS_M on the floor
    plane; a perceived box that is no true object's is a box of nothing. Also `objects`, the true
    objects measured."""
    found, offsets, heights, extents, lateness, room, false, near, total = [], [], [], [], [], [], 0, 0, 0
    for perceived, truth, asked_at in pairs:
        room.append(np.log(np.divide(perceived[0].size, truth[0].size)))
        matched: set[int] = set()
        for obj in truth[1:]:
            mine = [i for i, b in enumerate(perceived[1:])
                    if b.semantic_class == obj.semantic_class
                    and np.hypot(b.centre[0] - obj.centre[0], b.centre[1] - obj.centre[1]) <= MATCH_RADIUS_M]
            found.append(len(mine))
            matched.update(mine)
            for b in (perceived[1 + i] for i in mine):
                offsets += [b.centre[0] - obj.centre[0], b.centre[1] - obj.centre[1]]
                heights.append(b.centre[2] - obj.centre[2])
                extents.append(np.log(np.divide(b.size, obj.size)))
                lateness.append((b.first_seen - obj.first_seen) / max(asked_at, 1))
        others = [b for i, b in enumerate(perceived[1:]) if i not in matched]
        false += len(others)
        near += sum(any(np.hypot(b.centre[0] - o.centre[0], b.centre[1] - o.centre[1]) <= FALSE_NEAR_M
                            for o in truth[1:])
                    for b in others)
        total += len(truth) - 1
    if not total:
        raise ValueError("no true objects to measure perception against")
    found, late = np.asarray(found), np.asarray(lateness)
    extents = np.asarray(extents).reshape(-1, 3)
    is_late = late > ON_TIME
    return {
        "objects": int(total),
        "miss_probability": float(np.mean(found == 0)),
        "split_mean": float(np.mean(found[found > 0] - 1)) if found.any() else 0.0,
        "centre_sd_m": float(np.std(offsets)) if offsets else 0.0,
        "height_sd_m": float(np.std(heights)) if heights else 0.0,
        "extent_log_mean": extents.mean(0).round(3).tolist() if len(extents) else [0.0] * 3,
        "extent_log_sd": extents.std(0).round(3).tolist() if len(extents) else [0.0] * 3,
        "late_probability": float(np.mean(is_late)) if len(late) else 0.0,
        "late_mean": float(np.mean(late[is_late] - ON_TIME)) if is_late.any() else 0.0,
        "false_per_object": false / total,
        "false_near_share": near / false if false else 0.0,
        "room_log_sd": np.std(room, axis=0).round(3).tolist(),
    }
