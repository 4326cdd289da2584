"""Spatial queries for vlm2_node: request checks, a bounded query pool, typed results.

Shared by the ~/query service and the ~/ask action: both carry the same request fields and the
same result fields (srv/SpatialQuery.srv, action/Ask.action), so one code path validates a
request, runs it on the engine off the executor thread, and fills either message. Failures are
`QueryFailure(code, message)` with `code` the name of a SpatialQuery error constant; nothing
here raises into a ROS callback.
"""
from __future__ import annotations

import concurrent.futures
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from vlm2_ros.camera import rotation_to_quaternion
from vlm2_ros.engine.answer import Answer, parse_choice, parse_number
from vlm2_ros.engine.engine import NotReadyError, QueryCanceled, QueryError, SpatialMemoryEngine
from vlm2_ros.model.prompt import build_prompt, question_options
from vlm2_ros.ros.image_conversion import ns_to_stamp

# SpatialQuery answer types (the action's Result has no constants for them: see Ask.action).
ANSWER_AUTO, ANSWER_NUMBER, ANSWER_CHOICE, ANSWER_TEXT = 0, 1, 2, 3
_KIND_TO_TYPE = {"number": ANSWER_NUMBER, "choice": ANSWER_CHOICE, "text": ANSWER_TEXT}
_TYPE_NAMES = {ANSWER_NUMBER: "number", ANSWER_CHOICE: "choice", ANSWER_TEXT: "text"}
OPTION_LETTERS = "ABCDEFGH"

# Feedback stages of the ~/ask action (Ask.Feedback.STAGE_*), in order, with their progress.
STAGE_QUEUED, STAGE_READING_MEMORY, STAGE_GENERATING, STAGE_PARSING = (
    "queued", "reading_memory", "generating", "parsing")
STAGE_PROGRESS = {STAGE_QUEUED: 0.0, STAGE_READING_MEMORY: 0.1, STAGE_GENERATING: 0.2, STAGE_PARSING: 0.9}

_POLL_S = 0.05  # how often a waiting query looks for a cancel request


class QueryFailure(Exception):
    """A query ends with an error code (the name of a SpatialQuery.Response constant)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Question:
    text: str                   # what the engine is asked (model.prompt.build_prompt)
    answer_type: int            # ANSWER_* hint from the request
    option_letters: tuple[str, ...]
    timeout_s: float


@dataclass(frozen=True)
class Outcome:
    answer: Answer
    answer_type: int            # resolved: ANSWER_NUMBER, ANSWER_CHOICE or ANSWER_TEXT
    value: float | None
    choice: str | None
    memory_stamp_ns: int | None


def prepare_question(question: str, options: list[str], answer_type: int, timeout_s: float, *,
                     max_length: int, default_timeout_s: float) -> Question:
    """Check a request's fields and build the engine's question; raises QueryFailure."""
    if not question.strip():
        raise QueryFailure("EMPTY_QUESTION", "question is empty")
    if answer_type not in (ANSWER_AUTO, *_TYPE_NAMES):
        raise QueryFailure("INVALID_REQUEST", f"unknown answer_type {answer_type}; use 0 (auto), "
                                              f"1 (number), 2 (choice) or 3 (text)")
    if not math.isfinite(timeout_s) or timeout_s < 0:
        raise QueryFailure("INVALID_REQUEST", f"timeout_s must be >= 0 (0: the node's default), got {timeout_s}")
    options = list(options)
    if len(options) > len(OPTION_LETTERS):
        raise QueryFailure("INVALID_REQUEST", f"at most {len(OPTION_LETTERS)} options, got {len(options)}")
    if any(not option.strip() for option in options):
        raise QueryFailure("INVALID_REQUEST", "options must not be empty")
    if len(options) == 1:
        raise QueryFailure("INVALID_REQUEST", "a multiple-choice question needs at least 2 options")
    letters = OPTION_LETTERS[: len(options)]
    text = build_prompt(question, options)
    if len(text) > max_length:
        raise QueryFailure("QUESTION_TOO_LONG", f"question has {len(text)} characters (options and the answer "
                                                f"instruction included); the limit is {max_length} "
                                                f"(query.max_question_length)")
    return Question(text, answer_type, tuple(letters), timeout_s or default_timeout_s)


def typed_outcome(question: Question, answer: Answer, memory_stamp_ns: int | None) -> Outcome:
    """Resolve the answer type (the request's hint wins over the engine's guess) and parse for it."""
    answer_type = question.answer_type or _KIND_TO_TYPE[answer.kind]
    value = choice = None
    if answer_type == ANSWER_NUMBER:
        value = answer.value if answer.kind == "number" else parse_number(answer.text)
    elif answer_type == ANSWER_CHOICE:
        letters = list(question.option_letters) or question_options(question.text)
        choice = answer.choice if answer.kind == "choice" else parse_choice(answer.text, letters)
    return Outcome(answer, answer_type, value, choice, memory_stamp_ns)


class PendingQuery:
    """A submitted query: its future, the engine's stage (set from the worker), its cancel flag."""

    def __init__(self, cancel: threading.Event):
        self.future: concurrent.futures.Future | None = None
        self.stage = STAGE_QUEUED
        self.cancel = cancel

    def set_stage(self, stage: str) -> None:
        self.stage = stage


