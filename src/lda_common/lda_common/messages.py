"""ROS messages without ROS: the suite's own topic names (:class:`Topics`), and decoding and validating the
recorded message types from CDR bytes (rosbags' deserializer).

Every check that rejects a message raises ``BadSample`` with a reason meant for an operator:
images of the wrong size or an encoding that changed mid-episode, NaN or non-unit quaternions,
missing finger joints, and so on.
"""

from __future__ import annotations

import struct

import numpy as np

from .alignment import BadSample
from .bag_io import typestore
from .robot_config import CameraConfig, FingerConfig


class Topics:
    """The suite's own topic and service names, in one place (QoS and types: docs/reference/topics-and-qos.md).

    Robot-side topics (cameras, EEF poses, fingers, targets) come from the robot config and node parameters.
    """

    # Deployment: the model host proposes; the safety gate approves (or refuses), commands the robot, reports.
    PROPOSED_CHUNK = "/lda/proposed_chunk"  # lda_msgs/ActionChunk, model host -> gate
    ACTION_CHUNK = "/lda/action_chunk"  # lda_msgs/ActionChunk, approvals (sequence + digest), gate -> host
    HOST_STATUS = "/lda/host_status"  # lda_msgs/SafetyStatus, the model host's heartbeat (policy, encoders)
    JUDGE_STATUS = "/lda/judge_status"  # lda_msgs/SafetyStatus, the forward-dynamics judge's heartbeat
    SAFETY_STATUS = "/lda/safety_status"  # lda_msgs/SafetyStatus, the gate's latched verdict and heartbeat
    SAFETY_RESET = "/lda/safety_reset"  # lda_msgs/srv/SafetyReset, clears a latched STOP (while holding)

    # The task, as an operator (or the evaluation node) states it; transient-local.
    INSTRUCTION = "/lda/instruction"  # std_msgs/String

    # Recording: episode start/stop events, also written into bags for lda-bag2lerobot.
    EPISODE_EVENTS = "/lda/episode_events"  # std_msgs/String (JSON)

    # Dynamics replay (RViz / Foxglove).
    REPLAY_CAMERA = "/lda/replay/camera"  # sensor_msgs/Image
    REPLAY_LATENTS = "/lda/replay/latents"  # sensor_msgs/Image
    REPLAY_TRAJECTORIES = "/lda/replay/trajectories"  # visualization_msgs/MarkerArray
    REPLAY_SURPRISE = "/lda/replay/surprise"  # std_msgs/Float32
    REPLAY_DISTANCE = "/lda/replay/distance"  # std_msgs/Float32


RAW_ENCODINGS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


def deserialize(cdr: bytes | memoryview, msgtype: str):
    try:
        return typestore().deserialize_cdr(cdr, msgtype)
    except Exception as exc:  # noqa: BLE001 - corrupt CDR raises assorted errors
        raise BadSample(f"cannot deserialize {msgtype}: {type(exc).__name__}: {exc}") from None


def peek_stamp_ns(cdr: bytes | memoryview) -> int | None:
    """``header.stamp`` [ns] of a serialized message that starts with a std_msgs/Header (every stream the
    recorder takes), read from the CDR bytes without deserializing; None when too short or not plain CDR."""
    if len(cdr) < 12 or cdr[0] != 0 or cdr[1] not in (0, 1):  # encapsulation: CDR big (0) / little (1) endian
        return None
    sec, nanosec = struct.unpack_from("<iI" if cdr[1] == 1 else ">iI", cdr, 4)
    return sec * 1_000_000_000 + nanosec


def stamp_ns(msg) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def check_raw_image(msg, cam: CameraConfig, first: tuple[str, int, int] | None) -> None:
    """Cheap checks of a sensor_msgs/Image before it is buffered. ``first``: (encoding, width, height) of the
    episode's first accepted image of this camera (None for the first one)."""
    if msg.encoding not in RAW_ENCODINGS:
        raise BadSample(f"encoding '{msg.encoding}' unsupported (use one of {sorted(RAW_ENCODINGS)})")
    if first is not None and msg.encoding != first[0]:
        raise BadSample(f"encoding changed mid-episode from '{first[0]}' to '{msg.encoding}'")
    _check_size(msg.width, msg.height, cam, first)
    channels = RAW_ENCODINGS[msg.encoding]
    if msg.step < msg.width * channels or len(msg.data) < msg.step * msg.height:
        raise BadSample(f"image data too short: {len(msg.data)} bytes for step {msg.step} x {msg.height} rows")


