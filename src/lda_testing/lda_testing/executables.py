"""Command lines of the suite's seven executables on the test fixtures, for the exit tests
(src/lda_bringup/test/test_node_exit.py) and the idle-CPU benchmark (benchmarks/node_cpu.py).

    model = deploy.cached_checkpoint(tmp / "model")     # test robot + random lda-tiny checkpoint
    with NodeProcess(model_host(model, tmp)) as proc: ...
"""

from __future__ import annotations

import os
from pathlib import Path

from ament_index_python.packages import get_package_prefix

from lda_testing import deploy, teleop

EXECUTABLES = ("model_host_node", "safety_gate_node", "teleop_recorder", "sim_node", "scripted_teleop_node",
               "evaluation_node", "dynamics_replay_node")


def exe(package: str, name: str) -> str:
    return os.path.join(get_package_prefix(package), "lib", package, name)


def _model_args(model: dict) -> list[str]:
    return ["-p", f"robot_config:={model['robot_config']}", "-p", f"checkpoint:={model['checkpoint']}",
            "-p", f"dino_path:={model['dino_path']}"]


def model_host(model: dict, tmp: Path) -> list[str]:
    params = deploy.write_params(tmp / "host.yaml", {"torch_threads": 1, "require_calibration": False})
    return [exe("lda_policy", "model_host_node"), "--ros-args", "--params-file", str(params), *_model_args(model)]


def safety_gate(model: dict, tmp: Path) -> list[str]:
    limits = deploy.write_params(tmp / "limits.yaml", {"workspace_min": [-2.0, -2.0, -2.0],
                                                       "workspace_max": [2.0, 2.0, 2.0]})
    return [exe("lda_policy", "safety_gate_node"), "--ros-args", "--params-file", str(limits),
            "-p", f"robot_config:={model['robot_config']}"]


def recorder(tmp: Path, ns: str, robot_config: Path | None = None) -> list[str]:
    """The recorder as ``<ns>/rec`` (services ``<ns>/rec/start_episode``, ...) on the two-camera bimanual test
    robot, or on ``robot_config``."""
    robot = robot_config or teleop.write_robot(tmp / "robot.yaml")
    return [exe("lda_teleop_record", "teleop_recorder"), "--ros-args", "-r", f"__ns:={ns}", "-r", "__node:=rec",
            "-p", f"robot_config:={robot}", "-p", f"dataset:={tmp / 'dataset'}"]


def sim(ns: str, realtime: bool = False) -> list[str]:
    return [exe("lda_sim", "sim_node"), "--ros-args", "-r", f"__ns:={ns}", "-p", "image_size:=32",
            "-p", f"realtime:={str(realtime).lower()}"]


def scripted_teleop(ns: str) -> list[str]:
    return [exe("lda_sim", "scripted_teleop_node"), "--ros-args", "-r", f"__ns:={ns}"]


def evaluation(ns: str) -> list[str]:
    return [exe("lda_sim", "evaluation_node"), "--ros-args", "-r", f"__ns:={ns}"]


def dynamics_replay(model: dict, tmp: Path, rate: float = 0.5, exit_when_done: bool = True) -> list[str]:
    bag = deploy.write_replay_bag(tmp / "episode", seconds=6.0)
    params = deploy.write_params(tmp / "replay.yaml", {"torch_threads": 1, "rate": rate,
                                                       "exit_when_done": exit_when_done})
    return [exe("lda_policy", "dynamics_replay_node"), "--ros-args", "--params-file", str(params), *_model_args(model),
            "-p", f"bag:={bag}", "-p", f"mcap_path:={tmp / 'replay_out'}"]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of ``pids`` so far [s] (from /proc; processes gone meanwhile count 0)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / tick
