"""Robot configs: the shipped files load; bad files give errors naming the file and the key."""

from pathlib import Path

import pytest
import yaml
from lda_common.robot_config import ConfigError, RobotConfig, load_robot_config

REPO = Path(__file__).resolve().parents[3]
ROBOTS = REPO / "config" / "robots"


def test_shipped_configs_load_and_round_trip():
    names = sorted(p.stem for p in ROBOTS.glob("*.yaml"))
    assert {"sim_panda", "gr1_humanoid"} <= set(names)
    panda = load_robot_config(ROBOTS / "sim_panda.yaml")
    assert panda.hand_names == ["right"] and panda.cameras[0].topic == "/camera/head/image_raw"
    assert panda.hands[0].pose_topic == "/robot/right/eef_pose"
    assert panda.hands[0].gripper_topic == "/robot/right/gripper_state"
    assert panda.hands[0].gripper_command_topic == "/robot/right/gripper_command"
    assert panda.instruction_topic == "/lda/instruction" and panda.fps == 10
    assert panda.action_names == [f"right/{c}" for c in ("dx", "dy", "dz", "drx", "dry", "drz", "gripper")]
    gr1 = load_robot_config(ROBOTS / "gr1_humanoid.yaml")
    assert gr1.hand_names == ["left", "right"] and gr1.action_dim == 2 * (6 + 6) and gr1.state_dim == 2 * (7 + 6)
    assert panda.joints is None
    assert gr1.joints.dim == 29 and gr1.joints.fps == 20 and gr1.joints.state_topic == "/robot/joint_states"
    assert [g.name for g in gr1.joints.groups] == ["left_arm", "right_arm", "left_hand", "right_hand", "waist"]
    assert gr1.joints.joint_names[14:20] == list(gr1.hands[0].fingers.joints)  # the hands' finger joints
    assert gr1.joints.group_slices()["waist"] == slice(26, 29)
    for name in names:
        cfg = load_robot_config(ROBOTS / f"{name}.yaml")
        assert RobotConfig.from_dict(cfg.to_dict()) == cfg


def test_defaults_fill_topic_names():
    cfg = RobotConfig.from_dict({"robot": "r", "cameras": [{"name": "wrist", "type": "compressed", "width": 8,
                                                            "height": 6}],
                                 "hands": [{"name": "left", "fingers": {"type": "keypoints", "count": 5}}]})
    assert cfg.cameras[0].topic == "/camera/wrist/image_raw/compressed"
    assert cfg.hands[0].pose_topic == "/robot/left/eef_pose"
    assert cfg.hands[0].gripper_topic == "/robot/left/finger_keypoints"
    assert cfg.action_dim == 6 + 15 and cfg.state_names[7:10] == ["left/kp0_x", "left/kp0_y", "left/kp0_z"]


GOOD = {"robot": "bot", "cameras": [{"name": "head", "width": 64, "height": 48}],
        "hands": [{"name": "right", "fingers": {"type": "width", "joints": ["a", "b"]}}]}


def _with(path, value):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    if path[-1] == "fingers":  # the keypoint case: a command topic next to keypoint fingers
        data["hands"][0]["gripper_command_topic"] = "/robot/right/gripper_command"
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


JOINTS = {"groups": [{"name": "arm", "joints": ["j1", "j2"]}, {"name": "hand", "joints": ["f1"]}]}


@pytest.mark.parametrize(("joints", "message"), [
    ({**JOINTS, "groups": [{"name": "arm", "joints": ["j1"]}, {"name": "hand", "joints": ["j1"]}]},
     "bot.yaml: joints.groups: joint 'j1' is in two groups"),
    ({**JOINTS, "groups": [{"name": "arm", "joints": []}]}, "bot.yaml: joints.groups.0.joints: expected a non-empty"),
    ({**JOINTS, "command_topic": "/robot/joint_states"}, "bot.yaml: joints.command_topic: must differ"),
    ({**JOINTS, "state_topic": "/lda/instruction"}, "bot.yaml: topics: '/lda/instruction' is used for two streams"),
    ({**JOINTS, "fps": 0}, "bot.yaml: joints.fps: must be > 0"),
    ({"groups": []}, "bot.yaml: joints.groups: expected a non-empty list"),
])
def test_bad_joint_space_names_the_key(joints, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("'", ".")):
        RobotConfig.from_dict({**GOOD, "joints": joints}, "bot.yaml")


@pytest.mark.parametrize(("path", "value", "message"), [
    (["robot"], KeyError, "bot.yaml: robot: required key is missing"),
    (["robto"], "x", "bot.yaml: robto: unknown key"),
    (["fps"], 0, "bot.yaml: fps: must be > 0, got 0"),
    (["fps"], 10.5, "bot.yaml: fps: expected an integer"),
    (["tolerance_s"], 0.2, "bot.yaml: tolerance_s: 0.2 s must be below one step"),
    (["cameras"], [], "bot.yaml: cameras: expected a non-empty list"),
    (["cameras", 0, "width"], KeyError, "bot.yaml: cameras.0.width: required key is missing"),
    (["cameras", 0, "type"], "depth", "bot.yaml: cameras.0.type: expected one of ['raw', 'compressed'], got 'depth'"),
    (["cameras", 0, "name"], "Head.Cam", "bot.yaml: cameras.0.name: 'Head.Cam' must be lower-case"),
    (["cameras", 0, "topic"], "not a topic", "bot.yaml: cameras.0.topic: 'not a topic' is not a valid ROS topic"),
    (["hands", 0, "fingers", "type"], "claw",
     "bot.yaml: hands.0.fingers.type: expected one of ['width', 'joints', 'keypoints'], got 'claw'"),
    (["hands", 0, "fingers", "joints"], [], "bot.yaml: hands.0.fingers.joints: type 'width' needs"),
    (["hands", 0, "canonical_offset"], {"quat_xyzw": [0, 0, 0, 2]},
     "bot.yaml: hands.0.canonical_offset.quat_xyzw: not a unit quaternion"),
    (["hands", 0, "canonical_offset"], {"xyz": [0, 0]}, "hands.0.canonical_offset.xyz: expected 3 values, got 2"),
    (["hands", 0, "pose_topic"], "/camera/head/image_raw", "bot.yaml: topics: '/camera/head/image_raw' is used"),
    (["hands", 0, "speed"], 3, "bot.yaml: hands.0.speed: unknown key"),
    (["hands", 0, "gripper_command_topic"], "/robot/right/gripper_state",
     "bot.yaml: topics: '/robot/right/gripper_state' is used for two streams"),
    (["hands", 0, "gripper_command_topic"], "bad topic", "hands.0.gripper_command_topic: 'bad topic' is not a valid"),
    (["hands", 0, "fingers"], {"type": "keypoints", "count": 5},
     "hands.0.gripper_command_topic: finger keypoints are observed, not commanded"),
])
def test_bad_config_names_file_and_key(tmp_path, path, value, message):
    file = tmp_path / "bot.yaml"
    file.write_text(yaml.safe_dump(_with(path, value)))
    with pytest.raises(ConfigError) as err:
        load_robot_config(file)
    assert message in str(err.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="robot config not found"):
        load_robot_config(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("robot: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_robot_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- robot: x")
    with pytest.raises(ConfigError, match="list.yaml: expected a mapping"):
        load_robot_config(tmp_path / "list.yaml")
