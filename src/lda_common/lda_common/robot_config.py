"""Per-robot recording configuration: topics, frames, hands, cameras, canonical EEF offsets, rate, tolerance.

ROS-free. A robot file (``config/robots/<robot>.yaml``) is read with ``yaml.safe_load`` into typed
dataclasses and validated by :func:`lda_common.config.parse`; every error names the file and the
offending key, e.g.::

    sim_panda.yaml: hands.0.fingers.type: expected one of ['width', 'joints', 'keypoints'], got 'claw'

The same object also answers what the recorded vectors contain (``state_names``, ``action_names``,
their units), so the dataset schema is derived from one place.
"""

from __future__ import annotations

import re
from dataclasses import InitVar, asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from .config import ConfigError, PositiveFloat, PositiveInt, check, load_yaml, parse, plain

__all__ = ["CAMERA_TYPES", "FINGER_TYPES", "CameraConfig", "ConfigError", "FingerConfig", "HandConfig",
           "JointGroupConfig", "JointSpaceConfig", "RigidOffset", "RobotConfig", "load_robot_config"]

FingerType = Literal["width", "joints", "keypoints"]
CameraType = Literal["raw", "compressed"]
FINGER_TYPES = get_args(FingerType)
CAMERA_TYPES = get_args(CameraType)
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_TOPIC = re.compile(r"/?[A-Za-z~{][A-Za-z0-9_/{}~]*")


def _repeated(items: list[str]) -> str | None:
    return min((x for x in items if items.count(x) > 1), default=None)


def _check_name(name: str, key: str) -> None:
    check(_NAME.match(name), key, f"'{name}' must be lower-case letters, digits and '_' (starting with a letter)")


def _check_topic(topic: str, key: str) -> None:
    check(_TOPIC.fullmatch(topic) and "//" not in topic and not topic.endswith("/"), key,
          f"'{topic}' is not a valid ROS topic name")


@dataclass(frozen=True, kw_only=True)
class RigidOffset:
    """Pose of the canonical EEF frame expressed in the frame the robot publishes its EEF pose in.

    ``xyz`` in metres, ``quat_xyzw`` a unit quaternion (x, y, z, w), normalised here; a file may give
    ``rpy`` (roll, pitch, yaw [rad], extrinsic xyz) instead. Identity by default.
    """

    xyz: tuple[float, float, float] = (0.0, 0.0, 0.0)
    quat_xyzw: tuple[float, float, float, float] | None = None
    rpy: InitVar[tuple[float, float, float] | None] = None

    def __post_init__(self, rpy: tuple[float, float, float] | None) -> None:
        check(rpy is None or self.quat_xyzw is None, "", "give either rpy or quat_xyzw, not both")
        if self.quat_xyzw is not None:
            q = np.asarray(self.quat_xyzw, dtype=float)
            norm = float(np.linalg.norm(q))
            check(abs(norm - 1.0) <= 1e-3, "quat_xyzw", f"not a unit quaternion (norm {norm:.4f})")
            q = q / norm
        elif rpy is not None:
            from scipy.spatial.transform import Rotation

            q = Rotation.from_euler("xyz", rpy).as_quat()
        else:
            q = (0.0, 0.0, 0.0, 1.0)
        object.__setattr__(self, "xyz", tuple(float(v) for v in self.xyz))
        object.__setattr__(self, "quat_xyzw", tuple(float(v) for v in q))


@dataclass(frozen=True, kw_only=True)
class FingerConfig:
    """How a hand's finger state is read and stored.

    ``width``: one value [m], ``scale * sum(position of joints)`` from the JointState (a parallel gripper
    whose two finger joints each move half the opening: ``joints: [finger_joint1, finger_joint2]``).
    ``joints``: the named joint positions [rad or m, as published] (dexterous hands).
    ``keypoints``: ``count`` finger keypoints [m] from a ``geometry_msgs/PoseArray`` in the EEF frame,
    stored in the canonical EEF frame.
    """

    type: FingerType = "width"
    joints: tuple[str, ...] = ()
    scale: float = 1.0
    count: int = 0

    def __post_init__(self) -> None:
        check(all(self.joints), "joints", f"expected a list of joint names, got {list(self.joints)}")
        check(len(set(self.joints)) == len(self.joints), "joints", "joint names repeat")
        if self.type == "keypoints":
            check(self.count > 0, "count", "type 'keypoints' needs count > 0 (keypoints per hand)")
            check(not self.joints, "joints", "type 'keypoints' reads a PoseArray, not joints")
        else:
            check(self.joints, "joints", f"type '{self.type}' needs the JointState joint names to read")
            check(not self.count, "count", f"only used with type 'keypoints', not '{self.type}'")

    @property
    def dim(self) -> int:
        return {"width": 1, "joints": len(self.joints), "keypoints": 3 * self.count}[self.type]


