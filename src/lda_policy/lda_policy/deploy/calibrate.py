"""Calibrate the safety monitor's surprise on training recordings: writes ``safety_calibration.json``.

    ros2 run lda_policy calibrate_safety --checkpoint CKPT --dino-path DINO \
        --robot-config config/robots/sim_panda.yaml --bag rec/ep0 --bag rec/ep1 ...
    # or: python -m lda_policy.deploy.calibrate ...

Each bag is replayed through the checkpoint's forward-dynamics objective with its recorded actions
(:mod:`lda_policy.deploy.replay`); the distance between predicted and real DINO latents of every
future frame is collected over all windows, and its mean and standard deviation per future frame are
stored next to the checkpoint (``<checkpoint>/safety_calibration.json`` unless ``--output``). Use
bags of the data the checkpoint was trained (or fine-tuned) on, and the monitor's settings
(``--num-steps``, ``--num-samples``, ``--seed`` must equal its ``num_inference_steps``,
``num_samples`` and ``seed``; they are stored and checked at start-up).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .replay import DynamicsReplay, ReplayError, calibration_distances, read_episode
from .robot import ConfigError, RobotInterface
from .runtime import ModelRuntime, RuntimeLoadError, set_torch_threads
from .safety import CALIBRATION_FILE, CalibrationError, SafetyCalibration


def calibrate(runtime: ModelRuntime, robot: RobotInterface, bags: list[str | Path], instruction: str = "",
              every: int = 2, num_samples: int = 1, seed: int = 0) -> SafetyCalibration:
    replays = []
    for bag in bags:
        episode = read_episode(bag, robot)
        text = instruction or episode.instruction
        if not text:
            raise ReplayError(f"bag {bag} has no instruction on {robot.config.instruction_topic}; pass --instruction")
        replays.append(DynamicsReplay(runtime, robot, episode, text, None, num_samples, seed))
    distances = calibration_distances(replays, every)
    return SafetyCalibration.from_distances(distances, runtime.config.time.future_offsets_s, runtime.num_steps,
                                            num_samples, seed, source=", ".join(str(b) for b in bags))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="calibrate_safety", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--dino-path", required=True)
    ap.add_argument("--robot-config", required=True)
    ap.add_argument("--bag", action="append", required=True, help="training recording (repeat for more)")
    ap.add_argument("--camera", default="")
    ap.add_argument("--instruction", default="", help="task text when a bag has none recorded")
    ap.add_argument("--language-encoder", default="minilm", choices=["minilm", "qwen3vl"])
    ap.add_argument("--language-encoder-path", default="")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--num-steps", type=int, default=0, help="Euler steps (0: the checkpoint's default)")
    ap.add_argument("--num-samples", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=2, help="predict from every n-th control tick")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--output", default="", help=f"output file (default: <checkpoint>/{CALIBRATION_FILE})")
    a = ap.parse_args(argv)
    try:
        set_torch_threads(a.threads)
        robot = RobotInterface(a.robot_config, a.camera)
        runtime = ModelRuntime(a.checkpoint, a.dino_path, a.language_encoder, a.language_encoder_path or None,
                               a.device, a.num_steps or None)
        cal = calibrate(runtime, robot, a.bag, a.instruction, a.every, a.num_samples, a.seed)
    except (RuntimeLoadError, ConfigError, ReplayError, CalibrationError) as err:
        print(f"calibrate_safety: error: {err}", file=sys.stderr)
        return 1
    out = cal.save(a.output or Path(a.checkpoint) / CALIBRATION_FILE)
    table = "\n".join(f"  +{o:.2f} s: distance mean {m:.4f}, std {s:.4f}"
                      for o, m, s in zip(cal.future_offsets_s, cal.mean, cal.std, strict=True))
    print(f"wrote {out} from {cal.num_windows} windows of {len(a.bag)} bag(s):\n{table}")
    print("the monitor's surprise is (distance - mean) / std per future frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
