"""Storage faults under the snapshot writer: disk full, read-only file system, a snapshot
directory that cannot exist. Each must be reported clearly (an OSError naming the cause from the
engine; a logged, counted error from the node, which keeps running), must leave the previous
snapshot loadable and the memory untouched, and must leave no debris once writes work again.
"""
from __future__ import annotations

import errno
import os
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np

from .bad_inputs import CaseResult
from .node_process import NodeProcess


@contextmanager
def _disk_full_in_tensor_write():
    """save_file writes part of the file, then the disk is full."""
    def partial_write(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\0" * 4096)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
    with mock.patch("vlm2_ros.engine.snapshot.save_file", partial_write):
        yield


@contextmanager
def _disk_full_in_index_write():
    """The tensor file is complete, then writing the index fails."""
    def fail(path, obj):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    with mock.patch("vlm2_ros.engine.snapshot.write_json_atomic", fail):
        yield


@contextmanager
def _read_only_file_system():
    """Creating any file fails, as on a file system remounted read-only after an error."""
    def mkstemp(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), dir)
    with mock.patch("vlm2_ros.atomic_io.tempfile.mkstemp", mkstemp):
        yield


ENGINE_FAULTS = (
    ("disk full while writing the tensor file (ENOSPC)", _disk_full_in_tensor_write, "No space left on device"),
    ("disk full while writing the index (ENOSPC)", _disk_full_in_index_write, "No space left on device"),
    ("read-only file system (EROFS)", _read_only_file_system, "Read-only file system"),
)


def _engine_with_memory():
    import torch

    from ..engine.engine import SpatialMemoryEngine
    from ..model.checkpoint import build_model
    from ..model.presets import preset_config
    torch.manual_seed(0)
    engine = SpatialMemoryEngine(build_model(preset_config("tiny")), weights="storage-faults")
    rng = np.random.default_rng(0)
    for i in range(4):
        engine.ingest(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), 10**9 + i * 10**8)
    return engine


def _debris(directory: Path) -> list[str]:
    """Files a clean snapshot directory does not hold: temporaries and unreferenced tensor files."""
    return sorted(p.name for p in directory.glob(".*.tmp")) + \
        sorted(p.name for p in directory.glob("memory-*.safetensors"))[1:]


def run_engine_storage_faults(workdir: Path) -> list[CaseResult]:
    """Each fault during engine.save: a clear OSError, the previous snapshot still loads, memory
    untouched; the next write succeeds and cleans up. Plus a directory that cannot be created."""
    from ..engine.snapshot import read_snapshot
    workdir = Path(workdir)
    engine = _engine_with_memory()
    results = []
    for name, fault, message in ENGINE_FAULTS:
        directory = workdir / name.split(" (")[0].replace(" ", "_")
        engine.save(directory)
        saved_frames = read_snapshot(directory)[1]["frames"]
        engine.ingest(np.zeros((96, 128, 3), np.uint8), engine.status().last_stamp_ns + 1)
        before = engine.stream
        try:
            with fault():
                engine.save(directory)
            results.append(CaseResult(name, "storage", message, False, "save did not fail"))
            continue
        except OSError as exc:
            error = str(exc)
        kept = read_snapshot(directory)[1]["frames"] == saved_frames
        engine.save(directory)                       # the disk has room again
        clean = not _debris(directory)
        ok = message in error and kept and engine.stream is before and clean
        results.append(CaseResult(name, "storage", message, ok, "" if ok else (
            f"error {error!r}, previous snapshot kept {kept}, memory untouched {engine.stream is before}, "
            f"debris {_debris(directory)}")))
    blocker = workdir / "a-regular-file"
    blocker.write_text("a file where the snapshot directory's parent should be\n")
    try:
        engine.save(blocker / "snapshot")
        results.append(CaseResult("snapshot directory under a regular file", "storage", "OSError", False,
                                  "save did not fail"))
    except OSError as exc:
        results.append(CaseResult("snapshot directory under a regular file", "storage", "OSError", True,
                                  f"{type(exc).__name__}: {exc}"))
    return results


def read_only_directory_case(workdir: Path) -> CaseResult | None:
    """A snapshot directory without write permission; None where permissions are not enforced
    (running as root), since the write would simply succeed."""
    if os.geteuid() == 0:
        return None
    from ..engine.snapshot import read_snapshot
    engine = _engine_with_memory()
    directory = Path(workdir) / "read-only"
    engine.save(directory)
    directory.chmod(0o555)
    try:
        engine.save(directory)
        return CaseResult("snapshot directory read-only (chmod 555)", "storage", "PermissionError", False,
                          "save did not fail")
    except PermissionError as exc:
        ok = read_snapshot(directory)[1]["frames"] == engine.status().frames_ingested
        return CaseResult("snapshot directory read-only (chmod 555)", "storage", "PermissionError", ok, str(exc))
    finally:
        directory.chmod(0o755)


def run_node_storage_fault(workdir: Path, domain_id: int) -> dict:
    """vlm2_node with a snapshot directory that cannot be created (its parent is a regular file):
    periodic, requested and shutdown snapshots fail; the node logs and counts each, answers
    ~/save_memory with the reason, keeps ingesting and answering, and exits 0."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray

    from ..camera import CameraIntrinsics
    from ..ros.node_client import CameraPublisher, NodeClient
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    blocker = workdir / "not-a-directory"
    blocker.write_text("the snapshot directory's parent is this file\n")
    params = {"snapshot.dir": str(blocker / "snapshot"), "snapshot.period_s": 0.2, "ingest.rate_hz": 0.0,
              "ingest.queue_size": 16, "status_period_s": 0.2, "ingest.no_image_warning_s": 0.0}
    node = NodeProcess(params, workdir, domain_id, name="storage-node")
    diagnostics: dict[str, str] = {}

    def on_diagnostics(msg) -> None:
        for status in msg.status:
            if status.name.endswith("spatial memory"):
                diagnostics.update({kv.key: kv.value for kv in status.values},
                                   level=str(int.from_bytes(status.level, "little") if isinstance(status.level, bytes)
                                             else status.level), message=status.message)

    rclpy.init(domain_id=domain_id)
    client = None
    try:
        client = NodeClient(name="storage_fault_client")
        client.node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
        camera = CameraPublisher(client.node, "camera")
        node.start()
        client.wait_for_node(timeout_s=180)
        camera.wait_for_subscribers()
        rng = np.random.default_rng(0)
        intrinsics = CameraIntrinsics(100.0, 100.0, 64.0, 48.0, 128, 96)
        for _ in range(5):
            camera.publish(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), time.time_ns(), intrinsics)
            time.sleep(0.05)
        client.wait_for_status(lambda s: s.frames_ingested >= 5, timeout_s=60)
        deadline = time.monotonic() + 30
        while int(diagnostics.get("snapshot_failures", 0)) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        save = client.save_memory()
        answer = client.query("How many chairs are in this room?")
        result = {
            "periodic_failures_counted": int(diagnostics.get("snapshot_failures", 0)),
            "diagnostics_level": diagnostics.get("level", ""), "diagnostics_message": diagnostics.get("message", ""),
            "save_memory_success": save.success, "save_memory_message": save.message,
            "query_error_code": answer.error_code, "alive": node.alive(),
        }
        result["exit_code"] = node.stop()
        result["log_names_the_failure"] = "snapshot to" in node.log() and "failed" in node.log()
        return result
    finally:
        if node.alive():
            node.kill()
        if client is not None:
            client.close()
        rclpy.try_shutdown()
