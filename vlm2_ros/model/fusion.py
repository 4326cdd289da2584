"""3D-aware fusion of semantic and geometry tokens (VLM² Sec. 3: position injection, view
alignment, cross-attention fusion).

Per frame t:
    C_t  = pool(X_t)                                  one 3D point per semantic patch
    F'_t = F_t + a_t * phi(C_t)                       adaptive 3D position injection
    G'_t = [MLP([G_t ; psi_v(Z_t)]) ; psi_g(pool(Z_t))]   viewpoint-aware alignment (hw+1 tokens)
    H_t  = F'_t + CrossAttn(Q = LN(F'_t), KV = LN(G'_t))  fusion (residual: our choice)
The gate a_t is our choice (the paper leaves it open): a per-patch sigmoid of a linear map of
[LN(F_t) ; phi(C_t) ; c_t], c_t the pooled geometry confidence, so unreliable points can be
shut out by the model itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MLP, CrossAttention


@dataclass
class FusionConfig:
    dim: int = 256             # C: semantic token / language-model hidden size
    geometry_dim: int = 128    # Dg: geometry-encoder token size
    num_heads: int = 4
    position_hidden_dim: int = 128
    position_scale_m: float = 4.0  # metres mapped to 1.0 before phi (rooms are 3-12 m)

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"fusion dim {self.dim} not divisible by num_heads {self.num_heads}")
        if min(self.dim, self.geometry_dim, self.position_hidden_dim) <= 0:
            raise ValueError("fusion sizes must be positive")
        if self.position_scale_m <= 0:
            raise ValueError("position_scale_m must be positive")


@dataclass
class FusionOutput:
    fused: torch.Tensor            # H_t  [B,N,C]
    injection_gate: torch.Tensor   # a_t  [B,N,1]
    patch_points: torch.Tensor     # C_t  [B,N,3]


def pool_to_grid(values: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Average a per-pixel map [B,H,W,K] over each cell of a (h, w) patch grid -> [B,h*w,K]."""
    pooled = F.adaptive_avg_pool2d(values.permute(0, 3, 1, 2), grid)  # [B,K,h,w]
    return pooled.flatten(2).transpose(1, 2)


class PositionInjection(nn.Module):
    """F'_t = F_t + a_t * phi(C_t)."""

    def __init__(self, config: FusionConfig):
        super().__init__()
        self.scale = config.position_scale_m
        self.phi = MLP(3, config.position_hidden_dim, config.dim)
        self.gate_norm = nn.LayerNorm(config.dim)
        self.gate = nn.Linear(2 * config.dim + 1, 1)

    def forward(self, semantic: torch.Tensor, points: torch.Tensor, confidence: torch.Tensor):
        # semantic [B,N,C], points [B,N,3] metres, confidence [B,N,1]
        position = self.phi(points / self.scale)                                     # [B,N,C]
        gate_in = torch.cat([self.gate_norm(semantic), position, confidence], dim=-1)  # [B,N,2C+1]
        a = torch.sigmoid(self.gate(gate_in))                                        # [B,N,1]
        return semantic + a * position, a


class ViewAlignment(nn.Module):
    """G'_t = [MLP([G_t ; psi_v(Z_t)]) ; psi_g(pool(Z_t))]: hw patch tokens plus one view token."""

    def __init__(self, config: FusionConfig):
        super().__init__()
        self.psi_v = nn.Linear(config.geometry_dim, config.geometry_dim)
        self.align = MLP(2 * config.geometry_dim, config.dim, config.dim)
        self.psi_g = nn.Linear(config.geometry_dim, config.dim)

    def forward(self, geometry_tokens: torch.Tensor, camera_tokens: torch.Tensor) -> torch.Tensor:
        # geometry_tokens [B,Ng,Dg]; camera_tokens [B,Kz,Dg] (the frame's view token(s))
        view = self.psi_v(camera_tokens.mean(dim=1, keepdim=True))                 # [B,1,Dg]
        patches = self.align(torch.cat([geometry_tokens, view.expand_as(geometry_tokens)], -1))
        global_view = self.psi_g(camera_tokens.mean(dim=1, keepdim=True))          # [B,1,C]
        return torch.cat([patches, global_view], dim=1)                           # [B,Ng+1,C]


class GeometryFusion(nn.Module):
    """Semantic patch tokens + geometry encoder outputs -> view-consistent 3D-aware tokens H_t."""

    def __init__(self, config: FusionConfig):
        super().__init__()
        self.config = config
        self.injection = PositionInjection(config)
        self.alignment = ViewAlignment(config)
        self.query_norm = nn.LayerNorm(config.dim)
        self.context_norm = nn.LayerNorm(config.dim)
        self.cross_attention = CrossAttention(config.dim, config.num_heads)

    def forward(self, semantic_grid: torch.Tensor, points: torch.Tensor, confidence: torch.Tensor,
                geometry_tokens: torch.Tensor, camera_tokens: torch.Tensor) -> FusionOutput:
        # semantic_grid [B,hs,ws,C]; points [B,H,W,3] (metres, common frame); confidence [B,H,W]
        # geometry_tokens [B,Ng,Dg]; camera_tokens [B,Kz,Dg]
        b, hs, ws, c = semantic_grid.shape
        semantic = semantic_grid.reshape(b, hs * ws, c)                            # F_t [B,N,C]
        patch_points = pool_to_grid(points, (hs, ws))                              # C_t [B,N,3]
        patch_confidence = pool_to_grid(confidence.unsqueeze(-1), (hs, ws))        # [B,N,1]
        injected, gate = self.injection(semantic, patch_points, patch_confidence)  # F'_t
        aligned = self.alignment(geometry_tokens, camera_tokens)                   # G'_t
        fused = injected + self.cross_attention(self.query_norm(injected), self.context_norm(aligned))
        return FusionOutput(fused=fused, injection_gate=gate, patch_points=patch_points)
