"""On-disk cache of frozen-encoder outputs: DINOv3 latents per frame, language tokens per task string.

Layout (one directory per dataset and content fingerprint)::

    <cache root>/<dataset name>-<hash of its path>/<fingerprint[:24]>/
        manifest.json                  format, fingerprint and its parts, shard list with sizes + sha256
        latents-00000.safetensors      "latents": (frames, gh, gw, 384) rows [start, end) of the dataset
                                       [+ "vlm": (frames, L, D), "vlm_mask": (frames, L) with Qwen3-VL
                                       on the image: the VLM condition of each frame + its instruction;
                                       with encoders.vlm_finetune_layers = N > 0, "vlm" holds the hidden
                                       states entering the VLM's last N layers instead of its outputs,
                                       + "vlm_positions": (frames, 3, L) int32, their multimodal RoPE ids]
        latents-00001.safetensors      ...
        language.safetensors           "tokens": (tasks, L, D) float32, "mask": (tasks, L) (text-only
                                       encoders; empty when the condition is per frame)

The fingerprint hashes (a) the dataset's contents: every file under ``meta/`` and ``data/`` in full
(except the recorder's quality labels, ``meta/lda_episodes.json``, which are read afresh every run), and
the chosen camera's video files (size + SHA-256 of the whole file up to 64 MiB, of 17 spread 1 MiB
blocks beyond); (b) the DINO checkpoint directory (config, processor, weights); (c) the language encoder
directory; (d) the cache settings (camera, grid, dtype, video backend, format version; for Qwen3-VL also
whether it sees the image, the image size and the prompt template's hash, and the number of fine-tuned
VLM layers when not 0). Any change gives a new fingerprint, so a changed dataset, encoder or prompt
never meets an old cache. A cache is written into a temporary sibling directory and renamed into place
only when complete, so a killed build leaves nothing that looks valid. Loading re-checks every shard's
size and SHA-256 and every shape; a corrupt or partial cache raises :class:`CacheCorrupt` and is rebuilt
(or refused with ``cache.rebuild: never``), never used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .data import EPISODES_FILE, BatchPlan, LanguageTable, SourceDataset

DEFAULT_VLM_PROMPT = "{instruction}"  # = lda_policy.model.config.DEFAULT_VLM_PROMPT (imported lazily there)

log = logging.getLogger("lda_train.cache")

FORMAT = "lda-latent-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_FULL_HASH_LIMIT = 64 << 20
_BLOCK = 1 << 20
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class CacheError(RuntimeError):
    """The latent cache cannot be used; ``reason`` is ``missing``, ``stale`` or ``corrupt``."""

    reason = "error"


class CacheMissing(CacheError):
    reason = "missing"


class CacheStale(CacheError):
    reason = "stale"


class CacheCorrupt(CacheError):
    reason = "corrupt"


# ---------------------------------------------------------------------------------------------- hashing


def file_digest(path: Path, full: bool = False) -> str:
    """SHA-256 of a file: of all bytes when ``full`` or the file is <= 64 MiB, else of its size and
    17 evenly spread 1 MiB blocks (first and last included): cheap for multi-GB videos, and any
    re-encode changes it."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        if full or size <= _FULL_HASH_LIMIT:
            for block in iter(lambda: f.read(8 << 20), b""):
                h.update(block)
        else:
            for k in range(17):
                f.seek(min(size - _BLOCK, (size - _BLOCK) * k // 16))
                h.update(f.read(_BLOCK))
    return h.hexdigest()


def tree_digest(root: Path, subdirs: Sequence[str], full: bool) -> dict[str, str]:
    """{relative path: digest} of every file under ``root/<subdir>`` (hidden entries skipped)."""
    out = {}
    for sub in subdirs:
        base = root / sub
        if not base.exists():
            continue
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for p in files:
            rel = p.relative_to(root).as_posix()
            if any(part.startswith(".") for part in Path(rel).parts):
                continue
            out[rel] = file_digest(p, full=full)
    return out


def _digest_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


#: Sidecar files that do not influence latents or language (quality labels are re-read at every start).
FINGERPRINT_EXCLUDE = (EPISODES_FILE,)


def dataset_fingerprint(source: SourceDataset) -> str:
    """Content hash of what the cache depends on in one dataset (metadata, frame data, the camera's video)."""
    root = source.root
    parts = tree_digest(root, ["meta", "data"], full=True)
    for rel in FINGERPRINT_EXCLUDE:
        parts.pop(rel, None)
    if source.is_video:
        parts.update(tree_digest(root, [f"videos/{source.image_key}"], full=False))
    return _digest_json(parts)


def directory_fingerprint(path: str | Path | None) -> str:
    """Content hash of an encoder checkpoint directory (None -> "none")."""
    if path is None:
        return "none"
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"encoder directory {path} does not exist")
    return _digest_json(tree_digest(path, ["."], full=False) if path.is_dir() else {path.name: file_digest(path)})


@dataclass(frozen=True)
class CacheSpec:
    """Everything one dataset's cache depends on."""

    cache_root: Path
    dino_path: str
    language: str  # "minilm" | "qwen3vl"
    language_path: str | None
    grid: tuple[int, int]
    dtype: str = "float16"
    shard_frames: int = 4096
    encoder_batch: int = 32  # frames per DINO forward while building
    vlm_image: bool = False  # qwen3vl: condition on the frame + instruction, cached per frame
    vlm_image_size: int = 224
    vlm_prompt: str = DEFAULT_VLM_PROMPT
    vlm_batch: int = 8  # frames per VLM forward while building
    vlm_finetune_layers: int = 0  # > 0: cache the hidden states entering the VLM's last N layers

    @property
    def per_frame_vlm(self) -> bool:
        return self.language == "qwen3vl" and self.vlm_image

    def settings(self, source: SourceDataset) -> dict[str, Any]:
        from lerobot.datasets.video_utils import get_safe_default_video_backend

        out = {"format_version": FORMAT_VERSION, "image_key": source.image_key, "grid": list(self.grid),
               "dtype": self.dtype, "video_backend": get_safe_default_video_backend() if source.is_video else None,
               "language": self.language}
        if self.language == "qwen3vl":  # minilm settings (and so its caches' fingerprints) stay as they were
            out["vlm"] = {"image": self.vlm_image, "image_size": self.vlm_image_size if self.vlm_image else 0,
                          "prompt_sha256": hashlib.sha256(self.vlm_prompt.encode()).hexdigest()}
            if self.vlm_finetune_layers:  # other tensors than a frozen VLM's (whose fingerprints stay as they were)
                out["vlm"]["finetune_layers"] = self.vlm_finetune_layers
        return out

    def language_dir(self) -> str | None:
        if self.language_path is not None:
            return self.language_path
        if self.language == "minilm":
            from lda_policy.model.encoders import minilm_path

            return str(minilm_path())
        return None

    def fingerprint(self, source: SourceDataset) -> tuple[str, dict[str, str]]:
        parts = {
            "dataset": dataset_fingerprint(source),
            "dino": directory_fingerprint(self.dino_path),
            "language": directory_fingerprint(self.language_dir()),
            "settings": _digest_json(self.settings(source)),
        }
        return _digest_json(parts), parts

    def dataset_dir(self, source: SourceDataset) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", source.name)[:48] or "dataset"
        return self.cache_root / f"{safe}-{hashlib.sha256(str(source.root).encode()).hexdigest()[:8]}"


def cache_spec(cfg: Any, grid: tuple[int, int]) -> CacheSpec:
    """The :class:`CacheSpec` of a training config (``TrainingRunConfig``) for a model's latent grid."""
    e, c = cfg.encoders, cfg.cache
    return CacheSpec(cache_root=Path(c.dir).expanduser() if c.dir else default_cache_root(),
                     dino_path=str(e.dino_path), language=e.language, language_path=e.language_path,
                     grid=tuple(grid), dtype=c.dtype, shard_frames=c.shard_frames, encoder_batch=e.batch_size,
                     vlm_image=e.vlm_image, vlm_image_size=e.vlm_image_size, vlm_prompt=e.vlm_prompt,
                     vlm_batch=e.vlm_batch_size, vlm_finetune_layers=e.vlm_finetune_layers)


def language_encoder(cfg: Any, device: torch.device | str) -> Any:
    """The language encoder of a training config's ``encoders`` section (Qwen3-VL with its image settings)."""
    from lda_policy.model import load_language_encoder

    e = cfg.encoders
    return load_language_encoder(e.language, e.language_path, device=device, image_size=e.vlm_image_size,
                                 prompt=e.vlm_prompt, use_image=e.per_frame_vlm, finetune_layers=e.vlm_finetune_layers)


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lda_train" / "latents"


# ---------------------------------------------------------------------------------------------- the cache


class LatentCache:
    """A verified cache in memory: ``latents`` (frames, gh, gw, C) and a :class:`LanguageTable`."""

    def __init__(self, directory: Path, manifest: dict[str, Any], latents: torch.Tensor,
                 language: LanguageTable, vlm: tuple[torch.Tensor, ...] | None = None) -> None:
        self.directory = directory
        self.manifest = manifest
        self.latents = latents
        self.language = language
        #: per-frame VLM condition (tokens (frames, L, D), mask (frames, L), real tokens first) or None;
        #: with fine-tuned VLM layers the hidden states entering them + their RoPE ids (frames, 3, L) third
        self.vlm = vlm

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @classmethod
    def load(cls, directory: Path, fingerprint: str | None = None, num_frames: int | None = None) -> LatentCache:
        """Reads and verifies a cache directory; raises CacheMissing / CacheStale / CacheCorrupt."""
        directory = Path(directory)
        path = directory / MANIFEST
        if not path.is_file():
            if directory.exists():
                raise CacheCorrupt(f"{directory}: no {MANIFEST} (partial cache)")
            raise CacheMissing(f"{directory} does not exist")
        try:
            manifest = json.loads(path.read_text())
            if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
                raise CacheCorrupt(f"{path}: not a version-{FORMAT_VERSION} {FORMAT} manifest")
            shards = manifest["shards"]
            n, grid, dim = int(manifest["num_frames"]), tuple(manifest["grid"]), int(manifest["dim"])
            dtype = _DTYPES[manifest["dtype"]]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
            raise CacheCorrupt(f"{path}: unreadable manifest: {err}") from None
        if fingerprint is not None and manifest.get("fingerprint") != fingerprint:
            raise CacheStale(f"{directory}: fingerprint {manifest.get('fingerprint', '')[:12]} does not match the "
                             f"dataset and encoders ({fingerprint[:12]})")
        if num_frames is not None and n != num_frames:
            raise CacheStale(f"{directory}: caches {n} frames, the dataset has {num_frames}")
        latents = torch.empty((n, *grid, dim), dtype=dtype)
        vlm_entry = manifest.get("vlm")
        vlm = None
        if vlm_entry is not None:
            try:
                vlm_len, vlm_dim = int(vlm_entry["length"]), int(vlm_entry["dim"])
                tail = int(vlm_entry.get("finetune_layers", 0))
            except (KeyError, TypeError, ValueError) as err:
                raise CacheCorrupt(f"{path}: unreadable vlm entry: {err}") from None
            vlm = (torch.zeros((n, vlm_len, vlm_dim), dtype=dtype), torch.zeros((n, vlm_len), dtype=torch.bool))
            if tail:
                vlm += (torch.zeros((n, 3, vlm_len), dtype=torch.int32),)
        expected_start = 0
        for shard in shards:
            tensors = _read_verified(directory, shard)
            x = tensors.get("latents")
            start, end = int(shard["start"]), int(shard["end"])
            if x is None or start != expected_start or tuple(x.shape) != (end - start, *grid, dim) or x.dtype != dtype:
                raise CacheCorrupt(f"{directory / shard['file']}: holds {None if x is None else tuple(x.shape)} "
                                   f"{None if x is None else x.dtype}, the manifest says rows [{start}, {end}) of "
                                   f"{(*grid, dim)} {dtype}")
            latents[start:end] = x
            if vlm is not None:
                tok, mask = tensors.get("vlm"), tensors.get("vlm_mask")
                bad = tok is None or mask is None or tok.dim() != 3 or tuple(mask.shape) != tuple(tok.shape[:2])
                if bad or tok.shape[0] != end - start or tok.shape[1] > vlm_len or tok.shape[2] != vlm_dim:
                    raise CacheCorrupt(f"{directory / shard['file']}: VLM tensors do not hold rows [{start}, {end}) "
                                       f"of at most {vlm_len} x {vlm_dim} tokens")
                vlm[0][start:end, : tok.shape[1]] = tok.to(dtype)
                vlm[1][start:end, : tok.shape[1]] = mask.bool()
                if len(vlm) == 3:
                    pos = tensors.get("vlm_positions")
                    if pos is None or tuple(pos.shape) != (end - start, 3, tok.shape[1]):
                        raise CacheCorrupt(f"{directory / shard['file']}: no VLM RoPE ids (vlm_positions) of "
                                           f"shape ({end - start}, 3, {tok.shape[1]}) for the fine-tuned VLM layers")
                    vlm[2][start:end, :, : tok.shape[1]] = pos.int()
            expected_start = end
        if expected_start != n:
            raise CacheCorrupt(f"{directory}: shards cover {expected_start} of {n} frames (partial cache)")
        lang_entry = manifest.get("language")
        if not isinstance(lang_entry, dict):
            raise CacheCorrupt(f"{path}: no language entry")
        tensors = _read_verified(directory, lang_entry)
        tasks = lang_entry.get("tasks", [])
        tok, mask = tensors.get("tokens"), tensors.get("mask")
        if tok is None or mask is None or tok.shape[0] != len(tasks) or tuple(mask.shape) != tuple(tok.shape[:2]):
            raise CacheCorrupt(f"{directory / lang_entry['file']}: language tensors do not match {len(tasks)} tasks")
        table = LanguageTable({t: (tok[i].float(), mask[i].bool()) for i, t in enumerate(tasks)}, int(tok.shape[-1]))
        return cls(directory, manifest, latents, table, vlm)


def _read_verified(directory: Path, entry: dict[str, Any]) -> dict[str, torch.Tensor]:
    path = directory / str(entry.get("file", ""))
    if not path.is_file():
        raise CacheCorrupt(f"{path}: missing (partial cache)")
    data = path.read_bytes()
    if len(data) != int(entry.get("bytes", -1)):
        raise CacheCorrupt(f"{path}: {len(data)} bytes, the manifest says {entry.get('bytes')} (truncated or replaced)")
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise CacheCorrupt(f"{path}: SHA-256 does not match the manifest (corrupted)")
    try:
        return st_load(data)
    except Exception as err:  # safetensors raises its own error type for malformed headers
        raise CacheCorrupt(f"{path}: not a valid safetensors file: {err}") from None


def _write(path: Path, data: bytes) -> dict[str, Any]:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"file": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# ---------------------------------------------------------------------------------------------- building


def decode_frames(source: SourceDataset, rows: np.ndarray, decoder_cache: Any = None,
                  key: str | None = None) -> torch.Tensor:
    """Camera frames (n, 3, H, W) float in [0, 1] of dataset ``rows``, decoded the way lerobot does;
    ``key``: another camera feature than the dataset's ``image_key``."""
    rows = np.asarray(rows, dtype=np.int64)
    key = key or source.image_key
    meta = source.lerobot.meta
    if key not in meta.video_keys:
        items = source.lerobot.hf_dataset[rows.tolist()][key]
        return torch.stack([torch.as_tensor(x) for x in items]).float()
    from lerobot.datasets.video_utils import (
        decode_video_frames,
        decode_video_frames_torchcodec,
        get_safe_default_video_backend,
    )

    out = []
    eps = source.episode_index[rows]
    for ep in np.unique(eps):
        sel = np.flatnonzero(eps == ep)
        row_meta = meta.episodes[int(ep)]
        shift = float(row_meta[f"videos/{key}/from_timestamp"])
        ts = [shift + float(t) for t in source.timestamp[rows[sel]]]
        path = source.root / meta.get_video_file_path(int(ep), key)
        backend = get_safe_default_video_backend()
        if backend == "torchcodec" and decoder_cache is not None:
            frames = decode_video_frames_torchcodec(path, ts, source.lerobot.tolerance_s, decoder_cache=decoder_cache)
        else:
            frames = decode_video_frames(path, ts, source.lerobot.tolerance_s, backend)
        out.append((sel, frames))
    result = torch.empty((len(rows), *out[0][1].shape[1:]), dtype=torch.float32)
    for sel, frames in out:
        result[torch.from_numpy(sel)] = frames.float()
    return result


def build_cache(source: SourceDataset, spec: CacheSpec, dino: Any, language_encoder: Any, fingerprint: str,
                parts: dict[str, str], progress: bool = True) -> Path:
    """Encodes every frame of ``source`` and its task strings; writes the cache atomically; returns its dir."""
    from tqdm.auto import tqdm

    final = spec.dataset_dir(source) / fingerprint[:24]
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{fingerprint[:12]}-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    tmp.mkdir()
    dtype = _DTYPES[spec.dtype]
    decoder_cache = _fresh_decoder_cache()
    started = time.monotonic()
    per_frame = spec.per_frame_vlm
    try:
        shards: list[dict[str, Any]] = []
        buffer: list[dict[str, torch.Tensor]] = []
        buffered = 0
        shard_start = 0
        done = 0
        n = source.num_frames
        bar = tqdm(total=n, unit="frame", desc=f"cache {source.name}", disable=not progress, mininterval=1.0,
                   dynamic_ncols=True)
        for ep in source.episodes:
            for lo in range(ep.start, ep.end, spec.encoder_batch):
                hi = min(lo + spec.encoder_batch, ep.end)
                frames = decode_frames(source, np.arange(lo, hi), decoder_cache)
                lat = dino.encode_frames(frames, spec.grid).to(dtype)
                item = {"latents": lat}
                if per_frame:
                    item.update(encode_vlm_frames(language_encoder, source, np.arange(lo, hi), frames,
                                                  spec.vlm_batch, dtype))
                buffer.append(item)
                buffered += len(lat)
                bar.update(len(lat))
                done += len(lat)
                if not progress and done * 10 // n > (done - len(lat)) * 10 // n:  # log lines every 10 %
                    rate = done / max(time.monotonic() - started, 1e-9)
                    log.info("cache %s: %d/%d frames, %.1f frames/s, eta %.0f s", source.name, done, n, rate,
                             (n - done) / max(rate, 1e-9))
                while buffered >= spec.shard_frames:
                    shard_start = _flush(tmp, buffer, shards, shard_start, spec.shard_frames)
                    buffered = sum(len(b["latents"]) for b in buffer)
        if buffered:
            _flush(tmp, buffer, shards, shard_start, buffered)
        bar.close()
        # language tokens, one entry per task string of the dataset (text-only encoders)
        tasks = [] if per_frame else list(source.tasks)
        emb = language_encoder.encode(tasks) if tasks else None
        tokens = emb.tokens.cpu().float() if emb is not None else torch.zeros(0, 1, 1)  # small: kept float32
        mask = emb.mask.cpu().bool() if emb is not None else torch.zeros(0, 1, dtype=torch.bool)
        lang = _write(tmp / "language.safetensors", st_save({"tokens": tokens.contiguous(), "mask": mask.contiguous()}))
        lang["tasks"] = tasks
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "fingerprint": fingerprint, "parts": parts,
            "settings": spec.settings(source), "dataset": {"name": source.name, "root": str(source.root)},
            "dino_path": str(spec.dino_path), "language_path": spec.language_dir(),
            "num_frames": n, "grid": list(spec.grid), "dim": int(dino.dim), "dtype": spec.dtype,
            "shards": shards, "language": lang, "build_seconds": round(time.monotonic() - started, 3),
            "created_unix": time.time(),
        }
        if per_frame:
            manifest["vlm"] = {"length": max(int(s["vlm_length"]) for s in shards), "dim": int(language_encoder.dim),
                               "condition": dataclasses.asdict(language_encoder.condition())}
            if spec.vlm_finetune_layers:
                manifest["vlm"]["finetune_layers"] = spec.vlm_finetune_layers
        _write(tmp / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
        if final.exists():  # a concurrent builder won; keep theirs if it verifies
            try:
                LatentCache.load(final, fingerprint, n)
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            except CacheError:
                shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def encode_vlm_frames(encoder: Any, source: SourceDataset, rows: np.ndarray, frames: torch.Tensor, batch: int,
                      dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The VLM condition of dataset ``rows`` (their decoded ``frames`` + each row's instruction):
    ``vlm`` (n, L, D) with the real tokens first, ``vlm_mask`` (n, L) [+ ``vlm_positions`` (n, 3, L)
    from an encoder that stops before fine-tuned layers]."""
    texts = [source.task_text[int(source.task_index[r])] for r in rows]
    tokens, masks, positions = [], [], []
    for i in range(0, len(rows), batch):
        emb = encoder.encode(texts[i:i + batch], list(frames[i:i + batch]))
        tokens.append(emb.tokens.cpu())
        masks.append(emb.mask.cpu())
        if emb.positions is not None:
            positions.append(emb.positions.cpu())
    return compact_tokens(tokens, masks, dtype, positions or None)


def compact_tokens(tokens: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], dtype: torch.dtype,
                   positions: Sequence[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Rows of several padded batches, real tokens moved first (left or right padding alike), padded to one
    length; ``positions`` (B, 3, L) per batch (the RoPE ids of fine-tuned layers' inputs) follow their tokens."""
    length = max(int(m.sum(1).max()) for m in masks)
    n = sum(len(m) for m in masks)
    out = torch.zeros((n, length, tokens[0].shape[-1]), dtype=dtype)
    out_mask = torch.zeros((n, length), dtype=torch.bool)
    out_pos = torch.zeros((n, 3, length), dtype=torch.int32) if positions is not None else None
    i = 0
    for k, (tok, mask) in enumerate(zip(tokens, masks, strict=True)):
        for j in range(len(mask)):
            real = tok[j][mask[j]]
            out[i, : len(real)] = real.to(dtype)
            out_mask[i, : len(real)] = True
            if out_pos is not None:
                out_pos[i, :, : len(real)] = positions[k][j][:, mask[j]].int()
            i += 1
    result = {"vlm": out, "vlm_mask": out_mask}
    if out_pos is not None:
        result["vlm_positions"] = out_pos
    return result


def _cat(parts: list[torch.Tensor], key: str) -> torch.Tensor:
    if not key.startswith("vlm"):
        return torch.cat(parts)
    axis = 2 if key == "vlm_positions" else 1  # the token axis
    length = max(p.shape[axis] for p in parts)  # VLM rows of different batches: pad the token axis
    return torch.cat([torch.nn.functional.pad(p, (0, 0, 0, length - p.shape[1]) if key == "vlm"
                                              else (0, length - p.shape[axis])) for p in parts])


def _flush(tmp: Path, buffer: list[dict[str, torch.Tensor]], shards: list[dict[str, Any]], start: int,
           count: int) -> int:
    allx = {k: _cat([b[k] for b in buffer], k) for k in buffer[0]}
    x = {k: v[:count].contiguous() for k, v in allx.items()}
    rest = {k: v[count:] for k, v in allx.items()}
    buffer.clear()
    if len(rest["latents"]):
        buffer.append(rest)
    if "vlm_mask" in x:  # trim the token axis to this shard's longest row
        length = max(1, int(x["vlm_mask"].sum(1).max()))
        x["vlm"], x["vlm_mask"] = x["vlm"][:, :length].contiguous(), x["vlm_mask"][:, :length].contiguous()
        if "vlm_positions" in x:
            x["vlm_positions"] = x["vlm_positions"][:, :, :length].contiguous()
    entry = _write(tmp / f"latents-{len(shards):05d}.safetensors", st_save(x))
    entry.update(start=start, end=start + len(x["latents"]))
    if "vlm" in x:
        entry["vlm_length"] = int(x["vlm"].shape[1])
    shards.append(entry)
    return start + len(x["latents"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fresh_decoder_cache() -> Any:
    """A private torchcodec decoder cache, so a re-written video is never read through a stale decoder."""
    try:
        from lerobot.datasets.video_utils import VideoDecoderCache

        return VideoDecoderCache()
    except ImportError:  # pragma: no cover - older lerobot
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_dataset_dir(dataset_dir: Path, keep: str | None) -> list[Path]:
    """Removes stale fingerprints and leftovers of killed builds under one dataset's cache dir."""
    removed = []
    if not dataset_dir.is_dir():
        return removed
    for p in dataset_dir.iterdir():
        if p.name == keep:
            continue
        m = re.match(r"\.tmp-[0-9a-f]+-(\d+)-", p.name)
        if m and _pid_alive(int(m.group(1))):
            continue  # another live build
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def ensure_cache(source: SourceDataset, spec: CacheSpec, make_dino: Callable[[], Any],
                 make_language: Callable[[], Any], rebuild: str = "auto", progress: bool = True) -> LatentCache:
    """The verified cache of ``source``: loaded when valid, else (re)built unless ``rebuild == "never"``."""
    fingerprint, parts = spec.fingerprint(source)
    dataset_dir = spec.dataset_dir(source)
    directory = dataset_dir / fingerprint[:24]
    try:
        cache = LatentCache.load(directory, fingerprint, source.num_frames)
        log.info("latent cache for %r: %s (verified)", source.name, directory)
        return cache
    except CacheMissing:
        others = [p.name for p in dataset_dir.iterdir() if not p.name.startswith(".")] if dataset_dir.is_dir() else []
        err: CacheError = (CacheStale(f"the cache of {source.name!r} in {dataset_dir} was built for different "
                                      "dataset contents or encoders") if others
                           else CacheMissing(f"no latent cache for {source.name!r} in {dataset_dir}"))
    except CacheError as e:
        err = e
    if rebuild == "never":
        raise type(err)(f"{err}; cache.rebuild is 'never' (run lda-cache-latents first)")
    log.warning("latent cache for %r is %s (%s); building it", source.name, err.reason, err)
    shutil.rmtree(directory, ignore_errors=True)
    built = build_cache(source, spec, make_dino(), make_language(), fingerprint, parts, progress=progress)
    cache = LatentCache.load(built, fingerprint, source.num_frames)
    for p in clean_dataset_dir(dataset_dir, keep=built.name):
        log.info("removed stale cache entry %s", p)
    return cache


# ---------------------------------------------------------------------------------------------- providers


class CachedLatents:
    """Gathers a batch's observation and future latents from verified caches (one per dataset)."""

    def __init__(self, sources: Sequence[SourceDataset], caches: Sequence[LatentCache]) -> None:
        self.sources = sources
        self.caches = caches

    def gather(self, plan: BatchPlan) -> tuple[torch.Tensor, torch.Tensor]:
        first = self.caches[0].latents
        b = len(plan)
        src0 = self.sources[0]
        n_obs, n_fut = len(src0.offsets.obs), len(src0.offsets.future)
        obs = torch.empty((b, n_obs, *first.shape[1:]), dtype=torch.float32)
        fut = torch.empty((b, n_fut, *first.shape[1:]), dtype=torch.float32)
        for d in np.unique(plan.dataset):
            sel = np.flatnonzero(plan.dataset == d)
            w = self.sources[int(d)].window_indices(plan.row[sel])
            lat = self.caches[int(d)].latents
            idx = torch.from_numpy(sel)
            obs[idx] = lat[torch.from_numpy(w["obs"])].float()
            fut[idx] = lat[torch.from_numpy(w["future"])].float()
        return obs, fut

    def condition(self, plan: BatchPlan) -> tuple[torch.Tensor, ...] | None:
        """The per-frame VLM condition of each sample's current frame (its anchor row, t = 0): tokens
        (B, L, D) float32 and mask (B, L), L the batch's longest [+ RoPE ids (B, 3, L) when the tokens are
        the inputs of fine-tuned VLM layers]; None for text-only encoders."""
        if self.caches[0].vlm is None:
            return None
        rows = [(int(d), int(r)) for d, r in zip(plan.dataset, plan.row, strict=True)]
        masks = [self.caches[d].vlm[1][r] for d, r in rows]
        length = max(1, max(int(m.sum()) for m in masks))
        tokens = torch.stack([self.caches[d].vlm[0][r, :length].float() for d, r in rows])
        out = (tokens, torch.stack([m[:length] for m in masks]))
        if len(self.caches[0].vlm) == 3:
            out += (torch.stack([self.caches[d].vlm[2][r, :, :length] for d, r in rows]),)
        return out


class FrameWindowDataset(torch.utils.data.Dataset):
    """Decodes the camera frames of one sample (observation then future frames) with lerobot's
    ``LeRobotDataset`` and ``delta_timestamps`` from the model's time layout. Keys are
    ``dataset_position << 40 | row``. Picklable, so DataLoader workers decode in parallel."""

    def __init__(self, sources: Sequence[SourceDataset], offsets_s: Sequence[float]) -> None:
        self.specs = [(s.repo_id, str(s.root), s.image_key) for s in sources]
        self.offsets_s = [float(o) for o in offsets_s]
        self._open: dict[int, Any] = {}

    def __len__(self) -> int:  # keys are sparse; the DataLoader is driven by a batch sampler
        return 1 << 62

    def _dataset(self, d: int) -> Any:
        if d not in self._open:
            from lerobot.datasets.lerobot_dataset import LeRobotDataset

            repo_id, root, key = self.specs[d]
            self._open[d] = LeRobotDataset(repo_id, root=root, delta_timestamps={key: self.offsets_s})
        return self._open[d]

    def __getitem__(self, key: int) -> torch.Tensor:
        d, row = key >> 40, key & ((1 << 40) - 1)
        return self._dataset(d)[row][self.specs[d][2]]

    def __getstate__(self) -> dict[str, Any]:
        return {"specs": self.specs, "offsets_s": self.offsets_s, "_open": {}}


def plan_keys(plan: BatchPlan) -> list[int]:
    return [(int(d) << 40) | int(r) for d, r in zip(plan.dataset, plan.row, strict=True)]


class OnlineLatents:
    """Runs DINOv3 on decoded frames for every batch (the path the latent cache replaces)."""

    def __init__(self, sources: Sequence[SourceDataset], dino: Any, grid: tuple[int, int], batch_size: int) -> None:
        src0 = sources[0]
        self.n_obs, self.n_fut = len(src0.offsets.obs), len(src0.offsets.future)
        self.dino = dino
        self.grid = tuple(grid)
        self.batch_size = batch_size

    def encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (B, n_obs + n_fut, 3, H, W) -> obs, future latents (B, n, gh, gw, C) float32."""
        b, f = frames.shape[:2]
        flat = frames.flatten(0, 1)
        out = [self.dino.encode_frames(flat[i:i + self.batch_size], self.grid)
               for i in range(0, len(flat), self.batch_size)]
        lat = torch.cat(out).view(b, f, *out[0].shape[1:])
        return lat[:, : self.n_obs], lat[:, self.n_obs:]


class TrainingData:
    """Datasets + latent source + language table bound to one model config: builds model batches."""

    def __init__(self, sources: Sequence[SourceDataset], model_config: Any, language: LanguageTable,
                 latents: CachedLatents | OnlineLatents, frames: FrameWindowDataset | None = None) -> None:
        self.sources = list(sources)
        self.model_config = model_config
        self.language = language
        self.latents = latents
        self.frames = frames
        self.slots = [model_config.embodiment_index(s.embodiment) for s in self.sources]
        specs = [model_config.embodiments[i] for i in self.slots]
        self.action_width = max(sp.action_dim for sp in specs)
        self.state_width = max(sp.state_dim for sp in specs)

    @property
    def cached(self) -> bool:
        return isinstance(self.latents, CachedLatents)

    def decode(self, plan: BatchPlan) -> torch.Tensor:
        """Camera frames (B, n_obs + n_fut, 3, H, W) of a plan, decoded in this process."""
        assert self.frames is not None
        return torch.stack([self.frames[k] for k in plan_keys(plan)])

    def batch(self, plan: BatchPlan, frames: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The compute_loss batch of ``plan``; ``frames`` are pre-decoded images (online path only)."""
        from .data import assemble_batch

        condition = None
        if self.cached:
            obs, fut = self.latents.gather(plan)
            condition = self.latents.condition(plan)
        else:
            obs, fut = self.latents.encode(self.decode(plan) if frames is None else frames)
        return assemble_batch(self.sources, plan, self.model_config, obs, fut, self.language, self.slots,
                              self.action_width, self.state_width, condition=condition)
