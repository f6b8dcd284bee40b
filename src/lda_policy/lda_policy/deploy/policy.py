"""The policy side of the model host, ROS-free: observations in, proposed chunks out.

:class:`PolicyCore` is the policy half of the model host. Callbacks feed it camera frames, EEF poses,
finger states and the instruction (cheap: they only store); the host's inference thread calls
:meth:`propose` (DINO-encodes the newest frame, runs the policy objective, and with test-time selection
chooses among its candidates: :mod:`.selection`), which returns the chunk with
its digest and the observation it was predicted from (the judge predicts from the same one). Chaining a
chunk into targets and executing it is the safety gate's business (:mod:`.gate`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from lda_policy.model import Observation

from .chunks import ProposedChunk
from .hand_states import HandStateBuffer
from .observations import FrameLatents
from .robot import RobotInterface
from .runtime import ModelRuntime
from .selection import ChunkSelector, Selection


@dataclass(frozen=True)
class PolicySettings:
    max_image_age_s: float = 0.5  # do not predict from a camera frame older than this
    state_tolerance_s: float = 0.15  # EEF/finger samples may be this far from the frame stamp
    frame_period_s: float = 0.05  # camera frames closer than this are not stored
    seed: int = -1  # flow-sampling seed (-1: a fresh sample per call)
    noise_scale: float = 1.0  # scale of the flow's starting noise (0: deterministic, from its mean)


class TaskInputs:
    """What every policy core takes from the callbacks alike: the instruction, task changes and camera frames.

    A subclass calls :meth:`_init_inputs` with its frame buffer and its robot-state buffer (each has ``add``
    and ``clear``); :meth:`start_task` drops both, so that nothing of the previous task enters the first
    chunk of the next one (a reset teleports the robot; the last task's commands no longer hold), and calls
    :meth:`_on_new_task` for what else a backend must forget. ``_task`` counts the tasks: a chunk predicted
    across a change is dropped by the proposer."""

    def _init_inputs(self, frames: Any, states: Any) -> None:
        self.frames, self.states = frames, states
        self._instruction: str | None = None
        self._sequence = 0  # of the chunks proposed
        self._task = 0
        self._lock = threading.Lock()
        self.skipped = ""  # why the last propose() returned None

    def set_instruction(self, text: str) -> None:
        self._instruction = text.strip() or None

    def start_task(self, text: str) -> None:
        with self._lock:
            self._task += 1
            self._on_new_task()
            self.frames.clear()
            self.states.clear()
            self.set_instruction(text)

    def _on_new_task(self) -> None:
        """What a backend forgets besides the frames and states when a task starts (nothing by default)."""

    @property
    def instruction(self) -> str | None:
        return self._instruction

    def on_frame(self, stamp: float, image: np.ndarray) -> None:
        self.frames.add(stamp, image)

    def camera_not_ready(self, now: float) -> str:
        """Why the camera cannot feed a chunk now ('' when it can): no frame yet, or the newest older than the
        settings' ``max_image_age_s``."""
        newest = self.frames.newest_stamp
        if newest is None:
            return "no camera frame yet"
        if now - newest > self.settings.max_image_age_s:
            return f"camera frame is {now - newest:.2f} s old (> max_image_age_s {self.settings.max_image_age_s})"
        return ""


class PolicyCore(TaskInputs):
    """Assembles observations and runs the policy objective (thread-safe inputs, one proposing thread)."""

    def __init__(self, runtime: ModelRuntime, robot: RobotInterface, settings: PolicySettings | None = None,
                 selector: ChunkSelector | None = None) -> None:
        self.runtime = runtime
        self.robot = robot
        self.settings = settings or PolicySettings()
        self.selector = selector or ChunkSelector(runtime)  # k = 1 unless the host asks for more
        self.last_selection: Selection | None = None
        robot.check_model(runtime.config)
        t = runtime.config.time
        self.obs_offsets = t.obs_offsets_s
        self.history_steps = t.history_action_steps
        self._init_inputs(FrameLatents(runtime.encode_image, min_period_s=self.settings.frame_period_s,
                                       keep_s=max(4.0, 2 - min(self.obs_offsets)), tolerance_s=0.1),
                          HandStateBuffer(robot.hands))
        # Finger values are absolute targets: a flow sample overshoots one at the end of its range (a closed
        # hand: 1.915 of 1.74 rad, which the gate STOPs on), so they are kept within the 1-99 % range of the
        # training actions. Pose deltas are not touched: judging those is the gate's job.
        span = runtime.action_range(robot.embodiment)
        self.action_bounds = None if span is None else robot.finger_bounds(*span)

    # -- proposing (worker thread) -------------------------------------------------------------------
    def not_ready(self, now: float) -> str:
        """Why a chunk cannot be proposed now ('' when it can)."""
        if self._instruction is None:
            return "no instruction yet (publish one on the instruction topic)"
        camera = self.camera_not_ready(now)
        if camera:
            return camera
        if self.states.at(self.frames.newest_stamp, self.settings.state_tolerance_s) is None:
            return "no EEF pose / finger state near the camera stamp"
        return ""

    def propose(self, now: float) -> tuple[ProposedChunk, Observation] | None:
        """Predict a chunk from the newest frame: (chunk, the observation it came from), or None when not
        ready (:attr:`skipped` says why). NaN latents raise :class:`~.observations.NonFiniteLatents`."""
        task, instruction = self._task, self._instruction  # a new task may start on a callback meanwhile
        if self.not_ready(now):
            return None
        t0 = time.perf_counter()
        stamp = self.frames.newest_stamp
        if stamp is None or instruction is None:
            self.skipped = "a new task started: no camera frame of it yet"
            return None
        anchor = self.states.at(stamp, self.settings.state_tolerance_s)
        if anchor is None or not all(s.is_finite() for s in anchor.values()):
            self.skipped = "no finite EEF pose / finger state at the camera stamp"
            return None
        try:
            history, _pad = self.frames.history(stamp, self.obs_offsets)
        except LookupError as err:  # a camera gap inside the history window: wait until it has passed
            self.skipped = f"history frames: {err}"
            return None
        hist_actions = self.robot.history_actions(self.states, stamp, self.history_steps,
                                                  self.settings.state_tolerance_s)
        if hist_actions is None:  # training always had real history actions: wait for them
            self.skipped = f"waiting for {self.history_steps * self.robot.dt:.1f} s of hand states (history actions)"
            return None
        obs = self.runtime.observation(self.robot.embodiment, history, instruction,
                                       self.robot.state_vector(anchor), hist_actions,
                                       image=self.frames.image_at(stamp))
        chosen = self.selector.select(obs, seed=None if self.settings.seed < 0 else self.settings.seed,
                                      noise_scale=self.settings.noise_scale)
        self.last_selection = chosen
        with self._lock:
            if self._task != task:  # predicted from the previous task's frames and states: never send it
                self.skipped = "a new task started while the chunk was predicted; dropped"
                return None
            self._sequence += 1
            actions = chosen.actions if self.action_bounds is None else np.clip(chosen.actions, *self.action_bounds)
            chunk = ProposedChunk(self._sequence, stamp, self.robot.dt, self.robot.embodiment,
                                  self.robot.dimension_names, actions, time.perf_counter() - t0,
                                  candidates=chosen.k, selection_score=chosen.score,
                                  selection_spread=chosen.spread)
        chunk.digest = chunk.computed_digest()
        return chunk, obs
