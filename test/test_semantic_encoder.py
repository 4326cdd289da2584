"""Semantic encoder: the native ViT, and the LLaVA-Video / Qwen2.5-VL vision towers loaded from
tiny random checkpoints written to disk, checked against the HF models' own feature functions."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from vlm2_ros.model.hf_backbone import BackboneLoader, load_backbone, vision_parts_from_model
from vlm2_ros.model.semantic_encoder import (LlavaVideoVision, QwenVisionTower, SemanticEncoder,
                                             SemanticEncoderConfig, smart_resize)
from vlm2_ros.model.tiny_checkpoints import save_tiny_llava_onevision, save_tiny_qwen2_5_vl

H, W = 84, 112


@pytest.fixture(scope="module")
def frames():
    return torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return save_tiny_qwen2_5_vl(tmp_path_factory.mktemp("qwen2_5_vl"))


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return save_tiny_llava_onevision(tmp_path_factory.mktemp("llava_onevision"))


def full_model(directory):
    from transformers import AutoModelForImageTextToText
    return AutoModelForImageTextToText.from_pretrained(directory, local_files_only=True).eval()


# ----------------------------------------------------------------------------- native ViT
def test_native_vit_shapes_dtype_and_size():
    encoder = SemanticEncoder(SemanticEncoderConfig())
    n_params = sum(p.numel() for p in encoder.parameters())
    assert 0.8e6 < n_params < 1.2e6
    images = torch.rand(3, 3, H, W)
    tokens = encoder(images)
    assert tokens.shape == (3, 6, 8, 256) and tokens.dtype == torch.float32
    assert encoder.grid_size(H, W) == (6, 8)
    assert torch.isfinite(tokens).all()
    tokens.sum().backward()
    assert encoder.backend.patch_embed.weight.grad.abs().sum() > 0


def test_native_vit_other_sizes_dtypes_and_errors():
    encoder = SemanticEncoder(SemanticEncoderConfig(out_dim=64))
    assert encoder(torch.rand(1, 3, 112, 112)).shape == (1, 8, 8, 64)   # position embedding interpolated
    half = SemanticEncoder(SemanticEncoderConfig(out_dim=64)).to(torch.bfloat16)
    assert half(torch.rand(1, 3, H, W, dtype=torch.bfloat16)).dtype == torch.bfloat16
    with pytest.raises(ValueError):
        encoder(torch.rand(1, 3, 85, W))
    with pytest.raises(ValueError):
        encoder(torch.rand(1, 4, H, W))
    for bad in (dict(kind="clip"), dict(image_size=(85, 112)), dict(width=130), dict(out_dim=0),
                dict(kind="qwen2_5_vl"), dict(checkpoint_dir="/x"), dict(dtype="int8")):
        with pytest.raises(ValueError):
            SemanticEncoderConfig(**bad)


# ----------------------------------------------------------------------------- LLaVA-Video
def test_llava_video_matches_get_video_features_and_round_trips(llava_dir, frames):
    config = SemanticEncoderConfig(kind="llava_video", checkpoint_dir=str(llava_dir), out_dim=64)
    encoder = SemanticEncoder(config)                       # vision-only read of the safetensors
    tokens = encoder(frames)
    assert tokens.shape == (2, 3, 3, 64) and encoder.grid_size(H, W) == (3, 3)
    model = full_model(llava_dir)
    assert type(model).__name__ == "LlavaOnevisionForConditionalGeneration"
    pixels = encoder.backend.preprocess(frames)
    with torch.no_grad():
        reference = model.model.get_video_features(pixel_values_videos=pixels[:, None]).pooler_output
    # get_video_features: [B, frames * 9 pooled tokens + 1 newline, C]
    assert torch.equal(tokens, reference[:, :-1].reshape(2, 3, 3, 64))
    # the same modules in memory (whole model) give identical tokens: save/load round trip
    in_memory = LlavaVideoVision(vision_parts_from_model(model, "llava_onevision", {}))
    assert torch.equal(in_memory(frames), tokens)


def test_llava_vision_only_read_accepts_the_hub_key_layout(llava_dir, tmp_path, frames):
    """llava-hf checkpoints on the hub name keys vision_tower.vision_model.*, language_model.model.*."""
    renamed = {}
    for key, value in load_file(str(llava_dir / "model.safetensors")).items():
        key = key.replace("vision_tower.", "vision_tower.vision_model.", 1) if key.startswith("vision_tower.") else key
        renamed[key] = value
    assert any(k.startswith("vision_tower.vision_model.") for k in renamed)
    save_file(renamed, str(tmp_path / "model.safetensors"))
    for name in ("config.json", "preprocessor_config.json"):
        (tmp_path / name).write_text((llava_dir / name).read_text())
    config = SemanticEncoderConfig(kind="llava_video", checkpoint_dir=str(tmp_path), out_dim=64)
    reference = SemanticEncoderConfig(kind="llava_video", checkpoint_dir=str(llava_dir), out_dim=64)
    assert torch.equal(SemanticEncoder(config)(frames), SemanticEncoder(reference)(frames))


def test_llava_preprocessing_uses_the_checkpoint_statistics(llava_dir):
    encoder = SemanticEncoder(SemanticEncoderConfig(kind="llava_video", checkpoint_dir=str(llava_dir), out_dim=64))
    pixels = encoder.backend.preprocess(torch.full((1, 3, 70, 70), 0.75))
    assert pixels.shape == (1, 3, 70, 70)
    assert torch.allclose(pixels, torch.full_like(pixels, 0.5))        # (0.75 - 0.5) / 0.5


# ----------------------------------------------------------------------------- Qwen2.5-VL
def test_qwen_matches_get_image_features_and_round_trips(qwen_dir, frames):
    config = SemanticEncoderConfig(kind="qwen2_5_vl", checkpoint_dir=str(qwen_dir), out_dim=64)
    encoder = SemanticEncoder(config)
    tokens = encoder(frames)
    assert tokens.shape == (2, 3, 4, 64) and encoder.grid_size(H, W) == (3, 4)
    model = full_model(qwen_dir)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    pixel_values, grid_thw = encoder.backend.preprocess(frames)
    assert grid_thw.tolist() == [[1, 6, 8], [1, 6, 8]]
    with torch.no_grad():
        reference = torch.cat(model.model.get_image_features(pixel_values, grid_thw).pooler_output)
    assert torch.equal(tokens, reference.view(2, 3, 4, 64))
    in_memory = QwenVisionTower(vision_parts_from_model(model, "qwen2_5_vl",
                                                        json.loads((qwen_dir / "preprocessor_config.json").read_text())))
    assert torch.equal(in_memory(frames), tokens)
    # each frame is independent of the others in the batch
    assert torch.allclose(encoder(frames[1:]), tokens[1:], atol=1e-5)


def test_qwen_patchify_equals_the_hf_image_processor(qwen_dir):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    image = np.random.default_rng(0).integers(0, 256, (56, 84, 3), dtype=np.uint8)   # already 28-aligned
    hf = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)(images=[image], return_tensors="pt")
    encoder = SemanticEncoder(SemanticEncoderConfig(kind="qwen2_5_vl", checkpoint_dir=str(qwen_dir), out_dim=64))
    ours, grid = encoder.backend.preprocess(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    assert grid.tolist() == hf["image_grid_thw"].tolist()
    assert torch.allclose(ours, hf["pixel_values"].float(), atol=1e-5)


def test_smart_resize_matches_qwen():
    from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as pil
    reference = getattr(pil, "smart_resize", None)
    if reference is None:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as reference
    for h, w in [(84, 112), (480, 640), (30, 30), (10, 1000), (2000, 3000), (57, 83)]:
        assert smart_resize(h, w, 28, 56 * 56, 28 * 28 * 1280) == reference(h, w, 28, 56 * 56, 28 * 28 * 1280)


# ----------------------------------------------------------------------------- loading rules
def test_wrong_checkpoint_or_width_is_an_error(qwen_dir, llava_dir):
    with pytest.raises(ValueError, match="hidden size"):
        SemanticEncoder(SemanticEncoderConfig(kind="qwen2_5_vl", checkpoint_dir=str(qwen_dir), out_dim=32))
    with pytest.raises(ValueError, match="not qwen2_5_vl"):
        SemanticEncoder(SemanticEncoderConfig(kind="qwen2_5_vl", checkpoint_dir=str(llava_dir), out_dim=64))
    with pytest.raises(FileNotFoundError):
        SemanticEncoder(SemanticEncoderConfig(kind="qwen2_5_vl", checkpoint_dir=str(qwen_dir / "nope"), out_dim=64))


def test_loader_reads_a_directory_once(qwen_dir, frames):
    loader = BackboneLoader()
    config = SemanticEncoderConfig(kind="qwen2_5_vl", checkpoint_dir=str(qwen_dir), out_dim=64)
    a, b = SemanticEncoder(config, loader=loader), SemanticEncoder(config, loader=loader)
    assert len(loader) == 1 and a.backend.visual is b.backend.visual
    assert loader.get(qwen_dir).language is not None          # the whole checkpoint, for the bridge too
    assert torch.equal(a(frames), SemanticEncoder(config)(frames))   # whole load == vision-only read
    vision_only = load_backbone(qwen_dir, ("vision",))
    assert vision_only.language is None and vision_only.model is None
    assert not any(p.requires_grad for p in a.parameters())   # pretrained tower frozen by default


def test_hf_towers_in_bfloat16(qwen_dir, llava_dir, frames):
    for kind, directory, grid in (("qwen2_5_vl", qwen_dir, (3, 4)), ("llava_video", llava_dir, (3, 3))):
        config = SemanticEncoderConfig(kind=kind, checkpoint_dir=str(directory), out_dim=64, dtype="bfloat16")
        reference = SemanticEncoder(SemanticEncoderConfig(kind=kind, checkpoint_dir=str(directory), out_dim=64))
        tokens = SemanticEncoder(config)(frames.to(torch.bfloat16))
        assert tokens.dtype == torch.bfloat16 and tokens.shape == (2, *grid, 64)
        expected = reference(frames)
        assert (tokens.float() - expected).abs().max() < 0.1 * expected.abs().max()
