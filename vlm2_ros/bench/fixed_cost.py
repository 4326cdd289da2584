"""Fixed cost per frame: VLM² streaming memory vs a naive all-frames-in-context baseline.

The engine really ingests every frame of a long stream; per-frame ingest time, query latency
and process RSS are sampled along the way. The baseline is the same model and step with an
unbounded working memory: each new frame attends over every earlier frame's fused tokens, and a
question feeds every frame's tokens to the language model. Its cost depends only on how many
frames it holds, so it is timed at each measured length on a state filled to that length with
copies of a real fused frame (streaming it through every frame would take hours, which is the
point of the comparison).
"""
from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass

import numpy as np
import psutil
import torch
from tqdm import tqdm

from ..engine.engine import SpatialMemoryEngine
from ..model.dual_memory import MemoryState
from ..model.provenance import Provenance
from ..model.vlm2 import StreamState
from ..model.working_memory import WorkingMemory

QUESTION = "How many chairs are in this room?"


def stream_frames(height: int, width: int, count: int, seed: int = 0) -> list[np.ndarray]:
    """A short, reusable clip of frames; the stream cycles through it (cost is content-independent)."""
    try:
        from ..sim.api import sample_frames  # rendered rooms when the simulator is available
        return sample_frames(count, height, width, seed)
    except ImportError:
        rng = np.random.default_rng(seed)
        return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


def all_frames_stream(stream: StreamState, n: int) -> StreamState:
    """The stream with a working memory that never forgets, holding n frames (copies of the
    newest real H_t and its provenance): the naive "all frames in context" model."""
    working = stream.memory.working
    expand = lambda t: t[:, -1:].expand(t.shape[0], n, *t.shape[2:]).contiguous()  # noqa: E731
    prov = Provenance(*(expand(v) for v in working.provenance.fields().values()))
    unbounded = WorkingMemory(capacity=n + 1, tokens=expand(working.tokens), provenance=prov)
    return StreamState(stream.geometry_window, MemoryState(unbounded, stream.memory.episodic), stream.frames)


@torch.inference_mode()
def baseline_costs_ms(engine: SpatialMemoryEngine, stream: StreamState, frame: np.ndarray, n: int,
                      with_query: bool, repeats: int = 3) -> tuple[float, float]:
    """(ingest ms, query ms) of the all-frames baseline holding n frames: the same model and
    step as the engine, only the working memory is unbounded."""
    model = engine.model
    big = all_frames_stream(stream, n)
    pixels = engine.preprocess(frame, None)[None].to(engine.device, engine.dtype)
    stamp, index = torch.tensor([0]), torch.tensor([stream.frames])
    ingest = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.step(big, pixels, stamp, index)
        ingest.append(time.perf_counter() - t0)
    query = float("nan")
    if with_query:
        tokens = model.readout.pool(big.memory.working.tokens).flatten(1, 2)  # [1, n*k, C]
        t0 = time.perf_counter()
        model.bridge.generate(tokens, QUESTION, max_new_tokens=4)
        query = time.perf_counter() - t0
    return 1000 * statistics.median(ingest), 1000 * query


