"""The safety gate's core under hostile and broken input (issue #27), ROS-free: holds that are checked,
clocks that cannot blind it, sequences that cannot be hijacked, grasps kept through a new task, per-hand
limits, clamp bands, and exceptions that become a named STOP instead of a dead gate.

Each test names the issue item it covers; the real ``safety_gate_node`` process is driven by
``test_gate_process.py``.
"""

import math
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from lda_common.config import ConfigError
from lda_common.geometry import HandState
from lda_policy.deploy.chunk_executor import ExecutorConfig
from lda_policy.deploy.chunks import ProposedChunk
from lda_policy.deploy.gate import GateSettings, SafetyGateCore
from lda_policy.deploy.robot import RobotInterface
from lda_policy.deploy.safety import STATUS_OK, STATUS_STOP, SafetyLimits
from lda_policy.ros_io import BadMessage, msg_to_chunk
from lda_testing.deploy import write_robot_config

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "config" / "deploy"
DOWN = np.array([1.0, 0.0, 0.0, 0.0])
CENTRE = np.array([0.5, 0.0, 0.2])  # inside sim_panda's box


def shipped_limits(robot: str, **override) -> SafetyLimits:
    params = {}
    for f in (DEPLOY / "safety_gate.yaml", DEPLOY / "limits" / f"{robot}.yaml"):
        params.update(yaml.safe_load(f.read_text())["/**"]["ros__parameters"])
    return SafetyLimits.from_params({**params, **override}, robot)


def panda_gate(settings: GateSettings | None = None, **limits) -> SafetyGateCore:
    robot = RobotInterface(REPO / "config" / "robots" / "sim_panda.yaml")
    gate = SafetyGateCore(robot, shipped_limits("sim_panda", **limits), settings or GateSettings())
    feed(gate, 100.0, CENTRE)
    return gate


def feed(gate, t, position, finger=0.04, beats=True, mono=None):
    """One sample of every hand stream (and both heartbeats) at ROS time ``t`` (arrival ``mono``, default t)."""
    for h in gate.robot.config.hands:
        n = h.fingers.dim
        pos = position[h.name] if isinstance(position, dict) else position
        gate.on_pose(h.name, t, pos, DOWN, now=t, mono=mono)
        gate.on_fingers(h.name, t, np.full(n, finger), now=t, mono=mono)
    if beats:
        for source in ("model_host", "judge"):
            gate.on_source(source, STATUS_OK, "ok", 0, t, mono=mono)


def chunk(robot, actions, stamp=100.0, sequence=1) -> ProposedChunk:
    c = ProposedChunk(sequence, stamp, robot.dt, robot.embodiment, robot.dimension_names, actions, 0.1)
    c.digest = c.computed_digest()
    return c


def moving(robot, finger=0.04, dx=0.0, dz=0.0, rows=16) -> np.ndarray:
    a = np.zeros((rows, robot.action_dim))
    for h in robot.hands:
        a[:, robot.space.finger_columns(h)] = finger
    a[:, robot.dimension_names.index(f"{robot.hands[-1]}/dx")] = dx
    a[:, robot.dimension_names.index(f"{robot.hands[-1]}/dz")] = dz
    return a


def run(gate, t0, t1, position=None, dt=0.1):
    """Tick (and feed the measured pose = the last command, a perfect controller) from t0 to t1."""
    cmd, t = None, t0
    while t < t1 - 1e-9:
        cmd = gate.tick(t)
        if cmd.targets is not None:
            feed(gate, t + 1e-3, position if position is not None else cmd.targets["right"].position)
        t = round(t + dt, 6)
    return cmd


def inside(limits, hand, position, band=0.0):
    lo, hi = limits.box(hand)
    return bool(((position >= lo - band - 1e-9) & (position <= hi + band + 1e-9)).all())


# ---------------------------------------------------------------------------------------------- item 1: holds


