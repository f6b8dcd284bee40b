"""teleop_recorder: records configured ROS 2 topics into a LeRobot v3.0 dataset, one episode per service call.

A thin rclpy shell around ``recording.EpisodeRecorder``:

* raw (serialized) subscriptions, best-effort sensor QoS, on an intake node spun by a thread of its own;
  callbacks only stamp and enqueue the bytes;
* one worker thread decodes, aligns to 10 Hz and feeds LeRobot's streaming video encoder, in arrival
  order with the start/stop commands (so "after start" means exactly that);
* one saver thread commits stopped episodes (the stop service answers when the episode is on disk) and
  opens the next writing session ahead of time;
* services ``~/start_episode`` (lda_msgs/StartEpisode) and ``~/stop_episode`` (lda_msgs/StopEpisode),
  episode events as JSON on ``/lda/episode_events``, ``diagnostic_msgs/DiagnosticArray`` on ``/diagnostics``.
"""

from __future__ import annotations

import faulthandler
import os
import queue
import signal
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints banners on every episode otherwise

import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue  # noqa: E402
from lda_common.episode_writer import DEFAULT_VIDEO_CODEC, DatasetError, DatasetStore  # noqa: E402
from lda_common.process_exit import ExitGuard, join_threads, spin_until_shutdown  # noqa: E402
from lda_common.robot_config import ConfigError, load_robot_config  # noqa: E402
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType  # noqa: E402
from rclpy.event_handler import SubscriptionEventCallbacks  # noqa: E402
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from lda_msgs.srv import StartEpisode, StopEpisode  # noqa: E402

from .recording import DEFAULT_EVENTS_TOPIC, EpisodeRecorder, RecorderError  # noqa: E402

#: A stream received at under this fraction of the rate its stamps show (less one message per window, so
#: that a slow stream is not flagged for where the window's edges fall) is reported as losing messages.
LOSS_WARNING = 0.95

COMMAND_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                         durability=DurabilityPolicy.VOLATILE)

_MSG_CLASSES = {
    "sensor_msgs/msg/Image": ("sensor_msgs.msg", "Image"),
    "sensor_msgs/msg/CompressedImage": ("sensor_msgs.msg", "CompressedImage"),
    "sensor_msgs/msg/JointState": ("sensor_msgs.msg", "JointState"),
    "geometry_msgs/msg/PoseStamped": ("geometry_msgs.msg", "PoseStamped"),
    "geometry_msgs/msg/PoseArray": ("geometry_msgs.msg", "PoseArray"),
    "std_msgs/msg/String": ("std_msgs.msg", "String"),
}


class StartupError(RuntimeError):
    """Bad parameters or an unusable dataset: the node exits with this message."""


def _msg_class(msgtype: str):
    import importlib

    module, name = _MSG_CLASSES[msgtype]
    return getattr(importlib.import_module(module), name)