def run_fixed_cost(engine: SpatialMemoryEngine, frames: int, short_at: int = 100,
                   window: int = 200, query_repeats: int = 9, baseline_lengths: tuple[int, ...] = (),
                   baseline_query_max: int = 10_000, progress: bool = True) -> dict:
    """Ingest `frames` frames; compare costs around frame `short_at` and at the end."""
    if frames < 2 * short_at:
        raise ValueError(f"--frames must be at least {2 * short_at} to compare short and long streams")
    h, w = engine.model.config.image_size
    clip = stream_frames(h, w, 32)
    process = psutil.Process()
    engine.reset()
    ingest_ms = np.zeros(frames)
    rss_mb: list[tuple[int, float]] = []
    query_ms: dict[str, float] = {}
    for i in tqdm(range(frames), desc="fixed-cost: ingest", disable=not progress, unit="frame"):
        t0 = time.perf_counter()
        engine.ingest(clip[i % len(clip)], stamp_ns=i * 100_000_000)
        ingest_ms[i] = 1000 * (time.perf_counter() - t0)
        if i + 1 in (short_at, frames):
            query_ms[str(i + 1)] = 1000 * statistics.median(
                engine.query(QUESTION).latency_s for _ in range(query_repeats))
        if i % 100 == 0 or i + 1 == frames:
            gc.collect()
            rss_mb.append((i + 1, process.memory_info().rss / 2**20))
    # Medians over `window` frames around each point: per-frame times on a shared CPU swing by
    # +-20 % over hundreds of frames, so 20-frame windows measured the machine, not the model.
    window = min(window, 2 * short_at, frames - short_at)
    short = float(np.median(ingest_ms[short_at - window // 2: short_at + window // 2]))
    long = float(np.median(ingest_ms[frames - window:]))
    warm = [r for n, r in rss_mb if n > min(500, frames // 4)]
    result = {
        "frames": frames, "short_at_frame": short_at, "median_window_frames": window,
        "ingest_ms_short": short, "ingest_ms_long": long, "ingest_ratio_long_vs_short": long / short,
        "query_ms_short": query_ms[str(short_at)], "query_ms_long": query_ms[str(frames)],
        "query_ratio_long_vs_short": query_ms[str(frames)] / query_ms[str(short_at)],
        "rss_mb_after_warmup": warm[0] if warm else rss_mb[-1][1], "rss_mb_end": rss_mb[-1][1],
        "rss_growth_mb": (rss_mb[-1][1] - warm[0]) if warm else 0.0,
        "device": str(engine.device), "dtype": engine.dtype_name, "preset": engine.model.config.preset,
        "torch_threads": torch.get_num_threads(),
    }
    lengths = sorted(set(baseline_lengths) | {short_at, frames})
    end_stream = engine.stream
    base_ingest, base_query = {}, {}
    for n in tqdm(lengths, desc="fixed-cost: baseline", disable=not progress):
        base_ingest[n], base_query[n] = baseline_costs_ms(engine, end_stream, clip[0], n,
                                                          with_query=n <= baseline_query_max)
    result.update({
        "baseline_ingest_ms_short": base_ingest[short_at], "baseline_ingest_ms_long": base_ingest[frames],
        "baseline_ingest_ratio_long_vs_short": base_ingest[frames] / base_ingest[short_at],
        "baseline_query_ms_short": base_query[short_at], "baseline_query_ms_long": base_query[frames],
        "baseline_query_ratio_long_vs_short": base_query[frames] / base_query[short_at],
    })
    curves = {"ingest_ms": ingest_ms.tolist(), "rss_mb": rss_mb,
              "baseline_ingest_ms": base_ingest, "baseline_query_ms": base_query}
    return {"result": result, "curves": curves}


def plot_fixed_cost(curves: dict, result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ingest = np.asarray(curves["ingest_ms"])
    k = min(50, len(ingest))
    smooth = np.convolve(ingest, np.ones(k) / k, mode="valid")
    axes[0].plot(np.arange(len(smooth)) + k, smooth, label=f"VLM² dual memory (moving mean, {k} frames)")
    base = curves["baseline_ingest_ms"]
    axes[0].plot(list(base), list(base.values()), "o--", label="all frames in context (same step)")
    axes[0].set(xlabel="frames in stream", ylabel="ms per frame", title="Ingest cost per frame", yscale="log")
    axes[0].legend(fontsize=8)
    short, long = result["short_at_frame"], result["frames"]
    axes[1].plot([short, long], [result["query_ms_short"], result["query_ms_long"]], "o-", label="VLM² (fixed-size memory)")
    bq = {n: v for n, v in curves["baseline_query_ms"].items() if v == v}  # drop NaN (not measured)
    axes[1].plot(list(bq), list(bq.values()), "o--", label="all frames in context")
    axes[1].set(xlabel="frames in stream", ylabel="ms per question", title="Query latency", yscale="log")
    axes[1].legend(fontsize=8)
    n, rss = zip(*curves["rss_mb"])
    axes[2].plot(n, rss)
    axes[2].set(xlabel="frames in stream", ylabel="RSS (MiB)", title="Process memory (VLM²)")
    fig.suptitle(f"preset {result['preset']} on {result['device']} ({result['dtype']}): ingest ratio "
                 f"{result['ingest_ratio_long_vs_short']:.2f} vs baseline {result['baseline_ingest_ratio_long_vs_short']:.1f}; "
                 f"query ratio {result['query_ratio_long_vs_short']:.2f} vs baseline "
                 f"{result['baseline_query_ratio_long_vs_short']:.1f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
