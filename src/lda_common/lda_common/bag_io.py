"""Read and write rosbag2 recordings (MCAP or sqlite3) with ``rosbags``: pure Python, no ``ros2 bag`` needed.

Messages stay in their serialized CDR form: the reader yields ``(topic, msgtype, log_time_ns, cdr)``
exactly like the recorder node's raw subscriptions deliver them, so bags and live topics take the same
path into the dataset, and the per-episode bags the recorder writes hold the bytes as received.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

EVENTS_MSGTYPE = "std_msgs/msg/String"


class BagError(RuntimeError):
    """A bag that cannot be read or written; the message says which and why."""


@lru_cache(maxsize=1)
def typestore():
    """The ROS 2 message definitions used to (de)serialize CDR without ROS installed."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


@dataclass
class BagInfo:
    path: Path
    storage: str  # mcap | sqlite3
    topics: dict[str, str]  # topic -> msgtype
    counts: dict[str, int]
    start_ns: int
    end_ns: int


def bag_info(path: str | Path) -> BagInfo:
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not path.exists():
        raise BagError(f"bag not found: {path}")
    try:
        with Reader(path) as reader:
            topics = {c.topic: c.msgtype for c in reader.connections}
            counts: dict[str, int] = {}
            for c in reader.connections:
                counts[c.topic] = counts.get(c.topic, 0) + c.msgcount
            storage = _storage_name(path)
            return BagInfo(path, storage, topics, counts, reader.start_time, reader.end_time)
    except BagError:
        raise
    except Exception as exc:  # noqa: BLE001 - rosbags raises several types for unreadable bags
        raise BagError(f"cannot read bag {path}: {type(exc).__name__}: {exc}") from None


def _storage_name(path: Path) -> str:
    if path.suffix == ".mcap" or any(path.glob("*.mcap")):
        return "mcap"
    return "sqlite3"


def read_messages(path: str | Path, topics: set[str] | None = None) -> Iterator[tuple[str, str, int, bytes]]:
    """Messages of ``topics`` (all if None) in log-time order: (topic, msgtype, log_time_ns, cdr)."""
    from rosbags.rosbag2 import Reader

    try:
        with Reader(Path(path)) as reader:
            conns = [c for c in reader.connections if topics is None or c.topic in topics]
            if not conns:
                return
            for conn, log_ns, raw in reader.messages(connections=conns):
                yield conn.topic, conn.msgtype, int(log_ns), raw
    except BagError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise BagError(f"cannot read bag {path}: {type(exc).__name__}: {exc}") from None


class BagWriter:
    """A rosbag2 bag (MCAP by default) written from serialized messages.

    Written under a staging name and renamed into place by ``commit``; ``abort`` deletes it.
    """

    def __init__(self, path: str | Path, storage: str = "mcap"):
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.path = Path(path)
        plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = Writer(self.path, version=9, storage_plugin=plugin)
        self._writer.open()
        self._conns: dict[str, object] = {}
        self.count = 0

    def write(self, topic: str, msgtype: str, log_ns: int, cdr: bytes | memoryview) -> None:
        conn = self._conns.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, msgtype, typestore=typestore())
            self._conns[topic] = conn
        self._writer.write(conn, int(log_ns), cdr)
        self.count += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def commit(self, final_path: str | Path) -> Path:
        """Close and move the bag to ``final_path`` (a directory name, like ros2 bag's ``-o``)."""
        self.close()
        final = Path(final_path)
        if final.exists():
            shutil.rmtree(final)
        self.path.rename(final)
        return final

    def abort(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001
                pass
            self._writer = None
        shutil.rmtree(self.path, ignore_errors=True)


def serialize(msg, msgtype: str) -> bytes:
    """CDR bytes of a rosbags message object (used for events and by tests)."""
    return bytes(typestore().serialize_cdr(msg, msgtype))
