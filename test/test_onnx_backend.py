"""ONNX export and the ONNX Runtime backend: parity with torch per graph and end to end, the
export tied to its weights, and the execution provider honoured or refused clearly.

Tolerance (fp32 export, CPU provider): max abs difference 1e-4 on O(1) activations."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="onnxruntime is installed by `make` (requirements.txt)")
from conftest import make_frames  # noqa: E402
from vlm2_ros.backends.graphs import FrameEncodersGraph, FusionGraph, GeometryWindowGraph  # noqa: E402
from vlm2_ros.backends.onnx_export import ExportError, export_onnx  # noqa: E402
from vlm2_ros.backends.runtime import OnnxBackend, ProviderUnavailable, TorchBackend  # noqa: E402
from vlm2_ros.camera import CameraIntrinsics  # noqa: E402
from vlm2_ros.engine.engine import SpatialMemoryEngine  # noqa: E402
from vlm2_ros.model.vlm2 import input_pixel_rays  # noqa: E402

ATOL_FP32 = 1e-4


@pytest.fixture(scope="module")
def model():
    from vlm2_ros.model.checkpoint import build_model
    from vlm2_ros.model.presets import preset_config
    torch.manual_seed(0)
    return build_model(preset_config("tiny")).eval()


@pytest.fixture(scope="module")
def export_dir(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny", weights="test-untrained(seed=0)")


@pytest.fixture(scope="module")
def onnx(model, export_dir):
    return OnnxBackend(model, export_dir, provider="cpu")


def close(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def test_export_directory_is_complete(export_dir):
    meta = json.loads((export_dir / "export.json").read_text())
    assert meta["opset"] == 23 and meta["dtype"] == "fp32" and len(meta["digest"]) == 64
    assert sorted(p.name for p in export_dir.iterdir()) == ["export.json", "frame_encoders.onnx",
                                                          "fusion.onnx", "geometry_window.onnx"]


@pytest.mark.parametrize("frames", [1, 3])
def test_frame_encoders_parity(model, onnx, frames):
    h, w = model.config.image_size
    images = torch.rand(frames, 3, h, w)
    with torch.inference_mode():
        ref = FrameEncodersGraph(model)(images)
    got = onnx.encode_frames(images)
    assert [g.shape for g in got] == [r.shape for r in ref]
    assert max(close(g, r) for g, r in zip(got, ref)) < ATOL_FP32


@pytest.mark.parametrize("length", [1, 4, 8])
@pytest.mark.parametrize("with_pose", [False, True])
@pytest.mark.parametrize("with_rays", [False, True])
def test_window_and_fusion_parity(model, onnx, length, with_pose, with_rays):
    h, w = model.config.image_size
    with torch.inference_mode():
        tokens, semantic = model.encode_frames(torch.rand(length, 3, h, w))
        window = tokens[None]                                                   # [1,t,P,D]
        pose = torch.eye(4)[None] if with_pose else None
        if with_pose:
            pose[0, :3, 3] = torch.tensor([0.5, -0.2, 1.0])
        rays = input_pixel_rays(CameraIntrinsics.from_fov(128, 96, 70.0), (h, w))[None] if with_rays else None
        ref = TorchBackend(model).fuse_window(window, semantic[-1:], pose, rays=rays)
        got = onnx.fuse_window(window, semantic[-1:], pose, rays=rays)
        # the raw geometry graph too, for every output
        ort_raw = onnx.sessions["geometry_window"].run(None, {"window": window.numpy()})
        torch_raw = GeometryWindowGraph(model)(window)
    assert all(g.shape == r.shape and close(g, r) < ATOL_FP32 for g, r in zip(got, ref))   # H_t and C_t
    assert max(close(torch.from_numpy(o), r) for o, r in zip(ort_raw, torch_raw)) < ATOL_FP32


def test_depth_refinement_exports_with_the_fusion(tmp_path):
    from vlm2_ros.model.checkpoint import build_model
    from vlm2_ros.model.presets import preset_config
    torch.manual_seed(0)
    model = build_model(preset_config("tiny").with_changes({"depth_refinement": {"enabled": True}})).eval()
    torch.nn.init.normal_(model.depth_refinement.net[-1].weight, std=0.3)    # as if trained
    onnx = OnnxBackend(model, export_onnx(model, tmp_path / "refined", weights="w"), provider="cpu")
    h, w = model.config.image_size
    with torch.inference_mode():
        tokens, semantic = model.encode_frames(torch.rand(4, 3, h, w))
        rays = input_pixel_rays(CameraIntrinsics.from_fov(128, 96, 70.0), (h, w))[None]
        ref = TorchBackend(model).fuse_window(tokens[None], semantic[-1:], torch.eye(4)[None], rays=rays)
        got = onnx.fuse_window(tokens[None], semantic[-1:], torch.eye(4)[None], rays=rays)
    assert all(g.shape == r.shape and close(g, r) < ATOL_FP32 for g, r in zip(got, ref))   # H_t and C_t
    torch.nn.init.zeros_(model.depth_refinement.net[-1].bias)
    model.depth_refinement.net[-1].bias.data += 0.1              # the export is tied to these weights too
    with pytest.raises(ExportError, match="exported from other weights"):
        OnnxBackend(model, tmp_path / "refined", provider="cpu")


def test_engines_agree_end_to_end(model, export_dir):
    frames = make_frames(12)
    poses = [None if i % 3 else np.eye(4) for i in range(12)]
    camera_infos = [None if i % 2 else CameraIntrinsics.from_fov(128, 96, 70.0) for i in range(12)]
    engines = [SpatialMemoryEngine(model, weights="w", backend=b, onnx_dir=export_dir, onnx_provider="cpu")
               for b in ("torch", "onnx")]
    for engine in engines:
        engine.ingest_batch(frames, [(i + 1) * 10**8 for i in range(12)], camera_infos, poses)
    (a, b) = (e.stream.memory for e in engines)
    assert close(a.working.tokens, b.working.tokens) < 1e-3
    assert close(a.episodic.tokens, b.episodic.tokens) < 1e-3
    assert close(a.working.provenance.patch_points, b.working.provenance.patch_points) < 1e-3
    assert engines[1].status().backend == "onnx:cpu" and engines[0].status().backend == "torch"


def test_export_is_refused_for_other_weights(export_dir):
    from vlm2_ros.model.checkpoint import build_model
    from vlm2_ros.model.presets import preset_config
    torch.manual_seed(1)
    other = build_model(preset_config("tiny")).eval()
    with pytest.raises(ExportError, match="exported from other weights"):
        OnnxBackend(other, export_dir, provider="cpu")


def test_missing_export_names_the_file(model, tmp_path):
    with pytest.raises(ExportError, match="export.json is missing"):
        OnnxBackend(model, tmp_path, provider="cpu")


def test_unavailable_provider_is_refused_or_falls_back_when_allowed(model, export_dir):
    import onnxruntime as ort
    try:
        probe = OnnxBackend(model, export_dir, provider="cuda")
    except ProviderUnavailable as e:
        assert "cuda" in str(e) and "fallback" in str(e)
        fallback = OnnxBackend(model, export_dir, provider="cuda", allow_fallback=True)
        assert fallback.provider == "cpu"
    else:  # a machine with a working CUDA provider
        assert probe.provider == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
    with pytest.raises(ValueError, match="onnx provider must be one of"):
        OnnxBackend(model, export_dir, provider="npu")


def test_pretrained_cnn_semantic_encoder_exports_with_parity(tmp_path):
    """The efficientnet_lite0 encoder (TF SAME padding, frozen BatchNorm) exports like the ViT."""
    from vlm2_ros.model.checkpoint import load_model
    cnn_model, _ = load_model("tiny", use_shipped=False, config_changes={"semantic": {"kind": "efficientnet_lite0"}})
    cnn_model.eval()
    backend = OnnxBackend(cnn_model, export_onnx(cnn_model, tmp_path / "cnn", weights="test-cnn"), provider="cpu")
    images = torch.rand(2, 3, *cnn_model.config.image_size)
    with torch.inference_mode():
        ref = FrameEncodersGraph(cnn_model)(images)
    assert max(close(g, r) for g, r in zip(backend.encode_frames(images), ref)) < ATOL_FP32
