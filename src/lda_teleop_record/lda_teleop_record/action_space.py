"""Hand-centric action space (LDA-1B paper, section IV and appendix D): ROS-free, NumPy + SciPy.

Frames and conventions (used by the recorder, the bag converter, training, and the policy node):

* The robot publishes, per hand, the pose of its end-effector (EEF) link in a base frame:
  position ``p_e`` [m] and unit quaternion ``q_e`` (x, y, z, w).
* The **canonical EEF frame** ``c`` of a hand is rigidly attached to the EEF link at a per-robot offset
  ``O = (t_o, R_o)`` (the canonical frame's pose expressed in the EEF link frame; robot config
  ``hands[].canonical_offset``)::

      R_c = R_e R_o          p_c = p_e + R_e t_o

  ``observation.state`` holds the canonical pose (position, quaternion with ``w >= 0``) and fingers.
* The action at step ``t`` is the motion from step ``t`` to ``t+1`` expressed in the canonical frame
  at ``t`` (so it is independent of where the robot stands in its base frame)::

      dp = R_c(t)^T (p_c(t+1) - p_c(t))        dR = R_c(t)^T R_c(t+1),  stored as rotation vector [rad]

  followed by the finger state to reach at ``t+1`` (gripper width [m], finger joints, or keypoints
  in the canonical frame [m]); or, for a hand whose config names a ``gripper_command_topic``, the
  finger command in force at ``t`` (:meth:`HandCentricActionSpace.put_commanded_fingers`).
* The inverse (policy side): ``p_c(t+1) = p_c(t) + R_c(t) dp``, ``R_c(t+1) = R_c(t) exp(dR)``; the EEF
  link target is then ``R_e = R_c R_o^T``, ``p_e = p_c - R_e t_o``.

All functions broadcast over leading dimensions (``(..., 3)`` positions, ``(..., 4)`` quaternions).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from .robot_config import HandConfig, RigidOffset, RobotConfig


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


class CommandLog:
    """Stamped commands with zero-order hold: the command in force at ``t`` is the last one stamped at or
    before ``t``. Of two commands with one stamp the later holds; an older stamp than the last is refused.
    Stamps in any one unit (ns in the recorder, s in the policy node)."""

    def __init__(self) -> None:
        self.stamps: list = []
        self.values: list[np.ndarray] = []

    def add(self, stamp, value) -> bool:
        """Store a command; False (nothing stored) when ``stamp`` is older than the last command's."""
        if self.stamps and stamp < self.stamps[-1]:
            return False
        value = np.atleast_1d(np.asarray(value, dtype=np.float64))
        if self.stamps and stamp == self.stamps[-1]:
            self.values[-1] = value
        else:
            self.stamps.append(stamp)
            self.values.append(value)
        return True

    def prepend(self, stamp, value) -> None:
        """A command from before every stored one (the last one before a recording started)."""
        if not self.stamps or stamp < self.stamps[0]:
            self.stamps.insert(0, stamp)
            self.values.insert(0, np.atleast_1d(np.asarray(value, dtype=np.float64)))

    def at(self, t) -> np.ndarray | None:
        k = bisect.bisect_right(self.stamps, t) - 1
        return None if k < 0 else self.values[k].copy()

    def forget_before(self, t) -> None:
        """Drop commands no longer needed to answer ``at`` for times >= ``t`` (keeps the one in force)."""
        k = bisect.bisect_right(self.stamps, t) - 1
        if k > 0:
            del self.stamps[:k], self.values[:k]

    def clear(self) -> None:
        self.stamps.clear()
        self.values.clear()


@dataclass
class HandTarget:
    """Where one hand should be after an action: canonical-frame pose, EEF link pose, finger values."""

    position: np.ndarray  # canonical EEF frame, base frame coordinates [m]
    quat_xyzw: np.ndarray
    eef_position: np.ndarray  # EEF link (what the robot's controller takes) [m]
    eef_quat_xyzw: np.ndarray
    fingers: np.ndarray


