"""`vlm2 demo`: the main job, as a robot would run it, on the embedded default model.

Three processes, like on a robot: vlm2_node (started with config/vlm2.yaml), a bag player
(`vlm2 replay --publish`) that plays a synthetic episode onto the node's camera topics, and
this client, which asks the node one question of each VSI-Bench task through `~/query` (and one
through the `~/ask` action, showing its stages), prints each answer with its evidence, latency
and the ground truth from the synthetic scene, shows the memory status, and stops the node
(which snapshots its memory on the way out).

The episode is generated on the fly (deterministic in --seed); nothing is downloaded.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The documented parameter file in a source checkout; elsewhere the node's declared defaults,
# which test_node_parameters.py keeps equal to it.
CONFIG = Path(__file__).resolve().parents[1] / "config" / "vlm2.yaml"


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run vlm2_node on a replayed synthetic episode and query it")
    p.add_argument("--preset", default="tiny", help="model preset (default: the embedded tiny model)")
    p.add_argument("--checkpoint-dir", default="", help="VLM2 checkpoint directory (default: the shipped one)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=7, help="synthetic episode seed")
    p.add_argument("--frames", type=int, default=120, help="episode length (default 120 frames, 12 s)")
    p.add_argument("--rate", type=float, default=2.0, help="bag playback speed (default 2x real time)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep the bag, node log and memory snapshot here (default: a temporary directory)")
    p.set_defaults(func=run_demo)


def ros_domain_id() -> int:
    """The user's ROS_DOMAIN_ID, else one of our own so the demo stays off a robot's graph."""
    return int(os.environ.get("ROS_DOMAIN_ID", 100 + os.getpid() % 100))


def run_demo(args: argparse.Namespace) -> int:
    if args.frames < 10:
        raise SystemExit(f"--frames must be >= 10, got {args.frames}")
    try:
        import rclpy  # noqa: F401
        from vlm2_ros.srv import SpatialQuery  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"vlm2 demo runs vlm2_node and needs ROS 2 (rclpy and this package's built "
                         f"interfaces): {e}. `make demo` installs and builds them.") from None
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return _run(args, args.workdir)
    with tempfile.TemporaryDirectory(prefix="vlm2-demo-") as tmp:
        return _run(args, Path(tmp))


def _write_bag(args: argparse.Namespace, workdir: Path) -> tuple[Path, list[dict]]:
    from tqdm import tqdm

    from .sim.api import sample_episode
    from .sim.bags import write_episode_bag
    from .sim.questions import generate_questions

    episode = sample_episode(seed=args.seed, num_frames=args.frames)
    questions = generate_questions(episode, per_task=1)
    bag = workdir / "episode"
    with tqdm(total=args.frames, desc="rendering episode bag", unit="frame") as bar:
        write_episode_bag(episode, bag, storage="mcap", questions=questions, progress=bar.update)
    print(f"episode: {episode.scene.name}, {args.frames} frames "
          f"{episode.spec.width}x{episode.spec.height} @ {episode.spec.fps:g} Hz -> {bag}")
    return bag, questions


def _run(args: argparse.Namespace, workdir: Path) -> int:
    from .ros.node_client import NodeClient, NodeClientError, start_node_process, stop_node_process

    bag, questions = _write_bag(args, workdir)
    domain = ros_domain_id()
    env = {"ROS_DOMAIN_ID": str(domain)}
    params = {
        "model.preset": args.preset, "model.checkpoint_dir": args.checkpoint_dir, "model.device": args.device,
        "cameras.camera.pose_topic": "camera/pose",
        "ingest.rate_hz": 0.0,              # every frame of the episode goes into memory
        "ingest.queue_size": 32,
        "snapshot.dir": str(workdir / "snapshot"),
    }
    log_path = workdir / "node.log"
    print(f"starting vlm2_node (ROS_DOMAIN_ID={domain}, log {log_path}) ...")
    node = start_node_process(params, params_file=CONFIG if CONFIG.is_file() else None, log_path=log_path,
                              env=env)
    try:
        with NodeClient.session(domain_id=domain) as client:
            try:
                client.wait_for_node(timeout_s=120)
                _replay(bag, args.rate, env, client, args.frames)
                asked = _ask_questions(client, questions)
                # the status after the last answer (status messages come every status_period_s)
                _print_status(client.wait_for_status(lambda s: s.queries_answered + s.queries_failed >= asked))
            except NodeClientError as e:
                print(f"demo failed: {e}\n--- node log (tail) ---\n{_tail(log_path)}", file=sys.stderr)
                return 1
    finally:
        code = stop_node_process(node)
    snapshot = sorted(p.name for p in (workdir / "snapshot").glob("*")) if (workdir / "snapshot").exists() else []
    print(f"\nvlm2_node stopped (exit code {code}); memory snapshot on shutdown: {snapshot or 'none'}")
    if code != 0:
        print(f"--- node log (tail) ---\n{_tail(log_path)}", file=sys.stderr)
    return 0 if code == 0 else 1


def _replay(bag: Path, rate: float, env: dict, client, frames: int) -> None:
    from .ros.node_client import NodeClientError

    print(f"replaying the bag onto the node's topics at {rate:g}x (vlm2 replay --publish) ...")
    started = time.monotonic()
    player = subprocess.run([sys.executable, "-m", "vlm2_ros.cli", "replay", str(bag), "--publish",
                             "--rate", str(rate)], env={**os.environ, **env}, capture_output=True, text=True,
                            timeout=600)
    if player.returncode != 0:
        raise NodeClientError(f"bag player failed ({player.returncode}): {player.stderr.strip()}")
    print("  " + player.stdout.strip().splitlines()[-1])
    # Statuses taken after the last image was published, until every image the node received has
    # gone through its queue (ingested, or dropped and counted). Images the node never received
    # are reported, not waited for: best-effort camera QoS does not resend what a busy machine's
    # transport lost, and the demo goes on with the memory it has.
    client.statuses.clear()
    status = client.wait_for_status(lambda s: s.frames_received > 0 and s.queue_depth == 0
                                    and s.frames_ingested + s.frames_dropped == s.frames_received, timeout_s=60)
    print(f"  node received {status.frames_received}/{frames} images in {time.monotonic() - started:.1f} s, "
          f"ingested {status.frames_ingested}, dropped {status.frames_dropped} (ingest queue full: "
          f"{status.frames_dropped_queue_full}, rate cap: {status.frames_dropped_rate_limit}, bad image: "
          f"{status.frames_dropped_bad_image}, rejected: {status.frames_dropped_rejected})")
    if status.frames_received < frames:
        print(f"  {frames - status.frames_received} images never reached the node: lost in transport on its "
              f"best-effort camera subscription (README: camera QoS)")


def _request(record: dict) -> dict:
    """A synthetic-world question as a typed ~/query request (options without their letters)."""
    from .evaluation.predictors import option_texts
    from .sim.questions import MC_TASKS
    from .srv import SpatialQuery

    if record["question_type"] in MC_TASKS:
        return {"question": record["question"], "options": list(option_texts(record).values()),
                "answer_type": SpatialQuery.Request.ANSWER_CHOICE}
    return {"question": record["question"], "answer_type": SpatialQuery.Request.ANSWER_NUMBER}


def _ask_questions(client, questions: list[dict]) -> int:
    """Asks one question per task through ~/query and one through ~/ask; returns how many."""
    from .evaluation.metrics import score_answer
    from .ros.image_conversion import stamp_to_ns
    from .srv import SpatialQuery

    seen, picked = set(), []
    for record in questions:                  # one question per task
        if record["question_type"] not in seen:
            seen.add(record["question_type"])
            picked.append(record)
    scores = []
    print(f"\n{len(picked)} questions through /vlm2_node/query:\n")
    for record in picked:
        response = client.query(**_request(record))
        print(f"[{record['question_type']}] {record['question']}")
        for option in record.get("options") or []:
            print(f"    {option}")
        if response.error_code != SpatialQuery.Response.OK:
            print(f"  error {response.error_code}: {response.error_message}\n")
            scores.append(0.0)
            continue
        predicted = response.choice if response.answer_type == SpatialQuery.Response.ANSWER_CHOICE else (
            f"{response.value:g}" if response.has_value else "")
        score = score_answer(record, predicted)
        scores.append(score)
        stamps = sorted(stamp_to_ns(s) / 1e9 for s in response.evidence_stamps)
        where = f"{len(stamps)} frames, t={stamps[0]:.1f}..{stamps[-1]:.1f} s" if stamps else "none"
        print(f"  answer: {response.answer!r} -> {predicted or '(unparsed)'}   ground truth: {record['ground_truth']}"
              f"   score {score:.2f}")
        print(f"  confidence {response.confidence:.2f}, latency {1000 * response.latency_s:.0f} ms, "
              f"evidence: {where} ({', '.join(sorted(set(response.evidence_memory)))})\n")
    print(f"mean score over {len(scores)} tasks: {sum(scores) / len(scores):.3f} "
          f"(VSI-Bench metrics: accuracy for multiple choice, MRA for numbers)")

    record = picked[0]
    outcome = client.ask(**_request(record))
    stages = " -> ".join(f.stage for f in outcome.feedback)
    print(f"\n/vlm2_node/ask: {record['question']!r}\n  stages: {stages}; answer {outcome.result.answer!r} "
          f"(error code {outcome.result.error_code})")
    return len(picked) + 1


STATUS_FIELDS = ("lifecycle_state", "model_preset", "weights", "device", "dtype", "memory_mode",
                 "frames_received", "frames_ingested", "frames_dropped", "working_memory_size",
                 "working_memory_capacity", "episodic_memory_size", "episodic_memory_capacity",
                 "episodic_replacements", "mean_ingest_ms", "ingest_rate_hz", "queries_answered", "queries_failed")


def _print_status(status) -> None:
    print("\n/vlm2_node/memory_status:")
    for name in STATUS_FIELDS:
        value = getattr(status, name)
        print(f"  {name}: {value:.1f}" if isinstance(value, float) else f"  {name}: {value}")
    if status.weights.startswith("untrained"):
        print("note: no trained checkpoint is installed for this preset; the answers come from untrained "
              "weights and show the plumbing, not spatial skill")


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"
