"""Executables that exit when told, and waits that say what they wait for. ROS-free (no rclpy import).

    guard = ExitGuard("model_host_node")
    guard.install()             # before rclpy.init(): rclpy's signal handlers then chain to ours
    ...                         # spin; on SIGINT/SIGTERM leave the spin, stop threads, destroy the node
    guard.exit(code)            # flush and end the process without the interpreter's teardown

Every node of the suite exits within 5 s of SIGINT and 2 s of SIGTERM, in any state. Two things used to
stop that. The interpreter's teardown after ``main`` returned took 0.3-1.4 s on an idle 2-core machine
(garbage-collecting torch and DDS objects, finalising daemon threads still inside native code), more
under load. And cleanup that blocks (a worker thread in a long native call, a DDS entity that does not
go away) kept a process alive with nothing to end it: a later SIGTERM only reached rclpy's handler,
which had already shut the context down. So:

- the first signal arms :mod:`faulthandler`'s watchdog, a native thread that needs no GIL: if the
  process is still alive at the deadline it prints every thread's stack (the cause, for the bug report)
  and ends the process with exit status 1;
- a second signal ends the process at once;
- :meth:`ExitGuard.exit` ends the process as soon as the node's own cleanup is done (``os._exit``): what
  must survive (datasets, checkpoints, logs) is closed explicitly by the node before it.

The signal is seen on two paths: the Python handler (main thread, between bytecodes) and a watcher
thread woken through :func:`signal.set_wakeup_fd`, which arms the deadline even while the main thread
sits in a native call.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import NoReturn

#: Seconds from the first signal to a forced exit: inside the 5 s (SIGINT) and 2 s (SIGTERM) that a
#: launcher gives before it escalates.
EXIT_DEADLINE_S = {signal.SIGINT: 4.0, signal.SIGTERM: 1.5}


class ExitGuard:
    """The exit discipline of one executable (one per process, installed from its main thread)."""

    def __init__(self, program: str) -> None:
        self.program = program
        self.signalled: signal.Signals | None = None  # the first SIGINT/SIGTERM received
        self._armed = threading.Lock()
        self._installed = False
        self._handled = False  # the Python handler ran once

    def install(self) -> ExitGuard:
        """Take SIGINT and SIGTERM. Call before ``rclpy.init()``, whose handlers chain to the ones found."""
        for sig in EXIT_DEADLINE_S:
            signal.signal(sig, self._on_signal)
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(read_fd,), name="exit-guard", daemon=True).start()
        self._installed = True
        return self

    def arm(self, sig: int) -> None:
        """Start the deadline of ``sig`` (once: later signals do not extend it)."""
        if not self._armed.acquire(blocking=False):
            return
        self.signalled = signal.Signals(sig)
        faulthandler.dump_traceback_later(EXIT_DEADLINE_S[self.signalled], exit=True, file=sys.__stderr__)

    def _watch(self, read_fd: int) -> None:
        while True:
            for byte in os.read(read_fd, 64):
                if byte in EXIT_DEADLINE_S:
                    self.arm(byte)

    def _on_signal(self, signum: int, frame) -> None:
        # Nothing is raised here: rclpy's own handler (which chains to this one) has shut the ROS context
        # down, which ends the spin and every wait that watches ``rclpy.ok()``. An exception raised from a
        # handler would land wherever the main thread happens to be, cleanup included.
        if self._handled:
            self._say(f"second {signal.Signals(signum).name}: exiting now")
            self._end(128 + signum)
        self._handled = True
        self.arm(signum)

    def exit(self, code: int) -> NoReturn:
        """End the process with ``code`` now that the node cleaned up (outside an installed guard: SystemExit)."""
        if not self._installed:
            raise SystemExit(code)
        self._end(code)

    def _end(self, code: int) -> NoReturn:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)

    def _say(self, text: str) -> None:
        print(f"[{self.program}] {text}", file=sys.__stderr__, flush=True)


def wait_until(ready: Callable[[], object], what: str, timeout_s: float, log: Callable[[str], None],
               every_s: float = 5.0, poll_s: float = 0.05, stop: Callable[[], bool] | None = None) -> bool:
    """Wait for ``ready()`` up to ``timeout_s``, logging ``waiting for <what>`` every ``every_s`` seconds.

    A cold machine (first robosuite import, a model loading from a slow disk) takes minutes where a warm one
    takes seconds, so waits have a generous deadline and say what they wait for instead of a fixed guess.
    Returns whether ``ready()`` held; False at once when ``stop()`` turns true.
    """
    start = time.monotonic()
    next_log = start + every_s
    while not ready():
        now = time.monotonic()
        if now - start >= timeout_s or (stop is not None and stop()):
            return bool(ready())
        if now >= next_log:
            log(f"waiting for {what} ({now - start:.0f} s of at most {timeout_s:g} s)")
            next_log = now + every_s
        time.sleep(poll_s)
    return True


#: How long a node's shutdown waits for its worker threads, all together: well inside the SIGTERM deadline,
#: so the node destroys its ROS entities itself rather than the watchdog ending it.
THREAD_JOIN_BUDGET_S = 1.0


def join_threads(threads, budget_s: float = THREAD_JOIN_BUDGET_S) -> list[str]:
    """Join ``threads`` (told to stop already) within one shared budget; the names of those still running.

    A worker in a long native call (a policy forward pass of a large model on a CPU) cannot be interrupted;
    it is a daemon thread and ends with the process."""
    deadline = time.monotonic() + budget_s
    for thread in threads:
        if thread is not None:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
    return [t.name for t in threads if t is not None and t.is_alive()]


def spin_until_shutdown(executor) -> None:
    """``executor.spin()`` for a background thread: returns quietly once the ROS context is shut down (rclpy's
    signal handler does that on SIGINT/SIGTERM) instead of printing ExternalShutdownException's traceback."""
    from rclpy.executors import ExternalShutdownException  # here: this module stays ROS-free at import

    try:
        executor.spin()
    except ExternalShutdownException:
        pass
