"""Random Qwen2.5-VL and LLaVA-OneVision (LLaVA-Video's class) checkpoint directories: tiny ones,
and Qwen2.5-VL at its real sizes for timing (bench/real_size.py).

Same files and layout as the real checkpoints (config.json, model.safetensors, tokenizer files,
preprocessor_config.json), a few hundred thousand parameters, written in well under a second: for
tests and smoke runs of the `qwen2.5-vl-*` / `llava-video-7b-pi3` code paths on CPU. The
tokenizer is the embedded word-level one plus the checkpoints' special tokens.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .tiny_language_model import build_word_tokenizer, default_vocabulary

QWEN_SPECIALS = ("<|video_pad|>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>")
LLAVA_SPECIALS = ("<image>", "<video>")
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _text_config(tokenizer, hidden_size: int, layers: int) -> dict:
    return dict(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def _save(model, tokenizer, directory: Path, preprocessor: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    return directory


# Real Qwen2.5-VL sizes (the public config.json files), for timing with random weights.
QWEN2_5_VL_SIZES = {
    "3b": {"text": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                        num_key_value_heads=2, vocab_size=151936),
           "vision": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                          fullatt_block_indexes=[7, 15, 23, 31])},
    "7b": {"text": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                        num_key_value_heads=4, vocab_size=152064),
           "vision": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                          fullatt_block_indexes=[7, 15, 23, 31])},
}


def save_tiny_qwen2_5_vl(directory: str | Path, seed: int = 0, hidden_size: int = 64, layers: int = 2) -> Path:
    """Qwen2_5_VLForConditionalGeneration: text hidden 64 (head_dim 16, mrope_section 2+3+3 = 8),
    a 2-block vision tower (one windowed, one full attention) with the 2x2 merger to 64."""
    tokenizer = build_word_tokenizer(default_vocabulary(), QWEN_SPECIALS)
    text = _text_config(tokenizer, hidden_size, layers)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, fullatt_block_indexes=[1])
    return _save_qwen2_5_vl(directory, tokenizer, text, vision, seed)


def save_random_qwen2_5_vl(directory: str | Path, size: str, seed: int = 0, device: str = "cpu",
                           dtype: torch.dtype = torch.bfloat16) -> Path:
    """A Qwen2.5-VL directory of real size ("3b" or "7b") with random weights, built directly on
    `device` in `dtype` (7B: ~15 GB of safetensors). The tokenizer is the embedded word-level one
    with Qwen's special tokens; the vocabulary size (embedding and output head) is the real one."""
    tokenizer = build_word_tokenizer(default_vocabulary(), QWEN_SPECIALS)
    sizes = QWEN2_5_VL_SIZES[size]
    text = {**_text_config(tokenizer, sizes["text"]["hidden_size"], sizes["text"]["num_hidden_layers"]),
            **sizes["text"], "max_position_embeddings": 32768}
    return _save_qwen2_5_vl(directory, tokenizer, text, dict(sizes["vision"]), seed, device, dtype,
                            rope_theta=1000000.0)


def _save_qwen2_5_vl(directory, tokenizer, text: dict, vision: dict, seed: int, device: str = "cpu",
                     dtype: torch.dtype = torch.float32, rope_theta: float = 10000.0) -> Path:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    video, image, start, end = tokenizer.convert_tokens_to_ids(list(QWEN_SPECIALS))
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    third = head_dim // 2 // 3    # mrope_section sums to head_dim / 2 (Qwen2.5-VL uses 16+24+24 of 64)
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": rope_theta,
                               "mrope_section": [head_dim // 2 - 2 * third, third, third]}
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(vision, out_hidden_size=text["hidden_size"], window_size=112, tokens_per_second=2),
        video_token_id=video, image_token_id=image, vision_start_token_id=start, vision_end_token_id=end)
    default_dtype = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            model = Qwen2_5_VLForConditionalGeneration(config).eval()
        finally:
            torch.set_default_dtype(default_dtype)
    preprocessor = {"image_processor_type": "Qwen2VLImageProcessor", "min_pixels": 56 * 56,
                    "max_pixels": 28 * 28 * 1280, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
                    "image_mean": OPENAI_CLIP_MEAN, "image_std": OPENAI_CLIP_STD}
    return _save(model, tokenizer, Path(directory), preprocessor)


def save_tiny_llava_onevision(directory: str | Path, seed: int = 0, hidden_size: int = 64, layers: int = 2,
                              image_size: int = 70) -> Path:
    """LlavaOnevisionForConditionalGeneration as llava-hf converts LLaVA-Video-7B-Qwen2: SigLIP
    vision model without head, feature layer -1, "full" selection, Qwen2 text model. A 70 px
    tower input gives a 5x5 patch grid, pooled to 3x3 (the real 384 px: 27x27 -> 14x14)."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
    tokenizer = build_word_tokenizer(default_vocabulary(), LLAVA_SPECIALS)
    image, video = tokenizer.convert_tokens_to_ids(list(LLAVA_SPECIALS))
    config = LlavaOnevisionConfig(
        text_config={"model_type": "qwen2", **_text_config(tokenizer, hidden_size, layers)},
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=image_size, patch_size=14,
                           vision_use_head=False),
        image_token_index=image, video_token_index=video, vision_feature_select_strategy="full",
        vision_feature_layer=-1, use_image_newline_parameter=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaOnevisionForConditionalGeneration(config).eval()
    preprocessor = {"image_processor_type": "LlavaOnevisionImageProcessor", "image_mean": [0.5, 0.5, 0.5],
                    "image_std": [0.5, 0.5, 0.5], "size": {"height": image_size, "width": image_size}}
    return _save(model, tokenizer, Path(directory), preprocessor)
