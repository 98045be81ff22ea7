"""Recipes (TOML) and command-line overrides -> a validated config dataclass.

A recipe is a TOML file with one table named after the config it fills, e.g.
``[ppo]`` for :class:`rlkit.ppo.PPOConfig`.  Every key is checked at load: an
unknown key names the closest valid one, a wrong type names the expected one.
Field docs come from the attribute docstrings in the dataclass source, so the
dataclass is the single place a hyperparameter is documented.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import os
import sys
import types
import typing
from importlib import resources
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


from rlkit.errors import ConfigError, RlkitError  # noqa: E402  (a ValueError; the CLI's exit code 2)


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (and its dataclass bases): the string literal after each field."""
    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs: dict[str, str] = {}
    for node, following in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def settable_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _allowed_types(annotation: Any) -> tuple[tuple[type, ...], bool]:
    """(concrete types, whether None is allowed) of an annotation like float | None."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        concrete = tuple(a for a in args if a is not type(None))
        return concrete, type(None) in args
    if origin in (list, tuple, dict):
        return (origin,), False
    return (annotation,), False


def coerce_value(cls: type, key: str, value: Any, source: str) -> Any:
    """Check (and where lossless, convert) one value against the field's type."""
    allowed, optional = _allowed_types(_field_types(cls)[key])
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{source}: {key} cannot be none")
    if isinstance(value, str) and allowed != (str,):
        value = _parse_string(value, allowed, optional, key, source)
        if value is None:
            return None
    for kind in allowed:
        if kind is bool:
            if isinstance(value, bool):
                return value
        elif kind is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
        elif isinstance(value, kind):
            return value
    names = " or ".join(k.__name__ for k in allowed) + (" or none" if optional else "")
    raise ConfigError(f"{source}: {key} must be {names}, got {value!r} ({type(value).__name__})")


def _parse_string(text: str, allowed: tuple[type, ...], optional: bool, key: str, source: str) -> Any:
    """Command-line strings -> typed values."""
    lowered = text.strip().lower()
    if optional and lowered in ("none", "null", ""):
        return None
    for kind in allowed:
        if kind is bool:
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
        elif kind is int:
            try:
                number = float(text.replace("_", ""))
            except ValueError:
                continue
            if number.is_integer():
                return int(number)
        elif kind is float:
            try:
                return float(text.replace("_", ""))
            except ValueError:
                continue
        elif kind is str:
            return text
        elif kind is dict:
            return _parse_json(text, dict, key, source)
        elif kind is list:  # a JSON list, or comma-separated names
            return _parse_json(text, list, key, source) if text.lstrip().startswith("[") else [
                part.strip() for part in text.split(",") if part.strip()]
    names = " or ".join(k.__name__ for k in allowed) + (" or none" if optional else "")
    raise ConfigError(f"{source}: {key} must be {names}, got {text!r}")


def _parse_json(text: str, kind: type, key: str, source: str) -> Any:
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{source}: {key} must be a JSON {kind.__name__}, got {text!r} ({error})") from None
    if not isinstance(value, kind):
        raise ConfigError(f"{source}: {key} must be a JSON {kind.__name__}, got {text!r}")
    return value


def unknown_key_error(key: str, valid: list[str], source: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{source}: unknown key {key!r}.{hint} Valid keys: {', '.join(sorted(valid))}")


def config_from_dict(cls: type, values: dict[str, Any], source: str = "config") -> Any:
    """Build and validate ``cls`` from a dict; every error is a ConfigError naming the key."""
    valid = list(settable_fields(cls))
    kwargs = {}
    for key, value in values.items():
        if key not in valid:
            raise unknown_key_error(key, valid, source)
        kwargs[key] = coerce_value(cls, key, value, source)
    config = cls(**kwargs)
    try:
        return config.validate()
    except RlkitError:  # a config error, or a device error (its own exit code)
        raise
    except ValueError as error:
        raise ConfigError(f"{source}: {error}") from None


# ---------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------


def available_recipes() -> list[str]:
    """Names of the recipes shipped in rlkit.recipes."""
    folder = resources.files("rlkit.recipes")
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def read_recipe(name_or_path: str) -> tuple[str, dict[str, Any], str]:
    """(table name, values, source label) of a shipped recipe name or a TOML path."""
    if name_or_path.endswith(".toml") or os.sep in name_or_path:
        if not os.path.isfile(name_or_path):
            raise ConfigError(f"recipe file {name_or_path!r} does not exist")
        with open(name_or_path, "rb") as f:
            data, source = f.read(), name_or_path
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ConfigError(f"{source}: not UTF-8 text (byte {error.start}); save the recipe as UTF-8") from None
    else:
        names = available_recipes()
        if name_or_path not in names:
            close = difflib.get_close_matches(name_or_path, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown recipe {name_or_path!r}.{hint} Shipped recipes: {', '.join(names)}")
        text = resources.files("rlkit.recipes").joinpath(f"{name_or_path}.toml").read_text()
        source = f"recipe {name_or_path}"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML: {error}") from None
    tables = [k for k, v in data.items() if isinstance(v, dict)]
    if len(tables) != 1:
        raise ConfigError(f"{source}: a recipe has exactly one table such as [ppo]; found {tables or 'none'}")
    return tables[0], data[tables[0]], source


# ---------------------------------------------------------------------------------
# Command-line overrides
# ---------------------------------------------------------------------------------


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, defaults: dict[str, Any]) -> None:
    """--key VALUE (and --key-with-dashes) for every settable field; help = the field's doc + recipe value."""
    docs = field_docs(cls)
    types_ = _field_types(cls)
    group = parser.add_argument_group("recipe keys (each overrides the recipe)")
    for name, f in settable_fields(cls).items():
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        text = f"{docs.get(name, '')} (recipe: {defaults.get(name, default)!r})"
        flag = {"nargs": "?", "const": "true"} if _allowed_types(types_[name]) == ((bool,), False) else {}  # --key alone: true
        group.add_argument(*flags, dest=name, metavar="VALUE", default=None, help=text.replace("%", "%%"), **flag)


def parse_overrides(parser: argparse.ArgumentParser, cls: type, argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    """(all parsed args, the config keys given); an unknown flag is a ConfigError naming the closest key.
    Options are never abbreviated (``--learning_rat`` is unknown, not ``--learning_rate``), and a usage
    error (a missing value, say) is a ConfigError too: one line, no usage dump."""
    parser.allow_abbrev = False

    def refuse(message: str):
        raise ConfigError(f"{parser.prog}: {message} (see {parser.prog} --help)")

    parser.error = refuse
    args, unknown = parser.parse_known_args(argv)
    valid = list(settable_fields(cls))
    if unknown:
        raise unknown_key_error(unknown[0].lstrip("-").split("=")[0].replace("-", "_"), valid, "command line")
    return args, {k: v for k, v in vars(args).items() if k in valid and v is not None}
