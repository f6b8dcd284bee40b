"""scripted_teleop_node drives the sim and the real recorder; launch/sim_record.launch.yaml runs the three."""

import os
from pathlib import Path

import numpy as np
from ament_index_python.packages import get_package_prefix
from lda_common.schema import read_episode_labels
from lda_testing.ros import NodeProcess
from lerobot.datasets.lerobot_dataset import LeRobotDataset

REPO = Path(__file__).resolve().parents[3]
TELEOP = os.path.join(get_package_prefix("lda_sim"), "lib", "lda_sim", "scripted_teleop_node")


def test_launch_records_each_mode_with_its_quality_label_then_exits(tmp_path):
    dataset = tmp_path / "dataset"
    cmd = ["lda-launch", str(REPO / "launch" / "sim_record.launch.yaml"), f"dataset:={dataset}",
           "n_high:=1", "n_low:=1", "n_actionless:=1", "seed:=0"]
    with NodeProcess(cmd) as launch:
        rc = launch.wait(timeout=240)  # ends by itself: the teleop node is on_exit: shutdown
    assert rc == 0, launch.output
    assert "3/3 episodes saved" in launch.output
    assert "reset with seed 2" in launch.output  # one sim reset per episode, seeded seed + index
    # The operator's own verdicts decide the labels (a failed expert episode is saved as low).
    expected = ["high" if "episode 0 (high, seed 0) succeeded" in launch.output else "low", "low", "actionless"]
    labels = read_episode_labels(dataset)
    assert [e["quality"] for e in labels] == expected
    assert all(e["task"] == "lift the red cube" for e in labels)
    assert (tmp_path / "dataset_bags" / "episode_000002").is_dir()  # the raw topics, one MCAP per episode

    ds = LeRobotDataset("lda/sim_panda", root=dataset)
    assert ds.num_episodes == 3
    quality = np.asarray(ds.hf_dataset["quality"]).reshape(-1)
    valid = np.asarray(ds.hf_dataset["action_valid"]).reshape(-1)
    episode = np.asarray(ds.hf_dataset["episode_index"]).reshape(-1)
    assert not valid[episode == 2].any()  # actionless: video and state, no actions invented
    assert valid[episode == 0].any() and (quality[episode == 2] == 2).all()
    assert tuple(ds[0]["observation.images.head"].shape) == (3, 96, 96)


def test_missing_services_give_a_clear_error():
    cmd = [TELEOP, "--ros-args", "-r", f"__ns:=/nosim{os.getpid()}", "-p", "service_timeout_s:=1.0"]
    with NodeProcess(cmd) as teleop:
        rc = teleop.wait(timeout=60)
    assert rc == 1, teleop.output
    assert f"service /nosim{os.getpid()}/sim/reset (reset the sim) not available after 1 s" in teleop.output
    assert "Traceback" not in teleop.output


def test_bad_parameters_exit_with_code_2():
    cmd = [TELEOP, "--ros-args", "-p", "n_high:=0", "-p", "n_low:=0", "-p", "n_actionless:=0",
           "-p", "failed_high_as:=maybe"]
    with NodeProcess(cmd) as teleop:
        rc = teleop.wait(timeout=60)
    assert rc == 2, teleop.output
    assert "no episodes asked for" in teleop.output and "failed_high_as must be" in teleop.output
