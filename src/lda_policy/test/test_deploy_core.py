"""ROS-free deployment core: chunk hand-over, latency compensation, hold-still, hard limits, the gate's latch,
heartbeats and command checks, the judge's approval binding, calibration."""

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lda_common.config import ConfigError
from lda_common.geometry import HandState
from lda_policy.deploy.chunk_executor import ChunkExecutor, ExecutorConfig
from lda_policy.deploy.chunks import ChunkPlan, HandTrajectory
from lda_policy.deploy.hand_states import HandStateBuffer
from lda_policy.deploy.observations import FrameLatents
from lda_policy.deploy.replay import LatentPCA, heatmap, panel
from lda_policy.deploy.safety import (
    STATUS_OK,
    STATUS_STOP,
    CalibrationError,
    SafetyCalibration,
    SafetyLimits,
    check_chunk,
)

from lda_testing import deploy as T

Q = np.array([1.0, 0.0, 0.0, 0.0])
DEPLOY = Path(__file__).resolve().parents[3] / "config" / "deploy"


def straight_plan(seq, stamp, start, velocity, rows=16, dt=0.1, finger=0.04):
    """A chunk moving in a straight line: row k targets start + velocity * (k + 1) * dt."""
    pos = np.array([start + velocity * (k + 1) * dt for k in range(rows)])
    traj = HandTrajectory(pos, np.tile(Q, (rows, 1)), np.full((rows, 1), finger))
    return ChunkPlan(seq, stamp, dt, {"right": traj})


def measured(p, finger=0.04):
    return {"right": HandState.make(p, Q, [finger])}


def run(ex, t0, t1, dt=0.1, meas=None):
    out = []
    t = t0
    while t < t1 - 1e-9:
        out.append((t, ex.step(t, meas or measured(np.zeros(3)))))
        t += dt
    return out


@pytest.mark.parametrize("blend", [0.3, 0.0])
def test_hand_over_between_chunks_is_continuous_only_with_blending(blend):
    # Two chunks that disagree by 10 cm: the cross-fade spreads the difference over blend_time_s.
    ex = ChunkExecutor(["right"], ExecutorConfig(blend_time_s=blend))
    ex.on_status(STATUS_OK, "ok", 0.0)
    v = np.array([0.05, 0.0, 0.0])
    assert ex.add_chunk(straight_plan(1, 0.0, np.zeros(3), v), 0.05)[0]
    steps = run(ex, 0.05, 0.55)
    assert ex.add_chunk(straight_plan(2, 0.45, np.array([0.0, 0.10, 0.0]), v), 0.55)[0]
    for t in np.arange(0.55, 1.2, 0.1):
        ex.on_status(STATUS_OK, "ok", t)
        steps.append((t, ex.step(t, measured(np.zeros(3)))))
    assert all(c.mode == "execute" for _, c in steps)
    jumps = [np.linalg.norm(b.targets["right"].position - a.targets["right"].position)
             for (_, a), (_, b) in zip(steps, steps[1:], strict=False)]
    if blend:
        assert max(jumps) < 0.045, jumps  # ~10 cm / 3 ticks + 5 mm of motion per tick
    else:
        assert max(jumps) > 0.09, jumps  # without blending the switch is a 10 cm jump: the test can fail
    assert steps[-1][1].chunk_sequence == 2
    assert abs(steps[-1][1].targets["right"].position[1] - 0.10) < 1e-9  # fully on the new chunk


def test_latency_compensation_skips_the_rows_that_passed():
    ex = ChunkExecutor(["right"], ExecutorConfig(blend_time_s=0.0))
    ex.on_status(STATUS_OK, "ok", 10.3)
    plan = straight_plan(1, 10.0, np.zeros(3), np.array([0.1, 0.0, 0.0]))
    assert ex.add_chunk(plan, 10.3)[0]
    cmd = ex.step(10.3, measured(np.zeros(3)))
    # observation at t=10.0, now 10.3 -> row 3 (target after 4 steps of 1 cm)
    assert cmd.mode == "execute"
    assert np.allclose(cmd.targets["right"].position, [0.04, 0, 0])
    assert ex.stats.last_latency_s == pytest.approx(0.3)


