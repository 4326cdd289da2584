"""Episodes: a scene, a camera trajectory and intrinsics, rendered lazily; directory I/O.

Episode directory (format_version 1; every file written atomically, the directory as a whole via
`atomic_directory`, so an interrupted write leaves no partial episode):

    episode.json        id, seed, frame count, fps (default 10 Hz), resolution, style, chunking,
                        per-object visibility (first / last frame seen, frames seen)
    scene.json          the room and every object (category, AABB, parts, colours)
    intrinsics.json     fx, fy, cx, cy, width, height (pinhole, OpenCV axes)
    poses.npz           poses float64 [N, 4, 4] camera-to-world (world z-up), stamps_ns int64 [N]
    chunks/chunk_XXXXXX.npz   rgb uint8 [n, H, W, 3], depth float16 [n, H, W] (metres, z-depth),
                        mask uint16 [n, H, W] (instance id, 0 = room shell); `chunk_frames` per file
    questions.jsonl     one question record per line (see questions.py)

Archives are written with fixed zip timestamps, so the same seed gives the same bytes.
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..atomic_io import atomic_directory, atomic_file
from ..camera import CameraIntrinsics
from .render import Renderer, RenderOutput, check_resolution
from .scene import Scene, generate_scene
from .trajectory import DEFAULT_FPS, Trajectory, generate_trajectory

FORMAT_VERSION = 1
DEFAULT_HFOV_DEG = 70.0
DEFAULT_CHUNK = 100
VIS_SIZE = (80, 60)          # resolution of the visibility pass (independent of the output size)
VIS_MIN_PIXELS = 4           # an object counts as seen in a frame when it covers >= this many
MAX_FRAMES = 100_000


@dataclass(frozen=True)
class EpisodeSpec:
    episode_id: str
    seed: int
    num_frames: int
    width: int = 128
    height: int = 96
    fps: float = DEFAULT_FPS
    style: str = "walk"
    hfov_deg: float = DEFAULT_HFOV_DEG

    def __post_init__(self):
        if not isinstance(self.num_frames, (int, np.integer)) or not 1 <= self.num_frames <= MAX_FRAMES:
            raise ValueError(f"num_frames must be an integer in [1, {MAX_FRAMES}], got {self.num_frames!r}")
        check_resolution(self.width, self.height)
        if not 20 <= self.hfov_deg <= 150:
            raise ValueError(f"hfov_deg must be in [20, 150], got {self.hfov_deg}")


def write_npz_deterministic(path: Path, arrays: dict[str, np.ndarray], compress: bool = True) -> None:
    """Like np.savez_compressed, but with fixed zip timestamps (byte-identical for equal data)."""
    with atomic_file(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zf:
            for name, arr in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
                info.external_attr = 0o644 << 16
                zf.writestr(info, buf.getvalue(), compresslevel=6 if compress else None)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"cannot read {path}: {e}") from e


class Episode:
    """A generated (or loaded) episode; frames are rendered on demand."""

    def __init__(self, spec: EpisodeSpec, scene: Scene, trajectory: Trajectory, intrinsics: CameraIntrinsics):
        if len(trajectory) != spec.num_frames:
            raise ValueError(f"trajectory has {len(trajectory)} poses, spec says {spec.num_frames} frames")
        self.spec, self.scene, self.trajectory, self.intrinsics = spec, scene, trajectory, intrinsics
        self._renderer: Renderer | None = None
        self._visibility: dict[int, tuple[int, int, int]] | None = None

    @classmethod
    def generate(cls, seed: int, num_frames: int, *, width: int = 128, height: int = 96,
                 fps: float = DEFAULT_FPS, style: str = "walk", hfov_deg: float = DEFAULT_HFOV_DEG,
                 episode_id: str | None = None, **scene_kwargs) -> "Episode":
        spec = EpisodeSpec(episode_id or f"ep_{int(seed):06d}", int(seed), int(num_frames), int(width),
                           int(height), float(fps), style, float(hfov_deg))
        scene = generate_scene(seed, **scene_kwargs)
        traj = generate_trajectory(scene, spec.num_frames, seed, fps=fps, style=style)
        return cls(spec, scene, traj, CameraIntrinsics.from_fov(spec.width, spec.height, spec.hfov_deg))

    def __len__(self) -> int:
        return self.spec.num_frames

    @property
    def poses(self) -> np.ndarray:
        return self.trajectory.poses

    @property
    def stamps_ns(self) -> np.ndarray:
        return self.trajectory.stamps_ns

    @property
    def renderer(self) -> Renderer:
        if self._renderer is None:
            self._renderer = Renderer(self.scene, self.intrinsics)
        return self._renderer

    def render(self, index: int) -> RenderOutput:
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} out of range [0, {len(self)})")
        return self.renderer.render(self.poses[index])

    def frame(self, index: int) -> np.ndarray:
        return self.render(index).rgb

    def iter_chunks(self, chunk: int = DEFAULT_CHUNK, start: int = 0) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """(first index, rgb [n,H,W,3], depth [n,H,W] float32, mask [n,H,W]) chunk by chunk."""
        for s in range(start, len(self), chunk):
            outs = [self.render(i) for i in range(s, min(s + chunk, len(self)))]
            yield (s, np.stack([o.rgb for o in outs]), np.stack([o.depth for o in outs]),
                   np.stack([o.mask for o in outs]))

    def visibility(self) -> dict[int, tuple[int, int, int]]:
        """object id -> (first frame seen, last frame seen, number of frames seen); objects never
        seen are absent. Computed with a fixed low-resolution mask pass, so it does not depend on
        the output resolution."""
        if self._visibility is None:
            K = CameraIntrinsics.from_fov(VIS_SIZE[0], VIS_SIZE[1], self.spec.hfov_deg)
            r = Renderer(self.scene, K)
            seen: dict[int, list[int]] = {}
            for i, pose in enumerate(self.poses):
                ids, counts = np.unique(r.render(pose).mask, return_counts=True)
                for oid, c in zip(ids.tolist(), counts.tolist()):
                    if oid and c >= VIS_MIN_PIXELS:
                        seen.setdefault(oid, []).append(i)
            self._visibility = {k: (v[0], v[-1], len(v)) for k, v in sorted(seen.items())}
        return self._visibility

    def metadata(self, chunk: int = DEFAULT_CHUNK) -> dict:
        return {"format_version": FORMAT_VERSION, **asdict(self.spec), "chunk_frames": chunk,
                "num_chunks": (len(self) + chunk - 1) // chunk,
                "visibility": {str(k): list(v) for k, v in self.visibility().items()}}


def intrinsics_to_dict(K: CameraIntrinsics) -> dict:
    return asdict(K)


def intrinsics_from_dict(d: dict) -> CameraIntrinsics:
    try:
        return CameraIntrinsics(float(d["fx"]), float(d["fy"]), float(d["cx"]), float(d["cy"]),
                                int(d["width"]), int(d["height"]))
    except (KeyError, TypeError) as e:
        raise ValueError(f"malformed intrinsics: {e!r}") from e


def _dump(obj) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def write_episode(episode: Episode, out_dir: str | Path, questions: list[dict] | None = None, *,
                  chunk: int = DEFAULT_CHUNK, progress=None) -> Path:
    """Render and write `episode` to out_dir (replacing it atomically). `progress(n)` is called
    with the number of frames written after each chunk."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        (tmp / "episode.json").write_bytes(_dump(episode.metadata(chunk)))
        (tmp / "scene.json").write_bytes(_dump(episode.scene.to_dict()))
        (tmp / "intrinsics.json").write_bytes(_dump(intrinsics_to_dict(episode.intrinsics)))
        write_npz_deterministic(tmp / "poses.npz", {"poses": episode.poses, "stamps_ns": episode.stamps_ns},
                                compress=False)
        (tmp / "chunks").mkdir()
        for start, rgb, depth, mask in episode.iter_chunks(chunk):
            write_npz_deterministic(tmp / "chunks" / f"chunk_{start // chunk:06d}.npz",
                                    {"rgb": rgb, "depth": depth.astype(np.float16), "mask": mask})
            if progress:
                progress(len(rgb))
        lines = "".join(json.dumps(q, sort_keys=True) + "\n" for q in (questions or []))
        (tmp / "questions.jsonl").write_text(lines)
    return out_dir


