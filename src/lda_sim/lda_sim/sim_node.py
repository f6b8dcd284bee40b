"""sim_node: a simulated robot on the same topics a real robot configuration uses.

    ros2 run lda_sim sim_node --ros-args -p robot:=panda_lift -p image_size:=96

Publishes (best-effort, one stamp per control step): camera/head/image_raw (rgb8, upright),
robot/<hand>/eef_pose, robot/<hand>/gripper_state (``gripper`` = width or a hand's openness [m], then a
dexterous hand's actuated finger joints [rad] under the names config/robots/gr1_humanoid.yaml uses),
lda/task_success and the privileged sim/object_pose.
Simulated time: /clock advances exactly one control period per step (starting at the wall time the node
started), and every stamp is that time. Nodes run with use_sim_time:=true (the sim launch files set it)
then see a perfect 10 Hz grid even when a loaded machine steps the physics below real time.
Subscribes (reliable): robot/<hand>/eef_target (absolute pose in the eef_pose frame) and
robot/<hand>/gripper_command (``gripper`` or one unnamed value: target width [m]; or every finger joint by
name: joint targets [rad], as the safety gate sends them). Serves sim/reset (lda_msgs/srv/ResetSim).
Physics runs on its own thread; callbacks only store the latest command, so the executor never waits on it.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from lda_common.process_exit import ExitGuard, join_threads
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.time import Time
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool

from lda_msgs.msg import SafetyStatus
from lda_msgs.srv import ResetSim
from lda_sim.sim_core import ROBOTS, SimObservation, SimRobot, finger_joint_names

COMMAND_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)

# name: (default, description); read-only, checked once at start-up in _read_parameters.
PARAMETERS = {
    "robot": ("panda_lift", f"simulated robot: one of {sorted(ROBOTS)}"),
    "image_size": (96, "head camera image width and height [px], 16..512"),
    "camera": ("", "MuJoCo camera for the head image; empty: the robot's default"),
    "control_hz": (10.0, "control and publishing rate [Hz], 1..50"),
    "seed": (0, "seed of the first episode (>= 0); /sim/reset sets later ones"),
    "max_episode_steps": (400, "steps after which the episode freezes until /sim/reset; 0: no limit"),
    "realtime": (True, "true: step at control_hz in wall-clock time; false: as fast as possible"),
    "real_time_factor": (1.0, "with realtime: simulated seconds per wall-clock second, 0.05..1 (below 1 gives a "
                              "policy on a slow CPU the control periods a faster computer would)"),
    "target_timeout_s": (0.5, "an eef_target older than this (simulated time) is dropped; the hand holds [s]"),
    "gate_timeout_s": (0.5, "once the safety gate's /lda/safety_status heartbeat was heard, hold every hand when "
                            "it is older than this (simulated time) [s]; 0: not watched"),
    "max_step_m": (0.05, "largest EEF translation commanded per control step [m], <= 0.05"),
    "max_step_rad": (0.3, "largest EEF rotation commanded per control step [rad], <= 0.5"),
    "frame_id": ("base", "frame of eef_pose, eef_target and object_pose: the robot base"),
    "startup_timeout_s": (300.0, "how long a sim/reset call waits for the simulation to start (a cold machine "
                                 "takes minutes to import robosuite and compile the MuJoCo model) [s]"),
}


class ParameterError(ValueError):
    """A start-up parameter with a value the node cannot use."""


class SimNode(Node):
    def __init__(self):
        super().__init__("sim_node")
        self.cfg = self._read_parameters()
        self.hands = ROBOTS[self.cfg["robot"]].hands
        self.finger_joints = {h: finger_joint_names(self.cfg["robot"], h) for h in self.hands}  # [] for a gripper
        self._lock = threading.Lock()
        self._targets: dict[str, tuple[tuple, int]] = {}  # hand -> ((pos, quat), receive sim time [ns])
        self._sim_time_ns = self.get_clock().now().nanoseconds  # advanced by the physics thread only
        self._grippers: dict[str, float | np.ndarray] = {}  # hand -> width [m] or finger joint targets [rad]
        self._reset_request: tuple[int, threading.Event, dict] | None = None
        self._running = True
        self.ready = threading.Event()
        self.failed: str | None = None
        self._reject_counts: dict[str, int] = {}

        sensor = qos_profile_sensor_data
        self._pub_image = self.create_publisher(Image, "camera/head/image_raw", sensor)
        self._pub_pose = {h: self.create_publisher(PoseStamped, f"robot/{h}/eef_pose", sensor) for h in self.hands}
        self._pub_grip = {h: self.create_publisher(JointState, f"robot/{h}/gripper_state", sensor) for h in self.hands}
        self._pub_success = self.create_publisher(Bool, "lda/task_success", sensor)
        self._pub_object = self.create_publisher(PoseStamped, "sim/object_pose", sensor)
        self._pub_clock = self.create_publisher(Clock, "/clock", 10)
        for hand in self.hands:
            self.create_subscription(
                PoseStamped, f"robot/{hand}/eef_target", lambda m, h=hand: self._on_target(h, m), COMMAND_QOS)
            self.create_subscription(
                JointState, f"robot/{hand}/gripper_command", lambda m, h=hand: self._on_gripper(h, m), COMMAND_QOS)
        # The safety gate's heartbeat: a gate that stops ticking stops it, and the robot holds (as a real
        # robot's driver should; see docs/design/safety-gate.md).
        self._gate_seen_ns: int | None = None
        self._gate_lost = False
        self.create_subscription(SafetyStatus, "/lda/safety_status", self._on_gate_status, COMMAND_QOS)
        # The reset waits for the physics thread; its own group keeps command callbacks flowing meanwhile.
        self.create_service(ResetSim, "sim/reset", self._on_reset, callback_group=MutuallyExclusiveCallbackGroup())
        self._thread = threading.Thread(target=self._run, name="sim_physics", daemon=True)
        self._thread.start()

    # -- parameters --------------------------------------------------------------------------------
    def _read_parameters(self) -> dict:
        for name, (default, text) in PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=text, read_only=True))
        cfg = {name: self.get_parameter(name).value for name in PARAMETERS}
        checks = [
            (cfg["robot"] in ROBOTS, f"robot '{cfg['robot']}' is unknown; choose one of {sorted(ROBOTS)}"),
            (16 <= cfg["image_size"] <= 512, f"image_size {cfg['image_size']} is outside 16..512"),
            (1.0 <= cfg["control_hz"] <= 50.0, f"control_hz {cfg['control_hz']} is outside 1..50"),
            (0.05 <= cfg["real_time_factor"] <= 1.0, f"real_time_factor {cfg['real_time_factor']} is outside 0.05..1"),
            (cfg["seed"] >= 0, f"seed {cfg['seed']} is negative"),
            (cfg["max_episode_steps"] >= 0, f"max_episode_steps {cfg['max_episode_steps']} is negative"),
            (cfg["target_timeout_s"] > 0.0, f"target_timeout_s {cfg['target_timeout_s']} must be positive"),
            (cfg["gate_timeout_s"] >= 0.0, f"gate_timeout_s {cfg['gate_timeout_s']} must be >= 0"),
            (0.0 < cfg["max_step_m"] <= 0.05, f"max_step_m {cfg['max_step_m']} is outside (0, 0.05]"),
            (0.0 < cfg["max_step_rad"] <= 0.5, f"max_step_rad {cfg['max_step_rad']} is outside (0, 0.5]"),
            (bool(cfg["frame_id"]), "frame_id is empty"),
            (cfg["startup_timeout_s"] > 0.0, f"startup_timeout_s {cfg['startup_timeout_s']} must be positive"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ParameterError("; ".join(problems))
        return cfg

    # -- callbacks: store the latest command only --------------------------------------------------
    def _on_target(self, hand: str, msg: PoseStamped) -> None:
        if msg.header.frame_id not in ("", self.cfg["frame_id"]):
            self._reject(hand, f"frame '{msg.header.frame_id}' is not '{self.cfg['frame_id']}'")
            return
        p, q = msg.pose.position, msg.pose.orientation
        try:
            pose = self._check_target(hand, (p.x, p.y, p.z), (q.x, q.y, q.z, q.w))
        except ValueError as exc:
            self._reject(hand, str(exc))
            return
        with self._lock:
            self._targets[hand] = (pose, self._sim_time_ns)

    def _on_gate_status(self, msg: SafetyStatus) -> None:
        if msg.source == "safety_gate":
            with self._lock:
                self._gate_seen_ns = self._sim_time_ns

    def _on_gripper(self, hand: str, msg: JointState) -> None:
        try:
            command = self._gripper_command(hand, list(msg.name), list(msg.position))
        except ValueError as exc:
            self._reject(hand, str(exc))
            return
        with self._lock:
            self._grippers[hand] = command

    def _gripper_command(self, hand: str, names: list[str], positions: list[float]) -> float | np.ndarray:
        """A width (``gripper``, or one unnamed value) or every finger joint's target, by name."""
        if not all(math.isfinite(v) for v in positions):
            raise ValueError(f"gripper_command has a NaN or infinite position: {positions}")
        if names in ([], ["gripper"]) and len(positions) == 1:
            return float(positions[0])
        joints = self.finger_joints[hand]
        if joints and sorted(names) == sorted(joints) and len(positions) == len(names):
            by_name = dict(zip(names, positions, strict=True))
            return np.array([by_name[j] for j in joints])
        wanted = f"'gripper' (width) or the finger joints {joints}" if joints else "'gripper' (width)"
        raise ValueError(f"gripper_command needs {wanted}; got names {names} with {len(positions)} positions")

    def _reject(self, hand: str, why: str) -> None:
        # Log the first few rejections in full, then every 50th, so a bad stream cannot flood the log.
        count = self._reject_counts.get(hand, 0) + 1
        self._reject_counts[hand] = count
        if count <= 10 or count % 100 == 0:
            self.get_logger().warning(f"rejected {hand} command ({count} so far): {why}")

    def _check_target(self, hand, pos, quat):
        if not self.ready.is_set() or self.failed:
            raise ValueError("simulation is not running")
        return self.sim.check_target(hand, pos, quat)  # pure validation: safe outside the physics thread

    def _on_reset(self, request: ResetSim.Request, response: ResetSim.Response) -> ResetSim.Response:
        if request.seed < 0:
            response.success, response.message = False, f"seed must be >= 0, got {request.seed}"
            return response
        if not self.ready.wait(timeout=self.cfg["startup_timeout_s"]) or self.failed:
            response.success, response.message = False, f"simulation not running: {self.failed or 'starting'}"
            return response
        done, result = threading.Event(), {}
        with self._lock:
            self._reset_request = (int(request.seed), done, result)
        if not done.wait(timeout=120.0):  # a GR-1 reset rebuilds the MuJoCo model: seconds, more when loaded
            response.success, response.message = False, "reset timed out"
            return response
        response.success, response.message = result["success"], result["message"]
        return response

    # -- physics thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        self._step_times: list[float] = []
        try:
            self._loop()
        except Exception as exc:
            if self._running and rclpy.ok(context=self.context):  # not a shutdown race: make main() exit 1
                self.failed = f"{type(exc).__name__}: {exc}"
                self.get_logger().error(f"simulation stopped: {self.failed}")
                self.ready.set()
        finally:
            if self._step_times:  # print: the ROS logger may already be shut down here
                ms = 1000 * np.mean(self._step_times)
                print(f"[sim_node] stepped {len(self._step_times)} times, mean {ms:.1f} ms per step", flush=True)
            if hasattr(self, "sim"):
                self.sim.close()

    def _loop(self) -> None:
        cfg = self.cfg
        try:
            # Created here: the offscreen GL context belongs to the thread that renders with it.
            self.sim = SimRobot(
                cfg["robot"], image_size=cfg["image_size"], camera=cfg["camera"] or None,
                control_hz=cfg["control_hz"], seed=cfg["seed"], max_step_m=cfg["max_step_m"],
                max_step_rad=cfg["max_step_rad"],
            )
        except Exception as exc:  # a bad camera name or a broken GL set-up: report it, do not hang
            self.failed = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"could not start the simulation: {self.failed}")
            self.ready.set()
            return
        obs = self.sim.reset(cfg["seed"])
        self.ready.set()
        pace = f"real time x {cfg['real_time_factor']:g}" if cfg["realtime"] else "as fast as possible"
        self.get_logger().info(
            f"sim_node ready: {cfg['robot']} hands {list(self.hands)}, camera {self.sim.camera} "
            f"{cfg['image_size']}x{cfg['image_size']}, {cfg['control_hz']:g} Hz, {pace}"
        )
        period = 1.0 / cfg["control_hz"] / cfg["real_time_factor"]  # wall-clock time per step
        period_ns = round(1e9 / cfg["control_hz"])  # simulated time per step
        next_tick = time.monotonic()
        frozen_logged = False
        self._publish(obs)
        while self._running and rclpy.ok(context=self.context):
            with self._lock:
                request, self._reset_request = self._reset_request, None
            if request is not None:
                seed, done, result = request
                obs = self._reset(seed, result)
                frozen_logged = False
            elif cfg["max_episode_steps"] and obs.step >= cfg["max_episode_steps"]:
                if not frozen_logged:  # keep publishing the last state so consumers see a live robot
                    self.get_logger().info(f"episode reached {obs.step} steps; frozen until /sim/reset")
                    frozen_logged = True
            else:
                targets, grippers = self._commands()
                start = time.perf_counter()
                obs = self.sim.step(targets, grippers)
                self._step_times.append(time.perf_counter() - start)
            with self._lock:
                self._sim_time_ns += period_ns  # one control step of simulated time, however long it took
            self._publish(obs)
            if request is not None:
                done.set()  # the reset's answer goes out once its first observation is published
            if cfg["realtime"] or frozen_logged:
                next_tick += period
                delay = next_tick - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_tick = time.monotonic()  # overran: do not try to catch up with a burst
                    self.get_logger().warning(
                        f"a step took {1000 * (period - delay):.0f} ms, longer than the {1000 * period:.0f} ms "
                        "control period: running slower than real time", throttle_duration_sec=10.0)

    def _commands(self) -> tuple[dict, dict]:
        with self._lock:
            timeout_ns = self.cfg["target_timeout_s"] * 1e9
            targets = {  # stale: hold the pose
                hand: (pose if self._sim_time_ns - received <= timeout_ns else None)
                for hand, (pose, received) in self._targets.items()
            }
            gate_ns = self.cfg["gate_timeout_s"] * 1e9
            seen = self._gate_seen_ns
            lost = bool(gate_ns) and seen is not None and self._sim_time_ns - seen > gate_ns
            if lost:  # the gate went quiet: hold every hand, whatever it sent last
                targets = dict.fromkeys(self._targets)
            if lost != self._gate_lost:  # rclpy: one severity per call site
                self._gate_lost = lost
                if lost:
                    self.get_logger().error("safety gate heartbeat lost: holding")
                else:
                    self.get_logger().info("safety gate heartbeat back")
            return targets, dict(self._grippers)

    def _reset(self, seed: int, result: dict) -> SimObservation:
        with self._lock:  # commands sent for the previous episode must not drive the new one
            self._targets.clear()
            self._grippers.clear()
        obs = self.sim.reset(seed)
        pos = np.round(obs.object_pos, 3).tolist()
        result.update(success=True, message=f"reset with seed {seed}: object at {pos} in '{self.cfg['frame_id']}'")
        self.get_logger().info(result["message"])
        return obs

    def _publish(self, obs: SimObservation) -> None:
        stamp = Time(nanoseconds=self._sim_time_ns).to_msg()
        self._pub_clock.publish(Clock(clock=stamp))
        frame = self.cfg["frame_id"]
        image = Image(height=obs.image.shape[0], width=obs.image.shape[1], encoding="rgb8", is_bigendian=0,
                      step=obs.image.shape[1] * 3)
        image.header.stamp, image.header.frame_id = stamp, "head_camera"
        image.data = obs.image.tobytes()
        self._pub_image.publish(image)
        for hand in self.hands:
            self._pub_pose[hand].publish(_pose_msg(stamp, frame, obs.eef_pos[hand], obs.eef_quat[hand]))
            fingers = obs.finger_positions.get(hand, ())
            grip = JointState(name=["gripper", *self.finger_joints[hand]],
                              position=[float(obs.gripper_width[hand]), *(float(v) for v in fingers)])
            grip.header.stamp = stamp
            self._pub_grip[hand].publish(grip)
        self._pub_success.publish(Bool(data=obs.success))
        self._pub_object.publish(_pose_msg(stamp, frame, obs.object_pos, obs.object_quat))

    def stop(self) -> bool:
        """Stop the physics thread; False when it is still inside a step or a reset (then the node must not
        be destroyed under it: the process ends without)."""
        self._running = False
        if join_threads([self._thread]):
            self.get_logger().warning("exiting while the physics thread is still inside a step or a reset")
            return False
        return True


