"""The teleop_recorder node end to end: real process, real DDS, real LeRobot dataset and rosbag2 files.

A peer publishes a synthetic trajectory with known poses; the recorded actions must equal the expected
deltas, images must land on the right frames, labels must round-trip, and bad input must be diagnosed
while the good data is kept.
"""

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from lda_common.schema import read_episode_labels
from lda_teleop_record.bag2lerobot import main as bag2lerobot
from lda_testing.ros import NodeProcess, ros_node
from lerobot.datasets.lerobot_dataset import LeRobotDataset

sys.path.insert(0, str(Path(__file__).parent))
from ros_helpers import Teleop, recorder_cmd  # noqa: E402

from lda_testing import teleop as syn  # noqa: E402

NAME = f"rec_main_{time.monotonic_ns() % 100000}"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recorder")
    robot = syn.write_robot(tmp / "test_bimanual.yaml")
    dataset = tmp / "dataset"
    # reliable: the frame-exact checks below must not depend on a loaded machine losing best-effort samples
    cmd = recorder_cmd(NAME, robot, dataset, write_bag=True, bag_dir=tmp / "bags", min_free_disk_mb=1.0,
                       sensor_reliable=True)
    with NodeProcess(cmd) as proc:
        assert proc.wait_for_output("recorder ready", timeout=60), proc.output
        with ros_node(f"teleop_{NAME}") as node:
            teleop = Teleop(node, NAME, syn.TOPICS)
            yield {"proc": proc, "teleop": teleop, "dataset": dataset, "bags": tmp / "bags", "robot": robot,
                   "tmp": tmp}


def _episode_rows(ds, episode):
    return [ds[i] for i in range(len(ds)) if ds[i]["episode_index"].item() == episode]


def _seq(img) -> int:
    """Camera sequence number (mod 28) of a (3, H, W) image in [0, 1]."""
    assert img.ndim == 3
    return syn.seq_from_red(float(img[0].mean()) * 255)


def _img(row, key, k=0):
    """The k-th image of a delta_timestamps window (LeRobot drops the window axis for a single delta)."""
    x = row[key]
    return x[k] if x.ndim == 4 else x


def _check_rows(rows, quality_id):
    """Frames vs ground truth: images, states, actions (tick_index gives each frame's time)."""
    ticks = [r["tick_index"].item() for r in rows]
    seq0 = _seq(_img(rows[0], "observation.images.head"))  # camera frame the 10 Hz grid started on
    for i, r in enumerate(rows):
        t = seq0 / 30 + 0.1 * ticks[i]
        assert _seq(_img(r, "observation.images.head")) == (seq0 + 3 * ticks[i]) % 28, f"head image of frame {i}"
        assert _seq(_img(r, "observation.images.wrist")) == (seq0 + 3 * ticks[i]) % 28, f"wrist image of frame {i}"
        head_rgb = _img(r, "observation.images.head").mean(dim=(1, 2)).numpy() * 255
        assert abs(head_rgb[2] - syn.CAM_BLUE["head"]) < 4, "bgr8 must be stored as RGB"
        assert np.allclose(r["observation.state"].numpy(), syn.expected_state(t), atol=1e-5)
        assert r["quality"].item() == quality_id
        next_ok = i + 1 < len(rows) and ticks[i + 1] == ticks[i] + 1
        if quality_id == 2 or not next_ok:
            assert not r["action_valid"].item() and not r["action"][0].any()
        else:
            assert r["action_valid"].item()
            want = syn.expected_action(t, t + 0.1)
            assert np.allclose(r["action"][0].numpy(), want, atol=1e-5), (i, r["action"][0].numpy() - want)
            if i + 1 < len(rows):  # the chunk's second row is the next frame's action
                assert np.allclose(r["action"][1].numpy(), rows[i + 1]["action"][0].numpy())
    return ticks