@dataclass(frozen=True, kw_only=True)
class HandConfig:
    name: str  # left or right
    pose_topic: str = ""  # default /robot/<name>/eef_pose
    # JointState (width/joints) or PoseArray (keypoints); default /robot/<name>/gripper_state (finger_keypoints)
    gripper_topic: str = ""
    fingers: FingerConfig
    canonical_offset: RigidOffset | None = None  # None: identity
    # The operator's finger commands (JointState, the same joints and scale as the state). When set, the
    # action's finger values are the command in force at each step (a close is a step from open to
    # closed, as a leader arm records it), instead of the finger state measured one step later, which a
    # closing gripper passes through gradually and which, replayed as a command, barely squeezes.
    gripper_command_topic: str | None = ""

    def __post_init__(self) -> None:
        _check_name(self.name, "name")
        fingers = "finger_keypoints" if self.fingers.type == "keypoints" else "gripper_state"
        defaults = {"pose_topic": f"/robot/{self.name}/eef_pose", "gripper_topic": f"/robot/{self.name}/{fingers}",
                    "canonical_offset": RigidOffset(), "gripper_command_topic": ""}
        for key, default in defaults.items():
            if not getattr(self, key):
                object.__setattr__(self, key, default)
        for key in ("pose_topic", "gripper_topic", "gripper_command_topic"):
            if getattr(self, key):
                _check_topic(getattr(self, key), key)
        check(not (self.gripper_command_topic and self.fingers.type == "keypoints"), "gripper_command_topic",
              "finger keypoints are observed, not commanded; use it with type width or joints")

    @property
    def finger_msgtype(self) -> str:
        return "geometry_msgs/msg/PoseArray" if self.fingers.type == "keypoints" else "sensor_msgs/msg/JointState"


@dataclass(frozen=True, kw_only=True)
class CameraConfig:
    name: str
    topic: str = ""  # default /camera/<name>/image_raw (compressed: .../image_raw/compressed)
    type: CameraType = "raw"  # raw (sensor_msgs/Image) | compressed (sensor_msgs/CompressedImage)
    width: PositiveInt
    height: PositiveInt
    resize: bool = False  # resize other image sizes to width x height (else they are rejected)

    def __post_init__(self) -> None:
        _check_name(self.name, "name")
        if not self.topic:
            suffix = "/compressed" if self.type == "compressed" else ""
            object.__setattr__(self, "topic", f"/camera/{self.name}/image_raw{suffix}")
        _check_topic(self.topic, "topic")

    @property
    def msgtype(self) -> str:
        return "sensor_msgs/msg/CompressedImage" if self.type == "compressed" else "sensor_msgs/msg/Image"

    @property
    def feature_key(self) -> str:
        return f"observation.images.{self.name}"


@dataclass(frozen=True, kw_only=True)
class JointGroupConfig:
    """One group of joints commanded together (an arm, a hand, the waist), in the order the model uses."""

    name: str
    joints: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_name(self.name, "name")
        check(self.joints and all(self.joints), "joints", f"expected a non-empty list of joint names, got "
              f"{list(self.joints)}")
        check(len(set(self.joints)) == len(self.joints), "joints", "joint names repeat")


@dataclass(frozen=True, kw_only=True)
class JointSpaceConfig:
    """The robot in joint space, for models that command joint positions (the authors' published LDA-1B).

    The model reads the measured positions of ``groups``' joints from ``state_topic`` (sensor_msgs/JointState;
    extra joints and any order are fine, joints are looked up by name) and proposes absolute position
    targets [rad or m, as published], one column per joint in group order (:attr:`joint_names`), at ``fps``;
    the safety gate sends them on ``command_topic`` (sensor_msgs/JointState, ``name`` + ``position``)."""

    state_topic: str = "/robot/joint_states"
    command_topic: str = "/robot/joint_command"
    fps: PositiveInt = 20
    groups: tuple[JointGroupConfig, ...]

    def __post_init__(self) -> None:
        _check_topic(self.state_topic, "state_topic")
        _check_topic(self.command_topic, "command_topic")
        check(self.state_topic != self.command_topic, "command_topic", "must differ from state_topic")
        check(self.groups, "groups", "expected a non-empty list of joint groups")
        if dup := _repeated([g.name for g in self.groups]):
            raise ConfigError(f"group name '{dup}' used twice", "groups")
        if dup := _repeated(self.joint_names):
            raise ConfigError(f"joint '{dup}' is in two groups", "groups")

    @property
    def period_s(self) -> float:
        return 1.0 / self.fps

    @property
    def joint_names(self) -> list[str]:
        """Every commanded joint, group by group: the columns of a joint-space action chunk."""
        return [j for g in self.groups for j in g.joints]

    @property
    def dim(self) -> int:
        return len(self.joint_names)

    def group_slices(self) -> dict[str, slice]:
        """Per group: its columns in :attr:`joint_names`."""
        out, start = {}, 0
        for g in self.groups:
            out[g.name] = slice(start, start + len(g.joints))
            start += len(g.joints)
        return out


