"""`vlm2 train --config FILE [--resume]`: train a preset on a data set (see training/config.py).
`--memory-reliance`, `--room-size-probe`, `--position-probe`, `--perception-noise` and `--fit-readout`
train nothing: they measure a finished run (does its language model read its memory; does its
memory hold the room's extent; does it hold where each object is; how its perceived boxes differ
from the truth; which readout settings per class find its objects best)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train VLM2 on synthetic-world episodes (config file)")
    p.add_argument("--config", type=Path, required=True, help="YAML training config (e.g. config/train_tiny.yaml)")
    p.add_argument("--resume", action="store_true", help="continue the run in the config's out directory")
    diagnose = p.add_mutually_exclusive_group()
    diagnose.add_argument("--memory-reliance", type=int, nargs="?", const=60, metavar="SAMPLES",
                          help="do not train: answer loss of the run's model on SAMPLES (default 60) training "
                               "samples' questions with their own memory vs another scene's, per question "
                               "type; writes memory_reliance.json in the run directory")
    diagnose.add_argument("--room-size-probe", action="store_true",
                          help="do not train: 5-fold cross-validated ridge probe from the run's streamed "
                               "memories to the room area (mean relative accuracy, beside the mean answer); "
                               "writes room_size_probe.json in the run directory")
    diagnose.add_argument("--position-probe", type=int, nargs="?", const=8, metavar="EPISODES",
                          help="do not train: stream EPISODES (default 8) of the config's episodes and read "
                               "where each object is from the memory with the run's category and point "
                               "probes, at the entry grid and the readout grid (mean pool, and the model's "
                               "own); with the depth error of the geometry windows; writes "
                               "position_probe.json in the run directory")
    diagnose.add_argument("--perception-noise", action="store_true",
                          help="do not train: how the run's perceived boxes (its object readout on the "
                               "config's episodes' streamed memories) differ from the truth, as the fields "
                               "of a generated stage's perception_noise; writes perception_noise.json in "
                               "the run directory")
    diagnose.add_argument("--fit-readout", action="store_true",
                          help="do not train: fit each class's object readout min_share and merge_radius_m "
                               "to the truth on the config's episodes' streamed memories (best F1 of boxes "
                               "against objects); writes readout_fit.json in the run directory, and prints "
                               "the model config to run with them")
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
    if (args.memory_reliance is not None or args.room_size_probe or args.position_probe is not None
            or args.perception_noise or args.fit_readout):
        return diagnose_command(config, args.memory_reliance, args.room_size_probe, args.position_probe,
                                args.perception_noise, args.fit_readout)
    try:
        checkpoint = Trainer(config, resume=args.resume).run()
    except (FileExistsError, TrainConfigError) as e:
        raise SystemExit(f"vlm2 train: {e}") from None
    print(json.dumps({"checkpoint": str(checkpoint), "log": str(Path(config.out) / "log.jsonl"),
                      "curves": str(Path(config.out) / "curves.png")}, indent=2))
    return 0


def diagnose_command(config, reliance_samples: int | None, room_size_probe: bool,
                     position_episodes: int | None = None, perception_noise: bool = False,
                     fit_readout: bool = False) -> int:
    from ..atomic_io import write_json_atomic
    from .config import TrainConfigError
    from .trainer import STATE_JSON, Trainer

    if reliance_samples is not None and reliance_samples < 1:
        raise SystemExit("vlm2 train: --memory-reliance needs at least 1 sample")
    if position_episodes is not None and position_episodes < 1:
        raise SystemExit("vlm2 train: --position-probe needs at least 1 episode")
    if not (Path(config.out) / STATE_JSON).is_file() and not (config.init_modules or config.init_checkpoint):
        # a run not trained yet is measured as init_modules / init_checkpoint (and init_probes) build it
        raise SystemExit(f"vlm2 train: {config.out} holds no training run to measure, and the config takes "
                         "no trained weights (init_modules, init_checkpoint)")
    trainer = Trainer(config, resume=True)
    if position_episodes is not None:
        result = measure(lambda: trainer.position_probe(position_episodes), Path(config.out) / "position_probe.json")
        print(f"{result['episodes']} episodes, {result['reader']} probe; depth error of the geometry windows "
              f"(mean |log d - log d*|): {result['depth_error']:.3f} as the fusion places pixels "
              f"({result['decoder_depth_error']:.3f} the decoder's); median floor-plane error of the patch "
              f"points the fusion gets from it: {result['patch_point_error_m']:.2f} m")
        print("| memory grid | objects located | median error (m) | guessing the room centre (m) | "
              "recognised (share >= 0.5) | median best share |\n|---|---|---|---|---|---|")
        meters = lambda value: "-" if value is None else f"{value:.2f}"  # noqa: E731
        for grid, row in result["grids"].items():
            print(f"| {grid} | {row['located']} of {row['objects']} | {meters(row['median_error_m'])} | "
                  f"{meters(row['room_centre_median_error_m'])} | {row['recognised']} | "
                  f"{row['median_best_share']:.2f} |")
        objects = result["perceived_objects"]
        if objects is not None:
            print(f"perceived objects (share >= {objects['min_share']}, merged within {objects['merge_m']} m): "
                  f"{objects['boxes_per_episode']:.1f} boxes an episode for {objects['seen_per_episode']:.1f} objects "
                  f"seen; {objects['located']} of {objects['objects']} single objects have a box of their category, "
                  f"median error {meters(objects['median_error_m'])} m; room floor area "
                  f"x{objects['median_room_area_ratio']:.2f} of the true (median)")
        return 0
    if perception_noise:
        print(json.dumps(measure(trainer.perception_noise, Path(config.out) / "perception_noise.json"), indent=2))
        return 0
    if fit_readout:
        result = measure(trainer.fit_readout, Path(config.out) / "readout_fit.json")
        print("| class | min_share | merge radius (m) | objects | found | extra boxes | missed | F1 | F1 now |\n"
              + "|---" * 9 + "|")
        for name, row in result["classes"].items():
            now = f"{row['current']['f1']:.2f}" if "current" in row else "-"
            print(f"| {name} | {row['min_share']} | {row['merge_radius_m']} | {row['objects']} | {row['matched']} | "
                  f"{row['extra']} | {row['missed']} | {row['f1']:.2f} | {now} |")
        print("model config: " + json.dumps({"object_readout": result["object_readout"]}))
        return 0
    if room_size_probe:
        print(json.dumps(measure(trainer.room_size_probe, Path(config.out) / "room_size_probe.json"), indent=2))
        return 0
    try:
        rows = trainer.memory_reliance(reliance_samples)
    except TrainConfigError as e:          # e.g. perceived memories without the probes that read them
        raise SystemExit(f"vlm2 train: {e}") from None
    write_json_atomic(Path(config.out) / "memory_reliance.json", rows)
    # score: accuracy of a multiple-choice type, the number head's relative accuracy of a number type
    print("| question type | questions | loss, own memory | loss, another scene's | score, own (%) | score, another's "
          "(%) | grounding error, own (m) | grounding error, another's (m) | choice probe, own (%) | choice probe, "
          "another's (%) |\n" + "|---" * 10 + "|")
    for task, row in rows.items():
        kind = "accuracy" if "own_accuracy" in row else "number_score" if "own_number_score" in row else None
        accuracy = f"{100 * row[f'own_{kind}']:.1f} | {100 * row[f'other_{kind}']:.1f}" if kind else "- | -"
        grounding = (f"{row['own_grounding_m']:.2f} | {row['other_grounding_m']:.2f}" if "own_grounding_m" in row
                     else "- | -")
        choice = (f"{100 * row['own_choice_probe']:.1f} | {100 * row['other_choice_probe']:.1f}"
                  if "own_choice_probe" in row else "- | -")
        print(f"| {task} | {row['questions']} | {row['own']:.3f} | {row['other']:.3f} | {accuracy} | {grounding} "
              f"| {choice} |")
    return 0


def measure(measurement, path: Path) -> dict:
    """measurement() written to `path`; its ValueError (a TrainConfigError too, e.g. no category probe
    to read the memory with) as the command's error."""
    from ..atomic_io import write_json_atomic

    try:
        result = measurement()
    except ValueError as e:
        raise SystemExit(f"vlm2 train: {e}") from None
    write_json_atomic(path, result)
    return result
