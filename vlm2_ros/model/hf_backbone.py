"""Local Hugging Face checkpoints shared by the semantic encoder and the language bridge.

One function, `load_backbone(directory, parts)`, reads a checkpoint directory (never the hub:
`local_files_only`, never `trust_remote_code`, safetensors only, so no pickle) and returns the
pieces each consumer needs:

    vision   the VLM's own vision tower + projector / patch merger (tokens in the LM's space)
    language the LM trunk (returns final-norm hidden states), its output head and tokenizer

Families, chosen from config.json's model_type:
    llava_onevision  LlavaOnevisionForConditionalGeneration: llava-hf's LLaVA-OneVision and the
                     converted LLaVA-Video-7B-Qwen2 (SigLIP-so400m + 2-layer MLP projector + Qwen2).
    qwen2_5_vl       Qwen2_5_VLForConditionalGeneration (Qwen2.5-VL-3B / -7B).
    causal_lm        anything AutoModelForCausalLM loads (Qwen2, Llama, the embedded tiny LM);
                     language only.

Reading a directory once when both consumers use it: the caller makes one `BackboneLoader` and
hands it to both (`SemanticEncoder(cfg, loader=...)`, `LanguageBridge(cfg, loader=...)`); the
loader caches by (directory, dtype) and loads every part the family has. Without a loader each
consumer loads only its own part: the vision part alone is read tensor by tensor from the
safetensors files (the language model is never materialised); the language part alone is a full
`from_pretrained` with the vision tower dropped afterwards.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

FAMILIES = ("llava_onevision", "qwen2_5_vl", "causal_lm")
VISION_FAMILIES = ("llava_onevision", "qwen2_5_vl")
PARTS = ("vision", "language")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def checkpoint_directory(directory: str | Path) -> Path:
    path = Path(directory).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint directory (no config.json)")
    return path.resolve()


def read_config(directory: str | Path):
    from transformers import AutoConfig
    return AutoConfig.from_pretrained(checkpoint_directory(directory), local_files_only=True,
                                      trust_remote_code=False)


def family_of(config) -> str:
    model_type = getattr(config, "model_type", "")
    if model_type in VISION_FAMILIES:
        return model_type
    return "causal_lm"


def read_preprocessor(directory: str | Path) -> dict:
    """preprocessor_config.json overlaid with video_preprocessor_config.json (frames are video)."""
    merged: dict = {}
    for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
        path = Path(directory) / name
        if path.is_file():
            merged.update(json.loads(path.read_text()))
    return merged


@dataclass
class VisionParts:
    family: str
    config: Any                     # the top-level HF config
    modules: dict[str, nn.Module]   # llava: tower + projector; qwen2_5_vl: tower (visual, with merger)
    preprocessor: dict


@dataclass
class LanguageParts:
    family: str
    config: Any                     # the language model's (text) config
    decoder: nn.Module              # inputs_embeds -> last_hidden_state (final norm applied)
    lm_head: nn.Module
    tokenizer: Any
    eos_token_ids: tuple[int, ...]
    # Qwen2.5-VL only: model.model.get_rope_index and the video placeholder id
    rope_index: Callable | None = None
    video_token_id: int | None = None

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)


@dataclass
class Backbone:
    directory: Path | None
    family: str
    vision: VisionParts | None = None
    language: LanguageParts | None = None
    model: nn.Module | None = field(default=None, repr=False)   # the full HF model when loaded whole


def _eos_ids(tokenizer, model) -> tuple[int, ...]:
    ids: list[int] = []
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    generation = getattr(model, "generation_config", None)
    extra = getattr(generation, "eos_token_id", None)
    for i in ([extra] if isinstance(extra, int) else list(extra or [])):
        if int(i) not in ids:
            ids.append(int(i))
    if not ids:
        raise ValueError("the checkpoint defines no end-of-sequence token")
    return tuple(ids)


def language_parts_from_model(model: nn.Module, tokenizer, family: str) -> LanguageParts:
    """The language pieces of an already-built HF model (whole checkpoint or plain causal LM)."""
    if family == "qwen2_5_vl":
        inner = model.model
        return LanguageParts(family, model.config.text_config, inner.language_model, model.lm_head, tokenizer,
                             _eos_ids(tokenizer, model), rope_index=inner.get_rope_index,
                             video_token_id=int(model.config.video_token_id))
    if family == "llava_onevision":
        return LanguageParts(family, model.config.text_config, model.model.language_model, model.lm_head,
                             tokenizer, _eos_ids(tokenizer, model))
    return LanguageParts(family, model.config, model.get_decoder(), model.get_output_embeddings(), tokenizer,
                         _eos_ids(tokenizer, model))


def vision_parts_from_model(model: nn.Module, family: str, preprocessor: dict) -> VisionParts:
    if family == "qwen2_5_vl":
        modules = {"tower": model.model.visual}
    elif family == "llava_onevision":
        modules = {"tower": model.model.vision_tower, "projector": model.model.multi_modal_projector}
    else:
        raise ValueError(f"a {family} checkpoint has no vision tower")
    return VisionParts(family, model.config, modules, preprocessor)


# ----------------------------------------------------------------------------- vision-only read
# Checkpoint key prefixes, newest transformers layout first, then the layout on the hub.
_VISION_PREFIXES = {
    "qwen2_5_vl": {"tower": ("model.visual.", "visual.")},
    "llava_onevision": {"tower": ("model.vision_tower.", "vision_tower."),
                        "projector": ("model.multi_modal_projector.", "multi_modal_projector.")},
}


def _safetensors_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / n for n in names]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {directory} (pickled weights are not loaded)")
    return files


def _build_vision_modules(config, family: str) -> dict[str, nn.Module]:
    if family == "qwen2_5_vl":
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
        return {"tower": Qwen2_5_VisionTransformerPretrainedModel._from_config(config.vision_config)}
    from transformers import AutoModel
    from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionMultiModalProjector
    return {"tower": AutoModel.from_config(config.vision_config),
            "projector": LlavaOnevisionMultiModalProjector(config)}


def _load_vision_only(directory: Path, config, family: str, dtype: torch.dtype) -> dict[str, nn.Module]:
    """Build the vision modules and read only their tensors; strict, so any layout we do not know
    is an error rather than silently random weights."""
    from safetensors import safe_open
    modules = _build_vision_modules(config, family)
    expected = {name: set(m.state_dict()) for name, m in modules.items()}
    states: dict[str, dict[str, torch.Tensor]] = {name: {} for name in modules}
    for path in _safetensors_files(directory):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in f.keys():
                for name, prefixes in _VISION_PREFIXES[family].items():
                    prefix = next((p for p in prefixes if key.startswith(p)), None)
                    if prefix is None:
                        continue
                    local = key[len(prefix):]
                    if local not in expected[name]:
                        local = re.sub(r"^vision_model\.", "", local)   # SiglipVisionModel's old wrapper
                    if local in expected[name]:
                        states[name][local] = f.get_tensor(key)
                    break
    for name, module in modules.items():
        module.load_state_dict(states[name], strict=True)
        module.to(dtype).eval()
    return modules


# ----------------------------------------------------------------------------- loading
def load_backbone(directory: str | Path, parts: tuple[str, ...] = PARTS, dtype: str = "float32") -> Backbone:
    """Read a local checkpoint directory; `parts` picks what to keep ("vision", "language")."""
    path = checkpoint_directory(directory)
    parts = tuple(parts)
    if not parts or any(p not in PARTS for p in parts):
        raise ValueError(f"parts must be a non-empty subset of {PARTS}, got {parts}")
    config = read_config(path)
    family = family_of(config)
    if "vision" in parts and family not in VISION_FAMILIES:
        raise ValueError(f"{path}: model_type {config.model_type!r} has no vision tower this project can use "
                         f"(supported: {VISION_FAMILIES})")
    torch_type = torch_dtype(dtype)
    preprocessor = read_preprocessor(path)

    if "language" not in parts:
        modules = _load_vision_only(path, config, family, torch_type)
        return Backbone(path, family, vision=VisionParts(family, config, modules, preprocessor))

    from transformers import AutoModelForCausalLM, AutoTokenizer
    common = dict(dtype=torch_type, local_files_only=True, trust_remote_code=False, use_safetensors=True)
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLForConditionalGeneration as ModelClass
    elif family == "llava_onevision":
        from transformers import LlavaOnevisionForConditionalGeneration as ModelClass
    else:
        ModelClass = AutoModelForCausalLM
    model = ModelClass.from_pretrained(path, **common).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    vision = vision_parts_from_model(model, family, preprocessor) if "vision" in parts else None
    if vision is None and family == "qwen2_5_vl":
        model.model.visual = None            # not needed for the language model; get_rope_index is config-only
    elif vision is None and family == "llava_onevision":
        model.model.vision_tower = None
        model.model.multi_modal_projector = None
    return Backbone(path, family, vision=vision, language=language_parts_from_model(model, tokenizer, family),
                    model=model)


class BackboneLoader:
    """Cache of whole checkpoints by (directory, dtype); give one loader to every consumer that
    reads the same directory so it is read once. Explicit object, no module-level state."""

    def __init__(self) -> None:
        self._cache: dict[tuple[Path, str], Backbone] = {}

    def get(self, directory: str | Path, dtype: str = "float32") -> Backbone:
        key = (checkpoint_directory(directory), dtype)
        if key not in self._cache:
            family = family_of(read_config(key[0]))
            parts = PARTS if family in VISION_FAMILIES else ("language",)
            self._cache[key] = load_backbone(key[0], parts, dtype)
        return self._cache[key]

    def __len__(self) -> int:
        return len(self._cache)
