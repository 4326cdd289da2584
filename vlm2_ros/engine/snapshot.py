"""Memory snapshots: safetensors for tensors + JSON for metadata, written atomically.

Layout of a snapshot directory:
    snapshot.json               format, version, metadata, name and sha256 of the tensor file
    memory-<id>.safetensors     the tensors
The JSON is replaced atomically *after* its tensor file is complete, and old tensor files are
removed only after that, so at every instant snapshot.json names a complete, checksummed file:
a crash mid-write leaves the previous snapshot valid (and its temporary files, which the next
write removes). Reads are confined to the directory: the index may only name a file directly in
it, and a symbolic link leading elsewhere is refused. Never pickle.
"""
from __future__ import annotations

import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..atomic_io import atomic_file, read_versioned_json, sha256_file, write_json_atomic

SNAPSHOT_FORMAT = "vlm2-memory-snapshot"
SNAPSHOT_VERSION = 1
INDEX_NAME = "snapshot.json"


class SnapshotError(RuntimeError):
    """A snapshot is missing, incomplete, tampered with, or from an incompatible version."""


def write_snapshot(directory: str | Path, tensors: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Write tensors + metadata as the directory's current snapshot; returns the index path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensor_name = f"memory-{uuid.uuid4().hex[:12]}.safetensors"
    with atomic_file(directory / tensor_name) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    index = {"format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION, "tensor_file": tensor_name,
             "sha256": sha256_file(directory / tensor_name), "metadata": metadata}
    write_json_atomic(directory / INDEX_NAME, index)
    # Tensor files of earlier snapshots, and temporary files of writes a crash cut short.
    stale = [*directory.glob("memory-*.safetensors"), *directory.glob(".memory-*.tmp"),
             *directory.glob(f".{INDEX_NAME}.*.tmp")]
    for path in stale:
        if path.name != tensor_name:
            path.unlink(missing_ok=True)
    return directory / INDEX_NAME


def read_snapshot(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Return (tensors, metadata) of a complete, untampered snapshot, or raise SnapshotError."""
    index_path = Path(directory) / INDEX_NAME
    try:
        index = read_versioned_json(index_path, SNAPSHOT_FORMAT, SNAPSHOT_VERSION, SnapshotError,
                                    missing_hint=": no snapshot there")
        name = index.get("tensor_file")
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
            raise SnapshotError(f"{index_path}: invalid tensor_file entry {name!r}")
        tensor_path = index_path.parent / name
        if not tensor_path.is_file():
            raise SnapshotError(f"{index_path} names {tensor_path}, which does not exist")
        if tensor_path.resolve().parent != index_path.parent.resolve():
            raise SnapshotError(f"{tensor_path} leads outside the snapshot directory "
                                f"(to {tensor_path.resolve()}): refused")
        metadata = index.get("metadata", {})
        if not isinstance(metadata, dict):
            raise SnapshotError(f"{index_path}: 'metadata' is not an object")
        if sha256_file(tensor_path) != index.get("sha256"):
            raise SnapshotError(f"{tensor_path}: checksum mismatch (truncated or modified)")
        tensors = load_file(str(tensor_path))
    except OSError as e:  # unreadable (permissions, I/O error): refused like a damaged one
        raise SnapshotError(f"{index_path.parent}: cannot read the snapshot ({e})") from e
    except (SafetensorError, ValueError) as e:
        raise SnapshotError(f"{tensor_path}: unreadable safetensors file ({e})") from e
    return tensors, metadata