class HandCentricActionSpace:
    """The recorded state/action layout of one robot config, and the maps between them.

    ``observation.state`` per hand (config order): x, y, z [m], qx, qy, qz, qw, fingers.
    ``action`` per hand: dx, dy, dz [m], drx, dry, drz [rad, rotation vector], fingers at t+1.
    """

    def __init__(self, config: RobotConfig):
        self.config = config
        self.hands: tuple[HandConfig, ...] = config.hands
        self.slices = config.hand_slices()
        self.state_names, self.action_names = config.state_names, config.action_names
        self.state_dim, self.action_dim = config.state_dim, config.action_dim

    def _hand(self, name: str) -> HandConfig:
        for h in self.hands:
            if h.name == name:
                return h
        raise KeyError(f"robot '{self.config.robot}' has no hand '{name}' (hands: {self.config.hand_names})")

    # -- recording side ----------------------------------------------------------------------------
    def finger_columns(self, hand: str) -> slice:
        """The action columns of ``hand``'s finger values (after its 6 pose-delta values)."""
        _, action = self.slices[hand]
        return slice(action.start + 6, action.stop)

    def put_commanded_fingers(self, actions: np.ndarray, valid: np.ndarray, hand: str, step_starts: Sequence,
                              commands: CommandLog, late) -> int:
        """In place: each valid row's finger values become the command in force at its step start
        (+ ``late``, the sync tolerance). Rows before the first command have no known finger action: they
        are zeroed and marked invalid; returns how many."""
        columns, unknown = self.finger_columns(hand), 0
        for row, start in enumerate(step_starts):
            if not valid[row]:
                continue
            command = commands.at(start + late)
            if command is None:
                valid[row], actions[row], unknown = False, 0.0, unknown + 1
            else:
                actions[row, columns] = command
        return unknown

    def hand_state(self, hand: str, eef_position, eef_quat_xyzw, fingers) -> np.ndarray:
        """One hand's part of observation.state from its published EEF pose and finger values.

        ``fingers``: width [m] (1 value), joint positions, or keypoints (count, 3) in the EEF link frame.
        """
        h = self._hand(hand)
        p_c, q_c = eef_to_canonical(eef_position, eef_quat_xyzw, h.canonical_offset)
        f = np.asarray(fingers, dtype=np.float64)
        if h.fingers.type == "keypoints":
            f = keypoints_to_canonical(f.reshape(-1, 3), h.canonical_offset)
        f = f.reshape(-1)
        if f.size != h.fingers.dim:
            raise ValueError(f"hand '{hand}': {f.size} finger values, expected {h.fingers.dim}")
        return np.concatenate([p_c, q_c, f])

    def state(self, per_hand: dict[str, tuple]) -> np.ndarray:
        """observation.state from {hand: (eef_position, eef_quat_xyzw, fingers)} for every configured hand."""
        return np.concatenate([self.hand_state(h.name, *per_hand[h.name]) for h in self.hands])

    def actions_from_states(self, states: np.ndarray, step_ok: np.ndarray | None = None
                            ) -> tuple[np.ndarray, np.ndarray]:
        """Actions for a sequence of states (N, state_dim) at consecutive steps.

        Row t is the motion from state t to state t+1. ``step_ok[t]`` (N-1,) says whether state t+1 really
        is one step after state t (False across a gap). Rows without a valid next state are zero and
        flagged invalid (always the last row). Returns (actions (N, action_dim) float64, valid (N,) bool).
        """
        states = np.asarray(states, dtype=np.float64)
        n = len(states)
        actions = np.zeros((n, self.action_dim))
        valid = np.zeros(n, dtype=bool)
        if n < 2:
            return actions, valid
        valid[:-1] = True if step_ok is None else np.asarray(step_ok, dtype=bool)
        for h in self.hands:
            ss, sa = self.slices[h.name]
            hs = states[:, ss]
            dp, drv = pose_delta(hs[:-1, 0:3], hs[:-1, 3:7], hs[1:, 0:3], hs[1:, 3:7])
            block = np.concatenate([dp, drv, hs[1:, 7:]], axis=1)
            actions[:-1, sa] = block
        actions[~valid] = 0.0
        return actions, valid

    # -- policy side -------------------------------------------------------------------------------
    def targets_from_actions(self, state: np.ndarray, actions: np.ndarray) -> list[dict[str, HandTarget]]:
        """Chain an action chunk (H, action_dim) from the current observation.state: one target per step.

        Step k's target is the canonical pose after applying actions 0..k in turn, converted to the EEF
        link pose the robot's Cartesian controller expects.
        """
        state = np.asarray(state, dtype=np.float64).reshape(-1)
        actions = np.atleast_2d(np.asarray(actions, dtype=np.float64))
        if state.size != self.state_dim or actions.shape[1] != self.action_dim:
            raise ValueError(f"expected state ({self.state_dim},) and actions (H, {self.action_dim}); "
                             f"got {state.shape} and {actions.shape}")
        current = {h.name: (state[self.slices[h.name][0]][0:3], state[self.slices[h.name][0]][3:7])
                   for h in self.hands}
        out = []
        for row in actions:
            step = {}
            for h in self.hands:
                a = row[self.slices[h.name][1]]
                p, q = apply_pose_delta(*current[h.name], a[0:3], a[3:6])
                current[h.name] = (p, q)
                pe, qe = canonical_to_eef(p, q, h.canonical_offset)
                step[h.name] = HandTarget(position=p, quat_xyzw=q, eef_position=pe, eef_quat_xyzw=qe,
                                          fingers=a[6:].copy())
            out.append(step)
        return out
