"""What the language model reads at question time: the whole memory at a fixed size.

Every entry (L_w working + L_e episodic) is pooled from its hs x ws patch grid to a small gh x gw
grid, tagged with a learned source embedding (working / episodic) and laid out in
time order (episodic entries by frame index, then the working window oldest first), so the
language model's own positions carry "which came first". Question cost is fixed by
(L_w + L_e) * gh * gw, whatever the length of the stream.

Pooling ("readout_pool"):
    mean        each cell's tokens averaged: an object covering a few patches is blended into the
                walls and floor around it.
    objectness  each cell gives its one token that a learned linear score rates most likely to
                show an object (the score is trained against the rendered masks, `objectness_loss`
                in training): objects stay apart, each token as the memory stored it, at the same
                number of tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .dual_memory import MemoryState

WORKING, EPISODIC = 0, 1
SOURCE_NAMES = ("working", "episodic")
POOLS = ("mean", "objectness")


def mean_pool(tokens: torch.Tensor, entry_grid: tuple[int, int], readout_grid: tuple[int, int]) -> torch.Tensor:
    """Each entry's patch tokens averaged over the cells of the readout grid: [B,n,hs*ws,C] -> [B,n,gh*gw,C]."""
    b, n, _, c = tokens.shape
    grid = tokens.reshape(b * n, *entry_grid, c).permute(0, 3, 1, 2)      # [B*n,C,hs,ws]
    pooled = F.adaptive_avg_pool2d(grid, readout_grid)                     # [B*n,C,gh,gw]
    return pooled.flatten(2).transpose(1, 2).reshape(b, n, -1, c)


@dataclass(frozen=True)
class ReadoutTokens:
    tokens: torch.Tensor        # [B,M,C] what the language model reads
    entry_source: torch.Tensor  # [B,E] WORKING / EPISODIC per memory entry
    entry_slot: torch.Tensor    # [B,E] slot of the entry inside its memory
    token_entry: torch.Tensor   # [B,M] the entry (index into E) each token comes from; -1: none in particular


class MemoryReadout(nn.Module):
    def __init__(self, dim: int, entry_grid: tuple[int, int], readout_grid: tuple[int, int], pool: str = "mean"):
        super().__init__()
        self.entry_grid = tuple(entry_grid)
        self.readout_grid = tuple(readout_grid)
        if pool not in POOLS:
            raise ValueError(f"readout_pool must be one of {POOLS}, got {pool!r}")
        if pool == "objectness" and any(e % g for e, g in zip(self.entry_grid, self.readout_grid)):
            raise ValueError(f"readout_pool 'objectness' needs the entry grid {self.entry_grid} to split "
                             f"into whole cells of the readout grid {self.readout_grid}")
        self.source_embedding = nn.Embedding(2, dim)
        self.objectness = nn.Linear(dim, 1) if pool == "objectness" else None   # logit: the token shows an object

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        # tokens [B,n,hs*ws,C] -> [B,n,gh*gw,C]
        b, n, _, c = tokens.shape
        if n == 0:                  # a memory without entries (e.g. no episodic memory in mode "none")
            return tokens.new_zeros(b, 0, self.readout_grid[0] * self.readout_grid[1], c)
        if self.objectness is None:
            return mean_pool(tokens, self.entry_grid, self.readout_grid)
        (hs, ws), (gh, gw) = self.entry_grid, self.readout_grid
        cells = tokens.reshape(b, n, gh, hs // gh, gw, ws // gw, c).transpose(3, 4)   # [B,n,gh,gw,ch,cw,C]
        cells = cells.flatten(4, 5)                                       # [B,n,gh,gw,ch*cw,C]
        best = self.objectness(cells).argmax(dim=-2, keepdim=True)       # [B,n,gh,gw,1,1]
        picked = cells.gather(-2, best.expand(*best.shape[:-1], c))       # [B,n,gh,gw,1,C]
        return picked.reshape(b, n, gh * gw, c)

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
        token_entry = torch.arange(tokens.shape[1]).repeat_interleave(tokens.shape[2]).expand(b, -1)   # [B,E*k]
        return ReadoutTokens(tokens.flatten(1, 2), source, slot, token_entry)
