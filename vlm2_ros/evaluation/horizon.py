"""Score as the episode grows: the same scenes rendered as long-horizon walks of several lengths
(the room toured in the first 20 % of the frames, then the camera lingers, so most questions are
about things seen long ago), each length scored per memory mode at the same per-frame compute.

`vlm2 eval-length --lengths 100 300 1000 3000 --memory working dual --out DIR` writes the data
sets under DIR (re-used when present), DIR/length.json, DIR/length.md and DIR/length.png.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..atomic_io import atomic_file, write_json_atomic


def dataset_dir(out: Path, frames: int) -> Path:
    return out / f"frames_{frames}"


def ensure_dataset(out: Path, frames: int, seed: int, episodes: int, per_task: int) -> Path:
    from ..sim.cli import write_dataset
    from ..sim.trajectory import DEFAULT_FPS

    path = dataset_dir(out, frames)
    meta = path / "dataset.json"
    if meta.is_file():
        have = json.loads(meta.read_text())
        if (have.get("seed"), have.get("frames"), len(have.get("episodes", []))) == (seed, frames, episodes):
            return path
        raise FileExistsError(f"{path} holds another data set (seed {have.get('seed')}, "
                              f"{len(have.get('episodes', []))} episodes); choose another --out")
    write_dataset(path, seed, episodes, frames, 128, 96, DEFAULT_FPS, per_task, style="long_horizon")
    return path


def run_length_sweep(out: Path, lengths: list[int], memory_modes: list[str], seed: int = 5, episodes: int = 3,
                     per_task: int = 2, preset: str = "tiny", checkpoint_dir: str | None = None,
                     stream_cache: str | None = None) -> dict:
    from .data import load_questions
    from .evaluate import evaluate
    from .model_predictor import ModelPredictor
    from .predictors import FrequencyPredictor

    rows = []
    predictors = {mode: ModelPredictor(preset, mode, checkpoint_dir=checkpoint_dir, stream_cache=stream_cache)
                  for mode in memory_modes}
    for frames in lengths:
        data = ensure_dataset(out, frames, seed, episodes, per_task)
        records = load_questions(data)
        row = {"frames": frames, "questions": len(records),
               "frequency": evaluate(records, FrequencyPredictor())["metrics"]["mean_score"]}
        for mode, predictor in predictors.items():
            row[mode] = evaluate(records, predictor, data_root=data, progress=True)["metrics"]["mean_score"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"seed": seed, "episodes": episodes, "preset": preset, "checkpoint_dir": checkpoint_dir,
              "memory_modes": memory_modes, "rows": rows}
    write_json_atomic(out / "length.json", result)
    with atomic_file(out / "length.md") as tmp:
        tmp.write_text(markdown_table(rows, memory_modes))
    plot_length(rows, memory_modes, out / "length.png")
    return result


def markdown_table(rows: list[dict], memory_modes: list[str]) -> str:
    columns = list(memory_modes) + ["frequency"]
    lines = ["| frames | questions | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for r in rows:
        lines.append(f"| {r['frames']} | {r['questions']} | " + " | ".join(f"{100 * r[c]:.1f}" for c in columns) + " |")
    return "Mean VSI-style score (%) of long-horizon episodes by length and memory mode.\n\n" + "\n".join(lines) + "\n"


def plot_length(rows: list[dict], memory_modes: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    frames = [r["frames"] for r in rows]
    for column in list(memory_modes) + ["frequency"]:
        ax.plot(frames, [100 * r[column] for r in rows], marker="o",
                linestyle="--" if column == "frequency" else "-", label=column)
    ax.set_xscale("log")
    ax.set(xlabel="episode length (frames)", ylabel="mean score (%)", ylim=(0, 100),
           title="score as the episode grows (long-horizon walks)")
    ax.legend()
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
