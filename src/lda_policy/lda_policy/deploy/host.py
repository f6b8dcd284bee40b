"""The model host, ROS-free: one runtime for the policy and the forward-dynamics judge of a robot.

:class:`ModelHost` (our checkpoints) and :class:`PolicyHost` around a :class:`~.joint_policy.JointPolicyCore`
(an imported upstream checkpoint, no judge: :class:`~.joint_policy.NoJudge`) are what ``model_host_node``
wraps; the heartbeat and fault logic below is :class:`PolicyHost`'s, shared by both. A :class:`ModelHost`
has one :class:`~.runtime.ModelRuntime` (one copy of the weights) and one
:class:`~.observations.FrameLatents` (each camera frame DINO-encoded once). Both have:

- :meth:`ModelHost.propose` (the inference thread): the policy's chunk from the newest frame (with
  ``selection.k`` > 1, the best of k candidates by the model's own dynamics: :mod:`.selection`). NaN/inf
  actions, NaN latents or an exception are *faults* (counted and reported; the chunk is never proposed);
- :meth:`ModelHost.judge_next` (the judge thread): the forward-dynamics prediction of the newest
  proposal from the very observation the policy used, then the surprise of the frames that arrived;
- :meth:`ModelHost.host_status` / :meth:`ModelHost.judge_status`: what the two heartbeats say. A call
  running longer than its limit (a stall), a dead thread or a camera that went quiet is reported as
  STOP for as long as it lasts; faults raise the fault counts. The safety gate latches both.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from .chunks import ProposedChunk
from .judge import ForwardDynamicsJudge, JudgeSettings
from .policy import PolicyCore, PolicySettings
from .robot import RobotInterface
from .runtime import ModelRuntime
from .safety import STATUS_OK, STATUS_STOP, SafetyCalibration, find_non_finite
from .selection import ChunkSelector, SelectionSettings


@dataclass(frozen=True)
class HostSettings:
    max_inference_time_s: float = 2.0  # a policy call running longer is a stall (STOP)
    max_judge_time_s: float = 2.0  # a judge call running longer is judge lag (STOP)
    camera_timeout_s: float = 0.5  # a camera that was flowing and is silent this long is a fault (STOP)


@dataclass
class Status:
    level: int
    reason: str
    faults: int
    surprise: float = 0.0
    chunk_sequence: int = 0


class _Busy:
    """When the thread entered its current call (None: idle), and whether it is alive."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.what = ""
        self.dead = ""

    def running_for(self) -> float:
        since = self.since
        return 0.0 if since is None else time.monotonic() - since


