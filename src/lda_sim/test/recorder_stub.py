"""A stand-in for the teleop recorder: serves StartEpisode / StopEpisode and remembers every call."""

from __future__ import annotations

import threading

from rclpy.node import Node

from lda_msgs.srv import StartEpisode, StopEpisode


class RecorderStub:
    """Serve ``<prefix>/start_episode`` and ``<prefix>/stop_episode`` on ``node``; ``calls`` lists them."""

    def __init__(self, node: Node, prefix: str = "/teleop_recorder"):
        self.calls: list[tuple[str, str]] = []  # ("start", task) or ("stop", quality / "discard")
        self._lock = threading.Lock()
        self._recording = False
        self._saved = 0
        node.create_service(StartEpisode, f"{prefix}/start_episode", self._start)
        node.create_service(StopEpisode, f"{prefix}/stop_episode", self._stop)

    def _start(self, request, response):
        with self._lock:
            self.calls.append(("start", request.task))
            response.success = not self._recording  # like a recorder: one episode at a time
            response.episode_index = self._saved
            self._recording = True
        return response

    def _stop(self, request, response):
        with self._lock:
            self.calls.append(("stop", "discard" if request.discard else request.quality))
            valid = request.discard or request.quality in ("high", "low", "actionless")
            response.success = self._recording and valid
            response.episode_index = -1 if request.discard or not response.success else self._saved
            self._saved += int(response.success and not request.discard)
            self._recording = False
        return response
