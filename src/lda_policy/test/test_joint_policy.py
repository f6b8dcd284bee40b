"""The joint-space policy core of the model host with a tiny imported upstream checkpoint (random weights in the
authors' layout, imported by lda-import-upstream, with a real-format random Qwen3-VL and its processor), ROS-free:
the chunk is the model's output un-normalised into the GR-1's 29 joint targets, from [sin q, cos q] of the
measured joints in the robot config's order and the two padded frames; refusals and faults."""

import fcntl
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lda_common.robot_config import ConfigError, load_robot_config
from lda_policy.deploy.host import PolicyHost
from lda_policy.deploy.joint_policy import (
    NO_JUDGE_REASON,
    JointPolicyCore,
    JointPolicySettings,
    JointStateBuffer,
    NoJudge,
    square_image,
)
from lda_policy.deploy.safety import STATUS_OK, STATUS_STOP, STATUS_WARN
from lda_policy.model.upstream import UpstreamConfig

REPO = Path(__file__).resolve().parents[3]
GR1 = load_robot_config(REPO / "config" / "robots" / "gr1_humanoid.yaml")
INSTRUCTION = "pick up the red cube and place it in the bowl"


def tiny_upstream(base: Path) -> tuple[Path, Path]:
    """The tiny imported checkpoint and its processor directory, made once under ``base`` (locked)."""
    from lda_testing.upstream import write_tiny_upstream_checkpoint

    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (base / ".done").exists():
            write_tiny_upstream_checkpoint(base)
            (base / ".done").write_text("ok\n")
    return base / "imported", base / "qwen"


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from lda_policy.model.upstream.policy import UpstreamPolicy

    checkpoint, processor = tiny_upstream(tmp_path_factory.getbasetemp() / "lda_upstream_tiny")
    return UpstreamPolicy(checkpoint, processor)


def camera(t: float) -> np.ndarray:
    """A 48 x 64 frame (not square: the core pads it) that changes with time."""
    rng = np.random.default_rng(int(t * 1000))
    return rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)


def joints_at(t: float) -> np.ndarray:
    return 0.1 * np.arange(GR1.joints.dim) / GR1.joints.dim + 0.3 * np.sin(t)


def feed(core: JointPolicyCore, t0: float = 10.0, t1: float = 10.6) -> None:
    """Frames at 10 Hz and joint states at 100 Hz (shuffled order, extra joints) from t0 to t1."""
    names = GR1.joints.joint_names
    order = np.random.default_rng(0).permutation(len(names))
    for k in range(int(round((t1 - t0) * 100)) + 1):
        t = t0 + k * 0.01
        q = joints_at(t)
        core.on_joint_state(t, ["head_yaw", *[names[i] for i in order]], [0.7, *q[order]])
        if k % 10 == 0:
            core.on_frame(t, camera(t))


def test_chunk_is_the_models_output_as_joint_targets(policy):
    core = JointPolicyCore(policy, GR1.joints, GR1.robot, JointPolicySettings(seed=3))
    assert core.slot == 24
    assert core.not_ready(10.0) == "no instruction yet (publish one on the instruction topic)"
    core.start_task(INSTRUCTION)
    feed(core)
    assert core.not_ready(10.62) == ""
    chunk, obs = core.propose(10.62)
    assert chunk.actions.shape == (16, 29) and chunk.dimension_names == GR1.joints.joint_names
    assert chunk.embodiment == "gr1_humanoid" and chunk.dt == pytest.approx(0.05) and chunk.sequence == 1
    assert chunk.stamp == pytest.approx(10.6) and chunk.digest == chunk.computed_digest()
    assert obs.frame_stamps == pytest.approx((10.1, 10.6))  # the frame 0.5 s before the newest, and the newest
    # the state the model got: [sin q, cos q] of the measured joints at each frame's stamp, per group in order
    q = np.stack([joints_at(10.1), joints_at(10.6)])
    np.testing.assert_allclose(obs.positions, q, atol=1e-12)
    expected_state = np.concatenate([np.concatenate([np.sin(q[:, s]), np.cos(q[:, s])], axis=1)
                                     for s in GR1.joints.group_slices().values()], axis=1)
    assert obs.state.shape == (2, 58)
    np.testing.assert_allclose(obs.state, expected_state, atol=1e-12)
    np.testing.assert_allclose(obs.state[:, 0:7], np.sin(q[:, 0:7]), atol=1e-12)  # left arm sin first
    np.testing.assert_allclose(obs.state[:, 55:58], np.cos(q[:, 26:29]), atol=1e-12)  # waist cos last
    # the model's own output for exactly these inputs, then clipped and un-normalised (min -1, max 3)
    frames = np.stack([square_image(camera(10.1), 64), square_image(camera(10.6), 64)])[None]
    noise = torch.randn(1, 16, 138, generator=torch.Generator().manual_seed(3))
    direct = policy.act(frames, [INSTRUCTION], obs.state[None], [24], noise=noise)["normalized"][0]
    np.testing.assert_allclose(obs.normalized, direct, atol=1e-5)
    np.testing.assert_allclose(chunk.actions, (np.clip(direct[:, :29], -1, 1) + 1) / 2 * 4.0 - 1.0, atol=1e-5)
    assert chunk.actions.min() >= -1.0 and chunk.actions.max() <= 3.0
    assert not np.allclose(chunk.actions, obs.normalized[:, :29])  # physical units, not normalised


