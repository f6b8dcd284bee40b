"""SimRobot (no ROS): seeded resets, upright images, target tracking, hold-still, bad input, GR1 smoke."""

import time

import numpy as np
import pytest
from lda_sim.sim_core import SimRobot, finger_targets_for_width
from scipy.spatial.transform import Rotation


@pytest.fixture(scope="module")
def panda():
    sim = SimRobot("panda_lift", image_size=64)
    yield sim
    sim.close()


def test_same_seed_same_placement_other_seed_differs(panda):
    first = panda.reset(seed=11)
    panda.step()  # the scene moves in between, so equality really comes from the seed
    again = panda.reset(seed=11)
    other = panda.reset(seed=12)
    np.testing.assert_allclose(again.object_pos, first.object_pos, atol=1e-9)
    np.testing.assert_allclose(again.object_quat, first.object_quat, atol=1e-9)
    np.testing.assert_allclose(again.eef_pos["right"], first.eef_pos["right"], atol=1e-9)
    assert np.linalg.norm(other.object_pos[:2] - first.object_pos[:2]) > 1e-3
    assert again.step == 0 and not again.success


def test_image_size_and_upright(panda):
    image = panda.reset(seed=0).image
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    gray = image.astype(float).mean(axis=2)
    # agentview looks at the robot over a white table: upright, the table fills the bottom of the image.
    assert gray[-20:].mean() > gray[:20].mean() + 40


def test_poses_in_base_frame(panda):
    obs = panda.reset(seed=0)
    # The cube rests on the table, 0.112 m below the Panda's base, in front of it.
    assert 0.4 < obs.object_pos[0] < 0.7 and abs(obs.object_pos[1]) < 0.1
    assert obs.object_pos[2] == pytest.approx(-0.09, abs=0.02)
    down = Rotation.from_quat(obs.eef_quat["right"]).apply([0.0, 0.0, 1.0])
    assert down[2] < -0.95  # the gripper points at the table
    assert 0.0 < obs.gripper_width["right"] <= 0.08


def test_tracks_absolute_target_then_holds_still(panda):
    obs = panda.reset(seed=3)
    start, quat = obs.eef_pos["right"].copy(), obs.eef_quat["right"]
    target = start + np.array([0.08, -0.06, -0.08])
    obs = panda.step({"right": (target, quat)}, {"right": 0.0})
    first_move = np.linalg.norm(obs.eef_pos["right"] - start)
    assert first_move <= 0.05 + 0.01  # one step moves at most max_step_m (plus controller overshoot)
    for _ in range(14):
        obs = panda.step({"right": (target, quat)}, {"right": 0.0})
    assert np.linalg.norm(obs.eef_pos["right"] - target) < 0.015
    assert obs.gripper_width["right"] < 0.01  # closed on nothing
    held = obs.eef_pos["right"].copy()
    for _ in range(10):  # no target any more: hold where the hand is
        obs = panda.step()
    assert np.linalg.norm(obs.eef_pos["right"] - held) < 0.005


def test_bad_input_gives_clear_errors(panda):
    obs = panda.reset(seed=0)
    pos, quat = obs.eef_pos["right"], obs.eef_quat["right"]
    with pytest.raises(ValueError, match="NaN"):
        panda.step({"right": (pos + [np.nan, 0, 0], quat)})
    with pytest.raises(ValueError, match="outside the workspace"):
        panda.step({"right": (pos + [5.0, 0, 0], quat)})
    with pytest.raises(ValueError, match="unit quaternion"):
        panda.step({"right": (pos, [0.0, 0.0, 0.0, 0.0])})
    with pytest.raises(ValueError, match="unknown hand 'left'"):
        panda.step({"left": (pos, quat)})
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        panda.reset(seed=-1)
    with pytest.raises(ValueError, match="unknown robot 'ur5'"):
        SimRobot("ur5")
    # Slightly outside the workspace is clipped, not refused: a teleop target may overshoot a little.
    clipped, _ = panda.check_target("right", [0.5, 0.0, -0.2], quat)
    assert clipped[2] == pytest.approx(-0.10)
    obs = panda.step()  # the sim still steps after every refused command
    assert obs.step == 1


def test_gr1_smoke_two_hands():
    start = time.monotonic()
    sim = SimRobot("gr1_pickplace", image_size=32)
    try:
        obs = sim.reset(seed=1)
        assert set(obs.eef_pos) == {"left", "right"} and obs.image.shape == (32, 32, 3)
        assert obs.eef_pos["left"][1] > obs.eef_pos["right"][1]  # left hand on the robot's left (+y)
        left, right = obs.eef_pos["left"].copy(), obs.eef_pos["right"].copy()
        targets = {"left": (left + [0.0, 0.0, 0.05], obs.eef_quat["left"]),
                   "right": (right + [0.05, 0.0, 0.0], obs.eef_quat["right"])}
        for _ in range(8):
            obs = sim.step(targets, {"left": 0.1, "right": 0.0})
        assert obs.eef_pos["left"][2] - left[2] > 0.03
        assert obs.eef_pos["right"][0] - right[0] > 0.03
        assert obs.gripper_width["right"] < obs.gripper_width["left"]  # right hand closed, left open
        assert np.all(np.isfinite(obs.object_pos))
        # Finger joint targets for a width (what the scripted operator sends) drive the hand exactly as the width.
        fingers = {}
        for command in ({"right": 0.02}, {"right": finger_targets_for_width("gr1_pickplace", "right", 0.02)}):
            sim.reset(seed=1)
            for _ in range(4):
                obs = sim.step({}, command)
            fingers[type(command["right"])] = obs.finger_positions["right"]
        assert fingers[float].max() > 0.5  # the fingers curled ...
        np.testing.assert_allclose(fingers[np.ndarray], fingers[float], atol=1e-9)  # ... alike both ways
    finally:
        sim.close()
    assert time.monotonic() - start < 60