def test_holds_measured_pose_without_heartbeat_and_keeps_the_commanded_fingers():
    ex = ChunkExecutor(["right"], ExecutorConfig(heartbeat_timeout_s=0.5, blend_time_s=0.0))
    assert ex.step(0.0, measured([0.3, 0, 0])).mode == "hold"  # nothing heard from the monitor yet
    ex.on_status(STATUS_OK, "ok", 0.0)
    assert ex.add_chunk(straight_plan(1, 0.0, np.zeros(3), np.array([0.1, 0, 0]), finger=0.01), 0.0)[0]
    assert ex.step(0.2, measured([0.01, 0, 0], 0.03)).mode == "execute"
    cmd = ex.step(0.7, measured([0.05, 0, 0], 0.03))  # 0.7 s after the last status
    assert cmd.mode == "hold" and "heartbeat missing" in cmd.reason
    assert np.allclose(cmd.targets["right"].position, [0.05, 0, 0])  # the measured pose, latched
    assert np.allclose(cmd.targets["right"].fingers, [0.01])  # the last commanded width, not the measured one
    later = ex.step(0.9, measured([0.06, 0, 0]))
    assert np.allclose(later.targets["right"].position, [0.05, 0, 0])  # latched: measurement drift ignored
    ex.on_status(STATUS_OK, "ok", 1.0)
    assert ex.step(1.0, measured([0.06, 0, 0])).mode == "hold"  # the old chunk was discarded on the hold


def test_a_new_task_keeps_a_grasp_and_only_a_release_opens_it():
    """Issue #27 item 5: a new instruction must not release a grasp (it used to: the hold took the measured,
    relaxed width); the operator's reset (release_fingers) does."""
    ex = ChunkExecutor(["right"], ExecutorConfig(blend_time_s=0.0))
    ex.on_status(STATUS_OK, "ok", 0.0)
    assert ex.add_chunk(straight_plan(1, 0.0, np.zeros(3), np.array([0.1, 0, 0]), finger=0.0), 0.0)[0]
    assert ex.step(0.2, measured([0.02, 0, 0], 0.03)).mode == "execute"  # the gripper was commanded closed
    ex.new_task()  # a new instruction while an object is held (measured width 0.03: the object)
    cmd = ex.step(0.3, measured([0.3, 0, 0], 0.03))
    assert cmd.mode == "hold" and np.allclose(cmd.targets["right"].position, [0.3, 0, 0])
    assert np.allclose(cmd.targets["right"].fingers, [0.0])  # still squeezing, not the measured 0.03
    ex.new_task()
    ex.release_fingers()  # the operator's reset (e.g. after a scene reset)
    cmd = ex.step(0.4, measured([0.3, 0, 0], 0.08))
    assert np.allclose(cmd.targets["right"].fingers, [0.08])  # now the measured (open) width


def test_stop_holds_and_chunks_from_before_the_stop_never_run():
    ex = ChunkExecutor(["right"], ExecutorConfig(blend_time_s=0.0))
    ex.on_status(STATUS_OK, "ok", 0.0)
    ex.add_chunk(straight_plan(1, 0.0, np.zeros(3), np.array([0.1, 0, 0])), 0.0)
    ex.on_status(STATUS_STOP, "surprise 9 > 4", 0.3)
    cmd = ex.step(0.3, measured([0.02, 0, 0]))
    assert cmd.mode == "hold" and "surprise 9" in cmd.reason
    ok, why = ex.add_chunk(straight_plan(2, 0.25, np.zeros(3), np.array([0.1, 0, 0])), 0.35)
    assert not ok and why.startswith("safety stop")
    ex.on_status(STATUS_OK, "reset", 0.4)  # reset: a chunk observed before the STOP is still refused
    ok, why = ex.add_chunk(straight_plan(3, 0.28, np.zeros(3), np.array([0.1, 0, 0])), 0.4)
    assert not ok and why.startswith("before stop")
    assert ex.add_chunk(straight_plan(4, 0.4, np.zeros(3), np.array([0.1, 0, 0])), 0.45)[0]
    assert ex.step(0.5, measured([0.02, 0, 0])).mode == "execute"


