"""Depth along each pixel's ray, refined from what the fusion sees.

The geometry decoder's depth is about 15 % off on held-out frames (median |log d - log d*| 0.15),
and a patch's pixels share most of that error. What the patch shows (its semantic token: a wall is
far, a chair is small), its geometry token, its decoded depth and confidence, and its neighbours
on the patch grid predict a correction of the patch's log depth:
    delta_p = tanh(conv3x3(GELU(conv3x3([LN(F) ; LN(G) ; mean log d ; mean log c ; ray]))))   [B,hs,ws]
    X'      = X * exp(delta_p)    for every pixel of patch p
Scaling a camera-frame point keeps it on its ray, so the rays a CameraInfo gives stay exact. The
last layer starts at zero (an untrained refinement changes nothing) and tanh bounds a correction
to a factor of e. Disabled (the default, and the shipped weights), it holds no weights and returns
its input.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .fusion import pool_to_grid


@dataclass
class DepthRefinementConfig:
    enabled: bool = False
    hidden_dim: int = 128
    kernel_size: int = 3        # odd: the patch and its neighbours on the semantic grid

    def __post_init__(self) -> None:
        if self.hidden_dim <= 0:
            raise ValueError(f"depth_refinement.hidden_dim must be positive, got {self.hidden_dim}")
        if self.kernel_size <= 0 or self.kernel_size % 2 == 0:
            raise ValueError(f"depth_refinement.kernel_size must be odd and positive, got {self.kernel_size}")


class DepthRefinement(nn.Module):
    def __init__(self, config: DepthRefinementConfig, semantic_dim: int, geometry_dim: int,
                 geometry_grid: tuple[int, int]):
        super().__init__()
        self.config = config
        self.geometry_grid = geometry_grid
        if not config.enabled:
            return
        self.semantic_norm = nn.LayerNorm(semantic_dim)
        self.geometry_norm = nn.LayerNorm(geometry_dim)
        k, hidden = config.kernel_size, config.hidden_dim
        self.net = nn.Sequential(
            nn.Conv2d(semantic_dim + geometry_dim + 5, hidden, k, padding=k // 2), nn.GELU(),
            nn.Conv2d(hidden, hidden, k, padding=k // 2), nn.GELU(),
            nn.Conv2d(hidden, 1, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, semantic: torch.Tensor, local_points: torch.Tensor, confidence: torch.Tensor,
                geometry_tokens: torch.Tensor) -> torch.Tensor:
        # semantic [B,hs,ws,C]; local_points [B,H,W,3] camera frame; confidence [B,H,W];
        # geometry_tokens [B,Ng,Dg] on geometry_grid -> local_points [B,H,W,3], each pixel moved along its ray
        if not self.config.enabled:
            return local_points
        hs, ws = semantic.shape[1:3]
        h, w = local_points.shape[1:3]
        depth = local_points[..., 2:].clamp_min(1e-3)                                   # [B,H,W,1]
        ray = local_points / depth                                                      # z = 1
        per_pixel = torch.cat([depth.log(), confidence.unsqueeze(-1).clamp_min(1e-4).log(), ray], -1)
        pooled = pool_to_grid(per_pixel, (hs, ws)).unflatten(1, (hs, ws))               # [B,hs,ws,5]
        geometry = geometry_tokens.unflatten(1, self.geometry_grid)                      # [B,hg,wg,Dg]
        if self.geometry_grid != (hs, ws):                                              # e.g. a real encoder's
            geometry = F.adaptive_avg_pool2d(geometry.permute(0, 3, 1, 2), (hs, ws)).permute(0, 2, 3, 1)
        features = torch.cat([self.semantic_norm(semantic), self.geometry_norm(geometry), pooled], -1)
        delta = torch.tanh(self.net(features.permute(0, 3, 1, 2)))                      # [B,1,hs,ws]
        scale = F.interpolate(delta, size=(h, w), mode="nearest").exp()                 # [B,1,H,W]
        return local_points * scale.permute(0, 2, 3, 1)