class TeleopRecorder(Node):
    def __init__(self, **kwargs):
        super().__init__("teleop_recorder", **kwargs)
        p = self._declare_parameters()
        try:
            self.config = load_robot_config(p["robot_config"])
        except ConfigError as exc:
            raise StartupError(str(exc)) from None
        dataset = Path(p["dataset"]).expanduser()
        bag_dir = None
        if p["write_bag"]:
            bag_dir = Path(p["bag_dir"]).expanduser() if p["bag_dir"] else dataset.parent / f"{dataset.name}_bags"
        try:
            self.store = DatasetStore(dataset, self.config, repo_id=p["repo_id"] or None,
                                      video_codec=p["video_codec"], video_preset=p["video_preset"],
                                      video_crf=p["video_crf"], encoder_queue_frames=p["encoder_queue_frames"],
                                      encoder_threads=p["encoder_threads"],
                                      min_free_mb=p["min_free_disk_mb"],
                                      on_event=lambda text: self.get_logger().info(text))
        except DatasetError as exc:
            raise StartupError(str(exc)) from None
        self.recorder = EpisodeRecorder(self.config, self.store, bag_dir=bag_dir, default_task=p["default_task"],
                                        events_topic=p["events_topic"], log=self._log)
        self.save_timeout_s = p["save_timeout_s"]
        self.dataset = dataset

        self._queue: queue.Queue = queue.Queue(maxsize=p["ingest_queue_size"])
        self._dropped: dict[str, int] = {}
        self._saver = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recorder-saver")
        self._saving: Future = self._saver.submit(self.store.prepare)
        self._last_result = "no episode yet"
        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._work, name="recorder-worker", daemon=True)
        self._worker.start()

        # Sensor data: best effort by default (never slows a camera down and matches every publisher), with a
        # deep queue so that a busy moment of this process (encoder start-up, a save) does not overflow the
        # DDS reader. Reliable when every tick matters and the publishers are reliable too: DDS then resends
        # what a loaded machine lost instead of the recorder dropping that tick.
        reliability = ReliabilityPolicy.RELIABLE if p["sensor_reliable"] else ReliabilityPolicy.BEST_EFFORT
        sensor_qos = QoSProfile(depth=p["sensor_queue_depth"], reliability=reliability,
                                history=HistoryPolicy.KEEP_LAST, durability=DurabilityPolicy.VOLATILE)
        # The streams are taken by a node of their own, spun on a thread of its own by a single-threaded
        # executor (see main()). rclpy rebuilds an executor's wait set on every wake-up, and the main node's
        # holds its parameter services, service servers, timer and QoS event handlers as well: taking
        # hundreds of messages a second through it cost more than a core. The intake node's wait set
        # holds the subscriptions only. It takes this node's namespace; command-line remappings do not
        # apply to it (the topics come from the robot config).
        self.intake = Node(f"{self.get_name()}_intake", namespace=self.get_namespace(), context=self.context,
                           use_global_arguments=False, start_parameter_services=False, enable_rosout=False)
        # A best-effort, volatile reader matches every publisher: no incompatible-QoS event to listen for.
        quiet = None if p["sensor_reliable"] else SubscriptionEventCallbacks(use_default_callbacks=False)
        for topic, msgtype in self.recorder.topics().items():
            instruction = topic == self.config.instruction_topic
            self.intake.create_subscription(_msg_class(msgtype), topic, self._make_callback(topic),
                                            COMMAND_QOS if instruction else sensor_qos, raw=True,
                                            event_callbacks=None if instruction else quiet)
        self._events = self.create_publisher(String, p["events_topic"], COMMAND_QOS)
        self._diag = self.create_publisher(DiagnosticArray, "/diagnostics", COMMAND_QOS)
        self.create_service(StartEpisode, "~/start_episode", self._on_start)
        self.create_service(StopEpisode, "~/stop_episode", self._on_stop)
        self.create_timer(p["diagnostics_period_s"], self._publish_diagnostics)
        self.get_logger().info(
            f"recorder ready: robot '{self.config.robot}' ({len(self.config.cameras)} camera(s), hands "
            f"{self.config.hand_names}), dataset {self.store.root} with {self.store.num_episodes} episode(s)"
            + (f", episode bags in {bag_dir}" if bag_dir else "")
            + f"; services {self.get_fully_qualified_name()}/start_episode and .../stop_episode")

    # -- parameters --------------------------------------------------------------------------------
    def _declare_parameters(self) -> dict:
        S, B, I, D = (ParameterType.PARAMETER_STRING, ParameterType.PARAMETER_BOOL, ParameterType.PARAMETER_INTEGER,
                      ParameterType.PARAMETER_DOUBLE)
        specs = [
            ("robot_config", "", S, "robot YAML (config/robots/<robot>.yaml): topics, frames, hands, cameras"),
            ("dataset", "", S, "LeRobot dataset root directory; created on first use, appended to afterwards"),
            ("repo_id", "", S, "LeRobot repo id stored in the dataset (default lda/<dataset dir name>)"),
            ("default_task", "", S, "task text when neither StartEpisode.task nor the instruction topic gives one"),
            ("write_bag", False, B, "also write each episode's raw topics as a rosbag2 MCAP beside the dataset"),
            ("bag_dir", "", S, "where episode bags go (default <dataset>_bags next to the dataset)"),
            ("video_codec", DEFAULT_VIDEO_CODEC, S, "video codec of a new dataset: h264, libsvtav1 (LeRobot's "
                                                    "default), hevc, auto (a hardware encoder if any); an existing "
                                                    "dataset keeps its own"),
            ("video_preset", "", S, "encoder preset ('' = the codec's default: veryfast for h264, LeRobot's else)"),
            ("video_crf", -1, I, "encoder quality, lower is better and bigger (-1 = the codec's default: 23 for "
                                 "h264, LeRobot's else)"),
            ("min_free_disk_mb", 500.0, D, "refuse to start or save an episode below this much free disk [MiB]"),
            ("encoder_queue_frames", 200, I, "frames per camera the video encoder may lag behind"),
            ("encoder_threads", 1, I, "encoder threads per camera (libsvtav1 'lp', h264/hevc 'threads'); "
                                      "0 = the codec's default, one per core"),
            ("ingest_queue_size", 4000, I, "messages buffered between the DDS callbacks and the worker thread"),
            ("sensor_queue_depth", 100, I, "DDS history depth of each sensor subscription"),
            ("sensor_reliable", False, B, "subscribe to sensors with reliable QoS (needs reliable publishers; "
                                          "best-effort ones then do not connect)"),
            ("events_topic", DEFAULT_EVENTS_TOPIC, S, "topic of the episode start/stop events (JSON strings)"),
            ("diagnostics_period_s", 1.0, D, "period of /diagnostics messages [s]"),
            ("save_timeout_s", 300.0, D, "how long stop_episode waits for the save [s]"),
        ]
        ranges = {
            "min_free_disk_mb": dict(floating_point_range=[FloatingPointRange(from_value=0.0, to_value=1e9)]),
            "diagnostics_period_s": dict(floating_point_range=[FloatingPointRange(from_value=0.05, to_value=60.0)]),
            "save_timeout_s": dict(floating_point_range=[FloatingPointRange(from_value=1.0, to_value=3600.0)]),
            "encoder_queue_frames": dict(integer_range=[IntegerRange(from_value=10, to_value=100000)]),
            "encoder_threads": dict(integer_range=[IntegerRange(from_value=0, to_value=256)]),
            "video_crf": dict(integer_range=[IntegerRange(from_value=-1, to_value=63)]),
            "ingest_queue_size": dict(integer_range=[IntegerRange(from_value=10, to_value=1000000)]),
            "sensor_queue_depth": dict(integer_range=[IntegerRange(from_value=1, to_value=10000)]),
        }
        values = {}
        for name, default, ptype, text in specs:
            desc = ParameterDescriptor(description=text, type=ptype, read_only=True, **ranges.get(name, {}))
            try:
                values[name] = self.declare_parameter(name, default, desc).value
            except Exception as exc:  # noqa: BLE001 - rclpy raises several types for bad overrides
                raise StartupError(f"parameter '{name}': {exc}") from None
        for name in ("robot_config", "dataset"):
            if not values[name]:
                raise StartupError(f"parameter '{name}' is required (-p {name}:=...)")
        return values

    # -- DDS side ----------------------------------------------------------------------------------
    def _make_callback(self, topic: str):
        clock = self.get_clock()

        def callback(cdr: bytes) -> None:
            try:
                self._queue.put_nowait(("msg", topic, clock.now().nanoseconds, cdr))
            except queue.Full:
                self._dropped[topic] = self._dropped.get(topic, 0) + 1
                self.recorder.diag.problem(topic, "worker queue full, message dropped (recorder overloaded)")

        return callback

    def _log(self, level: str, text: str) -> None:
        logger = self.get_logger()
        {"error": logger.error, "warn": logger.warning}.get(level, logger.info)(text)

    # -- worker ------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if item[0] == "msg":
                try:
                    self.recorder.ingest(item[1], item[2], item[3])
                except Exception as exc:  # noqa: BLE001 - keep recording whatever one message does
                    self.recorder.diag.problem(item[1], f"unexpected error: {type(exc).__name__}: {exc}", "error")
            else:
                _, fn, future = item
                try:
                    future.set_result(fn())
                except Exception as exc:  # noqa: BLE001
                    future.set_exception(exc)

    def _run_in_worker(self, fn, timeout: float):
        future: Future = Future()
        self._queue.put(("cmd", fn, future), timeout=timeout)
        return future.result(timeout=timeout)

    def _now(self) -> int:
        return self.get_clock().now().nanoseconds

    def _publish_event(self, event: dict) -> None:
        self._events.publish(String(data=self.recorder.event_json(event)))

    # -- services ----------------------------------------------------------------------------------
    def _on_start(self, request, response):
        response.episode_index = -1
        try:
            self._saving.result(timeout=self.save_timeout_s)  # the previous save (and next session) first
        except FutureTimeout:
            response.success, response.message = False, "still saving the previous episode; try again"
            return response
        except Exception:  # noqa: BLE001 - a failed save was already reported by stop_episode
            pass

        def start():
            index = self.recorder.start(request.task, self._now())
            self._publish_event({"event": "start", "episode": index, "task": request.task.strip(),
                                 "robot": self.config.robot})
            return index

        try:
            index = self._run_in_worker(start, timeout=30.0)
        except (FutureTimeout, queue.Full):
            response.success, response.message = False, "the recorder's worker is busy; try again"
            return response
        except (RecorderError, DatasetError) as exc:
            response.success, response.message = False, str(exc)
            self.get_logger().warning(f"start_episode refused: {exc}")
            return response
        response.success, response.episode_index = True, index
        task = request.task.strip() or self.recorder.instruction or self.recorder.default_task
        response.message = f"recording episode {index} (task '{task}')"
        self.get_logger().info(response.message)
        return response

    def _on_stop(self, request, response):
        response.episode_index = -1
        quality = None if request.discard else request.quality.strip().lower()

        def finish():
            pending = self.recorder.finish(self._now(), quality)
            self._publish_event({"event": "stop", "episode": pending.index, "quality": quality} if quality else
                                {"event": "discard", "episode": pending.index})
            return pending

        try:
            pending = self._run_in_worker(finish, timeout=30.0)
        except (FutureTimeout, queue.Full):
            response.success, response.message = False, "the recorder's worker is busy; try again"
            return response
        except RecorderError as exc:
            response.success, response.message = False, str(exc)
            self.get_logger().warning(f"stop_episode refused: {exc}")
            return response
        if quality is None:
            response.success, response.message = True, f"discarded episode {pending.index} ({pending.frames} frames)"
            self.get_logger().info(response.message)
            self._saving = self._saver.submit(self.store.prepare)
            return response

        committed: Future = Future()  # answered as soon as the episode is on disk

        def save():
            try:
                committed.set_result(pending.save())
            except Exception as exc:  # noqa: BLE001 - reported through the stop_episode answer
                committed.set_exception(exc)
            try:
                self.store.prepare()  # the next episode's writing session, before its start is asked for
            except Exception as exc:  # noqa: BLE001
                self._log("error", f"cannot open the next writing session: {exc}")

        self._saving = self._saver.submit(save)
        try:
            summary = committed.result(timeout=self.save_timeout_s)
        except FutureTimeout:
            response.success, response.message = False, "save still running (see the log for its outcome)"
            return response
        except (DatasetError, RecorderError) as exc:
            response.success, response.message = False, f"episode {pending.index} not saved: {exc}"
            self._last_result = response.message
            self.get_logger().error(response.message)
            return response
        response.success, response.episode_index = True, summary.index
        response.message = summary.describe() + f" in {summary.save_s:.2f} s"
        self._last_result = response.message
        self.get_logger().info(response.message)
        return response

    # -- diagnostics -------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        try:
            self._diag.publish(self._diagnostics())
        except Exception as exc:  # noqa: BLE001 - diagnostics must never take the recorder down
            self.get_logger().warning(f"diagnostics: {type(exc).__name__}: {exc}")

    def _diagnostics(self) -> DiagnosticArray:
        rec = self.recorder
        status = DiagnosticStatus(name=self.get_fully_qualified_name(), hardware_id=self.config.robot)
        ep = rec.episode
        problems = rec.diag.recent_problems(within_s=5.0)
        if ep is not None:
            status.message = (f"recording episode {ep.writer.index}: {len(ep.states)} frames, "
                              f"{ep.dropped_ticks} dropped ticks")
        else:
            status.message = f"idle; {self._last_result}"
        status.level = DiagnosticStatus.OK
        if problems:
            status.level = DiagnosticStatus.WARN
            status.message += f"; {problems[-1]}"
        counts = dict(rec.diag.received)
        rates = rec.diag.rates.rates(self._now())
        losing = []
        slack_hz = 1e9 / rec.diag.rates.window_ns
        for topic, (received, expected) in rates.items():
            if expected and received < LOSS_WARNING * expected - slack_hz:
                losing.append(f"{rec.by_topic[topic].label}: {received:.1f} of {expected:.1f} Hz received "
                              f"({100 * (1 - received / expected):.0f} % lost)")
        if losing:
            status.level = max(status.level, DiagnosticStatus.WARN)
            status.message += "; " + "; ".join(losing)
        if ep is not None and ep.failed:
            status.level, status.message = DiagnosticStatus.ERROR, ep.failed
        values = [
            ("state", "recording" if ep is not None else "idle"),
            ("dataset", str(self.store.root)),
            ("episodes_saved", str(self.store.num_episodes)),
            ("episode", str(ep.writer.index) if ep is not None else ""),
            ("frames", str(len(ep.states)) if ep is not None else "0"),
            ("dropped_ticks", str(ep.dropped_ticks) if ep is not None else "0"),
            ("queue", str(self._queue.qsize())),
            ("queue_dropped", str(sum(self._dropped.values()))),
        ]
        for topic in rec.topics():
            received, expected = rates.get(topic, (0.0, None))
            values.append((f"received {topic}", str(counts.get(topic, 0))))
            values.append((f"rate_hz {topic}", f"{received:.1f}"))
            values.append((f"expected_hz {topic}", "" if expected is None else f"{expected:.1f}"))
        if ep is not None:
            for stream, lag in ep.sync.max_lag_ns.items():
                values.append((f"max_lag_ms {stream}", f"{lag / 1e6:.0f}"))
        for stream, n in sorted(rec.diag.rejected.items()):
            values.append((f"rejected {stream}", str(n)))
        for i, text in enumerate(problems[-5:]):
            values.append((f"problem {i}", text))
        status.values = [KeyValue(key=k, value=v) for k, v in values]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        return msg

    # -- shutdown ----------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Discard an unfinished episode (it has no label), finish a save in progress, release the dataset."""
        def discard():
            if self.recorder.recording:
                pending = self.recorder.finish(self._now(), None)
                self.get_logger().warning(f"shutting down while recording: episode {pending.index} discarded")

        try:  # bounded: the whole exit has EXIT_DEADLINE_S (a save in progress gets what is left of it)
            self._run_in_worker(discard, timeout=1.5)
        except Exception as exc:  # noqa: BLE001
            self.get_logger().error(f"shutdown: {exc}")
        self._queue.put(None)
        join_threads([self._worker])
        self._saver.shutdown(wait=True)
        self.store.close()


