#!/usr/bin/env python3
"""What image-conditioned Qwen3-VL costs: per replan on the model host, per frame in the latent cache.

    source scripts/env.sh
    python benchmarks/vlm_cost.py                                    # tiny random-weight Qwen3-VL, CPU
    python benchmarks/vlm_cost.py --vlm-path ~/models/Qwen3-VL-4B-Instruct --device cuda   # the real VLM (bf16)
    python benchmarks/vlm_cost.py --smoke --out /tmp/vlm_cost.json   # seconds: every code path, few iterations

With ``encoders.language: qwen3vl`` and ``vlm_image: true`` the model's language condition is Qwen3-VL's
last hidden states over [current camera frame, instruction] (docs/guides/vlm-conditioning.md). This
measures the three places that cost something:

- **per replan** (deployment): one ``Qwen3VLEncoder.encode`` of a VGA camera frame + an instruction, what
  ``ModelRuntime.observation`` runs once per proposed chunk (MiniLM's per-text cache costs nothing per
  replan; its one uncached encode is shown for scale);
- **cache build** (training, once): ``encode_vlm_frames`` over decoded LeRobot-layout frames in batches
  of ``--batch`` (``encoders.vlm_batch_size``), per frame, and the bytes each frame adds to the cache;
- **batch assembly** (training, every step): ``CachedLatents.condition`` gathering a batch's per-frame
  condition from a loaded cache, next to ``LanguageTable.batch`` (the text-only lookup).

Without ``--vlm-path`` a random-weight Qwen3-VL of the real format (``write_random_qwen3vl_checkpoint``,
64 wide, 2 layers) is written to a temporary directory: it measures the code path (processor, vision
tower, token bookkeeping), not the 4B model's arithmetic. Writes ``benchmarks/results/vlm_cost.json``
and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SMOKE = {"iters": 3, "warmup": 1, "frames": 8, "batch": 4, "batch_size": 8}
INSTRUCTION = "pick up the red cube and place it in the bowl"


def summary(times_s: list[float]) -> dict[str, float]:
    ms = np.asarray(times_s) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)), "n": len(ms)}


def timed(fn, device: torch.device, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out.append(time.perf_counter() - t0)
    return out


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vlm-path", type=Path, default=None,
                        help="local Qwen3-VL directory (save_pretrained format); default: a tiny random one")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (the VLM runs in bf16 on CUDA)")
    parser.add_argument("--image-size", type=int, default=224, help="encoders.vlm_image_size")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--frames", type=int, default=64, help="frames encoded for the cache-build figure")
    parser.add_argument("--batch", type=int, default=8, help="frames per VLM forward in the cache build")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch for the assembly figure")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=RESULTS / "vlm_cost.json")
    parser.add_argument("--smoke", action="store_true",
                        help=f"seconds-long check of every code path ({SMOKE}); needs --out outside benchmarks/results")
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args(argv)
        if args.out.resolve().is_relative_to(RESULTS):
            parser.error("--smoke must not overwrite the committed figures: pass --out outside benchmarks/results")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from lda_policy.model import MiniLMEncoder, Qwen3VLEncoder, write_random_qwen3vl_checkpoint
    from lda_train.data import BatchPlan, LanguageTable
    from lda_train.latent_cache import CachedLatents, LatentCache, encode_vlm_frames

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = args.vlm_path or write_random_qwen3vl_checkpoint(Path(tmp) / "qwen3vl-tiny")
        t0 = time.perf_counter()
        vlm = Qwen3VLEncoder(path, device=device, image_size=args.image_size, use_image=True)
        load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    camera = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)  # a VGA camera frame, as the host gets it

    # -- per replan: one image + instruction encode
    replan = summary(timed(lambda: vlm.encode([INSTRUCTION], [camera]), device, args.warmup, args.iters))
    emb = vlm.encode([INSTRUCTION], [camera])
    tokens = int(emb.mask.sum())
    image_tokens = int((vlm.inputs([INSTRUCTION], [camera])["input_ids"] == vlm.model.config.image_token_id).sum())
    minilm = MiniLMEncoder(device=device)
    minilm_once = summary(timed(lambda: minilm.encode([INSTRUCTION]), device, args.warmup, args.iters))

    # -- cache build: LeRobot-layout frames (float (3, H, W) in [0, 1]) of a dataset, batched
    class _Source:  # what encode_vlm_frames reads of a SourceDataset: each row's instruction
        task_index = np.zeros(args.frames, np.int64)
        task_text = {0: INSTRUCTION}

    frames = torch.from_numpy(rng.integers(0, 256, (args.frames, 3, 480, 640), dtype=np.uint8)).float() / 255.0
    rows = np.arange(args.frames)
    encode_vlm_frames(vlm, _Source, rows[: args.batch], frames[: args.batch], args.batch, torch.float16)  # warm-up
    t0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stored = encode_vlm_frames(vlm, _Source, rows, frames, args.batch, torch.float16)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    build_s = time.perf_counter() - t0
    bytes_per_frame = int(stored["vlm"][0].numel() * 2 + stored["vlm_mask"][0].numel())

    # -- batch assembly from a loaded cache (in memory): per-frame condition vs. the per-text table
    n = max(args.frames, args.batch_size)
    rows_of_cache = torch.arange(n) % args.frames
    cache = LatentCache(Path(tmp), {}, torch.zeros(n, 1, 1, 1), LanguageTable({}, vlm.dim),
                        (stored["vlm"][rows_of_cache], stored["vlm_mask"][rows_of_cache]))
    gather = CachedLatents([None], [cache])
    plan = BatchPlan(np.zeros(args.batch_size, np.int64), rng.integers(0, n, args.batch_size),
                     np.zeros(args.batch_size, np.int64))
    assembly = summary(timed(lambda: gather.condition(plan), torch.device("cpu"), args.warmup, args.iters))
    table = LanguageTable({INSTRUCTION: (emb.tokens[0].cpu(), emb.mask[0].cpu())}, vlm.dim)
    text_lookup = summary(timed(lambda: table.batch([INSTRUCTION] * args.batch_size), torch.device("cpu"),
                                args.warmup, args.iters))

    report = {
        "commit": git_commit(), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu_cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "python": sys.version.split()[0], "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]},
        "vlm": str(args.vlm_path) if args.vlm_path else "random-weight tiny Qwen3-VL (64 wide, 2 layers)",
        "vlm_dtype": str(vlm.dtype).replace("torch.", ""), "vlm_hidden": vlm.dim, "vlm_load_s": load_s,
        "image_size": args.image_size, "camera": [480, 640], "tokens_per_condition": tokens,
        "image_tokens": image_tokens,
        "replan_encode": replan, "minilm_text_encode_uncached": minilm_once,
        "cache_build": {"frames": args.frames, "batch": args.batch, "seconds": build_s,
                        "ms_per_frame": 1e3 * build_s / args.frames, "bytes_per_frame_float16": bytes_per_frame},
        "batch_assembly": {"batch_size": args.batch_size, "vlm_condition": assembly, "text_table": text_lookup,
                           "vlm_us_per_sample": 1e3 * assembly["p50_ms"] / args.batch_size},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"{report['vlm']} ({report['vlm_dtype']}, {vlm.dim}-d) on {report['device']} ({report['device_name']}), "
          f"{report['threads']} threads, commit {report['commit']}, load average {load_before:.1f}")
    print(f"condition: {tokens} tokens ({image_tokens} image tokens of a {args.image_size} px frame)")
    print(f"{'what':<44} {'p50':>10} {'p95':>10}")
    print(f"{'per replan: VLM encode (frame + instruction)':<44} {replan['p50_ms']:>8.1f}ms {replan['p95_ms']:>8.1f}ms")
    print(f"{'  (minilm, uncached; cached per text: 0)':<44} {minilm_once['p50_ms']:>8.1f}ms "
          f"{minilm_once['p95_ms']:>8.1f}ms")
    print(f"{'cache build: VLM per frame (batch ' + str(args.batch) + ')':<44} "
          f"{report['cache_build']['ms_per_frame']:>8.1f}ms {'':>10}")
    print(f"{'cache size per frame (float16)':<44} {bytes_per_frame / 1024:>8.1f}kB")
    print(f"{'batch assembly: VLM condition, batch ' + str(args.batch_size):<44} {assembly['p50_ms']:>8.2f}ms "
          f"{assembly['p95_ms']:>8.2f}ms")
    print(f"{'  (text table lookup, same batch)':<44} {text_lookup['p50_ms']:>8.2f}ms {text_lookup['p95_ms']:>8.2f}ms")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
