"""Fuzzing the message-to-tensor path: bytes -> Image / CompressedImage fields -> RGB -> the
model's input tensor (`image_to_rgb` / `compressed_to_rgb`, `stamp_to_ns`, `engine.preprocess`:
everything a camera message goes through before the model).

Each input is a byte string decoded into message fields (`decode_message`), so the same inputs
drive both engines:
- atheris (libFuzzer, coverage-guided over the instrumented conversion and engine modules), run
  in a child process because libFuzzer ends its process when time is up;
- where atheris is not installed, a seeded random-mutation loop (no coverage feedback; new
  inputs are kept when they reach a new outcome), in process.
An input may be rejected (ConversionError, IngestError: what the node counts and skips) or
accepted (then the RGB image and the tensor must have the declared size, dtype and range); any
other exception, or a broken invariant, is a failure.
"""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

RAW, COMPRESSED = 0, 1
EXTRA_ENCODINGS = ("hsv8", "32FC1", "16UC1", "", "RGB8", " bgr8 ", "rgb8\x00")
FORMATS = ("jpeg", "png", "rgb8; jpeg compressed bgr8", "16UC1; compressedDepth png", "")
_HEADER = 17          # raw: kind, height u16, width u16, encoding, step delta i16, big endian, sec i32, nanosec u32


class FuzzFailure(AssertionError):
    """An accepted input produced an image or tensor that breaks the path's contract."""


def _encodings() -> tuple[str, ...]:
    from ..ros.image_conversion import SUPPORTED_ENCODINGS
    return SUPPORTED_ENCODINGS + EXTRA_ENCODINGS


def _bytes_per_pixel(encoding: str) -> int:
    from ..ros.image_conversion import _ENCODINGS
    spec = _ENCODINGS.get(encoding.strip().lower())
    return spec.bytes_per_pixel if spec else 3


def decode_message(data: bytes) -> tuple[int, SimpleNamespace]:
    """(RAW or COMPRESSED, a look-alike message) from fuzzer bytes; every field in its wire range."""
    data = bytes(data)
    kind = data[0] & 1 if data else RAW
    if kind == COMPRESSED:
        fmt = FORMATS[data[1] % len(FORMATS)] if len(data) > 1 else ""
        return COMPRESSED, SimpleNamespace(format=fmt, data=data[2:], header=SimpleNamespace(
            stamp=SimpleNamespace(sec=0, nanosec=0)))
    head = data[:_HEADER].ljust(_HEADER, b"\0")
    height, width = int.from_bytes(head[1:3], "little"), int.from_bytes(head[3:5], "little")
    encodings = _encodings()
    encoding = encodings[head[5] % len(encodings)]
    step = max(0, width * _bytes_per_pixel(encoding) + int.from_bytes(head[6:8], "little", signed=True))
    stamp = SimpleNamespace(sec=int.from_bytes(head[9:13], "little", signed=True),
                            nanosec=int.from_bytes(head[13:17], "little"))
    return RAW, SimpleNamespace(height=height, width=width, encoding=encoding, is_bigendian=head[8] & 1, step=step,
                                data=data[_HEADER:], header=SimpleNamespace(stamp=stamp))


def encode_raw(rows: np.ndarray, encoding: str, pad: int = 0, big_endian: bool = False) -> bytes:
    """Fuzzer bytes of a well-formed raw image (for the seed corpus)."""
    height, width = rows.shape[:2]
    raw = np.ascontiguousarray(rows).view(np.uint8).reshape(height, -1)
    data = np.concatenate([raw, np.zeros((height, pad), np.uint8)], axis=1).tobytes()
    head = bytes([RAW]) + height.to_bytes(2, "little") + width.to_bytes(2, "little") + \
        bytes([_encodings().index(encoding)]) + pad.to_bytes(2, "little", signed=True) + bytes([big_endian]) + \
        (1_700_000_000).to_bytes(4, "little", signed=True) + (5).to_bytes(4, "little")
    return head + data


