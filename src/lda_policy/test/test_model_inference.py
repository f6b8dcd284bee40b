"""The four inference calls: shapes for every preset, physical units, reproducibility, validation."""

import pytest
import torch
from lda_policy.model import PRESETS, InputError, LDAModel, Observation, RobustStats, pool_latents

CPU_PRESETS = ("lda-tiny", "lda-small")


def observation(model: LDAModel, b: int = 2, embodiment: str = "bimanual_gripper", grid=(14, 14)) -> Observation:
    c = model.config
    spec = model.embodiment(embodiment)
    g = torch.Generator().manual_seed(0)
    return Observation(
        embodiment=embodiment,
        history_latents=torch.randn(b, c.num_obs_frames, *grid, c.latent_dim, generator=g),
        language=torch.randn(b, 6, c.lang_dim, generator=g),
        language_mask=torch.tensor([[True] * 6, [True] * 3 + [False] * 3])[:b],
        state=torch.randn(b, spec.state_dim, generator=g),
        history_actions=torch.randn(b, c.time.history_action_steps, spec.action_dim, generator=g),
    )


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_objective_has_the_documented_shapes(name):
    device = "cpu" if name in CPU_PRESETS else "meta"  # the large presets are checked without memory
    model = LDAModel.from_preset(name, device=device)
    c = model.config
    obs = observation(model)
    future_shape = (2, c.num_future_frames, *c.latent_grid, c.latent_dim)
    actions = model.policy(obs, num_steps=1)
    assert actions.shape == (2, c.time.chunk_size, 14) and actions.device.type == device
    future = model.forward_dynamics(obs, torch.randn(2, c.time.chunk_size, 14), num_steps=1)
    assert future.shape == future_shape
    assert model.inverse_dynamics(obs, torch.randn(future_shape), num_steps=1).shape == actions.shape
    assert model.forecast(obs, num_steps=1).shape == future_shape
    if device == "cpu":
        assert torch.isfinite(actions).all() and torch.isfinite(future).all()


def test_outputs_are_in_physical_units():
    # Freshly built, the output heads are zero (AdaLN-Zero / DiT init), so the Euler integration
    # returns its starting noise: the result must be exactly that noise mapped to physical units.
    model = LDAModel.from_preset("lda-tiny")
    c = model.config
    model.normalizer.set_embodiment_stats("bimanual_gripper", RobustStats((90.0,) * 14, (110.0,) * 14),
                                          RobustStats.identity(16))
    model.normalizer.set_latent_stats(RobustStats((3.0,) * 384, (7.0,) * 384))
    obs = observation(model)
    noise = torch.randn(2, c.time.chunk_size, c.max_action_dim, generator=torch.Generator().manual_seed(7))
    actions = model.policy(obs, seed=7)
    assert torch.allclose(actions, 100.0 + 10.0 * noise[..., :14], atol=1e-4)
    half = model.policy(obs, seed=7, noise_scale=0.5)  # the starting noise, scaled
    assert torch.allclose(half, 100.0 + 5.0 * noise[..., :14], atol=1e-4)
    assert torch.allclose(model.policy(obs, seed=8, noise_scale=0.0), torch.full_like(actions, 100.0), atol=1e-4)
    with pytest.raises(ValueError, match="noise_scale must be in"):
        model.policy(obs, noise_scale=1.5)
    noise = torch.randn(2, c.num_future_frames, c.tokens_per_frame, 384, generator=torch.Generator().manual_seed(7))
    future = model.forecast(obs, seed=7)
    assert torch.allclose(future, (5.0 + 2.0 * noise).view(future.shape), atol=1e-4)


def test_seeded_sampling_is_reproducible_and_grids_are_pooled():
    torch.manual_seed(0)
    model = LDAModel.from_preset("lda-tiny")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # leave the zero init so outputs depend on inputs
    obs = observation(model)
    a = model.policy(obs, num_steps=4, seed=3)
    assert torch.equal(a, model.policy(obs, num_steps=4, generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(a, model.policy(obs, num_steps=4, seed=4))
    assert not torch.equal(a, model.policy(obs, num_steps=10, seed=3))
    pooled = pool_latents(obs.history_latents, model.config.latent_grid)
    pooled = Observation(**{**obs.__dict__, "history_latents": pooled})
    assert torch.allclose(a, model.policy(pooled, num_steps=4, seed=3), atol=1e-5)
    # Without robot inputs (video only) the stand-in tokens are used.
    video_only = Observation(obs.embodiment, obs.history_latents, obs.language)
    assert model.forecast(video_only, seed=0).shape == model.forecast(obs, seed=0).shape


def test_inputs_are_validated_with_errors_naming_the_field():
    model = LDAModel.from_preset("lda-tiny")
    obs = observation(model)
    bad_latents = obs.history_latents.clone()
    bad_latents[0, 0, 0, 0, 0] = float("nan")
    cases = {
        "history_latents": {"history_latents": bad_latents},
        "state": {"state": torch.zeros(2, 15)},
        "history_actions": {"history_actions": torch.zeros(2, 2, 14, dtype=torch.int64)},
        "embodiment": {"embodiment": "spot"},
        "language": {"language": torch.zeros(2, 6, 100)},
        "language_mask": {"language_mask": torch.ones(2, 6)},
    }
    for field, change in cases.items():
        with pytest.raises(InputError, match=field):
            model.policy(Observation(**{**obs.__dict__, **change}))
    with pytest.raises(InputError, match="actions"):
        model.forward_dynamics(obs, torch.zeros(2, 16, 7))
    with pytest.raises(InputError, match="future_latents"):
        model.inverse_dynamics(obs, torch.zeros(2, 1, 2, 2, 384))
    with pytest.raises(InputError, match="unknown field"):
        model.policy({**obs.__dict__, "image": None})
