"""`vlm2 export`: write the ONNX export of a model's per-frame hot path (see onnx_export.py)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export the per-frame encoders and fusion to ONNX")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--checkpoint-dir", default=None, help="VLM2 checkpoint directory (default: the shipped one)")
    p.add_argument("--out", type=Path, required=True, help="export directory to create (replaced atomically)")
    p.add_argument("--opset", type=int, default=None,
                   help="ONNX opset (default 23; 18 for ONNX Runtime older than 1.22, e.g. on JetPack 6)")
    p.add_argument("--check", action="store_true",
                   help="then load it with ONNX Runtime (CPU) and report the largest difference from torch")
    p.set_defaults(func=export_command)


def export_command(args: argparse.Namespace) -> int:
    import torch

    from ..model.checkpoint import load_model
    from .onnx_export import DEFAULT_OPSET, export_onnx, read_export_index

    model, weights = load_model(args.preset, checkpoint_dir=args.checkpoint_dir)
    model.eval()
    export_onnx(model, args.out, weights, opset=args.opset or DEFAULT_OPSET)
    meta = read_export_index(args.out)
    result = {"out": str(args.out), "preset": args.preset, "weights": weights,
              "export_seconds": meta["export_seconds"], "digest": meta["digest"]}
    if args.check:
        from .runtime import OnnxBackend, TorchBackend
        onnx, ref = OnnxBackend(model, args.out, provider="cpu"), TorchBackend(model)
        h, w = model.config.image_size
        with torch.inference_mode():
            images = torch.rand(model.config.geometry_window, 3, h, w)
            (t1, s1), (t2, s2) = ref.encode_frames(images), onnx.encode_frames(images)
            window = t1[None]
            (f1, p1), (f2, p2) = ref.fuse_window(window, s1[-1:]), onnx.fuse_window(window, s1[-1:])
        result["max_abs_diff"] = max(float((a - b).abs().max())
                                     for a, b in ((t1, t2), (s1, s2), (f1, f2), (p1, p2)))
    print(json.dumps(result, indent=2))
    return 0
