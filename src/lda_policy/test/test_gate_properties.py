"""Property-based tests of the safety gate (issue #27): every callback of the gate's core, the proposal
decoder (``msg_to_chunk``) and the pose and finger decoders, driven with generated messages: wrong shapes,
NaN/inf, huge and negative numbers, empty and oversized arrays, wrong embodiments and hands, stamps in the
future and the past, clocks that jump. The properties, after every input and the ticks that follow:

- nothing raises, and no STOP is an ``internal error`` (an exception the core had to catch: a bug);
- every command that leaves is inside each hand's box and finger range, and moves at most one step
  (``max_step_translation_m``) from the one before;
- a message is either used, ignored (counted) or latches STOP with a reason.

Bounded for ``make test``: 200 examples per property, no deadline (profile ``ci``). ``scripts/gate_fuzz.sh``
runs them with 10x the examples (``LDA_HYPOTHESIS_PROFILE=fuzz``).
"""

import os
from pathlib import Path

import numpy as np
from geometry_msgs.msg import PoseStamped
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lda_policy.deploy.chunks import chunk_digest
from lda_policy.deploy.gate import GateSettings, SafetyGateCore
from lda_policy.deploy.robot import RobotInterface
from lda_policy.deploy.safety import STATUS_OK, SafetyLimits
from lda_policy.ros_io import BadMessage, msg_to_chunk, ns_to_stamp, pose_arrays

from lda_msgs.msg import ActionChunk

