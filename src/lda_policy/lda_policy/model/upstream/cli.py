"""``lda-import-upstream SOURCE OUT [--verify-golden DIR]``: import the authors' LDA-1B checkpoint.

SOURCE is the authors' checkpoint directory (``pytorch_model.pt`` and ``config.yaml``, the latter also
found one or two levels up, as their training runs lay it out) or a golden fixture directory
(``state_dict.safetensors`` + ``config.json``). OUT receives our upstream checkpoint format.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..checkpoint import CheckpointError

DTYPES = {"keep": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lda-import-upstream", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="the authors' checkpoint directory (or its pytorch_model.pt)")
    p.add_argument("out", type=Path, help="output directory (our upstream checkpoint format)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="keep",
                   help="store floating tensors in this dtype (default: as in the source)")
    p.add_argument("--vlm-config", type=Path, help="config.json of the VLM, when it is not Qwen3-VL-4B-Instruct")
    p.add_argument("--history-actions", type=int, default=None,
                   help="history action tokens of the data config the model was trained with (default 5)")
    p.add_argument("--head-only", action="store_true", help="import only the action model (no VLM keys)")
    p.add_argument("--verify-golden", type=Path, metavar="DIR",
                   help="run the imported model on a golden fixture directory and compare every output")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed abs difference (default 1e-4)")
    p.add_argument("--float64", action="store_true", help="with --verify-golden: also the fixture's float64 replay")
    return p


def verify(out: Path, fixture: Path, tolerance: float, float64: bool = False) -> bool:
    """Prints the largest absolute difference per golden output; True when all are within ``tolerance``."""
    from .checkpoint import VLM_FILE, load_upstream
    from .golden import verify_golden
    from .vlm import load_vlm

    model = load_upstream(out, dtype=torch.float32)
    vlm = load_vlm(out, model.config.vlm) if (out / VLM_FILE).is_file() and model.config.vlm else None
    results = verify_golden(model, fixture, vlm, progress=lambda m: print(f"verify: {m}", flush=True),
                            float64=float64)
    width = max(len(r.name) for r in results)
    for r in results:
        print(f"  {r.name:<{width}}  max abs diff {r.max_abs_diff:.3e}  {'ok' if r.ok(tolerance) else 'FAIL'}")
    bad = [r.name for r in results if not r.ok(tolerance)]
    print(f"verify: {len(results) - len(bad)}/{len(results)} outputs within {tolerance:g}"
          + (f"; failed: {bad}" if bad else ""))
    return not bad


def main(argv: list[str] | None = None) -> int:
    from .importer import import_checkpoint

    args = _parser().parse_args(argv)
    try:
        summary = import_checkpoint(args.source, args.out, dtype=DTYPES[args.dtype], vlm_config=args.vlm_config,
                                    history_actions=args.history_actions, head_only=args.head_only)
    except (CheckpointError, OSError) as err:
        print(f"lda-import-upstream: error: {err}", file=sys.stderr)
        return 2
    for line in summary.lines():
        print(line)
    if args.verify_golden is not None:
        try:
            return 0 if verify(args.out, args.verify_golden, args.tolerance, args.float64) else 1
        except (CheckpointError, OSError, KeyError) as err:
            print(f"lda-import-upstream: verify error: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
