"""ROS-free training of LDA: latent cache, role-aware datasets, trainer, evaluation, CLIs.

    lda-cache-latents --config config/train/demo_cpu.yaml
    lda-train --config config/train/demo_cpu.yaml [key=value ...] [--resume]

Modules: :mod:`.config` (typed YAML config), :mod:`.data` (LeRobot datasets, roles, task sampler),
:mod:`.latent_cache` (DINOv3/language cache), :mod:`.stats` (robust normalisation statistics),
:mod:`.trainer` (AdamW, DDP/FSDP, checkpoints), :mod:`.evaluate` (held-out metrics), :mod:`.cli`.
"""
