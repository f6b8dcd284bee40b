"""Test-time chunk selection through the real processes: launch/policy.launch.yaml with selection_k:=3 around
the synthetic robot. Every proposal says it was chosen among 3 candidates, with its score and spread; the
gate's approval carries them on; the host's diagnostics report them."""

import math
from pathlib import Path

from lda_testing.deploy import attach, launch_command
from lda_testing.ros import NodeProcess, ros_node, wait_for

from lda_testing import deploy as T

LAUNCH = Path(__file__).resolve().parents[3] / "launch" / "policy.launch.yaml"


def test_proposals_carry_their_selection(tmp_path_factory):
    paths = T.cached_checkpoint(tmp_path_factory.getbasetemp() / "lda_deploy_model")
    d = tmp_path_factory.mktemp("selection_node")
    with NodeProcess([*launch_command(LAUNCH, paths, d), "selection_k:=3"]) as proc, \
            ros_node("synthetic_robot") as node:
        robot = T.SyntheticRobot(node, paths["robot_config"])
        attach(robot, node)
        try:
            assert wait_for(lambda: len(robot.approved) >= 2, 180), proc.output[-3000:]
            assert "selection k=3" in proc.output
            proposed = {m.sequence: m for m in robot.since(robot.proposed, 0)}
            for m in proposed.values():
                assert m.candidates == 3 and math.isfinite(m.selection_score), m
                assert m.selection_score_spread >= 0.0
            approved = robot.since(robot.approved, 0)[-1]
            assert (approved.candidates, approved.selection_score) == (3, proposed[approved.sequence].selection_score)

            def host_values() -> dict:
                for array in reversed(robot.diagnostics):
                    for s in array.status:
                        if s.name == "model_host: model host":
                            return {kv.key: kv.value for kv in s.values}
                return {}

            assert wait_for(lambda: "selection_score" in host_values(), 10), host_values()
            values = host_values()
            assert values["selection_k"] == "3" and 0 <= int(values["selection_within_limit"]) <= 3, values
        finally:
            robot.stop()