@dataclass(frozen=True, kw_only=True)
class RobotConfig:
    """One robot (embodiment) as the recorder sees it. See ``config/robots/*.yaml`` for the file format."""

    robot: str
    cameras: tuple[CameraConfig, ...]
    hands: tuple[HandConfig, ...]
    fps: PositiveInt = 10
    tolerance_s: PositiveFloat = 0.05
    max_latency_s: PositiveFloat = 1.0
    base_frame: str = ""
    instruction_topic: str = "/lda/instruction"
    quaternion_tolerance: PositiveFloat = 0.01
    description: str = ""
    joints: JointSpaceConfig | None = None  # the joint space, for models that command joints (optional)
    source: str = field(default="<dict>", compare=False, init=False)

    def __post_init__(self) -> None:
        _check_name(self.robot, "robot")
        check(self.cameras, "cameras", "expected a non-empty list (at least one camera is recorded as video)")
        check(self.hands, "hands", "expected a non-empty list (e.g. [{name: right}] or left and right)")
        check(self.tolerance_s < 1.0 / self.fps, "tolerance_s",
              f"{self.tolerance_s} s must be below one step (1/fps = {1.0 / self.fps:.3f} s)")
        _check_topic(self.instruction_topic, "instruction_topic")
        for what, names in (("cameras", [c.name for c in self.cameras]), ("hands", self.hand_names)):
            if dup := _repeated(names):
                raise ConfigError(f"name '{dup}' used twice", what)
        topics = [c.topic for c in self.cameras] + [self.instruction_topic]
        topics += [t for h in self.hands for t in (h.pose_topic, h.gripper_topic, h.gripper_command_topic) if t]
        if self.joints is not None:
            topics += [self.joints.state_topic, self.joints.command_topic]
        if dup := _repeated(topics):
            raise ConfigError(f"'{dup}' is used for two streams", "topics")

    # -- derived layout ----------------------------------------------------------------------------
    @property
    def period_s(self) -> float:
        return 1.0 / self.fps

    @property
    def hand_names(self) -> list[str]:
        return [h.name for h in self.hands]

    def finger_names(self, hand: HandConfig) -> list[str]:
        f = hand.fingers
        if f.type == "width":
            return [f"{hand.name}/gripper"]
        if f.type == "joints":
            return [f"{hand.name}/{j}" for j in f.joints]
        return [f"{hand.name}/kp{i}_{a}" for i in range(f.count) for a in "xyz"]

    def finger_units(self, hand: HandConfig) -> list[str]:
        f = hand.fingers
        if f.type == "joints":
            return ["joint" for _ in f.joints]  # rad (revolute) or m (prismatic), as the robot publishes
        return ["m"] * f.dim

    @property
    def state_names(self) -> list[str]:
        names = []
        for h in self.hands:
            names += [f"{h.name}/{c}" for c in ("x", "y", "z", "qx", "qy", "qz", "qw")]
            names += self.finger_names(h)
        return names

    @property
    def state_units(self) -> list[str]:
        units = []
        for h in self.hands:
            units += ["m"] * 3 + ["1"] * 4 + self.finger_units(h)
        return units

    @property
    def action_names(self) -> list[str]:
        names = []
        for h in self.hands:
            names += [f"{h.name}/{c}" for c in ("dx", "dy", "dz", "drx", "dry", "drz")]
            names += self.finger_names(h)
        return names

    @property
    def action_units(self) -> list[str]:
        units = []
        for h in self.hands:
            units += ["m"] * 3 + ["rad"] * 3 + self.finger_units(h)
        return units

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    def hand_slices(self) -> dict[str, tuple[slice, slice]]:
        """Per hand: (slice into observation.state, slice into action)."""
        out, s, a = {}, 0, 0
        for h in self.hands:
            n = h.fingers.dim
            out[h.name] = (slice(s, s + 7 + n), slice(a, a + 6 + n))
            s, a = s + 7 + n, a + 6 + n
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-serialisable form (what ``from_dict`` reads back)."""
        d = asdict(self)
        d.pop("source")
        return plain(d)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> RobotConfig:
        config = parse(cls, data, source)
        object.__setattr__(config, "source", str(source))
        return config


def load_robot_config(path: str | Path) -> RobotConfig:
    """Read and validate a robot YAML file; raises ConfigError naming the file and key."""
    return RobotConfig.from_dict(load_yaml(path, "robot config"), str(path))
