"""Flow matching in the GR00T / LDA convention.

t = 1 is clean data and t = 0 pure Gaussian noise; the noisy sample is
``x_t = (1 - t) * noise + t * x`` and the network regresses the constant velocity ``x - noise``.
Sampling integrates dx/dt = v(x_t, t) from t = 0 to 1 with a fixed number of Euler steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .config import FlowConfig


def sample_time(batch_size: int, flow: FlowConfig, device: torch.device | str) -> torch.Tensor:
    """Training times ``t = t_max * (1 - s)``, ``s ~ Beta(alpha, beta)`` (skewed towards noise), shape (B,)."""
    beta = torch.distributions.Beta(torch.tensor(flow.beta_alpha), torch.tensor(flow.beta_beta))
    return (flow.t_max * (1.0 - beta.sample((batch_size,)))).to(device)


def interpolate(x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns the noisy sample x_t and the target velocity for per-sample times t of shape (B,)."""
    t = t.view((-1,) + (1,) * (x.dim() - 1)).to(x.dtype)
    return (1.0 - t) * noise + t * x, x - noise


def euler_sample(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor, num_steps: int
) -> torch.Tensor:
    """Integrates ``velocity(x_t, t)`` (t of shape (B,)) from the noise at t = 0 to t = 1.

    The state is kept in float32 even when the velocity comes out of a bf16 autocast region.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    x = noise.float()
    dt = 1.0 / num_steps
    for k in range(num_steps):
        t = torch.full((x.shape[0],), k * dt, device=x.device)
        x = x + dt * velocity(x, t).float()
    return x
