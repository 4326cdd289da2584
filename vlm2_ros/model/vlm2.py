"""VLM²: geometry encoder + semantic encoder -> 3D-aware fusion -> dual memory -> language model.

Streaming form of the paper's Algorithm 1. Per frame t (bounded work: the geometry window, not
the history):
    frame tokens    = geometry.encode_frames(I_t)              cached for the last L_g frames
    X_t, G_t, Z_t   = geometry.decode_window(last L_g frames)  outputs of the newest frame
    F_t             = semantic(I_t)
    X'_t            = depth_refinement(F_t, X_t, G_t)          each pixel moved along its ray (optional)
    H_t, C_t        = fusion(F_t, X'_t in the common frame, G_t, Z_t)    C_t: each patch's 3D point
    M_t, W, E       = memory(H_t, W, E)          entries carry C_t in their provenance
At a question: language_bridge(readout(W, E), question) -> text; the readout pools each entry's
patch tokens, or (object_readout) reads every token as the room and the objects it shows.

The common 3D frame: when the robot supplies camera poses (odometry / TF), point maps are put in
its world frame, which stays consistent over the whole run; without poses they stay in the
geometry window's frame (consistent only within the window).
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from ..camera import CameraIntrinsics
from .depth_refinement import DepthRefinement, DepthRefinementConfig
from .dual_memory import DualMemory, DualMemoryConfig, MemoryState
from .fusion import FusionConfig, GeometryFusion
from .geometry_encoder import GeometryEncoder, GeometryEncoderConfig, GeometryOutput
from .language_bridge import LanguageBridge, LanguageBridgeConfig
from .memory_readout import MemoryReadout, ReadoutTokens
from .object_memory import ObjectReadout, ObjectReadoutConfig
from .provenance import Provenance
from .semantic_encoder import SemanticEncoder, SemanticEncoderConfig


@dataclass
class VLM2Config:
    preset: str = "tiny"
    image_size: tuple[int, int] = (84, 112)     # (H, W) fed to both encoders
    geometry_window: int = 8                    # L_g frames attended across by the geometry decoder
    readout_grid: tuple[int, int] = (2, 2)      # tokens per memory entry given to the LM
    readout_pool: str = "mean"                  # how an entry's patches become them (memory_readout.POOLS)
    geometry: GeometryEncoderConfig = field(default_factory=GeometryEncoderConfig.tiny)
    geometry_checkpoint: str | None = None      # local pi3 / VGGT weights; None: weights live in the VLM2 checkpoint
    semantic: SemanticEncoderConfig = field(default_factory=SemanticEncoderConfig)
    depth_refinement: DepthRefinementConfig = field(default_factory=DepthRefinementConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    memory: DualMemoryConfig = field(default_factory=DualMemoryConfig)
    bridge: LanguageBridgeConfig = field(default_factory=LanguageBridgeConfig)
    object_readout: ObjectReadoutConfig = field(default_factory=ObjectReadoutConfig)

    def __post_init__(self) -> None:
        for name, cls in (("geometry", GeometryEncoderConfig), ("semantic", SemanticEncoderConfig),
                          ("depth_refinement", DepthRefinementConfig), ("fusion", FusionConfig),
                          ("memory", DualMemoryConfig), ("bridge", LanguageBridgeConfig),
                          ("object_readout", ObjectReadoutConfig)):
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

    def with_changes(self, changes: dict) -> "VLM2Config":
        """A copy with `changes` applied, re-validated. A nested mapping changes only the fields it
        names, e.g. {bridge: {choice_answer: option_text}} keeps the rest of this bridge config
        (a plain replace would rebuild the bridge from its class defaults)."""
        return _changed(self, changes, "")


def _changed(config, changes: dict, where: str):
    if not isinstance(changes, dict):
        raise ValueError(f"model config change {where or 'model'}: expected a mapping, got {changes!r}")
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ValueError(f"unknown model config fields {[f'{where}{u}' for u in unknown]}")
    fields = {}
    for name, value in changes.items():
        current = getattr(config, name)
        if isinstance(value, dict) and dataclasses.is_dataclass(current):
            value = _changed(current, value, f"{where}{name}.")
        elif isinstance(value, dict) and isinstance(current, dict):
            value = {**current, **value}
        fields[name] = value
    return dataclasses.replace(config, **fields)


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
    depth: torch.Tensor                     # [B,H,W] the new frame's metric depth as the fusion placed it
    camera_pose: torch.Tensor               # [B,4,4] predicted camera-to-window pose


def transform_points(camera_to_frame: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """points [B,H,W,3] in the camera frame -> the frame of camera_to_frame [B,4,4]."""
    rotation, translation = camera_to_frame[:, :3, :3], camera_to_frame[:, :3, 3]
    return torch.einsum("bij,bhwj->bhwi", rotation, points) + translation[:, None, None, :]


def select_pose(predicted: torch.Tensor, poses: torch.Tensor | None, pose_mask: torch.Tensor | None) -> torch.Tensor:
    """The camera-to-frame pose per stream: the given pose [B,4,4] where pose_mask [B] is set
    (all, when no mask), else the geometry decoder's prediction [B,4,4]."""
    if poses is None:
        return predicted
    if pose_mask is None:
        return poses.to(predicted.dtype)
    return torch.where(pose_mask[:, None, None], poses.to(predicted.dtype), predicted)


