"""Crash safety of the memory: SIGKILL at random moments, restart, check what was loaded.

Node level (`run_crash_loop`): vlm2_node runs with a snapshot directory and a short snapshot
period while a camera streams into it; it is killed with SIGKILL (no clean-up, like a power cut of
the process) at a seeded random moment, cycling through three kinds of moment: any time while
running, the instant a snapshot write is seen in progress (a temporary file in the directory),
and during start-up (while it loads). After each kill the snapshot directory is read as the node
will read it; the restarted node must load exactly that snapshot (same frame count and memory
sizes, from its log), never an older one than it last reported writing, and carry on ingesting.
A restart may find no snapshot only if none was ever completed.

Engine level (`run_writer_kills`): a process writing snapshots in a tight loop is killed the same
ways; the snapshot read back must always be the last or the next-to-acknowledged write.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .node_process import NodeProcess

KILL_MOMENTS = ("running", "snapshot_write", "startup")
_RESTORED = re.compile(r"memory restored from .*: (\d+) frames, working (\d+)/\d+, episodic (\d+)/\d+")
_WRITTEN = re.compile(r"(?:periodic|requested|shutdown|cleanup) snapshot: (\d+) frames written")


@dataclass(frozen=True)
class SnapshotState:
    """A snapshot directory as a loader finds it."""
    valid: bool
    frames: int | None = None
    working: int | None = None
    episodic: int | None = None
    error: str = ""
    temp_files: int = 0                  # left by a write that was cut short
    tensor_files: int = 0                # more than 1: a write was cut short after its tensor file

    @property
    def memory(self) -> tuple[int | None, int | None, int | None]:
        return self.frames, self.working, self.episodic


def inspect_snapshot(directory: Path) -> SnapshotState:
    from ..engine.snapshot import INDEX_NAME, SnapshotError, read_snapshot
    directory = Path(directory)
    temps = len(list(directory.glob(".*.tmp"))) if directory.is_dir() else 0
    tensor_files = len(list(directory.glob("memory-*.safetensors"))) if directory.is_dir() else 0
    if not (directory / INDEX_NAME).exists():
        return SnapshotState(False, error="no snapshot", temp_files=temps, tensor_files=tensor_files)
    try:
        tensors, meta = read_snapshot(directory)
    except SnapshotError as exc:
        return SnapshotState(False, error=str(exc), temp_files=temps, tensor_files=tensor_files)
    return SnapshotState(True, meta.get("frames"), int(tensors["working.tokens"].shape[1]),
                         int(tensors["episodic.tokens"].shape[1]), temp_files=temps, tensor_files=tensor_files)


def _temp_files(directory: Path) -> set[Path]:
    return set(directory.glob(".*.tmp")) if directory.is_dir() else set()


def _wait_for_write(directory: Path, timeout_s: float) -> bool:
    """Poll (every ~1 ms) until a snapshot write is in progress; False when none started in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if directory.is_dir() and any(directory.glob(".*.tmp")):
            return True
        time.sleep(0.001)
    return False


