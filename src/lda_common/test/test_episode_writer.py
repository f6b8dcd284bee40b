"""Durability of the LeRobot dataset: interrupted saves roll back, a full disk loses nothing saved."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from lda_common.episode_writer import DatasetError, DatasetStore
from lda_common.robot_config import RobotConfig
from lda_common.schema import episodes_with_quality, read_episode_labels
from lda_teleop_record.recording import EpisodeRecorder
from lerobot.datasets.lerobot_dataset import LeRobotDataset

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from lda_testing import teleop as syn  # noqa: E402

CONFIG = RobotConfig.from_dict(syn.robot_dict())


def _open(root, **kw):
    kw.setdefault("min_free_mb", 0)
    store = DatasetStore(root, CONFIG, **kw)
    return store, EpisodeRecorder(CONFIG, store)


def _read(root):
    return LeRobotDataset("t/x", root=root)


def test_sigkill_inside_a_save_rolls_back_to_the_last_episode(tmp_path, point="after_save_episode"):
    """Killed after LeRobot's save_episode + finalize (info.json already counts the episode) but before commit."""
    root = tmp_path / "ds"
    child = subprocess.run([sys.executable, str(HERE / "writer_child.py"), str(root), point],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    assert "saved episode 0" in child.stdout and "killing myself" in child.stdout
    assert (root / ".lda" / "txn").is_dir()  # the interrupted save left its journal
    store, recorder = _open(root)  # recovery on open
    assert not (root / ".lda" / "txn").exists()
    ds = _read(root)
    assert ds.num_episodes == 1 and len(ds) == 10
    assert [e["episode_index"] for e in read_episode_labels(root)] == [0]
    assert len(list((root / "data").rglob("*.parquet"))) == 1
    assert len(list((root / "videos").rglob("*.mp4"))) == 2
    summary = syn.record(recorder, syn.Plan(duration_s=1.0), "low").save()  # appending works again
    store.close()
    assert summary.index == 1
    ds = _read(root)
    assert ds.num_episodes == 2 and episodes_with_quality(root, "low") == [1]
    assert ds[15]["quality"].item() == 1 and ds[3]["quality"].item() == 0


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path: Path, leave_bytes: int) -> Path:
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    free = os.statvfs(path).f_bavail * os.statvfs(path).f_frsize
    if leave_bytes:
        os.truncate(filler, max(0, os.path.getsize(filler) - (leave_bytes - free)))
    return filler


@pytest.mark.parametrize("leave_kb", [0, 100])  # 0: fails while recording; 100 KiB: inside save_episode
def test_full_disk_loses_nothing_saved(small_disk, leave_kb):
    root = small_disk / "ds"
    store, recorder = _open(root)
    assert syn.record(recorder, syn.Plan(duration_s=1.0), "high").save().index == 0
    filler = _fill(small_disk, leave_kb * 1024)
    with pytest.raises(DatasetError) as err:
        syn.record(recorder, syn.Plan(duration_s=3.0), "high").save()
    text = str(err.value)
    assert "No space left" in text or "disk full" in text, text
    assert not (root / ".lda" / "txn").exists()
    assert _read(root).num_episodes == 1 and len(_read(root)) == 10
    filler.unlink()
    assert syn.record(recorder, syn.Plan(duration_s=1.0), "low").save().index == 1
    store.close()
    assert _read(root).num_episodes == 2


def test_free_space_guard_refuses_before_writing(tmp_path):
    store, recorder = _open(tmp_path / "ds", min_free_mb=1e9)
    with pytest.raises(DatasetError, match=r"only .* MiB free .*\(min_free_disk_mb is 1000000000\)"):
        recorder.start("task")
    assert not recorder.recording
    assert json.loads((tmp_path / "ds" / "meta" / "info.json").read_text())["total_episodes"] == 0


def test_other_robot_layout_and_second_writer_are_refused(tmp_path):
    root = tmp_path / "ds"
    store, _ = _open(root)
    with pytest.raises(DatasetError, match="in use by another recorder or converter"):
        DatasetStore(root, CONFIG)
    store.close()
    other = RobotConfig.from_dict(syn.robot_dict(robot="other", fps=15, tolerance_s=0.02))
    with pytest.raises(DatasetError, match="different robot layout than 'other'.*fps 10 != 15"):
        DatasetStore(root, other)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="not empty and holds no LeRobot dataset"):
        DatasetStore(tmp_path / "junk", CONFIG)


