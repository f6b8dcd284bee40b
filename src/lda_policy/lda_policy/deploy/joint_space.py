"""The safety gate in joint space: absolute joint position targets (the authors' published LDA-1B on the GR-1).

ROS-free and torch-free. The robot config's ``joints`` (:class:`lda_common.robot_config.JointSpaceConfig`)
names the commanded joints in the model's column order, the measured stream (``state_topic``,
sensor_msgs/JointState, joints looked up by name) and the command topic. A joint-space chunk is an
``ActionChunk`` whose columns are ``joints.joint_names`` and whose rows are absolute position targets at
``joints.period_s``. :class:`JointSpace` is the gate's command space for it (:mod:`.command_space`):

- **limits** (:class:`JointLimits`, from the limits file): a position range per joint (``joint_ranges.<joint>``,
  required for every commanded joint), a step per row and per command (``joint_max_step_rad``) and a speed
  (``joint_max_speed_rad_s``), both overridable per group (``joint_groups.<group>.max_step_rad`` /
  ``.max_speed_rad_s``), and a clamp band (``joint_band_rad``);
- **a chunk** is refused (STOP) when a row is outside a joint's range by more than the band, when its first
  row is more than one step from both the positions measured at its observation and the last command sent,
  or when consecutive rows move a joint more than min(step, speed x dt);
- **a command** is re-checked where it leaves: within the band it is clamped into range (a WARN), beyond it,
  or a jump of more than one step (``max_step``) from the command before, is STOP; a command faster than
  ``max_speed`` x the elapsed time is rate-limited to it (a WARN, as a controller's velocity limit: a
  cross-fade between chunks or a late tick asks a little more than the rows were checked for);
- **a hold** commands the last command sent (a grasp stays closed by construction), or before any command
  the measured positions clipped into range;
- **a measured JointState** without a commanded joint, with ``name`` and ``position`` of different lengths, a
  repeated name or NaN/inf is a bad input that latches STOP; positions beyond range + band latch STOP.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from lda_common.config import ConfigError
from lda_common.robot_config import JointSpaceConfig

from .hand_states import _interp
from .robot import RobotInterface
from .safety import SafetyLimits

PART = "joints"  # the one part of a joint-space target: {PART: positions (dim,)}
#: Largest magnitude a joint limit may have (radians; a prismatic joint's metres are far below).
JOINT_SANITY_BOUNDS = {"joint_max_step_rad": 1.0, "joint_max_speed_rad_s": 4 * math.pi, "joint_band_rad": 0.5,
                       "joint_ranges": 2 * math.pi}
JOINT_DEFAULTS = {"joint_max_step_rad": 0.1, "joint_max_speed_rad_s": 1.0, "joint_band_rad": 0.0}
GROUP_KEYS = ("max_step_rad", "max_speed_rad_s")


@dataclass(frozen=True)
class JointLimits:
    """Hard limits of the joint space, one entry per commanded joint (``joint_names`` order)."""

    joint_names: tuple[str, ...]
    lower: np.ndarray  # (dim,) range [rad]
    upper: np.ndarray
    max_step: np.ndarray  # (dim,) per row of a chunk and per command [rad]
    max_speed: np.ndarray  # (dim,) [rad/s]
    band: float  # clamp band [rad]

    @classmethod
    def from_params(cls, params: Mapping[str, Any], joints: JointSpaceConfig,
                    source: str = "parameters") -> JointLimits:
        """The joint limits among a node's parameters (flat ``joint_ranges.<joint>`` keys as ROS gives them, or
        nested mappings as a YAML file has them); ConfigError names ``source`` and the key."""
        flat = _flatten(params)
        glob = {}
        for key, default in JOINT_DEFAULTS.items():
            glob[key] = _number(flat.get(key, default), key, source, JOINT_SANITY_BOUNDS[key],
                                positive=key != "joint_band_rad")
        names = joints.joint_names
        ranges = {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith("joint_ranges.")}
        for joint in ranges:
            if joint not in names:
                raise ConfigError(f"the robot config's joint space has no joint '{joint}'", f"joint_ranges.{joint}",
                                  source)
        lower, upper = np.zeros(len(names)), np.zeros(len(names))
        for i, joint in enumerate(names):
            key = f"joint_ranges.{joint}"
            value = ranges.get(joint)
            if value is None:
                raise ConfigError("missing: every commanded joint needs a position range [low, high] (rad)", key,
                                  source)
            if not (isinstance(value, (list, tuple)) and len(value) == 2):
                raise ConfigError(f"expected [low, high], got {value!r}", key, source)
            lo = _number(value[0], key, source, JOINT_SANITY_BOUNDS["joint_ranges"])
            hi = _number(value[1], key, source, JOINT_SANITY_BOUNDS["joint_ranges"])
            if not lo < hi:
                raise ConfigError(f"low {lo} must be below high {hi}", key, source)
            lower[i], upper[i] = lo, hi
        step = np.full(len(names), glob["joint_max_step_rad"])
        speed = np.full(len(names), glob["joint_max_speed_rad_s"])
        slices = joints.group_slices()
        for key, value in flat.items():
            if not key.startswith("joint_groups."):
                continue
            parts = key.split(".")
            if len(parts) != 3 or parts[1] not in slices or parts[2] not in GROUP_KEYS:
                raise ConfigError(f"expected joint_groups.<group>.<key>, group one of {list(slices)}, key one of "
                                  f"{list(GROUP_KEYS)}", key, source)
            bound = JOINT_SANITY_BOUNDS[f"joint_{parts[2]}"]
            (step if parts[2] == "max_step_rad" else speed)[slices[parts[1]]] = _number(value, key, source, bound,
                                                                                         positive=True)
        return cls(tuple(names), lower, upper, step, speed, glob["joint_band_rad"])

    def row_step(self, dt: float) -> np.ndarray:
        """Per joint: the largest move in ``dt`` (min of the step and speed x dt; the step alone for dt <= 0)."""
        return np.minimum(self.max_step, self.max_speed * dt) if dt > 0 else self.max_step.copy()


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _number(value: Any, key: str, source: str, bound: float, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"must be a finite number, got {value!r}", key, source)
    if positive and not value > 0:
        raise ConfigError(f"must be > 0, got {value!r}", key, source)
    if value < 0 and key == "joint_band_rad":
        raise ConfigError(f"must be >= 0, got {value!r}", key, source)
    if abs(value) > bound:
        raise ConfigError(f"{value!r} is beyond the sanity bound {bound:.4g} (a typo or a unit mistake?)", key, source)
    return float(value)


class JointStateBuffer:
    """Timestamped measured positions (``joint_names`` order); interpolated at a time (thread-safe)."""

    def __init__(self, keep_s: float = 4.0) -> None:
        self.keep_s = keep_s
        self._samples: deque[tuple[float, np.ndarray]] = deque()
        self._lock = threading.Lock()

    def add(self, stamp: float, positions: np.ndarray) -> None:
        with self._lock:
            if self._samples and stamp <= self._samples[-1][0]:
                return
            self._samples.append((float(stamp), np.asarray(positions, dtype=np.float64)))
            while self._samples and self._samples[0][0] < stamp - self.keep_s:
                self._samples.popleft()

    def newest_stamps(self) -> dict[str, float | None]:
        with self._lock:
            return {PART: self._samples[-1][0] if self._samples else None}

    def latest(self) -> dict[str, np.ndarray] | None:
        with self._lock:
            return {PART: self._samples[-1][1].copy()} if self._samples else None

    def at(self, t: float, tolerance_s: float) -> dict[str, np.ndarray] | None:
        with self._lock:
            value = _interp(self._samples, t, tolerance_s, lambda x: x[1])
        return None if value is None else {PART: np.asarray(value, dtype=np.float64)}


@dataclass(frozen=True)
class JointPlan:
    """An approved joint-space chunk: absolute targets, row k for ``stamp + k*dt``, interpolated linearly."""

    sequence: int
    stamp: float
    dt: float
    positions: np.ndarray  # (N, dim)

    @property
    def rows(self) -> int:
        return len(self.positions)

    @property
    def end(self) -> float:
        return self.stamp + self.rows * self.dt

    def sample(self, t: float) -> dict[str, np.ndarray]:
        u = min(max((t - self.stamp) / self.dt, 0.0), float(self.rows - 1))
        i = int(np.floor(u))
        frac = u - i
        a = self.positions[i]
        if frac <= 1e-9 or i + 1 >= self.rows:
            return {PART: a.copy()}
        return {PART: a + frac * (self.positions[i + 1] - a)}


class JointSpace:
    """The gate's command space for absolute joint positions (see the module docstring and
    :mod:`.command_space` for the members)."""

    name = "joints"
    missing_anchor = "no joint state"
    parts = [PART]

    def __init__(self, robot: RobotInterface, limits: SafetyLimits, joint_limits: JointLimits) -> None:
        joints = robot.config.joints
        if joints is None:
            raise ConfigError("action_space 'joints' needs a 'joints' section in the robot config", "joints",
                              robot.config.source)
        if joint_limits is None or list(joint_limits.joint_names) != joints.joint_names:
            raise ConfigError("the joint limits do not name the robot config's joints", "joint_ranges",
                              robot.config.source)
        self.robot, self.limits, self.joint_limits = robot, limits, joint_limits
        self.embodiment, self.dt = robot.embodiment, joints.period_s
        self.dimension_names, self.action_dim = list(joints.joint_names), joints.dim
        self.state_topic, self.command_topic = joints.state_topic, joints.command_topic
        self.streams = [PART]
        self.states = JointStateBuffer(keep_s=max(4.0, 2 * limits.max_chunk_age_s))
        self._index = {j: i for i, j in enumerate(self.dimension_names)}

    # -- measured state ----------------------------------------------------------------------------
    def decode(self, names, positions) -> tuple[np.ndarray | None, str]:
        """(positions in column order, problem) of a measured JointState: (None, why) when it cannot be used
        (a commanded joint missing, names and positions of different lengths, a repeated name, NaN/inf);
        (positions, why) when its positions are beyond range + band (a glitch or a broken joint)."""
        names, positions = list(names), list(positions)
        if len(names) != len(positions):
            return None, f"JointState has {len(names)} names but {len(positions)} positions"
        lookup: dict[str, float] = {}
        for n, p in zip(names, positions, strict=True):
            if n in lookup and n in self._index:
                return None, f"JointState names joint '{str(n)[:60]}' twice"
            lookup[n] = p
        missing = [j for j in self.dimension_names if j not in lookup]
        if missing:
            return None, f"JointState lacks joint '{missing[0]}' ({len(missing)} of {self.action_dim} missing)"
        try:
            values = np.array([float(lookup[j]) for j in self.dimension_names], dtype=np.float64)
        except (TypeError, ValueError):
            return None, "JointState positions are not numbers"
        bad = ~np.isfinite(values)
        if bad.any():
            return None, f"NaN/inf in the joint state (joint {self.dimension_names[int(np.argmax(bad))]})"
        return values, "; ".join(self._outside(values[None], "measured position"))

    def latest(self):
        return self.states.latest()

    def anchor(self, stamp: float, tolerance_s: float):
        return self.states.at(stamp, tolerance_s)

    # -- chunks ------------------------------------------------------------------------------------
    def plan(self, actions: np.ndarray, anchor, sequence: int, stamp: float, dt: float) -> JointPlan:
        return JointPlan(int(sequence), float(stamp), float(dt), np.array(actions, dtype=np.float64))

    def _outside(self, rows: np.ndarray, what: str, band: bool = True) -> list[str]:
        """Range violations of (N, dim) positions (``band``: allow the clamp band beyond the range)."""
        b = self.joint_limits.band if band else 0.0
        lo, hi = self.joint_limits.lower - b, self.joint_limits.upper + b
        with np.errstate(invalid="ignore"):
            outside = ~((rows >= lo) & (rows <= hi))
        if not outside.any():
            return []
        k, j = (int(v) for v in np.argwhere(outside)[0])
        row = f" (row {k})" if what == "target" else ""
        beyond = f" by more than its band {b} rad" if b else ""
        return [f"joint {self.dimension_names[j]} {what} {rows[k, j]:.3f}{row} outside "
                f"[{self.joint_limits.lower[j]}, {self.joint_limits.upper[j]}]{beyond}"]

    def _too_fast(self, moves: np.ndarray, allowed: np.ndarray, where: str) -> list[str]:
        """The largest excess of |moves| (N, dim) over ``allowed`` (dim,), named."""
        excess = np.abs(moves) - allowed
        if not (excess > 1e-9).any():
            return []
        k, j = (int(v) for v in np.unravel_index(int(np.argmax(excess)), excess.shape))
        return [f"joint {self.dimension_names[j]} moves {abs(moves[k, j]):.3f} rad {where.format(row=k)}; limit "
                f"{allowed[j]:.3f} rad (max_step_rad {self.joint_limits.max_step[j]:g}, max_speed_rad_s "
                f"{self.joint_limits.max_speed[j]:g})"]

    def check_chunk(self, actions: np.ndarray, dt: float, plan: JointPlan, anchor, last_sent) -> list[str]:
        a = plan.positions
        if not np.isfinite(a).all():
            return ["NaN/inf in the joint targets"]
        if not dt > 0:
            return [f"chunk dt {dt} is not positive"]
        out = self._outside(a, "target")
        step = self.joint_limits.row_step(dt)
        start = anchor[PART]
        first = np.abs(a[0] - start)
        if last_sent is not None and PART in last_sent:  # or within one step of the last command sent
            first = np.minimum(first, np.abs(a[0] - last_sent[PART]))
        out += self._too_fast(first[None], step, "from the measured position to row 0 (and from the last command)")
        if len(a) > 1:
            out += self._too_fast(np.diff(a, axis=0), step, "between rows {row} and the next")
        return out

    # -- commands ----------------------------------------------------------------------------------
    def check_command(self, targets, previous, elapsed_s: float) -> list[str]:
        t = targets.get(PART)
        if t is None or np.shape(t) != (self.action_dim,):
            return ["the joint command has the wrong shape"]
        if not np.isfinite(t).all():
            return ["NaN/inf in the joint command"]
        out = self._outside(t[None], "command")
        if previous is not None and PART in previous:  # a jump: what leaves (clamped into range) beyond one step
            sent = np.clip(t, self.joint_limits.lower, self.joint_limits.upper)
            out += self._too_fast((sent - previous[PART])[None], self.joint_limits.max_step,
                                  f"in one command ({elapsed_s:.3f} s)")
        return out

    def clamp(self, targets, previous=None, elapsed_s: float = 0.0) -> tuple[dict, list[str]]:
        """Targets clamped into range (within the band: call :meth:`check_command` first) and rate-limited to
        ``max_speed`` x ``elapsed_s`` from the previous command, as a controller's velocity limit: a cross-fade
        between two chunks or a late tick may ask a little more than the speed the chunks were checked for."""
        t = targets[PART]
        c = np.clip(t, self.joint_limits.lower, self.joint_limits.upper)
        notes = []
        if not np.array_equal(c, t):
            j = int(np.argmax(np.abs(c - t)))
            notes.append(f"joint command clamped by up to {float(np.abs(c - t).max()):.3f} rad "
                         f"({self.dimension_names[j]}) into its range")
        if previous is not None and PART in previous:
            span = elapsed_s if math.isfinite(elapsed_s) and elapsed_s > 0 else 0.0
            allowed = np.minimum(self.joint_limits.max_speed * span, self.joint_limits.max_step)
            prev = previous[PART]
            r = np.clip(c, prev - allowed, prev + allowed)
            if not np.array_equal(r, c):
                j = int(np.argmax(np.abs(r - c)))
                notes.append(f"joint command rate-limited by {float(np.abs(r - c).max()):.3f} rad "
                             f"({self.dimension_names[j]}) to max_speed_rad_s {self.joint_limits.max_speed[j]:g}")
            c = r
        return ({PART: c} if notes else targets), notes

    def safe_hold(self, hold, last_sent) -> tuple[dict | None, str]:
        """The last command sent; before any command the hold target (the measured positions) clipped into
        range. None (with a STOP reason) when neither exists."""
        if last_sent is not None and PART in last_sent and np.isfinite(last_sent[PART]).all():
            return {PART: np.array(last_sent[PART], dtype=np.float64)}, ""
        t = None if hold is None else hold.get(PART)
        if t is None or np.shape(t) != (self.action_dim,) or not np.isfinite(t).all():
            return None, "hold: no usable joint hold target and no command sent yet"
        return {PART: np.clip(t, self.joint_limits.lower, self.joint_limits.upper)}, ""

    # -- the executor's hooks (see chunk_executor.HandTargets) ----------------------------------------
    def blend(self, a, b, alpha: float):
        return a + alpha * (b - a)

    def plan_problem(self, plan) -> str:
        if not isinstance(plan, JointPlan) or plan.positions.ndim != 2 or plan.positions.shape[1] != self.action_dim:
            return "wrong shape: not a joint-space plan of this robot"
        if not np.isfinite(plan.positions).all():
            return "non-finite: chunk targets contain NaN/inf"
        return ""

    def hold_from(self, measured, last_output, kept: dict):
        if last_output is not None:  # the gate's safe_hold holds the last command sent anyway
            return {PART: np.array(last_output[PART])}
        if measured is not None and PART in measured and np.isfinite(measured[PART]).all():
            return {PART: np.array(measured[PART])}
        return None

    def kept(self, targets) -> dict:
        return {}


__all__ = ["JOINT_DEFAULTS", "JOINT_SANITY_BOUNDS", "JointLimits", "JointPlan", "JointSpace", "JointStateBuffer"]
