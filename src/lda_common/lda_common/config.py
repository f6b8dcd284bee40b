"""The suite's one configuration mechanism: plain dataclasses, validated by pydantic, errors naming file and key.

Robot descriptions, training configs, launch files, deployment limits, the safety calibration and the
checkpoint config are all stdlib dataclasses. :func:`parse` turns a mapping (from YAML or JSON) into one,
checking types, unknown keys and value ranges, and raises :class:`ConfigError` with the file and the
dotted key of the first problem::

    sim_panda.yaml: hands.0.fingers.type: expected one of ['width', 'joints', 'keypoints'], got 'claw'
    demo_cpu.yaml: train.stepz: unknown key; did you mean 'train.steps'?

Types say what they can (``PositiveInt``, ``Annotated[float, Field(ge=0, lt=1)]``, ``Literal[...]``,
fixed-length tuples); checks across fields stay in the dataclass's ``__post_init__`` and raise
:class:`ConfigError` through :func:`check`, with the key relative to the dataclass. YAML is read with
``yaml.safe_load`` only; versioned JSON files carry a ``{"format": ..., "format_version": ...}`` header.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import pydantic
import yaml
from pydantic import BeforeValidator, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

__all__ = ["ConfigError", "Field", "NonNegativeFloat", "NonNegativeInt", "PositiveFloat", "PositiveInt", "Text",
           "check", "load_yaml", "parse", "plain", "read_versioned_json", "write_versioned_json"]

#: A YAML scalar read as text (``5`` -> ``"5"``, ``true`` -> ``"True"``), e.g. launch values before substitution.
Text = Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, (int, float, bool)) else v)]
# Unknown keys and NaN/inf are errors everywhere. Lax types otherwise: "1e-4" (YAML 1.1 reads it as a string)
# is a float, 3.0 an int, [0.9, 0.95] a tuple.
_STRICT = pydantic.ConfigDict(extra="forbid", allow_inf_nan=False)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message is ``<file>: <dotted.key>: <what is wrong>``."""

    def __init__(self, why: str, key: str = "", source: str | Path | None = None) -> None:
        self.why, self.key, self.source = why, key, source
        super().__init__(": ".join(str(p) for p in (source, key, why) if p))


def check(ok: Any, key: str, why: str) -> None:
    """For ``__post_init__`` checks: raise ConfigError(why) at ``key`` (relative to the dataclass) unless ``ok``."""
    if not ok:
        raise ConfigError(why, key)


def parse[T](cls: type[T], data: Any, source: str | Path | None = None, *, prefix: str = "",
          error: type[ConfigError] = ConfigError) -> T:
    """Validate ``data`` (a mapping) into the dataclass ``cls``; raise ``error`` naming ``source`` and the key.

    ``prefix``: the dotted key of ``data`` inside its file (e.g. ``launch.3.node``).
    """
    if data is None:
        raise error("expected a mapping, got nothing", prefix, source)
    try:
        return _adapter(cls).validate_python(data)
    except pydantic.ValidationError as err:
        errors = err.errors()  # a misspelt key is also a missing one: say the misspelling first
        first = next((e for e in errors if e["type"] in _UNKNOWN), errors[0])
        key, why = _explain(cls, first, prefix)
        raise error(why, key, source) from None


def load_yaml(path: str | Path, what: str = "config file", error: type[ConfigError] = ConfigError) -> Any:
    """``yaml.safe_load`` of a file; a missing file or bad YAML raises ``error``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise error(f"not valid YAML: {err}", source=path) from None


def read_versioned_json(path: str | Path, fmt: str, version: int, what: str,
                        error: type[ConfigError] = ConfigError) -> dict[str, Any]:
    """The body of a JSON file written by :func:`write_versioned_json`, after checking its header.

    ``what`` names the kind of file in messages ("a safety calibration").
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise error(f"{path} is not {what} (missing \"format\": \"{fmt}\")")
    if data.get("format_version") != version:
        raise error(f"{path} has format_version {data.get('format_version')!r}; this code reads version {version}")
    return {k: v for k, v in data.items() if k not in ("format", "format_version")}


def write_versioned_json(path: str | Path, fmt: str, version: int, body: dict[str, Any]) -> Path:
    """Write ``{"format": fmt, "format_version": version, **body}`` as indented JSON."""
    path = Path(path)
    path.write_text(json.dumps({"format": fmt, "format_version": version, **plain(body)}, indent=2) + "\n")
    return path


