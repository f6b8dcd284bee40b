"""The joint-space policy of the model host, ROS-free: the authors' published LDA-1B on a joint-space robot.

:class:`JointPolicyCore` is the policy half of the model host for an imported upstream checkpoint
(``lda-import-upstream``; :class:`~lda_policy.model.upstream.policy.UpstreamPolicy`). Callbacks feed it
camera frames, measured joint positions (``sensor_msgs/JointState`` as name -> position, extra joints and
any order allowed) and the instruction; the host's inference thread calls :meth:`JointPolicyCore.propose`,
which does what the authors' RoboCasa client does:

- images: the head camera at ``t - frame_history_s`` and ``t`` (their two current frames), padded to a square
  with the ImageNet-mean colour and resized to the model's image size (:func:`square_image`);
- state: ``[sin q, cos q]`` per joint group of the robot config's ``joints:`` section, at each frame's stamp
  (58-d for the GR-1);
- no history actions (their eval client sends none); the embodiment slot (GR-1: 24);
- output: the normalised chunk clipped to [-1, 1] and mapped back with the checkpoint's action statistics
  (``normalization.json``): absolute joint position targets, one column per joint in group order, one row
  per ``joints.period_s``.

A checkpoint without action statistics is refused at start-up (normalised values are not joint targets),
as is a robot config or a checkpoint whose widths do not fit. The upstream checkpoints carry no calibrated
forward-dynamics judge: :class:`NoJudge` keeps the judge heartbeat flowing and says so (WARN).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from lda_common.robot_config import ConfigError, JointSpaceConfig

from .chunks import ProposedChunk
from .policy import TaskInputs
from .safety import STATUS_WARN

#: The ImageNet mean as an RGB colour: the authors pad frames to a square with it.
IMAGENET_MEAN_RGB = (124, 116, 104)
#: The authors' embodiment slots of the robots this suite has configs for (their GR-1 data: ``gr1`` = 24).
KNOWN_EMBODIMENT_SLOTS = {"gr1_humanoid": 24}
NO_JUDGE_REASON = "no forward-dynamics judge for upstream checkpoints"


def square_image(rgb: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8: padded to a square with the ImageNet-mean colour (centred),
    then resized with PIL (bicubic), as the authors' data pipeline does. A square frame of ``size`` passes."""
    img = np.asarray(rgb, dtype=np.uint8)
    h, w = img.shape[:2]
    if h != w:
        side = max(h, w)
        canvas = np.empty((side, side, 3), dtype=np.uint8)
        canvas[:] = IMAGENET_MEAN_RGB
        top, left = (side - h) // 2, (side - w) // 2
        canvas[top:top + h, left:left + w] = img
        img = canvas
    if img.shape[0] != size:
        from PIL import Image

        img = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC))
    return np.ascontiguousarray(img)


class RawFrames:
    """Recent camera frames by stamp (thread-safe), each preprocessed (:func:`square_image`) at most once.

    Frames closer than ``min_period_s`` to the previous one are skipped; frames older than ``keep_s``
    behind the newest are forgotten. :meth:`pair` returns the two frames the model sees."""

    def __init__(self, size: int, min_period_s: float = 0.05, keep_s: float = 2.0, tolerance_s: float = 0.1) -> None:
        self.size = int(size)
        self.min_period_s, self.keep_s, self.tolerance_s = float(min_period_s), float(keep_s), float(tolerance_s)
        self._frames: deque[list[Any]] = deque()  # [stamp, raw image or None, processed image or None]
        self._lock = threading.Lock()
        self.encoded = 0  # frames preprocessed (diagnostics)

    def __len__(self) -> int:
        return len(self._frames)

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()

    @property
    def newest_stamp(self) -> float | None:
        with self._lock:
            return self._frames[-1][0] if self._frames else None

    def add(self, stamp: float, image: np.ndarray) -> bool:
        with self._lock:
            if self._frames and stamp < self._frames[-1][0] + self.min_period_s:
                return False
            self._frames.append([float(stamp), image, None])
            while self._frames and self._frames[0][0] < stamp - self.keep_s:
                self._frames.popleft()
            return True

    def pair(self, stamp: float, history_s: float) -> list[tuple[float, np.ndarray]]:
        """[(stamp, image)] of the frames nearest ``stamp - history_s`` and ``stamp``. Before the oldest
        stored frame, the oldest stands in (start-up); a gap inside the stored span raises LookupError."""
        with self._lock:
            frames = list(self._frames)
        if not frames:
            raise LookupError("no camera frame stored yet")
        out = []
        for t in (stamp - history_s, stamp):
            if t < frames[0][0] - self.tolerance_s:
                frame = frames[0]
            else:
                frame = min(frames, key=lambda f: abs(f[0] - t))
                if abs(frame[0] - t) > self.tolerance_s:
                    raise LookupError(f"no camera frame within {self.tolerance_s} s of t={t:.3f}")
            with self._lock:
                if frame[2] is None:
                    frame[2], frame[1] = square_image(frame[1], self.size), None
                    self.encoded += 1
            out.append((frame[0], frame[2]))
        return out


