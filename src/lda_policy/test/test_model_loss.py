"""Flow-matching loss: role/validity masking (asserted on gradients) and learning a known transition."""

import math

import pytest
import torch
from lda_common.schema import Quality
from lda_policy.model import EmbodimentSpec, InputError, LDAModel, Task

POINT = EmbodimentSpec("point", action_dim=2, state_dim=2, description="2-D velocity of a point")


def make_model(seed: int = 0, live: bool = True, **overrides) -> LDAModel:
    """``live`` perturbs every weight so no path is silenced by the AdaLN-Zero / zero-head init:
    a zero gradient in the tests below then comes from masking, not from initialisation."""
    torch.manual_seed(seed)
    model = LDAModel.from_preset("lda-tiny", embodiments=(POINT,), **overrides)
    if live:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return model


def random_batch(model: LDAModel, tasks, roles, seed: int = 0) -> dict:
    c = model.config
    g = torch.Generator().manual_seed(seed)
    b = len(tasks)
    return {
        "embodiment_id": torch.zeros(b, dtype=torch.long),
        "task": torch.tensor([int(t) for t in tasks]),
        "role": torch.tensor([int(r) for r in roles]),
        "obs_latents": torch.randn(b, c.num_obs_frames, *c.latent_grid, c.latent_dim, generator=g),
        "future_latents": torch.randn(b, c.num_future_frames, *c.latent_grid, c.latent_dim, generator=g),
        "state": torch.randn(b, 2, generator=g),
        "history_actions": torch.randn(b, c.time.history_action_steps, 2, generator=g),
        "actions": torch.randn(b, c.time.chunk_size, 2, generator=g),
        "action_valid": torch.ones(b, dtype=torch.bool),
        "language": torch.randn(b, 5, c.lang_dim, generator=g),
        "language_mask": torch.ones(b, 5, dtype=torch.bool),
    }


def input_grads(model: LDAModel, batch: dict, keys=("actions", "history_actions", "future_latents")):
    for k in keys:
        batch[k] = batch[k].clone().requires_grad_(True)
    loss, info = model.compute_loss(batch)
    loss.backward()
    return loss, info, {k: batch[k].grad for k in keys}


def per_sample_nonzero(grad: torch.Tensor) -> list[bool]:
    return [bool(g.abs().sum() > 0) for g in grad]


def test_low_quality_sample_gets_zero_policy_gradient():
    model = make_model()
    batch = random_batch(model, [Task.POLICY, Task.POLICY], [Quality.HIGH, Quality.LOW])
    loss, info, grads = input_grads(model, batch)
    assert per_sample_nonzero(grads["actions"]) == [True, False]
    assert torch.equal(grads["actions"][1], torch.zeros_like(grads["actions"][1]))
    assert info["count/policy"] == 1

    # A batch holding only the low-quality policy sample moves no parameter at all.
    model.zero_grad()
    low_only = random_batch(model, [Task.POLICY], [Quality.LOW])
    loss, _ = model.compute_loss(low_only)
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    # The same sample labelled high quality does produce parameter gradients.
    model.zero_grad()
    loss, _ = model.compute_loss({**low_only, "role": torch.tensor([int(Quality.HIGH)])})
    loss.backward()
    assert any(p.grad.any() for p in model.parameters())


def test_actionless_sample_only_trains_forecasting():
    model = make_model()
    tasks = [Task.POLICY, Task.FORWARD_DYNAMICS, Task.INVERSE_DYNAMICS, Task.FORECAST]
    batch = random_batch(model, tasks, [Quality.ACTIONLESS] * 4)
    batch["action_valid"][:] = False
    batch["actions"][:] = float("nan")  # garbage that must never reach the network
    batch["history_actions"][:] = float("nan")
    loss, info, grads = input_grads(model, batch)
    assert torch.isfinite(loss)
    assert per_sample_nonzero(grads["future_latents"]) == [False, False, False, True]
    assert not grads["actions"].any() and not grads["history_actions"].any()
    assert [info[f"count/{t.name.lower()}"] for t in tasks] == [0, 0, 0, 1]


def test_invalid_actions_never_condition_forward_dynamics_even_if_role_allows():
    model = make_model()
    batch = random_batch(model, [Task.FORWARD_DYNAMICS, Task.FORWARD_DYNAMICS], [Quality.HIGH] * 2)
    batch["action_valid"][1] = False
    loss, info, grads = input_grads(model, batch)
    assert per_sample_nonzero(grads["future_latents"]) == [True, False]
    assert per_sample_nonzero(grads["actions"]) == [True, False]
    assert info["count/forward_dynamics"] == 1


