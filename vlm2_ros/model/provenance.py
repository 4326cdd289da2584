"""Where a memory entry came from: frame stamp, frame index, camera pose when known, and the 3D
point each of its tokens was seen at.

Kept as tensors aligned with the memory slots so it moves with them (FIFO shifts, episodic
replacement) and snapshots as plain safetensors. The points are the fusion's C_t: an entry H_t
holds frame t's patches, and an episodic entry M_t is the memory read queried by those patches,
so both are placed where frame t saw them. Carrying them beats reading them back from the tokens:
a learnt read of a fused token loses most of the point that went into it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Provenance:
    stamp_ns: torch.Tensor      # [B,n] int64
    frame_index: torch.Tensor   # [B,n] int64
    pose: torch.Tensor          # [B,n,4,4] float64 camera-to-world (identity when unknown)
    has_pose: torch.Tensor      # [B,n] bool
    patch_points: torch.Tensor  # [B,n,N,3] float32 metres, world frame with a pose (else the geometry window's)

    @classmethod
    def empty(cls, batch_size: int, num_tokens: int) -> "Provenance":
        return cls(
            stamp_ns=torch.zeros(batch_size, 0, dtype=torch.int64),
            frame_index=torch.zeros(batch_size, 0, dtype=torch.int64),
            pose=torch.zeros(batch_size, 0, 4, 4, dtype=torch.float64),
            has_pose=torch.zeros(batch_size, 0, dtype=torch.bool),
            patch_points=torch.zeros(batch_size, 0, num_tokens, 3),
        )

    @classmethod
    def single(cls, stamp_ns: torch.Tensor, frame_index: torch.Tensor, patch_points: torch.Tensor,
               pose: torch.Tensor | None = None) -> "Provenance":
        """One entry per batch element: stamp_ns, frame_index [B]; patch_points [B,N,3]; pose
        [B,4,4] or None."""
        b = stamp_ns.shape[0]
        has_pose = torch.full((b, 1), pose is not None)
        pose = torch.eye(4, dtype=torch.float64).expand(b, 4, 4) if pose is None else pose
        return cls(stamp_ns.view(b, 1).to(torch.int64), frame_index.view(b, 1).to(torch.int64),
                   pose.detach().cpu().view(b, 1, 4, 4).to(torch.float64), has_pose,
                   patch_points.detach().cpu().float().unsqueeze(1))

    def __len__(self) -> int:
        return self.stamp_ns.shape[1]

    def fields(self) -> dict[str, torch.Tensor]:
        return {"stamp_ns": self.stamp_ns, "frame_index": self.frame_index,
                "pose": self.pose, "has_pose": self.has_pose, "patch_points": self.patch_points}

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
