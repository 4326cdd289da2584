"""Question files: our episodes' questions.jsonl, and the public VSI-Bench layout in a local directory.

Accepted sources for `load_questions(path)`:
- a data set directory written by `vlm2 sim dataset` (one sub-directory per episode, each with
  episode.json and questions.jsonl);
- a single episode directory;
- a .jsonl / .json file, or a directory of them (e.g. a local copy of VSI-Bench: records with
  id, dataset, scene_name, question_type, question, options, ground_truth); .parquet files are
  read when pyarrow is installed (it is not a dependency).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..sim.questions import MC_TASKS, NA_TASKS, TASKS

REQUIRED = ("id", "question_type", "question", "ground_truth")


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    records = []
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"cannot read question file {path}: {e}") from e
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: malformed JSON line: {e.msg}") from None
        records.append(validate_record(rec, f"{path}:{n}"))
    return records


def validate_record(rec, where: str) -> dict:
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: a question record must be a JSON object, got {type(rec).__name__}")
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        raise ValueError(f"{where}: question record lacks field(s) {missing}")
    task = rec["question_type"]
    if task not in TASKS:
        raise ValueError(f"{where}: unknown question_type {task!r}; known: {list(TASKS)}")
    opts = rec.get("options")
    if task in MC_TASKS:
        if not isinstance(opts, list) or len(opts) < 2 or not all(isinstance(o, str) for o in opts):
            raise ValueError(f"{where}: multiple-choice question {rec['id']!r} needs a list of >= 2 options")
        letters = [o.split(".", 1)[0].strip().upper() for o in opts]
        if str(rec["ground_truth"]).strip().upper() not in letters:
            raise ValueError(f"{where}: ground_truth {rec['ground_truth']!r} of {rec['id']!r} is not one of "
                             f"the option letters {letters}")
    else:
        try:
            gt = float(rec["ground_truth"])
        except (TypeError, ValueError):
            raise ValueError(f"{where}: numeric question {rec['id']!r} has a non-numeric ground_truth "
                             f"{rec['ground_truth']!r}") from None
        if not gt > 0:
            raise ValueError(f"{where}: numeric ground_truth of {rec['id']!r} must be > 0 for relative "
                             f"accuracy, got {gt}")
    return rec


def _read_any(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: malformed JSON: {e.msg}") from None
        if isinstance(data, dict):
            data = data.get("questions", data.get("data"))
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a list of question records")
        return [validate_record(r, f"{path}[{i}]") for i, r in enumerate(data)]
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(f"{path}: reading .parquet needs pyarrow (pip install pyarrow), or convert "
                             f"it to .jsonl") from None
        rows = pq.read_table(path).to_pylist()
        return [validate_record(r, f"{path}[{i}]") for i, r in enumerate(rows)]
    raise ValueError(f"{path}: unsupported question file type {path.suffix!r} (use .jsonl, .json, .parquet)")


def episode_dirs(path: str | Path) -> list[Path]:
    path = Path(path)
    if (path / "episode.json").is_file():
        return [path]
    return sorted(p for p in path.iterdir() if (p / "episode.json").is_file()) if path.is_dir() else []


def load_questions(path: str | Path) -> list[dict]:
    """All question records under `path` (see module doc); ValueError naming the problem."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"question source {path} does not exist")
    eps = episode_dirs(path)
    if eps:
        return [r for ep in eps for r in read_jsonl(ep / "questions.jsonl")]
    if path.is_file():
        return _read_any(path)
    files = sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".json", ".parquet") and p.is_file())
    if not files:
        raise ValueError(f"{path}: no episodes and no question files (.jsonl/.json/.parquet) found")
    return [r for f in files for r in _read_any(f)]


__all__ = ["load_questions", "read_jsonl", "validate_record", "episode_dirs", "TASKS", "MC_TASKS", "NA_TASKS"]
