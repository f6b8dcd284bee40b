"""Stamped-sample alignment: asynchronous streams (cameras, EEF poses, fingers) on a fixed-rate tick grid
by timestamp (:class:`FrameSync`), and stamped commands held until the next (:class:`CommandLog`).

ROS-free and clock-free: time is the messages' own stamps (``header.stamp`` in ns), so a live node and a
bag replay of the same messages give the same frames.

* The grid starts at the first sample of the **reference** stream (the first camera):
  ``t_k = t_0 + k * period``.
* For tick ``k`` every stream contributes its sample nearest to ``t_k``, if within ``tolerance``.
  A value converter may reject a chosen sample (a corrupt image, say); the next nearest is tried.
* A tick is decided once no better sample can arrive: every stream has a sample later than
  ``t_k + tolerance`` (stamps per stream only increase), or the newest stamp seen on any stream is
  more than ``tolerance + max_latency`` past ``t_k`` (a stream fell silent), or the episode ends.
* A decided tick with a sample from every stream is a frame; otherwise a gap naming the missing streams.
  When the episode ends, ticks up to the newest stamp are decided; incomplete ones within the last two
  periods are dropped silently (the streams stop a little apart), earlier ones are gaps.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class BadSample(ValueError):
    """Raised by a stream converter for a sample that must not be recorded; the message says why."""


@dataclass
class Sample:
    stamp_ns: int
    value: Any
    converted: Any = None
    done: bool = False  # converted (or rejected) already
    error: str | None = None


@dataclass
class Tick:
    index: int  # ticks since t_0
    stamp_ns: int
    values: dict[str, Any] = field(default_factory=dict)  # stream -> converted value (complete ticks)
    stamps: dict[str, int] = field(default_factory=dict)  # stream -> stamp of the chosen sample
    missing: list[str] = field(default_factory=list)  # streams without a usable sample within tolerance

    @property
    def complete(self) -> bool:
        return not self.missing


class FrameSync:
    """Push samples per stream, poll decided ticks. See the module docstring for the rules."""

    def __init__(self, streams: Sequence[str], reference: str, period_ns: int, tolerance_ns: int,
                 max_latency_ns: int, converters: dict[str, Callable[[Any], Any]] | None = None,
                 on_reject: Callable[[str, int, str], None] | None = None):
        if reference not in streams:
            raise ValueError(f"reference stream '{reference}' is not one of {list(streams)}")
        if not 0 < tolerance_ns < period_ns:
            raise ValueError("tolerance must be positive and below one period")
        self.streams = list(streams)
        self.reference = reference
        self.period_ns = int(period_ns)
        self.tolerance_ns = int(tolerance_ns)
        self.max_latency_ns = int(max_latency_ns)
        self.converters = converters or {}
        self.on_reject = on_reject
        self._buf: dict[str, list[Sample]] = {s: [] for s in self.streams}
        self._stamps: dict[str, list[int]] = {s: [] for s in self.streams}
        self.last_stamp: dict[str, int | None] = dict.fromkeys(self.streams)
        self.t0: int | None = None
        self.next_tick = 0
        self.newest_ns: int | None = None
        self.max_lag_ns: dict[str, int] = dict.fromkeys(self.streams, 0)  # how far behind the newest stamp

    # -- input -------------------------------------------------------------------------------------
    def push(self, stream: str, stamp_ns: int, value: Any) -> str | None:
        """Add a sample; returns why it was refused (stamp not after the stream's previous one), else None."""
        last = self.last_stamp[stream]
        if last is not None and stamp_ns <= last:
            what = "repeats" if stamp_ns == last else "goes backwards from"
            return f"stamp {stamp_ns / 1e9:.6f} s {what} the previous {last / 1e9:.6f} s"
        self.last_stamp[stream] = stamp_ns
        self._buf[stream].append(Sample(stamp_ns, value))
        self._stamps[stream].append(stamp_ns)
        if self.newest_ns is None or stamp_ns > self.newest_ns:
            self.newest_ns = stamp_ns
        elif self.t0 is not None:
            self.max_lag_ns[stream] = max(self.max_lag_ns[stream], self.newest_ns - stamp_ns)
        if stream == self.reference and self.t0 is None:
            self.t0 = stamp_ns
        return None

    def prepend(self, stream: str, stamp_ns: int, value: Any) -> bool:
        """Add a sample older than every buffered sample of ``stream`` (the pre-roll before an episode).

        Returns False (and adds nothing) when the stream already has a sample at or before that stamp.
        """
        stamps = self._stamps[stream]
        if stamps and stamp_ns >= stamps[0]:
            return False
        self._buf[stream].insert(0, Sample(stamp_ns, value))
        stamps.insert(0, stamp_ns)
        if self.last_stamp[stream] is None:
            self.last_stamp[stream] = stamp_ns
        return True

    # -- output ------------------------------------------------------------------------------------
    def tick_stamp(self, k: int) -> int:
        assert self.t0 is not None
        return self.t0 + k * self.period_ns

    def _decidable(self, t: int) -> bool:
        if self.newest_ns is not None and self.newest_ns > t + self.tolerance_ns + self.max_latency_ns:
            return True
        return all(last is not None and last > t + self.tolerance_ns for last in self.last_stamp.values())

    def poll(self, final: bool = False) -> list[Tick]:
        """Decided ticks since the last poll, in order. ``final``: the episode ended, decide all."""
        out: list[Tick] = []
        if self.t0 is None:
            return out
        end = self.newest_ns + self.tolerance_ns if final else None
        while True:
            t = self.tick_stamp(self.next_tick)
            if final:
                if t > end:
                    break
            elif not self._decidable(t):
                break
            out.append(self._decide(self.next_tick, t))
            self.next_tick += 1
            self._prune(t + self.period_ns - self.tolerance_ns)
        if final:
            # Streams end a little apart when recording stops: incomplete ticks in the last two periods
            # before the newest stamp are after the episode's end, not gaps. Earlier ones are gaps.
            while out and not out[-1].complete and out[-1].stamp_ns > self.newest_ns - 2 * self.period_ns:
                out.pop()
        return out

    def _decide(self, k: int, t: int) -> Tick:
        tick = Tick(index=k, stamp_ns=t)
        for s in self.streams:
            sample = self._choose(s, t)
            if sample is None:
                tick.missing.append(s)
            else:
                tick.values[s] = sample.converted
                tick.stamps[s] = sample.stamp_ns
        if tick.missing:
            tick.values.clear()
        return tick

    def _choose(self, stream: str, t: int) -> Sample | None:
        buf, stamps = self._buf[stream], self._stamps[stream]
        lo = bisect.bisect_left(stamps, t - self.tolerance_ns)
        hi = bisect.bisect_right(stamps, t + self.tolerance_ns)
        candidates = sorted(buf[lo:hi], key=lambda smp: (abs(smp.stamp_ns - t), smp.stamp_ns))
        convert = self.converters.get(stream)
        for sample in candidates:
            if not sample.done:
                sample.done = True
                if convert is None:
                    sample.converted = sample.value
                else:
                    try:
                        sample.converted = convert(sample.value)
                    except BadSample as exc:
                        sample.error = str(exc)
                        if self.on_reject:
                            self.on_reject(stream, sample.stamp_ns, str(exc))
                sample.value = None  # the raw message is not needed any more
            if sample.error is None:
                return sample
        return None

    def _prune(self, before_ns: int) -> None:
        """Forget samples too old for any tick still to come."""
        for s in self.streams:
            stamps = self._stamps[s]
            cut = bisect.bisect_left(stamps, before_ns)
            if cut:
                del stamps[:cut]
                del self._buf[s][:cut]


class CommandLog:
    """Stamped commands with zero-order hold: the command in force at ``t`` is the last one stamped at or
    before ``t``. Of two commands with one stamp the later holds; an older stamp than the last is refused.
    Stamps in any one unit (ns in the recorder, s in the policy node)."""

    def __init__(self) -> None:
        self.stamps: list = []
        self.values: list[np.ndarray] = []

    def add(self, stamp, value) -> bool:
        """Store a command; False (nothing stored) when ``stamp`` is older than the last command's."""
        if self.stamps and stamp < self.stamps[-1]:
            return False
        value = np.atleast_1d(np.asarray(value, dtype=np.float64))
        if self.stamps and stamp == self.stamps[-1]:
            self.values[-1] = value
        else:
            self.stamps.append(stamp)
            self.values.append(value)
        return True

    def prepend(self, stamp, value) -> None:
        """A command from before every stored one (the last one before a recording started)."""
        if not self.stamps or stamp < self.stamps[0]:
            self.stamps.insert(0, stamp)
            self.values.insert(0, np.atleast_1d(np.asarray(value, dtype=np.float64)))

    def at(self, t) -> np.ndarray | None:
        k = bisect.bisect_right(self.stamps, t) - 1
        return None if k < 0 else self.values[k].copy()

    def forget_before(self, t) -> None:
        """Drop commands no longer needed to answer ``at`` for times >= ``t`` (keeps the one in force)."""
        k = bisect.bisect_right(self.stamps, t) - 1
        if k > 0:
            del self.stamps[:k], self.values[:k]

    def clear(self) -> None:
        self.stamps.clear()
        self.values.clear()
