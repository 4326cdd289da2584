"""Top-down picture of a scene: room outline, labelled object footprints, camera path."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic_io import atomic_file
from .scene import Scene


def plot_topdown(scene: Scene, path: str | Path, poses: np.ndarray | None = None, title: str | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle, Rectangle

    r = scene.room
    fig, ax = plt.subplots(figsize=(7, 7 * min(2.0, max(0.5, r.depth / r.width))))
    ax.add_patch(Rectangle((0, 0), r.width, r.depth, fill=True, fc=np.array(r.floor_colour) / 255 * 0.5 + 0.5,
                           ec="black", lw=2))
    for o in scene.objects:
        c = np.array(o.colour) / 255
        if all(p.kind == "cylinder" for p in o.parts):
            ax.add_patch(Circle((o.center[0], o.center[1]), o.size[0] / 2, fc=c, ec="black", alpha=0.85))
        else:
            ax.add_patch(Rectangle((o.lo[0], o.lo[1]), o.size[0], o.size[1], fc=c, ec="black", alpha=0.85))
        ax.annotate(f"{o.category} #{o.id}", (o.center[0], o.center[1]), ha="center", va="center", fontsize=7,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", alpha=0.75, lw=0))
    if poses is not None and len(poses):
        xy = poses[:, :2, 3]
        ax.plot(xy[:, 0], xy[:, 1], "-", color="tab:blue", lw=1, label="camera path")
        ax.plot(*xy[0], "o", color="tab:green", label="start")
        ax.plot(*xy[-1], "s", color="tab:red", label="end")
        step = max(1, len(poses) // 25)
        f = poses[::step, :2, 2]
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-9)
        ax.quiver(xy[::step, 0], xy[::step, 1], f[:, 0], f[:, 1], color="tab:blue", scale=25, width=0.003)
        ax.legend(loc="upper right", fontsize=7)
    ax.set_xlim(-0.3, r.width + 0.3)
    ax.set_ylim(-0.3, r.depth + 0.3)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_title(title or f"{scene.name}: {r.width:.1f} x {r.depth:.1f} x {r.height:.1f} m, "
                          f"{len(scene.objects)} objects")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
