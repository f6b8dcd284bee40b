"""Peer process for test_interfaces.py: publishes every lda_msgs message and serves every service.

Run as a separate process so the messages cross a process boundary over DDS.
"""

import rclpy
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from lda_msgs.msg import ActionChunk, SafetyStatus
from lda_msgs.srv import ResetSim, StartEpisode, StopEpisode

LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def sample_chunk() -> ActionChunk:
    msg = ActionChunk(embodiment="gr1_humanoid", horizon=16, action_dim=14, dt=0.1, sequence=2**40 + 7)
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1_700_000_000, 123_456_789
    msg.header.frame_id = "right_eef_canonical"
    msg.dimension_names = [f"{hand}/{c}" for hand in ("left", "right")
                           for c in ("dx", "dy", "dz", "drx", "dry", "drz", "gripper")]
    msg.actions = [0.001 * i - 0.1 for i in range(16 * 14)]
    msg.inference_time = 0.0421
    return msg


def sample_status() -> SafetyStatus:
    msg = SafetyStatus(level=SafetyStatus.STOP, surprise=4.25, threshold=3.0,
                       reason="surprise 4.25 > 3.00", chunk_sequence=99)
    msg.header.stamp.sec = 42
    return msg


class Peer(Node):
    def __init__(self):
        super().__init__("interface_peer")
        self.create_publisher(ActionChunk, "peer/chunk", LATCHED).publish(sample_chunk())
        self.create_publisher(SafetyStatus, "peer/status", LATCHED).publish(sample_status())
        self.create_service(StartEpisode, "peer/start_episode", self.on_start)
        self.create_service(StopEpisode, "peer/stop_episode", self.on_stop)
        self.create_service(ResetSim, "peer/reset", self.on_reset)
        self.get_logger().info("peer ready")

    def on_start(self, request, response):
        response.success = bool(request.task)
        response.episode_index = 5
        response.message = f"recording '{request.task}'"
        return response

    def on_stop(self, request, response):
        response.success = request.quality in ("high", "low", "actionless") or request.discard
        response.episode_index = -1 if request.discard else 5
        response.message = "discarded" if request.discard else f"saved as {request.quality}"
        return response


    def on_reset(self, request, response):
        response.success = request.seed >= 0
        response.message = f"reset with seed {request.seed}"
        return response


def main():
    rclpy.init()
    node = Peer()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
