"""Per-role sampling weights (``data.role_weights``) and the effective-sample counts of a run.

The default (all 1.0) must draw exactly the batches of the sampler before role weights existed (a
frozen copy of it is below); other weights must move the per-role draw frequencies to
``w_r x frames_r / sum``; bad weights are refused naming the key; the counts a run writes to its JSON
must be what its sampler drew.
"""

import json

import numpy as np
import pytest
from lda_common.config import ConfigError
from lda_common.schema import Quality
from lda_policy.model import PRESETS, Task
from lda_train.config import DatasetConfig, RoleWeights, TaskWeights, load_config
from lda_train.data import DataError, SourceDataset, TaskSampler, effective_samples, task_weight_vector

from conftest import make_config

LAYOUT = PRESETS["lda-tiny"].time


def _source(root, position=0, **kw) -> SourceDataset:
    return SourceDataset(DatasetConfig(root=str(root), **kw), position, LAYOUT, 0.2, seed=0)


@pytest.fixture(scope="module")
def two_sources(mixed_dataset):
    """The mixed dataset twice under two names, the second drawn 2.5x as often per frame."""
    return [_source(mixed_dataset, 0, name="a"), _source(mixed_dataset, 1, name="b", weight=2.5)]


def _eligible(sources, plan) -> np.ndarray:
    return np.array([sources[d].feasible[r, t] for d, r, t in zip(plan.dataset, plan.row, plan.task, strict=True)])


def test_adding_low_and_actionless_data_leaves_the_policy_samples_unchanged(mixed_dataset):
    """Issue #30: objective first. The policy's samples per batch are its task_weights share whatever else is
    added, and every objective only ever sees frames eligible for it (the real sampler on a real dataset)."""
    weights = TaskWeights(policy=0.4, forward_dynamics=0.2, inverse_dynamics=0.2, forecast=0.2)
    high = [_source(mixed_dataset, 0, name="expert", role="high")]
    more = [*high, _source(mixed_dataset, 1, name="play", role="low"),
            _source(mixed_dataset, 2, name="video", role="actionless", weight=3.0)]
    alone, mixed = TaskSampler(high, weights, seed=4), TaskSampler(more, weights, seed=4)
    for step in range(30):
        a, b = alone.batch(step, 40), mixed.batch(step, 40)
        assert (a.task == Task.POLICY).sum() == (b.task == Task.POLICY).sum() == 16  # 0.4 x 40, every batch
        assert np.bincount(b.task, minlength=4).tolist() == [16, 8, 8, 8]
        assert _eligible(more, b).all(), "a sample got an objective its frame cannot serve"
        assert (b.dataset[b.task == Task.POLICY] == 0).all()  # only the high dataset feeds the policy
        assert not (b.dataset[b.task != Task.FORECAST] == 2).any()  # actionless only forecasts
    shares = mixed.expected_shares()
    assert shares[:, Task.POLICY].sum() == pytest.approx(0.4) and shares[Quality.LOW, Task.POLICY] == 0
    assert shares.sum() == pytest.approx(1.0)
    # the same recording labelled per episode: the low and actionless episodes still never reach the policy
    labelled = [_source(mixed_dataset)]
    plan = TaskSampler(labelled, weights, seed=1).batch(0, 200)
    role = labelled[0].role[plan.row]
    assert not (role[plan.task == Task.POLICY] != Quality.HIGH).any() and _eligible(labelled, plan).all()
    assert (plan.task[role == Quality.ACTIONLESS] == Task.FORECAST).all()


def test_an_objective_no_frame_can_serve_gives_its_share_to_the_others(mixed_dataset):
    only_video = [_source(mixed_dataset, role="actionless")]
    sampler = TaskSampler(only_video, TaskWeights(), seed=0)
    assert sampler.task_shares.tolist() == [0.0, 0.0, 0.0, 1.0]
    assert (sampler.batch(3, 16).task == Task.FORECAST).all()
    with pytest.raises(DataError, match="no train sample can train any objective"):
        TaskSampler(only_video, TaskWeights(policy=1.0, forward_dynamics=0.0, inverse_dynamics=0.0, forecast=0.0),
                    seed=0)


