"""The one config mechanism: dataclasses validated by parse(), errors '<file>: <dotted.key>: <problem>'."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest
from lda_common.config import (
    ConfigError,
    PositiveInt,
    check,
    load_yaml,
    parse,
    plain,
    read_versioned_json,
    write_versioned_json,
)


@dataclass(frozen=True)
class Wheel:
    name: str
    kind: Literal["caster", "drive"] = "drive"
    radius_m: float = 0.1


@dataclass(frozen=True)
class Cart:
    wheels: tuple[Wheel, ...]
    size: tuple[float, float] = (1.0, 0.5)
    speed: PositiveInt = 1
    options: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [w.name for w in self.wheels]
        check(len(set(names)) == len(names), "wheels", "wheel names repeat")


def _error(data, source="cart.yaml") -> str:
    with pytest.raises(ConfigError) as err:
        parse(Cart, data, source)
    return str(err.value)


def test_valid_data_gives_typed_dataclasses():
    cart = parse(Cart, {"wheels": [{"name": "a", "radius_m": 1}, {"name": "b", "kind": "caster"}], "size": [2, 1],
                        "speed": 3.0})
    assert cart == Cart((Wheel("a", radius_m=1.0), Wheel("b", "caster")), (2.0, 1.0), 3)
    assert isinstance(cart.wheels, tuple) and isinstance(cart.wheels[0].radius_m, float) and type(cart.speed) is int
    assert parse(Cart, plain(cart)) == cart  # plain() writes what parse() reads back


A = {"name": "a"}


@pytest.mark.parametrize(("data", "message"), [
    ({"wheels": [], "sped": 2}, "sped: unknown key; did you mean 'speed'?"),
    ({"wheels": [{"name": "a", "radius": 2}]}, "wheels.0.radius: unknown key; did you mean 'wheels.0.radius_m'?"),
    ({"wheels": [], "zzz": 1}, "zzz: unknown key; known keys: ['wheels', 'size', 'speed', 'options']"),
    ({"wheels": [A, {"name": "b", "radius_m": "big"}]}, "wheels.1.radius_m: expected a number, got 'big'"),
    ({"wheels": [{**A, "radius_m": float("inf")}]}, "wheels.0.radius_m: expected a finite number, got inf"),
    ({"wheels": [{"name": 5}]}, "wheels.0.name: expected a string, got 5"),
    ({"wheels": [{**A, "kind": "skid"}]}, "wheels.0.kind: expected one of ['caster', 'drive'], got 'skid'"),
    ({"wheels": [{"kind": "drive"}]}, "wheels.0.name: required key is missing"),
    ({"wheels": A}, "wheels: expected a list, got {'name': 'a'}"),
    ({"wheels": ["a"]}, "wheels.0: expected a mapping, got 'a'"),
    ({"wheels": [], "size": [1.0]}, "size: expected 2 values, got 1"),
    ({"wheels": [], "size": [1, 2, 3]}, "size: expected 2 values, got 3"),
    ({"wheels": [], "speed": 0}, "speed: must be > 0, got 0"),
    ({"wheels": [], "speed": 1.5}, "speed: expected an integer, got 1.5"),
    ({"wheels": [], "options": {"x": "y"}}, "options.x: expected an integer, got 'y'"),
    ({"wheels": [A, A]}, "wheels: wheel names repeat"),  # __post_init__
    (["wheels"], "expected a mapping, got ['wheels']"),
    (None, "expected a mapping, got nothing"),
])
def test_errors_name_the_file_and_the_dotted_key(data, message):
    assert _error(data) == "cart.yaml: " + message


def test_prefix_and_error_class_and_no_source():
    class CartError(ConfigError):
        pass

    with pytest.raises(CartError, match=r"^shop.yaml: carts.2.speed: must be > 0, got -1$"):
        parse(Cart, {"wheels": [], "speed": -1}, "shop.yaml", prefix="carts.2", error=CartError)
    with pytest.raises(CartError, match=r"^carts.2.sped: unknown key; did you mean 'carts.2.speed'\?$"):
        parse(Cart, {"wheels": [], "sped": 1}, prefix="carts.2", error=CartError)
    err = ConfigError("wheel names repeat", "wheels", "cart.yaml")
    assert (err.why, err.key, err.source) == ("wheel names repeat", "wheels", "cart.yaml")
    assert isinstance(err, ValueError)


def test_load_yaml(tmp_path):
    (tmp_path / "ok.yaml").write_text("wheels: [{name: a}]\n")
    assert parse(Cart, load_yaml(tmp_path / "ok.yaml")).wheels[0].name == "a"
    with pytest.raises(ConfigError, match="cart file not found: .*none.yaml"):
        load_yaml(tmp_path / "none.yaml", "cart file")
    (tmp_path / "bad.yaml").write_text("wheels: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_yaml(tmp_path / "bad.yaml")
    (tmp_path / "unsafe.yaml").write_text("!!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):  # safe_load only: no Python objects
        load_yaml(tmp_path / "unsafe.yaml")


def test_versioned_json_round_trip_and_refusals(tmp_path):
    path = write_versioned_json(tmp_path / "cart.json", "cart", 2, {"cart": Cart((Wheel("a"),))})
    text = path.read_text()
    assert text.startswith('{\n  "format": "cart",\n  "format_version": 2,')
    body = read_versioned_json(path, "cart", 2, "a cart file")
    assert parse(Cart, body["cart"]) == Cart((Wheel("a"),))
    with pytest.raises(ConfigError, match=r"cart.json is not a bike file \(missing \"format\": \"bike\"\)"):
        read_versioned_json(path, "bike", 2, "a bike file")
    with pytest.raises(ConfigError, match="cart.json has format_version 2; this code reads version 3"):
        read_versioned_json(path, "cart", 3, "a cart file")
    path.write_text(text[: len(text) // 2])  # truncated, e.g. a full disk
    with pytest.raises(ConfigError, match="cart.json is not valid JSON"):
        read_versioned_json(path, "cart", 2, "a cart file")
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="is not a cart file"):
        read_versioned_json(path, "cart", 2, "a cart file")
    with pytest.raises(ConfigError, match="a cart file .*none.json not found"):
        read_versioned_json(tmp_path / "none.json", "cart", 2, "a cart file")