def test_square_image_pads_with_the_imagenet_mean():
    img = np.zeros((2, 4, 3), dtype=np.uint8)
    out = square_image(img, 4)
    assert out.shape == (4, 4, 3)
    assert (out[0] == (124, 116, 104)).all() and (out[3] == (124, 116, 104)).all() and not out[1:3].any()
    assert square_image(np.zeros((64, 64, 3), np.uint8), 32).shape == (32, 32, 3)


def test_joint_states_by_name_and_stamp():
    buf = JointStateBuffer(["a", "b"])
    assert not buf.add(1.0, ["x"], [0.0])  # none of ours
    buf.add(1.0, ["b", "x", "a"], [2.0, 9.0, 1.0])
    buf.add(1.1, ["a"], [1.5])  # a driver that publishes part of the joints
    q, missing = buf.at(1.08, 0.05)
    assert missing == ["b"] and q is None
    q, missing = buf.at(1.08, 0.1)
    np.testing.assert_array_equal(q, [1.5, 2.0]) and not missing


def test_not_ready_and_skips_name_the_joints(policy):
    core = JointPolicyCore(policy, GR1.joints, GR1.robot)
    core.start_task(INSTRUCTION)
    core.on_frame(5.0, camera(5.0))
    names = GR1.joints.joint_names
    core.on_joint_state(5.0, names[:-1], np.zeros(28))  # the waist roll is missing
    assert "/robot/joint_states for 1 joint(s): ['torso_waist_roll']" in core.not_ready(5.01)
    assert core.propose(5.01) is None and "torso_waist_roll" in core.skipped
    core.on_joint_state(5.0, names[-1:], [np.nan])
    core.on_joint_state(5.001, names, np.r_[np.zeros(28), np.nan])
    assert core.propose(5.01) is None and core.skipped == "NaN/inf in the measured joint positions of " \
                                                           "['torso_waist_roll']"


def fake_policy(stats, state_dim=58, max_embodiments=32):
    config = UpstreamConfig(num_heads=2, head_dim=16, num_layers=1, hidden_size=32, dit_output_dim=32, text_dim=32,
                            state_dim=state_dim, max_embodiments=max_embodiments)
    return SimpleNamespace(model=SimpleNamespace(config=config), stats=stats)


def stats(n=29, mask=None):
    return {"min": np.full(n, -1.0), "max": np.full(n, 1.0), "mask": np.ones(n, bool) if mask is None else mask}


@pytest.mark.parametrize("policy_, robot, settings, error", [
    (fake_policy(None), "gr1_humanoid", {}, "has no action statistics in normalization.json"),
    (fake_policy(stats(), state_dim=64), "gr1_humanoid", {}, "takes a 64-d state, the robot config's joints give"),
    (fake_policy(stats(12)), "gr1_humanoid", {}, "action statistics cover 12 dimensions"),
    (fake_policy(stats(mask=np.r_[np.ones(28, bool), False])), "gr1_humanoid", {},
     "mask out joint column(s) ['torso_waist_roll']"),
    (fake_policy(stats(138, mask=np.arange(138) < 30)), "gr1_humanoid", {}, "have 30 valid dimensions"),
    (fake_policy(stats()), "my_humanoid", {}, "no embodiment slot for 'my_humanoid'"),
    (fake_policy(stats()), "gr1_humanoid", {"embodiment_id": 40}, "set embodiment_id (0-31)"),
])
def test_refusals_name_the_problem(policy_, robot, settings, error):
    with pytest.raises(ConfigError) as err:
        JointPolicyCore(policy_, GR1.joints, robot, JointPolicySettings(**settings))
    assert error in str(err.value)


def test_padded_statistics_with_the_padding_masked_are_accepted():
    core = JointPolicyCore(fake_policy(stats(138, mask=np.arange(138) < 29)), GR1.joints, GR1.robot)
    assert core.low.shape == (29,)
    np.testing.assert_allclose(core.unnormalize(np.full((16, 138), 2.0)), 1.0)  # clipped to [-1, 1] first


def test_host_around_the_core_reports_faults_and_an_honest_judge(policy, monkeypatch):
    core = JointPolicyCore(policy, GR1.joints, GR1.robot, JointPolicySettings(seed=0))
    host = PolicyHost(core, NoJudge(), GR1.cameras[0].topic)
    core.start_task(INSTRUCTION)
    feed(core)
    assert host.host_status(10.62).level == STATUS_OK
    chunk = host.propose(10.62)
    assert chunk is not None and host.faults == 0 and host.inference_times
    host.judge_next(timeout_s=0.0)  # nothing to judge, no fault
    js = host.judge_status()
    assert (js.level, js.reason, js.faults) == (STATUS_WARN, NO_JUDGE_REASON, 0)
    assert host.selection_stats() == {"selection_k": 1}

    real = policy.act
    monkeypatch.setattr(policy, "act", lambda *a, **k: {"normalized": real(*a, **k)["normalized"] * np.nan})
    assert host.propose(10.62) is None and host.faults == 1
    assert "policy produced NaN/inf in the actions of chunk 2" in host.last_fault and "l_shoulder_pitch" in \
        host.last_fault

    def broken(*_a, **_k):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(policy, "act", broken)
    assert host.propose(10.62) is None and host.faults == 2
    assert host.last_fault == "policy error: RuntimeError: CUDA error: out of memory"
    assert host.host_status(10.62).level == STATUS_OK and "last fault" in host.host_status(10.62).reason
    # a camera that was flowing and went silent is a fault
    assert host.host_status(11.5).level == STATUS_STOP and "camera /camera/head/image_raw stale" in \
        host.host_status(11.5).reason
