"""The LeRobot policy backend of the model host, ROS-free (issue #30 item 3): a tiny random-weight ACT checkpoint
written with LeRobot's own classes (lda_testing.lerobot_policies), loaded by LeRobotPolicyCore; the chunk it
proposes (shape, columns, dt, digest), the observation it used, the checkpoint's own pipelines, and the start-up
refusals of checkpoints that do not fit the robot config."""

import json

import numpy as np
import pytest
import torch
from lda_common.robot_config import ConfigError
from lda_policy.deploy.host import PolicyHost
from lda_policy.deploy.joint_policy import NoJudge
from lda_policy.deploy.lerobot_policy import (
    NO_JUDGE_REASON,
    LeRobotPolicyCore,
    LeRobotPolicySettings,
    check_features,
    image_tensor,
    load_lerobot_policy,
)
from lda_policy.deploy.robot import RobotInterface
from lda_policy.deploy.runtime import RuntimeLoadError
from lda_testing.deploy import HOME, IMAGE_H, IMAGE_W, write_robot_config

from lda_testing import lerobot_policies as LP

pytest.importorskip("lerobot")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("lerobot_policy")
    robot_config = write_robot_config(d / "robot.yaml")
    return {"robot_config": robot_config, "act": LP.write_tiny_act_checkpoint(d / "act", robot_config),
            "dir": d, "robot": RobotInterface(robot_config)}


def feed(core, t0=100.0, steps=6, dt=0.1, finger=0.04):
    rng = np.random.default_rng(0)
    positions = []
    for k in range(steps):
        t = t0 + k * dt
        core.on_frame(t, rng.integers(0, 256, (IMAGE_H, IMAGE_W, 3), dtype=np.uint8))
        pos = HOME[0] + 0.01 * k
        core.states.add_pose("right", t, pos, HOME[1])
        core.states.add_fingers("right", t, [finger])
        positions.append(pos)
    return t0 + (steps - 1) * dt, positions


def test_act_chunk_is_the_whole_prediction_in_the_robot_action_space(setup):
    robot = setup["robot"]
    loaded = load_lerobot_policy(setup["act"])
    assert loaded.type == "act" and not loaded.policy.training
    core = LeRobotPolicyCore(loaded, robot)
    assert core.chunk_rows == 16 and core.n_obs_steps == 1 and core.image_key == "observation.images.head"
    assert core.propose(0.0) is None and core.skipped == "no camera frame yet"
    newest, positions = feed(core)
    chunk, obs = core.propose(newest + 0.05)
    assert chunk.actions.shape == (16, 7) and chunk.dimension_names == robot.dimension_names
    assert chunk.dimension_names[0] == "right/dx" and chunk.dimension_names[-1] == "right/gripper"
    assert chunk.dt == pytest.approx(0.1) and chunk.embodiment == "test_arm" and chunk.sequence == 1
    assert chunk.stamp == pytest.approx(newest) and chunk.digest == chunk.computed_digest()
    assert np.isfinite(chunk.actions).all()
    # the statistics' scale: pose deltas of a few ACTION_STD, fingers near FINGER_MEAN (un-normalised output)
    assert np.abs(chunk.actions[:, :6]).max() < 20 * LP.ACTION_STD
    assert np.abs(chunk.actions[:, 6] - LP.FINGER_MEAN).max() < 20 * LP.ACTION_STD
    # the state it used: the measured hand-centric state at the frame stamp (position, quaternion, fingers)
    assert obs.state.shape == (1, 8) and obs.frame_stamps == [pytest.approx(newest)]
    np.testing.assert_allclose(obs.state[0, :3], positions[-1], atol=1e-9)
    np.testing.assert_allclose(obs.state[0], robot.state_vector(core.states.at(newest, 0.01)))
    assert obs.task == ""  # no instruction needed; passed on as the task when there is one
    core.start_task("pick up the red block")
    assert core.frames.newest_stamp is None and core.propose(newest + 0.05) is None
    feed(core)
    assert core.propose(newest + 0.05)[1].task == "pick up the red block"


