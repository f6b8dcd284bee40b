#!/usr/bin/env python3
"""Can the policy see the object? A linear probe of the frozen encoder's pooled latents on the simulator.

    source scripts/env.sh
    python benchmarks/encoder_probe.py                                   # the demo's random-weight encoder
    python benchmarks/encoder_probe.py --dino-path ~/models/dinov3-vits16 # real DINOv3 weights
    python benchmarks/encoder_probe.py --smoke --out /tmp/encoder_probe.json  # seconds: 8 scenes, own 1-layer encoder

The policy localises the object only through the DINO latents it is given (pooled to the preset's grid,
2x2 for ``lda-tiny``). This benchmark renders ``--scenes`` simulator scenes (a new seed each, so the
object is placed anew; the arm moved to a random offset so that its pose is a nuisance, not a cue),
encodes each camera image, pools it to each grid of ``--grids``, and fits a ridge regression (scikit-learn
``RidgeCV``, regularisation chosen by cross-validation on the training scenes) from latents to the
object's (x, y) in the robot base frame. It is scored on the last ``--test`` scenes, never trained on,
for several numbers of training scenes: the number of distinct object placements an expert dataset
covers. Writes ``benchmarks/results/encoder_probe.json`` and prints a table of mean absolute errors
[mm] next to predict-the-mean.

``--smoke`` (run by ``tests/test_benchmarks_smoke.py``) goes through the same steps with 8 scenes, training
sizes 5 and 6, grids 1 and 2 and, unless ``--dino-path`` is given, a one-layer random-weight DINOv3 of the
ViT-S/16 shape (224 px, 14 x 14 patches) written to a temporary directory: no ``make demo`` needed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# --smoke: every step at the smallest sizes the probe accepts; arguments given on the command line still win.
SMOKE = {"scenes": 8, "test": 2, "train_sizes": [5, 6], "grids": [1, 2]}


def render_scenes(robot: str, image_size: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(count, H, W, 3) uint8 camera images and (count, 2) object x, y [m] in the base frame."""
    from lda_sim.sim_core import SimRobot

    sim = SimRobot(robot, image_size=image_size)
    rng = np.random.default_rng(seed)
    hand = sim.hands[0]
    images, positions = [], []
    t = time.time()
    for i in range(count):
        obs = sim.reset(seed * 100_000 + i)
        target = obs.eef_pos[hand] + rng.uniform(-0.08, 0.08, 3)
        for _ in range(3):  # three control steps toward a random arm pose
            obs = sim.step({hand: (target, obs.eef_quat[hand])})
        images.append(obs.image)
        positions.append(np.asarray(obs.object_pos[:2], dtype=np.float64))
        if (i + 1) % 40 == 0:
            rate = (i + 1) / (time.time() - t)
            print(f"[probe] rendered {i + 1}/{count} scenes ({rate:.1f}/s, eta {(count - i - 1) / rate:.0f} s)",
                  flush=True)
    sim.close()
    return np.stack(images), np.stack(positions)


def encode(dino_path: Path, images: np.ndarray, batch: int = 32):
    """(N, 14, 14, C) DINO patch tokens, float32 on CPU."""
    import torch
    from lda_policy.model.encoders import DinoV3Encoder

    encoder = DinoV3Encoder(dino_path)
    with torch.no_grad():
        return torch.cat([encoder.encode(images[i:i + batch]).float().cpu() for i in range(0, len(images), batch)])