class JointStateBuffer:
    """Measured joint positions by stamp, looked up by joint name (thread-safe). A message may carry any
    subset of the joints, in any order, with extra joints (ignored)."""

    def __init__(self, joint_names: Sequence[str], keep_s: float = 3.0) -> None:
        self.names = list(joint_names)
        self._index = {n: i for i, n in enumerate(self.names)}
        self.keep_s = float(keep_s)
        self._samples: deque[tuple[float, np.ndarray, np.ndarray]] = deque()  # stamp, values, present
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._samples.clear()

    def add(self, stamp: float, names: Sequence[str], positions: Sequence[float]) -> bool:
        """Store the configured joints of one message; False when it names none of them."""
        values = np.full(len(self.names), np.nan)
        present = np.zeros(len(self.names), dtype=bool)
        for name, value in zip(names, positions, strict=False):
            i = self._index.get(name)
            if i is not None:
                values[i], present[i] = float(value), True
        if not present.any():
            return False
        with self._lock:
            self._samples.append((float(stamp), values, present))
            newest = max(s for s, _, _ in self._samples)
            while self._samples and self._samples[0][0] < newest - self.keep_s:
                self._samples.popleft()
        return True

    def at(self, stamp: float, tolerance_s: float) -> tuple[np.ndarray | None, list[str]]:
        """(positions in config order, []) from the samples nearest ``stamp`` per joint within
        ``tolerance_s``; (None, the joints without one) otherwise."""
        with self._lock:
            samples = list(self._samples)
        if not samples:
            return None, list(self.names)
        stamps = np.array([s for s, _, _ in samples])
        values = np.stack([v for _, v, _ in samples])
        present = np.stack([p for _, _, p in samples])
        dist = np.where(present, np.abs(stamps - stamp)[:, None], np.inf)
        best = dist.argmin(axis=0)
        ok = dist[best, np.arange(len(self.names))] <= tolerance_s
        if not ok.all():
            return None, [n for n, good in zip(self.names, ok, strict=True) if not good]
        return values[best, np.arange(len(self.names))], []


@dataclass(frozen=True)
class JointPolicySettings:
    max_image_age_s: float = 0.5  # do not predict from a camera frame older than this
    state_tolerance_s: float = 0.15  # joint samples may be this far from a frame's stamp
    frame_period_s: float = 0.05  # camera frames closer than this are not stored
    frame_history_s: float = 0.5  # the earlier of the two frames the model sees is this much older
    seed: int = -1  # flow-sampling seed (-1: a fresh sample per call)
    noise_scale: float = 1.0  # scale of the flow's starting noise (0: deterministic)
    embodiment_id: int = -1  # the authors' embodiment slot (-1: KNOWN_EMBODIMENT_SLOTS by robot name)
    num_inference_steps: int = 0  # Euler steps (0: the checkpoint's)


@dataclass
class JointObservation:
    """What one proposal was predicted from (bookkeeping for tests and diagnostics)."""

    frame_stamps: tuple[float, float]
    positions: np.ndarray  # (2, dim) measured joint positions at the two frame stamps, config order
    state: np.ndarray  # (2, 2 * dim) the model's state input: [sin q, cos q] per group
    normalized: np.ndarray  # (horizon, action_dim) what the model returned


