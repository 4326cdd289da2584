"""The object readout: off by default (no weights, the pooled readout); on, the language model reads
the room and the objects the category head finds in every token of the dual memory, the same boxes
perceive_objects makes of the head's readings, and an answer's evidence names the memory entries
its objects came from. It reads the memory and does not change it: streamed memories cached under
memory_digest stay valid."""
import dataclasses

import numpy as np
import pytest
import torch

from vlm2_ros.engine.engine import SpatialMemoryEngine
from vlm2_ros.model.checkpoint import build_model, load_checkpoint, save_checkpoint
from vlm2_ros.model.object_memory import (ROOM_CLASS, ObjectBox, ObjectReadoutConfig, best_box_per_class,
                                          named_classes, object_tokens, perceive_objects, token_readings)
from vlm2_ros.model.prompt import asks_about_categories, build_prompt
from vlm2_ros.model.presets import preset_config
from vlm2_ros.model.vlm2 import VLM2Config
from vlm2_ros.sim.questions import TEMPLATES
from vlm2_ros.sim.scene import SEMANTIC_CLASSES
from vlm2_ros.evaluation.streaming import memory_digest

READOUT = {"enabled": True, "min_share": 0.3, "merge_radius_m": 0.5}


def object_model(seed: int = 0, **readout):
    torch.manual_seed(seed)
    model = build_model(preset_config("tiny").with_changes({"object_readout": {**READOUT, **readout}})).eval()
    torch.nn.init.normal_(model.object_readout.category.weight, std=0.5)   # as if trained: confident shares
    return model


def streamed(model, frames: int = 12) -> SpatialMemoryEngine:
    engine = SpatialMemoryEngine(model, weights="test")
    rng = np.random.default_rng(0)
    h, w = model.config.image_size
    for i in range(frames):
        engine.ingest(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (i + 1) * 100_000_000)
    return engine


def test_disabled_by_default_holds_no_weights_and_reads_pooled_tokens():
    assert VLM2Config().object_readout.enabled is False
    config = preset_config("tiny").to_dict()
    del config["object_readout"]                         # a checkpoint config written before it existed
    assert VLM2Config(**config).object_readout.enabled is False
    model = build_model(preset_config("tiny")).eval()
    assert not list(model.object_readout.parameters())
    engine = streamed(model, frames=3)
    read = model.read_memory(engine.stream)
    entries = len(engine.stream.memory.episodic) + len(engine.stream.memory.working)
    assert read.tokens.shape[1] == entries * 4          # 2x2 pooled tokens an entry
    assert read.token_entry[0].tolist() == [e for e in range(entries) for _ in range(4)]
    with pytest.raises(RuntimeError, match="disabled"):
        model.object_readout(engine.stream.memory)


@pytest.mark.parametrize("change, message", [
    ({"min_share": 0.0}, "min_share"), ({"merge_radius_m": 0.0}, "merge_radius_m"),
    ({"grouping": "nearest"}, "grouping"), ({"classes": ["room"]}, "classes"),
    ({"best_box_per_named_class": "false"}, "best_box_per_named_class")])
def test_bad_settings_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        ObjectReadoutConfig(enabled=True, **change)