def test_short_or_discarded_episodes_leave_no_trace(tmp_path):
    root = tmp_path / "ds"
    store, recorder = _open(root)
    pending = syn.record(recorder, syn.Plan(duration_s=0.1), "high")  # 1 frame
    with pytest.raises(DatasetError, match="at least 2 are needed"):
        pending.save()
    syn.record(recorder, syn.Plan(duration_s=1.0), None)  # discarded
    assert not [p for p in root.iterdir() if p.name.startswith("tmp")]
    saved = syn.record(recorder, syn.Plan(duration_s=1.0), "actionless").save()
    store.close()
    assert saved.index == 0 and saved.action_valid_frames == 0
    ds = _read(root)
    acts = np.stack([ds[i]["action"].numpy() for i in range(len(ds))])
    assert not acts.any() and not any(ds[i]["action_valid"].item() for i in range(len(ds)))
    assert np.allclose(ds[4]["observation.state"].numpy(), syn.expected_state(0.4), atol=1e-6)  # state kept


def _video_info(root) -> dict:
    features = json.loads((root / "meta" / "info.json").read_text())["features"]
    return next(ft["info"] for ft in features.values() if ft["dtype"] == "video")


def test_new_dataset_gets_the_recorder_codec_and_an_old_one_keeps_its_own(tmp_path):
    fresh, old = tmp_path / "fresh", tmp_path / "old"
    store, recorder = _open(fresh)
    syn.record(recorder, syn.Plan(duration_s=1.0), "high").save()
    store.close()
    info = _video_info(fresh)
    assert (info["video.codec"], info["video.preset"], info["video.crf"]) == ("h264", "veryfast", 23)

    # A dataset begun with LeRobot's AV1 default: later episodes must join its MP4 files with the same codec,
    # whatever the recorder is asked for, and say so.
    store, recorder = _open(old, video_codec="libsvtav1")
    syn.record(recorder, syn.Plan(duration_s=1.0), "high").save()
    store.close()
    notes = []
    store, recorder = _open(old, on_event=notes.append)  # the h264 default
    syn.record(recorder, syn.Plan(duration_s=1.0), "low").save()
    store.close()
    assert any("holds libsvtav1 video" in n and "appending with the same settings" in n for n in notes), notes
    info = _video_info(old)
    assert (info["video.codec"], info["video.preset"], info["video.crf"]) == ("av1", 12, 30)
    ds = _read(old)
    assert ds.num_episodes == 2
    last = ds[len(ds) - 1]["observation.images.head"]  # the appended episode decodes from the shared file
    assert last.shape[0] == 3 and float(last.std()) > 0


def test_unusable_encoder_settings_are_named(tmp_path):
    with pytest.raises(DatasetError, match=r"codec 'h264' \{'preset': 'fastest-ever', 'crf': 23\} cannot be used"):
        _open(tmp_path / "ds", video_preset="fastest-ever")
    assert not (tmp_path / "ds").exists()


def test_a_dataset_in_a_codec_this_machine_cannot_write_is_refused_by_name(tmp_path):
    root = tmp_path / "ds"
    store, recorder = _open(root)
    syn.record(recorder, syn.Plan(duration_s=1.0), "high").save()
    store.close()
    info = json.loads((root / "meta" / "info.json").read_text())
    for ft in info["features"].values():
        if ft["dtype"] == "video":
            ft["info"]["video.codec"] = "h264_videotoolbox"  # as recorded on a Mac
    (root / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"holds h264_videotoolbox video, which cannot be appended to here"):
        _open(root)
    assert _read(root).num_episodes == 1  # nothing lost


def test_episodes_encode_without_ffmpeg_chatter(tmp_path):
    """x264's banner and statistics (FFmpeg's info level) stay out of the recorder's log on every episode,
    also after LeRobot restores FFmpeg's own log callback at the end of the first one."""
    root = tmp_path / "ds"
    child = subprocess.run([sys.executable, str(HERE / "writer_child.py"), str(root), "none"],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0 and "saved both" in child.stdout, child.stdout + child.stderr
    assert _read(root).num_episodes == 2
    chatter = [line for line in child.stderr.splitlines() if "x264" in line]
    assert not chatter, f"{len(chatter)} lines of encoder chatter, e.g. {chatter[:3]}"
