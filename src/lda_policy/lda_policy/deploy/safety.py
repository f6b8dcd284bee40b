"""Safety rules of the forward-dynamics monitor: hard limits, surprise scoring, the latching state machine.

Model-free and ROS-free (NumPy + torch tensors in, plain values out). The monitor core
(:mod:`lda_policy.deploy.monitor`) calls these with the model's predictions.

Surprise
    For an approved chunk predicted from the observation at ``stamp``, the forward-dynamics objective
    predicts the DINO latents of the frames at ``stamp + future_offsets_s``. When a real frame arrives
    its latents are compared with the prediction: the *distance* ``d`` is the root-mean-square over
    channels of the difference of the two latent grids after the checkpoint's per-channel latent
    normalisation, averaged over patches (:func:`latent_distance`). ``d`` depends on the model and the
    scene, so it is standardised with statistics of ``d`` measured on training data
    (:class:`SafetyCalibration`, ``safety_calibration.json`` in the checkpoint directory)::

        surprise = (d - mean_f) / std_f        (f: index of the future frame, 0.5 s, 1.0 s, ...)

    so ``|surprise|`` is about 1 on data like the training data, and a threshold of 4 means "four
    standard deviations worse than the model ever did on its training data".
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lda_common.config import ConfigError, check, parse, read_versioned_json, write_versioned_json
from lda_common.geometry import HandsState, rotation_angle

from .chunk_executor import STATUS_OK, STATUS_STOP, STATUS_WARN, HandTrajectory

CALIBRATION_FILE = "safety_calibration.json"
CALIBRATION_FORMAT = "lda-safety-calibration"
CALIBRATION_VERSION = 1
LEVEL_NAMES = {STATUS_OK: "OK", STATUS_WARN: "WARN", STATUS_STOP: "STOP"}


class CalibrationError(ConfigError):
    """The safety calibration file is missing, malformed or does not fit the checkpoint."""


# ---------------------------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class SafetyLimits:
    """Hard limits every proposed chunk must satisfy before the model is even asked (units in names).

    Per row of a chunk (10 Hz): ``max_step_translation_m`` / ``max_step_rotation_rad`` bound the
    commanded change of each hand's pose between consecutive targets (that is, speed x dt; the first
    row is compared with the pose measured at the chunk's observation). ``max_linear_speed_m_s`` /
    ``max_angular_speed_rad_s`` bound the same quantities divided by the chunk's ``dt`` (a chunk with
    a shorter dt must move less per row). ``max_chunk_translation_m`` / ``max_chunk_rotation_rad``
    bound how far a whole chunk may take a hand from where it was. Every target position must lie in
    the base-frame box [``workspace_min``, ``workspace_max``]; every finger command (gripper width [m]
    or finger joint position) in [``finger_min``, ``finger_max``]. Observations (camera, EEF poses,
    finger states) older than
    ``max_observation_age_s`` are stale; a chunk whose observation is older than
    ``max_chunk_age_s`` when judged is refused.
    """

    max_step_translation_m: float = 0.05
    max_step_rotation_rad: float = 0.25
    max_linear_speed_m_s: float = 0.5
    max_angular_speed_rad_s: float = 2.5
    max_chunk_translation_m: float = 0.5
    max_chunk_rotation_rad: float = 2.0
    workspace_min: tuple[float, float, float] = (-1.5, -1.5, -1.0)
    workspace_max: tuple[float, float, float] = (1.5, 1.5, 2.0)
    finger_min: float = -0.01
    finger_max: float = 0.12
    max_observation_age_s: float = 0.5
    max_chunk_age_s: float = 1.0

    def __post_init__(self) -> None:
        # Checked here, not by types alone: the monitor node builds the limits from its ROS parameters.
        for name, value in asdict(self).items():
            values = value if isinstance(value, tuple) else (value,)
            check(all(isinstance(v, (int, float)) and math.isfinite(v) for v in values), name,
                  f"must be finite, got {value!r}")
            if name.startswith("max_"):  # steps, speeds, reaches and ages
                check(value > 0, name, f"must be > 0, got {value!r}")
        check(len(self.workspace_min) == 3 and len(self.workspace_max) == 3 and all(
            lo < hi for lo, hi in zip(self.workspace_min, self.workspace_max, strict=True)), "workspace_min",
            f"{self.workspace_min} must be below workspace_max {self.workspace_max} in x, y and z")
        check(self.finger_min <= self.finger_max, "finger_min", f"{self.finger_min} exceeds finger_max")

    @classmethod
    def from_params(cls, params: dict[str, Any], source: str = "parameters") -> SafetyLimits:
        """The limits among a node's parameters (other keys are ignored), type-checked; ConfigError names the key."""
        names = {f.name for f in fields(cls)}
        return parse(cls, {k: v for k, v in params.items() if k in names}, source)


