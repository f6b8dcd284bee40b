"""The humanoid path through the same launch files as the Panda: the simulated GR-1 (two arms, two six-joint
Fourier hands) recorded with ``robot:=gr1_humanoid``, and the policy node driving both of its hands."""

import json
import os
import threading
from pathlib import Path

import numpy as np
from lda_common.robot_config import load_robot_config
from lda_common.schema import read_episode_labels
from lda_sim.sim_core import finger_targets_for_width
from lda_testing.deploy import make_checkpoint, write_params
from lda_testing.ros import NodeProcess, ros_node
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from rclpy.qos import qos_profile_sensor_data

REPO = Path(__file__).resolve().parents[3]
ROBOT_CONFIG = REPO / "config" / "robots" / "gr1_humanoid.yaml"
GR1 = ["robot:=gr1_humanoid", "sim_robot:=gr1_pickplace"]


def _columns(names: list[str], prefix: str) -> list[int]:
    return [i for i, n in enumerate(names) if n.startswith(prefix)]


def test_gr1_recording_holds_both_hands_blocks(tmp_path):
    dataset = tmp_path / "dataset"
    cmd = ["lda-launch", str(REPO / "launch" / "sim_record.launch.yaml"), *GR1, f"dataset:={dataset}",
           "n_high:=1", "n_low:=0", "n_actionless:=1", "seed:=0"]
    with NodeProcess(cmd) as launch:
        rc = launch.wait(timeout=420)
    assert rc == 0, launch.output[-4000:]
    assert "2/2 episodes saved" in launch.output, launch.output[-4000:]
    labels = read_episode_labels(dataset)
    assert [e["quality"] for e in labels][1] == "actionless"

    config = load_robot_config(ROBOT_CONFIG)
    ds = LeRobotDataset("lda/gr1_humanoid", root=dataset)
    state_names = ds.meta.features["observation.state"]["names"]
    action_names = ds.meta.features["action"]["names"]
    assert state_names == config.state_names and action_names == config.action_names  # left block, then right
    assert len(state_names) == 26 and len(action_names) == 24
    assert tuple(ds[0]["observation.images.head"].shape) == (3, 224, 224)

    episode = np.asarray(ds.hf_dataset["episode_index"]).reshape(-1)
    state = np.stack(ds.hf_dataset["observation.state"])[episode == 0]
    action = np.stack(ds.hf_dataset["action"])[episode == 0]
    valid = np.asarray(ds.hf_dataset["action_valid"]).reshape(-1)[episode == 0]
    right_xyz = state[:, [state_names.index(f"right/{c}") for c in "xyz"]]
    left_xyz = state[:, [state_names.index(f"left/{c}") for c in "xyz"]]
    assert np.ptp(right_xyz, axis=0).max() > 0.05  # the right hand reached for the can ...
    assert np.ptp(left_xyz, axis=0).max() < 0.03  # ... while the left one held still
    right_fingers_s = _columns(state_names, "right/R_")
    right_fingers_a = _columns(action_names, "right/R_")
    assert len(right_fingers_s) == 6 and np.ptp(state[:, right_fingers_s], axis=0).max() > 0.3  # the hand closed
    # Hand-centric actions: the finger values are the joint targets the operator commanded (open, closing,
    # closed), not the joints measured a frame later: the can stops the fingers short of a closed hand.
    rows = np.flatnonzero(valid[:-1])
    assert rows.size > 10
    commanded = action[rows][:, right_fingers_a]
    np.testing.assert_allclose(commanded[0], finger_targets_for_width("gr1_pickplace", "right", 0.065), atol=1e-6)
    closed = finger_targets_for_width("gr1_pickplace", "right", 0.0)
    assert np.isclose(commanded, closed, atol=1e-6).all(axis=1).sum() > 5  # the hand was told to close ...
    measured = state[rows + 1][:, right_fingers_s]
    assert (closed - measured.max(axis=0)).max() > 0.2  # ... and the can stopped at least one finger short of it
    left_fingers_a = _columns(action_names, "left/L_")
    np.testing.assert_allclose(action[rows][:, left_fingers_a], 0.0, atol=1e-6)  # the idle hand told to stay open
    assert np.abs(action[rows][:, _columns(action_names, "right/d")]).max() > 0.005  # the arm's own motion


def test_policy_node_moves_both_gr1_hands_in_the_simulator(tmp_path):
    paths = make_checkpoint(tmp_path, ROBOT_CONFIG, calibrate=False, instruction="pick up the can")
    # Random weights, no calibration: the judge would only measure noise, so it must not stop the run.
    host = write_params(tmp_path / "host.yaml", {"require_calibration": False, "warn_surprise": 1e9,
                                                 "stop_surprise": 1e9, "torch_threads": 1})
    results = tmp_path / "eval.json"
    cmd = ["lda-launch", str(REPO / "launch" / "sim_demo.launch.yaml"), *GR1, f"checkpoint:={paths['checkpoint']}",
           f"dino_path:={paths['dino_path']}", f"host_params:={host}", "episodes:=1", "max_steps:=30",
           "real_time_factor:=0.3", "instruction:=pick up the can", "label:=random", f"results_path:={results}"]
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import JointState

    seen: dict[str, list] = {"left": [], "right": [], "left_f": [], "right_f": []}
    lock = threading.Lock()

    def keep(key, value):
        with lock:
            seen[key].append(value)

    with ros_node(f"gr1_probe_{os.getpid()}") as node:
        for hand in ("left", "right"):
            node.create_subscription(PoseStamped, f"/robot/{hand}/eef_pose", lambda m, h=hand: keep(
                h, (m.pose.position.x, m.pose.position.y, m.pose.position.z)), qos_profile_sensor_data)
            node.create_subscription(JointState, f"/robot/{hand}/gripper_state", lambda m, h=hand: keep(
                f"{h}_f", list(m.position[1:])), qos_profile_sensor_data)
        with NodeProcess(cmd) as launch:
            rc = launch.wait(timeout=400)
    assert rc == 0, launch.output[-4000:]
    summary = json.loads(results.read_text())
    assert summary["episodes"] == 1 and summary["per_episode"][0]["stop_statuses"] == 0, launch.output[-4000:]
    with lock:
        for hand in ("left", "right"):
            path = np.asarray(seen[hand])
            assert len(path) > 20, f"{hand}: {len(path)} poses heard"
            # Nothing else commands the hands: whatever they travel is the policy's chunks, executed by the gate.
            travelled = np.linalg.norm(np.diff(path, axis=0), axis=1).sum()
            assert travelled > 0.01, f"{hand} hand moved {travelled:.4f} m"
            fingers = np.asarray(seen[f"{hand}_f"])
            assert fingers.shape[1] == 6 and np.abs(fingers[-1] - fingers[0]).max() > 0.01
