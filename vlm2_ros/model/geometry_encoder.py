"""3D geometry encoder of the pi3 / VGGT family.

Per frame, a DINOv2-style ViT (with register tokens) turns the image into patch tokens. A decoder
then alternates frame-level attention (within a frame) and global attention (across the T frames
of the window), with 2D rotary positions and q/k normalisation. Heads read the concatenation of
the last two decoder outputs:
    point decoder + head -> local point map [xy * exp(z), exp(z)] in the camera frame (OpenCV axes)
    conf decoder + head  -> per-pixel confidence
    camera decoder + head -> camera-to-window pose per frame
pi3 layout: no reference frame (every frame gets the same register tokens), so the model is
permutation-equivariant over the window. VGGT layout: the first frame of the window gets its own
camera / register tokens (VGGT's reference-frame convention).

Outputs used by VLM²: G_t = final decoder patch tokens, Z_t = the frame's view token (pi3: mean of
its register tokens' outputs; VGGT: its camera token's output), X_t = the local point map.

Streaming: `encode_frames` is the per-frame part (cache it); `decode_window` attends across the
cached window, so a new frame costs the window, never the history.

Checkpoints: `from_pretrained(dir)` reads `model.safetensors` (+ optional `config.json`) in the
public pi3 parameter layout (`encoder.*`, `decoder.{i}.*`, `register_token`, `point_decoder.*`,
`point_head.*`, `conf_decoder.*`, `conf_head.*`, `camera_decoder.*`, `camera_head.*`) or, with
layout "vggt", VGGT's aggregator layout (`aggregator.patch_embed.*`, `aggregator.frame_blocks.{k}`,
`aggregator.global_blocks.{k}`, `aggregator.camera_token`, `aggregator.register_token`); VGGT's
own DPT heads are a different architecture and are reported as unused, our heads then start
fresh. Never unpickles: `.pt`/`.pth` files are refused with a message to convert them.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..atomic_io import atomic_directory

LAYOUTS = ("pi3", "vggt")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class GeometryCheckpointError(RuntimeError):
    """A geometry checkpoint is missing, in another layout, or does not match the model."""


@dataclass
class GeometryEncoderConfig:
    layout: str = "pi3"
    patch_size: int = 14
    encoder_dim: int = 128          # D: ViT width; the decoder runs at the same width (as in pi3)
    encoder_depth: int = 2
    encoder_heads: int = 4
    encoder_registers: int = 4      # DINOv2-reg register tokens
    pos_grid: int = 8               # side of the ViT's learned position grid (interpolated)
    decoder_depth: int = 4          # alternating frame / global blocks; even
    decoder_heads: int = 4
    num_register_tokens: int = 5    # decoder register tokens per frame (pi3: 5)
    head_dim: int = 128             # width of the point / conf / camera decoders
    head_depth: int = 1
    head_heads: int = 4
    camera_dim: int = 64            # camera decoder output / camera head width (pi3: 512)
    mlp_ratio: float = 4.0
    rope_freq: float = 100.0

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"geometry layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.decoder_depth < 2 or self.decoder_depth % 2:
            raise ValueError(f"decoder_depth must be even and >= 2, got {self.decoder_depth}")
        for name, dim, heads in (("encoder", self.encoder_dim, self.encoder_heads),
                                 ("decoder", self.encoder_dim, self.decoder_heads),
                                 ("head", self.head_dim, self.head_heads)):
            if dim % heads or (dim // heads) % 4:
                raise ValueError(f"{name} width {dim} must split into {heads} heads of a multiple of 4 "
                                 "(2D rotary positions)")
        if min(self.patch_size, self.encoder_depth, self.pos_grid, self.num_register_tokens,
               self.head_depth, self.camera_dim) < 1:
            raise ValueError("geometry encoder sizes must be positive")

    @property
    def output_dim(self) -> int:
        """Dg: width of the geometry and camera tokens."""
        return self.encoder_dim

    @classmethod
    def tiny(cls) -> "GeometryEncoderConfig":
        return cls()

    @classmethod
    def pi3(cls) -> "GeometryEncoderConfig":
        """The public Pi3 checkpoint: ViT-L/14 (reg) encoder, 36 decoder blocks at 1024."""
        return cls(layout="pi3", encoder_dim=1024, encoder_depth=24, encoder_heads=16, pos_grid=37,
                   decoder_depth=36, decoder_heads=16, num_register_tokens=5, head_dim=1024,
                   head_depth=5, head_heads=16, camera_dim=512)

    @classmethod
    def vggt_1b(cls) -> "GeometryEncoderConfig":
        """VGGT-1B's aggregator: ViT-L/14 patch embed, 24 frame + 24 global blocks at 1024."""
        return cls(layout="vggt", encoder_dim=1024, encoder_depth=24, encoder_heads=16, pos_grid=37,
                   decoder_depth=48, decoder_heads=16, num_register_tokens=4, head_dim=1024,
                   head_depth=5, head_heads=16, camera_dim=512)


