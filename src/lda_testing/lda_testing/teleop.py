"""Synthetic teleoperation data with known ground truth, as serialized ROS 2 messages (CDR bytes).

The same bytes are written into bags (rosbags) and published live (rclpy publishes raw bytes), so both
the converter and the node are checked against one trajectory:

* EEF poses: smooth known functions of time per hand (``pose_at``), published at ``pose_hz``;
* fingers: a gripper width (left, ``width``) and two finger joints (right, ``joints``);
* cameras: ``head`` raw (bgr8) and ``wrist`` JPEG; each image encodes its camera sequence number in its
  colour (red = ``16 + 8 * (seq % 28)``), so tests can tell which camera frame landed on which row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from lda_common.bag_io import serialize, typestore
from lda_common.robot_config import RobotConfig
from scipy.spatial.transform import Rotation

W, H = 64, 48
CAM_BLUE = {"head": 60, "wrist": 180}
OFFSETS = {
    "left": {"xyz": [0.0, 0.0, 0.1034], "rpy": [0.0, 0.0, -0.7853981633974483]},
    "right": {"xyz": [0.02, -0.01, 0.12], "quat_xyzw": [0.0, 0.7071067811865476, 0.0, 0.7071067811865476]},
}
RIGHT_JOINTS = ["r_index", "r_thumb"]


def robot_dict(**overrides) -> dict:
    d = {
        "robot": "test_bimanual",
        "fps": 10,
        "tolerance_s": 0.02,
        "max_latency_s": 1.0,
        "base_frame": "base",
        "cameras": [
            {"name": "head", "type": "raw", "width": W, "height": H},
            {"name": "wrist", "type": "compressed", "width": W, "height": H},
        ],
        "hands": [
            {"name": "left", "fingers": {"type": "width", "joints": ["l_f1", "l_f2"]},
             "canonical_offset": OFFSETS["left"]},
            {"name": "right", "fingers": {"type": "joints", "joints": RIGHT_JOINTS},
             "canonical_offset": OFFSETS["right"]},
        ],
    }
    d.update(overrides)
    return d


def write_robot(path: Path, **overrides) -> Path:
    path.write_text(yaml.safe_dump(robot_dict(**overrides), sort_keys=False))
    return path


def pose_at(hand: str, t: float) -> tuple[np.ndarray, np.ndarray]:
    """EEF link pose in the base frame at time t [s] since the trajectory start."""
    sign = 1.0 if hand == "left" else -1.0
    pos = np.array([0.4 + 0.05 * np.sin(1.3 * t), sign * 0.2 + 0.04 * np.cos(0.9 * t), 0.3 + 0.02 * t])
    rot = Rotation.from_euler("xyz", [0.3 * np.sin(t), 0.2 * t * sign, 0.5 + 0.4 * np.cos(0.7 * t)])
    q = rot.as_quat()
    if hand == "right":
        q = -q  # the other quaternion sign: the recorder must canonicalise it
    return pos, q


def fingers_at(hand: str, t: float) -> np.ndarray:
    if hand == "left":
        half = 0.02 + 0.015 * np.sin(2.0 * t)
        return np.array([half, half])  # two finger joints, each half the width
    return np.array([0.5 + 0.3 * np.sin(t), 0.2 + 0.1 * np.cos(t)])


def colour(seq: int) -> int:
    return 16 + 8 * (seq % 28)


def seq_from_red(red: float) -> int:
    """seq % 28 from a decoded image's mean red value."""
    return int(round((red - 16) / 8)) % 28


def _stamp(msg, ns: int, frame: str = ""):
    msg.header.stamp.sec, msg.header.stamp.nanosec = ns // 1_000_000_000, ns % 1_000_000_000
    msg.header.frame_id = frame
    return msg


