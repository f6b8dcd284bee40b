"""The safety gate's core, ROS-free and torch-free: the shipped limit files with each limit violated once,
heartbeats and faults, the latch and its reset rules, the re-check of every command."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from lda_common.config import ConfigError
from lda_policy.deploy.chunks import ProposedChunk
from lda_policy.deploy.gate import GateSettings, SafetyGateCore
from lda_policy.deploy.robot import RobotInterface
from lda_policy.deploy.safety import SANITY_BOUNDS, STATUS_OK, STATUS_STOP, STATUS_WARN, SafetyLimits

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "config" / "deploy"
ROBOTS = sorted(p.stem for p in (DEPLOY / "limits").glob("*.yaml"))  # <robot>.yaml, or <robot>_sim.yaml
DOWN = np.array([1.0, 0.0, 0.0, 0.0])  # EEF pointing down


def shipped_limits(robot: str) -> SafetyLimits:
    """config/deploy/safety_gate.yaml overlaid with limits/<robot>.yaml, as the launch file passes them."""
    params = {}
    for f in (DEPLOY / "safety_gate.yaml", DEPLOY / "limits" / f"{robot}.yaml"):
        params.update(yaml.safe_load(f.read_text())["/**"]["ros__parameters"])
    return SafetyLimits.from_params(params, robot)


def make_gate(robot_name: str, anchor: np.ndarray | None = None, now: float = 100.0):
    # <robot>_sim.yaml: that robot's limits in the simulator (gr1_humanoid_sim.yaml for the GR-1 demo)
    robot = RobotInterface(REPO / "config" / "robots" / f"{robot_name.removesuffix('_sim')}.yaml")
    limits = shipped_limits(robot_name)
    gate = SafetyGateCore(robot, limits, GateSettings())
    # each hand at the centre of its own box (a multi-hand robot's limits may give each hand its own)
    centre = {h: sum(limits.box(h)) / 2 for h in robot.hands}
    mid_finger = (limits.finger_min + limits.finger_max) / 2
    feed(gate, now, centre if anchor is None else anchor, mid_finger)
    return gate, robot, centre, mid_finger


def feed(gate, t, position, finger, beats=True):
    for h in gate.robot.config.hands:
        gate.on_pose(h.name, t, position[h.name] if isinstance(position, dict) else position, DOWN)
        gate.on_fingers(h.name, t, np.full(len(h.fingers.joints) if h.fingers.type == "joints" else 1, finger))
    if beats:
        for source in ("model_host", "judge"):
            gate.on_source(source, STATUS_OK, "ok", 0, t)


def chunk(robot, actions, stamp=100.0, sequence=1, digest=None) -> ProposedChunk:
    c = ProposedChunk(sequence, stamp, robot.dt, robot.embodiment, robot.dimension_names, actions, 0.1)
    c.digest = c.computed_digest() if digest is None else digest
    return c


def still(robot, finger) -> np.ndarray:
    a = np.zeros((16, robot.action_dim))
    for h in robot.hands:
        a[:, robot.space.finger_columns(h)] = finger
    return a


def step_limits(lim: SafetyLimits, dt: float) -> tuple[float, float]:
    return min(lim.max_step_translation_m, lim.max_linear_speed_m_s * dt), \
        min(lim.max_step_rotation_rad, lim.max_angular_speed_rad_s * dt)


@pytest.mark.parametrize("robot_name", ROBOTS)
def test_shipped_limits_each_violated_once(robot_name):
    """Each hard limit of the shipped file refuses a chunk that breaks it, latching STOP with its reason."""
    gate, robot, centre, finger = make_gate(robot_name)
    lim = gate.limits
    step_t, step_r = step_limits(lim, robot.dt)
    hand = robot.hands[0]
    col = {name: robot.dimension_names.index(f"{hand}/{name}") for name in ("dx", "drx")}

    def verdict(actions, anchor=None):
        g, *_ = make_gate(robot_name, anchor)
        d = g.judge(chunk(robot, actions), 100.05)
        assert not d.approved
        assert g.latched, d.reason
        return d.reason

    ok = still(robot, finger)
    assert gate.judge(chunk(robot, ok), 100.05).approved  # the baseline chunk passes

    a = ok.copy()
    a[0, col["dx"]] = 1.5 * step_t  # max_step_translation_m / max_linear_speed_m_s
    reason = verdict(a)
    assert f"{hand} moves" in reason and "in row 0" in reason, reason
    a = ok.copy()
    a[0, col["drx"]] = 1.5 * step_r  # max_step_rotation_rad / max_angular_speed_rad_s
    assert f"{hand} turns" in verdict(a)
    a = ok.copy()
    a[:, col["dx"]] = 0.95 * step_t  # max_chunk_translation_m: small steps adding up
    assert f"{hand} chunk reaches" in verdict(a)
    a = ok.copy()
    a[:, col["drx"]] = 0.95 * step_r  # max_chunk_rotation_rad
    assert f"{hand} chunk turns" in verdict(a)
    outside = np.array(lim.workspace_max) + lim.workspace_band_m + 0.01  # workspace_min / _max (beyond the band)
    assert "leaves the workspace box" in verdict(ok, anchor=outside)
    for bad in (lim.finger_max + 0.05, lim.finger_min - 0.05):  # finger_max / finger_min
        a = ok.copy()
        a[:, robot.space.finger_columns(hand)] = bad
        assert "finger command" in verdict(a)
    g, *_ = make_gate(robot_name)  # max_chunk_age_s: refused, no fault (the host is behind)
    d = g.judge(chunk(robot, ok, stamp=100.0), 100.0 + lim.max_chunk_age_s + 0.1)
    assert not d.approved and "max_chunk_age_s" in d.reason and not g.latched
    g, *_ = make_gate(robot_name)  # max_observation_age_s: a hand stream that went quiet
    later = 100.0 + lim.max_observation_age_s + 0.05
    for source in ("model_host", "judge"):
        g.on_source(source, STATUS_OK, "ok", 0, later)
    level, reason = g.verdict(later)
    assert level == STATUS_STOP and "stale" in reason and "max_observation_age_s" in reason


@pytest.mark.parametrize("name", sorted(SANITY_BOUNDS))
def test_limits_beyond_the_sanity_bounds_are_refused(name):
    value = getattr(SafetyLimits(), name)
    bad = tuple(np.sign(v or 1) * (SANITY_BOUNDS[name] + 1) for v in value) if isinstance(value, tuple) \
        else SANITY_BOUNDS[name] * 1.5 * (-1 if name == "finger_min" else 1)
    params = {name: list(bad) if isinstance(bad, tuple) else bad}
    if name == "workspace_min":
        params["workspace_min"] = [-(SANITY_BOUNDS[name] + 1)] * 3
    with pytest.raises(ConfigError, match=f"{name}: .*sanity bound"):
        SafetyLimits.from_params(params, "test")


def test_nothing_latches_at_start_up_but_silence_after_flowing_does():
    robot = RobotInterface(REPO / "config" / "robots" / "sim_panda.yaml")
    gate = SafetyGateCore(robot, shipped_limits("sim_panda"), GateSettings(host_timeout_s=0.15))
    level, reason = gate.verdict(10.0)
    assert level == STATUS_WARN and "waiting for the model_host heartbeat" in reason and not gate.latched
    d = gate.judge(chunk(robot, still(robot, 0.04), stamp=10.0), 10.05)
    assert not d.approved and "never received" in d.reason and not gate.latched  # start-up race, no fault
    feed(gate, 10.0, np.array([0.5, 0.0, 0.2]), 0.04)
    assert gate.verdict(10.1)[0] == STATUS_OK
    level, reason = gate.verdict(10.2)  # 0.2 s without a heartbeat (> 0.15 s)
    assert level == STATUS_STOP and "model_host heartbeat missing for 0.20 s" in reason


def test_faults_latch_until_a_reset_with_a_reason_while_holding():
    robot = RobotInterface(REPO / "config" / "robots" / "sim_panda.yaml")
    gate = SafetyGateCore(robot, shipped_limits("sim_panda"), GateSettings())
    centre, finger = np.array([0.5, 0.0, 0.2]), 0.04
    feed(gate, 100.0, centre, finger, beats=False)
    gate.on_source("model_host", STATUS_OK, "proposing", 2, 100.0)  # the first faults heard are a baseline
    gate.on_source("judge", STATUS_OK, "ok", 0, 100.0)
    assert gate.verdict(100.0)[0] == STATUS_OK
    gate.on_source("judge", STATUS_OK, "surprise 0.3; last fault: surprise 9.1 > 4", 1, 100.02)  # a missed STOP
    level, reason = gate.verdict(100.03)
    assert level == STATUS_STOP and reason.startswith("judge reported 1 fault(s): surprise 0.3; last fault")
    assert not gate.judge(chunk(robot, still(robot, finger), stamp=100.0), 100.05).approved
    gate.tick(100.05)
    assert gate.executor.holding
    ok, message = gate.reset("", "me", 100.1)
    assert not ok and "needs a reason" in message
    ok, message = gate.reset("cube re-placed", "me", 100.1)
    assert ok and "cleared STOP (judge reported 1 fault(s)" in message and gate.resets == 1
    feed(gate, 100.1, centre, finger)
    assert gate.verdict(100.1)[0] == STATUS_OK  # the old fault count is the new baseline
    gate.on_source("model_host", STATUS_STOP, "policy produced NaN/inf in the actions of chunk 7", 3, 100.12)
    assert gate.latched and gate.stop_reason == "model_host: policy produced NaN/inf in the actions of chunk 7"


def test_approved_chunk_runs_and_a_command_breaking_a_limit_holds_and_latches():
    gate, robot, centre, finger = make_gate("sim_panda")
    a = still(robot, finger)
    a[:, robot.dimension_names.index("right/dx")] = 0.02  # 0.2 m/s, within the shipped limits
    assert gate.judge(chunk(robot, a, stamp=100.0), 100.01).approved
    t = 100.01
    for _ in range(3):
        feed(gate, t, centre, finger)
        cmd = gate.tick(t)
        t += 0.1
    assert cmd.mode == "execute" and not gate.latched
    gate.limits = dataclasses.replace(gate.limits, max_linear_speed_m_s=0.05)  # now 0.2 m/s is too fast
    feed(gate, t, centre, finger)
    cmd = gate.tick(t)
    assert cmd.mode == "hold" and gate.latched
    assert gate.stop_reason.startswith("command check: right command moves") and "max_linear_speed_m_s 0.05" in \
        gate.stop_reason


def test_tampered_digest_and_out_of_order_chunks():
    gate, robot, centre, finger = make_gate("sim_panda")
    c = chunk(robot, still(robot, finger), sequence=5)
    c.actions = c.actions.copy()
    c.actions[0, 0] = 0.01  # changed after the digest was computed
    d = gate.judge(c, 100.01)
    assert not d.approved and "digest does not match" in d.reason and gate.latched


def test_the_gate_imports_neither_torch_nor_the_model():
    code = ("import sys; import lda_policy.safety_gate_node; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'lda_policy.model'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
