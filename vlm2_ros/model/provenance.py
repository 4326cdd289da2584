"""Where a memory entry came from: frame stamp, frame index, camera pose when known, the 3D point
each of its tokens was seen at, and when the memory first saw each token's place.

Kept as tensors aligned with the memory slots so it moves with them (FIFO shifts, episodic
replacement) and snapshots as plain safetensors. The points are the fusion's C_t: an entry H_t
holds frame t's patches, and an episodic entry M_t is the memory read queried by those patches,
so both are placed where frame t saw them. Carrying them beats reading them back from the tokens:
a learnt read of a fused token loses most of the point that went into it.

A fixed-capacity memory overwrites the entries of a place it sees again, and with them the frame
it first saw what is there: a robot that toured a room for minutes would remember each object as
first seen at its latest view. So each patch also carries `first_seen`, the earliest frame that
any remembered patch in its place (a cube of `cell_m` metres, in the world frame) was seen at
(with_first_sightings): handed on from entry to entry, it outlives the entries that saw it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

NEVER = torch.iinfo(torch.int64).max     # first_seen of a place no remembered posed patch has seen
CUBE_OFFSET = 2 ** 15                     # place_cells: cube indices per axis in [-CUBE_OFFSET, CUBE_OFFSET)


def place_cells(points: torch.Tensor, cell_m: float) -> torch.Tensor:
    """An id per point for the cube of cell_m metres it lies in, distinct between batch elements:
    points [B,M,3] (metres) -> [B,M] int64. Each cube is one int64 key (16 bits an axis: 32,768
    cubes either way of the origin, the outermost taking everything beyond), so one 1-D unique
    finds them (some 30 times faster than a unique over rows)."""
    b = points.shape[0]
    cubes = (torch.floor(points.float() / cell_m).long() + CUBE_OFFSET).clamp(0, 2 * CUBE_OFFSET - 1)  # [B,M,3]
    key = torch.arange(b).view(b, 1)
    for axis in range(3):
        key = key * (2 * CUBE_OFFSET) + cubes[..., axis]                                       # [B,M]
    return torch.unique(key, return_inverse=True)[1]


@dataclass(frozen=True)
class Provenance:
    stamp_ns: torch.Tensor      # [B,n] int64
    frame_index: torch.Tensor   # [B,n] int64
    pose: torch.Tensor          # [B,n,4,4] float64 camera-to-world (identity when unknown)
    has_pose: torch.Tensor      # [B,n] bool
    patch_points: torch.Tensor  # [B,n,N,3] float32 metres, world frame with a pose (else the geometry window's)
    first_seen: torch.Tensor    # [B,n,N] int64: per patch, the earliest frame its place was seen (<= frame_index)

    @classmethod
    def empty(cls, batch_size: int, num_tokens: int) -> "Provenance":
        return cls(
            stamp_ns=torch.zeros(batch_size, 0, dtype=torch.int64),
            frame_index=torch.zeros(batch_size, 0, dtype=torch.int64),
            pose=torch.zeros(batch_size, 0, 4, 4, dtype=torch.float64),
            has_pose=torch.zeros(batch_size, 0, dtype=torch.bool),
            patch_points=torch.zeros(batch_size, 0, num_tokens, 3),
            first_seen=torch.zeros(batch_size, 0, num_tokens, dtype=torch.int64),
        )

    @classmethod
    def single(cls, stamp_ns: torch.Tensor, frame_index: torch.Tensor, patch_points: torch.Tensor,
               pose: torch.Tensor | None = None) -> "Provenance":
        """One entry per batch element: stamp_ns, frame_index [B]; patch_points [B,N,3]; pose
        [B,4,4] or None. Each patch's place counts as first seen in this frame
        (with_first_sightings hands it an earlier one)."""
        b, n = stamp_ns.shape[0], patch_points.shape[1]
        has_pose = torch.full((b, 1), pose is not None)
        pose = torch.eye(4, dtype=torch.float64).expand(b, 4, 4) if pose is None else pose
        frame_index = frame_index.detach().cpu().view(b, 1).to(torch.int64)
        return cls(stamp_ns.view(b, 1).to(torch.int64), frame_index,
                   pose.detach().cpu().view(b, 1, 4, 4).to(torch.float64), has_pose,
                   patch_points.detach().cpu().float().unsqueeze(1), frame_index[:, :, None].expand(b, 1, n).clone())

    def __len__(self) -> int:
        return self.stamp_ns.shape[1]

    def fields(self) -> dict[str, torch.Tensor]:
        return {"stamp_ns": self.stamp_ns, "frame_index": self.frame_index, "pose": self.pose,
                "has_pose": self.has_pose, "patch_points": self.patch_points, "first_seen": self.first_seen}

    def with_first_sightings(self, remembered: Sequence["Provenance"], cell_m: float) -> "Provenance":
        """This single entry, each patch's first_seen lowered to the earliest first_seen of the
        `remembered` patches in its place (the same cube of cell_m metres). Only posed entries
        share the world frame: an unposed entry inherits nothing, an unposed remembered one hands
        nothing on."""
        parts = [p for p in remembered if len(p)]
        if not parts or not bool(self.has_pose.any()):     # unposed streams skip the per-frame cube work
            return self
        b, _, n, _ = self.patch_points.shape
        points = torch.cat([p.patch_points for p in parts], dim=1).flatten(1, 2)               # [B,m*N,3]
        first = torch.cat([p.first_seen for p in parts], dim=1)                                  # [B,m,N]
        posed = torch.cat([p.has_pose for p in parts], dim=1)                                    # [B,m]
        first = torch.where(posed[..., None], first, NEVER).flatten(1)                           # [B,m*N]
        cells = place_cells(torch.cat([points, self.patch_points[:, 0]], dim=1), cell_m)         # [B,m*N+N]
        earliest = torch.full((int(cells.max()) + 1,), NEVER).scatter_reduce(
            0, cells[:, :-n].reshape(-1), first.reshape(-1), reduce="amin")                      # per cell
        inherited = torch.minimum(self.first_seen[:, 0], earliest[cells[:, -n:]])               # [B,N]
        inherited = torch.where(self.has_pose[:, :1], inherited, self.first_seen[:, 0])
        return dataclasses.replace(self, first_seen=inherited[:, None])

    def append(self, other: "Provenance", keep_last: int) -> "Provenance":
        return Provenance(*(torch.cat([mine, theirs], dim=1)[:, -keep_last:]
                            for mine, theirs in zip(self.fields().values(), other.fields().values())))

    def replace(self, slots: torch.Tensor, other: "Provenance") -> "Provenance":
        """Overwrite slot slots[b] of batch element b with other's single entry."""
        rows = torch.arange(slots.shape[0])
        out = []
        for mine, theirs in zip(self.fields().values(), other.fields().values()):
            updated = mine.clone()
            updated[rows, slots] = theirs[:, 0]
            out.append(updated)
        return Provenance(*out)
