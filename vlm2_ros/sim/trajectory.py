"""Camera trajectories: a person / robot walking through the free space of a room, looking around.

Position follows a smoothed grid path between random waypoints at a smoothly varying speed in
[0.3, 1.5] m/s; heading = direction of travel + a slow look-around oscillation, smoothed; slight
downward pitch. Default frame rate 10 Hz (DEFAULT_FPS): frame i has stamp i * 1e9 / fps ns.

style="long_horizon": the first ~20 % of the frames (tour_frames) tour the whole room; afterwards the camera
stays in one half of the room facing its end wall, so objects in the other half, seen early,
stay out of view for a long time before the question (asked at the last frame).
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from .scene import Scene

DEFAULT_FPS = 10.0
SPEED_RANGE = (0.3, 1.5)
GRID = 0.1                 # occupancy grid resolution (m)
CLEARANCE = 0.45           # distance kept from object footprints and walls (m)
TRAJECTORY_STYLES = ("walk", "long_horizon")
TOUR_SHARE = 0.2           # style "long_horizon": the share of the frames that tours the room


def tour_frames(num_frames: int, style: str) -> int:
    """How many of a walk's first frames tour the whole room: all of them but in a "long_horizon" walk."""
    return int(TOUR_SHARE * num_frames) if style == "long_horizon" else num_frames


@dataclass
class Trajectory:
    poses: np.ndarray       # float64 [N, 4, 4] camera-to-world
    stamps_ns: np.ndarray   # int64 [N]
    fps: float

    def __len__(self) -> int:
        return len(self.poses)


def look_pose(position, yaw: float, pitch: float) -> np.ndarray:
    """Camera-to-world pose of a camera at `position` looking along yaw (about z, from +x) and
    pitch (positive up), OpenCV axes (x right, y down, z forward), no roll."""
    cp, sp, cy, sy = math.cos(pitch), math.sin(pitch), math.cos(yaw), math.sin(yaw)
    f = np.array([cp * cy, cp * sy, sp])
    r = np.array([sy, -cy, 0.0])
    down = np.cross(f, r)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = r, down, f, position
    return T


def occupancy(scene: Scene, clearance: float = CLEARANCE) -> np.ndarray:
    """bool [nx, ny] grid of cells where the camera may stand (cell centres)."""
    nx, ny = int(scene.room.width / GRID), int(scene.room.depth / GRID)
    xs = (np.arange(nx) + 0.5) * GRID
    ys = (np.arange(ny) + 0.5) * GRID
    X, Y = np.meshgrid(xs, ys, indexing="ij")
    free = (X > clearance) & (X < scene.room.width - clearance) & (Y > clearance) & (Y < scene.room.depth - clearance)
    for o in scene.objects:
        lo, hi = o.lo - clearance, o.hi + clearance
        free &= ~((X > lo[0]) & (X < hi[0]) & (Y > lo[1]) & (Y < hi[1]))
    return free


def _astar(free: np.ndarray, start: tuple[int, int], goal: tuple[int, int]) -> list[tuple[int, int]] | None:
    nx, ny = free.shape
    moves = [(1, 0, 1.0), (-1, 0, 1.0), (0, 1, 1.0), (0, -1, 1.0),
             (1, 1, 1.414), (1, -1, 1.414), (-1, 1, 1.414), (-1, -1, 1.414)]
    openq = [(0.0, start)]
    came = {start: None}
    cost = {start: 0.0}
    while openq:
        _, cur = heapq.heappop(openq)
        if cur == goal:
            path = [cur]
            while came[path[-1]] is not None:
                path.append(came[path[-1]])
            return path[::-1]
        for dx, dy, c in moves:
            n = (cur[0] + dx, cur[1] + dy)
            if not (0 <= n[0] < nx and 0 <= n[1] < ny) or not free[n]:
                continue
            if dx and dy and not (free[cur[0] + dx, cur[1]] and free[cur[0], cur[1] + dy]):
                continue
            nc = cost[cur] + c
            if nc < cost.get(n, math.inf):
                cost[n], came[n] = nc, cur
                heapq.heappush(openq, (nc + math.hypot(goal[0] - n[0], goal[1] - n[1]), n))
    return None


def _line_free(free: np.ndarray, a, b) -> bool:
    n = int(max(abs(b[0] - a[0]), abs(b[1] - a[1])) * 2) + 1
    for s in np.linspace(0, 1, n):
        if not free[int(round(a[0] + s * (b[0] - a[0]))), int(round(a[1] + s * (b[1] - a[1])))]:
            return False
    return True


def _shortcut(free, path):
    out, i = [path[0]], 0
    while i < len(path) - 1:
        j = len(path) - 1
        while j > i + 1 and not _line_free(free, path[i], path[j]):
            j -= 1
        out.append(path[j])
        i = j
    return out


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0 or len(x) < 3:
        return x
    r = int(3 * sigma)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.concatenate([np.repeat(x[:1], r, 0), x, np.repeat(x[-1:], r, 0)])
    if x.ndim == 1:
        return np.convolve(pad, k, "valid")
    return np.stack([np.convolve(pad[:, j], k, "valid") for j in range(x.shape[1])], 1)