def test_the_checkpoint_pipelines_are_used_as_lerobot_does(setup):
    """The chunk equals LeRobot's own preprocessor -> predict_action_chunk -> postprocessor on the same input."""
    robot = setup["robot"]
    core = LeRobotPolicyCore(load_lerobot_policy(setup["act"]), robot)
    newest, _ = feed(core)
    chunk, obs = core.propose(newest)
    ref = load_lerobot_policy(setup["act"])
    image = core.frames.history(newest, [0.0])[0][0, 0]
    batch = {"observation.images.head": image[None], "observation.state": torch.tensor(obs.state, dtype=torch.float32),
             "task": "", "robot_type": "test_arm"}
    with torch.inference_mode():
        expected = ref.postprocessor(ref.policy.predict_action_chunk(ref.preprocessor(batch)))[0].numpy()
    np.testing.assert_allclose(chunk.actions, expected, rtol=1e-5, atol=1e-7)
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert torch.equal(image_tensor(rgb), torch.from_numpy(rgb).float().div(255).permute(2, 0, 1))


def test_nan_actions_and_exceptions_are_host_faults(setup):
    core = LeRobotPolicyCore(load_lerobot_policy(setup["act"]), setup["robot"])
    host = PolicyHost(core, NoJudge(NO_JUDGE_REASON), "/test/head/image_raw")
    newest, _ = feed(core)
    assert host.propose(newest) is not None and host.faults == 0
    real = core.loaded.postprocessor
    core.loaded.postprocessor = lambda a: real(a) * float("nan")
    assert host.propose(newest) is None and host.faults == 1 and "NaN" in host.last_fault
    core.loaded.postprocessor = lambda a: (_ for _ in ()).throw(RuntimeError("boom"))
    assert host.propose(newest) is None and host.faults == 2 and "policy error: RuntimeError: boom" in host.last_fault
    level, reason, _, _ = host.judge.status()
    assert level == 1 and reason == NO_JUDGE_REASON and "judge" in reason


def test_checkpoints_that_do_not_fit_the_robot_are_refused_by_name(setup):
    from lerobot.configs.types import FeatureType, PolicyFeature

    robot, d, rc = setup["robot"], setup["dir"], setup["robot_config"]
    config = load_lerobot_policy(setup["act"]).config
    assert check_features(config, robot, "ckpt") == ("observation.images.head", True, [])
    img = PolicyFeature(FeatureType.VISUAL, (3, IMAGE_H, IMAGE_W))
    state = PolicyFeature(FeatureType.STATE, (8,))
    cases = [
        ({"action": PolicyFeature(FeatureType.ACTION, (14,))}, None, "'action' is (14,), the robot config's actions "
         "are (7,)"),
        (None, {"observation.images.head": PolicyFeature(FeatureType.VISUAL, (3, 96, 128)), "observation.state": state},
         "'observation.images.head' is (3, 96, 128), the robot config's camera 'head' gives (3, 48, 64)"),
        (None, {"observation.images.wrist": img, "observation.state": state},
         "it takes no 'observation.images.head' (the host's camera 'head'"),
        (None, {"observation.images.head": img, "observation.state": PolicyFeature(FeatureType.STATE, (16,))},
         "'observation.state' is (16,), the robot config's hand-centric state is (8,)"),
        (None, {"observation.images.head": img, "observation.state": state,
                "observation.environment_state": PolicyFeature(FeatureType.ENV, (4,))},
         "input feature 'observation.environment_state' (ENV) is not something the host can give"),
    ]
    for outputs, inputs, text in cases:
        bad = type(config)(**{**{k: getattr(config, k) for k in ("chunk_size", "n_action_steps")},
                              "input_features": inputs or config.input_features,
                              "output_features": outputs or config.output_features})
        with pytest.raises(ConfigError) as err:
            check_features(bad, robot, "ckpt")
        assert text in str(err.value) and "does not fit robot config 'test_arm'" in str(err.value), str(err.value)
    # through a written checkpoint: the core refuses at start-up
    wide = LP.write_tiny_act_checkpoint(d / "wide", rc, output_features={
        "action": PolicyFeature(FeatureType.ACTION, (9,))})
    with pytest.raises(ConfigError, match=r"'action' is \(9,\)"):
        LeRobotPolicyCore(load_lerobot_policy(wide), robot)
    # a checkpoint without observation.state is fine: only the image is fed
    no_state = LeRobotPolicyCore(load_lerobot_policy(LP.write_tiny_act_checkpoint(d / "nostate", rc, state=False)),
                                 robot, LeRobotPolicySettings(seed=0))
    newest, _ = feed(no_state)
    assert no_state.propose(newest)[0].actions.shape == (16, 7)


