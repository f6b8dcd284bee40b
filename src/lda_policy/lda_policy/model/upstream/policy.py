"""``UpstreamPolicy``: camera frames + instruction + state -> action chunk, as the authors' framework and
their RoboCasa client compute it (the whole ``Qwen_MMDiT.predict_action`` plus un-normalisation).

The VLM sees one user chat turn per sample: every current frame (all views, both times) then their
prompt (``config.vlm_prompt`` with the instruction), with the generation prompt added, left padded, through
the Qwen3-VL processor (from the base model's directory: tokenizer, chat template, image processor).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import load_upstream, read_normalization
from .normalization import action_statistics, unnormalize_actions
from .vlm import load_vlm, vlm_features


class UpstreamPolicy:
    """An imported upstream checkpoint with its VLM and processor, ready to act.

    ``processor``: a directory holding the Qwen3-VL processor files (for the published checkpoints,
    Qwen3-VL-4B-Instruct's). ``statistics_key``: the dataset whose action statistics un-normalise the
    output (may be omitted when ``normalization.json`` holds one dataset; without statistics the
    actions stay normalised).
    """

    def __init__(self, checkpoint: str | Path, processor: str | Path, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, statistics_key: str | None = None) -> None:
        from transformers import AutoProcessor

        self.device = torch.device(device)
        self.model = load_upstream(checkpoint, self.device, dtype)
        self.dtype = self.model.registers.dtype
        self.vlm = load_vlm(checkpoint, self.model.config.vlm).to(self.device, self.dtype)
        self.processor = AutoProcessor.from_pretrained(str(Path(processor).expanduser()), local_files_only=True)
        self.processor.tokenizer.padding_side = "left"  # as the authors' Qwen interface sets it
        statistics = read_normalization(checkpoint)
        self.stats = action_statistics(statistics, statistics_key) if statistics else None

    def vlm_inputs(self, frames: np.ndarray, instructions: Sequence[str]) -> dict[str, torch.Tensor]:
        """The processor's batch for (B, F, H, W, 3) uint8 frames and one instruction per sample."""
        from PIL import Image

        prompt = self.model.config.vlm_prompt
        messages = []
        for sample, instruction in zip(frames, instructions, strict=True):
            content: list[dict[str, Any]] = [{"type": "image", "image": Image.fromarray(np.asarray(f))}
                                             for f in sample]
            content.append({"type": "text", "text": prompt.replace("{instruction}", instruction)})
            messages.append([{"role": "user", "content": content}])
        batch = self.processor.apply_chat_template(messages, tokenize=True, padding=True, add_generation_prompt=True,
                                                   return_dict=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    @torch.no_grad()
    def act(self, frames: np.ndarray, instructions: Sequence[str], state: np.ndarray, embodiment: Sequence[int],
            history_actions: np.ndarray | None = None, noise: torch.Tensor | None = None,
            num_steps: int | None = None) -> dict[str, np.ndarray]:
        """``frames`` (B, V*T, H, W, 3) uint8, ``state`` (B, T, S) ([sin q, cos q]), ``history_actions``
        (B, 5, A) normalised or None (their RoboCasa client sends none). Returns ``normalized`` (B, 16, A)
        and, with statistics, ``actions`` in physical units (B, 16, d)."""
        frames = np.asarray(frames, dtype=np.uint8)
        inputs = self.vlm_inputs(frames, instructions)
        vl_embs = vlm_features(self.vlm, inputs).to(self.dtype)
        mask = inputs["attention_mask"].to(self.dtype)

        def tensor(x: Any) -> torch.Tensor:
            return torch.as_tensor(np.asarray(x), device=self.device).to(self.dtype)

        normalized = self.model.predict_action(
            vl_embs, mask, torch.as_tensor(frames, device=self.device), tensor(state),
            torch.as_tensor(list(embodiment), device=self.device),
            None if history_actions is None else tensor(history_actions), noise=noise, num_steps=num_steps)
        out = {"normalized": normalized.float().cpu().numpy()}
        if self.stats is not None:
            out["actions"] = unnormalize_actions(out["normalized"], self.stats)
        return out
