"""The real ``safety_gate_node`` process in joint space (issue #28 item 3): ``action_space:=joints`` with the
GR-1's robot config and shipped limits. The peers (heartbeats, the GR-1's joint states, a proposal) are real
rclpy publishers in this process; no model is loaded. A proposed joint chunk is approved (republished on
/lda/action_chunk) and commanded as JointState targets within the joint ranges and the step limit; a joint
state without one of the commanded joints latches STOP and the gate lives on, holding the last command."""

import sys
import threading
import time
from pathlib import Path

import numpy as np
import yaml
from lda_common.messages import Topics
from lda_common.robot_config import load_robot_config
from lda_policy.deploy.chunks import ProposedChunk
from lda_policy.ros_io import COMMAND_QOS, SENSOR_QOS, chunk_to_msg
from lda_testing.deploy import write_params
from lda_testing.ros import NodeProcess, ros_node, wait_for
from sensor_msgs.msg import JointState

from lda_msgs.msg import ActionChunk, SafetyStatus

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "config" / "deploy"
ROBOT = REPO / "config" / "robots" / "gr1_humanoid.yaml"
JOINTS = load_robot_config(ROBOT).joints
NAMES = JOINTS.joint_names
RANGES = yaml.safe_load((DEPLOY / "limits" / "gr1_humanoid.yaml").read_text())["/**"]["ros__parameters"][
    "joint_ranges"]
LOWER = np.array([RANGES[j][0] for j in NAMES])
UPPER = np.array([RANGES[j][1] for j in NAMES])
MID = (LOWER + UPPER) / 2


class Robot:
    """Heartbeats and the GR-1's joint states (plus a head joint, in reversed order) at 50 Hz; it follows the
    gate's joint commands like a perfect position controller and records them."""

    def __init__(self, node) -> None:
        self.node, self.lock = node, threading.Lock()
        self.q, self.drop_joint = MID.copy(), ""
        self.commands: list[np.ndarray] = []
        self.approved: list[ActionChunk] = []
        self.statuses: list[SafetyStatus] = []
        pub = node.create_publisher
        self.pub_host = pub(SafetyStatus, Topics.HOST_STATUS, COMMAND_QOS)
        self.pub_judge = pub(SafetyStatus, Topics.JUDGE_STATUS, COMMAND_QOS)
        self.pub_joints = pub(JointState, JOINTS.state_topic, SENSOR_QOS)
        self.pub_proposed = pub(ActionChunk, Topics.PROPOSED_CHUNK, COMMAND_QOS)
        node.create_subscription(JointState, JOINTS.command_topic, self._on_command, COMMAND_QOS)
        node.create_subscription(ActionChunk, Topics.ACTION_CHUNK, lambda m: self._add(self.approved, m), COMMAND_QOS)
        node.create_subscription(SafetyStatus, Topics.SAFETY_STATUS, lambda m: self._add(self.statuses, m),
                                 COMMAND_QOS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _add(self, store, msg) -> None:
        with self.lock:
            store.append(msg)

    def _on_command(self, msg: JointState) -> None:
        assert list(msg.name) == NAMES
        with self.lock:
            self.q = np.array(msg.position)
            self.commands.append(self.q.copy())

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            stamp = self.node.get_clock().now().to_msg()
            for pub, source in ((self.pub_host, "model_host"), (self.pub_judge, "judge")):
                msg = SafetyStatus(level=0, reason="ok", source=source)
                msg.header.stamp = stamp
                pub.publish(msg)
            with self.lock:
                names = ["head_yaw"] + NAMES[::-1]
                positions = [0.0] + [float(v) for v in self.q[::-1]]
                if self.drop_joint:
                    k = names.index(self.drop_joint)
                    del names[k], positions[k]
            js = JointState(name=names, position=positions)
            js.header.stamp = stamp
            self.pub_joints.publish(js)

    def propose(self, sequence: int, actions: np.ndarray) -> None:
        ns = self.node.get_clock().now().nanoseconds
        c = ProposedChunk(sequence, ns / 1e9, JOINTS.period_s, "gr1_humanoid", NAMES, actions, 0.1,
                          stamp_ns=ns)
        c.digest = c.computed_digest()
        msg = chunk_to_msg(c)
        self.pub_proposed.publish(msg)

    def level(self) -> int | None:
        with self.lock:
            gate = [s for s in self.statuses if s.source == "safety_gate"]
            return gate[-1].level if gate else None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def test_the_gate_process_in_joint_space_approves_and_commands_within_limits(tmp_path):
    params = write_params(tmp_path / "gate.yaml", {
        "robot_config": str(ROBOT), "action_space": "joints", "host_timeout_s": 0.3, "judge_timeout_s": 0.3,
        "max_observation_age_s": 0.5})
    files = (DEPLOY / "safety_gate.yaml", DEPLOY / "limits" / "gr1_humanoid.yaml", params)
    cmd = [sys.executable, "-m", "lda_policy.safety_gate_node", "--ros-args"]
    cmd += [arg for f in files for arg in ("--params-file", str(f))]
    with NodeProcess(cmd) as proc, ros_node("joint_robot") as node:
        robot = Robot(node)
        try:
            assert wait_for(lambda: robot.level() == 0, 60), proc.output[-3000:]
            assert "gating 'gr1_humanoid' (29 joints, /robot/joint_states -> /robot/joint_command) at 20 Hz" \
                in proc.output, proc.output[-3000:]
            start = robot.q.copy()
            actions = np.tile(start, (16, 1))
            j = NAMES.index("l_shoulder_pitch")
            actions[:, j] += 0.02 * np.arange(1, 17)  # 0.4 rad/s, within the shipped 1 rad/s
            with robot.lock:
                n = len(robot.commands)
            robot.propose(1, actions)
            assert wait_for(lambda: robot.approved, 5), proc.output[-3000:]
            assert robot.approved[0].sequence == 1 and list(robot.approved[0].dimension_names) == NAMES
            assert wait_for(lambda: robot.q[j] > start[j] + 0.2, 5), proc.output[-3000:]
            assert robot.level() == 0, proc.output[-3000:]
            with robot.lock:
                sent = np.array(robot.commands[n:])
            assert ((sent >= LOWER - 1e-9) & (sent <= UPPER + 1e-9)).all()
            assert (np.abs(np.diff(sent, axis=0)) <= 0.1 + 1e-9).all()  # joint_max_step_rad per command
            # a joint state without one of the commanded joints: STOP, and the gate holds the last command
            with robot.lock:
                robot.drop_joint = "torso_waist_yaw"
            assert wait_for(lambda: robot.level() == 2, 5), proc.output[-3000:]
            with robot.lock:
                stop = [s for s in robot.statuses if s.level == 2][0]
            assert stop.reason.startswith("bad message on /robot/joint_states: JointState lacks joint "
                                          "'torso_waist_yaw'"), stop.reason
            time.sleep(0.5)
            assert proc.proc.poll() is None, proc.output[-3000:]
            with robot.lock:
                last = robot.commands[-3:]
            assert len(last) == 3 and all(np.array_equal(c, last[0]) for c in last)  # holding still
        finally:
            robot.stop()
