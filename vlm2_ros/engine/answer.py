"""Answers: generated text parsed into a typed value, with evidence and timing."""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

ANSWER_KINDS = ("number", "choice", "text")

_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class Evidence:
    """A memory entry the answer drew on."""
    stamp_ns: int
    frame_index: int
    memory: str                       # "working" or "episodic"
    relevance: float                  # share of the answer's attention-like relevance, in [0, 1]
    pose: list[list[float]] | None = None  # 4x4 camera-to-world when the frame had a pose


@dataclass(frozen=True)
class Answer:
    question: str
    text: str
    kind: str                         # one of ANSWER_KINDS
    value: float | None = None        # parsed number when kind == "number"
    choice: str | None = None         # option letter when kind == "choice"
    # geometric mean of the generated tokens' probabilities; for a number decoded from samples,
    # the relative accuracy the model expects of it (engine/number_decoding.py)
    confidence: float = 0.0
    evidence: tuple[Evidence, ...] = field(default_factory=tuple)
    latency_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def parse_number(text: str) -> float | None:
    """The first number in `text`; None when there is none or it overflows (e.g. "1e999"), so a
    typed answer is always finite (and its JSON echo valid)."""
    match = _NUMBER.search(text)
    value = float(match.group()) if match else math.nan
    return value if math.isfinite(value) else None


def parse_choice(text: str, options: list[str]) -> str | None:
    """The option letter an answer picks: its first word, case-insensitive, '.'/')' stripped
    (the VSI-Bench scoring rule), or None when that is not one of the options."""
    words = text.strip().split()
    if not words:
        return None
    first = words[0].strip("().:").upper()
    return first if first in options else None
