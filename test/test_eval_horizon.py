"""The long-walk sweep asks each length's questions again right after the walk's tour."""
import json

from vlm2_ros.evaluation.data import load_questions
from vlm2_ros.evaluation.horizon import AFTER_TOUR, after_tour, ensure_dataset, run_length_sweep
from vlm2_ros.sim.trajectory import tour_frames

FRAMES, SEED = 20, 7


def _set_first_sightings(episode_dir, first: int) -> None:
    """Rewrite a rendered episode's visibility so that every object is first seen at `first`."""
    meta_path = episode_dir / "episode.json"
    meta = json.loads(meta_path.read_text())
    meta["visibility"] = {k: [first, max(first, v[1]), v[2]] for k, v in meta["visibility"].items()}
    meta_path.write_text(json.dumps(meta))


def _walks(tmp_path):
    """Two 20-frame long walks; the first's objects all seen in its tour, the second's one frame late."""
    data = ensure_dataset(tmp_path, FRAMES, SEED, episodes=2, per_task=1)
    last_tour_frame = tour_frames(FRAMES, "long_horizon") - 1
    _set_first_sightings(data / "ep_0000", last_tour_frame)
    _set_first_sightings(data / "ep_0001", last_tour_frame + 1)
    return data, last_tour_frame


def test_after_tour_asks_the_same_questions_at_the_tour_end_of_walks_seen_whole_by_then(tmp_path):
    data, last_tour_frame = _walks(tmp_path)
    records = load_questions(data)
    asked_at, copies = after_tour(data, records)
    assert asked_at == last_tour_frame == 3
    first_walk = [r for r in records if r["episode_id"] == "ep_0000"]
    assert copies and len(copies) == len(first_walk)
    for original, copy in zip(first_walk, copies):
        assert copy["id"] == original["id"] + AFTER_TOUR
        assert copy["frame_index"] == last_tour_frame and original["frame_index"] == FRAMES - 1
        assert copy["stamp_ns"] < original["stamp_ns"]
        assert {k: v for k, v in copy.items() if k not in ("id", "frame_index", "stamp_ns")} == \
               {k: v for k, v in original.items() if k not in ("id", "frame_index", "stamp_ns")}


def test_length_sweep_reports_the_after_tour_scores_beside_the_end_ones(tmp_path):
    data, last_tour_frame = _walks(tmp_path)
    result = run_length_sweep(tmp_path, [FRAMES], ["dual"], SEED, episodes=2, per_task=1)
    row = result["rows"][0]
    tour = row["after_tour"]
    first_walk = [r for r in load_questions(data) if r["episode_id"] == "ep_0000"]
    assert tour["asked_at"] == last_tour_frame and tour["questions"] == len(first_walk)
    assert 0 <= tour["dual"]["after_tour"] <= 1 and 0 <= tour["dual"]["at_end"] <= 1
    assert 0 <= row["dual"] <= 1 and row["questions"] == len(load_questions(data))
    table = (tmp_path / "length.md").read_text()
    assert "| frames | asked after the tour at frame | questions | dual after the tour | dual at the end |" in table
    assert f"| {FRAMES} | {last_tour_frame} | {len(first_walk)} |" in table
    assert json.loads((tmp_path / "length.json").read_text())["rows"][0]["after_tour"] == tour
