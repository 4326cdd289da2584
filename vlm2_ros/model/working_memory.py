"""Working memory W: a sliding window over the last L_w fused frames H_t (FIFO).

Updates are out of place: a reader holding the previous tensors keeps a consistent snapshot
(queries run concurrently with ingest), autograd sees no in-place writes (training unrolls
the stream), and the old tensors are freed, so memory stays bounded by L_w.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .provenance import Provenance


@dataclass
class WorkingMemoryConfig:
    capacity: int = 8  # L_w (the paper's best value)

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"working memory capacity must be >= 1, got {self.capacity}")


@dataclass(frozen=True)
class WorkingMemory:
    capacity: int
    tokens: torch.Tensor      # [B,n,N,C], n <= capacity, oldest first
    provenance: Provenance    # n entries

    @classmethod
    def empty(cls, capacity: int, batch_size: int, num_tokens: int, dim: int,
              device=None, dtype=None) -> "WorkingMemory":
        return cls(capacity, torch.zeros(batch_size, 0, num_tokens, dim, device=device, dtype=dtype),
                   Provenance.empty(batch_size, num_tokens))

    def __len__(self) -> int:
        return self.tokens.shape[1]

    def push(self, fused: torch.Tensor, provenance: Provenance) -> "WorkingMemory":
        """Append H_t [B,N,C]; the oldest entry leaves once capacity is exceeded."""
        tokens = torch.cat([self.tokens, fused.unsqueeze(1)], dim=1)[:, -self.capacity:]
        return WorkingMemory(self.capacity, tokens, self.provenance.append(provenance, self.capacity))