def test_a_glitched_pose_outside_the_box_is_never_held():
    """Item 1: one pose sample outside the workspace, then a STOP: the hold stays inside the box, within one step
    of the last command (it used to command the robot to the glitch)."""
    gate = panda_gate()
    assert gate.judge(chunk(gate.robot, moving(gate.robot, dx=0.01)), 100.01).approved
    cmd = run(gate, 100.01, 100.4)
    assert cmd.mode == "execute"
    last = cmd.targets["right"].position
    gate.on_pose("right", 100.45, [0.5, 0.0, -1.5], DOWN, now=100.45)  # 1.3 m under the floor
    assert gate.latched and "measured pose" in gate.stop_reason and "leaves the workspace box" in gate.stop_reason
    hold = gate.tick(100.46)
    assert hold.mode == "hold"
    p = hold.targets["right"].position
    assert inside(gate.limits, "right", p) and np.linalg.norm(p - last) <= gate.limits.max_step_translation_m + 1e-9


def test_a_hold_moves_at_most_one_step_from_the_last_command():
    """Item 1: a measured pose far from the last command (inside the box) is not commanded in one jump."""
    gate = panda_gate()
    assert gate.judge(chunk(gate.robot, moving(gate.robot, dx=0.01)), 100.01).approved
    cmd = run(gate, 100.01, 100.4)
    last = cmd.targets["right"].position
    far = last + np.array([0.0, 0.3, 0.0])  # a lagging or slipping arm, 30 cm away
    feed(gate, 100.41, far)
    gate.on_source("model_host", STATUS_STOP, "policy error", 1, 100.42)
    hold = gate.tick(100.42)
    step = np.linalg.norm(hold.targets["right"].position - last)
    assert hold.mode == "hold" and step == pytest.approx(gate.limits.max_step_translation_m), step


def test_an_operator_reset_re_anchors_the_hold_at_the_measured_pose():
    """Item 1 with an episode reset: the simulator (or an operator) puts the arm 30 cm away while the gate holds.
    Until the operator's reset the hold keeps within one step of the last command; the reset vouches for the new
    pose, so the hold is then the measured pose, not a drag back toward the previous episode's last command (which
    cost the closed-loop demo every lift: 0/10 against 4/10 on one checkpoint)."""
    gate = panda_gate()
    assert gate.judge(chunk(gate.robot, moving(gate.robot, dx=0.01)), 100.01).approved
    cmd = run(gate, 100.01, 100.4)
    last = cmd.targets["right"].position
    start = last + np.array([-0.1, 0.25, 0.05])  # the next episode's start pose
    t = 100.41
    while gate.tick(t).mode == "execute":  # the chunk runs out: a hold
        feed(gate, t + 1e-3, last)
        t = round(t + 0.1, 6)
    feed(gate, t + 0.01, start)
    gate.on_instruction()  # the next episode's task
    held = gate.tick(t + 0.02).targets["right"].position
    assert np.linalg.norm(held - last) == pytest.approx(gate.limits.max_step_translation_m)  # not one jump
    ok, why = gate.reset("evaluation episode 1: the sim was reset", "evaluation", t + 0.03)
    assert ok, why
    feed(gate, t + 0.04, start)
    cmd = gate.tick(t + 0.05)
    assert cmd.mode == "hold" and np.allclose(cmd.targets["right"].position, start) and not gate.latched
    # and the first chunk of the new episode starts from there, its steps checked against the new anchor
    assert gate.judge(chunk(gate.robot, moving(gate.robot, dx=0.01), stamp=t + 0.04, sequence=1), t + 0.06).approved
    cmd = run(gate, t + 0.06, t + 0.5, position=None)
    assert cmd.mode == "execute" and np.linalg.norm(cmd.targets["right"].position - start) < 0.06 and not gate.latched


