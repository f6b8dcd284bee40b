"""Ring buffer of DINO-encoded frames so each control step encodes only the newest camera frame."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

import torch


class LatentHistory:
    """Keeps the latents of recent frames by timestamp and assembles the model's history input.

    ``encode`` maps a batch of one image to (1, gh, gw, C) latents, e.g.
    ``lambda im: pool_latents(dino.encode(im), model.config.latent_grid)``. :meth:`add` encodes and
    stores one frame; :meth:`latents` picks, for each offset in ``offsets_s`` (e.g. (-0.5, 0.0)),
    the stored frame nearest to ``now + offset``. Before enough history exists (start-up), offsets
    older than the oldest frame get the oldest frame and are flagged as padding, as LeRobot pads
    the start of an episode. A gap larger than ``tolerance_s`` inside the buffered span raises
    ``LookupError`` (a camera stall should not be silently papered over).
    """

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], offsets_s: Sequence[float],
                 tolerance_s: float = 0.1, capacity: int = 64) -> None:
        if not offsets_s:
            raise ValueError("offsets_s must not be empty")
        self.encode = encode
        self.offsets_s = tuple(float(o) for o in offsets_s)
        self.tolerance_s = tolerance_s
        self._frames: deque[tuple[float, torch.Tensor]] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._frames)

    def clear(self) -> None:
        self._frames.clear()

    def add(self, timestamp: float, image: torch.Tensor) -> torch.Tensor:
        """Encodes ``image`` (one frame, batched as the encoder expects) taken at ``timestamp`` seconds."""
        if self._frames and timestamp <= self._frames[-1][0]:
            raise ValueError(f"timestamp {timestamp} is not after the newest frame ({self._frames[-1][0]})")
        latent = self.encode(image)
        if latent.dim() != 4 or latent.shape[0] != 1:
            raise ValueError(f"encode must return (1, gh, gw, C) for one frame, got {tuple(latent.shape)}")
        self._frames.append((float(timestamp), latent[0]))
        return latent[0]

    def latents(self, now: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents (1, len(offsets_s), gh, gw, C) for time ``now`` (default: newest frame) and an
        ``is_pad`` (len(offsets_s),) bool tensor marking start-up padding."""
        if not self._frames:
            raise LookupError("no frame has been added yet")
        times = torch.tensor([t for t, _ in self._frames], dtype=torch.float64)
        now = float(times[-1]) if now is None else float(now)
        picked, pad = [], []
        for offset in self.offsets_s:
            target = now + offset
            if target < times[0] - self.tolerance_s:
                picked.append(0)
                pad.append(True)
                continue
            i = int(torch.argmin((times - target).abs()))
            if abs(float(times[i]) - target) > self.tolerance_s:
                raise LookupError(f"no frame within {self.tolerance_s} s of t={target:.3f} "
                                  f"(nearest at {float(times[i]):.3f})")
            picked.append(i)
            pad.append(False)
        stacked = torch.stack([self._frames[i][1] for i in picked])
        return stacked.unsqueeze(0), torch.tensor(pad)
