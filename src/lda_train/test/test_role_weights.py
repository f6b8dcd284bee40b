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
from lda_train.data import BatchPlan, SourceDataset, TaskSampler, effective_samples, task_weight_vector

from conftest import make_config

LAYOUT = PRESETS["lda-tiny"].time


def _source(root, position=0, **kw) -> SourceDataset:
    return SourceDataset(DatasetConfig(root=str(root), **kw), position, LAYOUT, 0.2, seed=0)


class ReferenceSampler:
    """TaskSampler as it was before ``role_weights`` (commit 145626b), kept verbatim as the reference."""

    def __init__(self, sources, weights, seed, split="train"):
        self.seed = seed
        w = task_weight_vector(weights)
        self.rows, self.cum_probs, mass = [], [], []
        for s in sources:
            rows = s.rows(split)
            p = s.feasible[rows] * w[None, :]
            keep = p.sum(axis=1) > 0
            rows, p = rows[keep], p[keep]
            p = p / p.sum(axis=1, keepdims=True) if len(rows) else p
            self.rows.append(rows)
            self.cum_probs.append(np.cumsum(p, axis=1))
            mass.append(s.cfg.weight * len(rows))
        mass = np.asarray(mass, dtype=np.float64)
        self.dataset_probs = mass / mass.sum()

    def batch(self, step, batch_size):
        rng = np.random.default_rng([self.seed, 0xBA7C4, int(step)])
        ds = rng.choice(len(self.rows), size=batch_size, p=self.dataset_probs)
        u_row, u_task = rng.random(batch_size), rng.random(batch_size)
        rows = np.empty(batch_size, dtype=np.int64)
        tasks = np.empty(batch_size, dtype=np.int64)
        for i, d in enumerate(ds):
            k = min(int(u_row[i] * len(self.rows[d])), len(self.rows[d]) - 1)
            rows[i] = self.rows[d][k]
            cum = self.cum_probs[d][k]
            tasks[i] = min(int(np.searchsorted(cum, u_task[i] * cum[-1], side="right")), len(Task) - 1)
        return BatchPlan(ds.astype(np.int64), rows, tasks)


@pytest.fixture(scope="module")
def two_sources(mixed_dataset):
    """The mixed dataset twice under two names, the second drawn 2.5x as often per frame."""
    return [_source(mixed_dataset, 0, name="a"), _source(mixed_dataset, 1, name="b", weight=2.5)]


@pytest.mark.parametrize("role_weights", [None, RoleWeights(), RoleWeights(high=2.0, low=2.0, actionless=2.0)])
def test_default_role_weights_draw_exactly_the_batches_of_the_sampler_without_them(two_sources, role_weights):
    weights = TaskWeights(policy=0.5, forward_dynamics=0.2, inverse_dynamics=0.2, forecast=0.1)
    ref = ReferenceSampler(two_sources, weights, seed=11)
    new = TaskSampler(two_sources, weights, seed=11, role_weights=role_weights)
    np.testing.assert_array_equal(new.dataset_probs, ref.dataset_probs)  # bit for bit, not approximately
    for step in range(40):
        a, b = ref.batch(step, 32), new.batch(step, 32)
        np.testing.assert_array_equal(a.dataset, b.dataset)
        np.testing.assert_array_equal(a.row, b.row)
        np.testing.assert_array_equal(a.task, b.task)


def _role_shares(sampler, src, steps=300, batch=64):
    plans = [sampler.batch(s, batch) for s in range(steps)]
    role = np.concatenate([src.role[p.row] for p in plans])
    return np.array([(role == r).mean() for r in Quality]), plans


def test_role_weights_set_the_per_role_draw_frequencies(mixed_dataset):
    src = _source(mixed_dataset)
    weights = TaskWeights()
    default = TaskSampler([src], weights, seed=5)
    frames = np.array([(src.role[default.rows[0]] == r).sum() for r in Quality], dtype=np.float64)
    assert (frames > 0).all()
    base, _ = _role_shares(default, src)
    np.testing.assert_allclose(base, frames / frames.sum(), atol=0.015)  # all 1.0: each role by its frames

    rw = RoleWeights(high=1.0, low=4.0, actionless=0.5)
    sampler = TaskSampler([src], weights, seed=5, role_weights=rw)
    got, plans = _role_shares(sampler, src)
    w = np.array([rw.high, rw.low, rw.actionless])
    expected = w * frames / (w * frames).sum()
    np.testing.assert_allclose(got, expected, atol=0.015)
    assert got[Quality.LOW] > base[Quality.LOW] + 0.1  # the weights really moved the draws
    # the sampler's own expectation agrees, and the tasks still follow the roles' rules
    np.testing.assert_allclose(sampler.expected_shares().sum(axis=1), expected, atol=1e-9)
    task = np.concatenate([p.task for p in plans])
    role = np.concatenate([src.role[p.row] for p in plans])
    assert not (task[role == Quality.LOW] == Task.POLICY).any()
    assert (task[role == Quality.ACTIONLESS] == Task.FORECAST).all()
    # within a role the anchor is still uniform over its frames
    high_rows = np.concatenate([p.row for p in plans])[role == Quality.HIGH]
    counts = np.bincount(np.searchsorted(sampler.rows[0], high_rows), minlength=len(sampler.rows[0]))
    counts = counts[src.role[sampler.rows[0]] == Quality.HIGH]
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
