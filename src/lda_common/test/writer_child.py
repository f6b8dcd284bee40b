"""Child process for test_episode_writer: saves one episode, then dies by SIGKILL inside the next save
(or, with ``none``, saves the second one too and exits).

    python writer_child.py ROOT KILL_POINT       KILL_POINT: after_save_episode | before_commit | none
"""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from lda_common.episode_writer import DatasetStore, EpisodeWriter  # noqa: E402
from lda_common.robot_config import RobotConfig  # noqa: E402
from lda_teleop_record.recording import EpisodeRecorder  # noqa: E402

from lda_common import episode_writer  # noqa: E402
from lda_testing import teleop as syn  # noqa: E402


def die(*_args, **_kwargs):
    print("killing myself", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


root, point = sys.argv[1], sys.argv[2]
config = RobotConfig.from_dict(syn.robot_dict())
store = DatasetStore(root, config, min_free_mb=0)
recorder = EpisodeRecorder(config, store)
print(syn.record(recorder, syn.Plan(duration_s=1.0), "high").save().describe(), flush=True)
if point == "after_save_episode":
    EpisodeWriter._check_video_lengths = staticmethod(die)  # runs right after save_episode + finalize
elif point == "before_commit":
    episode_writer.DatasetStore._commit = die
print(syn.record(recorder, syn.Plan(duration_s=1.0), "low").save().describe(), flush=True)
store.close()
print("not reached" if point != "none" else "saved both", flush=True)
