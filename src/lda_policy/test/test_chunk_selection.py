"""Test-time chunk selection (lda_policy.deploy.selection) on a random-weight checkpoint: distinct candidates,
the best score wins, k = 1 is the plain policy bit for bit, the judge's limit filters, faults are faults.

The test model's latent decoder and adaLN gates start at zero, so its forward dynamics would not depend on
the actions; the fixture gives every zero-initialised weight small random values so that candidates'
predicted futures differ.
"""

import dataclasses

import numpy as np
import pytest
import torch
from lda_policy.deploy.host import ModelHost
from lda_policy.deploy.judge import JudgeSettings, latent_distance
from lda_policy.deploy.policy import PolicyCore, PolicySettings
from lda_policy.deploy.robot import RobotInterface
from lda_policy.deploy.runtime import ModelRuntime
from lda_policy.deploy.safety import SafetyCalibration
from lda_policy.deploy.selection import ChunkSelector, SelectionSettings, choose

from lda_testing import deploy as T

INSTRUCTION = "pick up the red block"


def feed(policy: PolicyCore, times) -> None:
    """Scene-A frames with the hand at HOME, at each time of ``times``."""
    for t in times:
        policy.on_frame(t, T.scene_image("a", T.HOME[0], t))
        policy.states.add_pose("right", t, *T.HOME)
        policy.states.add_fingers("right", t, [0.04])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    paths = T.cached_checkpoint(tmp_path_factory.getbasetemp() / "lda_deploy_model")
    runtime = ModelRuntime(paths["checkpoint"], paths["dino_path"])
    torch.manual_seed(0)
    with torch.no_grad():  # futures that depend on the actions (see the module docstring)
        for p in runtime.model.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    robot = RobotInterface(paths["robot_config"])
    policy = PolicyCore(runtime, robot, PolicySettings(seed=0))
    policy.start_task(INSTRUCTION)
    feed(policy, (0.0, 0.1, 0.2, 0.3, 0.4, 0.5))
    _chunk, obs = policy.propose(0.5)
    calibration = SafetyCalibration.load(paths["checkpoint"] / "safety_calibration.json")
    return runtime, robot, obs, calibration, paths


def test_k1_is_the_plain_policy_bit_for_bit(setup):
    runtime, _, obs, calibration, _ = setup
    chosen = ChunkSelector(runtime, SelectionSettings(k=1), calibration).select(obs, seed=7)
    plain = runtime.model.policy(obs, num_steps=runtime.num_steps, seed=7)[0].double().numpy()
    assert np.array_equal(chosen.actions, plain)
    assert chosen.k == 1 and np.isnan(chosen.score) and np.isnan(chosen.spread)


def test_candidates_are_distinct_and_the_best_score_wins(setup):
    runtime, _, obs, calibration, _ = setup
    judge = JudgeSettings(stop_surprise=1e9)  # no candidate filtered here
    chosen = ChunkSelector(runtime, SelectionSettings(k=6), calibration, judge).select(obs, seed=3)
    c = chosen.candidates
    assert c.shape == (6, 16, 7)
    assert min(np.abs(c[i] - c[j]).max() for i in range(6) for j in range(i)) > 1e-6  # all distinct
    # Row 0 is what the plain policy gives with that seed: the batch is K independent samples.
    assert np.allclose(c[0], runtime.policy(obs, seed=3), atol=1e-5)
    # Each score, recomputed one candidate at a time with the judge's own calls and metric.
    forecast = runtime.forecast(obs, seed=judge.seed, num_steps=judge.num_steps)
    expected = []
    for actions in c:
        predicted = runtime.forward_dynamics(obs, actions, seed=judge.seed, num_steps=judge.num_steps)
        z = [calibration.surprise(f, latent_distance(predicted[f], forecast[f], runtime.latent_mid,
                                                      runtime.latent_half)[0]) for f in range(len(forecast))]
        expected.append(-np.mean(z))
    assert np.allclose(chosen.scores, expected, rtol=1e-4, atol=1e-4)
    assert chosen.index == int(np.argmax(expected)) and np.array_equal(chosen.actions, c[chosen.index])
    assert chosen.spread == pytest.approx(max(expected) - min(expected), rel=1e-4)
    assert chosen.spread > 0


def test_candidates_beyond_the_judges_stop_surprise_are_passed_over():
    surprise = np.array([[0.5, 0.5, 0.5],     # mean 0.5, within 4
                         [-2.0, -2.0, 4.5],   # best mean (0.17) but frame 3 beyond 4: passed over
                         [1.0, 1.0, 1.0],
                         [np.nan, 0.0, 0.0]])  # a NaN prediction never wins
    index, scores, within = choose(surprise, 4.0)
    assert index == 0 and within.tolist() == [True, False, True, False]
    assert scores[1] > scores[0] and np.isnan(scores[3])
    assert choose(surprise, None)[0] == 1  # uncalibrated: raw distances, no limit
    assert choose(surprise, -10.0)[0] == 1  # none within: the best score anyway (the judge still judges it)
    with pytest.raises(FloatingPointError, match="no candidate of 2 has a finite selection score"):
        choose(np.full((2, 3), np.nan), 4.0)


