"""A LeRobot policy in the model host, ROS-free: a ``PreTrainedPolicy`` checkpoint directory as a policy backend.

:class:`LeRobotPolicyCore` is the policy half of the model host for a checkpoint written by LeRobot's own trainer
(``lerobot-train``: ``config.json``, ``model.safetensors``, ``policy_preprocessor.json`` /
``policy_postprocessor.json`` and their normalisation state; safetensors and JSON, no pickle) and trained on a
dataset this suite recorded, so that its action rows are ours: per hand the canonical-EEF pose deltas and the
finger targets of :mod:`lda_common.action_space`. It is loaded with LeRobot's classes
(:func:`load_lerobot_policy`: ``PreTrainedConfig.from_pretrained``, the policy class of its ``type``,
``make_pre_post_processors`` from the checkpoint's saved pipelines), and on each replan:

- observation: the newest camera frame (already converted and resized to the robot config's size by
  :meth:`~.robot.RobotInterface.image_to_rgb`, as the recorder stores it) as ``observation.images.<camera>``,
  uint8 HWC -> float CHW in [0, 1] as LeRobot's ``prepare_observation_for_inference`` does; the measured
  ``observation.state`` (:meth:`~.robot.RobotInterface.state_vector`) at the frame's stamp; the instruction as
  ``task``. A policy with ``n_obs_steps`` > 1 (Diffusion Policy) gets that many observations, one robot period
  apart (the oldest frame stands in before the first, as LeRobot pads episode starts);
- the checkpoint's preprocessor (normalisation), ``predict_action_chunk`` (ACT: ``chunk_size`` rows; Diffusion:
  ``n_action_steps``), the postprocessor (un-normalisation): the whole chunk, one row per robot period, is the
  :class:`~.chunks.ProposedChunk` the safety gate checks, with the robot's dimension names, ``dt`` and digest.

The checkpoint's features must fit the robot config (:func:`check_features`): its image features name the host's
camera at the configured size, ``observation.state`` and ``action`` have the robot's widths; anything else is
refused by name at start-up. There is no forward-dynamics judge for such a policy: the host runs
:class:`~.joint_policy.NoJudge` with :data:`NO_JUDGE_REASON`, which the gate's status shows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lda_common.robot_config import ConfigError

from .chunks import ProposedChunk
from .hand_states import HandStateBuffer
from .observations import FrameLatents
from .policy import TaskInputs
from .robot import RobotInterface
from .runtime import RuntimeLoadError

NO_JUDGE_REASON = ("no forward-dynamics judge for LeRobot policies (backend lerobot): the gate checks hard limits "
                   "and freshness only")
STATE_KEY = "observation.state"
ACTION_KEY = "action"
IMAGE_PREFIX = "observation.images."
REQUIRED_FILES = ("config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json")


@dataclass(frozen=True)
class LeRobotPolicySettings:
    max_image_age_s: float = 0.5  # do not predict from a camera frame older than this
    state_tolerance_s: float = 0.15  # EEF/finger samples may be this far from a frame stamp
    frame_period_s: float = 0.05  # camera frames closer than this are not stored
    seed: int = -1  # torch seed set before each call (-1: none; Diffusion samples noise, ACT is deterministic)


@dataclass
class LeRobotObservation:
    """What one proposal was predicted from (bookkeeping for tests and diagnostics)."""

    stamp: float
    frame_stamps: list[float]
    state: np.ndarray  # (n_obs_steps, state_dim): the measured state vectors the policy saw, oldest first
    task: str


@dataclass
class LoadedPolicy:
    """A LeRobot checkpoint as loaded: the policy (eval mode, on its device) and its two processor pipelines."""

    policy: Any
    preprocessor: Any
    postprocessor: Any
    config: Any
    source: str

    @property
    def type(self) -> str:
        return str(self.config.type)


def load_lerobot_policy(checkpoint: str | Path, device: str = "cpu") -> LoadedPolicy:
    """Load a LeRobot ``PreTrainedPolicy`` checkpoint directory with LeRobot's own classes, on ``device``;
    :class:`~.runtime.RuntimeLoadError` naming what is missing or unloadable."""
    path = Path(str(checkpoint)).expanduser()
    if not path.is_dir():
        raise RuntimeLoadError(f"LeRobot checkpoint directory '{path}' does not exist")
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise RuntimeLoadError(f"'{path}' is not a LeRobot policy checkpoint (lerobot-train's "
                               f"checkpoints/<step>/pretrained_model): it has no {', '.join(missing)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeLoadError(f"device '{device}' requested but CUDA is not available")
    try:
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors

        config = PreTrainedConfig.from_pretrained(path, local_files_only=True)
        config.device = device
        policy = get_policy_class(config.type).from_pretrained(path, config=config, local_files_only=True)
        pre, post = make_pre_post_processors(config, pretrained_path=str(path),
                                             preprocessor_overrides={"device_processor": {"device": device}})
    except (OSError, ValueError, KeyError, TypeError, ImportError, RuntimeError) as err:
        raise RuntimeLoadError(f"cannot load the LeRobot checkpoint '{path}': {type(err).__name__}: {err}") from None
    return LoadedPolicy(policy, pre, post, config, f"LeRobot checkpoint '{path}'")


def check_features(config: Any, robot: RobotInterface, source: str) -> tuple[str, bool, list[str]]:
    """(the image feature key, whether the policy takes ``observation.state``, the output features besides
    ``action``) of a LeRobot policy config that fits the robot config; ConfigError naming each feature that does
    not. Output features besides ``action`` are never read: LeRobot 0.6.1's trainer declares every dataset
    column whose name starts with ``action`` an output (our datasets' ``action_valid``), but the policy's chunk
    (``predict_action_chunk``) is ``action`` alone."""
    cam = robot.camera
    key = cam.feature_key
    inputs = dict(config.input_features or {})
    outputs = dict(config.output_features or {})
    problems = []
    action = outputs.pop(ACTION_KEY, None)
    if action is None:
        problems.append(f"it has no '{ACTION_KEY}' output feature")
    elif tuple(action.shape) != (robot.action_dim,):
        problems.append(f"'{ACTION_KEY}' is {tuple(action.shape)}, the robot config's actions are "
                        f"({robot.action_dim},) ({robot.dimension_names[0]} ... {robot.dimension_names[-1]})")
    state = inputs.pop(STATE_KEY, None)
    if state is not None and tuple(state.shape) != (robot.state_dim,):
        problems.append(f"'{STATE_KEY}' is {tuple(state.shape)}, the robot config's hand-centric state is "
                        f"({robot.state_dim},)")
    image = inputs.pop(key, None)
    if image is None:
        problems.append(f"it takes no '{key}' (the host's camera '{cam.name}'; set the camera parameter to one of "
                        "the checkpoint's cameras)")
    elif tuple(image.shape) != (3, cam.height, cam.width):
        problems.append(f"'{key}' is {tuple(image.shape)}, the robot config's camera '{cam.name}' gives "
                        f"(3, {cam.height}, {cam.width}) (the recorder's size)")
    problems += [f"input feature '{k}' ({getattr(v.type, 'value', v.type)}) is not something the host can give "
                 f"(it feeds '{key}' and '{STATE_KEY}')" for k, v in inputs.items()]
    if problems:
        raise ConfigError(f"{source} ({config.type}) does not fit robot config '{robot.embodiment}': "
                          + "; ".join(problems))
    return key, state is not None, sorted(outputs)


def image_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1], as LeRobot's ``prepare_observation_for_inference``."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).to(torch.float32).div_(255).permute(2, 0, 1).contiguous()


class LeRobotPolicyCore(TaskInputs):
    """See the module docstring. ``loaded``: a :class:`LoadedPolicy` (:func:`load_lerobot_policy`)."""

    def __init__(self, loaded: LoadedPolicy, robot: RobotInterface, settings: LeRobotPolicySettings | None = None
                 ) -> None:
        self.loaded = loaded
        self.robot = robot
        self.settings = s = settings or LeRobotPolicySettings()
        self.image_key, self.uses_state, self.unused_outputs = check_features(loaded.config, robot, loaded.source)
        self.n_obs_steps = int(getattr(loaded.config, "n_obs_steps", 1) or 1)
        self.offsets_s = [-(self.n_obs_steps - 1 - i) * robot.dt for i in range(self.n_obs_steps)]
        self._init_inputs(FrameLatents(image_tensor, min_period_s=s.frame_period_s,
                                       keep_s=max(2.0, 2 - min(self.offsets_s)), tolerance_s=0.1),
                          HandStateBuffer(robot.hands))
        self.selector = None  # no test-time selection: it needs a forward-dynamics judge
        self.last_selection = None
        self.last_observation: LeRobotObservation | None = None
        self._reset_policy = True  # the policy's own queues / ensembler are reset before the next call

    @property
    def chunk_rows(self) -> int:
        c = self.loaded.config
        return int(getattr(c, "chunk_size", 0) or getattr(c, "n_action_steps", 0) or 0)

    # -- inputs (cheap, from callbacks; the rest is TaskInputs') -------------------------------------
    def _on_new_task(self) -> None:
        self._reset_policy = True  # the policy's own state (queues, temporal ensembling) goes with the task

    # -- proposing (worker thread) -------------------------------------------------------------------
    def not_ready(self, now: float) -> str:
        """Why a chunk cannot be proposed now ('' when it can). No instruction is needed (the task text is
        passed on when there is one)."""
        camera = self.camera_not_ready(now)
        if camera:
            return camera
        if self.states.at(self.frames.newest_stamp, self.settings.state_tolerance_s) is None:
            return "no EEF pose / finger state near the camera stamp"
        return ""

    def _observation(self, stamp: float) -> tuple[dict[str, Any], np.ndarray] | None:
        """The policy's input batch at ``stamp`` and the state vectors in it, or None (:attr:`skipped` says why)."""
        try:
            images, _pad = self.frames.history(stamp, self.offsets_s)  # (1, T, 3, H, W)
        except LookupError as err:
            self.skipped = f"history frames: {err}"
            return None
        states = []
        for off in self.offsets_s:
            hands = self.states.at(stamp + off, self.settings.state_tolerance_s)
            if hands is None and off < 0:  # start-up: the current state stands in, as the oldest frame does
                hands = self.states.at(stamp, self.settings.state_tolerance_s)
            if hands is None or not all(h.is_finite() for h in hands.values()):
                self.skipped = "no finite EEF pose / finger state at the camera stamp"
                return None
            states.append(self.robot.state_vector(hands))
        state = np.stack(states)
        squeeze = self.n_obs_steps == 1
        batch: dict[str, Any] = {self.image_key: images[:, 0] if squeeze else images}
        # fed even to a policy without the state feature: LeRobot 0.6.1's ACT reads its device from it
        s = torch.from_numpy(state.astype(np.float32))[None]
        batch[STATE_KEY] = s[:, 0] if squeeze else s
        batch["task"] = self._instruction or ""
        batch["robot_type"] = self.robot.embodiment
        return batch, state

    def predict(self, batch: dict[str, Any]) -> np.ndarray:
        """(rows, action_dim) float64 actions of one observation batch, through the checkpoint's pipelines."""
        p = self.loaded
        if self._reset_policy:
            self._reset_policy = False
            p.policy.reset()
        if self.settings.seed >= 0:
            torch.manual_seed(self.settings.seed)
        with torch.inference_mode():
            actions = p.postprocessor(p.policy.predict_action_chunk(p.preprocessor(batch)))
        out = np.asarray(actions.detach().to("cpu", torch.float64).numpy())
        if out.ndim == 3:
            out = out[0]
        if out.ndim != 2 or out.shape[1] != self.robot.action_dim:
            raise ValueError(f"{p.type} returned actions of shape {tuple(out.shape)}, expected (rows, "
                             f"{self.robot.action_dim})")
        return out

    def propose(self, now: float) -> tuple[ProposedChunk, LeRobotObservation] | None:
        """Predict a chunk from the newest frame: (chunk, what it was predicted from), or None when not ready
        (:attr:`skipped` says why). NaN actions are returned for the host to refuse as a fault."""
        task = self._task
        self.skipped = self.not_ready(now)
        if self.skipped:
            return None
        t0 = time.perf_counter()
        stamp = self.frames.newest_stamp
        if stamp is None:
            self.skipped = "a new task started: no camera frame of it yet"
            return None
        made = self._observation(stamp)
        if made is None:
            return None
        batch, state = made
        actions = self.predict(batch)
        with self._lock:
            if self._task != task:
                self.skipped = "a new task started while the chunk was predicted; dropped"
                return None
            self._sequence += 1
            chunk = ProposedChunk(self._sequence, stamp, self.robot.dt, self.robot.embodiment,
                                  self.robot.dimension_names, actions, time.perf_counter() - t0)
        chunk.digest = chunk.computed_digest()
        obs = LeRobotObservation(stamp, [stamp + o for o in self.offsets_s], state, batch["task"])
        self.last_observation = obs
        return chunk, obs


__all__ = ["LeRobotObservation", "LeRobotPolicyCore", "LeRobotPolicySettings", "LoadedPolicy", "NO_JUDGE_REASON",
           "check_features", "image_tensor", "load_lerobot_policy"]