def generate_trajectory(scene: Scene, num_frames: int, seed: int, *, fps: float = DEFAULT_FPS,
                        style: str = "walk", camera_height: float | None = None) -> Trajectory:
    if not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be positive, got {fps!r}")
    if style not in TRAJECTORY_STYLES:
        raise ValueError(f"unknown trajectory style {style!r}; known: {TRAJECTORY_STYLES}")
    rng = np.random.default_rng([int(seed), 0x7A1])
    free = occupancy(scene)
    if not free.any():
        raise ValueError(f"scene {scene.name} has no free floor space for the camera")
    # largest connected free component (4-connectivity flood fill)
    comp = np.full(free.shape, -1, np.int32)
    sizes = []
    for idx in zip(*np.nonzero(free)):
        if comp[idx] >= 0:
            continue
        label, stack, n = len(sizes), [idx], 0
        comp[idx] = label
        while stack:
            c = stack.pop()
            n += 1
            for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                q = (c[0] + dx, c[1] + dy)
                if 0 <= q[0] < free.shape[0] and 0 <= q[1] < free.shape[1] and free[q] and comp[q] < 0:
                    comp[q] = label
                    stack.append(q)
        sizes.append(n)
    main = comp == int(np.argmax(sizes))
    cells = np.argwhere(main)
    half = main.copy()
    mid = main.shape[0] // 2
    half[mid:] = False
    if style == "long_horizon" and half.sum() < 4:
        half = main

    dt = 1.0 / fps
    # speed profile, smooth within SPEED_RANGE
    t = np.arange(num_frames) * dt
    base = rng.uniform(0.5, 1.1)
    speed = np.clip(base + 0.35 * np.sin(2 * np.pi * t / rng.uniform(8, 20) + rng.uniform(0, 6.28)), *SPEED_RANGE)
    total = float(speed.sum() * dt) + 1.0
    touring = tour_frames(num_frames, style)

    cur = tuple(cells[rng.integers(len(cells))])
    pts = [np.array(cur, float)]
    length, tour_len = 0.0, float(speed[:touring].sum() * dt)
    guard = 0
    while length < total and guard < 10000:
        guard += 1
        pool = cells if (style == "walk" or length < tour_len) else np.argwhere(half)
        goal = tuple(pool[rng.integers(len(pool))])
        if math.hypot(goal[0] - cur[0], goal[1] - cur[1]) * GRID < 1.0:
            continue
        path = _astar(main, cur, goal)
        if path is None:
            continue
        for p in _shortcut(main, path)[1:]:
            length += math.hypot(p[0] - pts[-1][0], p[1] - pts[-1][1]) * GRID
            pts.append(np.array(p, float))
        cur = goal
    pts = (np.asarray(pts) + 0.5) * GRID                                       # cell centres in metres
    if len(pts) < 2:
        pts = np.vstack([pts, pts + 1e-3])
    # densify the polyline at 2 cm, then smooth corners lightly
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s_cum = np.concatenate([[0], np.cumsum(seg)])
    s_dense = np.arange(0, s_cum[-1], 0.02)
    dense = np.stack([np.interp(s_dense, s_cum, pts[:, 0]), np.interp(s_dense, s_cum, pts[:, 1])], 1)
    dense = _smooth(dense, 8.0)
    seg = np.linalg.norm(np.diff(dense, axis=0), axis=1)
    s_cum = np.concatenate([[0], np.cumsum(seg)])
    s_frame = np.minimum(np.concatenate([[0], np.cumsum(speed[:-1] * dt)]), s_cum[-1])
    xy = np.stack([np.interp(s_frame, s_cum, dense[:, 0]), np.interp(s_frame, s_cum, dense[:, 1])], 1)
    ahead = np.stack([np.interp(np.minimum(s_frame + 0.3, s_cum[-1]), s_cum, dense[:, 0]),
                      np.interp(np.minimum(s_frame + 0.3, s_cum[-1]), s_cum, dense[:, 1])], 1)
    heading = np.arctan2(ahead[:, 1] - xy[:, 1], ahead[:, 0] - xy[:, 0])
    heading = np.unwrap(heading)
    heading = _smooth(heading, 1.0 * fps)
    look = np.radians(rng.uniform(35, 65)) * np.sin(2 * np.pi * t / rng.uniform(5, 10) + rng.uniform(0, 6.28))
    yaw = heading + look
    if style == "long_horizon" and touring < num_frames:
        # after the tour, face the x=0 end wall (yaw ~ pi) with the look-around on top
        w = _smooth((np.arange(num_frames) >= touring).astype(float), 1.0 * fps)
        target = np.pi + 0.6 * look
        diff = (target - yaw + np.pi) % (2 * np.pi) - np.pi
        yaw = yaw + w * diff
    pitch = np.radians(-12 + 5 * np.sin(2 * np.pi * t / rng.uniform(6, 12)))
    z = camera_height if camera_height is not None else float(rng.uniform(1.2, 1.6))
    if not 0.2 < z < scene.room.height - 0.2:
        raise ValueError(f"camera height {z} m is outside the room (height {scene.room.height} m)")
    poses = np.stack([look_pose((x, y, z), a, p) for (x, y), a, p in zip(xy, yaw, pitch)])
    stamps = np.round(np.arange(num_frames) * (1e9 / fps)).astype(np.int64)
    return Trajectory(poses, stamps, float(fps))