def seed_corpus(seed: int = 0) -> list[bytes]:
    """One small well-formed input per encoding, plus JPEG and PNG."""
    import cv2

    from ..ros.image_conversion import _ENCODINGS
    rng = np.random.default_rng(seed)
    seeds = []
    for name, spec in _ENCODINGS.items():
        width = 6
        values = rng.integers(0, 256, (4, width, spec.channels * spec.itemsize), dtype=np.uint8)
        seeds.append(encode_raw(values, name, pad=int(rng.integers(0, 3))))
    rgb = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    for ext, fmt in ((".jpg", 0), (".png", 1)):
        seeds.append(bytes([COMPRESSED, fmt]) + cv2.imencode(ext, rgb)[1].tobytes())
    return seeds


class Target:
    """The path under test, with outcome counters."""

    def __init__(self):
        import torch

        from ..engine.engine import SpatialMemoryEngine
        from ..model.checkpoint import build_model
        from ..model.presets import preset_config
        torch.manual_seed(0)
        self.engine = SpatialMemoryEngine(build_model(preset_config("tiny")), weights="fuzz")
        self.accepted = self.rejected = 0

    def __call__(self, data: bytes) -> str:
        """'accepted' or a short signature of the rejection; raises on a failure."""
        from ..engine.engine import IngestError
        from ..ros.image_conversion import ConversionError, compressed_to_rgb, image_to_rgb, stamp_to_ns
        kind, msg = decode_message(data)
        try:
            rgb = image_to_rgb(msg, backend="numpy") if kind == RAW else compressed_to_rgb(msg)
            stamp_to_ns(msg.header.stamp)
            tensor = self.engine.preprocess(rgb)
        except (ConversionError, IngestError) as exc:
            self.rejected += 1
            return re.sub(r"[\d.]+", "#", str(exc))[:48]
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or \
                (kind == RAW and rgb.shape[:2] != (msg.height, msg.width)):
            raise FuzzFailure(f"accepted {msg.encoding if kind == RAW else msg.format!r} gave {rgb.dtype} {rgb.shape}")
        th, tw = self.engine.model.config.image_size
        if tuple(tensor.shape) != (3, th, tw) or not bool(tensor.isfinite().all()) or \
                float(tensor.min()) < 0 or float(tensor.max()) > 1:
            raise FuzzFailure(f"tensor {tuple(tensor.shape)} out of contract")
        self.accepted += 1
        return "accepted"


