"""Dual-memory read and gate (VLM² Sec. 3, Algorithm 1).

    M^w_t = Attn(Q = H_t, KV = W_t)         W_t: the working window, H_t already pushed
    M^e_t = Attn(Q = H_t, KV = E_{t-1})     E before M_t is inserted
    g_t   = sigmoid(MLP([M^w_t ; M^e_t]))   element-wise gate
    M_t   = g_t * M^w_t + (1 - g_t) * M^e_t
Choices the paper leaves open: W_t includes the current frame, so the read is never empty and
M_t carries the new view's content into E; while E is still empty M^e_t := M^w_t (so M_t = M^w_t);
queries and keys are layer-normed, the attention itself is exactly Attn(Q, KV).

`mode` selects the paper's ablation: "dual"; "working" (W only, no E); "episodic" (E plus the
current frame: W shrinks to L_w = 1); "none" (the current frame only).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .attention import MLP, CrossAttention
from .episodic_memory import EpisodicMemory, EpisodicMemoryConfig
from .provenance import Provenance
from .working_memory import WorkingMemory, WorkingMemoryConfig

MEMORY_MODES = ("dual", "working", "episodic", "none")


@dataclass
class DualMemoryConfig:
    dim: int = 256
    num_heads: int = 4
    working: WorkingMemoryConfig = field(default_factory=WorkingMemoryConfig)
    episodic: EpisodicMemoryConfig = field(default_factory=EpisodicMemoryConfig)
    mode: str = "dual"

    def __post_init__(self) -> None:
        if isinstance(self.working, dict):
            self.working = WorkingMemoryConfig(**self.working)
        if isinstance(self.episodic, dict):
            self.episodic = EpisodicMemoryConfig(**self.episodic)
        if self.mode not in MEMORY_MODES:
            raise ValueError(f"memory mode must be one of {MEMORY_MODES}, got {self.mode!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"memory dim {self.dim} not divisible by num_heads {self.num_heads}")


@dataclass(frozen=True)
class MemoryState:
    """Everything the stream remembers; immutable, each step returns a new one."""
    working: WorkingMemory
    episodic: EpisodicMemory


def memory_entries(memory: MemoryState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every entry a memory holds, episodic then the working window: tokens [B,E,N,C], the
    points they carry [B,E,N,3] and when each token's place was first seen [B,E,N]."""
    parts = (memory.episodic, memory.working)
    return (torch.cat([part.tokens for part in parts], dim=1),
            torch.cat([part.provenance.patch_points for part in parts], dim=1),
            torch.cat([part.provenance.first_seen for part in parts], dim=1))


class MemoryRead(nn.Module):
    """Attn(Q = H_t, KV = memory tokens) with layer-normed inputs."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim)
        self.memory_norm = nn.LayerNorm(dim)
        self.attention = CrossAttention(dim, num_heads)

    def forward(self, fused: torch.Tensor, memory_tokens: torch.Tensor) -> torch.Tensor:
        # fused [B,N,C], memory_tokens [B,n,N,C] -> [B,N,C]
        context = memory_tokens.flatten(1, 2)                                # [B,n*N,C]
        return self.attention(self.query_norm(fused), self.memory_norm(context))


class DualMemory(nn.Module):
    def __init__(self, config: DualMemoryConfig):
        super().__init__()
        self.config = config
        self.working_read = MemoryRead(config.dim, config.num_heads)
        self.episodic_read = MemoryRead(config.dim, config.num_heads)
        self.gate = MLP(2 * config.dim, config.dim, config.dim)

    @property
    def uses_episodic(self) -> bool:
        return self.config.mode in ("dual", "episodic")

    def empty_state(self, batch_size: int, num_tokens: int, device=None, dtype=None) -> MemoryState:
        c = self.config
        working_capacity = 1 if c.mode in ("episodic", "none") else c.working.capacity
        return MemoryState(
            WorkingMemory.empty(working_capacity, batch_size, num_tokens, c.dim, device, dtype),
            EpisodicMemory.empty(c.episodic, batch_size, num_tokens, c.dim, device, dtype))

    def combine(self, working_read: torch.Tensor, episodic_read: torch.Tensor):
        """g_t and M_t from the two reads [B,N,C]."""
        g = torch.sigmoid(self.gate(torch.cat([working_read, episodic_read], dim=-1)))
        return g * working_read + (1 - g) * episodic_read, g

    def forward(self, fused: torch.Tensor, state: MemoryState, provenance: Provenance):
        """One streaming step: H_t [B,N,C] -> (M_t [B,N,C] or None, new state, episodic slot [B] or None).

        Modes "working" and "none" keep no episodic memory, so M_t is neither needed nor computed.
        Frame t's patches take the first sightings the memory has of their places.
        """
        provenance = provenance.with_first_sightings([state.episodic.provenance, state.working.provenance],
                                                     self.config.episodic.place_cell_m)
        working = state.working.push(fused, provenance)
        if not self.uses_episodic:
            return None, MemoryState(working, state.episodic), None
        m_w = self.working_read(fused, working.tokens)
        if len(state.episodic) == 0:
            memory = m_w  # M^e := M^w while E is empty, so g drops out
        else:
            memory, _ = self.combine(m_w, self.episodic_read(fused, state.episodic.tokens))
        episodic, slots = state.episodic.insert(memory, provenance)
        return memory, MemoryState(working, episodic), slots
