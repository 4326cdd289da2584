"""VLM² checkpoint directories and model loading.

A checkpoint directory:
    vlm2_config.json            format, version, the VLM2Config, provenance of the training run
    vlm2_weights.safetensors    every parameter not owned by an external backbone directory
Backbone directories (a LLaVA-Video / Qwen2.5-VL VLM, pi3 / VGGT weights) are referenced by path
in the config (relative paths are resolved against the checkpoint directory) and loaded with
their own loaders; the embedded `tiny` model has no external backbone, so all of it is in the
weights file. Errors name the file and the key. No pickle, no remote code.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..atomic_io import atomic_directory, read_versioned_json, sha256_file
from .geometry_encoder import GeometryEncoder
from .hf_backbone import BackboneLoader
from .language_bridge import LanguageBridge
from .number_pointers import BoxLayout
from .object_memory import READOUT_SETTINGS, weighted_readout_fields
from .presets import PRESETS, preset_config
from .semantic_encoder import SemanticEncoder
from .vlm2 import VLM2Config, VLM2Model

CHECKPOINT_FORMAT = "vlm2-checkpoint"
CHECKPOINT_VERSION = 1
CONFIG_NAME = "vlm2_config.json"
WEIGHTS_NAME = "vlm2_weights.safetensors"
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "weights"


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, incomplete, incompatible or corrupt."""


def shipped_checkpoint(preset: str) -> Path | None:
    """The checkpoint shipped inside the package for a preset, if there is one."""
    directory = SHIPPED_DIR / preset
    return directory if (directory / CONFIG_NAME).is_file() else None


def external_prefixes(config: VLM2Config) -> tuple[str, ...]:
    """Parameter-name prefixes whose weights come from backbone directories, not our file."""
    prefixes = []
    if config.geometry_checkpoint:
        prefixes.append("geometry.")
    if config.semantic.checkpoint_dir:
        prefixes.append("semantic.")
    if config.bridge.checkpoint_dir:
        prefixes += ["bridge.decoder.", "bridge.lm_head."]
    return tuple(prefixes)


