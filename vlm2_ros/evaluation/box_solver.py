"""The synthetic world's questions answered in closed form from a list of object boxes, as if the
boxes were the world: counts are boxes of the class, sizes and distances are measured on them,
directions and routes are the angles between their centres, the appearance order is their first
sightings.

A diagnostic, never the model's answer (that comes from its language bridge). `vlm2 eval
--reader geometry` scores it on the model's own perceived boxes (what its memory's boxes hold,
whoever reads them) and on the true ones (what the box form itself keeps), so that a shortfall
splits into the perception's part and the bridge's.

A named category stands for its best-supported box (the true boxes: its one object; the questions
that name a single object name one that is the only one of its category). A question about a
category with no box gets the first option, or no number: the boxes do not hold its answer.
"""
from __future__ import annotations

import re
from functools import cache

import numpy as np

from ..model.object_memory import ROOM_CLASS, ObjectBox, best_supported
from ..sim.questions import (MEDIUM_BACK_MIN_DEG, MEDIUM_SIDE_MAX_DEG, TASKS, TEMPLATES, TURN_BACK_MIN_DEG,
                             TURN_SIDE_MAX_DEG, TURNS, relation_angles)
from ..sim.scene import SEMANTIC_CLASSES, bounds_gap
from .predictors import option_texts

# Without the generator's ambiguity margins every angle needs a class: the boundaries sit midway
# between the margins' edges (sim.questions.direction_class, turn_class).
MEDIUM_BACK_FROM_DEG = (MEDIUM_SIDE_MAX_DEG + MEDIUM_BACK_MIN_DEG) / 2     # medium: "back" from here, else a side
TURN_BACK_FROM_DEG = (TURN_SIDE_MAX_DEG + TURN_BACK_MIN_DEG) / 2           # route: "Turn Back" from here, else a side


@cache
def _template_patterns(task: str) -> tuple[re.Pattern, ...]:
    """Each of the task's question templates as a regular expression with its slots as groups."""
    patterns = []
    for template in TEMPLATES[task]:
        named: set[str] = set()

        def slot(match: re.Match) -> str:       # a slot named again (a route's {b}) must repeat its words
            name = match.group(1)
            group = f"(?P={name})" if name in named else f"(?P<{name}>.+?)"
            named.add(name)
            return group

        patterns.append(re.compile(re.sub(r"\\\{(\w+)\\\}", slot, re.escape(template)) + "$"))
    return tuple(patterns)


def question_slots(record: dict) -> dict[str, str]:
    """The categories a synthetic-world VSI question names, by its template's slots (a, b, c, d,
    cat, opts, cats). Raises ValueError for a question no template of its task gives."""
    task, question = record["question_type"], str(record["question"]).strip()
    if task not in TASKS:
        raise ValueError(f"the box solver does not answer {task!r} questions")
    for pattern in _template_patterns(task):
        match = pattern.match(question)
        if match:
            return match.groupdict()
    raise ValueError(f"question {record.get('id', '')!r} follows none of the {task} templates: {question!r}")


def box_gap_m(a: ObjectBox, b: ObjectBox) -> float:
    """Distance between the closest points of two boxes (metres), as the world measures its objects'."""
    corners = [(np.subtract(box.centre, np.divide(box.size, 2)), np.add(box.centre, np.divide(box.size, 2)))
               for box in (a, b)]
    return bounds_gap(*corners[0], *corners[1])


class BoxSolver:
    """Answers of one memory's boxes (room first, as object_memory lays them out)."""

    def __init__(self, boxes: list[ObjectBox]):
        if not boxes or boxes[0].semantic_class != ROOM_CLASS:
            raise ValueError("the boxes start with the room's (object_memory's layout)")
        self.room, self.objects = boxes[0], boxes[1:]

    def of(self, category: str) -> list[ObjectBox]:
        k = SEMANTIC_CLASSES.index(category)
        return [b for b in self.objects if b.semantic_class == k]

    def best(self, category: str) -> ObjectBox | None:
        return best_supported(self.of(category))

    def answer(self, record: dict) -> str:
        """The answer text the metrics score: an option's letter, or a number ("" when the boxes
        hold none)."""
        task, slots = record["question_type"], question_slots(record)
        options = option_texts(record)
        if task == "object_counting":
            return str(len(self.of(slots["cat"])))
        if task == "room_size_estimation":
            return f"{self.room.size[0] * self.room.size[1]:.2f}"
        if task == "object_size_estimation":
            box = self.best(slots["a"])
            return "" if box is None else f"{100 * max(box.size):.0f}"
        if task == "object_abs_distance":
            a, b = self.best(slots["a"]), self.best(slots["b"])
            return "" if a is None or b is None else f"{box_gap_m(a, b):.2f}"
        if task == "object_rel_distance":
            return self._closest(slots["a"], options)
        if task.startswith("object_rel_direction"):
            return self._direction(task, [slots[s] for s in "abc"], options)
        if task == "route_planning":
            return self._route([slots[s] for s in "abcd"], options)
        return self._order(options)         # obj_appearance_order, the last of TASKS

    def _centres(self, categories: list[str]) -> list[np.ndarray] | None:
        boxes = [self.best(c) for c in categories]
        return None if any(b is None for b in boxes) else [np.asarray(b.centre[:2]) for b in boxes]

    def _closest(self, target: str, options: dict[str, str]) -> str:
        a = self.best(target)
        if a is None:
            return next(iter(options))
        gaps = {letter: box_gap_m(a, b) if (b := self.best(text)) is not None else np.inf
                for letter, text in options.items()}
        return min(gaps, key=gaps.get)

    def _direction(self, task: str, categories: list[str], options: dict[str, str]) -> str:
        xy = self._centres(categories)
        if xy is None:
            return next(iter(options))
        angle = relation_angles(task, xy)[0]
        side = "left" if angle > 0 else "right"
        if task == "object_rel_direction_easy":
            word = side
        elif task == "object_rel_direction_medium":
            word = "back" if abs(angle) >= MEDIUM_BACK_FROM_DEG else side
        else:
            word = ("front-" if abs(angle) < 90 else "back-") + side
        return next((letter for letter, text in options.items() if text == word), next(iter(options)))

    def _route(self, categories: list[str], options: dict[str, str]) -> str:
        xy = self._centres(categories)
        if xy is None:
            return next(iter(options))
        turns = [TURNS[2] if abs(a) >= TURN_BACK_FROM_DEG else TURNS[0] if a > 0 else TURNS[1]
                 for a in relation_angles("route_planning", xy)]
        # the option that shares the most turns (the exact pair need not be listed)
        return max(options, key=lambda letter: sum(t == o for t, o in zip(turns, options[letter].split(", "))))

    def _order(self, options: dict[str, str]) -> str:
        first = {}
        for box in self.objects:
            name = SEMANTIC_CLASSES[box.semantic_class]
            first[name] = min(first.get(name, box.first_seen), box.first_seen)

        def agreement(letter: str) -> int:     # category pairs the option orders as the boxes do
            order = options[letter].split(", ")
            times = [first.get(c, np.inf) for c in order]
            return sum(times[i] < times[j] for i in range(len(order)) for j in range(i + 1, len(order)))

        return max(options, key=agreement)
