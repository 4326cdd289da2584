"""VLM²: geometry encoder + semantic encoder -> 3D-aware fusion -> dual memory -> language model.

Streaming form of the paper's Algorithm 1. Per frame t (bounded work: the geometry window, not
the history):
    frame tokens    = geometry.encode_frames(I_t)              cached for the last L_g frames
    X_t, G_t, Z_t   = geometry.decode_window(last L_g frames)  outputs of the newest frame
    F_t             = semantic(I_t)
    H_t             = fusion(F_t, X_t in the common frame, G_t, Z_t)
    M_t, W, E       = memory(H_t, W, E)
At a question: language_bridge(readout(W, E), question) -> text.

The common 3D frame: when the robot supplies camera poses (odometry / TF), point maps are put in
its world frame, which stays consistent over the whole run; without poses they stay in the
geometry window's frame (consistent only within the window).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .dual_memory import DualMemory, DualMemoryConfig, MemoryState
from .fusion import FusionConfig, GeometryFusion
from .geometry_encoder import GeometryEncoder, GeometryEncoderConfig
from .language_bridge import LanguageBridge, LanguageBridgeConfig
from .memory_readout import MemoryReadout, ReadoutTokens
from .provenance import Provenance
from .semantic_encoder import SemanticEncoder, SemanticEncoderConfig


@dataclass
class VLM2Config:
    preset: str = "tiny"
    image_size: tuple[int, int] = (84, 112)     # (H, W) fed to both encoders
    geometry_window: int = 8                    # L_g frames attended across by the geometry decoder
    readout_grid: tuple[int, int] = (2, 2)      # tokens per memory entry given to the LM
    geometry: GeometryEncoderConfig = field(default_factory=GeometryEncoderConfig.tiny)
    geometry_checkpoint: str | None = None      # local pi3 / VGGT weights; None: weights live in the VLM2 checkpoint
    semantic: SemanticEncoderConfig = field(default_factory=SemanticEncoderConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    memory: DualMemoryConfig = field(default_factory=DualMemoryConfig)
    bridge: LanguageBridgeConfig = field(default_factory=LanguageBridgeConfig)

    def __post_init__(self) -> None:
        for name, cls in (("geometry", GeometryEncoderConfig), ("semantic", SemanticEncoderConfig),
                          ("fusion", FusionConfig), ("memory", DualMemoryConfig),
                          ("bridge", LanguageBridgeConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls(**getattr(self, name)))
        self.image_size = tuple(self.image_size)
        self.readout_grid = tuple(self.readout_grid)
        if self.geometry_window < 1:
            raise ValueError(f"geometry_window must be >= 1, got {self.geometry_window}")
        if self.fusion.dim != self.memory.dim:
            raise ValueError(f"fusion.dim {self.fusion.dim} != memory.dim {self.memory.dim}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class StreamState:
    """Everything one camera stream carries from frame to frame."""
    geometry_window: torch.Tensor   # [B,t,P,D] per-frame geometry tokens, t <= geometry_window
    memory: MemoryState
    frames: int = 0


@dataclass(frozen=True)
class StepOutput:
    fused: torch.Tensor                     # H_t [B,N,C]
    memory: torch.Tensor | None             # M_t [B,N,C] (None without an episodic memory)
    episodic_slot: torch.Tensor | None      # [B]
    depth: torch.Tensor                     # [B,H,W] predicted metric depth of the new frame
    camera_pose: torch.Tensor               # [B,4,4] predicted camera-to-window pose


def transform_points(camera_to_frame: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """points [B,H,W,3] in the camera frame -> the frame of camera_to_frame [B,4,4]."""
    rotation, translation = camera_to_frame[:, :3, :3], camera_to_frame[:, :3, 3]
    return torch.einsum("bij,bhwj->bhwi", rotation, points) + translation[:, None, None, :]


class VLM2Model(nn.Module):
    def __init__(self, config: VLM2Config, geometry: GeometryEncoder, semantic: SemanticEncoder,
                 bridge: LanguageBridge):
        super().__init__()
        self.config = config
        self.geometry = geometry
        self.semantic = semantic
        self.fusion = GeometryFusion(config.fusion)
        self.memory = DualMemory(config.memory)
        self.entry_grid = semantic.grid_size(*config.image_size)
        self.geometry_grid = geometry.patch_grid(*config.image_size)
        self.readout = MemoryReadout(config.fusion.dim, self.entry_grid, config.readout_grid)
        self.bridge = bridge

    @property
    def num_tokens_per_frame(self) -> int:
        return self.entry_grid[0] * self.entry_grid[1]

    def empty_stream(self, batch_size: int = 1) -> StreamState:
        p = next(self.fusion.parameters())
        window = torch.zeros(batch_size, 0, 0, 0, device=p.device, dtype=p.dtype)
        return StreamState(window, self.memory.empty_state(batch_size, self.num_tokens_per_frame,
                                                           p.device, p.dtype))

    def encode_frames(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-frame encoders, batchable over frames: images [T,3,H,W] in [0,1] ->
        (geometry frame tokens [T,P,D], semantic grid [T,hs,ws,C])."""
        return self.geometry.encode_frames(images), self.semantic(images)

    def advance(self, stream: StreamState, frame_tokens: torch.Tensor, semantic: torch.Tensor,
                provenance: Provenance, poses: torch.Tensor | None = None) -> tuple[StreamState, StepOutput]:
        """Sequential part of a step for one new frame per stream: frame_tokens [B,P,D],
        semantic [B,hs,ws,C], poses [B,4,4] camera-to-world or None."""
        window = frame_tokens.unsqueeze(1)
        if stream.geometry_window.shape[1]:
            window = torch.cat([stream.geometry_window, window], dim=1)[:, -self.config.geometry_window:]
        geo = self.geometry.decode_window(window, self.geometry_grid)
        local_points = geo.local_points[:, -1]                                    # [B,H,W,3]
        camera_to_frame = geo.camera_poses[:, -1] if poses is None else poses.to(local_points.dtype)
        points = transform_points(camera_to_frame, local_points)
        fusion = self.fusion(semantic, points, geo.confidence[:, -1], geo.geometry_tokens[:, -1],
                             geo.camera_tokens[:, -1:])
        memory, memory_state, slot = self.memory(fusion.fused, stream.memory, provenance)
        output = StepOutput(fusion.fused, memory, slot, geo.depth[:, -1], geo.camera_poses[:, -1])
        return StreamState(window, memory_state, stream.frames + 1), output

    def step(self, stream: StreamState, images: torch.Tensor, provenance: Provenance,
             poses: torch.Tensor | None = None) -> tuple[StreamState, StepOutput]:
        """One frame per stream: images [B,3,H,W]."""
        frame_tokens, semantic = self.encode_frames(images)
        return self.advance(stream, frame_tokens, semantic, provenance, poses)

    def read_memory(self, stream: StreamState) -> ReadoutTokens:
        return self.readout(stream.memory)
