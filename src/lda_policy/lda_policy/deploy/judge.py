"""The forward-dynamics judge, ROS-free: predict where each proposed chunk leads, score the surprise.

It lives in the model host beside the policy and shares its runtime, its frame latents and the very
observation the policy saw (no second copy of the weights, no second DINO encoding). It is off the
critical path of a chunk: the safety gate approves on hard limits and freshness; the judge predicts the
chunk's future latents after the proposal has gone out, and scores them when the real frames arrive.

1. :meth:`ForwardDynamicsJudge.predict` - forward dynamics of one proposal from the policy's observation
   (``num_steps`` Euler steps; one step from the starting noise is the flow's conditional-mean estimate,
   the cheapest judge that the calibration can match);
2. :meth:`~ForwardDynamicsJudge.on_approved` - the gate's approval, bound to the proposal by sequence and
   digest: only approved (executed) chunks are scored;
3. :meth:`~ForwardDynamicsJudge.score` - compares every predicted frame whose real frame has arrived;
   the distance standardised by the calibration is the surprise. Surprise above ``stop_surprise``, NaN
   latents or a NaN prediction are *faults*: counted (:attr:`faults`), reported, latched by the gate.

Nothing is latched here: the gate latches (one latch, one reset). :meth:`drop_pending` forgets the
predictions of chunks that will not run as predicted (the gate stopped), so a reset starts clean.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from lda_policy.model import Observation

from .chunks import ProposedChunk
from .observations import FrameLatents
from .runtime import ModelRuntime
from .safety import STATUS_OK, STATUS_WARN, SafetyCalibration


@dataclass(frozen=True)
class JudgeSettings:
    warn_surprise: float = 2.0  # surprise above which the level is WARN
    stop_surprise: float = 4.0  # surprise above which the judge reports a fault (the gate latches STOP)
    score_horizon_s: float = 0.6  # score predicted frames up to this far after the chunk's observation
    num_steps: int = 1  # Euler steps of the forward-dynamics prediction; must match the calibration
    num_samples: int = 1  # flow samples averaged per prediction; must match the calibration
    seed: int = 0  # flow-sampling seed (fixed: deterministic); must match the calibration

    def __post_init__(self) -> None:
        if self.score_horizon_s <= 0 or self.num_samples < 1 or self.num_steps < 1:
            raise ValueError("score_horizon_s must be > 0, num_steps and num_samples >= 1")
        if not self.warn_surprise <= self.stop_surprise:
            raise ValueError(f"warn_surprise {self.warn_surprise} must not exceed stop_surprise {self.stop_surprise}")


@dataclass
class Prediction:
    sequence: int
    digest: str
    stamp: float
    predicted: torch.Tensor  # (F, gh, gw, C)
    frames: list[int]  # future frame indices still to score
    fd_time_s: float


@dataclass
class SurpriseEvent:
    sequence: int
    frame_index: int
    offset_s: float
    distance: float
    surprise: float
    patch_error: np.ndarray  # (gh, gw)


def latent_distance(observed: torch.Tensor, predicted: torch.Tensor, latent_mid: torch.Tensor,
                    latent_half: torch.Tensor) -> tuple[float, np.ndarray]:
    """Distance between observed and predicted latent grids (gh, gw, C) in DINO units.

    Both are normalised with the checkpoint's per-channel statistics (``(x - mid) / half``); returns
    the mean over patches of the per-patch RMS over channels, and that per-patch map (gh, gw).
    """
    if observed.shape != predicted.shape:
        raise ValueError(f"observed {tuple(observed.shape)} and predicted {tuple(predicted.shape)} differ")
    per_patch = _patch_errors(observed, predicted, latent_mid, latent_half)
    return float(per_patch.mean()), per_patch.numpy()


def latent_distances(a: torch.Tensor, b: torch.Tensor, latent_mid: torch.Tensor,
                     latent_half: torch.Tensor) -> torch.Tensor:
    """:func:`latent_distance` over leading dimensions: (..., gh, gw, C) against (..., gh, gw, C)
    (broadcast) -> (...)."""
    return _patch_errors(a, b, latent_mid, latent_half).mean(dim=(-2, -1))


def _patch_errors(a: torch.Tensor, b: torch.Tensor, latent_mid: torch.Tensor,
                  latent_half: torch.Tensor) -> torch.Tensor:
    mid, half = latent_mid.cpu(), latent_half.cpu()
    x = (a.float().cpu() - mid) / half
    y = (b.float().cpu() - mid) / half
    return ((x - y) ** 2).mean(dim=-1).sqrt()


class ForwardDynamicsJudge:
    """See the module docstring. ``predict``/``score`` run on the judge thread; the rest from anywhere."""

    def __init__(self, runtime: ModelRuntime, frames: FrameLatents, calibration: SafetyCalibration | None,
                 settings: JudgeSettings | None = None, kept: int = 16) -> None:
        self.runtime = runtime
        self.frames = frames
        self.settings = s = settings or JudgeSettings()
        self.future_offsets = runtime.config.time.future_offsets_s
        if calibration is not None:
            calibration.check_fits(self.future_offsets, s.num_steps, s.num_samples, s.seed)
        self.calibration = calibration
        self.scored_frames = [i for i, o in enumerate(self.future_offsets) if o <= s.score_horizon_s + 1e-9]
        if not self.scored_frames:
            raise ValueError(f"score_horizon_s {s.score_horizon_s} is shorter than the first predicted frame "
                             f"({self.future_offsets[0]} s): nothing would be scored")
        self._kept = kept
        self._lock = threading.Lock()
        self._unapproved: OrderedDict[int, Prediction] = OrderedDict()  # predicted, approval not seen yet
        self._approved: OrderedDict[int, str] = OrderedDict()  # approvals seen before their prediction
        self._pending: list[Prediction] = []  # approved, frames still to score
        self.level, self.reason, self.surprise, self.sequence = STATUS_OK, "no chunk scored yet", 0.0, 0
        self.faults = 0
        self.last_fault = ""
        self.approved = self.unscored = self.unbound = 0
        self.fd_times: list[float] = []

    # -- faults --------------------------------------------------------------------------------------
    def fault(self, reason: str, sequence: int = 0) -> None:
        """Count a fault. The host reports it at once (level STOP, this reason) and the gate latches; the
        level itself is not latched here, so a reset at the gate is not undone by a stale status."""
        with self._lock:
            self.faults += 1
            self.last_fault = reason
            self.sequence = sequence

    # -- predictions ---------------------------------------------------------------------------------
    def predict(self, chunk: ProposedChunk, obs: Observation) -> Prediction | None:
        """Forward dynamics of a proposal from the observation the policy used (None after a fault)."""
        s = self.settings
        t0 = time.perf_counter()
        predicted = self.runtime.forward_dynamics(obs, chunk.actions, seed=s.seed, num_steps=s.num_steps,
                                                  samples=s.num_samples)
        fd_time = time.perf_counter() - t0
        if not torch.isfinite(predicted).all():
            self.fault(f"NaN/inf in the forward-dynamics prediction of chunk {chunk.sequence}", chunk.sequence)
            return None
        p = Prediction(chunk.sequence, chunk.digest, chunk.stamp, predicted, list(self.scored_frames), fd_time)
        with self._lock:
            self.fd_times = [*self.fd_times[-49:], fd_time]
            if self._approved.pop(p.sequence, None) == p.digest:
                self._pending.append(p)
                self.approved += 1
            else:
                self._unapproved[p.sequence] = p
                while len(self._unapproved) > self._kept:
                    self._unapproved.popitem(last=False)
        return p

    def on_approved(self, sequence: int, digest: str) -> bool:
        """The gate approved proposal ``sequence``; False when the digest does not match the prediction's."""
        with self._lock:
            p = self._unapproved.pop(int(sequence), None)
            if p is None:  # the approval overtook the prediction (the gate is fast): match it later
                self._approved[int(sequence)] = digest
                while len(self._approved) > self._kept:
                    self._approved.popitem(last=False)
                return True
            if p.digest != digest:
                self.unbound += 1
                return False
            self._pending.append(p)
            self.approved += 1
            return True

    def drop_pending(self) -> None:
        """Forget every prediction (the gate holds: those chunks will not run as predicted)."""
        with self._lock:
            self._pending.clear()
            self._unapproved.clear()
            self._approved.clear()

    # -- surprise ------------------------------------------------------------------------------------
    def score(self) -> list[SurpriseEvent]:
        """Compare every predicted frame whose real frame has arrived; update the level."""
        newest = self.frames.newest_stamp
        if newest is None:
            return []
        events = []
        with self._lock:
            pending = list(self._pending)
        for p in pending:
            for f in list(p.frames):
                target = p.stamp + self.future_offsets[f]
                if newest < target - 1e-6:
                    continue
                p.frames.remove(f)
                hit = self.frames.latent_near(target, encode=False)  # the policy encoded it; never wait
                if hit is None:
                    with self._lock:
                        self.unscored += 1
                    continue
                observed = hit[1]
                if not torch.isfinite(observed).all():
                    self.fault(f"NaN/inf in the observed DINO latents at t={hit[0]:.2f}", p.sequence)
                    continue
                distance, patch = latent_distance(observed, p.predicted[f], self.runtime.latent_mid,
                                                  self.runtime.latent_half)
                z = self.calibration.surprise(f, distance) if self.calibration else float("nan")
                events.append(SurpriseEvent(p.sequence, f, self.future_offsets[f], distance, z, patch))
                if self.calibration is not None:
                    self._update(z, p.sequence, f"(chunk {p.sequence}, frame +{self.future_offsets[f]:g} s)")
        with self._lock:
            self._pending = [p for p in self._pending if p.frames and p.stamp > newest - 5.0]
        return events

    def _update(self, z: float, sequence: int, detail: str) -> None:
        s = self.settings
        if not math.isfinite(z):
            self.fault(f"NaN/inf surprise {detail}", sequence)
            return
        if z > s.stop_surprise:
            self.fault(f"surprise {z:.2f} > {s.stop_surprise:g} {detail}", sequence)
        with self._lock:
            self.surprise, self.sequence = float(z), sequence
            if z > s.warn_surprise:
                self.level, self.reason = STATUS_WARN, f"surprise {z:.2f} > {s.warn_surprise:g} {detail}"
            else:
                self.level, self.reason = STATUS_OK, f"surprise {z:.2f} {detail}"

    def status(self) -> tuple[int, str, float, int]:
        """(level, reason, surprise, chunk sequence) of the judge now."""
        with self._lock:
            if self.calibration is None and self.level == STATUS_OK:
                return STATUS_WARN, "uncalibrated: surprise is not scored (no safety_calibration.json)", \
                    self.surprise, self.sequence
            return self.level, self.reason, self.surprise, self.sequence

    @property
    def pending(self) -> int:
        return len(self._pending)


__all__ = ["ForwardDynamicsJudge", "JudgeSettings", "Prediction", "SurpriseEvent", "latent_distance",
           "latent_distances"]