def test_batches_are_a_pure_function_of_seed_and_step_and_mix_objectives(two_sources):
    sampler = TaskSampler(two_sources, TaskWeights(policy=0.5, forward_dynamics=0.2, inverse_dynamics=0.2,
                                                   forecast=0.1), seed=11)
    a, b = sampler.batch(7, 32), sampler.batch(7, 32)
    for x, y in ((a.dataset, b.dataset), (a.row, b.row), (a.task, b.task)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(sampler.batch(8, 32).row, a.row)
    assert len(set(a.task[:8].tolist())) > 1  # shuffled: the first micro-batch is not one objective
    # dataset weights hold within an objective: "b" (weight 2.5) feeds 2.5x the samples of "a"
    ds = np.concatenate([sampler.batch(s, 64).dataset for s in range(100)])
    assert (ds == 1).mean() == pytest.approx(2.5 / 3.5, abs=0.02)


def _role_shares(sampler, src, steps=300, batch=64):
    plans = [sampler.batch(s, batch) for s in range(steps)]
    role = np.concatenate([src.role[p.row] for p in plans])
    return np.array([(role == r).mean() for r in Quality]), plans


def test_role_weights_set_the_per_role_draw_frequencies_within_each_objective(mixed_dataset):
    """Within an objective, a frame of role r is drawn in proportion to role_weights[r] among the frames
    eligible for it; the objectives' shares of the batch do not move."""
    src = _source(mixed_dataset)
    weights = TaskWeights()
    rw = RoleWeights(high=1.0, low=4.0, actionless=0.5)
    sampler = TaskSampler([src], weights, seed=5, role_weights=rw)
    w = np.array([rw.high, rw.low, rw.actionless])
    rows = src.rows("train")
    shares = task_weight_vector(weights) / task_weight_vector(weights).sum()
    expected = np.zeros((len(Quality), len(Task)))
    for t in Task:  # computed here from the dataset's own eligibility, not by the sampler
        eligible = rows[src.feasible[rows, t]]
        mass = np.array([w[r] * (src.role[eligible] == r).sum() for r in Quality])
        expected[:, t] = shares[t] * mass / mass.sum()
    np.testing.assert_allclose(sampler.expected_shares(), expected, atol=1e-12)
    plans = [sampler.batch(s, 64) for s in range(300)]
    got = sum(sampler.counts(p) for p in plans) / (300 * 64)
    np.testing.assert_allclose(got, expected, atol=0.015)
    default = TaskSampler([src], weights, seed=5)
    base = default.expected_shares()
    assert expected[Quality.LOW, Task.FORWARD_DYNAMICS] > base[Quality.LOW, Task.FORWARD_DYNAMICS] + 0.05
    np.testing.assert_allclose(expected.sum(axis=0), base.sum(axis=0))  # the objectives' shares stay
    # within a role the anchor is still uniform over its eligible frames
    policy_rows = np.concatenate([p.row[p.task == Task.POLICY] for p in plans])
    eligible = sampler.rows_by_task[Task.POLICY][0]
    counts = np.bincount(np.searchsorted(eligible, policy_rows), minlength=len(eligible))
    assert counts.std() / counts.mean() < 0.35


def test_a_role_at_weight_zero_is_never_drawn_and_counts_add_up(mixed_dataset):
    src = _source(mixed_dataset)
    sampler = TaskSampler([src], TaskWeights(), seed=2, role_weights=RoleWeights(low=0.0, actionless=0.0))
    plans = [sampler.batch(s, 32) for s in range(50)]
    assert (np.concatenate([src.role[p.row] for p in plans]) == Quality.HIGH).all()
    shares = sampler.expected_shares()
    assert shares[Quality.HIGH].sum() == pytest.approx(1.0) and shares[Quality.LOW].sum() == 0
    counts = sum(sampler.counts(p) for p in plans)
    assert counts.sum() == 50 * 32 and counts[Quality.LOW].sum() == 0
    assert counts[Quality.HIGH, Task.POLICY] == sum(int((p.task == Task.POLICY).sum()) for p in plans)
    summary = effective_samples(counts)
    assert summary["role"] == {"high": 1600, "low": 0, "actionless": 0}
    assert sum(summary["objective"].values()) == 1600


def _write(tmp_path, text="data:\n  datasets:\n    - {root: /data/a}\n"):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.role_weights.medium=1.0"], "data.role_weights.medium: unknown key"),
    (["data.role_weights.low=-0.5"], "data.role_weights.low: must be >= 0"),
    (["data.role_weights.low=lots"], "data.role_weights.low: expected a number"),
    (["data.role_weights.high=0", "data.role_weights.low=0", "data.role_weights.actionless=0"],
     "data.role_weights: must not all be zero"),
])
def test_bad_role_weights_are_refused_naming_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path), overrides)
    assert message in str(err.value)


