"""`vlm2 bench soak | crash-loop | fuzz | reliability-report`: registered into `vlm2 bench` by
vlm2_ros/bench/cli.py. Each writes a flat JSON object (--json) and, where there is a curve, a
PNG next to it; node logs and snapshots go to --workdir (default: beside --json, else a
temporary folder that is removed)."""
from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from pathlib import Path
from typing import Iterator

from ..atomic_io import write_json_atomic


def register_reliability(sub) -> None:
    p = sub.add_parser("soak", help="flood and soak: cameras at full rate into vlm2_node while clients query it")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--cameras", type=int, default=4)
    p.add_argument("--rate-hz", type=float, default=30.0, help="per camera")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--query-timeout", type=float, default=10.0, help="timeout_s of every query (s)")
    _common(p)
    p.set_defaults(func=soak_command)

    p = sub.add_parser("crash-loop", help="SIGKILL vlm2_node at random moments and check every restart's memory")
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--snapshot-period", type=float, default=0.2, help="snapshot.period_s of the node (s)")
    p.add_argument("--writer-kills", type=int, default=0,
                   help="also SIGKILL a snapshot-writing process this many times (engine level)")
    _common(p)
    p.set_defaults(func=crash_loop_command)

    p = sub.add_parser("fuzz", help="fuzz the message-to-tensor path for a bounded time (atheris when installed)")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="corpus, crash inputs, atheris log")
    p.add_argument("--json", type=Path, default=None, help="write the flat result here")
    p.set_defaults(func=fuzz_command)

    from .report import SIZES
    p = sub.add_parser("reliability-report", help="the whole reliability suite: Markdown report, JSON and plots")
    p.add_argument("--out", type=Path, default=Path("out/reliability"), help="output folder (default: %(default)s)")
    p.add_argument("--size", choices=sorted(SIZES), default="ci",
                   help="ci: minutes on 2 cores; full: 10-minute soak, 50 kills, 5 minutes of fuzzing")
    p.add_argument("--soak-minutes", type=float, default=None)
    p.add_argument("--kills", type=int, default=None)
    p.add_argument("--writer-kills", type=int, default=None)
    p.add_argument("--fuzz-seconds", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID to use (default: a private one)")
    p.set_defaults(func=report_command)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help="model preset of the node (default: tiny)")
    p.add_argument("--checkpoint-dir", default="", help="VLM2 checkpoint directory of the node")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID to use (default: a private one)")
    p.add_argument("--workdir", type=Path, default=None, help="node logs and snapshots")
    p.add_argument("--json", type=Path, default=None, help="write the flat result here")
    p.add_argument("--plot", type=Path, default=None, help="PNG plot (default: next to --json)")


@contextlib.contextmanager
def _workdir(args: argparse.Namespace, name: str) -> Iterator[Path]:
    if args.workdir is not None:
        yield args.workdir
    elif args.json is not None:
        yield args.json.parent / f"{args.json.stem}-work"
    else:
        with tempfile.TemporaryDirectory(prefix=f"vlm2-{name}-") as directory:
            yield Path(directory)


def _write(args: argparse.Namespace, result: dict) -> None:
    print(json.dumps(result, indent=2))
    if args.json:
        write_json_atomic(args.json, result)


def _plot_path(args: argparse.Namespace) -> Path | None:
    return args.plot or (args.json.with_suffix(".png") if args.json else None)


def _domain(args: argparse.Namespace) -> int:
    from .node_process import private_domain_id
    return private_domain_id() if args.domain_id is None else args.domain_id


def soak_command(args: argparse.Namespace) -> int:
    from .soak import SoakConfig, plot_soak, run_soak
    config = SoakConfig(minutes=args.minutes, cameras=args.cameras, rate_hz=args.rate_hz, width=args.width,
                        height=args.height, clients=args.clients, query_timeout_s=args.query_timeout,
                        preset=args.preset, checkpoint_dir=args.checkpoint_dir, seed=args.seed)
    with _workdir(args, "soak") as workdir:
        out = run_soak(config, workdir, _domain(args))
    _write(args, out["result"])
    if (plot := _plot_path(args)) is not None:
        plot_soak(out["curves"], out["result"], str(plot))
        print(f"plot: {plot}")
    r = out["result"]
    return 0 if r["node_crashes"] == 0 and r["queries_no_response"] == 0 and r["frames_unaccounted"] == 0 else 1


def crash_loop_command(args: argparse.Namespace) -> int:
    from .crash_loop import run_crash_loop, run_writer_kills
    from .report import plot_crash_loop
    with _workdir(args, "crash-loop") as workdir:
        out = run_crash_loop(args.kills, workdir, _domain(args), seed=args.seed, preset=args.preset,
                             checkpoint_dir=args.checkpoint_dir, snapshot_period_s=args.snapshot_period)
        result = out["result"]
        if args.writer_kills:
            result.update(run_writer_kills(args.writer_kills, workdir, seed=args.seed))
    _write(args, result)
    if args.json:
        write_json_atomic(args.json.with_name(f"{args.json.stem}_events.json"), out["events"])
    if (plot := _plot_path(args)) is not None:
        plot_crash_loop(out["events"], str(plot))
        print(f"plot: {plot}")
    lost = result["snapshots_lost"] + result["half_loaded"] + result.get("writer_snapshots_lost", 0)
    return 0 if lost == 0 else 1


def fuzz_command(args: argparse.Namespace) -> int:
    from .fuzz import run_fuzz
    with _workdir(args, "fuzz") as workdir:
        result = run_fuzz(args.seconds, workdir, seed=args.seed, engine=args.engine)
    _write(args, result)
    return 0 if result["failures"] == 0 else 1


def report_command(args: argparse.Namespace) -> int:
    from .report import run_reliability_report
    result = run_reliability_report(args.out, args.size, soak_minutes=args.soak_minutes, kills=args.kills,
                                    writer_kills=args.writer_kills, fuzz_seconds=args.fuzz_seconds,
                                    domain_id=args.domain_id, seed=args.seed)
    summary = ("size", "seconds", "load_held", "faults_tried", "faults_survived", "bad_inputs_tried",
               "bad_inputs_handled", "fuzz_inputs", "fuzz_failures", "data_lost", "unsafe_loading_findings")
    print(json.dumps({k: result[k] for k in summary}, indent=2))
    print(f"report: {args.out / 'reliability.md'}")
    ok = (result["load_held"] and result["faults_survived"] == result["faults_tried"] and result["data_lost"] == 0
          and result["bad_inputs_handled"] == result["bad_inputs_tried"] and result["fuzz_failures"] == 0
          and result["unsafe_loading_findings"] == 0)
    return 0 if ok else 1
