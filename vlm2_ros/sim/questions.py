"""VSI-Bench-style spatial questions with exact answers computed from the scene.

Records follow the public VSI-Bench fields (id, dataset, scene_name, question_type, question,
options, ground_truth) plus ours: episode_id, frame_index / stamp_ns (when the question is asked;
only objects seen up to that frame are asked about), object_ids, answer_value.

Units follow VSI-Bench's templates: distances in metres, room size in square metres, object size
(longest dimension) in centimetres, counts. Distances are measured between the closest points of
the objects' 3D bounding boxes. Relative direction has VSI-Bench's 2 / 3 / 4 options (easy /
medium / hard); every other multiple-choice task has 4 options and exactly one correct. Answers
are balanced: the correct letter is uniform, and for direction and route tasks the answer class is
drawn uniformly first, then a matching configuration is searched for. Configurations whose answer
is within a margin of a class boundary are rejected (no ambiguous ground truth).
"""
from __future__ import annotations

import itertools
import math
from functools import partial

import numpy as np

from .scene import Scene, SceneObject, aabb_distance

DATASET = "vlm2_synth"
MC_TASKS = ("object_rel_distance", "object_rel_direction_easy", "object_rel_direction_medium",
            "object_rel_direction_hard", "route_planning", "obj_appearance_order")
NA_TASKS = ("object_counting", "object_abs_distance", "object_size_estimation", "room_size_estimation")
TASKS = NA_TASKS + MC_TASKS
# Training-only questions whose answer is nowhere in the question: only what the memory holds
# tells the options apart. They teach the language model to look a category up in memory (and
# where it sits) before the VSI tasks ask it to combine such look-ups: one object (quadrant), two
# compared (pair), four (extreme). Never in an evaluation set.
MEMORY_TASKS = ("memory_object_quadrant", "memory_object_extreme", "memory_object_pair")
LETTERS = "ABCD"
QUADRANTS = ("north-east", "north-west", "south-east", "south-west")
QUADRANT_MARGIN = 0.1       # share of the room's side around its centre lines that is ambiguous
COMPASS = {"east": (0, 1), "west": (0, -1), "north": (1, 1), "south": (1, -1)}   # world axis, sign
EXTREME_MARGIN = 0.5        # metres between the furthest object and the next one along the axis (extreme, pair)

