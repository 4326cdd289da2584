"""The `vlm2 sim` / `vlm2 eval` / `vlm2 bench render` command lines, as the interface contract states them."""
import json
from pathlib import Path

import pytest
import torch

from vlm2_ros.cli import main
from vlm2_ros.sim.questions import TASKS


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_sim_dataset_is_reproducible_from_its_seed(tmp_path):
    args = ["sim", "dataset", "--seed", "3", "--episodes", "2", "--frames", "12", "--width", "64",
            "--height", "48", "--style", "walk"]
    assert main(args + ["--out", str(tmp_path / "a"), "--json", str(tmp_path / "a.json")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    a, b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert a == b
    assert {"dataset.json", "ep_0000/questions.jsonl", "ep_0001/questions.jsonl"} <= set(a)
    summary = json.loads((tmp_path / "a.json").read_text())
    assert summary["episodes"] == 2 and summary["questions"] > 0
    # a different seed gives a different data set
    assert main(args[:2] + ["--seed", "4"] + args[4:] + ["--out", str(tmp_path / "c")]) == 0
    assert _tree_bytes(tmp_path / "c")["dataset.json"] != a["dataset.json"]


def test_sim_dataset_rejects_bad_sizes_and_leaves_nothing(tmp_path):
    with pytest.raises((SystemExit, ValueError)):
        main(["sim", "dataset", "--episodes", "1", "--frames", "4", "--width", "8", "--height", "6",
              "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_sim_bag_writes_bag_and_questions(tmp_path, storage):
    from vlm2_ros.bag_stream import read_frames
    from vlm2_ros.sim.bags import questions_path

    bag = tmp_path / "ep"
    assert main(["sim", "bag", "--seed", "1", "--frames", "6", "--width", "64", "--height", "48",
                 "--storage", storage, "--out", str(bag)]) == 0
    frames = read_frames(bag)
    assert len(frames) == 6 and frames[0].image.shape == (48, 64, 3)
    assert questions_path(bag).is_file() and questions_path(bag).read_text().strip()


def test_eval_writes_mean_and_per_task_scores(tmp_path):
    data = tmp_path / "data"
    main(["sim", "dataset", "--seed", "0", "--episodes", "2", "--frames", "10", "--width", "64",
          "--height", "48", "--per-task", "2", "--out", str(data)])
    out = tmp_path / "eval.json"
    assert main(["eval", "--data", str(data), "--predictor", "frequency", "--json", str(out),
                 "--predictions", str(tmp_path / "pred.jsonl")]) == 0
    result = json.loads(out.read_text())
    assert 0.0 <= result["mean_score"] <= 1.0
    tasks_present = {k[len("score_"):] for k in result if k.startswith("score_")}
    assert tasks_present and tasks_present <= set(TASKS)
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((tmp_path / "pred.jsonl").read_text().splitlines()) > 0


def test_eval_compares_memory_modes_and_baselines_in_one_report(tmp_path):
    data = tmp_path / "data"
    main(["sim", "dataset", "--seed", "0", "--episodes", "1", "--frames", "10", "--width", "64",
          "--height", "48", "--per-task", "1", "--out", str(data)])
    out, md = tmp_path / "ablation.json", tmp_path / "ablation.md"
    assert main(["eval", "--data", str(data), "--predictor", "model", "frequency", "chance",
                 "--memory", "none", "dual", "--json", str(out), "--markdown", str(md)]) == 0
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"model:tiny:none", "model:tiny:dual", "frequency", "chance"}
    assert all(0.0 <= r["mean_score"] <= 1.0 for r in results.values())
    table = md.read_text()
    assert "| task | model:tiny:none | model:tiny:dual | frequency | chance |" in table and "| mean_score |" in table
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match="--memory applies"):
        main(["eval", "--data", str(data), "--predictor", "chance", "--memory", "dual"])
    with pytest.raises(SystemExit, match="--stream-cache applies"):
        main(["eval", "--data", str(data), "--predictor", "frequency", "--stream-cache", str(tmp_path / "cache")])
    with pytest.raises(SystemExit, match="--readout applies"):
        main(["eval", "--data", str(data), "--predictor", "chance", "--readout", "truth"])
    with pytest.raises(SystemExit, match="--reader applies"):
        main(["eval", "--data", str(data), "--predictor", "frequency", "--reader", "geometry"])
    with pytest.raises(SystemExit, match="reads no memory"):
        main(["eval", "--data", str(data), "--predictor", "model", "--readout", "truth", "--memory", "dual"])
    with pytest.raises(SystemExit, match="--threads must be >= 1"):
        main(["eval", "--data", str(data), "--predictor", "chance", "--threads", "0"])
    threads = torch.get_num_threads()
    try:
        assert main(["eval", "--data", str(data), "--predictor", "chance", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_eval_length_scores_each_length_per_memory_mode_and_reuses_its_data(tmp_path):
    args = ["eval-length", "--lengths", "8", "5", "--memory", "working", "dual", "--episodes", "1",
            "--per-task", "1", "--seed", "7", "--out", str(tmp_path)]
    assert main(args + ["--readout-settings", '{"best_box_per_named_class": false}']) == 0
    result = json.loads((tmp_path / "length.json").read_text())
    assert result["readout_settings"] == {"best_box_per_named_class": False}
    assert [r["frames"] for r in result["rows"]] == [5, 8]
    assert all({"working", "dual", "frequency"} <= set(r) for r in result["rows"])
    assert "| frames | questions | working | dual | frequency |" in (tmp_path / "length.md").read_text()
    assert (tmp_path / "length.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stamp = (tmp_path / "frames_5" / "dataset.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (tmp_path / "frames_5" / "dataset.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="another data set"):
        main(args[:-4] + ["--seed", "8", "--out", str(tmp_path)])


def test_eval_length_ends_on_a_checkpoint_it_cannot_run_with_the_reason(tmp_path):
    args = ["eval-length", "--lengths", "8", "--episodes", "1", "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="vlm2 eval-length: .*nowhere"):
        main(args + ["--checkpoint-dir", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="vlm2 eval-length: .*not run-time choices"):
        main(args + ["--readout-settings", '{"enabled": false}'])
    assert not (tmp_path / "out").exists()                     # refused before rendering anything


def test_eval_on_missing_data_names_the_path(tmp_path):
    with pytest.raises((SystemExit, FileNotFoundError, ValueError), match="nowhere"):
        main(["eval", "--data", str(tmp_path / "nowhere"), "--predictor", "chance"])


def test_sim_map_draws_a_png(tmp_path):
    png = tmp_path / "room.png"
    assert main(["sim", "map", "--seed", "2", "--frames", "20", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_render_reports_rates(tmp_path):
    out = tmp_path / "render.json"
    assert main(["bench", "render", "--frames", "3", "--resolutions", "64x48", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["fps_64x48"] > 0 and result["seconds_64x48"] > 0
    with pytest.raises(SystemExit, match="bad resolution"):
        main(["bench", "render", "--frames", "1", "--resolutions", "64by48"])


def test_eval_number_samples_reach_the_model():
    import argparse

    from vlm2_ros.engine.number_decoding import DEFAULT_NUMBER_SAMPLES
    from vlm2_ros.evaluation.cli import make_predictors

    for samples in (0, DEFAULT_NUMBER_SAMPLES):                                # 0: greedy numbers
        args = argparse.Namespace(predictor=["model"], preset="tiny", memory=None, device="cpu", checkpoint_dir=None,
                                  seed=0, number_samples=samples, stream_cache=None, readout="memory",
                                  reader="bridge", readout_settings=None)
        assert [p.engine.number_samples for p in make_predictors(args)] == [samples]


def test_eval_readout_settings_reach_the_model_and_weighted_fields_are_refused(tmp_path):
    from vlm2_ros.cli import build_parser
    from vlm2_ros.evaluation.cli import make_predictors

    def parsed(*flags):
        return build_parser().parse_args(["eval", "--data", str(tmp_path), "--predictor", "model", *flags])

    default, = make_predictors(parsed())
    assert default.engine.model.config.object_readout.best_box_per_named_class is True
    every_box, = make_predictors(parsed("--readout-settings", '{"best_box_per_named_class": false, "min_share": 0.4}'))
    readout = every_box.engine.model.config.object_readout
    assert readout.best_box_per_named_class is False and readout.min_share == 0.4
    assert readout.class_min_share == default.engine.model.config.object_readout.class_min_share   # the rest kept
    with pytest.raises(SystemExit, match="not run-time choices"):
        make_predictors(parsed("--readout-settings", '{"enabled": false}'))
    for bad in ("{best_box", "[1]", "{}"):
        with pytest.raises(SystemExit):                     # argparse: usage and exit code 2
            parsed("--readout-settings", bad)
    data = tmp_path / "data"
    main(["sim", "dataset", "--seed", "0", "--episodes", "1", "--frames", "10", "--width", "64",
          "--height", "48", "--per-task", "1", "--out", str(data)])
    with pytest.raises(SystemExit, match="--readout-settings applies"):
        main(["eval", "--data", str(data), "--predictor", "chance", "--readout-settings", '{"grouping": "peaks"}'])
