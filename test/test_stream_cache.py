"""StreamCache (`vlm2 eval --stream-cache`): a memory streamed once answers the same as streamed again,
for any model with the same memory writers, and never for a model whose memory differs. And the
other way round, `--readout truth`: the model's answers from the true boxes, nothing streamed. And
`--reader geometry`: the box solver's answers from the same boxes instead of the bridge's."""
import pytest
import torch

from vlm2_ros.engine.engine import SpatialMemoryEngine
from vlm2_ros.evaluation import streaming
from vlm2_ros.evaluation.box_solver import BoxSolver
from vlm2_ros.evaluation.data import load_questions
from vlm2_ros.evaluation.evaluate import evaluate
from vlm2_ros.evaluation import model_predictor
from vlm2_ros.evaluation.model_predictor import ModelPredictor
from vlm2_ros.evaluation.streaming import StreamCache
from vlm2_ros.model.checkpoint import build_model, save_checkpoint
from vlm2_ros.model.presets import preset_config
from vlm2_ros.sim.episode import Episode, EpisodeDir, write_episode
from vlm2_ros.sim.questions import generate_questions
from vlm2_ros.training.data import model_oracle_memory


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    episode = Episode.generate(12, 24, width=64, height=48)
    questions = [*generate_questions(episode, per_task=1, frame_index=11), *generate_questions(episode, per_task=1)]
    write_episode(episode, root / episode.spec.episode_id, questions)
    return root


def test_a_cached_memory_answers_as_the_streamed_one_without_streaming(data, tmp_path, monkeypatch):
    records = load_questions(data)
    asked_at = {r["frame_index"] for r in records}
    assert len(asked_at) == 2
    plain = evaluate(records, ModelPredictor("tiny"), data_root=data)["predictions"]
    first = ModelPredictor("tiny", stream_cache=tmp_path / "cache")
    assert evaluate(records, first, data_root=data)["predictions"] == plain
    assert (first.cache.misses, first.cache.hits) == (2, 0)
    assert len(list(first.cache.directory.glob("*.safetensors"))) == 2

    monkeypatch.setattr(model_predictor, "stream_episode", lambda *a: pytest.fail("streamed again"))
    second = ModelPredictor("tiny", stream_cache=tmp_path / "cache")
    assert evaluate(records, second, data_root=data)["predictions"] == plain
    assert (second.cache.misses, second.cache.hits) == (0, 2)

    calls = []

    def stream_episode(*args):
        calls.append(args[2:])
        streaming.stream_episode(*args)

    monkeypatch.setattr(model_predictor, "stream_episode", stream_episode)
    assert evaluate(records, ModelPredictor("tiny"), data_root=data)["predictions"] == plain
    assert calls == [(11, 0), (23, 12)]              # the later question streams on from the earlier one


def test_a_file_that_does_not_read_back_counts_as_missing_and_is_replaced(data, tmp_path):
    episode = EpisodeDir(next(data.iterdir()))
    cache = StreamCache(tmp_path, SpatialMemoryEngine(build_model(preset_config("tiny")), weights="w"))
    assert not cache.load(episode, 5)
    streaming.stream_episode(cache.engine, episode, 5)
    cache.save(episode, 5)
    path = next(cache.directory.glob("*.safetensors"))
    path.write_bytes(path.read_bytes()[:100])
    cache.engine.reset()
    assert not cache.load(episode, 5) and cache.engine.stream.frames == 0     # the memory is untouched
    streaming.stream_episode(cache.engine, episode, 5)
    cache.save(episode, 5)
    cache.engine.reset()
    assert cache.load(episode, 5) and cache.engine.stream.frames == 6
    assert (cache.misses, cache.hits) == (2, 1)


