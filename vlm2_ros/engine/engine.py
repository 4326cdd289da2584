"""SpatialMemoryEngine: streaming ingest, spatial queries, status, reset, snapshots.

Thread safety: the stream state is immutable (each step builds a new one), so a query takes a
reference to the current state under a short lock and then runs the language model without
holding it; ingest calls are serialised among themselves by a second lock, because a stream
is sequential. Ingest and query therefore run concurrently without blocking each other, and a
query always sees a consistent memory.
"""
from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..camera import CameraIntrinsics, validate_pose
from ..model.dual_memory import MemoryState
from ..model.language_bridge import GeneratedText
from ..model.memory_readout import SOURCE_NAMES
from ..model.provenance import Provenance
from ..model.vlm2 import StreamState, VLM2Model, input_pixel_rays
from ..model.working_memory import WorkingMemory
from ..model.prompt import asks_measure, expected_answer_kind, question_options
from .answer import Answer, Evidence, parse_choice, parse_number
from .number_decoding import DEFAULT_NUMBER_SAMPLES, NumberDecision, decode_number, decode_values, lognormal_quantiles
from .snapshot import SnapshotError, read_snapshot, write_snapshot

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)   # accepted in snapshots
ENGINE_STATE_VERSION = 3   # 3: each patch's first sighting (Provenance.first_seen)


class IngestError(ValueError):
    """A frame was rejected (bad image, camera info, pose or stamp); memory is unchanged."""


class QueryError(ValueError):
    """A question was rejected (empty, too long, not text); memory is unchanged."""


class QueryCanceled(RuntimeError):
    """The caller's should_stop returned True before the answer was complete."""


class NotReadyError(RuntimeError):
    """The engine has no memory to answer from yet."""


@dataclass(frozen=True)
class EngineStatus:
    preset: str
    weights: str
    device: str
    dtype: str
    backend: str                    # runtime of the per-frame hot path: "torch", "onnx:cpu", ...
    memory_mode: str
    frames_ingested: int
    frames_rejected: int
    working_entries: int
    working_capacity: int
    episodic_entries: int
    episodic_capacity: int
    episodic_replacements: int
    last_stamp_ns: int | None
    mean_ingest_ms: float

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(device: str) -> torch.device:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    return torch.device(device)


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def _require_intrinsics(camera_info) -> CameraIntrinsics:
    if not isinstance(camera_info, CameraIntrinsics):
        raise IngestError(f"camera info must be vlm2_ros.camera.CameraIntrinsics, got {type(camera_info).__name__}")
    return camera_info


