"""The authors' model deployed on the GR-1's joints through real processes over DDS (issue #28): a tiny imported
upstream checkpoint in model_host_node (action_space joints, config/robots/gr1_humanoid.yaml) and the safety
gate in joint mode, launched by launch/policy.launch.yaml; this process is the robot (head camera, joint
states, the instruction; it follows the joint commands). A chunk is proposed, approved and commanded within
the joint limits. Start-up refusals of a checkpoint that does not fit the action space run in-process.

The checkpoint's action statistics are a narrow band around the robot's pose, so that its random-weight
chunks are targets the gate's step and speed limits accept.
"""

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from lda_common.messages import Topics
from lda_common.robot_config import ConfigError, load_robot_config
from lda_policy.deploy.joint_policy import NO_JUDGE_REASON
from lda_policy.ros_io import COMMAND_QOS, LATCHED_QOS, SENSOR_QOS, rgb_to_image, sec_to_stamp
from lda_testing.deploy import HOST_TIMEOUT_S, write_params
from lda_testing.ros import NodeProcess, ros_node, wait_for
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from lda_msgs.msg import ActionChunk, SafetyStatus

REPO = Path(__file__).resolve().parents[3]
LAUNCH = REPO / "launch" / "policy.launch.yaml"
ROBOT = REPO / "config" / "robots" / "gr1_humanoid.yaml"
LIMITS = REPO / "config" / "deploy" / "limits" / "gr1_humanoid.yaml"
GR1 = load_robot_config(ROBOT)
NAMES = GR1.joints.joint_names
BAND = 0.004  # the checkpoint's action statistics: the robot's pose +- this [rad]


def joint_ranges() -> dict[str, tuple[float, float]]:
    params = yaml.safe_load(LIMITS.read_text())["/**"]["ros__parameters"]
    return {k: tuple(v) for k, v in (params.get("joint_ranges") or {}).items()}


def home_pose() -> np.ndarray:
    """The robot's pose: the middle of each joint's range where the limits file has one, else 0.1 rad."""
    ranges = joint_ranges()
    return np.array([0.5 * sum(ranges[n]) if n in ranges else 0.1 for n in NAMES])


def gate_speaks_joints() -> bool:
    """Whether the installed safety gate has its joint mode (its action_space parameter) and the GR-1 limits file
    has a range for every joint."""
    from ament_index_python.packages import get_package_prefix

    gate = Path(get_package_prefix("lda_policy")).glob("lib/python*/site-packages/lda_policy/safety_gate_node.py")
    return any('"action_space"' in f.read_text() for f in gate) and set(NAMES) <= set(joint_ranges())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from lda_testing.upstream import write_tiny_upstream_checkpoint

    q = home_pose()
    stats = {"gr1": {"action": {"min": (q - BAND).tolist(), "max": (q + BAND).tolist()}}}
    return write_tiny_upstream_checkpoint(tmp_path_factory.mktemp("joint_deploy"), statistics=stats)


