"""Observation buffers for deployment: camera-frame latents with a cache, and hand-state streams.

ROS-free and thread-safe. :class:`FrameLatents` keeps recent camera frames by stamp; each frame is
DINO-encoded at most once, lazily, the first time a model call needs it, so a control step with history
offsets (-0.5 s, 0 s) and a 0.5 s re-planning period encodes only the newest frame (the previous one is
cached from the previous step, and the monitor's "future" frames are the policy's next "current" frames).
:class:`HandStateBuffer` keeps timestamped poses, finger values and sent finger commands per hand.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from lda_common.alignment import CommandLog
from lda_common.geometry import HandsState, HandState, blend_states

# ---------------------------------------------------------------------------------------------- frames


@dataclass
class _Frame:
    stamp: float
    image: np.ndarray | None
    latent: torch.Tensor | None = None


class FrameLatents:
    """Recent camera frames by stamp, DINO-encoded lazily at most once each (thread-safe).

    Frames closer than ``min_period_s`` to the previous stored frame are skipped (a 30 Hz camera is
    sub-sampled), frames older than ``keep_s`` behind the newest are forgotten. :meth:`history`
    returns the model's history input at a time; :meth:`latent_near` one frame's latents.
    """

    def __init__(self, encode: Callable[[np.ndarray], torch.Tensor], min_period_s: float = 0.05,
                 keep_s: float = 4.0, tolerance_s: float = 0.1) -> None:
        self.encode = encode
        self.min_period_s = float(min_period_s)
        self.keep_s = float(keep_s)
        self.tolerance_s = float(tolerance_s)
        self._frames: deque[_Frame] = deque()
        self._lock = threading.Lock()
        self.encoded = 0  # frames encoded so far (diagnostics: one per step in steady state)
        self.encode_time_s = 0.0

    def __len__(self) -> int:
        return len(self._frames)

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()

    @property
    def newest_stamp(self) -> float | None:
        with self._lock:
            return self._frames[-1].stamp if self._frames else None

    def add(self, stamp: float, image: np.ndarray) -> bool:
        """Store a frame (not encoded yet). Returns False when skipped (too close / not newer)."""
        with self._lock:
            if self._frames and stamp < self._frames[-1].stamp + self.min_period_s:
                return False
            self._frames.append(_Frame(float(stamp), image))
            while self._frames and self._frames[0].stamp < stamp - self.keep_s:
                self._frames.popleft()
            return True

    def _nearest(self, t: float) -> _Frame | None:
        with self._lock:
            if not self._frames:
                return None
            best = min(self._frames, key=lambda f: abs(f.stamp - t))
        return best if abs(best.stamp - t) <= self.tolerance_s else None

    def _latent(self, frame: _Frame) -> torch.Tensor:
        if frame.latent is None:
            t0 = time.perf_counter()
            frame.latent = self.encode(frame.image)
            self.encode_time_s += time.perf_counter() - t0
            self.encoded += 1
            frame.image = None  # the pixels are not needed any more
        return frame.latent

    def latent_near(self, t: float) -> tuple[float, torch.Tensor] | None:
        """(stamp, latents) of the stored frame nearest ``t`` within ``tolerance_s``, else None."""
        frame = self._nearest(t)
        return None if frame is None else (frame.stamp, self._latent(frame))

    def history(self, now: float, offsets_s: Sequence[float]) -> tuple[torch.Tensor, list[bool]]:
        """Latents (1, len(offsets), gh, gw, C) of the frames nearest ``now + offset``.

        Offsets before the oldest stored frame get the oldest frame and are flagged as padding
        (start-up, as LeRobot pads episode starts); a missing frame inside the stored span raises
        ``LookupError`` naming the time.
        """
        with self._lock:
            oldest = self._frames[0].stamp if self._frames else None
        if oldest is None:
            raise LookupError("no camera frame stored yet")
        latents, pad = [], []
        for off in offsets_s:
            t = now + off
            if t < oldest - self.tolerance_s:
                frame, is_pad = self._nearest(oldest), True
            else:
                frame, is_pad = self._nearest(t), False
            if frame is None:
                raise LookupError(f"no camera frame within {self.tolerance_s} s of t={t:.3f}")
            latents.append(self._latent(frame))
            pad.append(is_pad)
        return torch.stack(latents)[None], pad


# ---------------------------------------------------------------------------------------------- states


class HandStateBuffer:
    """Timestamped EEF poses and gripper values per hand; interpolated hand states at a time (thread-safe)."""

    def __init__(self, hands: Sequence[str], keep_s: float = 4.0) -> None:
        self.hands = list(hands)
        self.keep_s = keep_s
        self._poses: dict[str, deque[tuple[float, np.ndarray, np.ndarray]]] = {h: deque() for h in self.hands}
        self._grippers: dict[str, deque[tuple[float, np.ndarray]]] = {h: deque() for h in self.hands}
        self._commands = {h: CommandLog() for h in self.hands}
        self._lock = threading.Lock()

    def add_pose(self, hand: str, stamp: float, position, quaternion) -> None:
        with self._lock:
            buf = self._poses[hand]
            if buf and stamp <= buf[-1][0]:
                return
            buf.append((float(stamp), np.asarray(position, dtype=np.float64), np.asarray(quaternion, dtype=np.float64)))
            while buf and buf[0][0] < stamp - self.keep_s:
                buf.popleft()

    def add_fingers(self, hand: str, stamp: float, values) -> None:
        with self._lock:
            buf = self._grippers[hand]
            if buf and stamp <= buf[-1][0]:
                return
            buf.append((float(stamp), np.atleast_1d(np.asarray(values, dtype=np.float64))))
            while buf and buf[0][0] < stamp - self.keep_s:
                buf.popleft()

    def add_command(self, hand: str, stamp: float, values) -> None:
        """A finger command sent to the robot at ``stamp`` (for robots whose actions hold commanded fingers)."""
        with self._lock:
            self._commands[hand].add(float(stamp), values)
            self._commands[hand].forget_before(stamp - self.keep_s)

    def command_at(self, hand: str, t: float) -> np.ndarray | None:
        """The finger command in force at ``t``: the last one sent at or before it (None if none)."""
        with self._lock:
            return self._commands[hand].at(t)

    def clear(self) -> None:
        with self._lock:
            for buffers in (self._poses, self._grippers, self._commands):
                for buf in buffers.values():
                    buf.clear()  # deques and CommandLogs

    def newest_stamps(self) -> dict[str, float | None]:
        """Stamp of the newest sample of each stream ("<hand>/pose", "<hand>/gripper"), None if none yet."""
        with self._lock:
            out = {}
            for h in self.hands:
                out[f"{h}/pose"] = self._poses[h][-1][0] if self._poses[h] else None
                out[f"{h}/gripper"] = self._grippers[h][-1][0] if self._grippers[h] else None
            return out

    def latest(self) -> HandsState | None:
        """Newest sample of every stream (None until each hand has a pose and a gripper value)."""
        with self._lock:
            if not all(self._poses[h] and self._grippers[h] for h in self.hands):
                return None
            return {h: HandState.make(self._poses[h][-1][1], self._poses[h][-1][2], self._grippers[h][-1][1])
                    for h in self.hands}

    def at(self, t: float, tolerance_s: float) -> HandsState | None:
        """Hand states interpolated at ``t``; the nearest sample is used up to ``tolerance_s`` outside
        the buffered span. None when a stream has no sample close enough."""
        out = {}
        with self._lock:
            for h in self.hands:
                pose = _interp(self._poses[h], t, tolerance_s, lambda x: HandState.make(x[1], x[2], [0.0]))
                grip = _interp(self._grippers[h], t, tolerance_s, lambda x: x[1])
                if pose is None or grip is None:
                    return None
                out[h] = HandState(pose.position, pose.quaternion, np.asarray(grip, dtype=np.float64))
        return out


def _interp(samples: deque, t: float, tolerance_s: float, value: Callable):
    """Linear (slerp for poses) interpolation of time-sorted ``(stamp, ...)`` samples at ``t``."""
    if not samples:
        return None
    if t <= samples[0][0]:
        return value(samples[0]) if samples[0][0] - t <= tolerance_s else None
    if t >= samples[-1][0]:
        return value(samples[-1]) if t - samples[-1][0] <= tolerance_s else None
    i = bisect.bisect_left([s[0] for s in samples], t)  # stamps only: no per-sample objects
    a, b = samples[i - 1], samples[i]
    alpha = (t - a[0]) / (b[0] - a[0])
    va, vb = value(a), value(b)
    if isinstance(va, HandState):
        return blend_states(va, vb, alpha)
    return va + alpha * (vb - va)