class PolicyHost:
    """The heartbeat and fault logic around any policy core and judge (see the module docstring).

    ``policy``: :class:`~.policy.PolicyCore` or :class:`~.joint_policy.JointPolicyCore` (``propose``,
    ``not_ready``, ``frames.newest_stamp``); ``judge``: :class:`~.judge.ForwardDynamicsJudge` or
    :class:`~.joint_policy.NoJudge`; ``camera_topic`` names the camera in a stale-camera fault."""

    def __init__(self, policy, judge, camera_topic: str, settings: HostSettings | None = None) -> None:
        self.settings = settings or HostSettings()
        self.policy = policy
        self.judge = judge
        self.camera_topic = camera_topic
        self.faults = 0
        self.last_fault = ""
        self.inference = _Busy()
        self.judging = _Busy()
        self._newest: tuple[ProposedChunk, object] | None = None  # waiting for the judge
        self._lock = threading.Lock()
        self._judge_wake = threading.Event()
        self._camera_flowing = False
        self._camera_fault = False
        self.inference_times: list[float] = []

    def fault(self, reason: str) -> None:
        with self._lock:
            self.faults += 1
            self.last_fault = reason

    # -- inference thread ----------------------------------------------------------------------------
    def propose(self, now: float) -> ProposedChunk | None:
        """A chunk to publish, or None (not ready, or a fault: see :attr:`last_fault`)."""
        self.inference.since, self.inference.what = time.monotonic(), "policy"
        try:
            out = self.policy.propose(now)
        except Exception as err:  # noqa: BLE001 - any model error is a fault, never a silent skip
            self.fault(f"policy error: {type(err).__name__}: {err}")
            return None
        finally:
            self.inference.since = None
        if out is None:
            return None
        chunk, obs = out
        bad = find_non_finite(f"the actions of chunk {chunk.sequence}", chunk.actions, chunk.dimension_names)
        if bad:
            self.fault(f"policy produced {bad}")
            return None
        self.inference_times = [*self.inference_times[-49:], chunk.inference_time]
        with self._lock:
            self._newest = (chunk, obs)
        self._judge_wake.set()
        return chunk

    # -- judge thread --------------------------------------------------------------------------------
    def judge_next(self, timeout_s: float = 0.1) -> None:
        """Predict the newest proposal (if any) and score what can be scored; faults are counted."""
        self._judge_wake.wait(timeout_s)
        self._judge_wake.clear()
        with self._lock:
            item, self._newest = self._newest, None
        self.judging.since, self.judging.what = time.monotonic(), "forward dynamics"
        try:
            if item is not None:
                self.judge.predict(*item)
            self.judge.score()
        except Exception as err:  # noqa: BLE001 - a judge that cannot judge is a fault
            self.judge.fault(f"judge error: {type(err).__name__}: {err}")
        finally:
            self.judging.since = None

    # -- heartbeats ----------------------------------------------------------------------------------
    def camera_check(self, now: float) -> str:
        """A fault reason once the camera, after flowing, has been silent for ``camera_timeout_s``."""
        newest = self.policy.frames.newest_stamp
        if newest is None:
            return ""
        age = now - newest
        if age <= self.settings.camera_timeout_s:
            self._camera_flowing, self._camera_fault = True, False
            return ""
        if not self._camera_flowing:
            return ""
        reason = (f"camera {self.camera_topic} stale: newest frame is {age:.2f} s old "
                  f"(> camera_timeout_s {self.settings.camera_timeout_s})")
        if not self._camera_fault:
            self._camera_fault = True
            self.fault(reason)
        return reason

    def host_status(self, now: float) -> Status:
        s = self.settings
        stalled = self.inference.running_for()
        condition = (self.inference.dead
                     or (f"policy stalled: one {self.inference.what} call running for {stalled:.1f} s "
                         f"(> max_inference_time_s {s.max_inference_time_s})" if stalled > s.max_inference_time_s
                         else "")
                     or self.camera_check(now))
        if condition:
            return Status(STATUS_STOP, condition, self.faults)
        why = self.policy.not_ready(now) or "proposing"
        last = f"; last fault: {self.last_fault}" if self.last_fault else ""
        return Status(STATUS_OK, why + last, self.faults)

    def judge_status(self) -> Status:
        s = self.settings
        j = self.judge
        lag = self.judging.running_for()
        condition = self.judging.dead or (
            f"judge lag: one {self.judging.what} call running for {lag:.1f} s (> max_judge_time_s "
            f"{s.max_judge_time_s})" if lag > s.max_judge_time_s else "")
        level, reason, surprise, seq = j.status()
        if condition:
            return Status(STATUS_STOP, condition, j.faults, surprise, seq)
        last = f"; last fault: {j.last_fault}" if j.last_fault else ""
        return Status(level, reason + last, j.faults, surprise, seq)

    def selection_stats(self) -> dict[str, float | int]:
        """The last replan's candidates, chosen score and score spread, and how many of its candidates were
        within the judge's stop_surprise (diagnostics)."""
        last = self.policy.last_selection
        if last is None:
            selector = self.policy.selector
            return {"selection_k": selector.settings.k if selector is not None else 1}
        return {"selection_k": last.k, "selection_score": last.score, "selection_score_spread": last.spread,
                "selection_within_limit": int(last.within_limit.sum())}

    def mean_times(self) -> dict[str, float]:
        fd = list(self.judge.fd_times)
        inf = list(self.inference_times)
        return {"inference_time_mean_s": float(np.mean(inf)) if inf else float("nan"),
                "fd_time_mean_s": float(np.mean(fd)) if fd else float("nan")}


class ModelHost(PolicyHost):
    """The host of one of our checkpoints: one runtime for the policy (:class:`~.policy.PolicyCore`) and the
    forward-dynamics judge."""

    def __init__(self, runtime: ModelRuntime, robot: RobotInterface, calibration: SafetyCalibration | None,
                 policy: PolicySettings | None = None, judge: JudgeSettings | None = None,
                 settings: HostSettings | None = None, selection: SelectionSettings | None = None) -> None:
        self.runtime = runtime
        self.robot = robot
        policy, judge = policy or PolicySettings(), judge or JudgeSettings()
        selection = selection or SelectionSettings()
        selection.require_stochastic(policy.noise_scale)  # at start-up, not at the first replan
        core = PolicyCore(runtime, robot, policy, ChunkSelector(runtime, selection, calibration, judge))
        keep = max(core.frames.keep_s, max(runtime.config.time.future_offsets_s) + 2.0)
        core.frames.keep_s = keep  # the judge scores frames up to the last future offset
        super().__init__(core, ForwardDynamicsJudge(runtime, core.frames, calibration, judge), robot.camera.topic,
                         settings)


__all__ = ["HostSettings", "ModelHost", "PolicyHost", "Status", "STATUS_OK", "STATUS_STOP"]
