"""The shipped dexterous-hand config (fingers.type keypoints) recorded live and converted from a bag.

A peer publishes a single arm's EEF pose (PoseStamped), its five fingertips (PoseArray in the EEF frame)
and two cameras over loopback DDS to the real teleop_recorder process configured with
config/robots/dexterous_hand.yaml. The dataset, read back with LeRobot's own LeRobotDataset, must hold the
keypoint columns, with the fingertips moved into the canonical (palm) frame; the same messages in a
rosbag2 must convert to the same content; bad keypoint messages are named and the good frames kept.
Both cameras publish 64x48 images that the config resizes to 224x224 (the wrist one as JPEG: a resized
compressed stream must not read as a size change after its first image).
"""

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from lda_common.bag_io import BagWriter
from lda_common.robot_config import load_robot_config
from lda_common.schema import read_episode_labels
from lda_teleop_record.bag2lerobot import main as bag2lerobot
from lda_testing.ros import NodeProcess, ros_node
from lerobot.datasets.lerobot_dataset import LeRobotDataset

sys.path.insert(0, str(Path(__file__).parent))
from ros_helpers import Teleop, recorder_cmd  # noqa: E402

from lda_testing import teleop as syn  # noqa: E402

ROBOT = Path(__file__).resolve().parents[3] / "config" / "robots" / "dexterous_hand.yaml"
CONFIG = load_robot_config(ROBOT)
HAND = CONFIG.hands[0]
OFFSET = yaml.safe_load(ROBOT.read_text())["hands"][0]["canonical_offset"]  # the file's numbers, not the loader's
COUNT = 5
NAME = f"rec_hand_{time.monotonic_ns() % 100000}"
KP_LABEL = "right fingers (/robot/right/finger_keypoints)"
# 2.05 s: the last camera image (2.033 s) lies within tolerance_s (50 ms) of the tick at 2.0 s only, so the
# episode has 21 frames, the last one with every stream sampled exactly at its tick
DURATION_S = 2.05
# h264: each image's colour encodes its camera sequence number; at 224x224 libsvtav1 blends parts of
# consecutive flat-colour frames, h264 stores them exactly, so a frame landing on the wrong row shows
CODEC = "h264"


def _plan(**kwargs):
    return syn.KeypointHandPlan(CONFIG, duration_s=DURATION_S, **kwargs)


def test_config_has_the_keypoint_layout():
    assert CONFIG.robot == "dexterous_hand" and CONFIG.fps == 10 and CONFIG.hand_names == ["right"]
    assert HAND.fingers.type == "keypoints" and HAND.fingers.count == COUNT
    assert HAND.finger_msgtype == "geometry_msgs/msg/PoseArray"
    assert HAND.gripper_topic == "/robot/right/finger_keypoints"
    kp = [f"right/kp{i}_{a}" for i in range(COUNT) for a in "xyz"]
    assert CONFIG.action_names == [f"right/{c}" for c in ("dx", "dy", "dz", "drx", "dry", "drz")] + kp
    assert CONFIG.state_names == [f"right/{c}" for c in ("x", "y", "z", "qx", "qy", "qz", "qw")] + kp
    assert (CONFIG.action_dim, CONFIG.state_dim) == (6 + 3 * COUNT, 7 + 3 * COUNT)
    assert [c.name for c in CONFIG.cameras] == ["head", "wrist"] and CONFIG.cameras[1].type == "compressed"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hand")
    dataset = tmp / "dataset"
    # reliable: the frame-exact checks must not depend on a loaded machine losing best-effort samples
    cmd = recorder_cmd(NAME, ROBOT, dataset, write_bag=True, bag_dir=tmp / "bags", min_free_disk_mb=1.0,
                       sensor_reliable=True, video_codec=CODEC)
    with NodeProcess(cmd) as proc:
        assert proc.wait_for_output("recorder ready", timeout=60), proc.output
        with ros_node(f"teleop_{NAME}") as node:
            teleop = Teleop(node, NAME, syn.KeypointHandPlan(CONFIG).topics())
            yield {"proc": proc, "teleop": teleop, "dataset": dataset, "bags": tmp / "bags", "tmp": tmp}


def _rows(ds, episode):
    return [ds[i] for i in range(len(ds)) if ds[i]["episode_index"].item() == episode]


def _seq(row, cam):
    return syn.seq_from_red(float(row[f"observation.images.{cam}"][0].mean()) * 255)


def _check_rows(rows):
    """Each frame against the ground truth at its tick (tick_index gives its time; the grid starts at t=0)."""
    ticks = [r["tick_index"].item() for r in rows]
    for i, r in enumerate(rows):
        t = 0.1 * ticks[i]
        for cam in ("head", "wrist"):
            assert r[f"observation.images.{cam}"].shape == (3, 224, 224), "stored at the config's size"
            assert _seq(r, cam) == (3 * ticks[i]) % 28, f"{cam} image of frame {i}"
        want = syn.keypoint_hand_state("right", OFFSET, t, COUNT)
        assert np.allclose(r["observation.state"].numpy(), want, atol=1e-5), (i, r["observation.state"].numpy() - want)
        if i + 1 < len(rows) and ticks[i + 1] == ticks[i] + 1:
            assert r["action_valid"].item()
            want = syn.keypoint_hand_action("right", OFFSET, t, t + 0.1, COUNT)
            assert np.allclose(r["action"].numpy(), want, atol=1e-5), (i, r["action"].numpy() - want)
        else:
            assert not r["action_valid"].item() and not r["action"].any()
    return ticks


