"""Score as the episode grows: the same scenes rendered as long-horizon walks of several lengths
(the room toured in the first 20 % of the frames, then the camera lingers, so most questions are
about things seen long ago), each length scored per memory mode at the same per-frame compute.

A longer walk's tour is longer too, so it sees more of the room and its questions differ (more
objects to count, order and compare). So each length's questions are also asked right after its
tour (after_tour), on the walks whose every object was seen by then: the same questions with all
the lingering still to come, which the end-of-walk score is compared with to tell what the memory
forgets from what the longer tour asks.

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


AFTER_TOUR = "@after_tour"     # appended to the id of a question asked again right after the tour


def after_tour(data: Path, records: list[dict]) -> tuple[int, list[dict]]:
    """`records` (questions of the long-horizon walks under `data`, asked at their walk's end) asked
    again at the last frame of the walk's tour (trajectory.tour_frames), for the walks with a tour
    whose every object was first seen by that frame, so each answer is the same there. Returns
    (that frame, the copies; ids end in AFTER_TOUR); the walks of one data set share a length."""
    from ..sim.episode import EpisodeDir
    from ..sim.trajectory import tour_frames
    from .data import episode_dirs

    asked_at, copies = -1, []
    for path in episode_dirs(data):
        episode = EpisodeDir(path)
        last_tour_frame = tour_frames(len(episode), episode.meta["style"]) - 1
        if last_tour_frame < 0 or any(first > last_tour_frame for first, _, _ in episode.visibility().values()):
            continue
        asked_at = last_tour_frame
        copies += [dict(r, id=r["id"] + AFTER_TOUR, frame_index=last_tour_frame,
                        stamp_ns=int(episode.stamps_ns[last_tour_frame]))
                   for r in records if r["episode_id"] == episode.episode_id and r["frame_index"] > last_tour_frame]
    return asked_at, copies


def mean_score(records: list[dict], scores: dict[str, float]) -> float:
    """The mean VSI-style score of `records`, each scored scores[its id]."""
    from .metrics import aggregate
    return aggregate(records, [scores[r["id"]] for r in records])["mean_score"]


def run_length_sweep(out: Path, lengths: list[int], memory_modes: list[str], seed: int = 5, episodes: int = 3,
                     per_task: int = 2, preset: str = "tiny", checkpoint_dir: str | None = None,
                     stream_cache: str | None = None, readout_settings: dict | None = None) -> dict:
    """Each length's walks scored per memory mode (the module docstring); `readout_settings`: the
    object readout's run-time settings over the checkpoint's (ModelPredictor). Returns and writes
    out/length.json."""
    from .data import load_questions
    from .evaluate import evaluate
    from .model_predictor import ModelPredictor
    from .predictors import FrequencyPredictor

    rows = []
    predictors = {mode: ModelPredictor(preset, mode, checkpoint_dir=checkpoint_dir, stream_cache=stream_cache,
                                       readout_settings=readout_settings)
                  for mode in memory_modes}
    for frames in lengths:
        data = ensure_dataset(out, frames, seed, episodes, per_task)
        records = load_questions(data)
        asked_at, copies = after_tour(data, records)
        originals = {r["id"][:-len(AFTER_TOUR)] for r in copies}
        row = {"frames": frames, "questions": len(records),
               "frequency": evaluate(records, FrequencyPredictor())["metrics"]["mean_score"],
               "after_tour": {"asked_at": asked_at, "questions": len(copies)}}
        for mode, predictor in predictors.items():
            # one pass: a walk's copies come first (an earlier frame), its end streams on from them
            scores = {p["id"]: p["score"] for p in
                      evaluate(records + copies, predictor, data_root=data, progress=True)["predictions"]}
            row[mode] = mean_score(records, scores)
            if copies:
                row["after_tour"][mode] = {"after_tour": mean_score(copies, scores),
                                           "at_end": mean_score([r for r in records if r["id"] in originals], scores)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"seed": seed, "episodes": episodes, "preset": preset, "checkpoint_dir": checkpoint_dir,
              "readout_settings": readout_settings, "memory_modes": memory_modes, "rows": rows}
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
    text = "Mean VSI-style score (%) of long-horizon episodes by length and memory mode.\n\n" + "\n".join(lines) + "\n"
    toured = [r for r in rows if r["after_tour"]["questions"]]
    if toured:
        header = " | ".join(f"{m} after the tour | {m} at the end" for m in memory_modes)
        lines = [f"| frames | asked after the tour at frame | questions | {header} |",
                 "|---|---|---|" + "---|---|" * len(memory_modes)]
        for r in toured:
            tour = r["after_tour"]
            cells = " | ".join(f"{100 * tour[m]['after_tour']:.1f} | {100 * tour[m]['at_end']:.1f}"
                               for m in memory_modes)
            lines.append(f"| {r['frames']} | {tour['asked_at']} | {tour['questions']} | {cells} |")
        text += ("\nThe same questions asked right after the tour and at the end of the walk (walks whose every "
                 "object was seen in the tour): what the memory loses while the walk goes on.\n\n"
                 + "\n".join(lines) + "\n")
    return text


def plot_length(rows: list[dict], memory_modes: list[str], path: Path) -> None:
    """Left: each mode's score by length. Right, where some walks were seen whole in their tour:
    the same questions asked after the tour and at the end, per length and mode."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    toured = [r for r in rows if r["after_tour"]["questions"]]
    fig, axes = plt.subplots(1, 2 if toured else 1, figsize=(12 if toured else 6.5, 4), squeeze=False)
    ax = axes[0, 0]
    frames = [r["frames"] for r in rows]
    for column in list(memory_modes) + ["frequency"]:
        ax.plot(frames, [100 * r[column] for r in rows], marker="o",
                linestyle="--" if column == "frequency" else "-", label=column)
    ax.set_xscale("log")
    ax.set(xlabel="episode length (frames)", ylabel="mean score (%)", ylim=(0, 100),
           title="score as the episode grows (long-horizon walks)")
    ax.legend()
    if toured:
        ax = axes[0, 1]
        width = 0.8 / (2 * len(memory_modes))
        for i, mode in enumerate(memory_modes):
            for j, when in enumerate(("after_tour", "at_end")):
                offset = (2 * i + j + 0.5) * width - 0.4
                ax.bar([k + offset for k in range(len(toured))], [100 * r["after_tour"][mode][when] for r in toured],
                       width, label=f"{mode}, {when.replace('_', ' ')}", hatch="//" if when == "at_end" else None,
                       color=f"C{i}", alpha=0.6 if when == "at_end" else 1.0)
        ax.set_xticks(range(len(toured)), [f"{r['frames']} frames\n({r['after_tour']['questions']} questions, "
                                           f"tour ends at {r['after_tour']['asked_at']})" for r in toured])
        ax.set(ylabel="mean score (%)", ylim=(0, 100), title="the same questions after the tour and at the end")
        ax.legend()
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
