"""sim_node as a real process over loopback DDS: sensors, target following, reset service, bad input."""

import copy
import math
import os

import numpy as np
import pytest
from ament_index_python.packages import get_package_prefix
from geometry_msgs.msg import PoseStamped
from lda_testing.processes import run_tree
from lda_testing.ros import NodeProcess, ros_node, wait_for
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.time import Time
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool

from lda_msgs.srv import ResetSim

SIM_NODE = os.path.join(get_package_prefix("lda_sim"), "lib", "lda_sim", "sim_node")
NS = f"/simtest{os.getpid()}"
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture(scope="module")
def sim():
    cmd = [SIM_NODE, "--ros-args", "-r", f"__ns:={NS}", "-p", "image_size:=64", "-p", "realtime:=false",
           "-p", "seed:=3"]
    with NodeProcess(cmd) as proc:
        assert proc.wait_for_output("sim_node ready", timeout=60), proc.output
        yield proc


class Probe:
    """Subscribes to every sim output in NS; ``latest`` keeps the last message per topic."""

    def __init__(self, node):
        self.node = node
        self.msgs = {"image": [], "pose": [], "grip": [], "success": [], "object": []}
        for key, (kind, topic) in {
            "image": (Image, "camera/head/image_raw"), "pose": (PoseStamped, "robot/right/eef_pose"),
            "grip": (JointState, "robot/right/gripper_state"), "success": (Bool, "lda/task_success"),
            "object": (PoseStamped, "sim/object_pose"),
        }.items():
            node.create_subscription(kind, f"{NS}/{topic}", self.msgs[key].append, qos_profile_sensor_data)
        self.target = node.create_publisher(PoseStamped, f"{NS}/robot/right/eef_target", RELIABLE)
        self.gripper = node.create_publisher(JointState, f"{NS}/robot/right/gripper_command", RELIABLE)
        # Commands published before discovery matched them to the sim would be lost.
        assert wait_for(lambda: self.target.get_subscription_count() and self.gripper.get_subscription_count(),
                        timeout=20), "sim_node does not subscribe to the command topics"

    def latest(self, key):
        assert wait_for(lambda: self.msgs[key], timeout=20), f"no {key} message"
        return self.msgs[key][-1]

    def reset(self, seed: int) -> ResetSim.Response:
        client = self.node.create_client(ResetSim, f"{NS}/sim/reset")
        assert client.wait_for_service(timeout_sec=20)
        future = client.call_async(ResetSim.Request(seed=seed))
        assert wait_for(future.done, timeout=20), "reset did not answer"
        return future.result()


def _xyz(msg: PoseStamped) -> np.ndarray:
    return np.array([msg.pose.position.x, msg.pose.position.y, msg.pose.position.z])


def test_publishes_upright_images_and_poses_with_one_stamp(sim):
    with ros_node("probe_sensors") as node:
        probe = Probe(node)
        assert wait_for(lambda: all(len(v) >= 3 for v in probe.msgs.values()), timeout=20), probe.msgs.keys()
        image = probe.msgs["image"][-2]
    assert (image.height, image.width, image.encoding, image.step) == (64, 64, "rgb8", 64 * 3)
    pixels = np.frombuffer(bytes(image.data), dtype=np.uint8).reshape(64, 64, 3).astype(float).mean(axis=2)
    assert pixels[-20:].mean() > pixels[:20].mean() + 40  # upright: the white table at the bottom
    pose_stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for m in probe.msgs["pose"]}
    assert (image.header.stamp.sec, image.header.stamp.nanosec) in pose_stamps  # one stamp per step
    pose = probe.msgs["pose"][-1]
    assert pose.header.frame_id == "base" and 0.2 < pose.pose.position.x < 0.8
    quat = pose.pose.orientation
    assert math.isclose(quat.x**2 + quat.y**2 + quat.z**2 + quat.w**2, 1.0, abs_tol=1e-6)
    grip = probe.msgs["grip"][-1]
    assert list(grip.name) == ["gripper"] and 0.0 < grip.position[0] <= 0.08
    assert probe.msgs["object"][-1].header.frame_id == "base" and probe.msgs["success"][-1].data is False


def test_simulated_time_advances_one_period_per_step(sim):
    """Stepping as fast as it can (realtime:=false), the stamps still form an exact 10 Hz grid on /clock."""
    with ros_node("probe_clock") as node:
        clocks, images = [], []
        node.create_subscription(Clock, "/clock", lambda m: clocks.append(Time.from_msg(m.clock).nanoseconds), 100)
        node.create_subscription(Image, f"{NS}/camera/head/image_raw",
                                 lambda m: images.append(Time.from_msg(m.header.stamp).nanoseconds),
                                 QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT))
        assert wait_for(lambda: len(images) >= 20 and len(clocks) >= 20, timeout=20), (len(images), len(clocks))
    steps = np.diff(images[:20])
    assert set(steps.tolist()) <= {100_000_000, 200_000_000}, steps  # best effort may skip one, never jitter
    assert set(images[:20]) <= set(clocks), "image stamps are /clock times"