class JointRobot:
    """The GR-1 as topics: head camera (224 px, 10 Hz), joint states of its 29 joints plus others (50 Hz, a
    shuffled order), the instruction; it follows the joint commands like a perfect position controller."""

    def __init__(self, node) -> None:
        self.node = node
        self.lock = threading.Lock()
        self.q = home_pose()
        self.commands: list[tuple[float, JointState]] = []
        self.proposed, self.approved, self.statuses, self.host_statuses = [], [], [], []
        pub = node.create_publisher
        self.pub_image = pub(Image, GR1.cameras[0].topic, SENSOR_QOS)
        self.pub_joints = pub(JointState, GR1.joints.state_topic, SENSOR_QOS)
        pub(String, GR1.instruction_topic, LATCHED_QOS).publish(String(data="put the cup into the drawer"))
        sub = node.create_subscription
        sub(JointState, GR1.joints.command_topic, self._on_command, COMMAND_QOS)
        for topic, store in ((Topics.PROPOSED_CHUNK, self.proposed), (Topics.ACTION_CHUNK, self.approved)):
            sub(ActionChunk, topic, lambda m, s=store: self._record(s, m), COMMAND_QOS)
        for topic, store in ((Topics.SAFETY_STATUS, self.statuses), (Topics.HOST_STATUS, self.host_statuses),
                             (Topics.JUDGE_STATUS, self.host_statuses)):
            sub(SafetyStatus, topic, lambda m, s=store: self._record(s, m), COMMAND_QOS)
        self._order = np.random.default_rng(1).permutation(len(NAMES))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _record(self, store, msg) -> None:
        with self.lock:
            store.append((time.monotonic(), msg))

    def _on_command(self, msg: JointState) -> None:
        with self.lock:
            self.commands.append((time.monotonic(), msg))
            lookup = dict(zip(msg.name, msg.position, strict=True))
            self.q = np.array([lookup.get(n, q) for n, q in zip(NAMES, self.q, strict=True)])

    def _run(self) -> None:
        k = 0
        while not self._stop.wait(0.02):
            stamp = self.node.get_clock().now().nanoseconds * 1e-9
            with self.lock:
                q = self.q.copy()
            names = ["head_pitch", *[NAMES[i] for i in self._order]]
            msg = JointState(name=names, position=[0.0, *[float(q[i]) for i in self._order]])
            msg.header.stamp = sec_to_stamp(stamp)
            self.pub_joints.publish(msg)
            if k % 5 == 0:
                rgb = np.random.default_rng(k).integers(0, 256, (224, 224, 3), dtype=np.uint8)
                self.pub_image.publish(rgb_to_image(rgb, sec_to_stamp(stamp), "head"))
            k += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def host_params(d: Path) -> Path:
    return write_params(d / "host.yaml", {"torch_threads": 1, "max_inference_time_s": 10.0})


def check_chunk(msg: ActionChunk) -> np.ndarray:
    """A proposal or approval as the contract says: GR-1 joints, 16 x 29 absolute targets at 20 Hz."""
    assert (msg.embodiment, msg.horizon, msg.action_dim) == ("gr1_humanoid", 16, 29)
    assert list(msg.dimension_names) == NAMES and msg.dt == pytest.approx(0.05) and len(msg.digest) == 64
    actions = np.asarray(msg.actions).reshape(16, 29)
    assert (np.abs(actions - home_pose()) <= BAND + 1e-5).all()  # un-normalised: targets around the pose
    return actions


@pytest.mark.skipif(gate_speaks_joints(), reason="the test through the gate covers it")
def test_host_alone_proposes_joint_chunks_and_beats(checkpoint, tmp_path):
    ckpt, processor = checkpoint
    exe = REPO / "install" / "lda_policy" / "lib" / "lda_policy" / "model_host_node"
    cmd = [str(exe), "--ros-args", "--params-file", str(REPO / "config" / "deploy" / "model_host.yaml"),
           "--params-file", str(host_params(tmp_path))]
    for key, value in (("robot_config", ROBOT), ("checkpoint", ckpt), ("vlm_processor", processor),
                       ("action_space", "joints")):
        cmd += ["-p", f"{key}:={value}"]
    with NodeProcess(cmd) as proc, ros_node("gr1_robot") as node:
        robot = JointRobot(node)
        try:
            assert wait_for(lambda: len(robot.proposed) >= 2, 90), proc.output[-3000:]
            check_chunk(robot.proposed[-1][1])
            judge = [m for _, m in robot.host_statuses if m.source == "judge"]
            assert judge and judge[-1].level == 1 and judge[-1].reason == NO_JUDGE_REASON
            host = [m for _, m in robot.host_statuses if m.source == "model_host"]
            assert host[-1].level == 0 and host[-1].faults == 0, host[-1]
        finally:
            robot.stop()
    assert "in joint space (29 joints at 20 Hz, embodiment slot 24)" in proc.output, proc.output[-3000:]


@pytest.mark.skipif(not gate_speaks_joints(), reason="the safety gate's joint mode (deploy/joint_space.py, "
                    "joint_ranges in config/deploy/limits/gr1_humanoid.yaml) is not installed yet")
