"""Policy-chunk latency of the LDA model per preset, with and without DINO encoding.

One control step with the latent history cache = encode the newest camera frame with DINOv3
(ViT-S/16 geometry, random weights built from its config) + ``model.policy`` on the cached history.
For each preset and Euler step count this reports p50/p95 of: the DINO encoding alone, the policy
alone, and the full control step; plus the policy's achieved FLOP/s (FLOPs counted by
``torch.utils.flop_counter``) as a fraction of the dense-matmul FLOP/s measured on the same machine in
the same run. The language embedding is computed once per instruction and is not timed.

Usage:
    PYTHONPATH=src/lda_policy python benchmarks/model_latency.py                       # CPU, small presets
    PYTHONPATH=src/lda_policy python benchmarks/model_latency.py --device cuda --dtype bf16 \\
        --presets lda-tiny lda-small lda-0.5b lda-1b
    python benchmarks/model_latency.py --preset lda-1b-upstream --steps 4 --iters 3   # the authors' LDA-1B
    python benchmarks/model_latency.py --smoke --out /tmp/model_latency.json  # seconds: lda-tiny, 2 steps, 2 iters
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from lda_policy.deploy.observations import FrameLatents
from lda_policy.model import (
    DinoV3Encoder,
    LDAModel,
    Observation,
    write_random_dinov3_checkpoint,
)
from lda_policy.model.upstream import UPSTREAM_PRESETS, UpstreamLDA
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """torch counts the CUDA attention kernels but not the CPU one; count it the same way."""
    return sdpa_flop_count(query, key, value)


REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# --smoke: the same code paths at the smallest sizes (tests/test_benchmarks_smoke.py runs it); arguments given
# on the command line still win.
SMOKE = {"presets": ["lda-tiny"], "steps": [2], "iters": 2, "warmup": 1}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, warmup: int, iters: int) -> list[float]:
    """Wall-clock milliseconds of ``iters`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def summary(times_ms: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(times_ms, 50)), "p95_ms": float(np.percentile(times_ms, 95)),
            "n": len(times_ms)}


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype, size: int, iters: int) -> float:
    """Dense (size x size) @ (size x size) throughput: the machine's practical peak for this dtype."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    times = timed(lambda: a @ b, device, warmup=2, iters=iters)
    return 2 * size**3 / (float(np.median(times)) / 1e3)


def bench_preset(name: str, args: argparse.Namespace, device: torch.device, dino: DinoV3Encoder,
                 frame: torch.Tensor, peak: float) -> list[dict]:
    """Latency and FLOP figures of one preset for every Euler step count in ``args.steps``."""
    torch.manual_seed(0)
    model = LDAModel.from_preset(name, device=device).eval()
    model.bf16_autocast = args.dtype == "bf16"
    if args.compile:
        model.compile_denoiser()
    c = model.config
    spec = c.embodiments[0]
    # The deployment's frame buffer: each frame is DINO-encoded once, the first time a model call needs it.
    history = FrameLatents(lambda im: dino.encode_frames(im[None], c.latent_grid)[0])
    for k in range(6):
        history.add(0.1 * k, frame[0])
    lang = torch.randn(1, 16, c.lang_dim)
    lang_mask = torch.ones(1, 16, dtype=torch.bool)
    state = torch.zeros(1, spec.state_dim)
    past_actions = torch.zeros(1, c.time.history_action_steps, spec.action_dim)
    obs = Observation(spec.name, history.history(0.5, c.time.obs_offsets_s)[0], lang, lang_mask, state, past_actions)
    clock = [0.5]

    def control_step(steps: int) -> torch.Tensor:
        """What a 10 Hz controller does: encode the newest frame, read the cached history, plan."""
        clock[0] += 0.1
        history.add(clock[0], frame[0])
        latents = history.history(clock[0], c.time.obs_offsets_s)[0]
        return model.policy(Observation(spec.name, latents, lang, lang_mask, state, past_actions), num_steps=steps)

    results = []
    for steps in args.steps:
        with FlopCounterMode(display=False) as counter:
            model.policy(obs, num_steps=steps)
        flops = counter.get_total_flops()
        policy = summary(timed(lambda s=steps: model.policy(obs, num_steps=s), device, args.warmup, args.iters))
        step = summary(timed(lambda s=steps: control_step(s), device, args.warmup, args.iters))
        achieved = flops / (policy["p50_ms"] / 1e3)
        results.append({
            "preset": name, "euler_steps": steps, "parameters": model.parameter_counts()["total"],
            "tokens": c.time.history_action_steps + 1 + c.time.chunk_size + c.num_registers
            + (c.num_obs_frames + c.num_future_frames) * c.tokens_per_frame,
            "policy": policy, "control_step_with_dino": step, "policy_flops": flops,
            "policy_flops_per_s": achieved, "fraction_of_matmul_peak": achieved / peak,
        })
    return results


#: VLM tokens of one RoboCasa query: two 224 px frames (49 tokens each after merging), template and prompt.
UPSTREAM_VLM_TOKENS = 150


def bench_upstream(name: str, args: argparse.Namespace, device: torch.device, peak: float) -> list[dict]:
    """The authors' action head (DINOv3 inside, as in their code; the Qwen3-VL is not timed)."""
    c = UPSTREAM_PRESETS[name]
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = UpstreamLDA(c).to(dtype).eval().requires_grad_(False)  # inference only (FlopCounterMode hooks)
        images = torch.randint(0, 256, (1, c.num_views * c.obs_horizon, 224, 224, 3), dtype=torch.uint8)
        vl_embs = torch.randn(1, UPSTREAM_VLM_TOKENS, c.text_dim, dtype=dtype)
        mask, state = torch.ones(1, UPSTREAM_VLM_TOKENS), torch.zeros(1, c.obs_horizon, c.state_dim)
        history, embodiment = torch.zeros(1, c.history_actions, c.action_dim), torch.tensor([24])
    tokens = model.encode_observation(images)
    results = []
    for steps in args.steps:
        def head_only(s=steps):
            return model.predict_action(vl_embs, mask, None, state, embodiment, history, num_steps=s,
                                        curr_tokens=tokens)

        def with_dino(s=steps):  # their predict_action encodes both frames on every call
            return model.predict_action(vl_embs, mask, images, state, embodiment, history, num_steps=s)

        with FlopCounterMode(display=False) as counter:
            head_only()
        flops = counter.get_total_flops()
        policy = summary(timed(head_only, device, args.warmup, args.iters))
        achieved = flops / (policy["p50_ms"] / 1e3)
        results.append({
            "preset": name, "euler_steps": steps, "parameters": sum(p.numel() for p in model.parameters()),
            "tokens": c.num_registers + c.obs_tokens + c.history_actions + c.obs_horizon + c.action_horizon,
            "policy": policy, "control_step_with_dino": summary(timed(with_dino, device, args.warmup, args.iters)),
            "policy_flops": flops, "policy_flops_per_s": achieved, "fraction_of_matmul_peak": achieved / peak,
        })
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", "--preset", nargs="+", default=["lda-tiny", "lda-small"],
                        help=f"our presets, or the upstream option's {sorted(UPSTREAM_PRESETS)}")
    parser.add_argument("--steps", nargs="+", type=int, default=[4, 10], help="Euler steps per chunk")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: denoiser under bf16 autocast, DINO with bf16 weights (CUDA only)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the denoiser")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=RESULTS / "model_latency.json")
    parser.add_argument("--smoke", action="store_true",
                        help=f"seconds-long check of every code path ({SMOKE}); needs --out outside benchmarks/results")
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args(argv)
        if args.out.resolve().is_relative_to(RESULTS):
            parser.error("--smoke must not overwrite the committed figures: pass --out outside benchmarks/results")

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]  # other processes on the machine skew CPU timings; record it
    device = torch.device(args.device)
    bf16 = args.dtype == "bf16"
    if bf16 and device.type != "cuda":
        parser.error("--dtype bf16 needs --device cuda (bf16 autocast is the GPU inference path)")
    matmul_dtype = torch.bfloat16 if bf16 else torch.float32
    peak = matmul_flops_per_s(device, matmul_dtype, 4096 if device.type == "cuda" else 1024, iters=10)

    with tempfile.TemporaryDirectory() as tmp:
        dino = DinoV3Encoder(write_random_dinov3_checkpoint(Path(tmp) / "dinov3-vits16"), device=device,
                             dtype=torch.bfloat16 if bf16 else torch.float32)
    frame = torch.randint(0, 256, (1, 480, 640, 3), dtype=torch.uint8)  # a VGA camera frame
    dino_times = summary(timed(lambda: dino.encode(frame), device, args.warmup, args.iters))

    results = []
    for name in args.presets:
        if name in UPSTREAM_PRESETS:
            results += bench_upstream(name, args, device, peak)
        else:
            results += bench_preset(name, args, device, dino, frame, peak)

    report = {
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "dtype": args.dtype,
        "compile": args.compile, "python": sys.version.split()[0],
        "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]},
        "matmul_flops_per_s": peak, "dino_encode_one_frame": dino_times, "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"device {report['device']} ({report['device_name']}), {report['threads']} threads, {args.dtype}, "
          f"dense matmul {peak / 1e9:.1f} GFLOP/s, load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"DINOv3 ViT-S/16 encode, 1 frame: p50 {dino_times['p50_ms']:.1f} ms, p95 {dino_times['p95_ms']:.1f} ms")
    header = (f"{'preset':<15} {'params':>8} {'steps':>5} {'policy p50':>11} {'p95':>8} "
              f"{'+DINO p50':>10} {'p95':>8} {'GFLOP':>7} {'GFLOP/s':>8} {'of peak':>8}")
    print(header)
    for r in results:
        print(f"{r['preset']:<15} {r['parameters'] / 1e6:>7.1f}M {r['euler_steps']:>5} "
              f"{r['policy']['p50_ms']:>9.1f}ms {r['policy']['p95_ms']:>6.1f}ms "
              f"{r['control_step_with_dino']['p50_ms']:>8.1f}ms {r['control_step_with_dino']['p95_ms']:>6.1f}ms "
              f"{r['policy_flops'] / 1e9:>7.2f} {r['policy_flops_per_s'] / 1e9:>8.1f} "
              f"{100 * r['fraction_of_matmul_peak']:>7.1f}%")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
