"""Seeded indoor scenes: a rectangular room furnished with composite-primitive objects.

World frame: z up, the room spans [0, width] x [0, depth] x [0, height] metres. Every object is a
composite of axis-aligned boxes and vertical cylinders ("parts"); objects are rotated by
multiples of 90 degrees about z, so every part stays axis-aligned and the object's footprint is
an exact rectangle. Objects never interpenetrate (footprints are disjoint with a margin).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

# Surface patterns understood by the renderer (procedural, from world coordinates).
PATTERNS = ("plain", "checker", "planks", "stripes", "noise", "grid", "screen")
PATTERN_CODE = {name: i for i, name in enumerate(PATTERNS)}

# category -> (width range, depth range, height range) in metres (local x, local y, z),
# palette of base colours (RGB 0..255), whether it stands against a wall.
CATEGORIES: dict[str, dict] = {
    "chair": dict(w=(0.42, 0.55), d=(0.42, 0.55), h=(0.8, 1.0), wall=False,
                  palette=[(150, 90, 40), (40, 40, 40), (200, 60, 50), (60, 110, 170)]),
    "table": dict(w=(0.8, 1.8), d=(0.6, 1.0), h=(0.7, 0.78), wall=False,
                  palette=[(170, 120, 70), (120, 80, 45), (225, 225, 220), (90, 60, 40)]),
    "sofa": dict(w=(1.5, 2.3), d=(0.8, 1.0), h=(0.75, 0.95), wall=True,
                 palette=[(70, 90, 140), (120, 120, 120), (150, 60, 60), (90, 120, 80)]),
    "bed": dict(w=(1.0, 1.8), d=(1.9, 2.2), h=(0.9, 1.2), wall=True,
                palette=[(240, 240, 235), (200, 210, 235), (235, 215, 190)]),
    "lamp": dict(w=(0.3, 0.45), d=None, h=(1.3, 1.8), wall=False,
                 palette=[(245, 235, 180), (250, 250, 245), (240, 200, 120)]),
    "plant": dict(w=(0.3, 0.6), d=None, h=(0.5, 1.5), wall=False,
                  palette=[(40, 130, 50), (70, 150, 60), (30, 100, 60)]),
    "tv": dict(w=(0.9, 1.6), d=(0.3, 0.45), h=(0.95, 1.4), wall=True,
               palette=[(25, 25, 30), (45, 45, 50)]),
    "cabinet": dict(w=(0.6, 1.2), d=(0.4, 0.6), h=(0.8, 2.0), wall=True,
                    palette=[(230, 230, 225), (160, 110, 60), (100, 100, 105), (60, 80, 60)]),
    "box": dict(w=(0.3, 0.6), d=(0.3, 0.6), h=(0.25, 0.5), wall=False,
                palette=[(190, 150, 100), (175, 135, 85)]),
    "trash can": dict(w=(0.28, 0.42), d=None, h=(0.4, 0.75), wall=False,
                      palette=[(90, 90, 95), (40, 110, 60), (60, 80, 160), (200, 200, 200)]),
}

# Per-pixel semantic classes (training supervision): the room shell, then the categories.
SEMANTIC_CLASSES = ("room", *CATEGORIES)

WALL_COLOURS = [(225, 215, 195), (200, 215, 225), (215, 225, 200), (235, 225, 225), (190, 190, 200),
                (240, 240, 235), (210, 195, 175)]
FLOOR_COLOURS = [(150, 110, 70), (120, 120, 125), (190, 170, 130), (90, 70, 55), (170, 160, 150)]

ROOM_SIDE_RANGE = (3.0, 12.0)
ROOM_HEIGHT_RANGE = (2.4, 3.2)
PLACEMENT_MARGIN = 0.15    # minimum gap between two objects' footprints (m)
WALL_GAP = 0.05            # gap between a wall-standing object and its wall (m)


@dataclass(frozen=True)
class Part:
    """One primitive. kind "box": the AABB [lo, hi]; kind "cylinder": vertical, axis at the
    centre of [lo, hi] in x/y, radius (hi - lo)[0] / 2, from z=lo[2] to z=hi[2]."""
    kind: str
    lo: tuple[float, float, float]
    hi: tuple[float, float, float]
    colour: tuple[int, int, int]
    pattern: str = "plain"


@dataclass(frozen=True)
class SceneObject:
    id: int                                   # instance id; masks use id (0 = room shell)
    category: str
    center: tuple[float, float, float]        # centre of the world AABB
    size: tuple[float, float, float]          # world AABB extents (x, y, z)
    yaw_deg: int                              # 0, 90, 180, 270: rotation of local +y (front)
    colour: tuple[int, int, int]
    parts: tuple[Part, ...]

    @property
    def lo(self) -> np.ndarray:
        return np.asarray(self.center) - np.asarray(self.size) / 2

    @property
    def hi(self) -> np.ndarray:
        return np.asarray(self.center) + np.asarray(self.size) / 2

    @property
    def longest_dimension(self) -> float:
        return float(max(self.size))


@dataclass(frozen=True)
class Room:
    width: float     # x extent
    depth: float     # y extent
    height: float    # z extent
    wall_colour: tuple[int, int, int]
    floor_colour: tuple[int, int, int]
    wall_pattern: str
    floor_pattern: str

    @property
    def area(self) -> float:
        return self.width * self.depth


@dataclass(frozen=True)
class Scene:
    name: str
    seed: int
    room: Room
    objects: tuple[SceneObject, ...] = field(default_factory=tuple)

    def count(self, category: str) -> int:
        return sum(o.category == category for o in self.objects)

    def unique_objects(self) -> list[SceneObject]:
        """Objects whose category has exactly one instance (they can be named unambiguously)."""
        return [o for o in self.objects if self.count(o.category) == 1]

    def to_dict(self) -> dict:
        return {"name": self.name, "seed": self.seed, "room": asdict(self.room),
                "objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        try:
            room = Room(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["room"].items()})
            objects = tuple(
                SceneObject(id=int(o["id"]), category=o["category"], center=tuple(o["center"]),
                            size=tuple(o["size"]), yaw_deg=int(o["yaw_deg"]), colour=tuple(o["colour"]),
                            parts=tuple(Part(p["kind"], tuple(p["lo"]), tuple(p["hi"]), tuple(p["colour"]),
                                             p.get("pattern", "plain")) for p in o["parts"]))
                for o in d["objects"])
            return cls(name=d["name"], seed=int(d["seed"]), room=room, objects=objects)
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed scene description: {e!r}") from e


# ---------------------------------------------------------------------------------------------
# Object construction: parts in the local frame (footprint centred at the origin, front = +y).

def _box(x0, y0, z0, x1, y1, z1, colour, pattern="plain") -> Part:
    return Part("box", (x0, y0, z0), (x1, y1, z1), colour, pattern)


def _cyl(cx, cy, r, z0, z1, colour, pattern="plain") -> Part:
    return Part("cylinder", (cx - r, cy - r, z0), (cx + r, cy + r, z1), colour, pattern)


def _shade(c, f):
    return tuple(int(np.clip(round(v * f), 0, 255)) for v in c)


def build_parts(category: str, w: float, d: float, h: float, colour, rng: np.random.Generator) -> list[Part]:
    """Local-frame parts of one object of footprint w x d and height h."""
    X, Y = w / 2, d / 2
    dark, light = _shade(colour, 0.6), _shade(colour, 1.25)
    if category == "chair":
        leg, seat = 0.04, 0.45
        parts = [_box(sx * X - (leg if sx > 0 else 0), sy * Y - (leg if sy > 0 else 0), 0,
                      sx * X + (leg if sx < 0 else 0), sy * Y + (leg if sy < 0 else 0), seat - 0.05, dark)
                 for sx in (-1, 1) for sy in (-1, 1)]
        parts.append(_box(-X, -Y, seat - 0.05, X, Y, seat, colour, "noise"))
        parts.append(_box(-X, -Y, seat, X, -Y + 0.06, h, colour, "stripes"))
        return parts
    if category == "table":
        leg, top = 0.06, 0.04
        parts = [_box(sx * X - (leg if sx > 0 else 0), sy * Y - (leg if sy > 0 else 0), 0,
                      sx * X + (leg if sx < 0 else 0), sy * Y + (leg if sy < 0 else 0), h - top, dark)
                 for sx in (-1, 1) for sy in (-1, 1)]
        parts.append(_box(-X, -Y, h - top, X, Y, h, colour, "planks"))
        return parts
    if category == "sofa":
        arm = 0.18
        return [_box(-X, -Y, 0, X, Y, 0.42, colour, "noise"),
                _box(-X, -Y, 0.42, X, -Y + 0.22, h, colour, "stripes"),
                _box(-X, -Y, 0.42, -X + arm, Y, 0.62, dark),
                _box(X - arm, -Y, 0.42, X, Y, 0.62, dark)]
    if category == "bed":
        frame = (110, 75, 45)
        return [_box(-X, -Y, 0, X, Y, 0.3, frame, "planks"),
                _box(-X + 0.03, -Y + 0.08, 0.3, X - 0.03, Y - 0.03, 0.52, colour, "grid"),
                _box(-X, -Y, 0, X, -Y + 0.08, h, frame, "planks"),
                _box(-X + 0.15, -Y + 0.1, 0.52, X - 0.15, -Y + 0.45, 0.62, light)]
    if category == "lamp":
        r = w / 2
        return [_cyl(0, 0, r * 0.6, 0, 0.04, (50, 50, 55)),
                _cyl(0, 0, 0.02, 0.04, h - 0.3, (60, 60, 60)),
                _cyl(0, 0, r, h - 0.32, h, colour, "stripes")]
    if category == "plant":
        r = w / 2
        pot_h = min(0.35, 0.3 * h)
        return [_cyl(0, 0, r * 0.6, 0, pot_h, (170, 90, 60), "stripes"),
                _cyl(0, 0, r, pot_h, h, colour, "noise")]
    if category == "tv":
        stand_h = 0.5
        return [_box(-X, -Y, 0, X, Y, stand_h, (90, 65, 45), "planks"),
                _box(-0.05, -0.05, stand_h, 0.05, 0.05, stand_h + 0.1, (30, 30, 30)),
                _box(-X + 0.02, -0.03, stand_h + 0.1, X - 0.02, 0.03, h, colour),
                _box(-X + 0.06, 0.03, stand_h + 0.14, X - 0.06, 0.04, h - 0.04, (40, 60, 90), "screen")]
    if category == "cabinet":
        return [_box(-X, -Y, 0, X, Y - 0.02, h, colour, "grid"),
                _box(-X + 0.02, Y - 0.02, 0.05, -0.01, Y, h - 0.05, light),
                _box(0.01, Y - 0.02, 0.05, X - 0.02, Y, h - 0.05, light),
                _box(-0.06, Y - 0.04, h * 0.5, -0.03, Y - 0.02, h * 0.5 + 0.12, (70, 70, 70)),
                _box(0.03, Y - 0.04, h * 0.5, 0.06, Y - 0.02, h * 0.5 + 0.12, (70, 70, 70))]
    if category == "box":
        return [_box(-X, -Y, 0, X, Y, h, colour, "noise"),
                _box(-X, -0.03, h - 0.002, X, 0.03, h, _shade(colour, 0.7))]
    if category == "trash can":
        r = w / 2
        return [_cyl(0, 0, r * 0.9, 0, h - 0.05, colour, "stripes"),
                _cyl(0, 0, r, h - 0.05, h, dark)]
    raise ValueError(f"unknown object category {category!r}; known: {sorted(CATEGORIES)}")


def _rotate_part(p: Part, yaw_deg: int, cx: float, cy: float) -> Part:
    """Rotate a local part by yaw (multiple of 90 degrees) and translate by (cx, cy)."""
    k = (yaw_deg // 90) % 4
    c, s = [(1, 0), (0, 1), (-1, 0), (0, -1)][k]
    xs = []
    for x in (p.lo[0], p.hi[0]):
        for y in (p.lo[1], p.hi[1]):
            xs.append((c * x - s * y, s * x + c * y))
    xs = np.asarray(xs)
    lo = (float(xs[:, 0].min() + cx), float(xs[:, 1].min() + cy), float(p.lo[2]))
    hi = (float(xs[:, 0].max() + cx), float(xs[:, 1].max() + cy), float(p.hi[2]))
    return Part(p.kind, lo, hi, p.colour, p.pattern)


def make_object(obj_id: int, category: str, x: float, y: float, yaw_deg: int, w: float, d: float,
                h: float, colour, rng: np.random.Generator) -> SceneObject:
    local = build_parts(category, w, d, h, colour, rng)
    parts = tuple(_rotate_part(p, yaw_deg, x, y) for p in local)
    lo = np.min([p.lo for p in parts], axis=0)
    hi = np.max([p.hi for p in parts], axis=0)
    center = tuple(float(v) for v in (lo + hi) / 2)
    size = tuple(float(v) for v in hi - lo)
    return SceneObject(obj_id, category, center, size, int(yaw_deg), tuple(int(c) for c in colour), parts)


# ---------------------------------------------------------------------------------------------

def _check_range(name: str, value, lo: float, hi: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise ValueError(f"{name} must be within [{lo}, {hi}] m, got {value!r}")
    return v


def generate_scene(seed: int, *, room_size: tuple[float, float, float] | None = None,
                   categories: list[str] | None = None, num_objects: int | None = None,
                   counts: dict[str, int] | None = None, max_tries: int = 400) -> Scene:
    """A furnished room, fully determined by `seed` and the optional overrides.

    room_size: (width, depth, height) in metres (3..12, 3..12, 2.4..3.2); default random.
    categories: allowed categories (default all); counts: exact instances per category (overrides
    num_objects / categories). Raises ValueError for invalid sizes, unknown categories, or when
    the requested objects cannot be placed without interpenetration.
    """
    rng = np.random.default_rng([int(seed), 0x5CE0E])
    if room_size is None:
        width, depth = (float(round(rng.uniform(*ROOM_SIDE_RANGE), 2)) for _ in range(2))
        height = float(round(rng.uniform(*ROOM_HEIGHT_RANGE), 2))
    else:
        if len(room_size) != 3:
            raise ValueError(f"room_size must be (width, depth, height), got {room_size!r}")
        width = _check_range("room width", room_size[0], *ROOM_SIDE_RANGE)
        depth = _check_range("room depth", room_size[1], *ROOM_SIDE_RANGE)
        height = _check_range("room height", room_size[2], *ROOM_HEIGHT_RANGE)
    allowed = list(CATEGORIES) if categories is None else list(categories)
    for c in allowed + list(counts or {}):
        if c not in CATEGORIES:
            raise ValueError(f"unknown object category {c!r}; known: {sorted(CATEGORIES)}")
    if not allowed and not counts:
        raise ValueError("categories must not be empty")
    room = Room(width, depth, height,
                WALL_COLOURS[rng.integers(len(WALL_COLOURS))], FLOOR_COLOURS[rng.integers(len(FLOOR_COLOURS))],
                ("plain", "stripes", "noise")[rng.integers(3)], ("checker", "planks", "grid")[rng.integers(3)])

    strict = counts is not None or num_objects is not None   # explicit requests fail loudly
    if counts is not None:
        wanted = [c for c, n in sorted(counts.items()) for _ in range(int(n))]
        if any(int(n) < 0 for n in counts.values()):
            raise ValueError(f"object counts must be >= 0, got {counts}")
    else:
        area = width * depth
        if num_objects is None:
            num_objects = int(np.clip(round(area / 4.0 + rng.integers(0, 4)), 5, 22))
        if num_objects < 0:
            raise ValueError(f"num_objects must be >= 0, got {num_objects}")
        # Some categories get several instances; most get one.
        order = list(rng.permutation(allowed))
        wanted = []
        while len(wanted) < num_objects:
            c = order[len(wanted) % len(order)] if len(wanted) < len(order) else allowed[rng.integers(len(allowed))]
            wanted.append(str(c))
    free_area = (width - 0.8) * (depth - 0.8)
    def footprint(ws):
        return sum(CATEGORIES[c]["w"][0] * (CATEGORIES[c]["d"] or CATEGORIES[c]["w"])[0] for c in ws)
    while not strict and wanted and footprint(wanted) > 0.3 * free_area:
        wanted.pop()
    need = footprint(wanted)
    if need > 0.45 * free_area:
        raise ValueError(f"cannot place {len(wanted)} objects ({need:.1f} m^2 of footprint) in a "
                         f"{width:.1f} x {depth:.1f} m room without interpenetration; use fewer objects "
                         f"or a larger room")

    placed: list[SceneObject] = []
    rects: list[tuple[float, float, float, float]] = []
    for cat in wanted:
        spec = CATEGORIES[cat]
        for _ in range(max_tries):
            w = float(rng.uniform(*spec["w"]))
            d = w if spec["d"] is None else float(rng.uniform(*spec["d"]))
            h = float(rng.uniform(*spec["h"]))
            colour = spec["palette"][rng.integers(len(spec["palette"]))]
            if spec["wall"]:
                wall = int(rng.integers(4))   # 0: y=0, 1: x=W, 2: y=D, 3: x=0 ; front faces inward
                yaw = (0, 90, 180, 270)[wall]
                ext_x, ext_y = (w, d) if yaw in (0, 180) else (d, w)
                if wall == 0:
                    x, y = rng.uniform(ext_x / 2 + 0.1, width - ext_x / 2 - 0.1), WALL_GAP + ext_y / 2
                elif wall == 2:
                    x, y = rng.uniform(ext_x / 2 + 0.1, width - ext_x / 2 - 0.1), depth - WALL_GAP - ext_y / 2
                elif wall == 1:
                    x, y = width - WALL_GAP - ext_x / 2, rng.uniform(ext_y / 2 + 0.1, depth - ext_y / 2 - 0.1)
                else:
                    x, y = WALL_GAP + ext_x / 2, rng.uniform(ext_y / 2 + 0.1, depth - ext_y / 2 - 0.1)
                if not (ext_x + 0.2 < width and ext_y + 0.2 < depth):
                    continue
            else:
                yaw = int(rng.integers(4)) * 90
                ext_x, ext_y = (w, d) if yaw in (0, 180) else (d, w)
                lo_x, lo_y = ext_x / 2 + 0.3, ext_y / 2 + 0.3
                if width - 2 * lo_x <= 0 or depth - 2 * lo_y <= 0:
                    continue
                x, y = rng.uniform(lo_x, width - lo_x), rng.uniform(lo_y, depth - lo_y)
            r = (x - ext_x / 2, y - ext_y / 2, x + ext_x / 2, y + ext_y / 2)
            m = PLACEMENT_MARGIN
            if any(r[0] < q[2] + m and q[0] < r[2] + m and r[1] < q[3] + m and q[1] < r[3] + m for q in rects):
                continue
            rects.append(r)
            placed.append(make_object(len(placed) + 1, cat, float(x), float(y), yaw, w, d, h, colour, rng))
            break
        else:
            if not strict:
                continue      # a random furnishing simply gets one object fewer
            raise ValueError(f"impossible placement: no free spot for object {len(placed) + 1} "
                             f"({cat!r}) after {max_tries} tries in a {width:.1f} x {depth:.1f} m room "
                             f"with {len(placed)} objects; use fewer objects or a larger room")
    return Scene(name=f"synth_{int(seed):06d}", seed=int(seed), room=room, objects=tuple(placed))


def semantic_classes(scene: Scene, mask: np.ndarray) -> np.ndarray:
    """Instance mask [H,W] (object ids, 0 = room shell) -> SEMANTIC_CLASSES index [H,W] uint8."""
    lookup = np.zeros(max([o.id for o in scene.objects], default=0) + 1, dtype=np.uint8)
    for o in scene.objects:
        lookup[o.id] = SEMANTIC_CLASSES.index(o.category)
    return lookup[mask]


def aabb_distance(a: SceneObject, b: SceneObject) -> float:
    """Distance between the closest points of two objects' 3D bounding boxes (m)."""
    return bounds_gap(a.lo, a.hi, b.lo, b.hi)


def bounds_gap(lo_a, hi_a, lo_b, hi_b) -> float:
    """Distance between the closest points of two axis-aligned boxes given by their corners."""
    gap = np.maximum(0.0, np.maximum(np.subtract(lo_a, hi_b), np.subtract(lo_b, hi_a)))
    return float(np.sqrt((gap ** 2).sum()))
