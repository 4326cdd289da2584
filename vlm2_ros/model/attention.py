"""Multi-head cross-attention shared by the fusion block and the memory reads."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CrossAttention(nn.Module):
    """softmax(Q K^T / sqrt(d_head)) V with learned projections; queries and keys/values differ.

    Plain (un-normalised) inputs: callers decide where layer norms and residuals go, so the
    module stays exactly the Attn(Q, KV) of the paper's equations.
    """

    def __init__(self, dim: int, num_heads: int, kv_dim: int | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        kv_dim = kv_dim or dim
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(kv_dim, dim)
        self.v_proj = nn.Linear(kv_dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        # query [B,Nq,C], context [B,Nk,Ckv], context_mask [B,Nk] bool (True = attend)
        b, nq, c = query.shape
        nk = context.shape[1]
        h = self.num_heads
        q = self.q_proj(query).view(b, nq, h, c // h).transpose(1, 2)    # [B,h,Nq,d]
        k = self.k_proj(context).view(b, nk, h, c // h).transpose(1, 2)  # [B,h,Nk,d]
        v = self.v_proj(context).view(b, nk, h, c // h).transpose(1, 2)  # [B,h,Nk,d]
        mask = None if context_mask is None else context_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)    # [B,h,Nq,d]
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, c))


class MLP(nn.Module):
    """Two linear layers with a GELU between them."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))
