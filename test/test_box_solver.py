"""The box solver (`vlm2 eval --reader geometry`): the synthetic world's questions answered in
closed form from object boxes. On the true boxes it must answer every question right, and its
answers must follow the boxes it is given."""
import numpy as np
import pytest

from vlm2_ros.evaluation.box_solver import BoxSolver, box_gap_m, question_slots
from vlm2_ros.evaluation.metrics import score_answer
from vlm2_ros.model.object_memory import ObjectBox
from vlm2_ros.sim.questions import TASKS, TEMPLATES, Balancer, QuestionGenerator
from vlm2_ros.sim.scene import SEMANTIC_CLASSES, generate_scene
from vlm2_ros.training.data import oracle_boxes


def test_the_true_boxes_answer_every_question():
    balancer, asked = Balancer(), set()
    for seed in range(30):
        scene = generate_scene(seed)
        visibility = {o.id: (3 * k, 3 * k + 10, 5) for k, o in enumerate(scene.objects)}
        frame = 3 * len(scene.objects) - 4                 # the last object not yet seen
        records = QuestionGenerator(scene, visibility, np.arange(100) * 10**8, episode_id=f"e{seed}", seed=seed,
                                    frame_index=frame, balancer=balancer).generate(per_task=3)
        solver = BoxSolver(oracle_boxes(scene, visibility, frame))
        for record in records:
            assert score_answer(record, solver.answer(record)) == 1.0, record
            asked.add(record["question_type"])
    assert asked == set(TASKS)


def box(category: str, centre, size=(0.5, 0.5, 0.9), first_seen=0, support=1.0) -> ObjectBox:
    return ObjectBox(SEMANTIC_CLASSES.index(category), tuple(centre), tuple(size), first_seen, support)


ROOM = ObjectBox(0, (2.0, 2.0, 1.5), (4.0, 5.0, 3.0))


def record(task: str, options=None, **slots) -> dict:
    question = TEMPLATES[task][0].format(**slots)
    return {"id": "q", "question_type": task, "question": question,
            "options": None if options is None else [f"{'ABCD'[i]}. {o}" for i, o in enumerate(options)]}


def test_the_answers_follow_the_boxes():
    chair, table = box("chair", (1, 1, 0.45)), box("table", (1, 3, 0.4), (1.0, 0.6, 0.8))
    left_of_the_way = box("bed", (0, 2, 0.5))
    right_of_the_way = box("bed", (2.5, 2, 0.5))
    direction = record("object_rel_direction_easy", ["left", "right"], a="chair", b="table", c="bed")
    assert BoxSolver([ROOM, chair, table, left_of_the_way]).answer(direction) == "A"
    assert BoxSolver([ROOM, chair, table, right_of_the_way]).answer(direction) == "B"
    # numbers: boxes of the class, the longest side, closest points, the room's floor
    two_chairs = BoxSolver([ROOM, chair, box("chair", (3, 4, 0.45), support=2.0), table])
    assert two_chairs.answer(record("object_counting", cat="chair")) == "2"
    assert two_chairs.answer(record("object_size_estimation", a="table")) == "100"
    assert two_chairs.answer(record("room_size_estimation")) == "20.00"
    # the best-supported chair stands for "the chair"
    best_chair = two_chairs.best("chair")
    assert best_chair.centre == (3, 4, 0.45)
    gap = box_gap_m(best_chair, table)
    assert two_chairs.answer(record("object_abs_distance", a="chair", b="table")) == f"{gap:.2f}"
    assert box_gap_m(box("box", (0, 0, 0), (1, 1, 1)), box("box", (3, 0, 0), (1, 1, 1))) == pytest.approx(2.0)
    # the appearance order is the boxes' first sightings, the option ordered most like them
    seen = BoxSolver([ROOM, box("lamp", (0, 0, 1), first_seen=9), box("chair", (1, 1, 0), first_seen=2),
                      box("tv", (2, 2, 1), first_seen=5), box("plant", (3, 3, 0), first_seen=7)])
    order = record("obj_appearance_order", ["lamp, chair, tv, plant", "chair, tv, plant, lamp",
                                            "chair, plant, tv, lamp", "tv, chair, plant, lamp"],
                   cats="lamp, chair, tv, plant")
    assert seen.answer(order) == "B"


def test_what_the_boxes_do_not_hold_gets_a_guess_or_no_number():
    solver = BoxSolver([ROOM, box("chair", (1, 1, 0.45))])
    assert solver.answer(record("object_size_estimation", a="sofa")) == ""
    assert solver.answer(record("object_counting", cat="sofa")) == "0"
    assert solver.answer(record("object_rel_direction_easy", ["left", "right"], a="chair", b="sofa", c="bed")) == "A"
    with pytest.raises(ValueError, match="start with the room"):
        BoxSolver([box("chair", (1, 1, 0.45))])


def test_only_the_synthetic_worlds_wordings_are_read():
    assert question_slots(record("route_planning", a="bed", b="tv", c="sofa", d="lamp")) == {
        "a": "bed", "b": "tv", "c": "sofa", "d": "lamp"}
    with pytest.raises(ValueError, match="follows none of the object_counting templates"):
        question_slots({"id": "x", "question_type": "object_counting", "question": "How many chairs can you see?"})
    with pytest.raises(ValueError, match="does not answer"):
        question_slots({"id": "x", "question_type": "memory_object_pair", "question": "?"})