def _pose_msg(stamp, frame: str, pos, quat) -> PoseStamped:
    msg = PoseStamped()
    msg.header.stamp, msg.header.frame_id = stamp, frame
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in pos)
    o = msg.pose.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in quat)
    return msg


def main(args=None) -> None:
    guard = ExitGuard("sim_node").install()  # before rclpy.init: its handlers chain to the guard's
    rclpy.init(args=args)
    code = 0
    node = executor = None
    try:
        node = SimNode()
        executor = MultiThreadedExecutor(num_threads=2)
        executor.add_node(node)
        while rclpy.ok() and not (node.ready.is_set() and node.failed):
            executor.spin_once(timeout_sec=0.1)
        if node.failed:
            code = 1
    except ParameterError as exc:
        rclpy.logging.get_logger("sim_node").error(f"invalid parameters: {exc}")
        code = 2
    except rclpy.exceptions.ParameterException as exc:  # e.g. robot:=5 (wrong type)
        rclpy.logging.get_logger("sim_node").error(f"invalid parameters: {exc}")
        code = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        stopped = node is not None and node.stop()
        if executor is not None:
            executor.shutdown(timeout_sec=0.5)  # a reset callback may still wait for the physics thread
        if stopped:
            node.destroy_node()
        rclpy.try_shutdown()
    guard.exit(code)


if __name__ == "__main__":
    main()