class NoJudge:
    """The judge heartbeat of a host without a forward-dynamics judge: always WARN, saying so. Exceptions
    and faults reported through :meth:`fault` are counted like a real judge's."""

    def __init__(self, reason: str = NO_JUDGE_REASON) -> None:
        self.reason = reason
        self.faults = 0
        self.last_fault = ""
        self.surprise, self.sequence = 0.0, 0
        self.approved = self.unscored = self.unbound = self.pending = 0
        self.fd_times: list[float] = []

    def fault(self, reason: str, sequence: int = 0) -> None:
        self.faults += 1
        self.last_fault = reason

    def predict(self, chunk: ProposedChunk, obs: Any) -> None:
        return None

    def score(self) -> list:
        return []

    def on_approved(self, sequence: int, digest: str) -> bool:
        self.approved += 1
        return True

    def drop_pending(self) -> None:
        return None

    def status(self) -> tuple[int, str, float, int]:
        return STATUS_WARN, self.reason, 0.0, 0


class JointPolicyCore(TaskInputs):
    """See the module docstring. ``policy``: an :class:`~lda_policy.model.upstream.policy.UpstreamPolicy`
    (anything with its ``model.config``, ``stats`` and ``act``); ``embodiment``: the robot config's name."""

    def __init__(self, policy: Any, joints: JointSpaceConfig, embodiment: str,
                 settings: JointPolicySettings | None = None, source: str = "the checkpoint") -> None:
        self.policy = policy
        self.joints = joints
        self.embodiment = embodiment
        self.settings = s = settings or JointPolicySettings()
        config = policy.model.config
        self.low, self.high = check_joint_model(config, policy.stats, joints, source)
        self.slot = s.embodiment_id if s.embodiment_id >= 0 else KNOWN_EMBODIMENT_SLOTS.get(embodiment, -1)
        if not 0 <= self.slot < config.max_embodiments:
            raise ConfigError(f"no embodiment slot for '{embodiment}' (the authors' slots: "
                              f"{KNOWN_EMBODIMENT_SLOTS}); set embodiment_id (0-{config.max_embodiments - 1})")
        self._init_inputs(RawFrames(config.dino.image_size, s.frame_period_s, keep_s=max(2.0, 2 * s.frame_history_s)),
                          JointStateBuffer(joints.joint_names))
        self.slices = list(joints.group_slices().values())
        self.selector = None  # no test-time selection for upstream checkpoints
        self.last_selection = None
        self.last_observation: JointObservation | None = None

    # -- inputs (cheap, from callbacks) --------------------------------------------------------------
    def on_joint_state(self, stamp: float, names: Sequence[str], positions: Sequence[float]) -> bool:
        return self.states.add(stamp, names, positions)

    # -- proposing (worker thread) -------------------------------------------------------------------
    def not_ready(self, now: float) -> str:
        """Why a chunk cannot be proposed now ('' when it can)."""
        if self._instruction is None:
            return "no instruction yet (publish one on the instruction topic)"
        camera = self.camera_not_ready(now)
        if camera:
            return camera
        _, missing = self.states.at(self.frames.newest_stamp, self.settings.state_tolerance_s)
        if missing:
            return (f"no joint state near the camera stamp on {self.joints.state_topic} for {len(missing)} joint(s): "
                    f"{missing[:4]}")
        return ""

    def state_input(self, positions: np.ndarray) -> np.ndarray:
        """(T, dim) joint positions -> (T, 2 * dim): [sin q, cos q] per joint group, groups in config order."""
        q = np.asarray(positions, dtype=np.float64)
        return np.concatenate([np.concatenate([np.sin(q[:, sl]), np.cos(q[:, sl])], axis=-1) for sl in self.slices],
                              axis=-1)

    def _noise(self) -> Any:
        import torch

        s, c = self.settings, self.policy.model.config
        if s.seed < 0 and s.noise_scale == 1.0:
            return None  # the model draws its own
        gen = torch.Generator().manual_seed(s.seed) if s.seed >= 0 else None
        return s.noise_scale * torch.randn(1, c.action_horizon, c.action_dim, generator=gen)

    def propose(self, now: float) -> tuple[ProposedChunk, JointObservation] | None:
        """Predict a chunk from the newest frame: (chunk, what it was predicted from), or None when not ready
        (:attr:`skipped` says why)."""
        task, instruction = self._task, self._instruction
        self.skipped = self.not_ready(now)
        if self.skipped:
            return None
        t0 = time.perf_counter()
        stamp = self.frames.newest_stamp
        if stamp is None or instruction is None:
            self.skipped = "a new task started: no camera frame of it yet"
            return None
        try:
            frames = self.frames.pair(stamp, self.settings.frame_history_s)
        except LookupError as err:
            self.skipped = f"history frames: {err}"
            return None
        positions = []
        for frame_stamp, _ in frames:
            q, missing = self.states.at(frame_stamp, self.settings.state_tolerance_s)
            if q is None:
                self.skipped = f"no joint state near the frame at t={frame_stamp:.3f} for {missing[:4]}"
                return None
            if not np.isfinite(q).all():
                bad = [n for n, v in zip(self.joints.joint_names, q, strict=True) if not np.isfinite(v)]
                self.skipped = f"NaN/inf in the measured joint positions of {bad[:4]}"
                return None
            positions.append(q)
        q = np.stack(positions)
        state = self.state_input(q)
        images = np.stack([img for _, img in frames])[None]
        out = self.policy.act(images, [instruction], state[None], [self.slot], history_actions=None,
                              noise=self._noise(), num_steps=self.settings.num_inference_steps or None)
        normalized = np.asarray(out["normalized"][0], dtype=np.float64)
        actions = self.unnormalize(normalized)
        with self._lock:
            if self._task != task:
                self.skipped = "a new task started while the chunk was predicted; dropped"
                return None
            self._sequence += 1
            chunk = ProposedChunk(self._sequence, stamp, self.joints.period_s, self.embodiment,
                                  list(self.joints.joint_names), actions, time.perf_counter() - t0)
        chunk.digest = chunk.computed_digest()
        obs = JointObservation((frames[0][0], frames[1][0]), q, state, normalized)
        self.last_observation = obs
        return chunk, obs

    def unnormalize(self, normalized: np.ndarray) -> np.ndarray:
        """(H, action_dim) normalised -> (H, dim) joint targets: clip to [-1, 1], min-max back (NaN stays NaN)."""
        a = np.clip(normalized[:, :len(self.low)], -1.0, 1.0)
        return (a + 1.0) / 2.0 * (self.high - self.low) + self.low


