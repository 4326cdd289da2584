"""Flood and soak: several full-rate cameras into vlm2_node while many clients query it.

The cameras publish from their own process (so the bench process's threads cannot slow them);
the clients are threads here, each its own ROS node, each asking a question, waiting for the
answer (or a clean error code), pausing briefly, and asking again. The node's RSS and CPU are
sampled every second. A node that exits during the run counts as a crash and is restarted, so
a crash costs the rest of the run nothing but is always reported.

On a small machine the node cannot keep up with 4 x 30 Hz at 640x480: that is the point. Every
frame it receives must be ingested or dropped *and counted* (frames_unaccounted = 0), every
query must get an answer or an error code (queries_no_response = 0), and memory must stay flat.
"""
from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .node_process import ERROR_CODE_NAMES, NodeProcess, RssSampler

QUESTIONS = (
    "How many chairs are in this room?",
    "What is the distance between the sofa and the table (in meters)?",
    "How big is this room (in square meters)?",
    "Which is closer to the bed, the lamp or the tv?",
    "What is the length of the longest dimension of the table (in centimeters)?",
)
# Error codes that are a clean, documented outcome under load (INTERNAL_ERROR is a bug).
CLEAN_ERRORS = {"EMPTY_QUESTION", "QUESTION_TOO_LONG", "INVALID_REQUEST", "NOT_READY", "MEMORY_EMPTY",
                "TIMEOUT", "BUSY", "CANCELED"}
STALL_LOG_LINES = 120          # of the node's log when its queue does not drain: the stacks SIGUSR1 dumps
NO_RESPONSE = "NO_RESPONSE"      # the call itself failed: no answer and no error code came back


@dataclass(frozen=True)
class SoakConfig:
    minutes: float = 10.0
    cameras: int = 4
    rate_hz: float = 30.0
    width: int = 640
    height: int = 480
    clients: int = 8
    query_timeout_s: float = 10.0       # asked of the node; the call itself waits 15 s longer
    think_s: float = 0.2                # a client's pause between an answer and its next question
    queue_size: int = 4
    preset: str = "tiny"
    checkpoint_dir: str = ""
    seed: int = 0


