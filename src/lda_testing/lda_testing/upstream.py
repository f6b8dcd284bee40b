"""A tiny imported authors' checkpoint for tests: random weights in the authors' full key layout (a flat
``pytorch_model.pt`` of the action model and a real-format random Qwen3-VL), converted by
``lda-import-upstream`` exactly as a published checkpoint is; the published 138-d actions, 58-d state,
32 embodiment slots, two current frames and five history actions, at small widths and 64 px frames."""

from __future__ import annotations

import json
from pathlib import Path

PROMPT = "Your task is {instruction}. Locate the key objects."


def write_tiny_upstream_checkpoint(root: str | Path, seed: int = 0, image_size: int = 64,
                                   statistics: dict | None = None) -> tuple[Path, Path]:
    """Writes ``root/authors`` (the authors' format) and imports it to ``root/imported``.

    Returns (imported checkpoint directory, Qwen3-VL processor directory).
    """
    import torch
    from lda_policy.model import write_random_qwen3vl_checkpoint
    from lda_policy.model.upstream import DinoSpec, UpstreamConfig, UpstreamLDA, to_theirs
    from lda_policy.model.upstream.importer import import_checkpoint
    from transformers import Qwen3VLForConditionalGeneration

    root = Path(root)
    qwen_dir = write_random_qwen3vl_checkpoint(root / "qwen", hidden_size=32, num_layers=1, num_text_layers=2,
                                               deepstack_layers=1, seed=seed)
    qwen = Qwen3VLForConditionalGeneration.from_pretrained(str(qwen_dir), local_files_only=True)
    qc = qwen.config
    torch.manual_seed(seed)
    dino = DinoSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                    image_size=image_size)
    head = UpstreamLDA(UpstreamConfig(num_heads=2, head_dim=16, num_layers=2, hidden_size=32, dit_output_dim=32,
                                      text_dim=32, dino=dino))
    state = {to_theirs("head", k): v for k, v in head.state_dict().items()}
    state.update({to_theirs("vlm", k): v for k, v in qwen.state_dict().items()})
    run = root / "authors"
    run.mkdir(parents=True, exist_ok=True)
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
    stats = statistics if statistics is not None else {"gr1": {"action": {"min": [-1.0] * 29, "max": [3.0] * 29}}}
    (run / "dataset_statistics.json").write_text(json.dumps(stats))
    import_checkpoint(run, root / "imported")
    return root / "imported", qwen_dir
