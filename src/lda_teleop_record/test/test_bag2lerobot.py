"""lda-bag2lerobot: rosbag2 (MCAP, sqlite3) -> the same LeRobot episodes as the node, and clear errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from lda_common.bag_io import BagWriter, bag_info, read_messages
from lda_common.schema import read_episode_labels
from lda_teleop_record.bag2lerobot import main
from lerobot.datasets.lerobot_dataset import LeRobotDataset

sys.path.insert(0, str(Path(__file__).parent))
from lda_testing import teleop as syn  # noqa: E402

LATENCY = 2_000_000


def _write_bag(path: Path, plans: list[tuple[syn.Plan, dict | None, dict | None]], storage="mcap",
               skip_topics=()) -> Path:
    """A bag of the plans' messages; a plan's start/stop events (dicts) are written around it if given."""
    bag = BagWriter(path.with_name(path.name + ".tmp"), storage)
    for plan, start, stop in plans:
        msgs = plan.messages()
        if start is not None:
            bag.write("/lda/episode_events", "std_msgs/msg/String", plan.t0_ns - 500, syn.string_cdr(json.dumps(start)))
        for topic, msgtype, ns, cdr in msgs:
            if topic not in skip_topics:
                bag.write(topic, msgtype, ns + LATENCY, cdr)
        if stop is not None:
            bag.write("/lda/episode_events", "std_msgs/msg/String", msgs[-1][2] + 2 * LATENCY,
                      syn.string_cdr(json.dumps(stop)))
    return bag.commit(path)


def _actions(ds, episode):
    rows = [ds[i] for i in range(len(ds)) if ds[i]["episode_index"].item() == episode]
    return (np.stack([r["action"].numpy() for r in rows]), [bool(r["action_valid"]) for r in rows],
            [0.1 * r["tick_index"].item() for r in rows], rows)


def test_mcap_bag_becomes_an_episode_with_exact_actions(tmp_path, robot_yaml, capsys):
    bag = _write_bag(tmp_path / "ep", [(syn.Plan(), None, None)])
    assert bag_info(bag).storage == "mcap"
    out = tmp_path / "ds"
    rc = main(["--bag", str(bag), "--out", str(out), "--robot-config", str(robot_yaml), "--quality", "low"])
    text = capsys.readouterr()
    assert rc == 0, text.err
    assert "saved episode 0 (low, 20 frames, 19 valid actions, task 'pick up the red block')" in text.out
    ds = LeRobotDataset("t/x", root=out, delta_timestamps={"action": [0.0, 0.1, 0.2]})
    acts, valid, times, rows = _actions(ds, 0)
    assert valid == [True] * 19 + [False]
    for i in range(19):
        assert np.allclose(rows[i]["action"][0].numpy(), syn.expected_action(times[i], times[i + 1]), atol=1e-5)
        assert np.allclose(rows[i]["observation.state"].numpy(), syn.expected_state(times[i]), atol=1e-5)
    assert np.allclose(rows[5]["action"][2].numpy(), rows[7]["action"][0].numpy())  # chunks = later rows
    assert rows[18]["action_is_pad"].tolist() == [False, False, True]
    assert {r["quality"].item() for r in rows} == {1}
    assert read_episode_labels(out)[0]["quality"] == "low" and read_episode_labels(out)[0]["source"] == "bag:ep"
    emb = json.loads((out / "meta" / "lda_embodiment.json").read_text())
    assert emb["action"]["names"] == ds.meta.features["action"]["names"] and emb["embodiment"] == "test_bimanual"


def test_sqlite_bag_with_events_splits_episodes_and_appends(tmp_path, robot_yaml, capsys):
    t1 = syn.Plan().t0_ns + 5_000_000_000
    plans = [
        (syn.Plan(), {"event": "start", "task": "open the drawer"}, {"event": "stop", "quality": "high"}),
        (syn.Plan(t0_ns=t1, duration_s=1.0), {"event": "start"}, {"event": "discard"}),
        (syn.Plan(t0_ns=t1 + 3_000_000_000, duration_s=1.5, instruction="wipe the table"), {"event": "start"},
         {"event": "stop", "quality": "actionless"}),
    ]
    bag = _write_bag(tmp_path / "session", plans, storage="sqlite3")
    assert bag_info(bag).storage == "sqlite3"
    out = tmp_path / "ds"
    rc = main(["--bag", str(bag), "--out", str(out), "--robot-config", str(robot_yaml)])
    text = capsys.readouterr().out
    assert rc == 0 and "2 episode(s) saved" in text and "episode discarded by its events" in text
    labels = read_episode_labels(out)
    assert [(e["quality"], e["task"], e["length"]) for e in labels] == [
        ("high", "open the drawer", 20), ("actionless", "wipe the table", 15)]
    # the same bag again, forced to one label: appends after the existing episodes
    assert main(["--bag", str(bag), "--out", str(out), "--robot-config", str(robot_yaml), "--quality", "low"]) == 0
    assert [e["quality"] for e in read_episode_labels(out)] == ["high", "actionless", "low", "low"]
    ds = LeRobotDataset("t/x", root=out)
    assert ds.num_episodes == 4 and ds.meta.total_tasks == 2
    acts, valid, _, rows = _actions(ds, 1)
    assert not acts.any() and not any(valid) and rows[0]["task"] == "wipe the table"


def test_bad_bags_give_clear_errors(tmp_path, robot_yaml, capsys):
    args = ["--out", str(tmp_path / "ds"), "--robot-config", str(robot_yaml)]
    no_pose = _write_bag(tmp_path / "no_pose", [(syn.Plan(duration_s=0.5), None, None)],
                         skip_topics=("/robot/right/eef_pose",))
    assert main(["--bag", str(no_pose), *args, "--quality", "high"]) == 2
    err = capsys.readouterr().err
    assert "lacks the configured topic(s) ['/robot/right/eef_pose'] of robot 'test_bimanual'" in err
    assert "/robot/left/eef_pose [geometry_msgs/msg/PoseStamped]" in err and "Traceback" not in err
    ok = _write_bag(tmp_path / "ok", [(syn.Plan(duration_s=0.5), None, None)])
    assert main(["--bag", str(ok), *args]) == 2
    assert "--quality is required: the bag holds no episode events" in capsys.readouterr().err
    assert main(["--bag", str(tmp_path / "missing"), *args, "--quality", "high"]) == 2
    assert "bag not found" in capsys.readouterr().err
    (tmp_path / "junk.mcap").write_bytes(b"not a bag")
    assert main(["--bag", str(tmp_path / "junk.mcap"), *args, "--quality", "high"]) == 2
    assert "cannot read bag" in capsys.readouterr().err
    assert main(["--bag", str(ok), "--out", str(tmp_path / "ds"), "--robot-config", str(tmp_path / "x.yaml"),
                 "--quality", "high"]) == 2
    assert "robot config not found" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()  # nothing was created for failed conversions


def test_gripper_commands_become_the_finger_actions(tmp_path, capsys):
    """With gripper_command_topic the finger action is the command in force at each tick (zero-order hold)."""
    d = syn.robot_dict()
    d["hands"][0]["gripper_command_topic"] = "/robot/left/gripper_command"
    robot = tmp_path / "robot.yaml"
    robot.write_text(yaml.safe_dump(d))
    plan = syn.Plan()
    topic, msgtype = "/robot/left/gripper_command", "sensor_msgs/msg/JointState"

    def command(t: float, width: float, stamp_t: float | None = None):
        ns = plan.t0_ns + round((t if stamp_t is None else stamp_t) * 1e9)
        return topic, msgtype, plan.t0_ns + round(t * 1e9), syn.joints_cdr(["l_f1", "l_f2"], [width / 2] * 2, ns)

    commands = [command(0.35, 0.06), command(1.0, 0.0),
                command(1.3, float("nan")),             # refused: the 0.0 command keeps holding
                command(1.5, 0.08, stamp_t=0.9),        # stamped before the previous command: refused
                command(0.36, 0.03, stamp_t=0.35)]      # same stamp as the 0.06 command: replaces it
    bag = BagWriter(tmp_path / "ep.tmp")
    for topic_, msgtype_, ns, cdr in sorted(plan.messages() + commands, key=lambda m: m[2]):
        bag.write(topic_, msgtype_, ns + LATENCY, cdr)
    bag = bag.commit(tmp_path / "ep")
    out = tmp_path / "ds"
    assert main(["--bag", str(bag), "--out", str(out), "--robot-config", str(robot), "--quality", "high"]) == 0
    text = capsys.readouterr()
    # Ticks 0.0-0.3 s come before the first command: no known finger action, so not valid.
    assert "saved episode 0 (high, 20 frames, 15 valid actions" in text.out
    assert "left gripper command (/robot/left/gripper_command): no command in force for the first 4 frame(s)" \
        in text.err
    assert "finger joint positions are not finite" in text.err
    assert "goes backwards from the previous command" in text.err
    acts, valid, times, _ = _actions(LeRobotDataset("t/x", root=out), 0)
    assert valid == [False] * 4 + [True] * 15 + [False]
    for i in range(4, 19):
        expected = syn.expected_action(times[i], times[i + 1])
        assert np.allclose(acts[i][:6], expected[:6], atol=1e-5) and np.allclose(acts[i][7:], expected[7:], atol=1e-5)
        assert acts[i][6] == pytest.approx(0.03 if times[i] < 0.95 else 0.0)
    # A bag without the configured command topic is refused by name.
    no_commands = _write_bag(tmp_path / "plain", [(syn.Plan(duration_s=0.5), None, None)])
    assert main(["--bag", str(no_commands), "--out", str(tmp_path / "ds2"), "--robot-config", str(robot),
                 "--quality", "high"]) == 2
    assert "lacks the configured topic(s) ['/robot/left/gripper_command']" in capsys.readouterr().err


def test_command_on_path_and_package_executable(tmp_path, robot_yaml):
    bag = _write_bag(tmp_path / "ep", [(syn.Plan(duration_s=1.0), None, None)])
    result = subprocess.run(["lda-bag2lerobot", "--bag", str(bag), "--out", str(tmp_path / "ds"), "--robot-config",
                             str(robot_yaml), "--quality", "high", "--task", "stack cups"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "saved episode 0 (high, 10 frames" in result.stdout and "task 'stack cups'" in result.stdout
    from ament_index_python.packages import get_package_prefix

    exe = Path(get_package_prefix("lda_teleop_record")) / "lib" / "lda_teleop_record" / "bag2lerobot"
    assert os.access(exe, os.X_OK)
    help_text = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "--robot-config" in help_text and "{high,low,actionless}" in help_text


def test_bag_round_trip_keeps_bytes(tmp_path):
    plan = syn.Plan(duration_s=0.3)
    bag = _write_bag(tmp_path / "b", [(plan, None, None)])
    got = list(read_messages(bag))
    want = [(t, m, ns + LATENCY, cdr) for t, m, ns, cdr in plan.messages()]
    assert [(t, m, ns) for t, m, ns, _ in got] == [(t, m, ns) for t, m, ns, _ in sorted(want, key=lambda x: x[2])]
    assert all(bytes(a[3]) == b[3] for a, b in zip(got, sorted(want, key=lambda x: x[2]), strict=True))


@pytest.fixture
def robot_yaml(tmp_path):
    return syn.write_robot(tmp_path / "test_bimanual.yaml")