def test_approval_deadline_and_stale_or_late_chunks():
    ex = ChunkExecutor(["right"], ExecutorConfig(approval_deadline_s=1.0, max_chunk_age_s=1.0, blend_time_s=0.0))
    for t in np.arange(0, 3, 0.1):
        ex.on_status(STATUS_OK, "ok", t)
    ex.add_chunk(straight_plan(1, 0.0, np.zeros(3), np.array([0.01, 0, 0]), rows=40), 0.1)
    assert ex.step(1.0, measured(np.zeros(3))).mode == "execute"
    cmd = ex.step(1.2, measured(np.zeros(3)))
    assert cmd.mode == "hold" and "no approved chunk" in cmd.reason
    ok, why = ex.add_chunk(straight_plan(2, 0.0, np.zeros(3), np.zeros(3)), 1.5)
    assert not ok and why.startswith("stale")
    ok, why = ex.add_chunk(straight_plan(3, 1.0, np.zeros(3), np.zeros(3), rows=4), 1.45)
    assert not ok and why.startswith("late")
    nan = straight_plan(4, 1.5, np.zeros(3), np.zeros(3))
    nan.hands["right"].positions[3, 0] = np.nan
    ok, why = ex.add_chunk(nan, 1.5)
    assert not ok and why.startswith("non-finite")


def test_hard_limits_name_what_is_wrong():
    lim = SafetyLimits(workspace_min=(-1, -1, 0.0), workspace_max=(1, 1, 1), finger_min=0.0, finger_max=0.08)
    anchor = measured([0.5, 0, 0.3])
    names = [f"right/{c}" for c in ("dx", "dy", "dz", "drx", "dry", "drz", "gripper")]
    ok = straight_plan(1, 0, np.array([0.5, 0, 0.3]), np.array([0.1, 0, 0]))
    actions = np.zeros((16, 7))
    assert check_chunk(actions, names, 0.1, ok.hands, anchor, lim) == []
    actions[2, 4] = np.nan
    assert check_chunk(actions, names, 0.1, ok.hands, anchor, lim) == ["NaN/inf in actions (row 2, column right/dry)"]
    fast = straight_plan(1, 0, np.array([0.5, 0, 0.3]), np.array([1.0, 0, 0]))  # 10 cm per row
    assert any("right moves 0.100 m in row" in v for v in check_chunk(np.zeros((16, 7)), names, 0.1, fast.hands, anchor,
                                                                  lim))
    down = straight_plan(1, 0, np.array([0.5, 0, 0.3]), np.array([0, 0, -0.3]))
    assert any("leaves the workspace box" in v for v in check_chunk(np.zeros((16, 7)), names, 0.1, down.hands,
                                                                    anchor, lim))
    wide = straight_plan(1, 0, np.array([0.5, 0, 0.3]), np.zeros(3), finger=0.2)
    assert any("finger command" in v for v in check_chunk(np.zeros((16, 7)), names, 0.1, wide.hands, anchor, lim))


def test_calibration_round_trip_and_clear_errors(tmp_path):
    d = np.array([[1.0, 2.0], [1.2, 2.4], [0.8, 1.6]])
    cal = SafetyCalibration.from_distances(d, (0.5, 1.0), num_steps=4, num_samples=1, seed=0, source="x")
    path = cal.save(tmp_path)
    back = SafetyCalibration.load(tmp_path)
    assert back.mean == pytest.approx((1.0, 2.0)) and back.std == pytest.approx((0.2, 0.4))
    assert back.surprise(1, 2.8) == pytest.approx(2.0)
    back.check_fits((0.5, 1.0), 4, 1, 0)
    with pytest.raises(CalibrationError, match="num_steps 8 vs calibrated 4"):
        back.check_fits((0.5, 1.0), 8, 1, 0)
    with pytest.raises(CalibrationError, match="not found; compute it"):
        SafetyCalibration.load(tmp_path / "nowhere")
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CalibrationError, match="is not a safety calibration"):
        SafetyCalibration.load(path)
    path.write_text(json.dumps({"format": "lda-safety-calibration", "format_version": 1, **cal.__dict__, "mean": 1}))
    with pytest.raises(CalibrationError, match=r"safety_calibration.json: mean: expected a list, got 1"):
        SafetyCalibration.load(path)


