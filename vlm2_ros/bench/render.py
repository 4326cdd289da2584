"""Rendering speed of the synthetic world: frames per second of the numpy ray caster per resolution."""
from __future__ import annotations

import time

from ..sim.episode import Episode

DEFAULT_RESOLUTIONS = ((64, 48), (128, 96), (320, 240), (640, 480))


def run_render_benchmark(frames: int = 300, resolutions=DEFAULT_RESOLUTIONS, seed: int = 0,
                         progress: bool = True) -> dict:
    """Renders `frames` frames of one episode per resolution (RGB + depth + mask per frame) and
    returns a flat dict: `fps_<W>x<H>`, `seconds_<W>x<H>` and `episode_seconds_300f_128x96`
    (time for a 300-frame 128x96 episode, scaled from the measured rate when frames != 300)."""
    from tqdm import tqdm

    result: dict = {"frames": frames, "seed": seed}
    for w, h in resolutions:
        ep = Episode.generate(seed, frames, width=w, height=h)
        ep.render(0)  # builds the renderer tables; not part of the per-frame cost
        t0 = time.perf_counter()
        for i in tqdm(range(frames), desc=f"render {w}x{h}", unit="frame", disable=not progress):
            ep.render(i)
        dt = time.perf_counter() - t0
        result[f"seconds_{w}x{h}"] = round(dt, 3)
        result[f"fps_{w}x{h}"] = round(frames / dt, 2)
    if "fps_128x96" in result:
        result["episode_seconds_300f_128x96"] = round(300 / result["fps_128x96"], 2)
    return result
