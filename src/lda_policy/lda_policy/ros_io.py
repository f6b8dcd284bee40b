"""What the nodes share, torch-free (the safety gate imports it): QoS profiles, message conversions,
parameter declaration, :class:`RobotNode` (decoding the robot's streams) and :func:`node_main`.

:mod:`lda_policy.deploy` and :mod:`lda_policy.model` are ROS-free; the nodes use these helpers to go
between messages and the NumPy values the cores take. Camera messages are converted by
:meth:`lda_policy.deploy.robot.RobotInterface.image_to_rgb` (the recorder's NumPy conversion, no
``cv_bridge``), so deployment sees images exactly as the training data was recorded. The nodes that
load the model add :class:`lda_policy.model_node.ModelNode`.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from lda_common.process_exit import ExitGuard
from lda_common.robot_config import ConfigError
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

from .deploy.chunks import ProposedChunk
from .deploy.robot import ImageError

#: Camera, EEF poses, finger states: best-effort, keep the newest few (a late frame is a useless frame).
SENSOR_QOS = qos_profile_sensor_data
#: Chunks, safety statuses, targets, gripper commands: reliable, shallow queue.
COMMAND_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                         durability=DurabilityPolicy.VOLATILE)
#: The instruction: reliable + transient-local, so a node started later still gets the current task.
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)


def stamp_to_sec(stamp) -> float:
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


def sec_to_stamp(t: float) -> Time:
    return ns_to_stamp(int(round(t * 1e9)))


def ns_to_stamp(ns: int) -> Time:
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def rgb_to_image(rgb: np.ndarray, stamp: Time, frame_id: str = ""):
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image (rgb8)."""
    from sensor_msgs.msg import Image

    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", is_bigendian=0, step=rgb.shape[1] * 3)
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.data = rgb.tobytes()
    return msg


def pose_arrays(msg) -> tuple[np.ndarray, np.ndarray]:
    """geometry_msgs/PoseStamped -> (position (3,), quaternion xyzw (4,))."""
    p, q = msg.pose.position, msg.pose.orientation
    return np.array([p.x, p.y, p.z], dtype=np.float64), np.array([q.x, q.y, q.z, q.w], dtype=np.float64)


def pose_stamped(position, quaternion, stamp: Time, frame_id: str):
    from geometry_msgs.msg import PoseStamped

    msg = PoseStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in position)
    (msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z,
     msg.pose.orientation.w) = (float(v) for v in quaternion)
    return msg


def chunk_to_msg(chunk: ProposedChunk, frame_id: str = ""):
    from lda_msgs.msg import ActionChunk

    a = np.asarray(chunk.actions, dtype=np.float32)
    msg = ActionChunk()
    msg.header.stamp = ns_to_stamp(chunk.stamp_ns)
    msg.header.frame_id = frame_id
    msg.embodiment = chunk.embodiment
    msg.horizon, msg.action_dim = int(a.shape[0]), int(a.shape[1])
    msg.dt = float(chunk.dt)
    msg.dimension_names = list(chunk.dimension_names)
    msg.actions = a.reshape(-1).tolist()
    msg.sequence = int(chunk.sequence)
    msg.inference_time = float(chunk.inference_time)
    msg.digest = chunk.digest
    msg.candidates = int(chunk.candidates)
    msg.selection_score = float(chunk.selection_score)
    msg.selection_score_spread = float(chunk.selection_spread)
    return msg


class BadMessage(ValueError):
    """A message that cannot be decoded; the text says what is wrong with it."""


#: Largest chunk a proposal may declare (rows, columns): checked before anything is allocated.
MAX_HORIZON, MAX_ACTION_DIM = 1024, 1024