def test_frames_are_encoded_once_and_history_pads_at_start_up():
    calls = []

    def encode(img):
        calls.append(img[0, 0, 0])
        return torch.full((2, 2, 4), float(img[0, 0, 0]))

    frames = FrameLatents(encode, min_period_s=0.05, tolerance_s=0.06)
    frames.add(0.0, np.full((4, 4, 3), 1, np.uint8))
    lat, pad = frames.history(0.0, (-0.5, 0.0))
    assert pad == [True, False] and len(calls) == 1  # start-up: the oldest frame stands in, encoded once
    for k in range(1, 11):
        frames.add(k * 0.1, np.full((4, 4, 3), k + 1, np.uint8))
    assert not frames.add(1.02, np.zeros((4, 4, 3), np.uint8))  # too close to the previous frame
    lat, pad = frames.history(1.0, (-0.5, 0.0))
    assert pad == [False, False] and lat[0, :, 0, 0, 0].tolist() == [6.0, 11.0]
    lat, _ = frames.history(1.5 - 1e-9, (-0.5,))
    assert len(calls) == 3  # frames 0.5 and 1.0 encoded for the step at 1.0 and reused
    with pytest.raises(LookupError):
        frames.history(3.0, (0.0,))


def test_state_buffer_interpolates_poses():
    buf = HandStateBuffer(["right"])
    buf.add_pose("right", 0.0, [0, 0, 0], Q)
    buf.add_pose("right", 0.1, [0.1, 0, 0], Q)
    buf.add_fingers("right", 0.0, [0.02])
    buf.add_fingers("right", 0.1, [0.04])
    s = buf.at(0.025, 0.05)["right"]
    assert np.allclose(s.position, [0.025, 0, 0]) and np.allclose(s.fingers, [0.025])
    assert buf.at(0.3, 0.05) is None  # too far past the newest sample


def test_history_actions_use_the_commands_sent_where_the_robot_records_commanded_fingers():
    """sim_panda records the operator's gripper command as the finger action, so the policy's history
    actions take the commands it sent (zero-order hold), not the widths measured a step later."""
    from pathlib import Path

    from lda_policy.deploy.robot import RobotInterface

    robot = RobotInterface(Path(__file__).resolve().parents[3] / "config" / "robots" / "sim_panda.yaml")
    buf = HandStateBuffer(["right"])
    for k in range(4):  # the hand moves 1 cm per step in x; the gripper closes gradually
        buf.add_pose("right", 0.1 * k, [0.01 * k, 0, 0], Q)
        buf.add_fingers("right", 0.1 * k, [0.08 - 0.01 * k])
    measured = robot.history_actions(buf, 0.3, 2, 0.02)
    assert np.allclose(measured[:, 6], [0.06, 0.05])  # no command sent yet: the measured next widths
    buf.add_command("right", 0.1, [0.0])  # "close", sent at the step starting at 0.1 s
    commanded = robot.history_actions(buf, 0.3, 2, 0.02)
    assert np.allclose(commanded[:, 6], [0.0, 0.0]) and np.allclose(commanded[:, :6], measured[:, :6])
    buf.add_command("right", 0.0, [0.08])  # older than the last command: ignored
    buf.add_command("right", 0.17, [0.08])  # re-opened during the step starting at 0.1 s (beyond its tolerance)
    assert np.allclose(robot.history_actions(buf, 0.3, 2, 0.02)[:, 6], [0.0, 0.08])
    assert np.allclose(buf.command_at("right", 0.12), [0.0]) and buf.command_at("right", 0.05) is None


