"""Episodic memory E: a fixed-capacity bank of memory-enhanced tokens M_t.

E appends M_t until it holds L_e entries; then M_t replaces one entry, chosen by `replacement`:
- "appearance" (the paper's rule): the entry most cosine-similar to M_t, comparing token means (a
  viewpoint-tolerant summary of the entry; the summary is our choice, the paper does not say).
- "place": the entry whose patches the other entries (M_t included) already cover most, a patch
  being covered when another entry has a patch in the same cube of `place_cell_m` metres (by the
  points the entries carry); ties go to the entry most like M_t. In a room every view looks much
  alike on average, so the paper's rule drops views of things no other entry shows; this one
  keeps the memory spread over the places seen. It needs world-frame points: while any entry or
  M_t lacks a camera pose it falls back to "appearance".
Out-of-place updates for the same reasons as the working memory.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .provenance import Provenance, place_cells

REPLACEMENTS = ("appearance", "place")


@dataclass
class EpisodicMemoryConfig:
    capacity: int = 32                 # L_e (the paper's best value)
    replacement: str = "appearance"    # which entry a full memory overwrites (REPLACEMENTS)
    place_cell_m: float = 0.5          # patches in one cube of this size are the same place ("place"
                                       # replacement; first sightings, Provenance.with_first_sightings)

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"episodic memory capacity must be >= 1, got {self.capacity}")
        if self.replacement not in REPLACEMENTS:
            raise ValueError(f"episodic replacement must be one of {REPLACEMENTS}, got {self.replacement!r}")
        if not self.place_cell_m > 0:
            raise ValueError(f"place_cell_m must be positive, got {self.place_cell_m}")


def entry_keys(tokens: torch.Tensor) -> torch.Tensor:
    """Unit-norm summary of entries: tokens [..., N, C] -> [..., C]."""
    return F.normalize(tokens.float().mean(dim=-2), dim=-1)


def place_redundancy(points: torch.Tensor, cell_m: float) -> torch.Tensor:
    """Per entry, the share of its patches that lie in a cell where another entry also has a patch:
    points [B,m,N,3] (metres) -> [B,m]."""
    b, m, n, _ = points.shape
    cell = place_cells(points.flatten(1, 2), cell_m).view(-1)                                   # [B*m*N]
    entry = torch.arange(b * m).repeat_interleave(n)                                           # [B*m*N]
    pairs = torch.unique(cell * (b * m) + entry)                         # one key per (cell, entry) pair
    entries_per_cell = torch.bincount(pairs // (b * m), minlength=int(cell.max()) + 1)
    return (entries_per_cell[cell] > 1).view(b, m, n).float().mean(dim=-1)


@dataclass(frozen=True)
class EpisodicMemory:
    config: EpisodicMemoryConfig
    tokens: torch.Tensor      # [B,n,N,C], n <= capacity
    provenance: Provenance
    replacements: int = 0     # how many inserts overwrote an entry (for status)

    @classmethod
    def empty(cls, config: EpisodicMemoryConfig, batch_size: int, num_tokens: int, dim: int,
              device=None, dtype=None) -> "EpisodicMemory":
        return cls(config, torch.zeros(batch_size, 0, num_tokens, dim, device=device, dtype=dtype),
                   Provenance.empty(batch_size, num_tokens))

    @property
    def capacity(self) -> int:
        return self.config.capacity

    def __len__(self) -> int:
        return self.tokens.shape[1]

    def insert(self, memory: torch.Tensor, provenance: Provenance) -> tuple["EpisodicMemory", torch.Tensor]:
        """Insert M_t [B,N,C]; returns the new memory and the slot written per batch element [B]."""
        b = memory.shape[0]
        if len(self) < self.capacity:
            slots = torch.full((b,), len(self), dtype=torch.long)
            tokens = torch.cat([self.tokens, memory.unsqueeze(1)], dim=1)
            return dataclasses.replace(self, tokens=tokens,
                                       provenance=self.provenance.append(provenance, self.capacity)), slots
        score = torch.einsum("bnc,bc->bn", entry_keys(self.tokens), entry_keys(memory)).cpu()  # [B,n] similarity
        if self.config.replacement == "place":
            points = torch.cat([self.provenance.patch_points, provenance.patch_points], dim=1)   # [B,n+1,N,3]
            posed = torch.cat([self.provenance.has_pose, provenance.has_pose], dim=1).all(dim=1)  # [B]
            by_place = place_redundancy(points, self.config.place_cell_m)[:, :-1] + 1e-3 * score     # similarity breaks ties
            score = torch.where(posed[:, None], by_place, score)
        slots = score.argmax(dim=1)
        tokens = self.tokens.clone()
        tokens[torch.arange(b), slots.to(tokens.device)] = memory
        return dataclasses.replace(self, tokens=tokens, provenance=self.provenance.replace(slots, provenance),
                                   replacements=self.replacements + 1), slots