class _StreamThread:
    """A small camera stream (wall-clock stamps, so it continues across restarts) on a thread."""

    def __init__(self, node, rate_hz: float, seed: int):
        from ..camera import CameraIntrinsics
        from ..ros.node_client import CameraPublisher
        self._publisher = CameraPublisher(node, "camera")
        rng = np.random.default_rng(seed)
        self._frames = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(8)]
        self._intrinsics = CameraIntrinsics(100.0, 100.0, 64.0, 48.0, 128, 96)
        self._period = 1.0 / rate_hz
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="crash-loop-camera", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        k = 0
        while not self._stop.wait(self._period):
            self._publisher.publish(self._frames[k % len(self._frames)], time.time_ns(), self._intrinsics)
            k += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_crash_loop(kills: int, workdir: Path, domain_id: int, seed: int = 0, preset: str = "tiny",
                   checkpoint_dir: str = "", snapshot_period_s: float = 0.2, progress: bool = True) -> dict:
    """Kill vlm2_node `kills` times; returns {"result": flat figures, "events": one dict per kill}."""
    import rclpy

    from ..ros.node_client import NodeClient, NodeClientError

    workdir = Path(workdir)
    snapshot_dir = workdir / "snapshot"
    params = {"model.preset": preset, "model.checkpoint_dir": checkpoint_dir, "snapshot.dir": str(snapshot_dir),
              "snapshot.period_s": snapshot_period_s, "ingest.rate_hz": 0.0, "ingest.queue_size": 8,
              "status_period_s": 0.2,
              "ingest.no_image_warning_s": 3.0}   # a restart that receives nothing says why in its log
    node = NodeProcess(params, workdir, domain_id, name="crash-node")
    rng = np.random.default_rng(seed)
    events: list[dict] = []
    counts = dict(restarts=0, restarts_with_valid_memory=0, restarts_before_first_snapshot=0,
                  restarts_continued=0, snapshots_lost=0, half_loaded=0, older_than_acknowledged=0)
    acknowledged = 0           # frames in the newest snapshot the node reported written
    ever_completed = False

    rclpy.init(domain_id=domain_id)
    client = stream = None
    try:
        client = NodeClient(name="crash_loop_client")
        stream = _StreamThread(client.node, rate_hz=15.0, seed=seed)

        def check_start(expected: SnapshotState) -> dict:
            """Wait for the node started on `expected`; compare what it loaded; see it ingest."""
            client.statuses.clear()
            started = time.monotonic()
            client.wait_for_node(timeout_s=180)
            log = node.log()
            restored = _RESTORED.search(log)
            outcome = {"restart_s": time.monotonic() - started}
            counts["restarts"] += 1
            if expected.valid:
                loaded = tuple(int(v) for v in restored.groups()) if restored else None
                outcome["loaded"] = loaded
                if loaded == expected.memory:
                    counts["restarts_with_valid_memory"] += 1
                elif loaded is None:
                    counts["snapshots_lost"] += 1          # refused or not found
                else:
                    counts["half_loaded"] += 1             # loaded something else than the file holds
            elif not ever_completed and "no snapshot in" in log:
                counts["restarts_before_first_snapshot"] += 1
            try:
                client.wait_for_status(lambda s: s.frames_ingested > 0, timeout_s=30)
                counts["restarts_continued"] += 1
            except NodeClientError:              # stalled: note what arrived; have the node log its stacks
                status = client.latest_status()
                outcome["stalled_with_frames_received"] = status.frames_received if status else -1
                os.kill(node.pid, signal.SIGUSR1)
                time.sleep(1.0)
            return outcome

        node.start()
        client.wait_for_node(timeout_s=180)         # the first start (empty directory): not a restart
        expected, leftovers = inspect_snapshot(snapshot_dir), set()
        for k in tqdm(range(kills), desc="crash-loop", unit="kill", disable=not progress):
            moment = KILL_MOMENTS[k % len(KILL_MOMENTS)]
            event = {"kill": k + 1, "moment": moment}
            if moment == "startup":
                time.sleep(float(rng.uniform(0.3, 3.5)))   # the node takes ~4-6 s to load and activate
            elif k > 0:
                event.update(check_start(expected))
            if moment != "startup":
                time.sleep(float(rng.uniform(0.3, 2.0)))
                if moment == "snapshot_write":
                    event["write_seen"] = _wait_for_write(snapshot_dir, timeout_s=5.0)
            node.kill()
            for match in _WRITTEN.finditer(node.log()):
                acknowledged = int(match.group(1))
                ever_completed = True
            state = inspect_snapshot(snapshot_dir)
            ever_completed = ever_completed or state.valid
            if ever_completed and not state.valid:
                counts["snapshots_lost"] += 1
            if state.valid and state.frames < acknowledged:
                counts["older_than_acknowledged"] += 1
            event.update(valid_after_kill=state.valid, frames_on_disk=state.frames, error=state.error,
                         cut_short=bool(_temp_files(snapshot_dir) - leftovers) or state.tensor_files > 1)
            events.append(event)
            expected, leftovers = state, _temp_files(snapshot_dir)
            node.start()
        events.append({"kill": None, "moment": "final start", **check_start(expected)})
        exit_code = node.stop()
        final = inspect_snapshot(snapshot_dir)
    finally:
        if node.alive():
            node.kill()
        if stream is not None:
            stream.stop()
        if client is not None:
            client.close()
        rclpy.try_shutdown()

    restart_times = [e["restart_s"] for e in events if "restart_s" in e]
    result = {
        "kills": kills, "seed": seed, "snapshot_period_s": snapshot_period_s,
        "kills_during_startup": sum(e["moment"] == "startup" for e in events),
        "kills_while_running": sum(e["moment"] == "running" for e in events),
        "kills_at_snapshot_write": sum(e["moment"] == "snapshot_write" for e in events),
        "kills_that_cut_a_write_short": sum(bool(e.get("cut_short")) for e in events),
        **counts,
        "restart_s_median": float(np.median(restart_times)) if restart_times else float("nan"),
        "restart_s_max": max(restart_times, default=float("nan")),
        "frames_in_final_snapshot": final.frames if final.valid else -1,
        "final_snapshot_valid": final.valid,
        "stale_temp_files_at_end": final.temp_files,
        "final_exit_code": exit_code,
    }
    return {"result": result, "events": events}


