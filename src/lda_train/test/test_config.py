"""Config files and dotted overrides: typed, checked, errors name the key."""

import math
from pathlib import Path

import pytest
from lda_train.build import lr_at
from lda_train.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("name", ["demo_cpu.yaml", "finetune_lda1b.yaml"])
def test_example_configs_load(name):
    cfg = load_config(REPO / "config" / "train" / name)
    assert cfg.data.datasets, "an example config must name its datasets"
    assert cfg.optim.betas == (0.9, 0.95)


def _write(tmp_path, text="data:\n  datasets:\n    - {root: /data/a}\n"):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_overrides_are_typed(tmp_path):
    cfg = load_config(_write(tmp_path), ["optim.lr=3e-4", "train.steps=12", "optim.betas=[0.8, 0.99]",
                                         "data.datasets.0.role=low", "data.datasets.0.name=123",
                                         "optim.ema=true", "train.micro_batch_size=null"])
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.train.steps == 12
    assert cfg.optim.betas == (0.8, 0.99)
    assert cfg.data.datasets[0].role == "low"
    assert cfg.data.datasets[0].name == "123"  # a string field keeps the text
    assert cfg.optim.ema is True and cfg.train.micro_batch_size is None


@pytest.mark.parametrize(("override", "message"), [
    ("train.stepz=5", "train.stepz: unknown key; did you mean 'train.steps'?"),
    ("train.steps=many", "train.steps: expected an integer"),
    ("optim.lr=fast", "optim.lr: expected a number"),
    ("optim.ema=yes please", "optim.ema: expected true or false"),
    ("data.datasets.0.role=medium", "data.datasets.0.role: expected one of ['quality', 'high', 'low', 'actionless']"),
    ("data.datasets.3.role=low", "data.datasets.3: index 3 out of range"),
    ("optim.betas=[0.9]", "optim.betas: expected 2 values"),
    ("optim.min_lr=1.0", "optim.min_lr: must lie in [0, optim.lr]"),
    ("model.preset=lda-huge", "model.preset: unknown preset 'lda-huge'"),
    ("train.steps", "must look like key.path=value"),
])
def test_bad_overrides_name_the_key(tmp_path, override, message):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path), [override])
    assert message in str(err.value)


def test_bad_file_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"datasets.0.wieght: unknown key; did you mean 'data.datasets.0.weight'"):
        load_config(_write(tmp_path, "data:\n  datasets:\n    - {root: /d, wieght: 2}\n"))
    with pytest.raises(ConfigError, match=r"data.datasets.0.root: required key is missing"):
        load_config(_write(tmp_path, "data:\n  datasets:\n    - {role: low}\n"))


def test_learning_rate_schedule(tmp_path):
    cfg = load_config(_write(tmp_path), ["optim.lr=1e-3", "optim.min_lr=1e-5", "optim.warmup_steps=10",
                                         "train.steps=110"])
    lrs = [lr_at(s, cfg) for s in range(110)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)  # linear warm-up
    assert all(b > a for a, b in zip(lrs[:9], lrs[1:10], strict=True))
    assert all(b <= a for a, b in zip(lrs[10:-1], lrs[11:], strict=True))  # cosine decay
    assert lrs[-1] == pytest.approx(1e-5)  # ends at the minimum LR
    mid = lrs[10 + 50]
    assert mid == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 50 / 99)))


def test_ema_decay_warms_up():
    from lda_train.build import ema_decay_at

    decays = [ema_decay_at(s, 0.999) for s in range(20000)]
    assert decays[0] == pytest.approx(0.1) and max(decays) == 0.999
    assert all(b >= a for a, b in zip(decays[:-1], decays[1:], strict=True))
    # the initial weights' share in the average after 1000 steps is negligible (0.999 ** 1000 = 37 % without)
    share = 1.0
    for d in decays[:1000]:
        share *= d
    assert share < 1e-3
