"""The VLM2 engine as a predictor: ingest the episode's frames (with poses and intrinsics) up to
the asking frame, then answer each question with the VSI-Bench prompt."""
from __future__ import annotations

from ..engine.number_decoding import DEFAULT_NUMBER_SAMPLES

INGEST_CHUNK = 32      # frames per ingest_batch (the same memory as one by one; encoders batched)


def stream_episode(engine, episode, last_frame: int) -> None:
    """Reset `engine` and ingest `episode`'s frames 0..last_frame with their poses and intrinsics,
    as a robot's stream would arrive (training's "stream" stages build their memories this way)."""
    engine.reset()
    for start in range(0, last_frame + 1, INGEST_CHUNK):
        idx = range(start, min(last_frame + 1, start + INGEST_CHUNK))
        engine.ingest_batch([episode.frame(i) for i in idx], [int(episode.stamps_ns[i]) for i in idx],
                            [episode.intrinsics] * len(idx), [episode.poses[i] for i in idx])


class ModelPredictor:
    def __init__(self, preset: str = "tiny", memory: str | None = None, device: str = "cpu",
                 checkpoint_dir: str | None = None, dtype: str = "fp32", number_samples: int = DEFAULT_NUMBER_SAMPLES):
        from ..engine.engine import SpatialMemoryEngine
        self.engine = SpatialMemoryEngine.from_preset(preset, checkpoint_dir=checkpoint_dir, memory_mode=memory,
                                                      device=device, dtype=dtype, number_samples=number_samples)
        self.name = f"model:{preset}" + (f":{memory}" if memory else "")
        self._loaded: tuple | None = None

    def fit(self, records) -> None:
        pass

    def start_episode(self, episode, frame_index: int) -> None:
        if episode is None:
            raise ValueError("the model predictor needs the episode's frames: the questions name an "
                             "episode that is not under --data (question-only files can be scored with "
                             "the chance and frequency baselines only)")
        key = (episode.episode_id, frame_index)
        if self._loaded == key:
            return
        stream_episode(self.engine, episode, frame_index)
        self._loaded = key

    def answer(self, record: dict, prompt: str) -> str:
        return self.engine.query(prompt).text
