"""Hand-centric actions: deltas in the canonical EEF frame, and their inverse used by the policy node."""

import sys
from pathlib import Path

import numpy as np
import pytest
from lda_common.action_space import (
    HandCentricActionSpace,
    apply_pose_delta,
    canonical_to_eef,
    eef_to_canonical,
    keypoints_to_canonical,
    pose_delta,
)
from lda_common.robot_config import RigidOffset, RobotConfig
from scipy.spatial.transform import Rotation

sys.path.insert(0, str(Path(__file__).parent))
from lda_testing import teleop as syn  # noqa: E402

RNG = np.random.default_rng(7)


def _random_poses(n):
    return RNG.normal(size=(n, 3)), Rotation.random(n, random_state=3).as_quat()


def test_delta_then_apply_recovers_the_next_pose():
    p, q = _random_poses(50)
    dp, drv = pose_delta(p[:-1], q[:-1], p[1:], q[1:])
    p1, q1 = apply_pose_delta(p[:-1], q[:-1], dp, drv)
    assert np.allclose(p1, p[1:], atol=1e-12)
    assert np.allclose(np.abs(np.sum(q1 * q[1:], axis=1)), 1.0, atol=1e-12)  # same rotation (sign-free)
    assert np.all(np.linalg.norm(drv, axis=1) <= np.pi + 1e-9)


def test_delta_is_expressed_in_the_frame_at_t():
    # A hand rotated 90 deg about z moves 1 cm along base +y: that is +x of its own frame.
    q0 = Rotation.from_euler("z", 90, degrees=True).as_quat()
    dp, drv = pose_delta([0, 0, 0], q0, [0, 0.01, 0], q0)
    assert np.allclose(dp, [0.01, 0, 0], atol=1e-12) and np.allclose(drv, 0)
    # and a 0.1 rad turn about the hand's own x axis is drx = 0.1 whatever the base orientation
    q1 = (Rotation.from_quat(q0) * Rotation.from_rotvec([0.1, 0, 0])).as_quat()
    assert np.allclose(pose_delta([0, 0, 0], q0, [0, 0, 0], q1)[1], [0.1, 0, 0], atol=1e-12)


def test_canonical_offset_round_trip_and_known_value():
    offset = RigidOffset(xyz=(0.0, 0.0, 0.1), quat_xyzw=tuple(Rotation.from_euler("z", -45, degrees=True).as_quat()))
    q_e = Rotation.from_euler("x", 90, degrees=True).as_quat()
    p_c, q_c = eef_to_canonical([1.0, 2.0, 3.0], q_e, offset)
    assert np.allclose(p_c, [1.0, 1.9, 3.0])  # the EEF z axis points along base -y after the 90 deg turn
    expected = Rotation.from_euler("x", 90, degrees=True) * Rotation.from_euler("z", -45, degrees=True)
    assert np.isclose(abs(np.dot(q_c, expected.as_quat())), 1.0) and q_c[3] >= 0
    p_e, q_back = canonical_to_eef(p_c, q_c, offset)
    assert np.allclose(p_e, [1, 2, 3]) and np.isclose(abs(np.dot(q_back, q_e)), 1.0)
    p, q = _random_poses(20)
    pe, qe = canonical_to_eef(*eef_to_canonical(p, q, offset), offset)
    assert np.allclose(pe, p) and np.allclose(np.abs(np.sum(qe * q, axis=1)), 1.0)
    # keypoints at the canonical origin map to zero
    assert np.allclose(keypoints_to_canonical(np.array([[0, 0, 0.1]]), offset), 0)


def _space():
    return HandCentricActionSpace(RobotConfig.from_dict(syn.robot_dict()))


def test_actions_from_states_match_ground_truth_and_mark_gaps():
    space = _space()
    times = np.arange(8) * 0.1
    states = np.stack([syn.expected_state(t) for t in times])
    step_ok = np.ones(7, bool)
    step_ok[3] = False  # state 4 is not one step after state 3
    actions, valid = space.actions_from_states(states, step_ok)
    assert actions.shape == (8, space.action_dim) and valid.tolist() == [1, 1, 1, 0, 1, 1, 1, 0]
    for i in (0, 1, 2, 4, 5, 6):
        assert np.allclose(actions[i], syn.expected_action(times[i], times[i + 1]), atol=1e-12)
    assert not actions[3].any() and not actions[7].any()
    flipped = states.copy()
    for sl, _ in space.slices.values():  # q and -q: the same actions
        flipped[:, sl.start + 3: sl.start + 7] *= -1
    assert np.allclose(space.actions_from_states(flipped, step_ok)[0], actions, atol=1e-12)


def test_policy_inverse_reaches_the_recorded_eef_poses():
    space = _space()
    times = np.arange(6) * 0.1
    states = np.stack([syn.expected_state(t) for t in times])
    actions, _ = space.actions_from_states(states)
    targets = space.targets_from_actions(states[0], actions[:-1])  # a chunk of 5 from the first state
    for k, step in enumerate(targets, start=1):
        for hand in ("left", "right"):
            pos, quat = syn.pose_at(hand, times[k])  # the EEF link pose the controller must reach
            assert np.allclose(step[hand].eef_position, pos, atol=1e-9)
            assert np.isclose(abs(np.dot(step[hand].eef_quat_xyzw, quat)), 1.0, atol=1e-9)
        assert np.allclose(step["right"].fingers, syn.fingers_at("right", times[k]))
    with pytest.raises(ValueError, match="expected state"):
        space.targets_from_actions(states[0][:5], actions)


def test_state_layout_follows_the_config():
    space = _space()
    assert space.state_names[:8] == ["left/x", "left/y", "left/z", "left/qx", "left/qy", "left/qz", "left/qw",
                                     "left/gripper"]
    assert space.action_names[-2:] == ["right/r_index", "right/r_thumb"]
    per_hand = {h: (*syn.pose_at(h, 0.3), syn.fingers_at(h, 0.3)) for h in ("left", "right")}
    per_hand["left"] = (*per_hand["left"][:2], [per_hand["left"][2].sum()])
    assert np.allclose(space.state(per_hand), syn.expected_state(0.3))
    with pytest.raises(KeyError, match="no hand 'middle'"):
        space.hand_state("middle", [0, 0, 0], [0, 0, 0, 1], [0.0])


def test_command_log_holds_the_last_command_in_force():
    from lda_common.alignment import CommandLog

    log = CommandLog()
    assert log.at(5) is None
    assert log.add(10, 0.08) and log.add(20, [0.0])
    assert log.add(20, 0.02)  # a second command at one stamp replaces the first
    assert not log.add(15, 0.05)  # older than the last: refused, nothing stored
    assert log.at(9) is None and log.at(10)[0] == 0.08 and log.at(19.9)[0] == 0.08 and log.at(25)[0] == 0.02
    log.prepend(5, 0.04)
    assert log.at(7)[0] == 0.04
    log.forget_before(12)  # the command in force at 12 (stamped 10) is kept
    assert log.stamps == [10, 20] and log.at(12)[0] == 0.08
