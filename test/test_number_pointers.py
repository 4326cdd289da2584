"""The number head's memory pointers: the measures of the boxes they point at."""
import math

import pytest
import torch

from vlm2_ros.model.number_pointers import (EMPTY, MEASURE_FLOORS, MEASURES, BoxLayout, MemoryPointers,
                                            PointerInputs, box_measures)
from vlm2_ros.model.object_memory import ObjectBox, object_tokens


def test_measures_are_the_closest_point_distance_centre_distance_longest_extent_and_floor_area():
    boxes = torch.tensor([[[1.0, 1.0, 0.5, 1.0, 0.8, 1.0],       # A: 1 x 0.8 x 1 m at (1, 1)
                           [4.0, 1.5, 0.5, 2.0, 2.0, 1.0],       # B: 2 x 2 x 1 m at (4, 1.5)
                           [9.0, 9.0, 0.5, 1.0, 1.0, 1.0]]])     # another, not pointed at
    weights = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    measures = box_measures(weights, boxes)[0]
    # closest points: x gap 3 - (1 + 2) / 2 = 1.5; y 0.5 - (0.8 + 2) / 2 < 0: none; z none
    truth = [1.5, math.hypot(3.0, 0.5), 1.0, 1.0 * 0.8]
    for name, value, exact, floor in zip(MEASURES, measures.tolist(), truth, MEASURE_FLOORS):
        assert value == pytest.approx(math.log(exact + floor), abs=1e-4), name
    # either way round the same distance; a pointer split between two boxes measures their mean box
    assert box_measures(weights.flip(1), boxes)[0, 0] == pytest.approx(float(measures[0]))
    halves = torch.tensor([[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]])
    assert box_measures(halves, boxes)[0, 2] == pytest.approx(math.log(1.5 + MEASURE_FLOORS[2]))


def test_pointers_read_object_tokens_and_never_point_at_empty_ones():
    torch.manual_seed(0)
    classes, scale, dim, hidden = 11, 4.0, 32, 16
    boxes = [ObjectBox(0, (3.0, 2.0, 1.4), (6.0, 4.0, 2.8)), ObjectBox(1, (1.0, 1.0, 0.4), (0.5, 0.5, 0.9)),
             ObjectBox(2, (4.0, 3.0, 0.4), (1.6, 0.8, 0.7))]
    tokens = object_tokens(boxes, classes, 6, dim, scale)                   # [1,6,C]: 3 boxes, 3 empty
    pointers = MemoryPointers(hidden, dim, BoxLayout(classes, scale))
    inputs = PointerInputs(torch.randn(2, 5, hidden), torch.tensor([[True] * 5, [True, True, True, False, False]]),
                           torch.randn(2, 6, hidden), tokens.expand(2, -1, -1))
    reading = pointers(torch.randn(2, hidden), inputs)
    assert reading.logits.shape == (2, 2, 6) and reading.word_logits.shape == (2, 2, 5)
    assert bool((reading.logits[..., 3:] == EMPTY).all()) and torch.isfinite(reading.measures).all()
    assert bool((reading.word_logits[1, :, 3:] == EMPTY).all())          # nor at a word that is not the question's
    # the longest extent any pointer can measure is a remembered box's: the room's 6 m at most
    assert float(reading.measures.detach()[:, 2].exp().max()) <= 6.0 + MEASURE_FLOORS[2] + 1e-4
    # a memory with nothing in it gives finite measures and gradients
    empty = PointerInputs(inputs.question_hidden, inputs.question_mask, inputs.memory_hidden,
                          torch.zeros_like(inputs.memory_tokens))
    hidden_state = torch.randn(2, hidden, requires_grad=True)
    out = pointers(hidden_state, empty)
    out.measures.sum().backward()
    assert torch.isfinite(out.measures).all() and torch.isfinite(hidden_state.grad).all()


def test_a_layout_that_does_not_fit_the_tokens_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        MemoryPointers(16, 12, BoxLayout(11, 4.0))
