"""Score a predictor on question records; report as a table and a PNG plot per task."""
from __future__ import annotations

from pathlib import Path

from .data import episode_dirs
from .metrics import aggregate, score_answer
from .predictors import as_predictor, format_prompt


def evaluate(records: list[dict], predictor, data_root: str | Path | None = None, progress: bool = False) -> dict:
    """Runs `predictor` on every record (grouped by episode and asking frame) and returns
    {"metrics": flat dict (see metrics.aggregate), "predictions": [{id, question_type, prediction, score}]}."""
    from ..sim.episode import EpisodeDir

    predictor = as_predictor(predictor)
    if hasattr(predictor, "fit"):
        predictor.fit(records)
    episodes = {}
    if data_root is not None:
        for d in episode_dirs(data_root):
            ep = EpisodeDir(d)
            episodes[ep.episode_id] = ep
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault((str(r.get("episode_id", r.get("scene_name", ""))), int(r.get("frame_index", -1))), []).append(i)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(records), desc=f"eval {getattr(predictor, 'name', '')}", unit="q")
    scores, preds = [0.0] * len(records), [None] * len(records)
    for (ep_id, frame_index), idx in sorted(groups.items()):
        ep = episodes.get(ep_id)
        if hasattr(predictor, "start_episode"):
            predictor.start_episode(ep, frame_index if frame_index >= 0 else (len(ep) - 1 if ep else -1))
        for i in idx:
            text = str(predictor.answer(records[i], format_prompt(records[i])))
            preds[i] = text
            scores[i] = score_answer(records[i], text)
            if bar:
                bar.update(1)
    if bar:
        bar.close()
    return {"metrics": aggregate(records, scores),
            "predictions": [{"id": r["id"], "question_type": r["question_type"], "prediction": p, "score": s}
                            for r, p, s in zip(records, preds, scores)]}


def score_keys(results: dict[str, dict]) -> list[str]:
    keys = sorted({k for m in results.values() for k in m if k.startswith("score_")})
    return keys + ["mean_score"]


def format_table(results: dict[str, dict]) -> str:
    """Markdown table: one row per task, one column per predictor (scores in percent)."""
    names = list(results)
    lines = ["| task | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for k in score_keys(results):
        task = k.removeprefix("score_")
        cells = [f"{100 * results[n][k]:.1f}" if k in results[n] else "-" for n in names]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_report(results: dict[str, dict], path: str | Path, title: str = "VSI-Bench-style scores") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..atomic_io import atomic_file

    keys = score_keys(results)
    names = list(results)
    x = np.arange(len(keys))
    w = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(8, 0.8 * len(keys)), 4.5))
    for j, n in enumerate(names):
        ax.bar(x + j * w - 0.4 + w / 2, [100 * results[n].get(k, 0) for k in keys], w, label=n)
    ax.set_xticks(x, [k.removeprefix("score_") for k in keys], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("score (%)  (accuracy or MRA)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