def _check_size(w: int, h: int, cam: CameraConfig, first: tuple[str, int, int] | None) -> None:
    if first is not None and (w, h) != (first[1], first[2]):
        raise BadSample(f"image size changed mid-episode from {first[1]}x{first[2]} to {w}x{h}")
    if not cam.resize and (w, h) != (cam.width, cam.height):
        raise BadSample(f"image is {w}x{h}, the config says {cam.width}x{cam.height} (set resize: true to accept)")


def _fit(img: np.ndarray, cam: CameraConfig) -> np.ndarray:
    if img.shape[1] == cam.width and img.shape[0] == cam.height:
        return img
    import cv2

    return cv2.resize(img, (cam.width, cam.height), interpolation=cv2.INTER_AREA)


def raw_image_to_rgb(msg, cam: CameraConfig) -> np.ndarray:
    """sensor_msgs/Image (already checked) -> (H, W, 3) uint8 RGB at the configured size."""
    channels = RAW_ENCODINGS[msg.encoding]
    rows = np.asarray(msg.data[: msg.step * msg.height], dtype=np.uint8).reshape(msg.height, msg.step)
    img = rows[:, : msg.width * channels].reshape(msg.height, msg.width, channels)
    if msg.encoding == "mono8":
        img = np.repeat(img, 3, axis=2)
    elif msg.encoding in ("bgr8", "bgra8"):
        img = img[:, :, 2::-1]
    return _fit(np.ascontiguousarray(img[:, :, :3]), cam)


def compressed_to_rgb(msg, cam: CameraConfig, first: tuple[str, int, int] | None = None) -> np.ndarray:
    """sensor_msgs/CompressedImage (JPEG/PNG) -> (H, W, 3) uint8 RGB at the configured size."""
    import cv2

    buf = np.asarray(msg.data, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if img is None:
        raise BadSample(f"cannot decode compressed image (format '{msg.format}', {buf.size} bytes)")
    h, w = img.shape[:2]
    _check_size(w, h, cam, first)
    return _fit(np.ascontiguousarray(img[:, :, ::-1]), cam)


def pose_from_msg(msg, quaternion_tolerance: float, base_frame: str) -> tuple[np.ndarray, np.ndarray]:
    """geometry_msgs/PoseStamped -> (position (3,), unit quaternion xyzw (4,)); rejects bad poses."""
    p, o = msg.pose.position, msg.pose.orientation
    pos = np.array([p.x, p.y, p.z], dtype=np.float64)
    quat = np.array([o.x, o.y, o.z, o.w], dtype=np.float64)
    if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(quat))):
        raise BadSample(f"pose has NaN or infinite values (position {pos.tolist()}, orientation {quat.tolist()})")
    norm = float(np.linalg.norm(quat))
    if abs(norm - 1.0) > quaternion_tolerance:
        raise BadSample(f"orientation is not a unit quaternion (norm {norm:.4f}, tolerance {quaternion_tolerance})")
    frame = msg.header.frame_id
    if base_frame and frame and frame != base_frame:
        raise BadSample(f"pose is in frame '{frame}', the config expects '{base_frame}'")
    return pos, quat / norm


def fingers_from_joint_state(msg, fingers: FingerConfig) -> np.ndarray:
    """sensor_msgs/JointState -> width (1,) [m] or the named joint positions."""
    names = list(msg.name)
    positions = np.asarray(msg.position, dtype=np.float64)
    if len(positions) != len(names):
        raise BadSample(f"JointState has {len(names)} names but {len(positions)} positions")
    values = []
    for joint in fingers.joints:
        if joint not in names:
            raise BadSample(f"joint '{joint}' missing from JointState (has {names[:8]})")
        values.append(positions[names.index(joint)])
    values = np.array(values)
    if not np.all(np.isfinite(values)):
        raise BadSample(f"finger joint positions are not finite: {values.tolist()}")
    if fingers.type == "width":
        return np.array([fingers.scale * values.sum()])
    return values


def keypoints_from_pose_array(msg, fingers: FingerConfig) -> np.ndarray:
    """geometry_msgs/PoseArray of finger keypoints in the EEF frame -> (count, 3) [m]."""
    if len(msg.poses) != fingers.count:
        raise BadSample(f"PoseArray has {len(msg.poses)} keypoints, the config says {fingers.count}")
    pts = np.array([[p.position.x, p.position.y, p.position.z] for p in msg.poses], dtype=np.float64)
    if not np.all(np.isfinite(pts)):
        raise BadSample("finger keypoints have NaN or infinite values")
    return pts


def string_data(msg) -> str:
    return str(msg.data)

