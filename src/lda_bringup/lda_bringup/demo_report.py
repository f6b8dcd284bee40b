"""The demo's report: what was recorded, how training went, how the closed loop did, as JSON, Markdown, PNG."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def latents_png(checkpoint: Path, dino: Path, bag: Path, out_png: Path, rows: int = 3) -> Path:
    """Observed vs predicted DINO latents (PCA colours) and the error map, a few moments of one episode."""
    import numpy as np
    from PIL import Image

    from lda_policy.deploy.inference import ModelRuntime
    from lda_policy.deploy.replay import DynamicsReplay, LatentPCA, heatmap, panel, read_episode
    from lda_policy.deploy.robot import RobotInterface

    robot = RobotInterface(Path("config/robots/sim_panda.yaml"))
    runtime = ModelRuntime(checkpoint, dino)
    replay = DynamicsReplay(runtime, robot, read_episode(bag, robot), instruction="lift the red cube")
    predictions = [p for p in replay.predictions(every=4) if p.observed[-1] is not None]
    if not predictions:
        raise RuntimeError(f"{bag}: too short for a forward-dynamics prediction")
    picks = [predictions[round(i * (len(predictions) - 1) / max(rows - 1, 1))] for i in range(rows)]
    pca = LatentPCA(np.stack([replay.latent(p.position).cpu().numpy() for p in predictions]))
    vmax = max(float(np.max(p.patch_errors[-1])) for p in picks)
    tiles = []
    for p in picks:
        target = p.targets[-1]
        camera = replay.episode.frames[target].image
        tiles.append(panel(camera, pca.rgb(p.observed[-1]), pca.rgb(p.predicted[-1]),
                           heatmap(p.patch_errors[-1], vmax)))
    Image.fromarray(np.concatenate(tiles, axis=0)).save(out_png)
    return out_png


def write_report(out: Path, dataset: Path, train_dir: Path, checkpoint: Path, dino: Path, bags: Path,
                 size: dict[str, Any], timings: dict[str, float]) -> dict[str, Any]:
    from lda_teleop_record.schema import read_episode_labels

    labels = read_episode_labels(dataset)
    counts = {q: sum(1 for e in labels if e.get("quality") == q) for q in ("high", "low", "actionless")}
    evaluation = _read_json(train_dir / "eval" / "latest.json")
    policy = _read_json(out / "eval_policy.json")
    frozen = _read_json(out / "eval_frozen.json")

    pngs = {}
    curves = train_dir / "eval" / "curves.png"
    if curves.is_file():
        shutil.copy(curves, out / "training_curves.png")
        pngs["training_curves"] = "training_curves.png"
    bag_dirs = sorted(p for p in bags.iterdir() if p.is_dir()) if bags.is_dir() else []
    if bag_dirs:
        latents_png(checkpoint, dino, bag_dirs[-1], out / "latents_observed_vs_predicted.png")
        pngs["latents"] = "latents_observed_vs_predicted.png"

    pol, inv, fwd = (evaluation.get(k, {}) for k in ("policy", "inverse_dynamics", "forward_dynamics"))
    report = {
        "dataset": {"path": str(dataset), "episodes": counts},
        "encoder": {"dino_path": str(dino), "random_weights": dino.name == "dinov3-random"},
        "training": {"steps": evaluation.get("step"), "heldout": evaluation},
        "closed_loop": {
            "lda": {k: policy.get(k) for k in ("episodes", "successes", "success_rate")},
            "frozen": {k: frozen.get(k) for k in ("episodes", "successes", "success_rate")},
            "seeds": [e["seed"] for e in policy.get("per_episode", [])],
            "per_episode": {"lda": policy.get("per_episode"), "frozen": frozen.get("per_episode")},
        },
        "size": size,
        "timings_s": timings,
        "pngs": pngs,
    }
    rows = [
        ("episodes recorded (high / low / actionless)",
         f"{counts['high']} / {counts['low']} / {counts['actionless']}"),
        ("held-out policy action L1 (predict-the-mean)",
         f"{_fmt(pol.get('action_l1'))} ({_fmt(pol.get('baseline_mean_action_l1'))})"),
        ("held-out inverse-dynamics action L1", _fmt(inv.get("action_l1"))),
        ("held-out forward-dynamics latent MSE / cosine",
         f"{_fmt(fwd.get('latent_mse'))} / {_fmt(fwd.get('latent_cosine'))}"),
        ("closed-loop success, LDA policy + monitor", _rate(policy)),
        ("closed-loop success, frozen robot (same seeds)", _rate(frozen)),
        ("wall time per phase [s]", ", ".join(f"{k} {v:.0f}" for k, v in timings.items())),
    ]
    width = max(len(r[0]) for r in rows)
    table = "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)
    report["table"] = table
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    md = ["# LDA demo report", "", "| measure | value |", "|---|---|"]
    md += [f"| {name} | {value} |" for name, value in rows]
    if report["encoder"]["random_weights"]:
        md += ["", "The DINOv3 encoder has random weights (no pretrained weights can be downloaded on this "
               "machine): the figures show that the loop works, not what LDA reaches with real features."]
    md += [""] + [f"![{name}]({file})" for name, file in pngs.items()]
    (out / "report.md").write_text("\n".join(md) + "\n")
    return report


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _rate(result: dict[str, Any]) -> str:
    if not result:
        return "n/a"
    return f"{result['successes']}/{result['episodes']} ({100 * result['success_rate']:.0f} %)"
