"""Write recorded episodes into a LeRobot v3.0 dataset with LeRobot's own API, durably.

Used by the recorder node, ``lda-bag2lerobot`` and ``lda-label-actions``. The dataset on disk is a complete, readable
LeRobot dataset after every saved episode, whatever happens to the process:

* **One writing session per episode.** Each episode is written by its own
  ``LeRobotDataset.resume(...)`` -> ``add_frame`` x N -> ``save_episode`` -> ``finalize()``. LeRobot 0.6.1
  starts a new Parquet data file, a new ``meta/episodes`` file and a new MP4 per camera for every
  writing session, so files of saved episodes are never modified again; only ``meta/info.json``,
  ``meta/stats.json``, ``meta/tasks.parquet`` (and our ``meta/lda_episodes.json``) are rewritten.
  (The price: one small file of each kind per episode instead of LeRobot's packed files.)
* **During recording** frames go to LeRobot's streaming video encoder, whose temporary MP4s live in
  ``tmp*`` directories of the dataset root; nothing of the dataset proper is touched.
* **Saving is a transaction.** Before ``save_episode`` a journal ``.lda/txn`` is written atomically: copies
  of the four mutable metadata files and a manifest of every existing data/video/episodes file. After
  ``finalize()`` the new files are fsynced, the per-episode labels file is replaced atomically, and the
  journal is removed (rename, then delete): that rename is the commit point.
* **On start-up** (and after a failed save) a journal left behind means an interrupted save: files not in
  its manifest are deleted and the metadata copies restored, which returns the dataset to the last
  committed episode. Streaming-encoder leftovers are removed. A lock file (``.lda/lock``, ``flock``)
  keeps two writers off one dataset; the kernel releases it when a process dies, even by SIGKILL.
"""

from __future__ import annotations

import fcntl
import gc
import io
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import av
import numpy as np

from lda_common.robot_config import RobotConfig
from lda_common.schema import (
    EMBODIMENT_FILE,
    EPISODES_FILE,
    QUALITIES,
    Quality,
    dataset_features,
    embodiment_record,
    fsync_path,
    write_json_atomic,
)