def msg_to_chunk(msg) -> ProposedChunk:
    """lda_msgs/ActionChunk -> ProposedChunk. Validates before it allocates: a declared horizon x action_dim
    that is absurd or does not match the data raises :class:`BadMessage` naming both."""
    h, a, n = int(msg.horizon), int(msg.action_dim), len(msg.actions)
    if not (1 <= h <= MAX_HORIZON and 1 <= a <= MAX_ACTION_DIM) or n != h * a:
        raise BadMessage(f"chunk {int(msg.sequence)} declares horizon {h} x action_dim {a} but carries {n} "
                         f"values (at most {MAX_HORIZON} x {MAX_ACTION_DIM})")
    if not 0 <= int(msg.header.stamp.nanosec) < 1_000_000_000:
        raise BadMessage(f"chunk {int(msg.sequence)}: header stamp nanosec {int(msg.header.stamp.nanosec)} is not "
                         "below 1e9")
    actions = np.asarray(msg.actions, dtype=np.float64).reshape(h, a)
    stamp_ns = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
    return ProposedChunk(int(msg.sequence), stamp_to_sec(msg.header.stamp), float(msg.dt), msg.embodiment,
                         list(msg.dimension_names), actions, float(msg.inference_time), msg.digest, stamp_ns,
                         int(msg.candidates), float(msg.selection_score), float(msg.selection_score_spread))


# ---------------------------------------------------------------------------------------------- parameters


class ParameterError(ValueError):
    """A node parameter with a bad value; the message names it."""


