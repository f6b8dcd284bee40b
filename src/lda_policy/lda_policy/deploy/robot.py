"""The robot as the deployment nodes see it: a recorder robot config + the hand-centric action space.

ROS-free. Everything about layouts comes from :mod:`lda_common` (``config/robots/<robot>.yaml``
read by ``robot_config.load_robot_config``; state/action maps from ``action_space``), so the policy
sees exactly the vectors the recorder wrote and the trainer learnt from:

* state (per hand, config order): canonical EEF position [m] + quaternion (x, y, z, w) + fingers;
* action row k (per hand): motion of the canonical EEF frame from step k to k+1 expressed in the
  canonical frame at k (dx, dy, dz [m], drx, dry, drz [rad]) + the finger values to reach;
* a chunk from the state at its observation chains these motions into one EEF *link* target per row
  (what ``/robot/<hand>/eef_target`` carries).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lda_common.action_space import HandCentricActionSpace
from lda_common.geometry import HandsState
from lda_common.robot_config import CameraConfig, ConfigError, RobotConfig, load_robot_config

from .chunks import ChunkPlan, HandTrajectory
from .hand_states import HandStateBuffer

__all__ = ["ConfigError", "ImageError", "RobotInterface"]


class ImageError(ValueError):
    """A camera message that cannot be used (encoding, size, corrupt data); the message says why."""


class RobotInterface:
    """Layouts and conversions of one robot for the model host, the safety gate and the replay."""

    def __init__(self, config: RobotConfig | str | Path, camera: str = "") -> None:
        self.config = config if isinstance(config, RobotConfig) else load_robot_config(config)
        self.space = HandCentricActionSpace(self.config)
        self.hands = self.config.hand_names
        self.embodiment = self.config.robot
        self.dt = self.config.period_s
        cams = {c.name: c for c in self.config.cameras}
        if camera and camera not in cams:
            raise ConfigError(f"{Path(self.config.source).name}: no camera '{camera}' (cameras: {sorted(cams)})")
        self.camera: CameraConfig = cams[camera] if camera else self.config.cameras[0]
        for h in self.config.hands:
            if h.fingers.type == "keypoints":
                raise ConfigError(f"{Path(self.config.source).name}: hand '{h.name}' has keypoint fingers, which "
                                  "the policy node cannot command (use 'width' or 'joints')")

    @property
    def dimension_names(self) -> list[str]:
        return list(self.config.action_names)

    @property
    def action_dim(self) -> int:
        return self.config.action_dim

    @property
    def state_dim(self) -> int:
        return self.config.state_dim

    def check_model(self, model_config) -> None:
        """Raise ConfigError unless the checkpoint knows this embodiment with the same widths and rate."""
        try:
            spec = model_config.embodiments[model_config.embodiment_index(self.embodiment)]
        except KeyError as err:
            raise ConfigError(f"the checkpoint has no embodiment '{self.embodiment}' (robot config "
                              f"{self.config.source}): {err.args[0]}") from None
        if spec.action_dim != self.action_dim or spec.state_dim != self.state_dim:
            raise ConfigError(f"embodiment '{self.embodiment}': the checkpoint has {spec.action_dim}-d actions / "
                              f"{spec.state_dim}-d state, the robot config {self.action_dim} / {self.state_dim}")
        if abs(model_config.time.control_hz - self.config.fps) > 1e-6:
            raise ConfigError(f"the checkpoint runs at {model_config.time.control_hz} Hz, the robot config "
                              f"at fps={self.config.fps}")

    # -- conversions ---------------------------------------------------------------------------------
    def image_to_rgb(self, msg, first: tuple[str, int, int] | None = None) -> np.ndarray:
        """A camera message (sensor_msgs Image / CompressedImage, rclpy or rosbags) -> (H, W, 3) uint8 RGB,
        through the recorder's own conversion: same checks, same resize to the configured size as the
        training data went through. ``first``: (encoding, width, height) of the run's first raw image; an
        encoding or size switch against it is refused."""
        from lda_common.alignment import BadSample
        from lda_common.messages import check_raw_image, compressed_to_rgb, raw_image_to_rgb

        try:
            if self.camera.type == "compressed":
                img = compressed_to_rgb(msg, self.camera)
            else:
                check_raw_image(msg, self.camera, first)
                img = raw_image_to_rgb(msg, self.camera)
        except BadSample as err:
            raise ImageError(f"camera {self.camera.topic}: {str(err).replace('mid-episode', 'mid-run')}") from None
        img = np.ascontiguousarray(img)
        return img if img.flags.writeable and img.base is None else img.copy()

    def fingers_from_joint_state(self, hand: str, names, positions) -> np.ndarray | None:
        """Finger values of ``hand`` from a JointState (None if a configured joint is absent)."""
        h = next(x for x in self.config.hands if x.name == hand)
        lookup = dict(zip(names, positions, strict=False))
        if not all(j in lookup for j in h.fingers.joints):
            return None
        values = np.array([float(lookup[j]) for j in h.fingers.joints])
        if h.fingers.type == "width":
            return np.array([h.fingers.scale * values.sum()])
        return values

    def finger_bounds(self, low, high) -> tuple[np.ndarray, np.ndarray]:
        """Per action column: (low, high) for the finger values (absolute targets), unbounded for the pose
        deltas."""
        lo, hi = np.full(self.action_dim, -np.inf), np.full(self.action_dim, np.inf)
        for h in self.hands:
            columns = self.space.finger_columns(h)
            lo[columns], hi[columns] = np.asarray(low)[columns], np.asarray(high)[columns]
        return lo, hi

    def state_vector(self, hands: HandsState) -> np.ndarray:
        """observation.state (state_dim,) of measured EEF link poses + fingers."""
        return self.space.state({h: (hands[h].position, hands[h].quaternion, hands[h].fingers) for h in self.hands})

    def history_actions(self, buffer: HandStateBuffer, t: float, steps: int, tolerance_s: float) -> np.ndarray | None:
        """The ``steps`` actions that took the robot to its state at ``t`` (steps, action_dim), from the
        measured states at t - steps*dt, ..., t; None when the buffer does not reach back that far.

        For a hand whose config names a ``gripper_command_topic`` the recorded finger action is the
        command in force, so here too: the command sent at or before each step (up to the config's
        ``tolerance_s`` late, as in the recorder), or the measured finger state before any command."""
        if steps == 0:
            return np.zeros((0, self.action_dim))
        states = []
        for k in range(steps, -1, -1):
            s = buffer.at(t - k * self.dt, tolerance_s)
            if s is None:
                return None
            states.append(self.state_vector(s))
        actions, _ = self.space.actions_from_states(np.stack(states))
        for h in self.config.hands:
            if not h.gripper_command_topic:
                continue
            fingers = self.space.finger_columns(h.name)
            for row in range(steps):
                command = buffer.command_at(h.name, t - (steps - row) * self.dt + self.config.tolerance_s)
                if command is not None:
                    actions[row, fingers] = command
        return actions[:-1]

    def plan(self, actions: np.ndarray, anchor: HandsState, sequence: int, stamp: float, dt: float) -> ChunkPlan:
        """Absolute per-hand EEF link targets of a chunk chained from the states at its observation."""
        actions = np.asarray(actions, dtype=np.float64)
        targets = self.space.targets_from_actions(self.state_vector(anchor), actions)
        hands = {}
        for h in self.hands:
            hands[h] = HandTrajectory(
                positions=np.stack([t[h].eef_position for t in targets]),
                quaternions=np.stack([t[h].eef_quat_xyzw for t in targets]),
                fingers=np.stack([np.atleast_1d(t[h].fingers) for t in targets]),
            )
        return ChunkPlan(sequence=int(sequence), stamp=float(stamp), dt=float(dt), hands=hands)