def test_padding_masks_remove_loss_terms():
    model = make_model()
    batch = random_batch(model, [Task.FORWARD_DYNAMICS, Task.POLICY, Task.INVERSE_DYNAMICS],
                         [Quality.HIGH] * 3)
    batch["future_latents_is_pad"] = torch.tensor([[False, False, True], [False] * 3, [True] * 3])
    batch["action_is_pad"] = torch.zeros(3, 16, dtype=torch.bool)
    batch["action_is_pad"][1, 10:] = True
    decoder_grad = {}

    def keep_output_grad(module, grad_input, grad_output):
        decoder_grad["v"] = grad_output[0]

    model.action_decoder.register_full_backward_hook(keep_output_grad)
    loss, info, grads = input_grads(model, batch)
    v = decoder_grad["v"]  # d loss / d predicted action velocity, (B, chunk, max_action_dim)
    assert v[1, :10, :2].abs().sum() > 0
    assert not v[1, 10:].any() and not v[:, :, 2:].any()  # padded steps and padded dimensions
    fut = grads["future_latents"]
    assert fut[0, :2].abs().sum() > 0 and not fut[0, 2].any()  # padded future frame: no loss
    assert not fut[1].any()  # policy: future frames replaced by the stand-in
    assert grads["actions"][1, :10].abs().sum() > 0 and not grads["actions"][1, 10:].any()
    # Inverse dynamics without any valid future frame has no clean condition: no loss at all.
    assert not grads["actions"][2].any() and info["count/inverse_dynamics"] == 0


def test_gradient_checkpointing_gives_the_same_gradients():
    model = make_model()
    batch = random_batch(model, list(Task), [Quality.HIGH] * 4)
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_gradient_checkpointing(enabled)
        torch.manual_seed(0)
        model(batch)[0].backward()  # forward() is the training pass, as DDP wrappers call it
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads, strict=True))


def test_batch_validation_names_the_bad_field():
    model = make_model()
    batch = random_batch(model, [Task.POLICY], [Quality.HIGH])
    with pytest.raises(InputError, match="action_valid"):
        model.compute_loss({**batch, "action_valid": torch.ones(1)})
    with pytest.raises(InputError, match="actions"):
        model.compute_loss({**batch, "actions": torch.full((1, 16, 2), float("nan"))})
    with pytest.raises(InputError, match="role"):
        model.compute_loss({k: v for k, v in batch.items() if k != "role"})
    with pytest.raises(InputError, match="future_latents"):
        model.compute_loss({**batch, "future_latents": torch.zeros(1, 2, 2, 2, 384)})


# --------------------------------------------------------------------------- learning a known transition

TAUS = (0.5, 1.0, 1.5)  # future frame offsets of the default time layout


def point_world_batch(model: LDAModel, proj: torch.Tensor, b: int, gen: torch.Generator) -> dict:
    """A point at position s moves with constant velocity u; frames are a fixed linear image of s.

    Expert policy: u = -s (head to the origin). Transition: s(t + tau) = s + tau * u.
    """
    c = model.config
    s = torch.rand(b, 2, generator=gen) * 2 - 1
    u = -s
    u_prev = torch.rand(b, 2, generator=gen) * 2 - 1

    def frame(pos: torch.Tensor) -> torch.Tensor:
        return (pos @ proj).view(b, *c.latent_grid, c.latent_dim)

    batch = random_batch(model, [Task.POLICY, Task.FORWARD_DYNAMICS] * (b // 2), [Quality.HIGH] * b)
    batch.update(
        obs_latents=torch.stack([frame(s - 0.5 * u_prev), frame(s)], 1),
        future_latents=torch.stack([frame(s + tau * u) for tau in TAUS], 1),
        state=s,
        history_actions=u_prev[:, None].expand(b, c.time.history_action_steps, 2).clone(),
        actions=u[:, None].expand(b, c.time.chunk_size, 2).clone(),
        language=torch.zeros(b, 1, c.lang_dim),
        language_mask=torch.ones(b, 1, dtype=torch.bool),
    )
    return batch


def eval_losses(model: LDAModel, batch: dict) -> tuple[float, float]:
    torch.manual_seed(1234)  # same flow times and noise for every evaluation
    with torch.no_grad():
        _, info = model.compute_loss(batch)
    return info["loss/policy"], info["loss/forward_dynamics"]


def test_policy_and_forward_dynamics_learn_a_known_transition():
    model = make_model(seed=0, live=False, num_layers=1)  # one lda-tiny block keeps the run CPU-sized
    c = model.config
    gen = torch.Generator().manual_seed(0)
    proj = torch.randn(2, c.tokens_per_frame * c.latent_dim, generator=gen) / math.sqrt(2)
    eval_batch = point_world_batch(model, proj, 64, gen)
    policy_before, dynamics_before = eval_losses(model, eval_batch)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.0, fused=True)
    for _ in range(80):
        loss, _ = model.compute_loss(point_world_batch(model, proj, 16, gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy_after, dynamics_after = eval_losses(model, eval_batch)
    # Untrained: policy 1.4, dynamics 1.05. After 80 steps (seeds 0-3): policy 0.20-0.24x, dynamics 0.26-0.29x.
    assert policy_after < 0.4 * policy_before, (policy_before, policy_after)
    assert dynamics_after < 0.4 * dynamics_before, (dynamics_before, dynamics_after)