TEMPLATES = {
    "object_counting": ["How many {cat}(s) are in this room?",
                        "Count the {cat}(s) in this room. How many are there?",
                        "What is the number of {cat}(s) in the room?"],
    "object_abs_distance": [
        "Measuring from the closest point of each object, what is the direct distance between the {a} and the {b} (in meters)?",
        "What is the distance in meters between the {a} and the {b}, measured between their closest points?",
        "How far apart are the {a} and the {b} (closest points, in meters)?"],
    "object_size_estimation": [
        "What is the length of the longest dimension (length, width, or height) of the {a}, measured in centimeters?",
        "How big is the {a}? Give its longest dimension (length, width or height) in centimeters.",
        "Estimate the size of the {a}: its longest side, in centimeters."],
    "room_size_estimation": [
        "What is the size of this room (in square meters)? If multiple rooms are shown, estimate the size of the combined space.",
        "How large is this room's floor area, in square meters?",
        "Estimate the floor area of the room in square meters."],
    "object_rel_distance": [
        "Measuring from the closest point of each object, which of these objects ({opts}) is the closest to the {a}?",
        "Which of these objects ({opts}) is nearest to the {a}, measuring between closest points?",
        "Of {opts}, which object is closest to the {a} (closest-point distance)?"],
    "object_rel_direction_easy": [
        "If I am standing by the {a} and facing the {b}, is the {c} to my left or right?",
        "Standing next to the {a} and looking towards the {b}, is the {c} on my left or on my right?"],
    "object_rel_direction_medium": [
        "If I am standing by the {a} and facing the {b}, is the {c} to my left, right, or back?",
        "Standing next to the {a} and looking towards the {b}, is the {c} to my left, to my right, or behind me?"],
    "object_rel_direction_hard": [
        "If I am standing by the {a} and facing the {b}, is the {c} to my front-left, front-right, back-left, or back-right? "
        "The directions refer to the quadrants of a Cartesian plane (if I am standing at the origin and facing along the positive y-axis).",
        "Standing next to the {a} and looking towards the {b}, in which quadrant is the {c}: front-left, front-right, back-left or back-right?"],
    "route_planning": [
        "You are a robot beginning at the {a} facing the {b}. You want to navigate to the {d}. You will perform the "
        "following actions (Note: for each [please fill in], choose either 'turn back,' 'turn left,' or 'turn right.'): "
        "1. Go forward until the {b} 2. [please fill in] 3. Go forward until the {c} 4. [please fill in] "
        "5. Go forward until the {d}. You have reached the final destination.",
        "Starting at the {a} and facing the {b}, plan a route to the {d}: 1. Go forward until the {b} "
        "2. [please fill in] 3. Go forward until the {c} 4. [please fill in] 5. Go forward until the {d}. "
        "For each [please fill in] choose 'turn back', 'turn left' or 'turn right'."],
    "obj_appearance_order": [
        "What will be the first-time appearance order of the following categories in the video: {cats}?",
        "In which order do these categories first appear in the video: {cats}?",
        "Order these categories by when they are first seen in the video: {cats}."],
    "memory_object_quadrant": [
        "On the map (x east, y north), in which quarter of the room is the {a}: north-east, north-west, "
        "south-east or south-west?",
        "Which quarter of the room holds the {a} on the map: north-east, north-west, south-east or south-west?"],
    # The compass word asked along appears once: with the map's axes spelt out as well, "(x east,
    # y north)", the tiny language model never found which of the words was asked (a linear probe
    # on its hidden states read the asked direction at chance, at every position and layer).
    "memory_object_extreme": [
        "On the map, which of these objects is furthest {d}: {opts}?",
        "Of {opts}, which object lies furthest to the {d} on the map?"],
    "memory_object_pair": [
        "On the map, which lies further {d}: the {a} or the {b}?",
        "Which is further to the {d} on the map: the {a} or the {b}?"],
}

DIRECTION_CLASSES = {
    "object_rel_direction_easy": ("left", "right"),
    "object_rel_direction_medium": ("left", "right", "back"),
    "object_rel_direction_hard": ("front-left", "front-right", "back-left", "back-right"),
}
TURNS = ("Turn Left", "Turn Right", "Turn Back")
# Where a medium direction's side ends and "back" begins, and a route's turn: angles between the two
# are too close to call, so no question turns on them (direction_class, turn_class).
MEDIUM_SIDE_MAX_DEG, MEDIUM_BACK_MIN_DEG = 120.0, 145.0
TURN_SIDE_MAX_DEG, TURN_BACK_MIN_DEG = 130.0, 150.0


def signed_angle(a_xy, b_xy, c_xy) -> float:
    """Angle (degrees, counter-clockwise = left positive) of c seen from a when facing b."""
    f = np.subtract(b_xy, a_xy)
    v = np.subtract(c_xy, a_xy)
    return math.degrees(math.atan2(f[0] * v[1] - f[1] * v[0], f[0] * v[0] + f[1] * v[1]))


def relation_angles(task: str, centres_xy) -> list[float]:
    """The signed angles (degrees) a relative-direction or route question turns on, from the floor
    centres of the objects it names in the template's order (a, b, c, and d for a route): for a
    direction, c seen from a facing b; for a route, the turn at b towards c, then at c towards d
    (each heading on from the leg before)."""
    xy = [np.asarray(c[:2], dtype=float) for c in centres_xy]
    if task in DIRECTION_CLASSES and len(xy) == 3:
        return [signed_angle(xy[0], xy[1], xy[2])]
    if task == "route_planning" and len(xy) == 4:
        return [signed_angle(xy[1], 2 * xy[1] - xy[0], xy[2]), signed_angle(xy[2], 2 * xy[2] - xy[1], xy[3])]
    raise ValueError(f"{task} with {len(xy)} objects turns on no angle (relative direction: 3, route: 4)")


