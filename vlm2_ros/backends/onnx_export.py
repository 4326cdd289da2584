"""Export the hot path's graphs to ONNX (torch.onnx dynamo exporter), fp32, with a
dynamic frame count (frame encoders), window length and batch (geometry window, fusion).

An export directory holds frame_encoders.onnx, geometry_window.onnx, fusion.onnx and
export.json (format version, the weights digest, input size, window length, versions). It is
written atomically: a crash mid-export leaves no half directory.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import time
import warnings
from pathlib import Path

import torch

from ..atomic_io import atomic_directory, write_json_atomic
from ..model.vlm2 import VLM2Model
from .graphs import (GEOMETRY_WINDOW_OUTPUTS, FrameEncodersGraph, FusionGraph, GeometryWindowGraph,
                     hot_path_digest)

EXPORT_FORMAT = "vlm2-onnx-export"
EXPORT_VERSION = 2          # 2: the fusion graph also returns the patch points C_t
EXPORT_INDEX = "export.json"
# Opset 23 has a native Attention op (about 1.5x faster than opset 18's decomposed attention in
# ONNX Runtime 1.31 on CPU for the geometry window); older runtimes (e.g. JetPack's) need 18.
DEFAULT_OPSET = 23
MAX_FRAMES = 64            # frames per frame_encoders call (ingest_batch chunks above this)


class ExportError(RuntimeError):
    """The model could not be exported, or an export directory is unusable; says which file."""


def _example_inputs(model: VLM2Model):
    h, w = model.config.image_size
    images = torch.rand(2, 3, h, w)
    with torch.inference_mode():
        tokens, semantic = model.encode_frames(images)
        window = torch.stack([tokens, tokens], dim=1)                          # [2,2,P,D]
        geo = GeometryWindowGraph(model)(window)
    fusion_inputs = (semantic, geo[2], geo[3], geo[0], geo[1], torch.eye(4).expand(2, 4, 4).contiguous())
    return images, window, fusion_inputs


def _export(module, args, path: Path, input_names, output_names, dynamic_shapes, opset: int) -> None:
    # The exporter narrates every step on stdout and warns about its own internals (dim naming,
    # pytree deprecations); keep that out of the caller's output.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", (UserWarning, FutureWarning, DeprecationWarning))
        torch.onnx.export(module.eval(), args, str(path), dynamo=True, opset_version=opset,
                          input_names=list(input_names), output_names=list(output_names),
                          dynamic_shapes=dynamic_shapes, external_data=False)


def export_onnx(model: VLM2Model, out_dir: str | Path, weights: str = "", opset: int = DEFAULT_OPSET) -> Path:
    """Write the three graphs of `model` (any device/dtype: exported from an fp32 CPU copy)."""
    out_dir = Path(out_dir)
    model = copy.deepcopy(model).to("cpu", torch.float32).eval()
    images, window, fusion_inputs = _example_inputs(model)
    frames = torch.export.Dim("frames", min=1, max=MAX_FRAMES)
    batch = torch.export.Dim("batch", min=1, max=64)
    length = torch.export.Dim("window", min=1, max=model.config.geometry_window)
    started = time.perf_counter()
    try:
        with atomic_directory(out_dir) as tmp:
            _export(FrameEncodersGraph(model), (images,), tmp / "frame_encoders.onnx", ["images"],
                    ["frame_tokens", "semantic"], ({0: frames},), opset)
            _export(GeometryWindowGraph(model), (window,), tmp / "geometry_window.onnx", ["window"],
                    GEOMETRY_WINDOW_OUTPUTS, ({0: batch, 1: length},), opset)
            _export(FusionGraph(model), fusion_inputs, tmp / "fusion.onnx",
                    ["semantic", "local_points", "confidence", "geometry_tokens", "camera_tokens",
                     "camera_to_frame"], ["fused", "patch_points"], tuple({0: batch} for _ in fusion_inputs), opset)
            import onnxruntime
            write_json_atomic(tmp / EXPORT_INDEX, {
                "format": EXPORT_FORMAT, "version": EXPORT_VERSION, "digest": hot_path_digest(model),
                "preset": model.config.preset, "weights": weights,
                "image_size": list(model.config.image_size), "geometry_window": model.config.geometry_window,
                "max_frames_per_call": MAX_FRAMES, "opset": opset, "dtype": "fp32",
                "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                "export_seconds": round(time.perf_counter() - started, 2)})
    except Exception as e:
        if isinstance(e, ExportError):
            raise
        raise ExportError(f"ONNX export to {out_dir} failed: {type(e).__name__}: {e}") from e
    return out_dir


def read_export_index(directory: str | Path) -> dict:
    directory = Path(directory)
    index = directory / EXPORT_INDEX
    if not index.is_file():
        raise ExportError(f"{directory} is not an ONNX export: {EXPORT_INDEX} is missing "
                          f"(write one with `vlm2 export --out {directory}`)")
    try:
        meta = json.loads(index.read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"{index}: unreadable ({e})") from e
    if meta.get("format") != EXPORT_FORMAT or meta.get("version") != EXPORT_VERSION:
        raise ExportError(f"{index}: format {meta.get('format')!r} version {meta.get('version')!r}, "
                          f"expected {EXPORT_FORMAT!r} version {EXPORT_VERSION}; export again")
    for name in ("frame_encoders", "geometry_window", "fusion"):
        if not (directory / f"{name}.onnx").is_file():
            raise ExportError(f"{directory / (name + '.onnx')} is missing; export again")
    return meta
