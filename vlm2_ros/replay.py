"""`vlm2 replay BAG`: feed a rosbag2 episode to the engine and answer questions about it.

Offline mode (default) reads the bag directly (no ROS graph) and ingests every image as fast as
the engine goes, then answers questions given on the command line or in a JSON Lines file (one
object per line with "question", optional "options" and "ground_truth": the synthetic world's
questions file next to its bags has this form). Publish mode (`--publish`) plays the bag onto
ROS topics with /clock for a running node instead (see vlm2_ros/ros/bag_player.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from .atomic_io import write_bytes_atomic, write_json_atomic
from .bag_stream import BagError, count_images, iter_frames, open_bag, resolve_topics
from .evaluation.predictors import format_prompt


def read_questions(path: Path) -> list[dict]:
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not valid JSON ({e})") from e
        if not isinstance(record, dict) or not isinstance(record.get("question"), str):
            raise ValueError(f"{path}:{number}: each line must be an object with a 'question' string")
        records.append(record)
    return records


def register(subparsers) -> None:
    p = subparsers.add_parser("replay", help="replay a rosbag2 episode into the engine (or onto ROS topics)")
    p.add_argument("bag", type=Path, help="rosbag2 directory or .mcap / .db3 file")
    p.add_argument("--questions", type=Path, help="JSON Lines questions file")
    p.add_argument("--question", action="append", default=[], help="a question (repeatable)")
    p.add_argument("--publish", action="store_true", help="play onto ROS topics with /clock instead")
    p.add_argument("--rate", type=float, default=1.0, help="publish mode: playback speed (0 = as fast as possible)")
    p.add_argument("--remap", action="append", default=[], metavar="FROM:=TO", help="publish mode: topic remap")
    p.add_argument("--wait-for-subscribers", type=float, default=5.0, metavar="SECONDS",
                   help="publish mode: wait this long at most for a subscriber before playing")
    p.add_argument("--image-topic", help="image topic (default: the bag's first Image, else CompressedImage)")
    p.add_argument("--camera-info-topic", help="camera info topic (default: by type)")
    p.add_argument("--pose-topic", help="PoseStamped / Odometry topic (default: by type)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    p.add_argument("--answers", type=Path, help="write every answer as JSON Lines here")
    p.add_argument("--json", type=Path, help="write a flat summary here")
    p.set_defaults(func=replay_command)


def replay_command(args: argparse.Namespace) -> int:
    if args.publish:
        from .ros.bag_player import play_bag  # needs rclpy: imported only in publish mode
        return play_bag(args.bag, rate=args.rate, remaps=args.remap, wait_for_subscribers_s=args.wait_for_subscribers)
    try:
        records = read_questions(args.questions) if args.questions else []
        records += [{"question": q} for q in args.question]
        summary, answers = replay_offline(args, records)
    except (BagError, ValueError) as e:
        print(f"vlm2 replay: {e}", file=sys.stderr)
        return 2
    if args.answers:
        write_bytes_atomic(args.answers, "".join(json.dumps(a) + "\n" for a in answers).encode())
    if args.json:
        write_json_atomic(args.json, summary)
    return 0


def replay_offline(args: argparse.Namespace, records: list[dict]) -> tuple[dict, list[dict]]:
    from .engine.engine import IngestError, SpatialMemoryEngine

    reader = open_bag(args.bag)
    try:
        topics = resolve_topics(reader, args.image_topic, args.camera_info_topic, args.pose_topic)
        engine = SpatialMemoryEngine.from_preset(args.preset, checkpoint_dir=args.checkpoint_dir,
                                                 device=args.device, dtype=args.dtype)
        print(f"bag {args.bag}: images on {topics.image}, camera info on {topics.camera_info}, "
              f"pose on {topics.pose}; model {engine.status().preset} ({engine.status().weights})")
        errors: list[str] = []
        rejected = 0
        started = time.perf_counter()
        for frame in tqdm(iter_frames(reader, topics, errors), total=count_images(reader, topics),
                          desc="replay", unit="frame"):
            try:
                engine.ingest(frame.image, frame.stamp_ns, frame.camera_info, frame.pose)
            except IngestError as e:
                rejected += 1
                errors.append(f"{topics.image} @ {frame.stamp_ns} ns: {e}")
        ingest_s = time.perf_counter() - started
    finally:
        reader.close()
    for message in errors[:5]:
        print(f"skipped: {message}", file=sys.stderr)
    status = engine.status()
    answers = []
    for record in records:
        text = format_prompt(record)
        answer = engine.query(text)
        row = {"question": text, "answer": answer.text, "kind": answer.kind, "value": answer.value,
               "choice": answer.choice, "confidence": answer.confidence, "latency_s": answer.latency_s,
               "evidence_stamps_ns": [e.stamp_ns for e in answer.evidence],
               "ground_truth": record.get("ground_truth"), "question_type": record.get("question_type")}
        answers.append(row)
        print(f"\nQ: {text}\nA: {answer.text!r}  (ground truth: {record.get('ground_truth', 'n/a')}; "
              f"{1000 * answer.latency_s:.0f} ms; evidence at "
              f"{', '.join(f'{e.stamp_ns / 1e9:.2f}s' for e in answer.evidence)})")
    summary = {"bag": str(args.bag), "preset": status.preset, "weights": status.weights,
               "frames_ingested": status.frames_ingested, "frames_skipped": len(errors),
               "frames_rejected": rejected, "ingest_seconds": ingest_s,
               "ingest_fps": status.frames_ingested / ingest_s if ingest_s else 0.0,
               "questions": len(answers),
               "mean_query_latency_ms": 1000 * sum(a["latency_s"] for a in answers) / len(answers) if answers else 0.0}
    print(f"\ningested {status.frames_ingested} frames ({len(errors)} skipped) at {summary['ingest_fps']:.1f} frames/s; "
          f"working {status.working_entries}/{status.working_capacity}, "
          f"episodic {status.episodic_entries}/{status.episodic_capacity}")
    return summary, answers
