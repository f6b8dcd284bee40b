"""The safety gate, ROS-free and torch-free: the only path from the model to the robot.

:class:`SafetyGateCore` is what ``safety_gate_node`` wraps, in its own process, with no model. It keeps
its own view of the robot (EEF poses and finger states from the robot's topics; it never trusts the
model host's) and:

1. :meth:`~SafetyGateCore.judge` - approves or refuses each proposed chunk on hard limits and freshness
   only: the digest matches the actions, embodiment and columns, finite values, dt, the chunk's age and
   stamp, its sequence, fresh hand streams, and every row against the limits file
   (:func:`~.safety.check_chunk`). Approved chunks go to the executor; hard-limit violations latch STOP.
2. :meth:`~SafetyGateCore.on_source` - the model host's and the judge's heartbeats (``SafetyStatus``): a
   STOP level or a raised fault count latches STOP with the source's reason.
3. :meth:`~SafetyGateCore.tick` - the watchdog and the command: a heartbeat older than its timeout, or a
   hand stream that went quiet, latches STOP; the executor gives the targets, and every command is
   re-checked where it leaves (:func:`~.safety.check_command`: box, speeds, step, fingers; within the
   clamp bands it is clamped, and the status says WARN for ``CLAMP_WARN_S``). Any fault ends in a hold
   with STOP latched, and the hold's target is itself checked (:meth:`~SafetyGateCore.safe_hold`).
4. :meth:`~SafetyGateCore.reset` - the only way out of STOP: only while holding, only with a reason.

Two clocks. ``now`` is the ROS clock the header stamps are on (chunk ages, the executor's rows); ``mono``
is a monotonic clock of *arrival* that the watchdogs run on (heartbeat and stream ages, the step
between two commands): a stamp from the future cannot make a silent stream look fresh, and a clock that
steps back cannot make an age negative. ``mono`` defaults to ``now`` (tests that drive one clock). A
header stamp more than ``max_stamp_lead_s`` ahead of ``now``, a stream stamp that goes back, and a ROS
clock that goes back (or runs ahead of the steady clock by more than ``max_clock_jump_s`` between two
readings) latch STOP.

What is commanded is a *command space* (:mod:`.command_space`, passed as ``space``): the hands (EEF poses and
finger values from their streams, :class:`~.command_space.HandSpace`, the default; the text above) or the
robot config's joints (:class:`~.joint_space.JointSpace`: measured positions from :meth:`on_joints`, absolute
joint targets, per-joint ranges, step and speed, hold = the last command). The space plans, checks, clamps
and makes the hold safe; everything else here (latch, heartbeats, sequences, clocks, stream bookkeeping,
resets, bad inputs) is the same for both.

No input may kill the gate: every public method validates before it allocates or indexes, and an
exception that escapes one anyway latches STOP naming it (``internal error in ...``) and holds.
Not received yet (start-up) is a wait, not a fault: the robot holds and nothing latches.
"""

from __future__ import annotations

import functools
import math
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from lda_common.geometry import HandsState

from .chunk_executor import ChunkExecutor, Command, ExecutorConfig
from .chunks import ProposedChunk
from .command_space import HandSpace
from .robot import RobotInterface
from .safety import (
    STATUS_OK,
    STATUS_STOP,
    STATUS_WARN,
    SafetyLimits,
    find_non_finite,
    outside_limits,
)

SOURCES = ("model_host", "judge")  # the heartbeats the gate watches (lda_msgs/SafetyStatus.source)
CLAMP_WARN_S = 1.0  # the status stays WARN this long after a command was clamped into the limits [s]


@dataclass(frozen=True)
class GateSettings:
    host_timeout_s: float = 0.15  # STOP when the model host's heartbeat is older than this [s]
    judge_timeout_s: float = 0.15  # STOP when the judge's heartbeat is older than this [s]
    state_tolerance_s: float = 0.15  # EEF/finger samples may be this far from a chunk's observation stamp
    max_sequence_gap: int = 1000  # STOP on a chunk whose sequence is this far ahead of the last approved one
    max_clock_jump_s: float = 1.0  # STOP when the ROS clock runs this much ahead of steady time between readings
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    def __post_init__(self) -> None:  # `not x > 0`: NaN is refused too
        for name in ("host_timeout_s", "judge_timeout_s", "max_clock_jump_s"):
            if not (0 < getattr(self, name) < math.inf):
                raise ValueError(f"{name} must be finite and > 0, got {getattr(self, name)!r}")
        if not (0 <= self.state_tolerance_s < math.inf):
            raise ValueError(f"state_tolerance_s must be finite and >= 0, got {self.state_tolerance_s!r}")
        if not (isinstance(self.max_sequence_gap, int) and self.max_sequence_gap >= 1):
            raise ValueError(f"max_sequence_gap must be an integer >= 1, got {self.max_sequence_gap!r}")