log = logging.getLogger("lda_common.episode_writer")
os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 (LeRobot's default codec) prints banners on every episode otherwise
# x264 prints a banner and statistics per video at FFmpeg's info level once LeRobot has restored FFmpeg's
# own log callback after the first episode (11-13 lines per episode): FFmpeg's own threshold
# (set_libav_level) silences that callback, PyAV's (set_level) its Python logger; warnings and errors show.
av.logging.set_level(av.logging.WARNING)
av.logging.set_libav_level(av.logging.WARNING)

# The recorder encodes every camera on the robot's computer while it records. x264 'veryfast' at crf 23
# matches LeRobot's default (SVT-AV1 preset 12, crf 30) in PSNR on 640x480 simulator frames for under half
# its CPU per frame, at about twice the size (benchmarks/results/video_codec.json). Codecs not listed here
# keep LeRobot's own preset and crf.
DEFAULT_VIDEO_CODEC = "h264"
CODEC_DEFAULTS: dict[str, dict] = {"h264": {"preset": "veryfast", "crf": 23}}

MUTABLE_FILES = ("meta/info.json", "meta/stats.json", "meta/tasks.parquet", EPISODES_FILE)
APPEND_ONLY_DIRS = ("data", "videos", "meta/episodes")
_STAGING_DIR = re.compile(r"^tmp[A-Za-z0-9_]{6,}$")  # tempfile.mkdtemp(dir=root) of LeRobot's encoders


def _encode_one_frame(cfg) -> None:
    """Open the encoder as LeRobot will: x264 accepts any preset name until it opens, mid-episode otherwise."""
    with av.open(io.BytesIO(), "w", format="mp4") as out:
        stream = out.add_stream(cfg.vcodec, rate=10, options=cfg.get_codec_options(encoder_threads=1, as_strings=True))
        stream.width, stream.height, stream.pix_fmt = 64, 64, cfg.pix_fmt
        out.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")))
        out.mux(stream.encode(None))


class DatasetError(RuntimeError):
    """The dataset cannot be opened or written; the message says why and what to do."""


class DiskFullError(DatasetError):
    """Not enough free disk space to record or save safely."""


class SaveError(DatasetError):
    """An episode could not be saved; the dataset was returned to its last committed episode."""


def free_mb(path: Path) -> float:
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free / 2**20


class DatasetStore:
    """A LeRobot dataset root owned by one recorder (or converter) process.

    Opening recovers from an interrupted save, then creates the dataset (first use) or checks that the
    existing one was recorded with the same state/action/camera layout.
    """

    def __init__(self, root: str | Path, config: RobotConfig, *, repo_id: str | None = None,
                 video_codec: str = DEFAULT_VIDEO_CODEC, video_preset: str = "", video_crf: int = -1,
                 encoder_queue_frames: int = 200, encoder_threads: int | None = 1,
                 min_free_mb: float = 200.0, on_event: Callable[[str], None] | None = None):
        self.root = Path(root).expanduser().absolute()
        self.config = config
        self.repo_id = repo_id or f"lda/{self.root.name}"
        self.video_codec = video_codec
        self.video_preset = video_preset  # "" or -1: the codec's default (CODEC_DEFAULTS, else LeRobot's)
        self.video_crf = video_crf
        self.encoder_queue_frames = int(encoder_queue_frames)
        self.encoder_threads = encoder_threads or None  # per camera; None: the codec decides (one per core)
        self.min_free_mb = float(min_free_mb)
        self._note = on_event or (lambda msg: log.info(msg))
        self._prepared = None
        self._lock_fd: int | None = None
        self._check_codec()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / ".lda").mkdir(exist_ok=True)
        self._lock()
        try:
            self.recover()
            if (self.root / "meta" / "info.json").is_file():
                self._check_compatible()
            else:
                self._create()
        except BaseException:
            self.close()
            raise

    # -- opening -----------------------------------------------------------------------------------
    def _check_codec(self) -> None:
        from lerobot.configs import RGBEncoderConfig

        settings = dict(CODEC_DEFAULTS.get(self.video_codec, {}))
        if self.video_preset != "":
            settings["preset"] = int(self.video_preset) if str(self.video_preset).isdigit() else self.video_preset
        if self.video_crf >= 0:
            settings["crf"] = self.video_crf
        try:
            self._rgb_encoder = RGBEncoderConfig(vcodec=self.video_codec, **settings)
            _encode_one_frame(self._rgb_encoder)
        except (ValueError, av.error.FFmpegError) as exc:
            named = f"video codec '{self.video_codec}'" + (f" {settings}" if settings else "")
            raise DatasetError(f"{named} cannot be used here: {exc}") from None

    def _keep_dataset_encoder(self, info: dict) -> None:
        """Append with the encoder the dataset's videos were made with: LeRobot concatenates each camera's
        episodes into shared MP4 files, which cannot mix codecs."""
        from lerobot.configs import RGBEncoderConfig

        have = next((ft["info"] for ft in info.get("features", {}).values()
                     if ft.get("dtype") == "video" and "video.codec" in (ft.get("info") or {})), None)
        if have is None:  # no episode saved yet: the requested encoder decides
            return
        try:
            existing = RGBEncoderConfig.from_video_info(have)
        except ValueError as exc:  # e.g. a hardware codec another machine recorded with
            raise DatasetError(f"{self.root} holds {have.get('video.codec')} video, which cannot be appended to "
                               f"here ({exc}); record into a new dataset directory") from None
        mine = self._rgb_encoder
        if (existing.vcodec, existing.preset, existing.crf) != (mine.vcodec, mine.preset, mine.crf):
            self._note(f"{self.root} holds {existing.vcodec} video (preset {existing.preset}, crf {existing.crf}): "
                       f"appending with the same settings; {mine.vcodec} (preset {mine.preset}, crf {mine.crf}) "
                       "applies to new datasets")
        self._rgb_encoder = existing

    def _lock(self) -> None:
        fd = os.open(self.root / ".lda" / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DatasetError(f"dataset {self.root} is in use by another recorder or converter (pid {other})"
                               ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def close(self) -> None:
        self._prepared = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _create(self) -> None:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        leftovers = [p.name for p in self.root.iterdir() if p.name != ".lda"]
        if leftovers:
            raise DatasetError(f"{self.root} is not empty and holds no LeRobot dataset (meta/info.json missing; "
                               f"found {sorted(leftovers)[:5]}); choose an empty or new directory")
        staging = self.root / ".lda" / "creating"
        shutil.rmtree(staging, ignore_errors=True)
        ds = LeRobotDataset.create(self.repo_id, fps=self.config.fps, features=dataset_features(self.config),
                                   root=staging / "ds", robot_type=self.config.robot, use_videos=True)
        ds.finalize()
        write_json_atomic(staging / "ds" / EMBODIMENT_FILE, embodiment_record(self.config))
        write_json_atomic(staging / "ds" / EPISODES_FILE, {"format": 1, "episodes": []})
        os.rename(staging / "ds" / "meta", self.root / "meta")  # the dataset exists from here on
        fsync_path(self.root)
        shutil.rmtree(staging, ignore_errors=True)
        self._note(f"created LeRobot dataset {self.root} (robot '{self.config.robot}', "
                   f"state {self.config.state_dim}-d, action {self.config.action_dim}-d)")

    def _check_compatible(self) -> None:
        info = json.loads((self.root / "meta" / "info.json").read_text())
        want = dataset_features(self.config)
        have = info.get("features", {})
        problems = []
        if info.get("fps") != self.config.fps:
            problems.append(f"fps {info.get('fps')} != {self.config.fps}")
        for key, ft in want.items():
            if key not in have:
                problems.append(f"feature '{key}' missing")
            elif tuple(have[key]["shape"]) != tuple(ft["shape"]) or have[key]["dtype"] != ft["dtype"] or (
                    ft["names"] is not None and have[key].get("names") != ft["names"]):
                problems.append(f"feature '{key}' differs ({have[key]['dtype']} {have[key]['shape']})")
        extra = sorted(set(have) - set(want) - {"timestamp", "frame_index", "episode_index", "index",
                                               "task_index"})
        if extra:
            problems.append(f"extra features {extra}")
        if problems:
            raise DatasetError(f"{self.root} was recorded with a different robot layout than "
                               f"'{self.config.robot}' ({Path(self.config.source).name}): {'; '.join(problems)}. "
                               "Record into a new dataset directory.")
        self._keep_dataset_encoder(info)
        if not (self.root / EMBODIMENT_FILE).is_file():
            write_json_atomic(self.root / EMBODIMENT_FILE, embodiment_record(self.config))
        if not (self.root / EPISODES_FILE).is_file():
            write_json_atomic(self.root / EPISODES_FILE, {"format": 1, "episodes": []})

    @property
    def num_episodes(self) -> int:
        return int(json.loads((self.root / "meta" / "info.json").read_text())["total_episodes"])

    # -- recovery ----------------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Undo an interrupted save and remove staging leftovers; returns what was done (also reported)."""
        lda = self.root / ".lda"
        done = []
        for name in ("txn.tmp", "txn.done", "creating"):
            if (lda / name).exists():
                shutil.rmtree(lda / name, ignore_errors=True)
        if (lda / "txn").exists():
            removed = self._rollback()
            done.append(f"rolled back an interrupted save ({removed} partial file(s) removed)")
        staged = self._clean_staging()
        if staged:
            done.append(f"removed {staged} staging director{'y' if staged == 1 else 'ies'} of an unsaved episode")
        for line in done:
            self._note(f"recovery: {line}")
        return done

    def _clean_staging(self) -> int:
        n = 0
        for p in self.root.iterdir():
            if p.is_dir() and (p.name == "images" or _STAGING_DIR.match(p.name)):
                shutil.rmtree(p, ignore_errors=True)
                n += 1
        return n

    def _files(self) -> dict[str, list[float]]:
        out = {}
        for d in APPEND_ONLY_DIRS:
            base = self.root / d
            if base.is_dir():
                for p in base.rglob("*"):
                    if p.is_file():
                        st = p.stat()
                        out[str(p.relative_to(self.root))] = [st.st_size, st.st_mtime_ns]
        return out

    def _begin(self) -> dict[str, list[float]]:
        lda = self.root / ".lda"
        tmp = lda / "txn.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "snap").mkdir(parents=True)
        saved = []
        for rel in MUTABLE_FILES:
            src = self.root / rel
            if src.is_file():
                dst = tmp / "snap" / rel.replace("/", "__")
                shutil.copy2(src, dst)
                fsync_path(dst)
                saved.append(rel)
        files = self._files()
        with open(tmp / "manifest.json", "w") as f:
            json.dump({"files": files, "snapshot": saved}, f)
            f.flush()
            os.fsync(f.fileno())
        fsync_path(tmp / "snap")
        fsync_path(tmp)
        os.rename(tmp, lda / "txn")
        fsync_path(lda)
        return files

    def _commit(self) -> None:
        lda = self.root / ".lda"
        os.rename(lda / "txn", lda / "txn.done")  # the commit point
        fsync_path(lda)
        shutil.rmtree(lda / "txn.done", ignore_errors=True)

    def _rollback(self) -> int:
        lda = self.root / ".lda"
        if not (lda / "txn").is_dir():
            return 0
        manifest = json.loads((lda / "txn" / "manifest.json").read_text())
        keep = set(manifest["files"])
        removed = 0
        for rel in sorted(self._files()):  # delete first: frees space for the restores below
            if rel not in keep:
                (self.root / rel).unlink(missing_ok=True)
                removed += 1
        for d in APPEND_ONLY_DIRS:
            _remove_empty_dirs(self.root / d)
        for rel in MUTABLE_FILES:
            target = self.root / rel
            if rel in manifest["snapshot"]:
                tmp = target.with_name(f".{target.name}.restore")
                shutil.copy2(lda / "txn" / "snap" / rel.replace("/", "__"), tmp)
                fsync_path(tmp)
                os.replace(tmp, target)
            else:
                target.unlink(missing_ok=True)
        fsync_path(self.root / "meta")
        self._clean_staging()
        os.rename(lda / "txn", lda / "txn.done")
        shutil.rmtree(lda / "txn.done", ignore_errors=True)
        return removed

    # -- episodes ----------------------------------------------------------------------------------
    def check_space(self, what: str) -> None:
        free = free_mb(self.root)
        if free < self.min_free_mb:
            raise DiskFullError(f"cannot {what}: only {free:.0f} MiB free on the disk of {self.root} "
                                f"(min_free_disk_mb is {self.min_free_mb:.0f}); free some space")

    def _resume(self):
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        return LeRobotDataset.resume(self.repo_id, root=self.root, streaming_encoding=True,
                                     rgb_encoder=self._rgb_encoder, encoder_queue_maxsize=self.encoder_queue_frames,
                                     encoder_threads=self.encoder_threads)

    def prepare(self) -> None:
        """Open the next episode's writing session ahead of time (makes the next start instant)."""
        if self._prepared is None:
            self._prepared = self._resume()

    def new_episode(self) -> EpisodeWriter:
        self.check_space("start an episode")
        ds, self._prepared = self._prepared, None
        if ds is None:
            ds = self._resume()
        return EpisodeWriter(self, ds)

    def _append_label(self, record: dict[str, Any]) -> None:
        path = self.root / EPISODES_FILE
        data = json.loads(path.read_text()) if path.is_file() else {"format": 1, "episodes": []}
        data["episodes"] = [e for e in data["episodes"] if e["episode_index"] != record["episode_index"]]
        data["episodes"].append(record)
        write_json_atomic(path, data)

    def _fsync_new(self, before: dict[str, list[float]]) -> None:
        now = self._files()
        changed = [rel for rel, st in before.items() if now.get(rel) != st]
        if changed:
            raise SaveError(f"LeRobot modified already saved file(s) {changed[:3]}; refusing to commit")
        for rel in now:
            if rel not in before:
                fsync_path(self.root / rel)
        for rel in MUTABLE_FILES[:3]:
            if (self.root / rel).is_file():
                fsync_path(self.root / rel)
        dirs = {(self.root / rel).parent for rel in now if rel not in before}
        for d in sorted(dirs) + [self.root / "meta"]:
            fsync_path(d)


class EpisodeWriter:
    """One episode being recorded into a DatasetStore: add frames, then save (or discard) once."""

    def __init__(self, store: DatasetStore, ds):
        self.store = store
        self.config = store.config
        self._ds = ds
        self.index = int(ds.meta.total_episodes)
        self.num_frames = 0
        self.closed = False
        self._zeros = np.zeros(self.config.action_dim, dtype=np.float32)

    def add_frame(self, images: dict[str, np.ndarray], state: np.ndarray, tick_index: int) -> None:
        """Append one 10 Hz frame: RGB images (H, W, 3) uint8 per camera, observation.state, tick index.

        Actions, their validity and the quality label are filled in by ``save`` (they need the next frame
        and the operator's label).
        """
        if self.closed:
            raise DatasetError("episode already saved or discarded")
        frame = {cam.feature_key: images[cam.name] for cam in self.config.cameras}
        frame["observation.state"] = np.asarray(state, dtype=np.float32)
        frame["action"] = self._zeros
        frame["action_valid"] = np.array([False])
        frame["quality"] = np.array([0], dtype=np.int64)
        frame["tick_index"] = np.array([tick_index], dtype=np.int64)
        frame["task"] = ""
        self._ds.add_frame(frame)
        self.num_frames += 1

    def save(self, quality: str, task: str, actions: np.ndarray, action_valid: np.ndarray,
             info: dict[str, Any] | None = None) -> int:
        """Write the episode and commit it; returns its episode index. Raises SaveError/DiskFullError, in which
        case the dataset is unchanged (the episode is lost, earlier episodes are not)."""
        if self.closed:
            raise DatasetError("episode already saved or discarded")
        if quality not in QUALITIES:
            self.discard()
            raise SaveError(f"unknown quality '{quality}' (one of {list(QUALITIES)})")
        quality_id = int(Quality.parse(quality))
        if self.num_frames < 2:
            self.discard()
            raise SaveError(f"episode has {self.num_frames} frame(s); at least 2 are needed "
                            "(were the camera and pose topics publishing?)")
        if not task:
            self.discard()
            raise SaveError("episode has no task text")
        try:
            self.store.check_space("save the episode")
        except DiskFullError:
            self.discard()
            raise
        n = self.num_frames
        actions = np.asarray(actions, dtype=np.float32).reshape(n, self.config.action_dim)
        valid = np.array(action_valid, dtype=bool).reshape(n)
        if quality == "actionless":
            valid[:] = False
        actions[~valid] = 0.0
        started = time.monotonic()
        store, ds = self.store, self._ds
        error = None
        try:
            before = store._begin()
        except OSError as exc:
            self.discard()
            raise _disk_error(exc, "start saving") from None
        try:
            buf = dict(ds.writer.episode_buffer)
            buf["action"] = list(actions)
            buf["action_valid"] = [np.array([v]) for v in valid]
            buf["quality"] = [np.array([quality_id], dtype=np.int64)] * n
            buf["task"] = [task] * n
            ds.save_episode(episode_data=buf)
            ds.finalize()
            self._check_video_lengths(ds, n)
            store._fsync_new(before)
            record = {"episode_index": self.index, "quality": quality, "quality_id": quality_id,
                      "task": task, "length": n, "action_valid_frames": int(valid.sum()),
                      "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            record.update(info or {})
            store._append_label(record)
            store._commit()
        except Exception as exc:  # noqa: BLE001 - any failure rolls the dataset back
            if isinstance(exc, OSError):
                error = _disk_error(exc, "save the episode")
            elif isinstance(exc, DatasetError):
                error = SaveError(f"{exc}; the dataset was rolled back to its last saved episode")
            elif "No space left on device" in str(exc):
                error = DiskFullError(f"disk full while saving episode {self.index} ({exc}); "
                                      "the dataset was rolled back to its last saved episode")
            else:
                error = SaveError(f"saving episode {self.index} failed ({type(exc).__name__}: {exc}); "
                                  "the dataset was rolled back to its last saved episode")
        finally:
            self.closed = True
            self._ds = None
        if error is not None:
            _neutralise(ds)
            del ds
            gc.collect()
            with suppress(Exception):
                store._rollback()
            raise error
        log.info("saved episode %d (%d frames) in %.2f s", self.index, n, time.monotonic() - started)
        return self.index

    @staticmethod
    def _check_video_lengths(ds, n: int) -> None:
        ep = ds.meta.latest_episode or {}
        fps = ds.meta.fps
        for key in ds.meta.video_keys:
            start = ep.get(f"videos/{key}/from_timestamp", [0.0])[0]
            end = ep.get(f"videos/{key}/to_timestamp", [n / fps])[0]
            frames = round((end - start) * fps)
            if frames != n:
                raise SaveError(f"video {key} has {frames} frames for {n} data frames "
                                "(the video encoder could not keep up and dropped frames)")

    def discard(self) -> None:
        """Drop the episode: stop its encoders and delete their temporary files. The dataset is untouched."""
        if self._ds is not None:
            ds, self._ds = self._ds, None
            with suppress(Exception):
                ds.clear_episode_buffer()
            _neutralise(ds)
            del ds
            gc.collect()
            self.store._clean_staging()
        self.closed = True


def _neutralise(ds) -> None:
    """Make sure a LeRobot writing session can no longer write (its __del__ would otherwise finalize it
    later, possibly after our rollback). Uses LeRobot 0.6.1 internals, guarded."""
    writer = getattr(ds, "writer", None)
    meta = getattr(ds, "meta", None)
    with suppress(Exception):
        if writer is not None and writer._streaming_encoder is not None:
            writer._streaming_encoder.cancel_episode()
    for obj in (writer, meta):
        if obj is None:
            continue
        with suppress(Exception):
            if getattr(obj, "_pq_writer", None) is not None:
                obj._pq_writer.close()
        with suppress(Exception):
            obj._pq_writer = None
        with suppress(Exception):
            obj._metadata_buffer = []
        with suppress(Exception):
            obj._finalized = True
    with suppress(Exception):
        ds._is_finalized = True


def _disk_error(exc: OSError, what: str) -> DatasetError:
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return DiskFullError(f"disk full: could not {what} ({exc.strerror}); "
                             "the dataset was rolled back to its last saved episode")
    return SaveError(f"could not {what}: {exc}; the dataset was rolled back to its last saved episode")


def _remove_empty_dirs(base: Path) -> None:
    if not base.is_dir():
        return
    for d in sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with suppress(OSError):
            d.rmdir()
