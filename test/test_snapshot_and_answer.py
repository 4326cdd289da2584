"""Snapshot integrity checks and answer parsing."""
import json

import pytest
import torch

from vlm2_ros.engine.answer import parse_choice, parse_number
from vlm2_ros.engine.snapshot import INDEX_NAME, SnapshotError, read_snapshot, write_snapshot
from vlm2_ros.model.prompt import build_prompt, expected_answer_kind, question_option_texts, question_options


def sample_tensors():
    return {"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64),
            "c": torch.randn(2, 2, dtype=torch.float64), "d": torch.tensor([True, False])}


def test_snapshot_round_trip_is_bit_exact_and_replaces_previous(tmp_path):
    first = sample_tensors()
    write_snapshot(tmp_path, first, {"n": 1})
    second = sample_tensors()
    write_snapshot(tmp_path, second, {"n": 2})
    tensors, meta = read_snapshot(tmp_path)
    assert meta == {"n": 2}
    assert tensors.keys() == second.keys()
    assert all(torch.equal(tensors[k], second[k]) and tensors[k].dtype == second[k].dtype for k in second)
    assert len(list(tmp_path.glob("memory-*.safetensors"))) == 1  # old tensor file cleaned up
    assert not list(tmp_path.glob(".*tmp"))                       # no temp files left


def _tensor_file(directory):
    return directory / json.loads((directory / INDEX_NAME).read_text())["tensor_file"]


@pytest.mark.parametrize("damage,message", [
    (lambda d: _tensor_file(d).write_bytes(_tensor_file(d).read_bytes()[:-7]), "checksum"),
    (lambda d: _tensor_file(d).write_bytes(b"X" + _tensor_file(d).read_bytes()[1:]), "checksum"),
    (lambda d: _tensor_file(d).unlink(), "does not exist"),
    (lambda d: (d / INDEX_NAME).write_text("{not json"), "invalid JSON"),
    (lambda d: (d / INDEX_NAME).unlink(), "does not exist: no snapshot there"),
    (lambda d: (d / INDEX_NAME).write_text(json.dumps(
        {**json.loads((d / INDEX_NAME).read_text()), "version": 99})), "version 99"),
    (lambda d: (d / INDEX_NAME).write_text(json.dumps(
        {**json.loads((d / INDEX_NAME).read_text()), "tensor_file": "../../etc/passwd"})), "invalid tensor_file"),
])
def test_damaged_snapshot_is_refused_with_clear_error(tmp_path, damage, message):
    write_snapshot(tmp_path, sample_tensors(), {})
    damage(tmp_path)
    with pytest.raises(SnapshotError, match=message):
        read_snapshot(tmp_path)


def test_question_kinds_and_options():
    mc = "Which is closer to the sofa?\nA. chair\nB. lamp\nC. tv\nD. bed\nAnswer with the option's letter."
    assert question_options(mc) == ["A", "B", "C", "D"]
    assert expected_answer_kind(mc) == "choice"
    assert expected_answer_kind("How many chairs are in this room?") == "number"
    assert expected_answer_kind("What is the number of chair(s) in the room?") == "number"
    assert expected_answer_kind("What is the distance between the bed and the tv (in meters)?") == "number"
    assert expected_answer_kind("Describe the room.") == "text"
    assert question_options("Is it a table? A lamp is nearby.") == []


def test_option_texts_are_read_from_the_prompts_option_lines():
    prompt = build_prompt("Which quarter holds the bed?", ["north-east", "south west ", "C. north-west"])
    assert question_option_texts(prompt) == {"A": "north-east", "B": "south west", "C": "north-west"}
    assert question_option_texts("Pick one:\n(A) chair\nB) sofa") == {"A": "chair", "B": "sofa"}
    # inline options, a single option, or letters out of order are not a list to score
    assert question_option_texts("Is it A. chair or B. sofa?") == {}
    assert question_option_texts("A. chair\nAnswer.") == {}
    assert question_option_texts("A. chair\nC. sofa") == {}


@pytest.mark.parametrize("text,value", [("3", 3.0), ("2.75 meters", 2.75), ("about -1.5", -1.5),
                                        ("1e1", 10.0), ("none", None), ("", None)])
def test_parse_number(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("text,choice", [("B", "B"), ("b.", "B"), ("C) lamp", "C"), ("(A)", "A"),
                                         ("E", None), ("the chair", None), ("", None)])
def test_parse_choice_uses_first_word(text, choice):
    assert parse_choice(text, ["A", "B", "C", "D"]) == choice
