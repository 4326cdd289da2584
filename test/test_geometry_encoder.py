"""Geometry encoder: shapes, streaming equivalence, equivariance, pi3 / VGGT checkpoint layouts."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from vlm2_ros.model.geometry_encoder import (GeometryCheckpointError, GeometryEncoder, GeometryEncoderConfig,
                                             count_parameters)

torch.manual_seed(0)
SMALL = dict(encoder_dim=32, encoder_depth=1, encoder_heads=2, pos_grid=4, decoder_depth=2, decoder_heads=2,
             num_register_tokens=2, head_dim=32, head_heads=2, camera_dim=16)

# Representative parameter names of the public checkpoints' layouts.
PI3_KEYS = ["encoder.patch_embed.proj.weight", "encoder.cls_token", "encoder.pos_embed", "encoder.register_tokens",
            "encoder.blocks.0.attn.qkv.weight", "encoder.blocks.0.ls1.gamma", "encoder.norm.weight",
            "decoder.0.attn.q_norm.weight", "decoder.1.mlp.fc2.bias", "register_token",
            "point_decoder.projects.weight", "point_decoder.blocks.0.attn.proj.weight", "point_decoder.linear_out.weight",
            "point_head.proj.weight", "conf_head.proj.weight", "camera_decoder.linear_out.weight",
            "camera_head.res_conv.0.res_conv1.weight", "camera_head.more_mlps.0.weight", "camera_head.fc_rot.weight",
            "camera_head.fc_t.weight", "image_mean", "image_std"]
VGGT_KEYS = ["aggregator.patch_embed.patch_embed.proj.weight", "aggregator.patch_embed.blocks.0.attn.qkv.weight",
             "aggregator.frame_blocks.0.attn.qkv.weight", "aggregator.global_blocks.0.mlp.fc1.weight",
             "aggregator.camera_token", "aggregator.register_token"]


def model(layout="pi3"):
    return GeometryEncoder(GeometryEncoderConfig(layout=layout, **SMALL)).eval()


@pytest.mark.parametrize("layout", ["pi3", "vggt"])
@pytest.mark.parametrize("b,t", [(1, 1), (2, 3)])
def test_output_shapes_and_dtypes(layout, b, t):
    out = model(layout)(torch.rand(b, t, 3, 28, 42))
    assert out.patch_grid == (2, 3)
    assert out.geometry_tokens.shape == (b, t, 6, 32) and out.camera_tokens.shape == (b, t, 32)
    assert out.local_points.shape == (b, t, 28, 42, 3) and out.depth.shape == (b, t, 28, 42)
    assert out.confidence.shape == (b, t, 28, 42) and out.camera_poses.shape == (b, t, 4, 4)
    assert (out.depth > 0).all() and torch.equal(out.depth, out.local_points[..., 2])
    assert ((out.confidence > 0) & (out.confidence < 1)).all()
    r = out.camera_poses[..., :3, :3]
    assert torch.allclose(r @ r.transpose(-1, -2), torch.eye(3).expand_as(r), atol=1e-4)
    assert torch.allclose(torch.det(r), torch.ones(b, t), atol=1e-4)


def test_forward_equals_streaming_encode_then_decode():
    m = model()
    images = torch.rand(1, 4, 3, 28, 42)
    with torch.no_grad():
        full = m(images)
        tokens = m.encode_frames(images[0])[None]
        streamed = m.decode_window(tokens, (2, 3))
    assert torch.allclose(full.local_points, streamed.local_points, atol=1e-6)
    assert torch.allclose(full.geometry_tokens, streamed.geometry_tokens, atol=1e-6)


def test_pi3_layout_is_permutation_equivariant_over_the_window():
    m = model("pi3")
    images = torch.rand(1, 4, 3, 28, 42)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        a, b = m(images), m(images[:, perm])
    assert torch.allclose(a.geometry_tokens[:, perm], b.geometry_tokens, atol=1e-5)
    assert torch.allclose(a.local_points[:, perm], b.local_points, atol=1e-4)


def test_vggt_layout_treats_first_frame_as_reference():
    m = model("vggt")
    with torch.no_grad():
        m.camera_token[:, 0] += 1.0  # make the reference token differ from the others
        images = torch.rand(1, 3, 3, 28, 42)
        a, b = m(images), m(images[:, [1, 0, 2]])
    assert not torch.allclose(a.camera_tokens[:, 0], b.camera_tokens[:, 1], atol=1e-4)


def test_bad_image_size_is_rejected():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model().encode_frames(torch.rand(1, 3, 30, 42))


@pytest.mark.parametrize("layout,keys", [("pi3", PI3_KEYS), ("vggt", VGGT_KEYS)])
def test_checkpoint_layout_round_trip_is_exact(tmp_path, layout, keys):
    m = model(layout)
    m.save_pretrained(tmp_path / "ckpt")
    stored = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert set(keys) <= set(stored)
    loaded = GeometryEncoder.from_pretrained(tmp_path / "ckpt")
    images = torch.rand(1, 2, 3, 28, 42)
    with torch.no_grad():
        a, b = m(images), loaded(images)
    for field in ("geometry_tokens", "camera_tokens", "local_points", "confidence", "camera_poses"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


def test_public_release_without_our_config_means_standard_architecture(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    save_file({"encoder.cls_token": torch.zeros(1, 1, 8)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(GeometryCheckpointError, match=r"key 'encoder.cls_token' has shape \(1, 1, 8\).*\(1, 1, 1024\)|missing keys"):
        GeometryEncoder.from_pretrained(tmp_path)


def test_vggt_checkpoint_with_foreign_heads_loads_trunk_and_reports_heads(tmp_path):
    m = model("vggt")
    m.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state = {k: v for k, v in state.items() if not k.startswith(("point_", "conf_", "camera_"))}
    state["depth_head.projects.0.weight"] = torch.zeros(4, 4)   # VGGT's DPT head: not ours
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.warns(UserWarning, match="VGGT heads not used"):
        loaded = GeometryEncoder.from_pretrained(tmp_path)
    assert torch.equal(loaded.decoder[1].attn.qkv.weight, m.decoder[1].attn.qkv.weight)


def test_loading_errors_name_file_and_key(tmp_path):
    with pytest.raises(GeometryCheckpointError, match="does not exist"):
        GeometryEncoder.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "model.pth").write_bytes(b"pickle")
    with pytest.raises(GeometryCheckpointError, match="pickle files are never loaded"):
        GeometryEncoder.from_pretrained(tmp_path)
    m = model()
    m.save_pretrained(tmp_path / "ok")
    path = tmp_path / "ok" / "model.safetensors"
    state = load_file(str(path))
    del state["decoder.0.attn.qkv.weight"]
    save_file(state, str(path))
    with pytest.raises(GeometryCheckpointError, match=r"model.safetensors.*missing keys \['decoder.0.attn.qkv.weight'\]"):
        GeometryEncoder.from_pretrained(tmp_path / "ok")
    m.save_pretrained(tmp_path / "shape")
    cfg = json.loads((tmp_path / "shape" / "config.json").read_text())
    cfg["camera_dim"] = 8
    (tmp_path / "shape" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GeometryCheckpointError, match=r"key 'camera_(decoder|head)\.[a-z_0-9.]+' has shape"):
        GeometryEncoder.from_pretrained(tmp_path / "shape")
    (tmp_path / "shape" / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(GeometryCheckpointError, match="unreadable"):
        GeometryEncoder.from_pretrained(tmp_path / "shape")


def test_bfloat16_forward():
    m = model().to(torch.bfloat16)
    out = m(torch.rand(1, 2, 3, 28, 42, dtype=torch.bfloat16))
    assert out.geometry_tokens.dtype == torch.bfloat16 and out.local_points.dtype == torch.bfloat16


def test_real_size_configs():
    assert 0.9e9 < count_parameters(GeometryEncoderConfig.pi3()) < 1.0e9
    assert count_parameters(GeometryEncoderConfig.tiny()) < 3e6
    with pytest.raises(ValueError, match="layout"):
        GeometryEncoderConfig(layout="dust3r")
    with pytest.raises(ValueError, match="even"):
        GeometryEncoderConfig(decoder_depth=3)
