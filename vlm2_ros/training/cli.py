"""`vlm2 train --config FILE [--resume]`: train a preset on a data set (see training/config.py)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train VLM2 on synthetic-world episodes (config file)")
    p.add_argument("--config", type=Path, required=True, help="YAML training config (e.g. config/train_tiny.yaml)")
    p.add_argument("--resume", action="store_true", help="continue the run in the config's out directory")
    p.set_defaults(func=train_command)


def train_command(args: argparse.Namespace) -> int:
    from .config import TrainConfigError, load_train_config
    from .trainer import Trainer

    try:
        config = load_train_config(args.config)
    except TrainConfigError as e:
        raise SystemExit(f"vlm2 train: {e}") from None
    if not Path(config.data).is_dir():
        raise SystemExit(f"vlm2 train: data directory {config.data} does not exist; write one with "
                         f"`vlm2 sim dataset --seed 1 --episodes 40 --frames 300 --out {config.data}`")
    try:
        checkpoint = Trainer(config, resume=args.resume).run()
    except FileExistsError as e:
        raise SystemExit(f"vlm2 train: {e}") from None
    print(json.dumps({"checkpoint": str(checkpoint), "log": str(Path(config.out) / "log.jsonl"),
                      "curves": str(Path(config.out) / "curves.png")}, indent=2))
    return 0
