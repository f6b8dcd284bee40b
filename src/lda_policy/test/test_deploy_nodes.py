"""policy_node + safety_monitor_node as real processes (launch/policy.launch.yaml through lda-launch) around a
synthetic robot of real rclpy publishers: chunk flow, NaN -> STOP, stale camera, scene change -> surprise, dead monitor.

Timing bounds are generous safety properties (deadline + 0.5 s), not performance claims.
"""

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from lda_policy.ros_io import sec_to_stamp
from lda_testing.ros import NodeProcess, ros_node, wait_for
from std_srvs.srv import Trigger

from lda_msgs.msg import ActionChunk
from lda_testing import deploy as T

REPO = Path(__file__).resolve().parents[3]
LAUNCH = REPO / "launch" / "policy.launch.yaml"
HEARTBEAT_TIMEOUT_S = 0.5
APPROVAL_DEADLINE_S = 1.0
MAX_OBSERVATION_AGE_S = 0.5
STOP_SURPRISE = 20.0  # the test calibration is narrow (synthetic scene A); scene B scores ~60


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    paths = T.cached_checkpoint(tmp_path_factory.getbasetemp() / "lda_deploy_model")
    d = tmp_path_factory.mktemp("deploy_nodes")
    policy = T.write_params(d / "policy.yaml", {"torch_threads": 1, "approval_deadline_s": APPROVAL_DEADLINE_S,
                                                "heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S})
    safety = T.write_params(d / "safety.yaml", {"torch_threads": 1, "warn_surprise": 10.0,
                                                "stop_surprise": STOP_SURPRISE,
                                                "max_observation_age_s": MAX_OBSERVATION_AGE_S})
    limits = T.write_params(d / "limits.yaml", {"workspace_min": [-2.0, -2.0, -2.0], "workspace_max": [2.0, 2.0, 2.0],
                                                "finger_min": -0.01, "finger_max": 0.1})
    cmd = ["lda-launch", str(LAUNCH), f"robot_config:={paths['robot_config']}",
           f"checkpoint:={paths['checkpoint']}", f"dino_path:={paths['dino_path']}",
           f"policy_params:={policy}", f"safety_params:={safety}", f"safety_limits:={limits}"]
    with NodeProcess(cmd) as proc, ros_node("synthetic_robot") as node:
        robot = T.SyntheticRobot(node, paths["robot_config"])
        robot.diagnostics = []
        node.create_subscription(DiagnosticArray, "/diagnostics", robot.diagnostics.append, 10)
        robot.reset_client = node.create_client(Trigger, "/lda/safety_reset")
        assert wait_for(lambda: len(robot.approved) >= 2, 180), proc.output[-3000:]
        yield robot, proc
        robot.stop()


def reset(robot) -> str:
    assert robot.reset_client.wait_for_service(timeout_sec=5)
    future = robot.reset_client.call_async(Trigger.Request())
    assert wait_for(future.done, 5)
    assert future.result().success
    return future.result().message


def wait_flowing(robot, timeout=20.0) -> bool:
    """True once two chunks were approved after now and the newest status is OK."""
    t = robot.now()
    return wait_for(lambda: len(robot.since(robot.approved, t)) >= 2
                    and robot.since(robot.statuses, t) and robot.since(robot.statuses, t)[-1].level == 0, timeout)


def targets_held(robot, t0, t1):
    """The targets published in [t0, t1]: (count, max deviation from the first)."""
    ts = [p for t, p, _ in robot.targets_since(t0) if t <= t1]
    if not ts:
        return 0, float("inf")
    return len(ts), max(float(np.linalg.norm(p - ts[0])) for p in ts)


def test_chunks_flow_from_camera_to_eef_targets(system):
    robot, proc = system
    assert wait_flowing(robot), proc.output[-3000:]
    t = robot.now()
    time.sleep(2.0)
    proposed = {m.sequence: m for m in robot.since(robot.proposed, 0)}
    approved = robot.since(robot.approved, 0)
    assert approved and all(m.sequence in proposed for m in approved)  # only proposals come back approved
    m = approved[-1]
    assert (m.embodiment, m.horizon, m.action_dim, m.dt) == ("test_arm", 16, 7, pytest.approx(0.1))
    assert list(m.dimension_names)[:2] == ["right/dx", "right/dy"] and len(m.actions) == 16 * 7
    assert list(m.actions) == pytest.approx(list(proposed[m.sequence].actions))
    assert 0 < m.header.stamp.sec  # the observation stamp travels with the chunk
    ts = robot.targets_since(t)
    assert len(ts) >= 12  # ~10 Hz
    positions = np.array([p for _, p, _ in ts])
    steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    assert steps.max() < 0.03, steps  # smooth hand-over: no jump at chunk boundaries
    assert np.linalg.norm(positions[-1] - positions[0]) > 1e-4  # the arm is being moved by chunks
    assert robot.gripper_commands and 0.0 < robot.gripper_commands[-1] < 0.1
    diag = [s for a in robot.diagnostics for s in a.status if s.name.endswith(": policy")]
    assert diag, "policy_node publishes diagnostics"
    keys = {kv.key for kv in diag[-1].values}
    assert {"inference_time_last_s", "queue_depth", "chunks_dropped", "chunk_latency_s"} <= keys


def test_injected_nan_gives_stop_until_reset(system):
    robot, proc = system
    assert wait_flowing(robot)
    bad = ActionChunk(embodiment="test_arm", horizon=16, action_dim=7, dt=0.1, sequence=10**9,
                      dimension_names=[f"right/{c}" for c in ("dx", "dy", "dz", "drx", "dry", "drz", "gripper")])
    bad.actions = [0.0] * (16 * 7)
    bad.actions[3 * 7 + 1] = float("nan")
    bad.header.stamp = sec_to_stamp(robot.now())
    t0 = robot.now()
    robot.pub_proposed.publish(bad)
    assert wait_for(lambda: any(s.level == 2 for s in robot.since(robot.statuses, t0)), 3.0)
    stop = next(s for s in robot.since(robot.statuses, t0) if s.level == 2)
    assert "NaN" in stop.reason and "row 3" in stop.reason and "right/dy" in stop.reason, stop.reason
    time.sleep(1.5)
    t1 = robot.now()
    time.sleep(1.5)
    n, dev = targets_held(robot, t1, robot.now())
    assert n >= 8 and dev < 1e-9  # holding still while STOP is latched
    assert not robot.since(robot.approved, t1)  # and nothing is approved
    assert all(s.level == 2 for s in robot.since(robot.statuses, t1))  # latched
    assert "cleared STOP" in reset(robot)
    assert wait_flowing(robot), proc.output[-3000:]

    # a NaN in the measured EEF pose is a STOP too
    t0 = robot.now()
    with robot.lock:
        robot.pose_override = (np.array([np.nan, 0.0, 0.3]), T.HOME[1])
    assert wait_for(lambda: any(s.level == 2 for s in robot.since(robot.statuses, t0)), 3.0)
    with robot.lock:
        robot.pose_override = None
    stop = next(s for s in robot.since(robot.statuses, t0) if s.level == 2)
    assert "NaN/inf in the right EEF pose" in stop.reason, stop.reason
    time.sleep(0.5)
    reset(robot)
    assert wait_flowing(robot), proc.output[-3000:]


def test_stale_camera_stops_new_chunks_within_the_deadline(system):
    robot, proc = system
    assert wait_flowing(robot)
    with robot.lock:
        robot.camera_on = False
    t0 = robot.now()
    deadline = t0 + MAX_OBSERVATION_AGE_S + 0.5
    assert wait_for(lambda: any(s.level == 2 for s in robot.since(robot.statuses, t0)), 3.0)
    stop = next(s for s in robot.since(robot.statuses, t0) if s.level == 2)
    assert "camera stale" in stop.reason, stop.reason
    time.sleep(max(0.0, deadline + 1.5 - robot.now()))
    assert not robot.since(robot.approved, deadline)  # no chunk approved after the deadline
    n, dev = targets_held(robot, deadline, robot.now())
    assert n >= 8 and dev < 1e-9  # the executor holds
    with robot.lock:
        robot.camera_on = True
    time.sleep(0.5)
    reset(robot)
    assert wait_flowing(robot), proc.output[-3000:]


def test_surprise_rises_clearly_when_the_scene_is_swapped(system):
    robot, proc = system
    assert wait_flowing(robot)
    t0 = robot.now()
    time.sleep(2.5)
    scene_a = [s.surprise for s in robot.since(robot.statuses, t0) if s.reason.startswith("surprise")]
    assert scene_a, "surprise is scored while chunks run"
    with robot.lock:
        robot.scene = "b"
    t1 = robot.now()
    assert wait_for(lambda: any(s.level == 2 for s in robot.since(robot.statuses, t1)), 5.0), proc.output[-2000:]
    stop = next(s for s in robot.since(robot.statuses, t1) if s.level == 2)
    assert stop.reason.startswith("surprise") and stop.surprise > STOP_SURPRISE, stop.reason
    assert stop.surprise > max(scene_a) + 15.0, (scene_a, stop.surprise)
    assert stop.threshold == pytest.approx(STOP_SURPRISE)
    with robot.lock:
        robot.scene = "a"
    time.sleep(0.5)
    reset(robot)
    assert wait_flowing(robot), proc.output[-3000:]


def test_killing_the_monitor_makes_the_policy_hold_within_the_deadline(system):
    robot, proc = system
    assert wait_flowing(robot)
    pid = next(int(line.split("pid ")[1].rstrip(")")) for line in proc.lines if "started safety_monitor (pid" in line)
    t0 = robot.now()
    os.kill(pid, signal.SIGKILL)
    hold_by = t0 + HEARTBEAT_TIMEOUT_S + 0.5
    time.sleep(max(0.0, hold_by + 2.0 - robot.now()))
    n, dev = targets_held(robot, hold_by, robot.now())
    assert n >= 15 and dev < 1e-9, (n, dev)  # still publishing, and holding still
    hold = [p for t, p, _ in robot.targets_since(hold_by)][-1]
    assert np.allclose(hold, robot.position)  # the held target is where the robot is
    assert wait_for(lambda: any("heartbeat missing" in kv.value for a in robot.diagnostics[-3:] for s in a.status
                                for kv in s.values), 3.0)
