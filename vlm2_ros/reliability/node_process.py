"""One vlm2_node process under test: start, watch (alive, RSS), SIGKILL, stop, read its log."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import psutil

# SpatialQuery.Response error codes by value (srv/SpatialQuery.srv), without importing ROS here.
ERROR_CODE_NAMES = {0: "OK", 1: "EMPTY_QUESTION", 2: "QUESTION_TOO_LONG", 3: "INVALID_REQUEST", 4: "NOT_READY",
                    5: "MEMORY_EMPTY", 6: "TIMEOUT", 7: "BUSY", 8: "CANCELED", 9: "INTERNAL_ERROR"}


def private_domain_id() -> int:
    """A ROS_DOMAIN_ID of our own (never the user's): a flood must stay off a robot's graph."""
    return 100 + os.getpid() % 100


class NodeProcess:
    """vlm2_node as its own process (`python -m vlm2_ros.node`), one log file per start."""

    def __init__(self, params: dict[str, Any], workdir: Path, domain_id: int, name: str = "node"):
        self.params, self.workdir, self.name = params, Path(workdir), name
        self.env = {"ROS_DOMAIN_ID": str(domain_id)}
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}-{self.starts}.log"

    def start(self) -> None:
        from ..ros.node_client import start_node_process
        self.starts += 1
        self.process = start_node_process(self.params, log_path=self.log_path, env=self.env)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss_mb(self) -> float | None:
        """Resident memory of the node process now; None when it is gone."""
        try:
            return psutil.Process(self.pid).memory_info().rss / 2**20
        except (psutil.Error, TypeError):
            return None

    def kill(self) -> None:
        """SIGKILL: no snapshot, no clean-up, like a power cut of the process."""
        if self.alive():
            self.process.kill()
        if self.process is not None:
            self.process.wait()

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGINT (snapshot and exit 0), SIGKILL after timeout_s; the exit code."""
        from ..ros.node_client import stop_node_process
        return stop_node_process(self.process, timeout_s)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""


class RssSampler:
    """Samples a process's RSS (MiB) and CPU share every period_s on its own thread.

    `pid` is called at each sample, so a restarted process is followed."""

    def __init__(self, pid, period_s: float = 1.0):
        self._pid, self.period_s = pid, period_s
        self.samples: list[tuple[float, float, float]] = []   # (seconds since start, RSS MiB, CPU %)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._started = 0.0

    def __enter__(self) -> "RssSampler":
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        process = None
        while not self._stop.is_set():
            try:
                pid = self._pid()
                if process is None or process.pid != pid:
                    process = psutil.Process(pid)
                    process.cpu_percent()          # first call only starts the measurement
                self.samples.append((time.monotonic() - self._started, process.memory_info().rss / 2**20,
                                     process.cpu_percent()))
            except (psutil.Error, TypeError, ValueError):
                process = None                     # gone (crashed, being restarted): next time
            self._stop.wait(self.period_s)