def test_a_pose_in_another_frame_latches_stop_and_is_not_used(tmp_path):
    """Item 1: the pose's frame_id is checked against the robot config's base_frame."""
    robot = RobotInterface(write_robot_config(tmp_path / "robot.yaml"))  # base_frame: base
    gate = SafetyGateCore(robot, SafetyLimits(), GateSettings())
    gate.on_pose("right", 10.0, [0.4, 0.0, 0.2], DOWN, now=10.0, frame_id="base")
    assert not gate.latched
    gate.on_pose("right", 10.1, [0.9, 0.0, 0.2], DOWN, now=10.1, frame_id="camera_link")
    assert gate.latched and "frame 'camera_link', expected 'base'" in gate.stop_reason
    assert gate.states.newest_stamps()["right/pose"] == 10.0  # the sample was dropped


def test_no_usable_hold_target_holds_the_last_command_and_latches_stop():
    """Item 1: a hold target that is NaN is replaced by the last command sent, with STOP naming why."""
    gate = panda_gate()
    assert gate.judge(chunk(gate.robot, moving(gate.robot, dx=0.01)), 100.01).approved
    last = run(gate, 100.01, 100.3).targets
    bad = {"right": HandState(np.array([np.nan, 0, 0]), DOWN, np.array([0.04]))}
    held = gate.safe_hold(bad)
    assert np.allclose(held["right"].position, last["right"].position)
    assert gate.latched and "no usable hold target for right" in gate.stop_reason


# ---------------------------------------------------------------------------------------------- item 2: time


def test_a_future_stamp_latches_stop_instead_of_hiding_a_silent_stream():
    """Item 2: one pose stamped an hour ahead used to keep the stream 'fresh' for an hour."""
    gate = panda_gate()
    gate.on_pose("right", 100.0 + 3600, CENTRE, DOWN, now=100.05, mono=100.05)
    assert gate.latched and "right/pose stamp is 3599.950 s ahead" in gate.stop_reason


def test_stream_ages_run_on_the_arrival_clock():
    """Item 2: samples stamped a little ahead (within max_stamp_lead_s) still go stale by arrival."""
    gate = panda_gate()
    lead = gate.limits.max_stamp_lead_s * 0.9
    feed(gate, 100.1 + lead, CENTRE, beats=False, mono=100.1)  # arrives at 100.1, stamped ahead
    for source in ("model_host", "judge"):
        gate.on_source(source, STATUS_OK, "ok", 0, 101.2)
    level, reason = gate.verdict(101.2)  # 1.1 s after arrival, 0.7 s after the stamp: stale (1.0 s)
    assert level == STATUS_STOP and "right/pose stale: newest sample is 1.10 s old" in reason


def test_a_stamp_going_back_latches_stop():
    gate = panda_gate()
    gate.on_fingers("right", 99.0, [0.04], now=100.1)
    assert gate.latched and "right/fingers stamp went back by 1.000 s" in gate.stop_reason


def test_a_ros_clock_stepping_back_latches_stop_and_ages_stay_positive():
    """Item 2: the ROS clock steps back 10 s; the watchdog ages run on the monotonic arrival clock, so the host
    heartbeat that stops meanwhile is still seen missing (a negative age used to hide it)."""
    gate = panda_gate()
    gate.tick(100.0, mono=5.0)
    gate.on_source("model_host", STATUS_OK, "ok", 0, 100.01, mono=5.01)
    cmd = gate.tick(90.0, mono=5.02)
    assert gate.latched and gate.stop_reason.startswith("the ROS clock went back by 10.000 s") and cmd.mode == "hold"
    g2 = panda_gate()
    g2.on_source("model_host", STATUS_OK, "ok", 0, 100.0, mono=5.0)
    level, reason = g2.verdict(90.0, mono=5.3)  # ROS time says -10 s; the arrival clock says 0.3 s
    assert level == STATUS_STOP and "model_host heartbeat missing for 0.30 s" in reason


