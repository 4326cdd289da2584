"""The prompt the model reads, and what a question asks for: a choice, a count or a measure."""
from __future__ import annotations

import re
from collections.abc import Sequence

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
_NUMERIC_QUESTION = re.compile(
    r"\b(how many|number of|how far|how big|how long|how wide|how tall|how high|distance|"
    r"size|length|width|height|area|square met(?:er|re)s?|in met(?:er|re)s|centimet(?:er|re)s)\b",
    re.IGNORECASE)
# "how many" / "the number of" asking for things, not for units of a measure ("how many meters apart ...")
_COUNT_QUESTION = re.compile(
    r"\b(?:how many|number of)\b(?!\s+(?:square\s+|cubic\s+)?"
    r"(?:(?:centi|milli|kilo)?met(?:er|re)s?|feet|foot|inch(?:es)?|degrees?|seconds?|minutes?|hours?)\b)",
    re.IGNORECASE)
# "in which order do they first appear", "the appearance order", "by when they are first seen"
_APPEARANCE_QUESTION = re.compile(r"\b(?:appear(?:s|ed|ing|ance)?|first seen|seen first)\b", re.IGNORECASE)


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


def asks_about_categories(question: str) -> bool:
    """A question about every object of the categories it names (how many there are, when each
    category first appeared), not about one object of each ("the chair")."""
    return asks_count(question) or bool(_APPEARANCE_QUESTION.search(question))


def asks_measure(question: str) -> bool:
    """A number question whose answer is a measure (a distance, a size, an area), not a count: what
    a language bridge's number head answers (a count is a small whole number the model writes)."""
    return expected_answer_kind(question) == "number" and not asks_count(question)
