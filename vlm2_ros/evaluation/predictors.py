"""Predictors: anything that answers question records; the chance and frequency baselines.

Protocol (duck-typed): `name`, optional `fit(records)` (sees the whole question set, as the
VSI-Bench frequency baseline does), `start_episode(episode, frame_index)` (episode is an
`EpisodeDir`, or None when the questions have no local frames), `answer(record, prompt) -> str`.
A plain callable `f(record, prompt) -> str` is wrapped by `as_predictor`.
"""
from __future__ import annotations

import zlib
from collections import Counter

import numpy as np

from ..model.prompt import build_prompt
from ..sim.questions import MC_TASKS

def format_prompt(record: dict) -> str:
    """The text a model sees for a question record (model.prompt.build_prompt)."""
    return build_prompt(str(record["question"]), record.get("options") or ())


def option_texts(record: dict) -> dict[str, str]:
    out = {}
    for o in record.get("options") or []:
        letter, _, text = o.partition(".")
        out[letter.strip().upper()] = text.strip()
    return out


def _seed(*parts) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


class _Base:
    name = "base"

    def fit(self, records: list[dict]) -> None:
        pass

    def start_episode(self, episode, frame_index: int) -> None:
        pass


class ChancePredictor(_Base):
    """Uniformly random option letter; for numbers a random draw from the task's answers."""
    name = "chance"

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.values: dict[str, list[float]] = {}

    def fit(self, records):
        self.values = {}
        for r in records:
            if r["question_type"] not in MC_TASKS:
                self.values.setdefault(r["question_type"], []).append(float(r["ground_truth"]))

    def answer(self, record, prompt):
        rng = np.random.default_rng(_seed(self.seed, record["id"]))
        if record["question_type"] in MC_TASKS:
            letters = sorted(option_texts(record))
            return letters[rng.integers(len(letters))]
        vals = self.values.get(record["question_type"]) or [1.0]
        return f"{vals[rng.integers(len(vals))]:g}"


class FrequencyPredictor(_Base):
    """Blind guess from answer statistics: for multiple choice the option whose text was most
    often correct for this task (ties: the most frequent correct letter) when the task's answers
    are a small set of classes (<= MAX_CLASSES distinct texts), otherwise the most frequent
    correct letter; for numbers the mean ground truth of the task."""
    MAX_CLASSES = 12
    name = "frequency"

    def __init__(self):
        self.text_freq: dict[str, Counter] = {}
        self.letter_freq: dict[str, Counter] = {}
        self.mean: dict[str, float] = {}

    def fit(self, records):
        nums: dict[str, list[float]] = {}
        for r in records:
            t = r["question_type"]
            if t in MC_TASKS:
                gt = str(r["ground_truth"]).strip().upper()
                self.letter_freq.setdefault(t, Counter())[gt] += 1
                self.text_freq.setdefault(t, Counter())[option_texts(r).get(gt, "")] += 1
            else:
                nums.setdefault(t, []).append(float(r["ground_truth"]))
        self.mean = {t: float(np.mean(v)) for t, v in nums.items()}

    def answer(self, record, prompt):
        t = record["question_type"]
        if t in MC_TASKS:
            texts = self.text_freq.get(t, Counter())
            if len(texts) > self.MAX_CLASSES:
                texts = Counter()
            letters = self.letter_freq.get(t, Counter())
            opts = option_texts(record)
            return max(sorted(opts), key=lambda L: (texts[opts[L]], letters[L]))
        return f"{self.mean.get(t, 1.0):.3f}"


class CallablePredictor(_Base):
    def __init__(self, fn, name: str = "callable"):
        self.fn, self.name = fn, name

    def answer(self, record, prompt):
        return self.fn(record, prompt)


def as_predictor(p):
    if hasattr(p, "answer"):
        return p
    if callable(p):
        return CallablePredictor(p, getattr(p, "__name__", "callable"))
    raise TypeError(f"not a predictor: {p!r}")
