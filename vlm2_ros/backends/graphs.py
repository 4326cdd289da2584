"""The hot path's three graphs as modules with tensor-only signatures (what ONNX export needs),
each a thin view of a VLM2Model method, plus the digest that ties an export to its weights."""
from __future__ import annotations

import hashlib

import torch
from torch import nn

from ..model.vlm2 import VLM2Model

GRAPH_NAMES = ("frame_encoders", "geometry_window", "fusion")
GEOMETRY_WINDOW_OUTPUTS = ("geometry_tokens", "camera_tokens", "local_points", "confidence", "camera_raw")


class FrameEncodersGraph(nn.Module):
    def __init__(self, model: VLM2Model):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        # images [T,3,H,W] in [0,1] -> frame_tokens [T,P,D], semantic [T,hs,ws,C]
        return self.model.encode_frames(images)


class GeometryWindowGraph(nn.Module):
    def __init__(self, model: VLM2Model):
        super().__init__()
        self.model = model

    def forward(self, window: torch.Tensor):
        # window [B,t,P,D] -> the newest frame's geometry_tokens [B,Ng,Dg], camera_tokens [B,1,Dg],
        # local_points [B,H,W,3], confidence [B,H,W], camera_raw [B,12]
        geo = self.model.geometry.decode_window_raw(window, self.model.geometry_grid, newest_only=True)
        return (geo.geometry_tokens[:, -1], geo.camera_tokens[:, -1:], geo.local_points[:, -1],
                geo.confidence[:, -1], geo.camera_poses[:, -1])


class FusionGraph(nn.Module):
    def __init__(self, model: VLM2Model):
        super().__init__()
        self.model = model

    def forward(self, semantic, local_points, confidence, geometry_tokens, camera_tokens, camera_to_frame):
        # -> H_t [B,N,C], C_t [B,N,3]; shapes as VLM2Model.fuse_frame (the engine stores no depth)
        return self.model.fuse_frame(semantic, local_points, confidence, geometry_tokens, camera_tokens,
                                     camera_to_frame)[:2]


def hot_path_digest(model: VLM2Model) -> str:
    """sha256 over the weights, input size and window length of the exported parts: an export
    is only used with the model it was made from."""
    h = hashlib.sha256(repr((tuple(model.config.image_size), model.config.geometry_window)).encode())
    for prefix, module in (("geometry", model.geometry), ("semantic", model.semantic),
                           ("depth_refinement", model.depth_refinement), ("fusion", model.fusion)):
        for name, tensor in sorted(module.state_dict().items()):
            h.update(f"{prefix}.{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()
