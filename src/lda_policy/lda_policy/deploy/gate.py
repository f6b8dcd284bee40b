"""The safety gate, ROS-free and torch-free: the only path from the model to the robot.

:class:`SafetyGateCore` is what ``safety_gate_node`` wraps, in its own process, with no model. It keeps
its own view of the robot (EEF poses and finger states from the robot's topics; it never trusts the
model host's) and:

1. :meth:`~SafetyGateCore.judge` - approves or refuses each proposed chunk on hard limits and freshness
   only: the digest matches the actions, embodiment and columns, finite values, dt, the chunk's age,
   fresh hand streams, and every row against the limits file (:func:`~.safety.check_chunk`). Approved
   chunks go to the executor; hard-limit violations latch STOP.
2. :meth:`~SafetyGateCore.on_source` - the model host's and the judge's heartbeats (``SafetyStatus``): a
   STOP level or a raised fault count latches STOP with the source's reason.
3. :meth:`~SafetyGateCore.tick` - the watchdog and the command: a heartbeat older than its timeout, or a
   hand stream that went quiet, latches STOP; the executor gives the targets, and every command is
   re-checked where it leaves (:func:`~.safety.check_command`: box, speeds, step, fingers). Any fault
   ends in a hold (measured pose, fingers as last commanded) with STOP latched.
4. :meth:`~SafetyGateCore.reset` - the only way out of STOP: only while holding, only with a reason.

Not received yet (start-up) is a wait, not a fault: the robot holds and nothing latches.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numpy as np
from lda_common.geometry import HandsState

from .chunk_executor import ChunkExecutor, Command, ExecutorConfig
from .chunks import ProposedChunk
from .hand_states import HandStateBuffer
from .robot import RobotInterface
from .safety import (
    STATUS_OK,
    STATUS_STOP,
    STATUS_WARN,
    SafetyLimits,
    check_chunk,
    check_command,
    find_non_finite,
)

SOURCES = ("model_host", "judge")  # the heartbeats the gate watches (lda_msgs/SafetyStatus.source)


@dataclass(frozen=True)
class GateSettings:
    host_timeout_s: float = 0.15  # STOP when the model host's heartbeat is older than this [s]
    judge_timeout_s: float = 0.15  # STOP when the judge's heartbeat is older than this [s]
    state_tolerance_s: float = 0.15  # EEF/finger samples may be this far from a chunk's observation stamp
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    def __post_init__(self) -> None:
        if self.host_timeout_s <= 0 or self.judge_timeout_s <= 0 or self.state_tolerance_s < 0:
            raise ValueError("host_timeout_s and judge_timeout_s must be > 0, state_tolerance_s >= 0")


@dataclass
class SourceStatus:
    level: int
    reason: str
    faults: int
    received: float  # gate clock
    surprise: float = 0.0


@dataclass
class Decision:
    approved: bool
    reason: str  # why refused ('' when approved)


class SafetyGateCore:
    """See the module docstring. Inputs may come from several callbacks; everything is locked."""

    def __init__(self, robot: RobotInterface, limits: SafetyLimits, settings: GateSettings | None = None) -> None:
        self.robot = robot
        self.limits = limits
        self.settings = settings or GateSettings()
        self.states = HandStateBuffer(robot.hands, keep_s=max(4.0, 2 * limits.max_chunk_age_s))
        self.executor = ChunkExecutor(robot.hands, self.settings.executor)
        self.sources: dict[str, SourceStatus] = {}
        self._fault_baseline: dict[str, int] = {}  # faults a source had when first heard (not ours to latch)
        self._last_seen: dict[str, float] = {}  # hand stream -> newest stamp
        self._lock = threading.RLock()
        self.stop_reason = ""  # non-empty: STOP latched
        self.stops = 0
        self.resets = 0
        self.approved = 0
        self.refused = 0
        self._last_sent: HandsState | None = None
        self._last_sent_time: float | None = None

    # -- the latch -----------------------------------------------------------------------------------
    @property
    def latched(self) -> bool:
        return bool(self.stop_reason)

    def stop(self, reason: str) -> bool:
        """Latch STOP (the first reason is kept); True when this call latched it."""
        with self._lock:
            if self.stop_reason:
                return False
            self.stop_reason = reason
            self.stops += 1
            return True

    def reset(self, reason: str, operator: str, now: float) -> tuple[bool, str]:
        """Clear a latched STOP: only while holding and only with a reason. (accepted, message)."""
        with self._lock:
            if not reason.strip():
                return False, "refused: a reset needs a reason (why is it safe to move again?)"
            if not self.executor.holding:
                return False, "refused: the robot is moving (a reset is accepted only while holding)"
            if not self.stop_reason:
                return True, "nothing latched; holding until the next approved chunk"
            cleared = self.stop_reason
            self.stop_reason = ""
            self.resets += 1
            # after the operator's word, sources start from their current fault count and a restarted
            # model host may count its chunks from 1 again
            self._fault_baseline = {k: v.faults for k, v in self.sources.items()}
            self.executor.restart_sequence()
        return True, f"cleared STOP ({cleared}) by '{operator or 'unnamed'}': {reason.strip()}"

    # -- inputs --------------------------------------------------------------------------------------
    def _stream(self, name: str, stamp: float, finite: bool, what: str) -> bool:
        with self._lock:
            if not finite:
                self.stop(f"NaN/inf in {what}")
                return False
            self._last_seen[name] = max(stamp, self._last_seen.get(name, -math.inf))
            return True

    def on_pose(self, hand: str, stamp: float, position, quaternion) -> None:
        p, q = np.asarray(position, dtype=np.float64), np.asarray(quaternion, dtype=np.float64)
        ok = bool(np.isfinite(p).all() and np.isfinite(q).all() and np.linalg.norm(q) > 1e-6)
        if self._stream(f"{hand}/pose", stamp, ok, f"the {hand} EEF pose"):
            self.states.add_pose(hand, stamp, p, q)

    def on_fingers(self, hand: str, stamp: float, values) -> None:
        v = np.atleast_1d(np.asarray(values, dtype=np.float64))
        if self._stream(f"{hand}/fingers", stamp, bool(np.isfinite(v).all()), f"the {hand} finger state"):
            self.states.add_fingers(hand, stamp, v)

    def on_instruction(self) -> None:
        """A new task: the previous task's chunks and held fingers are dropped (see ChunkExecutor.new_task)."""
        with self._lock:
            self.executor.new_task()

    def on_source(self, source: str, level: int, reason: str, faults: int, now: float,
                  surprise: float = 0.0) -> None:
        """A heartbeat of the model host or the judge."""
        if source not in SOURCES:
            return
        with self._lock:
            if source not in self.sources:
                self._fault_baseline[source] = faults
            self.sources[source] = SourceStatus(int(level), reason, int(faults), now, float(surprise))
            if level >= STATUS_STOP:
                self.stop(f"{source}: {reason}")
            elif faults > self._fault_baseline[source]:
                self.stop(f"{source} reported {faults - self._fault_baseline[source]} fault(s): {reason}")

    # -- proposals -----------------------------------------------------------------------------------
    def _refuse(self, reason: str, stop: bool) -> Decision:
        with self._lock:
            self.refused += 1
            if stop:
                self.stop(reason)
        return Decision(False, reason)

    def judge(self, chunk: ProposedChunk, now: float) -> Decision:
        """Approve (and hand to the executor) or refuse one proposed chunk."""
        seq = chunk.sequence
        if self.latched:
            return self._refuse(f"STOP latched ({self.stop_reason})", False)
        if chunk.digest != chunk.computed_digest():
            return self._refuse(f"chunk {seq}: digest does not match its actions (corrupted or forged)", True)
        if chunk.embodiment != self.robot.embodiment:
            return self._refuse(f"chunk {seq} is for embodiment '{chunk.embodiment}', the robot is "
                                f"'{self.robot.embodiment}'", True)
        a = np.asarray(chunk.actions, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != self.robot.action_dim or len(a) < 1 \
                or list(chunk.dimension_names) != self.robot.dimension_names:
            return self._refuse(f"chunk {seq} has shape {a.shape} / columns {list(chunk.dimension_names)[:3]}..., "
                                f"expected (H, {self.robot.action_dim}) / {self.robot.dimension_names[:3]}...", True)
        if not (math.isfinite(chunk.stamp) and math.isfinite(chunk.dt)) or abs(chunk.dt - self.robot.dt) > 1e-6:
            return self._refuse(f"chunk {seq} has dt {chunk.dt}, the robot runs at {self.robot.dt} s", True)
        bad = find_non_finite("actions", a, self.robot.dimension_names)
        if bad:
            return self._refuse(f"chunk {seq}: {bad}", True)
        age = now - chunk.stamp
        if age > self.limits.max_chunk_age_s:
            return self._refuse(f"chunk {seq} observation is {age:.2f} s old (> max_chunk_age_s "
                                f"{self.limits.max_chunk_age_s}): the model host is behind", False)
        waiting, stale = self._stream_problem(now)
        if stale or waiting:
            return self._refuse(f"chunk {seq}: {stale or waiting}", bool(stale))
        anchor = self.states.at(chunk.stamp, self.settings.state_tolerance_s)
        if anchor is None:
            return self._refuse(f"no EEF pose / finger state within {self.settings.state_tolerance_s} s of chunk "
                                f"{seq}'s observation", False)
        plan = self.robot.plan(a, anchor, seq, chunk.stamp, chunk.dt)
        violations = check_chunk(a, self.robot.dimension_names, chunk.dt, plan.hands, anchor, self.limits)
        if violations:
            return self._refuse(f"chunk {seq}: " + "; ".join(violations), True)
        with self._lock:
            if self.latched:  # a STOP may have latched meanwhile
                return self._refuse(f"STOP latched ({self.stop_reason})", False)
            ok, why = self.executor.add_chunk(plan, now)
            if not ok:
                return self._refuse(f"chunk {seq}: {why}", False)
            self.approved += 1
        return Decision(True, "")

    # -- watchdog and commands -----------------------------------------------------------------------
    def _stream_problem(self, now: float) -> tuple[str, str]:
        """(waiting, stale): a hand stream not received yet, or one that went quiet ('' when fine)."""
        with self._lock:
            for name in [f"{h}/{k}" for h in self.robot.hands for k in ("pose", "fingers")]:
                seen = self._last_seen.get(name)
                if seen is None:
                    return f"{name} never received", ""
                age = now - seen
                if age > self.limits.max_observation_age_s:
                    return "", (f"{name} stale: newest sample is {age:.2f} s old "
                                f"(> max_observation_age_s {self.limits.max_observation_age_s})")
        return "", ""

    def verdict(self, now: float) -> tuple[int, str]:
        """Watch the heartbeats and streams (latching what went quiet) and return (level, reason)."""
        with self._lock:
            waiting = ""
            for source in SOURCES:
                status = self.sources.get(source)
                timeout = self.settings.host_timeout_s if source == "model_host" else self.settings.judge_timeout_s
                if status is None:
                    waiting = waiting or f"waiting for the {source} heartbeat"
                elif now - status.received > timeout:
                    self.stop(f"{source} heartbeat missing for {now - status.received:.2f} s (> {timeout} s): "
                              "dead, frozen or disconnected")
            wait_streams, stale = self._stream_problem(now)
            if stale:
                self.stop(stale)
            if self.stop_reason:
                return STATUS_STOP, self.stop_reason
            if waiting or wait_streams:
                return STATUS_WARN, waiting or f"waiting: {wait_streams}"
            judge = self.sources["judge"]
            if judge.level == STATUS_WARN:
                return STATUS_WARN, f"judge: {judge.reason}"
            host = self.sources["model_host"]
            if host.level == STATUS_WARN:
                return STATUS_WARN, f"model_host: {host.reason}"
            return STATUS_OK, "ok"

    def tick(self, now: float) -> Command:
        """The command for ``now``: the executor's targets if they pass :func:`check_command`, else a hold."""
        with self._lock:
            level, reason = self.verdict(now)
            self.executor.on_status(level, reason, now)
            measured = self.states.latest()
            cmd = self.executor.step(now, measured)
            if cmd.mode == "execute":
                elapsed = now - self._last_sent_time if self._last_sent_time is not None else 0.0
                violations = check_command(cmd.targets, self._last_sent, elapsed, self.limits)
                if violations:
                    self.stop("command check: " + "; ".join(violations))
                    self.executor.on_status(STATUS_STOP, self.stop_reason, now)
                    cmd = self.executor.step(now, measured)
            if cmd.targets is not None:
                self._last_sent, self._last_sent_time = cmd.targets, now
            return cmd

    @property
    def surprise(self) -> float:
        judge = self.sources.get("judge")
        return judge.surprise if judge else 0.0


__all__ = ["Decision", "GateSettings", "SOURCES", "SafetyGateCore", "SourceStatus"]
