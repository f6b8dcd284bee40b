"""A LeRobot policy deployed through the model host and the safety gate over DDS (issue #30 item 3): a tiny
random-weight ACT checkpoint (lda_testing.lerobot_policies) in model_host_node with backend lerobot, and
safety_gate_node, as real processes launched by launch/policy.launch.yaml (lda-launch); this process is the robot
(camera, EEF pose, finger state, instruction; it follows the EEF targets). A chunk is proposed, approved and
commanded; the judge heartbeat and the gate's status say that no forward-dynamics judge runs. Start-up refusals
of the backend run in-process.
"""

import time
from pathlib import Path

import numpy as np
import pytest
from lda_common.robot_config import ConfigError
from lda_policy.deploy.lerobot_policy import NO_JUDGE_REASON
from lda_testing.deploy import attach, launch_command, reset, write_robot_config
from lda_testing.ros import NodeProcess, ros_node, wait_for

from lda_testing import deploy as T
from lda_testing import lerobot_policies as LP

pytest.importorskip("lerobot")

LAUNCH = Path(__file__).resolve().parents[3] / "launch" / "policy.launch.yaml"


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("lerobot_deploy")
    robot_config = write_robot_config(d / "robot.yaml")
    return {"robot_config": robot_config, "checkpoint": LP.write_tiny_act_checkpoint(d / "act", robot_config),
            "dino_path": "", "dir": d}


def test_act_chunk_is_proposed_approved_and_commanded_through_the_gate(paths, tmp_path):
    cmd = [*launch_command(LAUNCH, paths, tmp_path, host={"max_inference_time_s": 10.0}), "backend:=lerobot"]
    with NodeProcess(cmd) as proc, ros_node("synthetic_robot") as node:
        robot = T.SyntheticRobot(node, paths["robot_config"])
        attach(robot, node)
        try:
            assert wait_for(lambda: robot.since(robot.host_statuses, 0), 90), proc.output[-4000:]
            time.sleep(0.3)
            startup_stops = 0
            if any(s.level == 2 for s in robot.since(robot.statuses, 0)):
                # a start-up gap on a busy machine (this process's own pose stream paused 0.51 s while the host
                # loaded, in a full make test): the gate latched STOP, as it must; the operator's reset clears it
                answer = reset(robot, "test: the start-up gap is over")
                assert answer.success, answer.message
                startup_stops = 1
            assert wait_for(lambda: len(robot.approved) >= 2 and len(robot.targets) >= 5, 90), proc.output[-4000:]
            t = robot.now()
            assert wait_for(lambda: len(robot.targets_since(t)) >= 5, 10), proc.output[-3000:]
            proposed = {m.sequence: m for m in robot.since(robot.proposed, 0)}
            approved = robot.since(robot.approved, 0)
            beats = robot.since(robot.host_statuses, 0)
            statuses = robot.since(robot.statuses, 0)
            targets = robot.targets_since(0)
        finally:
            robot.stop()
    assert "LeRobot act checkpoint" in proc.output and "16-row chunks" in proc.output, proc.output[-3000:]
    m = approved[-1]
    assert m.sequence in proposed and m.digest == proposed[m.sequence].digest and len(m.digest) == 64
    assert (m.embodiment, m.horizon, m.action_dim, m.dt) == ("test_arm", 16, 7, pytest.approx(0.1))
    assert list(m.dimension_names) == [f"right/{c}" for c in ("dx", "dy", "dz", "drx", "dry", "drz", "gripper")]
    actions = np.asarray(m.actions).reshape(16, 7)
    assert np.abs(actions[:, :6]).max() < 20 * LP.ACTION_STD  # the checkpoint's un-normalised output
    judge = [s for s in beats if s.source == "judge"]
    assert judge and judge[-1].level == 1 and judge[-1].reason == NO_JUDGE_REASON  # honest, and beating
    host = [s for s in beats if s.source == "model_host"]
    assert host[-1].level == 0 and host[-1].faults == 0, host[-1]
    last = statuses[-1]
    assert last.level == 1 and last.reason == f"judge: {NO_JUDGE_REASON}" and last.faults == startup_stops, last
    positions = np.array([p for _, p, _ in targets])  # chained from the chunks' pose deltas by the gate
    assert np.isfinite(positions).all() and np.linalg.norm(positions - T.HOME[0], axis=1).max() < 0.2
    assert np.linalg.norm(positions[-1] - positions[0]) > 1e-6
    assert robot.gripper_commands and abs(robot.gripper_commands[-1] - LP.FINGER_MEAN) < 0.01


def test_host_refuses_what_the_lerobot_backend_cannot_do(paths, tmp_path):
    """In-process start-up of ModelHostNode: each refusal says what to change; no dino_path is needed."""
    import rclpy
    from lda_policy.deploy.runtime import RuntimeLoadError
    from lda_policy.model_host_node import ModelHostNode
    from rclpy.context import Context
    from rclpy.parameter import Parameter

    wide = write_robot_config(tmp_path / "wide.yaml", width=128, height=96)
    base = {"backend": "lerobot", "checkpoint": paths["checkpoint"], "robot_config": paths["robot_config"]}
    cases = [
        ({"selection.k": 2}, ConfigError, "selection.k > 1 needs a forward-dynamics judge, which backend 'lerobot'"),
        ({"action_space": "joints"}, ConfigError, "backend 'lerobot' commands hands"),
        ({"robot_config": wide}, ConfigError, "'observation.images.head' is (3, 48, 64), the robot config's camera "
         "'head' gives (3, 96, 128)"),
        ({"checkpoint": tmp_path}, RuntimeLoadError, "is not a LeRobot policy checkpoint"),
    ]
    for params, error, text in cases:
        context = Context()
        rclpy.init(context=context)
        try:
            overrides = [Parameter(k, value=v if isinstance(v, int) else str(v)) for k, v in {**base, **params}.items()]
            node = ModelHostNode(context=context, parameter_overrides=overrides)
            with pytest.raises(error) as err:
                node.start()
            assert text in str(err.value), (params, str(err.value))
            node.destroy_node()
        finally:
            rclpy.shutdown(context=context)
