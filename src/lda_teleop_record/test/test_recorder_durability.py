"""The recorder process under SIGKILL, a full disk, Ctrl-C and bad start-up parameters; the launch file."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lda_common.schema import read_episode_labels
from lda_testing.processes import run_tree
from lda_testing.ros import NodeProcess, ros_node, wait_for
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from lda_msgs.srv import StartEpisode

sys.path.insert(0, str(Path(__file__).parent))
from ros_helpers import EXE, Teleop, recorder_cmd  # noqa: E402

from lda_testing import teleop as syn  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
UID = time.monotonic_ns() % 100000


def _staging(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("tmp"))


def test_sigkill_mid_episode_keeps_saved_episodes_and_restart_appends(tmp_path):
    robot = syn.write_robot(tmp_path / "test_bimanual.yaml")
    dataset, bags = tmp_path / "dataset", tmp_path / "bags"
    name = f"rec_kill_{UID}"
    with NodeProcess(recorder_cmd(name, robot, dataset, write_bag=True, bag_dir=bags)) as proc:
        assert proc.wait_for_output("recorder ready", timeout=60), proc.output
        with ros_node(f"teleop_{name}") as node:
            teleop = Teleop(node, name, syn.TOPICS)
            for quality in ("high", "low"):
                assert teleop.start("fold the towel").success
                teleop.play(syn.Plan(duration_s=1.0))
                assert teleop.stop(quality).success
            started = teleop.start("never saved")
            assert started.success and started.episode_index == 2
            teleop.play(syn.Plan(duration_s=3.0), stop_after_s=1.5)
            assert wait_for(lambda: int(teleop.diag.get("frames", 0)) >= 5, timeout=10), teleop.diag
            proc.proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=15) == -signal.SIGKILL
    assert _staging(dataset), "the killed episode should have left encoder files behind"
    assert [p.name for p in bags.iterdir() if p.name.startswith(".partial-")]
    ds = LeRobotDataset("t/kill", root=dataset)  # every saved episode readable, the partial one absent
    assert ds.num_episodes == 2 and len(ds) == 20
    assert [e["quality"] for e in read_episode_labels(dataset)] == ["high", "low"]
    assert {ds[i]["episode_index"].item() for i in range(len(ds))} == {0, 1}

    name2 = f"rec_restart_{UID}"
    with NodeProcess(recorder_cmd(name2, robot, dataset, write_bag=True, bag_dir=bags)) as proc:
        assert proc.wait_for_output("recorder ready", timeout=60), proc.output
        assert "recovery: removed 2 staging directories of an unsaved episode" in proc.output
        assert "with 2 episode(s)" in proc.output
        with ros_node(f"teleop_{name2}") as node:
            teleop = Teleop(node, name2, syn.TOPICS)
            started = teleop.start("fold the towel again")
            assert started.success and started.episode_index == 2
            teleop.play(syn.Plan(duration_s=1.0))
            saved = teleop.stop("high")
            assert saved.success and saved.episode_index == 2, saved.message
    assert not _staging(dataset)
    assert sorted(p.name for p in bags.iterdir()) == ["episode_000000", "episode_000001", "episode_000002"]
    ds = LeRobotDataset("t/kill", root=dataset, delta_timestamps={"action": [0.0, 0.1]})
    assert ds.num_episodes == 3 and len(ds) == 30
    assert [e["task"] for e in read_episode_labels(dataset)][2] == "fold the towel again"
    assert ds[25]["task"] == "fold the towel again" and ds[25]["episode_index"].item() == 2


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_fails_the_episode_not_the_recorder(tmp_path, small_disk):
    robot = syn.write_robot(tmp_path / "test_bimanual.yaml")
    dataset = small_disk / "dataset"
    name = f"rec_disk_{UID}"
    with NodeProcess(recorder_cmd(name, robot, dataset, min_free_disk_mb=0.0)) as proc:
        assert proc.wait_for_output("recorder ready", timeout=60), proc.output
        with ros_node(f"teleop_{name}") as node:
            teleop = Teleop(node, name, syn.TOPICS)
            assert teleop.start("first").success
            teleop.play(syn.Plan(duration_s=1.0))
            assert teleop.stop("high").episode_index == 0
            filler = small_disk / "filler"
            with open(filler, "wb", buffering=0) as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                except OSError:
                    pass
            assert teleop.start("on a full disk").success
            teleop.play(syn.Plan(duration_s=1.0))
            failed = teleop.stop("high")
            assert not failed.success and failed.episode_index == -1
            assert "episode 1 not saved" in failed.message and "No space left on device" in failed.message
            assert LeRobotDataset("t/disk", root=dataset).num_episodes == 1  # nothing saved was lost
            filler.unlink()
            assert teleop.start("after cleaning up").success
            teleop.play(syn.Plan(duration_s=1.0))
            saved = teleop.stop("low")
            assert saved.success and saved.episode_index == 1, saved.message
    ds = LeRobotDataset("t/disk", root=dataset)
    assert ds.num_episodes == 2 and [e["task"] for e in read_episode_labels(dataset)] == ["first", "after cleaning up"]


def test_launch_file_runs_and_ctrl_c_discards_the_open_episode(tmp_path):
    dataset = tmp_path / "sim"
    with NodeProcess(["lda-launch", str(REPO / "launch" / "record.launch.yaml"), "robot:=sim_panda",
                      f"dataset:={dataset}"]) as run:
        assert run.wait_for_output("recorder ready", timeout=60), run.output
        with ros_node(f"launch_probe_{UID}") as node:
            client = node.create_client(StartEpisode, "/teleop_recorder/start_episode")
            assert client.wait_for_service(timeout_sec=20)
            future = client.call_async(StartEpisode.Request(task="lift the cube"))
            assert wait_for(future.done, 30) and future.result().success, future.result()
        rc = run.stop(signal.SIGINT, timeout=30)
    assert rc == 0, run.output
    assert "shutting down while recording: episode 0 discarded" in run.output
    emb = json.loads((dataset / "meta" / "lda_embodiment.json").read_text())
    assert emb["embodiment"] == "sim_panda" and emb["cameras"]["head"]["height"] == 96
    assert json.loads((dataset / "meta" / "info.json").read_text())["total_episodes"] == 0
    assert not _staging(dataset)


def test_bad_startup_parameters_exit_with_a_clear_message(tmp_path):
    robot = syn.write_robot(tmp_path / "test_bimanual.yaml")
    cases = [
        ([str(EXE), "--ros-args", "-p", f"dataset:={tmp_path / 'd'}"], "parameter 'robot_config' is required"),
        ([str(EXE), "--ros-args", "-p", f"robot_config:={tmp_path / 'none.yaml'}", "-p", f"dataset:={tmp_path}/d"],
         "robot config not found"),
        (recorder_cmd("rec_bad", robot, tmp_path / "d", video_codec="mpeg1"), "video codec 'mpeg1' cannot be used"),
        (recorder_cmd("rec_bad", robot, tmp_path / "d", min_free_disk_mb=-5.0), "parameter 'min_free_disk_mb'"),
    ]
    for cmd, message in cases:
        result = run_tree(cmd, timeout=60)
        assert result.returncode == 2, (cmd, result.stdout, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