def test_chunk_is_proposed_approved_and_commanded_through_the_gate(checkpoint, tmp_path):
    ckpt, processor = checkpoint
    cmd = ["lda-launch", str(LAUNCH), "robot:=gr1_humanoid", "action_space:=joints", f"checkpoint:={ckpt}",
           f"vlm_processor:={processor}", f"host_params:={host_params(tmp_path)}", f"host_timeout_s:={HOST_TIMEOUT_S}"]
    with NodeProcess(cmd) as proc, ros_node("gr1_robot") as node:
        robot = JointRobot(node)
        try:
            assert wait_for(lambda: len(robot.approved) >= 2 and len(robot.commands) >= 5, 120), proc.output[-4000:]
            with robot.lock:
                proposed = {m.sequence: m for _, m in robot.proposed}
                approved = [m for _, m in robot.approved]
                commands = [m for _, m in robot.commands]
                statuses = [m for _, m in robot.statuses]
                beats = [m for _, m in robot.host_statuses]
        finally:
            robot.stop()
    assert "in joint space (29 joints at 20 Hz, embodiment slot 24)" in proc.output, proc.output[-3000:]
    judge = [m for m in beats if m.source == "judge"]
    assert judge and judge[-1].level == 1 and judge[-1].reason == NO_JUDGE_REASON  # honest, and beating
    host = [m for m in beats if m.source == "model_host"]
    assert host[-1].level == 0 and host[-1].faults == 0, host[-1]
    m = approved[-1]
    assert m.sequence in proposed and m.digest == proposed[m.sequence].digest  # approved = proposed
    check_chunk(m)
    ranges = joint_ranges()
    for c in commands:
        assert set(NAMES) <= set(c.name)
        lookup = dict(zip(c.name, c.position, strict=True))
        for n in NAMES:
            lo, hi = ranges[n]
            assert lo <= lookup[n] <= hi, (n, lookup[n])
    q = np.array([dict(zip(commands[-1].name, commands[-1].position, strict=True))[n] for n in NAMES])
    assert (np.abs(q - home_pose()) <= 2 * BAND).all()  # commanded from the chunks
    assert statuses and statuses[-1].level < 2, statuses[-1]


def test_host_refuses_a_checkpoint_that_does_not_fit_the_action_space(checkpoint, tmp_path, tmp_path_factory):
    """In-process start-up of ModelHostNode: each mismatch stops it with an error that says what to change."""
    import rclpy
    from lda_policy.model_host_node import ModelHostNode
    from lda_policy.ros_io import ParameterError
    from rclpy.context import Context
    from rclpy.parameter import Parameter

    from lda_testing import deploy as T

    ckpt, processor = checkpoint
    ours = T.cached_checkpoint(tmp_path_factory.getbasetemp() / "lda_deploy_model")
    no_joints = tmp_path / "gr1_no_joints.yaml"
    body = yaml.safe_load(ROBOT.read_text())
    del body["joints"]
    no_joints.write_text(yaml.safe_dump(body))
    cases = [
        ({"checkpoint": ckpt, "robot_config": ROBOT}, ConfigError, "is an imported upstream checkpoint"),
        ({"checkpoint": ckpt, "robot_config": no_joints, "action_space": "joints"}, ConfigError, "has no joints:"),
        ({"checkpoint": ours["checkpoint"], "robot_config": ROBOT, "action_space": "joints"}, ConfigError,
         "is not an imported upstream checkpoint"),
        ({"checkpoint": ours["checkpoint"], "robot_config": ROBOT}, ParameterError, "'dino_path' is required"),
        ({"checkpoint": ckpt, "robot_config": ROBOT, "action_space": "joints", "vlm_processor": tmp_path},
         Exception, "has no tokenizer_config.json: set vlm_processor"),
    ]
    for params, error, text in cases:
        context = Context()
        rclpy.init(context=context)
        try:
            node = ModelHostNode(context=context, parameter_overrides=[
                Parameter(k, value=str(v)) for k, v in params.items()])
            with pytest.raises(error) as err:
                node.start()
            assert text in str(err.value), (params, str(err.value))
            node.destroy_node()
        finally:
            rclpy.shutdown(context=context)
