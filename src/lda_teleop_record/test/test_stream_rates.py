"""StreamRates: received rate against the rate read from the stamps (ROS-free)."""

import pytest
from lda_common.messages import peek_stamp_ns
from lda_teleop_record.recording import StreamRates

from lda_testing import teleop as syn

MS = 1_000_000


def test_losses_show_against_the_stamped_rate():
    rates = StreamRates(window_s=2.0)
    t0 = 5_000 * MS
    for k in range(300):  # 3 s of a 100 Hz stream; 3 of every 10 messages lost
        if k % 10 not in (2, 5, 8):
            rates.add("/pose", t0 + k * 10 * MS + 3 * MS, t0 + k * 10 * MS)
    received, expected = rates.rates(t0 + 3000 * MS)["/pose"]
    assert expected == pytest.approx(100.0)
    assert received == pytest.approx(70.0, abs=1.0)


def test_a_silent_stream_reads_zero_of_its_rate_and_unstamped_streams_have_no_expectation():
    rates = StreamRates(window_s=1.0)
    for k in range(30):  # 1 s at 30 Hz, then nothing
        rates.add("/cam", k * 33 * MS, k * 33 * MS)
        rates.add("/nostamp", k * 33 * MS, None)
    received, expected = rates.rates(5000 * MS)["/cam"]
    assert received == 0.0 and expected == pytest.approx(1000 / 33)
    assert rates.rates(1000 * MS)["/nostamp"][1] is None


def test_stamps_are_read_from_the_cdr_bytes():
    ns = 1_700_000_000_123_456_789
    assert peek_stamp_ns(syn.pose_cdr([0.1, 0.2, 0.3], [0, 0, 0, 1.0], ns)) == ns
    assert peek_stamp_ns(syn.image_cdr("head", 3, ns)) == ns
    assert peek_stamp_ns(b"\x00\x01\x00") is None