def image_cdr(cam: str, seq: int, ns: int, encoding: str = "bgr8", size: tuple[int, int] = (W, H)) -> bytes:
    ts = typestore()
    w, h = size
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = colour(seq), 255 - colour(seq), CAM_BLUE[cam]
    if cam == "wrist":
        import cv2

        ok, jpg = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        msg = ts.types["sensor_msgs/msg/CompressedImage"](
            header=ts.types["std_msgs/msg/Header"](stamp=ts.types["builtin_interfaces/msg/Time"](sec=0, nanosec=0),
                                                   frame_id=""),
            format="jpeg", data=np.frombuffer(jpg.tobytes(), np.uint8))
        return serialize(_stamp(msg, ns, "wrist_camera"), "sensor_msgs/msg/CompressedImage")
    data = rgb[:, :, ::-1] if encoding == "bgr8" else rgb
    if encoding == "mono8":
        data = rgb[:, :, 0]
    step = w * (1 if encoding == "mono8" else 3)
    msg = ts.types["sensor_msgs/msg/Image"](
        header=ts.types["std_msgs/msg/Header"](stamp=ts.types["builtin_interfaces/msg/Time"](sec=0, nanosec=0),
                                               frame_id=""),
        height=h, width=w, encoding=encoding, is_bigendian=0, step=step,
        data=np.ascontiguousarray(data).reshape(-1))
    return serialize(_stamp(msg, ns, "head_camera"), "sensor_msgs/msg/Image")


def pose_cdr(pos, quat, ns: int, frame: str = "base") -> bytes:
    ts = typestore()
    T = ts.types
    msg = T["geometry_msgs/msg/PoseStamped"](
        header=T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id=""),
        pose=T["geometry_msgs/msg/Pose"](position=T["geometry_msgs/msg/Point"](x=pos[0], y=pos[1], z=pos[2]),
                                         orientation=T["geometry_msgs/msg/Quaternion"](
                                             x=quat[0], y=quat[1], z=quat[2], w=quat[3])))
    return serialize(_stamp(msg, ns, frame), "geometry_msgs/msg/PoseStamped")


def joints_cdr(names: list[str], positions, ns: int) -> bytes:
    T = typestore().types
    msg = T["sensor_msgs/msg/JointState"](
        header=T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id=""),
        name=list(names), position=np.asarray(positions, np.float64), velocity=np.zeros(0), effort=np.zeros(0))
    return serialize(_stamp(msg, ns), "sensor_msgs/msg/JointState")


def string_cdr(text: str) -> bytes:
    return serialize(typestore().types["std_msgs/msg/String"](data=text), "std_msgs/msg/String")


TOPICS = {
    "/camera/head/image_raw": "sensor_msgs/msg/Image",
    "/camera/wrist/image_raw/compressed": "sensor_msgs/msg/CompressedImage",
    "/robot/left/eef_pose": "geometry_msgs/msg/PoseStamped",
    "/robot/right/eef_pose": "geometry_msgs/msg/PoseStamped",
    "/robot/left/gripper_state": "sensor_msgs/msg/JointState",
    "/robot/right/gripper_state": "sensor_msgs/msg/JointState",
    "/lda/instruction": "std_msgs/msg/String",
}


