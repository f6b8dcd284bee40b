"""The safety gate in joint space (issue #28 item 3): the authors' LDA-1B commands the GR-1's 29 joints'
absolute positions at 20 Hz. The core's rules without ROS: approval, refusals (out of range, too fast, NaN),
the hold (the last command; the measured positions clipped before any), the clamp band, a stale joint stream
and JointStates that cannot be used. The hand-centric gate is unchanged (test_deploy_gate.py and friends)."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml
from lda_common.config import ConfigError
from lda_policy.deploy.chunks import ProposedChunk
from lda_policy.deploy.command_space import make_space
from lda_policy.deploy.gate import GateSettings, SafetyGateCore
from lda_policy.deploy.joint_space import PART, JointLimits
from lda_policy.deploy.robot import RobotInterface
from lda_policy.deploy.safety import STATUS_OK, SafetyLimits

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "config" / "deploy"
GR1 = RobotInterface(REPO / "config" / "robots" / "gr1_humanoid.yaml")
NAMES = GR1.config.joints.joint_names
T0 = 100.0


def shipped_params(**override) -> dict:
    params = {}
    for f in (DEPLOY / "safety_gate.yaml", DEPLOY / "limits" / "gr1_humanoid.yaml"):
        params.update(yaml.safe_load(f.read_text())["/**"]["ros__parameters"])
    return {**params, **override}


def joint_gate(**override) -> SafetyGateCore:
    params = shipped_params(**override)
    limits = SafetyLimits.from_params(params, "gr1_humanoid")
    space = make_space("joints", GR1, limits, JointLimits.from_params(params, GR1.config.joints, "gr1_humanoid"))
    gate = SafetyGateCore(GR1, limits, GateSettings(), space=space)
    return gate


def mid(gate) -> np.ndarray:
    lim = gate.space.joint_limits
    return (lim.lower + lim.upper) / 2


def feed(gate, t, q, beats=True, names=None):
    gate.on_joints(t, list(names or NAMES), [float(v) for v in q], now=t)
    if beats:
        for source in ("model_host", "judge"):
            gate.on_source(source, STATUS_OK, "ok", 0, t)


def chunk(rows, stamp=T0, sequence=1, dt=0.05, names=None) -> ProposedChunk:
    c = ProposedChunk(sequence, stamp, dt, "gr1_humanoid", list(names or NAMES), np.asarray(rows, float), 0.1)
    c.digest = c.computed_digest()
    return c


def ramp(start, joint=0, per_row=0.02, rows=16) -> np.ndarray:
    a = np.tile(start, (rows, 1))
    a[:, joint] += per_row * np.arange(1, rows + 1)
    return a


def run(gate, q, t, seconds, dt=0.02):
    """Tick with a perfect position controller; every command is checked against the ranges and the step."""
    lim, last, last_t, cmds = gate.space.joint_limits, None, t, []
    for _ in range(int(round(seconds / dt))):
        cmd = gate.tick(t)
        if cmd.targets is not None:
            c = cmd.targets[PART]
            assert c.shape == (29,) and np.isfinite(c).all()
            assert ((c >= lim.lower - 1e-9) & (c <= lim.upper + 1e-9)).all()
            if last is not None:  # one step, and the speed (rate-limited) since the last command
                assert (np.abs(c - last) <= np.minimum(lim.max_step, lim.max_speed * (t - last_t)) + 1e-9).all()
            last, last_t, q = c, t, c
            cmds.append(cmd)
        t = round(t + dt, 6)
        feed(gate, t, q)
    return cmds, t


def test_the_gr1_joint_limits_load_from_the_shipped_file():
    lim = JointLimits.from_params(shipped_params(), GR1.config.joints, "gr1_humanoid.yaml")
    assert list(lim.joint_names) == NAMES and len(NAMES) == 29
    i = NAMES.index
    assert (lim.lower[i("r_shoulder_roll")], lim.upper[i("r_shoulder_roll")]) == (-3.0, 0.0)  # robosuite's GR1
    assert (lim.lower[i("L_thumb_proximal_yaw_joint")], lim.upper[i("L_thumb_proximal_yaw_joint")]) == (0.0, 1.74)
    assert lim.max_speed[i("l_elbow_pitch")] == 1.0 and lim.max_speed[i("R_index_proximal_joint")] == 3.0
    assert lim.row_step(0.05)[0] == pytest.approx(0.05) and lim.band == 0.05


@pytest.mark.parametrize(("override", "message"), [
    ({"joint_ranges": {"l_shoulder_pitch": [1.0, -1.0]}},
     "f.yaml: joint_ranges.l_shoulder_pitch: low 1.0 must be below"),
    ({"joint_ranges": {"l_shoulder_pitch": [-30.0, 3.0]}}, "joint_ranges.l_shoulder_pitch: -30.0 is beyond the sanity"),
    ({"joint_ranges": {"l_shoulder_pitch": [0.0]}}, "joint_ranges.l_shoulder_pitch: expected \\[low, high\\]"),
    ({"joint_ranges": {"nose": [0.0, 1.0]}}, "joint_ranges.nose: the robot config's joint space has no joint 'nose'"),
    ({"joint_max_speed_rad_s": 0.0}, "f.yaml: joint_max_speed_rad_s: must be > 0"),
    ({"joint_max_step_rad": float("nan")}, "joint_max_step_rad: must be a finite number"),
    ({"joint_band_rad": -0.1}, "joint_band_rad: must be >= 0"),
    ({"joint_groups": {"tail": {"max_step_rad": 0.1}}}, "joint_groups.tail.max_step_rad: expected joint_groups"),
])
def test_bad_joint_limits_name_the_file_and_key(override, message):
    params = shipped_params()
    if "joint_ranges" in override:  # replace one joint's range, or add an unknown joint
        override = {"joint_ranges": {**params["joint_ranges"], **override["joint_ranges"]}}
    with pytest.raises(ConfigError, match=message):
        JointLimits.from_params({**params, **override}, GR1.config.joints, "f.yaml")
    params["joint_ranges"].pop("torso_waist_roll")
    with pytest.raises(ConfigError, match="f.yaml: joint_ranges.torso_waist_roll: missing"):
        JointLimits.from_params(params, GR1.config.joints, "f.yaml")


def test_a_joint_chunk_within_limits_is_approved_and_commanded():
    gate = joint_gate()
    q = mid(gate)
    feed(gate, T0, q)
    decision = gate.judge(chunk(ramp(q)), T0 + 0.01)
    assert decision.approved, decision.reason
    cmds, _ = run(gate, q, T0 + 0.01, 0.6)
    assert cmds[0].mode == "execute" and not gate.latched
    assert cmds[-1].targets[PART][0] > q[0] + 0.1  # the ramp ran (interpolated, at most one step per tick)


@pytest.mark.parametrize(("edit", "reason"), [
    (lambda a, q: a.__setitem__((5, 3), 0.5), "joint l_elbow_pitch target 0.500 (row 5) outside [-3.0, 0.0] by more"),
    (lambda a, q: a.__setitem__((slice(8, None), 0), q[0] + 0.5),
     "joint l_shoulder_pitch moves 0.340 rad between rows 7"),
    (lambda a, q: a.__setitem__((slice(None), 20), q[20] + 0.5),
     "joint R_thumb_proximal_yaw_joint moves 0.500 rad from the measured position to row 0"),
    (lambda a, q: a.__setitem__((3, 2), np.nan), "NaN/inf in actions (row 3, column l_shoulder_yaw)"),
])
def test_a_joint_chunk_out_of_range_too_fast_or_nan_latches_stop(edit, reason):
    gate = joint_gate()
    q = mid(gate)
    feed(gate, T0, q)
    a = ramp(q)
    edit(a, q)
    decision = gate.judge(chunk(a), T0 + 0.01)
    assert not decision.approved and gate.latched
    assert reason in gate.stop_reason, gate.stop_reason


def test_a_joint_chunk_for_the_hand_columns_is_refused():
    gate = joint_gate()
    feed(gate, T0, mid(gate))
    decision = gate.judge(chunk(np.zeros((16, GR1.action_dim)), names=GR1.dimension_names), T0 + 0.01)
    assert not decision.approved and "expected (H, 29)" in gate.stop_reason
    gate = joint_gate()
    feed(gate, T0, mid(gate))
    decision = gate.judge(chunk(ramp(mid(gate)), dt=0.1), T0 + 0.01)
    assert not decision.approved and "the robot runs at 0.05 s" in gate.stop_reason


def test_the_first_row_may_start_from_the_last_command_when_the_arm_lags():
    """A position-controlled arm lags its command: the first row may be one step from either."""
    gate = joint_gate()
    q = mid(gate)
    feed(gate, T0, q)
    assert gate.judge(chunk(ramp(q, per_row=0.04)), T0 + 0.01).approved
    _, t = run(gate, q, T0 + 0.01, 0.3)
    sent = gate._last_sent[PART].copy()
    lagging = sent.copy()
    lagging[0] -= 0.2  # the arm is 0.2 rad behind its command
    feed(gate, t, lagging)
    assert gate.judge(chunk(ramp(sent, per_row=0.04), stamp=t, sequence=2), t + 0.01).approved, gate.stop_reason


def test_a_hold_commands_the_last_command_sent_and_before_any_the_measured_positions_clipped():
    gate = joint_gate()
    q = mid(gate)
    q[NAMES.index("l_elbow_pitch")] = 0.03  # measured 0.03 rad beyond its range (within the band)
    feed(gate, T0, q)
    assert not gate.latched
    cmd = gate.tick(T0 + 0.01)  # waiting for a chunk: a hold of the measured positions, clipped into range
    assert cmd.mode == "hold" and cmd.targets[PART][NAMES.index("l_elbow_pitch")] == 0.0
    q[NAMES.index("l_elbow_pitch")] = -1.0
    feed(gate, T0 + 0.02, q)
    assert gate.judge(chunk(ramp(q), stamp=T0 + 0.02), T0 + 0.03).approved
    _, t = run(gate, q, T0 + 0.03, 0.3)
    sent = gate._last_sent[PART].copy()
    slipped = sent + 0.3  # the measured arm is far from the command when the STOP comes
    feed(gate, t, slipped)
    gate.stop("test")
    cmd = gate.tick(t + 0.01)
    assert cmd.mode == "hold" and np.array_equal(cmd.targets[PART], sent)  # the last command, not the slip
    gate.on_instruction()  # a new task: still the last command (a grasp stays closed)
    assert np.array_equal(gate.tick(t + 0.03).targets[PART], sent)


def test_no_joint_state_and_no_command_holds_nothing():
    gate = joint_gate()
    held = gate.safe_hold({PART: np.full(29, np.nan)})
    assert held is None and "no usable joint hold target" in gate.stop_reason


def test_a_command_within_the_band_is_clamped_and_beyond_it_stops():
    gate = joint_gate()
    q = mid(gate)
    j = NAMES.index("r_elbow_pitch")  # range [-3, 0]
    q[j] = -0.2
    feed(gate, T0, q)
    a = ramp(q, joint=j, per_row=0.015)  # ends at +0.04: within the 0.05 band
    assert gate.judge(chunk(a), T0 + 0.01).approved, gate.stop_reason
    cmds, t = run(gate, q, T0 + 0.01, 0.9)
    assert not gate.latched and gate.clamped > 0 and "r_elbow_pitch" in gate.last_clamp
    assert max(c.targets[PART][j] for c in cmds) == 0.0
    # the limits change under a running chunk: its next command is beyond the band now -> STOP, hold
    gate = joint_gate()
    feed(gate, T0, q)
    assert gate.judge(chunk(ramp(q, joint=j, per_row=0.01)), T0 + 0.01).approved
    _, t = run(gate, q, T0 + 0.01, 0.2)
    lim = gate.space.joint_limits
    upper = lim.upper.copy()
    upper[j] = -0.19
    gate.space.joint_limits = dataclasses.replace(lim, upper=upper, band=0.0)
    cmd = gate.tick(t + 0.03)
    assert cmd.mode == "hold" and gate.latched and "command check: joint r_elbow_pitch command" in gate.stop_reason


def test_a_command_faster_than_the_speed_is_rate_limited_and_a_jump_stops():
    """The speed is a controller's velocity limit on commands (a cross-fade may ask a little more than the rows
    were checked for): rate-limited, a WARN. A command more than one step from the one before is a STOP."""
    gate = joint_gate()
    q = mid(gate)
    feed(gate, T0, q)
    for k in range(5):  # holding, as a running gate does, before the chunk comes
        gate.tick(T0 + 0.02 * k)
        feed(gate, T0 + 0.02 * (k + 1), q)
    t = T0 + 0.1
    for seq in range(1, 5):  # replans at 0.9 rad/s, each cross-faded in over the last: faster while blending
        start = gate._last_sent[PART]
        assert gate.judge(chunk(ramp(start, per_row=0.045), stamp=t, sequence=seq), t + 0.005).approved
        _, t = run(gate, q, t, 0.3)
    assert not gate.latched and gate.clamped > 0 and "rate-limited" in gate.last_clamp, gate.stop_reason
    lim = gate.space.joint_limits
    gate.space.joint_limits = dataclasses.replace(lim, max_step=lim.max_step / 1000)  # every move is a jump now
    assert gate.judge(chunk(ramp(gate._last_sent[PART], per_row=0.04), stamp=t, sequence=9), t + 0.005).approved \
        is False  # refused by the per-row step as well
    gate = joint_gate()
    feed(gate, T0, q)
    assert gate.judge(chunk(ramp(q, per_row=0.04)), T0 + 0.01).approved
    _, t = run(gate, q, T0 + 0.01, 0.2)
    gate.space.joint_limits = dataclasses.replace(lim, max_step=lim.max_step / 1000)
    feed(gate, t, gate._last_sent[PART])
    gate.tick(t)
    assert gate.latched and "command check: joint l_shoulder_pitch moves" in gate.stop_reason
    assert "in one command" in gate.stop_reason


def test_a_stale_joint_stream_latches_stop_and_a_missing_one_waits():
    gate = joint_gate()
    for source in ("model_host", "judge"):
        gate.on_source(source, STATUS_OK, "ok", 0, T0)
    level, reason = gate.verdict(T0 + 0.01)
    assert level == 1 and "joints never received" in reason and not gate.latched
    feed(gate, T0, mid(gate))
    for source in ("model_host", "judge"):
        gate.on_source(source, STATUS_OK, "ok", 0, T0 + 0.6)
    gate.tick(T0 + 0.6)
    assert gate.latched and gate.stop_reason.startswith("joints stale: newest sample is 0.60 s old")


@pytest.mark.parametrize(("names", "positions", "cause"), [
    (NAMES[:-1], [0.0] * 28, "JointState lacks joint 'torso_waist_roll'"),
    (NAMES, [0.0] * 28, "JointState has 29 names but 28 positions"),
    (NAMES, [0.0] * 5 + [float("nan")] + [0.0] * 23, "NaN/inf in the joint state (joint l_wrist_roll)"),
    (NAMES + ["l_shoulder_pitch"], [0.0] * 30, "JointState names joint 'l_shoulder_pitch' twice"),
])
def test_a_joint_state_that_cannot_be_used_is_a_bad_input_that_latches_stop(names, positions, cause):
    gate = joint_gate()
    gate.on_joints(T0, names, positions, now=T0)
    assert gate.stop_reason.startswith(f"bad message on /robot/joint_states: {cause}"), gate.stop_reason
    assert sum(gate.bad_inputs.values()) == 1


def test_extra_joints_in_any_order_are_fine_and_a_measured_position_beyond_the_band_stops():
    gate = joint_gate()
    q = mid(gate)
    order = list(reversed(range(29)))
    gate.on_joints(T0, ["head_yaw"] + [NAMES[k] for k in order], [0.3] + [float(q[k]) for k in order], now=T0)
    assert not gate.latched and np.array_equal(gate.space.latest()[PART], q)
    q[NAMES.index("torso_waist_pitch")] = 1.4  # range [-0.52, 1.22], band 0.05
    gate.on_joints(T0 + 0.02, NAMES, list(q), now=T0 + 0.02)
    assert gate.latched and "joint torso_waist_pitch measured position 1.400 outside [-0.52, 1.22] by more than" \
        in gate.stop_reason


def test_joint_stamps_are_checked_as_for_the_hand_streams():
    gate = joint_gate()
    gate.on_joints(T0 + 3600, NAMES, list(mid(gate)), now=T0)
    assert gate.latched and gate.stop_reason.startswith("joints stamp is 3600.000 s ahead of the gate's clock")
    gate = joint_gate()
    gate.on_joints(T0, NAMES, list(mid(gate)), now=T0)
    gate.on_joints(T0 - 1, NAMES, list(mid(gate)), now=T0)
    assert gate.latched and gate.stop_reason.startswith("joints stamp went back by 1.000 s")


def test_hand_streams_are_not_used_in_joint_space():
    gate = joint_gate()
    gate.on_pose("left", T0, [0.3, 0.2, 0.1], [1.0, 0, 0, 0], now=T0)
    gate.on_fingers("left", T0, [0.1] * 6, now=T0)
    assert not gate.latched and sum(gate.bad_inputs.values()) == 2
    with pytest.raises(ValueError, match="action_space must be one of"):
        make_space("wheels", GR1, gate.limits)