@dataclass
class GeometryOutput:
    geometry_tokens: torch.Tensor   # G_t [B,T,N,Dg]
    camera_tokens: torch.Tensor     # Z_t [B,T,Dg]
    local_points: torch.Tensor      # [B,T,H,W,3] camera frame (x right, y down, z forward)
    depth: torch.Tensor             # [B,T,H,W] = local_points z
    confidence: torch.Tensor        # [B,T,H,W] in (0, 1)
    camera_poses: torch.Tensor      # [B,T,4,4] camera-to-window ([B,T,12] head output from decode_window_raw)
    patch_grid: tuple[int, int]     # (h, w)


# --------------------------------------------------------------------------- building blocks
class RoPE2D(nn.Module):
    """Rotary positions over (row, col): half of each head's channels rotate with the row, half
    with the column. Special tokens sit at position (0, 0), patches at (row + 1, col + 1)."""

    def __init__(self, freq: float):
        super().__init__()
        self.freq = freq

    def rotate(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        # x [B,h,L,d], pos [B,L,2]
        d = x.shape[-1] // 2
        out = []
        for axis, part in enumerate((x[..., :d], x[..., d:])):
            inv = 1.0 / (self.freq ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d))
            angles = pos[..., axis].float()[:, None, :, None] * inv                # [B,1,L,d/2]
            cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
            a, b = part[..., 0::2], part[..., 1::2]
            out.append(torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2))
        return torch.cat(out, dim=-1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qk_norm: bool, rope: RoPE2D | None):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(dim // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(dim // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)                                       # [B,h,N,d]
        if self.rope is not None:
            q, k = self.rope.rotate(q, pos), self.rope.rotate(k, pos)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 0.01):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale (DINOv2 / pi3 naming)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: bool = False,
                 rope: RoPE2D | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qk_norm, rope)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), pos))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)                                                      # [B,D,h,w]


