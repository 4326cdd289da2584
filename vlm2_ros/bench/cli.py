"""`vlm2 bench ...`: measurements that write a flat JSON object (--json) and a plot (PNG)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..atomic_io import write_json_atomic


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="tiny", help="model preset (default: tiny)")
    parser.add_argument("--checkpoint-dir", default=None, help="VLM2 checkpoint directory")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")


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

    p = sub.add_parser("render", help="synthetic-world rendering speed (frames/s per resolution)")
    p.add_argument("--frames", type=int, default=300, help="frames per resolution (default 300)")
    p.add_argument("--resolutions", default="64x48,128x96,320x240,640x480",
                   help="comma-separated WxH list (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the flat result here")
    p.set_defaults(func=render_command)


def fixed_cost_command(args: argparse.Namespace) -> int:
    from ..engine.engine import SpatialMemoryEngine
    from .fixed_cost import plot_fixed_cost, run_fixed_cost

    if args.threads:
        torch.set_num_threads(args.threads)
    engine = SpatialMemoryEngine.from_preset(args.preset, checkpoint_dir=args.checkpoint_dir,
                                             device=args.device, dtype=args.dtype)
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