def find_non_finite(name: str, values: np.ndarray, column_names: list[str] | None = None) -> str:
    """Empty string if all finite, else a reason naming the first bad entry."""
    arr = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(arr)
    if not bad.any():
        return ""
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    where = f"row {idx[0]}, column {column_names[idx[1]]}" if column_names and len(idx) == 2 else f"index {idx}"
    return f"NaN/inf in {name} ({where})"


def check_chunk(actions: np.ndarray, dimension_names: list[str], dt: float, plan: dict[str, HandTrajectory],
                anchor: HandsState, limits: SafetyLimits) -> list[str]:
    """Hard-limit violations of one chunk (empty list: the chunk may be judged by the model).

    ``actions``: (H, A) as proposed; ``plan``: the per-hand absolute targets it leads to from
    ``anchor`` (the hand states measured at the chunk's observation stamp).
    """
    out = []
    bad = find_non_finite("actions", actions, dimension_names)
    if bad:
        return [bad]
    if not dt > 0:
        return [f"chunk dt {dt} is not positive"]
    lo, hi = np.asarray(limits.workspace_min, dtype=float), np.asarray(limits.workspace_max, dtype=float)
    step_t = min(limits.max_step_translation_m, limits.max_linear_speed_m_s * dt)
    step_r = min(limits.max_step_rotation_rad, limits.max_angular_speed_rad_s * dt)
    for hand, traj in plan.items():
        if not traj.is_finite():
            out.append(f"NaN/inf in the {hand} targets")
            continue
        start = anchor[hand]
        pos = np.vstack([start.position[None], traj.positions])
        quats = np.vstack([start.quaternion[None], traj.quaternions])
        steps = np.linalg.norm(np.diff(pos, axis=0), axis=1)
        k = int(np.argmax(steps))
        if steps[k] > step_t + 1e-9:
            out.append(f"{hand} moves {steps[k]:.3f} m in row {k} ({steps[k] / dt:.2f} m/s); limit {step_t:.3f} m "
                       f"per {dt:.2f} s row")
        angles = [rotation_angle(quats[i], quats[i + 1]) for i in range(len(quats) - 1)]
        k = int(np.argmax(angles))
        if angles[k] > step_r + 1e-9:
            out.append(f"{hand} turns {angles[k]:.3f} rad in row {k}; limit {step_r:.3f} rad per row")
        reach = float(np.linalg.norm(traj.positions - start.position, axis=1).max())
        if reach > limits.max_chunk_translation_m:
            out.append(f"{hand} chunk reaches {reach:.3f} m from its start > {limits.max_chunk_translation_m} m")
        turn = max(rotation_angle(start.quaternion, q) for q in traj.quaternions)
        if turn > limits.max_chunk_rotation_rad:
            out.append(f"{hand} chunk turns {turn:.3f} rad from its start > {limits.max_chunk_rotation_rad} rad")
        outside = ~((traj.positions >= lo) & (traj.positions <= hi)).all(axis=1)
        if outside.any():
            k = int(np.argmax(outside))
            p = np.round(traj.positions[k], 3).tolist()
            out.append(f"{hand} target {p} (row {k}) leaves the workspace box {lo.tolist()}..{hi.tolist()}")
        g = traj.fingers
        if (g < limits.finger_min).any() or (g > limits.finger_max).any():
            out.append(f"{hand} finger command {float(g.min()):.3f}..{float(g.max()):.3f} outside "
                       f"[{limits.finger_min}, {limits.finger_max}]")
    return out


