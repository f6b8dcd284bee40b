"""Robust normalisation of actions, proprio states and DINO latents.

Each quantity x is mapped to ``(x - mid) / half`` with ``mid = (q_low + q_high) / 2`` and
``half = max((q_high - q_low) / 2, min_scale)``, where ``q_low`` / ``q_high`` are per-dimension
quantiles (1 % and 99 % by default). Unlike mean/std this ignores the rare outliers of teleoperation
data, and it puts most values in [-1, 1], the scale of the flow-matching noise; normalised actions and
states are clipped to [-5, 5] so an outlier cannot dominate the loss. Actions and states
have statistics per embodiment; latents share one per-channel set (DINO features do not depend on
the robot). The statistics travel with the checkpoint (``normalization.json``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import LDAConfig

#: Floor of the half-range so a (nearly) constant dimension does not blow up.
MIN_SCALE = 1e-4
#: Normalised actions and states are clipped to +-CLIP. A dimension that is nearly constant in the data
#: (the rotations of a task done without turning the wrist) has a tiny 1-99 % range, and the rare
#: sloppy teleoperation step then normalised to 50-150: on the demo's recording such samples made the
#: inverse-dynamics loss spike to 160 and, through gradient clipping, stalled the policy's learning.
CLIP = 5.0


@dataclass(frozen=True)
class RobustStats:
    """Per-dimension low/high quantiles of one quantity."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.low) != len(self.high) or not self.low:
            raise ValueError("RobustStats.low and .high must be non-empty and of equal length")
        if not all(math.isfinite(v) for v in self.low + self.high):
            raise ValueError("RobustStats contains non-finite values")
        if any(lo > hi for lo, hi in zip(self.low, self.high, strict=True)):
            raise ValueError("RobustStats.low must not exceed .high")

    @property
    def dim(self) -> int:
        return len(self.low)

    @classmethod
    def from_array(cls, x: np.ndarray | torch.Tensor, q_low: float = 0.01, q_high: float = 0.99) -> RobustStats:
        """Quantiles over every axis but the last; rows holding NaN/inf are ignored."""
        x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
        if x.ndim < 1:
            raise ValueError("RobustStats.from_array needs an array with a feature axis")
        x = x.reshape(-1, x.shape[-1])
        x = x[np.isfinite(x).all(axis=1)]
        if len(x) == 0:
            raise ValueError("RobustStats.from_array got no finite rows")
        lo, hi = np.quantile(x, [q_low, q_high], axis=0)
        return cls(tuple(float(v) for v in lo), tuple(float(v) for v in hi))

    @classmethod
    def identity(cls, dim: int) -> RobustStats:
        """Stats that leave values unchanged (mid 0, half-range 1)."""
        return cls((-1.0,) * dim, (1.0,) * dim)

    def to_dict(self) -> dict[str, list[float]]:
        return {"low": list(self.low), "high": list(self.high)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RobustStats:
        return cls(tuple(float(v) for v in data["low"]), tuple(float(v) for v in data["high"]))


class Normalizer(nn.Module):
    """Holds the statistics as (non-persistent) buffers so they follow ``model.to(device)``.

    Buffers: ``action_mid/half`` and ``state_mid/half`` of shape (max_embodiments, max_dim), indexed
    by embodiment id; ``latent_mid/half`` of shape (latent_dim,). Padded dimensions keep identity
    statistics. All methods take float tensors whose last axis is the feature axis.
    """

    def __init__(self, config: LDAConfig) -> None:
        super().__init__()
        self.config = config
        e = config.max_embodiments
        for name, shape in (("action", (e, config.max_action_dim)), ("state", (e, config.max_state_dim)),
                            ("latent", (config.latent_dim,))):
            self.register_buffer(f"{name}_mid", torch.zeros(shape), persistent=False)
            self.register_buffer(f"{name}_half", torch.ones(shape), persistent=False)
        self._stats: dict[str, dict[str, RobustStats]] = {}
        self._latent_stats = RobustStats.identity(config.latent_dim)

    @staticmethod
    def _mid_half(stats: RobustStats) -> tuple[torch.Tensor, torch.Tensor]:
        low = torch.tensor(stats.low, dtype=torch.float64)
        high = torch.tensor(stats.high, dtype=torch.float64)
        return ((low + high) / 2).float(), ((high - low) / 2).clamp(min=MIN_SCALE).float()

    def set_embodiment_stats(self, name: str, action: RobustStats, state: RobustStats) -> None:
        """Install action/state statistics of embodiment ``name`` (dims must match its spec)."""
        idx = self.config.embodiment_index(name)
        spec = self.config.embodiments[idx]
        if action.dim != spec.action_dim or state.dim != spec.state_dim:
            raise ValueError(
                f"stats for {name!r} are {action.dim}-d actions / {state.dim}-d state, the spec says "
                f"{spec.action_dim} / {spec.state_dim}"
            )
        for prefix, stats in (("action", action), ("state", state)):
            mid, half = self._mid_half(stats)
            getattr(self, f"{prefix}_mid")[idx, : stats.dim] = mid
            getattr(self, f"{prefix}_half")[idx, : stats.dim] = half
        self._stats[name] = {"action": action, "state": state}

    def set_latent_stats(self, stats: RobustStats) -> None:
        """Install per-channel DINO latent statistics."""
        if stats.dim != self.config.latent_dim:
            raise ValueError(f"latent stats are {stats.dim}-d, the model's latents are {self.config.latent_dim}-d")
        self.latent_mid[:], self.latent_half[:] = self._mid_half(stats)
        self._latent_stats = stats

    def normalize_action(self, x: torch.Tensor, embodiment_id: torch.Tensor) -> torch.Tensor:
        """x: (B, ..., max_action_dim) physical -> normalised; embodiment_id: (B,)."""
        mid, half = self._gather(self.action_mid, self.action_half, embodiment_id, x.dim())
        return ((x - mid) / half).clamp(-CLIP, CLIP)

    def unnormalize_action(self, x: torch.Tensor, embodiment_id: torch.Tensor) -> torch.Tensor:
        mid, half = self._gather(self.action_mid, self.action_half, embodiment_id, x.dim())
        return x * half + mid

    def action_range(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Embodiment ``name``'s per-dimension action quantiles (low, high), physical units; None without stats."""
        stats = self._stats.get(name)
        return None if stats is None else (np.array(stats["action"].low), np.array(stats["action"].high))

    def normalize_state(self, x: torch.Tensor, embodiment_id: torch.Tensor) -> torch.Tensor:
        """x: (B, ..., max_state_dim) physical -> normalised."""
        mid, half = self._gather(self.state_mid, self.state_half, embodiment_id, x.dim())
        return ((x - mid) / half).clamp(-CLIP, CLIP)

    def normalize_latent(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., latent_dim) DINO units -> normalised."""
        return (x - self.latent_mid) / self.latent_half

    def unnormalize_latent(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.latent_half + self.latent_mid

    @staticmethod
    def _gather(mid: torch.Tensor, half: torch.Tensor, ids: torch.Tensor, ndim: int):
        shape = (ids.shape[0],) + (1,) * (ndim - 2) + (mid.shape[-1],)
        return mid[ids].view(shape), half[ids].view(shape)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready statistics: ``{"latent": {...}, "embodiments": {name: {"action", "state"}}}``.

        Embodiments without installed statistics are absent (they use identity statistics).
        """
        return {
            "latent": self._latent_stats.to_dict(),
            "embodiments": {
                name: {k: s.to_dict() for k, s in stats.items()} for name, stats in self._stats.items()
            },
        }

    def load_dict(self, data: dict[str, Any]) -> None:
        """Install statistics written by :meth:`to_dict`; names and dims are checked."""
        self.set_latent_stats(RobustStats.from_dict(data["latent"]))
        for name, stats in data.get("embodiments", {}).items():
            self.set_embodiment_stats(name, RobustStats.from_dict(stats["action"]),
                                      RobustStats.from_dict(stats["state"]))
