"""Question generator (exact answers, balance) and evaluator (MRA, accuracy, baselines, files)."""
import itertools
import json
import math

import numpy as np
import pytest

from vlm2_ros.evaluation.data import load_questions, read_jsonl
from vlm2_ros.evaluation.evaluate import evaluate, format_table, plot_report
from vlm2_ros.evaluation.metrics import aggregate, mean_relative_accuracy, score_answer
from vlm2_ros.evaluation.predictors import ChancePredictor, FrequencyPredictor, format_prompt
from vlm2_ros.sim.episode import Episode, write_episode
from vlm2_ros.sim.questions import MC_TASKS, MEMORY_TASKS, TASKS, Balancer, QuestionGenerator, generate_questions
from vlm2_ros.sim.scene import generate_scene


def _synthetic_set(n_scenes=40, per_task=3):
    bal, recs, scenes = Balancer(), [], {}
    for s in range(n_scenes):
        sc = generate_scene(s)
        scenes[f"e{s}"] = sc
        vis = {o.id: (3 * k, 3 * k + 10, 5) for k, o in enumerate(sc.objects)}
        recs += QuestionGenerator(sc, vis, np.arange(100) * 10**8, episode_id=f"e{s}", seed=s,
                                  balancer=bal).generate(per_task)
    return recs, scenes


@pytest.fixture(scope="module")
def synthetic_set():
    return _synthetic_set()


def test_all_tasks_present_and_records_well_formed(synthetic_set):
    recs, _ = synthetic_set
    assert {r["question_type"] for r in recs} == set(TASKS)
    for r in recs:
        assert r["dataset"] and r["scene_name"] and r["id"]
        if r["question_type"] in MC_TASKS:
            assert len(r["options"]) == {"object_rel_direction_easy": 2, "object_rel_direction_medium": 3}.get(
                r["question_type"], 4)
            texts = [o.split(". ", 1)[1] for o in r["options"]]
            assert len(set(texts)) == len(texts)
            assert r["options"]["ABCD".index(r["ground_truth"])].endswith(str(r["answer_value"]))
            assert "Options:\nA. " in format_prompt(r)
        else:
            assert r["options"] is None and float(r["ground_truth"]) > 0
    assert len({r["id"] for r in recs}) == len(recs)


def _box_distance_bruteforce(a, b, n=9):
    ga = np.stack(np.meshgrid(*[np.linspace(a.lo[i], a.hi[i], n) for i in range(3)]), -1).reshape(-1, 3)
    gb = np.stack(np.meshgrid(*[np.linspace(b.lo[i], b.hi[i], n) for i in range(3)]), -1).reshape(-1, 3)
    return np.sqrt(((ga[:, None] - gb[None]) ** 2).sum(-1)).min()


def test_answers_match_the_scene(synthetic_set):
    recs, scenes = synthetic_set
    for r in recs:
        sc = scenes[r["episode_id"]]
        objs = {o.id: o for o in sc.objects}
        t = r["question_type"]
        if t == "object_counting":
            cat = objs[r["object_ids"][0]].category
            assert int(r["ground_truth"]) == sc.count(cat) == len(r["object_ids"])
            assert f" {cat}(s)" in r["question"]
        elif t == "object_abs_distance":
            a, b = (objs[i] for i in r["object_ids"])
            # brute force on a grid of box points: an upper bound within the grid spacing
            bf = _box_distance_bruteforce(a, b)
            assert float(r["ground_truth"]) <= bf + 0.006 and bf - float(r["ground_truth"]) < 0.6
        elif t == "object_size_estimation":
            o = objs[r["object_ids"][0]]
            assert int(r["ground_truth"]) == round(100 * max(o.hi - o.lo))
        elif t == "room_size_estimation":
            assert float(r["ground_truth"]) == pytest.approx(sc.room.width * sc.room.depth, abs=0.05)
        elif t.startswith("object_rel_direction"):
            a, b, c = (objs[i] for i in r["object_ids"])
            # independent check: rotate the world so that a->b is +y, then read the quadrant of c
            f = np.subtract(b.center[:2], a.center[:2])
            yaw = math.atan2(f[1], f[0]) - math.pi / 2
            R = np.array([[math.cos(-yaw), -math.sin(-yaw)], [math.sin(-yaw), math.cos(-yaw)]])
            x, y = R @ np.subtract(c.center[:2], a.center[:2])
            ans = r["answer_value"]
            if "left" in ans:
                assert x < 0
            if "right" in ans:
                assert x > 0
            if ans.startswith("back"):
                assert y < 0
            if ans.startswith("front"):
                assert y > 0
        elif t == "object_rel_distance":
            target, *cands = (objs[i] for i in r["object_ids"])
            best = min(cands, key=lambda c: _box_distance_bruteforce(target, c))
            assert r["answer_value"] == best.category


