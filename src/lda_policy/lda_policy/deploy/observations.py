"""Camera-frame latents for deployment: recent frames by stamp, each DINO-encoded at most once.

ROS-free and thread-safe. :class:`FrameLatents` keeps recent camera frames by stamp; each frame is
DINO-encoded at most once, lazily, the first time a model call needs it, so a control step with history
offsets (-0.5 s, 0 s) and a 0.5 s re-planning period encodes only the newest frame (the previous one is
cached from the previous step, and the judge's "future" frames are the policy's next "current" frames:
the model host encodes each frame once for both).
The raw pixels of the newest few frames are kept as well (:meth:`FrameLatents.image_at`): an
image-conditioned VLM reads the current frame once per replan.
(Hand states are in the torch-free :mod:`.hand_states`, which the safety gate shares.)
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

# ---------------------------------------------------------------------------------------------- frames


class NonFiniteLatents(ValueError):
    """The encoder gave NaN/inf latents for a frame (a fault of the model host, never skipped quietly)."""


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
        self._encode_lock = threading.Lock()  # the policy and the judge threads never encode a frame twice
        self.encoded = 0  # frames encoded so far (diagnostics: one per step in steady state)
        self.encode_time_s = 0.0
        # raw pixels of the newest frames (a frame's own copy is dropped once DINO-encoded); a few, so a
        # frame that arrives while a replan runs does not take the image of the frame it started from
        self._recent_images: deque[tuple[float, np.ndarray]] = deque(maxlen=4)

    def __len__(self) -> int:
        return len(self._frames)

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()
            self._recent_images.clear()

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
            self._recent_images.append((float(stamp), image))
            while self._frames and self._frames[0].stamp < stamp - self.keep_s:
                self._frames.popleft()
            return True

    def _nearest(self, t: float, encoded_only: bool = False) -> _Frame | None:
        with self._lock:
            frames = [f for f in self._frames if f.latent is not None] if encoded_only else list(self._frames)
        if not frames:
            return None
        best = min(frames, key=lambda f: abs(f.stamp - t))
        return best if abs(best.stamp - t) <= self.tolerance_s else None

    def _latent(self, frame: _Frame) -> torch.Tensor:
        with self._encode_lock:
            if frame.latent is None:
                t0 = time.perf_counter()
                latent = self.encode(frame.image)
                self.encode_time_s += time.perf_counter() - t0
                self.encoded += 1
                if not torch.isfinite(latent).all():
                    raise NonFiniteLatents(f"NaN/inf in the DINO latents of the camera frame at t={frame.stamp:.3f}")
                frame.latent = latent
                frame.image = None  # the pixels are not needed any more
        return frame.latent

    def image_at(self, stamp: float) -> np.ndarray | None:
        """The raw image of the stored frame with exactly this stamp, if it is among the newest few."""
        with self._lock:
            return next((im for s, im in reversed(self._recent_images) if s == stamp), None)

    def latent_near(self, t: float, encode: bool = True) -> tuple[float, torch.Tensor] | None:
        """(stamp, latents) of the stored frame nearest ``t`` within ``tolerance_s``, else None
        (``encode=False``: among the frames already encoded only, so the caller never waits for DINO)."""
        frame = self._nearest(t, encoded_only=not encode)
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
