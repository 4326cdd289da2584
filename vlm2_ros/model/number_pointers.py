"""Memory pointers for the number head: a number answer measured on the boxes it points at.

A small language model trained from scratch on a CPU learns to name the object a question asks
about, but not to compute a closest-point distance or an area from the coordinates in its memory
(on the true boxes of the 12 held-out scenes the tiny bridge scored 35.9 % on absolute distances).
An object memory (model.object_memory) states those coordinates, so the head does the arithmetic
and the language model does the reading: from the hidden state that predicts the answer, two soft
pointers (A, B) over the memory tokens, each found by way of the question's words, and from the
boxes they select, log-scale measures:

    closest-point distance between A and B, distance between their centres (a perceived box's
    extents are less sure than its centre), longest extent of A, floor area of A

The number head adds a learnt combination of them (its weights also from the hidden state) to
its own estimate of the answer's log: `log answer = base + sum_k w_k * measure_k`. A distance
question can then say "1 x the distance", a room question "1 x the area of the room's box", an
object size question "1 x the longest extent, + log 100 for centimetres". Everything is learnt:
which tokens the pointers select, and how the measures combine. (Counts are not the head's: the
language model writes them, prompt.asks_measure.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MEASURES = ("closest_distance_ab", "centre_distance_ab", "longest_extent_a", "floor_area_a")
# added inside each log so that a zero gap or a flat box stays finite (metres, square metres):
# below what the synthetic world's objects measure
MEASURE_FLOORS = (0.05, 0.05, 0.01, 0.01)
POINTERS = 2                    # A, B
EMPTY = -1.0e4                  # a pointer's logit on an empty memory token: finite, so no NaN anywhere
QUESTION_POSITIONS = 128        # word places told apart (later ones share the last): "the first name", "the second"


@dataclass(frozen=True)
class BoxLayout:
    """Where an object memory token keeps its box: its class one-hot fills the first
    `box_offset` channels, then centre (x, y, z) and extents (x, y, z) in units of `scale_m`
    (model.object_memory.object_tokens; z is up)."""
    box_offset: int
    scale_m: float


@dataclass(frozen=True)
class TokenBoxes:
    """The boxes an object memory's tokens hold (BoxLayout)."""
    occupied: torch.Tensor      # [...,M] bool: the token holds a box (unused tokens are all zeros)
    classes: torch.Tensor       # [...,M] int64: its class (-1 where empty)
    boxes: torch.Tensor         # [...,M,6] centre and extents, metres


def token_boxes(memory_tokens: torch.Tensor, layout: BoxLayout) -> TokenBoxes:
    """Read memory_tokens [...,M,C] as object tokens laid out as `layout` says."""
    memory_tokens = memory_tokens.float()
    occupied = memory_tokens.abs().sum(-1) > 0
    classes = memory_tokens[..., :layout.box_offset].argmax(-1).masked_fill(~occupied, -1)
    boxes = memory_tokens[..., layout.box_offset:layout.box_offset + 6] * layout.scale_m
    return TokenBoxes(occupied, classes, boxes)


@dataclass(frozen=True)
class PointerInputs:
    """What the pointers read besides the answer position's state, per question row."""
    question_hidden: torch.Tensor   # [N,L,d] the final layer's states over the question's tokens ...
    question_mask: torch.Tensor     # [N,L] bool: ... True on them (never on an answer token: no peeking)
    memory_hidden: torch.Tensor     # [N,M,d] the final layer's states at the memory tokens
    memory_tokens: torch.Tensor     # [N,M,C] the memory tokens themselves


@dataclass(frozen=True)
class PointerReading:
    word_logits: torch.Tensor   # [N,2,L] pointers A and B over the question's words
    logits: torch.Tensor        # [N,2,M] pointers A and B over the memory tokens (EMPTY on empty ones)
    measures: torch.Tensor      # [N,len(MEASURES)] log-scale measures


