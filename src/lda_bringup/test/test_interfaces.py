"""Every lda_msgs type crosses a process boundary over loopback DDS intact."""

import sys
from pathlib import Path

import pytest
from lda_testing.ros import NodeProcess, ros_node, wait_for

from lda_msgs.msg import ActionChunk, SafetyStatus
from lda_msgs.srv import ResetSim, StartEpisode, StopEpisode

sys.path.insert(0, str(Path(__file__).parent))
from interface_peer import LATCHED, sample_chunk, sample_status  # noqa: E402


@pytest.fixture(scope="module")
def peer():
    with NodeProcess([sys.executable, str(Path(__file__).parent / "interface_peer.py")]) as proc:
        assert proc.wait_for_output("peer ready", timeout=20), proc.output
        yield proc


def test_messages_arrive_intact(peer):
    with ros_node("probe_msgs") as node:
        chunks, statuses = [], []
        node.create_subscription(ActionChunk, "peer/chunk", chunks.append, LATCHED)
        node.create_subscription(SafetyStatus, "peer/status", statuses.append, LATCHED)
        assert wait_for(lambda: chunks and statuses, timeout=15), "no message from the peer process"
    assert chunks[0] == sample_chunk()
    assert statuses[0] == sample_status()
    assert len(chunks[0].actions) == chunks[0].horizon * chunks[0].action_dim
    assert statuses[0].level == SafetyStatus.STOP > SafetyStatus.WARN > SafetyStatus.OK


def _call(node, srv_type, name, request):
    client = node.create_client(srv_type, name)
    assert client.wait_for_service(timeout_sec=15), f"service {name} not found"
    future = client.call_async(request)
    assert wait_for(future.done, timeout=10), f"no answer from {name}"
    return future.result()


def test_episode_services_round_trip(peer):
    with ros_node("probe_srvs") as node:
        started = _call(node, StartEpisode, "peer/start_episode", StartEpisode.Request(task="pick the can"))
        low = StopEpisode.Request(quality=StopEpisode.Request.QUALITY_LOW)
        saved = _call(node, StopEpisode, "peer/stop_episode", low)
        dropped = _call(node, StopEpisode, "peer/stop_episode", StopEpisode.Request(discard=True))
        refused = _call(node, StopEpisode, "peer/stop_episode", StopEpisode.Request(quality="medium"))
        reset = _call(node, ResetSim, "peer/reset", ResetSim.Request(seed=2**33 + 1))
    assert (started.success, started.episode_index, started.message) == (True, 5, "recording 'pick the can'")
    assert (saved.success, saved.episode_index, saved.message) == (True, 5, "saved as low")
    assert (dropped.success, dropped.episode_index) == (True, -1)
    assert refused.success is False
    assert (reset.success, reset.message) == (True, f"reset with seed {2**33 + 1}")