def input_pixel_rays(intrinsics: CameraIntrinsics, image_size: tuple[int, int]) -> torch.Tensor:
    """[H,W,3] float32: the ray (z = 1) through each pixel of the model's input, image_size
    (H, W), for a camera with `intrinsics`; the whole image is resized to the input (as the
    engine's preprocess does), so the intrinsics scale with it."""
    h, w = image_size
    return torch.from_numpy(intrinsics.scaled(w, h).pixel_rays().astype(np.float32))


def points_on_rays(local_points: torch.Tensor, rays: torch.Tensor | None) -> torch.Tensor:
    """The camera-frame point of every pixel: local_points [B,H,W,3] as the geometry decoder
    predicts them, or, given the camera's pixel rays [B,H,W,3] (z = 1, from its intrinsics), each
    pixel at the decoder's depth on its own ray. The depth loss supervises only z, so without
    intrinsics the decoder's x/y are its own guess; a CameraInfo makes them exact."""
    if rays is None:
        return local_points
    return rays.to(local_points.dtype) * local_points[..., 2:]


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
        self.depth_refinement = DepthRefinement(config.depth_refinement, config.fusion.dim,
                                                config.fusion.geometry_dim, self.geometry_grid)
        self.readout = MemoryReadout(config.fusion.dim, self.entry_grid, config.readout_grid, config.readout_pool)
        self.object_readout = ObjectReadout(config.object_readout, config.fusion.dim, self.readout_tokens,
                                            bridge.config.memory_dim, config.fusion.position_scale_m,
                                            pointed_measures=bridge.config.number_pointers)
        self.bridge = bridge

    @property
    def readout_tokens(self) -> int:
        """Memory tokens the language model reads: the pooled readout's from a full dual memory (an
        object readout pads to as many)."""
        c = self.config
        return (c.memory.working.capacity + c.memory.episodic.capacity) * c.readout_grid[0] * c.readout_grid[1]

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

    def push_window(self, window: torch.Tensor, frame_tokens: torch.Tensor) -> torch.Tensor:
        """The geometry window after a new frame: window [B,t,P,D] (t may be 0), frame_tokens
        [B,P,D] -> [B,min(t+1, L_g),P,D]."""
        window_new = frame_tokens.unsqueeze(1)
        if window.shape[1]:
            window_new = torch.cat([window, window_new], dim=1)[:, -self.config.geometry_window:]
        return window_new

    def fuse_window(self, window: torch.Tensor, semantic: torch.Tensor, poses: torch.Tensor | None = None,
                    pose_mask: torch.Tensor | None = None,
                    rays: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, GeometryOutput]:
        """Geometry of the window's newest frame fused with its semantic tokens: window [B,t,P,D],
        semantic [B,hs,ws,C] -> H_t [B,N,C], its patch points C_t [B,N,3], the depth [B,H,W] the
        fusion placed its pixels at, and the decoder's outputs for that frame (T=1). poses [B,4,4]
        camera-to-world replace the decoder's own pose where pose_mask [B] (bool; default all) is
        set; rays [B,H,W,3], the camera's pixel rays at the input size, place each pixel on its ray
        (points_on_rays). Runtimes (vlm2_ros.backends) split this the same way."""
        geo = self.geometry.decode_window(window, self.geometry_grid, newest_only=True)
        camera_to_frame = select_pose(geo.camera_poses[:, -1], poses, pose_mask)
        local_points = points_on_rays(geo.local_points[:, -1], rays)
        fused, patch_points, depth = self.fuse_frame(semantic, local_points, geo.confidence[:, -1],
                                                     geo.geometry_tokens[:, -1], geo.camera_tokens[:, -1:],
                                                     camera_to_frame)
        return fused, patch_points, depth, geo

    def fuse_frame(self, semantic: torch.Tensor, local_points: torch.Tensor, confidence: torch.Tensor,
                   geometry_tokens: torch.Tensor, camera_tokens: torch.Tensor,
                   camera_to_frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(H_t [B,N,C], C_t [B,N,3], the refined depth [B,H,W]) from semantic [B,hs,ws,C],
        local_points [B,H,W,3] (camera frame), confidence [B,H,W], geometry_tokens [B,Ng,Dg],
        camera_tokens [B,1,Dg], camera_to_frame [B,4,4]."""
        local_points = self.depth_refinement(semantic, local_points, confidence, geometry_tokens)
        points = transform_points(camera_to_frame, local_points)
        out = self.fusion(semantic, points, confidence, geometry_tokens, camera_tokens)
        return out.fused, out.patch_points, local_points[..., 2]

    def remember(self, stream: StreamState, window: torch.Tensor, fused: torch.Tensor,
                 provenance: Provenance) -> tuple[StreamState, torch.Tensor | None, torch.Tensor | None]:
        """Write H_t [B,N,C] into the dual memory with its provenance (frame t's, patch points
        C_t included): (new stream, M_t, episodic slot)."""
        memory, memory_state, slot = self.memory(fused, stream.memory, provenance)
        return StreamState(window, memory_state, stream.frames + 1), memory, slot

    def advance(self, stream: StreamState, frame_tokens: torch.Tensor, semantic: torch.Tensor,
                stamp_ns: torch.Tensor, frame_index: torch.Tensor, poses: torch.Tensor | None = None,
                rays: torch.Tensor | None = None) -> tuple[StreamState, StepOutput]:
        """Sequential part of a step for one new frame per stream: frame_tokens [B,P,D],
        semantic [B,hs,ws,C], stamp_ns and frame_index [B] (the entry's provenance), poses
        [B,4,4] camera-to-world or None, rays [B,H,W,3] the camera's pixel rays or None."""
        window = self.push_window(stream.geometry_window, frame_tokens)
        fused, patch_points, depth, geo = self.fuse_window(window, semantic, poses, rays=rays)
        provenance = Provenance.single(stamp_ns, frame_index, patch_points, poses)
        stream, memory, slot = self.remember(stream, window, fused, provenance)
        return stream, StepOutput(fused, memory, slot, depth, geo.camera_poses[:, -1])

    def step(self, stream: StreamState, images: torch.Tensor, stamp_ns: torch.Tensor, frame_index: torch.Tensor,
             poses: torch.Tensor | None = None, rays: torch.Tensor | None = None) -> tuple[StreamState, StepOutput]:
        """One frame per stream: images [B,3,H,W]."""
        frame_tokens, semantic = self.encode_frames(images)
        return self.advance(stream, frame_tokens, semantic, stamp_ns, frame_index, poses, rays)

    def read_memory(self, stream: StreamState, question: str | None = None) -> ReadoutTokens:
        """The memory tokens the language model reads; the object readout may pick them for `question`."""
        if self.config.object_readout.enabled:
            return self.object_readout(stream.memory, question)
        return self.readout(stream.memory)
