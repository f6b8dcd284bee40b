"""scripted_teleop_node: an operator that records a mix of high / low / actionless episodes.

    ros2 run lda_sim scripted_teleop_node --ros-args -p n_high:=5 -p n_low:=5 -p n_actionless:=2

Per episode: call the sim's reset service with that episode's seed, wait for the first fresh observation,
call the recorder's start service with the task text, drive the robot with ``ScriptedOperator`` (publishing
robot/<hand>/eef_target and gripper_command once per observed control step: a width for a parallel
gripper, every hand's finger joint targets for a dexterous hand), then call the stop service with
the episode's quality. Exits 0 when every episode was saved, 1 otherwise (so a launch file can use
``on_exit: shutdown``). Works against any server of lda_msgs StartEpisode / StopEpisode.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from lda_common.process_exit import ExitGuard, join_threads, spin_until_shutdown, wait_until
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.time import Time
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool

from lda_msgs.srv import ResetSim, StartEpisode, StopEpisode
from lda_sim.scripted_operator import TASKS, ScriptedOperator
from lda_sim.sim_core import ROBOTS, SimObservation, finger_joint_names, finger_targets_for_width

COMMAND_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)

PARAMETERS = {
    "robot": ("panda_lift", f"robot the sim runs: one of {sorted(TASKS)}"),
    "task": ("", "task text sent to the recorder; empty: the robot's default (e.g. 'lift the red cube')"),
    "n_high": (2, "episodes by the clean expert, saved as 'high'"),
    "n_low": (2, "episodes with pauses, detours, jitter and retries, saved as 'low'"),
    "n_actionless": (1, "observation-only episodes, saved as 'actionless'"),
    "shuffle": (False, "interleave the modes in a seeded random order instead of high, low, actionless"),
    "seed": (0, "episode i resets the sim with seed + i and seeds the operator's noise with it"),
    "max_steps": (200, "control steps after which an episode ends (as a failure if not done)"),
    "failed_high_as": ("low", "label of a 'high' episode that failed: low | high | discard"),
    "start_service": ("/teleop_recorder/start_episode", "recorder's StartEpisode service"),
    "stop_service": ("/teleop_recorder/stop_episode", "recorder's StopEpisode service"),
    "reset_service": ("sim/reset", "simulator's ResetSim service"),
    "startup_timeout_s": (300.0, "how long to wait for the sim's first observation and for the services to appear "
                          "(a cold machine takes minutes to import robosuite and LeRobot) [s]"),
    "service_timeout_s": (120.0, "how long to wait for a service to answer [s]"),
    "observation_timeout_s": (5.0, "abort when the sim publishes nothing for this long [s]"),
    "frame_id": ("base", "frame of the published eef_target (the sim's eef_pose frame)"),
}


class ParameterError(ValueError):
    """A start-up parameter with a value the node cannot use."""


class TeleopError(RuntimeError):
    """The episode loop cannot go on (a service is missing or the sim went quiet)."""


class ScriptedTeleopNode(Node):
    def __init__(self):
        super().__init__("scripted_teleop")
        for name, (default, text) in PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=text, read_only=True))
        self.cfg = {name: self.get_parameter(name).value for name in PARAMETERS}
        self._validate()
        self.hands = ROBOTS[self.cfg["robot"]].hands
        self.task_text = self.cfg["task"] or ROBOTS[self.cfg["robot"]].task

        self._lock = threading.Lock()
        self._new_obs = threading.Condition(self._lock)
        self._poses: dict[str, PoseStamped] = {}
        self._widths: dict[str, JointState] = {}
        self._object: PoseStamped | None = None
        self._success = False
        sensor = qos_profile_sensor_data
        for hand in self.hands:
            self.create_subscription(PoseStamped, f"robot/{hand}/eef_pose", lambda m, h=hand: self._store(
                self._poses, h, m), sensor)
            self.create_subscription(JointState, f"robot/{hand}/gripper_state", lambda m, h=hand: self._store(
                self._widths, h, m), sensor)
        self.create_subscription(Bool, "lda/task_success", self._on_success, sensor)
        self.create_subscription(PoseStamped, "sim/object_pose", self._on_object, sensor)
        self._pub_target = {h: self.create_publisher(PoseStamped, f"robot/{h}/eef_target", COMMAND_QOS)
                            for h in self.hands}
        self._pub_gripper = {h: self.create_publisher(JointState, f"robot/{h}/gripper_command", COMMAND_QOS)
                             for h in self.hands}
        self._reset = self.create_client(ResetSim, self.cfg["reset_service"])
        self._start = self.create_client(StartEpisode, self.cfg["start_service"])
        self._stop = self.create_client(StopEpisode, self.cfg["stop_service"])

    def _validate(self) -> None:
        cfg = self.cfg
        checks = [
            (cfg["robot"] in TASKS, f"robot '{cfg['robot']}' is unknown; choose one of {sorted(TASKS)}"),
            (min(cfg["n_high"], cfg["n_low"], cfg["n_actionless"]) >= 0, "episode counts must be >= 0"),
            (cfg["n_high"] + cfg["n_low"] + cfg["n_actionless"] > 0, "no episodes asked for (all n_* are 0)"),
            (cfg["seed"] >= 0, f"seed {cfg['seed']} is negative"),
            (cfg["max_steps"] >= 1, f"max_steps {cfg['max_steps']} must be positive"),
            (cfg["failed_high_as"] in ("low", "high", "discard"), "failed_high_as must be low, high or discard"),
            (min(cfg["startup_timeout_s"], cfg["service_timeout_s"], cfg["observation_timeout_s"]) > 0,
             "timeouts must be positive"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ParameterError("; ".join(problems))

    # -- subscriptions -----------------------------------------------------------------------------
    def _store(self, table: dict, hand: str, msg) -> None:
        with self._lock:
            table[hand] = msg

    def _on_success(self, msg: Bool) -> None:
        with self._lock:
            self._success = msg.data

    def _on_object(self, msg: PoseStamped) -> None:
        # The sim publishes the object pose last in each step, so it marks a complete observation.
        with self._new_obs:
            self._object = msg
            self._new_obs.notify_all()

    def wait_observation(self, newer_than: int) -> tuple[int, SimObservation]:
        """Block until an observation stamped after ``newer_than`` [ns] is complete; return (stamp, obs)."""
        deadline = time.monotonic() + self.cfg["observation_timeout_s"]
        with self._new_obs:
            while True:
                stamp = _ns(self._object.header.stamp) if self._object is not None else -1
                complete = stamp > newer_than and all(
                    h in self._poses and _ns(self._poses[h].header.stamp) == stamp for h in self.hands)
                if complete:
                    return stamp, self._observation()
                left = deadline - time.monotonic()
                if not rclpy.ok():
                    raise ExternalShutdownException()
                if left <= 0:
                    raise TeleopError(f"no observation from the sim for {self.cfg['observation_timeout_s']} s "
                                      "(is sim_node running with the same robot and namespace?)")
                self._new_obs.wait(timeout=min(left, 0.05))

    def _observation(self) -> SimObservation:
        def pose(msg):
            p, q = msg.pose.position, msg.pose.orientation
            return np.array([p.x, p.y, p.z]), np.array([q.x, q.y, q.z, q.w])

        eef = {h: pose(self._poses[h]) for h in self.hands}
        obj_pos, obj_quat = pose(self._object)
        widths = {h: (self._widths[h].position[0] if h in self._widths and self._widths[h].position else 0.0)
                  for h in self.hands}
        return SimObservation(
            step=0, image=None, eef_pos={h: p for h, (p, _) in eef.items()},
            eef_quat={h: q for h, (_, q) in eef.items()}, gripper_width=widths,
            object_pos=obj_pos, object_quat=obj_quat, success=self._success,
        )

    # -- services ----------------------------------------------------------------------------------
    def _wait(self, ready, what: str, timeout: float) -> bool:
        """Wait with progress lines; raises ExternalShutdownException when the node is told to stop."""
        done = wait_until(ready, what, timeout, self.get_logger().info, stop=lambda: not rclpy.ok())
        if not done and not rclpy.ok():
            raise ExternalShutdownException()
        return done

    def wait_for_sim(self) -> None:
        """Block until the sim publishes (a cold sim_node needs a minute or more to load robosuite and MuJoCo)."""
        timeout = self.cfg["startup_timeout_s"]
        if not self._wait(lambda: self._object is not None, "the simulator's first observation (sim_node "
                          "starting)", timeout):
            raise TeleopError(f"no observation from the sim within {timeout:g} s of start-up (is sim_node running "
                              "with the same robot and namespace?)")

    def call(self, client, request, what: str):
        name = self.resolve_service_name(client.srv_name)
        timeout = self.cfg["startup_timeout_s"]
        if not self._wait(client.service_is_ready, f"service {name} ({what})", timeout):
            raise TeleopError(f"service {name} ({what}) not available after {timeout:g} s")
        future = client.call_async(request)
        timeout = self.cfg["service_timeout_s"]
        if not self._wait(future.done, f"the answer of {name} ({what})", timeout):
            raise TeleopError(f"service {name} ({what}) did not answer within {timeout:g} s")
        return future.result()

    def send(self, targets: dict, grippers: dict, stamp_ns: int) -> None:
        """Publish the commands decided on the observation stamped ``stamp_ns``, with that stamp (the
        node's clock may not have seen that step's /clock yet, which would stamp two steps alike)."""
        stamp = Time(nanoseconds=stamp_ns).to_msg()
        for hand, (pos, quat) in targets.items():
            msg = PoseStamped()
            msg.header.stamp, msg.header.frame_id = stamp, self.cfg["frame_id"]
            msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in pos)
            o = msg.pose.orientation
            o.x, o.y, o.z, o.w = (float(v) for v in quat)
            self._pub_target[hand].publish(msg)
        for hand in self.hands:
            joints = finger_joint_names(self.cfg["robot"], hand)
            if joints:  # a dexterous hand takes joint targets, as a real hand's driver does; an idle one stays open
                targets = finger_targets_for_width(self.cfg["robot"], hand, grippers.get(hand))
                msg = JointState(name=joints, position=targets.tolist())
            elif hand in grippers:
                msg = JointState(name=["gripper"], position=[float(grippers[hand])])
            else:
                continue
            msg.header.stamp = stamp
            self._pub_gripper[hand].publish(msg)

    # -- episodes ----------------------------------------------------------------------------------
    def schedule(self) -> list[str]:
        cfg = self.cfg
        modes = ["high"] * cfg["n_high"] + ["low"] * cfg["n_low"] + ["actionless"] * cfg["n_actionless"]
        if cfg["shuffle"]:
            np.random.default_rng(cfg["seed"]).shuffle(modes)
        return modes

    def run(self) -> bool:
        """Record every scheduled episode; True when all were saved as asked."""
        log = self.get_logger()
        modes = self.schedule()
        log.info(f"scripted teleop: {len(modes)} episodes {modes}, task '{self.task_text}'")
        self.wait_for_sim()
        results = []
        for index, mode in enumerate(modes):
            seed = self.cfg["seed"] + index
            results.append(self.episode(index, mode, seed))
        saved = sum(r["saved"] for r in results)
        for mode in ("high", "low", "actionless"):
            mine = [r for r in results if r["mode"] == mode]
            if mine:
                log.info(f"{mode}: {sum(r['success'] for r in mine)}/{len(mine)} succeeded, "
                         f"mean {np.mean([r['steps'] for r in mine]):.0f} steps")
        log.info(f"scripted teleop done: {saved}/{len(results)} episodes saved")
        return saved == len(results)

    def episode(self, index: int, mode: str, seed: int) -> dict:
        log = self.get_logger()
        reset = self.call(self._reset, ResetSim.Request(seed=seed), "reset the sim")
        if not reset.success:
            raise TeleopError(f"sim reset refused: {reset.message}")
        # Any observation stamped after the reset answered comes from the new episode.
        stamp, obs = self.wait_observation(newer_than=self.get_clock().now().nanoseconds)
        started = self.call(self._start, StartEpisode.Request(task=self.task_text), "start the recording")
        if not started.success:
            raise TeleopError(f"recorder refused to start episode {index}: {started.message}")
        operator = ScriptedOperator(self.cfg["robot"], mode, seed=seed, max_steps=self.cfg["max_steps"])
        while not operator.done:
            self.send(*operator.act(obs), stamp)
            stamp, obs = self.wait_observation(newer_than=stamp)
        quality, discard = mode, False
        if mode == "high" and not operator.success and self.cfg["failed_high_as"] != "high":
            quality, discard = ("high", True) if self.cfg["failed_high_as"] == "discard" else ("low", False)
        stopped = self.call(self._stop, StopEpisode.Request(quality=quality, discard=discard), "stop the recording")
        outcome = "succeeded" if operator.success else "failed"
        verdict = "discarded" if discard else f"saved as {quality}"
        log.info(f"episode {index} ({mode}, seed {seed}) {outcome} in {operator.steps} steps, "
                 f"{operator.attempts} attempt(s): {verdict if stopped.success else 'NOT saved: ' + stopped.message}")
        return {"mode": mode, "success": operator.success, "steps": operator.steps, "saved": stopped.success}


def _ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def main(args=None) -> None:
    guard = ExitGuard("scripted_teleop_node").install()  # before rclpy.init: its handlers chain to the guard's
    rclpy.init(args=args)
    logger = rclpy.logging.get_logger("scripted_teleop")
    code = 1
    node = executor = spinner = None
    try:
        node = ScriptedTeleopNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        # Callbacks on a background thread; the episode loop below blocks on them like a script.
        spinner = threading.Thread(target=spin_until_shutdown, args=(executor,), daemon=True)
        spinner.start()
        code = 0 if node.run() else 1
    except (ParameterError, rclpy.exceptions.ParameterException) as exc:
        logger.error(f"invalid parameters: {exc}")
        code = 2
    except TeleopError as exc:
        logger.error(str(exc))
    except (KeyboardInterrupt, ExternalShutdownException):
        code = 130  # told to stop before every episode was recorded
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if node is not None and not join_threads([spinner]):  # never destroy a node a thread still spins
            node.destroy_node()
        rclpy.try_shutdown()
    guard.exit(code)


if __name__ == "__main__":
    main()
