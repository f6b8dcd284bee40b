"""Faults inside the model host latch STOP at the gate through the real path: a checkpoint whose (finite)
weights make the policy emit inf/NaN, a DINOv3 whose weights give NaN latents, judge lag, and an exception in
the judge. Each runs the real model host and the real gate process around the synthetic robot."""

import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from lda_testing.deploy import attach, first_stop, launch_command
from lda_testing.ros import NodeProcess, ros_node, wait_for
from safetensors.torch import load_file, save_file

from lda_testing import deploy as T

REPO = Path(__file__).resolve().parents[3]
LAUNCH = REPO / "launch" / "policy.launch.yaml"
HUGE = 3e38  # finite, but any sum of a few such products overflows float32


def overflowing_copy(src: Path, dst: Path, file_glob: str, key: str) -> Path:
    """A copy of a checkpoint directory whose tensor ``key`` is set to a huge finite value."""
    shutil.copytree(src, dst)
    file = next(dst.glob(file_glob))
    tensors = load_file(file)
    tensors[key] = torch.full_like(tensors[key], HUGE)
    save_file(tensors, file, metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return T.cached_checkpoint(tmp_path_factory.getbasetemp() / "lda_deploy_model")


def run_until_stop(paths: dict, d: Path, host: dict | None = None, timeout: float = 90.0):
    """Launch host + gate with ``paths`` and return the gate's first STOP (and the launch output)."""
    with NodeProcess(launch_command(LAUNCH, paths, d, host)) as proc, ros_node("synthetic_robot") as node:
        robot = T.SyntheticRobot(node, paths["robot_config"])
        attach(robot, node)
        try:
            assert wait_for(lambda: robot.since(robot.statuses, 0), 120), proc.output[-3000:]
            stop = first_stop(robot, 0.0, timeout)
            time.sleep(0.5)
            held = robot.targets_since(robot.now() - 0.4)
        finally:
            robot.stop()
        return stop, held, proc.output


def test_checkpoint_whose_policy_emits_inf_latches_stop(paths, tmp_path):
    bad = overflowing_copy(paths["checkpoint"], tmp_path / "ckpt", "*.safetensors", "action_decoder.weight")
    stop, held, output = run_until_stop({**paths, "checkpoint": bad}, tmp_path)
    assert stop is not None, output[-3000:]
    assert "model_host" in stop.reason and "policy produced NaN/inf in the actions of chunk" in stop.reason, stop
    assert "refused chunk" not in output  # the host never proposed it: the gate saw no chunk to refuse


def test_dino_that_gives_nan_latents_latches_stop(paths, tmp_path):
    bad = overflowing_copy(paths["dino_path"], tmp_path / "dino", "*.safetensors",
                           "embeddings.patch_embeddings.weight")
    stop, _, output = run_until_stop({**paths, "dino_path": bad}, tmp_path)
    assert stop is not None, output[-3000:]
    assert "NaN/inf in the DINO latents of the camera frame" in stop.reason, stop


def test_judge_lag_latches_stop(paths, tmp_path):
    stop, _, output = run_until_stop(paths, tmp_path, host={"max_judge_time_s": 0.001})
    assert stop is not None, output[-3000:]
    assert stop.reason.startswith("judge: judge lag: one forward dynamics call running for"), stop


def host_in_process_until_stop(paths, tmp_path, breakage):
    """The host in this process, ``breakage(host_node)`` applied after start-up, around the real gate process;
    the gate's first STOP and the host's heartbeats heard meanwhile."""
    import rclpy
    from ament_index_python.packages import get_package_prefix
    from lda_policy.model_host_node import ModelHostNode
    from rclpy.executors import SingleThreadedExecutor

    gate_cmd = launch_command(LAUNCH, paths, tmp_path)
    gate_params = [a.split(":=", 1)[1] for a in gate_cmd if a.startswith(("gate_params:=", "safety_limits:="))]
    exe = Path(get_package_prefix("lda_policy")) / "lib" / "lda_policy" / "safety_gate_node"
    cmd = [str(exe), "--ros-args", "-p", f"robot_config:={paths['robot_config']}"]
    for f in gate_params:
        cmd += ["--params-file", f]
    context = rclpy.Context()
    rclpy.init(context=context)
    args = ["--ros-args", "-p", "torch_threads:=1", "-p", "stop_surprise:=20.0"]
    args += [a for k in ("robot_config", "checkpoint", "dino_path") for a in ("-p", f"{k}:={paths[k]}")]
    host = ModelHostNode(context=context, cli_args=args)
    host.start()
    breakage(host)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(host)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        with NodeProcess(cmd) as proc, ros_node("synthetic_robot") as node:
            robot = T.SyntheticRobot(node, paths["robot_config"])
            attach(robot, node)
            stop = first_stop(robot, 0.0, 90.0)
            time.sleep(0.5)
            robot.stop()
            assert stop is not None, proc.output[-3000:]
            return stop, robot.since(robot.host_statuses, robot.now() - 0.4)
    finally:
        host.shutdown()
        executor.shutdown(timeout_sec=2.0)
        host.destroy_node()
        rclpy.shutdown(context=context)


def test_exception_in_the_judge_latches_stop(paths, tmp_path):
    """The runtime's forward dynamics fails like a lost GPU would."""
    def broken(*_a, **_k):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    stop, _ = host_in_process_until_stop(paths, tmp_path,
                                         lambda host: setattr(host.host.runtime, "forward_dynamics", broken))
    assert "judge error: RuntimeError: CUDA error: an illegal memory access" in stop.reason, stop


def test_exception_in_a_host_callback_is_a_named_fault_and_the_host_lives_on(paths, tmp_path):
    """An exception escaping a subscription callback of the model host (here: its camera frame intake) is a
    host fault naming the topic; the gate holds with STOP and the host keeps beating."""
    def broken(*_a, **_k):
        raise ValueError("a frame the decoder did not expect")

    stop, beats = host_in_process_until_stop(paths, tmp_path,
                                             lambda host: setattr(host.host.policy, "on_frame", broken))
    assert ("internal error in the callback of /test/head/image_raw: ValueError: a frame the decoder did not "
            "expect") in stop.reason, stop
    assert beats and {b.source for b in beats} == {"model_host", "judge"}  # the host process lives on
