"""Timestamped hand states for deployment: EEF poses, finger values and sent finger commands per hand.

ROS-free and torch-free (the safety gate uses it too). :class:`HandStateBuffer` interpolates the hand
states at a time (slerp for orientations) and remembers the finger commands in force.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np
from lda_common.alignment import CommandLog
from lda_common.geometry import HandsState, HandState, blend_states


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
