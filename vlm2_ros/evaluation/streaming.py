"""Streaming a rendered episode into an engine, what the resulting memory depends on, and a disk
cache of such memories, so that a model whose memory writers are unchanged (a new language
bridge, another object readout) is scored without streaming every episode again."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..atomic_io import atomic_file

INGEST_CHUNK = 32      # frames per ingest_batch (the same memory as one by one; encoders batched)
# How an episode is streamed into a memory, beyond the model's config and weights; bumped when that
# changes (2: pixels placed on the camera's rays; 3: first sightings handed on between entries), so a
# cache from older code is not reused.
STREAMING_VERSION = 3
MEMORY_READERS = ("bridge", "object_readout")   # the model's parts that read the memory and write none of it


def stream_episode(engine, episode, last_frame: int, first_frame: int = 0) -> None:
    """Ingest `episode`'s frames first_frame..last_frame with their poses and intrinsics, as a
    robot's stream would arrive (training's "stream" stages build their memories this way): from
    a reset engine when first_frame is 0, else onto the memory of frames 0..first_frame-1."""
    if first_frame == 0:
        engine.reset()
    for start in range(first_frame, last_frame + 1, INGEST_CHUNK):
        idx = range(start, min(last_frame + 1, start + INGEST_CHUNK))
        engine.ingest_batch([episode.frame(i) for i in idx], [int(episode.stamps_ns[i]) for i in idx],
                            [episode.intrinsics] * len(idx), [episode.poses[i] for i in idx])


def memory_digest(model) -> str:
    """What a streamed memory depends on: sha256 over the streaming version, the model's config and
    its parameters and buffers, all but those of the parts that read it (MEMORY_READERS; the memory
    sizes and readout grid are config, not weights)."""
    digest = hashlib.sha256(f"streaming {STREAMING_VERSION}".encode())
    config = {k: v for k, v in model.config.to_dict().items() if k not in MEMORY_READERS}
    digest.update(json.dumps(config, sort_keys=True).encode())
    hash_tensors(digest, {name: t for name, t in model.state_dict().items()
                          if name.split(".")[0] not in MEMORY_READERS})
    return digest.hexdigest()


def hash_tensors(digest, tensors: dict[str, torch.Tensor]) -> None:
    """Feed each tensor's name and bytes, in name order, into a hashlib digest."""
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())


class StreamCache:
    """Memories an engine streamed, one safetensors file per (episode content, asking frame), under
    a folder named by the engine model's memory_digest: any model with the same memory writers and
    config reads them, any other writes its own. A file that does not read back is streamed again."""

    def __init__(self, directory: str | Path, engine):
        self.engine = engine
        self.directory = Path(directory) / memory_digest(engine.model)[:16]
        self.hits = self.misses = 0

    def path(self, episode, last_frame: int) -> Path:
        return self.directory / f"{episode.content_digest()}-{last_frame}.safetensors"

    def load(self, episode, last_frame: int) -> bool:
        """Put the memory of `episode`'s frames 0..last_frame into the engine, if the cache has it
        (a cut-short or foreign file counts as missing, and the next save replaces it)."""
        path = self.path(episode, last_frame)
        if path.is_file():
            try:
                with safe_open(str(path), framework="pt") as f:     # one read: metadata and tensors
                    meta = json.loads((f.metadata() or {})["engine_memory"])
                    tensors = {key: f.get_tensor(key) for key in f.keys()}
                self.engine.restore_memory(tensors, meta, str(path))
                self.hits += 1
                return True
            except (SafetensorError, OSError, KeyError, ValueError, RuntimeError):
                pass
        self.misses += 1
        return False

    def save(self, episode, last_frame: int) -> None:
        """Keep the engine's memory as that of `episode`'s frames 0..last_frame."""
        tensors, meta = self.engine.memory_tensors()
        self.directory.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.path(episode, last_frame)) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                      metadata={"engine_memory": json.dumps(meta)})
