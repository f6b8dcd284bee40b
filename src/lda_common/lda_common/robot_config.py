"""Per-robot recording configuration: topics, frames, hands, cameras, canonical EEF offsets, rate, tolerance.

ROS-free. A robot file (``config/robots/<robot>.yaml``) is read with ``yaml.safe_load`` into typed
dataclasses and validated; every error names the file and the offending key, e.g.::

    sim_panda.yaml: hands[0].fingers.type: 'claw' is not one of ['width', 'joints', 'keypoints']

The same object also answers what the recorded vectors contain (``state_names``, ``action_names``,
their units), so the dataset schema is derived from one place.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

FINGER_TYPES = ("width", "joints", "keypoints")
CAMERA_TYPES = ("raw", "compressed")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class ConfigError(ValueError):
    """A robot configuration that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class RigidOffset:
    """Pose of the canonical EEF frame expressed in the frame the robot publishes its EEF pose in.

    ``xyz`` in metres, ``quat_xyzw`` a unit quaternion (x, y, z, w). Identity by default.
    """

    xyz: tuple[float, float, float] = (0.0, 0.0, 0.0)
    quat_xyzw: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class FingerConfig:
    """How a hand's finger state is read and stored.

    ``width``: one value [m], ``scale * sum(position of joints)`` from the JointState (a parallel gripper
    whose two finger joints each move half the opening: ``joints: [finger_joint1, finger_joint2]``).
    ``joints``: the named joint positions [rad or m, as published] (dexterous hands).
    ``keypoints``: ``count`` finger keypoints [m] from a ``geometry_msgs/PoseArray`` in the EEF frame,
    stored in the canonical EEF frame.
    """

    type: str = "width"
    joints: tuple[str, ...] = ()
    scale: float = 1.0
    count: int = 0

    @property
    def dim(self) -> int:
        return {"width": 1, "joints": len(self.joints), "keypoints": 3 * self.count}[self.type]


@dataclass(frozen=True)
class HandConfig:
    name: str
    pose_topic: str
    gripper_topic: str  # JointState (width/joints) or PoseArray (keypoints)
    fingers: FingerConfig
    canonical_offset: RigidOffset = RigidOffset()
    # The operator's finger commands (JointState, the same joints and scale as the state). When set, the
    # action's finger values are the command in force at each step (a close is a step from open to
    # closed, as a leader arm records it), instead of the finger state measured one step later, which a
    # closing gripper passes through gradually and which, replayed as a command, barely squeezes.
    gripper_command_topic: str = ""

    @property
    def finger_msgtype(self) -> str:
        return "geometry_msgs/msg/PoseArray" if self.fingers.type == "keypoints" else "sensor_msgs/msg/JointState"


@dataclass(frozen=True)
class CameraConfig:
    name: str
    topic: str
    type: str  # raw (sensor_msgs/Image) | compressed (sensor_msgs/CompressedImage)
    width: int
    height: int
    resize: bool = False  # resize other image sizes to width x height (else they are rejected)

    @property
    def msgtype(self) -> str:
        return "sensor_msgs/msg/CompressedImage" if self.type == "compressed" else "sensor_msgs/msg/Image"

    @property
    def feature_key(self) -> str:
        return f"observation.images.{self.name}"


@dataclass(frozen=True)
class RobotConfig:
    """One robot (embodiment) as the recorder sees it. See ``config/robots/*.yaml`` for the file format."""

    robot: str
    cameras: tuple[CameraConfig, ...]
    hands: tuple[HandConfig, ...]
    fps: int = 10
    tolerance_s: float = 0.05
    max_latency_s: float = 1.0
    base_frame: str = ""
    instruction_topic: str = "/lda/instruction"
    quaternion_tolerance: float = 0.01
    description: str = ""
    source: str = field(default="<dict>", compare=False)

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
        return _lists(d)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> RobotConfig:
        return _parse(data, source)