def declare(node, name: str, default, description: str, *, read_only: bool = True, low: float | None = None,
            high: float | None = None, choices: list[str] | None = None, required: bool = False):
    """Declare a parameter with a descriptor (description, read-only, range) and return its value.

    Ranges are also checked here (rclpy only enforces them on set): a value outside ``[low, high]``,
    not in ``choices``, or an empty ``required`` string raises :class:`ParameterError`.
    """
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    extra = []
    if choices:
        extra.append(f"one of {choices}")
    if required:
        extra.append("required")
    # dynamic typing + coercion below: `-p rate:=1` (an int) for a float parameter, or `instruction:=42`
    # for a string one, is what a user means, not a type error
    desc = ParameterDescriptor(description=description + (f" ({'; '.join(extra)})" if extra else ""),
                               read_only=read_only, dynamic_typing=True)
    if low is not None or high is not None:
        if isinstance(default, float):
            desc.floating_point_range = [FloatingPointRange(from_value=float(-1e300 if low is None else low),
                                                            to_value=float(1e300 if high is None else high))]
        elif isinstance(default, int) and not isinstance(default, bool):
            desc.integer_range = [IntegerRange(from_value=int(-(2**62) if low is None else low),
                                               to_value=int(2**62 if high is None else high), step=0)]
    value = _coerce(name, node.declare_parameter(name, default, desc).value, default)
    if required and (value is None or (isinstance(value, str) and not value.strip())):
        raise ParameterError(f"parameter '{name}' is required: {description}")
    if choices and value not in choices:
        raise ParameterError(f"parameter '{name}' is '{value}'; choose one of {choices}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if (low is not None and value < low) or (high is not None and value > high):
            raise ParameterError(f"parameter '{name}' = {value} is outside [{low}, {high}]")
    return value


def _coerce(name: str, value, default):
    """The parameter value in the type of its default, or ParameterError."""
    if value is None:  # `-p name:=` (empty) reads as "not set"
        value = "" if isinstance(default, str) else default
    try:
        if isinstance(default, bool):
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if not isinstance(value, bool):
                raise TypeError
            return value
        if isinstance(default, float):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if isinstance(default, int):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if isinstance(default, str):
            return value if isinstance(value, str) else str(value)
        if isinstance(default, (list, tuple)):
            if not isinstance(value, (list, tuple)) or len(value) != len(default):
                raise TypeError
            return [float(v) for v in value] if all(isinstance(v, float) for v in default) else list(value)
    except (TypeError, ValueError):
        raise ParameterError(f"parameter '{name}' = {value!r} should be a {type(default).__name__}"
                             + (f" of length {len(default)}" if isinstance(default, (list, tuple)) else "")) from None
    return value


def diagnostic_status(name: str, hardware_id: str, level: int, message: str, values: dict):
    """diagnostic_msgs/DiagnosticStatus with key/values as strings (level: 0 OK, 1 WARN, 2 ERROR, 3 STALE)."""
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

    status = DiagnosticStatus(level=bytes([level]), name=name, message=message[:200], hardware_id=hardware_id)
    status.values = [KeyValue(key=str(k), value=(f"{v:.4g}" if isinstance(v, float) else str(v)))
                     for k, v in values.items()]
    return status


# ---------------------------------------------------------------------------------------------- robot nodes


class RobotNode:
    """Mixin for the deployment nodes: the robot's streams decoded the same way in each, and the process
    protocol of :func:`node_main` (``start``, ``spin``, ``shutdown``). Needs ``self.robot``."""

    bad_images = 0  # camera frames that could not be decoded (diagnostics)
    last_image_error = ""

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def camera_frame(self, msg) -> tuple[float, np.ndarray] | None:
        """(stamp [s], RGB image) of a camera message; None for a frame that cannot be decoded (counted, logged)."""
        first = getattr(self, "_first_image", None)
        try:
            rgb = self.robot.image_to_rgb(msg, first)
        except ImageError as err:
            self.bad_images += 1
            self.last_image_error = str(err)
            self.get_logger().error(f"dropping camera frame: {err}", throttle_duration_sec=5.0)
            return None
        if first is None and hasattr(msg, "encoding"):  # raw images: later ones must match the first
            self._first_image = (msg.encoding, msg.width, msg.height)
        return stamp_to_sec(msg.header.stamp), rgb

    def finger_sample(self, hand: str, msg) -> tuple[float, np.ndarray] | None:
        """(stamp [s], finger values) of a JointState for ``hand``; None when it names none of its joints."""
        values = self.robot.fingers_from_joint_state(hand, msg.name, msg.position)
        return None if values is None else (stamp_to_sec(msg.header.stamp), values)

    def start(self) -> None:
        """Load and connect everything; raise one of the start-up errors with a clear message otherwise."""
        raise NotImplementedError

    def shutdown(self) -> list[str]:
        """Stop worker threads and leave the robot safe (called once on the way out); the names of threads
        still running when the join budget ran out."""
        return []

    def spin(self, executor) -> int:
        """Run until shut down; the process exit status."""
        executor.spin()
        return 0


#: Errors that mean "this node cannot start with what it was given": printed, exit status 1.
STARTUP_ERRORS: tuple[type[Exception], ...] = (ConfigError, ValueError, OSError)


def node_main(program: str, make_node: Callable[[], RobotNode],
              startup_errors: tuple[type[Exception], ...] = STARTUP_ERRORS) -> Callable[[list[str] | None], int]:
    """A console-script ``main``: exit status 2 for a bad parameter, 1 for anything else that stops start-up
    or ends the spin; 0 when told to stop (SIGINT/SIGTERM, within :data:`lda_common.process_exit.EXIT_DEADLINE_S`)."""

    def main(args: list[str] | None = None) -> int:
        guard = ExitGuard(program).install()  # before rclpy.init: its signal handlers chain to the guard's
        rclpy.init(args=args)
        node, code = None, 0
        try:
            try:
                node = make_node()
                node.start()
            except (ParameterError, *startup_errors) as err:
                print(f"{program}: error: {err}", file=sys.stderr, flush=True)
                code = 2 if isinstance(err, ParameterError) else 1
            else:
                executor = SingleThreadedExecutor()
                executor.add_node(node)
                code = node.spin(executor)
        except (KeyboardInterrupt, ExternalShutdownException):
            code = 0
        except Exception:  # noqa: BLE001 - reported, then the same bounded exit as any other
            if rclpy.ok():
                traceback.print_exc()
                code = 1
            # else: a callback that ran as the signal shut the context down (a publish on a dead context)
        finally:
            close_node(node)
        guard.exit(code)

    return main


def close_node(node) -> None:
    """Stop the node's threads, then destroy it and the ROS context. In that order, and not at all while a
    worker is still inside a call (a large model's forward pass): destroying a node that another thread still
    uses is a known way for rclpy and DDS to crash or hang (ros2/rclpy#663); the process ends right after."""
    busy = []
    if node is not None:
        try:
            busy = node.shutdown()
        except Exception:  # noqa: BLE001 - best effort on the way out
            traceback.print_exc()
        if not busy:
            node.destroy_node()
    rclpy.try_shutdown()