@pytest.mark.parametrize("order_channel", [False, True])
def test_the_language_model_reads_the_boxes_the_head_finds_in_every_token(order_channel):
    model = object_model(order_channel=order_channel)
    engine = streamed(model)
    memory = engine.stream.memory
    with torch.no_grad():
        readings = token_readings(model.object_readout.category, memory)
        read = model.read_memory(engine.stream)
    entries = len(memory.episodic) + len(memory.working)
    assert readings.shape == (entries * model.num_tokens_per_frame, len(SEMANTIC_CLASSES) + 4)
    k = len(SEMANTIC_CLASSES)
    boxes = perceive_objects(readings[:, :k], readings[:, k:k + 3], readings[:, k + 3].long(), 0.3, 0.5,
                             model.readout_tokens)
    assert len(boxes) > 2, "the test head should show some objects"
    assert boxes[0].semantic_class == ROOM_CLASS
    expected = object_tokens(boxes, k, model.readout_tokens, model.config.bridge.memory_dim,
                             model.config.fusion.position_scale_m, order_channel)
    assert read.tokens.shape == (1, model.readout_tokens, model.config.bridge.memory_dim)
    assert torch.equal(read.tokens, expected)
    assert bool(read.tokens[0, :, k + 6].any()) == order_channel     # ranks by first sighting, when asked
    # each box token comes from the entry of its most certain token (the room's too); padding from none
    per_entry = model.num_tokens_per_frame
    assert boxes[0].token == int(readings[:, ROOM_CLASS].argmax())
    assert read.token_entry[0, :len(boxes)].tolist() == [b.token // per_entry for b in boxes]
    assert (read.token_entry[0, len(boxes):] == -1).all()
    assert all(readings[box.token, box.semantic_class] >= 0.3 for box in boxes[1:])
    assert read.entry_source.shape == read.entry_slot.shape == (1, entries)


def test_objects_are_first_seen_when_their_places_were_not_when_their_entries_were():
    model = object_model()
    memory = streamed(model).stream.memory
    episodic = memory.episodic.provenance
    lowered = dataclasses.replace(episodic, first_seen=episodic.first_seen // 2)   # as if seen earlier
    memory = dataclasses.replace(memory, episodic=dataclasses.replace(memory.episodic, provenance=lowered))
    with torch.no_grad():
        readings = token_readings(model.object_readout.category, memory)
    k = len(SEMANTIC_CLASSES)
    expected = torch.cat([lowered.first_seen, memory.working.provenance.first_seen], dim=1).flatten()
    assert torch.equal(readings[:, k + 3].long(), expected)
    assert not torch.equal(expected, torch.cat([episodic.frame_index, memory.working.provenance.frame_index],
                                                dim=1).repeat_interleave(model.num_tokens_per_frame))


def test_an_answer_names_the_entries_its_objects_came_from():
    model = object_model()
    engine = streamed(model)
    read = model.read_memory(engine.stream)
    frames = {}
    for e in range(read.entry_source.shape[1]):
        part = engine.stream.memory.working if read.entry_source[0, e] == 0 else engine.stream.memory.episodic
        frames[e] = int(part.provenance.frame_index[0, read.entry_slot[0, e]])
    from_objects = {frames[int(e)] for e in read.token_entry[0] if e >= 0}
    for question in ("How many chairs are in this room?",
                     "Which is closer to the sofa, the chair or the table? A. chair B. table"):
        answer = engine.query(question)
        assert answer.text and answer.evidence
        assert {ev.frame_index for ev in answer.evidence} <= from_objects


def test_its_weights_survive_a_checkpoint_and_leave_the_memory_digest_alone(tmp_path):
    model = object_model()
    save_checkpoint(model, tmp_path / "ckpt")
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config.object_readout == model.config.object_readout
    assert torch.equal(loaded.object_readout.category.weight, model.object_readout.category.weight)
    # what the memory holds does not depend on how it is read
    plain = build_model(preset_config("tiny"))
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("object_readout.")})
    assert memory_digest(plain) == memory_digest(model)
    torch.nn.init.zeros_(model.object_readout.category.weight)
    assert memory_digest(plain) == memory_digest(model)


def test_per_class_readout_settings_fall_back_to_the_one_value_and_name_known_classes():
    config = ObjectReadoutConfig(enabled=True, min_share=0.3, merge_radius_m=2.0, class_min_share={"lamp": 0.1},
                                 class_merge_radius_m={"bed": 3.0})
    shares, radii = config.per_class("min_share"), config.per_class("merge_radius_m")
    assert shares[config.classes.index("lamp")] == 0.1 and shares[config.classes.index("bed")] == 0.3
    assert radii[config.classes.index("bed")] == 3.0 and radii[config.classes.index("lamp")] == 2.0
    with pytest.raises(ValueError, match="class_min_share"):
        ObjectReadoutConfig(enabled=True, class_min_share={"unicorn": 0.2})
    with pytest.raises(ValueError, match="merge_radius_m"):
        ObjectReadoutConfig(enabled=True, class_merge_radius_m={"bed": 0.0})


def test_a_checkpoint_runs_with_other_readout_settings_but_not_other_weights(tmp_path):
    from vlm2_ros.model.checkpoint import CheckpointError, MemoryOverrides

    save_checkpoint(object_model(), tmp_path / "ckpt")
    model, _ = load_checkpoint(tmp_path / "ckpt", MemoryOverrides(readout={"class_min_share": {"lamp": 0.1}}))
    assert model.object_readout.config.class_min_share == {"lamp": 0.1}
    assert model.config.object_readout.min_share == READOUT["min_share"]
    with pytest.raises(CheckpointError, match="not run-time choices"):
        load_checkpoint(tmp_path / "ckpt", MemoryOverrides(readout={"enabled": False}))


def test_a_question_names_classes_by_whole_words_in_any_number():
    k = SEMANTIC_CLASSES.index
    question = build_prompt("How far apart are the Trash Can and the boxes (closest points, in meters)?")
    assert named_classes(question, SEMANTIC_CLASSES) == {k("trash can"), k("box")}
    assert named_classes("Is the bedside lamp on? A. tvstand B. sofas", SEMANTIC_CLASSES) == {k("lamp"), k("sofa")}
    assert named_classes("What is the size of this room?", SEMANTIC_CLASSES) == set()     # the room is no object


