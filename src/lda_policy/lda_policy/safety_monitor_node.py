"""safety_monitor_node: approves or refuses proposed chunks with the forward-dynamics objective.

    ros2 run lda_policy safety_monitor_node --ros-args -p robot_config:=config/robots/sim_panda.yaml \
        -p checkpoint:=/path/to/ckpt -p dino_path:=/path/to/dinov3-vits16 \
        --params-file config/deploy/safety_monitor.yaml

For each chunk on ``/lda/proposed_chunk`` it checks the hard limits, predicts the DINO latents the
chunk leads to, and republishes it on ``/lda/action_chunk`` (approved) or drops it (refused). When
the real frames arrive it scores the surprise against the calibrated statistics
(``<checkpoint>/safety_calibration.json``). ``/lda/safety_status`` (lda_msgs/SafetyStatus) is
published on every verdict change and as a heartbeat at ``heartbeat_rate_hz``: the policy node holds
the robot still when it stops. STOP latches until ``/lda/safety_reset`` (std_srvs/Trigger) is called.
Model work runs on a worker thread; the heartbeat keeps beating, and reports STOP when the worker
is stuck on one chunk for more than ``max_judge_time_s``. Logic: :mod:`lda_policy.deploy.monitor`.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from lda_common.messages import Topics
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger

from lda_msgs.msg import ActionChunk, SafetyStatus
from lda_policy.deploy.monitor import MonitorSettings, SafetyMonitorCore
from lda_policy.deploy.safety import CALIBRATION_FILE, LEVEL_NAMES, CalibrationError, SafetyCalibration, SafetyLimits
from lda_policy.ros_io import (
    COMMAND_QOS,
    LATCHED_QOS,
    SENSOR_QOS,
    ModelNode,
    declare,
    diagnostic_status,
    msg_to_chunk,
    node_main,
    pose_arrays,
    sec_to_stamp,
    stamp_to_sec,
)

PROPOSED_TOPIC, APPROVED_TOPIC, STATUS_TOPIC = Topics.PROPOSED_CHUNK, Topics.ACTION_CHUNK, Topics.SAFETY_STATUS
RESET_SERVICE = Topics.SAFETY_RESET


class SafetyMonitorNode(ModelNode, Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("safety_monitor", **kwargs)
        d = lambda *a, **k: declare(self, *a, **k)  # noqa: E731
        lim = SafetyLimits()
        self.p = {
            **self.model_parameters(),
            "calibration_path": d("calibration_path", "", f"surprise calibration JSON ('' = <checkpoint>/"
                                  f"{CALIBRATION_FILE})"),
            "require_calibration": d("require_calibration", True, "refuse to start without a calibration (false: "
                                     "run with hard limits only and report WARN 'uncalibrated')"),
            "warn_surprise": d("warn_surprise", 2.0, "surprise above which the level is WARN", low=0.0),
            "stop_surprise": d("stop_surprise", 4.0, "surprise above which STOP latches", low=0.0),
            "stop_consecutive": d("stop_consecutive", 1, "surprises above stop_surprise in a row before STOP",
                                  low=1, high=100),
            "score_horizon_s": d("score_horizon_s", 0.6, "score predicted frames up to this far after the chunk's "
                                 "observation [s]", low=0.01, high=10.0),
            "num_samples": d("num_samples", 1, "forward-dynamics samples averaged; must match the calibration",
                             low=1, high=64),
            "seed": d("seed", 0, "forward-dynamics sampling seed; must match the calibration", low=0),
            "heartbeat_rate_hz": d("heartbeat_rate_hz", 10.0, "SafetyStatus heartbeat rate [Hz]", low=0.5,
                                   high=1000.0),
            "max_judge_time_s": d("max_judge_time_s", 2.0, "STOP when judging one chunk takes longer [s]",
                                  low=0.01, high=60.0),
            "queue_size": d("queue_size", 2, "proposed chunks waiting to be judged; older ones are refused",
                            low=1, high=100),
            "state_tolerance_s": d("state_tolerance_s", 0.15, "EEF/finger samples may be this far from a frame "
                                   "stamp [s]", low=0.0, high=1.0),
            "diagnostics_period_s": d("diagnostics_period_s", 1.0, "diagnostics period [s]", low=0.05, high=60.0),
        }
        for name, default in vars(lim).items():
            value = list(default) if isinstance(default, tuple) else default
            self.p[name] = d(name, value, f"hard limit {name} (see lda_policy.deploy.safety.SafetyLimits)")
        self.core: SafetyMonitorCore | None = None
        self._queue: deque[ActionChunk] = deque()
        self._queue_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._busy_since: float | None = None
        self._busy_seq = 0
        self._fd_times: deque[float] = deque(maxlen=50)
        self._dropped_queue = 0
        self._last_published: tuple[int, str] | None = None
        self._status_lock = threading.Lock()

    def start(self) -> None:
        """Load everything; raises with a clear message on any bad path or value."""
        p = self.p
        limits = SafetyLimits.from_params(p, source=f"{self.get_name()} parameters")
        robot, runtime = self.load_model(p)
        cal_path = Path(p["calibration_path"] or Path(p["checkpoint"]) / CALIBRATION_FILE)
        calibration = None
        try:
            calibration = SafetyCalibration.load(cal_path)
        except CalibrationError as err:
            if p["require_calibration"]:
                raise
            self.get_logger().warning(f"{err}; running with hard limits only (surprise not scored)")
        settings = MonitorSettings(warn_surprise=p["warn_surprise"], stop_surprise=p["stop_surprise"],
                                   stop_consecutive=p["stop_consecutive"], score_horizon_s=p["score_horizon_s"],
                                   num_samples=p["num_samples"], seed=p["seed"],
                                   state_tolerance_s=p["state_tolerance_s"])
        self.core = SafetyMonitorCore(runtime, robot, limits, calibration, settings, start_time=self._now())
        self.robot = robot
        cam = robot.camera
        sub = self.create_subscription
        sub(CompressedImage if cam.type == "compressed" else Image, cam.topic, self._on_image, SENSOR_QOS)
        sub(String, robot.config.instruction_topic, lambda m: self.core.set_instruction(m.data), LATCHED_QOS)
        sub(ActionChunk, PROPOSED_TOPIC, self._on_proposed, COMMAND_QOS)
        for h in robot.config.hands:
            sub(PoseStamped, h.pose_topic, lambda m, n=h.name: self._on_pose(n, m), SENSOR_QOS)
            sub(JointState, h.gripper_topic, lambda m, n=h.name: self._on_fingers(n, m), SENSOR_QOS)
            if h.gripper_command_topic:  # the history actions' finger values are the commands sent
                sub(JointState, h.gripper_command_topic, lambda m, n=h.name: self._on_command(n, m), COMMAND_QOS)
        self.pub_approved = self.create_publisher(ActionChunk, APPROVED_TOPIC, COMMAND_QOS)
        self.pub_status = self.create_publisher(SafetyStatus, STATUS_TOPIC, COMMAND_QOS)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", COMMAND_QOS)
        self.create_service(Trigger, RESET_SERVICE, self._on_reset)
        self.create_timer(1.0 / p["heartbeat_rate_hz"], self._heartbeat)
        self.create_timer(p["diagnostics_period_s"], self._diagnostics)
        self._worker = threading.Thread(target=self._work, name="lda-safety-monitor", daemon=True)
        self._worker.start()
        cal = (f"calibration {cal_path} ({calibration.num_windows} windows)" if calibration else "NO calibration")
        self.get_logger().info(f"monitoring '{robot.embodiment}' with checkpoint '{p['checkpoint']}' on "
                               f"{runtime.device}; {cal}; stop_surprise {p['stop_surprise']}")

    def shutdown(self) -> None:
        """Stop the worker thread and wait for it (it must not publish while the node is destroyed)."""
        self._stop.set()
        self._wake.set()
        worker = getattr(self, "_worker", None)
        if worker is not None:
            worker.join(timeout=10)

    # ------------------------------------------------------------------ callbacks (cheap)

    def _on_image(self, msg) -> None:
        frame = self.camera_frame(msg)
        if frame is not None:
            self.core.on_frame(*frame)
            self._wake.set()

    def _on_pose(self, hand: str, msg: PoseStamped) -> None:
        self.core.on_pose(hand, stamp_to_sec(msg.header.stamp), *pose_arrays(msg))
        self._publish_if_changed()

    def _on_fingers(self, hand: str, msg: JointState) -> None:
        sample = self.finger_sample(hand, msg)
        if sample is not None:
            self.core.on_fingers(hand, *sample)
            self._publish_if_changed()

    def _on_command(self, hand: str, msg: JointState) -> None:
        sample = self.finger_sample(hand, msg)
        if sample is not None:
            self.core.on_command(hand, *sample)
            self._publish_if_changed()

    def _on_proposed(self, msg: ActionChunk) -> None:
        with self._queue_lock:
            self._queue.append(msg)
            while len(self._queue) > self.p["queue_size"]:
                old = self._queue.popleft()
                self._dropped_queue += 1
                self.get_logger().warning(f"refusing chunk {old.sequence}: monitor queue full (falling behind)",
                                          throttle_duration_sec=2.0)
        self._wake.set()

    def _on_reset(self, request, response):
        response.message = self.core.reset()
        response.success = True
        self.get_logger().warning(f"reset requested: {response.message}")
        self._publish_status(force=True)
        return response

    # ------------------------------------------------------------------ worker

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                self._work_once()
            except Exception as err:  # noqa: BLE001 - never let the worker die; a failure is a STOP
                if self._stop.is_set():
                    break  # shutting down: the context went away under the thread
                self._busy_since = None
                self.core.state.stop(f"monitor error: {type(err).__name__}: {err}")
                self.get_logger().error(f"monitor error: {type(err).__name__}: {err}", throttle_duration_sec=2.0)
                time.sleep(0.1)

    def _work_once(self) -> None:
        """Judge every waiting chunk, then score the predictions whose real frames arrived."""
        self._wake.wait(timeout=0.05)
        self._wake.clear()
        while True:
            with self._queue_lock:
                msg = self._queue.popleft() if self._queue else None
            if msg is None or self._stop.is_set():
                break
            self._busy_since, self._busy_seq = time.monotonic(), msg.sequence
            try:
                judgement = self.core.judge(msg_to_chunk(msg), self._now())
            except Exception as err:  # noqa: BLE001 - any failure to judge is a refusal + STOP
                self.core.state.stop(f"monitor error judging chunk {msg.sequence}: {type(err).__name__}: {err}",
                                     msg.sequence)
                judgement = None
            self._busy_since = None
            if judgement is not None and judgement.approved:
                self._fd_times.append(judgement.fd_time_s)
                self.pub_approved.publish(msg)
            elif judgement is not None:
                self.get_logger().warning(f"refused chunk {msg.sequence}: {judgement.reason}",
                                          throttle_duration_sec=1.0)
            self._publish_if_changed()
        try:
            self.core.score()
        except Exception as err:  # noqa: BLE001
            self.core.state.stop(f"monitor error scoring surprise: {type(err).__name__}: {err}")
        self._publish_if_changed()

    # ------------------------------------------------------------------ status

    def _verdict(self):
        v = self.core.heartbeat(self._now())
        busy = self._busy_since
        if busy is not None and time.monotonic() - busy > self.p["max_judge_time_s"]:
            self.core.state.stop(f"monitor fell behind: judging chunk {self._busy_seq} for "
                                 f"{time.monotonic() - busy:.1f} s (> max_judge_time_s {self.p['max_judge_time_s']})")
            v = self.core.heartbeat(self._now())
        return v

    def _publish_status(self, force: bool = False) -> None:
        with self._status_lock:
            v = self._verdict()
            key = (v.level, v.reason.split(" (")[0] if v.level != 2 else v.reason)
            if not force and key == self._last_published:
                return
            changed = self._last_published is None or key[0] != self._last_published[0]
            self._last_published = key
            msg = SafetyStatus(level=v.level, surprise=float(v.surprise), threshold=float(self.p["stop_surprise"]),
                               reason=v.reason, chunk_sequence=int(v.chunk_sequence))
            msg.header.stamp = sec_to_stamp(self._now())
            self.pub_status.publish(msg)
        if changed and v.level == 2:
            self.get_logger().error(f"safety STOP: {v.reason}")
        elif changed:
            self.get_logger().info(f"safety {LEVEL_NAMES[v.level]}: {v.reason}")

    def _publish_if_changed(self) -> None:
        self._publish_status(force=False)

    def _heartbeat(self) -> None:
        self._publish_status(force=True)

    def _diagnostics(self) -> None:
        core = self.core
        v = core.state.verdict()
        times = list(self._fd_times)
        values = {
            "level": LEVEL_NAMES[v.level], "reason": v.reason, "surprise": v.surprise,
            "chunks_approved": core.approved, "chunks_refused": core.refused + self._dropped_queue,
            "chunks_dropped_queue_full": self._dropped_queue, "queue_depth": len(self._queue),
            "pending_predictions": core.pending, "unscored_frames": core.unscored,
            "fd_time_last_s": times[-1] if times else float("nan"),
            "fd_time_mean_s": float(np.mean(times)) if times else float("nan"),
            "frames_encoded": core.frames.encoded, "bad_images": self.bad_images, "stops": core.state.stops,
        }
        msg = DiagnosticArray()
        msg.header.stamp = sec_to_stamp(self._now())
        msg.status = [diagnostic_status(f"{self.get_name()}: safety", self.robot.embodiment, min(v.level, 2),
                                        f"{LEVEL_NAMES[v.level]}: {v.reason}", values)]
        self.pub_diag.publish(msg)


main = node_main("safety_monitor_node", SafetyMonitorNode)


if __name__ == "__main__":
    sys.exit(main())
