"""`vlm2 eval`: score a predictor on a data set (ours or a local VSI-Bench copy); flat JSON + table + PNG."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..atomic_io import write_json_atomic


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="VSI-Bench-style scores of a predictor on a question set")
    p.add_argument("--data", type=Path, required=True,
                   help="data set / episode directory, or VSI-Bench question file(s) (.jsonl/.json/.parquet)")
    p.add_argument("--predictor", choices=("chance", "frequency", "model"), default="chance")
    p.add_argument("--preset", default="tiny", help="model preset for --predictor model")
    p.add_argument("--memory", default=None, help="memory mode for --predictor model")
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of the chance baseline")
    p.add_argument("--limit", type=int, default=None, help="score only the first N questions")
    p.add_argument("--json", type=Path, default=None, help="flat result: mean_score, score_<task>, ...")
    p.add_argument("--plot", type=Path, default=None, help="PNG per-task plot (default: next to --json)")
    p.add_argument("--predictions", type=Path, default=None, help="write per-question predictions (JSON Lines)")
    p.set_defaults(func=eval_command)


def make_predictor(args: argparse.Namespace):
    from .predictors import ChancePredictor, FrequencyPredictor
    if args.predictor == "chance":
        return ChancePredictor(args.seed)
    if args.predictor == "frequency":
        return FrequencyPredictor()
    from .model_predictor import ModelPredictor
    return ModelPredictor(args.preset, args.memory, args.device, checkpoint_dir=args.checkpoint_dir)


def eval_command(args: argparse.Namespace) -> int:
    from ..atomic_io import atomic_file
    from .data import load_questions
    from .evaluate import evaluate, format_table, plot_report

    records = load_questions(args.data)
    if args.limit is not None:
        records = records[: args.limit]
    if not records:
        raise SystemExit(f"no questions found under {args.data}")
    predictor = make_predictor(args)
    out = evaluate(records, predictor, data_root=args.data if args.data.is_dir() else None, progress=True)
    metrics = {"predictor": getattr(predictor, "name", args.predictor), "data": str(args.data), **out["metrics"]}
    print(format_table({metrics["predictor"]: out["metrics"]}))
    if args.json:
        write_json_atomic(args.json, metrics)
    plot = args.plot or (args.json.with_suffix(".png") if args.json else None)
    if plot:
        plot_report({metrics["predictor"]: out["metrics"]}, plot)
        print(f"plot: {plot}")
    if args.predictions:
        with atomic_file(args.predictions) as tmp:
            tmp.write_text("".join(json.dumps(p) + "\n" for p in out["predictions"]))
    return 0
