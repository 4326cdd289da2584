"""Backend speed: the per-frame hot path's components timed side by side in one run, per
runtime (torch fp32, torch bf16, torch fp16, ONNX Runtime on each provider that runs here).

Components at batch 1, as the engine runs them per frame: frame encoders (geometry patch
encoder + semantic encoder), geometry window (attention across a full window of L_g frames and
the newest frame's heads), fusion (including the host-side pose step for ONNX).
"""
from __future__ import annotations

import statistics
import time

import torch
from tqdm import tqdm

from ..model.vlm2 import VLM2Model

COMPONENTS = ("frame_encoders", "geometry_window_fusion", "hot_path")


def _time_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return 1000 * statistics.median(samples)


def run_backend_benchmark(model: VLM2Model, runtimes: list[str], repeats: int = 30, device: str = "cpu",
                          onnx_dir=None, progress: bool = True) -> dict:
    """`runtimes`: torch-fp32, torch-bf16, torch-fp16, onnx-cpu, onnx-cuda, onnx-tensorrt.
    Returns a flat dict: ms_<component>_<runtime>, and speedup_<runtime> (torch-fp32 hot path
    time over the runtime's), plus what was skipped and why."""
    import copy

    from ..backends.runtime import OnnxBackend, ProviderUnavailable, TorchBackend

    h, w = model.config.image_size
    length = model.config.geometry_window
    result: dict = {"repeats": repeats, "device": device, "threads": torch.get_num_threads(),
                    "image_size": f"{w}x{h}", "window": length, "skipped": {}}
    base = copy.deepcopy(model).to("cpu", torch.float32).eval()
    for runtime in tqdm(runtimes, desc="backends", disable=not progress):
        kind, _, variant = runtime.partition("-")
        try:
            if kind == "torch":
                dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[variant]
                m = copy.deepcopy(base).to(device, dtype)
                backend, dev = TorchBackend(m), torch.device(device)
            else:
                backend = OnnxBackend(base, onnx_dir, provider=variant)
                dtype, dev = torch.float32, torch.device("cpu")
        except (ProviderUnavailable, RuntimeError, TypeError) as e:
            result["skipped"][runtime] = str(e).splitlines()[0][:200]
            continue
        images = torch.rand(1, 3, h, w, device=dev, dtype=dtype)
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        with torch.inference_mode():
            tokens, semantic = backend.encode_frames(torch.rand(length, 3, h, w, device=dev, dtype=dtype))
            window = tokens[None]

            def encode():
                backend.encode_frames(images)
                sync()

            def fuse():
                backend.fuse_window(window, semantic[-1:])
                sync()

            def hot_path():
                backend.encode_frames(images)
                backend.fuse_window(window, semantic[-1:])
                sync()

            for component, fn in zip(COMPONENTS, (encode, fuse, hot_path)):
                result[f"ms_{component}_{runtime}"] = round(_time_ms(fn, repeats), 3)
    reference = result.get("ms_hot_path_torch-fp32")
    for runtime in runtimes:
        if reference and f"ms_hot_path_{runtime}" in result:
            result[f"speedup_{runtime}"] = round(reference / result[f"ms_hot_path_{runtime}"], 3)
    return result


def plot_backends(result: dict, runtimes: list[str], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ran = [r for r in runtimes if f"ms_hot_path_{r}" in result]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(1, len(ran))
    for k, runtime in enumerate(ran):
        values = [result[f"ms_{c}_{runtime}"] for c in COMPONENTS]
        ax.bar([i + k * width for i in range(len(COMPONENTS))], values, width, label=runtime)
    ax.set_xticks([i + width * (len(ran) - 1) / 2 for i in range(len(COMPONENTS))], COMPONENTS)
    ax.set_ylabel("ms per frame (median)")
    ax.set_title(f"per-frame hot path by runtime ({result['device']}, {result['threads']} threads)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
