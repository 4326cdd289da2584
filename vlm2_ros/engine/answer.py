"""Answers: generated text parsed into a typed value, with evidence and timing."""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

ANSWER_KINDS = ("number", "choice", "text")

# The prompt the model reads is VSI-Bench's as lmms-eval evaluates it: the question, its options
# under "Options:", then an instruction for the form of the answer. The embedded model learnt
# from exactly this text, so every way into the engine (node, replay, evaluation, training)
# builds it with build_prompt.
CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."
OPEN_INSTRUCTION = "Please answer the question using a single word or phrase."

# An option line or inline option: "A. chair", "(B) sofa", "C) lamp".
_OPTION = re.compile(r"(?:^|[\s(])([A-H])(?:\.|\))\s+\S", re.MULTILINE)
# An option on a line of its own, as build_prompt writes it: its letter and its text.
_OPTION_LINE = re.compile(r"^[ \t]*\(?([A-H])[.)][ \t]+(.*?\S)[ \t]*$", re.MULTILINE)
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_NUMERIC_QUESTION = re.compile(
    r"\b(how many|number of|how far|how big|how long|how wide|how tall|how high|distance|"
    r"size|length|width|height|area|square met(?:er|re)s?|in met(?:er|re)s|centimet(?:er|re)s)\b",
    re.IGNORECASE)
# "how many" / "the number of" asking for things, not for units of a measure ("how many meters apart ...")
_COUNT_QUESTION = re.compile(
    r"\b(?:how many|number of)\b(?!\s+(?:square\s+|cubic\s+)?"
    r"(?:(?:centi|milli|kilo)?met(?:er|re)s?|feet|foot|inch(?:es)?|degrees?|seconds?|minutes?|hours?)\b)",
    re.IGNORECASE)


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


def build_prompt(question: str, options: Sequence[str] = ()) -> str:
    """The model's prompt for a question and its options ("chair" or already lettered "A. chair")."""
    lines = []
    for i, option in enumerate(options):
        option, letter = str(option).strip(), chr(ord("A") + i)
        lines.append(option if option[:2] in (f"{letter}.", f"{letter})") else f"{letter}. {option}")
    if lines:
        return "\n".join([question.strip(), "Options:", *lines, CHOICE_INSTRUCTION])
    return f"{question.strip()}\n{OPEN_INSTRUCTION}"


def question_options(question: str) -> list[str]:
    """Option letters offered in a multiple-choice question, in order ([] when none)."""
    letters = []
    for letter in _OPTION.findall(question):
        if letter not in letters:
            letters.append(letter)
    return letters if len(letters) >= 2 else []


def question_option_texts(question: str) -> dict[str, str]:
    """{letter: text} of the options a question lists one per line, as build_prompt writes them
    ({} unless they are at least two, lettered from A in order)."""
    options = dict(_OPTION_LINE.findall(question))
    if len(options) < 2 or list(options) != [chr(ord("A") + i) for i in range(len(options))]:
        return {}
    return options


def expected_answer_kind(question: str) -> str:
    if question_options(question):
        return "choice"
    return "number" if _NUMERIC_QUESTION.search(question) else "text"


def asks_count(question: str) -> bool:
    """A number question whose answer counts things: a whole number."""
    return bool(_COUNT_QUESTION.search(question))


def asks_measure(question: str) -> bool:
    """A number question whose answer is a measure (a distance, a size, an area), not a count: what
    a language bridge's number head answers (a count is a small whole number the model writes)."""
    return expected_answer_kind(question) == "number" and not asks_count(question)


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
