"""Two tiny nodes that check a machine's ROS 2 set-up end to end (launch/selftest.launch.yaml).

``selftest_talker`` publishes an ``lda_msgs/ActionChunk`` at ``rate_hz`` with an increasing sequence;
``selftest_listener`` exits 0 once it has received ``count`` intact chunks, or 1 after ``timeout_s``.
"""

import sys

import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from lda_msgs.msg import ActionChunk

_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
HORIZON, ACTION_DIM = 16, 7


def expected_actions(sequence: int) -> list[float]:
    """Deterministic payload, so the listener can tell an intact chunk from a corrupted one."""
    return [float(sequence + i) for i in range(HORIZON * ACTION_DIM)]


class SelftestTalker(Node):
    def __init__(self):
        super().__init__("selftest_talker")
        rate = self.declare_parameter("rate_hz", 10.0).value
        self._pub = self.create_publisher(ActionChunk, "selftest/chunk", _QOS)
        self._sequence = 0
        self.create_timer(1.0 / rate, self._tick)

    def _tick(self):
        msg = ActionChunk(embodiment="selftest", horizon=HORIZON, action_dim=ACTION_DIM, dt=0.1)
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.dimension_names = [f"d{j}" for j in range(ACTION_DIM)]
        msg.actions = expected_actions(self._sequence)
        msg.sequence = self._sequence
        self._pub.publish(msg)
        self._sequence += 1


class SelftestListener(Node):
    def __init__(self):
        super().__init__("selftest_listener")
        self.count = self.declare_parameter("count", 5).value
        self.timeout_s = self.declare_parameter("timeout_s", 20.0).value
        self.received = 0
        self.create_subscription(ActionChunk, "selftest/chunk", self._on_chunk, _QOS)

    def _on_chunk(self, msg: ActionChunk):
        intact = list(msg.actions) == expected_actions(msg.sequence) and msg.horizon == HORIZON
        if not intact:
            self.get_logger().error(f"chunk {msg.sequence} arrived corrupted")
            return
        self.received += 1


def talker_main(args=None):
    rclpy.init(args=args)
    node = SelftestTalker()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def listener_main(args=None):
    rclpy.init(args=args)
    node = SelftestListener()
    start = node.get_clock().now()
    ok = False
    try:
        while rclpy.ok():
            rclpy.spin_once(node, timeout_sec=0.1)
            if node.received >= node.count:
                node.get_logger().info(f"received {node.received} intact chunks: ROS 2 set-up OK")
                ok = True
                break
            if (node.get_clock().now() - start).nanoseconds * 1e-9 > node.timeout_s:
                node.get_logger().error(f"only {node.received}/{node.count} chunks in {node.timeout_s} s")
                break
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    sys.exit(0 if ok else 1)