def plain(obj: Any) -> Any:
    """Dataclasses, tuples and mappings as plain dicts and lists (what YAML/JSON writes and :func:`parse` reads)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------- internals


@functools.cache
def _adapter(cls: type) -> pydantic.TypeAdapter:
    # The Optional wrapper lets the config apply to plain dataclasses (pydantic refuses a config for a bare
    # dataclass type); nested dataclasses without a config of their own inherit it. None is refused in parse().
    return pydantic.TypeAdapter(cls | None, config=_STRICT)


def _explain(cls: type, err: dict[str, Any], prefix: str) -> tuple[str, str]:
    """(dotted key, what is wrong) of one pydantic error."""
    loc, kind, value, ctx = list(err["loc"]), err["type"], err["input"], err.get("ctx") or {}
    key, parent, got = _join(prefix, _dotted(loc)), _join(prefix, _dotted(loc[:-1])), _describe(value)
    if kind == "value_error":  # raised by a __post_init__
        exc = ctx.get("error")
        return (_join(key, exc.key), exc.why) if isinstance(exc, ConfigError) else (key, str(exc))
    if kind in _UNKNOWN:
        known = list(_fields(_type_at(cls, loc[:-1])))
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean {_join(parent, close[0])!r}?" if close else f"known keys: {known}"
        return key, f"unknown key; {hint}"
    if kind == "missing" and loc and isinstance(loc[-1], int):  # a fixed-length tuple given too few values
        return parent, f"expected {len(typing.get_args(_type_at(cls, loc[:-1])))} values, got {len(value)}"
    if kind == "too_long":
        return key, f"expected {ctx['max_length']} values, got {ctx['actual_length']}"
    if kind == "literal_error":
        options = list(typing.get_args(_type_at(cls, loc))) or ctx.get("expected")
        return key, f"expected one of {options}, got {got}"
    if kind in _BOUNDS:
        return key, f"must be {_BOUNDS[kind]} {next(iter(ctx.values())):g}, got {got}"
    if kind == "missing":
        return key, "required key is missing"
    if kind.split("_")[0] in _EXPECTED:
        return key, f"expected {_EXPECTED[kind.split('_')[0]]}, got {got}"
    return key, err["msg"]


_UNKNOWN = ("unexpected_keyword_argument", "extra_forbidden")
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_EXPECTED = {"int": "an integer", "float": "a number", "finite": "a finite number", "bool": "true or false",
             "string": "a string", "list": "a list", "tuple": "a list", "dict": "a mapping", "dataclass": "a mapping"}


def _strip(tp: Any) -> Any:
    """``Annotated[X, ...]`` and ``X | None`` -> X."""
    while True:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is Annotated:
            tp = args[0]
        elif origin in (typing.Union, types.UnionType) and type(None) in args and len(args) == 2:
            tp = next(a for a in args if a is not type(None))
        else:
            return tp


def _fields(tp: Any) -> dict[str, Any]:
    """The keys a dataclass reads (aliases where given, init-only variables included) -> their types."""
    if not dataclasses.is_dataclass(tp):
        return {}
    hints = typing.get_type_hints(tp, include_extras=True)
    names = [f.name for f in dataclasses.fields(tp) if f.init]
    names += [n for n, h in hints.items() if isinstance(h, dataclasses.InitVar)]
    out = {}
    for name in names:
        hint = hints[name].type if isinstance(hints[name], dataclasses.InitVar) else hints[name]
        alias = next((m.alias for m in getattr(hint, "__metadata__", ()) if getattr(m, "alias", None)), None)
        out[alias or name] = hint
    return out


def _type_at(tp: Any, loc: list) -> Any:
    """The type found at ``loc`` (keys and list indices) inside ``tp``, or None."""
    for part in loc:
        tp = _strip(tp)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if isinstance(part, str):
            tp = _fields(tp).get(part) if origin is not dict else args[1]
        elif origin is list or (origin is tuple and args[-1:] == (Ellipsis,)):
            tp = args[0]
        elif origin is tuple:
            tp = args[part] if part < len(args) else None
        else:
            return None
    return _strip(tp)


def _dotted(loc: list) -> str:
    return ".".join(str(p) for p in loc)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix and key else prefix or key


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

