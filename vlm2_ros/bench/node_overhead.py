"""Node overhead: frames/s through vlm2_node (publisher -> DDS -> node callbacks, conversion and
resize, ingest queue -> engine) over frames/s of the engine alone on the same frames, in one run.

The node gives the model all cores but one (model.threads: the callbacks and DDS need a core);
node_over_engine_fps_ratio compares it with the engine alone on the same thread count, the
overhead of the ROS plumbing. node_over_engine_all_cores_fps_ratio compares it with the engine
alone using every core, what running inside a node costs in total.

The speed of a shared 2-core VM drifts by 10-20 % over tens of seconds, as much as the overhead
being measured, so the two sides alternate: in each of `rounds` rounds the engine alone ingests
its share of the frames back to back in this process (resize and model in one thread), then a
node process (started once; same preset and weights, no rate cap, a queue that holds the whole
round, reliable camera QoS so no frame is lost in transport) receives the same frames from a
publisher in this process, which sends them as fast as DDS accepts. The node resizes each frame
in its image callback and its ingest worker runs the model; its time for a round runs from the
first publish to the moment the node ingested the round's last frame (the status message's
last_ingest_stamp, on the same system clock). The node keeps its default 1 Hz status, so the
measurement adds no load to it. Each side's frames/s is all its frames over all its time. Both
warm up on a few frames first.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

WARMUP = 10


def engine_seconds(engine, frames: list[np.ndarray], stamp0: int) -> float:
    """Seconds the engine takes to ingest `frames` back to back, one at a time."""
    t0 = time.perf_counter()
    for i, frame in enumerate(frames):
        engine.ingest(frame, stamp0 + i)
    return time.perf_counter() - t0


def engine_fps(engine, frames: list[np.ndarray], stamp0: int) -> float:
    engine_seconds(engine, [frames[i % len(frames)] for i in range(WARMUP)], stamp0)
    return len(frames) / engine_seconds(engine, frames, stamp0 + WARMUP)


class NodeUnderTest:
    """A vlm2_node process fed by a camera publisher in this process."""

    def __init__(self, preset: str, checkpoint_dir: str | None, round_frames: int, workdir: Path, domain_id: int):
        import rclpy

        from ..ros.node_client import CameraPublisher, NodeClient, start_node_process

        depth = min(1000, round_frames + WARMUP)
        params = {"model.preset": preset, "model.checkpoint_dir": checkpoint_dir or "", "ingest.rate_hz": 0.0,
                  "ingest.queue_size": depth, "ingest.qos_reliability": "reliable", "ingest.qos_depth": depth,
                  "camera_names": ["bench"], "ingest.no_image_warning_s": 0.0}
        self.log = workdir / "node.log"
        self.process = start_node_process(params, log_path=self.log, env={"ROS_DOMAIN_ID": str(domain_id)})
        rclpy.init(domain_id=domain_id)
        self.client = NodeClient()
        self.stamp = 1_000_000_000
        self.publish_seconds = 0.0
        try:
            self.client.wait_for_node(timeout_s=120)
            self.camera = CameraPublisher(self.client.node, "bench", depth=depth)   # a whole round, unacknowledged
            self.camera.wait_for_subscribers()
        except Exception as e:
            self.close()
            raise self.failure(e) from e

    def failure(self, e: Exception) -> RuntimeError:
        return RuntimeError(f"{e}\n--- node log ---\n{self.log.read_text(errors='replace')[-3000:]}")

    def ingest_seconds(self, frames: list[np.ndarray], timeout_s: float = 600.0):
        """Publish `frames` as fast as DDS takes them; seconds until the node has ingested them all,
        and the node's status then."""
        from ..ros.image_conversion import stamp_to_ns

        try:
            before = self.client.latest_status()
            done = (before.frames_ingested + before.frames_dropped if before else 0) + len(frames)
            t0_ns = time.time_ns()              # the node's clock is system time (no use_sim_time)
            for frame in frames:
                self.camera.publish(frame, self.stamp)
                self.stamp += 1
            self.publish_seconds += (time.time_ns() - t0_ns) / 1e9
            status = self.client.wait_for_status(lambda s: s.frames_ingested + s.frames_dropped >= done,
                                                 timeout_s=timeout_s)
            return (stamp_to_ns(status.last_ingest_stamp) - t0_ns) / 1e9, status
        except Exception as e:
            raise self.failure(e) from e

    def close(self) -> None:
        import rclpy

        from ..ros.node_client import stop_node_process

        self.client.close()
        rclpy.try_shutdown()
        stop_node_process(self.process)


def run_node_overhead(frames: int = 300, width: int = 640, height: int = 480, preset: str = "tiny",
                      checkpoint_dir: str | None = None, rounds: int = 3) -> dict:
    import torch

    from ..engine.engine import SpatialMemoryEngine
    from ..ros.parameters import default_model_threads
    from .fixed_cost import stream_frames

    if not 1 <= rounds <= frames:
        raise ValueError(f"rounds must be in [1, frames], got {rounds}")
    clip = stream_frames(height, width, min(frames, 60))
    sequence = [clip[i % len(clip)] for i in range(frames)]
    shares = [sequence[r * frames // rounds:(r + 1) * frames // rounds] for r in range(rounds)]
    all_threads, node_threads = torch.get_num_threads(), default_model_threads()
    engine = SpatialMemoryEngine.from_preset(preset, checkpoint_dir=checkpoint_dir)
    fps_engine_all = engine_fps(engine, sequence, 1_000_000_000)
    with tempfile.TemporaryDirectory(prefix="vlm2-node-overhead-") as tmp:
        node = NodeUnderTest(preset, checkpoint_dir, max(len(s) for s in shares), Path(tmp),
                             domain_id=int(os.environ.get("ROS_DOMAIN_ID", 60 + os.getpid() % 40)))
        try:
            node.ingest_seconds([clip[i % len(clip)] for i in range(WARMUP)])
            torch.set_num_threads(node_threads)
            engine.reset()
            engine_seconds(engine, [clip[i % len(clip)] for i in range(WARMUP)], 1_000_000_000)
            engine_s, node_s, per_round = 0.0, 0.0, []
            for share in shares:
                e = engine_seconds(engine, share, engine.status().last_stamp_ns + 1)
                n, status = node.ingest_seconds(share)
                engine_s, node_s = engine_s + e, node_s + n
                per_round.append(round((len(share) / n) / (len(share) / e), 3))
        finally:
            torch.set_num_threads(all_threads)
            node.close()
    fps_engine, fps_node = frames / engine_s, (status.frames_ingested - WARMUP) / node_s
    return {"frames": frames, "rounds": rounds, "image": f"{width}x{height}", "preset": preset,
            "cpu_cores": os.cpu_count(), "model_threads": node_threads,
            "engine_fps": round(fps_engine, 2), "node_fps": round(fps_node, 2),
            "node_over_engine_fps_ratio": round(fps_node / fps_engine, 3),
            "node_over_engine_fps_ratio_per_round": per_round,
            "all_threads": all_threads, "engine_all_cores_fps": round(fps_engine_all, 2),
            "node_over_engine_all_cores_fps_ratio": round(fps_node / fps_engine_all, 3),
            "node_frames_received": status.frames_received - WARMUP,
            "node_frames_ingested": status.frames_ingested - WARMUP, "node_frames_dropped": status.frames_dropped,
            "publish_seconds": round(node.publish_seconds, 2)}
