"""Shared fixtures: a tiny random-weight DINOv3 (real on-disk format), datasets recorded through the
recorder's episode writer, and configs for the tiny preset. Built once per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from lda_testing.datasets import record_dataset

REPO = Path(__file__).resolve().parents[3]
MIXED = ["high", "high", "low", "high", "actionless", "high", "low", "high"]


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lda_train")


@pytest.fixture(scope="session")
def dino_dir(session_dir) -> Path:
    """DINOv3 ViT with the ViT-S/16 width (384) but one layer at 112 px (7 x 7 patches; 64 px frames
    are resized up to it): the real on-disk format, a quarter of the tokens of 224 px."""
    from lda_policy.model import write_random_dinov3_checkpoint

    return write_random_dinov3_checkpoint(session_dir / "dino", hidden_size=384, num_layers=1, num_heads=6,
                                          image_size=112)


@pytest.fixture(scope="session")
def mixed_dataset(session_dir) -> Path:
    """8 episodes of 24 frames: 5 high, 2 low, 1 actionless (recorder labels in meta/lda_episodes.json)."""
    return record_dataset(session_dir / "mixed", MIXED, length=24, seed=1)


@pytest.fixture(scope="session")
def cache_root(session_dir) -> Path:
    return session_dir / "cache"


def make_config(dataset_roots, dino_dir, cache_root, output_dir, extra=(), datasets=None):
    """(config, YAML path, overrides) for the tiny preset; ``extra`` are more dotted overrides.

    ``lda-train --config <path> <overrides...>`` reproduces the returned config in a subprocess."""
    from lda_train.config import load_config

    overrides = [f"output_dir={output_dir}", "model.preset=lda-tiny", "train.num_threads=1",
                 f"encoders.dino_path={dino_dir}", "encoders.batch_size=32", f"cache.dir={cache_root}",
                 "optim.lr=1e-3", "optim.warmup_steps=2", "train.batch_size=8", "train.log_every=1",
                 "eval.max_samples=16", "eval.batch_size=16", "data.heldout_fraction=0.2"]
    data = {"data": {"datasets": datasets or [{"root": str(r)} for r in dataset_roots]}}
    cfg_path = Path(output_dir).parent / f"{Path(output_dir).name}.yaml"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    import yaml

    cfg_path.write_text(yaml.safe_dump(data))
    overrides += list(extra)
    return load_config(cfg_path, overrides), cfg_path, overrides
