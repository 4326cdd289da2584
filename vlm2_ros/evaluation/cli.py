"""`vlm2 eval`: score a predictor on a data set (ours or a local VSI-Bench copy); flat JSON + table + PNG."""
from __future__ import annotations

import argparse
import json
from contextlib import contextmanager
from pathlib import Path

from ..atomic_io import write_json_atomic
from ..engine.number_decoding import DEFAULT_NUMBER_SAMPLES
from ..model.dual_memory import MEMORY_MODES
from .model_predictor import READERS, READOUTS

STREAM_CACHE_HELP = ("keep each streamed memory in this directory and read it back for any checkpoint with the "
                     "same memory writers (a new language bridge or object readout is scored in minutes; other "
                     "weights stream and keep their own)")
THREADS_HELP = ("torch CPU threads (default: torch's, one per core); jobs sharing a machine each take their share: "
                "more threads than cores slow every job several times over")


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="VSI-Bench-style scores of a predictor on a question set")
    p.add_argument("--data", type=Path, required=True,
                   help="data set / episode directory, or VSI-Bench question file(s) (.jsonl/.json/.parquet)")
    p.add_argument("--predictor", choices=("chance", "frequency", "model"), nargs="+", default=["chance"],
                   help="one or more, scored on the same questions (e.g. model chance frequency)")
    p.add_argument("--preset", default="tiny", help="model preset for --predictor model")
    p.add_argument("--memory", choices=MEMORY_MODES, nargs="+", default=None,
                   help="memory mode(s) for --predictor model (the paper's ablation: none working episodic "
                        "dual, each its own column; default: the checkpoint's)")
    p.add_argument("--readout", choices=READOUTS, default="memory",
                   help="--predictor model: what its language bridge reads: its memory (default), or the true "
                        "boxes of the objects seen by each question's frame, to score the bridge on a perfect "
                        "memory (models that read their memory as objects)")
    p.add_argument("--reader", choices=READERS, default="bridge",
                   help="--predictor model: who answers from what --readout gives: the language bridge (the "
                        "model's answer, default), or a closed-form solver over the same boxes, to measure what "
                        "the boxes hold apart from how the bridge reads them (a diagnostic)")
    p.add_argument("--readout-settings", type=readout_settings, default=None, metavar="JSON",
                   help="--predictor model: " + READOUT_SETTINGS_HELP)
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--number-samples", type=int, default=DEFAULT_NUMBER_SAMPLES,
                   help="--predictor model: answers drawn per number question (minimum Bayes risk, as "
                        "model.number_samples); 0: greedy")
    p.add_argument("--stream-cache", type=Path, default=None, help="--predictor model: " + STREAM_CACHE_HELP)
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--seed", type=int, default=0, help="seed of the chance baseline")
    p.add_argument("--limit", type=int, default=None, help="score only the first N questions")
    p.add_argument("--json", type=Path, default=None,
                   help="flat result (mean_score, score_<task>, ...); with several predictors "
                        "{\"results\": {name: flat result}}")
    p.add_argument("--markdown", type=Path, default=None, help="write the score table (Markdown) here")
    p.add_argument("--plot", type=Path, default=None, help="PNG per-task plot (default: next to --json)")
    p.add_argument("--predictions", type=Path, default=None, help="write per-question predictions (JSON Lines)")
    p.set_defaults(func=eval_command)

    p = subparsers.add_parser("eval-length", help="score vs episode length (long-horizon walks) per memory mode")
    p.add_argument("--lengths", type=int, nargs="+", default=[100, 300, 1000, 3000], help="frames per episode")
    p.add_argument("--memory", choices=MEMORY_MODES, nargs="+", default=["working", "dual"])
    p.add_argument("--episodes", type=int, default=3, help="episodes (scenes) per length; the same scenes at every length")
    p.add_argument("--per-task", type=int, default=2, help="questions per task and episode")
    p.add_argument("--seed", type=int, default=5, help="scene seed (pick one unseen in training)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--readout-settings", type=readout_settings, default=None, metavar="JSON", help=READOUT_SETTINGS_HELP)
    p.add_argument("--out", type=Path, required=True, help="data sets, length.json, length.md, length.png")
    p.add_argument("--stream-cache", type=Path, default=None, help=STREAM_CACHE_HELP)
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.set_defaults(func=eval_length_command)


READOUT_SETTINGS_HELP = ("the object readout's run-time settings over the checkpoint's, a JSON object of "
                         "model.object_memory.READOUT_SETTINGS fields, e.g. '{\"best_box_per_named_class\": false}' "
                         "(no weights depend on them)")