def test_directories_that_are_not_lerobot_checkpoints_are_refused(setup, tmp_path):
    with pytest.raises(RuntimeLoadError, match="does not exist"):
        load_lerobot_policy(tmp_path / "nothing")
    with pytest.raises(RuntimeLoadError, match="has no config.json, model.safetensors"):
        load_lerobot_policy(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json"):
        (broken / name).write_bytes((setup["act"] / name).read_bytes())
    (broken / "config.json").write_text(json.dumps({"type": "no_such_policy"}))
    with pytest.raises(RuntimeLoadError, match="cannot load the LeRobot checkpoint"):
        load_lerobot_policy(broken)


def test_diffusion_policy_gets_its_observation_steps(setup):
    """Diffusion Policy through the same interface: n_obs_steps observations one robot period apart (needs
    LeRobot's diffusion extra, which the suite does not install)."""
    pytest.importorskip("diffusers")
    robot = setup["robot"]
    ckpt = LP.write_tiny_diffusion_checkpoint(setup["dir"] / "diffusion", setup["robot_config"])
    core = LeRobotPolicyCore(load_lerobot_policy(ckpt), robot, LeRobotPolicySettings(seed=0))
    assert core.n_obs_steps == 2 and core.chunk_rows == 8
    newest, positions = feed(core)
    chunk, obs = core.propose(newest)
    assert chunk.actions.shape == (8, 7) and np.isfinite(chunk.actions).all()
    assert obs.frame_stamps == [pytest.approx(newest - 0.1), pytest.approx(newest)]
    np.testing.assert_allclose(obs.state[:, :3], positions[-2:], atol=1e-9)


def test_a_policy_whose_extra_is_missing_is_refused_by_name(setup, tmp_path):
    try:
        import diffusers  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("diffusers is installed")
    (tmp_path / "config.json").write_text(json.dumps({"type": "diffusion"}))
    for name in ("model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json"):
        (tmp_path / name).write_bytes((setup["act"] / name).read_bytes())
    with pytest.raises(RuntimeLoadError, match=r"lerobot\[diffusion\]"):
        load_lerobot_policy(tmp_path)


def test_a_checkpoint_made_as_lerobot_train_makes_it_from_a_suite_dataset_loads(tmp_path):
    """Features from a dataset this suite recorded, through LeRobot's make_policy and the dataset's statistics:
    the trainer's path. LeRobot 0.6.1 declares the dataset's 'action_valid' column an output feature too; the host
    accepts it and uses 'action' alone."""
    from lda_testing.datasets import record_dataset, robot_config

    root = record_dataset(tmp_path / "ds", ["high", "low"], length=12)
    ckpt = LP.write_act_checkpoint_from_dataset(tmp_path / "act", root)
    loaded = load_lerobot_policy(ckpt)
    assert set(loaded.config.output_features) == {"action", "action_valid"}
    robot = RobotInterface(robot_config())
    core = LeRobotPolicyCore(loaded, robot)
    assert core.image_key == "observation.images.front" and core.unused_outputs == ["action_valid"]
    for k in range(3):
        core.on_frame(100 + 0.1 * k, np.zeros((64, 64, 3), dtype=np.uint8))
        core.states.add_pose("right", 100 + 0.1 * k, HOME[0], HOME[1])
        core.states.add_fingers("right", 100 + 0.1 * k, [0.04])
    chunk, _ = core.propose(100.2)
    assert chunk.actions.shape == (16, 7) and np.isfinite(chunk.actions).all()