def test_recorded_episodes_match_the_trajectory(env):
    teleop = env["teleop"]
    started = teleop.start("stack the blocks")
    assert started.success and started.episode_index == 0, started.message
    teleop.play(syn.Plan())
    saved = teleop.stop("high")
    assert saved.success and saved.episode_index == 0, saved.message
    assert saved.message.startswith("saved episode 0 (high, 20 frames, 19 valid actions, task 'stack the blocks')"), \
        (saved.message, teleop.lost, env["proc"].output[-3000:])

    started = teleop.start("")  # task from the instruction topic, received during the episode
    assert started.success and started.episode_index == 1, started.message
    teleop.play(syn.Plan(instruction="wipe the table"))
    assert teleop.stop("low").episode_index == 1

    assert teleop.start("pour the water").success
    teleop.play(syn.Plan(duration_s=1.5))
    assert teleop.stop("actionless").success

    assert teleop.start("oops").success
    teleop.play(syn.Plan(duration_s=0.5))
    dropped = teleop.stop(discard=True)
    assert dropped.success and dropped.episode_index == -1 and "discarded" in dropped.message
    assert ('"event": "stop", "quality": "actionless"' in " ".join(teleop.events)
            and '"event": "discard"' in teleop.events[-1])

    ds = LeRobotDataset("t/rec", root=env["dataset"],
                        delta_timestamps={"action": [0.0, 0.1, 0.2], "observation.images.head": [0.0, 0.5],
                                          "observation.images.wrist": [0.0]})
    assert ds.num_episodes == 3
    labels = read_episode_labels(env["dataset"])
    assert [(e["quality"], e["task"], e["length"]) for e in labels] == [
        ("high", "stack the blocks", 20), ("low", "wipe the table", 20), ("actionless", "pour the water", 15)]
    for episode, quality_id in ((0, 0), (1, 1), (2, 2)):
        rows = _episode_rows(ds, episode)
        ticks = _check_rows(rows, quality_id)
        assert ticks == list(range(len(rows)))  # nothing dropped on a clean run
        assert rows[0]["task"] == labels[episode]["task"]
        ahead = _img(rows[2], "observation.images.head", 1)  # 0.5 s later: 15 camera frames on
        assert _seq(ahead) == (_seq(_img(rows[2], "observation.images.head")) + 15) % 28
    assert ds.meta.features["action"]["names"][:7] == ["left/dx", "left/dy", "left/dz", "left/drx", "left/dry",
                                                       "left/drz", "left/gripper"]


def test_episode_bags_convert_to_the_same_episode(env, capsys):
    """The per-episode MCAP beside the dataset replays through lda-bag2lerobot into identical frames."""
    bag = env["bags"] / "episode_000001"
    assert (bag / "metadata.yaml").is_file() and list(bag.glob("*.mcap"))
    assert read_episode_labels(env["dataset"])[1]["bag"].endswith("episode_000001")
    out = env["tmp"] / "from_bag"
    assert bag2lerobot(["--bag", str(bag), "--out", str(out), "--robot-config", str(env["robot"])]) == 0
    assert "saved episode 0 (low, 20 frames" in capsys.readouterr().out  # label and task from the bag's events
    again = LeRobotDataset("t/bag", root=out)
    orig = LeRobotDataset("t/rec", root=env["dataset"])
    rows = _episode_rows(orig, 1)
    assert len(again) == len(rows) and again[0]["task"] == "wipe the table"
    for i in range(len(again)):
        for key in ("action", "observation.state", "action_valid", "tick_index", "quality"):
            assert np.array_equal(again[i][key].numpy(), rows[i][key].numpy()), key


