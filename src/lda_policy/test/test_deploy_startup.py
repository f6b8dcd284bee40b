"""Start-up failures are loud and early: bad checkpoint path, missing calibration, missing parameter."""

import shutil
from pathlib import Path

from lda_testing.ros import NodeProcess

from lda_testing import deploy as T

REPO = Path(__file__).resolve().parents[3]
LAUNCH = REPO / "launch" / "policy.launch.yaml"


def test_bad_checkpoint_path_fails_the_launch_with_a_message_naming_it(tmp_path):
    robot = T.write_robot_config(tmp_path / "robot.yaml")
    (tmp_path / "dino").mkdir()
    missing = tmp_path / "no_such_checkpoint"
    limits = T.write_params(tmp_path / "limits.yaml", {"finger_min": -0.01})
    with NodeProcess(["lda-launch", str(LAUNCH), f"robot_config:={robot}", f"checkpoint:={missing}",
                      f"dino_path:={tmp_path / 'dino'}", f"safety_limits:={limits}"]) as run:
        rc = run.wait(timeout=120)
    assert rc != 0, run.output
    assert f"policy_node: error: checkpoint directory '{missing}' does not exist" in run.output, run.output
    assert "required node policy_node died" in run.output
    assert f"safety_monitor_node: error: checkpoint directory '{missing}' does not exist" in run.output


def test_monitor_refuses_to_start_without_calibration_and_policy_without_parameters(tmp_path_factory, tmp_path):
    paths = T.cached_checkpoint(tmp_path_factory.getbasetemp() / "lda_deploy_model")
    ckpt = tmp_path / "ckpt"
    shutil.copytree(paths["checkpoint"], ckpt)
    (ckpt / "safety_calibration.json").unlink()
    with NodeProcess([str(_exe("safety_monitor_node")), "--ros-args", "-p", f"robot_config:={paths['robot_config']}",
                      "-p", f"checkpoint:={ckpt}", "-p", f"dino_path:={paths['dino_path']}"]) as run:
        rc = run.wait(timeout=120)
    assert rc == 1, run.output
    assert f"safety calibration {ckpt / 'safety_calibration.json'} not found" in run.output, run.output
    with NodeProcess([str(_exe("policy_node")), "--ros-args", "-p", f"robot_config:={paths['robot_config']}"]) as run:
        rc = run.wait(timeout=60)
    assert rc == 2, run.output
    assert "parameter 'checkpoint' is required" in run.output, run.output


def _exe(name: str) -> Path:
    from ament_index_python.packages import get_package_prefix

    return Path(get_package_prefix("lda_policy")) / "lib" / "lda_policy" / name


def test_policy_node_is_a_lifecycle_node(tmp_path_factory):
    from lda_testing.ros import ros_node, wait_for
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    paths = T.cached_checkpoint(tmp_path_factory.getbasetemp() / "lda_deploy_model")
    cmd = [str(_exe("policy_node")), "--ros-args", "-r", "__node:=lc_policy", "-p", "autostart:=false",
           "-p", "torch_threads:=1"]
    for key in ("robot_config", "checkpoint", "dino_path"):
        cmd += ["-p", f"{key}:={paths[key]}"]
    with NodeProcess(cmd) as run, ros_node("lifecycle_probe") as node:
        change = node.create_client(ChangeState, "/lc_policy/change_state")
        get = node.create_client(GetState, "/lc_policy/get_state")
        assert change.wait_for_service(timeout_sec=60), run.output

        def call(client, request):
            future = client.call_async(request)
            assert wait_for(future.done, 60)
            return future.result()

        assert call(get, GetState.Request()).current_state.label == "unconfigured"  # autostart:=false waits
        for transition, label in ((Transition.TRANSITION_CONFIGURE, "inactive"),
                                  (Transition.TRANSITION_ACTIVATE, "active"),
                                  (Transition.TRANSITION_DEACTIVATE, "inactive"),
                                  (Transition.TRANSITION_ACTIVATE, "active")):
            assert call(change, ChangeState.Request(transition=Transition(id=transition))).success, run.output
            assert call(get, GetState.Request()).current_state.label == label
    assert "deactivated: holding the last measured pose" in run.output