class MemoryPointers(nn.Module):
    """hidden [N,d] (the answer position's state) and PointerInputs -> PointerReading.

    Two hops, both learnt. Each pointer first attends over the question's words from the answer
    position (the final layer's state at a word still says which word it is, where the answer
    position's mixes the whole question), then over the memory tokens with what it found. A
    memory token's key reads both the language model's state there and the token itself, whose
    class one-hot a word's state can match directly."""

    def __init__(self, hidden_size: int, memory_dim: int, layout: BoxLayout, key_dim: int = 64):
        super().__init__()
        if layout.box_offset + 6 > memory_dim or layout.box_offset < 1 or layout.scale_m <= 0:
            raise ValueError(f"box layout {layout} does not fit {memory_dim}-channel memory tokens")
        self.layout = layout
        self.key_dim = key_dim
        self.word_query = nn.Linear(hidden_size, POINTERS * key_dim)
        self.word_key = nn.Linear(hidden_size, key_dim)
        # a word's place in the question, which the final layer's states barely keep
        self.word_position = nn.Embedding(QUESTION_POSITIONS, key_dim)
        self.memory_query = nn.Linear(hidden_size, key_dim)     # from the words a pointer found ...
        self.memory_query_answer = nn.Linear(hidden_size, POINTERS * key_dim)   # ... and the answer position
        self.key_hidden = nn.Linear(hidden_size, key_dim)
        self.key_token = nn.Linear(memory_dim, key_dim)

    def forward(self, hidden: torch.Tensor, inputs: PointerInputs) -> PointerReading:
        r = self.key_dim
        hidden, words = hidden.float(), inputs.question_hidden.float()
        memory_tokens = inputs.memory_tokens.float()
        read = token_boxes(memory_tokens, self.layout)                                   # [N,M], [N,M,6]
        # hop 1: each pointer's words
        places = torch.arange(words.shape[1], device=words.device).clamp(max=QUESTION_POSITIONS - 1)
        word_keys = self.word_key(words) + self.word_position(places)                     # [N,L,r]
        word_scores = torch.einsum("nkr,nlr->nkl", self.word_query(hidden).unflatten(-1, (POINTERS, r)),
                                   word_keys) / r ** 0.5                                # [N,2,L]
        word_scores = word_scores.masked_fill(~inputs.question_mask[:, None], EMPTY)
        found = torch.einsum("nkl,nld->nkd", torch.softmax(word_scores, dim=-1), words)   # [N,2,d]
        # hop 2: the memory tokens
        query = self.memory_query(found) + self.memory_query_answer(hidden).unflatten(-1, (POINTERS, r))  # [N,2,r]
        keys = self.key_hidden(inputs.memory_hidden.float()) + self.key_token(memory_tokens)   # [N,M,r]
        scores = torch.einsum("nkr,nmr->nkm", query, keys) / r ** 0.5                    # [N,2,M]
        logits = scores.masked_fill(~read.occupied[:, None], EMPTY)                      # [N,2,M]
        measures = box_measures(torch.softmax(logits, dim=-1), read.boxes)               # [N,4]
        return PointerReading(word_scores, logits, measures)


def box_measures(weights: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """MEASURES' logs from pointer weights [N,2,M] over boxes [N,M,6] (centre, extents; metres)
    -> [N,len(MEASURES)]. A pointer spread over several boxes measures their weighted mean box."""
    picked = torch.einsum("nkm,nmc->nkc", weights, boxes)                                 # [N,2,6]
    centre, extent = picked[..., :3], picked[..., 3:].clamp(min=0.0)                      # [N,2,3]
    gap = F.relu((centre[:, 0] - centre[:, 1]).abs() - (extent[:, 0] + extent[:, 1]) / 2)   # [N,3] per axis
    distance = (gap.square().sum(-1) + 1e-8).sqrt()                                       # [N] closest points
    between = (centre[:, 0] - centre[:, 1]).norm(dim=-1)                                  # [N] centres
    raw = torch.stack([distance, between, extent[:, 0].amax(-1), extent[:, 0, 0] * extent[:, 0, 1]], -1)
    return (raw + raw.new_tensor(MEASURE_FLOORS)).log()