@pytest.mark.parametrize(("plan", "complaint", "min_frames", "max_frames"), [
    (syn.Plan(bad_size_from=1.0), "image size changed mid-episode from 64x48 to 32x24", 10, 11),
    (syn.Plan(bad_encoding_from=1.0), "encoding changed mid-episode from 'bgr8' to 'mono8'", 10, 11),
    # NaN from 0.48 s to 0.83 s: no valid pose within 20 ms of the ticks 0.5-0.8 s, so exactly those 4 drop
    (syn.Plan(nan_pose=(0.48, 0.83)), "pose has NaN or infinite values", 16, 16),
    (syn.Plan(bad_norm=(0.48, 0.83)), "orientation is not a unit quaternion (norm 1.5000", 16, 16),
    (syn.Plan(backwards_at=[0.7, 1.2]), "goes backwards from the previous", 20, 20),
    (syn.Plan(camera_silent=(0.8, 1.3)), "no usable sample within 20 ms of 5 tick(s) at 0.800-1.200 s", 15, 15),
], ids=["size", "encoding", "nan", "norm", "backwards", "silent"])
def test_bad_input_is_diagnosed_and_good_data_kept(env, plan, complaint, min_frames, max_frames):
    teleop, proc = env["teleop"], env["proc"]
    assert teleop.start("bad input").success
    try:
        teleop.play(plan)
        assert proc.wait_for_output(complaint, timeout=5), proc.output[-3000:]
    finally:
        saved = teleop.stop("high")  # also when the check above failed: leave the recorder idle
    assert saved.success, saved.message
    ds = LeRobotDataset("t/rec", root=env["dataset"], delta_timestamps={"action": [0.0, 0.1],
                                                                         "observation.images.head": [0.0],
                                                                         "observation.images.wrist": [0.0]})
    rows = _episode_rows(ds, saved.episode_index)
    assert min_frames <= len(rows) <= max_frames, (saved.message, teleop.lost, proc.output[-3000:])
    ticks = _check_rows(rows, 0)  # every recorded frame is still exactly right
    if min_frames in (15, 16):
        assert "dropped" in saved.message and len(set(range(max(ticks) + 1)) - set(ticks)) > 0


def test_service_misuse_is_refused(env):
    teleop = env["teleop"]
    idle = teleop.stop("high")
    assert not idle.success and "not recording" in idle.message and idle.episode_index == -1
    assert teleop.start("first").success
    again = teleop.start("second")
    assert not again.success and "already recording episode" in again.message
    wrong = teleop.stop("medium")
    assert not wrong.success and "unknown quality 'medium'" in wrong.message
    assert teleop.stop(discard=True).success
    assert teleop.diag["state"] == "idle" or teleop.start("x").success and teleop.stop(discard=True).success


def test_diagnostics_show_a_lossy_stream_while_it_happens(env):
    """3 of every 10 right poses never arrive: while the run lasts, the diagnostics report about 70 of 100 Hz
    for that stream (the expected rate read from the stamps) and a WARN naming it, with no rate configured."""
    from diagnostic_msgs.msg import DiagnosticStatus

    teleop = env["teleop"]
    seen: list[tuple[float, dict]] = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen.append((time.monotonic(), dict(teleop.diag)))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    t0 = time.monotonic()
    watcher.start()
    try:
        teleop.play(syn.Plan(duration_s=4.0, lose_right_pose=(2, 5, 8)))
    finally:
        done.set()
        watcher.join()
    right, left = "/robot/right/eef_pose", "/robot/left/eef_pose"
    # snapshots whose 2 s window lies inside the 4 s run
    during = [d for t, d in seen if 2.4 <= t - t0 <= 3.9 and d.get(f"expected_hz {right}")]
    assert during, [d.get("_message") for _, d in seen][-5:]

    def share(d, topic):
        return float(d[f"rate_hz {topic}"]) / float(d[f"expected_hz {topic}"])

    d = during[len(during) // 2]
    assert 90 <= float(d[f"expected_hz {right}"]) <= 110 and 90 <= float(d[f"expected_hz {left}"]) <= 110, d
    assert 0.55 <= share(d, right) <= 0.8, d  # 70 % arrive
    assert share(d, left) - share(d, right) > 0.15, d  # the same publisher's intact stream: not that lossy
    assert d["_level"] == str(DiagnosticStatus.WARN) and "right EEF pose (/robot/right/eef_pose): " in d["_message"], d
