"""Encoders load through the real on-disk format (random weights), MiniLM is real; history caching."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach a hub

import pytest
import torch
from lda_policy.model import (
    DinoV3Encoder,
    LDAModel,
    MiniLMEncoder,
    Observation,
    Qwen3VLEncoder,
    write_random_dinov3_checkpoint,
    write_random_qwen3vl_checkpoint,
)


@pytest.fixture(scope="module")
def dino(tmp_path_factory):
    # ViT-S/16 geometry (384 wide, 4 registers, 16 px patches at 224 px); two layers keep the test fast.
    path = write_random_dinov3_checkpoint(tmp_path_factory.mktemp("dinov3"), num_layers=2)
    return DinoV3Encoder(path)


def test_dino_encoder_returns_the_patch_grid_without_cls_and_registers(dino):
    assert dino.num_register_tokens == 4 and dino.grid == (14, 14)
    images = torch.randint(0, 256, (2, 240, 320, 3), dtype=torch.uint8)  # camera-sized, HWC uint8
    latents = dino.encode(images)
    assert latents.shape == (2, 14, 14, 384)
    pixels = dino.preprocess(images)
    with torch.inference_mode():
        hidden = dino.model(pixel_values=pixels).last_hidden_state
    assert hidden.shape[1] == 1 + 4 + 196
    assert torch.allclose(latents.flatten(1, 2), hidden[:, 5:], atol=1e-6)
    # LeRobot-style float CHW input in [0, 1] gives the same latents as the uint8 HWC frame.
    chw = images.permute(0, 3, 1, 2).float() / 255.0
    assert torch.allclose(dino.encode(chw), latents, atol=1e-4)
    with pytest.raises(ValueError, match="uint8 images"):
        dino.encode(torch.zeros(1, 3, 224, 224, dtype=torch.uint8))


def test_qwen3vl_encoder_loads_the_random_checkpoint_with_and_without_images(tmp_path):
    path = write_random_qwen3vl_checkpoint(tmp_path / "qwen3vl")
    encoder = Qwen3VLEncoder(path)
    text_only = encoder.encode(["pick up the red cube", "open the drawer"])
    assert text_only.tokens.shape[0] == 2 and text_only.tokens.shape[2] == encoder.dim == 64
    assert text_only.mask.dtype == torch.bool and not text_only.mask[1].all()  # shorter prompt is padded
    images = [torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8).numpy() for _ in range(2)]
    with_images = encoder.encode(["pick up the red cube", "open the drawer"], images=images)
    assert with_images.tokens.shape[1] > text_only.tokens.shape[1]  # image tokens were inserted
    assert torch.isfinite(with_images.tokens).all()


def test_minilm_gives_real_384d_embeddings_that_drive_the_policy():
    encoder = MiniLMEncoder()
    emb = encoder.encode(["pick up the red cube", "grab the red block", "the weather is sunny today"])
    assert emb.tokens.shape[0] == 3 and emb.tokens.shape[2] == encoder.dim == 384
    sentence = torch.nn.functional.normalize(emb.mean_pooled(), dim=-1)
    # Real weights: paraphrases are closer than unrelated sentences.
    assert sentence[0] @ sentence[1] > sentence[0] @ sentence[2] + 0.2
    model = LDAModel.from_preset("lda-tiny")
    obs = Observation("single_gripper", torch.randn(3, 2, 14, 14, 384), emb.tokens, emb.mask,
                      torch.randn(3, 8), torch.randn(3, 2, 7))
    assert model.policy(obs).shape == (3, 16, 7)
