"""Runtimes of the hot path behind one interface, chosen by the engine's `backend` argument.

    encode_frames(images [T,3,H,W]) -> (frame_tokens [T,P,D], semantic [T,hs,ws,C])
    fuse_window(window [B,t,P,D], semantic [B,hs,ws,C], poses [B,4,4] | None, pose_mask [B] | None,
                rays [B,H,W,3] | None) -> (H_t [B,N,C], its patch points C_t [B,N,3])

TorchBackend calls the model (whatever device and dtype it has). OnnxBackend runs an export
(onnx_export.py) with ONNX Runtime: the requested execution provider or a clear error, falling
back to the CPU only when allowed. Tensors cross as fp32 numpy arrays (the export is fp32; the
TensorRT provider builds fp16 engines itself when asked for fp16).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..model.geometry_encoder import CameraHead
from ..model.vlm2 import VLM2Model, points_on_rays, select_pose
from .graphs import hot_path_digest
from .onnx_export import EXPORT_VERSION, ExportError, export_onnx, read_export_index

BACKENDS = ("torch", "onnx")
ONNX_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                  "tensorrt": "TensorrtExecutionProvider"}
PROVIDER_CHOICES = ("auto",) + tuple(ONNX_PROVIDERS)
log = logging.getLogger(__name__)


class ProviderUnavailable(RuntimeError):
    """The requested ONNX Runtime execution provider cannot run here (and fallback is off)."""


class TorchBackend:
    name = "torch"

    def __init__(self, model: VLM2Model):
        self.model = model

    def encode_frames(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_frames(images)

    def fuse_window(self, window, semantic, poses=None, pose_mask=None, rays=None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.fuse_window(window, semantic, poses, pose_mask, rays)[:2]


def default_export_dir(digest: str) -> Path:
    """Where exports made on demand are kept: $VLM2_CACHE_DIR, else ~/.cache/vlm2_ros; one per
    weights and export format, so an upgrade exports anew instead of meeting an old format."""
    root = Path(os.environ.get("VLM2_CACHE_DIR") or Path.home() / ".cache" / "vlm2_ros")
    return root / "onnx" / f"{digest[:16]}-v{EXPORT_VERSION}"


def _session(path: Path, provider: str, fp16: bool, threads: int):
    import onnxruntime as ort
    ort.set_default_logger_severity(3)    # provider-library load failures: reported by us, once
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    providers = [ONNX_PROVIDERS[provider]]
    if provider == "tensorrt":
        providers = [(ONNX_PROVIDERS["tensorrt"], {"trt_fp16_enable": fp16}), ONNX_PROVIDERS["cuda"]]
    if provider != "cpu":
        providers.append(ONNX_PROVIDERS["cpu"])   # what onnxruntime falls back to; detected above
    return ort.InferenceSession(str(path), options, providers=providers)


class OnnxBackend:
    def __init__(self, model: VLM2Model, export_dir: str | Path | None = None, provider: str = "auto",
                 allow_fallback: bool = False, fp16: bool = False, weights: str = ""):
        """`model` in fp32, before any cast: its digest must match the export's. Without
        `export_dir` the export is made (once) in the cache directory."""
        if provider not in PROVIDER_CHOICES:
            raise ValueError(f"onnx provider must be one of {PROVIDER_CHOICES}, got {provider!r}")
        digest = hot_path_digest(model)
        if export_dir is None:
            export_dir = default_export_dir(digest)
            if not (Path(export_dir) / "export.json").is_file():
                log.info("exporting the hot path to ONNX in %s (once per weights)", export_dir)
                export_onnx(model, export_dir, weights)
        self.export_dir = Path(export_dir)
        meta = read_export_index(self.export_dir)
        if meta["digest"] != digest:
            raise ExportError(f"{self.export_dir} was exported from other weights ({meta.get('weights') or 'unknown'}, "
                              f"digest {meta['digest'][:12]}) than this model's ({digest[:12]}); export again")
        self.max_frames = int(meta["max_frames_per_call"])
        self.geometry_window = int(meta["geometry_window"])
        threads = torch.get_num_threads()
        wanted = ("tensorrt", "cuda", "cpu") if provider == "auto" else (provider,)
        self.sessions, self.provider = None, None
        for candidate in wanted:
            sessions = {name: _session(self.export_dir / f"{name}.onnx", candidate, fp16, threads)
                        for name in ("frame_encoders", "geometry_window", "fusion")}
            active = sessions["frame_encoders"].get_providers()[0]
            # onnxruntime-gpu lists CUDA/TensorRT even where their libraries are missing, then
            # silently runs on the CPU: trust only the provider the session actually got.
            if active == ONNX_PROVIDERS[candidate]:
                self.sessions, self.provider = sessions, candidate
                break
        if self.sessions is None:
            import onnxruntime as ort
            message = (f"ONNX Runtime cannot run the {provider} execution provider here (available: "
                       f"{ort.get_available_providers()}, but its libraries did not load)")
            if not allow_fallback:
                raise ProviderUnavailable(message + "; allow the CPU fallback or choose another provider")
            log.warning("%s; falling back to the CPU provider", message)
            self.sessions = {name: _session(self.export_dir / f"{name}.onnx", "cpu", False, threads)
                             for name in ("frame_encoders", "geometry_window", "fusion")}
            self.provider = "cpu"
        self.name = f"onnx:{self.provider}"

    @staticmethod
    def _np(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float32).contiguous().numpy()

    def encode_frames(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device, dtype = images.device, images.dtype
        tokens, semantic = [], []
        for start in range(0, images.shape[0], self.max_frames):
            t, s = self.sessions["frame_encoders"].run(None, {"images": self._np(images[start:start + self.max_frames])})
            tokens.append(t)
            semantic.append(s)
        to = lambda parts: torch.from_numpy(np.concatenate(parts)).to(device, dtype)  # noqa: E731
        return to(tokens), to(semantic)

    def fuse_window(self, window, semantic, poses=None, pose_mask=None, rays=None) -> tuple[torch.Tensor, torch.Tensor]:
        if window.shape[1] > self.geometry_window:
            raise ValueError(f"window of {window.shape[1]} frames exceeds the export's {self.geometry_window}")
        device, dtype = semantic.device, semantic.dtype
        geometry_tokens, camera_tokens, local_points, confidence, camera_raw = \
            self.sessions["geometry_window"].run(None, {"window": self._np(window)})
        predicted = CameraHead.to_pose(torch.from_numpy(camera_raw))
        camera_to_frame = select_pose(predicted, None if poses is None else poses.cpu(),
                                      None if pose_mask is None else pose_mask.cpu())
        if rays is not None:
            local_points = self._np(points_on_rays(torch.from_numpy(local_points), rays.cpu()))
        fused, patch_points = self.sessions["fusion"].run(None, {
            "semantic": self._np(semantic), "local_points": local_points, "confidence": confidence,
            "geometry_tokens": geometry_tokens, "camera_tokens": camera_tokens,
            "camera_to_frame": self._np(camera_to_frame)})
        return torch.from_numpy(fused).to(device, dtype), torch.from_numpy(patch_points).to(device, dtype)


def make_backend(kind: str, model: VLM2Model, *, export_dir: str | Path | None = None, provider: str = "auto",
                 allow_fallback: bool = False, fp16: bool = False, weights: str = ""):
    """The runtime for `kind` ("torch" or "onnx"); for onnx, call before casting `model`."""
    if kind == "torch":
        return TorchBackend(model)
    if kind == "onnx":
        return OnnxBackend(model, export_dir, provider, allow_fallback, fp16, weights)
    raise ValueError(f"backend must be one of {BACKENDS}, got {kind!r}")