@dataclass
class SourceStatus:
    level: int
    reason: str
    faults: int
    received: float  # arrival (monotonic clock)
    surprise: float = 0.0


@dataclass
class Decision:
    approved: bool
    reason: str  # why refused ('' when approved)


def _guarded(fallback):
    """Turn an exception escaping a public method into a latched STOP naming it, and return ``fallback(self)``."""

    def wrap(method):
        @functools.wraps(method)
        def inner(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except Exception as err:  # noqa: BLE001 - the gate must outlive any input
                with self._lock:
                    self.stop(f"internal error in {method.__name__}: {type(err).__name__}: {str(err)[:200]}")
                    return fallback(self)
        return inner
    return wrap


class SafetyGateCore:
    """See the module docstring. Inputs may come from several callbacks; everything is locked."""

    def __init__(self, robot: RobotInterface, limits: SafetyLimits, settings: GateSettings | None = None,
                 space=None) -> None:
        self.robot = robot
        self.limits = limits
        self.settings = settings or GateSettings()
        # what is commanded (command_space): hands (EEF poses + fingers, the default) or joints (joint_space)
        self.space = space if space is not None else HandSpace(robot, limits)
        self.states = self.space.states
        self.executor = ChunkExecutor(self.space.parts, self.settings.executor, targets=self.space)
        self.executor.hold_filter = self.safe_hold
        self.sources: dict[str, SourceStatus] = {}
        self._fault_baseline: dict[str, int] = {}  # faults a source had when first heard (not ours to latch)
        self._last_seen: dict[str, float] = {}  # hand stream -> newest stamp
        self._arrived: dict[str, float] = {}  # hand stream -> arrival (mono) of its newest sample
        # the hand streams, when hands are commanded (in joint space a pose or finger sample is an unknown hand)
        self._finger_dims = {h.name: h.fingers.dim for h in robot.config.hands} if self.space.name == "hands" else {}
        self._lock = threading.RLock()
        self.stop_reason = ""  # non-empty: STOP latched
        self.stops = 0
        self.resets = 0
        self.approved = 0
        self.refused = 0
        self.bad_inputs: Counter = Counter()  # (topic, cause) -> messages that could not be used
        self.clamped = 0  # commands clamped into the limits (within the bands): WARN
        self.last_clamp = ""
        self._last_clamp_mono: float | None = None  # arrival clock of the newest clamp (WARN for CLAMP_WARN_S)
        self._last_sent: HandsState | None = None
        self._last_sent_time: float | None = None  # mono
        self._last_tick: float | None = None  # mono of the previous tick
        self._last_now: tuple[float, float] | None = None  # (newest ROS time read, steady time then)
        self.wall_clock = time.monotonic  # steady time: the clock-jump and tick-stall checks (tests set their own)

    @property
    def limits(self) -> SafetyLimits:
        return self._limits

    @limits.setter
    def limits(self, value: SafetyLimits) -> None:  # the command space checks against the same limits
        self._limits = value
        if getattr(self, "space", None) is not None:
            self.space.limits = value

    # -- the latch -----------------------------------------------------------------------------------
    @property
    def latched(self) -> bool:
        return bool(self.stop_reason)

    def stop(self, reason: str) -> bool:
        """Latch STOP (the first reason is kept); True when this call latched it."""
        with self._lock:
            if self.stop_reason:
                return False
            self.stop_reason = reason or "STOP (no reason given)"
            self.stops += 1
            return True

    def bad_input(self, topic: str, cause: str, stop: bool = False) -> bool:
        """Count a message that cannot be used (latching STOP if ``stop``); True the first time for this
        (topic, cause), so the caller logs each cause once."""
        with self._lock:
            key = (topic, re.sub(r"[-+.\deE]*\d", "#", cause.split(":")[0])[:80])  # numbers do not make a cause
            self.bad_inputs[key] += 1
            if stop:
                self.stop(f"bad message on {topic}: {cause}")
            return self.bad_inputs[key] == 1

    @_guarded(lambda self: (False, f"refused: internal error ({self.stop_reason})"))
    def reset(self, reason: str, operator: str, now: float) -> tuple[bool, str]:
        """Clear a latched STOP: only while holding and only with a reason. (accepted, message).

        An accepted reset also restarts the chunk sequence (a restarted host counts from 1 again), releases
        the held fingers and re-anchors the hold at the measured state, whatever was latched: the operator
        vouches for where the robot is now (an episode reset, a robot moved by hand), so the hold no longer
        keeps within one step of the last command sent before it."""
        with self._lock:
            if not str(reason).strip():
                return False, "refused: a reset needs a reason (why is it safe to move again?)"
            if not self.executor.holding:
                return False, "refused: the robot is moving (a reset is accepted only while holding)"
            self.executor.restart_sequence()
            self.executor.release_fingers()
            self._last_sent, self._last_sent_time = None, None
            if not self.stop_reason:
                return True, "nothing latched; holding until the next approved chunk"
            cleared = self.stop_reason
            self.stop_reason = ""
            self.resets += 1
            # after the operator's word, sources start from their current fault count
            self._fault_baseline = {k: v.faults for k, v in self.sources.items()}
        return True, f"cleared STOP ({cleared}) by '{operator or 'unnamed'}': {str(reason).strip()}"

    # -- inputs --------------------------------------------------------------------------------------
    def _stream(self, name: str, stamp: float, problem: str, now: float | None, mono: float | None) -> bool:
        """Bookkeeping of one hand-stream sample; False (and STOP latched) when it cannot be used."""
        with self._lock:
            if problem:
                self.stop(problem)
                return False
            if not math.isfinite(stamp):
                self.stop(f"{name}: header stamp {stamp} is not finite")
                return False
            if now is not None and stamp > now + self.limits.max_stamp_lead_s:
                self.stop(f"{name} stamp is {stamp - now:.3f} s ahead of the gate's clock (> max_stamp_lead_s "
                          f"{self.limits.max_stamp_lead_s}): its clock cannot be trusted")
                return False
            prev = self._last_seen.get(name)
            if prev is not None and stamp < prev:
                self.stop(f"{name} stamp went back by {prev - stamp:.3f} s: its clock cannot be trusted")
                return False
            if prev is not None and stamp == prev:
                self.bad_input(name, "repeated stamp (a sample seen twice does not make a stream fresh)")
                return False
            self._last_seen[name] = stamp
            self._arrived[name] = mono if mono is not None else (now if now is not None else stamp)
            return True

    @_guarded(lambda self: None)
    def on_pose(self, hand: str, stamp: float, position, quaternion, now: float | None = None,
                mono: float | None = None, frame_id: str | None = None) -> None:
        """A measured EEF pose (``frame_id`` None: not checked; ``now``/``mono`` None: stamp checks skipped,
        the stamp is the arrival time)."""
        if hand not in self._finger_dims:
            self.bad_input(f"{hand}/pose", f"unknown hand '{hand}'")
            return
        p = np.asarray(position, dtype=np.float64).reshape(-1)
        q = np.asarray(quaternion, dtype=np.float64).reshape(-1)
        expected = self.robot.config.base_frame
        problem = ""
        if p.shape != (3,) or q.shape != (4,):
            problem = f"the {hand} EEF pose has {p.size} position and {q.size} orientation values (3 and 4)"
        elif not (np.isfinite(p).all() and np.isfinite(q).all() and np.linalg.norm(q) > 1e-6):
            problem = f"NaN/inf in the {hand} EEF pose"
        elif frame_id is not None and expected and frame_id != expected:
            problem = f"the {hand} EEF pose is in frame '{frame_id[:60]}', expected '{expected}'"
        else:
            problem = "; ".join(outside_limits(hand, p, np.zeros(0), self.limits, "measured pose"))
        if self._stream(f"{hand}/pose", float(stamp), problem, now, mono):
            self.states.add_pose(hand, float(stamp), p, q)

    @_guarded(lambda self: None)
    def on_fingers(self, hand: str, stamp: float, values, now: float | None = None,
                   mono: float | None = None) -> None:
        if hand not in self._finger_dims:
            self.bad_input(f"{hand}/fingers", f"unknown hand '{hand}'")
            return
        v = np.atleast_1d(np.asarray(values, dtype=np.float64)).reshape(-1)
        problem = ""
        if v.size != self._finger_dims[hand]:
            problem = f"the {hand} finger state has {v.size} values, the robot config {self._finger_dims[hand]}"
        elif not np.isfinite(v).all():
            problem = f"NaN/inf in the {hand} finger state"
        else:  # a measured finger state beyond its range and band is a glitch or a broken hand: STOP
            problem = "; ".join(outside_limits(hand, np.zeros((0, 3)), v, self.limits, "measured pose"))
        if self._stream(f"{hand}/fingers", float(stamp), problem, now, mono):
            self.states.add_fingers(hand, float(stamp), v)

    @_guarded(lambda self: None)
    def on_joints(self, stamp: float, names, positions, now: float | None = None, mono: float | None = None) -> None:
        """A measured JointState (joint space): the commanded joints are looked up by name. One without a
        commanded joint, with names and positions of different lengths, or NaN is a bad input that latches
        STOP; positions beyond range + band latch STOP; stamps are checked as for the hand streams."""
        if self.space.name != "joints":
            self.bad_input("joint_states", "a joint state while the gate commands hands")
            return
        values, problem = self.space.decode(names, positions)
        if values is None:
            self.bad_input(self.space.state_topic, problem, stop=True)
            return
        if self._stream("joints", float(stamp), problem, now, mono):
            self.space.states.add(float(stamp), values)

    @_guarded(lambda self: None)
    def on_instruction(self) -> None:
        """A new task: the previous task's chunks are dropped; a grasp is kept (see ChunkExecutor.new_task)."""
        with self._lock:
            self.executor.new_task()

    @_guarded(lambda self: None)
    def on_source(self, source: str, level: int, reason: str, faults: int, now: float,
                  surprise: float = 0.0, mono: float | None = None) -> None:
        """A heartbeat of the model host or the judge (arrived at ``mono``, default ``now``)."""
        if source not in SOURCES:
            self.bad_input("heartbeat", f"unknown source '{str(source)[:40]}'")
            return
        level, faults = int(level), int(faults)
        with self._lock:
            if source not in self.sources:
                self._fault_baseline[source] = faults
            arrival = now if mono is None else mono
            self.sources[source] = SourceStatus(level, str(reason), faults, arrival, float(surprise))
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

    def _shape_problem(self, chunk: ProposedChunk) -> str:
        """Why a chunk's identity or layout is not this robot's ('' when it is)."""
        seq, robot = chunk.sequence, self.space
        if chunk.embodiment != robot.embodiment:
            return f"chunk {seq} is for embodiment '{str(chunk.embodiment)[:60]}', the robot is '{robot.embodiment}'"
        a = np.asarray(chunk.actions, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != robot.action_dim or len(a) < 1 \
                or list(chunk.dimension_names) != robot.dimension_names:
            return (f"chunk {seq} has shape {a.shape} / columns {list(chunk.dimension_names)[:3]}..., "
                    f"expected (H, {robot.action_dim}) / {robot.dimension_names[:3]}...")
        if not (math.isfinite(chunk.stamp) and math.isfinite(chunk.dt)) or abs(chunk.dt - robot.dt) > 1e-6:
            return f"chunk {seq} has dt {chunk.dt}, the robot runs at {robot.dt} s"
        bad = find_non_finite("actions", a, robot.dimension_names)
        return f"chunk {seq}: {bad}" if bad else ""

    @_guarded(lambda self: Decision(False, f"internal error ({self.stop_reason})"))
    def judge(self, chunk: ProposedChunk, now: float, mono: float | None = None) -> Decision:
        """Approve (and hand to the executor) or refuse one proposed chunk."""
        seq = chunk.sequence
        mono = now if mono is None else mono
        if self.latched:
            return self._refuse(f"STOP latched ({self.stop_reason})", False)
        if chunk.digest != chunk.computed_digest():
            return self._refuse(f"chunk {seq}: digest does not match its actions (corrupted or forged)", True)
        problem = self._shape_problem(chunk)
        if problem:
            return self._refuse(problem, True)
        if chunk.stamp > now + self.limits.max_stamp_lead_s:
            return self._refuse(f"chunk {seq} observation stamp is {chunk.stamp - now:.3f} s ahead of the gate's "
                                f"clock (> max_stamp_lead_s {self.limits.max_stamp_lead_s})", True)
        age = now - chunk.stamp
        if age > self.limits.max_chunk_age_s:
            return self._refuse(f"chunk {seq} observation is {age:.2f} s old (> max_chunk_age_s "
                                f"{self.limits.max_chunk_age_s}): the model host is behind", False)
        waiting, stale = self._stream_problem(mono)
        if stale or waiting:
            return self._refuse(f"chunk {seq}: {stale or waiting}", bool(stale))
        anchor = self.space.anchor(chunk.stamp, self.settings.state_tolerance_s)
        if anchor is None:
            return self._refuse(f"{self.space.missing_anchor} within {self.settings.state_tolerance_s} s of chunk "
                                f"{seq}'s observation", False)
        a = np.asarray(chunk.actions, dtype=np.float64)
        with np.errstate(all="ignore"):  # huge actions give inf targets, which check_chunk names
            plan = self.space.plan(a, anchor, seq, chunk.stamp, chunk.dt)
        violations = self.space.check_chunk(a, chunk.dt, plan, anchor, self._last_sent)
        if violations:
            return self._refuse(f"chunk {seq}: " + "; ".join(violations), True)
        with self._lock:
            if self.latched:  # a STOP may have latched meanwhile
                return self._refuse(f"STOP latched ({self.stop_reason})", False)
            last = self.executor.last_sequence
            if last >= 0 and seq > last + self.settings.max_sequence_gap:
                return self._refuse(f"chunk {seq} jumps {seq - last} ahead of the last approved chunk {last} (> "
                                    f"max_sequence_gap {self.settings.max_sequence_gap}): forged, or another host",
                                    True)
            ok, why = self.executor.add_chunk(plan, now)
            if not ok:
                return self._refuse(f"chunk {seq}: {why}", False)
            self.approved += 1
        return Decision(True, "")

    # -- watchdog and commands -----------------------------------------------------------------------
    def _stream_problem(self, mono: float) -> tuple[str, str]:
        """(waiting, stale): a measured stream not received yet, or one that went quiet ('' when fine)."""
        with self._lock:
            for name in self.space.streams:
                arrived = self._arrived.get(name)
                if arrived is None:
                    return f"{name} never received", ""
                age = mono - arrived
                if not age <= self.limits.max_observation_age_s:
                    return "", (f"{name} stale: newest sample is {age:.2f} s old "
                                f"(> max_observation_age_s {self.limits.max_observation_age_s})")
        return "", ""

    @_guarded(lambda self: (STATUS_STOP, self.stop_reason))
    def verdict(self, now: float, mono: float | None = None) -> tuple[int, str]:
        """Watch the heartbeats and streams (latching what went quiet) and return (level, reason)."""
        mono = now if mono is None else mono
        with self._lock:
            self._watch_clock(now)
            waiting = ""
            for source in SOURCES:
                status = self.sources.get(source)
                timeout = self.settings.host_timeout_s if source == "model_host" else self.settings.judge_timeout_s
                if status is None:
                    waiting = waiting or f"waiting for the {source} heartbeat"
                elif not mono - status.received <= timeout:
                    self.stop(f"{source} heartbeat missing for {mono - status.received:.2f} s (> {timeout} s): "
                              "dead, frozen or disconnected")
            wait_streams, stale = self._stream_problem(mono)
            if stale:
                self.stop(stale)
            if self.stop_reason:
                return STATUS_STOP, self.stop_reason
            if waiting or wait_streams:
                return STATUS_WARN, waiting or f"waiting: {wait_streams}"
            if self._last_clamp_mono is not None and mono - self._last_clamp_mono <= CLAMP_WARN_S:
                return STATUS_WARN, f"commands clamped into the limits ({self.clamped} so far): {self.last_clamp}"
            judge = self.sources["judge"]
            if judge.level == STATUS_WARN:
                return STATUS_WARN, f"judge: {judge.reason}"
            host = self.sources["model_host"]
            if host.level == STATUS_WARN:
                return STATUS_WARN, f"model_host: {host.reason}"
            return STATUS_OK, "ok"

    def _watch_clock(self, now: float) -> None:
        """Latch STOP when the ROS clock went back, or ran ahead of the steady clock (``wall_clock``) by more
        than max_clock_jump_s, since the gate last read it (every verdict: ticks, status). A stalled gate
        sees both clocks move together: that is the heartbeats' and the tick's to name, not a jump."""
        if not math.isfinite(now):
            self.stop(f"the gate's ROS clock reads {now}")
            return
        wall = self.wall_clock()
        if self._last_now is not None:
            last, last_wall = self._last_now
            if now < last:
                self.stop(f"the ROS clock went back by {last - now:.3f} s (a /clock or system time jump): "
                          "stamps and ages cannot be trusted")
            elif (now - last) - (wall - last_wall) > self.settings.max_clock_jump_s:
                self.stop(f"the ROS clock jumped {now - last:.2f} s ahead in {wall - last_wall:.2f} s of steady "
                          f"time (> max_clock_jump_s {self.settings.max_clock_jump_s}): stamps and ages cannot "
                          "be trusted")
            now = max(now, last)
        self._last_now = (now, wall)

    def _watch_tick(self, mono: float) -> None:
        """Hold (dropping the chunks) when the tick itself stalled: more than heartbeat_timeout_s of steady time
        (``wall_clock``) between two ticks. Steady time, not ``mono``: the gate's liveness is a property of its
        process, and under use_sim_time the simulated clock advances in steps of the simulator's control period
        (0.1 s), which made every step of the closed-loop demo a "stall" that discarded the chunk in force."""
        if not math.isfinite(mono):
            self.stop(f"the gate's monotonic clock reads {mono}")
            return
        wall = self.wall_clock()
        timeout = self.settings.executor.heartbeat_timeout_s
        if self._last_tick is not None and wall - self._last_tick > timeout:
            self.executor.interrupt(f"the gate's own tick stalled for {wall - self._last_tick:.2f} s (> "
                                    f"heartbeat_timeout_s {timeout})")
        self._last_tick = wall

    def safe_hold(self, hold: HandsState) -> HandsState | None:
        """The executor's hold target made safe by the command space (hands: clipped into each hand's box and
        finger range, at most one step from the last command sent; joints: the last command sent, or the
        measured positions clipped into range). A part without a usable target keeps the last command sent,
        and STOP latches naming it; None (with STOP) when there is nothing safe to hold."""
        out, reason = self.space.safe_hold(hold, self._last_sent)
        if reason:
            self.stop(reason)
        return out

    def _checked(self, cmd: Command, now: float, mono: float, measured) -> Command:
        """``cmd`` if it passes check_command (clamped within the bands), else a hold with STOP latched."""
        elapsed = mono - self._last_sent_time if self._last_sent_time is not None else 0.0
        violations = self.space.check_command(cmd.targets, self._last_sent, elapsed)
        if violations:
            self.stop("command check: " + "; ".join(violations))
            self.executor.on_status(STATUS_STOP, self.stop_reason, now)
            return self.executor.step(now, measured)
        targets, notes = self.space.clamp(cmd.targets, self._last_sent, elapsed)
        if notes:
            self.clamped += 1
            self.last_clamp = "; ".join(notes)
            self._last_clamp_mono = mono
        return Command(cmd.mode, targets, cmd.reason, cmd.chunk_sequence)

    @_guarded(lambda self: Command("hold", dict(self._last_sent) if self._last_sent else None,
                                   f"internal error: {self.stop_reason}"))
    def tick(self, now: float, mono: float | None = None) -> Command:
        """The command for ``now``: the executor's targets if they pass :func:`check_command`, else a hold."""
        mono = now if mono is None else mono
        with self._lock:
            self._watch_tick(mono)
            level, reason = self.verdict(now, mono)
            self.executor.on_status(level, reason, now)
            measured = self.space.latest()
            cmd = self.executor.step(now, measured)
            if cmd.mode == "execute":
                cmd = self._checked(cmd, now, mono, measured)
            if cmd.targets is not None:
                self._last_sent, self._last_sent_time = cmd.targets, mono
            return cmd

    @property
    def surprise(self) -> float:
        judge = self.sources.get("judge")
        return judge.surprise if judge else 0.0


__all__ = ["Decision", "GateSettings", "SOURCES", "SafetyGateCore", "SourceStatus"]
