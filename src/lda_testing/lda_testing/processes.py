"""Child processes that tests can always end: a launch, a node, a script, with everything they started.

    result = run_tree(["lda-launch", "launch/x.launch.yaml"], timeout=60)    # like subprocess.run
    with NodeProcess(["sim_node", "--ros-args", ...]) as proc: ...           # lda_testing.ros, same tree rule

A child runs in a session of its own and carries a marker in its environment (``LDA_PROCESS_TREE``), which
every process it starts inherits, including nodes that ``lda-launch`` starts in sessions of their own and
orphans re-parented to init. When a limit is reached, or the test is done, every process with the marker
gets SIGKILL. So a hang fails one test within its limit instead of stalling the run, and nothing a test
started outlives it (a node left spinning at 100 % once slowed every later test of a CI run).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

MARKER = "LDA_PROCESS_TREE"


def new_tree_env(env: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """A fresh marker and the environment that carries it (``os.environ`` plus ``env``)."""
    token = uuid.uuid4().hex
    return token, dict(os.environ, **(env or {}), **{MARKER: token})


def tree_pids(token: str, variable: str = MARKER) -> list[int]:
    """Live processes (not zombies) whose environment has ``variable=token``: the tree a child started, wherever
    it went. (A process's own later ``os.environ`` changes are not in /proc: only what it was started with.)"""
    needle = f"{variable}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):  # gone meanwhile, or not ours to read
            continue
        if state != "Z":
            found.append(int(entry.name))
    return found


def kill_tree(token: str, wait_s: float = 5.0, variable: str = MARKER) -> list[int]:
    """SIGKILL every process of the tree; the pids that were still alive."""
    pids = tree_pids(token, variable)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait_s
    while tree_pids(token, variable) and time.monotonic() < deadline:
        time.sleep(0.02)
    return pids


def run_tree(cmd: list[str], timeout: float, env: dict[str, str] | None = None,
             **kwargs) -> subprocess.CompletedProcess:
    """:func:`subprocess.run` with ``capture_output=True, text=True`` whose timeout ends the whole tree.

    On timeout it raises :class:`subprocess.TimeoutExpired` carrying the output so far, as ``run`` does, but
    only after every process of the tree is dead (so the pipes close and nothing lingers)."""
    token, full_env = new_tree_env(env)
    proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(token)
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(cmd, timeout, output=out, stderr=err) from None
    finally:
        kill_tree(token)  # what the child left behind (a node started in its own session)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