def test_policy_waits_for_history_and_a_new_instruction_starts_afresh(tmp_path):
    """No chunk before the hand-state history exists (training never lacks it); a new instruction drops
    the previous task's frames, states and gripper commands (a reset teleports the hand)."""
    from lda_policy.deploy.policy import PolicyCore, PolicySettings
    from lda_policy.deploy.robot import RobotInterface
    from lda_policy.deploy.runtime import ModelRuntime

    paths = T.cached_checkpoint(tmp_path / "model")
    robot = RobotInterface(paths["robot_config"])
    policy = PolicyCore(ModelRuntime(paths["checkpoint"], paths["dino_path"]), robot, PolicySettings(seed=0))
    policy.start_task("pick up the red block")

    def feed(t: float) -> None:
        policy.on_frame(t, T.scene_image("a", T.HOME[0], t))
        policy.states.add_pose("right", t, *T.HOME)
        policy.states.add_fingers("right", t, [0.04])

    feed(0.0)
    assert policy.propose(0.0) is None and "waiting for 0.2 s of hand states" in policy.skipped
    feed(0.1)
    feed(0.2)
    assert policy.propose(0.2) is not None
    policy.states.add_command("right", 0.2, [0.0])
    policy.start_task("pick up the red block")
    assert policy.states.command_at("right", 0.3) is None and policy.frames.newest_stamp is None
    assert policy.propose(0.3) is None and policy.not_ready(0.3) == "no camera frame yet"


def test_proposed_finger_targets_stay_in_the_trained_range_and_pose_deltas_are_untouched(tmp_path):
    """A flow sample overshoots an absolute finger target at the end of its range (the gate would STOP on
    it): the proposal keeps fingers within the training actions' 1-99 % range and leaves pose deltas alone."""
    from lda_policy.deploy.policy import PolicyCore, PolicySettings
    from lda_policy.deploy.robot import RobotInterface
    from lda_policy.deploy.runtime import ModelRuntime

    paths = T.cached_checkpoint(tmp_path / "model")
    robot = RobotInterface(paths["robot_config"])
    runtime = ModelRuntime(paths["checkpoint"], paths["dino_path"])
    policy = PolicyCore(runtime, robot, PolicySettings(seed=0))
    policy.start_task("pick up the red block")
    for t in (0.0, 0.1, 0.2):
        policy.on_frame(t, T.scene_image("a", T.HOME[0], t))
        policy.states.add_pose("right", t, *T.HOME)
        policy.states.add_fingers("right", t, [0.04])
    chunk, obs = policy.propose(0.2)
    raw = runtime.policy(obs, seed=0)  # the same sample, before the bounds
    low, high = runtime.action_range(robot.embodiment)
    fingers = robot.space.finger_columns("right")
    assert ((raw[:, fingers] < low[fingers]) | (raw[:, fingers] > high[fingers])).any()  # random weights overshoot
    np.testing.assert_allclose(chunk.actions[:, fingers], np.clip(raw[:, fingers], low[fingers], high[fingers]))
    np.testing.assert_allclose(chunk.actions[:, :6], raw[:, :6])  # pose deltas as sampled, even outside the range
    assert ((raw[:, :6] < low[:6]) | (raw[:, :6] > high[:6])).any()


def test_pictures_have_the_expected_layout():
    rng = np.random.default_rng(0)
    lat = rng.normal(size=(10, 4, 4, 8))
    pca = LatentPCA(lat)
    rgb = pca.rgb(lat[0])
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    hm = heatmap(np.array([[0.0, 1.0], [2.0, np.nan]]), vmax=2.0)
    assert hm.shape == (2, 2, 3) and hm[0, 0].sum() < hm[1, 0].sum()  # inferno: dark for 0, bright for vmax
    pic = panel(T.scene_image("a"), rgb, rgb, hm, tile=32, gap=2)
    assert pic.shape == (32, 4 * 32 + 3 * 2, 3)


