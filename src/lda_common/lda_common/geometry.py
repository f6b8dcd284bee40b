"""Pose helpers: positions in metres, orientations as unit quaternions (x, y, z, w).

The quaternion order is the ROS one (``geometry_msgs/Quaternion``) and scipy's default, so poses go
between messages, :class:`scipy.spatial.transform.Rotation` and the hand-centric action space
without reordering.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from .robot_config import RigidOffset


def _rot(quat_xyzw: np.ndarray) -> Rotation:
    return Rotation.from_quat(np.asarray(quat_xyzw, dtype=np.float64).reshape(-1, 4))


def canonical_quat(quat_xyzw: np.ndarray) -> np.ndarray:
    """Unit quaternions with the sign chosen so that ``w >= 0`` (q and -q are the same rotation)."""
    q = np.asarray(quat_xyzw, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., 3:4] < 0, -q, q)


def eef_to_canonical(position: np.ndarray, quat_xyzw: np.ndarray, offset: RigidOffset
                     ) -> tuple[np.ndarray, np.ndarray]:
    """EEF link pose(s) in the base frame -> canonical EEF frame pose(s) in the base frame."""
    p = np.asarray(position, dtype=np.float64)
    shape = p.shape[:-1]
    r_e = _rot(quat_xyzw)
    r_o = Rotation.from_quat(offset.quat_xyzw)
    p_c = p.reshape(-1, 3) + r_e.apply(np.asarray(offset.xyz))
    q_c = (r_e * r_o).as_quat()
    return p_c.reshape(*shape, 3), canonical_quat(q_c).reshape(*shape, 4)


def canonical_to_eef(position: np.ndarray, quat_xyzw: np.ndarray, offset: RigidOffset
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Canonical EEF frame pose(s) in the base frame -> EEF link pose(s) (the inverse of eef_to_canonical)."""
    p = np.asarray(position, dtype=np.float64)
    shape = p.shape[:-1]
    r_o = Rotation.from_quat(offset.quat_xyzw)
    r_e = _rot(quat_xyzw) * r_o.inv()
    p_e = p.reshape(-1, 3) - r_e.apply(np.asarray(offset.xyz))
    return p_e.reshape(*shape, 3), canonical_quat(r_e.as_quat()).reshape(*shape, 4)


def keypoints_to_canonical(points: np.ndarray, offset: RigidOffset) -> np.ndarray:
    """Keypoints (..., 3) given in the EEF link frame -> the same points in the canonical EEF frame."""
    pts = np.asarray(points, dtype=np.float64)
    r_o = Rotation.from_quat(offset.quat_xyzw)
    return r_o.inv().apply(pts.reshape(-1, 3) - np.asarray(offset.xyz)).reshape(pts.shape)


def pose_delta(p0: np.ndarray, q0: np.ndarray, p1: np.ndarray, q1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Motion from pose 0 to pose 1 expressed in frame 0: (dp (...,3) [m], rotation vector (...,3) [rad])."""
    p0, p1 = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
    shape = p0.shape[:-1]
    r0, r1 = _rot(q0), _rot(q1)
    dp = r0.inv().apply((p1 - p0).reshape(-1, 3))
    drv = (r0.inv() * r1).as_rotvec()
    return dp.reshape(*shape, 3), drv.reshape(*shape, 3)


def apply_pose_delta(p0: np.ndarray, q0: np.ndarray, dp: np.ndarray, drotvec: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Pose 0 moved by a delta expressed in frame 0 (the inverse of pose_delta): (p1, q1 with w >= 0)."""
    p0 = np.asarray(p0, dtype=np.float64)
    shape = p0.shape[:-1]
    r0 = _rot(q0)
    p1 = p0.reshape(-1, 3) + r0.apply(np.asarray(dp, dtype=np.float64).reshape(-1, 3))
    r1 = r0 * Rotation.from_rotvec(np.asarray(drotvec, dtype=np.float64).reshape(-1, 3))
    return p1.reshape(*shape, 3), canonical_quat(r1.as_quat()).reshape(*shape, 4)


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
