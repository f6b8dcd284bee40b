"""scripted_teleop_node drives the sim and a recorder's services; launch/sim.launch.yaml runs the pair."""

import os
import sys
import time
from pathlib import Path

from ament_index_python.packages import get_package_prefix
from lda_bringup.testing import NodeProcess, ros_node

sys.path.insert(0, str(Path(__file__).parent))
from recorder_stub import RecorderStub  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
TELEOP = os.path.join(get_package_prefix("lda_sim"), "lib", "lda_sim", "scripted_teleop_node")


def test_launch_records_each_mode_with_its_quality_label_then_exits():
    with ros_node("recorder_stub") as node:
        recorder = RecorderStub(node)  # serves /teleop_recorder/{start,stop}_episode like the real recorder
        start = time.monotonic()
        cmd = ["lda-launch", str(REPO / "launch" / "sim.launch.yaml"), "robot:=panda_lift", "teleop:=true",
               "realtime:=false", "n_high:=1", "n_low:=1", "n_actionless:=1", "seed:=0"]
        with NodeProcess(cmd) as launch:
            rc = launch.wait(timeout=240)  # ends by itself: the teleop node is on_exit: shutdown
    assert rc == 0, launch.output
    task = "lift the red cube"
    assert recorder.calls == [("start", task), ("stop", "high"), ("start", task), ("stop", "low"),
                              ("start", task), ("stop", "actionless")], launch.output
    assert "3/3 episodes saved" in launch.output
    assert "episode 0 (high, seed 0) succeeded" in launch.output
    assert "reset with seed 2" in launch.output  # one sim reset per episode, seeded seed + index
    assert "sim_node stopped (code 0)" in launch.output
    print(f"3 teleop episodes through lda-launch in {time.monotonic() - start:.1f} s")


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
