"""Checkpoint round trip (bit for bit) and the errors for bad checkpoints."""

import json
import pickle

import pytest
import torch
from lda_policy.model import CheckpointError, LDAModel, Observation, RobustStats, read_config


@pytest.fixture
def saved_model(tmp_path):
    torch.manual_seed(0)
    model = LDAModel.from_preset("lda-tiny")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.normalizer.set_embodiment_stats("single_gripper", RobustStats((-0.1,) * 7, (0.3,) * 7),
                                          RobustStats((0.0,) * 8, (2.0,) * 8))
    model.normalizer.set_latent_stats(RobustStats((-2.0,) * 384, (3.0,) * 384))
    directory = model.save_pretrained(tmp_path / "ckpt")
    return model, directory


def tiny_observation() -> Observation:
    g = torch.Generator().manual_seed(1)
    return Observation("single_gripper", torch.randn(1, 2, 2, 2, 384, generator=g), torch.randn(1, 4, 384, generator=g),
                       state=torch.randn(1, 8, generator=g), history_actions=torch.randn(1, 2, 7, generator=g))


def test_round_trip_reproduces_every_objective_bit_for_bit(saved_model):
    model, directory = saved_model
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors", "normalization.json"]
    loaded = LDAModel.from_pretrained(directory, preset="lda-tiny")
    assert loaded.config == model.config == read_config(directory)
    obs = tiny_observation()
    actions = torch.randn(1, 16, 7)
    future = torch.randn(1, 3, 2, 2, 384)

    def outputs(m: LDAModel) -> tuple:
        return (m.policy(obs, seed=5), m.forward_dynamics(obs, actions, seed=5),
                m.inverse_dynamics(obs, future, seed=5), m.forecast(obs, seed=5))

    original = outputs(model)
    for a, b in zip(original, outputs(loaded), strict=True):
        assert torch.equal(a, b)
    # The statistics travel with the checkpoint: a model without them gives other physical outputs.
    fresh = LDAModel.from_preset("lda-tiny")
    fresh.load_state_dict(model.state_dict())
    assert not torch.equal(fresh.policy(obs, seed=5), original[0])


def test_checkpoint_for_another_preset_is_refused(saved_model):
    _, directory = saved_model
    with pytest.raises(CheckpointError, match="hidden_size|num_layers|latent_grid"):
        LDAModel.from_pretrained(directory, preset="lda-small")
    with pytest.raises(CheckpointError, match="lda-tiny"):
        LDAModel.from_preset("lda-small").load_pretrained(directory)


def test_missing_files_are_named(saved_model, tmp_path):
    _, directory = saved_model
    with pytest.raises(CheckpointError, match="does not exist"):
        LDAModel.from_pretrained(tmp_path / "nowhere")
    (directory / "normalization.json").unlink()
    with pytest.raises(CheckpointError, match="normalization.json"):
        LDAModel.from_pretrained(directory)
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        LDAModel.from_pretrained(directory)


def test_pickle_weights_are_never_loaded(saved_model):
    model, directory = saved_model
    (directory / "model.safetensors").unlink()
    with open(directory / "pytorch_model.bin", "wb") as f:
        pickle.dump({"weight": [1.0]}, f)
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*never loaded"):
        LDAModel.from_pretrained(directory)
    torch.save(model.state_dict(), directory / "model.safetensors")  # a zip pickle under the right name
    with pytest.raises(CheckpointError, match="pickle"):
        LDAModel.from_pretrained(directory)


def test_malformed_config_and_weights_are_reported(saved_model):
    _, directory = saved_model
    header = json.loads((directory / "config.json").read_text())
    header["config"]["hidden"] = 3
    (directory / "config.json").write_text(json.dumps(header))
    with pytest.raises(CheckpointError, match="hidden"):
        LDAModel.from_pretrained(directory)
    (directory / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        LDAModel.from_pretrained(directory)
    (directory / "config.json").write_text(json.dumps({**header, "config": LDAModel.from_preset(
        "lda-tiny", device="meta").config.to_dict()}))
    (directory / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(CheckpointError, match="safetensors"):
        LDAModel.from_pretrained(directory)