# ---------------------------------------------------------------------------------------------- surprise


def latent_distance(observed: torch.Tensor, predicted: torch.Tensor, latent_mid: torch.Tensor,
                    latent_half: torch.Tensor) -> tuple[float, np.ndarray]:
    """Distance between observed and predicted latent grids (gh, gw, C) in DINO units.

    Both are normalised with the checkpoint's per-channel statistics (``(x - mid) / half``); returns
    the mean over patches of the per-patch RMS over channels, and that per-patch map (gh, gw).
    """
    if observed.shape != predicted.shape:
        raise ValueError(f"observed {tuple(observed.shape)} and predicted {tuple(predicted.shape)} differ")
    o = (observed.float().cpu() - latent_mid.cpu()) / latent_half.cpu()
    p = (predicted.float().cpu() - latent_mid.cpu()) / latent_half.cpu()
    per_patch = ((o - p) ** 2).mean(dim=-1).sqrt()
    return float(per_patch.mean()), per_patch.numpy()


@dataclass(frozen=True)
class SafetyCalibration:
    """Statistics of the forward-dynamics latent distance on training data, per future frame.

    ``mean[f]`` / ``std[f]``: mean and standard deviation of :func:`latent_distance` between the
    frame at ``future_offsets_s[f]`` and its prediction from the recorded actions. The forward-
    dynamics settings used (Euler steps, samples averaged, seed) are stored because the distance
    depends on them; the monitor must use the same.
    """

    future_offsets_s: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_windows: int
    num_steps: int
    num_samples: int
    seed: int
    source: str = ""
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def __post_init__(self) -> None:
        n = len(self.future_offsets_s)
        if n == 0 or len(self.mean) != n or len(self.std) != n:
            raise CalibrationError("calibration needs one mean and one std per future frame offset")
        if not all(math.isfinite(v) for v in self.mean + self.std) or min(self.std) <= 0:
            raise CalibrationError(f"calibration statistics must be finite with std > 0, got mean {self.mean}, "
                                   f"std {self.std}")

    def surprise(self, frame_index: int, distance: float) -> float:
        return (distance - self.mean[frame_index]) / self.std[frame_index]

    @classmethod
    def from_distances(cls, distances: np.ndarray, future_offsets_s, num_steps: int, num_samples: int, seed: int,
                       source: str = "", min_std: float = 1e-6) -> SafetyCalibration:
        """``distances``: (windows, frames) latent distances, NaN where a frame was missing."""
        d = np.asarray(distances, dtype=np.float64)
        if d.ndim != 2 or d.shape[1] != len(future_offsets_s):
            raise CalibrationError(f"distances must be (windows, {len(future_offsets_s)}), got {d.shape}")
        counts = np.isfinite(d).sum(axis=0)
        if (counts < 2).any():
            raise CalibrationError(f"need at least 2 windows per future frame to calibrate, got {counts.tolist()}")
        mean = np.nanmean(d, axis=0)
        std = np.maximum(np.nanstd(d, axis=0, ddof=1), min_std)
        return cls(tuple(float(v) for v in future_offsets_s), tuple(float(v) for v in mean),
                   tuple(float(v) for v in std), int(counts.min()), int(num_steps), int(num_samples), int(seed),
                   source)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        return write_versioned_json(path / CALIBRATION_FILE if path.is_dir() else path, CALIBRATION_FORMAT,
                                    CALIBRATION_VERSION, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> SafetyCalibration:
        path = Path(path)
        if path.is_dir():
            path = path / CALIBRATION_FILE
        if not path.is_file():
            raise CalibrationError(
                f"safety calibration {path} not found; compute it from training bags with "
                "'lda-calibrate-safety --checkpoint DIR --dino-path DINO --robot-config ROBOT.yaml --bag BAG ...'")
        body = read_versioned_json(path, CALIBRATION_FORMAT, CALIBRATION_VERSION, "a safety calibration",
                                   CalibrationError)
        return parse(cls, body, path, error=CalibrationError)

    def check_fits(self, future_offsets_s, num_steps: int, num_samples: int, seed: int) -> None:
        """Raise :class:`CalibrationError` if the model/monitor settings differ from the calibration's."""
        diffs = []
        if tuple(round(float(o), 6) for o in future_offsets_s) != tuple(round(o, 6) for o in self.future_offsets_s):
            diffs.append(f"future_offsets_s {tuple(future_offsets_s)} vs calibrated {self.future_offsets_s}")
        for name, value in (("num_steps", num_steps), ("num_samples", num_samples), ("seed", seed)):
            if int(value) != getattr(self, name):
                diffs.append(f"{name} {value} vs calibrated {getattr(self, name)}")
        if diffs:
            raise CalibrationError("the safety calibration was made with other forward-dynamics settings: "
                                   + "; ".join(diffs) + " (recalibrate, or set the monitor's parameters to match)")


# ---------------------------------------------------------------------------------------------- state


@dataclass
class SafetyVerdict:
    level: int
    reason: str
    surprise: float
    chunk_sequence: int = 0


class SafetyState:
    """OK / WARN / STOP with a latching STOP.

    ``stop(reason)`` latches: the level stays STOP (and chunks are refused) until :meth:`reset`.
    Surprise updates move between OK and WARN freely; ``stop_consecutive`` surprises above
    ``stop_surprise`` in a row latch a STOP.
    """

    def __init__(self, warn_surprise: float = 2.0, stop_surprise: float = 4.0, stop_consecutive: int = 1) -> None:
        if not warn_surprise <= stop_surprise:
            raise ValueError(f"warn_surprise {warn_surprise} must not exceed stop_surprise {stop_surprise}")
        if stop_consecutive < 1:
            raise ValueError("stop_consecutive must be >= 1")
        self.warn_surprise = float(warn_surprise)
        self.stop_surprise = float(stop_surprise)
        self.stop_consecutive = int(stop_consecutive)
        self.reset()

    def reset(self) -> None:
        self.level = STATUS_OK
        self.reason = "ok"
        self.surprise = 0.0
        self.chunk_sequence = 0
        self._over = 0
        self.stops = 0

    @property
    def latched(self) -> bool:
        return self.level == STATUS_STOP

    def stop(self, reason: str, chunk_sequence: int = 0) -> bool:
        """Latch a STOP; returns True if this call changed the level (the first reason is kept)."""
        if self.level == STATUS_STOP:
            return False
        self.level, self.reason, self.chunk_sequence = STATUS_STOP, reason, chunk_sequence
        self.stops += 1
        return True

    def warn(self, reason: str) -> None:
        """A non-latching warning (kept until the next surprise update)."""
        if self.level == STATUS_OK:
            self.level, self.reason = STATUS_WARN, reason

    def update_surprise(self, surprise: float, chunk_sequence: int, detail: str = "") -> bool:
        """Record a new surprise score; returns True if it latched a STOP."""
        if not math.isfinite(surprise):
            return self.stop(f"NaN/inf surprise {detail}".strip(), chunk_sequence)
        self.surprise = float(surprise)
        if self.level == STATUS_STOP:
            return False
        self.chunk_sequence = chunk_sequence
        if surprise > self.stop_surprise:
            self._over += 1
            if self._over >= self.stop_consecutive:
                return self.stop(f"surprise {surprise:.2f} > {self.stop_surprise:g} {detail}".strip(), chunk_sequence)
            self.level, self.reason = STATUS_WARN, f"surprise {surprise:.2f} > {self.stop_surprise:g} " \
                                                   f"({self._over}/{self.stop_consecutive}) {detail}".strip()
            return False
        self._over = 0
        if surprise > self.warn_surprise:
            self.level, self.reason = STATUS_WARN, f"surprise {surprise:.2f} > {self.warn_surprise:g} {detail}".strip()
        else:
            self.level, self.reason = STATUS_OK, f"surprise {surprise:.2f} {detail}".strip()
        return False

    def verdict(self) -> SafetyVerdict:
        return SafetyVerdict(self.level, self.reason, self.surprise, self.chunk_sequence)
