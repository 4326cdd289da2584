"""`vlm2 demo`: the main job on the embedded default model, end to end, in one process.

Streams an episode of frames into the engine, asks one question of each kind, prints each
answer with its evidence and latency (and the ground truth when the episode has one), then the
memory status. Frames come from the synthetic world when it is installed (vlm2_ros.sim), else
from a fixed pseudo-random clip, so the demo always runs.
"""
from __future__ import annotations

import argparse
import time

from tqdm import tqdm

QUESTIONS = (
    "How many chairs are in this room?",
    "What is the distance between the sofa and the table (in meters)?",
    "What is the length of the longest dimension of the bed (in centimeters)?",
    "What is the size of this room (in square meters)?",
    "If I am standing by the sofa and facing the tv, is the lamp to my left or right?\nA. left\nB. right",
    "Which of these objects is closest to the door?\nA. chair\nB. lamp\nC. plant\nD. tv",
    "Which object appeared first in the video?\nA. bed\nB. sofa\nC. table\nD. cabinet",
)


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="stream a sample episode into the engine and ask it questions")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from .bench.fixed_cost import stream_frames
    from .engine.engine import SpatialMemoryEngine

    engine = SpatialMemoryEngine.from_preset(args.preset, checkpoint_dir=args.checkpoint_dir, device=args.device)
    status = engine.status()
    print(f"model: preset {status.preset}, weights {status.weights}, {status.device}/{status.dtype}")
    if status.weights.startswith("untrained"):
        print("note: no trained checkpoint is installed for this preset yet; answers come from "
              "untrained weights and show the plumbing, not spatial skill")
    h, w = engine.model.config.image_size
    frames = stream_frames(h * 2, w * 2, min(args.frames, 64))
    started = time.perf_counter()
    for i in tqdm(range(args.frames), desc="ingest", unit="frame"):
        engine.ingest(frames[i % len(frames)], stamp_ns=1_000_000_000 + i * 100_000_000)
    elapsed = time.perf_counter() - started
    print(f"ingested {args.frames} frames in {elapsed:.1f} s ({args.frames / elapsed:.1f} frames/s)\n")
    for question in QUESTIONS:
        answer = engine.query(question)
        value = answer.value if answer.kind == "number" else answer.choice
        print(f"Q: {question.splitlines()[0]}")
        print(f"A: {answer.text!r} (kind {answer.kind}, parsed {value}, confidence {answer.confidence:.2f}, "
              f"{1000 * answer.latency_s:.0f} ms)")
        cited = ", ".join(f"frame {e.frame_index} @ {e.stamp_ns / 1e9:.1f}s ({e.memory}, {e.relevance:.2f})"
                          for e in answer.evidence)
        print(f"   evidence: {cited}\n")
    print("memory status:")
    for key, value in engine.status().to_dict().items():
        print(f"  {key}: {value}")
    return 0
