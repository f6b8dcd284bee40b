"""Datasets -> samples: roles, windows (against LeRobot's own delta_timestamps), the role-aware task
sampler, padded multi-embodiment batches, clear errors, robust statistics."""

from pathlib import Path

import numpy as np
import pytest
import torch
from lda_common.schema import Quality
from lda_policy.model import PRESETS, Task
from lda_testing.datasets import record_dataset
from lda_train.config import DatasetConfig, TaskWeights
from lda_train.data import (
    ROLE_TASK_ALLOWED,
    BatchPlan,
    DataError,
    LanguageTable,
    SourceDataset,
    TaskSampler,
    assemble_batch,
    open_sources,
)
from lda_train.stats import embodiment_stats

from conftest import MIXED

LAYOUT = PRESETS["lda-tiny"].time


def _source(root, **kw) -> SourceDataset:
    return SourceDataset(DatasetConfig(root=str(root), **kw), 0, LAYOUT, 0.2, seed=0)


def test_roles_come_from_the_recorders_episode_labels(mixed_dataset):
    src = _source(mixed_dataset)
    assert [e.role.name.lower() for e in src.episodes] == MIXED
    assert src.embodiment == "test_arm" and (src.action_dim, src.state_dim) == (7, 8)
    # the held-out split is stratified by role: at least one high and one low episode held out
    held = {e.role for e in src.episodes if e.heldout}
    assert Quality.HIGH in held and Quality.LOW in held
    # a role for the whole dataset overrides the labels
    assert {e.role for e in _source(mixed_dataset, role="low").episodes} == {Quality.LOW}


def test_windows_match_lerobot_delta_timestamps(mixed_dataset):
    """Our in-memory windows equal what LeRobotDataset returns for the model's delta_timestamps."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    src = _source(mixed_dataset)
    delta = LAYOUT.delta_timestamps([src.image_key])
    delta.pop(src.image_key)  # frames are compared in test_cache
    delta["action_valid"] = delta["action"]
    ref = LeRobotDataset(src.repo_id, root=src.root, delta_timestamps=delta)
    n_hist = LAYOUT.history_action_steps
    rows = [0, 1, 5, 20, 23, 24, 25, 100, len(ref) - 1]
    for row in rows:
        item = ref[row]
        w = src.window_indices(np.array([row]))
        np.testing.assert_array_equal(src.action[w["history"][0]], item["action"][:n_hist].numpy())
        np.testing.assert_array_equal(src.action[w["chunk"][0]], item["action"][n_hist:].numpy())
        np.testing.assert_array_equal(w["chunk_pad"][0], item["action_is_pad"][n_hist:].numpy())
        np.testing.assert_array_equal(src.state[row], item["observation.state"][0].numpy())
        valid = src.frame_action_valid[w["chunk"][0]]
        expect = item["action_valid"][n_hist:].numpy().reshape(-1).astype(bool)
        if src.role[row] != Quality.ACTIONLESS:
            np.testing.assert_array_equal(valid, expect)
        else:
            assert not valid.any()


def test_sampler_draws_only_allowed_tasks_in_configured_proportions(mixed_dataset):
    src = _source(mixed_dataset)
    weights = TaskWeights(policy=0.4, forward_dynamics=0.3, inverse_dynamics=0.2, forecast=0.1)
    sampler = TaskSampler([src], weights, seed=3)
    plans = [sampler.batch(step, 64) for step in range(60)]
    role = np.concatenate([src.role[p.row] for p in plans])
    task = np.concatenate([p.task for p in plans])
    rows = np.concatenate([p.row for p in plans])
    assert not src.heldout[rows].any(), "a held-out episode was sampled for training"
    assert ROLE_TASK_ALLOWED[role, task].all(), "a sample got a task its role forbids"
    assert src.feasible[rows, task].all(), "a sample got a task it cannot serve"
    assert (task[role == Quality.ACTIONLESS] == Task.FORECAST).all()
    assert not (task[role == Quality.LOW] == Task.POLICY).any()
    assert {Quality(r) for r in np.unique(role)} == {Quality.HIGH, Quality.LOW, Quality.ACTIONLESS}
    # objective first: every batch holds at least the floor of each objective's share of its 64 samples
    # (25.6 / 19.2 / 12.8 / 6.4), the two leftover slots go by the fractions, and on average the shares hold
    counts = np.array([np.bincount(p.task, minlength=4) for p in plans])
    assert (counts.sum(axis=1) == 64).all() and (counts >= [25, 19, 12, 6]).all() and (counts <= [26, 20, 13, 7]).all()
    np.testing.assert_allclose(counts.mean(axis=0), [25.6, 19.2, 12.8, 6.4], atol=0.25)
    # a pure function of (seed, step)
    again = sampler.batch(7, 64)
    np.testing.assert_array_equal(again.row, plans[7].row)
    np.testing.assert_array_equal(again.task, plans[7].task)
    assert not np.array_equal(sampler.batch(8, 64).row, again.row)


def _language(src):
    return LanguageTable({t: (torch.randn(3, 384), torch.ones(3, dtype=torch.bool)) for t in src.tasks}, 384)


def test_batches_never_carry_actions_where_the_role_forbids_them(mixed_dataset):
    """The dataset's action column holds real numbers everywhere; as 'actionless' they must vanish."""
    src = _source(mixed_dataset, role="actionless")
    assert np.abs(src.action).sum() > 0
    rows = src.rows("train")[:16]
    plan = BatchPlan(np.zeros(len(rows), np.int64), rows, np.full(len(rows), int(Task.POLICY)))
    c = PRESETS["lda-tiny"]
    lat = torch.zeros(len(rows), c.num_obs_frames, 2, 2, 384)
    fut = torch.zeros(len(rows), c.num_future_frames, 2, 2, 384)
    b = assemble_batch([src], plan, c, lat, fut, _language(src), [0], 7, 8)
    assert not b["action_valid"].any()
    assert b["actions"].abs().sum() == 0 and b["history_actions"].abs().sum() == 0
    assert b["action_is_pad"].all()
    assert (b["role"] == Quality.ACTIONLESS).all()
    # with labels: the last frame of every episode has no action -> padded in chunks that reach it
    src = _source(mixed_dataset)
    ep = src.episodes[0]
    row = ep.end - 3
    plan = BatchPlan(np.zeros(1, np.int64), np.array([row]), np.zeros(1, np.int64))
    b = assemble_batch([src], plan, c, lat[:1], fut[:1], _language(src), [0], 7, 8)
    assert b["action_valid"].all()
    assert b["action_is_pad"][0].tolist() == [False, False] + [True] * (c.time.chunk_size - 2)


