"""evaluation_node: closed-loop evaluation episodes on the simulated robot.

    ros2 run lda_sim evaluation_node --ros-args -p episodes:=10 -p results_path:=/tmp/eval.json

Per episode: reset the sim with seed + i, publish the instruction (transient-local, as a real operator
would), ask the safety gate to clear a STOP latched in the episode before and to release the fingers it
holds (lda_msgs/srv/SafetyReset, with the episode as the reason; the gate accepts it only while holding), then
watch ``lda/task_success`` for up to ``max_steps`` control steps while whatever drives the robot (the
policy node, or nothing for the frozen baseline) acts. An episode succeeds once the sim has reported success
on ``success_hold_steps`` consecutive steps. Writes per-episode results and the success rate
as JSON and exits 0 (so a launch file can mark it ``on_exit: shutdown``); 1 when the sim is missing.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import rclpy
from geometry_msgs.msg import PoseStamped
from lda_common.messages import Topics
from lda_common.process_exit import ExitGuard, join_threads, spin_until_shutdown, wait_until
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from std_msgs.msg import Bool, String

from lda_msgs.msg import SafetyStatus
from lda_msgs.srv import ResetSim, SafetyReset

LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)

PARAMETERS = {
    "episodes": (5, "closed-loop episodes to run"),
    "seed": (1000, "episode i resets the sim with seed + i (use seeds not seen in training)"),
    "max_steps": (150, "control steps (sim eef_pose messages) before an episode counts as a failure"),
    "success_hold_steps": (1, "consecutive lda/task_success=true steps that make a success (1: the first; "
                              "more: a knock that lifts the object for a moment does not count)"),
    "instruction": ("lift the red cube", "instruction published on /lda/instruction"),
    "reset_service": ("sim/reset", "simulator's ResetSim service"),
    "safety_reset_service": (Topics.SAFETY_RESET, "the safety gate's reset, called after each sim reset ('' = none)"),
    "settle_s": (0.5, "wait after the resets before the episode's steps count [s]"),
    "results_path": ("", "write the results JSON here (empty: only log them)"),
    "label": ("policy", "name of what drives the robot, stored in the results (e.g. policy, frozen)"),
    "startup_timeout_s": (300.0, "how long to wait for the sim's reset service to appear (a cold sim_node takes "
                                 "minutes) [s]"),
    "service_timeout_s": (120.0, "how long to wait for a service to answer [s]"),
    "wait_for_policy": (False, "before the first episode, wait (startup_timeout_s) for the model host's heartbeat "
                               "on /lda/host_status: a cold machine loads the model long after the sim is up"),
}


class EvaluationNode(Node):
    def __init__(self):
        super().__init__("evaluation")
        for name, (default, description) in PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=description, read_only=True))
        self.cfg = {name: self.get_parameter(name).value for name in PARAMETERS}
        if min(self.cfg["episodes"], self.cfg["max_steps"], self.cfg["success_hold_steps"]) < 1:
            raise ValueError("episodes, max_steps and success_hold_steps must be >= 1")
        self._lock = threading.Lock()
        self._steps = 0
        self._success = False
        self._streak = 0  # consecutive task_success=true messages
        self._stops = 0
        self._absent: set[str] = set()  # optional services not found when last called
        # Every step counts (a success must hold for consecutive ones): the sim's best-effort topics with a
        # deep queue, so a busy moment of this node's thread does not drop the messages in between.
        steps_qos = QoSProfile(depth=100, reliability=qos_profile_sensor_data.reliability,
                               durability=qos_profile_sensor_data.durability)
        self.create_subscription(PoseStamped, "robot/right/eef_pose", self._on_step, steps_qos)
        self.create_subscription(Bool, "lda/task_success", self._on_success, steps_qos)
        self.create_subscription(SafetyStatus, Topics.SAFETY_STATUS, self._on_status, 10)
        self._host_heard = threading.Event()
        self.create_subscription(SafetyStatus, Topics.HOST_STATUS, lambda _m: self._host_heard.set(), 10)
        self._instruction = self.create_publisher(String, Topics.INSTRUCTION, LATCHED)
        self._reset = self.create_client(ResetSim, self.cfg["reset_service"])
        name = self.cfg["safety_reset_service"]
        self._safety_reset = self.create_client(SafetyReset, name) if name else None

    def _on_step(self, _msg) -> None:
        with self._lock:
            self._steps += 1

    def _on_success(self, msg: Bool) -> None:
        with self._lock:
            self._streak = self._streak + 1 if msg.data else 0
            self._success = self._success or self._streak >= self.cfg["success_hold_steps"]

    def _on_status(self, msg: SafetyStatus) -> None:
        with self._lock:
            self._stops += int(msg.level == SafetyStatus.STOP)

    def _wait(self, ready, what: str, timeout: float) -> bool:
        """Wait with progress lines; raises ExternalShutdownException when the node is told to stop."""
        done = wait_until(ready, what, timeout, self.get_logger().info, stop=lambda: not rclpy.ok())
        if not done and not rclpy.ok():
            raise ExternalShutdownException()
        return done

    def _call(self, client, request, optional: bool = False):
        name = self.resolve_service_name(client.srv_name)
        # An optional service (the gate's reset) gets 10 s the first time, for discovery on a loaded
        # machine; one found absent then gets 2 s per episode (a baseline run has no gate at all).
        wait = self.cfg["startup_timeout_s"] if not optional else (2.0 if name in self._absent else 10.0)
        if not self._wait(client.service_is_ready, f"service {name}", wait):
            if optional:
                self._absent.add(name)
                self.get_logger().warning(f"service {name} not available; skipped")
                return None
            raise RuntimeError(f"service {name} not available after {wait:g} s")
        self._absent.discard(name)
        future = client.call_async(request)
        timeout = self.cfg["service_timeout_s"]
        if not self._wait(future.done, f"the answer of {name}", timeout):
            raise RuntimeError(f"service {name} did not answer within {timeout:g} s")
        return future.result()

    def _safety_reset_for(self, index: int, seed: int) -> None:
        """Ask the gate to clear a STOP of the episode before and to release the fingers it holds (the gate
        keeps a grasp through a new instruction; the scene reset is the operator's release). Asked after the
        instruction, when the gate holds for the new task; retried for up to a second while it answers that
        the robot is still moving (the previous task's chunks)."""
        request = SafetyReset.Request(reason=f"evaluation episode {index}: the sim was reset (seed {seed})",
                                      requested_by=self.get_name())
        deadline = time.monotonic() + 1.0
        answer = self._call(self._safety_reset, request, optional=True)
        while answer is not None and not answer.success and "moving" in answer.message \
                and time.monotonic() < deadline:
            time.sleep(0.05)
            answer = self._call(self._safety_reset, request, optional=True)
        if answer is not None and not answer.success:
            self.get_logger().info(f"safety reset not needed: {answer.message}")

    def episode(self, index: int) -> dict:
        seed = self.cfg["seed"] + index
        reply = self._call(self._reset, ResetSim.Request(seed=seed))
        if not reply.success:
            raise RuntimeError(f"sim reset refused: {reply.message}")
        self._instruction.publish(String(data=self.cfg["instruction"]))
        if self._safety_reset is not None:
            self._safety_reset_for(index, seed)
        time.sleep(self.cfg["settle_s"])
        with self._lock:
            self._steps, self._success, self._streak, self._stops = 0, False, 0, 0
        start = time.monotonic()
        while True:
            with self._lock:
                steps, success, stops = self._steps, self._success, self._stops
            if success or steps >= self.cfg["max_steps"]:
                break
            if time.monotonic() - start > 10.0 and steps == 0:
                raise RuntimeError("the sim published no eef_pose for 10 s")
            if not rclpy.ok():
                raise ExternalShutdownException()
            time.sleep(0.02)
        result = {"episode": index, "seed": seed, "success": success, "steps": steps, "stop_statuses": stops,
                  "wall_s": round(time.monotonic() - start, 2)}
        self.get_logger().info(f"episode {index} (seed {seed}): {'success' if success else 'failure'} "
                               f"after {steps} steps, {stops} STOP statuses")
        return result

    def run(self) -> dict:
        if self.cfg["wait_for_policy"]:
            timeout = self.cfg["startup_timeout_s"]
            if not self._wait(self._host_heard.is_set, f"the model host's heartbeat on {Topics.HOST_STATUS}", timeout):
                raise RuntimeError(f"no model host heartbeat on {Topics.HOST_STATUS} within {timeout:g} s")
        episodes = [self.episode(i) for i in range(self.cfg["episodes"])]
        successes = sum(e["success"] for e in episodes)
        summary = {"label": self.cfg["label"], "episodes": len(episodes), "successes": successes,
                   "success_rate": successes / len(episodes), "success_hold_steps": self.cfg["success_hold_steps"],
                   "per_episode": episodes}
        self.get_logger().info(f"{self.cfg['label']}: {successes}/{len(episodes)} episodes succeeded")
        if self.cfg["results_path"]:
            path = Path(self.cfg["results_path"])
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(summary, indent=2))
            os.replace(tmp, path)
        return summary


def main(args=None) -> None:
    guard = ExitGuard("evaluation_node").install()  # before rclpy.init: its handlers chain to the guard's
    rclpy.init(args=args)
    code = 0
    node = executor = spinner = None
    try:
        node = EvaluationNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        spinner = threading.Thread(target=spin_until_shutdown, args=(executor,), daemon=True)
        spinner.start()
        node.run()
    except (KeyboardInterrupt, ExternalShutdownException):
        code = 130
    except (RuntimeError, ValueError) as exc:
        print(f"evaluation_node: error: {exc}", file=sys.stderr)
        code = 1
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if node is not None and not join_threads([spinner]):  # never destroy a node a thread still spins
            node.destroy_node()
        rclpy.try_shutdown()
    guard.exit(code)
