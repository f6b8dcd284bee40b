"""The DINOv3 observation encoder embedded in the authors' action model, and its image preprocessing.

The authors vendor transformers' ``DINOv3ViTModel``; transformers 5.x ships the same network, with the
encoder layers under ``model.layer.*`` instead of ``layer.*`` (the importer renames them).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .config import DinoSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_dino(spec: DinoSpec) -> nn.Module:
    """A randomly initialised transformers ``DINOv3ViTModel`` of this shape (weights come from a checkpoint)."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    fields = dataclasses.asdict(spec)
    config = DINOv3ViTConfig(**fields, num_channels=3, drop_path_rate=0.0, attention_dropout=0.0,
                             pos_embed_shift=None, pos_embed_jitter=None)
    return DINOv3ViTModel(config).eval()


def to_channels_first(images: torch.Tensor) -> torch.Tensor:
    """(..., H, W, 3) -> (..., 3, H, W); channels-first input is returned as is (as the processor infers it)."""
    if images.shape[-1] == 3 and images.shape[-3] != 3:
        return images.movedim(-1, -3)
    return images


def preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    """What ``DINOv3ViTImageProcessorFast`` does, in float32 and in its order: multiply by 1/255, resize to
    ``size`` (antialiased bilinear, only if needed), subtract the ImageNet mean and divide by its std.

    ``images``: (N, 3, H, W) with values 0..255 (uint8 or float). Bit-identical to the processor on the
    golden fixture (the fused form ``(x - 255 mean) / (255 std)`` differs by up to 5e-7); float64 input
    is processed in float64, as the processor does with it.
    """
    # float32, or float64 for float64 input (the processor keeps a float input's precision)
    x = (images if images.dtype == torch.float64 else images.float()) * (1.0 / 255.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def encode_frames(dino: nn.Module, images: torch.Tensor, size: int, microbatch: int = 72) -> torch.Tensor:
    """DINO tokens (CLS, registers, patches) after the final LayerNorm of every frame.

    ``images``: (B, F, H, W, 3) or (B, F, 3, H, W), 0..255. Returns (B * F, N, C) in frame-major order.
    """
    frames = to_channels_first(images).flatten(0, 1)
    pixels = preprocess(frames, size)
    weight_dtype = next(dino.parameters()).dtype
    out = []
    with torch.no_grad():  # frozen: the authors never train it
        for start in range(0, pixels.shape[0], microbatch):
            chunk = pixels[start:start + microbatch].to(weight_dtype)
            out.append(dino(pixel_values=chunk).last_hidden_state)
    return torch.cat(out, dim=0)
