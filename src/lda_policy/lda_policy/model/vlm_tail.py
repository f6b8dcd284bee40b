"""The VLM's last decoder layers, fine-tuned with the LDA model (paper, appendix A: the VLM is unfrozen
in post-training).

With ``finetune_layers = N`` the frozen Qwen3-VL runs only up to its decoder layer L - N (in the latent
cache while training, once per replan in deployment) and :class:`VLMTail`, a copy of the last N decoder
layers and the final RMSNorm, turns those hidden states into the model's language tokens with gradients.
Per frame the tail needs the hidden states entering layer L - N, the mask of the real tokens, and their
multimodal RoPE position ids (3, L) (temporal, height, width: image tokens are placed on a 2-D grid, so
positions are not simply 0..L-1). Attention is causal over the real tokens, as in the VLM. Qwen3-VL's
deepstack adds visual features to the outputs of its first few decoder layers only; those layers are
never part of the tail (:meth:`VLMTextSpec.max_finetune_layers`), so the cached hidden states already
carry them.

transformers is imported lazily (``lda_policy.model`` stays cheap to import).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import VLMTextSpec

#: weight names of the VLM's language model in a Qwen3-VL ``save_pretrained`` directory
_LM_PREFIX = "model.language_model."


def vlm_text_spec(path: str | Path) -> VLMTextSpec:
    """The :class:`VLMTextSpec` of a local Qwen3-VL directory (its ``config.json``, read by transformers)."""
    from transformers import AutoConfig

    try:
        conf = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read the Qwen3-VL config in {path}: {err}") from None
    text, vision = getattr(conf, "text_config", None), getattr(conf, "vision_config", None)
    if text is None or vision is None or getattr(text, "model_type", "") != "qwen3_vl_text":
        raise ValueError(f"{path} is not a Qwen3-VL checkpoint (config.json has no qwen3_vl text and vision config)")
    rope = dict(text.rope_parameters or {})
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"{path}: RoPE type {rope.get('rope_type')!r}; fine-tuning VLM layers supports the "
                         "'default' multimodal RoPE of Qwen3-VL only")
    return VLMTextSpec(
        num_layers=int(text.num_hidden_layers), deepstack_layers=len(vision.deepstack_visual_indexes or ()),
        hidden_size=int(text.hidden_size), intermediate_size=int(text.intermediate_size),
        num_attention_heads=int(text.num_attention_heads), num_key_value_heads=int(text.num_key_value_heads),
        head_dim=int(text.head_dim), rms_norm_eps=float(text.rms_norm_eps), hidden_act=str(text.hidden_act),
        attention_bias=bool(text.attention_bias), rope_theta=float(rope["rope_theta"]),
        mrope_section=tuple(int(x) for x in rope.get("mrope_section", (24, 20, 20))))


def check_finetune_layers(n: int, spec: VLMTextSpec, image: bool, where: str) -> None:
    """Refuses a tail of ``n`` layers that the VLM at ``where`` cannot give (a ``ValueError`` saying why)."""
    most = spec.max_finetune_layers(image)
    if n < 0 or n > most:
        deep = (f"; its first {spec.deepstack_layers} decoder layer(s) add Qwen3-VL's deepstack visual features, "
                "which need the vision tower and so stay frozen" if image and spec.deepstack_layers else "")
        raise ValueError(f"vlm_finetune_layers={n}: the VLM at {where} has {spec.num_layers} decoder layers, of "
                         f"which at most the last {most} can be fine-tuned{deep}")


def _text_config(spec: VLMTextSpec) -> Any:
    from transformers import Qwen3VLTextConfig

    config = Qwen3VLTextConfig(
        vocab_size=1, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads, head_dim=spec.head_dim, hidden_act=spec.hidden_act,
        rms_norm_eps=spec.rms_norm_eps, attention_bias=spec.attention_bias,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta,
                         "mrope_section": list(spec.mrope_section), "mrope_interleaved": True})
    config._attn_implementation = "sdpa"
    return config


class VLMTail(nn.Module):
    """The last ``num_layers`` Qwen3-VL decoder layers + the final RMSNorm (random until
    :meth:`load_from_vlm`); ``forward(hidden, positions, mask)`` -> the VLM's last hidden state."""

    def __init__(self, spec: VLMTextSpec, num_layers: int) -> None:
        super().__init__()
        from transformers.models.qwen3_vl.modeling_qwen3_vl import (
            Qwen3VLTextDecoderLayer,
            Qwen3VLTextRMSNorm,
            Qwen3VLTextRotaryEmbedding,
        )

        if not 1 <= num_layers <= spec.num_layers:
            raise ValueError(f"a VLM tail needs 1..{spec.num_layers} layers, got {num_layers}")
        config = _text_config(spec)
        self.spec = spec
        self.first_layer = spec.num_layers - num_layers  # index of the tail's first layer in the VLM
        self.layers = nn.ModuleList(Qwen3VLTextDecoderLayer(config, self.first_layer + i) for i in range(num_layers))
        self.norm = Qwen3VLTextRMSNorm(spec.hidden_size, eps=spec.rms_norm_eps)
        self.rotary = Qwen3VLTextRotaryEmbedding(config)  # no weights: inverse frequencies from the spec

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``hidden`` (B, L, D) entering layer ``first_layer``; ``positions`` (B, 3, L) int multimodal RoPE
        ids; ``mask`` (B, L) bool, True = real token. Returns (B, L, D); padded rows are not meaningful."""
        b, n = mask.shape
        if hidden.shape[:2] != (b, n) or tuple(positions.shape) != (b, 3, n):
            raise ValueError(f"VLM tail inputs disagree: hidden {tuple(hidden.shape)}, positions "
                             f"{tuple(positions.shape)} (expected ({b}, 3, {n})), mask {tuple(mask.shape)}")
        cos_sin = self.rotary(hidden, positions.to(hidden.device).long().transpose(0, 1))  # ids as (3, B, L)
        causal = torch.ones(n, n, dtype=torch.bool, device=hidden.device).tril()
        allowed = causal[None] & mask.to(hidden.device)[:, None, :]  # (B, query, key)
        bias = torch.zeros(allowed.shape, dtype=hidden.dtype, device=hidden.device)
        bias = bias.masked_fill(~allowed, torch.finfo(hidden.dtype).min)[:, None]  # (B, 1, L, L) additive
        for layer in self.layers:
            hidden = layer(hidden, position_embeddings=cos_sin, attention_mask=bias)
        return self.norm(hidden)

    @torch.no_grad()
    def load_from_vlm(self, path: str | Path) -> None:
        """Copies the VLM's own last layers and final norm from its safetensors weights (the starting point
        of fine-tuning); only those tensors are read, not the whole VLM."""
        from safetensors import safe_open

        path = Path(path)
        index = path / "model.safetensors.index.json"
        if index.is_file():
            import json

            weight_map = json.loads(index.read_text())["weight_map"]
        elif (path / "model.safetensors").is_file():
            weight_map = None
        else:
            raise ValueError(f"{path} holds no model.safetensors (or its index) to take the VLM layers from")
        wanted = {f"{_LM_PREFIX}layers.{self.first_layer + i}.{k}": f"layers.{i}.{k}"
                  for i, layer in enumerate(self.layers) for k in layer.state_dict()}
        wanted[f"{_LM_PREFIX}norm.weight"] = "norm.weight"
        files: dict[str, list[str]] = {}
        for key in wanted:
            name = "model.safetensors" if weight_map is None else weight_map.get(key)
            if name is None:
                raise ValueError(f"{path}: the weight index has no {key!r} (is this a Qwen3-VL directory?)")
            files.setdefault(name, []).append(key)
        state = {}
        for name, keys in files.items():
            with safe_open(str(path / name), framework="pt") as f:
                present = set(f.keys())
                missing = [k for k in keys if k not in present]
                if missing:
                    raise ValueError(f"{path / name} lacks the VLM tail weight(s) {missing[:3]} "
                                     f"({len(missing)} missing)")
                for k in keys:
                    state[wanted[k]] = f.get_tensor(k)
        own = self.state_dict()
        bad = [f"{k}: VLM {tuple(v.shape)} vs tail {tuple(own[k].shape)}" for k, v in state.items()
               if tuple(v.shape) != tuple(own[k].shape)]
        if bad:
            raise ValueError(f"{path}: the VLM's last layers do not have the recorded shape: {bad[:3]}")
        self.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
