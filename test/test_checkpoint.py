"""VLM² checkpoint directories and presets over real-layout backbone checkpoints (tiny, random)."""
import dataclasses
import json

import pytest
import torch

from vlm2_ros.engine.engine import SpatialMemoryEngine
from vlm2_ros.model.checkpoint import (CONFIG_NAME, WEIGHTS_NAME, CheckpointError, MemoryOverrides, build_model,
                                       load_checkpoint, load_model, save_checkpoint)
from vlm2_ros.model.geometry_encoder import GeometryEncoder, GeometryEncoderConfig
from vlm2_ros.model.presets import PRESETS, preset_config
from vlm2_ros.model.tiny_checkpoints import save_tiny_llava_onevision, save_tiny_qwen2_5_vl

QUESTION = "How many chairs are in this room?"
SMALL_GEOMETRY = dict(encoder_dim=32, encoder_depth=1, encoder_heads=2, pos_grid=4, decoder_depth=2,
                      decoder_heads=2, num_register_tokens=2, head_dim=32, head_heads=2, camera_dim=16)


def run(model, frames=3, seed=0):
    """Stream a few frames and answer: everything a checkpoint must reproduce."""
    torch.manual_seed(seed)
    model = model.eval()
    h, w = model.config.image_size
    images = torch.rand(frames, 1, 3, h, w)
    stream = model.empty_stream(1)
    with torch.no_grad():
        for i in range(frames):
            stream, _ = model.step(stream, images[i], torch.tensor([i]), torch.tensor([i]))
        readout = model.read_memory(stream)
        generated = model.bridge.generate(readout.tokens, QUESTION, max_new_tokens=4)
    return stream, readout.tokens, generated


def assert_same(a, b):
    assert torch.equal(a[0].memory.working.tokens, b[0].memory.working.tokens)
    assert torch.equal(a[0].memory.episodic.tokens, b[0].memory.episodic.tokens)
    assert torch.equal(a[1], b[1])
    assert a[2].text == b[2].text and a[2].token_ids == b[2].token_ids


def test_tiny_checkpoint_round_trip_is_exact(tiny_model_factory, tmp_path):
    model = tiny_model_factory()
    save_checkpoint(model, tmp_path / "ckpt", trained_with={"note": "test"})
    loaded, weights = load_checkpoint(tmp_path / "ckpt")
    assert weights.startswith("ckpt@sha256:")
    assert_same(run(model), run(loaded))
    meta = json.loads((tmp_path / "ckpt" / CONFIG_NAME).read_text())
    assert meta["trained_with"] == {"note": "test"} and meta["config"]["preset"] == "tiny"


def test_memory_mode_can_be_overridden_at_load(tiny_model_factory, tmp_path):
    save_checkpoint(tiny_model_factory(), tmp_path / "ckpt")
    model, _ = load_checkpoint(tmp_path / "ckpt", MemoryOverrides(mode="working"))
    assert model.config.memory.mode == "working"
    with pytest.raises(CheckpointError, match="memory mode"):
        load_checkpoint(tmp_path / "ckpt", MemoryOverrides(mode="bogus"))


def test_memory_sizes_can_be_overridden_at_load(tiny_model_factory, tmp_path):
    save_checkpoint(tiny_model_factory(), tmp_path / "ckpt")
    model, _ = load_checkpoint(tmp_path / "ckpt", MemoryOverrides(working_size=4, episodic_size=16,
                                                                  geometry_window=2))
    assert (model.config.memory.working.capacity, model.config.memory.episodic.capacity,
            model.config.geometry_window) == (4, 16, 2)
    with pytest.raises(CheckpointError, match="capacity must be >= 1"):
        load_checkpoint(tmp_path / "ckpt", MemoryOverrides(episodic_size=0))
    model, _ = load_checkpoint(tmp_path / "ckpt", MemoryOverrides(episodic_replacement="place"))
    assert model.config.memory.episodic.replacement == "place" and model.config.memory.episodic.capacity == 32
    with pytest.raises(CheckpointError, match="replacement must be one of"):
        load_checkpoint(tmp_path / "ckpt", MemoryOverrides(episodic_replacement="newest"))


