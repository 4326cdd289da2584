"""Vectorised numpy ray caster: RGB, metric depth and instance masks for any camera pose.

Rays go through pixel centres with camera-frame direction K^-1 [u + 0.5, v + 0.5, 1], so the ray
parameter t of a hit *is* the z-depth (OpenCV optical frame, metres). Each primitive is tested
only against the pixels inside its projected screen rectangle, which keeps 640x480 affordable.
Shading: ambient + Lambert from a fixed light, procedural textures from world coordinates.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..camera import CameraIntrinsics, validate_pose
from .scene import PATTERN_CODE, Scene

MIN_SIZE = (16, 12)
MAX_SIZE = (1280, 960)
NEAR = 0.05
_LIGHT = np.array([0.35, 0.5, 0.8]) / np.linalg.norm([0.35, 0.5, 0.8])


@dataclass
class RenderOutput:
    rgb: np.ndarray      # uint8 [H, W, 3]
    depth: np.ndarray    # float32 [H, W] metres (z-depth); every ray hits the room shell
    mask: np.ndarray     # uint16 [H, W] instance id (0 = walls / floor / ceiling)


def check_resolution(width: int, height: int) -> None:
    if not (isinstance(width, (int, np.integer)) and isinstance(height, (int, np.integer))):
        raise ValueError(f"resolution must be integers, got {width!r}x{height!r}")
    if not (MIN_SIZE[0] <= width <= MAX_SIZE[0] and MIN_SIZE[1] <= height <= MAX_SIZE[1]):
        raise ValueError(f"invalid resolution {width}x{height}: width must be in "
                         f"[{MIN_SIZE[0]}, {MAX_SIZE[0]}] and height in [{MIN_SIZE[1]}, {MAX_SIZE[1]}]")


class Renderer:
    """Renders one scene; reuse it across frames (the primitive tables are built once)."""

    def __init__(self, scene: Scene, intrinsics: CameraIntrinsics):
        check_resolution(intrinsics.width, intrinsics.height)
        self.scene, self.K = scene, intrinsics
        self._dirs_cam = intrinsics.pixel_rays()                                    # [H, W, 3]
        prims = [(obj.id, p) for obj in scene.objects for p in obj.parts]
        self.kind = np.array([p.kind == "cylinder" for _, p in prims], bool)
        self.lo = np.array([p.lo for _, p in prims], np.float64).reshape(-1, 3)
        self.hi = np.array([p.hi for _, p in prims], np.float64).reshape(-1, 3)
        # per-primitive tables carry one sentinel row so an empty scene indexes safely
        self.obj_id = np.array([i for i, _ in prims] + [0], np.uint16)
        self.colour = np.array([p.colour for _, p in prims] + [(0, 0, 0)], np.float32) / 255
        self.pattern = np.array([PATTERN_CODE[p.pattern] for _, p in prims] + [0], np.int16)
        r = scene.room
        self._room_hi = np.array([r.width, r.depth, r.height])
        # shell surfaces: 0 floor, 1 ceiling, 2 walls
        self._shell_colour = np.array([r.floor_colour, (245, 245, 240), r.wall_colour], np.float32) / 255
        self._shell_pattern = np.array([PATTERN_CODE[r.floor_pattern], PATTERN_CODE["plain"],
                                        PATTERN_CODE[r.wall_pattern]], np.int16)

    def render(self, pose: np.ndarray) -> RenderOutput:
        pose = validate_pose(pose)
        R, o = pose[:3, :3], pose[:3, 3]
        if np.any(o <= 0) or np.any(o >= self._room_hi):
            raise ValueError(f"camera position {o.tolist()} is outside the room")
        H, W = self.K.height, self.K.width
        d = self._dirs_cam @ R.T                                             # world directions [H, W, 3]
        # Room shell: exit of the box [0, room] from inside.
        with np.errstate(divide="ignore", invalid="ignore"):
            t_axes = np.where(d > 0, (self._room_hi - o) / d, np.where(d < 0, -o / d, np.inf))
        axis = np.argmin(t_axes, -1)
        depth = np.take_along_axis(t_axes, axis[..., None], -1)[..., 0]
        normal = np.zeros((H, W, 3))
        sign = -np.sign(np.take_along_axis(d, axis[..., None], -1)[..., 0])
        np.put_along_axis(normal, axis[..., None], sign[..., None], -1)
        surface = np.where(axis == 2, np.where(d[..., 2] < 0, 0, 1), 2)     # floor / ceiling / wall
        prim = np.full((H, W), -1, np.int32)

        if len(self.lo):
            self._cast_primitives(R, o, d, depth, normal, prim)
        P = o + depth[..., None] * d
        hit = prim >= 0
        base = np.where(hit[..., None], self.colour[np.maximum(prim, 0)], self._shell_colour[surface])
        pattern = np.where(hit, self.pattern[np.maximum(prim, 0)], self._shell_pattern[surface])
        tex = _texture(P, normal, pattern)
        lambert = np.clip(normal @ _LIGHT, 0, None)
        # soft distance falloff so depth is visible in appearance too
        shade = (0.5 + 0.5 * lambert) * (1.0 - 0.02 * np.clip(depth, 0, 15))
        rgb = np.clip(base * tex[..., None] * shade[..., None], 0, 1)
        mask = np.where(hit, self.obj_id[np.maximum(prim, 0)], 0).astype(np.uint16)
        return RenderOutput((rgb * 255 + 0.5).astype(np.uint8), depth.astype(np.float32), mask)

    # -- per-primitive intersection on the primitive's screen rectangle --------------------------
    def _screen_rects(self, R: np.ndarray, o: np.ndarray) -> np.ndarray:
        """[P, 4] (u0, v0, u1, v1) pixel rectangles (half-open) covering each primitive, or an
        empty rectangle when it is entirely behind the camera."""
        corners = np.stack([np.where(np.array(b)[None, :], self.hi, self.lo)
                            for b in np.ndindex(2, 2, 2)], 1)                   # [P, 8, 3]
        cam = (corners - o) @ R                                               # world -> camera
        z = cam[..., 2]
        W, H = self.K.width, self.K.height
        rects = np.zeros((len(cam), 4), np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):
            u = self.K.fx * cam[..., 0] / z + self.K.cx
            v = self.K.fy * cam[..., 1] / z + self.K.cy
        all_front = (z > NEAR).all(1)
        any_front = (z > NEAR).any(1)
        rects[:, 0] = np.where(all_front, np.floor(np.nan_to_num(u.min(1), nan=0, posinf=W, neginf=0)), 0)
        rects[:, 1] = np.where(all_front, np.floor(np.nan_to_num(v.min(1), nan=0, posinf=H, neginf=0)), 0)
        rects[:, 2] = np.where(all_front, np.ceil(np.nan_to_num(u.max(1), nan=W, posinf=W, neginf=0)) + 1, W)
        rects[:, 3] = np.where(all_front, np.ceil(np.nan_to_num(v.max(1), nan=H, posinf=H, neginf=0)) + 1, H)
        rects[:, [0, 2]] = np.clip(rects[:, [0, 2]], 0, W)
        rects[:, [1, 3]] = np.clip(rects[:, [1, 3]], 0, H)
        rects[~any_front] = 0
        return rects

    def _cast_primitives(self, R, o, d, depth, normal, prim) -> None:
        rects = self._screen_rects(R, o)
        for i in range(len(self.lo)):
            u0, v0, u1, v1 = rects[i]
            if u1 <= u0 or v1 <= v0:
                continue
            dd = d[v0:v1, u0:u1]
            lo, hi = self.lo[i], self.hi[i]
            if self.kind[i]:
                t, n = _hit_cylinder(o, dd, lo, hi)
            else:
                t, n = _hit_box(o, dd, lo, hi)
            cur = depth[v0:v1, u0:u1]
            closer = t < cur
            if not closer.any():
                continue
            cur[closer] = t[closer]
            normal[v0:v1, u0:u1][closer] = n[closer]
            prim[v0:v1, u0:u1][closer] = i


def _hit_box(o, d, lo, hi):
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t0 = (lo - o) * inv
        t1 = (hi - o) * inv
    tmin = np.minimum(t0, t1)
    tmax = np.maximum(t0, t1)
    tmin = np.nan_to_num(tmin, nan=-np.inf)
    tmax = np.nan_to_num(tmax, nan=np.inf)
    axis = np.argmax(tmin, -1)
    t_near = np.take_along_axis(tmin, axis[..., None], -1)[..., 0]
    t_far = tmax.min(-1)
    valid = (t_near <= t_far) & (t_near > NEAR)
    t = np.where(valid, t_near, np.inf)
    n = np.zeros(d.shape)
    sign = -np.sign(np.take_along_axis(d, axis[..., None], -1)[..., 0])
    np.put_along_axis(n, axis[..., None], sign[..., None], -1)
    return t, n


def _hit_cylinder(o, d, lo, hi):
    cx, cy = (lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2
    r = (hi[0] - lo[0]) / 2
    z0, z1 = lo[2], hi[2]
    ox, oy = o[0] - cx, o[1] - cy
    dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
    a = dx * dx + dy * dy
    b = 2 * (dx * ox + dy * oy)
    c = ox * ox + oy * oy - r * r
    disc = b * b - 4 * a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        ts = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    zs = o[2] + ts * dz
    side_ok = (disc >= 0) & (a > 1e-12) & (ts > NEAR) & (zs >= z0) & (zs <= z1)
    t_side = np.where(side_ok, ts, np.inf)
    # caps: the top cap faces a camera above it, the bottom cap one below it
    zc = z1 if o[2] > z1 else z0
    with np.errstate(divide="ignore", invalid="ignore"):
        tc = (zc - o[2]) / dz
    px, py = ox + tc * dx, oy + tc * dy
    cap_ok = np.isfinite(tc) & (tc > NEAR) & (px * px + py * py <= r * r) & (o[2] > z1 or o[2] < z0)
    t_cap = np.where(cap_ok, tc, np.inf)
    use_cap = t_cap < t_side
    t = np.minimum(t_side, t_cap)
    n = np.zeros(d.shape)
    with np.errstate(invalid="ignore"):
        n[..., 0] = np.where(use_cap, 0, (ox + t * dx) / r)
        n[..., 1] = np.where(use_cap, 0, (oy + t * dy) / r)
    n[..., 2] = np.where(use_cap, 1.0 if o[2] > z1 else -1.0, 0)
    n = np.nan_to_num(n)
    return t, n


def _texture(P: np.ndarray, normal: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """Per-pixel brightness factor of the procedural pattern at world point P."""
    # in-plane coordinates: drop the axis of the dominant normal component
    ax = np.argmax(np.abs(normal), -1)
    a = np.where(ax == 0, P[..., 1], P[..., 0])
    b = np.where(ax == 2, P[..., 1], P[..., 2])
    out = np.ones(P.shape[:2], np.float64)
    checker = ((np.floor(a / 0.5) + np.floor(b / 0.5)) % 2) * 0.18 + 0.82
    planks = 0.85 + 0.15 * ((np.floor(a / 0.2) * 7.31) % 1.0) - 0.25 * (np.abs((a / 0.2) % 1 - 0.5) > 0.46)
    stripes = 0.88 + 0.12 * (np.floor(b / 0.08) % 2)
    noise = 0.85 + 0.15 * np.sin(a * 37.0) * np.sin(b * 41.0)
    grid = 1.0 - 0.3 * ((np.abs((a / 0.3) % 1 - 0.5) > 0.45) | (np.abs((b / 0.3) % 1 - 0.5) > 0.45))
    screen = 0.7 + 0.5 * np.clip((a + b) % 0.6 - 0.3, 0, 0.3) / 0.3
    for name, val in (("checker", checker), ("planks", planks), ("stripes", stripes), ("noise", noise),
                      ("grid", grid), ("screen", screen)):
        out = np.where(pattern == PATTERN_CODE[name], val, out)
    return out
