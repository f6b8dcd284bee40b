"""The authors' data-side conventions, for a client of the upstream model (their RoboCasa eval client's).

- Actions: min-max normalised per dimension to [-1, 1]; the model returns normalised actions, which
  the client clips to [-1, 1] and maps back with the statistics of the training data
  (``dataset_statistics.json``: ``{<dataset key>: {"action": {"min": [...], "max": [...], "mask": [...]}}}``).
- State: ``[sin q, cos q]`` of the raw joint angles, per joint group in the action key order; no statistics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def action_statistics(statistics: Mapping[str, Any], key: str | None = None) -> dict[str, np.ndarray]:
    """``min``, ``max`` and ``mask`` of the actions of dataset ``key`` (may be omitted if there is one)."""
    if key is None:
        if len(statistics) != 1:
            raise KeyError(f"the statistics hold several datasets {sorted(statistics)}: name one")
        key = next(iter(statistics))
    if key not in statistics:
        raise KeyError(f"no statistics for {key!r}; known: {sorted(statistics)}")
    action = statistics[key]["action"]
    low, high = np.asarray(action["min"], dtype=np.float64), np.asarray(action["max"], dtype=np.float64)
    mask = np.asarray(action.get("mask", np.ones_like(low, dtype=bool)), dtype=bool)
    if low.shape != high.shape or low.shape != mask.shape:
        raise ValueError(f"statistics of {key!r}: min {low.shape}, max {high.shape}, mask {mask.shape} differ")
    return {"min": low, "max": high, "mask": mask}


def unnormalize_actions(normalized: np.ndarray, stats: Mapping[str, np.ndarray]) -> np.ndarray:
    """Clip to [-1, 1], then ``(a + 1) / 2 * (max - min) + min`` where ``mask`` (other dims pass through).

    ``normalized`` (..., D) with D >= len(stats["min"]); the extra (padding) columns are dropped.
    """
    width = len(stats["min"])
    a = np.clip(np.asarray(normalized, dtype=np.float64)[..., :width], -1.0, 1.0)
    return np.where(stats["mask"], (a + 1.0) / 2.0 * (stats["max"] - stats["min"]) + stats["min"], a)


def normalize_actions(actions: np.ndarray, stats: Mapping[str, np.ndarray], width: int = 138) -> np.ndarray:
    """Physical actions (..., d) -> normalised and zero-padded to ``width`` (history actions for the model).

    A dimension with min == max becomes 0, as their transform does.
    """
    a = np.asarray(actions, dtype=np.float64)
    span = stats["max"] - stats["min"]
    safe = np.where(span > 0, span, 1.0)
    out = np.where(span > 0, 2.0 * (a - stats["min"]) / safe - 1.0, 0.0)
    return np.concatenate([out, np.zeros((*out.shape[:-1], width - out.shape[-1]))], axis=-1)


def sincos_state(joint_groups: Sequence[np.ndarray]) -> np.ndarray:
    """[sin q, cos q] per joint group, concatenated in order (GR-1: arms 7+7, hands 6+6, waist 3 -> 58)."""
    return np.concatenate([np.concatenate([np.sin(q), np.cos(q)], axis=-1) for q in joint_groups], axis=-1)
