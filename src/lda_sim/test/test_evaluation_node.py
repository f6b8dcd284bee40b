"""evaluation_node scores closed-loop episodes against the real sim_node over loopback DDS."""

import json
import os

from ament_index_python.packages import get_package_prefix
from geometry_msgs.msg import PoseStamped
from lda_testing.ros import NodeProcess, ros_node, wait_for
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from std_msgs.msg import Bool, String

from lda_msgs.srv import ResetSim, SafetyReset

BIN = os.path.join(get_package_prefix("lda_sim"), "lib", "lda_sim")
NS = f"/evaltest{os.getpid()}"
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def test_frozen_robot_fails_every_episode_and_resets_are_called(tmp_path):
    results = tmp_path / "eval.json"
    sim_cmd = [f"{BIN}/sim_node", "--ros-args", "-r", f"__ns:={NS}", "-p", "image_size:=32", "-p", "realtime:=false"]
    evaluation_cmd = [f"{BIN}/evaluation_node", "--ros-args", "-r", f"__ns:={NS}", "-p", "episodes:=2",
                  "-p", "max_steps:=15", "-p", "seed:=40", "-p", "settle_s:=0.2", "-p", "label:=frozen",
                  "-p", f"safety_reset_service:={NS}/probe_reset", "-p", f"results_path:={results}"]
    with ros_node("evaluation_probe") as node, NodeProcess(sim_cmd) as sim:
        resets, instructions = [], []
        node.create_service(SafetyReset, f"{NS}/probe_reset",
                            lambda req, resp: (resets.append(req), setattr(resp, "success", True), resp)[-1])
        node.create_subscription(String, "/lda/instruction", instructions.append, LATCHED)
        assert sim.wait_for_output("sim_node ready", timeout=60), sim.output
        with NodeProcess(evaluation_cmd) as runner:
            rc = runner.wait(timeout=120)
        assert rc == 0, runner.output
        assert wait_for(lambda: instructions, timeout=5)
    summary = json.loads(results.read_text())
    assert summary["label"] == "frozen" and summary["episodes"] == 2
    assert summary["successes"] == 0 and summary["success_rate"] == 0.0  # nothing lifts the cube
    assert [e["seed"] for e in summary["per_episode"]] == [40, 41]
    assert all(e["steps"] >= 15 and not e["success"] for e in summary["per_episode"])
    assert len(resets) == 2, runner.output  # the gate's reset is asked once per episode, with a reason
    assert "episode 1" in resets[1].reason and resets[1].requested_by == "evaluation"
    assert instructions[-1].data == "lift the red cube"


def test_missing_sim_is_a_clear_error(tmp_path):
    cmd = [f"{BIN}/evaluation_node", "--ros-args", "-r", f"__ns:={NS}_nosim", "-p", "startup_timeout_s:=6.0"]
    with NodeProcess(cmd) as runner:
        rc = runner.wait(timeout=60)
    assert rc == 1
    assert f"waiting for service {NS}_nosim/sim/reset (5 s of at most 6 s)" in runner.output  # says what it waits for
    assert f"service {NS}_nosim/sim/reset not available after 6 s" in runner.output


# The scripted scene's success signal per step since the reset, by seed: a knock that lifts the object for
# two steps in every eight, and a lift that holds from the 5th step on.
KNOCKS, HOLDS = 40, 41
PATTERN = {KNOCKS: lambda i: i % 8 in (6, 7), HOLDS: lambda i: i >= 5}


def _evaluate(tmp_path, ns, hold, seed, episodes):
    results = tmp_path / f"eval_hold{hold}_seed{seed}.json"
    cmd = [f"{BIN}/evaluation_node", "--ros-args", "-r", f"__ns:={ns}", "-p", f"episodes:={episodes}",
           "-p", "max_steps:=40", "-p", f"seed:={seed}", "-p", "settle_s:=0.2", "-p", "safety_reset_service:=''",
           "-p", f"success_hold_steps:={hold}", "-p", f"results_path:={results}"]
    with NodeProcess(cmd) as runner:
        rc = runner.wait(timeout=120)
    assert rc == 0, runner.output
    return {e["seed"]: e for e in json.loads(results.read_text())["per_episode"]}


def test_a_success_must_hold_for_success_hold_steps(tmp_path):
    """A stand-in for the sim's topics (this test is about the scoring): one step and one success flag
    every 50 ms, following PATTERN from each reset."""
    ns = f"{NS}_hold"
    scene = {"seed": KNOCKS, "tick": 0}

    def reset(request, response):
        scene.update(seed=request.seed, tick=0)
        response.success = True
        return response

    def tick():
        success = PATTERN[scene["seed"]](scene["tick"])
        scene["tick"] += 1
        pose.publish(PoseStamped())
        flag.publish(Bool(data=success))

    with ros_node("scene_probe") as node:
        node.create_service(ResetSim, f"{ns}/sim/reset", reset)
        pose = node.create_publisher(PoseStamped, f"{ns}/robot/right/eef_pose", qos_profile_sensor_data)
        flag = node.create_publisher(Bool, f"{ns}/lda/task_success", qos_profile_sensor_data)
        node.create_timer(0.05, tick)
        first = _evaluate(tmp_path, ns, hold=1, seed=KNOCKS, episodes=1)
        held = _evaluate(tmp_path, ns, hold=3, seed=KNOCKS, episodes=2)
    assert first[KNOCKS]["success"], "a single successful step counts by default"
    assert not held[KNOCKS]["success"] and held[KNOCKS]["steps"] >= 40, "two-step knocks never hold for three"
    assert held[HOLDS]["success"] and held[HOLDS]["steps"] < 40


def test_success_hold_steps_below_one_is_refused():
    cmd = [f"{BIN}/evaluation_node", "--ros-args", "-r", f"__ns:={NS}_badhold", "-p", "success_hold_steps:=0"]
    with NodeProcess(cmd) as runner:
        rc = runner.wait(timeout=60)
    assert rc != 0
    assert "success_hold_steps must be >= 1" in runner.output
