"""Test-time chunk selection, ROS-free: the model checks its own proposals before one goes out.

The one model holds a policy, a forward-dynamics model and a visual forecaster. At each replan the
:class:`ChunkSelector` uses all three:

1. the policy samples ``k`` candidate chunks in one batched call, each from its own starting noise;
2. forward dynamics predicts each candidate's future latents in one batched call (the judge's settings:
   Euler steps, samples and seed, so the numbers are in the judge's calibrated units; every candidate
   starts from the same noise, so they differ only by their actions);
3. the forecaster predicts the future for the task without actions (same steps, same noise);
4. each candidate's score is minus its mean surprise: the latent distance of its predicted future to the
   forecast (:func:`~.judge.latent_distances`, the judge's metric), standardised per future frame by the
   judge's calibration (raw distances without one). Candidates whose predicted future leaves the judge's
   ``stop_surprise`` at some frame are passed over while one within it exists.

``k = 1`` is the plain policy: one chunk, nothing scored, no extra cost. Selection is not a safety
function: the gate's limits and the judge's surprise apply to the chosen chunk as to any other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lda_policy.model import Observation

from .judge import JudgeSettings, latent_distances
from .runtime import ModelRuntime
from .safety import SafetyCalibration

SCORES = ("forecast",)  # agreement of the predicted future with the model's own visual forecast


@dataclass(frozen=True)
class SelectionSettings:
    k: int = 1  # candidate chunks per replan (1: the plain policy)
    score: str = "forecast"

    def __post_init__(self) -> None:
        if not 1 <= int(self.k) <= 64:
            raise ValueError(f"selection k must be in [1, 64], got {self.k}")
        if self.score not in SCORES:
            raise ValueError(f"unknown selection score {self.score!r}; expected one of {list(SCORES)}")

    def require_stochastic(self, noise_scale: float) -> None:
        """k > 1 needs sampled chunks: from the flow's mean (noise_scale 0) every candidate is the same."""
        if self.k > 1 and noise_scale == 0.0:
            raise ValueError(f"selection k={self.k} needs a stochastic policy (noise_scale > 0): from the flow's "
                             "mean every candidate is the same chunk")


@dataclass
class Selection:
    """What one replan chose: the chunk, and how its candidates scored (k = 1: NaN scores)."""

    actions: np.ndarray  # (H, A) float64, the chosen candidate
    index: int  # which candidate
    scores: np.ndarray  # (k,) minus the mean surprise (higher is better); NaN for k = 1
    within_limit: np.ndarray  # (k,) bool: predicted future within the judge's stop_surprise at every frame
    candidates: np.ndarray  # (k, H, A)

    @property
    def k(self) -> int:
        return len(self.scores)

    @property
    def score(self) -> float:
        return float(self.scores[self.index])

    @property
    def spread(self) -> float:
        """Best minus worst finite score (NaN for k = 1 or when no score is finite)."""
        finite = self.scores[np.isfinite(self.scores)]
        return float(finite.max() - finite.min()) if len(finite) else float("nan")


class ChunkSelector:
    """See the module docstring. One instance per model host; :meth:`select` runs on the inference thread."""

    def __init__(self, runtime: ModelRuntime, settings: SelectionSettings | None = None,
                 calibration: SafetyCalibration | None = None, judge: JudgeSettings | None = None) -> None:
        self.runtime = runtime
        self.settings = settings or SelectionSettings()
        self.calibration = calibration
        self.judge = judge or JudgeSettings()
        if calibration is not None and self.settings.k > 1:
            calibration.check_fits(runtime.config.time.future_offsets_s, self.judge.num_steps,
                                   self.judge.num_samples, self.judge.seed)

    def select(self, obs: Observation, seed: int | None = None, noise_scale: float = 1.0) -> Selection:
        """The chosen chunk of the batch-1 observation ``obs`` (see the module docstring)."""
        k = self.settings.k
        self.settings.require_stochastic(noise_scale)
        candidates = self.runtime.policy_candidates(obs, k, seed=seed, noise_scale=noise_scale)
        if k == 1:
            return Selection(candidates[0], 0, np.full(1, np.nan), np.ones(1, dtype=bool), candidates)
        surprise = self.surprises(obs, candidates)  # (k, F)
        stop = self.judge.stop_surprise if self.calibration is not None else None
        index, scores, within = choose(surprise, stop)
        return Selection(candidates[index], index, scores, within, candidates)

    def surprises(self, obs: Observation, candidates: np.ndarray) -> np.ndarray:
        """(k, F) surprise of each candidate's predicted future against the forecast, per future frame
        (raw latent distances without a calibration)."""
        j = self.judge
        predicted = self.runtime.forward_dynamics_candidates(obs, candidates, seed=j.seed, num_steps=j.num_steps,
                                                             samples=j.num_samples)  # (k, F, gh, gw, C)
        forecast = self.runtime.forecast(obs, seed=j.seed, num_steps=j.num_steps, samples=j.num_samples)
        d = latent_distances(predicted, forecast[None], self.runtime.latent_mid,
                             self.runtime.latent_half).numpy().astype(np.float64)  # (k, F)
        if self.calibration is None:
            return d
        mean = np.asarray(self.calibration.mean)
        std = np.asarray(self.calibration.std)
        return (d - mean) / std


def choose(surprise: np.ndarray, stop_surprise: float | None) -> tuple[int, np.ndarray, np.ndarray]:
    """(index, scores, within) for candidates' surprises (k, F): score = minus the mean over frames; the best
    score among candidates within ``stop_surprise`` at every frame, or among all when none is (or when
    ``stop_surprise`` is None). NaN scores never win; all NaN raises FloatingPointError."""
    scores = -surprise.mean(axis=1)
    finite = np.isfinite(scores)
    within = finite if stop_surprise is None else finite & (surprise <= stop_surprise).all(axis=1)
    pool = np.where(within if within.any() else finite, scores, -np.inf)
    if not finite.any():
        raise FloatingPointError(f"no candidate of {len(scores)} has a finite selection score (NaN/inf predictions)")
    return int(np.argmax(pool)), scores, within


__all__ = ["SCORES", "ChunkSelector", "Selection", "SelectionSettings", "choose"]
