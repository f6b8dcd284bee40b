"""lda-label-actions (issue #31): actionless episodes get the inverse dynamics' actions in a new dataset, as
``low`` with their provenance; the rest is copied unchanged; a killed run continues; bad input is refused.
Real datasets (the recorder's writer, read back with LeRobot), a real random-weight checkpoint."""

import json

import numpy as np
import pytest
import yaml
from lda_common.schema import read_episode_labels
from lda_testing.datasets import record_dataset, robot_config
from lda_testing.deploy import make_checkpoint
from lda_train.cli import label_main
from lda_train.config import DatasetConfig
from lda_train.data import SourceDataset
from lda_train.label_actions import ActionLabeller, LabelError, file_sha256, load_runtime

QUALITIES = ["high", "actionless", "low", "actionless"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("label")
    source = record_dataset(root / "source", QUALITIES, length=16, seed=2)
    robot = root / "robot.yaml"
    robot.write_text(yaml.safe_dump(robot_config().to_dict()))
    model = make_checkpoint(root / "model", robot, calibrate=False)
    return root, source, model


def _args(model, source, out, *extra):
    return ["--checkpoint", str(model["checkpoint"]), "--dino-path", str(model["dino_path"]),
            "--dataset", str(source), "--out", str(out), "--no-progress", *extra]


def _open(root):
    from lda_policy.model import PRESETS

    return SourceDataset(DatasetConfig(root=str(root)), 0, PRESETS["lda-tiny"].time, 0.0, seed=0)


def test_actionless_episodes_get_low_labelled_actions_and_the_rest_is_copied(setup, capsys):
    root, source, model = setup
    out = root / "labelled"
    assert label_main(_args(model, source, out)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["labelled_episodes"] == [1, 3]
    src, new = _open(source), _open(out)  # read back through lerobot's LeRobotDataset
    assert [int(e.role) for e in new.episodes] == [0, 1, 1, 1]  # high, low, low, low: never high
    records = read_episode_labels(out)
    digest = file_sha256(model["checkpoint"] / "model.safetensors")
    for k, (rec, quality) in enumerate(zip(records, QUALITIES, strict=True)):
        assert rec["source_episode"] == k and rec["source_dataset"] == str(source.resolve())
        a, b = src.episodes[k], new.episodes[k]
        np.testing.assert_array_equal(src.state[a.start:a.end], new.state[b.start:b.end])
        if quality == "actionless":
            assert rec["quality"] == "low" and rec["action_source"] == "inverse_dynamics"
            assert rec["source_quality"] == "actionless" and rec["checkpoint_sha256"] == digest
            assert new.frame_action_valid[b.start:b.end].tolist() == [True] * (b.end - b.start - 1) + [False]
            assert np.abs(new.action[b.start:b.end - 1]).sum() > 0  # predicted, not the zeros it had
        else:
            assert "action_source" not in rec and rec["quality"] == quality
            np.testing.assert_array_equal(src.action[a.start:a.end], new.action[b.start:b.end])
            np.testing.assert_array_equal(src.frame_action_valid[a.start:a.end], new.frame_action_valid[b.start:b.end])
    # the written labels are the inverse dynamics' predictions (float32 as stored)
    labeller = ActionLabeller(load_runtime(model["checkpoint"], model["dino_path"]), source)
    pred = labeller.predict(1)
    b = new.episodes[1]
    np.testing.assert_allclose(new.action[b.start:b.end - 1], pred[:-1], atol=1e-5)
    assert np.isnan(pred[-1]).all()


def test_a_killed_run_continues_where_it_stopped(setup, monkeypatch):
    root, source, model = setup
    out = root / "resumed"
    runtime = load_runtime(model["checkpoint"], model["dino_path"])
    labeller = ActionLabeller(runtime, source)
    real = labeller.predict

    def dies_on_the_second(i, latents=None):
        if i == 3:
            raise KeyboardInterrupt("killed")
        return real(i, latents)

    monkeypatch.setattr(labeller, "predict", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        labeller.write(out, checkpoint=model["checkpoint"])
    assert [r["source_episode"] for r in read_episode_labels(out)] == [0, 1, 2]  # whole episodes only
    monkeypatch.undo()
    summary = ActionLabeller(runtime, source).write(out, checkpoint=model["checkpoint"])
    assert summary["labelled_episodes"] == [3]
    records = read_episode_labels(out)
    assert [r["source_episode"] for r in records] == [0, 1, 2, 3] and records[3]["quality"] == "low"
    assert len(_open(out).episodes) == 4


def test_bad_input_is_refused_by_name(setup, tmp_path, capsys):
    root, source, model = setup
    assert label_main(_args(model, source, source / "inside")) == 1
    assert "is the source dataset or inside it" in capsys.readouterr().err
    assert label_main(_args(model, source, tmp_path / "x", "--episodes", "1", "9")) == 1
    assert "episode(s) [9] are not in" in capsys.readouterr().err
    other = record_dataset(tmp_path / "other", ["high", "high"], length=12, seed=5, robot="other_arm")
    assert label_main(_args(model, other, tmp_path / "y")) == 1
    err = capsys.readouterr().err
    assert "does not know the dataset's embodiment 'other_arm'" in err and "test_arm" in err
    runtime = load_runtime(model["checkpoint"], model["dino_path"])
    only_high = record_dataset(tmp_path / "high", ["high", "high"], length=12, seed=6)
    with pytest.raises(LabelError, match="has no actionless episodes; name the episodes to label with --episodes"):
        ActionLabeller(runtime, only_high).write(tmp_path / "z")
    # an --out that another source was being labelled into is not continued
    with pytest.raises(LabelError, match="already holds episode 0 from"):
        ActionLabeller(runtime, only_high).write(root / "labelled", episodes=[0])