def probe(features: np.ndarray, targets: np.ndarray, n_train: int, n_test: int) -> dict:
    """Ridge fit on the first n_train scenes, scored on the last n_test: MAE per axis [mm] and R^2."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, y_train = features[:n_train], targets[:n_train]
    x_test, y_test = features[-n_test:], targets[-n_test:]
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-1, 5, 13)))
    model.fit(x_train, y_train)
    error = model.predict(x_test) - y_test
    baseline = y_train.mean(0) - y_test
    r2 = 1.0 - (error ** 2).sum(0) / ((y_test - y_test.mean(0)) ** 2).sum(0)
    return {"n_train": n_train, "mae_mm": (np.abs(error).mean(0) * 1000).round(2).tolist(),
            "mean_baseline_mae_mm": (np.abs(baseline).mean(0) * 1000).round(2).tolist(),
            "r2": r2.round(3).tolist(), "alpha": float(model[-1].alpha_)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dino-path", type=Path, default=REPO / "out/demo/dinov3-random")
    ap.add_argument("--robot", default="panda_lift")
    ap.add_argument("--image-size", type=int, default=96, help="camera image size [px] (the demo's: 96)")
    ap.add_argument("--scenes", type=int, default=160)
    ap.add_argument("--test", type=int, default=40, help="scenes held out for scoring")
    ap.add_argument("--train-sizes", type=int, nargs="+", default=[14, 28, 60, 120])
    ap.add_argument("--grids", type=int, nargs="+", default=[1, 2, 4, 14], help="pooled grid sides")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=RESULTS / "encoder_probe.json")
    ap.add_argument("--smoke", action="store_true",
                    help="seconds-long check of every step (own random encoder); needs --out outside "
                         "benchmarks/results")
    a = ap.parse_args(argv)
    if a.smoke:
        scratch = tempfile.TemporaryDirectory(prefix="lda_probe_smoke_")
        own_dino = Path(scratch.name) / "dinov3-random"
        ap.set_defaults(**SMOKE, dino_path=own_dino)
        a = ap.parse_args(argv)
        if a.out.resolve().is_relative_to(RESULTS):
            ap.error("--smoke must not overwrite the committed figures: pass --out outside benchmarks/results")
        if a.dino_path == own_dino:
            from lda_policy.model import write_random_dinov3_checkpoint

            write_random_dinov3_checkpoint(own_dino, num_layers=1)  # ViT-S/16 width and patch grid
    if not (a.dino_path / "config.json").is_file():
        raise SystemExit(f"encoder_probe: no DINOv3 checkpoint at {a.dino_path}; run `make demo` or pass --dino-path")
    if not all(1 <= g <= 14 for g in a.grids):
        raise SystemExit(f"encoder_probe: --grids {a.grids} must lie in 1..14 (the DINO patch grid is 14x14)")
    if min(a.train_sizes) < 5 or a.test < 2:
        raise SystemExit("encoder_probe: --train-sizes must be >= 5 (scenes to fit and choose the regularisation) "
                         "and --test >= 2")
    if max(a.train_sizes) + a.test > a.scenes:
        raise SystemExit(f"encoder_probe: --scenes {a.scenes} is fewer than the largest training size "
                         f"{max(a.train_sizes)} plus --test {a.test}")

    import torch
    from lda_policy.model import pool_latents

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    images, positions = render_scenes(a.robot, a.image_size, a.scenes, a.seed)
    latents = encode(a.dino_path, images)
    rows = []
    for side in a.grids:
        features = pool_latents(latents, (side, side)).reshape(len(images), -1).numpy()
        for n in a.train_sizes:
            rows.append({"grid": [side, side], **probe(features, positions, n, a.test)})

    result = {"benchmark": "encoder_probe",
              "config": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
                         "object_xy_std_mm": (positions.std(0) * 1000).round(2).tolist(),
                         "torch": torch.__version__, "python": platform.python_version(),
                         "cpu_count": os.cpu_count()},
              "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\nencoder probe - {a.dino_path.name}, {a.robot}, {a.image_size}px, object (x, y) from pooled latents, "
          f"{a.test} test scenes")
    print(f"{'grid':>6s} {'train scenes':>13s} {'MAE x, y [mm]':>16s} {'mean-baseline':>16s} {'R^2 x, y':>14s}")
    for r in rows:
        g, m, b, r2 = r["grid"], r["mae_mm"], r["mean_baseline_mae_mm"], r["r2"]
        print(f"{g[0]:>3d}x{g[1]:<2d} {r['n_train']:13d} {m[0]:7.1f}, {m[1]:6.1f} {b[0]:7.1f}, {b[1]:6.1f} "
              f"{r2[0]:6.3f}, {r2[1]:5.3f}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
