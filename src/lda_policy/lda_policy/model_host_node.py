"""model_host_node: the one process per robot that holds the LDA model - policy and forward-dynamics judge.

    ros2 run lda_policy model_host_node --ros-args -p robot_config:=config/robots/sim_panda.yaml \
        -p checkpoint:=/path/to/ckpt -p dino_path:=/path/to/dinov3-vits16 --params-file config/deploy/model_host.yaml

Inputs: head camera (robot config, best-effort), per-hand EEF pose (PoseStamped) and finger state
(JointState), the gripper commands the gate sends (robots whose config names ``gripper_command_topic``),
the instruction (std_msgs/String, transient-local), the gate's approvals on ``/lda/action_chunk`` and its
verdict on ``/lda/safety_status``. Outputs: ``/lda/proposed_chunk`` (lda_msgs/ActionChunk with its
digest), the heartbeats ``/lda/host_status`` and ``/lda/judge_status`` (lda_msgs/SafetyStatus) at
``heartbeat_rate_hz`` and at once on a fault, ``/diagnostics``. It never commands the robot: the safety
gate (``safety_gate_node``) does. The policy and the judge each run on their own thread; callbacks only
store. The logic lives in :mod:`lda_policy.deploy.host`. ``backend:=lerobot`` hosts a LeRobot ``PreTrainedPolicy``
checkpoint instead (:mod:`lda_policy.deploy.lerobot_policy`), behind the same gate, with no judge.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from lda_common.messages import Topics
from lda_common.process_exit import join_threads
from lda_common.robot_config import ConfigError
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String

from lda_msgs.msg import ActionChunk, SafetyStatus
from lda_policy.deploy.host import HostSettings, ModelHost, PolicyHost, Status
from lda_policy.deploy.joint_policy import NO_JUDGE_REASON, JointPolicyCore, JointPolicySettings, NoJudge
from lda_policy.deploy.judge import JudgeSettings
from lda_policy.deploy.lerobot_policy import NO_JUDGE_REASON as LEROBOT_NO_JUDGE
from lda_policy.deploy.lerobot_policy import LeRobotPolicyCore, LeRobotPolicySettings, load_lerobot_policy
from lda_policy.deploy.policy import PolicySettings
from lda_policy.deploy.robot import RobotInterface
from lda_policy.deploy.runtime import set_torch_threads
from lda_policy.deploy.safety import CALIBRATION_FILE, LEVEL_NAMES, STATUS_STOP, CalibrationError, SafetyCalibration
from lda_policy.deploy.selection import SCORES, SelectionSettings
from lda_policy.model_node import MODEL_STARTUP_ERRORS, ModelNode, is_upstream, load_upstream_policy
from lda_policy.ros_io import (
    COMMAND_QOS,
    LATCHED_QOS,
    SENSOR_QOS,
    chunk_to_msg,
    declare,
    diagnostic_status,
    node_main,
    pose_arrays,
    sec_to_stamp,
    stamp_to_sec,
)


class ModelHostNode(ModelNode, Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("model_host", **kwargs)
        d = lambda *a, **k: declare(self, *a, **k)  # noqa: E731
        self.p = {
            **self.model_parameters(),
            "backend": d("backend", "lda", "policy backend: lda (our checkpoints, or an imported upstream one) or "
                          "lerobot (a LeRobot PreTrainedPolicy checkpoint directory trained on this robot's "
                          "dataset, e.g. ACT; no forward-dynamics judge)", choices=["lda", "lerobot"]),
            "action_space": d("action_space", "hands", "what the checkpoint commands: hands (our checkpoints: EEF pose "
                              "deltas + fingers) or joints (an imported upstream checkpoint: absolute joint positions "
                              "of the robot config's joints: section)", choices=["hands", "joints"]),
            # imported upstream checkpoints (action_space joints)
            "vlm_processor": d("vlm_processor", "", "Qwen3-VL processor directory of an upstream checkpoint "
                               "(tokenizer, chat template, image processor; '' = the checkpoint directory)"),
            "embodiment_id": d("embodiment_id", -1, "the upstream model's embodiment slot (-1 = the authors' slot "
                               "of the robot: gr1_humanoid 24)", low=-1, high=1023),
            "statistics_key": d("statistics_key", "", "dataset of normalization.json whose action statistics "
                                "un-normalise an upstream checkpoint's output ('' = its only one)"),
            "dtype": d("dtype", "auto", "upstream checkpoint dtype (auto = bfloat16 on CUDA, float32 on CPU)",
                       choices=["auto", "float32", "bfloat16", "float16"]),
            "frame_history_s": d("frame_history_s", 0.5, "upstream checkpoint: the earlier of its two frames is this "
                                 "much older than the newest [s]", low=0.0, high=5.0),
            # policy
            "seed": d("seed", -1, "policy flow-sampling seed (-1 = a fresh sample each call)", low=-1),
            "noise_scale": d("noise_scale", 1.0, "scale of the policy flow's starting noise: 1 samples the learnt "
                             "distribution, 0 is deterministic (its mean)", low=0.0, high=1.0),
            "instruction": d("instruction", "", "instruction to use until one arrives on the instruction topic"),
            "replan_period_s": d("replan_period_s", 0.5, "minimum time between proposals [s]", low=0.0, high=10.0),
            "max_image_age_s": d("max_image_age_s", 0.5, "never predict from a camera frame older than this [s]",
                                 low=0.01, high=10.0),
            "state_tolerance_s": d("state_tolerance_s", 0.15, "EEF/finger samples may be this far from the camera "
                                   "stamp [s]", low=0.0, high=1.0),
            # test-time chunk selection
            "selection.k": d("selection.k", 1, "candidate chunks per replan, scored by the model's own forward "
                             "dynamics against its visual forecast (1 = the plain policy)", low=1, high=64),
            "selection.score": d("selection.score", "forecast", "candidate score: agreement of its predicted future "
                                 "with the model's own visual forecast", choices=list(SCORES)),
            # judge
            "calibration_path": d("calibration_path", "", f"surprise calibration JSON ('' = <checkpoint>/"
                                  f"{CALIBRATION_FILE})"),
            "require_calibration": d("require_calibration", True, "refuse to start without a calibration (false: "
                                     "the judge reports WARN 'uncalibrated')"),
            "warn_surprise": d("warn_surprise", 2.0, "surprise above which the judge reports WARN", low=0.0),
            "stop_surprise": d("stop_surprise", 4.0, "surprise above which the judge reports a fault (STOP)",
                               low=0.0),
            "score_horizon_s": d("score_horizon_s", 0.6, "score predicted frames up to this far after the chunk's "
                                 "observation [s]", low=0.01, high=10.0),
            "judge_num_steps": d("judge_num_steps", 1, "Euler steps of the judge's forward dynamics; must match "
                                 "the calibration", low=1, high=100),
            "judge_num_samples": d("judge_num_samples", 1, "forward-dynamics samples averaged; must match the "
                                   "calibration", low=1, high=64),
            "judge_seed": d("judge_seed", 0, "forward-dynamics sampling seed; must match the calibration", low=0),
            # heartbeats and faults
            "heartbeat_rate_hz": d("heartbeat_rate_hz", 20.0, "rate of /lda/host_status and /lda/judge_status "
                                   "[Hz]", low=1.0, high=1000.0),
            "max_inference_time_s": d("max_inference_time_s", 2.0, "a policy call running longer is a stall "
                                      "(STOP) [s]", low=0.01, high=60.0),
            "max_judge_time_s": d("max_judge_time_s", 2.0, "a judge call running longer is judge lag (STOP) [s]",
                                  low=0.001, high=60.0),
            "camera_timeout_s": d("camera_timeout_s", 0.5, "a camera that was flowing and is silent this long is a "
                                  "fault (STOP) [s]", low=0.01, high=60.0),
            "diagnostics_period_s": d("diagnostics_period_s", 1.0, "diagnostics period [s]", low=0.05, high=60.0),
        }
        self.host: ModelHost | None = None
        self._stop = threading.Event()
        self._new_frame = threading.Event()
        self._threads: list[threading.Thread] = []
        self._published_faults = {"model_host": 0, "judge": 0}
        self._logged_errors: set[tuple[str, type]] = set()
        self._status_lock = threading.Lock()
        self._gate_level = 0
        self._gate_resets = 0
        self.proposed = 0

    # ------------------------------------------------------------------ start-up

    def start(self) -> None:
        p = self.p
        joints = p["action_space"] == "joints"
        if p["backend"] == "lerobot":
            if joints:
                raise ConfigError("backend 'lerobot' commands hands (the suite's action rows: EEF pose deltas + "
                                  "fingers); set action_space to hands")
            self._start(self._start_lerobot(p), joints=False)
            return
        upstream = is_upstream(p["checkpoint"])
        if upstream and not joints:
            raise ConfigError(f"checkpoint '{p['checkpoint']}' is an imported upstream checkpoint "
                              "(lda-upstream-checkpoint), which commands joint positions: start the host with "
                              "action_space:=joints and a robot config with a joints: section")
        if joints and not upstream:
            raise ConfigError(f"action_space is 'joints' but checkpoint '{p['checkpoint']}' is not an imported "
                              "upstream checkpoint (config.json format lda-upstream-checkpoint); our own checkpoints "
                              "command hands (action_space:=hands)")
        self._start(self._start_joints(p) if joints else self._start_hands(p), joints)

    def _start(self, cal: str, joints: bool) -> None:
        """Subscriptions, publishers, timers and the two threads around the host made by a _start_* method."""
        p = self.p
        if p["instruction"]:
            self.host.policy.set_instruction(p["instruction"])
        cam = self.robot.camera
        sub, g = self.create_subscription, self._guard
        sub(CompressedImage if cam.type == "compressed" else Image, cam.topic, g(cam.topic, self._on_image),
            SENSOR_QOS)
        sub(String, self.robot.config.instruction_topic, g(self.robot.config.instruction_topic,
                                                           self._on_instruction), LATCHED_QOS)
        sub(ActionChunk, Topics.ACTION_CHUNK, g(Topics.ACTION_CHUNK, self._on_approved), COMMAND_QOS)
        sub(SafetyStatus, Topics.SAFETY_STATUS, g(Topics.SAFETY_STATUS, self._on_gate_status), COMMAND_QOS)
        if joints:
            topic = self.robot.config.joints.state_topic
            sub(JointState, topic, g(topic, self._on_joint_state), SENSOR_QOS)
        else:
            for hand in self.robot.config.hands:
                self._subscribe_hand(hand)
        self.pub_proposed = self.create_publisher(ActionChunk, Topics.PROPOSED_CHUNK, COMMAND_QOS)
        self.pub_status = {"model_host": self.create_publisher(SafetyStatus, Topics.HOST_STATUS, COMMAND_QOS),
                           "judge": self.create_publisher(SafetyStatus, Topics.JUDGE_STATUS, COMMAND_QOS)}
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", COMMAND_QOS)
        self.create_timer(1.0 / p["heartbeat_rate_hz"], g("the heartbeat", self._heartbeat))
        self.create_timer(p["diagnostics_period_s"], g("diagnostics", self._diagnostics))
        for name, target in (("lda-policy", self._inference_loop), ("lda-judge", self._judge_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.get_logger().info(f"{cal}; camera {cam.topic}; proposing on {Topics.PROPOSED_CHUNK}")

    def _start_hands(self, p) -> str:
        """Our checkpoint: the policy core and the calibrated judge on one runtime. Returns what to log."""
        robot, runtime = self.load_model(p)
        cal_path = Path(p["calibration_path"] or Path(p["checkpoint"]) / CALIBRATION_FILE)
        calibration = None
        try:
            calibration = SafetyCalibration.load(cal_path)
        except CalibrationError as err:
            if p["require_calibration"]:
                raise
            self.get_logger().warning(f"{err}; the judge runs uncalibrated (surprise not scored)")
        self.robot = robot
        self.host = ModelHost(
            runtime, robot, calibration,
            PolicySettings(max_image_age_s=p["max_image_age_s"], state_tolerance_s=p["state_tolerance_s"],
                           seed=p["seed"], noise_scale=p["noise_scale"]),
            JudgeSettings(warn_surprise=p["warn_surprise"], stop_surprise=p["stop_surprise"],
                          score_horizon_s=p["score_horizon_s"], num_steps=p["judge_num_steps"],
                          num_samples=p["judge_num_samples"], seed=p["judge_seed"]),
            self._host_settings(p), SelectionSettings(k=p["selection.k"], score=p["selection.score"]))
        cal = f"calibration {cal_path} ({calibration.num_windows} windows)" if calibration else "NO calibration"
        return (f"model host for '{robot.embodiment}' ({robot.action_dim}-d actions, hands {robot.hands}): checkpoint "
                f"'{p['checkpoint']}' ({runtime.config.name}) on {runtime.device}; judge {cal}, stop_surprise "
                f"{p['stop_surprise']}; selection k={p['selection.k']}")

    def _start_joints(self, p) -> str:
        """An imported upstream checkpoint on the robot config's joint space; no judge. Returns what to log."""
        robot = RobotInterface(p["robot_config"], p["camera"])
        joints = robot.config.joints
        if joints is None:
            raise ConfigError(f"robot config '{p['robot_config']}' has no joints: section (state_topic, "
                              "command_topic, fps, groups), which action_space 'joints' needs")
        if p["selection.k"] != 1:
            raise ConfigError("selection.k > 1 needs a forward-dynamics judge, which upstream checkpoints lack; "
                              "set selection.k to 1")
        set_torch_threads(p["torch_threads"])
        policy = load_upstream_policy(p["checkpoint"], p["vlm_processor"], p["device"], p["dtype"],
                                      p["statistics_key"])
        core = JointPolicyCore(policy, joints, robot.embodiment, JointPolicySettings(
            max_image_age_s=p["max_image_age_s"], state_tolerance_s=p["state_tolerance_s"],
            frame_history_s=p["frame_history_s"], seed=p["seed"], noise_scale=p["noise_scale"],
            embodiment_id=p["embodiment_id"], num_inference_steps=p["num_inference_steps"]),
            source=f"checkpoint '{p['checkpoint']}'")
        self.robot = robot
        self.host = PolicyHost(core, NoJudge(), robot.camera.topic, self._host_settings(p))
        self.get_logger().warning(f"judge: {NO_JUDGE_REASON} (its heartbeat says WARN)")
        return (f"model host for '{robot.embodiment}' in joint space ({joints.dim} joints at {joints.fps} Hz, "
                f"embodiment slot {core.slot}): upstream checkpoint '{p['checkpoint']}' on {policy.device} "
                f"({policy.dtype}); joint states {joints.state_topic}")

    def _start_lerobot(self, p) -> str:
        """A LeRobot PreTrainedPolicy checkpoint on the robot's hands; no judge. Returns what to log."""
        if p["selection.k"] != 1:
            raise ConfigError("selection.k > 1 needs a forward-dynamics judge, which backend 'lerobot' lacks; set "
                              "selection.k to 1")
        robot = RobotInterface(p["robot_config"], p["camera"])
        set_torch_threads(p["torch_threads"])
        loaded = load_lerobot_policy(p["checkpoint"], p["device"])
        core = LeRobotPolicyCore(loaded, robot, LeRobotPolicySettings(
            max_image_age_s=p["max_image_age_s"], state_tolerance_s=p["state_tolerance_s"], seed=p["seed"]))
        self.robot = robot
        self.host = PolicyHost(core, NoJudge(LEROBOT_NO_JUDGE), robot.camera.topic, self._host_settings(p))
        self.get_logger().warning(f"judge: {LEROBOT_NO_JUDGE} (its heartbeat says WARN)")
        return (f"model host for '{robot.embodiment}' ({robot.action_dim}-d actions, hands {robot.hands}): LeRobot "
                f"{loaded.type} checkpoint '{p['checkpoint']}' on {p['device']}, {core.chunk_rows}-row chunks from "
                f"{core.n_obs_steps} observation(s) of {core.image_key}"
                + (f" (output features not used: {core.unused_outputs})" if core.unused_outputs else ""))

    @staticmethod
    def _host_settings(p) -> HostSettings:
        return HostSettings(max_inference_time_s=p["max_inference_time_s"], max_judge_time_s=p["max_judge_time_s"],
                            camera_timeout_s=p["camera_timeout_s"])

    def _subscribe_hand(self, hand) -> None:
        sub, g, states, name = self.create_subscription, self._guard, self.host.policy.states, hand.name
        sub(PoseStamped, hand.pose_topic, g(hand.pose_topic, lambda m: states.add_pose(
            name, stamp_to_sec(m.header.stamp), *pose_arrays(m))), SENSOR_QOS)
        sub(JointState, hand.gripper_topic, g(hand.gripper_topic, lambda m: self._on_fingers(
            name, m, states.add_fingers)), SENSOR_QOS)
        if hand.gripper_command_topic:  # the history actions' finger values are the commands sent
            sub(JointState, hand.gripper_command_topic, g(hand.gripper_command_topic, lambda m: self._on_fingers(
                name, m, states.add_command)), COMMAND_QOS)

    def shutdown(self) -> list[str]:
        self._stop.set()
        self._new_frame.set()
        busy = join_threads(self._threads)
        if busy:
            self.get_logger().warning(f"exiting while {busy} still run (mid-inference)")
        return busy

    # ------------------------------------------------------------------ callbacks (cheap)

    def _guard(self, where: str, callback):
        """``callback`` such that an exception escaping it is a host fault naming it: the heartbeat reports
        STOP at once and the gate holds. The process lives on (logged once per cause)."""
        def guarded(*args):
            try:
                return callback(*args)
            except Exception as err:  # noqa: BLE001 - no input may end the host
                reason = f"internal error in the callback of {where}: {type(err).__name__}: {str(err)[:200]}"
                self.host.fault(reason)
                if (where, type(err)) not in self._logged_errors:
                    self._logged_errors.add((where, type(err)))
                    self.get_logger().error(reason)
                self._publish_status_if_fault()
        return guarded

    def _on_image(self, msg) -> None:
        frame = self.camera_frame(msg)
        if frame is not None:
            self.host.policy.on_frame(*frame)
            self._new_frame.set()

    def _on_fingers(self, hand: str, msg: JointState, add) -> None:
        sample = self.finger_sample(hand, msg)
        if sample is not None:
            add(hand, *sample)

    def _on_joint_state(self, msg: JointState) -> None:
        self.host.policy.on_joint_state(stamp_to_sec(msg.header.stamp), msg.name, msg.position)

    def _on_instruction(self, msg: String) -> None:
        self.host.policy.start_task(msg.data)
        self.host.judge.drop_pending()
        self.get_logger().info(f"instruction: '{msg.data}'")

    def _on_approved(self, msg: ActionChunk) -> None:
        if not self.host.judge.on_approved(msg.sequence, msg.digest):
            self.get_logger().warning(f"approval of chunk {msg.sequence} does not match its proposal's digest; "
                                      "not scored", throttle_duration_sec=2.0)

    def _on_gate_status(self, msg: SafetyStatus) -> None:
        # predictions of chunks that will not run as predicted (the gate holds) must not be scored later
        if (msg.level == STATUS_STOP and self._gate_level != STATUS_STOP) or msg.resets != self._gate_resets:
            self.host.judge.drop_pending()
        self._gate_level, self._gate_resets = msg.level, msg.resets

    # ------------------------------------------------------------------ threads

    def _inference_loop(self) -> None:
        # Replan on the first frame whose stamp is a replan period after the last chunk's (minus 10 % for
        # camera jitter), the moment it arrives: timing by arrival would often miss it by a hair and wait
        # for the next frame, adding a camera period of latency.
        host, last = self.host, -1e9
        try:
            while not self._stop.is_set():
                self._new_frame.wait(timeout=0.1)
                self._new_frame.clear()
                newest = host.policy.frames.newest_stamp
                if self._stop.is_set() or newest is None or newest - last < 0.9 * self.p["replan_period_s"] \
                        or self._gate_level == STATUS_STOP:
                    continue
                chunk = host.propose(self._now())
                self._publish_status_if_fault()
                if chunk is None:
                    continue
                last = chunk.stamp
                self.proposed += 1
                self.pub_proposed.publish(chunk_to_msg(chunk, self.robot.config.base_frame))
        except Exception as err:  # noqa: BLE001 - the heartbeat reports the dead thread as STOP
            if not self._stop.is_set():
                host.inference.dead = f"policy thread died: {type(err).__name__}: {err}"
                self.get_logger().error(host.inference.dead)

    def _judge_loop(self) -> None:
        host = self.host
        try:
            while not self._stop.is_set():
                host.judge_next(timeout_s=0.1)
                self._publish_status_if_fault()
        except Exception as err:  # noqa: BLE001
            if not self._stop.is_set():
                host.judging.dead = f"judge thread died: {type(err).__name__}: {err}"
                self.get_logger().error(host.judging.dead)

    # ------------------------------------------------------------------ heartbeats

    def _publish_status_if_fault(self) -> None:
        """A fault is reported at once (level STOP, its reason), not at the next heartbeat."""
        host = self.host
        judge = host.judge
        for source, faults, reason, surprise in (("model_host", host.faults, host.last_fault, 0.0),
                                                 ("judge", judge.faults, judge.last_fault, judge.surprise)):
            if faults != self._published_faults[source]:
                self._publish(source, Status(STATUS_STOP, reason, faults, surprise, judge.sequence))

    def _publish(self, source: str, status: Status) -> None:
        with self._status_lock:
            if status.level == STATUS_STOP and status.faults != self._published_faults[source]:
                self.get_logger().error(f"{source} fault: {status.reason}")
            self._published_faults[source] = max(self._published_faults[source], status.faults)
            msg = SafetyStatus(level=status.level, surprise=float(status.surprise),
                               threshold=float(self.p["stop_surprise"]), reason=status.reason[:500],
                               chunk_sequence=int(status.chunk_sequence), source=source, faults=int(status.faults))
            msg.header.stamp = sec_to_stamp(self._now())
            self.pub_status[source].publish(msg)

    def _heartbeat(self) -> None:
        self._publish_status_if_fault()
        now = self._now()
        self._publish("model_host", self.host.host_status(now))
        self._publish("judge", self.host.judge_status())

    def _diagnostics(self) -> None:
        host = self.host
        judge = host.judge
        now = self._now()
        hs, js = host.host_status(now), host.judge_status()
        values = {
            "host": f"{LEVEL_NAMES[hs.level]}: {hs.reason}", "judge": f"{LEVEL_NAMES[js.level]}: {js.reason}",
            "chunks_proposed": self.proposed, "host_faults": host.faults, "judge_faults": judge.faults,
            **host.mean_times(), **host.selection_stats(), "frames_encoded": host.policy.frames.encoded,
            "chunks_judged": judge.approved, "pending_predictions": judge.pending, "unscored_frames": judge.unscored,
            "approvals_not_matching": judge.unbound, "bad_images": self.bad_images,
            "last_image_error": self.last_image_error, "last_fault": host.last_fault or judge.last_fault,
        }
        level = max(hs.level, js.level)
        msg = DiagnosticArray()
        msg.header.stamp = sec_to_stamp(now)
        msg.status = [diagnostic_status(f"{self.get_name()}: model host", self.robot.embodiment, min(level, 2),
                                        f"host {LEVEL_NAMES[hs.level]}, judge {LEVEL_NAMES[js.level]}: "
                                        f"{hs.reason if hs.level >= js.level else js.reason}", values)]
        self.pub_diag.publish(msg)


main = node_main("model_host_node", ModelHostNode, MODEL_STARTUP_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
