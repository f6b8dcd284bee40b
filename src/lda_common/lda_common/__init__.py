"""The ROS-free ground floor of the LDA suite, shared by the recorder, training and deployment.

- :mod:`.robot_config`: the robot description (``config/robots/*.yaml``) and its loader;
- :mod:`.action_space`: the hand-centric action space (state/action layout and the maps between them);
- :mod:`.geometry`: pose helpers (canonical EEF frame, pose deltas, hand states, interpolation);
- :mod:`.messages`: the suite's topic names (``Topics``) and ROS message <-> NumPy decoding (images,
  compressed images, poses, joint states);
- :mod:`.alignment`: stamped-sample alignment (:class:`FrameSync`) and held commands (:class:`CommandLog`);
- :mod:`.bag_io`: rosbag2 reading and writing (``rosbags``, MCAP and sqlite3);
- :mod:`.schema`: the recorded dataset's schema and LDA sidecar files, and ``Quality``, the one quality
  vocabulary (``high``, ``low``, ``actionless``);
- :mod:`.config`: the one configuration mechanism (dataclasses validated by pydantic).

Nothing here imports rclpy; message classes are looked up only when a message is decoded.
"""