def test_two_embodiments_train_together(mixed_dataset, session_dir):
    from lda_train.build import build_model
    from lda_train.config import load_config

    bimanual = record_dataset(session_dir / "bimanual", ["high", "low", "high"], length=20, seed=2,
                              robot="test_bimanual", hands=2)
    sources = open_sources([DatasetConfig(root=str(mixed_dataset)), DatasetConfig(root=str(bimanual))],
                           LAYOUT, 0.0, seed=0)
    cfg = load_config(None, ["model.preset=lda-tiny"])
    model, _ = build_model(cfg, sources, 384)
    names = [e.name for e in model.config.embodiments]
    assert "test_arm" in names and "test_bimanual" in names
    assert model.embodiment("test_bimanual").action_dim == 14
    slots = [model.config.embodiment_index(s.embodiment) for s in sources]
    sampler = TaskSampler(sources, TaskWeights(), seed=0)
    plan = sampler.batch(0, 24)
    assert set(plan.dataset.tolist()) == {0, 1}
    c = model.config
    lang = LanguageTable({t: (torch.randn(2, 384), torch.ones(2, dtype=torch.bool))
                          for s in sources for t in s.tasks}, 384)
    obs = torch.randn(24, c.num_obs_frames, 2, 2, 384)
    fut = torch.randn(24, c.num_future_frames, 2, 2, 384)
    b = assemble_batch(sources, plan, c, obs, fut, lang, slots, 14, 16)
    arm = torch.from_numpy(plan.dataset == 0)
    assert b["actions"].shape[-1] == 14
    assert b["actions"][arm][..., 7:].abs().sum() == 0, "single-arm actions must be zero-padded"
    assert b["state"][arm][:, 8:].abs().sum() == 0
    loss, info = model.compute_loss(b)
    assert torch.isfinite(loss) and sum(info[f"count/{t.name.lower()}"] for t in Task) == 24


def test_missing_feature_gives_a_clear_error(tmp_path, mixed_dataset):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = tmp_path / "no_state"
    ds = LeRobotDataset.create("local/no_state", fps=10, root=root, use_videos=True, features={
        "observation.images.front": {"dtype": "video", "shape": (32, 32, 3), "names": ["height", "width", "channels"]},
        "action": {"dtype": "float32", "shape": (7,), "names": None},
    })
    for i in range(12):
        ds.add_frame({"observation.images.front": np.full((32, 32, 3), i * 9, np.uint8),
                      "action": np.zeros(7, np.float32), "task": "reach"})
    ds.save_episode()
    ds.finalize()
    with pytest.raises(DataError) as err:
        _source(root, role="high", embodiment="single_gripper")
    msg = str(err.value)
    assert "missing feature 'observation.state'" in msg and "no_state" in msg and "data.datasets.0" in msg
    with pytest.raises(DataError, match="role 'quality' needs per-episode quality labels"):
        _source(root, embodiment="single_gripper")
    with pytest.raises(DataError, match=r"image_key 'observation.images.wrist' is not a feature.*images.front"):
        _source(mixed_dataset, image_key="observation.images.wrist")
    with pytest.raises(DataError, match="not a LeRobot dataset"):
        _source(tmp_path / "nothing_here")
    # actionless video of a known embodiment needs neither state nor actions
    src = _source(root, role="actionless", embodiment="single_gripper")
    assert not src.frame_action_valid.any() and src.feasible[:, Task.FORECAST].any()
    assert not src.feasible[:, [Task.POLICY, Task.FORWARD_DYNAMICS, Task.INVERSE_DYNAMICS]].any()


