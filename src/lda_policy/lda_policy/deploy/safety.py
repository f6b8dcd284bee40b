"""Safety rules shared by the safety gate and the judge: hard limits, surprise calibration, the latching state.

Model-free, ROS-free and torch-free: the safety gate (:mod:`.gate`, its own process) imports this module
and must never load torch. The judge (:mod:`.judge`, in the model host) computes the latent distances.

Hard limits
    :class:`SafetyLimits` (``config/deploy/limits/<robot>.yaml``) bound every proposed chunk
    (:func:`check_chunk`, on its rows) and every command the gate sends (:func:`check_command`, on the
    step from the previous command). Values outside :data:`SANITY_BOUNDS` are refused at load: a limits
    file that allows 20 m/s is a typo, not a robot.

Surprise
    For an executed chunk predicted from the observation at ``stamp``, the forward-dynamics objective
    predicts the DINO latents of the frames at ``stamp + future_offsets_s``. When a real frame arrives
    its latents are compared with the prediction: the *distance* ``d`` is the root-mean-square over
    channels of the difference of the two latent grids after the checkpoint's per-channel latent
    normalisation, averaged over patches (``judge.latent_distance``). ``d`` depends on the model and the
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
from lda_common.config import ConfigError, check, parse, read_versioned_json, write_versioned_json
from lda_common.geometry import HandsState, HandState, rotation_angle

from .chunks import HandTrajectory

STATUS_OK, STATUS_WARN, STATUS_STOP = 0, 1, 2  # lda_msgs/SafetyStatus levels

CALIBRATION_FILE = "safety_calibration.json"
CALIBRATION_FORMAT = "lda-safety-calibration"
CALIBRATION_VERSION = 1
LEVEL_NAMES = {STATUS_OK: "OK", STATUS_WARN: "WARN", STATUS_STOP: "STOP"}


class CalibrationError(ConfigError):
    """The safety calibration file is missing, malformed or does not fit the checkpoint."""


# ---------------------------------------------------------------------------------------------- limits


#: Largest magnitude a limit may have: steps per 0.1 s row, speeds, reaches, ages, the workspace box [m]
#: and finger commands (a gripper width in metres or a finger joint in radians).
SANITY_BOUNDS = {
    "max_step_translation_m": 0.2, "max_step_rotation_rad": 1.0, "max_linear_speed_m_s": 2.0,
    "max_angular_speed_rad_s": 2 * math.pi, "max_chunk_translation_m": 2.0, "max_chunk_rotation_rad": 2 * math.pi,
    "workspace_min": 3.0, "workspace_max": 3.0, "finger_min": math.pi, "finger_max": math.pi,
    "max_observation_age_s": 5.0, "max_chunk_age_s": 5.0, "max_stamp_lead_s": 5.0, "workspace_band_m": 0.2,
    "finger_band": 0.5, "min_hand_distance_m": 1.0,
}


@dataclass(frozen=True)
class HandLimits:
    """One hand's own workspace box and finger range (``hands.<hand>.*`` in the limits file)."""

    workspace_min: tuple[float, float, float]
    workspace_max: tuple[float, float, float]
    finger_min: float
    finger_max: float


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
    or finger joint position) in [``finger_min``, ``finger_max``]. EEF pose and finger-state streams
    whose newest sample is older than ``max_observation_age_s`` are stale (the camera is the model
    host's: ``camera_timeout_s``); a chunk whose observation is older than ``max_chunk_age_s`` when the
    gate sees it is refused. :func:`check_command` applies the same limits to every command sent.

    ``hands`` gives a hand its own box and finger range (a multi-hand robot; hands not named use the
    global ones); ``min_hand_distance_m`` > 0 keeps every pair of hands that far apart. A header stamp
    more than ``max_stamp_lead_s`` ahead of the gate's clock is a fault. **Clamp bands**: a command up to
    ``workspace_band_m`` outside its box (``finger_band`` outside its finger range) is clamped into it
    and counted as a WARN; beyond the band it is a violation (STOP), and so is a *measured* pose beyond
    the box plus the band. 0 (the default): no band, every excursion is a violation.
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
    max_stamp_lead_s: float = 0.5
    workspace_band_m: float = 0.0
    finger_band: float = 0.0
    min_hand_distance_m: float = 0.0
    hands: dict[str, HandLimits] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Checked here, not by types alone: the gate node builds the limits from its ROS parameters.
        for name, value in asdict(self).items():
            if name == "hands":
                continue
            values = value if isinstance(value, tuple) else (value,)
            check(all(isinstance(v, (int, float)) and math.isfinite(v) for v in values), name,
                  f"must be finite, got {value!r}")
            if name.startswith("max_"):  # steps, speeds, reaches and ages
                check(value > 0, name, f"must be > 0, got {value!r}")
        check(len(self.workspace_min) == 3 and len(self.workspace_max) == 3 and all(
            lo < hi for lo, hi in zip(self.workspace_min, self.workspace_max, strict=True)), "workspace_min",
            f"{self.workspace_min} must be below workspace_max {self.workspace_max} in x, y and z")
        check(self.finger_min <= self.finger_max, "finger_min", f"{self.finger_min} exceeds finger_max")
        for name, bound in SANITY_BOUNDS.items():  # plausible for any arm or hand this suite drives
            value = getattr(self, name)
            values = value if isinstance(value, tuple) else (value,)
            check(all(abs(v) <= bound for v in values), name,
                  f"{value!r} is beyond the sanity bound {bound} (a typo or a unit mistake?)")
        for name in ("workspace_band_m", "finger_band", "min_hand_distance_m"):
            check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)!r}")
        for hand, h in self.hands.items():  # the same rules as the global box and range
            key = f"hands.{hand}"
            vals = (*h.workspace_min, *h.workspace_max, h.finger_min, h.finger_max)
            check(all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals), key, "must be finite")
            check(len(h.workspace_min) == 3 and len(h.workspace_max) == 3 and all(
                lo < hi for lo, hi in zip(h.workspace_min, h.workspace_max, strict=True)), f"{key}.workspace_min",
                f"{h.workspace_min} must be below workspace_max {h.workspace_max} in x, y and z")
            check(h.finger_min <= h.finger_max, f"{key}.finger_min", f"{h.finger_min} exceeds finger_max")
            check(max(abs(v) for v in (*h.workspace_min, *h.workspace_max)) <= SANITY_BOUNDS["workspace_min"],
                  f"{key}.workspace_min", "is beyond the sanity bound (a typo or a unit mistake?)")
            check(max(abs(h.finger_min), abs(h.finger_max)) <= SANITY_BOUNDS["finger_min"], f"{key}.finger_min",
                  "is beyond the sanity bound (a typo or a unit mistake?)")

    def box(self, hand: str) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) corners of ``hand``'s workspace box [m], base frame."""
        h = self.hands.get(hand)
        lo, hi = (h.workspace_min, h.workspace_max) if h else (self.workspace_min, self.workspace_max)
        return np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)

    def finger_range(self, hand: str) -> tuple[float, float]:
        h = self.hands.get(hand)
        return (h.finger_min, h.finger_max) if h else (self.finger_min, self.finger_max)

    @classmethod
    def from_params(cls, params: dict[str, Any], source: str = "parameters") -> SafetyLimits:
        """The limits among a node's parameters (other keys are ignored), type-checked; ConfigError names the key.
        Per-hand limits come as ROS parameters ``hands.<hand>.<key>`` (nested mappings in the YAML file)."""
        names = {f.name for f in fields(cls)} - {"hands"}
        data: dict[str, Any] = {k: v for k, v in params.items() if k in names}
        hands: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            parts = key.split(".")
            if len(parts) == 3 and parts[0] == "hands":
                hands.setdefault(parts[1], {})[parts[2]] = value
        for hand, values in (params.get("hands") or {}).items() if isinstance(params.get("hands"), dict) else ():
            hands.setdefault(hand, {}).update(values)
        if hands:  # a key a hand does not give is the global one
            glob = {k: data.get(k, getattr(cls, k)) for k in ("workspace_min", "workspace_max", "finger_min",
                                                                "finger_max")}
            data["hands"] = {h: {**glob, **v} for h, v in hands.items()}
        return parse(cls, data, source)


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
        out += outside_limits(hand, traj.positions, traj.fingers, limits, "target")
    return out + too_close({h: t.positions for h, t in plan.items() if t.is_finite()}, limits)


