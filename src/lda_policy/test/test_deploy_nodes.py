"""model_host_node + safety_gate_node as real processes (launch/policy.launch.yaml through lda-launch) around a
synthetic robot of real rclpy publishers: chunk flow, forged and corrupt proposals, stale and NaN streams,
bad camera input, surprise, reset rules, a frozen (SIGSTOP) and a killed (SIGKILL) model host.

Timing bounds are safety properties with a margin for a loaded 2-core machine, not performance claims
(benchmarks/deploy_latency.py measures the hold time).
"""

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from lda_policy.deploy.chunks import chunk_digest
from lda_policy.ros_io import sec_to_stamp
from lda_testing.deploy import attach, first_stop, launch_command, reset, targets_held, wait_flowing
from lda_testing.ros import NodeProcess, ros_node, wait_for

from lda_msgs.msg import ActionChunk
from lda_testing import deploy as T

MAX_OBSERVATION_AGE_S = T.MAX_OBSERVATION_AGE_S
LAUNCH = Path(__file__).resolve().parents[3] / "launch" / "policy.launch.yaml"
COLUMNS = [f"right/{c}" for c in ("dx", "dy", "dz", "drx", "dry", "drz", "gripper")]


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    paths = T.cached_checkpoint(tmp_path_factory.getbasetemp() / "lda_deploy_model")
    d = tmp_path_factory.mktemp("deploy_nodes")
    with NodeProcess(launch_command(LAUNCH, paths, d)) as proc, ros_node("synthetic_robot") as node:
        robot = T.SyntheticRobot(node, paths["robot_config"])
        attach(robot, node)
        robot.reset_log = d / "resets.jsonl"
        assert wait_for(lambda: len(robot.approved) >= 2, 180), proc.output[-3000:]
        yield robot, proc
        robot.stop()


def recover(robot, proc) -> None:
    """Reset the latched STOP (the robot is holding) and wait until chunks flow again."""
    time.sleep(0.3)
    answer = reset(robot)
    assert answer.success and "cleared STOP" in answer.message, answer.message
    assert wait_flowing(robot), proc.output[-3000:]


def forged_chunk(robot, actions: np.ndarray, sequence: int = 10**9, digest: str | None = None) -> ActionChunk:
    stamp = sec_to_stamp(robot.now())
    msg = ActionChunk(embodiment="test_arm", horizon=16, action_dim=7, dt=0.1, sequence=sequence,
                      dimension_names=COLUMNS, actions=[float(v) for v in actions.reshape(-1)])
    msg.header.stamp = stamp
    stamp_ns = stamp.sec * 10**9 + stamp.nanosec
    msg.digest = digest if digest is not None else chunk_digest(sequence, stamp_ns, "test_arm", actions)
    return msg


def test_chunks_flow_from_camera_to_eef_targets(system):
    robot, proc = system
    assert wait_flowing(robot), proc.output[-3000:]
    t = robot.now()
    time.sleep(2.0)
    proposed = {m.sequence: m for m in robot.since(robot.proposed, 0)}
    approved = robot.since(robot.approved, 0)
    assert approved and all(m.sequence in proposed for m in approved)  # only proposals come back approved
    m = approved[-1]
    assert m.digest == proposed[m.sequence].digest and len(m.digest) == 64  # bound to its proposal
    assert (m.embodiment, m.horizon, m.action_dim, m.dt) == ("test_arm", 16, 7, pytest.approx(0.1))
    assert list(m.dimension_names)[:2] == ["right/dx", "right/dy"] and len(m.actions) == 16 * 7
    assert 0 < m.header.stamp.sec  # the observation stamp travels with the chunk
    ts = robot.targets_since(t)
    assert len(ts) >= 12  # ~10 Hz
    positions = np.array([p for _, p, _ in ts])
    steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    assert steps.max() < 0.03, steps  # smooth hand-over: no jump at chunk boundaries
    assert np.linalg.norm(positions[-1] - positions[0]) > 1e-4  # the arm is being moved by chunks
    assert robot.gripper_commands and 0.0 < robot.gripper_commands[-1] < 0.1
    sources = {s.source for s in robot.since(robot.host_statuses, t)}
    assert sources == {"model_host", "judge"}  # both heartbeats beat
    assert {s.source for s in robot.since(robot.statuses, t)} == {"safety_gate"}
    names = {s.name for a in robot.diagnostics for s in a.status}
    assert {"safety_gate: safety gate", "model_host: model host"} <= names, names
    host = next(s for a in reversed(robot.diagnostics) for s in a.status if s.name == "model_host: model host")
    values = {kv.key: kv.value for kv in host.values}
    assert float(values["inference_time_mean_s"]) > 0 and int(values["chunks_judged"]) > 0, values


