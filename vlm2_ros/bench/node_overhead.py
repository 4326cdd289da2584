"""Node overhead: frames/s through vlm2_node (publisher -> DDS -> node callbacks, conversion,
ingest queue -> engine) over frames/s of the engine alone on the same frames, in one run.

The node gives the model all cores but one (model.threads: the callbacks and DDS need a core);
node_over_engine_fps_ratio compares it with the engine alone on the same thread count, the
overhead of the ROS plumbing. node_over_engine_all_cores_fps_ratio compares it with the engine
alone using every core, what running inside a node costs in total.

The engine alone ingests the frames back to back in this process. Then a node process (same
preset and weights, no rate cap, a queue that holds every frame, reliable camera QoS so the
comparison counts no transport loss) receives them from a publisher in this process, which
sends as fast as DDS accepts; the node's rate is frames over the time from the first publish
to the status reporting the last one ingested. Both warm up on a few frames first.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

WARMUP = 10


def engine_fps(engine, frames: list[np.ndarray], stamp0: int) -> float:
    for i in range(WARMUP):
        engine.ingest(frames[i % len(frames)], stamp0 + i)
    t0 = time.perf_counter()
    for i, frame in enumerate(frames):
        engine.ingest(frame, stamp0 + WARMUP + i)
    return len(frames) / (time.perf_counter() - t0)


def node_fps(frames: list[np.ndarray], preset: str, checkpoint_dir: str | None, workdir: Path,
             domain_id: int, timeout_s: float = 600.0) -> tuple[float, dict]:
    import rclpy

    from ..ros.node_client import CameraPublisher, NodeClient, start_node_process, stop_node_process

    n = len(frames)
    params = {"model.preset": preset, "model.checkpoint_dir": checkpoint_dir or "", "ingest.rate_hz": 0.0,
              "ingest.queue_size": min(1000, n + WARMUP), "ingest.qos_reliability": "reliable",
              "ingest.qos_depth": min(1000, n + WARMUP), "camera_names": ["bench"],
              "status_period_s": 0.05, "ingest.no_image_warning_s": 0.0}
    log = workdir / "node.log"
    process = start_node_process(params, log_path=log, env={"ROS_DOMAIN_ID": str(domain_id)})
    rclpy.init(domain_id=domain_id)
    client = NodeClient()
    try:
        client.wait_for_node(timeout_s=120)
        camera = CameraPublisher(client.node, "bench", depth=n + WARMUP)   # the whole burst, unacknowledged
        camera.wait_for_subscribers()
        for i in range(WARMUP):
            camera.publish(frames[i % n], 1_000_000_000 + i)
        client.wait_for_status(lambda s: s.frames_ingested == WARMUP, timeout_s=120)
        t0 = time.perf_counter()
        for i, frame in enumerate(frames):
            camera.publish(frame, 2_000_000_000 + i)
        publish_s = time.perf_counter() - t0
        status = client.wait_for_status(lambda s: s.frames_ingested + s.frames_dropped >= n + WARMUP, timeout_s=timeout_s)
        elapsed = time.perf_counter() - t0
        counts = {"node_frames_received": status.frames_received - WARMUP,
                  "node_frames_ingested": status.frames_ingested - WARMUP,
                  "node_frames_dropped": status.frames_dropped,
                  # where the time goes: the engine's own time per frame inside the node (vs
                  # 1000 / engine_fps alone) and how long this process spent publishing
                  "node_mean_engine_ms": round(status.mean_ingest_ms, 2), "publish_seconds": round(publish_s, 2)}
        return (status.frames_ingested - WARMUP) / elapsed, counts
    except Exception as e:
        raise RuntimeError(f"{e}\n--- node log ---\n{log.read_text(errors='replace')[-3000:]}") from e
    finally:
        client.close()
        rclpy.try_shutdown()
        stop_node_process(process)


def run_node_overhead(frames: int = 300, width: int = 640, height: int = 480, preset: str = "tiny",
                      checkpoint_dir: str | None = None) -> dict:
    from ..engine.engine import SpatialMemoryEngine
    from .fixed_cost import stream_frames

    clip = stream_frames(height, width, min(frames, 60))
    sequence = [clip[i % len(clip)] for i in range(frames)]
    import torch

    from ..ros.parameters import default_model_threads

    all_threads, node_threads = torch.get_num_threads(), default_model_threads()
    engine = SpatialMemoryEngine.from_preset(preset, checkpoint_dir=checkpoint_dir)
    fps_engine_all = engine_fps(engine, sequence, 1_000_000_000)
    torch.set_num_threads(node_threads)
    engine.reset()
    fps_engine = engine_fps(engine, sequence, 1_000_000_000)
    torch.set_num_threads(all_threads)
    del engine
    with tempfile.TemporaryDirectory(prefix="vlm2-node-overhead-") as tmp:
        fps_node, counts = node_fps(sequence, preset, checkpoint_dir, Path(tmp),
                                    domain_id=int(os.environ.get("ROS_DOMAIN_ID", 60 + os.getpid() % 40)))
    return {"frames": frames, "image": f"{width}x{height}", "preset": preset, "cpu_cores": os.cpu_count(),
            "model_threads": node_threads, "engine_fps": round(fps_engine, 2), "node_fps": round(fps_node, 2),
            "node_over_engine_fps_ratio": round(fps_node / fps_engine, 3),
            "all_threads": all_threads, "engine_all_cores_fps": round(fps_engine_all, 2),
            "node_over_engine_all_cores_fps_ratio": round(fps_node / fps_engine_all, 3), **counts}
