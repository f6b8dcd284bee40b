#!/usr/bin/env python3
"""Which video codec should the recorder write? CPU, size and fidelity of LeRobot's codec settings.

    source scripts/env.sh
    python benchmarks/video_codec.py                      # -> benchmarks/results/video_codec.json
    python benchmarks/video_codec.py --smoke --out /tmp/video_codec.json   # seconds: small frames, 2 settings

The recorder encodes every camera while it records, on the robot's own computer, so the codec's CPU per
frame is most of the recorder's cost (docs/results/recorder-throughput.md). This benchmark encodes the
same 640x480 frames with each setting in ``--settings`` exactly as LeRobot's streaming encoder is told to
(``RGBEncoderConfig(...).get_codec_options(encoder_threads=1)``: GOP 2, yuv420p, one encoder thread per
camera, 10 fps), decodes them again and reports per frame: the encoder's CPU (all threads of this process,
``getrusage``), the compressed size, and the PSNR of the decoded RGB against the source (the yuv420p
chroma subsampling costs every setting the same).

Two sources of frames, because codecs behave differently on them:

* ``sim``: the robosuite Panda scene rendered at 640x480 from the agentview and wrist cameras while the
  scripted expert lifts the cube (large flat surfaces, little noise);
* ``camera``: the recorder benchmark's camera-like frames (gradients, sensor-like noise, a moving object),
  the same the throughput benchmark publishes.

A setting is ``codec:preset:crf``; an empty preset or crf means LeRobot's default for that codec.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recorder_throughput import _cpu_model, _frames  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_SETTINGS = [
    "libsvtav1::",  # LeRobot's default: SVT-AV1 preset 12, crf 30
    "h264::",  # LeRobot's h264: x264 medium, crf 30
    "h264:veryfast:30",
    "h264:veryfast:23",
    "h264:superfast:23",
    "h264:ultrafast:23",
]
# --smoke: the same steps on small frames; arguments given on the command line still win.
SMOKE = {"frames": 6, "width": 160, "height": 120, "settings": ["libsvtav1::", "h264:veryfast:23"]}


def sim_frames(n: int, width: int, height: int, seed: int = 3) -> list[np.ndarray]:
    """n frames per camera of the Panda lifting the cube, agentview and wrist camera interleaved in blocks."""
    from lda_sim.scripted_operator import ScriptedOperator
    from lda_sim.sim_core import SimRobot

    sim = SimRobot("panda_lift", image_size=32)  # its own camera is tiny; the big frames are rendered below
    obs = sim.reset(seed=seed)
    op = ScriptedOperator("panda_lift", "high", seed=seed)
    views: dict[str, list[np.ndarray]] = {"agentview": [], "robot0_eye_in_hand": []}
    while len(views["agentview"]) < n:
        for cam, frames in views.items():  # MuJoCo renders bottom row first
            frames.append(np.ascontiguousarray(sim._env.sim.render(camera_name=cam, width=width, height=height)[::-1]))
        targets, grippers = op.act(obs)
        obs = sim.step(targets, grippers)
    sim.close()
    return views["agentview"] + views["robot0_eye_in_hand"]


def parse_setting(text: str):
    from lerobot.configs import RGBEncoderConfig

    codec, preset, crf = (text.split(":") + ["", ""])[:3]
    kwargs = {"vcodec": codec}
    if preset:
        kwargs["preset"] = int(preset) if preset.isdigit() else preset
    if crf:
        kwargs["crf"] = int(crf)
    return RGBEncoderConfig(**kwargs)


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def encode_decode(frames: list[np.ndarray], cfg, fps: int = 10) -> dict:
    """Encode like LeRobot's streaming encoder (one thread), decode, compare."""
    import av

    buf = io.BytesIO()
    h, w = frames[0].shape[:2]
    cpu0, t0 = _cpu_s(), time.perf_counter()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream(cfg.vcodec, rate=fps, options=cfg.get_codec_options(encoder_threads=1, as_strings=True))
        stream.width, stream.height, stream.pix_fmt = w, h, cfg.pix_fmt
        for img in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode(None))
    cpu, wall = _cpu_s() - cpu0, time.perf_counter() - t0
    size = buf.tell()
    buf.seek(0)
    t0 = time.perf_counter()
    with av.open(buf) as inp:
        decoded = [f.to_ndarray(format="rgb24") for f in inp.decode(video=0)]
    decode = time.perf_counter() - t0
    if len(decoded) != len(frames):
        raise RuntimeError(f"{cfg.vcodec}: decoded {len(decoded)} of {len(frames)} frames")
    mse = np.mean([(a.astype(np.float32) - b.astype(np.float32)) ** 2 for a, b in zip(frames, decoded, strict=True)])
    n = len(frames)
    return {"cpu_ms_per_frame": round(1000 * cpu / n, 2), "wall_ms_per_frame": round(1000 * wall / n, 2),
            "kib_per_frame": round(size / 1024 / n, 2), "decode_ms_per_frame": round(1000 * decode / n, 2),
            "psnr_db": round(float(10 * np.log10(255**2 / max(mse, 1e-9))), 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS,
                   help="codec:preset:crf (empty = LeRobot's default)")
    p.add_argument("--frames", type=int, default=60, help="frames per camera and source")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--out", default=str(RESULTS / "video_codec.json"))
    p.add_argument("--smoke", action="store_true", help="seconds-long check; needs --out outside benchmarks/results")
    args = p.parse_args(argv)
    if args.smoke:
        p.set_defaults(**SMOKE)
        args = p.parse_args(argv)
        if Path(args.out).resolve().is_relative_to(RESULTS):
            p.error("--smoke must not overwrite the committed figures: pass --out outside benchmarks/results")
    configs = {s: parse_setting(s) for s in args.settings}  # an unknown codec or preset fails here, before rendering
    print(f"[bench] rendering {args.frames} frames x 2 cameras at {args.width}x{args.height} ...", flush=True)
    sources = {"sim": sim_frames(args.frames, args.width, args.height),
               "camera": _frames(args.width, args.height, 2 * args.frames, seed=0)}
    rows = []
    for setting, cfg in configs.items():
        for source, frames in sources.items():
            row = {"setting": setting, "codec": cfg.vcodec, "preset": cfg.preset, "crf": cfg.crf, "source": source,
                   **encode_decode(frames, cfg)}
            rows.append(row)
            print(f"[bench] {setting:<20} {source:<7} {row['cpu_ms_per_frame']:>7.2f} ms "
                  f"{row['kib_per_frame']:>7.2f} KiB {row['psnr_db']:>6.2f} dB", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    result = {
        "benchmark": "video_codec",
        "command": "python benchmarks/video_codec.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"), "commit": commit.stdout.strip(),
        "machine": {"cpus": os.cpu_count(), "cpu": _cpu_model(), "python": platform.python_version(),
                    "load_before": os.getloadavg()[0]},
        "setup": {"frames_per_source": 2 * args.frames, "size": f"{args.width}x{args.height}", "fps": 10,
                  "encoder_threads": 1, "gop": 2, "pix_fmt": "yuv420p"},
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'setting':<20} {'source':<7} {'CPU ms/frame':>12} {'KiB/frame':>10} {'PSNR dB':>8} {'decode ms':>9}")
    for r in rows:
        print(f"{r['setting']:<20} {r['source']:<7} {r['cpu_ms_per_frame']:>12.2f} {r['kib_per_frame']:>10.2f} "
              f"{r['psnr_db']:>8.2f} {r['decode_ms_per_frame']:>9.2f}")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