@dataclass
class Plan:
    """Which messages a synthetic run publishes; the tweak hooks inject bad input."""

    t0_ns: int = 1_700_000_000_000_000_000
    duration_s: float = 2.0
    cam_hz: int = 30
    pose_hz: int = 100
    finger_hz: int = 50
    instruction: str | None = "pick up the red block"
    camera_silent: tuple[float, float] | None = None  # head camera publishes nothing in [a, b) s
    nan_pose: tuple[float, float] | None = None  # left pose NaN in [a, b) s
    bad_norm: tuple[float, float] | None = None  # right pose quaternion scaled by 1.5 in [a, b) s
    bad_size_from: float | None = None  # head images change size from this time on
    bad_encoding_from: float | None = None  # head images switch to mono8 from this time on
    backwards_at: list[float] = field(default_factory=list)  # extra head images stamped 0.5 s in the past
    lose_right_pose: tuple[int, ...] = ()  # right poses k with k % 10 in this are never published (a lossy link)

    def messages(self) -> list[tuple[str, str, int, bytes]]:
        """(topic, msgtype, stamp_ns, cdr) in stamp order; stamps are exact multiples of the rates."""
        out = []
        if self.instruction:
            out.append(("/lda/instruction", TOPICS["/lda/instruction"], self.t0_ns - 1, string_cdr(self.instruction)))
        n_cam = int(round(self.duration_s * self.cam_hz))
        for seq in range(n_cam):
            t = seq / self.cam_hz
            ns = self.t0_ns + round(t * 1e9)
            silent = self.camera_silent and self.camera_silent[0] <= t < self.camera_silent[1]
            if not silent:
                size = (W // 2, H // 2) if self.bad_size_from is not None and t >= self.bad_size_from else (W, H)
                enc = "mono8" if self.bad_encoding_from is not None and t >= self.bad_encoding_from else "bgr8"
                out.append(("/camera/head/image_raw", TOPICS["/camera/head/image_raw"], ns,
                            image_cdr("head", seq, ns, enc, size)))
            out.append(("/camera/wrist/image_raw/compressed", TOPICS["/camera/wrist/image_raw/compressed"], ns,
                        image_cdr("wrist", seq, ns)))
        for t_bad in self.backwards_at:
            ns = self.t0_ns + round(t_bad * 1e9)
            out.append(("/camera/head/image_raw", TOPICS["/camera/head/image_raw"], ns + 1,
                        image_cdr("head", 0, ns - 500_000_000)))
        for k in range(int(round(self.duration_s * self.pose_hz))):
            t = k / self.pose_hz
            ns = self.t0_ns + round(t * 1e9)
            for hand in ("left", "right"):
                pos, q = pose_at(hand, t)
                if hand == "left" and self.nan_pose and self.nan_pose[0] <= t < self.nan_pose[1]:
                    q = np.array([np.nan, 0, 0, 1.0])
                if hand == "right" and self.bad_norm and self.bad_norm[0] <= t < self.bad_norm[1]:
                    q = 1.5 * q
                if hand == "right" and k % 10 in self.lose_right_pose:
                    continue
                out.append((f"/robot/{hand}/eef_pose", TOPICS[f"/robot/{hand}/eef_pose"], ns, pose_cdr(pos, q, ns)))
        for k in range(int(round(self.duration_s * self.finger_hz))):
            t = k / self.finger_hz
            ns = self.t0_ns + round(t * 1e9)
            out.append(("/robot/left/gripper_state", TOPICS["/robot/left/gripper_state"], ns,
                        joints_cdr(["l_f1", "l_f2", "l_wrist"], [*fingers_at("left", t), 9.0], ns)))
            out.append(("/robot/right/gripper_state", TOPICS["/robot/right/gripper_state"], ns,
                        joints_cdr(RIGHT_JOINTS, fingers_at("right", t), ns)))
        out.sort(key=lambda m: m[2])
        return out


def canonical_pose_matrix(hand: str, t: float) -> np.ndarray:
    """Ground truth canonical EEF pose (4x4) at time t, computed with plain matrices."""
    pos, q = pose_at(hand, t)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = Rotation.from_quat(q).as_matrix(), pos
    off = OFFSETS[hand]
    O = np.eye(4)
    O[:3, :3] = (Rotation.from_quat(off["quat_xyzw"]) if "quat_xyzw" in off
                 else Rotation.from_euler("xyz", off["rpy"])).as_matrix()
    O[:3, 3] = off["xyz"]
    return T @ O


def expected_action(t0: float, t1: float) -> np.ndarray:
    """Ground-truth action row (15,) for the step from time t0 to t1 (both hands)."""
    row = []
    for hand in ("left", "right"):
        A, B = canonical_pose_matrix(hand, t0), canonical_pose_matrix(hand, t1)
        D = np.linalg.inv(A) @ B
        row += list(D[:3, 3]) + list(Rotation.from_matrix(D[:3, :3]).as_rotvec())
        f = fingers_at(hand, t1)
        row += [f.sum()] if hand == "left" else list(f)
    return np.array(row)


def expected_state(t: float) -> np.ndarray:
    row = []
    for hand in ("left", "right"):
        C = canonical_pose_matrix(hand, t)
        q = Rotation.from_matrix(C[:3, :3]).as_quat()
        q = -q if q[3] < 0 else q
        f = fingers_at(hand, t)
        row += list(C[:3, 3]) + list(q) + ([f.sum()] if hand == "left" else list(f))
    return np.array(row)


def record(recorder, plan: Plan, quality: str | None = "high", task: str = "", latency_ns: int = 3_000_000):
    """Drive an EpisodeRecorder through one synthetic episode as a node would (receive time = stamp + latency).

    Returns the PendingEpisode (already discarded when quality is None)."""
    msgs = plan.messages()
    for topic, _, ns, cdr in msgs:
        if ns < plan.t0_ns:
            recorder.ingest(topic, ns + latency_ns, cdr)
    recorder.start(task, plan.t0_ns - 1)
    for topic, _, ns, cdr in msgs:
        if ns >= plan.t0_ns:
            recorder.ingest(topic, ns + latency_ns, cdr)
    return recorder.finish(msgs[-1][2] + 2 * latency_ns, quality)


def frame_times(ds, episode: int) -> list[float]:
    """Trajectory time [s] of each frame of an episode, from its tick_index (the grid starts at t=0)."""
    rows = ds.hf_dataset.filter(lambda r: r["episode_index"] == episode)
    return [0.1 * int(t) for t in rows["tick_index"]]


# -- one arm with a keypoint hand (fingers.type: keypoints, e.g. config/robots/dexterous_hand.yaml) -------


def keypoints_at(t: float, count: int = 5) -> np.ndarray:
    """Fingertip keypoints (count, 3) [m] in the EEF link frame at time t: tip i sits at y = -4 + 2 i cm and
    curls in and out with its own phase (closure 0..1: from 17.5 cm out along z to 12.5 cm and 3 cm along x)."""
    i = np.arange(count)
    closure = 0.5 + 0.5 * np.sin(1.5 * t + 0.7 * i)
    return np.stack([0.03 * closure, -0.04 + 0.02 * i, 0.175 - 0.05 * closure], axis=1)


def pose_array_cdr(points, ns: int, frame: str = "tool0") -> bytes:
    """geometry_msgs/PoseArray whose poses' positions are ``points`` (orientations identity)."""
    T = typestore().types
    poses = [T["geometry_msgs/msg/Pose"](position=T["geometry_msgs/msg/Point"](x=float(x), y=float(y), z=float(z)),
                                         orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0))
             for x, y, z in np.asarray(points, dtype=np.float64)]
    msg = T["geometry_msgs/msg/PoseArray"](
        header=T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id=""),
        poses=poses)
    return serialize(_stamp(msg, ns, frame), "geometry_msgs/msg/PoseArray")


