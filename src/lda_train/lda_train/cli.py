"""Command lines: ``lda-train``, ``lda-cache-latents`` and ``lda-label-actions`` (also ``ros2 run lda_train
train|cache_latents|label_actions``).

    lda-cache-latents --config config/train/demo_cpu.yaml
    lda-train --config config/train/demo_cpu.yaml train.steps=2000 optim.lr=3e-4
    lda-train --config config/train/demo_cpu.yaml --resume
    torchrun --nproc_per_node=8 $(which lda-train) --config config/train/finetune_lda1b.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

EXIT_CONFIG = 2
EXIT_FAILED = 1


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", "-c", required=True, help="training config YAML (see config/train/)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. train.steps=500 optim.lr=3e-4 data.datasets.0.role=low")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="show progress bars (default: when stderr is a terminal)")
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def _setup_logging() -> None:
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO if rank == "0" else logging.WARNING,
                        format="[%(name)s] %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "huggingface_hub", "datasets", "fsspec", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _errors():
    from lda_policy.model import CheckpointError

    from .build import TrainError
    from .config import ConfigError
    from .data import DataError
    from .latent_cache import CacheError

    return ConfigError, (DataError, TrainError, CacheError, CheckpointError)


def train_main(argv: list[str] | None = None) -> int:
    """``lda-train``: fine-tune or train LDA on local LeRobot datasets (DDP under torchrun)."""
    p = _parser("lda-train", "Role-aware training of LDA on local LeRobot datasets.")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in output_dir from its newest complete checkpoint")
    args = p.parse_intermixed_args(argv)
    _setup_logging()
    config_error, run_errors = _errors()
    try:
        from .config import load_config

        cfg = load_config(args.config, args.overrides)
    except config_error as err:
        print(f"lda-train: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    from .trainer import run_training

    try:
        result = run_training(cfg, resume=args.resume, progress=args.progress)
    except run_errors as err:
        print(f"lda-train: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    if result and "per_task" in result:  # an upstream fine-tune: held-out losses per task
        print(f"[lda-train] done: held-out loss {result['loss']:.4f} {result['per_task']}; the fine-tuned upstream "
              f"checkpoint is {Path(cfg.output_dir) / 'model'}", flush=True)
    elif result and os.environ.get("RANK", "0") == "0":
        pol = result.get("policy", {})
        print(f"[lda-train] done: held-out policy action L1 {pol.get('action_l1')} "
              f"(predict-the-mean {pol.get('baseline_mean_action_l1')}); results in {Path(cfg.output_dir) / 'eval'}",
              flush=True)
    return 0


def cache_main(argv: list[str] | None = None) -> int:
    """``lda-cache-latents``: encode every frame (DINOv3) and task string once; verify or rebuild caches."""
    p = _parser("lda-cache-latents", "Build or verify the latent cache of every dataset in a training config.")
    p.add_argument("--verify-only", action="store_true",
                   help="only check the caches (exit 1 when one is missing, stale or corrupt)")
    args = p.parse_intermixed_args(argv)
    _setup_logging()
    config_error, run_errors = _errors()
    try:
        from .config import load_config

        cfg = load_config(args.config, args.overrides)
    except config_error as err:
        print(f"lda-cache-latents: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        report = build_caches(cfg, verify_only=args.verify_only, progress=args.progress)
    except run_errors as err:
        print(f"lda-cache-latents: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(report, indent=2))
    return 0


def build_caches(cfg, verify_only: bool = False, progress: bool | None = None) -> list[dict]:
    """Verifies (and unless ``verify_only`` builds) the cache of every configured dataset."""
    import time

    import torch
    from lda_policy.model import PRESETS, read_config

    from .build import TrainError
    from .data import open_sources
    from .latent_cache import cache_spec, ensure_cache, language_encoder
    from .upstream_trainer import is_upstream_run

    if is_upstream_run(cfg):
        raise TrainError(f"model.checkpoint {cfg.model.checkpoint} is an imported authors' checkpoint: its model runs "
                         "DINOv3 on the frames itself and needs no latent cache; run lda-train directly")
    if cfg.encoders.dino_path is None:
        raise TrainError("encoders.dino_path is not set: name the local DINOv3 checkpoint directory")
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    model_cfg = read_config(cfg.model.checkpoint) if cfg.model.checkpoint else PRESETS[cfg.model.preset]
    sources = open_sources(cfg.data.datasets, model_cfg.time, cfg.data.heldout_fraction, cfg.seed)
    spec = cache_spec(cfg, tuple(model_cfg.latent_grid))
    dev = cfg.encoders.device
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if dev == "auto" else torch.device(dev)
    show = sys.stderr.isatty() if progress is None else progress
    report = []
    for s in sources:
        t0 = time.monotonic()
        if verify_only:
            cache = ensure_cache(s, spec, lambda: None, lambda: None, rebuild="never", progress=False)
        else:
            from lda_policy.model import DinoV3Encoder

            cache = ensure_cache(
                s, spec, lambda: DinoV3Encoder(cfg.encoders.dino_path, device=device),
                lambda: language_encoder(cfg, device), rebuild=cfg.cache.rebuild, progress=show)
        report.append({"dataset": s.name, "frames": s.num_frames, "tasks": len(s.tasks),
                       "cache": str(cache.directory), "fingerprint": cache.fingerprint,
                       "latent_shape": list(cache.latents.shape), "dtype": cfg.cache.dtype,
                       "seconds": round(time.monotonic() - t0, 2),
                       "built_seconds": cache.manifest.get("build_seconds")})
    return report


def label_main(argv: list[str] | None = None) -> int:
    """``lda-label-actions``: label actionless episodes with the model's inverse dynamics into a new dataset."""
    p = argparse.ArgumentParser(prog="lda-label-actions", description=(
        "Copy a LeRobot dataset into a new one in which its actionless episodes (or --episodes) carry actions "
        "predicted by a checkpoint's inverse dynamics, labelled 'low' with their provenance. A killed run is "
        "continued by running the same command again."))
    p.add_argument("--checkpoint", required=True, help="LDA checkpoint directory (knows the dataset's robot)")
    p.add_argument("--dino-path", required=True, help="local DINOv3 directory the checkpoint was trained with")
    p.add_argument("--dataset", required=True, help="source LeRobot dataset (read only)")
    p.add_argument("--out", required=True, help="the new dataset (created, or continued when it is unfinished)")
    p.add_argument("--episodes", type=int, nargs="+", default=None,
                   help="episode indices to label (default: every actionless episode)")
    p.add_argument("--language", default="minilm", choices=["minilm", "qwen3vl"])
    p.add_argument("--language-path", default=None, help="local language encoder directory ('' = bundled MiniLM)")
    p.add_argument("--passes", type=int, default=2, choices=[1, 2],
                   help="2 (default): a second pass with the first pass's labels as history actions")
    p.add_argument("--num-steps", type=int, default=None, help="Euler steps (default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None)
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    _setup_logging()
    from lda_common.episode_writer import DatasetError

    from .label_actions import ActionLabeller, LabelError, LabelSettings, load_runtime

    try:
        runtime = load_runtime(args.checkpoint, args.dino_path, args.language, args.language_path, args.device)
        labeller = ActionLabeller(runtime, args.dataset, LabelSettings(args.passes, args.num_steps, args.seed))
        summary = labeller.write(args.out, args.episodes, args.checkpoint,
                                 progress=sys.stderr.isatty() if args.progress is None else args.progress)
    except (LabelError, DatasetError) as err:
        print(f"lda-label-actions: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_main())