def test_a_ros_clock_jumping_ahead_latches_stop_but_a_stall_is_no_jump():
    """The ROS clock 60 s ahead in 0.02 s of steady time is a jump; both clocks moving 2 s (a gate that
    stalled) is not: the heartbeats name that."""
    gate = panda_gate()
    steady = SimpleNamespace(t=5.0)
    gate.wall_clock = lambda: steady.t
    gate.tick(100.0, mono=5.0)
    steady.t = 5.02
    gate.tick(160.0, mono=5.02)
    assert gate.latched and "the ROS clock jumped 60.00 s ahead in 0.02 s of steady time" in gate.stop_reason
    stalled = panda_gate()
    steady.t = 5.0
    stalled.wall_clock = lambda: steady.t
    stalled.tick(100.0)
    steady.t = 7.0
    stalled.tick(102.0)
    assert stalled.latched and stalled.stop_reason.startswith("model_host heartbeat missing for 2.00 s")


def test_a_chunk_stamped_in_the_future_latches_stop():
    gate = panda_gate()
    d = gate.judge(chunk(gate.robot, moving(gate.robot), stamp=200.0), 100.05)
    assert not d.approved and gate.latched and "ahead of the gate's clock" in d.reason


# ---------------------------------------------------------------------------------------------- item 3: no crash


def test_msg_to_chunk_validates_before_it_allocates():
    """Item 3: a proposal declaring 2^32-1 x 2^32-1 actions used to be allocated (and raise out of the callback)."""
    msg = SimpleNamespace(horizon=2**32 - 1, action_dim=2**32 - 1, actions=[0.0] * 7, sequence=3,
                          header=SimpleNamespace(stamp=SimpleNamespace(sec=1, nanosec=0)))
    t = time.perf_counter()
    with pytest.raises(BadMessage, match="chunk 3 declares horizon 4294967295 x action_dim 4294967295 but carries 7"):
        msg_to_chunk(msg)
    assert time.perf_counter() - t < 0.1
    msg.horizon, msg.action_dim = 2, 4  # a plain length mismatch
    with pytest.raises(BadMessage, match="declares horizon 2 x action_dim 4 but carries 7"):
        msg_to_chunk(msg)


def test_an_exception_inside_the_core_is_a_named_stop_not_a_crash(monkeypatch):
    """Item 3: whatever raises inside the gate's core latches STOP naming it, and the gate holds."""
    gate = panda_gate()

    def broken(*_a, **_k):
        raise RuntimeError("boom")

    monkeypatch.setattr(gate.robot, "plan", broken)
    d = gate.judge(chunk(gate.robot, moving(gate.robot)), 100.05)
    assert not d.approved and gate.stop_reason == "internal error in judge: RuntimeError: boom"
    monkeypatch.setattr(gate.executor, "step", broken)
    cmd = gate.tick(100.06)
    assert cmd.mode == "hold"  # the last command sent (none yet: nothing to publish)


def test_bad_inputs_are_counted_once_per_cause():
    gate = panda_gate()
    assert gate.bad_input("/robot/right/gripper_state", "JointState does not name every finger joint")
    assert not gate.bad_input("/robot/right/gripper_state", "JointState does not name every finger joint")
    assert sum(gate.bad_inputs.values()) == 2 and not gate.latched
    assert gate.bad_input("/lda/proposed_chunk", "chunk 5 declares horizon 9 x action_dim 7 but carries 3 values")
    assert not gate.bad_input("/lda/proposed_chunk", "chunk 6 declares horizon 1e3 x action_dim 7 but carries 3 values")
    gate.on_fingers("right", 100.1, [0.01, 0.02, 0.03], now=100.1)  # the robot reports the wrong width
    assert gate.latched and "finger state has 3 values, the robot config 1" in gate.stop_reason


# ---------------------------------------------------------------------------------------------- item 4: sequences