@pytest.mark.parametrize("task", sorted(TEMPLATES))
def test_only_counting_and_appearance_order_ask_about_whole_categories(task):
    whole = task in ("object_counting", "obj_appearance_order")
    slots = dict(cat="chair", a="chair", b="sofa", c="lamp", d="bed", opts="sofa, lamp, bed, tv",
                 cats="chair, sofa, lamp, bed")
    for template in TEMPLATES[task]:
        assert asks_about_categories(template.format(**slots)) == whole, template


def box(name: str, support: float, first_seen: int) -> ObjectBox:
    return ObjectBox(SEMANTIC_CLASSES.index(name), (float(first_seen), 0.0, 0.5), (0.5, 0.5, 1.0), first_seen,
                     support)


def test_each_named_class_keeps_its_best_supported_box_and_the_rest_stay_in_order():
    room = ObjectBox(ROOM_CLASS, (0.0, 0.0, 1.5), (6.0, 5.0, 3.0), support=100.0)
    weak_chair, sofa, strong_chair, lamp, tied_lamp = (box("chair", 1.0, 2), box("sofa", 0.5, 3),
                                                       box("chair", 4.0, 5), box("lamp", 2.0, 6), box("lamp", 2.0, 8))
    boxes = [room, weak_chair, sofa, strong_chair, lamp, tied_lamp]
    k = SEMANTIC_CLASSES.index
    assert best_box_per_class(boxes, {k("chair"), k("lamp")}) == [room, sofa, strong_chair, lamp]
    assert best_box_per_class(boxes, {k("bed")}) == boxes                  # a class with no box: nothing to pick
    assert best_box_per_class(boxes, set()) == boxes


def test_a_choice_about_one_object_reads_only_its_class_best_box_and_a_measure_every_box_unless_pointed(monkeypatch):
    model = object_model()
    engine = streamed(model, frames=3)
    room = ObjectBox(ROOM_CLASS, (0.0, 0.0, 1.5), (6.0, 5.0, 3.0), support=100.0, token=0)
    boxes = [room, box("chair", 1.0, 2), box("sofa", 0.5, 3), box("chair", 4.0, 5)]
    monkeypatch.setattr(model.object_readout, "memory_boxes", lambda memory: boxes)
    readout = model.object_readout

    def read(question=None):
        return model.read_memory(engine.stream, question).tokens

    one_object = build_prompt("If I am standing by the sofa and facing the chair, is the lamp to my left or right?",
                              ["left", "right"])
    assert torch.equal(read(one_object), readout.memory_tokens([room, boxes[2], boxes[3]]))
    order = build_prompt("In which order do these categories first appear in the video: chair, sofa, lamp, bed?",
                         ["chair, sofa, lamp, bed", "sofa, chair, lamp, bed"])
    for question in (None, "How many chair(s) are in this room?", order,
                     build_prompt("How far apart are the sofa and the chair (closest points, in meters)?")):
        assert torch.equal(read(question), readout.memory_tokens(boxes)), question
    # a number head that points at the boxes it measures reads one box per named class for a
    # measure of one object too; a count and a room's size stay as they were
    distance = build_prompt("How far apart are the sofa and the chair (closest points, in meters)?")
    readout.pointed_measures = True
    assert torch.equal(read(distance), readout.memory_tokens([room, boxes[2], boxes[3]]))
    for question in ("How many chair(s) are in this room?", build_prompt("What is the size of this room (in square "
                                                                        "meters)?")):
        assert torch.equal(read(question), readout.memory_tokens(boxes)), question
    readout.config = dataclasses.replace(readout.config, best_box_per_named_class=False)
    assert torch.equal(read(one_object), readout.memory_tokens(boxes))
    assert torch.equal(read(distance), readout.memory_tokens(boxes))
    readout.pointed_measures = False
    # the engine hands the readout the question it answers
    asked = []
    monkeypatch.setattr(model, "read_memory", lambda stream, question=None: asked.append(question) or
                        type(model).read_memory(model, stream, question))
    engine.query(one_object)
    assert asked == [one_object]


def test_a_number_head_with_pointers_makes_the_readout_measure_one_box_per_named_class():
    model = build_model(preset_config("tiny").with_changes(
        {"object_readout": READOUT, "bridge": {"number_head": True, "number_pointers": True}}))
    assert model.object_readout.pointed_measures
    assert not object_model().object_readout.pointed_measures
