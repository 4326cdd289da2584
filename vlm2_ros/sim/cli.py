"""`vlm2 sim ...`: generate episode data sets, episode bags and top-down maps of generated rooms."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ..atomic_io import atomic_directory, write_json_atomic
from .trajectory import DEFAULT_FPS


def episode_seed(seed: int, index: int) -> int:
    """Seed of episode `index` of a data set generated from `seed`."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0] % 1_000_000)


def _episode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=300, help="frames per episode (default 300)")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--fps", type=float, default=DEFAULT_FPS, help=f"frame rate (default {DEFAULT_FPS:g} Hz)")
    p.add_argument("--per-task", type=int, default=2, help="questions per task and episode (default 2)")


def register(subparsers) -> None:
    sim = subparsers.add_parser("sim", help="synthetic rooms: data sets, bags, maps")
    sub = sim.add_subparsers(dest="sim", required=True)
    p = sub.add_parser("dataset", help="write N episodes (frames, depth, masks, poses, intrinsics, questions)")
    _episode_args(p)
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--style", choices=("walk", "long_horizon", "mixed"), default="mixed",
                   help="camera walks; mixed: every third episode is long-horizon (default)")
    p.add_argument("--chunk", type=int, default=100, help="frames per archive (default 100)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--json", type=Path, default=None, help="write a flat summary here")
    p.set_defaults(func=dataset_command)

    p = sub.add_parser("bag", help="write one episode as a rosbag2 plus its questions file")
    _episode_args(p)
    p.add_argument("--style", choices=("walk", "long_horizon"), default="walk")
    p.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3")
    p.add_argument("--depth", action="store_true", help="also write /camera/depth/image_raw (32FC1)")
    p.add_argument("--out", type=Path, required=True, help="bag directory to create")
    p.set_defaults(func=bag_command)

    p = sub.add_parser("map", help="top-down PNG of a generated room with labels and the camera path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--style", choices=("walk", "long_horizon"), default="walk")
    p.add_argument("--episode", type=Path, default=None, help="map a written episode directory instead")
    p.add_argument("--out", type=Path, required=True, help="PNG path")
    p.set_defaults(func=map_command)


def _style(style: str, index: int) -> str:
    if style == "mixed":
        return "long_horizon" if index % 3 == 2 else "walk"
    return style


def write_dataset(out: Path, seed: int, episodes: int, frames: int, width: int, height: int, fps: float,
                  per_task: int, style: str = "mixed", chunk: int = 100) -> dict:
    """Render `episodes` episodes (scenes from `seed`) with their questions into `out`; a summary."""
    from tqdm import tqdm

    from .episode import Episode, write_episode
    from .questions import Balancer, generate_questions

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    t0 = time.perf_counter()
    balancer = Balancer()
    n_questions = 0
    with atomic_directory(out) as tmp, tqdm(total=episodes * frames, unit="frame", desc="rendering") as bar:
        index = []
        for k in range(episodes):
            ep = Episode.generate(episode_seed(seed, k), frames, width=width, height=height,
                                  fps=fps, style=_style(style, k), episode_id=f"ep_{k:04d}")
            qs = generate_questions(ep, per_task=per_task, balancer=balancer)
            n_questions += len(qs)
            write_episode(ep, tmp / ep.spec.episode_id, qs, chunk=chunk, progress=bar.update)
            index.append({"episode_id": ep.spec.episode_id, "seed": ep.spec.seed, "style": ep.spec.style,
                          "scene_name": ep.scene.name, "questions": len(qs)})
        write_json_atomic(tmp / "dataset.json", {"seed": seed, "episodes": index, "frames": frames,
                                                 "width": width, "height": height, "fps": fps,
                                                 "per_task": per_task, "style": style})
    return {"episodes": episodes, "frames": frames, "questions": n_questions,
            "seconds": round(time.perf_counter() - t0, 3), "out": str(out)}


def dataset_command(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise SystemExit(f"--episodes must be >= 1, got {args.episodes}")
    summary = write_dataset(args.out, args.seed, args.episodes, args.frames, args.width, args.height, args.fps,
                            args.per_task, args.style, args.chunk)
    print(json.dumps(summary))
    if args.json:
        write_json_atomic(args.json, summary)
    return 0


def bag_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .bags import questions_path, write_episode_bag
    from .episode import Episode
    from .questions import generate_questions

    ep = Episode.generate(args.seed, args.frames, width=args.width, height=args.height, fps=args.fps,
                          style=args.style)
    qs = generate_questions(ep, per_task=args.per_task)
    with tqdm(total=args.frames, unit="frame", desc=f"bag ({args.storage})") as bar:
        write_episode_bag(ep, args.out, storage=args.storage, questions=qs, depth=args.depth, progress=bar.update)
    print(f"bag: {args.out}\nquestions: {questions_path(args.out)} ({len(qs)})")
    return 0


def map_command(args: argparse.Namespace) -> int:
    from .topdown import plot_topdown

    if args.episode is not None:
        from .episode import EpisodeDir
        ep = EpisodeDir(args.episode)
        plot_topdown(ep.scene, args.out, ep.poses, title=f"{ep.episode_id} ({ep.scene.name})")
    else:
        from .episode import Episode
        ep = Episode.generate(args.seed, args.frames, style=args.style)
        plot_topdown(ep.scene, args.out, ep.poses)
    print(f"map: {args.out}")
    return 0
