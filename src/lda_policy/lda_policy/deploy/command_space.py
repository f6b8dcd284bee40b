"""What the safety gate commands: the hand-centric space (EEF poses + fingers) or the joint space.

ROS-free and torch-free. :class:`~.gate.SafetyGateCore` keeps the machinery that does not depend on what
is commanded (the latch, heartbeats, sequences, clocks, stream bookkeeping, resets, bad inputs); a command
space gives it the rest. Both implementations have the same members:

- ``name`` ("hands" | "joints"), ``embodiment``, ``dimension_names``, ``action_dim``, ``dt``: what a chunk
  for this space must look like; ``streams``: the measured streams that must be fresh; ``states``: their
  buffer;
- ``latest()`` / ``anchor(stamp, tolerance_s)``: the newest measured targets, and those at a chunk's
  observation (None: not known); ``missing_anchor``: what to say when there are none;
- ``plan(actions, anchor, sequence, stamp, dt)``: a chunk as absolute targets the executor samples;
- ``check_chunk(actions, dt, plan, anchor, last_sent)``, ``check_command(targets, previous, elapsed_s)``,
  ``clamp(targets, previous, elapsed_s)``: the hard limits (lists of violations; clamped targets and notes);
- ``safe_hold(hold, last_sent)``: the hold target made safe, and a STOP reason ('' when none);
- and the executor's hooks (:class:`~.chunk_executor.HandTargets`): ``parts``, ``blend``,
  ``plan_problem``, ``hold_from``, ``kept``.

:class:`HandSpace` is the gate as it always was; :class:`~.joint_space.JointSpace` commands joint positions.
"""

from __future__ import annotations

import numpy as np
from lda_common.geometry import HandsState, HandState, blend_states, rotation_angle

from .chunk_executor import HandTargets
from .hand_states import HandStateBuffer
from .robot import RobotInterface
from .safety import SafetyLimits, check_chunk, check_command, clamp_command

ACTION_SPACES = ("hands", "joints")


class HandSpace(HandTargets):
    """Per-hand EEF targets and finger values, from the EEF pose and finger streams (today's gate)."""

    name = "hands"
    missing_anchor = "no EEF pose / finger state"

    def __init__(self, robot: RobotInterface, limits: SafetyLimits) -> None:
        super().__init__(robot.hands)
        self.robot, self.limits = robot, limits
        self.embodiment, self.dt = robot.embodiment, robot.dt
        self.dimension_names, self.action_dim = robot.dimension_names, robot.action_dim
        self.streams = [f"{h}/{k}" for h in robot.hands for k in ("pose", "fingers")]
        self.states = HandStateBuffer(robot.hands, keep_s=max(4.0, 2 * limits.max_chunk_age_s))
        self.finger_dims = {h.name: h.fingers.dim for h in robot.config.hands}

    def latest(self) -> HandsState | None:
        return self.states.latest()

    def anchor(self, stamp: float, tolerance_s: float) -> HandsState | None:
        return self.states.at(stamp, tolerance_s)

    def plan(self, actions: np.ndarray, anchor: HandsState, sequence: int, stamp: float, dt: float):
        return self.robot.plan(actions, anchor, sequence, stamp, dt)

    def check_chunk(self, actions: np.ndarray, dt: float, plan, anchor: HandsState, last_sent) -> list[str]:
        return check_chunk(actions, self.dimension_names, dt, plan.hands, anchor, self.limits)

    def check_command(self, targets: HandsState, previous: HandsState | None, elapsed_s: float) -> list[str]:
        return check_command(targets, previous, elapsed_s, self.limits)

    def clamp(self, targets: HandsState, previous=None, elapsed_s: float = 0.0) -> tuple[HandsState, list[str]]:
        return clamp_command(targets, self.limits)

    def safe_hold(self, hold: HandsState, last_sent: HandsState | None) -> tuple[HandsState | None, str]:
        """The hold target clipped into each hand's box and finger range and moved at most one step
        (``max_step_translation_m`` / ``max_step_rotation_rad``) from the last command sent. A hand without a
        usable target keeps the last command sent (with a STOP reason); None when it has none either."""
        lim, prev, out, problems = self.limits, last_sent or {}, {}, []
        for h in self.parts:
            t, p = hold.get(h), prev.get(h)
            if t is None or not t.is_finite() or t.fingers.size != self.finger_dims[h]:
                problems.append(f"no usable hold target for {h}")
                if p is None:
                    return None, f"hold: no usable hold target for {h} and no command sent yet"
                out[h] = p
                continue
            lo, hi = lim.box(h)
            position, quaternion = np.clip(t.position, lo, hi), t.quaternion
            if p is not None:
                d = float(np.linalg.norm(position - p.position))
                if d > lim.max_step_translation_m:
                    position = p.position + (position - p.position) * (lim.max_step_translation_m / d)
                angle = rotation_angle(p.quaternion, quaternion)
                if angle > lim.max_step_rotation_rad:
                    quaternion = blend_states(p, HandState(p.position, quaternion, p.fingers),
                                              lim.max_step_rotation_rad / angle).quaternion
            out[h] = HandState(position, quaternion, np.clip(t.fingers, *lim.finger_range(h)))
        reason = "hold: " + "; ".join(problems) + " (holding the last command sent)" if problems else ""
        return out, reason


def make_space(action_space: str, robot: RobotInterface, limits: SafetyLimits, joint_limits=None):
    """The command space named ``action_space`` ("hands" | "joints"; joints need ``joint_limits``)."""
    if action_space == "hands":
        return HandSpace(robot, limits)
    if action_space == "joints":
        from .joint_space import JointSpace

        return JointSpace(robot, limits, joint_limits)
    raise ValueError(f"action_space must be one of {list(ACTION_SPACES)}, got {action_space!r}")


__all__ = ["ACTION_SPACES", "HandSpace", "make_space"]