def check_joint_model(config: Any, stats: dict[str, np.ndarray] | None, joints: JointSpaceConfig,
                      source: str) -> tuple[np.ndarray, np.ndarray]:
    """The (min, max) action statistics of the robot's joints; ConfigError naming what does not fit."""
    dim = joints.dim
    if config.state_dim != 2 * dim:
        raise ConfigError(f"{source} takes a {config.state_dim}-d state, the robot config's joints give "
                          f"[sin q, cos q] of {dim} joints = {2 * dim}")
    if config.action_dim < dim:
        raise ConfigError(f"{source} returns {config.action_dim}-d actions, fewer than the {dim} joints of the "
                          "robot config")
    if stats is None:
        raise ConfigError(f"{source} has no action statistics in normalization.json (the release carried no "
                          "dataset_statistics.json at import): its normalised outputs are not joint targets; "
                          "re-import it with the statistics of its training data beside it")
    low, high, mask = (np.asarray(stats[k]) for k in ("min", "max", "mask"))
    if len(low) < dim:
        raise ConfigError(f"{source}'s action statistics cover {len(low)} dimensions, the robot config has {dim} "
                          "joints")
    unmasked = [joints.joint_names[i] for i in range(dim) if not mask[i]]
    if unmasked:
        raise ConfigError(f"{source}'s action statistics mask out joint column(s) {unmasked[:4]}: their values "
                          "would stay normalised, not joint targets")
    if mask[dim:].any():
        raise ConfigError(f"{source}'s action statistics have {int(mask.sum())} valid dimensions, the robot "
                          f"config's joints section {dim}: the model commands joints the config does not name")
    if not (np.isfinite(low[:dim]).all() and np.isfinite(high[:dim]).all()):
        raise ConfigError(f"{source}'s action statistics are not finite")
    return low[:dim].astype(np.float64), high[:dim].astype(np.float64)


__all__ = ["JointObservation", "JointPolicyCore", "JointPolicySettings", "JointStateBuffer", "KNOWN_EMBODIMENT_SLOTS",
           "NO_JUDGE_REASON", "NoJudge", "RawFrames", "check_joint_model", "square_image"]