class EpisodeDir:
    """A written episode, read lazily (one chunk cached)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "episode.json"
        if not meta_path.is_file():
            raise ValueError(f"{self.path} is not an episode directory (no episode.json)")
        try:
            self.meta = json.loads(meta_path.read_text())
            if self.meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"{meta_path}: unsupported format_version {self.meta.get('format_version')!r}")
            self.scene = Scene.from_dict(json.loads((self.path / "scene.json").read_text()))
            self.intrinsics = intrinsics_from_dict(json.loads((self.path / "intrinsics.json").read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read episode {self.path}: {e}") from e
        p = load_npz(self.path / "poses.npz")
        self.poses, self.stamps_ns = p["poses"], p["stamps_ns"]
        self.episode_id = self.meta["episode_id"]
        self.fps = float(self.meta["fps"])
        self.chunk = int(self.meta["chunk_frames"])
        if len(self.poses) != int(self.meta["num_frames"]):
            raise ValueError(f"{self.path}: poses.npz has {len(self.poses)} poses, episode.json says "
                             f"{self.meta['num_frames']} frames")
        self._cache: tuple[int, dict] | None = None

    def __len__(self) -> int:
        return len(self.poses)

    def content_digest(self) -> str:
        """Names the episode by its content (metadata and scene), not its directory: the same
        episode in another copy of a data set, or in a larger one from the same seed, has the same digest."""
        h = hashlib.sha256()
        for name in ("episode.json", "scene.json"):
            h.update((self.path / name).read_bytes())
        return h.hexdigest()[:16]

    def _chunk(self, c: int) -> dict:
        if self._cache is None or self._cache[0] != c:
            self._cache = (c, load_npz(self.path / "chunks" / f"chunk_{c:06d}.npz"))
        return self._cache[1]

    def _get(self, key: str, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} out of range [0, {len(self)})")
        return self._chunk(index // self.chunk)[key][index % self.chunk]

    def frame(self, index: int) -> np.ndarray:
        return self._get("rgb", index)

    def depth(self, index: int) -> np.ndarray:
        return self._get("depth", index).astype(np.float32)

    def mask(self, index: int) -> np.ndarray:
        return self._get("mask", index)

    def visibility(self) -> dict[int, tuple[int, int, int]]:
        return {int(k): tuple(v) for k, v in self.meta.get("visibility", {}).items()}

    def questions(self) -> list[dict]:
        from ..evaluation.data import read_jsonl
        return read_jsonl(self.path / "questions.jsonl")
