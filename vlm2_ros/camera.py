"""Camera model shared by the simulator, the ROS conversion layer and the engine.

Conventions (used everywhere in vlm2_ros):
- Images are numpy uint8 arrays [H, W, 3] in RGB order.
- Camera axes follow OpenCV / ROS optical frames: x right, y down, z forward (metres).
- A pose is a float64 [4, 4] camera-to-world transform; the world frame is z-up (ROS REP 103).
- Stamps are integer nanoseconds (exact round trip with builtin_interfaces/Time).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of an undistorted image of `width` x `height` pixels."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        values = (self.fx, self.fy, self.cx, self.cy)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"camera intrinsics must be finite, got {values}")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"focal lengths must be positive, got fx={self.fx} fy={self.fy}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")

    @property
    def matrix(self) -> np.ndarray:
        """3x3 K matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def scaled(self, width: int, height: int) -> "CameraIntrinsics":
        """Intrinsics of the same camera after resizing the image to width x height."""
        sx, sy = width / self.width, height / self.height
        return CameraIntrinsics(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, width, height)

    @classmethod
    def from_fov(cls, width: int, height: int, horizontal_fov_deg: float) -> "CameraIntrinsics":
        fx = 0.5 * width / math.tan(math.radians(horizontal_fov_deg) / 2)
        return cls(fx, fx, width / 2, height / 2, width, height)


def validate_pose(pose: np.ndarray) -> np.ndarray:
    """Return `pose` as float64 [4, 4] or raise ValueError naming what is wrong."""
    pose = np.asarray(pose, dtype=np.float64)
    if pose.shape != (4, 4):
        raise ValueError(f"pose must be a 4x4 camera-to-world matrix, got shape {pose.shape}")
    if not np.all(np.isfinite(pose)):
        raise ValueError("pose contains NaN or inf")
    rotation = pose[:3, :3]
    if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-3) or np.linalg.det(rotation) <= 0:
        raise ValueError("pose rotation block is not a proper rotation matrix")
    if not np.allclose(pose[3], [0, 0, 0, 1]):
        raise ValueError(f"pose last row must be [0, 0, 0, 1], got {pose[3].tolist()}")
    return pose
