"""sim_node holds every hand when the safety gate's heartbeat (/lda/safety_status) goes quiet (issue #27): a
gate that cannot tick cannot command the robot, and must not leave it following its last target."""

import copy
import os

import numpy as np
from ament_index_python.packages import get_package_prefix
from geometry_msgs.msg import PoseStamped
from lda_testing.ros import NodeProcess, ros_node, wait_for
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

from lda_msgs.msg import SafetyStatus

SIM_NODE = os.path.join(get_package_prefix("lda_sim"), "lib", "lda_sim", "sim_node")
NS = f"/simgate{os.getpid()}"
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def test_the_sim_holds_when_the_gate_heartbeat_stops():
    cmd = [SIM_NODE, "--ros-args", "-r", f"__ns:={NS}", "-p", "image_size:=32", "-p", "seed:=3"]
    with NodeProcess(cmd) as proc, ros_node("fake_gate") as node:
        assert proc.wait_for_output("sim_node ready", timeout=90), proc.output
        poses: list[PoseStamped] = []
        node.create_subscription(PoseStamped, f"{NS}/robot/right/eef_pose", poses.append, qos_profile_sensor_data)
        target_pub = node.create_publisher(PoseStamped, f"{NS}/robot/right/eef_target", RELIABLE)
        status_pub = node.create_publisher(SafetyStatus, "/lda/safety_status", RELIABLE)
        assert wait_for(lambda: poses and target_pub.get_subscription_count()
                        and status_pub.get_subscription_count(), 30)

        def xyz() -> np.ndarray:
            p = poses[-1].pose.position
            return np.array([p.x, p.y, p.z])

        start = xyz()
        target = PoseStamped()
        target.header.frame_id = "base"
        target.pose = copy.deepcopy(poses[-1].pose)

        def send(goal, beat: bool) -> None:
            target.pose.position.x, target.pose.position.y, target.pose.position.z = (float(v) for v in goal)
            target_pub.publish(target)
            if beat:
                status_pub.publish(SafetyStatus(level=0, reason="ok", source="safety_gate"))

        goal = start + [0.0, 0.08, 0.0]
        assert wait_for(lambda: send(goal, True) or np.linalg.norm(xyz() - goal) < 0.02, 30, period=0.1), xyz()
        held = xyz()  # now the gate stops beating, but targets keep coming (a stale publisher, say)
        goal2 = held + [0.0, -0.08, 0.0]
        assert wait_for(lambda: send(goal2, False) or "safety gate heartbeat lost: holding" in proc.output, 10,
                        period=0.1), proc.output[-2000:]
        held = xyz()  # (it may have moved a little before the 0.5 s timeout)
        wait_for(lambda: send(goal2, False) and False, 1.5, period=0.1)  # 1.5 s of targets without a heartbeat
        assert np.linalg.norm(xyz() - held) < 0.01, (xyz(), held)  # held, did not follow
        assert wait_for(lambda: send(goal2, True) or np.linalg.norm(xyz() - goal2) < 0.02, 30, period=0.1), \
            (xyz(), proc.output[-2000:])
        assert proc.wait_for_output("safety gate heartbeat back", 5), proc.output[-2000:]