def _params(path: Path) -> dict:
    """The file's parameters as ROS names them: nested keys joined by dots (``selection: {k: 1}``: ``selection.k``)."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in d.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return out

    return flat(yaml.safe_load(path.read_text())["/**"]["ros__parameters"])


def _node_from_files(module: str, cls: str, files: list[Path]):
    """The node built as a launch file starts it: parameter files in order (later ones win), in its own context."""
    import importlib

    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context)
    args = ["--ros-args"] + [a for f in files for a in ("--params-file", str(f))]
    args += [a for name in ("robot_config", "checkpoint", "dino_path", "bag") for a in ("-p", f"{name}:=/x")]
    try:
        node = getattr(importlib.import_module(module), cls)(context=context, cli_args=args)
        node.destroy_node()
        return node
    finally:
        rclpy.shutdown(context=context)


@pytest.mark.parametrize(("module", "cls", "file"), [
    ("lda_policy.model_host_node", "ModelHostNode", "model_host.yaml"),
    ("lda_policy.dynamics_replay_node", "DynamicsReplayNode", "replay.yaml"),
    ("lda_policy.safety_gate_node", "SafetyGateNode", "safety_gate.yaml"),
])
def test_shipped_deploy_configs_load_in_their_nodes(module, cls, file):
    """Every key of a shipped parameter file is one the node declares (rclpy silently ignores others) and
    passes the declaration's checks."""
    values = _params(DEPLOY / file)
    node = _node_from_files(module, cls, [DEPLOY / file])
    assert not sorted(set(values) - set(node.p)), f"{file} sets parameters {cls} does not declare"
    assert {k: node.p[k] for k in values} == values


@pytest.mark.parametrize("robot", sorted(p.stem for p in (DEPLOY / "limits").glob("*.yaml")))
def test_shipped_limits_load_as_the_gate_gets_them(robot):
    """config/deploy/safety_gate.yaml then limits/<robot>.yaml, as launch/policy.launch.yaml passes them."""
    files = [DEPLOY / "safety_gate.yaml", DEPLOY / "limits" / f"{robot}.yaml"]
    robot_limits = _params(files[1])
    per_hand = {k: v for k, v in robot_limits.items() if k.startswith("hands.")}  # hands.<hand>.<key>
    joint = {k: v for k, v in robot_limits.items() if k.startswith("joint_")}  # joint space (issue #28)
    names = {f.name for f in fields(SafetyLimits)}
    assert set(robot_limits) - set(per_hand) - set(joint) <= names, f"limits/{robot}.yaml sets keys that are no limit"
    node = _node_from_files("lda_policy.safety_gate_node", "SafetyGateNode", files)
    if joint:  # the node's joint_* parameters are the file's, and they load for the robot's joint space
        from lda_common.robot_config import load_robot_config
        from lda_policy.deploy.joint_space import JointLimits

        assert {k: node.p[k] for k in joint} == joint
        JointLimits.from_params(node.p, load_robot_config(DEPLOY.parent / "robots" / f"{robot}.yaml").joints, robot)
    limits = SafetyLimits.from_params(node.p, robot)
    expected = {k: v for k, v in {**_params(files[0]), **robot_limits}.items() if k in names}
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in vars(limits).items() if k in expected} == expected
    for key, value in per_hand.items():
        _, hand, name = key.split(".")
        got = getattr(limits.hands[hand], name)
        assert (list(got) if isinstance(got, tuple) else got) == value, key
    with pytest.raises(ConfigError, match=f"{robot}: workspace_min: expected 3 values, got 2"):
        SafetyLimits.from_params({**node.p, "workspace_min": [0.0, 0.0]}, robot)
    with pytest.raises(ConfigError, match="finger_min: 1.0 exceeds finger_max"):
        SafetyLimits.from_params({**node.p, "finger_min": 1.0, "finger_max": 0.5})