# ----------------------------------------------------------------------------- random mutation
def mutate(data: bytes, rng: random.Random, corpus: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        at = rng.randrange(len(out) + 1)
        if op == 0 and out:
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif op == 2:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 3:
            del out[at:at + rng.randint(1, 64)]
        elif op == 4:
            del out[rng.randrange(len(out) + 1):]
        elif op == 5:                       # an interesting 16-bit value, e.g. into a size field
            value = rng.choice((0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF))
            out[at:at + 2] = value.to_bytes(2, "little")
        else:                               # splice with another input
            other = rng.choice(corpus)
            out = out[:at] + other[rng.randrange(len(other) + 1):]
    return bytes(out)


def run_mutation_loop(seconds: float, seed: int = 0, max_len: int = 8192) -> dict:
    target, rng = Target(), random.Random(seed)
    corpus = seed_corpus(seed)
    signatures: set[str] = set()
    failures: list[str] = []
    executions, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        data = mutate(rng.choice(corpus), rng, corpus)[:max_len]
        executions += 1
        try:
            signature = target(data)
        except Exception as exc:  # a failure: keep the first few, carry on fuzzing
            signature = f"FAILURE {type(exc).__name__}"
            if len(failures) < 5:
                failures.append(f"{type(exc).__name__}: {exc} (input {data[:40].hex()}...)")
        if signature not in signatures and len(corpus) < 2000:
            signatures.add(signature)
            corpus.append(data)
    return {"engine": "random mutation (seeded; no coverage feedback: atheris is not installed)",
            "seconds": seconds, "seed": seed, "executions": executions, "accepted": target.accepted,
            "rejected": target.rejected, "failures": executions - target.accepted - target.rejected,
            "failure_examples": " | ".join(failures), "distinct_outcomes": len(signatures),
            "corpus_size": len(corpus), "coverage_edges": -1}


# ----------------------------------------------------------------------------- atheris
def atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def _atheris_child(seconds: float, seed: int, workdir: Path) -> None:
    """Runs in its own process: instrument the path, fuzz until the deadline, write stats, exit."""
    import atheris
    import cv2  # noqa: F401 - imported (not instrumented) before the modules under test
    import torch  # noqa: F401

    import vlm2_ros.model.checkpoint  # noqa: F401 - the model is not under test
    with atheris.instrument_imports(include=["vlm2_ros.ros.image_conversion", "vlm2_ros.engine"]):
        import vlm2_ros.engine.engine  # noqa: F401
        import vlm2_ros.ros.image_conversion  # noqa: F401
    target = Target()
    stats_path, deadline = workdir / "stats.json", time.monotonic() + seconds
    executions = 0

    def one_input(data: bytes) -> None:
        nonlocal executions
        executions += 1
        target(data)
        if time.monotonic() > deadline:
            stats_path.write_text(json.dumps({"executions": executions, "accepted": target.accepted,
                                              "rejected": target.rejected}))
            os._exit(0)

    corpus = workdir / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(seed_corpus(seed)):
        (corpus / f"seed-{i:02d}").write_bytes(data)
    # -malloc_limit_mb: no single allocation may exceed 1 GB (the node's largest legitimate buffer,
    # a 40-megapixel frame, is ~120 MB); libFuzzer reports a bigger one as a failure.
    atheris.Setup([sys.argv[0], f"-seed={seed + 1}", f"-max_total_time={int(seconds) + 120}", "-timeout=30",
                   "-max_len=65536", "-rss_limit_mb=3072", "-malloc_limit_mb=1024", f"-artifact_prefix={workdir}/",
                   str(corpus)], one_input)
    atheris.Fuzz()


def run_atheris(seconds: float, workdir: Path, seed: int = 0) -> dict:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "stats.json").unlink(missing_ok=True)
    child = subprocess.run([sys.executable, "-m", "vlm2_ros.reliability.fuzz", str(seconds), str(seed), str(workdir)],
                           capture_output=True, text=True, timeout=seconds + 600)
    log = child.stdout + child.stderr
    (workdir / "atheris.log").write_text(log)
    stats = json.loads((workdir / "stats.json").read_text()) if (workdir / "stats.json").is_file() else {}
    coverage = re.findall(r"cov: (\d+)", log)
    crashes = sorted(p.name for p in workdir.glob("crash-*"))
    failed = bool(crashes) or child.returncode != 0
    executions = stats.get("executions", 0)
    return {"engine": "atheris (libFuzzer, coverage-guided)", "seconds": seconds, "seed": seed,
            "executions": executions, "accepted": stats.get("accepted", 0), "rejected": stats.get("rejected", 0),
            "failures": max(len(crashes), int(failed)),
            "failure_examples": " | ".join(crashes) or (log[-2000:] if failed else ""),
            "distinct_outcomes": -1, "corpus_size": len(list((workdir / "corpus").iterdir())),
            "coverage_edges": int(coverage[-1]) if coverage else -1}


def run_fuzz(seconds: float, workdir: Path, seed: int = 0, engine: str = "auto") -> dict:
    """engine: "atheris", "random", or "auto" (atheris when installed)."""
    if engine == "atheris" or (engine == "auto" and atheris_available()):
        return run_atheris(seconds, workdir, seed)
    return run_mutation_loop(seconds, seed)


if __name__ == "__main__":   # the atheris child: SECONDS SEED WORKDIR
    _atheris_child(float(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
