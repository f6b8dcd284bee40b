"""The data-side conventions of the authors' client: statistics found beside the checkpoint, min-max
(un)normalisation of actions, sin/cos state; and the upstream model in bfloat16."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from lda_policy.model.upstream.checkpoint import load_upstream, read_normalization
from lda_policy.model.upstream.cli import main
from lda_policy.model.upstream.normalization import (
    action_statistics,
    normalize_actions,
    sincos_state,
    unnormalize_actions,
)

FIXTURE = Path(__file__).parent / "data" / "upstream_golden"
STATS = {"gr1_unified": {"action": {"min": [-1.0, 0.0, 2.0], "max": [1.0, 4.0, 2.0], "mask": [True, True, False]},
                         "state": {}}}


def test_statistics_in_the_run_directory_are_imported(tmp_path, capsys):
    """Their training runs keep config and dataset_statistics.json two levels above checkpoints/<step>/."""
    run = tmp_path / "run"
    step = run / "checkpoints" / "steps_20000"
    step.mkdir(parents=True)
    shutil.copy(FIXTURE / "state_dict.safetensors", step / "state_dict.safetensors")
    shutil.copy(FIXTURE / "config.json", run / "config.json")
    (run / "dataset_statistics.json").write_text(json.dumps(STATS))
    assert main([str(step), str(tmp_path / "out"), "--head-only"]) == 0
    assert "no normalisation statistics" not in capsys.readouterr().out
    stats = action_statistics(read_normalization(tmp_path / "out"))
    np.testing.assert_array_equal(stats["max"], [1.0, 4.0, 2.0])
    with pytest.raises(KeyError, match="no statistics for 'other'.*gr1_unified"):
        action_statistics(read_normalization(tmp_path / "out"), "other")


def test_min_max_round_trip_and_clipping():
    stats = action_statistics(STATS)
    actions = np.array([[0.5, 1.0, 2.0], [-1.0, 4.0, 2.0]])
    normalized = normalize_actions(actions, stats, width=8)
    assert normalized.shape == (2, 8) and not normalized[:, 3:].any()
    np.testing.assert_allclose(normalized[:, :3], [[0.5, -0.5, 0.0], [-1.0, 1.0, 0.0]])  # min == max -> 0
    back = unnormalize_actions(normalized, stats)
    np.testing.assert_allclose(back[:, :2], actions[:, :2])
    assert back[0, 2] == 0.0  # mask False: passed through, as their client does
    np.testing.assert_allclose(unnormalize_actions(np.array([[3.0, -7.0, 0.0]]), stats)[0, :2], [1.0, 0.0])


def test_sincos_state_layout():
    groups = [np.full(7, 0.1), np.full(7, 0.2), np.full(6, 0.3), np.full(6, 0.4), np.full(3, 0.5)]
    state = sincos_state(groups)
    assert state.shape == (58,)
    np.testing.assert_allclose(state[:7], np.sin(0.1))
    np.testing.assert_allclose(state[7:14], np.cos(0.1))
    np.testing.assert_allclose(state[52:55], np.sin(0.5))
    np.testing.assert_allclose(state[55:], np.cos(0.5))


def test_bfloat16_inference_stays_close(tmp_path):
    assert main([str(FIXTURE), str(tmp_path / "ckpt"), "--head-only"]) == 0
    model = load_upstream(tmp_path / "ckpt")
    half = load_upstream(tmp_path / "ckpt", dtype=torch.bfloat16)
    torch.manual_seed(0)
    args = (torch.randn(2, 12, 32), torch.ones(2, 12), torch.randint(0, 255, (2, 2, 64, 64, 3)),
            torch.randn(2, 2, 58), torch.tensor([24, 5]), torch.randn(2, 5, 138))
    noise = torch.randn(2, 16, 138)
    full = model.predict_action(*args, noise=noise)
    low = half.predict_action(*[a.bfloat16() if a.is_floating_point() else a for a in args], noise=noise)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    assert (low.float() - full).abs().max() < 0.25 * full.abs().max()


def test_fine_tuning_steps_from_an_imported_checkpoint(tmp_path):
    """The imported model trains: the authors' four-task loss falls over a few AdamW steps, DINO stays frozen."""
    from lda_policy.model.upstream import FlowDraws
    from safetensors.torch import load_file

    assert main([str(FIXTURE), str(tmp_path / "ckpt"), "--head-only"]) == 0
    model = load_upstream(tmp_path / "ckpt").train()
    assert model.dit.training and not model.vision_encoder.training
    i = load_file(str(FIXTURE / "inputs.safetensors"))
    batch = {"vl_embs": i["fwd.vl_embs"], "text_mask": i["fwd.vl_attention_mask"],
             "curr_images": i["fwd.curr_images_u8_BVTHWC"], "future_images": i["fwd.future_images_u8_BVTHWC"],
             "state": i["fwd.state"], "history_actions": i["fwd.history_actions"], "actions": i["fwd.actions"],
             "action_mask": i["fwd.action_mask"], "embodiment": i["fwd.embodiment_id"]}
    tasks = ["policy", "policy", "inverse_dynamics", "inverse_dynamics", "forward_dynamics", "forward_dynamics",
             "video_gen", "video_gen"]
    draws = FlowDraws(i["fwd_canon.draw.beta_action_group"], i["fwd_canon.draw.action_noise"],
                      i["fwd_canon.draw.beta_obs_group"], i["fwd_canon.draw.obs_noise"])
    dino_before = model.vision_encoder.embeddings.patch_embeddings.weight.clone()
    optim = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3, betas=(0.9, 0.95))
    losses = []
    torch.manual_seed(0)
    for _ in range(4):
        loss = model.training_losses(batch, tasks, draws)["loss"]
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses
    assert torch.equal(model.vision_encoder.embeddings.patch_embeddings.weight, dino_before)


def test_our_loader_names_an_imported_checkpoint(tmp_path):
    from lda_policy.model import CheckpointError, LDAModel

    assert main([str(FIXTURE), str(tmp_path / "ckpt"), "--head-only"]) == 0
    with pytest.raises(CheckpointError, match=r"imported checkpoint of the authors' LDA-1B.*load_upstream"):
        LDAModel.from_pretrained(tmp_path / "ckpt")