def direction_class(task: str, angle: float) -> str | None:
    """Answer class of a relative-direction question, None when within a margin of a boundary."""
    a = abs(angle)
    side = "left" if angle > 0 else "right"
    if task == "object_rel_direction_easy":
        return side if 15 <= a <= 165 else None
    if task == "object_rel_direction_medium":
        if a >= MEDIUM_BACK_MIN_DEG:
            return "back"
        return side if 25 <= a <= MEDIUM_SIDE_MAX_DEG else None
    if min(a, abs(a - 90), 180 - a) < 12:
        return None
    return ("front-" if a < 90 else "back-") + side


def turn_class(angle: float) -> str | None:
    a = abs(angle)
    if a >= TURN_BACK_MIN_DEG:
        return "Turn Back"
    if 35 <= a <= TURN_SIDE_MAX_DEG:
        return "Turn Left" if angle > 0 else "Turn Right"
    return None


def _fmt(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


class Balancer:
    """Answer statistics shared by the episodes of one data set: each multiple-choice question
    takes the least-used answer class (and option letter) among those its scene allows, so the
    data set's answer distribution stays flat and a blind guess stays at chance."""

    def __init__(self):
        self.counts: dict[tuple[str, str], int] = {}

    def pick(self, task: str, kind: str, choices, rng: np.random.Generator):
        choices = list(choices)
        use = [self.counts.get((task, f"{kind}:{c}"), 0) for c in choices]
        best = [c for c, u in zip(choices, use) if u == min(use)]
        c = best[int(rng.integers(len(best)))]
        self.counts[(task, f"{kind}:{c}")] = self.counts.get((task, f"{kind}:{c}"), 0) + 1
        return c


class QuestionGenerator:
    """Generates the questions of one episode. Deterministic in `seed` (and in the order of the
    episodes sharing a `balancer`)."""

    def __init__(self, scene: Scene, visibility: dict[int, tuple[int, int, int]], stamps_ns, *,
                 episode_id: str, seed: int, frame_index: int | None = None, balancer: Balancer | None = None):
        self.balancer = balancer if balancer is not None else Balancer()
        self.scene, self.episode_id = scene, episode_id
        self.stamps = np.asarray(stamps_ns)
        n = len(self.stamps)
        self.frame_index = n - 1 if frame_index is None else int(frame_index)
        if not 0 <= self.frame_index < n:
            raise ValueError(f"frame_index {frame_index} out of range [0, {n})")
        self.rng = np.random.default_rng([int(seed), 0xA5C])
        self.first_seen = {oid: v[0] for oid, v in visibility.items() if v[0] <= self.frame_index}
        self.seen = [o for o in scene.objects if o.id in self.first_seen]
        self.unique = [o for o in scene.unique_objects() if o.id in self.first_seen]
        self.records: list[dict] = []

    # -- helpers -----------------------------------------------------------------------------
    def _template(self, task: str) -> str:
        t = TEMPLATES[task]
        return t[self.rng.integers(len(t))]

    def _add(self, task: str, question: str, ground_truth, *, options: list[str] | None = None,
             object_ids=(), value=None, direction: str | None = None) -> None:
        rec = {"id": f"{self.episode_id}/{len(self.records):03d}", "dataset": DATASET,
               "scene_name": self.scene.name, "question_type": task, "question": question,
               "options": options, "ground_truth": str(ground_truth), "episode_id": self.episode_id,
               "frame_index": self.frame_index, "stamp_ns": int(self.stamps[self.frame_index]),
               "object_ids": [int(i) for i in object_ids]}
        if value is not None:
            rec["answer_value"] = value
        if direction is not None:
            rec["direction"] = direction      # the COMPASS word asked (memory comparisons; a training probe reads it)
        self.records.append(rec)

    def _mc(self, task: str, question: str, correct: str, distractors: list[str], object_ids=(),
            direction: str | None = None) -> None:
        """Options with the correct one at a uniformly random letter."""
        k = len(distractors) + 1
        pos = LETTERS.index(self.balancer.pick(task, "letter", LETTERS[:k], self.rng))
        others = list(self.rng.permutation(distractors)) if distractors else []
        opts = others[:pos] + [correct] + others[pos:]
        self._add(task, question, LETTERS[pos], options=[f"{LETTERS[i]}. {o}" for i, o in enumerate(opts)],
                  object_ids=object_ids, value=correct, direction=direction)

    # -- tasks --------------------------------------------------------------------------------
    def counting(self, n: int) -> None:
        cats = sorted({o.category for o in self.seen})
        cats = [c for c in cats if all(o.id in self.first_seen for o in self.scene.objects if o.category == c)]
        multi = [c for c in cats if self.scene.count(c) >= 2]
        # categories seen more than once; a lone object only where no category is (asked for many
        # questions a scene, filling up with lone objects made most answers "1")
        cats = multi or cats
        for c in [cats[i] for i in self.rng.permutation(len(cats))[:n]]:
            count = self.scene.count(c)
            ids = [o.id for o in self.scene.objects if o.category == c]
            self._add("object_counting", self._template("object_counting").format(cat=c), count,
                      object_ids=ids, value=count)

    def abs_distance(self, n: int) -> None:
        pairs = list(itertools.combinations(self.unique, 2))
        for i in self.rng.permutation(len(pairs))[:n]:
            a, b = pairs[i]
            d = round(aabb_distance(a, b), 2)
            if d < 0.1:
                continue
            q = self._template("object_abs_distance").format(a=a.category, b=b.category)
            self._add("object_abs_distance", q, _fmt(d), object_ids=(a.id, b.id), value=d)

    def size(self, n: int) -> None:
        for i in self.rng.permutation(len(self.unique))[:n]:
            o = self.unique[i]
            cm = int(round(o.longest_dimension * 100))
            self._add("object_size_estimation", self._template("object_size_estimation").format(a=o.category),
                      cm, object_ids=(o.id,), value=cm)

    def room_size(self) -> None:
        area = round(self.scene.room.area, 1)
        self._add("room_size_estimation", self._template("room_size_estimation"), _fmt(area), value=area)

    def rel_distance(self, n: int) -> None:
        u = self.unique
        if len(u) < 5:
            return
        by_class: dict[str, list] = {}
        for _ in range(30 * n):
            idx = self.rng.choice(len(u), 5, replace=False)
            target, cands = u[idx[0]], [u[i] for i in idx[1:]]
            dists = sorted((aabb_distance(target, c), k) for k, c in enumerate(cands))
            if dists[1][0] - dists[0][0] < 0.3:
                continue
            by_class.setdefault(cands[dists[0][1]].category, []).append((target, cands, dists[0][1]))
        for _ in range(n):
            avail = sorted(k for k, v in by_class.items() if v)
            if not avail:
                return
            k = self.balancer.pick("object_rel_distance", "class", avail, self.rng)
            target, cands, b = by_class[k].pop(int(self.rng.integers(len(by_class[k]))))
            best = cands[b]
            others = [c.category for c in cands if c is not best]
            opts_text = ", ".join(c.category for c in cands)
            q = self._template("object_rel_distance").format(opts=opts_text, a=target.category)
            self._mc("object_rel_distance", q, best.category, others, (target.id,) + tuple(c.id for c in cands))

    def _triples(self):
        u = self.unique
        return [(a, b, c) for a, b, c in itertools.permutations(u, 3)
                if np.hypot(*np.subtract(a.center[:2], b.center[:2])) > 0.8
                and np.hypot(*np.subtract(a.center[:2], c.center[:2])) > 0.8]

    def rel_direction(self, task: str, n: int) -> None:
        classes = DIRECTION_CLASSES[task]
        by_class: dict[str, list] = {c: [] for c in classes}
        for a, b, c in self._triples():
            k = direction_class(task, relation_angles(task, (a.center, b.center, c.center))[0])
            if k is not None:
                by_class[k].append((a, b, c))
        for _ in range(n):
            avail = [k for k in classes if by_class[k]]
            if not avail:
                return
            k = self.balancer.pick(task, "class", avail, self.rng)
            a, b, c = by_class[k].pop(int(self.rng.integers(len(by_class[k]))))
            q = self._template(task).format(a=a.category, b=b.category, c=c.category)
            self._mc(task, q, k, [x for x in classes if x != k], (a.id, b.id, c.id))

    def route(self, n: int) -> None:
        u = self.unique
        if len(u) < 4:
            return
        by_class: dict[tuple, list] = {}
        quads = list(itertools.permutations(range(len(u)), 4))
        for j in self.rng.permutation(len(quads))[:4000]:
            a, b, c, d = (u[i] for i in quads[j])
            xy = [np.asarray(o.center[:2]) for o in (a, b, c, d)]
            if min(np.linalg.norm(xy[i + 1] - xy[i]) for i in range(3)) < 0.8:
                continue
            t1, t2 = (turn_class(angle) for angle in relation_angles("route_planning", xy))
            if t1 and t2:
                by_class.setdefault((t1, t2), []).append((a, b, c, d))
        all_pairs = [(x, y) for x in TURNS for y in TURNS]
        for _ in range(n):
            avail = sorted(k for k, v in by_class.items() if v)
            if not avail:
                return
            k = self.balancer.pick("route_planning", "class", avail, self.rng)
            a, b, c, d = by_class[k].pop(int(self.rng.integers(len(by_class[k]))))
            wrong = [p for p in all_pairs if p != k]
            picks = [wrong[i] for i in self.rng.choice(len(wrong), 3, replace=False)]
            q = self._template("route_planning").format(a=a.category, b=b.category, c=c.category, d=d.category)
            self._mc("route_planning", q, ", ".join(k), [", ".join(p) for p in picks], (a.id, b.id, c.id, d.id))

    def appearance_order(self, n: int) -> None:
        first: dict[str, int] = {}
        for o in self.seen:
            first[o.category] = min(first.get(o.category, 1 << 60), self.first_seen[o.id])
        cats = sorted(first)
        if len(cats) < 4:
            return
        made = 0
        for _ in range(40 * n):
            if made >= n:
                break
            pick = [cats[i] for i in self.rng.choice(len(cats), 4, replace=False)]
            times = sorted(first[c] for c in pick)
            if min(np.diff(times)) < 3:
                continue
            order = sorted(pick, key=lambda c: first[c])
            perms = [p for p in itertools.permutations(order) if list(p) != order]
            wrong = [perms[i] for i in self.rng.choice(len(perms), 3, replace=False)]
            q = self._template("obj_appearance_order").format(cats=", ".join(pick))
            ids = [o.id for o in self.seen if o.category in pick]
            self._mc("obj_appearance_order", q, ", ".join(order), [", ".join(p) for p in wrong], ids)
            made += 1

    def _balanced_picks(self, task: str, by_class: dict[str, list], n: int):
        """Up to n (answer class, item) pairs, each item taken from the class the balancer picks
        among those with items left (a memory task's answers as flat as the scene allows)."""
        for _ in range(n):
            avail = [k for k in by_class if by_class[k]]
            if not avail:
                return
            k = self.balancer.pick(task, "class", avail, self.rng)
            yield k, by_class[k].pop(int(self.rng.integers(len(by_class[k]))))

    def object_extreme(self, n: int) -> None:
        u = self.unique
        if len(u) < 4:
            return
        by_class: dict[str, list] = {d: [] for d in COMPASS}
        for _ in range(30 * n):
            picks = [u[i] for i in self.rng.choice(len(u), 4, replace=False)]
            for direction, (axis, sign) in COMPASS.items():
                ranked = sorted(picks, key=lambda o: -sign * o.center[axis])
                if sign * (ranked[0].center[axis] - ranked[1].center[axis]) >= EXTREME_MARGIN:
                    by_class[direction].append((ranked[0], picks))
        for k, (best, picks) in self._balanced_picks("memory_object_extreme", by_class, n):
            q = self._template("memory_object_extreme").format(d=k, opts=", ".join(o.category for o in picks))
            self._mc("memory_object_extreme", q, best.category, [o.category for o in picks if o is not best],
                     [o.id for o in picks], direction=k)

    def object_pair(self, n: int) -> None:
        """Which of two objects lies further along a compass direction: the comparison of the
        extreme question with two looked-up positions instead of four."""
        by_class: dict[str, list] = {d: [] for d in COMPASS}
        for a, b in itertools.combinations(self.unique, 2):
            for direction, (axis, sign) in COMPASS.items():
                ahead = sign * (a.center[axis] - b.center[axis])
                if abs(ahead) >= EXTREME_MARGIN:
                    by_class[direction].append((a, b) if ahead > 0 else (b, a))    # (further, other)
        for k, (further, other) in self._balanced_picks("memory_object_pair", by_class, n):
            first, second = (further, other) if self.rng.random() < 0.5 else (other, further)
            q = self._template("memory_object_pair").format(d=k, a=first.category, b=second.category)
            self._mc("memory_object_pair", q, further.category, [other.category], [further.id, other.id],
                     direction=k)

    def object_quadrant(self, n: int) -> None:
        room = self.scene.room
        by_class: dict[str, list[SceneObject]] = {q: [] for q in QUADRANTS}
        for o in self.unique:
            dx, dy = o.center[0] - room.width / 2, o.center[1] - room.depth / 2
            if abs(dx) > QUADRANT_MARGIN * room.width and abs(dy) > QUADRANT_MARGIN * room.depth:
                by_class[("north" if dy > 0 else "south") + "-" + ("east" if dx > 0 else "west")].append(o)
        for k, o in self._balanced_picks("memory_object_quadrant", by_class, n):
            q = self._template("memory_object_quadrant").format(a=o.category)
            self._mc("memory_object_quadrant", q, k, [x for x in QUADRANTS if x != k], (o.id,))

    def generate(self, per_task: int = 2, memory_per_task: int = 0, only=None) -> list[dict]:
        """`per_task` questions of each VSI task (one room size), then `memory_per_task` of each
        training-only MEMORY_TASKS (after the others, so they do not change them); with `only`
        (question types), just those tasks."""
        if per_task < 0 or memory_per_task < 0:
            raise ValueError(f"per_task and memory_per_task must be >= 0, got {per_task}, {memory_per_task}")
        unknown = sorted(set(only or ()) - set(TASKS + MEMORY_TASKS))
        if unknown:
            raise ValueError(f"unknown question types {unknown}; choose from {TASKS + MEMORY_TASKS}")
        calls = [("object_counting", partial(self.counting, per_task)),
                 ("object_abs_distance", partial(self.abs_distance, per_task)),
                 ("object_size_estimation", partial(self.size, per_task)),
                 ("room_size_estimation", self.room_size),
                 ("object_rel_distance", partial(self.rel_distance, per_task)),
                 *((task, partial(self.rel_direction, task, per_task)) for task in DIRECTION_CLASSES),
                 ("route_planning", partial(self.route, per_task)),
                 ("obj_appearance_order", partial(self.appearance_order, per_task)),
                 ("memory_object_quadrant", partial(self.object_quadrant, memory_per_task)),
                 ("memory_object_extreme", partial(self.object_extreme, memory_per_task)),
                 ("memory_object_pair", partial(self.object_pair, memory_per_task))]
        for task, ask in calls:
            if not only or task in only:
                ask()
        return self.records


def generate_questions(episode, per_task: int = 2, frame_index: int | None = None,
                       balancer: Balancer | None = None, memory_per_task: int = 0) -> list[dict]:
    """Questions for an Episode (or EpisodeDir): asked at `frame_index` (default: the last frame);
    `memory_per_task` adds the training-only MEMORY_TASKS."""
    spec_seed = episode.spec.seed if hasattr(episode, "spec") else int(episode.meta["seed"])
    ep_id = episode.spec.episode_id if hasattr(episode, "spec") else episode.episode_id
    return QuestionGenerator(episode.scene, episode.visibility(), episode.stamps_ns, episode_id=ep_id,
                             seed=spec_seed, frame_index=frame_index,
                             balancer=balancer).generate(per_task, memory_per_task)
