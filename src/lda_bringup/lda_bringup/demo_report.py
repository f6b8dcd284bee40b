"""The demo's report: what was recorded, how training went, how the closed loop did, as JSON, Markdown, PNG."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def latents_png(checkpoint: Path, dino: Path, bag: Path, out_png: Path, rows: int = 3) -> Path | None:
    """Observed vs predicted DINO latents (PCA colours) and the error map, a few moments of one episode."""
    import numpy as np
    from lda_policy.deploy.replay import DynamicsReplay, LatentPCA, heatmap, panel, read_episode
    from lda_policy.deploy.robot import RobotInterface
    from lda_policy.deploy.runtime import ModelRuntime
    from PIL import Image

    robot = RobotInterface(Path("config/robots/sim_panda.yaml"))
    runtime = ModelRuntime(checkpoint, dino)
    replay = DynamicsReplay(runtime, robot, read_episode(bag, robot), instruction="lift the red cube")
    # Each prediction is shown at its furthest future frame that was really recorded.
    shown = []
    for p in replay.predictions(every=1):
        seen = [f for f, o in enumerate(p.observed) if o is not None]
        if seen:
            shown.append((p, seen[-1]))
    if not shown:
        return None  # no window with a gap-free action chunk and a recorded future frame
    picks = [shown[round(i * (len(shown) - 1) / max(rows - 1, 1))] for i in range(rows)]
    pca = LatentPCA(np.stack([replay.latent(p.position).cpu().numpy() for p, _ in shown]))
    vmax = max(float(np.max(p.patch_errors[f])) for p, f in picks)
    tiles = [panel(replay.episode.frames[p.targets[f]].image, pca.rgb(p.observed[f]), pca.rgb(p.predicted[f]),
                   heatmap(p.patch_errors[f], vmax)) for p, f in picks]
    Image.fromarray(np.concatenate(tiles, axis=0)).save(out_png)
    return out_png


def write_report(out: Path, dataset: Path, train_dir: Path, checkpoint: Path, dino: Path,
                 size: dict[str, Any], timings: dict[str, float]) -> dict[str, Any]:
    from lda_common.quality import QUALITIES
    from lda_common.schema import read_episode_labels

    labels = read_episode_labels(dataset)
    counts = {q: sum(1 for e in labels if e.get("quality") == q) for q in QUALITIES}
    evaluation = _read_json(train_dir / "eval" / "latest.json")
    policy = _read_json(out / "eval_policy.json")
    frozen = _read_json(out / "eval_frozen.json")

    pngs = {}
    curves = train_dir / "eval" / "curves.png"
    if curves.is_file():
        shutil.copy(curves, out / "training_curves.png")
        pngs["training_curves"] = "training_curves.png"
    # The picture needs recorded actions: the first episode with actions whose bag has a usable window.
    with_actions = [e for e in labels if e.get("quality") in ("high", "low") and e.get("bag")]
    for episode in sorted(with_actions, key=lambda e: e["quality"] != "high"):
        bag = (dataset / episode["bag"]).resolve()
        if bag.is_dir() and latents_png(checkpoint, dino, bag, out / "latents_observed_vs_predicted.png"):
            pngs["latents"] = "latents_observed_vs_predicted.png"
            break

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