def test_statistics_are_robust_and_ignore_invalid_actions(session_dir):
    def glitch(index, actions):
        actions = actions.copy()
        if index == 0:
            actions[3, :3] = 50.0  # one teleop glitch among ~330 training actions
        return actions

    # same name -> same held-out split; the datasets differ in one action only
    clean = _source(record_dataset(session_dir / "clean60", MIXED, length=60, seed=4), name="d")
    glitchy = _source(record_dataset(session_dir / "glitchy60", MIXED, length=60, seed=4, action_transform=glitch),
                      name="d")
    a = embodiment_stats([clean])["test_arm"]
    b = embodiment_stats([glitchy])["test_arm"]
    assert np.abs(glitchy.action).max() == 50.0
    rows = clean.rows("train")
    valid = clean.action[rows[clean.frame_action_valid[rows]]]
    # the 99 % quantile moves by at most one rank: never beyond the clean data, far from the glitch
    assert (np.asarray(b.action.high) <= valid.max(axis=0) + 1e-6).all()
    span = np.asarray(a.action.high) - np.asarray(a.action.low)
    assert (np.abs(np.asarray(b.action.high) - a.action.high) <= 0.25 * span + 1e-6).all()
    assert (np.abs(np.asarray(b.action.low) - a.action.low) <= 0.25 * span + 1e-6).all()
    assert np.std(np.r_[valid[:, 0], 50.0]) > 10 * np.std(valid[:, 0])  # what a mean/std would have done
    # only valid actions of high training episodes count: not low or actionless episodes, not the
    # action-less last frames
    high = [e for e in clean.episodes_of("train") if e.role == Quality.HIGH]
    assert a.action_source == "high"
    assert a.action_rows == sum(e.end - e.start - 1 for e in high)
    assert a.state_rows == len(rows)  # states are valid everywhere, actionless episodes included
    assert a.action_mean.shape == (7,)


def test_unknown_fps_for_the_time_layout_is_refused(tmp_path):
    root = record_dataset(tmp_path / "fps15", ["high"], length=12, fps=15)
    with pytest.raises(DataError, match="recorded at 15.0 fps"):
        _source(root)


def test_dataset_names_must_be_unique(mixed_dataset):
    with pytest.raises(DataError, match="appear twice"):
        open_sources([DatasetConfig(root=str(mixed_dataset)), DatasetConfig(root=str(Path(mixed_dataset)))],
                     LAYOUT, 0.1, 0)


def test_train_episodes_restrict_training_to_a_subset_and_leave_the_heldout_split_alone(mixed_dataset):
    # MIXED: high 0 1 3 5 7, low 2 6, actionless 4; episodes 7 and 6 held out, train on high 0 and 1 + low 2
    src = _source(mixed_dataset, heldout_episodes=[6, 7], train_episodes=[0, 1, 2])
    assert [e.index for e in src.episodes_of("heldout")] == [6, 7]
    assert [e.index for e in src.episodes_of("train")] == [0, 1, 2]
    assert src.summary()["train_episodes_by_role"] == {"high": 2, "low": 1, "actionless": 0}
    plans = [TaskSampler([src], TaskWeights(), seed=1).batch(step, 64) for step in range(20)]
    drawn = {e.index for e in src.episodes for p in plans if ((p.row >= e.start) & (p.row < e.end)).any()}
    assert drawn == {0, 1, 2}, "the sampler drew an episode outside train_episodes"
    # without the list, every episode that is not held out trains (high 3 and 5, actionless 4 too)
    assert [e.index for e in _source(mixed_dataset, heldout_episodes=[6, 7]).episodes_of("train")] == [0, 1, 2, 3, 4, 5]
    with pytest.raises(DataError, match=r"train_episodes: episode\(s\) \[42\] not in"):
        _source(mixed_dataset, train_episodes=[0, 42])
    with pytest.raises(DataError, match=r"heldout_episodes: episode\(s\) \[9\] not in"):
        _source(mixed_dataset, heldout_episodes=[9])
    with pytest.raises(DataError, match=r"train_episodes: episode\(s\) \[7\] are also held out"):
        _source(mixed_dataset, heldout_episodes=[7], train_episodes=[0, 7])
