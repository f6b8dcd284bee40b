"""Deployment core of the LDA suite, ROS-free (the nodes' ROS helpers are in :mod:`lda_policy.ros_io`).

- :mod:`.runtime`: the checkpoint and its encoders (``ModelRuntime``);
- :mod:`.observations`: lazily encoded camera frames (``FrameLatents``), timestamped hand states
  (``HandStateBuffer``);
- :mod:`.robot`: the robot config and hand-centric action space of ``lda_common``;
- :mod:`.policy`: observations -> proposed chunks, approved chunks -> target plans (``PolicyCore``);
- :mod:`.chunk_executor`: smooth execution of approved chunks, latency compensation, hold-still;
- :mod:`.safety`: hard limits, surprise calibration, the latching OK/WARN/STOP state;
- :mod:`.monitor`: the forward-dynamics safety monitor (``SafetyMonitorCore``);
- :mod:`.replay`: bags through forward dynamics, pictures, surprise calibration (``calibrate_safety``).
"""