def outside_limits(hand: str, positions: np.ndarray, fingers: np.ndarray, limits: SafetyLimits, what: str,
                   band: bool = True) -> list[str]:
    """Violations of ``hand``'s box and finger range by (N, 3) positions / (N, F) fingers (``what``: "target",
    "command", "measured pose"); ``band``: allow the clamp bands beyond them."""
    out = []
    lo, hi = limits.box(hand)
    wb = limits.workspace_band_m if band else 0.0
    positions, fingers = np.atleast_2d(positions), np.atleast_2d(fingers)
    outside = ~((positions >= lo - wb) & (positions <= hi + wb)).all(axis=1)
    if outside.any():
        k = int(np.argmax(outside))
        row = f" (row {k})" if len(positions) > 1 or what == "target" else ""
        beyond = f" by more than its band {wb} m" if wb else ""
        out.append(f"{hand} {what} {np.round(positions[k], 3).tolist()}{row} leaves the workspace box "
                   f"{lo.tolist()}..{hi.tolist()}{beyond}")
    fmin, fmax = limits.finger_range(hand)
    fb = limits.finger_band if band else 0.0
    if fingers.size and ((fingers < fmin - fb).any() or (fingers > fmax + fb).any()):
        beyond = f" by more than its band {fb}" if fb else ""
        out.append(f"{hand} finger {'command' if what != 'measured pose' else 'state'} "
                   f"{float(fingers.min()):.3f}..{float(fingers.max()):.3f} outside [{fmin}, {fmax}]{beyond}")
    return out


