"""Converts the authors' checkpoint (``pytorch_model.pt`` + ``config.yaml``) into our upstream checkpoint.

Every key is mapped (``keymap.py``); missing and unexpected keys and shape mismatches are refused by
name; tensors are streamed from the memory-mapped source into the safetensors output one at a time, so
a 14 GB checkpoint converts without a second copy in memory.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lda_common.config import ConfigError, load_yaml
from safetensors import safe_open

from ..checkpoint import CheckpointError
from .checkpoint import NORMALIZATION_FILE, VLM_FILE, WEIGHTS_FILE, check_state, write_config
from .checkpoint import write_safetensors_streaming as write_streaming
from .config import DinoSpec, UpstreamConfig, from_authors_config
from .keymap import KeyMapError, to_ours, to_theirs

WEIGHT_NAMES = ("pytorch_model.pt", "state_dict.safetensors", "model.safetensors")
CONFIG_NAMES = ("config.yaml", "config.json")
STATISTICS_NAMES = ("dataset_statistics.json", "norm_stats.json", "statistics.json")
#: DINOv3 ViT sizes by the authors' ``vision_encoder_size`` letter (hidden, mlp, layers, heads).
DINO_SIZES = {"s": (384, 1536, 12, 6), "b": (768, 3072, 12, 12), "l": (1024, 4096, 24, 16)}


class LazyState:
    """The authors' state dict without reading it: shapes/dtypes first, each tensor only when asked."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.suffix == ".safetensors":
            self._file = safe_open(str(path), framework="pt")
            self._tensors = None
            self.keys = list(self._file.keys())
        else:  # a torch.save file: tensor data stays on disk (mmap); weights_only refuses code in the pickle
            try:
                loaded = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError) as err:
                raise CheckpointError(f"{path} cannot be read as a plain tensor state dict (torch.load with "
                                      f"weights_only=True refused it): {str(err).splitlines()[0]}") from None
            if isinstance(loaded, dict) and set(loaded) in ({"state_dict"}, {"model"}):
                loaded = next(iter(loaded.values()))
            if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
                raise CheckpointError(f"{path} is not a flat state dict (name -> tensor)")
            self._tensors = loaded
            self.keys = list(loaded)

    def meta(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        if self._tensors is not None:
            t = self._tensors[key]
            return tuple(t.shape), t.dtype
        sl = self._file.get_slice(key)
        dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                  "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}
        return tuple(sl.get_shape()), dtypes[sl.get_dtype()]

    def tensor(self, key: str) -> torch.Tensor:
        return self._tensors[key] if self._tensors is not None else self._file.get_tensor(key)


@dataclass
class ImportSummary:
    """What an import wrote: parameters per part, dtypes, files."""

    out: Path
    parameters: dict[str, int] = field(default_factory=dict)
    dtypes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> Iterator[str]:
        yield f"wrote {self.out}"
        for part, n in sorted(self.parameters.items()):
            yield f"  {part:<28} {n:>15,d} parameters"
        yield f"  {'total':<28} {sum(self.parameters.values()):>15,d} parameters"
        yield "  dtypes (source tensors): " + ", ".join(f"{k} x{v}" for k, v in sorted(self.dtypes.items()))
        yield from (f"  note: {n}" for n in self.notes)


def _find(directory: Path, names: tuple[str, ...], what: str, parents: int = 0) -> Path:
    for base in [directory, *list(directory.parents)[:parents]]:
        for name in names:
            if (base / name).is_file():
                return base / name
    raise CheckpointError(f"{directory}: no {what} found (looked for {list(names)})")


def read_authors_config(path: Path, vlm_config: Path | None = None,
                        history_actions: int | None = None) -> UpstreamConfig:
    """Our :class:`UpstreamConfig` from the authors' ``config.yaml`` or a golden fixture's ``config.json``."""
    raw = json.loads(path.read_text()) if path.suffix == ".json" else load_yaml(path, "the authors' config",
                                                                                CheckpointError)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a mapping at the top level")
    try:
        if "full_config" in raw:  # a golden fixture: the tiny sub-model configs are recorded beside it
            return _fixture_config(raw, history_actions)
        vlm = json.loads(vlm_config.read_text()) if vlm_config else None
        config = from_authors_config(raw, dino=_dino_for(raw), vlm=vlm, history_actions=history_actions)
        return config if vlm else dataclasses.replace(config, vlm=_default_vlm(raw))
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from None


def _fixture_config(raw: dict[str, Any], history_actions: int | None) -> UpstreamConfig:
    sizes = {k[len("DiTConfig["):-1]: (v["num_attention_heads"], v["attention_head_dim"])
             for k, v in raw.items() if k.startswith("DiTConfig[")}
    dino_fields = {f.name for f in dataclasses.fields(DinoSpec)}
    dino = DinoSpec(**{k: v for k, v in raw["dinov3_config"].items() if k in dino_fields})
    tokens = raw.get("qwen3vl_token_ids", {})
    vlm = {"text_config": raw["qwen3vl_text_config"], "vision_config": raw["qwen3vl_vision_config"],
           "tie_word_embeddings": raw["qwen3vl_text_config"].get("tie_word_embeddings", True),
           **{k: v for k, v in tokens.items() if k.endswith("token_id")}}
    history = raw.get("derived", {}).get("history_action_tokens", 5) if history_actions is None else history_actions
    return from_authors_config(raw["full_config"], dino=dino, vlm=vlm, history_actions=history, dit_sizes=sizes)


def _dino_for(raw: dict[str, Any]) -> DinoSpec:
    size = str(raw.get("framework", {}).get("action_model", {}).get("vision_encoder_size", "s"))
    if size not in DINO_SIZES:
        raise CheckpointError(f"unknown vision_encoder_size {size!r}; known: {sorted(DINO_SIZES)}")
    hidden, mlp, layers, heads = DINO_SIZES[size]
    return DinoSpec(hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=heads)


def _default_vlm(raw: dict[str, Any]) -> dict[str, Any]:
    from .vlm import QWEN3VL_4B_INSTRUCT

    base = str(raw.get("framework", {}).get("qwenvl", {}).get("base_vlm", ""))
    if "Qwen3-VL-4B" not in base:
        raise CheckpointError(f"framework.qwenvl.base_vlm is {base!r}; only Qwen3-VL-4B's config is built in: "
                              "pass --vlm-config <its config.json>")
    return QWEN3VL_4B_INSTRUCT


def _split(state: LazyState) -> tuple[dict[str, str], dict[str, str]]:
    """(our head key -> their key, VLM key -> their key); unknown keys are refused, all named."""
    head, vlm, unknown = {}, {}, []
    for key in state.keys:
        try:
            part, ours = to_ours(key)
        except KeyMapError:
            unknown.append(key)
            continue
        (head if part == "head" else vlm)[ours] = key
    if unknown:
        raise CheckpointError(f"{state.path}: {len(unknown)} unexpected key(s) that are not the authors' "
                              f"Qwen_MMDiT layout: {unknown[:6]}")
    return head, vlm


def _expected_head(config: UpstreamConfig) -> dict[str, torch.Size]:
    from .head import UpstreamLDA

    with torch.device("meta"):
        return {k: v.shape for k, v in UpstreamLDA(config).state_dict().items()}


def import_checkpoint(source: str | Path, out: str | Path, *, dtype: torch.dtype | None = None,
                      vlm_config: Path | None = None, history_actions: int | None = None,
                      head_only: bool = False) -> ImportSummary:
    """Converts the authors' checkpoint directory (or weights file) ``source`` into ``out``."""
    source = Path(source)
    directory = source if source.is_dir() else source.parent
    weights = _find(directory, WEIGHT_NAMES, "weights") if source.is_dir() else source
    config = read_authors_config(_find(directory, CONFIG_NAMES, "config", parents=2), vlm_config, history_actions)
    state = LazyState(weights)
    head_keys, vlm_keys = _split(state)
    found = {theirs: torch.Size(state.meta(theirs)[0]) for theirs in head_keys.values()}
    expected = {to_theirs("head", k): v for k, v in _expected_head(config).items()}
    check_state(found, expected, f"{weights} (action_model.*)")  # named as in their file
    if not vlm_keys and not head_only:
        raise CheckpointError(f"{weights} has no qwen_vl_interface.* (VLM) keys; pass --head-only to import "
                              "only the action model")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = ImportSummary(out, dtypes=dict(Counter(str(state.meta(k)[1]).replace("torch.", "")
                                                     for k in state.keys)))
    entries = [(ours, *state.meta(theirs)) for ours, theirs in head_keys.items()]
    write_streaming(out / WEIGHTS_FILE, entries, lambda k: state.tensor(head_keys[k]),
                    {"format": "lda-upstream-checkpoint"}, dtype)
    for ours, shape, _ in entries:
        part = ours.split(".", 1)[0]
        part = part if part in ("dit", "state_encoder", "action_encoder", "action_decoder", "vision_encoder") \
            else "head tokens/merger/projector"
        summary.parameters[part] = summary.parameters.get(part, 0) + torch.Size(shape).numel()
    if vlm_keys and not head_only:
        config = _write_vlm(state, vlm_keys, config, out, dtype, summary)
    elif (out / VLM_FILE).exists():
        (out / VLM_FILE).unlink()
    write_config(out, config, {"weights": str(weights), "keys": len(state.keys), "head_only": head_only})
    _write_statistics(directory, out, summary)
    return summary


def _write_vlm(state: LazyState, vlm_keys: dict[str, str], config: UpstreamConfig, out: Path,
               dtype: torch.dtype | None, summary: ImportSummary) -> UpstreamConfig:
    from .vlm import expected_vlm_shapes

    spec = dict(config.vlm or {})
    found = {theirs: torch.Size(state.meta(theirs)[0]) for theirs in vlm_keys.values()}
    expected = {to_theirs("vlm", k): v for k, v in expected_vlm_shapes(spec).items()}
    check_state(found, expected, f"{state.path} (qwen_vl_interface.*)")
    keep = dict(vlm_keys)
    embed = "model.language_model.embed_tokens.weight"
    if spec.get("tie_word_embeddings", True) and "lm_head.weight" in keep:
        if torch.equal(state.tensor(keep["lm_head.weight"]), state.tensor(keep[embed])):
            del keep["lm_head.weight"]  # tied: transformers re-ties it to embed_tokens on load
            summary.notes.append("lm_head.weight is tied to embed_tokens: stored once")
        else:
            spec["tie_word_embeddings"] = False
            spec.setdefault("text_config", {})["tie_word_embeddings"] = False
            summary.notes.append("lm_head.weight differs from embed_tokens: stored untied")
    entries = [(ours, *state.meta(theirs)) for ours, theirs in keep.items()]
    write_streaming(out / VLM_FILE, entries, lambda k: state.tensor(keep[k]), {"format": "pt"}, dtype)
    for ours, shape, _ in entries:
        part = "vlm.visual" if ours.startswith("model.visual.") else "vlm.language_model"
        summary.parameters[part] = summary.parameters.get(part, 0) + torch.Size(shape).numel()
    return dataclasses.replace(config, vlm=spec)


def _write_statistics(directory: Path, out: Path, summary: ImportSummary) -> None:
    """Copies the normalisation statistics the release carries (if any) into normalization.json."""
    found = next((base / name for base in [directory, *list(directory.parents)[:2]] for name in STATISTICS_NAMES
                  if (base / name).is_file()), None)
    statistics = json.loads(found.read_text()) if found else None
    body = {"format": "lda-upstream-normalization", "source": str(found) if found else None, "statistics": statistics}
    (out / NORMALIZATION_FILE).write_text(json.dumps(body, indent=1) + "\n")
    if found is None:
        summary.notes.append("no normalisation statistics next to the checkpoint (normalization.json: null); "
                             "actions stay normalised to [-1, 1] until statistics are supplied")
