"""Model presets: sizes and component sources by name.

A preset builds a VLM2Config. Presets backed by real checkpoints take the local directories of
their backbones (no hub access): `backbone_dir` (the VLM: LLaVA-Video or Qwen2.5-VL) and
`geometry_dir` (pi3 or VGGT weights in safetensors).

Jetson Orin (not measured here; sizes from the weights' footprint): `tiny` runs anywhere;
`qwen2.5-vl-3b-pi3` in fp16 needs ~8 GB for the VLM + ~2 GB for pi3, so it fits Orin NX 16 GB /
AGX Orin with a geometry window of 4; the 7B presets need AGX Orin 64 GB.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .dual_memory import DualMemoryConfig
from .fusion import FusionConfig
from .geometry_encoder import GeometryEncoderConfig, read_geometry_config
from .hf_backbone import family_of, read_config
from .language_bridge import LanguageBridgeConfig
from .semantic_encoder import SemanticEncoderConfig
from .vlm2 import VLM2Config


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    build: Callable[..., VLM2Config]
    needs_backbones: bool


def tiny_config(memory_mode: str = "dual", **_) -> VLM2Config:
    dim = 256
    return VLM2Config(
        preset="tiny", image_size=(84, 112), geometry_window=8, readout_grid=(2, 2),
        geometry=GeometryEncoderConfig.tiny(),
        semantic=SemanticEncoderConfig.tiny(),
        fusion=FusionConfig(dim=dim, geometry_dim=GeometryEncoderConfig.tiny().output_dim, num_heads=4),
        memory=DualMemoryConfig(dim=dim, num_heads=4, mode=memory_mode),
        bridge=LanguageBridgeConfig(kind="causal_lm", memory_dim=dim, memory_entry_grid=(2, 2),
                                    standardize_memory=True),
    )


def _heads_for(dim: int) -> int:
    """Attention heads for the fusion / memory blocks: head width 128, like the backbone LMs."""
    return max(1, dim // 128)


def _backbone_config(name: str, family: str, geometry_layout: str, image_size: tuple[int, int],
                     readout_grid: tuple[int, int]):
    """A preset over real checkpoints. Sizes are read from the checkpoints themselves (the VLM's
    hidden size, the geometry encoder's width), so the same preset code serves a 7B directory
    and the tiny random directories the tests write."""
    def build(backbone_dir: str | None = None, geometry_dir: str | None = None, memory_mode: str = "dual",
              dtype: str = "bfloat16", image_size_override: tuple[int, int] | None = None) -> VLM2Config:
        if not backbone_dir or not geometry_dir:
            raise ValueError(f"preset {name!r} needs local checkpoint directories: --backbone-dir "
                             f"(the {family} VLM) and --geometry-dir ({geometry_layout} weights)")
        hf_config = read_config(backbone_dir)
        if family_of(hf_config) != {"llava_video": "llava_onevision", "qwen2_5_vl": "qwen2_5_vl"}[family]:
            raise ValueError(f"preset {name!r} needs a {family} checkpoint, but {backbone_dir} holds "
                             f"model_type {getattr(hf_config, 'model_type', '?')!r}")
        hidden = int(hf_config.text_config.hidden_size)
        geometry = read_geometry_config(geometry_dir, geometry_layout)
        size = tuple(image_size_override or image_size)
        heads = _heads_for(hidden)
        return VLM2Config(
            preset=name, image_size=size, geometry_window=8, readout_grid=readout_grid,
            geometry=geometry, geometry_checkpoint=str(geometry_dir),
            semantic=SemanticEncoderConfig(kind=family, checkpoint_dir=str(backbone_dir), image_size=size,
                                           out_dim=hidden, dtype=dtype),
            fusion=FusionConfig(dim=hidden, geometry_dim=geometry.output_dim, num_heads=heads,
                                position_hidden_dim=max(16, hidden // 4)),
            memory=DualMemoryConfig(dim=hidden, num_heads=heads, mode=memory_mode),
            bridge=LanguageBridgeConfig(kind="qwen2_5_vl" if family == "qwen2_5_vl" else "causal_lm",
                                        checkpoint_dir=str(backbone_dir), memory_dim=hidden,
                                        memory_entry_grid=readout_grid, dtype=dtype,
                                        freeze_language_model=True),
        )
    return build


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("tiny", "embedded default: native ViT + tiny pi3-layout encoder + 3.4M-parameter LM (CPU)",
           tiny_config, needs_backbones=False),
    Preset("llava-video-7b-pi3", "the paper's configuration: LLaVA-Video-7B-Qwen2 + pi3",
           _backbone_config("llava-video-7b-pi3", "llava_video", "pi3", (378, 504), (3, 3)), True),
    Preset("qwen2.5-vl-3b-pi3", "Qwen2.5-VL-3B-Instruct + pi3",
           _backbone_config("qwen2.5-vl-3b-pi3", "qwen2_5_vl", "pi3", (336, 448), (3, 4)), True),
    Preset("qwen2.5-vl-7b-pi3", "Qwen2.5-VL-7B-Instruct + pi3",
           _backbone_config("qwen2.5-vl-7b-pi3", "qwen2_5_vl", "pi3", (336, 448), (3, 4)), True),
    Preset("qwen2.5-vl-3b-vggt", "Qwen2.5-VL-3B-Instruct + VGGT-1B",
           _backbone_config("qwen2.5-vl-3b-vggt", "qwen2_5_vl", "vggt", (336, 448), (3, 4)), True),
    Preset("qwen2.5-vl-7b-vggt", "Qwen2.5-VL-7B-Instruct + VGGT-1B",
           _backbone_config("qwen2.5-vl-7b-vggt", "qwen2_5_vl", "vggt", (336, 448), (3, 4)), True),
)}


def preset_config(name: str, **kwargs) -> VLM2Config:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].build(**kwargs)
