"""Deployment core of the LDA suite, ROS-free (the nodes' ROS helpers are in :mod:`lda_policy.ros_io`).

Two processes use it: the model host (policy + forward-dynamics judge on one runtime) and the safety
gate (no torch, no model; the only path to the robot). The gate's modules - :mod:`.chunks`,
:mod:`.hand_states`, :mod:`.robot`, :mod:`.chunk_executor`, :mod:`.safety`, :mod:`.gate` - never import
torch.

- :mod:`.chunks`: proposed chunks (``ProposedChunk``), the digest that binds an approval to its
  proposal (``chunk_digest``), per-hand target plans (``ChunkPlan``);
- :mod:`.hand_states`: timestamped EEF poses, finger states and sent finger commands (``HandStateBuffer``);
- :mod:`.observations`: camera frames, each DINO-encoded at most once (``FrameLatents``);
- :mod:`.runtime`: the checkpoint and its encoders (``ModelRuntime``), one per model host;
- :mod:`.robot`: the robot config and hand-centric action space of ``lda_common`` (``RobotInterface``);
- :mod:`.policy`: observations -> proposed chunks (``PolicyCore``);
- :mod:`.lerobot_policy`: a LeRobot ``PreTrainedPolicy`` checkpoint as the host's policy (``LeRobotPolicyCore``,
  backend ``lerobot``; no judge);
- :mod:`.judge`: forward dynamics of each proposal, surprise of the approved ones (``ForwardDynamicsJudge``);
- :mod:`.host`: the policy and the judge on one runtime, faults and heartbeats (``ModelHost``);
- :mod:`.chunk_executor`: smooth execution of approved chunks, latency compensation, hold-still;
- :mod:`.safety`: hard limits and their sanity bounds, chunk and command checks, surprise calibration;
- :mod:`.gate`: the safety gate: approval, heartbeat watchdog, command re-check, the latch (``SafetyGateCore``);
- :mod:`.replay`: bags through forward dynamics, pictures, surprise calibration (``calibrate_safety``).
"""
