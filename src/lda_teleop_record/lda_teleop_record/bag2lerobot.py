"""lda-bag2lerobot: convert a rosbag2 recording (MCAP or sqlite3) into LeRobot episodes.

    lda-bag2lerobot --bag BAG --out DIR --robot-config YAML --quality {high,low,actionless} [--task TEXT]

Runs the recorder node's own pipeline (``recording.EpisodeRecorder``) over the bag's messages in log-time
order. One bag is one episode, unless the bag holds the recorder's episode events (``/lda/episode_events``,
e.g. a whole session taped with ``ros2 bag record``, or an episode bag the recorder wrote): then each
start/stop pair is an episode with the label and task of its events (``--quality``/``--task`` override
them). Appends to DIR if it already holds a dataset of the same robot layout.

Exit codes: 0 episodes saved, 1 nothing could be saved, 2 bad arguments, config, bag or dataset.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from lda_common.schema import QUALITIES

os.environ.setdefault("SVT_LOG", "1")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lda-bag2lerobot", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bag", required=True, help="rosbag2 directory, .mcap or .db3 file")
    p.add_argument("--out", required=True, help="LeRobot dataset root (created, or appended to)")
    p.add_argument("--robot-config", required=True, help="robot YAML, e.g. config/robots/sim_panda.yaml")
    p.add_argument("--quality", choices=QUALITIES,
                   help="quality label of the episode(s); required unless the bag holds episode events")
    p.add_argument("--task", default="", help="task text (default: the bag's last instruction message)")
    p.add_argument("--repo-id", default=None, help="LeRobot repo id stored in a new dataset")
    p.add_argument("--events-topic", default=None, help="episode events topic (default /lda/episode_events)")
    p.add_argument("--video-codec", default="h264",
                   help="video codec of a new dataset (default h264, as the recorder; libsvtav1 is LeRobot's default)")
    p.add_argument("--video-preset", default="", help="encoder preset (default: the codec's, veryfast for h264)")
    p.add_argument("--video-crf", type=int, default=-1, help="encoder quality (default: the codec's, 23 for h264)")
    p.add_argument("--min-free-disk-mb", type=float, default=200.0, help="refuse to save below this free space")
    return p


class _Fail(Exception):
    pass


def convert(args: argparse.Namespace, out=None, err=None) -> int:
    from lda_common.bag_io import BagError, bag_info, read_messages
    from lda_common.episode_writer import DatasetError, DatasetStore
    from lda_common.robot_config import ConfigError, load_robot_config

    from .recording import DEFAULT_EVENTS_TOPIC, EpisodeRecorder, RecorderError, streams_of

    out, err = out or sys.stdout, err or sys.stderr
    events_topic = args.events_topic or DEFAULT_EVENTS_TOPIC

    def warn(level: str, text: str) -> None:
        print(f"lda-bag2lerobot: {level}: {text}", file=err)

    try:
        config = load_robot_config(args.robot_config)
        info = bag_info(args.bag)
    except (ConfigError, BagError) as exc:
        raise _Fail(str(exc)) from None
    required = {s.topic: s.msgtype for s in streams_of(config)}
    missing = [t for t in required if t not in info.topics]
    if missing:
        have = ", ".join(f"{t} [{m}]" for t, m in sorted(info.topics.items())) or "none"
        raise _Fail(f"bag {info.path.name} lacks the configured topic(s) {missing} of robot '{config.robot}'; "
                    f"it has: {have}")
    wrong = [f"{t} is {info.topics[t]}, config expects {m}" for t, m in required.items() if info.topics[t] != m]
    if wrong:
        raise _Fail(f"bag {info.path.name}: {'; '.join(wrong)}")
    empty = [t for t in required if info.counts.get(t, 0) == 0]
    if empty:
        raise _Fail(f"bag {info.path.name} has no messages on {empty}")
    has_events = info.topics.get(events_topic) == "std_msgs/msg/String" and info.counts.get(events_topic, 0) > 0
    if not has_events and not args.quality:
        raise _Fail(f"--quality is required: the bag holds no episode events on {events_topic}")

    try:
        store = DatasetStore(args.out, config, repo_id=args.repo_id, video_codec=args.video_codec,
                             video_preset=args.video_preset, video_crf=args.video_crf,
                             min_free_mb=args.min_free_disk_mb, on_event=lambda t: print(t, file=out))
    except DatasetError as exc:
        raise _Fail(str(exc)) from None
    recorder = EpisodeRecorder(config, store, events_topic=events_topic, source=f"bag:{info.path.name}", log=warn)
    topics = set(recorder.topics()) | ({events_topic} if has_events else set())
    saved, failed = [], 0

    def finish(now_ns: int, quality: str | None) -> None:
        nonlocal failed
        pending = recorder.finish(now_ns, quality)
        if quality is None:
            print(f"episode discarded by its events ({pending.frames} frames)", file=out)
            return
        try:
            summary = pending.save()
        except (DatasetError, RecorderError) as exc:
            failed += 1
            warn("error", f"episode not saved: {exc}")
            return
        saved.append(summary.index)
        print(summary.describe(), file=out)

    try:
        if not has_events:
            recorder.start(args.task, info.start_ns, require_task=False)
        last_ns = info.start_ns
        for topic, _msgtype, log_ns, cdr in read_messages(args.bag, topics):
            last_ns = log_ns
            if topic != events_topic:
                recorder.ingest(topic, log_ns, cdr)
                continue
            try:
                event = _event(cdr)
            except ValueError as exc:
                warn("warning", f"unreadable episode event ignored: {exc}")
                continue
            kind = event.get("event")
            if kind == "start":
                if recorder.recording:
                    warn("warning", "episode start without a stop before it: the open episode is discarded")
                    recorder.finish(log_ns, None)
                recorder.start(args.task or str(event.get("task", "")), log_ns, require_task=False)
            elif kind in ("stop", "discard") and recorder.recording:
                quality = None if kind == "discard" else (args.quality or event.get("quality"))
                if quality is not None and quality not in QUALITIES:
                    warn("warning", f"stop event with unknown quality {quality!r}: episode discarded")
                    quality = None
                finish(log_ns, quality)
        if recorder.recording:
            if has_events and not args.quality:
                warn("warning", "the bag ends inside an episode (no stop event): it is not saved "
                                "(pass --quality to save it anyway)")
                recorder.finish(last_ns, None)
            else:
                finish(last_ns, args.quality)
    except BagError as exc:
        raise _Fail(str(exc)) from None
    except (DatasetError, RecorderError) as exc:
        raise _Fail(str(exc)) from None
    finally:
        store.close()
    if not saved:
        warn("error", f"no episode saved from {info.path.name}")
        return 1
    print(f"{len(saved)} episode(s) saved to {store.root} (indices {saved}); the dataset now has "
          f"{store.num_episodes} episode(s)" + (f"; {failed} failed" if failed else ""), file=out)
    return 0


def _event(cdr: bytes) -> dict:
    from lda_common.bag_io import typestore

    try:
        text = typestore().deserialize_cdr(cdr, "std_msgs/msg/String").data
        event = json.loads(text)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(str(exc)) from None
    if not isinstance(event, dict):
        raise ValueError(f"not a JSON object: {text!r}")
    return event


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not Path(args.bag).exists():
        print(f"lda-bag2lerobot: error: bag not found: {args.bag}", file=sys.stderr)
        return 2
    try:
        return convert(args)
    except _Fail as exc:
        print(f"lda-bag2lerobot: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