def test_relation_angles_are_the_angles_the_direction_and_route_answers_turn_on(synthetic_set):
    from vlm2_ros.sim.questions import relation_angles, turn_class

    # standing at the origin facing north (+y): (-1, 1) lies 45 degrees to the left (positive)
    assert relation_angles("object_rel_direction_hard", [(0, 0), (0, 1), (-1, 1)]) == pytest.approx([45.0])
    assert relation_angles("object_rel_direction_easy", [(0, 0), (0, 1), (1, -1)]) == pytest.approx([-135.0])
    # north to b, then east to c (a right turn), then back west to d (a turn back)
    assert relation_angles("route_planning", [(0, 0), (0, 1), (1, 1), (0, 1.1)]) == pytest.approx(
        [-90.0, 174.29], abs=0.01)
    with pytest.raises(ValueError, match="turns on no angle"):
        relation_angles("object_counting", [(0, 0)])
    with pytest.raises(ValueError, match="turns on no angle"):
        relation_angles("route_planning", [(0, 0), (0, 1), (1, 1)])
    recs, scenes = synthetic_set
    routes = [r for r in recs if r["question_type"] == "route_planning"]
    assert routes
    for r in routes:     # the route's answer is the two turns these angles make
        objs = {o.id: o for o in scenes[r["episode_id"]].objects}
        angles = relation_angles("route_planning", [objs[i].center for i in r["object_ids"]])
        assert ", ".join(turn_class(a) for a in angles) == r["answer_value"]


def _compass(record: dict) -> str:
    return next(d for d in ("east", "west", "north", "south")
                if any(f"{word} {d}" in record["question"] for word in ("furthest", "further", "the")))


OPTIONS = {"memory_object_quadrant": 4, "memory_object_extreme": 4, "memory_object_pair": 2}


