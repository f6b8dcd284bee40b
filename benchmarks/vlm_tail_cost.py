#!/usr/bin/env python3
"""What fine-tuning the VLM's last layers (``encoders.vlm_finetune_layers``) costs per training step.

    source scripts/env.sh
    python benchmarks/vlm_tail_cost.py --threads 1                 # tiny random-weight Qwen3-VL, CPU
    python benchmarks/vlm_tail_cost.py --smoke --out /tmp/t.json   # seconds: every code path

One optimiser step (``LDAModel.compute_loss`` forward + backward + AdamW, the trainer's optimiser groups)
of ``--preset`` on a batch whose language input is read from the latent cache, three ways: the frozen
VLM's cached output (N = 0), and the cached hidden states entering the last N layers run through the
model's trainable :class:`~lda_policy.model.vlm_tail.VLMTail` for each N of ``--layers``. The VLM is a
random-weight Qwen3-VL of the real format as wide as the preset's ``lang_dim`` with ``--vlm-layers``
decoder layers (the first 2 taking deepstack features), so on a CPU this measures the code path at a
small width, not the 4B model's layers (2560 wide, 36 layers). Writes benchmarks/results/vlm_tail_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vlm_cost import RESULTS, cpu_name, git_commit, summary, timed  # noqa: E402

SMOKE = {"iters": 2, "warmup": 1, "batch_size": 4, "layers": [1, 2]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="lda-tiny")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=69, help="condition length (69: 224 px frame + instruction)")
    parser.add_argument("--vlm-layers", type=int, default=4, help="decoder layers of the random VLM")
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2], help="values of vlm_finetune_layers")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=RESULTS / "vlm_tail_cost.json")
    parser.add_argument("--smoke", action="store_true", help=f"seconds-long check ({SMOKE}); --out outside results")
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args(argv)
        if args.out.resolve().is_relative_to(RESULTS):
            parser.error("--smoke must not overwrite the committed figures: pass --out outside benchmarks/results")
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from lda_policy.model import PRESETS, LDAModel, write_random_qwen3vl_checkpoint
    from lda_policy.model.config import LanguageCondition
    from lda_policy.model.vlm_tail import vlm_text_spec
    from lda_train.build import make_optimizer
    from lda_train.config import load_config

    preset = PRESETS[args.preset]
    cfg = load_config(None, [f"model.preset={args.preset}"])
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        vlm = write_random_qwen3vl_checkpoint(Path(tmp) / "vlm", hidden_size=preset.lang_dim,
                                              num_text_layers=args.vlm_layers, deepstack_layers=2)
        spec = vlm_text_spec(vlm)
        b, n, c = args.batch_size, args.tokens, preset
        spec_e = c.embodiments[0]
        rng = torch.Generator().manual_seed(0)
        batch = {  # a policy/dynamics mix of one embodiment, what the trainer's batch holds
            "embodiment_id": torch.zeros(b, dtype=torch.long), "task": torch.arange(b) % 4,
            "role": torch.zeros(b, dtype=torch.long),
            "obs_latents": torch.randn(b, c.num_obs_frames, *c.latent_grid, c.latent_dim, generator=rng),
            "future_latents": torch.randn(b, c.num_future_frames, *c.latent_grid, c.latent_dim, generator=rng),
            "state": torch.randn(b, spec_e.state_dim, generator=rng),
            "history_actions": torch.randn(b, c.time.history_action_steps, spec_e.action_dim, generator=rng),
            "actions": torch.randn(b, c.time.chunk_size, spec_e.action_dim, generator=rng),
            "action_valid": torch.ones(b, dtype=torch.bool),
            "language": torch.randn(b, n, c.lang_dim, generator=rng),
            "language_mask": torch.ones(b, n, dtype=torch.bool),
        }
        positions = torch.arange(n).view(1, 1, n).expand(b, 3, n).contiguous()

        def step_time(layers: int) -> dict[str, float]:
            cond = LanguageCondition(encoder="qwen3vl", image=True, finetune_layers=layers,
                                     vlm_text=spec if layers else None)
            torch.manual_seed(0)
            model = LDAModel.from_preset(args.preset, condition=cond).train()
            if layers:
                model.vlm_tail.load_from_vlm(vlm)
            opt = make_optimizer(model, cfg)
            inputs = dict(batch, language_positions=positions) if layers else batch

            def step() -> None:
                loss, _ = model(inputs)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            result = summary(timed(step, torch.device("cpu"), args.warmup, args.iters))
            result["trainable_parameters"] = model.parameter_counts()["total"]
            result["vlm_tail_parameters"] = model.parameter_counts()["vlm_tail"]
            return result

        steps = {"0": step_time(0)}
        for layers in args.layers:
            steps[str(layers)] = step_time(layers)

    report = {
        "commit": git_commit(), "device": "cpu", "device_name": cpu_name(), "cpu_cores": os.cpu_count(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "python": sys.version.split()[0],
        "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]},
        "preset": args.preset, "batch_size": args.batch_size, "tokens": args.tokens,
        "vlm": f"random-weight Qwen3-VL ({preset.lang_dim} wide, {args.vlm_layers} decoder layers)",
        "train_step_by_finetune_layers": steps,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['vlm']}, {args.preset}, batch {b} x {n} tokens, {report['threads']} threads on "
          f"{report['device_name']}, commit {report['commit']}, load average {load_before:.1f}")
    print(f"{'vlm_finetune_layers':<22} {'step p50':>10} {'step p95':>10} {'tail params':>12}")
    for layers, r in steps.items():
        print(f"{layers:<22} {r['p50_ms']:>8.1f}ms {r['p95_ms']:>8.1f}ms {r['vlm_tail_parameters']:>12,}")
    print(f"wrote {args.out}")
    assert np.isfinite([r["p50_ms"] for r in steps.values()]).all()


if __name__ == "__main__":
    main()
