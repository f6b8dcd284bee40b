"""The forward-dynamics safety monitor, ROS-free: judge proposed chunks, score surprise, keep the verdict.

:class:`SafetyMonitorCore` is what ``safety_monitor_node`` wraps. It keeps its *own* copies of the
camera frames, EEF poses and finger states (it never trusts the policy's view of the world) and:

1. :meth:`judge` - for each proposed chunk: hard limits first (NaN anywhere, action size and speed,
   workspace box, finger range, stale or missing observations), then the forward-dynamics objective
   predicts the DINO latents of the frames the chunk leads to; the chunk is approved unless a STOP
   is latched. Hard-limit violations latch STOP.
2. :meth:`score` - when the real frames at ``stamp + future_offsets_s`` (up to ``score_horizon_s``)
   arrive, their latents are compared with the prediction; the distance is standardised with the
   calibration statistics (:class:`~lda_policy.deploy.safety.SafetyCalibration`) into the surprise,
   which moves the level between OK / WARN and latches STOP above ``stop_surprise``.
3. :meth:`heartbeat` - staleness of every input stream (latches STOP once a stream that was
   flowing goes quiet for ``max_observation_age_s``), and the current verdict to publish.
4. :meth:`reset` - the only way out of a latched STOP.

Only chunks approved by :meth:`judge` are scored (refused chunks are never executed).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from .chunk_executor import STATUS_OK, STATUS_STOP, STATUS_WARN
from .observations import FrameLatents, HandStateBuffer
from .policy import ProposedChunk
from .robot import RobotInterface
from .runtime import ModelRuntime
from .safety import SafetyCalibration, SafetyLimits, SafetyState, SafetyVerdict, check_chunk, latent_distance

NEVER_RECEIVED = "never received"  # a stream not seen yet: start-up, a wait rather than a fault


@dataclass(frozen=True)
class MonitorSettings:
    warn_surprise: float = 2.0  # surprise above which the level is WARN
    stop_surprise: float = 4.0  # surprise above which STOP latches (after stop_consecutive scores)
    stop_consecutive: int = 1
    score_horizon_s: float = 0.6  # score predicted frames up to this far after the chunk's observation
    num_samples: int = 1  # forward-dynamics flow samples averaged per prediction
    seed: int = 0  # flow-sampling seed of the forward-dynamics prediction (fixed: deterministic)
    state_tolerance_s: float = 0.15  # EEF/finger samples may be this far from a frame stamp
    frame_period_s: float = 0.05  # camera frames closer than this are not stored

    def __post_init__(self) -> None:
        if self.score_horizon_s <= 0 or self.num_samples < 1:
            raise ValueError("score_horizon_s must be > 0 and num_samples >= 1")


@dataclass
class _Pending:
    sequence: int
    stamp: float
    predicted: torch.Tensor  # (F, gh, gw, C)
    frames: list[int]  # future frame indices still to score


@dataclass
class Judgement:
    approved: bool
    reason: str  # why refused ('' when approved)
    fd_time_s: float = 0.0  # forward-dynamics time (encoders included)


@dataclass
class SurpriseEvent:
    sequence: int
    frame_index: int
    offset_s: float
    distance: float
    surprise: float
    patch_error: np.ndarray  # (gh, gw)


class SafetyMonitorCore:
    """See the module docstring. Inputs may come from several threads; everything is locked."""

    def __init__(self, runtime: ModelRuntime, robot: RobotInterface, limits: SafetyLimits,
                 calibration: SafetyCalibration | None, settings: MonitorSettings | None = None,
                 start_time: float = 0.0) -> None:
        self.runtime = runtime
        self.robot = robot
        self.limits = limits
        self.settings = settings or MonitorSettings()
        s = self.settings
        robot.check_model(runtime.config)
        t = runtime.config.time
        self.future_offsets = t.future_offsets_s
        if calibration is not None:
            calibration.check_fits(self.future_offsets, runtime.num_steps, s.num_samples, s.seed)
        self.calibration = calibration
        self.scored_frames = [i for i, o in enumerate(self.future_offsets) if o <= s.score_horizon_s + 1e-9]
        if not self.scored_frames:
            raise ValueError(f"score_horizon_s {s.score_horizon_s} is shorter than the first predicted frame "
                             f"({self.future_offsets[0]} s): nothing would be scored")
        keep = max(4.0, max(self.future_offsets) + 2.0 - min(t.obs_offsets_s))
        self.frames = FrameLatents(runtime.encode_image, min_period_s=s.frame_period_s, keep_s=keep, tolerance_s=0.1)
        self.states = HandStateBuffer(robot.hands, keep_s=keep)
        self.state = SafetyState(s.warn_surprise, s.stop_surprise, s.stop_consecutive)
        self.instruction: str | None = None
        self._pending: list[_Pending] = []
        self._lock = threading.RLock()
        self._start = start_time
        self._last_seen: dict[str, float] = {}  # stream -> newest stamp
        self.approved = 0
        self.refused = 0
        self.unscored = 0  # predicted frames that never found a real frame to compare with

    # -- inputs (cheap) ------------------------------------------------------------------------------
    def _stream(self, name: str, stamp: float, finite: bool, what: str) -> bool:
        with self._lock:
            if not finite:
                self.state.stop(f"NaN/inf in {what}")
                return False
            self._last_seen[name] = max(stamp, self._last_seen.get(name, -math.inf))
            return True

    def on_frame(self, stamp: float, image: np.ndarray) -> None:
        if self._stream("camera", stamp, True, "camera"):
            self.frames.add(stamp, image)

    def on_pose(self, hand: str, stamp: float, position, quaternion) -> None:
        p, q = np.asarray(position, dtype=np.float64), np.asarray(quaternion, dtype=np.float64)
        ok = bool(np.isfinite(p).all() and np.isfinite(q).all() and np.linalg.norm(q) > 1e-6)
        if self._stream(f"{hand}/pose", stamp, ok, f"the {hand} EEF pose"):
            self.states.add_pose(hand, stamp, p, q)

    def on_fingers(self, hand: str, stamp: float, values) -> None:
        v = np.atleast_1d(np.asarray(values, dtype=np.float64))
        if self._stream(f"{hand}/fingers", stamp, bool(np.isfinite(v).all()), f"the {hand} finger state"):
            self.states.add_fingers(hand, stamp, v)

    def on_command(self, hand: str, stamp: float, values) -> None:
        """A finger command sent to the robot (history actions of robots that record commanded fingers).
        Not a stream with an age: commands come when someone sends them; a NaN one is a fault all the same."""
        v = np.atleast_1d(np.asarray(values, dtype=np.float64))
        if not np.isfinite(v).all():
            with self._lock:
                self.state.stop(f"NaN/inf in the {hand} gripper command")
            return
        self.states.add_command(hand, stamp, v)

    def set_instruction(self, text: str) -> None:
        """A new instruction starts a new task, as for the policy (``PolicyCore.start_task``): frames and
        hand states of the previous one are dropped, so a chunk after a reset is not judged against a
        history that shows the scene before it (seen: surprise STOPs right after each reset)."""
        self.frames.clear()
        self.states.clear()
        self.instruction = text.strip() or None

    @property
    def streams(self) -> list[str]:
        return ["camera"] + [f"{h}/{k}" for h in self.robot.hands for k in ("pose", "fingers")]

    # -- judging (worker thread) ---------------------------------------------------------------------
    def _refuse(self, reason: str, stop: bool, sequence: int) -> Judgement:
        with self._lock:
            self.refused += 1
            if stop:
                self.state.stop(reason, sequence)
        return Judgement(False, reason)

    def judge(self, chunk: ProposedChunk, now: float) -> Judgement:
        """Hard limits + forward-dynamics prediction of one proposed chunk."""
        seq = chunk.sequence
        with self._lock:
            if self.state.latched:
                return self._refuse(f"STOP latched ({self.state.reason})", False, seq)
        if chunk.embodiment != self.robot.embodiment:
            return self._refuse(f"chunk {seq} is for embodiment '{chunk.embodiment}', the robot is "
                                f"'{self.robot.embodiment}'", True, seq)
        a = np.asarray(chunk.actions, dtype=np.float64)
        want = (self.runtime.config.time.chunk_size, self.robot.action_dim)
        if a.shape != want or list(chunk.dimension_names) != self.robot.dimension_names:
            return self._refuse(f"chunk {seq} has shape {a.shape} / columns {list(chunk.dimension_names)[:3]}..., "
                                f"expected {want} / {self.robot.dimension_names[:3]}...", True, seq)
        if not np.isfinite(a).all():
            bad = np.argwhere(~np.isfinite(a))[0]
            return self._refuse(f"NaN/inf in actions of chunk {seq} (row {bad[0]}, "
                                f"{self.robot.dimension_names[bad[1]]})", True, seq)
        if not (math.isfinite(chunk.stamp) and math.isfinite(chunk.dt)) or abs(chunk.dt - self.robot.dt) > 1e-6:
            return self._refuse(f"chunk {seq} has dt {chunk.dt}, the robot runs at {self.robot.dt} s", True, seq)
        age = now - chunk.stamp
        if age > self.limits.max_chunk_age_s:
            return self._refuse(f"chunk {seq} observation is {age:.2f} s old (> max_chunk_age_s "
                                f"{self.limits.max_chunk_age_s}): policy or monitor behind", False, seq)
        stale = self._stale(now)
        if stale:
            # A stream that went quiet is a fault (STOP); one not received yet is start-up (a policy that
            # saw the camera before this node did): refuse the chunk and keep waiting, as the heartbeat does.
            return self._refuse(stale, not stale.endswith(NEVER_RECEIVED), seq)
        if self.instruction is None:
            return self._refuse("no instruction received by the monitor", False, seq)
        anchor = self.states.at(chunk.stamp, self.settings.state_tolerance_s)
        if anchor is None:
            return self._refuse(f"no EEF pose / finger state within {self.settings.state_tolerance_s} s of chunk "
                                f"{seq}'s observation", False, seq)
        plan = self.robot.plan(a, anchor, seq, chunk.stamp, chunk.dt)
        violations = check_chunk(a, self.robot.dimension_names, chunk.dt, plan.hands, anchor, self.limits)
        if violations:
            return self._refuse(f"chunk {seq}: " + "; ".join(violations), True, seq)
        t0 = time.perf_counter()
        try:
            history, _pad = self.frames.history(chunk.stamp, self.runtime.config.time.obs_offsets_s)
        except LookupError as err:
            return self._refuse(f"chunk {seq}: {err}", False, seq)
        hist_actions = self.robot.history_actions(self.states, chunk.stamp,
                                                  self.runtime.config.time.history_action_steps,
                                                  self.settings.state_tolerance_s)
        obs = self.runtime.observation(self.robot.embodiment, history, self.instruction,
                                       self.robot.state_vector(anchor), hist_actions, batch=self.settings.num_samples)
        predicted = self.runtime.forward_dynamics(obs, a, seed=self.settings.seed)
        fd_time = time.perf_counter() - t0
        if not torch.isfinite(predicted).all():
            return self._refuse(f"NaN/inf in the forward-dynamics prediction of chunk {seq}", True, seq)
        with self._lock:
            if self.state.latched:  # a STOP may have latched while the model ran
                return self._refuse(f"STOP latched ({self.state.reason})", False, seq)
            self._pending.append(_Pending(seq, chunk.stamp, predicted, list(self.scored_frames)))
            self.approved += 1
        return Judgement(True, "", fd_time)

    # -- surprise (worker thread) --------------------------------------------------------------------
    def score(self) -> list[SurpriseEvent]:
        """Compare every predicted frame whose real frame has arrived; update the verdict."""
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
                hit = self.frames.latent_near(target)
                if hit is None:
                    with self._lock:
                        self.unscored += 1
                    continue
                observed = hit[1]
                if not torch.isfinite(observed).all():
                    with self._lock:
                        self.state.stop(f"NaN/inf in the observed DINO latents at t={hit[0]:.2f}", p.sequence)
                    continue
                distance, patch = latent_distance(observed, p.predicted[f], self.runtime.latent_mid,
                                                  self.runtime.latent_half)
                z = self.calibration.surprise(f, distance) if self.calibration else float("nan")
                events.append(SurpriseEvent(p.sequence, f, self.future_offsets[f], distance, z, patch))
                if self.calibration is not None:
                    with self._lock:
                        self.state.update_surprise(z, p.sequence,
                                                   f"(chunk {p.sequence}, frame +{self.future_offsets[f]:g} s)")
        with self._lock:
            self._pending = [p for p in self._pending if p.frames and p.stamp > newest - 5.0]
        return events

    # -- heartbeat -----------------------------------------------------------------------------------
    def _stale(self, now: float) -> str:
        """Reason if a stream that was received has gone quiet, or a stream never arrived ('' if fine)."""
        with self._lock:
            for name in self.streams:
                seen = self._last_seen.get(name)
                if seen is None:
                    return f"{name} {NEVER_RECEIVED}"
                age = now - seen
                if age > self.limits.max_observation_age_s:
                    return f"{name} stale: newest sample is {age:.2f} s old (> {self.limits.max_observation_age_s} s)"
        return ""

    def heartbeat(self, now: float) -> SafetyVerdict:
        """Check the input streams and return the verdict to publish."""
        with self._lock:
            stale = self._stale(now)
            if stale and not self.state.latched:
                if stale.endswith(NEVER_RECEIVED):
                    v = self.state.verdict()
                    return SafetyVerdict(max(v.level, STATUS_WARN), f"waiting: {stale}", v.surprise, 0)
                self.state.stop(stale)
            if self.calibration is None and self.state.level == STATUS_OK:
                v = self.state.verdict()
                return SafetyVerdict(STATUS_WARN, "uncalibrated: surprise is not scored "
                                     "(no safety_calibration.json)", v.surprise, v.chunk_sequence)
            return self.state.verdict()

    def reset(self) -> str:
        """Clear a latched STOP (and the pending predictions); returns a message for the caller."""
        with self._lock:
            was = self.state.reason if self.state.level == STATUS_STOP else ""
            self.state.reset()
            self._pending.clear()
        return f"cleared STOP ({was})" if was else "nothing latched; state reset"

    @property
    def level(self) -> int:
        return self.state.level

    @property
    def pending(self) -> int:
        return len(self._pending)


__all__ = ["Judgement", "MonitorSettings", "STATUS_OK", "STATUS_STOP", "STATUS_WARN", "SafetyMonitorCore",
           "SurpriseEvent"]
