"""The suite's own topic and service names, in one place (QoS and message types: docs/reference/topics-and-qos.md).

Robot-side topics (cameras, EEF poses, fingers, targets) come from the robot config and node parameters.
"""

# Deployment: the policy proposes, the safety monitor approves (or refuses) and reports.
PROPOSED_CHUNK = "/lda/proposed_chunk"  # lda_msgs/ActionChunk, policy -> monitor
ACTION_CHUNK = "/lda/action_chunk"  # lda_msgs/ActionChunk, approved chunks, monitor -> policy
SAFETY_STATUS = "/lda/safety_status"  # lda_msgs/SafetyStatus, the monitor's heartbeat and verdict
SAFETY_RESET = "/lda/safety_reset"  # std_srvs/Trigger, clears a latched STOP

# The task, as an operator (or the evaluation node) states it; transient-local.
INSTRUCTION = "/lda/instruction"  # std_msgs/String

# Recording: episode start/stop events, also written into bags for lda-bag2lerobot.
EPISODE_EVENTS = "/lda/episode_events"  # std_msgs/String (JSON)

# Dynamics replay (RViz / Foxglove).
REPLAY_CAMERA = "/lda/replay/camera"  # sensor_msgs/Image
REPLAY_LATENTS = "/lda/replay/latents"  # sensor_msgs/Image
REPLAY_TRAJECTORIES = "/lda/replay/trajectories"  # visualization_msgs/MarkerArray
REPLAY_SURPRISE = "/lda/replay/surprise"  # std_msgs/Float32
REPLAY_DISTANCE = "/lda/replay/distance"  # std_msgs/Float32