def too_close(positions: dict[str, np.ndarray], limits: SafetyLimits) -> list[str]:
    """Pairs of hands closer than ``min_hand_distance_m`` (positions: hand -> (N, 3), rows at the same times)."""
    out = []
    hands = sorted(positions)
    for i, a in enumerate(hands):
        for b in hands[i + 1:] if limits.min_hand_distance_m > 0 else ():
            d = np.linalg.norm(np.atleast_2d(positions[a]) - np.atleast_2d(positions[b]), axis=1)
            k = int(np.argmin(d))
            if d[k] < limits.min_hand_distance_m:
                out.append(f"hands {a} and {b} come {float(d[k]):.3f} m apart (row {k}); min_hand_distance_m "
                           f"{limits.min_hand_distance_m}")
    return out


def clamp_command(targets: HandsState, limits: SafetyLimits) -> tuple[HandsState, list[str]]:
    """Targets clamped into each hand's box and finger range, and a note per clamped hand (a command within
    the bands is clamped, not refused: call :func:`check_command` first)."""
    out, notes = {}, []
    for hand, t in targets.items():
        lo, hi = limits.box(hand)
        fmin, fmax = limits.finger_range(hand)
        p, f = np.clip(t.position, lo, hi), np.clip(t.fingers, fmin, fmax)
        if not (np.array_equal(p, t.position) and np.array_equal(f, t.fingers)):
            notes.append(f"{hand} command clamped by {float(np.abs(p - t.position).max()):.3f} m / "
                         f"{float(np.abs(f - t.fingers).max()) if f.size else 0.0:.3f} (fingers) into its limits")
            t = HandState(p, t.quaternion, f)
        out[hand] = t
    return out, notes


def check_command(targets: HandsState, previous: HandsState | None, elapsed_s: float,
                  limits: SafetyLimits) -> list[str]:
    """Violations of one command about to leave for the robot (empty list: it may be sent).

    ``targets``: the per-hand targets; ``previous``: the command sent before it, ``elapsed_s`` ago (None:
    the first command, checked against the box and the finger range only). A step is bounded by the
    speed limits times the elapsed time and by the per-row step limits, whichever is smaller (the step
    limits alone when no time elapsed). Every pair of hands keeps ``min_hand_distance_m``.
    """
    out = too_close({h: t.position for h, t in targets.items() if t.is_finite()}, limits)
    for hand, t in targets.items():
        if not t.is_finite():
            out.append(f"NaN/inf in the {hand} command")
            continue
        out += outside_limits(hand, t.position, t.fingers, limits, "command")
        if previous is None or hand not in previous:
            continue
        # no time elapsed (two ticks at one clock reading): the per-row step still bounds it, never unchecked
        span = elapsed_s if elapsed_s > 0 else math.inf
        step = float(np.linalg.norm(t.position - previous[hand].position))
        allowed = min(limits.max_step_translation_m, limits.max_linear_speed_m_s * span)
        if step > allowed + 1e-9:
            out.append(f"{hand} command moves {step:.3f} m in {elapsed_s:.3f} s; limit {allowed:.3f} m "
                       f"(max_linear_speed_m_s {limits.max_linear_speed_m_s}, max_step_translation_m "
                       f"{limits.max_step_translation_m})")
        turn = rotation_angle(previous[hand].quaternion, t.quaternion)
        allowed = min(limits.max_step_rotation_rad, limits.max_angular_speed_rad_s * span)
        if turn > allowed + 1e-9:
            out.append(f"{hand} command turns {turn:.3f} rad in {elapsed_s:.3f} s; limit {allowed:.3f} rad")
    return out


# ---------------------------------------------------------------------------------------------- surprise


@dataclass(frozen=True)
class SafetyCalibration:
    """Statistics of the forward-dynamics latent distance on training data, per future frame.

    ``mean[f]`` / ``std[f]``: mean and standard deviation of :func:`latent_distance` between the
    frame at ``future_offsets_s[f]`` and its prediction from the recorded actions. The forward-
    dynamics settings used (Euler steps, samples averaged, seed) are stored because the distance
    depends on them; the judge must use the same.
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
        """Raise :class:`CalibrationError` if the judge's settings differ from the calibration's."""
        diffs = []
        if tuple(round(float(o), 6) for o in future_offsets_s) != tuple(round(o, 6) for o in self.future_offsets_s):
            diffs.append(f"future_offsets_s {tuple(future_offsets_s)} vs calibrated {self.future_offsets_s}")
        for name, value in (("num_steps", num_steps), ("num_samples", num_samples), ("seed", seed)):
            if int(value) != getattr(self, name):
                diffs.append(f"{name} {value} vs calibrated {getattr(self, name)}")
        if diffs:
            raise CalibrationError("the safety calibration was made with other forward-dynamics settings: "
                                   + "; ".join(diffs) + " (recalibrate, or set the model host's judge_num_steps, "
                                   "judge_num_samples and judge_seed to match)")