def main(args=None) -> int:
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1 <pid>: print every thread's stack
    guard = ExitGuard("teleop_recorder").install()  # before rclpy.init: its handlers chain to the guard's
    # The DDS callbacks need the GIL hundreds of times a second while the worker and encoder threads run
    # Python code; a short switch interval keeps them from waiting 5 ms for it each time.
    sys.setswitchinterval(0.0005)
    rclpy.init(args=args)
    try:
        node = TeleopRecorder()
    except StartupError as exc:
        print(f"teleop_recorder: error: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        guard.exit(2)
    intake = SingleThreadedExecutor()  # the streams: only ever enqueue, never block
    intake.add_node(node.intake)
    intake_thread = threading.Thread(target=spin_until_shutdown, args=(intake,), name="recorder-intake", daemon=True)
    intake_thread.start()
    # Services and diagnostics: one thread. A stop that waits for its save pauses the diagnostics, never the
    # intake. (Under load, a MultiThreadedExecutor here was seen spinning at 100 % CPU inside rclpy while a
    # call waited for its save - with a mutually exclusive and with a reentrant group - starving the save.)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.shutdown()  # discards an unlabelled episode, lets a save in progress finish, closes the dataset
        intake.shutdown(timeout_sec=0.5)
        executor.shutdown(timeout_sec=0.5)
        if not join_threads([intake_thread]):  # never destroy a node a thread still spins
            node.intake.destroy_node()
            node.destroy_node()
        rclpy.try_shutdown()
    guard.exit(0)


if __name__ == "__main__":
    sys.exit(main())
