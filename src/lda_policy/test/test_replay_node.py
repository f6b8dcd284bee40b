"""dynamics_replay_node through launch/replay.launch.yaml: a bag in, RViz topics and a Foxglove-ready MCAP out;
the replayed surprise jumps where the recording switches to another scene."""

from pathlib import Path

import numpy as np
from lda_testing.ros import NodeProcess, ros_node, wait_for
from sensor_msgs.msg import Image
from std_msgs.msg import Float32
from visualization_msgs.msg import MarkerArray

from lda_testing import deploy as T

REPO = Path(__file__).resolve().parents[3]
LAUNCH = REPO / "launch" / "replay.launch.yaml"
SWITCH_S = 3.0  # the recording shows scene A, then scene B from here on


def test_replayed_finger_actions_are_the_commands_where_the_robot_records_them(tmp_path):
    """read_episode (calibration, replay) derives the finger actions the way the recorder does."""
    import pytest
    from lda_policy.deploy.replay import ReplayError, read_episode
    from lda_policy.deploy.robot import RobotInterface

    robot = RobotInterface(T.write_robot_config(tmp_path / "robot.yaml",
                                                gripper_command_topic="/robot/right/gripper_command"))
    episode = read_episode(T.write_replay_bag(tmp_path / "ep", 2.0, commands=((0.27, 0.08), (1.02, 0.0))), robot)
    assert episode.valid.tolist() == [False] * 3 + [True] * 16 + [False]  # no command in force before 0.27 s
    assert np.allclose(episode.actions[3:10, 6], 0.08) and np.allclose(episode.actions[10:19, 6], 0.0)
    assert np.allclose(episode.actions[3:19, :3], robot.space.actions_from_states(
        np.stack([f.state for f in episode.frames]))[0][3:19, :3])  # the motion part is untouched
    with pytest.raises(ReplayError, match="lacks topic"):
        read_episode(T.write_replay_bag(tmp_path / "plain", 1.0), robot)


def test_replay_publishes_for_rviz_and_writes_mcap(tmp_path, tmp_path_factory):
    paths = T.cached_checkpoint(tmp_path_factory.getbasetemp() / "lda_deploy_model")
    bag = T.write_replay_bag(tmp_path / "episode")
    out = tmp_path / "replay_out"
    params = T.write_params(tmp_path / "replay.yaml", {"torch_threads": 1, "tile_px": 64})
    got = {"latents": [], "markers": [], "surprise": []}
    with ros_node("replay_viewer") as node:
        node.create_subscription(Image, "/lda/replay/latents", got["latents"].append, 10)
        node.create_subscription(MarkerArray, "/lda/replay/trajectories", got["markers"].append, 10)
        node.create_subscription(Float32, "/lda/replay/surprise", got["surprise"].append, 10)
        with NodeProcess(["lda-launch", str(LAUNCH), f"robot_config:={paths['robot_config']}", f"bag:={bag}",
                          f"checkpoint:={paths['checkpoint']}", f"dino_path:={paths['dino_path']}", "rate:=4",
                          f"mcap_path:={out}", f"replay_params:={params}"]) as run:
            rc = run.wait(timeout=180)
        assert rc == 0, run.output
        assert wait_for(lambda: got["surprise"], 2.0)
    assert "replayed 60 frames" in run.output, run.output
    img = got["latents"][-1]
    assert (img.width, img.height, img.encoding) == (4 * 64 + 3 * 4, 64, "rgb8")
    strips = [m for a in got["markers"] for m in a.markers if m.ns == "right/recorded_path"]
    assert strips and len(strips[-1].points) > 40  # the EEF path grows while the bag plays

    # The MCAP holds every replay topic with its schema (rosbags reads the definitions from the file).
    from rosbags.highlevel import AnyReader

    mcaps = list(out.glob("*.mcap"))
    assert len(mcaps) == 1
    with AnyReader([out]) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        assert set(counts) == {"/lda/replay/camera", "/lda/replay/latents", "/lda/replay/trajectories",
                               "/lda/replay/surprise", "/lda/replay/distance"}
        assert counts["/lda/replay/camera"] == 60
        surprise = [(ts * 1e-9, reader.deserialize(raw, c.msgtype).data)
                    for c, ts, raw in reader.messages(connections=[c for c in reader.connections
                                                                   if c.topic == "/lda/replay/surprise"])]
        first = next(reader.messages(connections=[c for c in reader.connections if c.topic == "/lda/replay/latents"]))
        assert reader.deserialize(first[2], first[0].msgtype).width == 4 * 64 + 3 * 4
    before = [s for t, s in surprise if t - 1000.0 < SWITCH_S]
    after = [s for t, s in surprise if t - 1000.0 >= SWITCH_S + 0.5]  # predictions made from scene B
    assert before and after and np.isfinite(before + after).all()
    assert min(after) > max(before) + 10.0, (before, after)  # surprise over time shows the switch