def _write_bag(path: Path, plan, latency_ns: int = 2_000_000) -> Path:
    bag = BagWriter(path.with_name(path.name + ".tmp"))
    for topic, msgtype, ns, cdr in plan.messages():
        bag.write(topic, msgtype, ns + latency_ns, cdr)
    return bag.commit(path)


def test_live_recording_and_bag_conversion_hold_the_keypoints(env, capsys):
    teleop = env["teleop"]
    started = teleop.start("pick up the sponge")
    assert started.success and started.episode_index == 0, started.message
    teleop.play(_plan())
    saved = teleop.stop("high")
    assert saved.message.startswith("saved episode 0 (high, 21 frames, 20 valid actions"), \
        (saved.message, teleop.lost, env["proc"].output[-3000:])

    live = LeRobotDataset("t/hand", root=env["dataset"])
    assert live.meta.robot_type == "dexterous_hand"
    for key, names in (("action", CONFIG.action_names), ("observation.state", CONFIG.state_names)):
        assert live.meta.features[key]["shape"] == (len(names),) and live.meta.features[key]["names"] == names
    rows = _rows(live, 0)
    assert _check_rows(rows) == list(range(21))
    # the keypoints really were moved: in the EEF frame the first fingertip is elsewhere
    assert not np.allclose(rows[3]["observation.state"].numpy()[7:10], syn.keypoints_at(0.3)[0], atol=1e-3)

    # (b) the same messages in a rosbag2, through lda-bag2lerobot
    bag = _write_bag(env["tmp"] / "hand_bag", _plan())
    out = env["tmp"] / "from_bag"
    assert bag2lerobot(["--bag", str(bag), "--out", str(out), "--robot-config", str(ROBOT), "--quality", "high",
                        "--task", "pick up the sponge", "--video-codec", CODEC]) == 0
    assert "saved episode 0 (high, 21 frames, 20 valid actions" in capsys.readouterr().out
    again = LeRobotDataset("t/bag", root=out)
    assert again.meta.features["action"] == live.meta.features["action"]
    assert again.meta.features["observation.state"] == live.meta.features["observation.state"]
    assert len(again) == len(rows)
    for i in range(len(again)):
        for key in ("action", "observation.state", "action_valid", "tick_index", "quality"):
            assert np.array_equal(again[i][key].numpy(), rows[i][key].numpy()), (i, key)
        assert _seq(again[i], "head") == _seq(rows[i], "head") and _seq(again[i], "wrist") == _seq(rows[i], "wrist")

    # the episode bag the recorder wrote beside the dataset converts to the same episode too
    out2 = env["tmp"] / "from_episode_bag"
    assert bag2lerobot(["--bag", str(env["bags"] / "episode_000000"), "--out", str(out2), "--robot-config",
                        str(ROBOT), "--video-codec", CODEC]) == 0
    capsys.readouterr()
    episode_bag = LeRobotDataset("t/ep", root=out2)
    assert len(episode_bag) == len(rows)
    for i in range(len(rows)):
        assert np.array_equal(episode_bag[i]["action"].numpy(), rows[i]["action"].numpy())


# Keypoints arrive every 20 ms and tolerance_s is 50 ms: with bad messages in [0.44, 0.87) s no good sample
# lies within 50 ms of the ticks 0.5-0.8 s, so exactly those 4 drop and 17 frames remain.
@pytest.mark.parametrize(("plan_kwargs", "complaint"), [
    ({"wrong_count": (0.44, 0.87)}, f"{KP_LABEL}: PoseArray has 4 keypoints, the config says 5"),
    ({"nan_keypoints": (0.44, 0.87)}, f"{KP_LABEL}: finger keypoints have NaN or infinite values"),
], ids=["wrong_count", "nan"])
def test_bad_keypoints_are_named_and_good_data_kept(env, plan_kwargs, complaint):
    teleop, proc = env["teleop"], env["proc"]
    before = read_episode_labels(env["dataset"])
    assert teleop.start("bad keypoints").success
    try:
        teleop.play(_plan(**plan_kwargs))
        assert proc.wait_for_output(complaint, timeout=5), proc.output[-3000:]
    finally:
        saved = teleop.stop("high")  # also when the check above failed: leave the recorder idle
    assert saved.success, saved.message
    assert "4 tick(s) without complete data were dropped" in saved.message, (saved.message, proc.output[-3000:])
    ds = LeRobotDataset("t/hand", root=env["dataset"])
    ticks = _check_rows(_rows(ds, saved.episode_index))  # every recorded frame is still exactly right
    assert ticks == [k for k in range(21) if k not in (5, 6, 7, 8)]
    # the episodes saved before are untouched
    assert read_episode_labels(env["dataset"])[:len(before)] == before
    for episode in range(len(before)):
        _check_rows(_rows(ds, episode))


def test_bad_keypoints_in_a_bag_are_named(tmp_path, capsys):
    bag = _write_bag(tmp_path / "bad", _plan(wrong_count=(0.44, 0.87)))
    out = tmp_path / "ds"
    assert bag2lerobot(["--bag", str(bag), "--out", str(out), "--robot-config", str(ROBOT), "--quality", "low",
                        "--video-codec", CODEC]) == 0
    text = capsys.readouterr()
    assert f"{KP_LABEL}: PoseArray has 4 keypoints, the config says 5" in text.err
    assert f"{KP_LABEL}: no usable sample within 50 ms of 4 tick(s) at 0.500-0.800 s" in text.err
    assert "saved episode 0 (low, 17 frames, 15 valid actions" in text.out
    assert _check_rows(_rows(LeRobotDataset("t/bad", root=out), 0)) == [k for k in range(21) if k not in (5, 6, 7, 8)]