def test_a_later_question_streams_on_from_the_earlier_ones_memory(data):
    episode = EpisodeDir(next(data.iterdir()))
    engine = SpatialMemoryEngine(build_model(preset_config("tiny")), weights="w")
    streaming.stream_episode(engine, episode, 23)
    whole = engine.stream
    streaming.stream_episode(engine, episode, 10)
    streaming.stream_episode(engine, episode, 23, first_frame=11)
    assert engine.stream.frames == whole.frames == 24
    for name in ("working", "episodic"):
        torch.testing.assert_close(getattr(engine.stream.memory, name).tokens, getattr(whole.memory, name).tokens)
    torch.testing.assert_close(engine.stream.geometry_window, whole.geometry_window)


def test_only_models_with_the_same_memory_writers_share_a_cache(tmp_path):
    torch.manual_seed(0)
    config = preset_config("tiny").with_changes({"object_readout": {"enabled": True}})
    model = build_model(config)

    def cache_of(model) -> StreamCache:
        return StreamCache(tmp_path, SpatialMemoryEngine(model, weights="w"))

    base = cache_of(model).directory
    with torch.no_grad():
        model.bridge.parameters().__next__().add_(1.0)              # a reader: the memory is the same
        model.object_readout.category.weight.add_(1.0)
    assert cache_of(model).directory == base
    with torch.no_grad():
        model.fusion.parameters().__next__().add_(1.0)              # a writer: another memory
    assert cache_of(model).directory != base
    working = build_model(config.with_changes({"memory": {"mode": "working"}}))
    working.load_state_dict(model.state_dict())
    assert cache_of(working).directory not in (base, cache_of(model).directory)   # the ablation is config


def test_truth_readout_answers_from_the_true_boxes_and_streams_nothing(data, tmp_path, monkeypatch):
    records = load_questions(data)
    monkeypatch.setattr(model_predictor, "stream_episode", lambda *a: pytest.fail("streamed"))
    predictor = ModelPredictor("tiny", readout="truth")             # the shipped weights read objects
    read = []
    answer = predictor.engine.answer_from_tokens
    monkeypatch.setattr(predictor.engine, "answer_from_tokens",
                        lambda tokens, question: read.append(tokens) or answer(tokens, question))
    predictions = evaluate(records, predictor, data_root=data)["predictions"]
    assert predictor.name == "model:tiny:truth" and len(predictions) == len(records) == len(read)
    episode = EpisodeDir(next(data.iterdir()))
    truth = {frame: model_oracle_memory(predictor.engine.model, episode.scene, episode.visibility(), frame)
             for frame in (11, 23)}
    assert all(any(torch.equal(tokens, t) for t in truth.values()) for tokens in read)
    assert all(any(torch.equal(tokens, t) for tokens in read) for t in truth.values())
    assert not torch.equal(truth[11], truth[23])          # the later frame has seen more of the room
    assert all(p["prediction"] for p in predictions)
    # a model that reads its memory otherwise has no layout to hand the truth in
    save_checkpoint(build_model(preset_config("tiny")), tmp_path / "plain")
    with pytest.raises(ValueError, match="object_readout disabled"):
        ModelPredictor("tiny", checkpoint_dir=str(tmp_path / "plain"), readout="truth")


def test_the_geometry_reader_answers_from_the_boxes_the_readout_would_hand_the_bridge(data, monkeypatch):
    records = load_questions(data)
    truth = evaluate(records, ModelPredictor("tiny", readout="truth", reader="geometry"), data_root=data)
    assert truth["metrics"]["mean_score"] == 1.0          # the true boxes hold every answer
    predictor = ModelPredictor("tiny", reader="geometry")
    asked = []
    solver_answer = BoxSolver.answer
    monkeypatch.setattr(BoxSolver, "answer", lambda self, r: asked.append(self) or solver_answer(self, r))
    monkeypatch.setattr(predictor.engine, "query", lambda *a: pytest.fail("the language bridge answered"))
    predictions = evaluate(records, predictor, data_root=data)["predictions"]
    assert predictor.name == "model:tiny:geometry" and len(asked) == len(predictions) == len(records)
    # the solver of the last asking frame reads the boxes the object readout makes of that memory
    with torch.no_grad():
        boxes = predictor.engine.model.object_readout.memory_boxes(predictor.engine.stream.memory)
    assert (asked[-1].room, asked[-1].objects) == (boxes[0], boxes[1:])