def readout_settings(text: str) -> dict:
    """--readout-settings: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e.msg})") from None
    if not isinstance(value, dict) or not value:
        raise argparse.ArgumentTypeError("a non-empty JSON object of object readout settings")
    return value


def make_predictors(args: argparse.Namespace) -> list:
    from .predictors import ChancePredictor, FrequencyPredictor
    predictors = []
    for name in dict.fromkeys(args.predictor):
        if name == "chance":
            predictors.append(ChancePredictor(args.seed))
        elif name == "frequency":
            predictors.append(FrequencyPredictor())
        else:
            from .model_predictor import ModelPredictor
            with checkpoint_errors_end("vlm2 eval"):
                predictors += [ModelPredictor(args.preset, memory, args.device, checkpoint_dir=args.checkpoint_dir,
                                              number_samples=args.number_samples, stream_cache=args.stream_cache,
                                              readout=args.readout, reader=args.reader,
                                              readout_settings=args.readout_settings)
                               for memory in (args.memory or [None])]
    return predictors


@contextmanager
def checkpoint_errors_end(command: str):
    """A missing checkpoint, or readout settings it does not take, ends `command` with the message:
    the user's input is wrong, a traceback would only hide that."""
    from ..model.checkpoint import CheckpointError
    try:
        yield
    except CheckpointError as e:
        raise SystemExit(f"{command}: {e}") from None


def markdown_report(results: dict[str, dict], data: str, questions: int) -> str:
    from .evaluate import format_table
    return (f"# VSI-Bench-style scores\n\nData: `{data}` ({questions} questions). Scores in percent: "
            "accuracy for multiple choice, mean relative accuracy for numbers.\n\n"
            + format_table(results) + "\n")


def set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {threads}")
        import torch
        torch.set_num_threads(threads)


def eval_command(args: argparse.Namespace) -> int:
    from ..atomic_io import atomic_file
    from .data import load_questions
    from .evaluate import evaluate, format_table, plot_report

    set_threads(args.threads)
    records = load_questions(args.data)
    if args.limit is not None:
        records = records[: args.limit]
    if not records:
        raise SystemExit(f"no questions found under {args.data}")
    for flag, value in (("--memory", args.memory), ("--stream-cache", args.stream_cache),
                        ("--readout-settings", args.readout_settings),
                        ("--readout", args.readout != "memory"), ("--reader", args.reader != "bridge")):
        if value and "model" not in args.predictor:
            raise SystemExit(f"{flag} applies to --predictor model")
    if args.readout == "truth" and (args.memory or args.stream_cache):
        raise SystemExit("--readout truth reads no memory: --memory and --stream-cache do not apply")
    results, predictions = {}, []
    for predictor in make_predictors(args):
        out = evaluate(records, predictor, data_root=args.data if args.data.is_dir() else None, progress=True)
        name = getattr(predictor, "name", "predictor")
        results[name] = out["metrics"]
        predictions += [{"predictor": name, **p} for p in out["predictions"]]
    print(format_table(results))
    if args.json:
        if len(results) == 1:
            name, metrics = next(iter(results.items()))
            write_json_atomic(args.json, {"predictor": name, "data": str(args.data), **metrics})
        else:
            write_json_atomic(args.json, {"data": str(args.data), "results": results})
    if args.markdown:
        with atomic_file(args.markdown) as tmp:
            tmp.write_text(markdown_report(results, str(args.data), len(records)))
    plot = args.plot or (args.json.with_suffix(".png") if args.json else None)
    if plot:
        plot_report(results, plot)
        print(f"plot: {plot}")
    if args.predictions:
        with atomic_file(args.predictions) as tmp:
            tmp.write_text("".join(json.dumps(p) + "\n" for p in predictions))
    return 0


def eval_length_command(args: argparse.Namespace) -> int:
    from .horizon import run_length_sweep

    set_threads(args.threads)
    if min(args.lengths) < 2 or args.episodes < 1 or args.per_task < 1:
        raise SystemExit("--lengths must be >= 2 frames, --episodes and --per-task >= 1")
    with checkpoint_errors_end("vlm2 eval-length"):
        result = run_length_sweep(args.out, sorted(set(args.lengths)), list(dict.fromkeys(args.memory)), args.seed,
                                  args.episodes, args.per_task, args.preset, args.checkpoint_dir, args.stream_cache,
                                  args.readout_settings)
    print((args.out / "length.md").read_text())
    print(f"plot: {args.out / 'length.png'}")
    return 0 if result["rows"] else 1
