"""The Qwen3-VL part of the authors' ``Qwen_MMDiT``: its config, expected weights and the features LDA uses.

LDA conditions on ``hidden_states[-1]`` as transformers 4.57 (the authors' pin) returns it: the output
of the last decoder layer *before* the final RMSNorm, over every token (chat template, image tokens,
text and left padding). transformers 5.x returns the normalised output there, so we take the last
decoder layer's output with a forward hook instead.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..checkpoint import CheckpointError
from .checkpoint import VLM_FILE

#: Qwen3-VL-4B-Instruct (the VLM of the published checkpoints), as we read its published config; the
#: shapes it implies are checked against the published key list in the tests.
QWEN3VL_4B_INSTRUCT: dict[str, Any] = {
    "text_config": {
        "vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu",
        "max_position_embeddings": 262144, "rms_norm_eps": 1e-6, "rope_theta": 5000000.0,
        "rope_scaling": {"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True},
        "attention_bias": False, "tie_word_embeddings": True,
    },
    "vision_config": {
        "depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16, "patch_size": 16,
        "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 2560,
        "num_position_embeddings": 2304, "deepstack_visual_indexes": [5, 11, 17],
        "hidden_act": "gelu_pytorch_tanh", "in_channels": 3,
    },
    "image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
    "vision_end_token_id": 151653, "tie_word_embeddings": True,
}


def qwen_config(spec: dict[str, Any]) -> Any:
    """A transformers ``Qwen3VLConfig`` from our stored dict (text_config, vision_config, token ids)."""
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(**copy.deepcopy(spec))


def build_qwen(spec: dict[str, Any], device: str | torch.device = "cpu") -> Any:
    """A randomly initialised ``Qwen3VLForConditionalGeneration`` (``device="meta"``: shapes only)."""
    from transformers import Qwen3VLForConditionalGeneration

    config = qwen_config(spec)
    config._attn_implementation = "eager"  # deterministic on CPU; sdpa gives the same function
    with torch.device(device):
        return Qwen3VLForConditionalGeneration(config)


def expected_vlm_shapes(spec: dict[str, Any]) -> dict[str, torch.Size]:
    """Key -> shape of the VLM state dict, as the authors' checkpoint lists it (both tied names included)."""
    return {k: v.shape for k, v in build_qwen(spec, "meta").state_dict().items()}


def load_vlm(directory: str | Path, spec: dict[str, Any]) -> Any:
    """The imported Qwen3-VL (weights from ``vlm.safetensors``), in eval mode, float32, on the CPU."""
    path = Path(directory).expanduser() / VLM_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint {directory} has no {VLM_FILE} (imported with --head-only?)")
    model = build_qwen(spec)
    with safe_open(str(path), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if spec.get("tie_word_embeddings", True) else set()
    if set(missing) - tied or unexpected:
        raise CheckpointError(f"{path} does not match the VLM: missing {sorted(set(missing) - tied)[:6]}, "
                              f"unexpected {sorted(unexpected)[:6]}")
    model.tie_weights()
    return model.eval()


def vlm_features(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """LDA's ``vl_embs``: the last decoder layer's output before the final norm, (B, L, width)."""
    captured: list[torch.Tensor] = []

    def keep(_module: Any, _args: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)

    inputs = dict(inputs)
    if "mm_token_type_ids" not in inputs and "input_ids" in inputs:  # transformers 5.x needs it for M-RoPE
        ids = inputs["input_ids"]
        inputs["mm_token_type_ids"] = (ids == model.config.image_token_id).long() \
            + 2 * (ids == model.config.video_token_id).long()
    handle = model.model.language_model.layers[-1].register_forward_hook(keep)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    return captured[0]