def test_a_forged_far_ahead_sequence_latches_stop():
    """Item 4: a within-limits chunk with sequence 2^64-1 used to be approved and lock out the real host."""
    gate = panda_gate()
    robot = gate.robot
    assert gate.judge(chunk(robot, moving(robot), sequence=1), 100.01).approved
    d = gate.judge(chunk(robot, moving(robot), sequence=2**64 - 1), 100.02)
    assert not d.approved and gate.latched and "jumps" in d.reason and "max_sequence_gap 1000" in d.reason


def test_a_reset_restarts_sequencing_whatever_was_latched():
    """Item 4: a forged first chunk (nothing approved before, so no gap to see) locks out the real host; a
    reset while holding restarts the sequence even with nothing latched (it used to return early)."""
    gate = panda_gate()
    robot = gate.robot
    assert gate.judge(chunk(robot, moving(robot), sequence=2**64 - 1), 100.01).approved
    feed(gate, 101.5, CENTRE)
    assert gate.tick(101.5).mode == "hold"  # the forged chunk ran out
    assert not gate.judge(chunk(robot, moving(robot), stamp=101.5, sequence=7), 101.51).approved  # out of order
    ok, message = gate.reset("forged chunk seen in the log", "op", 101.6)
    assert ok and not gate.latched, message
    assert gate.judge(chunk(robot, moving(robot), stamp=101.5, sequence=7), 101.61).approved


# ---------------------------------------------------------------------------------------------- item 5: grasps


def test_a_new_instruction_does_not_release_a_grasp():
    """Item 5: the hold after an instruction change keeps the commanded (closed) fingers, not the measured width."""
    gate = panda_gate()
    robot = gate.robot
    assert gate.judge(chunk(robot, moving(robot, finger=0.0)), 100.01).approved  # close on an object
    run(gate, 100.01, 100.4)
    feed(gate, 100.41, CENTRE, finger=0.03)  # the object stops the fingers at 3 cm
    gate.on_instruction()
    hold = gate.tick(100.42)
    assert hold.mode == "hold" and np.allclose(hold.targets["right"].fingers, [0.0])
    gate.on_source("judge", STATUS_STOP, "surprise 9 > 4", 1, 100.43)
    assert np.allclose(gate.tick(100.44).targets["right"].fingers, [0.0])  # and through a STOP hold
    feed(gate, 100.45, CENTRE, finger=0.08)  # the object was taken out of the hand
    assert np.allclose(gate.tick(100.46).targets["right"].fingers, [0.0])  # still the commanded width
    assert gate.reset("object removed by hand", "op", 100.5)[0]  # the operator's release, while holding
    assert np.allclose(gate.tick(100.52).targets["right"].fingers, [0.08])  # the hold takes the measured width


# ---------------------------------------------------------------------------------------------- item 6: smaller


@pytest.mark.parametrize("field", ["host_timeout_s", "judge_timeout_s", "state_tolerance_s", "max_clock_jump_s"])
def test_nan_timeouts_are_refused(field):
    with pytest.raises(ValueError, match=field):
        GateSettings(**{field: math.nan})
    with pytest.raises(ValueError, match="approval_deadline_s"):
        ExecutorConfig(approval_deadline_s=math.nan)


