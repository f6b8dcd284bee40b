"""Config, presets, parameter counts, data roles, time layout, normalisation and pooling."""

import numpy as np
import pytest
import torch
from lda_common.config import parse
from lda_common.schema import Quality
from lda_policy.model import (
    PRESETS,
    EmbodimentSpec,
    LDAConfig,
    LDAModel,
    Normalizer,
    RobustStats,
    Task,
    TimeLayout,
    allowed_tasks,
    pool_latents,
)
from lda_policy.model.normalization import CLIP


def test_allowed_tasks_follow_data_roles():
    assert allowed_tasks("high") == (Task.POLICY, Task.FORWARD_DYNAMICS, Task.INVERSE_DYNAMICS, Task.FORECAST)
    assert allowed_tasks(Quality.LOW) == (Task.FORWARD_DYNAMICS, Task.INVERSE_DYNAMICS, Task.FORECAST)
    assert allowed_tasks(2) == (Task.FORECAST,)
    assert allowed_tasks("Actionless") == (Task.FORECAST,)
    with pytest.raises(ValueError, match="expert"):
        allowed_tasks("expert")
    with pytest.raises(ValueError):
        allowed_tasks(7)


def test_time_layout_gives_lerobot_delta_timestamps():
    layout = TimeLayout()
    delta = layout.delta_timestamps(["observation.images.front"])
    assert delta["action"] == [-0.2, -0.1] + [round(0.1 * k, 6) for k in range(16)]
    assert delta["observation.images.front"] == [-0.5, 0.0, 0.5, 1.0, 1.5]
    assert delta["observation.state"] == [0.0]
    with pytest.raises(ValueError, match="end at 0.0"):
        TimeLayout(obs_offsets_s=(-0.5, -0.1))


def test_lda_1b_preset_matches_the_paper_and_counts_parameters_on_meta():
    cfg = PRESETS["lda-1b"]
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads) == (1536, 16, 32)
    assert cfg.latent_grid == (14, 14) and cfg.latent_dim == 384 and cfg.time.chunk_size == 16
    model = LDAModel.from_preset("lda-1b", device="meta")
    assert all(p.is_meta for p in model.parameters())
    counts = model.parameter_counts()
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    assert 1.55e9 < counts["total"] < 1.65e9  # "about 1.6B trainable parameters"
    assert 0.4e9 < LDAModel.from_preset("lda-0.5b", device="meta").parameter_counts()["total"] < 0.6e9


def test_config_round_trips_through_dict_and_rejects_unknown_fields():
    cfg = PRESETS["lda-small"]
    assert parse(LDAConfig, cfg.to_dict()) == cfg
    data = cfg.to_dict()
    data["hiden_size"] = 3
    with pytest.raises(ValueError, match="hiden_size: unknown key; did you mean 'hidden_size'"):
        parse(LDAConfig, data)
    with pytest.raises(ValueError, match="max_action_dim"):
        LDAConfig(name="x", hidden_size=64, num_layers=1, num_heads=2,
                  embodiments=(EmbodimentSpec("huge", 99, 4),))
    with pytest.raises(KeyError, match="lda-2b"):
        LDAModel.from_preset("lda-2b", device="meta")


def test_robust_stats_ignore_outliers_and_nan_rows():
    x = np.concatenate([np.linspace(-1, 1, 1000)[:, None], np.full((1000, 1), 3.0)], axis=1)
    x[0, 0] = 1e6  # a single outlier must not stretch the range
    x[1] = np.nan
    stats = RobustStats.from_array(x)
    assert stats.high[0] < 1.0 and stats.low[0] > -1.0
    assert stats.low[1] == stats.high[1] == 3.0


def test_normalizer_round_trip_per_embodiment():
    cfg = PRESETS["lda-tiny"]
    norm = Normalizer(cfg)
    norm.set_embodiment_stats("single_gripper", RobustStats((0.0,) * 7, (2.0,) * 7),
                              RobustStats.identity(8))
    ids = torch.tensor([0, 1])  # single_gripper has stats, bimanual_gripper keeps identity
    x = torch.randn(2, 16, cfg.max_action_dim)
    n = norm.normalize_action(x, ids)
    assert torch.allclose(n[0, :, :7], x[0, :, :7] - 1.0)
    assert torch.equal(n[1], x[1])
    assert torch.allclose(norm.unnormalize_action(n, ids), x, atol=1e-6)
    # An outlier far outside the data's range is clipped, so it cannot dominate a loss.
    far = torch.full((2, 1, cfg.max_action_dim), 100.0)
    assert norm.normalize_action(far, ids).max().item() == CLIP
    assert norm.normalize_state(torch.full((2, cfg.max_state_dim), -100.0), ids).min().item() == -CLIP
    with pytest.raises(ValueError, match="spec says"):
        norm.set_embodiment_stats("single_gripper", RobustStats.identity(3), RobustStats.identity(8))


def test_pool_latents_averages_the_dino_grid():
    x = torch.randn(2, 3, 14, 14, 384)
    pooled = pool_latents(x, (7, 7))
    assert pooled.shape == (2, 3, 7, 7, 384)
    assert torch.allclose(pooled[0, 0, 0, 0], x[0, 0, :2, :2].mean(dim=(0, 1)), atol=1e-6)
    assert pool_latents(x, (14, 14)) is x
