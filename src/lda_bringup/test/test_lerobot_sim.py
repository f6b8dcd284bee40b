"""A LeRobot policy in the simulator's closed loop (issue #30 item 3): launch/sim_demo.launch.yaml with
backend:=lerobot and a tiny random-weight ACT checkpoint for config/robots/sim_panda.yaml. The evaluation node
scores its episodes as for LDA; the chunks run through the safety gate (no STOP) and move the arm."""

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from lda_testing.ros import NodeProcess, ros_node
from rclpy.qos import qos_profile_sensor_data

pytest.importorskip("lerobot")

REPO = Path(__file__).resolve().parents[3]


def test_lerobot_act_runs_the_simulated_episodes_behind_the_gate(tmp_path):
    from geometry_msgs.msg import PoseStamped
    from lda_testing.lerobot_policies import write_tiny_act_checkpoint

    ckpt = write_tiny_act_checkpoint(tmp_path / "act", REPO / "config" / "robots" / "sim_panda.yaml")
    results = tmp_path / "eval.json"
    cmd = ["lda-launch", str(REPO / "launch" / "sim_demo.launch.yaml"), "backend:=lerobot", f"checkpoint:={ckpt}",
           "episodes:=1", "max_steps:=30", "label:=lerobot_act", f"results_path:={results}"]
    poses: list[tuple[float, float, float]] = []
    lock = threading.Lock()

    def keep(msg) -> None:
        with lock:
            poses.append((msg.pose.position.x, msg.pose.position.y, msg.pose.position.z))

    with ros_node(f"lerobot_sim_probe_{os.getpid()}") as node:
        node.create_subscription(PoseStamped, "/robot/right/eef_pose", keep, qos_profile_sensor_data)
        with NodeProcess(cmd) as launch:
            rc = launch.wait(timeout=300)
    assert rc == 0, launch.output[-4000:]
    assert "LeRobot act checkpoint" in launch.output and "no forward-dynamics judge for LeRobot" in launch.output
    summary = json.loads(results.read_text())
    assert summary["label"] == "lerobot_act" and summary["episodes"] == 1, summary
    episode = summary["per_episode"][0]
    assert episode["steps"] == 30 and episode["stop_statuses"] == 0, launch.output[-4000:]
    with lock:
        path = np.asarray(poses)
    assert len(path) > 20, f"{len(path)} poses heard"
    # nothing else commands the arm: whatever it travels is the policy's chunks, executed by the gate
    assert np.linalg.norm(np.diff(path, axis=0), axis=1).sum() > 1e-3, path[[0, -1]]