def test_reset_only_while_holding_and_only_with_a_reason(system):
    robot, proc = system
    assert wait_flowing(robot)
    answer = reset(robot)
    assert not answer.success and "only while holding" in answer.message  # the robot is moving
    answer = reset(robot, reason="  ")
    assert not answer.success and "needs a reason" in answer.message
    log = robot.reset_log.read_text().splitlines()
    assert len(log) >= 2 and '"accepted": false' in log[-1] and '"operator": "pytest"' in log[-1]


def test_forged_nan_and_tampered_proposals_latch_stop(system):
    robot, proc = system
    assert wait_flowing(robot)
    actions = np.zeros((16, 7))
    actions[:, 6] = 0.04
    actions[3, 1] = np.nan
    t0 = robot.now()
    robot.pub_proposed.publish(forged_chunk(robot, actions))
    stop = first_stop(robot, t0)
    assert stop is not None and "NaN/inf in actions (row 3, column right/dy)" in stop.reason, stop
    time.sleep(1.0)
    t1 = robot.now()
    time.sleep(1.5)
    n, dev = targets_held(robot, t1, robot.now())
    assert n >= 8 and dev < 1e-9  # holding still while STOP is latched
    assert not robot.since(robot.approved, t1)  # and nothing is approved
    assert all(s.level == 2 for s in robot.since(robot.statuses, t1))  # latched
    recover(robot, proc)

    # finite actions whose digest does not match (tampered on the way): refused, STOP
    actions[3, 1] = 0.0
    t0 = robot.now()
    robot.pub_proposed.publish(forged_chunk(robot, actions, digest="0" * 64))
    stop = first_stop(robot, t0)
    assert stop is not None and "digest does not match" in stop.reason, stop
    recover(robot, proc)

    # a well-formed proposal that breaks a limit (a 0.3 m jump in one row)
    actions[2, 0] = 0.3
    t0 = robot.now()
    robot.pub_proposed.publish(forged_chunk(robot, actions, sequence=10**9 + 1))
    stop = first_stop(robot, t0)
    assert stop is not None and "right moves 0.300 m in row 2" in stop.reason, stop
    recover(robot, proc)


@pytest.mark.parametrize("stream", ["pose", "fingers"])
def test_stale_hand_stream_latches_stop(system, stream):
    robot, proc = system
    assert wait_flowing(robot)
    with robot.lock:
        setattr(robot, f"{stream}_on", False)
    t0 = robot.now()
    stop = first_stop(robot, t0, timeout=MAX_OBSERVATION_AGE_S + 2.0)
    with robot.lock:
        setattr(robot, f"{stream}_on", True)
    assert stop is not None and f"right/{stream} stale" in stop.reason, stop
    recover(robot, proc)


def test_nan_pose_latches_stop(system):
    robot, proc = system
    assert wait_flowing(robot)
    t0 = robot.now()
    with robot.lock:
        robot.pose_override = (np.array([np.nan, 0.0, 0.3]), T.HOME[1])
    stop = first_stop(robot, t0)
    with robot.lock:
        robot.pose_override = None
    assert stop is not None and "NaN/inf in the right EEF pose" in stop.reason, stop
    recover(robot, proc)


def test_stale_camera_latches_stop_from_the_host(system):
    robot, proc = system
    assert wait_flowing(robot)
    with robot.lock:
        robot.camera_on = False
    t0 = robot.now()
    stop = first_stop(robot, t0, timeout=3.0)
    assert stop is not None and "model_host" in stop.reason and "camera" in stop.reason and "stale" in stop.reason, stop
    time.sleep(1.0)
    assert not robot.since(robot.approved, t0 + 1.0)  # no chunk approved after the stop
    with robot.lock:
        robot.camera_on = True
    time.sleep(0.5)
    recover(robot, proc)


