"""Executes approved action chunks as a smooth stream of per-hand EEF targets, and holds still otherwise.

ROS-free and torch-free: the safety gate (:mod:`.gate`) calls :meth:`ChunkExecutor.add_chunk` when it
approves a chunk, :meth:`ChunkExecutor.on_status` with its own verdict on every tick, and
:meth:`ChunkExecutor.step` from its control timer; ``step`` returns the targets to send.

Timing (all times in seconds on one clock, the node's ROS clock):

- A chunk is a trajectory of absolute targets: row ``k`` is the command for time ``stamp + k*dt``,
  where ``stamp`` is the stamp of the observation it was predicted from. ``step(now)`` samples each
  chunk at ``now + command_lead_s`` (linear/slerp interpolation between rows), so the rows whose
  time passed while the model host and the gate were busy are skipped: **latency compensation**
  by the observation stamp, not by the arrival time.
- **Hand-over**: a new chunk does not replace the old one at once. Its weight rises linearly from 0
  to 1 over ``blend_time_s`` after it arrives (a cross-fade of the two trajectories, each sampled at
  the same time), so the commanded target is continuous in time: there is no jump at chunk
  boundaries, and once the new chunk's weight reaches 1 the older ones are dropped.
- **Hold**: the executor holds still - it commands the EEF pose *measured* when the hold began
  (latched, so measurement noise does not make it creep) and the last *commanded* finger values
  (so a grasped object is not released: commanding the measured width of a closed gripper would
  relax its grip) - whenever any of these holds:

  * no verdict was ever given, or none for ``heartbeat_timeout_s`` (a caller whose statuses come from
    elsewhere; the safety gate refreshes it on every tick, and tells the executor of a stalled tick
    itself through :meth:`ChunkExecutor.interrupt`),
  * the newest verdict is ``STOP``,
  * no approved chunk arrived for ``approval_deadline_s`` (the model host fell behind),
  * every active chunk has run past its last row.

  On entering a hold all active chunks are discarded; only chunks approved later are executed, and
  they are cross-faded in from the held pose. Chunks predicted from observations older than the last
  ``STOP`` are never executed, even after a reset.
- **Grasps are kept**: the finger values last commanded survive a new task (:meth:`new_task`) and every
  hold; only :meth:`release_fingers` (the operator's reset) or a chunk that commands other fingers
  changes them. ``hold_filter`` (set by the gate) checks every held target before it is used.

What a target is belongs to the command space (``targets``): :class:`HandTargets` (the default: per-hand
EEF poses + fingers, orientations slerped) or the joint space's (:mod:`.joint_space`: one vector of absolute
joint positions, interpolated linearly; its hold is the last command, so a grasp is kept by construction).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from lda_common.geometry import HandsState, HandState, blend_states

from .chunks import ChunkPlan
from .safety import STATUS_STOP


@dataclass(frozen=True)
class ExecutorConfig:
    """Timing of the executor (seconds)."""

    control_rate_hz: float = 10.0  # rate of step() calls (the node's timer); documents dt of targets
    approval_deadline_s: float = 1.0  # hold when the newest approved chunk arrived longer ago than this
    heartbeat_timeout_s: float = 0.5  # hold when no SafetyStatus arrived for this long
    blend_time_s: float = 0.3  # cross-fade duration from the previous trajectory to a new chunk
    command_lead_s: float = 0.0  # sample chunks this far ahead of now (controller latency)
    max_chunk_age_s: float = 1.0  # drop a chunk whose observation is older than this on arrival

    def __post_init__(self) -> None:  # `not x > 0`: NaN is refused too
        for name in ("control_rate_hz", "approval_deadline_s", "heartbeat_timeout_s", "max_chunk_age_s"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"{name} must be finite and > 0, got {getattr(self, name)!r}")
        if not (0 <= self.blend_time_s < math.inf and 0 <= self.command_lead_s < math.inf):
            raise ValueError("blend_time_s and command_lead_s must be finite and >= 0")


class HandTargets:
    """The executor's view of per-hand targets (``HandsState``): how two are blended, what makes a plan
    unusable, what a hold starts from and what it keeps. Other command spaces give their own."""

    def __init__(self, parts: list[str]) -> None:
        self.parts = list(parts)

    def blend(self, a, b, alpha: float):
        return blend_states(a, b, alpha)

    def plan_problem(self, plan) -> str:
        """Why an approved plan cannot be executed ('' when it can)."""
        if set(plan.hands) != set(self.parts):
            return f"wrong hands: chunk has {sorted(plan.hands)}, robot has {sorted(self.parts)}"
        if not all(t.is_finite() for t in plan.hands.values()):
            return "non-finite: chunk targets contain NaN/inf"
        return ""

    def hold_from(self, measured, last_output, kept: dict):
        """The target a hold begins with: the measured pose with the fingers as last commanded (``kept``), or
        the last output when nothing usable was measured (None: nothing to hold)."""
        if measured is not None and all(h in measured and measured[h].is_finite() for h in self.parts):
            return {h: HandState(measured[h].position.copy(), measured[h].quaternion.copy(),
                                 (kept[h] if h in kept else measured[h].fingers).copy()) for h in self.parts}
        return dict(last_output) if last_output is not None else None

    def kept(self, targets) -> dict:
        """What a hold keeps of the targets last output (the commanded fingers)."""
        return {h: t.fingers.copy() for h, t in targets.items()}


@dataclass
class _Layer:
    plan: ChunkPlan | None  # None: the held state
    start: float  # time its cross-fade began


@dataclass
class Command:
    """What the node publishes this tick."""

    mode: str  # "execute": targets from chunks; "hold": the held state; "idle": nothing known to hold
    targets: HandsState | None
    reason: str  # why we hold (empty when executing)
    chunk_sequence: int = 0  # newest chunk contributing to the targets (0: none)


@dataclass
class ExecutorStats:
    accepted: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    last_latency_s: float = float("nan")  # now - stamp of the newest accepted chunk, at its arrival
    holds: int = 0  # transitions into hold


class ChunkExecutor:
    """Turns approved chunk plans + safety statuses into targets; see the module docstring."""

    def __init__(self, hands: list[str], config: ExecutorConfig | None = None, targets=None) -> None:
        if not hands:
            raise ValueError("the executor needs at least one hand")
        self.hands = list(hands)
        self.config = config or ExecutorConfig()
        self.targets = targets if targets is not None else HandTargets(self.hands)
        self.stats = ExecutorStats()
        self._layers: list[_Layer] = []
        self._hold: HandsState | None = None
        self._holding = True
        self._hold_reason = "starting"
        self._status_level: int | None = None
        self._status_reason = ""
        self._status_time: float | None = None
        self._last_accept_time: float | None = None
        self._last_sequence = -1
        self._stop_seen_stamp: float | None = None  # chunks observed before this are never executed
        self._last_output: HandsState | None = None
        self._fingers: dict = {}  # hand -> finger values last commanded (kept through tasks and holds)
        self._interrupt = ""  # a hold the caller asked for (the gate's tick stalled)
        #: checks a hold target before it is held (the gate's: box, one step from the last command)
        self.hold_filter: Callable[[HandsState], HandsState | None] | None = None

    def new_task(self) -> None:
        """Drop the previous task's chunks and held pose. The fingers stay as last commanded: a new
        instruction does not release a grasp (only :meth:`release_fingers` does)."""
        self._layers = []
        self._hold = None
        self._last_output = None

    def release_fingers(self) -> None:
        """Forget the commanded fingers: a hold takes the measured ones (an operator's reset). A hold in force
        is taken anew at the next step (the measured pose and fingers, through ``hold_filter``)."""
        self._fingers = {}
        if self._holding:
            self._hold = None

    def interrupt(self, reason: str) -> None:
        """Hold at the next :meth:`step` with ``reason`` and discard the active chunks (a stalled caller)."""
        self._interrupt = reason

    def restart_sequence(self) -> None:
        """Accept chunk sequences from 1 again (after an operator reset: a restarted model host counts anew)."""
        self._last_sequence = -1

    # ------------------------------------------------------------------ inputs

    def on_status(self, level: int, reason: str, now: float) -> None:
        """A SafetyStatus (verdict or heartbeat) arrived at ``now``."""
        if level == STATUS_STOP and self._status_level != STATUS_STOP:
            self._stop_seen_stamp = now
        self._status_level, self._status_reason, self._status_time = int(level), reason, now

    def add_chunk(self, plan: ChunkPlan, now: float) -> tuple[bool, str]:
        """Offer an approved chunk; returns (accepted, reason when dropped)."""
        reason = self._reject_reason(plan, now)
        if reason:
            self.stats.dropped[reason.split(":")[0]] += 1
            return False, reason
        self._last_sequence = plan.sequence
        self._last_accept_time = now
        self.stats.accepted += 1
        self.stats.last_latency_s = now - plan.stamp
        if not self._layers:
            self._layers.append(_Layer(None, now))
        self._layers.append(_Layer(plan, now))
        return True, ""

    def _reject_reason(self, plan: ChunkPlan, now: float) -> str:
        problem = self.targets.plan_problem(plan)
        if problem:
            return problem
        if plan.dt <= 0:
            return f"bad dt: {plan.dt}"
        if plan.sequence <= self._last_sequence:
            return f"out of order: sequence {plan.sequence} <= {self._last_sequence}"
        if self._status_level == STATUS_STOP:
            return f"safety stop: {self._status_reason}"
        if self._stop_seen_stamp is not None and plan.stamp < self._stop_seen_stamp:
            return "before stop: chunk predicted from an observation older than the last STOP"
        age = now - plan.stamp
        if age > self.config.max_chunk_age_s:
            return f"stale: observation {age:.2f} s old > max_chunk_age_s {self.config.max_chunk_age_s}"
        if now + self.config.command_lead_s >= plan.end:
            return f"late: all rows of chunk {plan.sequence} are in the past"
        return ""

    # ------------------------------------------------------------------ control tick

    @property
    def holding(self) -> bool:
        return self._holding

    @property
    def hold_reason(self) -> str:
        return self._hold_reason if self._holding else ""

    @property
    def last_sequence(self) -> int:
        """Sequence of the newest accepted chunk (-1: none)."""
        return self._last_sequence

    @property
    def queue_depth(self) -> int:
        """Chunks currently contributing to the targets."""
        return sum(1 for layer in self._layers if layer.plan is not None)

    def step(self, now: float, measured: HandsState | None) -> Command:
        """Targets for time ``now``. ``measured``: the newest measured hand states (None if unknown)."""
        reason, self._interrupt = self._interrupt or self._gate(now), ""
        if reason:
            self._enter_hold(reason, measured)
            if self._hold is None:
                return Command("idle", None, reason + " (no measured pose to hold yet)")
            self._output(self._hold)
            return Command("hold", dict(self._hold), reason)
        self._holding = False
        t = now + self.config.command_lead_s
        out: HandsState | None = None
        keep_from = 0
        for i, layer in enumerate(self._layers):
            if layer.plan is None and self._hold is None:
                continue  # nothing was held (no measurement yet): start straight from the chunk
            sample = self._hold if layer.plan is None else layer.plan.sample(t)
            if out is None:
                out = sample
                continue
            alpha = 1.0 if self.config.blend_time_s == 0 else min(max((now - layer.start) / self.config.blend_time_s,
                                                                     0.0), 1.0)
            if alpha >= 1.0:
                keep_from = i
            out = {h: self.targets.blend(out[h], sample[h], alpha) for h in self.hands}
        if keep_from:
            del self._layers[:keep_from]
        if out is None:  # no layer could be sampled (nothing measured to start from): hold what we have
            self._enter_hold("no target to start the chunk from", measured)
            if self._hold is None:
                return Command("idle", None, "no measured pose to start from")
            self._output(self._hold)
            return Command("hold", dict(self._hold), "no target to start the chunk from")
        self._output(out)
        newest = self._layers[-1].plan
        return Command("execute", dict(out), "", newest.sequence if newest else 0)

    def _gate(self, now: float) -> str:
        c = self.config
        if self._status_time is None:
            return "no SafetyStatus heartbeat received yet"
        silence = now - self._status_time
        if silence > c.heartbeat_timeout_s:
            return f"SafetyStatus heartbeat missing for {silence:.2f} s (> {c.heartbeat_timeout_s} s)"
        if self._status_level == STATUS_STOP:
            return f"safety STOP: {self._status_reason}"
        chunks = [layer.plan for layer in self._layers if layer.plan is not None]
        if not chunks or self._last_accept_time is None:
            return "waiting for an approved chunk"
        since = now - self._last_accept_time
        if since > c.approval_deadline_s:
            return f"no approved chunk for {since:.2f} s (> approval_deadline_s {c.approval_deadline_s})"
        if all(now + c.command_lead_s >= p.end for p in chunks):
            return f"chunk {chunks[-1].sequence} ran out of rows"
        return ""

    def _enter_hold(self, reason: str, measured: HandsState | None) -> None:
        waiting = reason.startswith("waiting")
        if not self._holding:
            self.stats.holds += 1
            self._hold = None
        self._holding = True
        self._hold_reason = reason
        if not waiting:  # a chunk accepted while a safety gate is closed must not resume later
            dropped = sum(1 for layer in self._layers if layer.plan is not None)
            if dropped and not reason.startswith(("no approved", "chunk ")):
                self.stats.dropped["discarded on hold"] += dropped
            self._layers = []
        if self._hold is not None:
            return
        # the measured state, fingers where they were last commanded; no usable measurement: the last output
        self._hold = self.targets.hold_from(measured, self._last_output, self._fingers)
        if self._hold is not None and self.hold_filter is not None:
            self._hold = self.hold_filter(self._hold)

    def _output(self, targets: HandsState) -> None:
        self._last_output = targets
        self._fingers = self.targets.kept(targets)