def test_follows_eef_target_and_gripper_command(sim):
    with ros_node("probe_follow") as node:
        probe = Probe(node)
        start = probe.latest("pose")
        target = PoseStamped()
        target.header.frame_id = "base"
        target.pose = start.pose
        goal = _xyz(start) + [0.06, 0.08, -0.06]
        target.pose.position.x, target.pose.position.y, target.pose.position.z = goal.tolist()

        def reached():
            probe.target.publish(target)  # keep the stream alive, like a teleop device
            probe.gripper.publish(JointState(position=[0.0]))
            return np.linalg.norm(_xyz(probe.msgs["pose"][-1]) - goal) < 0.02
        assert wait_for(reached, timeout=30, period=0.05), f"EEF at {_xyz(probe.msgs['pose'][-1])}, goal {goal}"
        # best effort: the first gripper_state may come after the first pose, so wait for one before reading it
        assert wait_for(lambda: probe.msgs["grip"] and probe.msgs["grip"][-1].position[0] < 0.01, timeout=10), \
            probe.msgs["grip"][-1:]


def test_reset_service_is_seeded(sim):
    with ros_node("probe_reset") as node:
        probe = Probe(node)

        def placement_after(seed):
            response = probe.reset(seed)
            assert response.success, response.message
            count = len(probe.msgs["object"])
            assert wait_for(lambda: len(probe.msgs["object"]) > count + 1, timeout=20)
            return _xyz(probe.msgs["object"][-1])[:2], response.message

        a, message = placement_after(5)
        b, _ = placement_after(7)
        a_again, _ = placement_after(5)
        refused = probe.reset(-3)
    assert "reset with seed 5" in message
    np.testing.assert_allclose(a_again, a, atol=1e-4)  # xy: the cube settles onto the table meanwhile
    assert np.linalg.norm(a - b) > 0.01
    assert not refused.success and "seed must be >= 0" in refused.message


def test_bad_commands_are_logged_and_rejected_not_fatal(sim):
    with ros_node("probe_bad") as node:
        probe = Probe(node)
        good = probe.latest("pose")
        nan_target, far_target, wrong_frame = PoseStamped(), PoseStamped(), PoseStamped()
        for msg in (nan_target, far_target, wrong_frame):
            msg.header.frame_id, msg.pose = "base", copy.deepcopy(good.pose)
        nan_target.pose.position.x = float("nan")
        far_target.pose.position.x = 9.0
        wrong_frame.header.frame_id = "camera"
        for msg in (nan_target, far_target, wrong_frame):
            probe.target.publish(msg)
        probe.gripper.publish(JointState(position=[]))
        assert wait_for(lambda: sim.output.count("rejected right command") >= 4, timeout=10), sim.output
        count = len(probe.msgs["pose"])
        assert wait_for(lambda: len(probe.msgs["pose"]) > count + 3, timeout=10)  # still stepping
    assert "NaN" in sim.output and "outside the workspace" in sim.output and "frame 'camera'" in sim.output
    assert sim.proc.poll() is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-p", "robot:=ur5"], "robot 'ur5' is unknown"),
        (["-p", "image_size:=4", "-p", "control_hz:=0.0"], "image_size 4 is outside 16..512; control_hz 0.0"),
        (["-p", "robot:=5"], "expecting type 'STRING'"),
        (["-p", "real_time_factor:=2.0"], "real_time_factor 2.0 is outside 0.05..1"),
    ],
)
def test_bad_parameters_exit_with_a_clear_error(args, message):
    result = run_tree([SIM_NODE, "--ros-args", *args], timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert message in output and "Traceback" not in output


def test_gr1_hand_takes_finger_joints_by_name_and_names_what_is_wrong():
    ns = f"{NS}_gr1"
    cmd = [SIM_NODE, "--ros-args", "-r", f"__ns:={ns}", "-p", "robot:=gr1_pickplace", "-p", "image_size:=32",
           "-p", "realtime:=false", "-p", "seed:=0"]
    joints = [f"R_{j}" for j in ("thumb_proximal_yaw_joint", "thumb_proximal_pitch_joint", "index_proximal_joint",
                                 "middle_proximal_joint", "ring_proximal_joint", "pinky_proximal_joint")]
    target = [0.3, 0.6, 1.0, 0.2, 0.5, 1.2]
    with NodeProcess(cmd) as sim, ros_node("probe_gr1") as node:
        assert sim.wait_for_output("sim_node ready", timeout=90), sim.output
        states = []
        node.create_subscription(JointState, f"{ns}/robot/right/gripper_state", states.append, qos_profile_sensor_data)
        pub = node.create_publisher(JointState, f"{ns}/robot/right/gripper_command", RELIABLE)
        assert wait_for(lambda: pub.get_subscription_count() and states, timeout=20)
        assert list(states[-1].name) == ["gripper", *joints]  # the names config/robots/gr1_humanoid.yaml reads
        pub.publish(JointState(name=joints[::-1], position=target[::-1]))  # any order, by name

        def fingers_near():
            return np.abs(np.array(states[-1].position[1:]) - target).max() < 0.25

        assert wait_for(fingers_near, timeout=30), (list(states[-1].position), sim.output[-2000:])
        pub.publish(JointState(name=joints[:5], position=target[:5]))  # one joint missing
        pub.publish(JointState(name=joints, position=[float("nan")] + target[1:]))
        assert wait_for(lambda: sim.output.count("rejected right command") >= 2, timeout=10), sim.output[-2000:]
        assert "needs 'gripper' (width) or the finger joints ['R_thumb_proximal_yaw_joint'" in sim.output
        assert "NaN or infinite position" in sim.output
        assert fingers_near() and sim.proc.poll() is None  # the last good command still holds
