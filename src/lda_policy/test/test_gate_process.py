"""The real ``safety_gate_node`` process under hostile input (issue #27): a proposal whose declared shape is
absurd, a pose stamped an hour ahead, a ``/clock`` that jumps back under ``use_sim_time``, and its own
heartbeat. The peers (model host and judge heartbeats, the robot's pose and finger streams, /clock) are real
rclpy publishers in this process; no model is loaded.
"""

import sys
import threading
import time

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped
from lda_common.messages import Topics
from lda_policy.ros_io import COMMAND_QOS, SENSOR_QOS, ns_to_stamp, pose_stamped
from lda_testing.deploy import write_params, write_robot_config
from lda_testing.ros import NodeProcess, ros_node, wait_for
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState

from lda_msgs.msg import ActionChunk, SafetyStatus

HOME = np.array([0.45, 0.0, 0.25])
DOWN = np.array([1.0, 0.0, 0.0, 0.0])


class Peers:
    """Heartbeats, pose and finger streams (and /clock when ``sim``) at 50 Hz, stamped with the peers' clock:
    ROS time, or under ``sim`` a simulated clock that starts at 1000 s and that a test can step."""

    def __init__(self, node, sim: bool = False) -> None:
        self.node, self.sim = node, sim
        self.sim_ns = 1000 * 10**9
        self.lock = threading.Lock()
        self.statuses: list[tuple[float, SafetyStatus]] = []
        self.targets: list[float] = []
        self.pose_on = True
        self.pose_stamp_offset_s = 0.0
        pub = node.create_publisher
        self.pub_host = pub(SafetyStatus, Topics.HOST_STATUS, COMMAND_QOS)
        self.pub_judge = pub(SafetyStatus, Topics.JUDGE_STATUS, COMMAND_QOS)
        self.pub_pose = pub(PoseStamped, "/robot/right/eef_pose", SENSOR_QOS)
        self.pub_fingers = pub(JointState, "/robot/right/gripper_state", SENSOR_QOS)
        self.pub_proposed = pub(ActionChunk, Topics.PROPOSED_CHUNK, COMMAND_QOS)
        self.pub_clock = pub(Clock, "/clock", 10)
        node.create_subscription(SafetyStatus, Topics.SAFETY_STATUS, self._on_status, COMMAND_QOS)
        node.create_subscription(PoseStamped, "/robot/right/eef_target",
                                 lambda _m: self._record(self.targets, None), COMMAND_QOS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _record(self, store, msg) -> None:
        with self.lock:
            store.append((time.monotonic(), msg) if msg is not None else time.monotonic())

    def _on_status(self, msg) -> None:
        self._record(self.statuses, msg)

    def clock_ns(self) -> int:
        return self.sim_ns if self.sim else self.node.get_clock().now().nanoseconds

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with self.lock:
                if self.sim:
                    self.sim_ns += 20_000_000  # simulated time at the wall clock's pace
                    self.pub_clock.publish(Clock(clock=ns_to_stamp(self.sim_ns)))
                ns, pose_on, offset = self.clock_ns(), self.pose_on, self.pose_stamp_offset_s
            stamp = ns_to_stamp(ns)
            for pub, source in ((self.pub_host, "model_host"), (self.pub_judge, "judge")):
                msg = SafetyStatus(level=0, reason="ok", source=source)
                msg.header.stamp = stamp
                pub.publish(msg)
            if pose_on:
                self.pub_pose.publish(pose_stamped(HOME, DOWN, ns_to_stamp(ns + int(offset * 1e9)), "base"))
            js = JointState(name=["finger_joint1", "finger_joint2"], position=[0.02, 0.02])
            js.header.stamp = stamp
            self.pub_fingers.publish(js)

    def since(self, t: float) -> list[SafetyStatus]:
        with self.lock:
            return [m for ts, m in self.statuses if ts >= t]

    def first_stop(self, t: float, timeout: float = 5.0):
        wait_for(lambda: any(s.level == 2 for s in self.since(t)), timeout)
        return next((s for s in self.since(t) if s.level == 2), None)

    def ok_since(self, t: float) -> bool:
        return bool(self.since(t)) and self.since(t)[-1].level == 0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def gate_command(tmp_path, sim: bool = False) -> list[str]:
    robot = write_robot_config(tmp_path / "robot.yaml")
    params = write_params(tmp_path / "gate.yaml", {
        "robot_config": str(robot), "host_timeout_s": 0.3, "judge_timeout_s": 0.3, "approval_deadline_s": 1.0,
        "workspace_min": [-2.0, -2.0, -2.0], "workspace_max": [2.0, 2.0, 2.0], "finger_min": -0.01,
        "finger_max": 0.1, "max_observation_age_s": 0.5, "use_sim_time": sim})
    return [sys.executable, "-m", "lda_policy.safety_gate_node", "--ros-args", "--params-file", str(params)]


@pytest.fixture
def gate(tmp_path):
    with NodeProcess(gate_command(tmp_path)) as proc, ros_node("gate_peers") as node:
        peers = Peers(node)
        try:
            assert wait_for(lambda: peers.ok_since(0), 60), proc.output[-3000:]
            yield proc, peers
        finally:
            peers.stop()


def test_a_proposal_with_an_absurd_shape_latches_stop_and_the_gate_lives_on(gate):
    """Item 3: a proposal declaring 2^32-1 x 2^32-1 actions used to raise out of the callback and end the
    gate process (and with it the hold)."""
    proc, peers = gate
    msg = ActionChunk(embodiment="test_arm", horizon=2**32 - 1, action_dim=2**32 - 1, dt=0.1, sequence=5,
                      actions=[0.0] * 7)
    msg.header.stamp = ns_to_stamp(peers.clock_ns())
    t0 = time.monotonic()
    peers.pub_proposed.publish(msg)
    stop = peers.first_stop(t0)
    assert stop is not None, proc.output[-3000:]
    assert "bad message on /lda/proposed_chunk: chunk 5 declares horizon 4294967295 x action_dim 4294967295" \
        in stop.reason, stop.reason
    time.sleep(1.0)
    assert proc.proc.poll() is None, proc.output[-3000:]  # alive
    n = len(peers.targets)
    assert wait_for(lambda: len(peers.targets) >= n + 3, 3), "the gate stopped holding"  # and holding
    assert peers.since(time.monotonic() - 0.5)[-1].level == 2  # latched


def test_a_pose_stamped_an_hour_ahead_latches_stop(gate):
    """Item 2: one sample stamped in the future used to keep a stream 'fresh' until that time."""
    proc, peers = gate
    t0 = time.monotonic()
    with peers.lock:
        peers.pose_stamp_offset_s = 3600.0
    stop = peers.first_stop(t0)
    assert stop is not None, proc.output[-3000:]
    assert stop.reason.startswith("right/pose stamp is 3599.9"), stop.reason
    assert "ahead of the gate's clock (> max_stamp_lead_s 0.5)" in stop.reason, stop.reason


def test_the_gate_heartbeat_beats_at_status_rate(gate):
    """Item 6: /lda/safety_status leaves from the control tick at status_rate_hz (10 Hz) while nothing changes:
    it is the heartbeat a robot driver watches (sim_node holds when it stops)."""
    _, peers = gate
    t0 = time.monotonic()
    time.sleep(2.0)
    beats = [s for s in peers.since(t0) if s.source == "safety_gate"]
    assert 14 <= len(beats) <= 30, len(beats)


def test_a_sim_clock_jumping_back_latches_stop(tmp_path):
    """Item 2: under use_sim_time the watchdogs run on the simulated clock made monotonic; a /clock that steps
    back latches STOP naming it (it used to make every age negative and skip the step checks)."""
    with NodeProcess(gate_command(tmp_path, sim=True)) as proc, ros_node("gate_peers") as node:
        peers = Peers(node, sim=True)
        try:
            assert wait_for(lambda: peers.ok_since(0), 60), proc.output[-3000:]
            time.sleep(0.5)
            assert peers.ok_since(time.monotonic() - 0.3), "the gate should run happily on simulated time"
            t0 = time.monotonic()
            with peers.lock:
                peers.sim_ns -= 5 * 10**9
            stop = peers.first_stop(t0)
            assert stop is not None, proc.output[-3000:]
            assert "the ROS clock went back by" in stop.reason or "stamp went back by" in stop.reason, stop.reason
        finally:
            peers.stop()


def test_a_callback_that_raises_latches_stop_and_the_node_lives_on(tmp_path):
    """Item 3: every callback of the node is guarded: an exception escaping one latches STOP naming it (the
    executor would otherwise end the process), and a JointState without the hand's joints is counted."""
    import rclpy
    from lda_policy.safety_gate_node import SafetyGateNode

    context = rclpy.Context()
    rclpy.init(context=context)
    args = gate_command(tmp_path)[3:]  # --ros-args --params-file ...
    try:
        node = SafetyGateNode(context=context, cli_args=args)
        node.start()

        def broken(_msg):
            raise RuntimeError("boom")

        assert node._guard("/robot/right/eef_pose", broken)(None) is None  # did not raise
        assert node.core.stop_reason == "internal error in the callback of /robot/right/eef_pose: RuntimeError: boom"
        node._on_fingers("right", JointState(name=["elbow"], position=[1.0]))
        assert sum(node.core.bad_inputs.values()) == 1
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_a_sim_clock_jumping_ahead_latches_stop_naming_the_jump(tmp_path):
    """Item 2: under use_sim_time a /clock that jumps 10 s ahead latches STOP naming the jump (not the heartbeat
    that merely looks 10 s old)."""
    with NodeProcess(gate_command(tmp_path, sim=True)) as proc, ros_node("gate_peers") as node:
        peers = Peers(node, sim=True)
        try:
            assert wait_for(lambda: peers.ok_since(0), 60), proc.output[-3000:]
            t0 = time.monotonic()
            with peers.lock:
                peers.sim_ns += 10 * 10**9
            stop = peers.first_stop(t0)
            assert stop is not None, proc.output[-3000:]
            assert stop.reason.startswith("the ROS clock jumped 10.0"), stop.reason
        finally:
            peers.stop()


def test_a_chunk_within_the_clamp_band_runs_clamped_with_warn_and_beyond_it_stops(tmp_path):
    """Item 7 through the process: a chunk whose late rows dip 6 mm under the floor (band 2 cm) is approved
    and commanded clamped onto the floor, the status saying WARN; one 7 cm under latches STOP."""
    from lda_policy.deploy.chunks import ProposedChunk
    from lda_policy.ros_io import chunk_to_msg

    robot = write_robot_config(tmp_path / "robot.yaml")
    floor = HOME[2] - 0.01
    params = write_params(tmp_path / "gate.yaml", {
        "robot_config": str(robot), "host_timeout_s": 0.3, "judge_timeout_s": 0.3, "approval_deadline_s": 1.0,
        "workspace_min": [-2.0, -2.0, float(floor)], "workspace_max": [2.0, 2.0, 2.0], "workspace_band_m": 0.02,
        "finger_min": -0.01, "finger_max": 0.1, "max_observation_age_s": 0.5})
    cmd = [sys.executable, "-m", "lda_policy.safety_gate_node", "--ros-args", "--params-file", str(params)]
    with NodeProcess(cmd) as proc, ros_node("gate_peers") as node:
        peers = Peers(node)
        heights: list[float] = []
        node.create_subscription(PoseStamped, "/robot/right/eef_target",
                                 lambda m: heights.append(m.pose.position.z), COMMAND_QOS)
        try:
            assert wait_for(lambda: peers.ok_since(0), 60), proc.output[-3000:]
            names = ["right/dx", "right/dy", "right/dz", "right/drx", "right/dry", "right/drz", "right/gripper"]

            def propose(sequence: int, dz: float) -> None:
                actions = np.zeros((16, 7))
                actions[:, 2], actions[:, 6] = dz, 0.04  # the EEF z points down: +dz descends
                c = ProposedChunk(sequence, peers.clock_ns() / 1e9, 0.1, "test_arm", names, actions, 0.1)
                c.digest = c.computed_digest()
                peers.pub_proposed.publish(chunk_to_msg(c))

            t0 = time.monotonic()
            propose(1, 0.001)  # rows down to HOME z - 16 mm: the floor - 6 mm
            assert wait_for(lambda: any(s.level == 1 and "commands clamped" in s.reason for s in peers.since(t0)),
                            5), [s.reason for s in peers.since(t0)][-5:]
            time.sleep(1.0)
            assert not any(s.level == 2 for s in peers.since(t0)), proc.output[-3000:]
            assert heights and min(heights) >= floor - 1e-6 and min(heights) < HOME[2] - 0.005, min(heights)
            t1 = time.monotonic()
            propose(2, 0.005)  # rows down to HOME z - 8 cm: 7 cm under the floor
            stop = peers.first_stop(t1)
            assert stop is not None and "by more than its band 0.02 m" in stop.reason, proc.output[-3000:]
        finally:
            peers.stop()