@dataclass
class KeypointHandPlan:
    """A synthetic run of a one-hand robot config with keypoint fingers (a ``lda_common`` RobotConfig).

    The hand's EEF pose follows ``pose_at(hand, t)`` at ``pose_hz``; its fingertips ``keypoints_at(t)`` at
    ``keypoint_hz``; the cameras are ``head`` (raw) and optionally ``wrist`` (compressed), published at
    ``image_size`` (the config may resize). The bad-input hooks corrupt the keypoint messages in [a, b) s.
    """

    config: RobotConfig  # one hand with fingers.type keypoints; cameras named head (raw) and wrist (compressed)
    t0_ns: int = 1_700_000_000_000_000_000
    duration_s: float = 2.0
    cam_hz: int = 30
    pose_hz: int = 100
    keypoint_hz: int = 50
    image_size: tuple[int, int] = (W, H)
    instruction: str | None = "pick up the sponge"
    wrong_count: tuple[float, float] | None = None  # PoseArrays with one keypoint too few in [a, b) s
    nan_keypoints: tuple[float, float] | None = None  # one NaN coordinate in [a, b) s

    @property
    def hand(self):
        (hand,) = self.config.hands
        assert hand.fingers.type == "keypoints", "KeypointHandPlan needs a hand with fingers.type keypoints"
        return hand

    def topics(self) -> dict[str, str]:
        out = {c.topic: c.msgtype for c in self.config.cameras}
        out[self.hand.pose_topic] = "geometry_msgs/msg/PoseStamped"
        out[self.hand.gripper_topic] = "geometry_msgs/msg/PoseArray"
        out[self.config.instruction_topic] = "std_msgs/msg/String"
        return out

    def messages(self) -> list[tuple[str, str, int, bytes]]:
        """(topic, msgtype, stamp_ns, cdr) in stamp order."""
        hand, topics, count = self.hand, self.topics(), self.hand.fingers.count
        out = []
        if self.instruction:
            topic = self.config.instruction_topic
            out.append((topic, topics[topic], self.t0_ns - 1, string_cdr(self.instruction)))

        def add(topic: str, k: int, hz: int, make) -> None:
            t = k / hz
            ns = self.t0_ns + round(t * 1e9)
            out.append((topic, topics[topic], ns, make(t, ns)))

        for seq in range(int(round(self.duration_s * self.cam_hz))):
            for cam in self.config.cameras:
                add(cam.topic, seq, self.cam_hz,
                    lambda t, ns, cam=cam, seq=seq: image_cdr(cam.name, seq, ns, size=self.image_size))
        for k in range(int(round(self.duration_s * self.pose_hz))):
            add(hand.pose_topic, k, self.pose_hz,
                lambda t, ns: pose_cdr(*pose_at(hand.name, t), ns, self.config.base_frame or "base"))
        for k in range(int(round(self.duration_s * self.keypoint_hz))):
            def keypoints(t, ns):
                pts = keypoints_at(t, count)
                if self.wrong_count and self.wrong_count[0] <= t < self.wrong_count[1]:
                    pts = pts[:-1]
                if self.nan_keypoints and self.nan_keypoints[0] <= t < self.nan_keypoints[1]:
                    pts[2, 1] = np.nan
                return pose_array_cdr(pts, ns)
            add(hand.gripper_topic, k, self.keypoint_hz, keypoints)
        out.sort(key=lambda m: m[2])
        return out


