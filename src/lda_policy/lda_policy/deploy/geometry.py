"""Pose helpers for the deployment core: positions in metres, orientations as unit quaternions (x, y, z, w).

The quaternion order is the ROS one (``geometry_msgs/Quaternion``) and scipy's default, so poses go
between messages, :class:`scipy.spatial.transform.Rotation` and the hand-centric action space
without reordering.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation


@dataclass(frozen=True)
class HandState:
    """State of one hand: EEF link pose in the robot base frame + finger values.

    ``fingers`` is what the robot config's ``fingers.type`` says: one gripper width [m] (``width``) or
    the named joint positions (``joints``).
    """

    position: np.ndarray  # (3,) metres
    quaternion: np.ndarray  # (4,) x, y, z, w; unit norm
    fingers: np.ndarray  # (F,) gripper width [m] or finger joint positions

    @staticmethod
    def make(position, quaternion, fingers) -> HandState:
        q = np.asarray(quaternion, dtype=np.float64).reshape(4)
        n = float(np.linalg.norm(q))
        if np.isfinite(n) and n > 1e-9:
            q = q / n
        return HandState(np.asarray(position, dtype=np.float64).reshape(3), q,
                         np.atleast_1d(np.asarray(fingers, dtype=np.float64)).reshape(-1))

    def is_finite(self) -> bool:
        return bool(np.isfinite(self.position).all() and np.isfinite(self.quaternion).all()
                    and np.isfinite(self.fingers).all() and np.linalg.norm(self.quaternion) > 1e-6)


#: Per-hand states keyed by hand name, in the robot config's hand order.
HandsState = dict[str, HandState]


def slerp(q0: np.ndarray, q1: np.ndarray, alpha: float) -> np.ndarray:
    """Spherical interpolation of unit quaternions (x, y, z, w); alpha 0 -> q0, 1 -> q1 (shortest arc)."""
    q0 = np.asarray(q0, dtype=np.float64)
    q1 = np.asarray(q1, dtype=np.float64)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:  # q and -q are the same rotation: take the short way round
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly equal: linear interpolation is exact enough and well conditioned
        q = q0 + alpha * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(min(dot, 1.0))
    s = np.sin(theta)
    return (np.sin((1.0 - alpha) * theta) * q0 + np.sin(alpha * theta) * q1) / s


def blend_states(a: HandState, b: HandState, alpha: float) -> HandState:
    """Pose/finger interpolation: lerp positions and fingers, slerp orientations."""
    if alpha <= 0.0:
        return a
    if alpha >= 1.0:
        return b
    return HandState(a.position + alpha * (b.position - a.position), slerp(a.quaternion, b.quaternion, alpha),
                     a.fingers + alpha * (b.fingers - a.fingers))


def rotation_angle(q0: np.ndarray, q1: np.ndarray) -> float:
    """Angle [rad] of the rotation between two orientations."""
    return float((Rotation.from_quat(q0).inv() * Rotation.from_quat(q1)).magnitude())
