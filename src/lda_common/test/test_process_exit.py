"""lda_common.process_exit without ROS: the exit deadline ends a process whose cleanup never finishes, a second
signal ends it at once, waits log what they wait for, thread joins share one budget."""

import signal
import subprocess
import sys
import threading
import time

import pytest
from lda_common.process_exit import EXIT_DEADLINE_S, join_threads, wait_until

# A program whose "cleanup" never ends: it keeps sleeping after the signal, as a node stuck in destroy_node did.
STUCK = """
import time
from lda_common.process_exit import ExitGuard
guard = ExitGuard("stuck").install()
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


def start_stuck() -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", STUCK], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_deadline_ends_a_process_stuck_in_cleanup_and_shows_where(sig):
    proc = start_stuck()
    start = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    elapsed = time.monotonic() - start
    assert proc.returncode == 1, err
    assert EXIT_DEADLINE_S[sig] - 0.1 < elapsed < EXIT_DEADLINE_S[sig] + 1.5, elapsed
    assert "Timeout (" in err and "most recent call first" in err, err  # every thread's stack: where it was stuck


def test_a_second_signal_exits_at_once():
    proc = start_stuck()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGINT and time.monotonic() - start < 1.0, err
    assert "second SIGINT: exiting now" in err


def test_wait_until_says_what_it_waits_for_and_stops_early():
    lines = []
    ready_at = time.monotonic() + 0.35
    assert wait_until(lambda: time.monotonic() > ready_at, "the thing", 5.0, lines.append, every_s=0.1, poll_s=0.01)
    assert len(lines) >= 2 and lines[0].startswith("waiting for the thing (0 s of at most 5 s)"), lines
    assert not wait_until(lambda: False, "nothing", 0.2, lines.append, poll_s=0.01)
    start = time.monotonic()
    assert not wait_until(lambda: False, "nothing", 60.0, lines.append, stop=lambda: True)
    assert time.monotonic() - start < 0.5


def test_join_threads_shares_one_budget_and_names_who_is_still_running():
    stop = threading.Event()
    quick = threading.Thread(target=stop.wait, args=(0.05,), name="quick", daemon=True)
    stuck = [threading.Thread(target=time.sleep, args=(5.0,), name=f"stuck{i}", daemon=True) for i in range(3)]
    for t in (quick, *stuck):
        t.start()
    start = time.monotonic()
    assert join_threads([quick, None, *stuck], budget_s=0.3) == ["stuck0", "stuck1", "stuck2"]
    assert time.monotonic() - start < 0.6  # one budget for all, not 0.3 s per thread
