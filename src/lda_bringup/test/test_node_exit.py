"""Every executable of the suite exits when told: within 5 s of SIGINT and 2 s of SIGTERM, in the state it is
in (idle, mid-inference, recording, stepping the physics, waiting on a service), leaving no process behind.

Each case starts the real executable as a process (:class:`lda_testing.ros.NodeProcess`: its own session and a
process-tree marker), brings it into the state, sends the signal and times the exit. The limits are those a
launcher gives before it escalates; the nodes' own deadline (lda_common.process_exit) is 4 s / 1.5 s.
"""

import os
import re
import signal
import time

import pytest
from lda_testing.processes import tree_pids
from lda_testing.ros import NodeProcess, ros_node, wait_for

from lda_msgs.srv import StartEpisode
from lda_testing import deploy as T
from lda_testing import executables as X

LIMIT_S = {signal.SIGINT: 5.0, signal.SIGTERM: 2.0}
NS = f"/exit{os.getpid()}"


def stop_and_time(proc: NodeProcess, sig: signal.Signals) -> float:
    """Send ``sig``; seconds until the process exited. Asserts the limit and that nothing it started is left."""
    assert proc.proc.poll() is None, f"exited before the signal:\n{proc.output[-3000:]}"
    start = time.monotonic()
    proc.proc.send_signal(sig)
    try:
        proc.proc.wait(timeout=LIMIT_S[sig] + 10.0)
    finally:
        elapsed = time.monotonic() - start
        left = tree_pids(proc.token)
        proc.stop()  # kills whatever is left, so a failure here never leaks processes into later tests
    assert elapsed < LIMIT_S[sig], f"{sig.name}: exited after {elapsed:.2f} s\n{proc.output[-3000:]}"
    assert not left, f"processes left behind after {sig.name}: {left}"
    assert "Traceback" not in proc.output, proc.output[-3000:]
    return elapsed


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return T.cached_checkpoint(tmp_path_factory.getbasetemp() / "lda_deploy_model")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_model_host_exits_mid_inference(model, tmp_path, sig):
    with ros_node("exit_robot") as node:
        robot = T.SyntheticRobot(node, model["robot_config"])
        try:
            with NodeProcess(X.model_host(model, tmp_path)) as proc:
                assert wait_for(lambda: len(robot.proposed) >= 2, 120), proc.output[-3000:]
                stop_and_time(proc, sig)  # the policy and judge threads are busy at 10 Hz
        finally:
            robot.stop()


def test_model_host_exits_idle(model, tmp_path):
    with NodeProcess(X.model_host(model, tmp_path)) as proc:
        assert proc.wait_for_output("proposing on", 120), proc.output[-3000:]
        stop_and_time(proc, signal.SIGTERM)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_safety_gate_exits_while_holding(model, tmp_path, sig):
    cmd = X.safety_gate(model, tmp_path)
    with ros_node("exit_robot") as node:
        robot = T.SyntheticRobot(node, model["robot_config"])
        try:
            with NodeProcess(cmd) as proc:  # streams flow, no host: the gate holds with STOP latched
                assert wait_for(lambda: robot.statuses, 60), proc.output[-3000:]
                stop_and_time(proc, sig)
        finally:
            robot.stop()


def test_recorder_exits_idle(tmp_path):
    with NodeProcess(X.recorder(tmp_path, NS)) as proc:
        assert proc.wait_for_output("recorder ready", 120), proc.output[-3000:]
        stop_and_time(proc, signal.SIGTERM)


def test_recorder_exits_mid_episode_and_discards_it(tmp_path):
    with NodeProcess(X.recorder(tmp_path, NS)) as proc, ros_node("exit_operator") as node:
        assert proc.wait_for_output("recorder ready", 120), proc.output[-3000:]
        client = node.create_client(StartEpisode, f"{NS}/rec/start_episode")
        assert client.wait_for_service(timeout_sec=30)
        future = client.call_async(StartEpisode.Request(task="hold on"))
        assert wait_for(future.done, 30) and future.result().success, future.result()
        stop_and_time(proc, signal.SIGINT)
    assert "discarded" in proc.output, proc.output[-3000:]


def test_recorder_exits_mid_save_and_keeps_what_was_saved(model, tmp_path):
    """SIGINT while stop_episode saves: the save either completes within the deadline or is rolled back by the
    dataset's transaction journal at the next start; either way the dataset and its labels agree."""
    from lda_common.schema import read_episode_labels

    from lda_msgs.srv import StopEpisode

    with ros_node("exit_operator") as node:
        robot = T.SyntheticRobot(node, model["robot_config"])
        try:
            with NodeProcess(X.recorder(tmp_path, NS, robot_config=model["robot_config"])) as proc:
                assert proc.wait_for_output("recorder ready", 120), proc.output[-3000:]
                start = node.create_client(StartEpisode, f"{NS}/rec/start_episode")
                stop = node.create_client(StopEpisode, f"{NS}/rec/stop_episode")
                assert start.wait_for_service(timeout_sec=30) and stop.wait_for_service(timeout_sec=30)
                future = start.call_async(StartEpisode.Request(task="hold on"))
                assert wait_for(future.done, 30) and future.result().success, future.result()
                time.sleep(3.0)  # about 30 frames at 10 Hz
                stop.call_async(StopEpisode.Request(quality="high"))
                time.sleep(0.2)  # the save has started
                stop_and_time(proc, signal.SIGINT)
        finally:
            robot.stop()
    with NodeProcess(X.recorder(tmp_path, NS, robot_config=model["robot_config"])) as again:
        assert again.wait_for_output("recorder ready", 120), again.output[-3000:]
        found = re.search(r"with (\d+) episode\(s\)", again.output)
        stop_and_time(again, signal.SIGTERM)
    assert found and int(found.group(1)) in (0, 1), again.output[-3000:]
    assert len(read_episode_labels(tmp_path / "dataset")) == int(found.group(1))


def test_sim_exits_while_stepping():
    with NodeProcess(X.sim(NS)) as proc:
        assert proc.wait_for_output("sim_node ready", 180), proc.output[-3000:]
        time.sleep(0.5)
        stop_and_time(proc, signal.SIGINT)


def test_sim_exits_while_starting():
    with NodeProcess(X.sim(NS)) as proc:
        time.sleep(1.5)  # robosuite is still importing or building the model
        assert "sim_node ready" not in proc.output
        stop_and_time(proc, signal.SIGTERM)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_scripted_teleop_exits_while_waiting_for_the_sim(sig):
    with NodeProcess(X.scripted_teleop(f"{NS}/none")) as proc:
        assert proc.wait_for_output("scripted teleop:", 60), proc.output[-3000:]
        stop_and_time(proc, sig)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_evaluation_exits_while_waiting_for_a_service(sig):
    with NodeProcess(X.evaluation(f"{NS}/none")) as proc:
        time.sleep(3.0)  # started, waiting for sim/reset
        stop_and_time(proc, sig)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_dynamics_replay_exits_mid_replay(model, tmp_path, sig):
    cmd = X.dynamics_replay(model, tmp_path)
    with NodeProcess(cmd) as proc:
        assert proc.wait_for_output("replaying", 120), proc.output[-3000:]
        time.sleep(1.0)
        stop_and_time(proc, sig)