class SpatialMemoryEngine:
    def __init__(self, model: VLM2Model, *, weights: str, device: str = "cpu", dtype: str = "fp32",
                 max_new_tokens: int = 16, number_samples: int = DEFAULT_NUMBER_SAMPLES, max_question_chars: int = 1000,
                 evidence_top_k: int = 3, backend: str = "torch", onnx_dir: str | Path | None = None,
                 onnx_provider: str = "auto", onnx_fallback: bool = False):
        """`backend` runs the per-frame hot path: "torch", or "onnx" (ONNX Runtime on an export
        in `onnx_dir`, made on demand when None; `onnx_provider` auto/cpu/cuda/tensorrt, and
        `onnx_fallback` allows the CPU provider when the requested one cannot run).
        `number_samples`: answers drawn for a number question, decoded by minimum Bayes risk
        (engine/number_decoding.py); 0 answers numbers greedily like the rest. A bridge with a
        number head answers from that many quantiles of its distribution (0: the default count)."""
        if number_samples < 0:
            raise ValueError(f"number_samples must be >= 0, got {number_samples}")
        from ..backends.runtime import make_backend  # local import: onnxruntime only when asked for
        self.device, self.dtype_name = resolve_device(device), dtype
        self.dtype = resolve_dtype(dtype)
        # before the cast: an ONNX export is of the fp32 weights
        self.backend = make_backend(backend, model, export_dir=onnx_dir, provider=onnx_provider,
                                    allow_fallback=onnx_fallback, fp16=dtype == "fp16", weights=weights)
        self.model = model.to(self.device, self.dtype).eval()
        self.weights = weights
        self.max_new_tokens = max_new_tokens
        self.number_samples = number_samples
        self.max_question_chars = max_question_chars
        self.evidence_top_k = evidence_top_k
        self._state_lock = threading.Lock()
        self._ingest_lock = threading.Lock()
        self._rays: tuple[CameraIntrinsics, torch.Tensor] | None = None   # the last camera's, under _ingest_lock
        self._reset_locked()

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_preset(cls, preset: str = "tiny", *, checkpoint_dir: str | Path | None = None,
                    memory_mode: str | None = None, working_size: int | None = None,
                    episodic_size: int | None = None, geometry_window: int | None = None,
                    episodic_replacement: str | None = None, readout_settings: dict | None = None,
                    **engine_kwargs) -> "SpatialMemoryEngine":
        """Load a preset's model (its shipped or given checkpoint) and wrap it in an engine.
        The memory mode, the sizes L_w, L_e, L_g, the episodic replacement rule and the object
        readout's run-time settings (None: the checkpoint's) hold no weights."""
        from ..model.checkpoint import MemoryOverrides, load_model  # local import: keeps engine import light
        overrides = MemoryOverrides(memory_mode, working_size, episodic_size, geometry_window, episodic_replacement,
                                    readout_settings)
        model, weights = load_model(preset, checkpoint_dir=checkpoint_dir, overrides=overrides)
        return cls(model, weights=weights, **engine_kwargs)

    @property
    def stream(self) -> StreamState:
        """The current stream state (immutable: a consistent snapshot of the memory)."""
        with self._state_lock:
            return self._stream

    # ----------------------------------------------------------------- ingest
    def preprocess(self, image: np.ndarray, camera_info: CameraIntrinsics | None = None) -> torch.Tensor:
        """Validate an RGB frame and resize it to the model's input: [3,H,W] float in [0,1]."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            got = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
            raise IngestError(f"image must be a uint8 RGB array [H,W,3], got {got}")
        h, w = image.shape[:2]
        if h < 2 or w < 2:
            raise IngestError(f"image is too small: {w}x{h}")
        if camera_info is not None and (_require_intrinsics(camera_info).width, camera_info.height) != (w, h):
            raise IngestError(f"camera info is for {camera_info.width}x{camera_info.height} "
                              f"but the image is {w}x{h}")
        th, tw = self.model.config.image_size
        resized = cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA) if (h, w) != (th, tw) else image
        return torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).float().div_(255.0)

    def _pixel_rays(self, camera_info: CameraIntrinsics) -> torch.Tensor:
        """[1,H,W,3] the camera's pixel rays (z = 1) at the model's input size (preprocess resizes
        the whole image, so the intrinsics scale with it); one camera's are computed once."""
        _require_intrinsics(camera_info)
        if self._rays is None or self._rays[0] != camera_info:
            self._rays = (camera_info, input_pixel_rays(camera_info, self.model.config.image_size)[None])
        return self._rays[1]

    def _check_stamp(self, stamp_ns: int, last: int | None) -> int:
        if isinstance(stamp_ns, bool) or not isinstance(stamp_ns, (int, np.integer)) or stamp_ns < 0:
            raise IngestError(f"stamp must be a non-negative integer of nanoseconds, got {stamp_ns!r}")
        if last is not None and stamp_ns < last:
            raise IngestError(f"stamp {stamp_ns} ns is older than the last ingested frame "
                              f"({last} ns); reset the engine after a time jump backwards")
        return int(stamp_ns)

    def ingest(self, image: np.ndarray, stamp_ns: int, camera_info: CameraIntrinsics | None = None,
               pose: np.ndarray | None = None) -> int:
        """Push one frame into memory; returns its frame index. Raises IngestError on bad input."""
        return self.ingest_batch([image], [stamp_ns], [camera_info], [pose])[0]

    def ingest_batch(self, images, stamps_ns, camera_infos=None, poses=None) -> list[int]:
        """Push consecutive frames of one stream; the per-frame encoders run batched.
        All frames are validated first: one bad frame rejects the batch and memory is unchanged."""
        n = len(images)
        camera_infos = camera_infos or [None] * n
        if not (len(stamps_ns) == len(camera_infos) == len(poses or camera_infos) == n) or n == 0:
            raise IngestError("images, stamps, camera infos and poses must be non-empty lists of one length")
        try:
            pixels = torch.stack([self.preprocess(im, ci) for im, ci in zip(images, camera_infos)])
        except IngestError:
            with self._state_lock:
                self._frames_rejected += n
            raise
        return self.ingest_pixels(pixels, stamps_ns, poses, camera_infos)

    def ingest_pixels(self, pixels: torch.Tensor, stamps_ns, poses=None, camera_infos=None) -> list[int]:
        """Push frames already through `preprocess` ([N,3,H,W] at the model's input size), so a
        caller can resize on another thread than the one that runs the model (the ROS node does
        it in its image callbacks). Same checks and all-or-nothing rule as ingest_batch. A frame's
        camera info (its intrinsics at the size it was taken) places each pixel on its ray."""
        n = len(stamps_ns)
        poses = poses or [None] * n
        camera_infos = camera_infos or [None] * n
        th, tw = self.model.config.image_size
        with self._ingest_lock:
            try:
                if not (isinstance(pixels, torch.Tensor) and pixels.dtype == torch.float32
                        and tuple(pixels.shape) == (n, 3, th, tw)):
                    got = f"{getattr(pixels, 'dtype', type(pixels).__name__)} {tuple(getattr(pixels, 'shape', ()))}"
                    raise IngestError(f"pixels must be float32 [{n},3,{th},{tw}] from preprocess, got {got}")
                if not len(poses) == len(camera_infos) == n or n == 0:
                    raise IngestError("images, stamps, camera infos and poses must be non-empty lists of one length")
                last = self._last_stamp_ns
                stamps = []
                for s in stamps_ns:
                    last = self._check_stamp(s, last)
                    stamps.append(last)
                pose_arrays = [None if p is None else validate_pose(p) for p in poses]
                rays = [None if ci is None else self._pixel_rays(ci) for ci in camera_infos]
            except ValueError as e:
                with self._state_lock:
                    self._frames_rejected += n
                raise e if isinstance(e, IngestError) else IngestError(str(e)) from e
            started = time.perf_counter()
            stream = self._stream
            with torch.inference_mode():
                frame_tokens, semantic = self.backend.encode_frames(pixels.to(self.device, self.dtype))
                indices = []
                for i in range(n):
                    index = stream.frames
                    pose = None if pose_arrays[i] is None else torch.from_numpy(pose_arrays[i])[None]
                    window = self.model.push_window(stream.geometry_window, frame_tokens[i:i + 1])
                    fused, patch_points = self.backend.fuse_window(
                        window, semantic[i:i + 1], None if pose is None else pose.to(self.device),
                        rays=None if rays[i] is None else rays[i].to(self.device))
                    provenance = Provenance.single(torch.tensor([stamps[i]]), torch.tensor([index]), patch_points, pose)
                    stream, _, _ = self.model.remember(stream, window, fused, provenance)
                    indices.append(index)
            elapsed = time.perf_counter() - started
            with self._state_lock:
                self._stream = stream
                self._last_stamp_ns = stamps[-1]
                self._ingest_seconds += elapsed
            return indices

    # ----------------------------------------------------------------- query
    def query(self, question: str, max_new_tokens: int | None = None,
              should_stop: Callable[[], bool] | None = None,
              on_stage: Callable[[str], None] | None = None) -> Answer:
        """Answer `question` from the memory as it is now. `should_stop` (polled once per
        generated token) cancels the query: it raises QueryCanceled and frees the model.
        `on_stage` is told "reading_memory", then "generating" (for progress reports)."""
        started = time.perf_counter()
        if not isinstance(question, str):
            raise QueryError(f"question must be text, got {type(question).__name__}")
        question = question.strip()
        if not question:
            raise QueryError("question is empty")
        try:
            question.encode("utf-8")
        except UnicodeEncodeError as e:  # lone surrogates: the tokenizer would fail on them
            raise QueryError(f"question is not valid Unicode text ({e.reason} at position {e.start})") from None
        if len(question) > self.max_question_chars:
            raise QueryError(f"question has {len(question)} characters; the limit is {self.max_question_chars}")
        with self._state_lock:
            stream = self._stream
        if stream.frames == 0:
            raise NotReadyError("no frame has been ingested yet: memory is empty")
        on_stage = on_stage or (lambda stage: None)
        kind = expected_answer_kind(question)
        with torch.inference_mode():
            on_stage("reading_memory")
            readout = self.model.read_memory(stream, question)
            on_stage("generating")
            text, confidence, relevance = self.answer_from_tokens(readout.tokens, question, max_new_tokens, should_stop)
        return Answer(
            question=question, text=text, kind=kind,
            value=parse_number(text) if kind == "number" else None,
            choice=parse_choice(text, question_options(question)) if kind == "choice" else None,
            confidence=confidence,
            evidence=self._evidence(stream, readout, relevance),
            latency_s=time.perf_counter() - started)

    def answer_from_tokens(self, tokens: torch.Tensor, question: str, max_new_tokens: int | None = None,
                           should_stop: Callable[[], bool] | None = None) -> tuple[str, float, torch.Tensor]:
        """The language bridge's answer to `question` (already checked) from memory tokens [1,M,C]
        as the model's readout gives them: (text, confidence, each token's relevance [M]). `query`
        reads them from the memory; an evaluation may hand it others (the true boxes)."""
        kind = expected_answer_kind(question)
        max_new_tokens = max_new_tokens or self.max_new_tokens
        bridge = self.model.bridge
        options = bridge.listed_options(question)
        with torch.inference_mode():
            if options:
                if should_stop is not None and should_stop():      # one poll: scoring is one pass
                    raise QueryCanceled("query canceled before the answer was complete")
                picked = bridge.pick_option(tokens, question, options)
                text, confidence, relevance = f"{picked.letter}. {picked.text}", picked.share, picked.memory_relevance
            elif bridge.number_head is not None and asks_measure(question):
                if should_stop is not None and should_stop():      # one poll: the estimate is one pass
                    raise QueryCanceled("query canceled before the answer was complete")
                estimate = bridge.estimate_number(tokens, question)
                values = lognormal_quantiles(estimate.log_mean, estimate.log_std,
                                             self.number_samples or DEFAULT_NUMBER_SAMPLES)
                # every candidate 0 (a log below what a float holds): 0, as sure as the candidates agree
                decision = decode_values(values) or NumberDecision(0.0, 1.0, len(values))
                text, confidence = number_text(decision), decision.expected_accuracy
                relevance = estimate.memory_relevance
            else:
                generated = bridge.generate(
                    tokens, question, max_new_tokens=max_new_tokens, should_stop=should_stop,
                    num_samples=self.number_samples if kind == "number" else 0)
                if generated is None:
                    raise QueryCanceled("query canceled before the answer was complete")
                text, confidence, relevance = self._generated_answer(generated)
        return text, confidence, relevance

    @staticmethod
    def _generated_answer(generated: GeneratedText) -> tuple[str, float, torch.Tensor]:
        decision = decode_number(generated.samples)
        if decision is not None:
            return number_text(decision), decision.expected_accuracy, generated.memory_relevance
        probs = [min(max(float(p), 1e-12), 1.0) for p in generated.token_probs]
        confidence = math.exp(sum(math.log(p) for p in probs) / len(probs)) if probs else 0.0
        return generated.text.strip(), confidence, generated.memory_relevance

    def _evidence(self, stream: StreamState, readout, relevance: torch.Tensor) -> tuple[Evidence, ...]:
        """The memory entries with the largest share of the answer's relevance, with provenance."""
        relevance, token_entry = relevance.float().cpu().reshape(-1), readout.token_entry[0]   # [M], [M]
        from_entry = token_entry >= 0
        per_entry = torch.zeros(readout.entry_source.shape[1]).index_add_(
            0, token_entry[from_entry], relevance[from_entry]).clamp_min(0)                    # [E]
        total = float(per_entry.sum()) or 1.0
        memories = {0: stream.memory.working, 1: stream.memory.episodic}
        evidence = []
        for e in per_entry.argsort(descending=True)[: self.evidence_top_k].tolist():
            if per_entry[e] <= 0 < total:        # entries no token the answer read comes from
                break
            source = int(readout.entry_source[0, e])
            slot = int(readout.entry_slot[0, e])
            prov = memories[source].provenance
            pose = prov.pose[0, slot].tolist() if bool(prov.has_pose[0, slot]) else None
            evidence.append(Evidence(int(prov.stamp_ns[0, slot]), int(prov.frame_index[0, slot]),
                                     SOURCE_NAMES[source], float(per_entry[e]) / total, pose))
        return tuple(evidence)

    # ----------------------------------------------------------------- status / reset
    def status(self) -> EngineStatus:
        with self._state_lock:
            memory, frames = self._stream.memory, self._stream.frames
            return EngineStatus(
                preset=self.model.config.preset, weights=self.weights, device=str(self.device),
                dtype=self.dtype_name, backend=self.backend.name, memory_mode=self.model.config.memory.mode,
                frames_ingested=frames, frames_rejected=self._frames_rejected,
                working_entries=len(memory.working), working_capacity=memory.working.capacity,
                episodic_entries=len(memory.episodic) if self.model.memory.uses_episodic else 0,
                episodic_capacity=memory.episodic.capacity if self.model.memory.uses_episodic else 0,
                episodic_replacements=memory.episodic.replacements, last_stamp_ns=self._last_stamp_ns,
                mean_ingest_ms=1000 * self._ingest_seconds / frames if frames else 0.0)

    def _reset_locked(self) -> None:
        self._stream = self.model.empty_stream(1)
        self._last_stamp_ns: int | None = None
        self._frames_rejected = 0
        self._ingest_seconds = 0.0

    def reset(self) -> None:
        with self._ingest_lock, self._state_lock:
            self._reset_locked()

    # ----------------------------------------------------------------- snapshots
    def fingerprint(self) -> dict:
        """What a snapshot must match to be loaded into this engine."""
        c = self.model.config
        return {"preset": c.preset, "weights": self.weights, "memory_mode": c.memory.mode,
                "tokens_per_frame": self.model.num_tokens_per_frame, "dim": c.fusion.dim,
                "working_capacity": c.memory.working.capacity,
                "episodic_capacity": c.memory.episodic.capacity,
                "geometry_window": c.geometry_window}

    def save(self, directory: str | Path) -> Path:
        """Atomically write the memory (safetensors + JSON) into `directory`."""
        tensors, metadata = self.memory_tensors()
        return write_snapshot(directory, tensors, metadata)

    def load(self, directory: str | Path) -> None:
        """Replace the memory with a snapshot's. Everything is validated before anything is
        replaced: on any error (SnapshotError) the current memory is untouched."""
        tensors, meta = read_snapshot(directory)
        _check_state_version(meta, str(directory))
        if meta.get("fingerprint") != self.fingerprint():
            raise SnapshotError(f"{directory}: snapshot was written by a different model or memory "
                                f"configuration ({meta.get('fingerprint')} != {self.fingerprint()})")
        self.restore_memory(tensors, meta, str(directory))

    def memory_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The memory as (tensors, JSON-able metadata): what a snapshot holds."""
        with self._state_lock:
            stream, last, rejected = self._stream, self._last_stamp_ns, self._frames_rejected
            ingest_seconds = self._ingest_seconds
        tensors = {"geometry_window": stream.geometry_window,
                   "working.tokens": stream.memory.working.tokens,
                   "episodic.tokens": stream.memory.episodic.tokens}
        for name, mem in (("working", stream.memory.working), ("episodic", stream.memory.episodic)):
            tensors.update({f"{name}.{k}": v for k, v in mem.provenance.fields().items()})
        metadata = {"engine_state_version": ENGINE_STATE_VERSION, "fingerprint": self.fingerprint(),
                    "frames": stream.frames, "last_stamp_ns": last, "frames_rejected": rejected,
                    "ingest_seconds": ingest_seconds,
                    "episodic_replacements": stream.memory.episodic.replacements,
                    "saved_unix_time": time.time()}
        return tensors, metadata

    def restore_memory(self, tensors: dict[str, torch.Tensor], meta: dict, source: str) -> None:
        """Replace the memory with memory_tensors' output, after checking every tensor against this
        model (not the fingerprint: the caller knows which weights wrote them; raises SnapshotError)."""
        _check_state_version(meta, source)
        stream = self._stream_from_tensors(tensors, meta, source)
        last_stamp_ns = meta.get("last_stamp_ns")
        rejected, seconds = meta.get("frames_rejected", 0), meta.get("ingest_seconds", 0.0)
        if not (last_stamp_ns is None and stream.frames == 0 or _is_count(last_stamp_ns)) \
                or not _is_count(rejected) or not _is_finite_nonnegative(seconds):
            raise SnapshotError(f"{source}: invalid metadata: last_stamp_ns {last_stamp_ns!r}, "
                                f"frames_rejected {rejected!r}, ingest_seconds {seconds!r}")
        with self._ingest_lock, self._state_lock:
            self._stream = stream
            self._last_stamp_ns = last_stamp_ns
            self._frames_rejected = rejected
            self._ingest_seconds = float(seconds)

    def _stream_from_tensors(self, tensors: dict, meta: dict, source: str) -> StreamState:
        """The stream a snapshot holds, after checking every tensor's shape, dtype and values
        against this model (a tampered snapshot with a valid checksum must not half-load)."""
        expected = self.model.empty_stream(1)
        n_tok, dim = self.model.num_tokens_per_frame, self.model.config.fusion.dim

        def take(key: str, dtypes: tuple[torch.dtype, ...] | None = None) -> torch.Tensor:
            if key not in tensors:
                raise SnapshotError(f"{source}: tensor {key!r} is missing")
            tensor = tensors[key]
            if dtypes is not None and tensor.dtype not in dtypes:
                raise SnapshotError(f"{source}: tensor {key!r} has dtype {tensor.dtype}, expected {dtypes[0]}")
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise SnapshotError(f"{source}: tensor {key!r} holds NaN or inf")
            return tensor

        def memory_part(name: str, template) -> tuple[torch.Tensor, Provenance]:
            tokens = take(f"{name}.tokens", FLOAT_DTYPES)
            n = tokens.shape[1] if tokens.dim() == 4 else -1
            if tokens.dim() != 4 or tokens.shape[0] != 1 or tokens.shape[2:] != (n_tok, dim) \
                    or not 0 <= n <= template.capacity:
                raise SnapshotError(f"{source}: tensor '{name}.tokens' has shape {tuple(tokens.shape)}, "
                                    f"expected [1, <= {template.capacity}, {n_tok}, {dim}]")
            prov = Provenance(take(f"{name}.stamp_ns", (torch.int64,)), take(f"{name}.frame_index", (torch.int64,)),
                              take(f"{name}.pose", (torch.float64,)), take(f"{name}.has_pose", (torch.bool,)),
                              take(f"{name}.patch_points", (torch.float32,)),
                              take(f"{name}.first_seen", (torch.int64,)))
            for k, v in prov.fields().items():
                trailing = {"pose": (4, 4), "patch_points": (n_tok, 3), "first_seen": (n_tok,)}.get(k, ())
                if tuple(v.shape) != (1, n, *trailing):
                    raise SnapshotError(f"{source}: tensor '{name}.{k}' has shape {tuple(v.shape)}, "
                                        f"expected {[1, n, *trailing]}")
            return tokens.to(self.device, self.dtype), prov

        w_tokens, w_prov = memory_part("working", expected.memory.working)
        e_tokens, e_prov = memory_part("episodic", expected.memory.episodic)
        frames = meta.get("frames")
        if not _is_count(frames) or frames < max(w_tokens.shape[1], e_tokens.shape[1]):
            raise SnapshotError(f"{source}: invalid frame count {frames!r}")
        window = take("geometry_window", FLOAT_DTYPES)
        grid_h, grid_w = self.model.geometry_grid
        frame_tokens = (grid_h * grid_w, self.model.geometry.config.encoder_dim)
        length = min(frames, self.model.config.geometry_window)
        if tuple(window.shape) != ((1, 0, 0, 0) if length == 0 else (1, length, *frame_tokens)):
            raise SnapshotError(f"{source}: tensor 'geometry_window' has shape {tuple(window.shape)}, expected "
                                f"[1, {length}, {frame_tokens[0]}, {frame_tokens[1]}] for {frames} frames")
        replacements = meta.get("episodic_replacements", 0)
        if not _is_count(replacements):
            raise SnapshotError(f"{source}: invalid episodic_replacements {replacements!r}")
        memory = MemoryState(
            WorkingMemory(expected.memory.working.capacity, w_tokens, w_prov),
            dataclasses.replace(expected.memory.episodic, tokens=e_tokens, provenance=e_prov,
                                replacements=replacements))
        return StreamState(window.to(self.device, self.dtype), memory, frames)


def number_text(decision: NumberDecision) -> str:
    """A decoded number as the answer's text: three significant digits, no exponent (159, 2.07, 1100)."""
    return f"{float(f'{decision.value:.3g}'):g}"


def _check_state_version(meta: dict, source: str) -> None:
    if meta.get("engine_state_version") != ENGINE_STATE_VERSION:
        raise SnapshotError(f"{source}: engine state version {meta.get('engine_state_version')!r} "
                            f"is not {ENGINE_STATE_VERSION}")


def _is_count(value) -> bool:
    """A non-negative int from JSON (bool excluded)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_finite_nonnegative(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
