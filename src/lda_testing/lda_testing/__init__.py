"""Test-only fixtures of the LDA suite (declared as test_depend; never imported by runtime code).

- :mod:`.ros`: real rclpy nodes on loopback DDS in the test process, node processes, ``wait_for``;
- :mod:`.teleop`: synthetic teleoperation as serialized ROS 2 messages with known ground truth;
- :mod:`.datasets`: synthetic LeRobot datasets written through the recorder's episode writer;
- :mod:`.deploy`: robot config, scenes, a random-weight checkpoint with calibration, a synthetic robot.
"""
