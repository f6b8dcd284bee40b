"""UpstreamPolicy: an imported checkpoint (random weights in the authors' layout, with a real-format
random Qwen3-VL and its processor) acts from camera frames, instructions and state, in physical units."""

import json

import numpy as np
import pytest
import torch
from lda_policy.model import write_random_qwen3vl_checkpoint
from lda_policy.model.upstream import DinoSpec, UpstreamConfig, UpstreamLDA, to_theirs
from lda_policy.model.upstream.cli import main
from lda_policy.model.upstream.policy import UpstreamPolicy
from lda_policy.model.upstream.vlm import vlm_features

PROMPT = "Your task is {instruction}. Locate the key objects."


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    from transformers import Qwen3VLForConditionalGeneration

    root = tmp_path_factory.mktemp("policy")
    qwen_dir = write_random_qwen3vl_checkpoint(root / "qwen", hidden_size=32, num_layers=2, deepstack_layers=1)
    qwen = Qwen3VLForConditionalGeneration.from_pretrained(str(qwen_dir), local_files_only=True)
    qc = qwen.config
    torch.manual_seed(0)
    dino = DinoSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=64)
    head = UpstreamLDA(UpstreamConfig(num_heads=2, head_dim=16, num_layers=2, hidden_size=32, dit_output_dim=32,
                                      text_dim=32, dino=dino))
    state = {to_theirs("head", k): v for k, v in head.state_dict().items()}
    state.update({to_theirs("vlm", k): v for k, v in qwen.state_dict().items()})
    run = root / "authors"
    run.mkdir()
    torch.save(state, run / "pytorch_model.pt")
    action = {"action_model_type": "DiT-test", "action_dim": 138, "state_dim": 58, "future_action_window_size": 15,
              "hidden_size": 32, "max_num_embodiments": 32, "future_obs_index": 16,
              "diffusion_model_cfg": {"cross_attention_dim": 32, "num_layers": 2, "output_dim": 32}}
    config = {"full_config": {"framework": {"action_model": action},
                              "datasets": {"vla_data": {"CoT_prompt": PROMPT}}},
              "DiTConfig[DiT-test]": {"num_attention_heads": 2, "attention_head_dim": 16},
              "dinov3_config": dino.__dict__, "qwen3vl_text_config": qc.text_config.to_dict(),
              "qwen3vl_vision_config": qc.vision_config.to_dict(),
              "qwen3vl_token_ids": {k: getattr(qc, k) for k in ("image_token_id", "video_token_id",
                                                                 "vision_start_token_id", "vision_end_token_id")}}
    (run / "config.json").write_text(json.dumps(config))
    stats = {"gr1": {"action": {"min": [-1.0] * 29, "max": [3.0] * 29}}}
    (run / "dataset_statistics.json").write_text(json.dumps(stats))
    assert main([str(run), str(root / "imported")]) == 0
    return root / "imported", qwen_dir


def test_policy_acts_in_physical_units(imported):
    checkpoint, processor = imported
    policy = UpstreamPolicy(checkpoint, processor)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 2, 64, 64, 3), dtype=np.uint8)
    instructions = ["pick up the red cube", "open the top drawer and put the can into the basket"]
    state = rng.uniform(-1, 1, (2, 2, 58))
    noise = torch.randn(2, 16, 138)
    out = policy.act(frames, instructions, state, [24, 24], noise=noise)
    assert out["normalized"].shape == (2, 16, 138) and out["actions"].shape == (2, 16, 29)
    clipped = np.clip(out["normalized"][..., :29], -1, 1)
    np.testing.assert_allclose(out["actions"], (clipped + 1) / 2 * 4.0 - 1.0, atol=1e-6)

    inputs = policy.vlm_inputs(frames, instructions)
    assert inputs["attention_mask"][0, 0] == 0 and inputs["attention_mask"][1].all()  # left padded
    text = policy.processor.tokenizer.decode(inputs["input_ids"][0])
    assert "Your task is pick up the red cube. Locate the key objects." in text
    assert text.count("<|vision_start|>") == 2  # both current frames, before the text
    expected = policy.model.predict_action(vlm_features(policy.vlm, inputs), inputs["attention_mask"].float(),
                                           torch.as_tensor(frames), torch.as_tensor(state).float(),
                                           torch.tensor([24, 24]), noise=noise)
    np.testing.assert_allclose(out["normalized"], expected.numpy(), atol=1e-6)