@pytest.mark.parametrize("family,writer,preset,layout", [
    ("qwen2_5_vl", save_tiny_qwen2_5_vl, "qwen2.5-vl-3b-pi3", "pi3"),
    ("qwen2_5_vl", save_tiny_qwen2_5_vl, "qwen2.5-vl-7b-vggt", "vggt"),
    ("llava_video", save_tiny_llava_onevision, "llava-video-7b-pi3", "pi3"),
])
def test_backbone_presets_load_real_layouts_and_round_trip(tmp_path, family, writer, preset, layout):
    backbone = writer(tmp_path / "vlm")
    GeometryEncoder(GeometryEncoderConfig(layout=layout, **SMALL_GEOMETRY)).save_pretrained(tmp_path / "geometry")
    config = preset_config(preset, backbone_dir=str(backbone), geometry_dir=str(tmp_path / "geometry"),
                           dtype="float32", image_size_override=(56, 84))
    torch.manual_seed(0)
    model = build_model(config)
    assert model.config.fusion.dim == model.bridge.hidden_size == 64
    save_checkpoint(model, tmp_path / "vlm2")
    # The checkpoint stores only VLM²'s own weights; the backbones stay in their directories.
    names = json.loads((tmp_path / "vlm2" / CONFIG_NAME).read_text())
    assert names["config"]["geometry_checkpoint"] == str(tmp_path / "geometry")
    from safetensors import safe_open
    with safe_open(str(tmp_path / "vlm2" / WEIGHTS_NAME), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("fusion.") for k in keys) and any(k.startswith("bridge.projector.") for k in keys)
    assert not any(k.startswith(("geometry.", "semantic.", "bridge.decoder.")) for k in keys)
    loaded, _ = load_checkpoint(tmp_path / "vlm2")
    assert_same(run(model), run(loaded))


def test_backbone_preset_needs_directories_and_the_right_family(tmp_path):
    with pytest.raises(ValueError, match="--backbone-dir"):
        preset_config("qwen2.5-vl-3b-pi3")
    llava = save_tiny_llava_onevision(tmp_path / "llava")
    with pytest.raises(ValueError, match="needs a qwen2_5_vl checkpoint"):
        preset_config("qwen2.5-vl-3b-pi3", backbone_dir=str(llava), geometry_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("gpt-5")
    assert {"tiny", "llava-video-7b-pi3", "qwen2.5-vl-3b-pi3", "qwen2.5-vl-7b-vggt"} <= set(PRESETS)


def _damaged(tmp_path, tiny_model_factory, damage):
    save_checkpoint(tiny_model_factory(), tmp_path / "ckpt")
    damage(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def _edit_config(directory, edit):
    meta = json.loads((directory / CONFIG_NAME).read_text())
    edit(meta)
    (directory / CONFIG_NAME).write_text(json.dumps(meta))


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / CONFIG_NAME).unlink(), r"vlm2_config.json does not exist"),
    (lambda d: (d / WEIGHTS_NAME).unlink(), r"vlm2_weights.safetensors does not exist"),
    (lambda d: (d / CONFIG_NAME).write_text("{"), "invalid JSON"),
    (lambda d: _edit_config(d, lambda m: m.update(version=7)), "vlm2-checkpoint version 7 is not supported"),
    (lambda d: (d / WEIGHTS_NAME).write_bytes((d / WEIGHTS_NAME).read_bytes()[:-100]), "checksum mismatch"),
    (lambda d: _edit_config(d, lambda m: m["config"]["fusion"].update(position_hidden_dim=64)),
     r"vlm2_weights.safetensors: key 'fusion.injection.phi.fc1.bias' has shape \(128,\), the model expects \(64,\)"),
])
def test_broken_checkpoints_are_refused_naming_file_and_key(tmp_path, tiny_model_factory, damage, message):
    directory = _damaged(tmp_path, tiny_model_factory, damage)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(directory)


