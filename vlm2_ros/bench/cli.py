"""`vlm2 bench ...`: measurements that write a flat JSON object (--json) and a plot (PNG)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..atomic_io import write_json_atomic


def add_engine_arguments(parser: argparse.ArgumentParser, runtime: bool = True) -> None:
    """Model and runtime options; runtime=False for benchmarks that choose dtypes and backends
    themselves."""
    parser.add_argument("--preset", default="tiny", help="model preset (default: tiny)")
    parser.add_argument("--checkpoint-dir", default=None, help="VLM2 checkpoint directory")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    if runtime:
        parser.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
        parser.add_argument("--backend", default="torch", choices=("torch", "onnx"),
                            help="runtime of the per-frame encoders and fusion (default: torch)")


def register(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks (speed, memory)")
    sub = bench.add_subparsers(dest="bench", required=True)
    p = sub.add_parser("fixed-cost", help="per-frame ingest / query cost and RSS vs stream length, "
                                          "against an all-frames-in-context baseline")
    p.add_argument("--frames", type=int, default=5000)
    p.add_argument("--short-at", type=int, default=100, help="frame of the short-stream measurement")
    p.add_argument("--json", type=Path, default=None, help="write the flat result here")
    p.add_argument("--plot", type=Path, default=None, help="PNG plot (default: next to --json)")
    add_engine_arguments(p)
    p.set_defaults(func=fixed_cost_command)

    p = sub.add_parser("backends", help="per-frame hot path per runtime: torch fp32/bf16/fp16, ONNX Runtime")
    p.add_argument("--runtimes", default="torch-fp32,torch-bf16,torch-fp16,onnx-cpu,onnx-cuda,onnx-tensorrt",
                   help="comma-separated list (default: %(default)s); unavailable ones are skipped, saying why")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--onnx-dir", default=None, help="ONNX export to use (default: exported on demand)")
    p.add_argument("--json", type=Path, default=None, help="write the flat result here")
    p.add_argument("--plot", type=Path, default=None, help="PNG plot (default: next to --json)")
    add_engine_arguments(p, runtime=False)
    p.set_defaults(func=backends_command)

    p = sub.add_parser("node-overhead", help="frames/s through vlm2_node over frames/s of the engine alone")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--rounds", type=int, default=3,
                   help="the engine alone and the node alternate this many times (machine speed drifts)")
    p.add_argument("--json", type=Path, default=None, help="write the flat result here")
    p.set_defaults(func=node_overhead_command)

    p = sub.add_parser("real-size", help="Qwen2.5-VL-3B/7B + VGGT-1B sized model with random weights: "
                                         "ingest frames/s, query latency, geometry encoder vs GEMM peak")
    p.add_argument("--size", choices=("3b", "7b", "tiny"), default="3b",
                   help="language/vision model size (tiny: the same code at toy size, for CPU checks)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the random checkpoints go (default: a temporary directory; 7B: ~17 GB)")
    p.add_argument("--json", type=Path, default=None, help="write the flat result here")
    p.set_defaults(func=real_size_command)

    p = sub.add_parser("render", help="synthetic-world rendering speed (frames/s per resolution)")
    p.add_argument("--frames", type=int, default=300, help="frames per resolution (default 300)")
    p.add_argument("--resolutions", default="64x48,128x96,320x240,640x480",
                   help="comma-separated WxH list (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the flat result here")
    p.set_defaults(func=render_command)

    from ..reliability.cli import register_reliability   # soak, crash-loop, fuzz, reliability-report
    register_reliability(sub)


def fixed_cost_command(args: argparse.Namespace) -> int:
    from ..engine.engine import SpatialMemoryEngine
    from .fixed_cost import plot_fixed_cost, run_fixed_cost

    if args.threads:
        torch.set_num_threads(args.threads)
    engine = SpatialMemoryEngine.from_preset(args.preset, checkpoint_dir=args.checkpoint_dir,
                                             device=args.device, dtype=args.dtype, backend=args.backend)
    lengths = tuple(n for n in (1000, 2000, 5000, 10000) if n < args.frames)
    out = run_fixed_cost(engine, args.frames, short_at=args.short_at, baseline_lengths=lengths)
    result = out["result"]
    print(json.dumps(result, indent=2))
    if args.json:
        write_json_atomic(args.json, result)
    plot = args.plot or (args.json.with_suffix(".png") if args.json else None)
    if plot:
        plot_fixed_cost(out["curves"], result, str(plot))
        print(f"plot: {plot}")
    return 0


def backends_command(args: argparse.Namespace) -> int:
    from ..model.checkpoint import load_model
    from .backends import plot_backends, run_backend_benchmark

    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = load_model(args.preset, checkpoint_dir=args.checkpoint_dir)
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    result = run_backend_benchmark(model.eval(), runtimes, repeats=args.repeats, device=args.device,
                                   onnx_dir=args.onnx_dir)
    print(json.dumps(result, indent=2))
    if args.json:
        write_json_atomic(args.json, result)
    plot = args.plot or (args.json.with_suffix(".png") if args.json else None)
    if plot:
        plot_backends(result, runtimes, str(plot))
        print(f"plot: {plot}")
    return 0


def node_overhead_command(args: argparse.Namespace) -> int:
    from .node_overhead import run_node_overhead

    if not 1 <= args.frames <= 990:
        raise SystemExit(f"--frames must be in [1, 990] (the node's queue holds them all), got {args.frames}")
    if not 1 <= args.rounds <= args.frames:
        raise SystemExit(f"--rounds must be in [1, --frames], got {args.rounds}")
    result = run_node_overhead(args.frames, args.width, args.height, args.preset, args.checkpoint_dir, args.rounds)
    print(json.dumps(result, indent=2))
    if args.json:
        write_json_atomic(args.json, result)
    return 0


def real_size_command(args: argparse.Namespace) -> int:
    import tempfile

    from .real_size import run_real_size

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here; run this on a GPU machine (or --size tiny --device cpu)")
    with tempfile.TemporaryDirectory(prefix="vlm2-real-size-") as tmp:
        result = run_real_size(args.size, args.device, args.dtype, args.workdir or Path(tmp), args.frames)
    print(json.dumps(result, indent=2))
    if args.json:
        write_json_atomic(args.json, result)
    return 0


def parse_resolutions(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        try:
            w, h = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"bad resolution {item!r}: expected WxH, e.g. 128x96") from None
        out.append((w, h))
    return out


def render_command(args: argparse.Namespace) -> int:
    from .render import run_render_benchmark

    if args.frames < 1:
        raise SystemExit(f"--frames must be >= 1, got {args.frames}")
    result = run_render_benchmark(args.frames, parse_resolutions(args.resolutions), seed=args.seed)
    print(json.dumps(result, indent=2))
    if args.json:
        write_json_atomic(args.json, result)
    return 0
