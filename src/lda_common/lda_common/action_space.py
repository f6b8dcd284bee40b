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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .alignment import CommandLog
from .geometry import (
    apply_pose_delta,
    canonical_to_eef,
    eef_to_canonical,
    keypoints_to_canonical,
    pose_delta,
)
from .robot_config import HandConfig, RobotConfig


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
