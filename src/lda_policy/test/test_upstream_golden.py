"""The authors' LDA-1B, imported with lda-import-upstream, computes what their code computed.

The fixture (data/upstream_golden/, see its README.md and PROVENANCE.md) was recorded by running the
authors' code (jiangranlv/LDA-1B, batch_sampler branch) with random weights at tiny widths: their state
dict, the inputs with every random draw, and the outputs. Here the real importer converts that state
dict and the real model runs the recorded inputs; every output must agree to 1e-4 (fp32, CPU).
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from lda_policy.model.upstream.checkpoint import load_upstream
from lda_policy.model.upstream.cli import main
from lda_policy.model.upstream.golden import verify_golden
from lda_policy.model.upstream.vlm import load_vlm
from safetensors.torch import load_file, save_file

FIXTURE = Path(__file__).parent / "data" / "upstream_golden"
TOLERANCE = 1e-4
#: Every output of the fixture the test must compare (a scenario silently skipped would fail here).
EXPECTED_OUTPUTS = {
    "fwd_canon.out.loss", "fwd_canon.out.action_loss", "fwd_canon.out.dynamics_loss",
    "fwd_canon.derived.policy_loss", "fwd_canon.derived.inverse_dynamics_loss",
    "fwd_canon.derived.forward_dynamics_loss", "fwd_canon.derived.video_gen_loss",
    "fwd_canon.pred.action_velocity", "fwd_canon.pred.obs_velocity",
    "fwd_shuffled.out.loss", "fwd_shuffled.out.action_loss", "fwd_shuffled.out.dynamics_loss",
    "fwd_canon.dino_out.last_hidden_state.call0",
    "predict_hist.normalized_actions", "predict_nohist.normalized_actions", "videogen.pred_dino_tokens",
    "framework.vlm_hidden_states_last_prenorm", "framework_fwd.out.loss", "framework_fwd.out.action_loss",
    "framework_fwd.out.dynamics_loss", "framework_predict.normalized_actions",
}


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    out = tmp_path_factory.mktemp("upstream") / "imported"
    assert main([str(FIXTURE), str(out)]) == 0
    return out


def test_cli_imports_and_verifies_the_golden_fixture(tmp_path, capsys):
    code = main([str(FIXTURE), str(tmp_path / "ckpt"), "--verify-golden", str(FIXTURE)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "21/21 outputs within 0.0001" in printed
    assert "vlm.language_model" in printed and "dit" in printed and "float32 x201" in printed
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json", "model.safetensors", "normalization.json", "vlm.safetensors"]


def test_every_golden_output_matches(imported):
    model = load_upstream(imported)
    results = verify_golden(model, FIXTURE, load_vlm(imported, model.config.vlm))
    diffs = {r.name: r.max_abs_diff for r in results}
    assert set(diffs) == EXPECTED_OUTPUTS
    worst = {k: v for k, v in diffs.items() if not v <= TOLERANCE}
    assert not worst, worst
    # the losses per task of the fixture's README: 1.4966 + 1.3637 + 2.2670 = 5.1272
    golden = json.loads((FIXTURE / "golden.json").read_text())["scalars_batch_sampler_tree"]
    assert golden["fwd_canon.loss"] == pytest.approx(5.1271929741, abs=1e-8)


def test_verify_fails_on_a_wrong_weight(imported, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(imported, broken)
    state = load_file(str(broken / "model.safetensors"))
    state["task_vectors.policy"] = state["task_vectors.policy"] + 0.01
    save_file(state, str(broken / "model.safetensors"))
    from lda_policy.model.upstream.cli import verify

    assert not verify(broken, FIXTURE, TOLERANCE)
    printed = capsys.readouterr().out
    assert "FAIL" in printed and "predict_hist.normalized_actions" in printed


def test_console_script_is_installed():
    exe = shutil.which("lda-import-upstream")
    assert exe, "lda-import-upstream is not on PATH: run `make setup` (source scripts/env.sh)"
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--verify-golden" in result.stdout


def test_imported_weights_are_the_fixture_weights(imported):
    source = load_file(str(FIXTURE / "state_dict.safetensors"))
    mine = load_file(str(imported / "model.safetensors"))
    assert torch.equal(mine["dit.blocks.1.modulation.weight"], source["action_model.model.blocks.1.to_cond.2.weight"])
    assert torch.equal(mine["vision_encoder.model.layer.0.attention.q_proj.weight"],
                       source["action_model.vision_encoder.layer.0.attention.q_proj.weight"])
    vlm = load_file(str(imported / "vlm.safetensors"))
    assert "lm_head.weight" not in vlm  # tied to embed_tokens: stored once
    assert torch.equal(vlm["model.language_model.embed_tokens.weight"],
                       source["qwen_vl_interface.model.model.language_model.embed_tokens.weight"])


def test_forward_dynamics_sampler_agrees_with_the_verified_training_forward(imported):
    """Their code only trains forward dynamics; our sampler of it must use the same network inputs: one
    Euler step from noise at t = 0 equals noise + the training forward's velocity at t = 0."""
    from lda_policy.model.upstream import FlowDraws

    model = load_upstream(imported)
    i = load_file(str(FIXTURE / "inputs.safetensors"))
    rows = [4, 5]  # the forward-dynamics samples of the canonical batch
    noise = i["fwd_canon.draw.obs_noise"][:2]
    batch = {k: i[f"fwd.{v}"][rows] for k, v in {
        "vl_embs": "vl_embs", "text_mask": "vl_attention_mask", "curr_images": "curr_images_u8_BVTHWC",
        "future_images": "future_images_u8_BVTHWC", "state": "state", "history_actions": "history_actions",
        "actions": "actions", "action_mask": "action_mask", "embodiment": "embodiment_id"}.items()}
    at_t0 = FlowDraws(torch.zeros(0), torch.zeros(0, 16, 138), torch.full((2,), 0.999), noise)  # t = 0, bucket 0
    with torch.no_grad():
        velocity = model.training_losses(batch, ["forward_dynamics"] * 2, at_t0)["pred_obs_velocity"]
    sampled = model.forward_dynamics(batch["vl_embs"], batch["text_mask"], batch["curr_images"], batch["state"],
                                     batch["embodiment"].long(), batch["actions"], batch["history_actions"],
                                     noise=noise, num_steps=1)
    assert (sampled - (noise + velocity)).abs().max() < 1e-5
    two_steps = model.forward_dynamics(batch["vl_embs"], batch["text_mask"], batch["curr_images"], batch["state"],
                                       batch["embodiment"].long(), batch["actions"], batch["history_actions"],
                                       noise=noise, num_steps=2)
    assert two_steps.shape == (2, 21, 48) and not torch.allclose(two_steps, sampled)


def test_float64_replay(imported):
    """In float64 (float32 kept where upstream keeps it: both sinusoids, the joint-attention softmax) the
    DINO tokens agree to 1e-14 and everything else to 1e-7, far inside the float32 tolerance."""
    model = load_upstream(imported)
    diffs = {r.name: r.max_abs_diff for r in verify_golden(model, FIXTURE, float64=True) if r.name.startswith("f64.")}
    assert set(diffs) == {"f64.fwd_canon.out.loss", "f64.fwd_canon.out.action_loss", "f64.fwd_canon.out.dynamics_loss",
                          "f64.fwd_canon.dino_out.last_hidden_state.call0", "f64.predict_hist.normalized_actions",
                          "f64.predict_nohist.normalized_actions", "f64.videogen.pred_dino_tokens"}
    assert diffs["f64.fwd_canon.dino_out.last_hidden_state.call0"] < 1e-13, diffs
    assert max(diffs.values()) < 1e-7, diffs
    assert next(p for p in model.parameters()).dtype == torch.float32  # the replay ran on a copy
