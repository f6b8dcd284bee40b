"""Bad checkpoints are refused at load time with a CheckpointError naming the key / file / problem."""

import json
import re

import pytest
import torch
from lda_policy.model import CheckpointError, LDAModel
from safetensors.torch import load_file, save_file


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    return LDAModel.from_preset("lda-tiny").save_pretrained(tmp_path / "ckpt")


def edit_weights(directory, edit):
    path = directory / "model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))
    return state


def refused(directory, *patterns):
    with pytest.raises(CheckpointError) as info:
        LDAModel.from_pretrained(directory)
    for pattern in patterns:
        assert re.search(pattern, str(info.value)), (pattern, str(info.value))
    return str(info.value)


def test_missing_keys_are_named_and_counted(ckpt):
    removed = []

    def drop(state):
        removed.extend(sorted(state)[:3])
        for k in removed:
            del state[k]

    edit_weights(ckpt, drop)
    message = refused(ckpt, "model.safetensors", "3 missing key")
    assert any(repr(k) in message for k in removed)


def test_unexpected_key_is_named(ckpt):
    edit_weights(ckpt, lambda s: s.update({"head.extra_weight": torch.zeros(3)}))
    refused(ckpt, "1 unexpected key", "head.extra_weight")


def test_wrong_shape_names_key_and_both_shapes(ckpt):
    key = {}

    def reshape(state):
        key["k"] = k = next(k for k, v in sorted(state.items()) if v.dim() == 2)
        key["shape"] = tuple(state[k].shape)
        state[k] = torch.zeros(state[k].shape[0] + 1, state[k].shape[1])

    edit_weights(ckpt, reshape)
    rows, cols = key["shape"]
    refused(ckpt, re.escape(repr(key["k"])), re.escape(f"has shape ({rows + 1}, {cols})"),
            re.escape(f"expects ({rows}, {cols})"))


@pytest.mark.parametrize("keep", [0, 7, 50, -10])
def test_truncated_weights_file_is_named(ckpt, keep):
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    refused(ckpt, re.escape(str(path)), "not a valid safetensors file")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused(ckpt, value):
    key = {}

    def poison(state):
        key["k"] = k = sorted(state)[len(state) // 2]
        flat = state[k].view(-1)
        flat[: min(2, flat.numel())] = value

    state = edit_weights(ckpt, poison)
    n = min(2, state[key["k"]].numel())
    refused(ckpt, re.escape(repr(key["k"])), f"holds {n} non-finite", "model.safetensors")


def test_non_finite_normalisation_buffer_is_refused(ckpt):
    path = ckpt / "normalization.json"
    stats = json.loads(path.read_text())
    stats["latent"]["low"][0] = float("nan")
    path.write_text(json.dumps(stats))  # json writes NaN, and Python's json reads it back
    refused(ckpt, re.escape(str(path)), "non-finite")


def test_missing_or_malformed_config_is_named(ckpt):
    config = ckpt / "config.json"
    header = json.loads(config.read_text())
    config.write_text("{not json")
    refused(ckpt, re.escape(str(config)), "not valid JSON")
    config.write_text(json.dumps({k: v for k, v in header.items() if k != "config"}))
    refused(ckpt, re.escape(str(config)), "config")
    config.write_text(json.dumps({**header, "format_version": 99}))
    refused(ckpt, re.escape(str(config)), "format_version")
    config.unlink()
    refused(ckpt, "missing config.json")


def test_model_runtime_reports_nan_checkpoint_with_path_and_key(tmp_path):
    from lda_policy.deploy.runtime import ModelRuntime, RuntimeLoadError
    from lda_testing.deploy import make_checkpoint, write_robot_config

    paths = make_checkpoint(tmp_path, write_robot_config(tmp_path / "robot.yaml"), calibrate=False)
    key = {}

    def poison(state):
        key["k"] = k = sorted(state)[0]
        state[k].view(-1)[0] = float("nan")

    edit_weights(paths["checkpoint"], poison)
    with pytest.raises(RuntimeLoadError) as info:
        ModelRuntime(paths["checkpoint"], paths["dino_path"])
    assert str(paths["checkpoint"]) in str(info.value)
    assert key["k"] in str(info.value) and "non-finite" in str(info.value)
