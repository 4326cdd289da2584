"""Small entry points other parts of the project use (benchmarks, demos, tests)."""
from __future__ import annotations

import numpy as np

from .episode import Episode


def sample_frames(count: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """`count` uint8 RGB frames [height, width, 3] of a rendered room walk (deterministic in seed)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    ep = Episode.generate(seed, count, width=width, height=height)
    return [ep.frame(i) for i in range(count)]


def sample_episode(seed: int = 0, num_frames: int = 50, width: int = 128, height: int = 96, **kw) -> Episode:
    """A small deterministic episode (for demos and tests; nothing shipped, generated on the fly)."""
    return Episode.generate(seed, num_frames, width=width, height=height, **kw)