def load_robot_config(path: str | Path) -> RobotConfig:
    """Read and validate a robot YAML file; raises ConfigError naming the file and key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"robot config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path.name}: not valid YAML: {exc}") from None
    return _parse(data, str(path))


# -- parsing -----------------------------------------------------------------------------------------
_TOP_KEYS = {"robot", "description", "fps", "tolerance_s", "max_latency_s", "base_frame", "instruction_topic",
             "quaternion_tolerance", "cameras", "hands"}
_CAMERA_KEYS = {"name", "topic", "type", "width", "height", "resize"}
_HAND_KEYS = {"name", "pose_topic", "gripper_topic", "gripper_command_topic", "fingers", "canonical_offset"}
_FINGER_KEYS = {"type", "joints", "scale", "count"}
_OFFSET_KEYS = {"xyz", "rpy", "quat_xyzw"}


class _Ctx:
    def __init__(self, source: str):
        self.file = Path(source).name if source != "<dict>" else source

    def fail(self, key: str, why: str) -> ConfigError:
        return ConfigError(f"{self.file}: {key}: {why}")


def _mapping(ctx: _Ctx, value: Any, key: str, allowed: set[str]) -> dict:
    if not isinstance(value, dict):
        raise ctx.fail(key, f"expected a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ctx.fail(f"{key}.{unknown[0]}" if key else unknown[0],
                       f"unknown key (allowed: {', '.join(sorted(allowed))})")
    return value


def _number(ctx: _Ctx, value: Any, key: str, *, positive: bool = False, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ctx.fail(key, f"expected {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value) or (positive and value <= 0):
        raise ctx.fail(key, f"expected a {'positive ' if positive else ''}finite number, got {value!r}")
    return value


def _string(ctx: _Ctx, value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ctx.fail(key, f"expected a string, got {value!r}")
    return value


def _bool(ctx: _Ctx, value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ctx.fail(key, f"expected true or false, got {value!r}")
    return value


def _topic(ctx: _Ctx, value: Any, key: str) -> str:
    topic = _string(ctx, value, key)
    if not re.fullmatch(r"/?[A-Za-z~{][A-Za-z0-9_/{}~]*", topic) or "//" in topic or topic.endswith("/"):
        raise ctx.fail(key, f"'{topic}' is not a valid ROS topic name")
    return topic


def _name(ctx: _Ctx, value: Any, key: str) -> str:
    name = _string(ctx, value, key)
    if not _NAME.match(name):
        raise ctx.fail(key, f"'{name}' must be lower-case letters, digits and '_' (starting with a letter)")
    return name


def _vector(ctx: _Ctx, value: Any, key: str, n: int) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise ctx.fail(key, f"expected a list of {n} numbers, got {value!r}")
    return tuple(float(_number(ctx, v, f"{key}[{i}]")) for i, v in enumerate(value))


def _offset(ctx: _Ctx, value: Any, key: str) -> RigidOffset:
    if value is None:
        return RigidOffset()
    d = _mapping(ctx, value, key, _OFFSET_KEYS)
    xyz = _vector(ctx, d.get("xyz", [0, 0, 0]), f"{key}.xyz", 3)
    if "rpy" in d and "quat_xyzw" in d:
        raise ctx.fail(key, "give either rpy or quat_xyzw, not both")
    if "quat_xyzw" in d:
        q = np.array(_vector(ctx, d["quat_xyzw"], f"{key}.quat_xyzw", 4))
        norm = float(np.linalg.norm(q))
        if abs(norm - 1.0) > 1e-3:
            raise ctx.fail(f"{key}.quat_xyzw", f"not a unit quaternion (norm {norm:.4f})")
        q = q / norm
    else:
        from scipy.spatial.transform import Rotation

        rpy = _vector(ctx, d.get("rpy", [0, 0, 0]), f"{key}.rpy", 3)
        q = Rotation.from_euler("xyz", rpy).as_quat()
    return RigidOffset(xyz=xyz, quat_xyzw=tuple(float(v) for v in q))


def _fingers(ctx: _Ctx, value: Any, key: str) -> FingerConfig:
    d = _mapping(ctx, value if value is not None else {"type": "width"}, key, _FINGER_KEYS)
    ftype = d.get("type", "width")
    if ftype not in FINGER_TYPES:
        raise ctx.fail(f"{key}.type", f"'{ftype}' is not one of {list(FINGER_TYPES)}")
    joints = d.get("joints", [])
    if not isinstance(joints, list) or not all(isinstance(j, str) and j for j in joints):
        raise ctx.fail(f"{key}.joints", f"expected a list of joint names, got {joints!r}")
    if len(set(joints)) != len(joints):
        raise ctx.fail(f"{key}.joints", "joint names repeat")
    scale = float(_number(ctx, d.get("scale", 1.0), f"{key}.scale"))
    count = int(_number(ctx, d.get("count", 0), f"{key}.count", integer=True))
    if ftype in ("width", "joints") and not joints:
        raise ctx.fail(f"{key}.joints", f"type '{ftype}' needs the JointState joint names to read")
    if ftype == "keypoints":
        if count <= 0:
            raise ctx.fail(f"{key}.count", "type 'keypoints' needs count > 0 (keypoints per hand)")
        if joints:
            raise ctx.fail(f"{key}.joints", "type 'keypoints' reads a PoseArray, not joints")
    elif count:
        raise ctx.fail(f"{key}.count", f"only used with type 'keypoints', not '{ftype}'")
    return FingerConfig(type=ftype, joints=tuple(joints), scale=scale, count=count)


def _parse(data: Any, source: str) -> RobotConfig:
    ctx = _Ctx(source)
    if not isinstance(data, dict):
        raise ConfigError(f"{ctx.file}: a robot config is a mapping of keys, got {type(data).__name__}")
    d = _mapping(ctx, data, "", _TOP_KEYS)
    if "robot" not in d:
        raise ctx.fail("robot", "missing (the embodiment name, e.g. sim_panda)")
    robot = _name(ctx, d["robot"], "robot")
    fps = int(_number(ctx, d.get("fps", 10), "fps", positive=True, integer=True))
    tolerance = float(_number(ctx, d.get("tolerance_s", 0.05), "tolerance_s", positive=True))
    if tolerance >= 1.0 / fps:
        raise ctx.fail("tolerance_s", f"{tolerance} s must be below one step (1/fps = {1.0 / fps:.3f} s)")
    max_latency = float(_number(ctx, d.get("max_latency_s", 1.0), "max_latency_s", positive=True))
    quat_tol = float(_number(ctx, d.get("quaternion_tolerance", 0.01), "quaternion_tolerance", positive=True))
    base_frame = _string(ctx, d.get("base_frame", ""), "base_frame")
    instruction_topic = _topic(ctx, d.get("instruction_topic", "/lda/instruction"), "instruction_topic")

    cams_raw = d.get("cameras")
    if not isinstance(cams_raw, list) or not cams_raw:
        raise ctx.fail("cameras", "expected a non-empty list (at least one camera is recorded as video)")
    cameras = []
    for i, c in enumerate(cams_raw):
        key = f"cameras[{i}]"
        c = _mapping(ctx, c, key, _CAMERA_KEYS)
        for req in ("name", "width", "height"):
            if req not in c:
                raise ctx.fail(f"{key}.{req}", "missing")
        name = _name(ctx, c["name"], f"{key}.name")
        ctype = c.get("type", "raw")
        if ctype not in CAMERA_TYPES:
            raise ctx.fail(f"{key}.type", f"'{ctype}' is not one of {list(CAMERA_TYPES)}")
        default_topic = f"/camera/{name}/image_raw" + ("/compressed" if ctype == "compressed" else "")
        cameras.append(CameraConfig(
            name=name,
            topic=_topic(ctx, c.get("topic", default_topic), f"{key}.topic"),
            type=ctype,
            width=int(_number(ctx, c["width"], f"{key}.width", positive=True, integer=True)),
            height=int(_number(ctx, c["height"], f"{key}.height", positive=True, integer=True)),
            resize=_bool(ctx, c.get("resize", False), f"{key}.resize"),
        ))

    hands_raw = d.get("hands")
    if not isinstance(hands_raw, list) or not hands_raw:
        raise ctx.fail("hands", "expected a non-empty list (e.g. [{name: right}] or left and right)")
    hands = []
    for i, h in enumerate(hands_raw):
        key = f"hands[{i}]"
        h = _mapping(ctx, h, key, _HAND_KEYS)
        if "name" not in h:
            raise ctx.fail(f"{key}.name", "missing (left or right)")
        name = _name(ctx, h["name"], f"{key}.name")
        fingers = _fingers(ctx, h.get("fingers"), f"{key}.fingers")
        default_finger_topic = f"/robot/{name}/" + ("finger_keypoints" if fingers.type == "keypoints"
                                                     else "gripper_state")
        command_topic = ""
        if h.get("gripper_command_topic"):
            command_topic = _topic(ctx, h["gripper_command_topic"], f"{key}.gripper_command_topic")
            if fingers.type == "keypoints":
                raise ctx.fail(f"{key}.gripper_command_topic",
                               "finger keypoints are observed, not commanded; use it with type width or joints")
        hands.append(HandConfig(
            name=name,
            pose_topic=_topic(ctx, h.get("pose_topic", f"/robot/{name}/eef_pose"), f"{key}.pose_topic"),
            gripper_topic=_topic(ctx, h.get("gripper_topic", default_finger_topic), f"{key}.gripper_topic"),
            fingers=fingers,
            canonical_offset=_offset(ctx, h.get("canonical_offset"), f"{key}.canonical_offset"),
            gripper_command_topic=command_topic,
        ))

    for what, names in (("cameras", [c.name for c in cameras]), ("hands", [h.name for h in hands])):
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ctx.fail(what, f"name '{dup[0]}' used twice")
    topics = [c.topic for c in cameras] + [t for h in hands for t in (h.pose_topic, h.gripper_topic)]
    topics += [h.gripper_command_topic for h in hands if h.gripper_command_topic]
    topics.append(instruction_topic)
    dup = sorted({t for t in topics if topics.count(t) > 1})
    if dup:
        raise ctx.fail("topics", f"'{dup[0]}' is used for two streams")
    return RobotConfig(
        robot=robot, cameras=tuple(cameras), hands=tuple(hands), fps=fps, tolerance_s=tolerance,
        max_latency_s=max_latency, base_frame=base_frame, instruction_topic=instruction_topic,
        quaternion_tolerance=quat_tol, description=_string(ctx, d.get("description", ""), "description"),
        source=source,
    )


def _lists(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _lists(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_lists(v) for v in obj]
    return obj
