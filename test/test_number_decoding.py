"""Number answers decoded by minimum Bayes risk over the model's samples, with MRA as the gain."""
import dataclasses

import numpy as np
import pytest

from conftest import make_frames
from vlm2_ros.engine.number_decoding import decode_number, relative_accuracy
from vlm2_ros.evaluation.metrics import mean_relative_accuracy

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
