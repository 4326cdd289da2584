"""VSI-Bench metrics, as the public lmms-eval implementation computes them.

- Multiple choice: the answer's first word (case-insensitive, trailing '.' stripped) must equal
  the ground-truth option letter; anything else (unparseable included) scores 0.
- Numeric: Mean Relative Accuracy, the mean over thresholds 0.50, 0.55, ..., 0.95 of
  |pred - gt| / gt <= 1 - threshold. The number is the first number in the answer
  (`engine.answer.parse_number`); no number scores 0.
- Aggregate: per-task mean; the three relative-direction variants are also averaged into
  `object_rel_direction` (as lmms-eval does), and `mean_score` is the mean over the eight
  VSI-Bench tasks (counting, abs distance, object size, room size, rel distance, rel direction,
  route plan, appearance order) present in the data.
"""
from __future__ import annotations

import math

import numpy as np

from ..engine.answer import parse_number
from ..engine.number_decoding import relative_accuracy
from ..sim.questions import MC_TASKS

DIRECTION_TASKS = ("object_rel_direction_easy", "object_rel_direction_medium", "object_rel_direction_hard")


def mean_relative_accuracy(pred: float, gt: float) -> float:
    if pred is None or not math.isfinite(pred):
        return 0.0
    if gt == 0:
        raise ValueError("relative accuracy is undefined for a ground truth of 0")
    return float(relative_accuracy(np.array([pred], dtype=float), np.array([gt], dtype=float))[0, 0])


def mc_first_word(text: str) -> str:
    words = str(text).strip().split()
    return words[0].rstrip(".").upper() if words else ""


def score_answer(record: dict, prediction: str) -> float:
    if record["question_type"] in MC_TASKS:
        return float(mc_first_word(prediction) == str(record["ground_truth"]).strip().upper())
    return mean_relative_accuracy(parse_number(str(prediction)), float(record["ground_truth"]))


def aggregate(records: list[dict], scores: list[float]) -> dict:
    """Flat dict: score_<task> (in [0, 1]), count_<task>, score_object_rel_direction, mean_score."""
    by_task: dict[str, list[float]] = {}
    for r, s in zip(records, scores):
        by_task.setdefault(r["question_type"], []).append(s)
    out = {}
    for task, s in sorted(by_task.items()):
        out[f"score_{task}"] = float(np.mean(s))
        out[f"count_{task}"] = len(s)
    main = [k for k in by_task if k not in DIRECTION_TASKS]
    dirs = [out[f"score_{t}"] for t in DIRECTION_TASKS if t in by_task]
    overall = [out[f"score_{t}"] for t in main]
    if dirs:
        out["score_object_rel_direction"] = float(np.mean(dirs))
        overall.append(out["score_object_rel_direction"])
    out["mean_score"] = float(np.mean(overall)) if overall else 0.0
    out["num_questions"] = len(records)
    return out
