"""Timestamp alignment to the 10 Hz grid: nearest sample within tolerance, gaps, bad stamps, end of episode."""

import pytest
from lda_common.alignment import BadSample, FrameSync

MS = 1_000_000


def _sync(**kw):
    args = dict(streams=["cam", "pose"], reference="cam", period_ns=100 * MS, tolerance_ns=20 * MS,
                max_latency_ns=300 * MS)
    args.update(kw)
    return FrameSync(**args)


def _feed(sync, cam_ms, pose_ms):
    events = [(t, "cam") for t in cam_ms] + [(t, "pose") for t in pose_ms]
    ticks = []
    for t, s in sorted(events):
        assert sync.push(s, t * MS, f"{s}@{t}") is None
        ticks += sync.poll()
    return ticks


def test_nearest_sample_within_tolerance_per_tick():
    sync = _sync()
    cams = [1000 + 33 * k for k in range(31)]  # ~30 Hz camera, grid anchored at its first frame
    poses = [995 + 10 * k for k in range(102)]  # 100 Hz poses, 5 ms off the grid
    ticks = _feed(sync, cams, poses) + sync.poll(final=True)
    assert [t.index for t in ticks] == list(range(11))
    assert all(t.complete for t in ticks)
    assert ticks[3].values["pose"] == "pose@1295" and ticks[3].stamps["pose"] == 1295 * MS
    assert ticks[3].values["cam"] == "cam@1297"  # 1000 + 33 * 9, nearest to 1300
    assert ticks[3].stamp_ns == 1300 * MS


def test_silent_stream_gives_gaps_decided_by_latency():
    sync = _sync()
    cams = [1000 + 100 * k for k in range(20)]
    poses = [1000 + 10 * k for k in range(200) if not 1250 <= 1000 + 10 * k < 1660]  # silent 1250..1650
    ticks = _feed(sync, cams, poses)
    gaps = [t.index for t in ticks if not t.complete]
    assert gaps == [3, 4, 5, 6]  # 1.3..1.6 s have no pose within 20 ms
    assert ticks[3].missing == ["pose"] and ticks[3].values == {}
    # a stream silent for good: ticks are still decided once the others run max_latency ahead
    sync = _sync()
    ticks = _feed(sync, [1000 + 100 * k for k in range(10)], [1000, 1010])
    assert [t.complete for t in ticks[:2]] == [True, False] and len(ticks) >= 5


def test_backwards_and_repeated_stamps_are_refused():
    sync = _sync()
    assert sync.push("cam", 1000 * MS, "a") is None
    assert "goes backwards" in sync.push("cam", 900 * MS, "b")
    assert "repeats" in sync.push("cam", 1000 * MS, "c")
    assert sync.push("cam", 1100 * MS, "d") is None


def test_final_trims_the_ragged_end_but_reports_a_stream_that_died():
    sync = _sync(max_latency_ns=2000 * MS)
    fed = _feed(sync, [1000 + 100 * k for k in range(10)], [1000 + 10 * k for k in range(50)])  # poses end 1.49 s
    ticks = fed + sync.poll(final=True)
    assert [t.index for t in ticks] == [0, 1, 2, 3, 4, 5, 6, 7]  # 1.49 s serves tick 5; 8, 9 are the ragged end
    assert [t.complete for t in ticks] == [True] * 6 + [False, False]  # 6, 7: poses died before the end
    assert sync.poll(final=True) == []
    sync = _sync()
    ticks = _feed(sync, [1000 + 100 * k for k in range(10)], [1000 + 10 * k for k in range(93)]) + sync.poll(True)
    assert len(ticks) == 10 and all(t.complete for t in ticks[:-1]) and ticks[-1].index == 9 and ticks[-1].complete


def test_rejected_sample_falls_back_to_the_next_nearest():
    rejected = []

    def convert(value):
        if value == "cam@1100":
            raise BadSample("corrupt")
        return value

    sync = _sync(converters={"cam": convert}, on_reject=lambda s, t, why: rejected.append((s, t, why)))
    ticks = _feed(sync, [1000, 1100, 1110, 1200, 1300, 1400, 1500], [1000 + 10 * k for k in range(60)])
    assert ticks[1].values["cam"] == "cam@1110"
    assert rejected == [("cam", 1100 * MS, "corrupt")]


def test_bad_construction():
    with pytest.raises(ValueError, match="reference stream"):
        _sync(reference="depth")
    with pytest.raises(ValueError, match="tolerance"):
        _sync(tolerance_ns=200 * MS)