_COMMON = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                     HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=200, **_COMMON)
settings.register_profile("fuzz", max_examples=2000, **_COMMON)
PROFILE = settings.get_profile(os.environ.get("LDA_HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parents[3]
PANDA = RobotInterface(REPO / "config" / "robots" / "sim_panda.yaml")
GR1 = RobotInterface(REPO / "config" / "robots" / "gr1_humanoid.yaml")
LIMITS = SafetyLimits(workspace_min=(0.2, -0.45, -0.16), workspace_max=(0.9, 0.45, 0.55), finger_min=-0.08,
                      finger_max=0.16, max_step_translation_m=0.075, max_linear_speed_m_s=0.75,
                      workspace_band_m=0.02, finger_band=0.02)
GR1_LIMITS = SafetyLimits.from_params({
    "finger_min": -0.3, "finger_max": 1.9, "min_hand_distance_m": 0.1,
    "hands.left.workspace_min": [-0.05, -0.2, -0.25], "hands.right.workspace_max": [0.8, 0.2, 0.55]}, "test")
DOWN = np.array([1.0, 0.0, 0.0, 0.0])
T0 = 100.0

# -- strategies -----------------------------------------------------------------------------------------
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True)
F32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
SMALL = st.floats(-0.01, 0.01)
STAMP = st.one_of(st.floats(T0 - 5, T0 + 5), st.sampled_from([0.0, -1.0, 1e12, -1e12]), ANY_FLOAT)
TEXT = st.text(max_size=40)


def vector(n: int):
    """Mostly the right length with mostly plausible values; sometimes anything."""
    plausible = st.lists(st.floats(-1.0, 1.0), min_size=n, max_size=n)
    return st.one_of(plausible, plausible, st.lists(ANY_FLOAT, min_size=0, max_size=n + 3))


def started(robot=PANDA, limits=LIMITS) -> SafetyGateCore:
    """A gate with every stream and heartbeat flowing at T0, each hand at the centre of its box."""
    gate = SafetyGateCore(robot, limits, GateSettings())
    for h in robot.config.hands:
        lo, hi = limits.box(h.name)
        gate.on_pose(h.name, T0, (lo + hi) / 2, DOWN, now=T0)
        gate.on_fingers(h.name, T0, np.full(h.fingers.dim, 0.04), now=T0)
    for source in ("model_host", "judge"):
        gate.on_source(source, STATUS_OK, "ok", 0, T0)
    return gate


class Watch:
    """Ticks the gate and checks every command that leaves against the limits and the step bound."""

    def __init__(self, gate: SafetyGateCore) -> None:
        self.gate, self.last = gate, None

    def tick(self, now: float, mono: float | None = None):
        cmd = self.gate.tick(now, mono)
        self.check(cmd)
        return cmd

    def check(self, cmd) -> None:
        gate, lim = self.gate, self.gate.limits
        assert not gate.stop_reason.startswith("internal error"), gate.stop_reason
        if cmd.targets is None:
            return
        assert set(cmd.targets) == set(gate.robot.hands)
        for h, t in cmd.targets.items():
            lo, hi = lim.box(h)
            fmin, fmax = lim.finger_range(h)
            assert t.is_finite(), (h, t)
            assert ((t.position >= lo - 1e-9) & (t.position <= hi + 1e-9)).all(), (h, t.position, lo, hi)
            assert ((t.fingers >= fmin - 1e-9) & (t.fingers <= fmax + 1e-9)).all(), (h, t.fingers)
            if self.last is not None:
                step = np.linalg.norm(t.position - self.last[h].position)
                assert step <= lim.max_step_translation_m + 1e-6, (h, step)
        self.last = cmd.targets

    def run(self, t0: float, seconds: float, dt: float = 0.05) -> None:
        for k in range(int(seconds / dt)):
            self.tick(t0 + k * dt)


def good_chunk(robot, stamp: float, sequence: int, actions: np.ndarray) -> ActionChunk:
    msg = ActionChunk(embodiment=robot.embodiment, horizon=actions.shape[0], action_dim=actions.shape[1], dt=robot.dt,
                      dimension_names=robot.dimension_names, actions=[float(v) for v in actions.reshape(-1)],
                      sequence=sequence)
    ns = int(round(stamp * 1e9))
    msg.header.stamp = ns_to_stamp(ns)
    msg.digest = chunk_digest(sequence, ns, robot.embodiment, actions)
    return msg


@st.composite
def proposals(draw, robot=PANDA, near: float = T0):
    """ActionChunk messages observed about ``near``: a valid chunk (about a third of them are approved), or one
    with up to three fields broken."""
    rows = draw(st.integers(1, 20))
    small = draw(st.lists(SMALL, min_size=rows * robot.action_dim, max_size=rows * robot.action_dim))
    actions = np.asarray(small, dtype=np.float32).reshape(rows, robot.action_dim)
    for h in robot.hands:  # fingers mid-range, so plain chunks can be approved
        actions[:, robot.space.finger_columns(h)] = 0.04
    stamp = near + draw(st.floats(-0.1, 0.0) | st.floats(-2.0, 1.0))
    msg = good_chunk(robot, stamp, draw(st.integers(1, 50) | st.integers(1, 2**64 - 1)), actions)
    for field in draw(st.sets(st.sampled_from(["actions", "horizon", "action_dim", "embodiment", "names", "dt",
                                               "stamp", "digest", "sequence", "values"]), max_size=3)):
        if field == "actions":
            msg.actions = draw(st.lists(F32, max_size=200))
        elif field == "horizon":
            msg.horizon = draw(st.integers(0, 2**32 - 1))
        elif field == "action_dim":
            msg.action_dim = draw(st.integers(0, 2**32 - 1))
        elif field == "embodiment":
            msg.embodiment = draw(st.sampled_from(["gr1_humanoid", "", "test_arm"]) | TEXT)
        elif field == "names":
            msg.dimension_names = draw(st.lists(TEXT, max_size=10))
        elif field == "dt":
            msg.dt = draw(ANY_FLOAT)
        elif field == "stamp":
            msg.header.stamp.sec = draw(st.integers(-(2**31), 2**31 - 1))
            msg.header.stamp.nanosec = draw(st.integers(0, 2**32 - 1))
        elif field == "digest":
            msg.digest = draw(TEXT)
        elif field == "sequence":
            msg.sequence = draw(st.integers(0, 2**64 - 1))
        else:  # huge, NaN or inf values where the digest still matches (a proposer that hashes its garbage)
            values = np.asarray(draw(st.lists(F32, min_size=len(msg.actions), max_size=len(msg.actions))),
                                dtype=np.float32)
            msg.actions = values.tolist()
            if msg.horizon * msg.action_dim == values.size:
                msg.digest = chunk_digest(msg.sequence, msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec,
                                          msg.embodiment, values.reshape(msg.horizon, msg.action_dim))
    return msg


def deliver(gate: SafetyGateCore, msg, now: float) -> None:
    """What safety_gate_node does with a proposal."""
    try:
        chunk = msg_to_chunk(msg)
    except BadMessage as err:
        gate.bad_input("/lda/proposed_chunk", str(err), stop=True)
        return
    decision = gate.judge(chunk, now)
    assert decision.approved or decision.reason


# -- properties -----------------------------------------------------------------------------------------
@PROFILE
@given(msg=proposals(), now=st.floats(T0, T0 + 0.3) | st.floats(T0 - 1, T0 + 2))
def test_any_proposal_is_approved_within_limits_refused_or_latches(msg, now):
    gate = started()
    watch = Watch(gate)
    approved, stops = gate.approved, gate.stops
    deliver(gate, msg, now)
    assert gate.approved - approved + (gate.refused > 0) + (gate.stops - stops) >= 1 or gate.bad_inputs
    watch.run(now, 2.0)


@PROFILE
@given(msg=proposals(robot=GR1), now=st.floats(T0, T0 + 0.3) | st.floats(T0 - 1, T0 + 2))
def test_any_proposal_to_a_two_handed_robot(msg, now):
    gate = started(GR1, GR1_LIMITS)
    deliver(gate, msg, now)
    Watch(gate).run(now, 1.5)


@PROFILE
@given(hand=st.sampled_from(["right", "left", ""]), stamp=STAMP, position=vector(3), quaternion=vector(4),
       frame=st.sampled_from([None, "", "base", "camera"]), now=st.floats(T0, T0 + 1), mono=STAMP)
def test_any_pose_is_used_ignored_or_latches(hand, stamp, position, quaternion, frame, now, mono):
    gate = started()
    watch = Watch(gate)
    before = gate.states.newest_stamps().get(f"{hand}/pose")
    gate.on_pose(hand, stamp, position, quaternion, now=now, mono=mono, frame_id=frame)
    after = gate.states.newest_stamps().get(f"{hand}/pose")
    assert after == before or gate.latched or after == stamp
    watch.tick(now + 0.01)


@PROFILE
@given(hand=st.sampled_from(["right", "left"]), stamp=STAMP, values=vector(1), now=st.floats(T0, T0 + 1))
def test_any_finger_state_is_used_ignored_or_latches(hand, stamp, values, now):
    gate = started()
    gate.on_fingers(hand, stamp, values, now=now)
    Watch(gate).tick(now + 0.01)


@PROFILE
@given(names=st.lists(st.sampled_from(["finger_joint1", "finger_joint2", "gripper", ""]) | TEXT, max_size=6),
       positions=st.lists(ANY_FLOAT, max_size=6), hand=st.sampled_from(["left", "right"]))
def test_the_finger_decoder_never_raises_and_the_gate_takes_what_it_gives(names, positions, hand):
    values = GR1.fingers_from_joint_state(hand, names, positions)
    assert values is None or values.shape == (6,)
    values = PANDA.fingers_from_joint_state("right", names, positions)
    assert values is None or values.shape == (1,)
    gate = started()
    if values is not None:
        gate.on_fingers("right", T0 + 0.05, values, now=T0 + 0.05)
        fmin, fmax = LIMITS.finger_range("right")  # a measured finger state beyond range + band latches (#27)
        outside = bool(((values < fmin - LIMITS.finger_band) | (values > fmax + LIMITS.finger_band)).any())
        assert gate.latched == (not np.isfinite(values).all() or outside)
    Watch(gate).tick(T0 + 0.06)


@PROFILE
@given(values=st.lists(ANY_FLOAT, min_size=7, max_size=7), sec=st.integers(-(2**31), 2**31 - 1),
       nanosec=st.integers(0, 2**32 - 1), frame=TEXT)
def test_the_pose_decoder_never_raises(values, sec, nanosec, frame):
    msg = PoseStamped()
    msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id = sec, nanosec, frame
    p, o = msg.pose.position, msg.pose.orientation
    p.x, p.y, p.z, o.x, o.y, o.z, o.w = values
    position, quaternion = pose_arrays(msg)
    assert position.shape == (3,) and quaternion.shape == (4,)
    gate = started()
    gate.on_pose("right", sec + 1e-9 * nanosec, position, quaternion, now=T0 + 0.05, frame_id=frame)
    Watch(gate).tick(T0 + 0.06)


@PROFILE
@given(source=st.sampled_from(["model_host", "judge", "safety_gate"]) | TEXT, level=st.integers(0, 255),
       reason=TEXT, faults=st.integers(0, 2**32 - 1), surprise=ANY_FLOAT, now=st.floats(T0, T0 + 1))
def test_any_heartbeat_is_used_ignored_or_latches(source, level, reason, faults, surprise, now):
    gate = started()
    gate.on_source(source, level, reason, faults, now, surprise)
    if source in ("model_host", "judge") and (level >= 2 or faults > 0):
        assert gate.latched and gate.stop_reason.startswith(source)
    Watch(gate).tick(now + 0.01)


@PROFILE
@given(reason=TEXT, operator=TEXT, latch=st.booleans(), now=st.floats(T0, T0 + 1))
def test_any_reset_request_is_answered(reason, operator, latch, now):
    gate = started()
    if latch:
        gate.stop("test")
    Watch(gate).tick(now)
    ok, message = gate.reset(reason, operator, now)
    assert message and (ok == bool(reason.strip()))
    assert not ok or not gate.latched


@PROFILE
@given(clocks=st.lists(st.tuples(st.floats(-1.0, 2.0) | ANY_FLOAT, st.floats(0.0, 0.5)), min_size=1, max_size=30),
       dx=st.floats(-0.007, 0.007))
def test_ticks_on_any_clock_command_within_limits(clocks, dx):
    """Whatever the clocks do (steps back, jumps, NaN), a running chunk's commands stay within the limits."""
    gate = started()
    a = np.zeros((16, PANDA.action_dim), dtype=np.float32)
    a[:, PANDA.dimension_names.index("right/dx")] = dx
    a[:, PANDA.space.finger_columns("right")] = 0.04
    deliver(gate, good_chunk(PANDA, T0, 1, a), T0 + 0.01)
    watch = Watch(gate)
    now, mono = T0 + 0.01, 0.0
    for d_now, d_mono in clocks:
        now, mono = now + d_now, mono + d_mono
        watch.tick(now, mono)


EVENTS = st.one_of(
    st.tuples(st.just("pose"), st.floats(-0.05, 0.05), STAMP, st.sampled_from([None, "", "x"])),
    st.tuples(st.just("fingers"), vector(1), STAMP),
    st.tuples(st.just("beat"), st.sampled_from(["model_host", "judge"]), st.integers(0, 2), st.integers(0, 2)),
    st.tuples(st.just("chunk")),  # drawn when it happens, observed about then
    st.tuples(st.just("instruction")),
    st.tuples(st.just("reset"), st.sampled_from(["", "checked", " "])),
    st.tuples(st.just("wait"), st.floats(0.0, 0.6)),
)


@PROFILE
@given(events=st.lists(EVENTS, max_size=25), data=st.data())
def test_any_sequence_of_inputs_keeps_every_command_within_limits(events, data):
    """Interleaved inputs of every kind, with ticks between them and the arm following its commands."""
    gate = started()
    watch = Watch(gate)
    now = T0 + 0.01
    position = (np.array(LIMITS.workspace_min) + np.array(LIMITS.workspace_max)) / 2
    for event in events:
        kind = event[0]
        if kind == "pose":
            gate.on_pose("right", event[2], position + event[1], DOWN, now=now, frame_id=event[3])
        elif kind == "fingers":
            gate.on_fingers("right", event[2], event[1], now=now)
        elif kind == "beat":
            gate.on_source(event[1], event[2], "beat", event[3], now)
        elif kind == "chunk":
            deliver(gate, data.draw(proposals(near=now - 0.05)), now)
        elif kind == "instruction":
            gate.on_instruction()
        elif kind == "reset":
            gate.reset(event[1], "fuzz", now)
        else:
            now += event[1]
        cmd = watch.tick(now)
        if cmd.targets is not None:  # a perfect position controller, reporting a little later
            position = cmd.targets["right"].position
            gate.on_pose("right", now + 0.001, position, DOWN, now=now + 0.001)
            gate.on_fingers("right", now + 0.001, cmd.targets["right"].fingers, now=now + 0.001)
        now += 0.02


# -- joint space (issue #28: the authors' LDA-1B commands the GR-1's 29 joints) ----------------------------
def _joint_gate():
    import yaml
    from lda_policy.deploy.command_space import make_space
    from lda_policy.deploy.joint_space import JointLimits

    params = yaml.safe_load((REPO / "config" / "deploy" / "limits" / "gr1_humanoid.yaml").read_text())["/**"][
        "ros__parameters"]
    joint_limits = JointLimits.from_params(params, GR1.config.joints, "gr1_humanoid")
    gate = SafetyGateCore(GR1, GR1_LIMITS, GateSettings(), space=make_space("joints", GR1, GR1_LIMITS, joint_limits))
    return gate


JOINT_GATE = _joint_gate()  # built once (the limits file is read once); each example takes a fresh copy
JOINT_NAMES = GR1.config.joints.joint_names
JOINT_MID = (JOINT_GATE.space.joint_limits.lower + JOINT_GATE.space.joint_limits.upper) / 2


def joint_started() -> SafetyGateCore:
    """A joint-space GR-1 gate with the joint stream and heartbeats flowing at T0, every joint mid-range."""
    gate = SafetyGateCore(GR1, GR1_LIMITS, GateSettings(), space=type(JOINT_GATE.space)(
        GR1, GR1_LIMITS, JOINT_GATE.space.joint_limits))
    gate.on_joints(T0, JOINT_NAMES, JOINT_MID.tolist(), now=T0)
    for source in ("model_host", "judge"):
        gate.on_source(source, STATUS_OK, "ok", 0, T0)
    return gate


class JointWatch(Watch):
    """Every joint command that leaves: finite, inside each joint's range, at most one step from the last."""

    def check(self, cmd) -> None:
        gate, lim = self.gate, self.gate.space.joint_limits
        assert not gate.stop_reason.startswith("internal error"), gate.stop_reason
        if cmd.targets is None:
            return
        q = cmd.targets["joints"]
        assert q.shape == (29,) and np.isfinite(q).all()
        assert ((q >= lim.lower - 1e-9) & (q <= lim.upper + 1e-9)).all(), q
        if self.last is not None:
            assert (np.abs(q - self.last) <= lim.max_step + 1e-6).all(), np.abs(q - self.last).max()
        self.last = q

    def tick(self, now: float, mono: float | None = None):
        """... and no faster than each joint's speed since the previous command (monotonic time)."""
        last, mono = self.last, now if mono is None else mono
        cmd = super().tick(now, mono)
        if last is not None and cmd.targets is not None and getattr(self, "last_mono", None) is not None:
            lim, span = self.gate.space.joint_limits, max(mono - self.last_mono, 0.0)
            assert (np.abs(cmd.targets["joints"] - last) <= lim.max_speed * span + 1e-6).all()
        if cmd.targets is not None:
            self.last_mono = mono
        return cmd


@st.composite
def joint_proposals(draw, near: float = T0):
    """Joint-space ActionChunks about ``near``: absolute targets wandering from mid-range (some approved), or
    with up to two fields broken."""
    rows = draw(st.integers(1, 20))
    scale = draw(st.sampled_from([0.04, 0.04, 0.12]))  # per-row moves within (most) or beyond the step limit
    moves = scale * np.asarray(draw(st.lists(st.floats(-0.5, 0.5), min_size=rows * 29, max_size=rows * 29)))
    actions = (JOINT_MID + np.cumsum(moves.reshape(rows, 29), axis=0)).astype(np.float32)
    stamp = near + draw(st.floats(-0.1, 0.0) | st.floats(-2.0, 1.0))
    msg = ActionChunk(embodiment="gr1_humanoid", horizon=rows, action_dim=29, dt=0.05, dimension_names=JOINT_NAMES,
                      actions=[float(v) for v in actions.reshape(-1)], sequence=draw(st.integers(1, 50)))
    ns = int(round(stamp * 1e9))
    msg.header.stamp = ns_to_stamp(ns)
    msg.digest = chunk_digest(msg.sequence, ns, "gr1_humanoid", actions)
    for field in draw(st.sets(st.sampled_from(["names", "dt", "values", "actions"]), max_size=2)):
        if field == "names":
            msg.dimension_names = draw(st.permutations(JOINT_NAMES) | st.lists(TEXT, max_size=30))
        elif field == "dt":
            msg.dt = draw(ANY_FLOAT)
        elif field == "actions":
            msg.actions = draw(st.lists(F32, max_size=100))
        else:  # huge, NaN or inf values with a matching digest
            values = np.asarray(draw(st.lists(F32, min_size=rows * 29, max_size=rows * 29)), dtype=np.float32)
            msg.actions = values.tolist()
            msg.digest = chunk_digest(msg.sequence, ns, "gr1_humanoid", values.reshape(rows, 29))
    return msg


@PROFILE
@given(msg=joint_proposals(), now=st.floats(T0, T0 + 0.3) | st.floats(T0 - 1, T0 + 2))
def test_any_joint_proposal_is_approved_within_limits_refused_or_latches(msg, now):
    gate = joint_started()
    deliver(gate, msg, now)
    watch = JointWatch(gate)
    for k in range(40):  # the joints follow their commands
        cmd = watch.tick(now + k * 0.05)
        if cmd.targets is not None:
            gate.on_joints(now + k * 0.05 + 1e-3, JOINT_NAMES, cmd.targets["joints"].tolist(), now=now + k * 0.05)


@PROFILE
@given(names=st.lists(st.sampled_from(JOINT_NAMES + ["head_yaw", ""]) | TEXT, max_size=34),
       positions=st.lists(st.floats(-1.0, 1.0) | ANY_FLOAT, max_size=34), stamp=STAMP, now=st.floats(T0, T0 + 1),
       complete=st.booleans())
def test_the_joint_decoder_never_raises_and_the_gate_uses_ignores_or_latches(names, positions, stamp, now, complete):
    gate = joint_started()
    if complete:  # every commanded joint, then whatever was drawn
        names, positions = JOINT_NAMES + names, JOINT_MID.tolist() + positions
    before = gate.states.newest_stamps()["joints"]
    gate.on_joints(stamp, names, positions, now=now)
    after = gate.states.newest_stamps()["joints"]
    assert after == before or after == stamp or gate.latched
    if len(names) != len(positions) or not set(JOINT_NAMES) <= set(names):
        assert gate.latched and gate.stop_reason.startswith("bad message on /robot/joint_states")
    JointWatch(gate).tick(now + 0.01)
