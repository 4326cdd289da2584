"""The depth refinement: off by default (no weights, input returned as is), an identity when fresh,
and once trained it moves whole patches along their own rays, by at most a factor of e; the depth a
step reports and the patch points the memory stores are the refined ones."""
import pytest
import torch

from vlm2_ros.camera import CameraIntrinsics
from vlm2_ros.model.checkpoint import build_model
from vlm2_ros.model.depth_refinement import DepthRefinementConfig
from vlm2_ros.model.fusion import pool_to_grid
from vlm2_ros.model.presets import preset_config
from vlm2_ros.model.vlm2 import VLM2Config, input_pixel_rays


def refined_model(perturbed: bool):
    torch.manual_seed(0)
    model = build_model(preset_config("tiny").with_changes({"depth_refinement": {"enabled": True}})).eval()
    if perturbed:   # as if trained: the zero-initialised last layer gives corrections
        torch.nn.init.normal_(model.depth_refinement.net[-1].weight, std=0.3)
    return model


def decoded(model, frames: int = 3):
    """The fusion's inputs for the newest of `frames` random frames, the camera's rays applied."""
    h, w = model.config.image_size
    with torch.no_grad():
        tokens, semantic = model.encode_frames(torch.rand(frames, 3, h, w))
        geo = model.geometry.decode_window(tokens[None], model.geometry_grid, newest_only=True)
    rays = input_pixel_rays(CameraIntrinsics.from_fov(128, 96, 70.0), (h, w))[None]
    return semantic[-1:], rays * geo.local_points[:, -1, ..., 2:], geo, rays


def test_disabled_by_default_holds_no_weights_and_returns_its_input():
    assert VLM2Config().depth_refinement == DepthRefinementConfig(enabled=False)
    config = preset_config("tiny").to_dict()
    del config["depth_refinement"]                       # a checkpoint config written before it existed
    assert VLM2Config(**config).depth_refinement.enabled is False
    model = build_model(preset_config("tiny")).eval()
    assert not list(model.depth_refinement.parameters())
    semantic, local, geo, _ = decoded(model)
    assert model.depth_refinement(semantic, local, geo.confidence[:, -1], geo.geometry_tokens[:, -1]) is local


@pytest.mark.parametrize("change", [{"hidden_dim": 0}, {"kernel_size": 2}])
def test_bad_sizes_are_refused(change):
    with pytest.raises(ValueError, match="depth_refinement"):
        DepthRefinementConfig(enabled=True, **change)


def test_fresh_refinement_changes_nothing():
    model = refined_model(perturbed=False)
    semantic, local, geo, _ = decoded(model)
    with torch.no_grad():
        out = model.depth_refinement(semantic, local, geo.confidence[:, -1], geo.geometry_tokens[:, -1])
    assert torch.equal(out, local)


def test_refinement_moves_each_patch_along_its_rays_by_one_bounded_factor():
    model = refined_model(perturbed=True)
    semantic, local, geo, _ = decoded(model)
    with torch.no_grad():
        out = model.depth_refinement(semantic, local, geo.confidence[:, -1], geo.geometry_tokens[:, -1])
    factor = out[..., 2] / local[..., 2]                                            # [1,H,W]
    assert torch.allclose(out, local * factor[..., None], rtol=1e-5, atol=1e-6)     # x, y, z alike: on its ray
    hs, ws = semantic.shape[1:3]
    patches = factor.view(hs, factor.shape[1] // hs, ws, factor.shape[2] // ws)
    spread = patches.amax(dim=(1, 3)) - patches.amin(dim=(1, 3))
    assert float(spread.max()) < 1e-5                                               # one factor per patch
    assert float(factor.min()) >= torch.e ** -1 - 1e-6 and float(factor.max()) <= torch.e + 1e-6
    assert float((factor - 1).abs().max()) > 1e-2                                   # and it does move them


def test_step_reports_and_stores_the_refined_depth():
    model = refined_model(perturbed=True)
    h, w = model.config.image_size
    rays = input_pixel_rays(CameraIntrinsics.from_fov(128, 96, 70.0), (h, w))[None]
    with torch.no_grad():
        stream, out = model.step(model.empty_stream(1), torch.rand(1, 3, h, w), torch.tensor([1]),
                                 torch.tensor([0]), torch.eye(4)[None], rays)
        geo = model.geometry.decode_window(stream.geometry_window, model.geometry_grid, newest_only=True)
    assert not torch.allclose(out.depth, geo.depth[:, -1])
    expected = pool_to_grid(rays * out.depth[..., None], model.entry_grid)            # world = camera frame here
    stored = stream.memory.working.provenance.patch_points[:, -1]                    # [1,N,3]
    assert torch.allclose(stored, expected, atol=1e-5)