def offset_matrix(offset: dict) -> np.ndarray:
    """4x4 of a canonical_offset as written in a robot YAML (xyz and rpy or quat_xyzw)."""
    O = np.eye(4)
    O[:3, :3] = (Rotation.from_quat(offset["quat_xyzw"]) if "quat_xyzw" in offset
                 else Rotation.from_euler("xyz", offset.get("rpy", [0.0, 0.0, 0.0]))).as_matrix()
    O[:3, 3] = offset.get("xyz", [0.0, 0.0, 0.0])
    return O


def keypoint_hand_state(hand: str, offset: dict, t: float, count: int = 5) -> np.ndarray:
    """Ground-truth observation.state (7 + 3 count,) of a keypoint hand at time t: the canonical pose, then
    the fingertips moved from the EEF link frame into the canonical frame (p_c = O^-1 p_eef)."""
    pos, q = pose_at(hand, t)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = Rotation.from_quat(q).as_matrix(), pos
    O = offset_matrix(offset)
    C = T @ O
    quat = Rotation.from_matrix(C[:3, :3]).as_quat()
    quat = -quat if quat[3] < 0 else quat
    pts = np.c_[keypoints_at(t, count), np.ones(count)] @ np.linalg.inv(O).T
    return np.concatenate([C[:3, 3], quat, pts[:, :3].reshape(-1)])


def keypoint_hand_action(hand: str, offset: dict, t0: float, t1: float, count: int = 5) -> np.ndarray:
    """Ground-truth action row (6 + 3 count,) for the step t0 -> t1: the canonical-frame motion, then the
    fingertips at t1 in the canonical frame."""
    O = offset_matrix(offset)
    mats = []
    for t in (t0, t1):
        pos, q = pose_at(hand, t)
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = Rotation.from_quat(q).as_matrix(), pos
        mats.append(T @ O)
    D = np.linalg.inv(mats[0]) @ mats[1]
    fingers = keypoint_hand_state(hand, offset, t1, count)[7:]
    return np.concatenate([D[:3, 3], Rotation.from_matrix(D[:3, :3]).as_rotvec(), fingers])