def test_the_limit_filters_candidates_of_a_real_selection(setup):
    runtime, _, obs, calibration, _ = setup
    selector = ChunkSelector(runtime, SelectionSettings(k=6), calibration, JudgeSettings(stop_surprise=1e9))
    worst_frame = selector.surprises(obs, runtime.policy_candidates(obs, 6, seed=3)).max(axis=1)  # (k,)
    limit = float(np.median(worst_frame))
    chosen = ChunkSelector(runtime, SelectionSettings(k=6), calibration,
                           JudgeSettings(stop_surprise=limit, warn_surprise=min(2.0, limit))).select(obs, seed=3)
    assert chosen.within_limit.tolist() == (worst_frame <= limit).tolist()
    inside = np.flatnonzero(chosen.within_limit)
    assert chosen.index == inside[np.argmax(chosen.scores[inside])]


def test_stochastic_policy_required_and_settings_checked(setup):
    runtime, robot, obs, calibration, _ = setup
    with pytest.raises(ValueError, match="needs a stochastic policy"):
        ChunkSelector(runtime, SelectionSettings(k=4)).select(obs, seed=0, noise_scale=0.0)
    with pytest.raises(ValueError, match="needs a stochastic policy"):  # refused at start-up by the host
        ModelHost(runtime, robot, calibration, PolicySettings(noise_scale=0.0), selection=SelectionSettings(k=4))
    with pytest.raises(ValueError, match="selection k must be in"):
        SelectionSettings(k=0)
    with pytest.raises(ValueError, match="unknown selection score 'reward'"):
        SelectionSettings(k=2, score="reward")
    other = dataclasses.replace(calibration, num_steps=calibration.num_steps + 1)
    with pytest.raises(Exception, match="num_steps|steps"):  # the judge's units must be the calibration's
        ChunkSelector(runtime, SelectionSettings(k=2), other)


def test_nan_predictions_are_a_host_fault_not_a_silent_choice(setup):
    """All candidates' futures NaN (a broken forward-dynamics head): the host counts a fault naming it and
    proposes nothing."""
    _, robot, _, calibration, paths = setup
    runtime = ModelRuntime(paths["checkpoint"], paths["dino_path"])
    with torch.no_grad():
        runtime.model.latent_decoder.bias.fill_(float("nan"))
    host = ModelHost(runtime, robot, calibration, PolicySettings(seed=0), selection=SelectionSettings(k=3))
    host.policy.start_task(INSTRUCTION)
    feed(host.policy, (0.0, 0.1, 0.2, 0.3))
    assert host.propose(0.3) is None
    assert host.faults == 1 and "no candidate of 3 has a finite selection score" in host.last_fault


def test_host_reports_the_selection_on_the_chunk_and_in_its_stats(setup):
    runtime, robot, _, calibration, _ = setup
    host = ModelHost(runtime, robot, calibration, PolicySettings(seed=1), selection=SelectionSettings(k=4))
    host.policy.start_task(INSTRUCTION)
    feed(host.policy, (0.0, 0.1, 0.2, 0.3))
    chunk = host.propose(0.3)
    assert chunk is not None and chunk.candidates == 4
    assert np.isfinite(chunk.selection_score) and chunk.selection_spread >= 0
    stats = host.selection_stats()
    assert stats["selection_k"] == 4 and stats["selection_score"] == chunk.selection_score
    assert 0 <= stats["selection_within_limit"] <= 4


def test_a_new_task_during_a_prediction_drops_the_chunk_instead_of_faulting(setup):
    """The evaluation node's reset publishes a new instruction while the inference thread predicts (a k = 8
    replan takes ~0.4 s here): seen in the closed loop as a host fault "TypeError: '<=' not supported between
    NoneType and float" and a latched STOP. The chunk of the old task must be dropped, quietly."""
    runtime, robot, _, calibration, _ = setup
    host = ModelHost(runtime, robot, calibration, PolicySettings(seed=1), selection=SelectionSettings(k=2))
    policy = host.policy
    policy.start_task(INSTRUCTION)
    feed(policy, (0.0, 0.1, 0.2, 0.3))
    select = policy.selector.select

    def reset_meanwhile(*args, **kwargs):
        policy.start_task(INSTRUCTION)  # as the instruction callback does, from another thread
        return select(*args, **kwargs)

    policy.selector.select = reset_meanwhile
    assert host.propose(0.3) is None and "new task started while the chunk was predicted" in policy.skipped
    assert host.faults == 0, host.last_fault
    policy.selector.select = select
    assert host.propose(0.3) is None and host.faults == 0  # nothing of the new task yet: not ready, no fault