class VisionTransformer(nn.Module):
    """DINOv2-with-registers ViT; returns the normalised patch tokens."""

    def __init__(self, c: GeometryEncoderConfig):
        super().__init__()
        d = c.encoder_dim
        self.patch_embed = PatchEmbed(c.patch_size, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_tokens = nn.Parameter(torch.zeros(1, c.encoder_registers, d))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + c.pos_grid ** 2, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, c.encoder_heads, c.mlp_ratio) for _ in range(c.encoder_depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.pos_grid = c.pos_grid

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)                                             # [B,D,h,w]
        b, d, h, w = x.shape
        grid = self.pos_embed[:, 1:].reshape(1, self.pos_grid, self.pos_grid, d).permute(0, 3, 1, 2)
        if (h, w) != (self.pos_grid, self.pos_grid):
            grid = F.interpolate(grid.float(), size=(h, w), mode="bicubic", align_corners=False).to(x.dtype)
        x = x.flatten(2).transpose(1, 2) + grid.flatten(2).transpose(1, 2)      # [B,N,D]
        cls = self.cls_token + self.pos_embed[:, :1]
        x = torch.cat([cls.expand(b, -1, -1), self.register_tokens.expand(b, -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 1 + self.register_tokens.shape[1]:]              # [B,N,D]


class TransformerDecoder(nn.Module):
    """Linear in, a few RoPE blocks, linear out (pi3's head decoders)."""

    def __init__(self, in_dim: int, dim: int, heads: int, depth: int, out_dim: int, rope: RoPE2D,
                 mlp_ratio: float):
        super().__init__()
        self.projects = nn.Linear(in_dim, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, qk_norm=True, rope=rope) for _ in range(depth))
        self.linear_out = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = self.projects(x)
        for block in self.blocks:
            x = block(x, pos)
        return self.linear_out(x)


class LinearPts3d(nn.Module):
    """Per-patch linear map to patch_size^2 pixels of `channels` values (pixel shuffle)."""

    def __init__(self, dim: int, patch: int, channels: int):
        super().__init__()
        self.patch, self.channels = patch, channels
        self.proj = nn.Linear(dim, channels * patch * patch)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        # x [B,N,dim] -> [B,H,W,channels]
        b, (h, w), p = x.shape[0], grid, self.patch
        y = self.proj(x).view(b, h, w, self.channels, p, p)
        return y.permute(0, 1, 4, 2, 5, 3).reshape(b, h * p, w * p, self.channels)


class ResConvBlock(nn.Module):
    """Three 1x1 convolutions with a residual connection."""

    def __init__(self, dim: int):
        super().__init__()
        self.res_conv1 = nn.Conv2d(dim, dim, 1)
        self.res_conv2 = nn.Conv2d(dim, dim, 1)
        self.res_conv3 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.relu(self.res_conv3(F.relu(self.res_conv2(F.relu(self.res_conv1(x))))))


class CameraHead(nn.Module):
    """Camera features of a frame's patches -> camera-to-window pose (rotation by SVD)."""

    def __init__(self, dim: int):
        super().__init__()
        self.res_conv = nn.ModuleList(ResConvBlock(dim) for _ in range(2))
        self.more_mlps = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())
        self.fc_t = nn.Linear(dim, 3)
        self.fc_rot = nn.Linear(dim, 9)

    def forward(self, features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        # features [B,N,dim] -> [B,12]: 9 rotation entries (before projection) + translation
        x = features.transpose(1, 2).reshape(features.shape[0], -1, *grid)      # [B,dim,h,w]
        for block in self.res_conv:
            x = block(x)
        x = self.more_mlps(x.mean(dim=(2, 3)))
        return torch.cat([self.fc_rot(x), self.fc_t(x)], dim=-1)

    @staticmethod
    def to_pose(raw: torch.Tensor) -> torch.Tensor:
        """[..., 12] head output -> [..., 4, 4] camera-to-window pose; the 3x3 block is projected
        onto SO(3) by SVD. Kept out of forward() because ONNX has no SVD: exported graphs end
        at the raw output and the runtime applies this (a few 3x3 matrices) on the host."""
        lead = raw.shape[:-1]
        u, _, vh = torch.linalg.svd(raw[..., :9].float().reshape(-1, 3, 3))
        d = torch.det(u @ vh)                                                    # flip to det +1
        rotation = u @ torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1)) @ vh
        pose = torch.eye(4, device=raw.device).repeat(rotation.shape[0], 1, 1)
        pose[:, :3, :3] = rotation
        pose[:, :3, 3] = raw[..., 9:].float().reshape(-1, 3)
        return pose.view(*lead, 4, 4).to(raw.dtype)