def publish_cameras(domain_id: int, cameras: int, rate_hz: float, width: int, height: int, seed: int) -> int:
    """Camera process body: `cameras` rgb8 streams at rate_hz (plus camera info) until SIGTERM;
    returns how many images it published. Ticks that fall behind are skipped, not bunched."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    from ..camera import CameraIntrinsics
    from ..ros.node_client import CameraPublisher

    # rclpy's own SIGTERM handler would shut the context down under a publish in progress (which
    # then raises, and the count is lost); the loop stops at its next tick instead.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    rclpy.init(domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("soak_cameras")
    published = 0
    try:
        publishers = [CameraPublisher(node, f"cam{i}", frame_id=f"cam{i}_optical_frame") for i in range(cameras)]
        for publisher in publishers:
            publisher.wait_for_subscribers(timeout_s=120)
        rng = np.random.default_rng(seed)
        frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(4)]
        intrinsics = CameraIntrinsics(0.8 * width, 0.8 * width, width / 2, height / 2, width, height)
        period, tick, k = 1.0 / rate_hz, time.monotonic(), 0
        while not stop.is_set():
            for i, publisher in enumerate(publishers):
                publisher.publish(frames[(k + i) % len(frames)], time.time_ns(), intrinsics)
                published += 1
            k += 1
            tick = max(tick + period, time.monotonic() - period)
            stop.wait(max(0.0, tick - time.monotonic()))
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return published


class _Cameras:
    """The camera process (`python -m vlm2_ros.reliability.soak ...`), stopped with SIGTERM."""

    def __init__(self, config: SoakConfig, domain_id: int, log_path: Path):
        command = [sys.executable, "-m", "vlm2_ros.reliability.soak", str(domain_id), str(config.cameras),
                   str(config.rate_hz), str(config.width), str(config.height), str(config.seed)]
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log)
        self.published: int | None = None

    def stop(self) -> int:
        """Images published (0 when the process failed: see its log); safe to call twice."""
        if self.published is None:
            self.process.terminate()
            try:
                out, _ = self.process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                out, _ = self.process.communicate()
            lines = out.decode().split()
            self.published = int(lines[-1]) if lines and lines[-1].isdigit() else 0
        return self.published


def node_params(config: SoakConfig) -> dict:
    params = {
        "model.preset": config.preset, "model.checkpoint_dir": config.checkpoint_dir,
        "camera_names": [f"cam{i}" for i in range(config.cameras)],
        "ingest.rate_hz": 0.0,                  # no cap: the bounded queue is what is exercised
        "ingest.queue_size": config.queue_size,
        "ingest.qos_reliability": "reliable",   # losses then happen (and are counted) in the node
        "ingest.no_image_warning_s": 0.0,
        "status_period_s": 0.5,
        "snapshot.dir": "",
    }
    for i in range(config.cameras):
        params[f"cameras.cam{i}.image_topic"] = f"cam{i}/image_raw"
        params[f"cameras.cam{i}.camera_info_topic"] = f"cam{i}/camera_info"
    return params


class _Clients:
    """`count` client threads asking questions until stopped; every call's outcome is recorded."""

    def __init__(self, count: int, config: SoakConfig, started: float):
        from ..ros.node_client import NodeClient
        self.clients = [NodeClient(name=f"soak_client_{i}") for i in range(count)]
        self.records: list[tuple[float, float, str]] = []     # (sent at s, latency s, outcome)
        self._config, self._started = config, started
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._ask, args=(client, i), name=f"soak-client-{i}", daemon=True)
                         for i, client in enumerate(self.clients)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Let every in-flight call finish (bounded by its timeout), then close the clients."""
        self._stop.set()
        for thread in self._threads:
            thread.join()
        while self.clients:
            self.clients.pop().close()

    def _ask(self, client, index: int) -> None:
        from ..ros.node_client import NodeClientError
        rng = np.random.default_rng(self._config.seed + 1000 + index)
        timeout = self._config.query_timeout_s
        while not self._stop.is_set():
            question = QUESTIONS[int(rng.integers(len(QUESTIONS)))]
            sent = time.monotonic()
            try:
                response = client.query(question, timeout_s=timeout, call_timeout_s=timeout + 15.0)
                outcome = ERROR_CODE_NAMES.get(response.error_code, f"CODE_{response.error_code}")
            except NodeClientError:
                outcome = NO_RESPONSE
            with self._lock:
                self.records.append((sent - self._started, time.monotonic() - sent, outcome))
            self._stop.wait(self._config.think_s)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def longest_ingest_stall_s(curve: list[tuple[float, int, int, int]]) -> float:
    """The longest time frames kept arriving while none was ingested: a stalled worker shows here
    even when drops are counted correctly."""
    longest, since = 0.0, None              # (t, received, ingested) when ingested last changed
    for t, received, ingested, _ in curve:
        if since is None or ingested != since[2]:
            since = (t, received, ingested)
        elif received > since[1]:
            longest = max(longest, t - since[0])
    return longest


def _status_fields(status) -> dict:
    names = ("frames_received", "frames_ingested", "frames_dropped", "frames_dropped_queue_full",
             "frames_dropped_rate_limit", "frames_dropped_bad_image", "frames_dropped_rejected", "queue_depth",
             "working_memory_size", "episodic_memory_size", "queries_answered", "queries_failed")
    return {name: int(getattr(status, name)) for name in names}


def run_soak(config: SoakConfig, workdir: Path, domain_id: int, progress: bool = True) -> dict:
    """Run the soak; returns {"result": flat figures, "curves": samples for the plot}."""
    import rclpy

    from ..ros.node_client import NodeClient, NodeClientError

    duration_s = config.minutes * 60.0
    node = NodeProcess(node_params(config), Path(workdir), domain_id, name="soak-node")
    rclpy.init(domain_id=domain_id)
    monitor = clients = cameras = None
    crashes, restarts_s, status_curve = 0, [], []
    stall: dict = {}                    # evidence, only when the queue did not drain
    try:
        monitor = NodeClient(name="soak_monitor")
        node.start()
        monitor.wait_for_node(timeout_s=180)
        cameras = _Cameras(config, domain_id, Path(workdir) / "soak-cameras.log")
        started = time.monotonic()
        clients = _Clients(config.clients, config, started)
        clients.start()
        with RssSampler(lambda: node.pid) as rss, \
                tqdm(total=round(duration_s), desc="soak", unit="s", disable=not progress) as bar:
            while (elapsed := time.monotonic() - started) < duration_s:
                time.sleep(min(1.0, duration_s - elapsed))
                if not node.alive():
                    crashes += 1          # exited on its own: restart and carry on, counted
                    restart_at = time.monotonic()
                    node.start()
                    monitor.wait_for_node(timeout_s=180)
                    restarts_s.append(time.monotonic() - restart_at)
                status = monitor.latest_status()
                if status is not None:
                    status_curve.append((time.monotonic() - started, status.frames_received,
                                         status.frames_ingested, status.frames_dropped))
                bar.update(round(time.monotonic() - started) - bar.n)
            published = cameras.stop()
            clients.stop()
            # every frame received is ingested or dropped, and counted, once the queue drains
            drain_started, drain_curve = time.monotonic(), []

            def drained(s) -> bool:
                point = (round(time.monotonic() - drain_started, 2), s.frames_received, s.frames_ingested,
                         s.frames_dropped, s.queue_depth, round(s.mean_ingest_ms, 1))
                if not drain_curve or drain_curve[-1][1:] != point[1:]:
                    drain_curve.append(point)       # each change: frames still arriving, or the worker crawling
                return s.queue_depth == 0 and s.frames_received == s.frames_ingested + s.frames_dropped

            try:
                final = monitor.wait_for_status(drained, timeout_s=60)
                drain_s = time.monotonic() - drain_started
            except NodeClientError:        # stalled: have the node log every thread's stack
                final, drain_s = monitor.latest_status(), -1.0
                stall = {"status_age_s": monitor.status_age_s(), "monitor_spin_errors": list(monitor.spin_errors),
                         # (s after the cameras stopped, received, ingested, dropped, queue depth, mean ingest ms)
                         "drain_curve": drain_curve[-40:]}
                if node.alive():
                    os.kill(node.pid, signal.SIGUSR1)
                    time.sleep(1.0)
                stall["node_log_tail"] = "\n".join(node.log().splitlines()[-STALL_LOG_LINES:])
        run_s = time.monotonic() - started
        crashed_at_end = not node.alive()
        crashes += crashed_at_end
        exit_code = node.stop()
    finally:
        if cameras is not None:
            cameras.stop()
        if clients is not None:
            clients.stop()
        if node.alive():
            node.kill()
        if monitor is not None:
            monitor.close()
        rclpy.try_shutdown()

    status = _status_fields(final)
    records = clients.records
    outcomes = Counter(outcome for _, _, outcome in records)
    ok_latencies = [latency for _, latency, outcome in records if outcome == "OK"]
    all_latencies = [latency for _, latency, outcome in records if outcome != NO_RESPONSE]
    samples = rss.samples
    warm_at = min(max(10.0, 0.2 * duration_s), 0.5 * duration_s)
    warm = [mb for t, mb, _ in samples if t >= warm_at] or [mb for _, mb, _ in samples]
    after_warm = [(t, mb) for t, mb, _ in samples if t >= warm_at]
    slope = (float(np.polyfit(*zip(*after_warm), 1)[0]) * 60.0) if len(after_warm) >= 3 else 0.0
    result = {
        **{k: v for k, v in asdict(config).items() if k not in ("checkpoint_dir",)},
        "duration_s": run_s,
        "frames_published": published,
        "publish_rate_hz": published / run_s,
        **status,
        "frames_unaccounted": status["frames_received"] - status["frames_ingested"] - status["frames_dropped"]
                              - status["queue_depth"],
        "frames_not_delivered": published - status["frames_received"],
        "ingest_rate_hz": status["frames_ingested"] / run_s,
        "ingest_longest_stall_s": longest_ingest_stall_s(status_curve),
        "queue_drain_s": drain_s,           # -1: not drained 60 s after the cameras stopped (see stall_*)
        "queries_sent": len(records),
        "queries_ok": outcomes["OK"],
        "queries_answered_or_clean_error": sum(n for code, n in outcomes.items() if code == "OK" or code in CLEAN_ERRORS),
        "queries_busy": outcomes["BUSY"],
        "queries_timeout": outcomes["TIMEOUT"],
        "queries_internal_error": outcomes["INTERNAL_ERROR"],
        "queries_no_response": outcomes[NO_RESPONSE],
        "query_outcomes": ", ".join(f"{code}: {n}" for code, n in sorted(outcomes.items())),
        "query_latency_ms_p50": 1000 * _percentile(ok_latencies, 50),
        "query_latency_ms_p90": 1000 * _percentile(ok_latencies, 90),
        "query_latency_ms_p99": 1000 * _percentile(ok_latencies, 99),
        "query_latency_ms_max": 1000 * max(ok_latencies, default=float("nan")),
        "response_latency_ms_p50_all": 1000 * _percentile(all_latencies, 50),
        "response_latency_ms_p99_all": 1000 * _percentile(all_latencies, 99),
        "node_crashes": crashes,
        "node_restart_s_max": max(restarts_s, default=0.0),
        "node_exit_code": exit_code,
        "rss_samples": len(samples),
        "rss_start_mb": samples[0][1] if samples else float("nan"),
        "rss_after_warmup_mb": warm[0] if warm else float("nan"),
        "rss_end_mb": samples[-1][1] if samples else float("nan"),
        "rss_max_mb": max((mb for _, mb, _ in samples), default=float("nan")),
        "rss_growth_mb": (samples[-1][1] - warm[0]) if warm else float("nan"),
        "rss_slope_mb_per_min": slope,
        "node_cpu_percent_mean": statistics.fmean(cpu for _, _, cpu in samples) if samples else float("nan"),
        **{f"stall_{name}": value for name, value in stall.items()},
    }
    curves = {"rss": [(t, mb) for t, mb, _ in samples], "queries": records, "status": status_curve,
              "warmup_s": warm_at}
    return {"result": result, "curves": curves}


def plot_soak(curves: dict, result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    if curves["rss"]:
        t, mb = zip(*curves["rss"])
        axes[0].plot(t, mb)
    axes[0].axvline(curves["warmup_s"], color="grey", linestyle=":", label="end of warm-up")
    axes[0].set(xlabel="s", ylabel="RSS (MiB)", title=f"node memory (growth after warm-up "
                                                       f"{result['rss_growth_mb']:+.1f} MiB)")
    axes[0].legend(fontsize=8)
    if curves["status"]:
        t, received, ingested, dropped = zip(*curves["status"])
        axes[1].plot(t, received, label="received")
        axes[1].plot(t, ingested, label="ingested")
        axes[1].plot(t, dropped, label="dropped (counted)")
    axes[1].set(xlabel="s", ylabel="frames", title=f"{result['cameras']} x {result['rate_hz']:g} Hz "
                                                   f"{result['width']}x{result['height']} into the node")
    axes[1].legend(fontsize=8)
    by_outcome: dict[str, list] = {}
    for sent, latency, outcome in curves["queries"]:
        by_outcome.setdefault(outcome, []).append((sent, 1000 * latency))
    for outcome, points in sorted(by_outcome.items()):
        x, y = zip(*points)
        axes[2].scatter(x, y, s=6, label=f"{outcome} ({len(points)})")
    axes[2].set(xlabel="sent at (s)", ylabel="latency (ms)", yscale="log",
                title=f"{result['clients']} clients: p50 {result['query_latency_ms_p50']:.0f} ms, "
                      f"p99 {result['query_latency_ms_p99']:.0f} ms (answered)")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":   # the camera process: DOMAIN_ID CAMERAS RATE_HZ WIDTH HEIGHT SEED
    domain, count, rate, width, height, seed = sys.argv[1:7]
    print(publish_cameras(int(domain), int(count), float(rate), int(width), int(height), int(seed)), flush=True)
