"""The model's inputs: :class:`Observation` (what the four inference calls take) and the strict checks behind
:class:`InputError`, which names the key, the expected shape or dtype, or the non-finite entries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Observation:
    """Inputs shared by the four inference calls, batched, in physical units.

    ``history_latents``: (B, num_obs_frames, gh, gw, latent_dim) DINO patch tokens of the frames at
    ``config.time.obs_offsets_s`` (oldest first), on the model grid or the full 14x14 grid.
    ``language``: (B, L, lang_dim) language/VLM tokens; ``language_mask``: (B, L) bool, True = real
    token (None = all real). ``state``: (B, state_dim) proprio state; ``history_actions``:
    (B, history_action_steps, action_dim), the actions sent at ``config.time.history_action_offsets_s``.
    ``state`` / ``history_actions`` may be None (e.g. forecasting from a video without a robot); the
    model then uses its stand-in tokens, exactly as for actionless training data.
    """

    embodiment: str
    history_latents: torch.Tensor
    language: torch.Tensor
    language_mask: torch.Tensor | None = None
    state: torch.Tensor | None = None
    history_actions: torch.Tensor | None = None


class InputError(ValueError):
    """An input tensor has the wrong key, shape, dtype or non-finite values; the message names it."""


def check_finite(name: str, x: torch.Tensor, mask: torch.Tensor | None) -> None:
    if x.is_meta:
        return
    bad = ~torch.isfinite(x)
    if mask is not None:
        bad = bad & mask
    if bool(bad.any()):
        raise InputError(f"{name} contains NaN or inf in entries that are used")


def check_range(name: str, x: torch.Tensor, lo: int, hi: int) -> None:
    if not x.is_meta and x.numel() and (int(x.min()) < lo or int(x.max()) > hi):
        raise InputError(f"batch[{name!r}] values must lie in [{lo}, {hi}]")


def int_tensor(batch: dict[str, Any], key: str, dev: torch.device, shape: tuple[int, ...] | None = None,
                lo: int | None = None, hi: int | None = None) -> torch.Tensor:
    x = batch[key]
    if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.dtype == torch.bool or x.is_complex():
        raise InputError(f"batch[{key!r}] must be an integer tensor")
    if shape is not None and tuple(x.shape) != shape:
        raise InputError(f"batch[{key!r}] must have shape {shape}, got {tuple(x.shape)}")
    if lo is not None:
        check_range(key, x, lo, hi)
    return x.to(dev, torch.long)


def bool_tensor(batch: dict[str, Any], key: str, dev: torch.device, shape: tuple[int, ...]) -> torch.Tensor:
    x = batch[key]
    if not isinstance(x, torch.Tensor) or x.dtype != torch.bool:
        raise InputError(f"batch[{key!r}] must be a bool tensor")
    if tuple(x.shape) != shape:
        raise InputError(f"batch[{key!r}] must have shape {shape}, got {tuple(x.shape)}")
    return x.to(dev)


def float_tensor(batch: dict[str, Any], key: str, dev: torch.device) -> torch.Tensor:
    x = batch[key]
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InputError(f"batch[{key!r}] must be a float tensor")
    return x.to(dev, torch.float32)


def check_tensor(name: str, x: Any, shape: tuple[int, ...], dev: torch.device) -> torch.Tensor:
    """Float tensor of exactly ``shape``, all finite; returned as float32 on ``dev``."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if tuple(x.shape) != shape:
        raise InputError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"{name} must be a float tensor, got {x.dtype}")
    x = x.to(dev, torch.float32)
    check_finite(name, x, None)
    return x
