"""The recording pipeline shared by the recorder node and the bag converter (ROS-free).

Serialized messages ``(topic, receive_time_ns, cdr)`` go in, in arrival order, together with start and
stop commands; LeRobot episodes come out. The node feeds it from raw subscriptions, ``lda-bag2lerobot``
from a bag's messages in log-time order: both run exactly this code.

    recorder = EpisodeRecorder(config, store)
    recorder.start(task="pick the can", now_ns=t)        # messages received from here on belong to it
    recorder.ingest(topic, receive_ns, cdr)              # ... for every message
    pending = recorder.finish(now_ns=t2, quality="high") # stop: decide the last frames
    index = pending.save()                               # slow part (encoding tail, commit)
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from lda_common.action_space import HandCentricActionSpace
from lda_common.alignment import BadSample, CommandLog, FrameSync, Tick
from lda_common.bag_io import EVENTS_MSGTYPE, BagWriter, serialize, typestore
from lda_common.episode_writer import DatasetError, DatasetStore, EpisodeWriter, SaveError
from lda_common.messages import (
    Topics,
    check_raw_image,
    compressed_to_rgb,
    deserialize,
    fingers_from_joint_state,
    keypoints_from_pose_array,
    peek_stamp_ns,
    pose_from_msg,
    raw_image_to_rgb,
    stamp_ns,
)
from lda_common.robot_config import CameraConfig, HandConfig, RobotConfig
from lda_common.schema import QUALITIES

DEFAULT_EVENTS_TOPIC = Topics.EPISODE_EVENTS


class RecorderError(RuntimeError):
    """A command that cannot be carried out now (start while recording, stop while idle, no task...)."""


@dataclass(frozen=True)
class Stream:
    id: str  # camera:<name> | pose:<hand> | fingers:<hand> | command:<hand>
    topic: str
    msgtype: str
    camera: CameraConfig | None = None
    hand: HandConfig | None = None

    @property
    def kind(self) -> str:
        return self.id.split(":")[0]

    @property
    def label(self) -> str:
        kind, name = self.id.split(":")
        return {"camera": f"camera {name}", "pose": f"{name} EEF pose", "fingers": f"{name} fingers",
                "command": f"{name} gripper command"}[kind] + f" ({self.topic})"


def streams_of(config: RobotConfig) -> list[Stream]:
    out = [Stream(f"camera:{c.name}", c.topic, c.msgtype, camera=c) for c in config.cameras]
    for h in config.hands:
        out.append(Stream(f"pose:{h.name}", h.pose_topic, "geometry_msgs/msg/PoseStamped", hand=h))
        out.append(Stream(f"fingers:{h.name}", h.gripper_topic, h.finger_msgtype, hand=h))
        if h.gripper_command_topic:  # not synchronised: a command holds until the next one (zero-order hold)
            out.append(Stream(f"command:{h.name}", h.gripper_command_topic, "sensor_msgs/msg/JointState", hand=h))
    return out


class StreamRates:
    """Each stream's received rate against the rate its publisher stamps at, over the last ``window_s``.

    The expected rate comes from the messages' own stamps: the median interval between consecutive stamps
    received. No rate needs configuring, and a loss shows while recording: 60 messages received in a second
    from a stream stamped every 10 ms are 60 of 100 Hz. (The median holds while fewer than half of the
    intervals span a lost message.) Called from the worker (``add``) and the diagnostics timer (``rates``).
    """

    def __init__(self, window_s: float = 2.0):
        self.window_ns = int(window_s * 1e9)
        self._seen: dict[str, deque[tuple[int, int | None]]] = {}  # topic -> (receive ns, stamp ns)
        self._lock = threading.Lock()

    def add(self, topic: str, receive_ns: int, stamp_ns: int | None) -> None:
        with self._lock:
            seen = self._seen.setdefault(topic, deque())
            seen.append((receive_ns, stamp_ns))
            while seen[0][0] < receive_ns - self.window_ns:
                seen.popleft()

    def rates(self, now_ns: int) -> dict[str, tuple[float, float | None]]:
        """topic -> (received Hz, expected Hz or None when the stamps do not tell)."""
        out = {}
        with self._lock:
            items = {topic: list(seen) for topic, seen in self._seen.items()}
        for topic, seen in items.items():
            # the expected rate from the last window of messages, even when none came recently (a silent
            # stream then reads "0 of 30 Hz")
            steps = np.diff([st for _, st in seen if st]) if len(seen) >= 3 else np.zeros(0)
            steps = steps[steps > 0]
            expected = 1e9 / float(np.median(steps)) if steps.size >= 2 else None
            received = sum(1 for r, _ in seen if r >= now_ns - self.window_ns)
            span = min(self.window_ns, max(now_ns - seen[0][0], 1))
            out[topic] = (received * 1e9 / span, expected)
        return out


class Diagnostics:
    """Counters, stream rates and recent problems; logs each kind of problem the first time and then every 100th."""

    def __init__(self, log: Callable[[str, str], None]):
        self._log = log
        self.received: Counter[str] = Counter()
        self.rates = StreamRates()
        self.rejected: Counter[str] = Counter()
        self.recent: deque[tuple[float, str]] = deque(maxlen=20)
        self._kinds: Counter[str] = Counter()
        self.error: str | None = None

    def problem(self, subject: str, reason: str, level: str = "warn", throttle: bool = True) -> None:
        """Record a problem; log it unless the same kind was logged already in this episode (then every
        100th). ``throttle=False`` for messages that are already aggregated (gap reports)."""
        kind = subject + ":" + re.sub(r"[-+0-9.e]+", "#", reason)
        self._kinds[kind] += 1
        n = self._kinds[kind]
        text = f"{subject}: {reason}"
        self.recent.append((time.monotonic(), text))
        if not throttle or n == 1 or n % 100 == 0:
            self._log(level, text + (f" (x{n})" if n > 1 and throttle else ""))

    def new_episode(self) -> None:
        self._kinds.clear()

    def recent_problems(self, within_s: float) -> list[str]:
        now = time.monotonic()
        return [text for t, text in list(self.recent) if now - t <= within_s]  # list(): the worker appends


@dataclass
class _Gap:
    first_tick: int
    ticks: int = 0
    last_seen_ns: int | None = None


@dataclass
class EpisodeSummary:
    index: int
    frames: int
    quality: str
    task: str
    dropped_ticks: int
    action_valid_frames: int
    bag: str | None = None
    save_s: float = 0.0

    def describe(self) -> str:
        text = (f"saved episode {self.index} ({self.quality}, {self.frames} frames, "
                f"{self.action_valid_frames} valid actions, task '{self.task}')")
        if self.dropped_ticks:
            text += f"; {self.dropped_ticks} tick(s) without complete data were dropped"
        return text


class EpisodeRecorder:
    """Turns ordered serialized messages and start/stop commands into saved LeRobot episodes."""

    def __init__(self, config: RobotConfig, store: DatasetStore, *, bag_dir: str | Path | None = None,
                 default_task: str = "", events_topic: str = DEFAULT_EVENTS_TOPIC, source: str = "teleop_recorder",
                 log: Callable[[str, str], None] | None = None):
        self.config = config
        self.store = store
        self.space = HandCentricActionSpace(config)
        self.streams = streams_of(config)
        self.by_topic = {s.topic: s for s in self.streams}
        self.reference = self.streams[0].id  # the first camera anchors the 10 Hz grid
        self.default_task = default_task
        self.events_topic = events_topic
        self.source = source
        self.bag_dir = Path(bag_dir).expanduser().absolute() if bag_dir else None
        self.diag = Diagnostics(log or (lambda level, text: None))
        self.instruction: str | None = None
        self._seeds: dict[str, tuple[int, bytes]] = {}
        self._episode: _Episode | None = None
        self._topics = {s.topic: s.msgtype for s in self.streams}
        self._topics[config.instruction_topic] = "std_msgs/msg/String"
        if self.bag_dir is not None:
            self._clean_bags()

    # -- inputs ------------------------------------------------------------------------------------
    def topics(self) -> dict[str, str]:
        """Every topic to subscribe to (or read from a bag) -> message type."""
        return dict(self._topics)

    @property
    def recording(self) -> bool:
        return self._episode is not None

    @property
    def episode(self) -> _Episode | None:
        return self._episode

    def ingest(self, topic: str, receive_ns: int, cdr: bytes | memoryview) -> None:
        """One serialized message as received; messages must come in arrival order."""
        self.diag.received[topic] += 1
        ep = self._episode
        if ep is not None and ep.bag is not None and topic in self._topics:
            try:
                ep.bag.write(topic, self._topics[topic], receive_ns, cdr)
            except Exception as exc:  # noqa: BLE001 - a failing bag must not stop the dataset recording
                self.diag.problem("episode bag", f"writing failed, bag dropped: {exc}", "error")
                ep.bag.abort()
                ep.bag = None
        if topic == self.config.instruction_topic:
            try:
                text = str(deserialize(cdr, "std_msgs/msg/String").data).strip()
            except BadSample as exc:
                self.diag.problem("instruction", str(exc))
                return
            if text:
                self.instruction = text
            return
        stream = self.by_topic.get(topic)
        if stream is None:
            return
        self.diag.rates.add(topic, receive_ns, peek_stamp_ns(cdr))
        if ep is None:
            if stream.id != self.reference:
                self._seeds[stream.id] = (receive_ns, bytes(cdr))  # pre-roll for the next episode's first tick
            return
        ep.push(stream, cdr)

    # -- commands ----------------------------------------------------------------------------------
    def start(self, task: str = "", now_ns: int = 0, require_task: bool = True) -> int:
        """Start an episode; returns the index it will have once saved. Raises RecorderError/DatasetError.

        Without ``task`` the episode's task is the last instruction received before it stops (or
        ``default_task``); ``require_task`` refuses to start when none is known yet.
        """
        if self._episode is not None:
            raise RecorderError(f"already recording episode {self._episode.writer.index}; stop it first")
        task = task.strip()
        if require_task and not task and not self.instruction and not self.default_task:
            raise RecorderError(f"no task: pass StartEpisode.task, publish the instruction on "
                                f"{self.config.instruction_topic}, or set the default_task parameter")
        writer = self.store.new_episode()
        bag = None
        if self.bag_dir is not None:
            try:
                bag = BagWriter(self.bag_dir / f".partial-{os.getpid()}-{writer.index}-{time.monotonic_ns()}")
            except Exception as exc:  # noqa: BLE001
                self.diag.problem("episode bag", f"cannot open a bag, recording without one: {exc}", "error")
        ep = _Episode(self, writer, task, bag)
        self._episode = ep
        self.diag.new_episode()
        if bag is not None:
            ep.write_event(now_ns, {"event": "start", "episode": writer.index, "task": task,
                                    "robot": self.config.robot})
        for stream_id, (recv_ns, cdr) in sorted(self._seeds.items()):
            stream = next(s for s in self.streams if s.id == stream_id)
            if bag is not None:
                bag.write(stream.topic, stream.msgtype, recv_ns, cdr)
            ep.seeds[stream_id] = cdr
        self._seeds.clear()
        return writer.index

    def finish(self, now_ns: int = 0, quality: str | None = "high") -> PendingEpisode:
        """Stop recording. ``quality`` None means discard. Returns the episode to save (or already discarded)."""
        ep = self._episode
        if ep is None:
            raise RecorderError("not recording: start an episode first")
        if quality is not None and quality not in QUALITIES:
            raise RecorderError(f"unknown quality '{quality}': one of {list(QUALITIES)} (or discard)")
        self._episode = None
        ep.handle(ep.sync.poll(final=True))
        ep.close_gaps(final=True)
        event = {"event": "stop", "episode": ep.writer.index, "quality": quality} if quality else \
            {"event": "discard", "episode": ep.writer.index}
        ep.write_event(now_ns, event)
        task = ep.task or self.instruction or self.default_task
        pending = PendingEpisode(self, ep, quality, task)
        if quality is None:
            pending.discard()
        return pending

    def event_json(self, event: dict[str, Any]) -> str:
        return json.dumps(event, sort_keys=True)

    def _clean_bags(self) -> None:
        if not self.bag_dir.is_dir():
            return
        total = self.store.num_episodes
        for p in self.bag_dir.iterdir():
            m = re.fullmatch(r"episode_(\d+)", p.name)
            if p.name.startswith(".partial-") or (m and int(m.group(1)) >= total):
                shutil.rmtree(p, ignore_errors=True)


class _Episode:
    """The state of the episode being recorded."""

    def __init__(self, rec: EpisodeRecorder, writer: EpisodeWriter, task: str, bag: BagWriter | None):
        self.rec = rec
        self.writer = writer
        self.task = task
        self.bag = bag
        cfg = rec.config
        self.first_image: dict[str, tuple[str, int, int]] = {}  # per camera: encoding, width, height
        converters: dict[str, Callable[[Any], Any]] = {}
        for s in rec.streams:
            if s.kind == "camera":
                converters[s.id] = functools.partial(self._convert_image, s)
        synced = [s.id for s in rec.streams if s.kind != "command"]
        self.sync = FrameSync(synced, rec.reference, period_ns=round(1e9 / cfg.fps),
                              tolerance_ns=round(cfg.tolerance_s * 1e9), max_latency_ns=round(cfg.max_latency_s * 1e9),
                              converters=converters, on_reject=self._on_reject)
        self.by_id = {s.id: s for s in rec.streams}
        self.states: list[np.ndarray] = []
        self.ticks: list[int] = []
        self.rejected: Counter[str] = Counter()
        self.gaps: dict[str, _Gap] = {}
        self.last_used: dict[str, int] = {}
        self.seeds: dict[str, bytes] = {}  # stream -> last message before the start
        self.commands = {s.hand.name: CommandLog() for s in rec.streams if s.kind == "command"}  # stamps in ns
        self.dropped_ticks = 0
        self.failed: str | None = None
        self.started_wall = time.time()

    # -- input -------------------------------------------------------------------------------------
    def _decode(self, stream: Stream, cdr: bytes | memoryview) -> tuple[int, Any]:
        msg = deserialize(cdr, stream.msgtype)
        stamp = stamp_ns(msg)
        if stamp <= 0:
            raise BadSample("header.stamp is zero (the publisher does not stamp its messages)")
        return stamp, self._parse(stream, msg)

    def push(self, stream: Stream, cdr: bytes | memoryview) -> None:
        try:
            stamp, value = self._decode(stream, cdr)
        except BadSample as exc:
            self._reject(stream, str(exc))
            return
        if stream.kind == "command":
            self._add_command(stream, stamp, value)
            return
        had_t0 = self.sync.t0 is not None
        why = self.sync.push(stream.id, stamp, value)
        if why:
            self._reject(stream, f"timestamp {why}; message dropped")
            return
        if not had_t0 and self.sync.t0 is not None:
            self._apply_seeds()
        self.handle(self.sync.poll())

    def _apply_seeds(self) -> None:
        """The last message of each stream before the start may serve the first tick (if close enough)."""
        tol = round(self.rec.config.tolerance_s * 1e9)
        for stream_id, cdr in self.seeds.items():
            try:
                stamp, value = self._decode(self.by_id[stream_id], cdr)
            except BadSample:
                continue
            if self.by_id[stream_id].kind == "command":  # the last command before the start still holds
                self.commands[self.by_id[stream_id].hand.name].prepend(stamp, value)
            elif abs(stamp - self.sync.t0) <= tol:
                self.sync.prepend(stream_id, stamp, value)
        self.seeds.clear()

    def _add_command(self, stream: Stream, stamp: int, value: np.ndarray) -> None:
        log = self.commands[stream.hand.name]
        if not log.add(stamp, value):
            self._reject(stream, f"timestamp {stamp / 1e9:.6f} s goes backwards from the previous command's "
                                 f"{log.stamps[-1] / 1e9:.6f} s; message dropped")

    def commanded_fingers(self, actions: np.ndarray, valid: np.ndarray) -> None:
        """Put the operator's finger command in force at each frame's tick into its action (in place).

        A command counts from its stamp (within the tolerance) until the next one. Frames before a hand's
        first command have no known finger action: they are marked invalid, and the problem is logged.
        """
        cfg = self.rec.config
        if not self.commands or self.sync.t0 is None:
            return
        ticks_ns = [self.sync.t0 + tick * round(1e9 / cfg.fps) for tick in self.ticks]
        for hand, log in self.commands.items():
            unknown = self.rec.space.put_commanded_fingers(actions, valid, hand, ticks_ns, log,
                                                           round(cfg.tolerance_s * 1e9))
            if unknown:
                stream = self.by_id[f"command:{hand}"]
                self.rec.diag.problem(stream.label, f"no command in force for the first {unknown} frame(s); "
                                                    "their actions are marked invalid", throttle=False)

    def _convert_image(self, stream: Stream, msg) -> np.ndarray:
        if stream.camera.type == "raw":
            return raw_image_to_rgb(msg, stream.camera)
        first = self.first_image.get(stream.id)
        img = compressed_to_rgb(msg, stream.camera, first)
        if first is None:
            # compressed_to_rgb checks later images against the size as published, not as resized (a 640x480
            # JPEG stream stored at 224x224 must not read as a size change): decode the first one's size again
            h, w = img.shape[:2]
            if stream.camera.resize:
                import cv2

                h, w = cv2.imdecode(np.asarray(msg.data, dtype=np.uint8), cv2.IMREAD_COLOR).shape[:2]
            self.first_image[stream.id] = (msg.format, w, h)
        return img

    def _parse(self, stream: Stream, msg) -> Any:
        cfg = self.rec.config
        if stream.kind == "camera":
            if stream.camera.type == "raw":
                check_raw_image(msg, stream.camera, self.first_image.get(stream.id))
                self.first_image.setdefault(stream.id, (msg.encoding, msg.width, msg.height))
            return msg
        if stream.kind == "pose":
            return pose_from_msg(msg, cfg.quaternion_tolerance, cfg.base_frame)
        if stream.hand.fingers.type == "keypoints":
            return keypoints_from_pose_array(msg, stream.hand.fingers)
        return fingers_from_joint_state(msg, stream.hand.fingers)

    def _reject(self, stream: Stream, reason: str) -> None:
        self.rejected[stream.id] += 1
        self.rec.diag.rejected[stream.id] += 1
        self.rec.diag.problem(stream.label, reason)

    def _on_reject(self, stream_id: str, stamp: int, reason: str) -> None:
        self._reject(self.by_id[stream_id], reason)

    # -- frames ------------------------------------------------------------------------------------
    def handle(self, ticks: list[Tick]) -> None:
        for tick in ticks:
            if not tick.complete:
                self.dropped_ticks += 1
                for sid in tick.missing:
                    gap = self.gaps.get(sid)
                    if gap is None:
                        gap = self.gaps[sid] = _Gap(first_tick=tick.index, last_seen_ns=self.last_used.get(sid))
                    gap.ticks += 1
                continue
            self.close_gaps()
            self.last_used.update(tick.stamps)
            if self.failed:
                continue
            images = {c.name: tick.values[f"camera:{c.name}"] for c in self.rec.config.cameras}
            per_hand = {h.name: (*tick.values[f"pose:{h.name}"], tick.values[f"fingers:{h.name}"])
                        for h in self.rec.config.hands}
            state = self.rec.space.state(per_hand)
            try:
                self.writer.add_frame(images, state, tick.index)
            except Exception as exc:  # noqa: BLE001 - e.g. the encoder died on a full disk
                self.failed = f"recording failed at frame {len(self.states)}: {type(exc).__name__}: {exc}"
                self.rec.diag.problem("episode", self.failed + "; stop and discard this episode", "error")
                continue
            self.states.append(state)
            self.ticks.append(tick.index)

    def close_gaps(self, final: bool = False) -> None:
        period = 1.0 / self.rec.config.fps
        tol = self.rec.config.tolerance_s
        t0 = self.sync.t0 or 0
        for sid, gap in list(self.gaps.items()):
            stream = self.by_id[sid]
            start = gap.first_tick * period
            end = (gap.first_tick + gap.ticks - 1) * period
            since = "" if gap.last_seen_ns is None else f"; last used sample at {(gap.last_seen_ns - t0) / 1e9:.3f} s"
            self.rec.diag.problem(stream.label,
                                  f"no usable sample within {tol * 1000:.0f} ms of {gap.ticks} tick(s) at "
                                  f"{start:.3f}-{end:.3f} s into the episode (silent or rejected{since}); "
                                  "those ticks were dropped", throttle=False)
            del self.gaps[sid]

    def write_event(self, now_ns: int, event: dict[str, Any]) -> None:
        if self.bag is None:
            return
        msg = typestore().types[EVENTS_MSGTYPE](data=self.rec.event_json(event))
        try:
            self.bag.write(self.rec.events_topic, EVENTS_MSGTYPE, now_ns, serialize(msg, EVENTS_MSGTYPE))
        except Exception as exc:  # noqa: BLE001
            self.rec.diag.problem("episode bag", f"writing failed, bag dropped: {exc}", "error")
            self.bag.abort()
            self.bag = None


class PendingEpisode:
    """A stopped episode: ``save()`` encodes the tail, computes the actions and commits it."""

    def __init__(self, rec: EpisodeRecorder, ep: _Episode, quality: str | None, task: str):
        self.rec, self.ep, self.quality, self.task = rec, ep, quality, task
        self.index = ep.writer.index
        self.frames = len(ep.states)

    def discard(self) -> None:
        self.ep.writer.discard()
        if self.ep.bag is not None:
            self.ep.bag.abort()
            self.ep.bag = None

    def save(self) -> EpisodeSummary:
        """Commit the episode to the dataset (and its bag beside it). Raises SaveError/DatasetError."""
        ep, rec = self.ep, self.rec
        if self.quality is None:
            raise RecorderError("episode was discarded")
        if ep.failed:
            self.discard()
            raise SaveError(ep.failed + "; the episode was discarded")
        started = time.monotonic()
        states = np.array(ep.states) if ep.states else np.zeros((0, rec.config.state_dim))
        step_ok = np.diff(np.array(ep.ticks, dtype=np.int64)) == 1
        actions, valid = rec.space.actions_from_states(states, step_ok)
        ep.commanded_fingers(actions, valid)
        bag_rel = None
        final_bag = None
        if ep.bag is not None:
            try:
                final_bag = ep.bag.commit(rec.bag_dir / f"episode_{self.index:06d}")
                ep.bag = None
                bag_rel = os.path.relpath(final_bag, rec.store.root)
            except Exception as exc:  # noqa: BLE001
                rec.diag.problem("episode bag", f"could not be saved: {exc}", "error")
                ep.bag.abort()
                ep.bag = None
        info = {"robot": rec.config.robot, "source": rec.source, "dropped_ticks": ep.dropped_ticks,
                "rejected_messages": dict(ep.rejected), "start_stamp_ns": ep.sync.t0, "bag": bag_rel}
        try:
            index = ep.writer.save(self.quality, self.task, actions, valid, info)
        except DatasetError:
            if final_bag is not None:
                shutil.rmtree(final_bag, ignore_errors=True)
            raise
        return EpisodeSummary(index=index, frames=self.frames, quality=self.quality, task=self.task,
                              dropped_ticks=ep.dropped_ticks, action_valid_frames=int(valid.sum())
                              if self.quality != "actionless" else 0, bag=bag_rel,
                              save_s=time.monotonic() - started)