def test_memory_questions_are_answered_by_the_scene_alone():
    """The training-only memory questions: exact answers, flat letters, nothing given away by the
    question, and the VSI questions before them unchanged."""
    bal, recs = Balancer(), []
    for s in range(40):
        sc = generate_scene(s)
        vis = {o.id: (3 * k, 3 * k + 10, 5) for k, o in enumerate(sc.objects)}
        make = lambda balancer: QuestionGenerator(sc, vis, np.arange(100) * 10**8, episode_id=f"e{s}",  # noqa: E731
                                                  seed=s, balancer=balancer)
        plain, extended = make(Balancer()).generate(2), make(Balancer()).generate(2, memory_per_task=2)
        assert extended[:len(plain)] == plain
        mine = [r for r in make(bal).generate(0, memory_per_task=2) if r["question_type"] in MEMORY_TASKS]
        for r in mine:
            options = [o.split(". ", 1)[1] for o in r["options"]]
            assert r["options"]["ABCD".index(r["ground_truth"])].endswith(r["answer_value"])
            assert len(options) == len(set(options)) == OPTIONS[r["question_type"]]
            if r["question_type"] in ("memory_object_extreme", "memory_object_pair"):
                picks = [next(x for x in sc.objects if x.id == i) for i in r["object_ids"]]
                assert r["direction"] == _compass(r)          # recorded for the training's direction probe
                axis, sign = {"east": (0, 1), "west": (0, -1), "north": (1, 1), "south": (1, -1)}[_compass(r)]
                best, runner_up = sorted(picks, key=lambda x: -sign * x.center[axis])[:2]
                assert sign * (best.center[axis] - runner_up.center[axis]) >= 0.5
                assert r["answer_value"] == best.category and sorted(options) == sorted(x.category for x in picks)
                assert all(c in r["question"] for c in options)
            else:
                assert "direction" not in r
                (o,) = (x for x in sc.objects if x.id == r["object_ids"][0])
                east, north = o.center[0] > sc.room.width / 2, o.center[1] > sc.room.depth / 2
                assert r["answer_value"] == ("north" if north else "south") + "-" + ("east" if east else "west")
                assert f" {o.category}" in r["question"] and sc.count(o.category) == 1
        recs += mine
    assert {r["question_type"] for r in recs} == set(MEMORY_TASKS) and not set(MEMORY_TASKS) & set(TASKS)
    for task in MEMORY_TASKS:
        rows = [r for r in recs if r["question_type"] == task]
        letters = np.bincount(["ABCD".index(r["ground_truth"]) for r in rows], minlength=OPTIONS[task])
        assert len(rows) >= 40 and len(letters) == OPTIONS[task] and letters.max() - letters.min() <= 1
    # the pair's answer is the first object the question names about as often as the second
    pairs = [r for r in recs if r["question_type"] == "memory_object_pair"]
    named_first = [r["question"].split(" or the ")[0].endswith(f"the {r['answer_value']}") for r in pairs]
    assert 0.35 <= np.mean(named_first) <= 0.65
    # answer classes as flat as the scenes allow: the quarter asked for, the direction asked along
    for task, answer_class in (("memory_object_quadrant", lambda r: r["answer_value"]),
                               ("memory_object_extreme", _compass), ("memory_object_pair", _compass)):
        counts = np.unique([answer_class(r) for r in recs if r["question_type"] == task], return_counts=True)[1]
        assert len(counts) == 4 and counts.min() >= 0.75 * counts.max()


def test_blind_baselines_stay_near_chance(synthetic_set):
    recs, _ = synthetic_set
    freq = evaluate(recs, FrequencyPredictor())["metrics"]
    n_opts = {"object_rel_direction_easy": 2, "object_rel_direction_medium": 3}
    for t in MC_TASKS:
        chance = 1 / n_opts.get(t, 4)
        assert abs(freq[f"score_{t}"] - chance) < 0.06, (t, freq[f"score_{t}"])
    chance = evaluate(recs, ChancePredictor())["metrics"]
    for t in MC_TASKS:
        assert abs(chance[f"score_{t}"] - 1 / n_opts.get(t, 4)) < 0.12


def test_mra_hand_cases():
    assert mean_relative_accuracy(2.0, 2.0) == 1.0
    assert mean_relative_accuracy(1.07, 1.0) == pytest.approx(0.9)    # 0.07 <= 1-t for t <= 0.93
    assert mean_relative_accuracy(1.32, 1.0) == pytest.approx(0.4)    # t in {.5,.55,.6,.65}
    assert mean_relative_accuracy(0.68, 1.0) == pytest.approx(0.4)
    assert mean_relative_accuracy(1.6, 1.0) == 0.0
    assert mean_relative_accuracy(None, 1.0) == 0.0
    rec = {"question_type": "object_abs_distance", "ground_truth": "2.5"}
    assert score_answer(rec, "2.5 meters") == 1.0
    assert score_answer(rec, "no idea") == 0.0


def test_accuracy_hand_cases():
    rec = {"question_type": "route_planning", "ground_truth": "B", "options": ["A. x", "B. y", "C. z", "D. w"]}
    assert score_answer(rec, "B") == 1.0
    assert score_answer(rec, "b.") == 1.0
    assert score_answer(rec, "  B. y") == 1.0
    assert score_answer(rec, "A") == 0.0
    assert score_answer(rec, "The answer is B") == 0.0
    assert score_answer(rec, "") == 0.0
    recs = [{"question_type": t, "ground_truth": "A"} for t in
            ("object_rel_direction_easy", "object_rel_direction_hard", "route_planning", "route_planning")]
    m = aggregate(recs, [1.0, 0.0, 1.0, 0.0])
    assert m["score_object_rel_direction"] == 0.5 and m["score_route_planning"] == 0.5
    assert m["mean_score"] == 0.5


