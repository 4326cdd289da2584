"""The VLM2 engine as a predictor: ingest the episode's frames (with poses and intrinsics) up to
the asking frame, then answer each question with the VSI-Bench prompt. A later question of the
same episode streams on from the memory the earlier one was asked of, as a robot's would."""
from __future__ import annotations

from ..engine.number_decoding import DEFAULT_NUMBER_SAMPLES
from .streaming import StreamCache, stream_episode


class ModelPredictor:
    def __init__(self, preset: str = "tiny", memory: str | None = None, device: str = "cpu",
                 checkpoint_dir: str | None = None, dtype: str = "fp32", number_samples: int = DEFAULT_NUMBER_SAMPLES,
                 stream_cache: str | None = None):
        """`stream_cache`: a directory that keeps every streamed memory (StreamCache), so that the
        next model with the same memory writers answers without streaming the episodes again."""
        from ..engine.engine import SpatialMemoryEngine
        self.engine = SpatialMemoryEngine.from_preset(preset, checkpoint_dir=checkpoint_dir, memory_mode=memory,
                                                      device=device, dtype=dtype, number_samples=number_samples)
        self.cache = StreamCache(stream_cache, self.engine) if stream_cache is not None else None
        self.name = f"model:{preset}" + (f":{memory}" if memory else "")
        self._loaded: tuple | None = None

    def fit(self, records) -> None:
        pass

    def start_episode(self, episode, frame_index: int) -> None:
        if episode is None:
            raise ValueError("the model predictor needs the episode's frames: the questions name an "
                             "episode that is not under --data (question-only files can be scored with "
                             "the chance and frequency baselines only)")
        key = (episode.path.resolve(), frame_index)
        if self._loaded == key:
            return
        if self.cache is None or not self.cache.load(episode, frame_index):
            # Questions come in frame order: a later one of the same episode streams on from the last.
            path, loaded = self._loaded or (None, -1)
            first = loaded + 1 if path == key[0] and loaded < frame_index else 0
            stream_episode(self.engine, episode, frame_index, first)
            if self.cache is not None:
                self.cache.save(episode, frame_index)
        self._loaded = key

    def answer(self, record: dict, prompt: str) -> str:
        return self.engine.query(prompt).text
