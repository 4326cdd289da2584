"""The VLM2 engine as a predictor: ingest the episode's frames (with poses and intrinsics) up to
the asking frame, then answer each question with the VSI-Bench prompt. A later question of the
same episode streams on from the memory the earlier one was asked of, as a robot's would.

With readout "truth" the language bridge reads, instead of its memory, the true boxes of the
objects seen by the asking frame (training.data.model_oracle_memory: the object readout's layout):
what it scores from a perfect memory, apart from the perception's errors.

With reader "geometry" the answers come not from the language bridge but from a closed-form
solver over the same boxes (box_solver): what the boxes hold, whoever reads them. A diagnostic:
the model's answer is the bridge's."""
from __future__ import annotations

import torch

from ..engine.number_decoding import DEFAULT_NUMBER_SAMPLES
from .box_solver import BoxSolver
from .streaming import StreamCache, stream_episode

READOUTS = ("memory", "truth")    # what the language bridge reads: its memory's readout, or the true boxes
READERS = ("bridge", "geometry")  # who answers from them: the language bridge, or box_solver


class ModelPredictor:
    def __init__(self, preset: str = "tiny", memory: str | None = None, device: str = "cpu",
                 checkpoint_dir: str | None = None, dtype: str = "fp32", number_samples: int = DEFAULT_NUMBER_SAMPLES,
                 stream_cache: str | None = None, readout: str = "memory", reader: str = "bridge",
                 readout_settings: dict | None = None):
        """`stream_cache`: a directory that keeps every streamed memory (StreamCache), so that the
        next model with the same memory writers answers without streaming the episodes again.
        `readout`: READOUTS, `reader`: READERS (the module docstring). `readout_settings`: the
        object readout's run-time settings over the checkpoint's (MemoryOverrides.readout)."""
        from ..engine.engine import SpatialMemoryEngine
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        if reader not in READERS:
            raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
        self.engine = SpatialMemoryEngine.from_preset(preset, checkpoint_dir=checkpoint_dir, memory_mode=memory,
                                                      readout_settings=readout_settings, device=device, dtype=dtype,
                                                      number_samples=number_samples)
        if readout == "truth" and not self.engine.model.config.object_readout.enabled:
            raise ValueError("readout truth hands the language bridge true boxes in the object readout's layout; "
                             "this model reads its memory otherwise (object_readout disabled)")
        if reader == "geometry" and not self.engine.model.config.object_readout.enabled:
            raise ValueError("reader geometry answers from the object readout's boxes; this model reads its memory "
                             "otherwise (object_readout disabled)")
        self.readout, self.reader = readout, reader
        self.cache = StreamCache(stream_cache, self.engine) if stream_cache is not None and readout == "memory" else None
        self.name = (f"model:{preset}" + (f":{memory}" if memory else "")
                     + (":truth" if readout == "truth" else "") + (":geometry" if reader == "geometry" else ""))
        self._loaded: tuple | None = None
        self._truth = None          # [1,M,C] the true boxes at the loaded frame (readout "truth")
        self._solver = None         # BoxSolver of the loaded frame's boxes (reader "geometry")

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
        self._solver = None
        if self.readout == "truth":
            from ..training.data import model_oracle_memory, oracle_boxes
            if self.reader == "geometry":
                self._solver = BoxSolver(oracle_boxes(episode.scene, episode.visibility(), frame_index))
            else:
                self._truth = model_oracle_memory(self.engine.model, episode.scene, episode.visibility(),
                                                  frame_index).to(self.engine.device)
        elif self.cache is None or not self.cache.load(episode, frame_index):
            # Questions come in frame order: a later one of the same episode streams on from the last.
            path, loaded = self._loaded or (None, -1)
            first = loaded + 1 if path == key[0] and loaded < frame_index else 0
            stream_episode(self.engine, episode, frame_index, first)
            if self.cache is not None:
                self.cache.save(episode, frame_index)
        if self.readout == "memory" and self.reader == "geometry":
            with torch.inference_mode():
                self._solver = BoxSolver(self.engine.model.object_readout.memory_boxes(self.engine.stream.memory))
        self._loaded = key

    def answer(self, record: dict, prompt: str) -> str:
        if self._solver is not None:
            return self._solver.answer(record)
        if self.readout == "truth":
            return self.engine.answer_from_tokens(self._truth, prompt.strip())[0]
        return self.engine.query(prompt).text
