"""Episodic memory E: a fixed-capacity bank of memory-enhanced tokens M_t.

E appends M_t until it holds L_e entries; then M_t replaces the entry most cosine-similar to
it, so redundant views collapse into one slot and distinct views survive. Similarity compares
token means (a viewpoint-tolerant summary of the entry; our choice, the paper does not say).
Out-of-place updates for the same reasons as the working memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .provenance import Provenance


@dataclass
class EpisodicMemoryConfig:
    capacity: int = 32  # L_e (the paper's best value)

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"episodic memory capacity must be >= 1, got {self.capacity}")


def entry_keys(tokens: torch.Tensor) -> torch.Tensor:
    """Unit-norm summary of entries: tokens [..., N, C] -> [..., C]."""
    return F.normalize(tokens.float().mean(dim=-2), dim=-1)


@dataclass(frozen=True)
class EpisodicMemory:
    capacity: int
    tokens: torch.Tensor      # [B,n,N,C], n <= capacity
    provenance: Provenance
    replacements: int = 0     # how many inserts overwrote an entry (for status)

    @classmethod
    def empty(cls, capacity: int, batch_size: int, num_tokens: int, dim: int,
              device=None, dtype=None) -> "EpisodicMemory":
        return cls(capacity, torch.zeros(batch_size, 0, num_tokens, dim, device=device, dtype=dtype),
                   Provenance.empty(batch_size, num_tokens))

    def __len__(self) -> int:
        return self.tokens.shape[1]

    def insert(self, memory: torch.Tensor, provenance: Provenance) -> tuple["EpisodicMemory", torch.Tensor]:
        """Insert M_t [B,N,C]; returns the new memory and the slot written per batch element [B]."""
        b = memory.shape[0]
        if len(self) < self.capacity:
            slots = torch.full((b,), len(self), dtype=torch.long)
            tokens = torch.cat([self.tokens, memory.unsqueeze(1)], dim=1)
            return EpisodicMemory(self.capacity, tokens, self.provenance.append(provenance, self.capacity),
                                  self.replacements), slots
        similarity = torch.einsum("bnc,bc->bn", entry_keys(self.tokens), entry_keys(memory))  # [B,n]
        slots = similarity.argmax(dim=1).cpu()
        tokens = self.tokens.clone()
        tokens[torch.arange(b), slots.to(tokens.device)] = memory
        return EpisodicMemory(self.capacity, tokens, self.provenance.replace(slots, provenance),
                              self.replacements + 1), slots
