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


def test_a_missing_sim_gives_a_clear_error():
    cmd = [TELEOP, "--ros-args", "-r", f"__ns:=/nosim{os.getpid()}", "-p", "startup_timeout_s:=1.0"]
    with NodeProcess(cmd) as teleop:
        rc = teleop.wait(timeout=60)
    assert rc == 1, teleop.output
    assert "no observation from the sim within 1 s of start-up" in teleop.output
    assert "Traceback" not in teleop.output


def test_teleop_waits_for_a_sim_and_recorder_that_start_late(tmp_path):
    """A cold machine: the sim and the recorder come up long after the operator, later than any answer
    timeout. The operator waits on their readiness, saying what it waits for, then records."""
    sim_time = ["-p", "use_sim_time:=true"]
    sim = [os.path.join(get_package_prefix("lda_sim"), "lib", "lda_sim", "sim_node"), "--ros-args", "-p",
           "realtime:=false"]
    recorder = [os.path.join(get_package_prefix("lda_teleop_record"), "lib", "lda_teleop_record", "teleop_recorder"),
                "--ros-args", *sim_time, "-p", f"robot_config:={REPO / 'config' / 'robots' / 'sim_panda.yaml'}",
                "-p", f"dataset:={tmp_path / 'ds'}"]
    teleop = [TELEOP, "--ros-args", *sim_time, "-p", "n_high:=1", "-p", "n_low:=0", "-p", "n_actionless:=0",
              "-p", "max_steps:=15", "-p", "service_timeout_s:=2.0"]
    with NodeProcess(teleop) as operator:
        assert operator.wait_for_output("waiting for the simulator's first observation", 30), operator.output
        with NodeProcess(sim), NodeProcess(recorder) as rec:
            rc = operator.wait(timeout=240)
    assert rc == 0, operator.output + "\n--- recorder\n" + rec.output[-3000:]
    assert "1/1 episodes saved" in operator.output


def test_bad_parameters_exit_with_code_2():
    cmd = [TELEOP, "--ros-args", "-p", "n_high:=0", "-p", "n_low:=0", "-p", "n_actionless:=0",
           "-p", "failed_high_as:=maybe"]
    with NodeProcess(cmd) as teleop:
        rc = teleop.wait(timeout=60)
    assert rc == 2, teleop.output
    assert "no episodes asked for" in teleop.output and "failed_high_as must be" in teleop.output
