"""lda-launch: start the nodes a YAML launch file declares, where ``ros2 launch`` is absent.

    lda-launch launch/policy.launch.yaml robot:=gr1_humanoid checkpoint:=/path/to/ckpt
    lda-launch launch/policy.launch.yaml --show-args     # declared arguments and defaults
    lda-launch launch/policy.launch.yaml --print         # resolved command lines, start nothing

Each node runs as its own process (in its own process group) with its output prefixed by its name. On
SIGINT/SIGTERM, or when a required node exits, every node's process group gets SIGINT, then SIGTERM after
5 s, then SIGKILL after 5 s more, so processes a node started go too. A node with ``on_exit: shutdown`` is required:
when it exits the others are stopped, and when it died (non-zero exit) lda-launch exits non-zero.
Children get SIGTERM from the kernel if lda-launch itself is killed, so nothing is left running.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

from lda_bringup.launch_description import LaunchDescription, LaunchError, ProcessSpec

_PR_SET_PDEATHSIG = 1
_STOP_GRACE_S = 5.0


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends SIGTERM when lda-launch dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class _Running:
    def __init__(self, spec: ProcessSpec):
        self.spec = spec
        env = dict(os.environ, PYTHONUNBUFFERED="1", **spec.env)
        self.proc = subprocess.Popen(
            spec.cmd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal Ctrl-C reaches children once, through us
            preexec_fn=_die_with_parent,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        _say(f"started {spec.name} (pid {self.proc.pid})")

    def _pump(self) -> None:
        for raw in self.proc.stdout:
            sys.stdout.write(f"[{self.spec.name}] {raw.decode(errors='replace')}")
            sys.stdout.flush()


def _say(msg: str) -> None:
    print(f"[lda-launch] {msg}", flush=True)


def run(processes: list[ProcessSpec]) -> int:
    """Supervise ``processes`` until all exit, a required one exits, or we are signalled."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    running = [_Running(spec) for spec in processes]
    started = list(running)  # a node that exited may have left processes it started
    exit_code = 0
    while running and not stop.is_set():
        time.sleep(0.05)
        for item in list(running):
            rc = item.proc.poll()
            if rc is None:
                continue
            running.remove(item)
            _say(f"{item.spec.name} exited with code {rc}")
            if item.spec.required:
                if rc != 0:
                    _say(f"required node {item.spec.name} died; shutting down")
                    exit_code = rc if rc > 0 else 1
                stop.set()
            elif item.spec.respawn and not stop.is_set():
                time.sleep(item.spec.respawn_delay)
                running.append(_Running(item.spec))
                started.append(running[-1])
    _shutdown(started)
    return exit_code


def _group_alive(r: _Running) -> bool:
    """Whether the node or a process it started is still running (its process group has a member)."""
    r.proc.poll()  # reap the node itself, so a finished node is not counted as a zombie member
    try:
        os.killpg(r.proc.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(r: _Running, sig: int) -> None:
    try:
        os.killpg(r.proc.pid, sig)
    except ProcessLookupError:
        pass


def _shutdown(started: list[_Running]) -> None:
    running = [r for r in started if _group_alive(r)]
    for sig, grace in ((signal.SIGINT, _STOP_GRACE_S), (signal.SIGTERM, _STOP_GRACE_S), (signal.SIGKILL, 0)):
        alive = [r for r in running if _group_alive(r)]
        if not alive:
            break
        for r in alive:
            _signal_group(r, sig)
        deadline = time.monotonic() + grace
        while grace and time.monotonic() < deadline and any(_group_alive(r) for r in alive):
            time.sleep(0.05)
        for r in alive:
            if _group_alive(r) and sig != signal.SIGKILL:
                _say(f"{r.spec.name} still running after {signal.Signals(sig).name}")
    for r in running:
        _say(f"{r.spec.name} stopped (code {r.proc.wait()})")


def parse_launch_arguments(items: list[str]) -> dict[str, str]:
    arguments = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise LaunchError(f"launch arguments are name:=value, got '{item}'")
        arguments[name] = value
    return arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lda-launch", description=__doc__.split("\n")[0])
    parser.add_argument("file", help="a YAML launch file (*.launch.yaml)")
    parser.add_argument("arguments", nargs="*", help="launch arguments as name:=value")
    parser.add_argument("-s", "--show-args", action="store_true", help="list the declared arguments")
    parser.add_argument("--print", action="store_true", help="print the resolved commands and exit")
    opts = parser.parse_args(argv)
    try:
        description = LaunchDescription(opts.file, parse_launch_arguments(opts.arguments),
                                        declarations_only=opts.show_args)
    except LaunchError as exc:
        print(f"lda-launch: error: {exc}", file=sys.stderr)
        return 2
    try:
        return _execute(description, opts)
    finally:
        description.cleanup()


def _execute(description: LaunchDescription, opts: argparse.Namespace) -> int:
    if opts.show_args:
        for arg in description.declared:
            default = "(required)" if arg.default is None else f"default: '{arg.default}'"
            print(f"'{arg.name}': {arg.description} {default}")
        return 0
    if opts.print:
        for spec in description.processes:
            print(f"{spec.name}: {' '.join(spec.cmd)}")
            generated = [a for a in spec.cmd if description.params_dir and a.startswith(str(description.params_dir))]
            for file in generated:
                print(f"  {file}:\n" + "".join(f"    {line}\n" for line in open(file).read().splitlines()), end="")
        return 0
    if not description.processes:
        print("lda-launch: error: the launch file starts no process", file=sys.stderr)
        return 2
    return run(description.processes)


if __name__ == "__main__":
    sys.exit(main())
