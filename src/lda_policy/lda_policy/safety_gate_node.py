"""safety_gate_node: the only path from the model to the robot - a small process with no torch and no model.

    ros2 run lda_policy safety_gate_node --ros-args -p robot_config:=config/robots/sim_panda.yaml \
        --params-file config/deploy/safety_gate.yaml --params-file config/deploy/limits/sim_panda.yaml

It approves each proposed chunk on ``/lda/proposed_chunk`` on hard limits and freshness (the limits file
of the robot) and republishes the approval on ``/lda/action_chunk`` (sequence and digest of the
proposal); executes approved chunks as ``/robot/<hand>/eef_target`` (PoseStamped) and
``/robot/<hand>/gripper_command`` (JointState: ``gripper`` = width [m], or the finger joints) at
``control_rate_hz``, re-checking every command where it leaves; watches the model host's and the
judge's heartbeats (``/lda/host_status``, ``/lda/judge_status``) at ``watchdog_rate_hz``. A dead, frozen
or silent host, a reported fault, a stale hand stream or a violated limit holds the robot (measured
pose, fingers as last commanded) and latches STOP with a reason naming the cause, published on
``/lda/safety_status``. ``/lda/safety_reset`` (lda_msgs/srv/SafetyReset) clears it, only while holding,
only with a reason, and is logged. The logic lives in :mod:`lda_policy.deploy.gate`.

``action_space:=joints`` (a checkpoint that commands joints, e.g. the authors' LDA-1B on the GR-1) gates the
robot config's ``joints`` instead: it reads the measured positions from ``joints.state_topic``
(sensor_msgs/JointState, looked up by name) and sends ``joints.command_topic`` (JointState, ``name`` = the
joints in the config's group order, ``position`` = absolute targets) at ``joints.fps``, checked against the
``joint_*`` limits of the limits file (:mod:`lda_policy.deploy.joint_space`); the EEF and finger topics are
then neither read nor written. ``hands`` (the default) is the gate as before.

No message can end this process: a message that cannot be decoded is counted and logged once per cause
with its topic (a proposal that cannot be decoded latches STOP), and an exception escaping any callback
latches STOP naming it and holds. ``/lda/safety_status`` is published from the control tick itself at
``status_rate_hz``: it is the gate's heartbeat, and a robot driver holds when it stops (``sim_node`` does).
Watchdogs run on a monotonic clock of arrival (under ``use_sim_time``: the simulated clock, made monotonic;
a ``/clock`` that goes back latches STOP).
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from lda_common.config import ConfigError
from lda_common.messages import Topics
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import String

from lda_msgs.msg import ActionChunk, SafetyStatus
from lda_msgs.srv import SafetyReset
from lda_policy.deploy.chunk_executor import ExecutorConfig
from lda_policy.deploy.command_space import ACTION_SPACES, make_space
from lda_policy.deploy.gate import GateSettings, SafetyGateCore
from lda_policy.deploy.joint_space import GROUP_KEYS, JOINT_DEFAULTS, PART, JointLimits
from lda_policy.deploy.robot import RobotInterface
from lda_policy.deploy.safety import LEVEL_NAMES, STATUS_STOP, SafetyLimits
from lda_policy.ros_io import (
    COMMAND_QOS,
    LATCHED_QOS,
    SENSOR_QOS,
    BadMessage,
    ParameterError,
    RobotNode,
    declare,
    diagnostic_status,
    msg_to_chunk,
    node_main,
    pose_arrays,
    pose_stamped,
    sec_to_stamp,
    stamp_to_sec,
)

HAND_KEYS = ("workspace_min", "workspace_max", "finger_min", "finger_max")


class SafetyGateNode(RobotNode, Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("safety_gate", **kwargs)
        d = lambda *a, **k: declare(self, *a, **k)  # noqa: E731
        self.p = {
            "robot_config": d("robot_config", "", "robot description YAML (config/robots/<robot>.yaml)", required=True),
            "action_space": d("action_space", "hands", "what the gate commands: hands (EEF targets + fingers) or "
                              "joints (the robot config's joints: absolute positions on its command_topic)",
                              choices=list(ACTION_SPACES)),
            "host_timeout_s": d("host_timeout_s", 0.15, "STOP when the model host's heartbeat is older [s]",
                                low=0.01, high=10.0),
            "judge_timeout_s": d("judge_timeout_s", 0.15, "STOP when the judge's heartbeat is older [s]", low=0.01,
                                 high=10.0),
            "watchdog_rate_hz": d("watchdog_rate_hz", 50.0, "rate of the heartbeat and limit checks [Hz]", low=1.0,
                                  high=1000.0),
            "control_rate_hz": d("control_rate_hz", 0.0, "command rate [Hz] (0 = the robot config's fps)", low=0.0,
                                 high=1000.0),
            "state_tolerance_s": d("state_tolerance_s", 0.15, "EEF/finger samples may be this far from a chunk's "
                                   "observation stamp [s]", low=0.0, high=1.0),
            "approval_deadline_s": d("approval_deadline_s", 1.0, "hold when no chunk was approved for this long [s]",
                                     low=0.01, high=60.0),
            "blend_time_s": d("blend_time_s", 0.3, "cross-fade time from one chunk to the next [s]", low=0.0,
                              high=5.0),
            "command_lead_s": d("command_lead_s", 0.0, "sample chunks this far ahead (controller latency) [s]",
                                low=0.0, high=1.0),
            "publish_hold": d("publish_hold", True, "while holding, publish the held pose as the target (false: "
                              "publish no targets)"),
            "eef_target_topic": d("eef_target_topic", "/robot/{hand}/eef_target", "per-hand EEF target topic "
                                  "({hand} is replaced)"),
            "gripper_command_topic": d("gripper_command_topic", "/robot/{hand}/gripper_command",
                                       "per-hand finger command topic ({hand} is replaced)"),
            "status_rate_hz": d("status_rate_hz", 10.0, "/lda/safety_status heartbeat rate [Hz]", low=0.5,
                                high=1000.0),
            "reset_log": d("reset_log", "", "JSON-lines file every reset request is appended to ('' = ROS log only)"),
            "diagnostics_period_s": d("diagnostics_period_s", 1.0, "diagnostics period [s]", low=0.05, high=60.0),
            "max_sequence_gap": d("max_sequence_gap", 1000, "STOP on a chunk whose sequence is this far ahead of the "
                                  "last approved one", low=1, high=2**40),
            "max_clock_jump_s": d("max_clock_jump_s", 1.0, "STOP when the ROS clock runs this much ahead of the "
                                  "steady clock between two readings [s]", low=0.05, high=60.0),
        }
        for name, default in vars(SafetyLimits()).items():
            if name == "hands":  # per hand: declared in start(), once the robot's hands are known
                continue
            value = list(default) if isinstance(default, tuple) else default
            self.p[name] = d(name, value, f"hard limit {name} (see lda_policy.deploy.safety.SafetyLimits)")
        # hands.<hand>.<key>: a hand's own box and finger range, as the parameter files give them (the hand
        # names are checked against the robot in start()); a key a hand does not give is the global one
        for name in sorted(n for n in self._parameter_overrides if n.startswith("hands.")):
            key = name.split(".")[-1]
            if name.count(".") != 2 or key not in HAND_KEYS:
                raise ParameterError(f"parameter '{name}': per-hand limits are hands.<hand>.<key>, key one of "
                                     f"{list(HAND_KEYS)}")
            self.p[name] = d(name, self.p[key], f"hard limit {key} of hand {name.split('.')[1]}")
        self._declare_joint_limits(d)
        self._lock = threading.Lock()
        self._last_publish = -1e9
        self._last_mode = ""
        self._last_status: tuple[int, str] | None = None
        self._last_heartbeat = -1e9
        self._clamped = 0
        self._sim_mono = -math.inf

    def _declare_joint_limits(self, d) -> None:
        """joint_max_step_rad, joint_max_speed_rad_s, joint_band_rad; joint_ranges.<joint> ([low, high]) and
        joint_groups.<group>.<key> as the parameter files give them (checked against the robot in start())."""
        for name, default in JOINT_DEFAULTS.items():
            self.p[name] = d(name, default, f"joint-space hard limit {name} (see lda_policy.deploy.joint_space)")
        for name in sorted(n for n in self._parameter_overrides if n.startswith(("joint_ranges.", "joint_groups."))):
            if name.startswith("joint_ranges."):
                self.p[name] = d(name, [0.0, 0.0], f"position range [low, high] of joint {name.split('.', 1)[1]}")
            elif name.count(".") == 2 and name.split(".")[2] in GROUP_KEYS:
                self.p[name] = d(name, 0.0, f"joint-space hard limit {name.split('.')[2]} of group "
                                 f"{name.split('.')[1]}")
            else:
                raise ParameterError(f"parameter '{name}': group limits are joint_groups.<group>.<key>, key one of "
                                     f"{list(GROUP_KEYS)}")

    def start(self) -> None:
        p = self.p
        self.robot = robot = RobotInterface(p["robot_config"])
        unknown = sorted({k.split(".")[1] for k in p if k.startswith("hands.")} - set(robot.hands))
        if unknown:
            raise ConfigError(f"{self.get_name()} parameters: hands.{unknown[0]}: the robot has no hand "
                              f"'{unknown[0]}' (hands: {robot.hands})")
        limits = SafetyLimits.from_params(p, source=f"{self.get_name()} parameters")
        self.joints = p["action_space"] == "joints"
        joint_limits = None
        if self.joints:
            if robot.config.joints is None:
                raise ConfigError(f"{self.get_name()} parameters: action_space: 'joints' needs a joints: section in "
                                  f"the robot config {p['robot_config']}")
            joint_limits = JointLimits.from_params(p, robot.config.joints, f"{self.get_name()} parameters")
        space = make_space(p["action_space"], robot, limits, joint_limits)
        rate = p["control_rate_hz"] or (robot.config.joints.fps if self.joints else robot.config.fps)
        executor = ExecutorConfig(control_rate_hz=rate, approval_deadline_s=p["approval_deadline_s"],
                                  heartbeat_timeout_s=max(0.1, 5.0 / p["watchdog_rate_hz"]),
                                  blend_time_s=p["blend_time_s"], command_lead_s=p["command_lead_s"],
                                  max_chunk_age_s=limits.max_chunk_age_s)
        self.core = SafetyGateCore(robot, limits, GateSettings(
            host_timeout_s=p["host_timeout_s"], judge_timeout_s=p["judge_timeout_s"],
            state_tolerance_s=p["state_tolerance_s"], max_sequence_gap=p["max_sequence_gap"],
            max_clock_jump_s=p["max_clock_jump_s"], executor=executor), space=space)
        self.period = 1.0 / rate
        self.sim_time = bool(self.get_parameter("use_sim_time").value)
        g = self._guard
        sub = self.create_subscription
        sub(ActionChunk, Topics.PROPOSED_CHUNK, g(Topics.PROPOSED_CHUNK, self._on_proposed), COMMAND_QOS)
        sub(SafetyStatus, Topics.HOST_STATUS, g(Topics.HOST_STATUS, self._on_source), COMMAND_QOS)
        sub(SafetyStatus, Topics.JUDGE_STATUS, g(Topics.JUDGE_STATUS, self._on_source), COMMAND_QOS)
        sub(String, robot.config.instruction_topic, g(robot.config.instruction_topic,
                                                      lambda m: self.core.on_instruction()), LATCHED_QOS)
        if self.joints:  # the measured joints in, JointState position targets out
            js = robot.config.joints
            sub(JointState, js.state_topic, g(js.state_topic, self._on_joints), SENSOR_QOS)
            self.pub_joints = self.create_publisher(JointState, js.command_topic, COMMAND_QOS)
        for h in robot.config.hands if not self.joints else ():
            sub(PoseStamped, h.pose_topic, g(h.pose_topic, lambda m, n=h.name: self._on_pose(n, m)), SENSOR_QOS)
            sub(JointState, h.gripper_topic, g(h.gripper_topic, lambda m, n=h.name: self._on_fingers(n, m)),
                SENSOR_QOS)
        self.pub_targets = {h: self.create_publisher(PoseStamped, p["eef_target_topic"].format(hand=h), COMMAND_QOS)
                            for h in (robot.hands if not self.joints else ())}
        self.pub_fingers = {h: self.create_publisher(JointState, p["gripper_command_topic"].format(hand=h),
                                                     COMMAND_QOS) for h in (robot.hands if not self.joints else ())}
        self.finger_names = {h.name: ["gripper"] if h.fingers.type == "width" else list(h.fingers.joints)
                             for h in robot.config.hands}
        self.pub_approved = self.create_publisher(ActionChunk, Topics.ACTION_CHUNK, COMMAND_QOS)
        self.pub_status = self.create_publisher(SafetyStatus, Topics.SAFETY_STATUS, COMMAND_QOS)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", COMMAND_QOS)
        self.create_service(SafetyReset, Topics.SAFETY_RESET, g(Topics.SAFETY_RESET, self._on_reset, service=True))
        # The tick runs on the steady clock, also under use_sim_time: its stall check measures the process, and a
        # simulated clock that advances one control period at a time would fire it in bursts (commands still
        # follow the ROS clock: a target is due when ``now`` has advanced by one command period).
        self.create_timer(1.0 / p["watchdog_rate_hz"], g("the watchdog tick", self._tick),
                          clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.create_timer(p["diagnostics_period_s"], g("diagnostics", self._diagnostics))
        what = (f"{robot.config.joints.dim} joints, {robot.config.joints.state_topic} -> "
                f"{robot.config.joints.command_topic}" if self.joints else f"hands {robot.hands}")
        self.get_logger().info(
            f"gating '{robot.embodiment}' ({what}) at {rate:g} Hz; watchdog {p['watchdog_rate_hz']:g} Hz, "
            f"host timeout {p['host_timeout_s']} s; workspace {list(limits.workspace_min)}.."
            f"{list(limits.workspace_max)}, fingers [{limits.finger_min}, {limits.finger_max}], "
            f"{limits.max_linear_speed_m_s} m/s")

    # ------------------------------------------------------------------ clocks, guards

    def _clocks(self) -> tuple[float, float]:
        """(ROS time, the monotonic arrival clock): the steady clock, or under use_sim_time the simulated
        clock made monotonic (timeouts stay in simulated time, as the sim launch files intend)."""
        now = self._now()
        if not self.sim_time:
            return now, time.monotonic()
        self._sim_mono = max(self._sim_mono, now)
        return now, self._sim_mono

    def _guard(self, where: str, callback, service: bool = False):
        """``callback`` such that an exception escaping it latches STOP naming it and holds, never ending
        the process (``service``: it answers with the response unchanged, success false)."""
        def guarded(*args):
            try:
                return callback(*args)
            except Exception as err:  # noqa: BLE001 - the gate must outlive any input
                reason = f"internal error in the callback of {where}: {type(err).__name__}: {str(err)[:200]}"
                if self.core.stop(reason):
                    self.get_logger().error(reason)
                try:
                    self._tick()
                except Exception as again:  # noqa: BLE001 - the tick itself is broken: repeat the last command
                    self.get_logger().error(f"tick failed ({again}); repeating the last command", once=True)
                    if self.core._last_sent:
                        self._publish_command(self.core._last_sent, self._now())
            return args[-1] if service else None
        return guarded

    def _bad(self, topic: str, cause: str, stop: bool = False) -> None:
        if self.core.bad_input(topic, cause, stop):
            self.get_logger().error(f"bad message on {topic}: {cause} (counted; logged once per cause)")

    # ------------------------------------------------------------------ inputs

    def _on_pose(self, hand: str, msg: PoseStamped) -> None:
        now, mono = self._clocks()
        self.core.on_pose(hand, stamp_to_sec(msg.header.stamp), *pose_arrays(msg), now=now, mono=mono,
                          frame_id=msg.header.frame_id)

    def _on_fingers(self, hand: str, msg: JointState) -> None:
        sample = self.finger_sample(hand, msg)
        if sample is None:
            self._bad(self.robot.config.hands[self.robot.hands.index(hand)].gripper_topic,
                      f"JointState does not name every finger joint of hand {hand}")
            return
        now, mono = self._clocks()
        self.core.on_fingers(hand, *sample, now=now, mono=mono)

    def _on_joints(self, msg: JointState) -> None:
        now, mono = self._clocks()
        self.core.on_joints(stamp_to_sec(msg.header.stamp), list(msg.name), list(msg.position), now=now, mono=mono)

    def _on_source(self, msg: SafetyStatus) -> None:
        now, mono = self._clocks()
        self.core.on_source(msg.source, msg.level, msg.reason, msg.faults, now, msg.surprise, mono=mono)
        if msg.level >= STATUS_STOP or self.core.latched:
            self._tick()  # hold now, not at the next watchdog tick

    def _on_proposed(self, msg: ActionChunk) -> None:
        now, mono = self._clocks()
        try:
            chunk = msg_to_chunk(msg)
        except BadMessage as err:  # it claims to be a proposal: latch STOP
            self._bad(Topics.PROPOSED_CHUNK, str(err), stop=True)
            self._tick()
            return
        decision = self.core.judge(chunk, now, mono)
        if decision.approved:
            self.pub_approved.publish(msg)
            self._tick(force_publish=True)  # the new chunk's first command leaves now
        else:
            self.get_logger().warning(f"refused chunk {msg.sequence}: {decision.reason}", throttle_duration_sec=1.0)
            self._publish_status()

    def _on_reset(self, request: SafetyReset.Request, response: SafetyReset.Response) -> SafetyReset.Response:
        now = self._now()
        response.success, response.message = self.core.reset(request.reason, request.requested_by, now)
        entry = {"time": now, "wall_time": time.time(), "operator": request.requested_by, "reason": request.reason,
                 "accepted": response.success, "message": response.message}
        self.get_logger().warning(f"reset request by '{request.requested_by}' ({request.reason!r}): {response.message}")
        if self.p["reset_log"]:
            with Path(self.p["reset_log"]).expanduser().open("a") as f:
                f.write(json.dumps(entry) + "\n")
        self._publish_status(force=True)
        return response

    # ------------------------------------------------------------------ commands

    def _tick(self, force_publish: bool = False) -> None:
        with self._lock:
            now, mono = self._clocks()
            if self.sim_time and now == 0.0:  # no /clock yet: nothing is measured or commanded in simulated time
                return
            cmd = self.core.tick(now, mono)
            entering_hold = cmd.mode == "hold" and self._last_mode != "hold"
            self._last_mode = cmd.mode
            due = now - self._last_publish >= self.period - 1e-3
            if cmd.targets is not None and (due or entering_hold or force_publish) \
                    and not (cmd.mode == "hold" and not self.p["publish_hold"]):
                self._publish_command(cmd.targets, now)
                self._last_publish = now
            if self.core.clamped > self._clamped:  # within a clamp band: a WARN, counted
                self._clamped = self.core.clamped
                self.get_logger().warning(f"clamped ({self.core.clamped} so far): {self.core.last_clamp}",
                                          throttle_duration_sec=5.0)
            heartbeat = mono - self._last_heartbeat >= 1.0 / self.p["status_rate_hz"] - 1e-3
            if heartbeat:  # the gate's heartbeat leaves from its tick: a stalled tick stops it
                self._last_heartbeat = mono
        self._publish_status(force=heartbeat)

    def _publish_command(self, targets, now: float) -> None:
        stamp = sec_to_stamp(now)
        if self.joints:  # sensor_msgs/JointState: name = the robot config's joints, position = the targets
            js = JointState(name=self.robot.config.joints.joint_names,
                            position=[float(v) for v in targets[PART]])
            js.header.stamp = stamp
            self.pub_joints.publish(js)
            return
        frame = self.robot.config.base_frame
        for h, target in targets.items():
            self.pub_targets[h].publish(pose_stamped(target.position, target.quaternion, stamp, frame))
            js = JointState(name=self.finger_names[h], position=[float(v) for v in target.fingers])
            js.header.stamp = stamp
            self.pub_fingers[h].publish(js)

    # ------------------------------------------------------------------ status

    def _publish_status(self, force: bool = False) -> None:
        core = self.core
        level, reason = core.verdict(*self._clocks())
        key = (level, reason if level == STATUS_STOP else reason.split(" (")[0])
        if not force and key == self._last_status:
            return
        if key[0] != (self._last_status or (None,))[0] and level == STATUS_STOP:
            self.get_logger().error(f"safety STOP: {reason}")
        elif key[0] != (self._last_status or (None,))[0]:  # rclpy: one severity per call site
            self.get_logger().info(f"safety {LEVEL_NAMES[level]}: {reason}")
        self._last_status = key
        msg = SafetyStatus(level=level, surprise=float(core.surprise), reason=reason[:500],
                           chunk_sequence=max(core.executor.last_sequence, 0), source="safety_gate",
                           faults=core.stops, resets=core.resets)
        msg.header.stamp = sec_to_stamp(self._now())
        self.pub_status.publish(msg)

    def _diagnostics(self) -> None:
        core, ex = self.core, self.core.executor
        level, reason = core.verdict(*self._clocks())
        values = {
            "level": LEVEL_NAMES[level], "reason": reason, "mode": "hold" if ex.holding else "execute",
            "hold_reason": ex.hold_reason, "chunks_approved": core.approved, "chunks_refused": core.refused,
            "chunks_executed": ex.stats.accepted, **{f"dropped/{k}": v for k, v in sorted(ex.stats.dropped.items())},
            "chunk_latency_s": ex.stats.last_latency_s, "stops": core.stops, "resets": core.resets,
            "commands_clamped": core.clamped, "last_clamp": core.last_clamp,
            "bad_messages": sum(core.bad_inputs.values()),
            **{f"bad/{topic}/{cause}": n for (topic, cause), n in sorted(core.bad_inputs.items())[:20]},
            **{f"{s}_heartbeat": f"{LEVEL_NAMES[v.level]}: {v.reason}" for s, v in core.sources.items()},
        }
        msg = DiagnosticArray()
        msg.header.stamp = sec_to_stamp(self._now())
        msg.status = [diagnostic_status(f"{self.get_name()}: safety gate", self.robot.embodiment, min(level, 2),
                                        f"{LEVEL_NAMES[level]}: {reason}", values)]
        self.pub_diag.publish(msg)


main = node_main("safety_gate_node", SafetyGateNode)


if __name__ == "__main__":
    sys.exit(main())
