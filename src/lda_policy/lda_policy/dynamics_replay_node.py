"""dynamics_replay_node: replays a rosbag2 recording through forward dynamics for RViz / Foxglove.

    ros2 run lda_policy dynamics_replay_node --ros-args -p bag:=rec/ep0 -p robot_config:=config/robots/sim_panda.yaml \
        -p checkpoint:=CKPT -p dino_path:=DINO -p rate:=1.0 -p mcap_path:=out/replay_ep0

The bag (MCAP or sqlite3, read with ``rosbags``) is aligned to the robot's 10 Hz grid like the recorder
does; every ``predict_every`` ticks the forward-dynamics objective predicts the future DINO latents
from the recorded actions, and each prediction is compared with the frames that really followed.
Published (reliable, ``frame_id`` = the robot's base frame):

- ``/lda/replay/camera`` (sensor_msgs/Image): the bag's camera frame, every tick;
- ``/lda/replay/latents`` (sensor_msgs/Image): [camera | observed latents | predicted latents |
  error heat-map], the latents coloured by a PCA fitted on the observed ones, at every comparison;
- ``/lda/replay/trajectories`` (visualization_msgs/MarkerArray): per hand the recorded EEF path
  (green), the path of the action chunk being predicted (orange) and the current EEF (sphere);
- ``/lda/replay/surprise`` and ``/lda/replay/distance`` (std_msgs/Float32): the 0.5 s-ahead
  comparison (surprise needs ``<checkpoint>/safety_calibration.json``; NaN without it).

With ``mcap_path`` the same messages are also written, stamped with the bag's time, to a rosbag2
directory holding one ``.mcap`` file that Foxglove opens (and ``ros2 bag play`` plays).
Work runs on a worker thread; ``rate`` 0 replays as fast as the model allows.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from geometry_msgs.msg import Point
from lda_common.messages import Topics
from lda_common.process_exit import join_threads
from rclpy.node import Node
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image
from std_msgs.msg import ColorRGBA, Float32
from visualization_msgs.msg import Marker, MarkerArray

from lda_policy.deploy.replay import DynamicsReplay, LatentPCA, ReplayError, heatmap, panel, read_episode
from lda_policy.deploy.safety import CALIBRATION_FILE, SafetyCalibration
from lda_policy.model_node import MODEL_STARTUP_ERRORS, ModelNode
from lda_policy.ros_io import COMMAND_QOS, ParameterError, declare, node_main, rgb_to_image, sec_to_stamp

TOPICS = {
    "camera": (Topics.REPLAY_CAMERA, Image, "sensor_msgs/msg/Image"),
    "latents": (Topics.REPLAY_LATENTS, Image, "sensor_msgs/msg/Image"),
    "trajectories": (Topics.REPLAY_TRAJECTORIES, MarkerArray, "visualization_msgs/msg/MarkerArray"),
    "surprise": (Topics.REPLAY_SURPRISE, Float32, "std_msgs/msg/Float32"),
    "distance": (Topics.REPLAY_DISTANCE, Float32, "std_msgs/msg/Float32"),
}


class McapSink:
    """Writes serialized ROS messages to a rosbag2 MCAP directory with ``rosbags`` (schemas included)."""

    def __init__(self, path: str | Path) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        self.path = Path(path)
        if self.path.exists():
            raise ParameterError(f"mcap_path '{self.path}' exists; choose a new directory")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._store = get_typestore(Stores.ROS2_KILTED)
        self._writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._conns: dict[str, object] = {}
        self.count = 0

    def write(self, topic: str, msgtype: str, stamp_ns: int, msg) -> None:
        if topic not in self._conns:
            self._conns[topic] = self._writer.add_connection(topic, msgtype, typestore=self._store)
        self._writer.write(self._conns[topic], int(stamp_ns), serialize_message(msg))
        self.count += 1

    def close(self) -> Path:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return self.path


class DynamicsReplayNode(ModelNode, Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("dynamics_replay", **kwargs)
        d = lambda *a, **k: declare(self, *a, **k)  # noqa: E731
        self.p = {
            "bag": d("bag", "", "rosbag2 directory or .mcap/.db3 file to replay", required=True),
            **self.model_parameters(),
            "num_samples": d("num_samples", 1, "forward-dynamics samples averaged", low=1, high=64),
            "seed": d("seed", 0, "forward-dynamics sampling seed", low=0),
            "instruction": d("instruction", "", "task text ('' = the bag's instruction topic)"),
            "calibration_path": d("calibration_path", "", f"surprise calibration ('' = <checkpoint>/{CALIBRATION_FILE} "
                                  "if present)"),
            "rate": d("rate", 1.0, "playback speed (1 = real time, 0 = as fast as possible)", low=0.0, high=100.0),
            "predict_every": d("predict_every", 5, "control ticks between predictions", low=1, high=1000),
            "tile_px": d("tile_px", 160, "tile size of the comparison image [px]", low=16, high=1024),
            "heat_vmax": d("heat_vmax", 0.0, "patch error shown white-hot (0 = 2x the calibrated mean)", low=0.0),
            "mcap_path": d("mcap_path", "", "also write the topics to this new rosbag2 MCAP directory ('' = no)"),
            "publish": d("publish", True, "publish the topics (false: only write the MCAP)"),
            "loop": d("loop", False, "start over at the end"),
            "exit_when_done": d("exit_when_done", True, "shut down after the last frame"),
        }
        self._stop = threading.Event()
        self.done = threading.Event()
        self.error = ""

    def spin(self, executor) -> int:
        while rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
            if self.done.is_set() and self.p["exit_when_done"]:
                break
        return 1 if self.error else 0

    def start(self) -> None:
        p = self.p
        self.robot, self.runtime = self.load_model(p)
        self.episode = read_episode(p["bag"], self.robot)
        instruction = p["instruction"] or self.episode.instruction
        if not instruction:
            raise ReplayError(f"bag {p['bag']} has no instruction on {self.robot.config.instruction_topic}; "
                              "set the 'instruction' parameter")
        cal_path = Path(p["calibration_path"] or Path(p["checkpoint"]) / CALIBRATION_FILE)
        calibration = SafetyCalibration.load(cal_path) if (p["calibration_path"] or cal_path.is_file()) else None
        # the surprise is only meaningful with the Euler steps it was calibrated with (the judge's)
        steps = p["num_inference_steps"] or (calibration.num_steps if calibration else None)
        self.replay = DynamicsReplay(self.runtime, self.robot, self.episode, instruction, calibration,
                                     p["num_samples"], p["seed"], steps)
        self.frame_id = self.robot.config.base_frame or "base"
        self.pubs = {k: self.create_publisher(cls, topic, COMMAND_QOS) for k, (topic, cls, _) in TOPICS.items()}
        self.sink = McapSink(p["mcap_path"]) if p["mcap_path"] else None
        n = len(self.episode)
        sample = sorted(set(np.linspace(0, n - 1, min(n, 24)).round().astype(int).tolist()))
        self.pca = LatentPCA(np.stack([self.replay.latent(i).numpy() for i in sample]))
        self.vmax = p["heat_vmax"] or (2.0 * calibration.mean[0] if calibration else 0.0)
        self.get_logger().info(
            f"replaying {p['bag']}: {n} frames ({self.episode.frames[-1].stamp - self.episode.frames[0].stamp:.1f} s), "
            f"instruction '{instruction}', rate {p['rate']:g}, "
            f"{'calibrated surprise' if calibration else 'no calibration: surprise is NaN'}"
            + (f", writing {p['mcap_path']}" if self.sink else ""))
        self._worker = threading.Thread(target=self._run, name="lda-replay", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ output

    def _emit(self, key: str, msg, stamp_ns: int) -> None:
        topic, _, msgtype = TOPICS[key]
        if self.p["publish"]:
            self.pubs[key].publish(msg)
        if self.sink is not None:
            self.sink.write(topic, msgtype, stamp_ns, msg)

    def _markers(self, position: int, stamp, prediction) -> MarkerArray:
        frames = self.episode.frames
        out = MarkerArray()
        colours = {"path": (0.2, 0.8, 0.2, 1.0), "chunk": (1.0, 0.55, 0.0, 1.0), "eef": (0.2, 0.4, 1.0, 1.0)}
        for k, hand in enumerate(self.robot.hands):
            def marker(ns, mid, mtype, colour, scale, points=(), hand=hand):
                m = Marker(ns=f"{hand}/{ns}", id=mid, type=mtype, action=Marker.ADD)
                m.header.stamp, m.header.frame_id = stamp, self.frame_id
                m.pose.orientation.w = 1.0
                m.scale.x = m.scale.y = m.scale.z = scale
                m.color = ColorRGBA(r=colour[0], g=colour[1], b=colour[2], a=colour[3])
                m.points = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in points]
                return m

            path = [f.hands[hand].position for f in frames[: position + 1]]
            if len(path) >= 2:
                out.markers.append(marker("recorded_path", 3 * k, Marker.LINE_STRIP, colours["path"], 0.005, path))
            if prediction is not None and len(prediction.chunk_targets.get(hand, [])) >= 2:
                pts = [frames[prediction.position].hands[hand].position, *prediction.chunk_targets[hand]]
                out.markers.append(marker("chunk", 3 * k + 1, Marker.LINE_STRIP, colours["chunk"], 0.004, pts))
            eef = marker("eef", 3 * k + 2, Marker.SPHERE, colours["eef"], 0.03)
            eef.pose.position = Point(**dict(zip("xyz", (float(v) for v in frames[position].hands[hand].position),
                                                 strict=True)))
            out.markers.append(eef)
        return out

    # ------------------------------------------------------------------ worker

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._play_once()
                if not self.p["loop"]:
                    break
        except Exception as err:  # noqa: BLE001 - report and exit non-zero
            if not self._stop.is_set():
                self.error = f"{type(err).__name__}: {err}"
                self.get_logger().error(f"replay failed: {self.error}")
        finally:
            if self.sink is not None:
                path = self.sink.close()
                self.get_logger().info(f"wrote {self.sink.count} messages to {path}")
            self.done.set()

    def _play_once(self) -> None:
        ep, replay, p = self.episode, self.replay, self.p
        t_bag0, t_wall0 = ep.frames[0].stamp, time.monotonic()
        by_target: dict[int, tuple] = {}  # frame position -> (prediction, future index) with the shortest horizon
        current = None
        comparisons = []
        for i, frame in enumerate(ep.frames):
            if self._stop.is_set():
                return
            if i % p["predict_every"] == 0 and replay.can_predict(i):
                current = replay.predict(i)
                for f, j in enumerate(current.targets):
                    if j is not None and (j not in by_target or f < by_target[j][1]):
                        by_target[j] = (current, f)
            if p["rate"] > 0:  # wait until this frame's time
                delay = t_wall0 + (frame.stamp - t_bag0) / p["rate"] - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
            stamp, stamp_ns = sec_to_stamp(frame.stamp), int(round(frame.stamp * 1e9))
            self._emit("camera", rgb_to_image(frame.image, stamp, "camera"), stamp_ns)
            self._emit("trajectories", self._markers(i, stamp, current), stamp_ns)
            if i in by_target:
                pred, f = by_target.pop(i)
                vmax = self.vmax or 2.0 * pred.distances[f]
                observed = self.replay.latent(i)
                pic = panel(frame.image, self.pca.rgb(observed), self.pca.rgb(pred.predicted[f]),
                            heatmap(pred.patch_errors[f], vmax), tile=p["tile_px"])
                self._emit("latents", rgb_to_image(pic, stamp, "camera"), stamp_ns)
                self._emit("surprise", Float32(data=float(pred.surprises[f])), stamp_ns)
                self._emit("distance", Float32(data=float(pred.distances[f])), stamp_ns)
                comparisons.append((pred.surprises[f], pred.distances[f]))
        if comparisons:
            s = np.array(comparisons)
            self.get_logger().info(f"replayed {len(ep)} frames, {len(s)} comparisons: distance mean "
                                   f"{np.nanmean(s[:, 1]):.4f}, surprise mean {np.nanmean(s[:, 0]):.2f} "
                                   f"max {np.nanmax(s[:, 0]) if np.isfinite(s[:, 0]).any() else float('nan'):.2f}")

    def shutdown(self) -> list[str]:
        self._stop.set()
        busy = join_threads([getattr(self, "_worker", None)])
        if busy:
            self.get_logger().warning("exiting mid-frame: the MCAP output (if any) is incomplete")
        return busy


main = node_main("dynamics_replay_node", DynamicsReplayNode, MODEL_STARTUP_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