def test_a_stalled_tick_holds_and_drops_the_chunks():
    """Item 6: the executor's own heartbeat could never fire (each tick refreshed it first); now a gap between
    two ticks longer than heartbeat_timeout_s of steady time holds and discards the active chunks. A simulated
    clock that advances in steps of the simulator's period between ticks is not a stall (it cost the demo every
    lift)."""
    gate = panda_gate(GateSettings(executor=ExecutorConfig(heartbeat_timeout_s=0.1)))  # the node's: 5 / 50 Hz
    steady = SimpleNamespace(t=0.0)
    gate.wall_clock = lambda: steady.t  # the gate process's steady clock, which the stall check runs on
    assert gate.judge(chunk(gate.robot, moving(gate.robot, dx=0.005)), 100.01).approved
    for k in range(20):  # ticks 10 ms apart in steady time, while a simulated clock jumps two 0.1 s steps
        steady.t = 0.01 * k
        now = round(100.01 + 0.2 * (k // 10), 6)
        if k % 10 == 0:
            feed(gate, now, CENTRE)
        assert gate.tick(now).mode == "execute", k
    feed(gate, 100.9, CENTRE)
    steady.t += 0.8
    cmd = gate.tick(100.9)  # 0.8 s of steady time since the last tick (> 0.1 s)
    assert cmd.mode == "hold" and "the gate's own tick stalled for 0.80 s" in cmd.reason
    steady.t += 0.02
    assert gate.tick(100.92).mode == "hold" and not gate.latched  # a hold, not a fault: the chunk is gone


def gr1_gate(**override):
    robot = RobotInterface(REPO / "config" / "robots" / "gr1_humanoid.yaml")
    limits = shipped_limits("gr1_humanoid_sim", **override)
    gate = SafetyGateCore(robot, limits, GateSettings())
    centres = {h: sum(limits.box(h)) / 2 for h in robot.hands}
    feed(gate, 100.0, centres, finger=0.5)
    return gate, centres


@pytest.mark.parametrize("robot", ["gr1_humanoid", "gr1_humanoid_sim"])
def test_gr1_limits_are_per_hand(robot):
    lim = shipped_limits(robot)
    assert set(lim.hands) == {"left", "right"} and lim.min_hand_distance_m > 0
    assert lim.box("left")[0][1] > lim.workspace_min[1] and lim.box("right")[1][1] < lim.workspace_max[1]


def test_a_hand_leaving_its_own_box_and_hands_too_close_latch_stop():
    gate, centres = gr1_gate()
    lo, hi = gate.limits.box("right")
    gate.on_pose("right", 100.05, [centres["right"][0], hi[1] + 0.05, centres["right"][2]], DOWN, now=100.05)
    assert gate.latched and "right measured pose" in gate.stop_reason and "leaves the workspace box" in gate.stop_reason
    gate, centres = gr1_gate()
    d = gate.limits.min_hand_distance_m
    close = {"left": centres["left"], "right": centres["left"] - [0, d / 2, 0]}
    assert inside(gate.limits, "right", close["right"])  # inside its box: only the distance is wrong
    a = np.zeros((16, gate.robot.action_dim))
    for h in gate.robot.hands:
        a[:, gate.robot.space.finger_columns(h)] = 0.5
    feed(gate, 100.1, close, finger=0.5)
    decision = gate.judge(chunk(gate.robot, a, stamp=100.1), 100.12)
    assert not decision.approved and "hands left and right come" in decision.reason


def test_per_hand_limits_from_ros_parameters():
    lim = SafetyLimits.from_params({"hands.left.workspace_min": [0.0, 0.0, 0.0], "min_hand_distance_m": 0.1}, "t")
    assert lim.box("left")[0].tolist() == [0.0, 0.0, 0.0]
    assert lim.box("left")[1].tolist() == list(SafetyLimits().workspace_max)  # the rest from the global
    assert lim.box("right")[0].tolist() == list(SafetyLimits().workspace_min)
    with pytest.raises(ConfigError, match="hands.left.workspace_min"):
        SafetyLimits.from_params({"hands.left.workspace_min": [2.0, 0.0, 0.0]}, "t")


# ---------------------------------------------------------------------------------------------- item 7: bands


def test_a_command_within_the_band_is_clamped_and_beyond_it_stops():
    """Item 7: a chunk whose late rows dip 1 cm under the floor runs, clamped (counted); 5 cm under: STOP."""
    gate = panda_gate(workspace_band_m=0.02)
    floor = gate.limits.workspace_min[2]
    start = np.array([0.5, 0.0, floor + 0.02])
    feed(gate, 100.05, start)
    a = moving(gate.robot, dz=0.002)  # EEF z points down: 16 x 2 mm, 1.2 cm under the floor
    assert gate.judge(chunk(gate.robot, a, stamp=100.05), 100.06).approved
    t, lowest = 100.06, 1.0
    while t < 101.7:
        cmd = gate.tick(t)
        lowest = min(lowest, cmd.targets["right"].position[2])
        feed(gate, t + 1e-3, cmd.targets["right"].position)
        t = round(t + 0.1, 6)
    assert not gate.latched and lowest >= floor - 1e-9 and gate.clamped > 0
    strict = panda_gate(workspace_band_m=0.0)  # no band: the same chunk latches STOP, as before
    feed(strict, 100.05, start)
    assert not strict.judge(chunk(strict.robot, a, stamp=100.05), 100.06).approved and strict.latched
    deep = panda_gate(workspace_band_m=0.02)
    feed(deep, 100.05, start)
    d = deep.judge(chunk(deep.robot, moving(deep.robot, dz=0.004), stamp=100.05), 100.06)  # 4.4 cm under
    assert not d.approved and "by more than its band 0.02 m" in d.reason


def test_a_measured_pose_beyond_the_band_stops():
    gate = panda_gate(workspace_band_m=0.02)
    floor = gate.limits.workspace_min[2]
    gate.on_pose("right", 100.05, [0.5, 0.0, floor - 0.01], DOWN, now=100.05)
    assert not gate.latched  # within the band
    gate.on_pose("right", 100.06, [0.5, 0.0, floor - 0.03], DOWN, now=100.06)
    assert gate.latched and "by more than its band" in gate.stop_reason


def test_a_clamped_command_makes_the_status_warn():
    """Item 7: a clamp is not silent: the gate's status is WARN naming it for CLAMP_WARN_S, then OK again."""
    from lda_policy.deploy.gate import CLAMP_WARN_S
    from lda_policy.deploy.safety import STATUS_WARN

    gate = panda_gate(workspace_band_m=0.02)
    clock = SimpleNamespace(t=100.0)
    gate.wall_clock = lambda: clock.t  # steady time follows the test's clock (no clock-jump STOP)
    floor = gate.limits.workspace_min[2]
    feed(gate, 100.05, np.array([0.5, 0.0, floor + 0.02]))
    assert gate.judge(chunk(gate.robot, moving(gate.robot, dz=0.002), stamp=100.05), 100.06).approved
    t = 100.06
    while gate.clamped == 0 and t < 101.7:
        clock.t = t
        cmd = gate.tick(t)
        feed(gate, t + 1e-3, cmd.targets["right"].position)
        t = round(t + 0.1, 6)
    assert gate.clamped > 0
    level, reason = gate.verdict(t)
    assert level == STATUS_WARN and "commands clamped into the limits" in reason and "right command clamped" in reason
    later = clock.t = t + CLAMP_WARN_S + 0.1  # no clamp since: the status clears (fresh streams and heartbeats)
    feed(gate, later, np.array([0.5, 0.0, floor + 0.05]))
    assert gate.verdict(later) == (STATUS_OK, "ok") and not gate.latched


def test_a_measured_finger_state_beyond_its_range_and_band_stops():
    """Item 1/7: the measured fingers are range-checked like the measured pose (within the band: kept)."""
    gate = panda_gate(finger_band=0.01)
    fmin, fmax = gate.limits.finger_range("right")
    gate.on_fingers("right", 100.05, [fmax + 0.005], now=100.05)
    assert not gate.latched
    gate.on_fingers("right", 100.06, [fmax + 0.05], now=100.06)
    assert gate.latched and "right finger state" in gate.stop_reason and "by more than its band" in gate.stop_reason
    gate = panda_gate()
    gate.on_fingers("right", 100.05, [fmin - 0.02], now=100.05)
    assert gate.latched and "outside [" in gate.stop_reason