@pytest.mark.parametrize("change, error", [
    ({"image_size": (32, 24)}, "image size changed mid-run from 64x48 to 32x24"),
    ({"image_encoding": "mono8"}, "encoding changed mid-run from 'rgb8' to 'mono8'"),
])
def test_bad_camera_input_gives_a_clear_error_and_no_chunk(system, change, error):
    robot, proc = system
    assert wait_flowing(robot)
    with robot.lock:
        for k, v in change.items():
            setattr(robot, k, v)
    t0 = robot.now()
    time.sleep(2.0)
    with robot.lock:
        robot.image_encoding, robot.image_size = "rgb8", None
    proposed = [m for m in robot.since(robot.proposed, t0 + 0.6)]  # after the last good frame aged out
    assert not proposed, [m.sequence for m in proposed]
    diag = [kv.value for a in robot.diagnostics for s in a.status if s.name == "model_host: model host"
            for kv in s.values if kv.key == "last_image_error"]
    assert diag and error in diag[-1], diag[-1:]
    stop = first_stop(robot, t0, timeout=0.1)  # the camera went silent for the model: a fault too
    assert stop is None or "camera" in stop.reason
    if stop is not None:
        recover(robot, proc)
    assert wait_flowing(robot), proc.output[-3000:]


def test_surprise_rises_clearly_when_the_scene_is_swapped(system):
    robot, proc = system
    assert wait_flowing(robot)
    t0 = robot.now()
    time.sleep(2.5)
    judged = [s for s in robot.since(robot.host_statuses, t0) if s.source == "judge"]
    scene_a = [s.surprise for s in judged if s.reason.startswith("surprise")]
    assert scene_a, "surprise is scored while chunks run"
    with robot.lock:
        robot.scene = "b"
    t1 = robot.now()
    stop = first_stop(robot, t1, timeout=5.0)
    with robot.lock:
        robot.scene = "a"
    assert stop is not None and stop.reason.startswith("judge") and "surprise" in stop.reason, stop
    assert stop.surprise > max(scene_a) + 15.0, (scene_a, stop.surprise)
    time.sleep(0.5)
    recover(robot, proc)


def _host_heartbeat_stop(stop) -> bool:
    """A STOP naming a heartbeat of the model host process: both (host and judge) die with it, and the gate's
    watchdog names whichever it finds silent first."""
    return stop is not None and any(f"{s} heartbeat missing" in stop.reason for s in ("model_host", "judge"))


def _pid(proc, name: str) -> int:
    return next(int(line.split("pid ")[1].rstrip(")")) for line in proc.lines if f"started {name} (pid" in line)


def test_frozen_host_holds_within_200ms_and_latches(system):
    robot, proc = system
    assert wait_flowing(robot)
    pid = _pid(proc, "model_host")
    t0 = robot.now()
    os.kill(pid, signal.SIGSTOP)
    try:
        stop = first_stop(robot, t0, timeout=3.0)
        time.sleep(1.0)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert _host_heartbeat_stop(stop), stop
    stamp = stop.header.stamp.sec + 1e-9 * stop.header.stamp.nanosec
    assert stamp - t0 < 0.2 + 0.3, stamp - t0  # timeout 0.15 s + one watchdog tick, with margin for load
    hold = [t for t, p, _ in robot.targets_since(t0)]
    assert hold and hold[0] - t0 < 0.2 + 0.3  # a hold command left at once
    time.sleep(0.5)  # the thawed host beats again; STOP stays latched until the operator says so
    assert robot.since(robot.statuses, robot.now() - 0.3)[-1].level == 2
    recover(robot, proc)


def test_killed_host_holds_within_200ms(system):
    robot, proc = system
    assert wait_flowing(robot)
    pid = _pid(proc, "model_host")
    t0 = robot.now()
    os.kill(pid, signal.SIGKILL)
    stop = first_stop(robot, t0, timeout=3.0)
    assert _host_heartbeat_stop(stop), stop
    stamp = stop.header.stamp.sec + 1e-9 * stop.header.stamp.nanosec
    assert stamp - t0 < 0.2 + 0.3, stamp - t0
    time.sleep(1.5)
    t1 = robot.now()
    time.sleep(1.0)
    n, dev = targets_held(robot, t1, robot.now())
    assert n >= 8 and dev < 1e-9, (n, dev)  # the gate keeps publishing the hold
    hold = [p for t, p, _ in robot.targets_since(t1)][-1]
    assert np.allclose(hold, robot.position)  # where the robot is
    assert proc.proc.poll() is None  # the gate (and the launch) keep running without the host
