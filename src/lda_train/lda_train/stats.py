"""Robust normalisation statistics per embodiment (and of DINO latents), saved into the checkpoint.

Actions and proprio states use per-dimension 1 % / 99 % quantiles (the model's
:class:`~lda_policy.model.RobustStats`): a few teleoperation glitches cannot stretch the range the
way they stretch a mean/std. Only training episodes count; invalid actions (``action_valid``
False, non-finite, frames labelled actionless, actionless episodes) never do.

Action statistics come from ``high`` episodes whenever the embodiment has any: the policy is
normalised by the actions it imitates, so noisy ``low`` actions cannot reach the policy objective
even through the normalisation (corrupting a low episode's actions leaves every policy gradient
unchanged). Without high data, low episodes' valid actions are used. States come from all
episodes with a state. Large datasets are subsampled deterministically (``max_rows``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lda_common.schema import Quality
from lda_policy.model import RobustStats

from .data import SourceDataset

Q_LOW, Q_HIGH = 0.01, 0.99


@dataclass
class EmbodimentStats:
    name: str
    action: RobustStats | None  # None: no valid action in the training split (actionless data only)
    state: RobustStats | None
    action_mean: np.ndarray | None  # the predict-the-mean baseline of the evaluation
    action_rows: int
    state_rows: int
    action_source: str = "high"  # which episodes the action statistics came from


    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action.to_dict() if self.action else None,
                "state": self.state.to_dict() if self.state else None,
                "action_mean": None if self.action_mean is None else self.action_mean.tolist(),
                "action_rows": self.action_rows, "state_rows": self.state_rows,
                "action_source": self.action_source}


def _subsample(x: np.ndarray, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    if len(x) <= max_rows:
        return x
    return x[np.sort(rng.choice(len(x), size=max_rows, replace=False))]


def embodiment_stats(sources: Sequence[SourceDataset], split: str = "train", max_rows: int = 1_000_000,
                     seed: int = 0) -> dict[str, EmbodimentStats]:
    """Statistics of every embodiment present in ``sources`` over their ``split`` episodes."""
    rng = np.random.default_rng([seed, 0x57A7])
    by_name: dict[str, list[SourceDataset]] = {}
    for s in sources:
        by_name.setdefault(s.embodiment, []).append(s)
    out = {}
    for name, group in by_name.items():
        dims = {(s.action_dim, s.state_dim) for s in group if s.has_action} | \
               {(s.action_dim, s.state_dim) for s in group if s.has_state}
        if len(dims) > 1:
            raise ValueError(f"embodiment {name!r}: datasets disagree on (action_dim, state_dim): {sorted(dims)}")
        actions: dict[str, list[np.ndarray]] = {"high": [], "low": []}
        states = []
        for s in group:
            rows = s.rows(split)
            if s.has_action:
                ok = rows[s.frame_action_valid[rows]]
                actions["high"].append(s.action[ok[s.role[ok] == Quality.HIGH]])
                actions["low"].append(s.action[ok[s.role[ok] == Quality.LOW]])
            if s.has_state:
                states.append(s.state[rows[s.state_valid[rows]]])
        source = "high" if sum(len(x) for x in actions["high"]) else "low"
        a = np.concatenate(actions[source]) if actions[source] else np.zeros((0, 0), np.float32)
        st = np.concatenate(states) if states else np.zeros((0, 0), np.float32)
        a, st = _subsample(a, max_rows, rng), _subsample(st, max_rows, rng)
        out[name] = EmbodimentStats(
            name=name,
            action=RobustStats.from_array(a, Q_LOW, Q_HIGH) if len(a) else None,
            state=RobustStats.from_array(st, Q_LOW, Q_HIGH) if len(st) else None,
            action_mean=a.astype(np.float64).mean(axis=0) if len(a) else None,
            action_rows=len(a), state_rows=len(st), action_source=source,
        )
    return out


def latent_stats(latents: Sequence[torch.Tensor], max_tokens: int = 200_000, seed: int = 0) -> RobustStats:
    """Per-channel quantiles of DINO patch tokens; ``latents`` are (frames, gh, gw, C) tensors."""
    rng = np.random.default_rng([seed, 0x1A7E])
    tokens = []
    per = max(1, max_tokens // max(1, len(latents)))
    for x in latents:
        flat = x.reshape(-1, x.shape[-1])
        idx = rng.choice(len(flat), size=min(per, len(flat)), replace=False)
        tokens.append(flat[torch.from_numpy(np.sort(idx))].float().numpy())
    return RobustStats.from_array(np.concatenate(tokens), Q_LOW, Q_HIGH)


def install_stats(model: Any, stats: dict[str, EmbodimentStats], latent: RobustStats | None,
                  keep_existing: bool) -> dict[str, str]:
    """Puts statistics into ``model.normalizer``. With ``keep_existing`` (fine-tuning), embodiments and
    latents that already have statistics in the checkpoint keep them. Returns what was done per entry."""
    norm = model.normalizer
    existing = norm.to_dict()
    done = {}
    for name, s in stats.items():
        if keep_existing and name in existing["embodiments"]:
            done[name] = "kept from checkpoint"
            continue
        spec = model.embodiment(name)
        action = s.action or RobustStats.identity(spec.action_dim)
        state = s.state or RobustStats.identity(spec.state_dim)
        norm.set_embodiment_stats(name, action, state)
        done[name] = "computed" + ("" if s.action else " (no valid actions: identity action stats)")
    identity = existing["latent"] == RobustStats.identity(model.config.latent_dim).to_dict()
    if latent is not None and (not keep_existing or identity):
        norm.set_latent_stats(latent)
        done["latent"] = "computed"
    else:
        done["latent"] = "kept from checkpoint"
    return done
