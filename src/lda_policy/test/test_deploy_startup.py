"""Start-up failures are loud and early: bad checkpoint path, missing calibration, missing parameter, a limits
file beyond the sanity bounds. The gate never needs the model: it starts (and holds) whatever the host does."""

import shutil
from pathlib import Path

from lda_testing.ros import NodeProcess

from lda_testing import deploy as T

REPO = Path(__file__).resolve().parents[3]
LAUNCH = REPO / "launch" / "policy.launch.yaml"


def _exe(name: str) -> Path:
    from ament_index_python.packages import get_package_prefix

    return Path(get_package_prefix("lda_policy")) / "lib" / "lda_policy" / name


def test_bad_checkpoint_path_stops_the_host_with_a_message_and_the_gate_holds(tmp_path):
    robot = T.write_robot_config(tmp_path / "robot.yaml")
    (tmp_path / "dino").mkdir()
    missing = tmp_path / "no_such_checkpoint"
    limits = T.write_params(tmp_path / "limits.yaml", {"finger_min": -0.01})
    with NodeProcess(["lda-launch", str(LAUNCH), f"robot_config:={robot}", f"checkpoint:={missing}",
                      f"dino_path:={tmp_path / 'dino'}", f"safety_limits:={limits}"]) as run:
        assert run.wait_for_output("model_host exited with code 1", timeout=120), run.output
        assert run.wait_for_output("waiting for the model_host heartbeat", timeout=30), run.output
    assert f"model_host_node: error: checkpoint directory '{missing}' does not exist" in run.output, run.output


def test_host_refuses_to_start_without_calibration_or_parameters(tmp_path_factory, tmp_path):
    paths = T.cached_checkpoint(tmp_path_factory.getbasetemp() / "lda_deploy_model")
    ckpt = tmp_path / "ckpt"
    shutil.copytree(paths["checkpoint"], ckpt)
    (ckpt / "safety_calibration.json").unlink()
    with NodeProcess([str(_exe("model_host_node")), "--ros-args", "-p", f"robot_config:={paths['robot_config']}",
                      "-p", f"checkpoint:={ckpt}", "-p", f"dino_path:={paths['dino_path']}"]) as run:
        rc = run.wait(timeout=120)
    assert rc == 1, run.output
    assert f"safety calibration {ckpt / 'safety_calibration.json'} not found" in run.output, run.output
    with NodeProcess([str(_exe("model_host_node")), "--ros-args", "-p",
                      f"robot_config:={paths['robot_config']}"]) as run:
        rc = run.wait(timeout=60)
    assert rc == 2, run.output
    assert "parameter 'checkpoint' is required" in run.output, run.output


def test_calibration_made_with_other_judge_settings_is_refused(tmp_path_factory):
    paths = T.cached_checkpoint(tmp_path_factory.getbasetemp() / "lda_deploy_model")
    cmd = [str(_exe("model_host_node")), "--ros-args", "-p", "judge_num_steps:=4"]
    for key in ("robot_config", "checkpoint", "dino_path"):
        cmd += ["-p", f"{key}:={paths[key]}"]
    with NodeProcess(cmd) as run:
        rc = run.wait(timeout=120)
    assert rc == 1, run.output
    assert "num_steps 4 vs calibrated 1" in run.output, run.output


def test_gate_refuses_limits_beyond_the_sanity_bounds(tmp_path):
    robot = T.write_robot_config(tmp_path / "robot.yaml")
    cmd = [str(_exe("safety_gate_node")), "--ros-args", "-p", f"robot_config:={robot}",
           "-p", "max_linear_speed_m_s:=20.0"]
    with NodeProcess(cmd) as run:
        rc = run.wait(timeout=60)
    assert rc == 1, run.output
    assert "max_linear_speed_m_s" in run.output and "sanity bound 2.0" in run.output, run.output


def test_security_launch_argument_sets_enclaves_and_enforce(tmp_path):
    from lda_bringup.launch_description import LaunchDescription

    args = {"checkpoint": "/ckpt", "dino_path": "/dino"}
    secure = LaunchDescription(str(LAUNCH), {**args, "security": "true", "keystore": str(tmp_path / "ks")})
    plain = LaunchDescription(str(LAUNCH), args)
    try:
        for spec in secure.processes:
            assert spec.env["ROS_SECURITY_ENABLE"] == "true" and spec.env["ROS_SECURITY_STRATEGY"] == "Enforce"
            assert spec.env["ROS_SECURITY_KEYSTORE"] == str(tmp_path / "ks")
        enclaves = {spec.name: spec.cmd[spec.cmd.index("--enclave") + 1] for spec in plain.processes}
        assert enclaves == {"safety_gate": "/lda/safety_gate", "model_host": "/lda/model_host"}
        assert not any("ROS_SECURITY_ENABLE" in spec.env for spec in plain.processes)
    finally:
        secure.cleanup()
        plain.cleanup()


def test_gate_fails_closed_when_security_cannot_be_enforced(tmp_path):
    """Security asked for but not available (no keystore here; the pip wheels' Fast DDS has no DDS Security):
    the node must not start unprotected."""
    robot = T.write_robot_config(tmp_path / "robot.yaml")
    env = {"ROS_SECURITY_ENABLE": "true", "ROS_SECURITY_STRATEGY": "Enforce",
           "ROS_SECURITY_KEYSTORE": str(tmp_path / "no_keystore")}
    cmd = [str(_exe("safety_gate_node")), "--ros-args", "--enclave", "/lda/safety_gate",
           "-p", f"robot_config:={robot}"]
    with NodeProcess(cmd, env=env) as run:
        rc = run.wait(timeout=60)
    assert rc != 0, run.output
