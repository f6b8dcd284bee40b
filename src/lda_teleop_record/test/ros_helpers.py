"""Test side of the recorder tests: plays synthetic messages over DDS and calls the episode services."""

from __future__ import annotations

import time
from pathlib import Path

from ament_index_python.packages import get_package_prefix
from diagnostic_msgs.msg import DiagnosticArray
from lda_teleop_record.recorder_node import _msg_class
from lda_testing.ros import wait_for
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from lda_msgs.srv import StartEpisode, StopEpisode

EXE = Path(get_package_prefix("lda_teleop_record")) / "lib" / "lda_teleop_record" / "teleop_recorder"


def recorder_cmd(name: str, robot_yaml: Path, dataset: Path, **params) -> list[str]:
    cmd = [str(EXE), "--ros-args", "-r", f"__node:={name}", "-p", f"robot_config:={robot_yaml}",
           "-p", f"dataset:={dataset}", "-p", "diagnostics_period_s:=0.2"]
    for key, value in params.items():
        cmd += ["-p", f"{key}:={str(value).lower() if isinstance(value, bool) else value}"]
    return cmd


class Teleop:
    """Publishers for every synthetic topic, the recorder's services, and its diagnostics."""

    def __init__(self, node, recorder_name: str, topics: dict[str, str]):
        self.node = node
        self.name = recorder_name
        qos = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
        self.pubs = {t: node.create_publisher(_msg_class(m), t, qos) for t, m in topics.items()}
        self.start_client = node.create_client(StartEpisode, f"/{recorder_name}/start_episode")
        self.stop_client = node.create_client(StopEpisode, f"/{recorder_name}/stop_episode")
        self.diag: dict[str, str] = {}
        self.events: list[str] = []
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        node.create_subscription(String, "/lda/episode_events", lambda m: self.events.append(m.data), 10)
        assert self.start_client.wait_for_service(timeout_sec=30), "recorder services not found"
        assert wait_for(lambda: all(p.get_subscription_count() for p in self.pubs.values()), 20), \
            "recorder did not subscribe to every topic"
        assert wait_for(lambda: self.diag, 10), "no diagnostics from the recorder"

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == f"/{self.name}":
                values = {kv.key: kv.value for kv in status.values}
                values["_message"], values["_level"] = status.message, str(status.level)
                self.diag = values

    def call(self, client, request, timeout: float = 60.0):
        future = client.call_async(request)
        assert wait_for(future.done, timeout), "no answer from the recorder"
        return future.result()

    def start(self, task: str = ""):
        return self.call(self.start_client, StartEpisode.Request(task=task))

    def stop(self, quality: str = "high", discard: bool = False):
        return self.call(self.stop_client, StopEpisode.Request(quality=quality, discard=discard))

    def received(self, topic: str) -> int:
        return int(self.diag.get(f"received {topic}", 0))

    def play(self, plan, speed: float = 1.0, stop_after_s: float | None = None) -> dict[str, int]:
        """Publish a plan's messages paced at ``speed`` x real time; wait until the recorder has them."""
        before = {t: self.received(t) for t in self.pubs}
        sent = dict.fromkeys(self.pubs, 0)
        msgs = plan.messages()
        t_first = msgs[0][2]
        wall0 = time.monotonic()
        for topic, _, ns, cdr in msgs:
            rel = (ns - t_first) / 1e9
            if stop_after_s is not None and rel > stop_after_s:
                break
            delay = wall0 + rel / speed - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.pubs[topic].publish(cdr)
            sent[topic] += 1
        # wait until the recorder has everything, or (best effort may drop) until its counts stop moving
        def settled() -> bool:
            if all(self.received(t) - before[t] >= n for t, n in sent.items()) and self.diag.get("queue") == "0":
                return True
            counts = tuple(self.received(t) for t in sent)
            time.sleep(0.45)
            return counts == tuple(self.received(t) for t in sent) and self.diag.get("queue") == "0"

        wait_for(settled, timeout=10)
        time.sleep(0.25)  # one more diagnostics period: the worker has processed its queue
        self.lost = {t: n - (self.received(t) - before[t]) for t, n in sent.items()}
        return sent