class GeometryEncoder(nn.Module):
    def __init__(self, config: GeometryEncoderConfig):
        super().__init__()
        c = self.config = config
        d = c.encoder_dim
        self.encoder = VisionTransformer(c)
        self.rope = RoPE2D(c.rope_freq)
        self.decoder = nn.ModuleList(Block(d, c.decoder_heads, c.mlp_ratio, qk_norm=True, rope=self.rope)
                                     for _ in range(c.decoder_depth))
        # pi3: one set of register tokens for every frame; VGGT: [reference frame, other frames].
        slots = 1 if c.layout == "pi3" else 2
        self.register_token = nn.Parameter(torch.randn(1, slots, c.num_register_tokens, d) * 1e-6)
        if c.layout == "vggt":
            self.camera_token = nn.Parameter(torch.randn(1, 2, 1, d) * 1e-6)
        self.point_decoder = TransformerDecoder(2 * d, c.head_dim, c.head_heads, c.head_depth, c.head_dim,
                                                self.rope, c.mlp_ratio)
        self.point_head = LinearPts3d(c.head_dim, c.patch_size, 3)
        self.conf_decoder = TransformerDecoder(2 * d, c.head_dim, c.head_heads, c.head_depth, c.head_dim,
                                               self.rope, c.mlp_ratio)
        self.conf_head = LinearPts3d(c.head_dim, c.patch_size, 1)
        self.camera_decoder = TransformerDecoder(2 * d, c.head_dim, c.head_heads, c.head_depth, c.camera_dim,
                                                 self.rope, c.mlp_ratio)
        self.camera_head = CameraHead(c.camera_dim)
        # pi3 stores the ImageNet statistics in its checkpoint; VGGT keeps them out of it.
        stored = c.layout == "pi3"
        self.register_buffer("image_mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=stored)
        self.register_buffer("image_std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=stored)

    @property
    def num_special_tokens(self) -> int:
        return self.config.num_register_tokens + (1 if self.config.layout == "vggt" else 0)

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        p = self.config.patch_size
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {p}")
        return height // p, width // p

    def encode_frames(self, images: torch.Tensor) -> torch.Tensor:
        """Per-frame encoder: images [B,3,H,W] in [0,1] -> patch tokens [B,N,D]."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B,3,H,W], got {tuple(images.shape)}")
        self.patch_grid(*images.shape[-2:])
        return self.encoder((images - self.image_mean) / self.image_std)

    def _positions(self, frames: int, grid: tuple[int, int], device) -> torch.Tensor:
        rows, cols = torch.meshgrid(torch.arange(grid[0], device=device), torch.arange(grid[1], device=device),
                                    indexing="ij")
        patches = torch.stack([rows, cols], dim=-1).view(-1, 2) + 1
        special = torch.zeros(self.num_special_tokens, 2, dtype=patches.dtype, device=device)
        return torch.cat([special, patches]).expand(frames, -1, -1)              # [T,S+N,2]

    def _special_tokens(self, b: int, t: int) -> torch.Tensor:
        if self.config.layout == "pi3":
            return self.register_token.expand(b, t, -1, -1)                      # [B,T,R,D]
        first = torch.cat([self.camera_token[:, :1], self.register_token[:, :1]], dim=2)
        rest = torch.cat([self.camera_token[:, 1:], self.register_token[:, 1:]], dim=2)
        return torch.cat([first, rest.expand(1, t - 1, -1, -1)], dim=1).expand(b, -1, -1, -1)

    def decode_window(self, frame_tokens: torch.Tensor, grid: tuple[int, int],
                      newest_only: bool = False) -> GeometryOutput:
        """Attention across the window: frame_tokens [B,T,N,D] of a (h, w) patch grid -> outputs
        for every frame (T), or for the newest one only (T=1: the streaming case; the per-frame
        heads are then run once instead of T times, with identical results for that frame)."""
        out = self.decode_window_raw(frame_tokens, grid, newest_only)
        return replace(out, camera_poses=CameraHead.to_pose(out.camera_poses))

    def decode_window_raw(self, frame_tokens: torch.Tensor, grid: tuple[int, int],
                          newest_only: bool = False) -> GeometryOutput:
        """decode_window with camera_poses left as the camera head's raw [B,T,12] output (see
        CameraHead.to_pose): the exportable part."""
        b, t, n, d = frame_tokens.shape
        if grid[0] * grid[1] != n:
            raise ValueError(f"window tokens hold {n} patches, not a {grid[0]}x{grid[1]} grid")
        s = self.num_special_tokens
        x = torch.cat([self._special_tokens(b, t).to(frame_tokens.dtype), frame_tokens], dim=2)  # [B,T,S+N,D]
        pos = self._positions(t, grid, x.device)                                  # [T,S+N,2]
        frame_pos = pos.repeat(b, 1, 1)                                          # [B*T,S+N,2]
        global_pos = pos.reshape(1, t * (s + n), 2).expand(b, -1, -1)            # [B,T*(S+N),2]
        penultimate = x
        for i, block in enumerate(self.decoder):
            if i % 2 == 0:   # frame attention
                x = block(x.reshape(b * t, s + n, d), frame_pos).view(b, t, s + n, d)
            else:            # global attention across the window's frames
                x = block(x.reshape(b, t * (s + n), d), global_pos).view(b, t, s + n, d)
            if i == len(self.decoder) - 2:
                penultimate = x
        if newest_only:
            x, penultimate, frame_pos, t = x[:, -1:], penultimate[:, -1:], pos[-1:].repeat(b, 1, 1), 1
        hidden = torch.cat([penultimate, x], dim=-1).reshape(b * t, s + n, 2 * d)  # [B*T,S+N,2D]
        points = self.point_head(self.point_decoder(hidden, frame_pos)[:, s:], grid)     # [B*T,H,W,3]
        conf = self.conf_head(self.conf_decoder(hidden, frame_pos)[:, s:], grid)[..., 0]
        camera = self.camera_head(self.camera_decoder(hidden, frame_pos)[:, s:], grid)   # [B*T,12]
        z = points[..., 2:].clamp(max=15).exp()
        local = torch.cat([points[..., :2] * z, z], dim=-1)
        hh, ww = local.shape[1:3]
        view = x[:, :, 0] if self.config.layout == "vggt" else x[:, :, :s].mean(dim=2)   # [B,T,D]
        return GeometryOutput(
            geometry_tokens=x[:, :, s:], camera_tokens=view,
            local_points=local.view(b, t, hh, ww, 3), depth=local[..., 2].view(b, t, hh, ww),
            confidence=torch.sigmoid(conf).view(b, t, hh, ww),
            camera_poses=camera.view(b, t, 12), patch_grid=grid)

    def forward(self, images: torch.Tensor) -> GeometryOutput:
        """images [B,T,3,H,W] in [0,1]."""
        b, t = images.shape[:2]
        tokens = self.encode_frames(images.flatten(0, 1))
        return self.decode_window(tokens.view(b, t, *tokens.shape[1:]), self.patch_grid(*images.shape[-2:]))

    # ----------------------------------------------------------------------- checkpoints
    def layout_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict under the checkpoint layout's key names."""
        return {to_layout_key(k, self.config): v for k, v in self.state_dict().items()}

    def save_pretrained(self, directory: str | Path) -> Path:
        with atomic_directory(directory) as tmp:
            save_file({k: v.contiguous() for k, v in self.layout_state_dict().items()}, str(tmp / WEIGHTS_NAME))
            (tmp / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        return Path(directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, layout: str | None = None) -> "GeometryEncoder":
        directory = Path(directory)
        if not directory.is_dir():
            raise GeometryCheckpointError(f"geometry checkpoint directory {directory} does not exist")
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            pickled = sorted(p.name for p in directory.glob("*.pt*"))
            hint = (f"; found {pickled}: pickle files are never loaded, convert them to safetensors first"
                    if pickled else "")
            raise GeometryCheckpointError(f"{weights} does not exist{hint}")
        config = _read_config(directory / CONFIG_NAME, layout)
        try:
            stored = load_file(str(weights))
        except (SafetensorError, OSError) as e:
            raise GeometryCheckpointError(f"{weights}: unreadable safetensors file ({e})") from e
        model = cls(config)
        expected = model.layout_state_dict()
        missing = sorted(set(expected) - set(stored))
        unexpected = sorted(set(stored) - set(expected))
        heads = ("point_", "conf_", "camera_decoder", "camera_head")
        if config.layout == "vggt":
            # VGGT's DPT / trunk heads are another architecture: report them, train ours.
            fresh = [k for k in missing if k.startswith(heads)]
            missing = [k for k in missing if k not in fresh]
            if fresh or unexpected:
                warnings.warn(f"{weights}: VGGT heads not used ({len(unexpected)} tensors, e.g. "
                              f"{unexpected[:3]}); our point/conf/camera heads start fresh ({len(fresh)} tensors)",
                              stacklevel=2)
            unexpected = []
        if missing or unexpected:
            raise GeometryCheckpointError(f"{weights} does not match the {config.layout} layout: missing keys "
                                          f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected keys "
                                          f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        for key, tensor in stored.items():
            if key in expected and tensor.shape != expected[key].shape:
                raise GeometryCheckpointError(f"{weights}: key {key!r} has shape {tuple(tensor.shape)}, "
                                              f"the {config.layout} config expects {tuple(expected[key].shape)}")
        own = {from_layout_key(k, config): v for k, v in stored.items() if k in expected}
        model.load_state_dict(own, strict=False)
        return model


def read_geometry_config(directory: str | Path, layout: str | None = None) -> GeometryEncoderConfig:
    """The architecture of a geometry checkpoint directory (without loading its weights)."""
    return _read_config(Path(directory) / CONFIG_NAME, layout)


def _read_config(path: Path, layout: str | None) -> GeometryEncoderConfig:
    """Our config.json when present; the public releases' (empty or foreign) config means the
    standard architecture of the layout."""
    data = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise GeometryCheckpointError(f"{path}: invalid JSON ({e})") from e
    known = {f.name for f in fields(GeometryEncoderConfig)}
    ours = {k: v for k, v in data.items() if k in known}
    layout = layout or ours.get("layout", "pi3")
    if ours.get("layout", layout) != layout:
        raise GeometryCheckpointError(f"{path}: checkpoint layout {ours['layout']!r} but {layout!r} was asked for")
    if len(ours) > 1:
        try:
            return GeometryEncoderConfig(**ours)
        except (TypeError, ValueError) as e:
            raise GeometryCheckpointError(f"{path}: invalid geometry config ({e})") from e
    return GeometryEncoderConfig.pi3() if layout == "pi3" else GeometryEncoderConfig.vggt_1b()


def to_layout_key(key: str, config: GeometryEncoderConfig) -> str:
    """Our parameter name -> the checkpoint layout's (identity for pi3)."""
    if config.layout == "pi3":
        return key
    if key.startswith("encoder."):
        return "aggregator.patch_embed." + key[len("encoder."):]
    if key.startswith("decoder."):
        index, rest = key[len("decoder."):].split(".", 1)
        kind = "frame_blocks" if int(index) % 2 == 0 else "global_blocks"
        return f"aggregator.{kind}.{int(index) // 2}.{rest}"
    if key in ("register_token", "camera_token"):
        return f"aggregator.{key}"
    return key


def from_layout_key(key: str, config: GeometryEncoderConfig) -> str:
    if config.layout == "pi3":
        return key
    if key.startswith("aggregator.patch_embed."):
        return "encoder." + key[len("aggregator.patch_embed."):]
    for kind, offset in (("frame_blocks", 0), ("global_blocks", 1)):
        prefix = f"aggregator.{kind}."
        if key.startswith(prefix):
            index, rest = key[len(prefix):].split(".", 1)
            return f"decoder.{2 * int(index) + offset}.{rest}"
    if key in ("aggregator.register_token", "aggregator.camera_token"):
        return key[len("aggregator."):]
    return key


def count_parameters(config: GeometryEncoderConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in GeometryEncoder(config).parameters())