class QueryPool:
    """Runs engine queries on `max_concurrent` threads with at most `max_waiting` more queued.

    A query that times out or is canceled after it started stops generating within one token
    (the engine polls its cancel flag) and counts against the limits until then.
    """

    def __init__(self, engine: SpatialMemoryEngine, max_concurrent: int, max_waiting: int):
        self._engine = engine
        self._limit = max_concurrent + max_waiting
        self._in_flight = 0
        self._cancels: set[threading.Event] = set()   # of queries submitted and not finished
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_concurrent, thread_name_prefix="vlm2-query")

    @property
    def in_flight(self) -> int:
        """Queries running or waiting now."""
        with self._lock:
            return self._in_flight

    @property
    def capacity(self) -> int:
        """How many may run or wait at once; one more is answered BUSY."""
        return self._limit

    def submit(self, text: str) -> PendingQuery:
        with self._lock:
            if self._in_flight >= self._limit:
                raise QueryFailure("BUSY", f"{self._in_flight} queries are running or waiting (limit "
                                           f"{self._limit}: query.max_concurrent + query.max_waiting)")
            self._in_flight += 1
            cancel = threading.Event()
            self._cancels.add(cancel)
        pending = PendingQuery(cancel)

        def run() -> tuple[Answer, int | None]:
            # The newest frame in memory as the question is asked (the engine takes its view of
            # the memory right after this).
            memory_stamp_ns = self._engine.status().last_stamp_ns
            answer = self._engine.query(text, should_stop=cancel.is_set, on_stage=pending.set_stage)
            return answer, memory_stamp_ns

        pending.future = self._pool.submit(run)
        pending.future.add_done_callback(lambda _future: self._finished(cancel))
        return pending

    def _finished(self, cancel: threading.Event) -> None:
        with self._lock:
            self._in_flight -= 1
            self._cancels.discard(cancel)

    def shutdown(self) -> None:
        """Drop waiting queries and stop running ones (within one token); waits for them."""
        with self._lock:
            for cancel in self._cancels:
                cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=True)


def run_query(pool: QueryPool, question: Question, *, feedback: Callable[[str], None] | None = None,
              cancel_requested: Callable[[], bool] | None = None) -> Outcome:
    """Submit, wait (honouring the timeout and cancel requests) and type the answer.

    Cancel is honoured while waiting (the query is dropped) and during generation (the engine
    stops within one token). Raises QueryFailure.
    """
    feedback = feedback or (lambda stage: None)
    pending = pool.submit(question.text)
    deadline = time.monotonic() + question.timeout_s
    feedback(STAGE_QUEUED)
    stage = STAGE_QUEUED
    cancel_noted = False
    while True:
        if cancel_requested is not None and not cancel_noted and cancel_requested():
            if pending.future.cancel():
                raise QueryFailure("CANCELED", "canceled while waiting for a free query slot")
            pending.cancel.set()
            cancel_noted = True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pending.future.cancel()
            pending.cancel.set()
            raise QueryFailure("TIMEOUT", f"no answer within {question.timeout_s:g} s")
        try:
            answer, memory_stamp_ns = pending.future.result(timeout=min(remaining, _POLL_S))
            break
        except concurrent.futures.TimeoutError:
            stage = _report_stages(stage, pending.stage, feedback)
        except concurrent.futures.CancelledError:
            raise QueryFailure("CANCELED", "the query was dropped before it started (node shutting down)")
        except QueryCanceled:
            raise QueryFailure("CANCELED", "canceled during generation") from None
        except NotReadyError as exc:
            raise QueryFailure("MEMORY_EMPTY", str(exc)) from exc
        except QueryError as exc:
            raise QueryFailure("INVALID_REQUEST", str(exc)) from exc
    if cancel_noted or (cancel_requested is not None and cancel_requested()):
        raise QueryFailure("CANCELED", "canceled during generation; the answer was discarded")
    _report_stages(stage, STAGE_PARSING, feedback)
    return typed_outcome(question, answer, memory_stamp_ns)


