"""Real-size timing with random weights: a Qwen2.5-VL-3B or -7B sized VLM with a VGGT-1B sized
geometry encoder, built from random checkpoint directories written here, run through the same
engine as the trained presets. Reports ingest frames/s and query latency at batch 1, and the
geometry encoder's achieved bf16 throughput as a fraction of the device's matrix-multiply peak
(measured with large GEMMs in the same run, and the datasheet's where the device is known).

`--size tiny` runs the same code with tiny random checkpoints: what CI exercises on a CPU.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

QUESTION = "How many chairs are in this room?"
# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s.
DATASHEET_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0,
                         "RTX 4090": 165.2}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measured_gemm_tflops(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 10) -> float:
    """Best achieved TFLOP/s of n x n x n matrix products: the peak this device really reaches."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e12


def datasheet_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in name), None)


def write_random_backbones(workdir: Path, size: str, device: str, dtype: torch.dtype) -> tuple[Path, Path]:
    """(VLM directory, geometry directory) with random weights at `size` ("3b", "7b" or "tiny")."""
    from ..model.geometry_encoder import GeometryEncoder, GeometryEncoderConfig
    from ..model.tiny_checkpoints import save_random_qwen2_5_vl, save_tiny_qwen2_5_vl

    vlm, geometry = workdir / f"qwen2_5_vl_{size}", workdir / f"vggt_{size}"
    if size == "tiny":
        save_tiny_qwen2_5_vl(vlm)
        config = GeometryEncoderConfig(layout="vggt")
    else:
        save_random_qwen2_5_vl(vlm, size, device=device, dtype=dtype)
        config = GeometryEncoderConfig.vggt_1b()
    default = torch.get_default_dtype()
    with torch.device(device):
        torch.set_default_dtype(dtype if size != "tiny" else torch.float32)
        try:
            encoder = GeometryEncoder(config)
        finally:
            torch.set_default_dtype(default)
    encoder.save_pretrained(geometry)
    del encoder
    return vlm, geometry


def geometry_throughput(engine, repeats: int = 10) -> dict:
    """FLOPs and time of one frame's geometry work as the engine does it: the patch encoder on the
    new frame, then the decoder over a full window (newest frame's heads)."""
    from torch.utils.flop_counter import FlopCounterMode

    model, device = engine.model, engine.device
    h, w = model.config.image_size
    image = torch.rand(1, 3, h, w, device=device, dtype=engine.dtype)
    with torch.inference_mode():
        tokens = model.geometry.encode_frames(torch.rand(model.config.geometry_window, 3, h, w, device=device,
                                                         dtype=engine.dtype))
        window = tokens[None]

        def frame():
            model.geometry.encode_frames(image)
            model.geometry.decode_window(window, model.geometry_grid, newest_only=True)

        counter = FlopCounterMode(display=False)
        with counter:
            frame()
        for _ in range(3):
            frame()
        _sync(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            frame()
            _sync(device)
            times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    return {"geometry_gflop_per_frame": counter.get_total_flops() / 1e9, "geometry_ms_per_frame": 1000 * seconds,
            "geometry_achieved_tflops": counter.get_total_flops() / seconds / 1e12}


def run_real_size(size: str, device: str, dtype: str, workdir: Path, frames: int = 30,
                  image_hw: tuple[int, int] = (480, 640)) -> dict:
    import numpy as np

    from ..engine.engine import SpatialMemoryEngine, resolve_dtype
    from ..model.checkpoint import build_model
    from ..model.presets import preset_config

    torch_dtype = resolve_dtype(dtype)
    dev = torch.device(device)
    started = time.perf_counter()
    vlm, geometry = write_random_backbones(workdir, size, device, torch_dtype)
    preset = f"qwen2.5-vl-{'3b' if size == 'tiny' else size}-vggt"
    config = preset_config(preset, backbone_dir=str(vlm), geometry_dir=str(geometry),
                           dtype={"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype])
    engine = SpatialMemoryEngine(build_model(config), weights=f"random-{size}", device=device, dtype=dtype)
    setup_s = time.perf_counter() - started
    rng = np.random.default_rng(0)
    clip = [rng.integers(0, 256, (*image_hw, 3), dtype=np.uint8) for _ in range(8)]
    for i in range(5):                                   # warm-up (kernels, allocator)
        engine.ingest(clip[i % 8], stamp_ns=i)
    _sync(dev)
    t0 = time.perf_counter()
    for i in range(frames):
        engine.ingest(clip[i % 8], stamp_ns=10 + i)
    _sync(dev)
    ingest_s = (time.perf_counter() - t0) / frames
    engine.query(QUESTION, max_new_tokens=16)            # warm-up
    query_s = statistics.median(engine.query(QUESTION, max_new_tokens=16).latency_s for _ in range(3))
    geometry = geometry_throughput(engine)
    peak = measured_gemm_tflops(dev, torch_dtype)
    sheet = datasheet_tflops(dev)
    params = {name: sum(p.numel() for p in part.parameters()) / 1e9
              for name, part in (("geometry", engine.model.geometry), ("semantic", engine.model.semantic),
                                 ("language", engine.model.bridge))}
    return {
        "size": size, "preset": preset, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "dtype": dtype, "image": f"{image_hw[1]}x{image_hw[0]}", "model_input": "x".join(map(str, config.image_size[::-1])),
        "params_b_geometry": round(params["geometry"], 3), "params_b_semantic": round(params["semantic"], 3),
        "params_b_language": round(params["language"], 3), "setup_seconds": round(setup_s, 1),
        "ingest_ms_per_frame": round(1000 * ingest_s, 2), "ingest_fps": round(1 / ingest_s, 2),
        "query_ms": round(1000 * query_s, 1), "max_new_tokens": 16,
        **{k: round(v, 3) for k, v in geometry.items()},
        "gemm_peak_tflops_measured": round(peak, 1),
        "geometry_fraction_of_measured_gemm_peak": round(geometry["geometry_achieved_tflops"] / peak, 3),
        "datasheet_bf16_tflops": sheet,
        "geometry_fraction_of_datasheet_peak": round(geometry["geometry_achieved_tflops"] / sheet, 3) if sheet else None,
    }
