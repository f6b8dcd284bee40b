"""Helpers for the suite's tests with real rclpy over loopback DDS (imported by every package's tests).

    with ros_node("probe") as node:            # own rclpy context, spun on a background thread
        got = []
        node.create_subscription(Chunk, "/lda/x", got.append, 10)
        assert wait_for(lambda: got, timeout=5.0)

    with NodeProcess(["lda-launch", "launch/x.launch.yaml"]) as proc:   # a real process
        assert proc.wait_for_output("ready", timeout=10)
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from lda_testing.processes import kill_tree, new_tree_env


def wait_for(predicate: Callable[[], object], timeout: float, period: float = 0.02) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout`` seconds pass; return whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return bool(predicate())


@contextlib.contextmanager
def ros_node(name: str, **node_kwargs) -> Iterator[Node]:
    """A node in its own rclpy context, spun by a background executor until the block ends."""
    context = Context()
    rclpy.init(context=context)
    node = Node(name, context=context, **node_kwargs)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        yield node
    finally:
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.shutdown(context=context)
        thread.join(timeout=5)


class NodeProcess:
    """A child process (a node or lda-launch) whose merged output is collected line by line.

    It runs in its own session with a process-tree marker (:mod:`lda_testing.processes`): whatever happens,
    leaving the ``with`` block ends it and every process it started; so does :meth:`wait` once the child
    itself has exited (a launch that lost track of a node)."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None, cwd: str | None = None):
        self.cmd = cmd
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self.token, full_env = new_tree_env(dict(env or {}, PYTHONUNBUFFERED="1"))
        self.proc = subprocess.Popen(
            cmd,
            env=full_env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def wait_for_output(self, text: str, timeout: float) -> bool:
        return wait_for(lambda: text in self.output, timeout)

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        kill_tree(self.token)
        self._reader.join(timeout=5)
        return rc

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15.0) -> int:
        """Send ``sig`` (SIGINT like Ctrl-C) and wait; past ``timeout`` the whole tree gets SIGKILL."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                kill_tree(self.token)
        return self.wait(timeout)

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