def test_role_weights_in_a_file_and_the_default(tmp_path):
    assert load_config(_write(tmp_path)).data.role_weights == RoleWeights(1.0, 1.0, 1.0)
    cfg = load_config(_write(tmp_path, "data:\n  datasets:\n    - {root: /d}\n  role_weights: {low: 2.5}\n"))
    assert cfg.data.role_weights.as_dict() == {"high": 1.0, "low": 2.5, "actionless": 1.0}
    with pytest.raises(ConfigError, match=r"role_weights.hgih: unknown key; did you mean 'data.role_weights.high'"):
        load_config(_write(tmp_path, "data:\n  datasets:\n    - {root: /d}\n  role_weights: {hgih: 2}\n"))


def test_a_runs_json_holds_the_samples_it_drew(mixed_dataset, dino_dir, cache_root, tmp_path):
    """A run (killed after its first checkpoint and resumed) writes the counts its sampler drew: in the
    evaluation JSON, effective_samples.json, the checkpoint and the training log; role_weights is
    resume-critical."""
    from lda_train.build import TrainError
    from lda_train.trainer import Trainer, run_training

    out = tmp_path / "run"
    extra = ["train.steps=2", "train.checkpoint_every=2", "train.eval_every=0", "eval.max_samples=8",
             "data.role_weights.low=3.0", "data.role_weights.actionless=0.5", "train.log_every=1"]
    cfg, _, _ = make_config([mixed_dataset], dino_dir, cache_root, out, extra)
    run_training(cfg, progress=False)
    cfg4, _, _ = make_config([mixed_dataset], dino_dir, cache_root, out, [*extra, "train.steps=4"])
    result = run_training(cfg4, resume=True, progress=False)

    from lda_train.data import open_sources

    srcs = open_sources(cfg4.data.datasets, LAYOUT, cfg4.data.heldout_fraction, cfg4.seed)
    sampler = TaskSampler(srcs, cfg4.data.task_weights, cfg4.seed, role_weights=cfg4.data.role_weights)
    plans = [sampler.batch(s, cfg4.train.batch_size) for s in range(4)]
    expected = effective_samples(sum(sampler.counts(p) for p in plans))
    role = np.concatenate([srcs[0].role[p.row] for p in plans])
    task = np.concatenate([p.task for p in plans])
    assert expected["role"]["low"] == int((role == Quality.LOW).sum())
    assert expected["objective"]["forecast"] == int((task == Task.FORECAST).sum())
    assert expected["total"] == 4 * cfg4.train.batch_size

    assert result["effective_samples"] == expected
    assert json.loads((out / "eval" / "latest.json").read_text())["effective_samples"] == expected
    written = json.loads((out / "effective_samples.json").read_text())
    assert written["step"] == 4 and written["role_weights"] == {"high": 1.0, "low": 3.0, "actionless": 0.5}
    assert {k: written[k] for k in expected} == expected
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 4 and log[-1]["samples/low"] == expected["role"]["low"]
    assert log[-1]["samples/policy"] == expected["objective"]["policy"]
    state = json.loads((out / "checkpoints" / "step_000002" / "training_state.json").read_text())
    first = effective_samples(sum(sampler.counts(p) for p in plans[:2]))
    assert effective_samples(np.array(state["effective_samples"])) == first
    summary = json.loads((out / "data_summary.json").read_text())
    assert summary["role_weights"]["low"] == 3.0 and summary["expected_share"]["role"]["low"] > 0

    # a checkpoint written before the counts were saved: the resumed run replays the draws of steps 0-3
    state_path = out / "checkpoints" / "step_000004" / "training_state.json"
    state = json.loads(state_path.read_text())
    del state["effective_samples"]
    state_path.write_text(json.dumps(state))
    cfg6, _, _ = make_config([mixed_dataset], dino_dir, cache_root, out, [*extra, "train.steps=6"])
    result = run_training(cfg6, resume=True, progress=False)
    plans += [sampler.batch(s, cfg4.train.batch_size) for s in (4, 5)]
    assert result["effective_samples"] == effective_samples(sum(sampler.counts(p) for p in plans))

    changed, _, _ = make_config([mixed_dataset], dino_dir, cache_root, out,
                                [*extra, "train.steps=8", "data.role_weights.low=1.0"])
    with pytest.raises(TrainError, match="data.role_weights"):
        Trainer(changed, resume=True)