def test_episode_questions_use_visibility(tmp_path):
    ep = Episode.generate(11, 60, width=64, height=48)
    qs = generate_questions(ep, per_task=2)
    vis = ep.visibility()
    for r in qs:
        assert all(i in vis for i in r["object_ids"])
        if r["question_type"] == "obj_appearance_order":
            first = {}
            for o in ep.scene.objects:
                if o.id in vis:
                    first[o.category] = min(first.get(o.category, 10**9), vis[o.id][0])
            order = r["answer_value"].split(", ")
            assert [first[c] for c in order] == sorted(first[c] for c in order)
    write_episode(ep, tmp_path / "ds" / ep.spec.episode_id, qs)
    loaded = load_questions(tmp_path / "ds")
    assert loaded == json.loads(json.dumps(qs))


def test_vsibench_layout_and_malformed_files(tmp_path):
    vsi = [{"id": 1, "dataset": "scannet", "scene_name": "scene0001", "question_type": "object_counting",
            "question": "How many chair(s) are in this room?", "options": None, "ground_truth": "4"},
           {"id": 2, "dataset": "arkitscenes", "scene_name": "x", "question_type": "object_rel_distance",
            "question": "Which is closest to the bed?", "options": ["A. sofa", "B. tv", "C. lamp", "D. box"],
            "ground_truth": "C"}]
    (tmp_path / "vsi").mkdir()
    (tmp_path / "vsi" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in vsi))
    recs = load_questions(tmp_path / "vsi")
    assert len(recs) == 2
    res = evaluate(recs, lambda rec, prompt: "4" if rec["options"] is None else "C")
    assert res["metrics"]["mean_score"] == 1.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: question record lacks field"):
        read_jsonl(bad)
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match="malformed JSON line"):
        read_jsonl(bad)
    bad.write_text(json.dumps({**vsi[1], "ground_truth": "E"}) + "\n")
    with pytest.raises(ValueError, match="not one of the option letters"):
        read_jsonl(bad)
    bad.write_text(json.dumps({**vsi[0], "question_type": "weather"}) + "\n")
    with pytest.raises(ValueError, match="unknown question_type 'weather'"):
        read_jsonl(bad)
    with pytest.raises(ValueError, match="does not exist"):
        load_questions(tmp_path / "nope")


def test_report_table_and_plot(tmp_path, synthetic_set):
    recs, _ = synthetic_set
    res = {p.name: evaluate(recs[:200], p)["metrics"] for p in (ChancePredictor(), FrequencyPredictor())}
    table = format_table(res)
    assert "| mean_score |" in table and "chance" in table
    plot_report(res, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_model_predictor_plumbing(tmp_path):
    from vlm2_ros.evaluation.model_predictor import ModelPredictor
    ep = Episode.generate(12, 20, width=64, height=48)
    qs = generate_questions(ep, per_task=1)
    write_episode(ep, tmp_path / ep.spec.episode_id, qs)
    res = evaluate(load_questions(tmp_path), ModelPredictor("tiny"), data_root=tmp_path)
    assert 0.0 <= res["metrics"]["mean_score"] <= 1.0
    assert all(isinstance(p["prediction"], str) for p in res["predictions"])


def test_generate_only_asks_the_named_question_types():
    scene = generate_scene(5)
    visibility = {o.id: (k, k, 1) for k, o in enumerate(scene.objects)}
    make = lambda: QuestionGenerator(scene, visibility, np.arange(40) * 10**8, episode_id="e5", seed=5)  # noqa: E731
    only = ["room_size_estimation", "object_rel_direction_hard", "memory_object_extreme"]
    records = make().generate(3, 3, only)
    assert {r["question_type"] for r in records} == set(only)
    assert {r["question_type"] for r in make().generate(3, 3)} == set(TASKS + MEMORY_TASKS)
    with pytest.raises(ValueError, match="unknown question types"):
        make().generate(3, 3, ["quarter"])