# ----------------------------------------------------------------------------- engine level
def _writer(directory: Path, seed: int) -> None:
    """Writer process body: snapshots of ~8 MB in a loop, printing each completed count."""
    import torch

    from ..engine.snapshot import write_snapshot
    generator = torch.Generator().manual_seed(seed)
    tensors = {"a": torch.randn(2_000_000, generator=generator), "b": torch.arange(1000)}
    count = 0
    while True:
        count += 1
        tensors["b"][0] = count
        write_snapshot(directory, tensors, {"count": count})
        print(count, flush=True)


def run_writer_kills(kills: int, workdir: Path, seed: int = 0, progress: bool = True) -> dict:
    """SIGKILL a snapshot-writing process `kills` times (random moments and mid-write); after each
    kill the snapshot must read back, holding the last acknowledged write or the one after it."""
    from ..engine.snapshot import read_snapshot
    directory = Path(workdir) / "writer-snapshot"
    rng = np.random.default_rng(seed)
    lost = cut_short = mid_write_kills = not_cleaned = 0
    acknowledged, leftovers = 0, set()
    for k in tqdm(range(kills), desc="writer kills", unit="kill", disable=not progress):
        process = subprocess.Popen([sys.executable, "-m", "vlm2_ros.reliability.crash_loop", str(directory), str(k)],
                                   stdout=subprocess.PIPE, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
        reader.start()
        deadline = time.monotonic() + 120
        while not lines and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.01)
        # the first completed write removes what the previous kill left behind
        not_cleaned += len(leftovers & set(directory.glob(".*.tmp")))
        if k % 2:
            mid_write_kills += _wait_for_write(directory, timeout_s=5.0)
        else:
            time.sleep(float(rng.uniform(0.0, 0.3)))
        process.kill()
        process.wait()
        reader.join()
        acknowledged = int(lines[-1]) if lines else acknowledged
        leftovers = set(directory.glob(".*.tmp"))
        cut_short += bool(leftovers)
        try:
            tensors, meta = read_snapshot(directory)
            intact = meta["count"] in (acknowledged, acknowledged + 1) and int(tensors["b"][0]) == meta["count"]
        except Exception:  # any failure to read back is a lost snapshot
            intact = False
        lost += not intact
    return {"writer_kills": kills, "writer_kills_mid_write": mid_write_kills,
            "writer_kills_that_cut_a_write_short": cut_short, "writer_snapshots_lost": lost,
            "writer_temp_files_not_cleaned": not_cleaned}


if __name__ == "__main__":   # the writer process: DIRECTORY SEED
    _writer(Path(sys.argv[1]), int(sys.argv[2]))
