"""Number answers decoded by minimum Bayes risk over the model's samples, with MRA as the gain."""
import dataclasses

import numpy as np
import pytest
import torch

from conftest import make_frames
from vlm2_ros.engine.engine import number_text
from vlm2_ros.engine.number_decoding import (NumberDecision, decode_number, decode_values, lognormal_quantiles,
                                             relative_accuracy)
from vlm2_ros.evaluation.metrics import mean_relative_accuracy
from vlm2_ros.model.language_bridge import GeneratedText
from vlm2_ros.model.prompt import asks_count, asks_measure

NUMBER_QUESTION = "How many chairs are in this room?"


def test_relative_accuracy_is_vsi_bench_mra():
    assert relative_accuracy(np.array([11.0]), np.array([10.0]))[0, 0] == pytest.approx(0.9)
    assert mean_relative_accuracy(11.0, 10.0) == pytest.approx(0.9)       # the metric uses the same rule
    assert relative_accuracy(np.array([5.0, 10.0]), np.array([10.0, 20.0])).shape == (2, 2)


def test_the_value_closest_to_all_samples_wins_not_the_most_frequent():
    # 11 is each other sample's near neighbour: mean MRA (0.9 + 1 + 0.9 + 0) / 4
    decision = decode_number(["10", "11", "12", "100"])
    assert decision.value == 11 and decision.expected_accuracy == pytest.approx(0.7) and decision.samples == 4
    # greedy digits could split 11.9 / 114.5; the samples' mass decides
    assert decode_number(["114.5", "110", "11.9", "112", "no idea"]).value in (110, 112)
    assert decode_number(["0", "3", "3"]).value == 3               # 0 can be proposed, not scored against
    assert decode_number(["none", "unknown"]) is None and decode_number(["0"]) is None


def test_engine_answers_numbers_from_samples(tiny_model_factory, monkeypatch):
    from vlm2_ros.engine.engine import SpatialMemoryEngine

    engine = SpatialMemoryEngine(tiny_model_factory(), weights="test")
    for i, frame in enumerate(make_frames(3)):
        engine.ingest(frame, 1_000 + i)
    drawn, generate = [], engine.model.bridge.generate

    def with_samples(tokens, question, **kwargs):       # the model's own samples, replaced by known ones
        drawn.append(kwargs.get("num_samples", 0))
        out = generate(tokens, question, **kwargs)
        return dataclasses.replace(out, samples=("10", "11", "12", "100")) if out.samples else out

    monkeypatch.setattr(engine.model.bridge, "generate", with_samples)
    answer = engine.query(NUMBER_QUESTION)
    assert drawn == [16] and answer.value == 11 and answer.text == "11"
    assert answer.confidence == pytest.approx(0.7) and answer.evidence
    engine.query("Which is nearer?\nA. sofa\nB. lamp")                # a choice: no samples drawn
    assert drawn == [16, 0]
    greedy = SpatialMemoryEngine(engine.model, weights="test", number_samples=0)
    for i, frame in enumerate(make_frames(3)):
        greedy.ingest(frame, 1_000 + i)
    text = greedy.query(NUMBER_QUESTION).text
    assert drawn == [16, 0, 0]                                          # number_samples 0: greedy
    assert text == generate(greedy.model.read_memory(greedy.stream).tokens, NUMBER_QUESTION).text
    with pytest.raises(ValueError, match="number_samples"):
        SpatialMemoryEngine(engine.model, weights="test", number_samples=-1)


def test_lognormal_quantiles_stand_in_for_samples():
    quantiles = lognormal_quantiles(np.log(2.0), 0.1, count=15)
    assert quantiles.shape == (15,) and np.all(np.diff(quantiles) > 0)
    assert quantiles[7] == pytest.approx(2.0)                        # the middle level is the median
    assert quantiles[0] * quantiles[-1] == pytest.approx(4.0)        # symmetric on the log scale
    assert decode_values(quantiles).value == pytest.approx(2.0, rel=0.05)
    wide = decode_values(lognormal_quantiles(np.log(2.0), 1.0))
    assert wide.expected_accuracy < decode_values(quantiles).expected_accuracy   # less sure, lower confidence
    with pytest.raises(ValueError, match="log_std"):
        lognormal_quantiles(0.0, 0.0)


def test_count_questions_are_told_from_questions_in_units():
    assert asks_count("How many chair(s) are in this room?") and asks_count("Count them. How many are there?")
    assert asks_count("What is the number of chair(s) in the room?")   # one of the synthetic world's templates
    assert not asks_count("What is the number of meters between the sofa and the bed?")
    # a measure is what a number head answers: a number question that is not a count
    assert asks_measure("How many meters apart are the sofa and the bed?") and asks_measure("How far is the door?")
    assert not asks_measure("What is the number of chair(s) in the room?") and not asks_measure("Describe the room.")
    assert not asks_count("How many meters apart are the sofa and the bed?")
    assert not asks_count("How many square meters is this room?") and not asks_count("How far is the door?")


def test_number_text_keeps_three_significant_digits_without_exponents():
    text = [number_text(NumberDecision(v, 1.0, 1)) for v in (159.4, 2.0734, 1100.0, 3.0, 0.0421)]
    assert text == ["159", "2.07", "1100", "3", "0.0421"]


def test_engine_answers_numbers_from_the_number_head(monkeypatch):
    from vlm2_ros.engine.engine import QueryCanceled, SpatialMemoryEngine
    from vlm2_ros.model.checkpoint import build_model
    from vlm2_ros.model.presets import preset_config

    config = preset_config("tiny")
    config.bridge.number_head = True
    torch.manual_seed(0)
    engine = SpatialMemoryEngine(build_model(config), weights="test")
    for i, frame in enumerate(make_frames(3)):
        engine.ingest(frame, 1_000 + i)
    bridge = engine.model.bridge
    monkeypatch.setattr(bridge, "generate", lambda *a, **k: pytest.fail("a number is not generated as text"))
    tokens = engine.model.read_memory(engine.stream).tokens
    distance = "What is the distance in meters between the sofa and the bed?"
    estimate = bridge.estimate_number(tokens, distance)
    answer = engine.query(distance)
    expected = decode_values(lognormal_quantiles(estimate.log_mean, estimate.log_std))
    assert answer.kind == "number" and answer.text == number_text(expected) and answer.value == float(answer.text)
    assert answer.confidence == pytest.approx(expected.expected_accuracy) and answer.evidence
    monkeypatch.setattr(bridge, "estimate_number", lambda *a, **k: dataclasses.replace(estimate, log_mean=-800.0))
    nothing = engine.query(distance)                    # a log below what a float holds
    assert nothing.value == 0 and nothing.confidence == 1.0
    with pytest.raises(QueryCanceled):
        engine.query(distance, should_stop=lambda: True)
    # a count, in each of the synthetic world's wordings, the language model writes: from its samples
    monkeypatch.setattr(bridge, "estimate_number", lambda *a, **k: pytest.fail("a count is not the head's"))
    monkeypatch.setattr(bridge, "generate", lambda *a, **k: GeneratedText(
        "2", [7], [0.9], torch.full((tokens.shape[1],), 1.0 / tokens.shape[1]), samples=("2", "2", "3")))
    for question in (NUMBER_QUESTION, "What is the number of chair(s) in the room?",
                     "Count the chair(s) in this room. How many are there?"):
        count = engine.query(question)
        assert count.kind == "number" and count.value == 2 and count.text == "2"