def _report_stages(reported: str, reached: str, feedback: Callable[[str], None]) -> str:
    """Report every stage after `reported` up to `reached` (none skipped, progress monotonic)."""
    order = list(STAGE_PROGRESS)
    for stage in order[order.index(reported) + 1: order.index(reached) + 1]:
        feedback(stage)
    return reached


# ----------------------------------------------------------------------------- messages
def matrix_to_pose(matrix, pose_type):
    """4x4 rigid transform -> geometry_msgs/Pose (pose_type) with a unit quaternion."""
    m = np.asarray(matrix, dtype=np.float64)
    pose = pose_type()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in m[:3, 3])
    o = pose.orientation
    o.x, o.y, o.z, o.w = rotation_to_quaternion(m[:3, :3])
    return pose


def fill_result(msg: Any, outcome: Outcome, latency_s: float, frame_id_of: Callable[[int], str],
                pose_type) -> Any:
    """Fill a SpatialQuery.Response or Ask.Result from an answered query (error_code OK)."""
    answer = outcome.answer
    msg.error_code, msg.error_message = msg.OK, ""
    msg.answer = answer.text
    msg.answer_type = outcome.answer_type
    msg.has_value = outcome.value is not None
    msg.value = float(outcome.value) if outcome.value is not None else 0.0
    msg.choice = outcome.choice or ""
    msg.choice_index = OPTION_LETTERS.index(outcome.choice) if outcome.choice else -1
    msg.confidence = float(answer.confidence)
    msg.evidence_stamps = [ns_to_stamp(e.stamp_ns) for e in answer.evidence]
    msg.evidence_frame_ids = [frame_id_of(e.stamp_ns) for e in answer.evidence]
    msg.evidence_relevance = [float(e.relevance) for e in answer.evidence]
    msg.evidence_memory = [e.memory for e in answer.evidence]
    msg.evidence_poses = [matrix_to_pose(e.pose if e.pose is not None else np.eye(4), pose_type)
                          for e in answer.evidence]
    msg.evidence_has_pose = [e.pose is not None for e in answer.evidence]
    if outcome.memory_stamp_ns is not None:
        msg.memory_stamp = ns_to_stamp(outcome.memory_stamp_ns)
    msg.latency_s = float(latency_s)
    return msg


def fill_failure(msg: Any, failure: QueryFailure, latency_s: float) -> Any:
    msg.error_code = getattr(msg, failure.code)
    msg.error_message = str(failure)
    msg.latency_s = float(latency_s)
    return msg


def answer_record(outcome: Outcome, latency_s: float, frame_id_of: Callable[[int], str]) -> dict:
    """JSON-ready echo of an answered question (published on ~/answers)."""
    answer = outcome.answer
    return {"question": answer.question, "answer": answer.text,
            "answer_type": _TYPE_NAMES[outcome.answer_type], "value": outcome.value,
            "choice": outcome.choice, "confidence": answer.confidence,
            "evidence": [{"stamp_ns": e.stamp_ns, "frame_id": frame_id_of(e.stamp_ns), "memory": e.memory,
                          "relevance": e.relevance} for e in answer.evidence],
            "memory_stamp_ns": outcome.memory_stamp_ns, "latency_s": latency_s}
