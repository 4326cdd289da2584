"""What the language model reads at question time: the whole memory at a fixed size.

Every entry (L_w working + L_e episodic) is average-pooled from its hs x ws patch grid to a
small gh x gw grid, tagged with a learned source embedding (working / episodic) and laid out in
time order (episodic entries by frame index, then the working window oldest first), so the
language model's own positions carry "which came first". Question cost is fixed by
(L_w + L_e) * gh * gw, whatever the length of the stream.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .dual_memory import MemoryState

WORKING, EPISODIC = 0, 1
SOURCE_NAMES = ("working", "episodic")


@dataclass(frozen=True)
class ReadoutTokens:
    tokens: torch.Tensor        # [B,M,C], M = entries * gh * gw
    entry_source: torch.Tensor  # [B,E] WORKING / EPISODIC per entry, E entries in layout order
    entry_slot: torch.Tensor    # [B,E] slot of the entry inside its memory
    tokens_per_entry: int


class MemoryReadout(nn.Module):
    def __init__(self, dim: int, entry_grid: tuple[int, int], readout_grid: tuple[int, int]):
        super().__init__()
        self.entry_grid = tuple(entry_grid)
        self.readout_grid = tuple(readout_grid)
        self.source_embedding = nn.Embedding(2, dim)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        # tokens [B,n,hs*ws,C] -> [B,n,gh*gw,C]
        b, n, _, c = tokens.shape
        if n == 0:                  # a memory without entries (e.g. no episodic memory in mode "none")
            return tokens.new_zeros(b, 0, self.readout_grid[0] * self.readout_grid[1], c)
        hs, ws = self.entry_grid
        grid = tokens.reshape(b * n, hs, ws, c).permute(0, 3, 1, 2)       # [B*n,C,hs,ws]
        pooled = F.adaptive_avg_pool2d(grid, self.readout_grid)           # [B*n,C,gh,gw]
        return pooled.flatten(2).transpose(1, 2).reshape(b, n, -1, c)

    def forward(self, state: MemoryState) -> ReadoutTokens:
        episodic, working = state.episodic, state.working
        b = working.tokens.shape[0]
        # Episodic entries in time order; slots are per batch element.
        order = episodic.provenance.frame_index.argsort(dim=1).to(episodic.tokens.device)   # [B,ne]
        episodic_tokens = episodic.tokens[torch.arange(b, device=order.device)[:, None], order]
        parts = [self.pool(episodic_tokens) + self.source_embedding.weight[EPISODIC],
                 self.pool(working.tokens) + self.source_embedding.weight[WORKING]]
        tokens = torch.cat(parts, dim=1)                                  # [B,E,k,C]
        source = torch.cat([torch.full((b, len(episodic)), EPISODIC),
                            torch.full((b, len(working)), WORKING)], dim=1)
        slot = torch.cat([order.cpu(), torch.arange(len(working)).expand(b, -1)], dim=1)
        return ReadoutTokens(tokens.flatten(1, 2), source, slot, tokens.shape[2])