def own_state(model: VLM2Model) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint stores: parameters and buffers outside external backbones, with
    tied tensors (e.g. the LM's embeddings and head) stored once under their first name."""
    skip = external_prefixes(model.config)
    state, seen = {}, set()
    for name, tensor in model.state_dict(keep_vars=False).items():
        if name.startswith(skip):
            continue
        key = (tensor.data_ptr(), tensor.shape, tensor.dtype)
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        state[name] = tensor.detach().cpu().contiguous()
    return state


def build_model(config: VLM2Config, base_dir: Path | None = None) -> VLM2Model:
    """Construct the model; backbones with a directory load from it, the rest start random."""
    def resolve(path: str | None) -> str | None:
        if path is None or base_dir is None or Path(path).is_absolute():
            return path
        return str((base_dir / path).resolve())

    config.geometry_checkpoint = resolve(config.geometry_checkpoint)
    config.semantic.checkpoint_dir = resolve(config.semantic.checkpoint_dir)
    config.bridge.checkpoint_dir = resolve(config.bridge.checkpoint_dir)
    loader = BackboneLoader()  # one read of a VLM directory shared by vision tower and LM
    geometry = (GeometryEncoder.from_pretrained(config.geometry_checkpoint) if config.geometry_checkpoint
                else GeometryEncoder(config.geometry))
    semantic = SemanticEncoder(config.semantic, loader=loader)
    layout = None
    if config.bridge.number_pointers:
        if not config.object_readout.enabled:
            raise ValueError("bridge.number_pointers reads boxes: enable object_readout")
        layout = BoxLayout(len(config.object_readout.classes), config.fusion.position_scale_m)
    bridge = LanguageBridge(config.bridge, loader=loader, box_layout=layout)
    return VLM2Model(config, geometry, semantic, bridge)


def save_checkpoint(model: VLM2Model, directory: str | Path, trained_with: dict | None = None) -> Path:
    """Write `model` as a checkpoint directory, atomically (a crash leaves the old one intact)."""
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        save_file(own_state(model), str(tmp / WEIGHTS_NAME))
        (tmp / CONFIG_NAME).write_text(json.dumps({
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "config": model.config.to_dict(), "weights_sha256": sha256_file(tmp / WEIGHTS_NAME),
            "trained_with": trained_with or {}}, indent=2, sort_keys=True) + "\n")
    return directory


def read_checkpoint_config(directory: str | Path) -> tuple[VLM2Config, dict]:
    config_path = Path(directory) / CONFIG_NAME
    meta = read_versioned_json(config_path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CheckpointError,
                               missing_hint=" (not a VLM2 checkpoint directory)")
    try:
        config = VLM2Config(**meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{config_path}: invalid 'config' ({e})") from e
    return config, meta


@dataclasses.dataclass(frozen=True)
class MemoryOverrides:
    """Run-time choices that no weight depends on: the memory ablation, the window and memory
    sizes (L_g, L_w, L_e), the episodic replacement rule and how the object readout makes boxes
    of its category head's shares (READOUT_SETTINGS). None keeps the checkpoint's (or preset's)
    value."""
    mode: str | None = None
    working_size: int | None = None
    episodic_size: int | None = None
    geometry_window: int | None = None
    episodic_replacement: str | None = None
    readout: dict | None = None             # {ObjectReadoutConfig field in READOUT_SETTINGS: value}

    def apply(self, config: VLM2Config) -> VLM2Config:
        if self.readout:
            weighted = weighted_readout_fields(self.readout)
            if weighted:
                raise ValueError(f"object_readout fields {weighted} are not run-time choices; those are "
                                 f"{READOUT_SETTINGS}")
            config = config.with_changes({"object_readout": self.readout})
        memory = config.memory
        if self.working_size is not None:
            memory = dataclasses.replace(memory, working=dataclasses.replace(memory.working, capacity=self.working_size))
        episodic = {name: value for name, value in (("capacity", self.episodic_size),
                                                    ("replacement", self.episodic_replacement)) if value is not None}
        memory = dataclasses.replace(memory, episodic=dataclasses.replace(memory.episodic, **episodic))
        if self.mode is not None:
            memory = dataclasses.replace(memory, mode=self.mode)
        window = config.geometry_window if self.geometry_window is None else self.geometry_window
        return dataclasses.replace(config, memory=memory, geometry_window=window)  # re-validates


def load_checkpoint(directory: str | Path, overrides: MemoryOverrides | None = None) -> tuple[VLM2Model, str]:
    """Load a checkpoint directory; returns (model, weights id) or raises CheckpointError."""
    directory = Path(directory)
    config, meta = read_checkpoint_config(directory)
    if overrides is not None:
        try:
            config = overrides.apply(config)
        except ValueError as e:
            raise CheckpointError(f"{directory}: {e}") from e
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path} does not exist")
    digest = sha256_file(weights_path)
    if meta.get("weights_sha256") not in (None, digest):
        raise CheckpointError(f"{weights_path}: checksum mismatch (truncated or modified)")
    model = build_model(config, base_dir=directory)
    expected = own_state(model)
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            stored = set(f.keys())
            missing = sorted(set(expected) - stored)
            unexpected = sorted(stored - set(expected))
            if missing or unexpected:
                raise CheckpointError(f"{weights_path}: missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                                      f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
            loaded = {}
            for key in sorted(stored):
                tensor = f.get_tensor(key)
                if tensor.shape != expected[key].shape:
                    raise CheckpointError(f"{weights_path}: key {key!r} has shape {tuple(tensor.shape)}, "
                                          f"the model expects {tuple(expected[key].shape)}")
                loaded[key] = tensor
    except SafetensorError as e:
        raise CheckpointError(f"{weights_path}: unreadable safetensors file ({e})") from e
    model.load_state_dict(loaded, strict=False)
    return model, f"{directory.name}@sha256:{digest[:16]}"


def load_model(preset: str = "tiny", *, checkpoint_dir: str | Path | None = None,
               overrides: MemoryOverrides | None = None, backbone_dir: str | None = None,
               geometry_dir: str | None = None, seed: int = 0, use_shipped: bool = True,
               config_changes: dict | None = None) -> tuple[VLM2Model, str]:
    """The model for a preset: the given checkpoint, else the one shipped with the package (unless
    use_shipped is False: training from scratch), else (backbones from their directories and)
    freshly initialised VLM² weights (an EfficientNet semantic encoder from its packaged ImageNet
    weights), reported as such. config_changes (VLM2Config fields) apply
    to a fresh model only: stored weights were trained with their own config."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    directory = checkpoint_dir or (shipped_checkpoint(preset) if use_shipped else None)
    if directory is not None:
        if config_changes:
            raise ValueError(f"config changes {sorted(config_changes)} apply to a fresh model, not to {directory}")
        model, weights = load_checkpoint(directory, overrides)
        if model.config.preset != preset:
            raise CheckpointError(f"{directory} holds preset {model.config.preset!r}, not {preset!r}")
        return model, weights
    torch.manual_seed(seed)
    config = preset_config(preset, **({"backbone_dir": backbone_dir, "geometry_dir": geometry_dir}
                                      if PRESETS[preset].needs_backbones else {}))
    if config_changes:
        config = config.with_changes(config_changes)
    if overrides is not None:
        config = overrides.apply(config)
    model = build_model(config)
    model.semantic.load_pretrained_weights()
    return model, f"untrained(seed={seed})"