def test_missing_key_is_named(tmp_path, tiny_model_factory):
    from safetensors.torch import load_file, save_file
    directory = _damaged(tmp_path, tiny_model_factory, lambda d: None)
    state = load_file(str(directory / WEIGHTS_NAME))
    del state["memory.gate.fc1.weight"]
    save_file(state, str(directory / WEIGHTS_NAME))
    _edit_config(directory, lambda m: m.pop("weights_sha256"))
    with pytest.raises(CheckpointError, match=r"missing keys \['memory.gate.fc1.weight'\]"):
        load_checkpoint(directory)


def test_objectness_readout_round_trips_and_config_changes_build_fresh_models_only(tmp_path):
    model, weights = load_model("tiny", seed=1, use_shipped=False, config_changes={"readout_pool": "objectness"})
    assert model.config.readout_pool == "objectness" and model.readout.objectness is not None
    save_checkpoint(model, tmp_path / "ckpt")
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config.readout_pool == "objectness"
    assert_same(run(model), run(loaded))
    with pytest.raises(ValueError, match="apply to a fresh model"):
        load_model("tiny", checkpoint_dir=tmp_path / "ckpt", config_changes={"readout_pool": "mean"})
    with pytest.raises(ValueError, match="readout_pool"):
        load_model("tiny", use_shipped=False, config_changes={"readout_pool": "max"})


def test_nested_config_changes_keep_the_rest_of_the_presets_component(tmp_path):
    preset = preset_config("tiny")
    model, _ = load_model("tiny", use_shipped=False, config_changes={
        "bridge": {"choice_answer": "option_text", "tiny_lm": {"tie_word_embeddings": False}},
        "memory": {"working": {"capacity": 3}}})
    bridge = model.config.bridge
    # only the named fields change: the tiny preset's standardised projector and sizes stay
    assert bridge.choice_answer == "option_text" and bridge.tiny_lm == {"tie_word_embeddings": False}
    assert bridge.standardize_memory
    assert bridge == dataclasses.replace(preset.bridge, choice_answer=bridge.choice_answer, tiny_lm=bridge.tiny_lm)
    assert model.config.memory.working.capacity == 3
    assert model.config.memory.episodic == preset.memory.episodic
    # an untied head is its own tensor, stored and loaded as such
    assert model.bridge.lm_head.weight.data_ptr() != model.bridge.decoder.embed_tokens.weight.data_ptr()
    save_checkpoint(model, tmp_path / "ckpt")
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert torch.equal(loaded.bridge.lm_head.weight, model.bridge.lm_head.weight)
    assert not torch.equal(loaded.bridge.lm_head.weight, loaded.bridge.decoder.embed_tokens.weight)
    with pytest.raises(ValueError, match=r"unknown model config fields \['bridge.choice'\]"):
        load_model("tiny", use_shipped=False, config_changes={"bridge": {"choice": "option_text"}})
    with pytest.raises(ValueError, match="unknown tiny LM settings"):
        load_model("tiny", use_shipped=False, config_changes={"bridge": {"tiny_lm": {"tied": False}}})


def test_load_model_without_checkpoint_reports_untrained_weights():
    model, weights = load_model("tiny", seed=3, use_shipped=False)
    assert weights == "untrained(seed=3)" and model.config.preset == "tiny"
    with pytest.raises(ValueError, match="unknown preset"):
        load_model("huge")


def test_engine_from_preset_with_checkpoint_dir(tmp_path, tiny_model_factory):
    save_checkpoint(tiny_model_factory(), tmp_path / "ckpt")
    engine = SpatialMemoryEngine.from_preset("tiny", checkpoint_dir=tmp_path / "ckpt")
    assert engine.status().weights.startswith("ckpt@sha256:")
    with pytest.raises(CheckpointError, match="holds preset 'tiny'"):
        SpatialMemoryEngine.from_preset("qwen2.5-vl-3b-pi3", checkpoint_dir=tmp_path / "ckpt")
