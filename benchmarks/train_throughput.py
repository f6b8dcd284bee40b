#!/usr/bin/env python3
"""Training throughput with the latent cache vs. decoding video and running DINOv3 every step.

    python benchmarks/train_throughput.py [--steps 12] [--batch 8] [--preset lda-small] [--device auto]
    python benchmarks/train_throughput.py --smoke --out /tmp/train_throughput.json  # seconds: lda-tiny, 3 steps

Records a small dataset through the recorder's episode writer (96 x 96 camera, 10 fps), writes a
random-weight DINOv3 with the real ViT-S/16 shape (12 layers, 384 wide, 224 px) with the model
package's helper, then runs the real trainer (``lda_train.trainer.Trainer``) twice, each in a fresh
process: once from the latent cache and once with ``cache.enabled=false`` (LeRobot decodes the
video frames of every sample, DINOv3 encodes them, every step). Reported per mode: training samples
per second over the timed steps (the first step is warm-up), peak memory (process RSS; on CUDA also
the peak allocated GPU memory) and, for the cache, the one-off build time. Writes
``benchmarks/results/train_throughput.json`` (or ``--out``) and prints a table.

``--smoke`` (run by ``tests/test_benchmarks_smoke.py``) does all of this with the ``lda-tiny`` preset, a
one-layer DINOv3 (same width and input size), 3 episodes of 12 frames, batch 2 and 3 steps, in a temporary
directory that is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# --smoke: the same two trainer runs at the smallest sizes; arguments given on the command line still win.
SMOKE = {"steps": 3, "batch": 2, "preset": "lda-tiny", "episodes": 3, "length": 12, "dino_layers": 1}


def _prepare(work: Path, episodes: int, length: int, dino_layers: int = 12) -> tuple[Path, Path]:
    from lda_policy.model import write_random_dinov3_checkpoint
    from lda_testing.datasets import record_dataset

    dino = work / ("dinov3-vits16-random" if dino_layers == 12 else f"dinov3-vits16-random-{dino_layers}layers")
    if not (dino / "config.json").exists():
        # ViT-S/16 shape: 12 layers, 384 wide, 6 heads, 224 px
        write_random_dinov3_checkpoint(dino, num_layers=dino_layers)
    data = work / "dataset"
    if not (data / "meta" / "info.json").exists():
        qualities = (["high", "high", "low", "high", "actionless"] * episodes)[:episodes]
        record_dataset(data, qualities, length=length, seed=0, image=96)
    return dino, data


def _child(args: argparse.Namespace) -> None:
    """One mode in this process: build the trainer, time its training loop, report JSON on stdout."""
    import torch
    from lda_train.config import load_config
    from lda_train.trainer import Trainer

    cached = args.mode == "cached"
    overrides = [
        f"output_dir={args.work / ('run_' + args.mode)}", f"model.preset={args.preset}", f"device={args.device}",
        f"encoders.dino_path={args.dino}", f"encoders.batch_size={args.dino_batch}", f"cache.dir={args.work / 'cache'}",
        f"cache.enabled={'true' if cached else 'false'}", f"train.steps={args.steps}",
        f"train.batch_size={args.batch}", f"train.log_every={args.steps}", f"train.checkpoint_every={10**9}",
        "eval.enabled=false", "optim.warmup_steps=1", f"data.num_workers={args.workers}",
        f"train.num_threads={args.threads}",
    ]
    cfg_file = args.work / "bench.yaml"
    cfg_file.write_text(f"data:\n  datasets:\n    - root: {args.data}\n")
    cfg = load_config(cfg_file, overrides)
    t0 = time.monotonic()
    trainer = Trainer(cfg, progress=False)
    setup_s = time.monotonic() - t0
    if trainer.env.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t1 = time.monotonic()
    trainer.train()
    loop_s = time.monotonic() - t1
    log = [json.loads(line) for line in (trainer.run_dir / "train_log.jsonl").read_text().splitlines()]
    timed = log[-1]  # rate over steps 2..N (the step-1 log line closes the warm-up window)
    out = {
        "mode": args.mode,
        "samples_per_s": timed["samples_per_s"],
        "step_s": args.batch / timed["samples_per_s"],
        "timed_steps": args.steps - 1,
        "setup_s": round(setup_s, 2),
        "loop_s_including_final_checkpoint": round(loop_s, 2),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "final_loss": timed["loss"],
        "device": str(trainer.env.device),
        "torch_threads": torch.get_num_threads(),
    }
    if trainer.env.device.type == "cuda":
        out["peak_gpu_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["gpu"] = torch.cuda.get_device_name()
    if cached:
        caches = trainer.data.latents.caches
        out["cache_build_s"] = sum(c.manifest.get("build_seconds", 0.0) for c in caches)
        out["cache_frames"] = sum(int(c.latents.shape[0]) for c in caches)
        out["cache_mb"] = sum(c.latents.numel() * c.latents.element_size() for c in caches) / 2**20
    print("RESULT " + json.dumps(out), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=12, help="training steps per mode (the first is warm-up)")
    p.add_argument("--batch", type=int, default=8, help="global batch (samples per step)")
    p.add_argument("--preset", default="lda-small")
    p.add_argument("--device", default="auto")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--length", type=int, default=40, help="frames per episode")
    p.add_argument("--dino-batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers decoding video (online mode)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torch default)")
    p.add_argument("--dino-layers", type=int, default=12, help="layers of the random DINOv3 (ViT-S/16: 12)")
    p.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    p.add_argument("--out", type=Path, default=RESULTS / "train_throughput.json")
    p.add_argument("--smoke", action="store_true",
                   help="seconds-long check of every code path; needs --out outside benchmarks/results")
    p.add_argument("--mode", choices=["cached", "online"], help=argparse.SUPPRESS)
    p.add_argument("--dino", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.mode:
        _child(args)
        return 0
    if args.smoke:
        p.set_defaults(**SMOKE)
        args = p.parse_args(argv)
        if args.out.resolve().is_relative_to(RESULTS):
            p.error("--smoke must not overwrite the committed figures: pass --out outside benchmarks/results")
    if args.steps < 2:
        p.error("--steps must be >= 2 (the first step is warm-up)")
    work = args.work or Path(tempfile.mkdtemp(prefix="lda_train_bench_"))
    try:
        return _bench(args, work)
    finally:
        if args.smoke and args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def _bench(args: argparse.Namespace, work: Path) -> int:
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    dino, data = _prepare(work, args.episodes, args.length, args.dino_layers)
    prep_s = time.monotonic() - t0
    results = {}
    for mode in ("cached", "online"):
        cmd = [sys.executable, __file__, "--mode", mode, "--work", str(work), "--dino", str(dino), "--data", str(data),
               "--steps", str(args.steps), "--batch", str(args.batch), "--preset", args.preset, "--device",
               args.device, "--dino-batch", str(args.dino_batch), "--workers", str(args.workers),
               "--threads", str(args.threads)]
        run = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        line = next((ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if run.returncode != 0 or line is None:
            print(run.stdout[-3000:], run.stderr[-5000:], file=sys.stderr)
            return 1
        results[mode] = json.loads(line[len("RESULT "):])
    c, o = results["cached"], results["online"]
    report = {
        "benchmark": "train_throughput",
        "what": "training samples/s of the real trainer: latent cache vs. LeRobot video decode + DINOv3 every step",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                 "load_avg_1m_at_start": os.getloadavg()[0]},
        "setup": {"preset": args.preset, "batch": args.batch, "steps": args.steps, "timed_steps": args.steps - 1,
                  "dino": f"random-weight DINOv3 ViT-S/16 shape ({args.dino_layers} layers, 384 wide, 224 px input)",
                  "camera": "96x96 AV1 video (recorder's episode writer), 10 fps", "episodes": args.episodes,
                  "frames": args.episodes * args.length, "frames_per_sample": 5, "language": "all-MiniLM-L6-v2",
                  "dataset_preparation_s": round(prep_s, 1), "video_decode_workers": args.workers},
        "cached": c,
        "online": o,
        "speedup_cached_over_online": c["samples_per_s"] / o["samples_per_s"],
        "cache_break_even_steps": (c.get("cache_build_s", 0.0) / max(o["step_s"] - c["step_s"], 1e-9)),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    rows = [("mode", "samples/s", "s/step", "peak RSS MB") + (("peak GPU MB",) if "peak_gpu_allocated_mb" in c else ())]
    for name, r in (("latent cache", c), ("video + DINOv3 every step", o)):
        row = (name, f"{r['samples_per_s']:.2f}", f"{r['step_s']:.3f}", f"{r['peak_rss_mb']:.0f}")
        rows.append(row + ((f"{r['peak_gpu_allocated_mb']:.0f}",) if "peak_gpu_allocated_mb" in r else ()))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"train throughput ({args.preset}, batch {args.batch}, {args.steps - 1} timed steps, device {c['device']}, "
          f"{c['torch_threads']} threads)")
    for r in rows:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    print(f"  speed-up with the cache: {report['speedup_cached_over_online']:.1f}x; cache build "
          f"{c.get('cache_build_s', 0):.1f} s for {c.get('cache_frames')} frames ({c.get('cache_mb', 0):.1f} MB), "
          f"paid back after {report['cache_break_even_steps']:.0f} steps")
    print(f"  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
