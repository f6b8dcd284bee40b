"""policy_node: proposes LDA action chunks and executes the chunks the safety monitor approves.

    ros2 run lda_policy policy_node --ros-args -p robot_config:=config/robots/sim_panda.yaml \
        -p checkpoint:=/path/to/ckpt -p dino_path:=/path/to/dinov3-vits16

A lifecycle node (autostarts unless ``autostart:=false``): *configure* loads the robot config, the
checkpoint and the encoders (a bad path exits non-zero with a message naming it), *activate* starts
inference and the 10 Hz executor, *deactivate* holds the robot still and stops proposing.

Inputs: head camera (robot config, best-effort), per-hand EEF pose (PoseStamped) and finger state
(JointState) (best-effort), the instruction (std_msgs/String, transient-local), approved chunks on
``/lda/action_chunk`` and ``/lda/safety_status`` (reliable). Outputs: ``/lda/proposed_chunk``
(lda_msgs/ActionChunk), ``/robot/<hand>/eef_target`` (PoseStamped) and
``/robot/<hand>/gripper_command`` (sensor_msgs/JointState: ``gripper`` = width [m], or the finger joints) at
``control_rate_hz``, ``/diagnostics``. Inference runs on its own thread; callbacks only store.
The logic lives in :mod:`lda_policy.deploy` (``PolicyCore``, ``ChunkExecutor``).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from lda_common.messages import Topics
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String

from lda_msgs.msg import ActionChunk, SafetyStatus
from lda_policy.deploy.chunk_executor import ChunkExecutor, ExecutorConfig
from lda_policy.deploy.policy import PolicyCore, PolicySettings
from lda_policy.deploy.robot import ConfigError
from lda_policy.deploy.runtime import RuntimeLoadError
from lda_policy.ros_io import (
    COMMAND_QOS,
    LATCHED_QOS,
    SENSOR_QOS,
    ModelNode,
    chunk_to_msg,
    declare,
    diagnostic_status,
    msg_to_chunk,
    node_main,
    pose_arrays,
    pose_stamped,
    sec_to_stamp,
    stamp_to_sec,
)

PROPOSED_TOPIC, APPROVED_TOPIC, STATUS_TOPIC = Topics.PROPOSED_CHUNK, Topics.ACTION_CHUNK, Topics.SAFETY_STATUS


class PolicyNode(ModelNode, LifecycleNode):
    def __init__(self, **kwargs) -> None:
        super().__init__("policy_node", **kwargs)
        d = self._declare
        self.p = {
            **self.model_parameters(),
            "seed": d("seed", -1, "flow-sampling seed (-1 = a fresh sample each call)", low=-1),
            "noise_scale": d("noise_scale", 1.0, "scale of the flow's starting noise: 1 samples the learnt "
                             "distribution, 0 is deterministic (its mean)", low=0.0, high=1.0),
            "instruction": d("instruction", "", "instruction to use until one arrives on the instruction topic"),
            "replan_period_s": d("replan_period_s", 0.5, "minimum time between proposals [s]", low=0.0, high=10.0),
            "max_image_age_s": d("max_image_age_s", 0.5, "never predict from a camera frame older than this [s]",
                                 low=0.01, high=10.0),
            "state_tolerance_s": d("state_tolerance_s", 0.15, "EEF/finger samples may be this far from the camera "
                                   "stamp [s]", low=0.0, high=1.0),
            "control_rate_hz": d("control_rate_hz", 0.0, "target publishing rate [Hz] (0 = the robot config's fps)",
                                 low=0.0, high=1000.0),
            "approval_deadline_s": d("approval_deadline_s", 1.0, "hold when no approved chunk arrived for this long "
                                     "[s]", low=0.01, high=60.0),
            "heartbeat_timeout_s": d("heartbeat_timeout_s", 0.5, "hold when no SafetyStatus arrived for this long [s]",
                                     low=0.01, high=60.0),
            "blend_time_s": d("blend_time_s", 0.3, "cross-fade time from one chunk to the next [s]", low=0.0,
                              high=5.0),
            "command_lead_s": d("command_lead_s", 0.0, "sample chunks this far ahead (controller latency) [s]",
                                low=0.0, high=1.0),
            "max_chunk_age_s": d("max_chunk_age_s", 1.0, "drop approved chunks predicted from older observations [s]",
                                 low=0.01, high=60.0),
            "publish_hold": d("publish_hold", True, "while holding, publish the held pose as the target (false: "
                              "publish no targets)"),
            "eef_target_topic": d("eef_target_topic", "/robot/{hand}/eef_target", "per-hand EEF target topic "
                                  "({hand} is replaced)"),
            "gripper_command_topic": d("gripper_command_topic", "/robot/{hand}/gripper_command",
                                       "per-hand finger command topic ({hand} is replaced)"),
            "diagnostics_period_s": d("diagnostics_period_s", 1.0, "diagnostics publishing period [s]", low=0.05,
                                      high=60.0),
            "autostart": d("autostart", True, "configure and activate at start-up"),
        }
        self.core: PolicyCore | None = None
        self.executor_core: ChunkExecutor | None = None
        self._active = False
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._new_frame = threading.Event()
        self._entities: list = []
        self._stats = {"proposed": 0, "approved": 0, "refused_or_lost": 0, "inference_errors": 0}
        self._inference_times: deque[float] = deque(maxlen=50)
        self._awaiting: dict[int, float] = {}  # proposed sequence -> time proposed
        self._awaiting_lock = threading.Lock()
        self._not_ready = "not started"
        self._last_error = ""

    def _declare(self, name, default, description, **kw):
        return declare(self, name, default, description, **kw)

    # ------------------------------------------------------------------ process (ModelNode)

    def start(self) -> None:
        if not self.p["autostart"]:
            return  # a lifecycle manager configures and activates it
        self.trigger_configure()
        if self.core is None:
            raise RuntimeLoadError(self._last_error)
        self.trigger_activate()

    def shutdown(self) -> None:
        self._halt()

    # ------------------------------------------------------------------ lifecycle

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        p = self.p
        try:
            robot, runtime = self.load_model(p)
            self.core = PolicyCore(runtime, robot, PolicySettings(
                max_image_age_s=p["max_image_age_s"], state_tolerance_s=p["state_tolerance_s"], seed=p["seed"],
                noise_scale=p["noise_scale"]))
            rate = p["control_rate_hz"] or robot.config.fps
            self.executor_core = ChunkExecutor(robot.hands, ExecutorConfig(
                control_rate_hz=rate, approval_deadline_s=p["approval_deadline_s"],
                heartbeat_timeout_s=p["heartbeat_timeout_s"], blend_time_s=p["blend_time_s"],
                command_lead_s=p["command_lead_s"], max_chunk_age_s=p["max_chunk_age_s"]))
        except (RuntimeLoadError, ConfigError, ValueError) as err:
            self._last_error = str(err)
            self.get_logger().error(f"configure failed: {err}")
            return TransitionCallbackReturn.FAILURE
        if p["instruction"]:
            self.core.set_instruction(p["instruction"])
        self.robot = robot
        self.get_logger().info(
            f"loaded checkpoint '{p['checkpoint']}' ({runtime.config.name}, embodiment '{robot.embodiment}', "
            f"{robot.action_dim}-d actions, hands {robot.hands}) on {runtime.device}; camera {robot.camera.topic}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        robot, p = self.robot, self.p
        cam = robot.camera
        sub = self.create_subscription
        self._entities = [
            sub(CompressedImage if cam.type == "compressed" else Image, cam.topic, self._on_image, SENSOR_QOS),
            sub(String, robot.config.instruction_topic, self._on_instruction, LATCHED_QOS),
            sub(ActionChunk, APPROVED_TOPIC, self._on_approved, COMMAND_QOS),
            sub(SafetyStatus, STATUS_TOPIC, self._on_status, COMMAND_QOS),
        ]
        for h in robot.config.hands:
            self._entities.append(sub(PoseStamped, h.pose_topic, lambda m, n=h.name: self._on_pose(n, m), SENSOR_QOS))
            self._entities.append(sub(JointState, h.gripper_topic, lambda m, n=h.name: self._on_fingers(n, m),
                                      SENSOR_QOS))
        self.pub_proposed = self.create_publisher(ActionChunk, PROPOSED_TOPIC, COMMAND_QOS)
        self.pub_targets = {h: self.create_publisher(PoseStamped, p["eef_target_topic"].format(hand=h), COMMAND_QOS)
                            for h in robot.hands}
        self.pub_fingers = {h: self.create_publisher(JointState, p["gripper_command_topic"].format(hand=h), COMMAND_QOS)
                            for h in robot.hands}
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", COMMAND_QOS)
        self._entities += [self.pub_proposed, self.pub_diag, *self.pub_targets.values(), *self.pub_fingers.values()]
        self._control_timer = self.create_timer(1.0 / self.executor_core.config.control_rate_hz, self._control)
        self._diag_timer = self.create_timer(p["diagnostics_period_s"], self._diagnostics)
        self._stop.clear()
        self._active = True
        self._worker = threading.Thread(target=self._inference_loop, name="lda-policy-inference", daemon=True)
        self._worker.start()
        self.get_logger().info(f"active: proposing on {PROPOSED_TOPIC}, executing {APPROVED_TOPIC} at "
                               f"{self.executor_core.config.control_rate_hz:g} Hz")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._halt()
        self.get_logger().info("deactivated: holding the last measured pose, no more proposals")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self.core = None
        self.executor_core = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._halt()
        return TransitionCallbackReturn.SUCCESS

    def _halt(self) -> None:
        if not self._active:
            return
        self._stop.set()
        self._new_frame.set()
        if self._worker is not None:
            self._worker.join(timeout=10)
        # One last explicit hold, then silence: the controller keeps its last target.
        ex, core = self.executor_core, self.core
        ex.on_status(2, "policy node deactivated", self._now())
        self._publish(ex.step(self._now(), core.states.latest()))
        self._active = False
        for timer in (self._control_timer, self._diag_timer):
            self.destroy_timer(timer)
        for e in self._entities:
            if hasattr(e, "publish"):
                self.destroy_publisher(e)
            else:
                self.destroy_subscription(e)
        self._entities = []

    # ------------------------------------------------------------------ callbacks (cheap)

    def _on_image(self, msg) -> None:
        frame = self.camera_frame(msg)
        if frame is not None:
            self.core.on_frame(*frame)
            self._new_frame.set()

    def _on_pose(self, hand: str, msg: PoseStamped) -> None:
        self.core.states.add_pose(hand, stamp_to_sec(msg.header.stamp), *pose_arrays(msg))

    def _on_fingers(self, hand: str, msg: JointState) -> None:
        sample = self.finger_sample(hand, msg)
        if sample is not None:
            self.core.states.add_fingers(hand, *sample)

    def _on_instruction(self, msg: String) -> None:
        self.core.start_task(msg.data)
        self.executor_core.new_task()
        self.get_logger().info(f"instruction: '{msg.data}'")

    def _on_status(self, msg: SafetyStatus) -> None:
        self.executor_core.on_status(msg.level, msg.reason, self._now())

    def _on_approved(self, msg: ActionChunk) -> None:
        chunk = msg_to_chunk(msg)
        with self._awaiting_lock:
            self._awaiting.pop(chunk.sequence, None)
        plan, why = self.core.plan_approved(chunk.sequence, chunk.actions, chunk.embodiment)
        if plan is None:
            self.executor_core.stats.dropped[why.split(":")[0]] += 1
            self.get_logger().warning(f"ignoring approved chunk: {why}", throttle_duration_sec=2.0)
            return
        ok, why = self.executor_core.add_chunk(plan, self._now())
        if ok:
            self._stats["approved"] += 1
        else:
            self.get_logger().warning(f"dropping approved chunk {chunk.sequence}: {why}", throttle_duration_sec=2.0)

    # ------------------------------------------------------------------ control timer

    def _control(self) -> None:
        if not self._active:
            return
        now = self._now()
        cmd = self.executor_core.step(now, self.core.states.latest())
        self._publish(cmd)
        # proposals that never came back approved within the deadline were refused (or lost)
        with self._awaiting_lock:
            late = [s for s, t in self._awaiting.items() if now - t > self.executor_core.config.approval_deadline_s]
            for s in late:
                del self._awaiting[s]
        self._stats["refused_or_lost"] += len(late)

    def _publish(self, cmd) -> None:
        if cmd.targets is None or (cmd.mode == "hold" and not self.p["publish_hold"]):
            return
        stamp = sec_to_stamp(self._now())
        frame = self.robot.config.base_frame
        for h, target in cmd.targets.items():
            self.pub_targets[h].publish(pose_stamped(target.position, target.quaternion, stamp, frame))
            hand = next(x for x in self.robot.config.hands if x.name == h)
            names = ["gripper"] if hand.fingers.type == "width" else list(hand.fingers.joints)
            js = JointState(name=names, position=[float(v) for v in target.fingers])
            js.header.stamp = stamp
            self.pub_fingers[h].publish(js)
            self.core.states.add_command(h, stamp_to_sec(stamp), target.fingers)  # history actions use it

    # ------------------------------------------------------------------ inference thread

    def _inference_loop(self) -> None:
        try:
            self._inference_steps()
        except Exception as err:  # noqa: BLE001 - at shutdown the context goes away under the thread
            if not self._stop.is_set():
                self._last_error = f"inference thread died: {type(err).__name__}: {err}"
                self.get_logger().error(self._last_error)

    def _inference_steps(self) -> None:
        last = -1e9
        period = self.p["replan_period_s"]
        while not self._stop.is_set():
            self._new_frame.wait(timeout=0.1)
            self._new_frame.clear()
            if self._stop.is_set():
                break
            now = self._now()
            if now - last < period:
                continue
            reason = self.core.not_ready(now)
            self._not_ready = reason
            if reason:
                continue
            try:
                chunk = self.core.propose(now)
            except Exception as err:  # noqa: BLE001 - a model error must not kill the thread silently
                self._stats["inference_errors"] += 1
                self._last_error = f"{type(err).__name__}: {err}"
                self.get_logger().error(f"inference failed: {self._last_error}", throttle_duration_sec=5.0)
                time.sleep(0.5)
                continue
            if chunk is None:
                self._not_ready = self.core.skipped
                continue
            last = now
            if not np.isfinite(chunk.actions).all():
                self.get_logger().error(f"chunk {chunk.sequence} has NaN/inf actions; not proposing it")
                self._stats["inference_errors"] += 1
                continue
            self._inference_times.append(chunk.inference_time)
            with self._awaiting_lock:
                self._awaiting[chunk.sequence] = self._now()
            self._stats["proposed"] += 1
            if self._active:
                self.pub_proposed.publish(chunk_to_msg(chunk, self.robot.config.base_frame))

    # ------------------------------------------------------------------ diagnostics

    def _diagnostics(self) -> None:
        ex = self.executor_core
        times = list(self._inference_times)
        values = {
            "mode": "hold" if ex.holding else "execute",
            "hold_reason": ex.hold_reason,
            "inference_time_last_s": times[-1] if times else float("nan"),
            "inference_time_mean_s": float(np.mean(times)) if times else float("nan"),
            "queue_depth": ex.queue_depth,
            "awaiting_approval": len(self._awaiting),
            "chunks_proposed": self._stats["proposed"],
            "chunks_approved": self._stats["approved"],
            "chunks_executed": ex.stats.accepted,
            "chunks_refused_or_lost": self._stats["refused_or_lost"],
            "chunks_dropped": sum(ex.stats.dropped.values()),
            **{f"dropped/{k}": v for k, v in sorted(ex.stats.dropped.items())},
            "chunk_latency_s": ex.stats.last_latency_s,
            "frames_encoded": self.core.frames.encoded,
            "inference_errors": self._stats["inference_errors"],
            "bad_images": self.bad_images,
            "not_ready": self._not_ready,
            "last_error": self._last_error,
        }
        level = 0 if not ex.holding else 1
        if self._stats["inference_errors"] and self._last_error:
            level = 2
        msg = DiagnosticArray()
        msg.header.stamp = sec_to_stamp(self._now())
        message = "executing" if not ex.holding else f"holding: {ex.hold_reason}"
        msg.status = [diagnostic_status(f"{self.get_name()}: policy", self.robot.embodiment, level, message, values)]
        self.pub_diag.publish(msg)


main = node_main("policy_node", PolicyNode)


if __name__ == "__main__":
    sys.exit(main())
