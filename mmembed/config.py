"""Typed configurations: dataclasses filled from YAML files and ``key=value`` command-line overrides.

Values are checked against the dataclass field types; an unknown key names the valid ones. The
resolved configuration is saved next to every output so that a run can be repeated.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections import abc
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mmembed.errors import ConfigError
from mmembed.fileio import write_text

T = TypeVar("T")


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> T:
    """Build ``cls`` from ``base``, then the YAML file at ``path``, then ``key=value`` overrides."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        data = _merge(data, read_yaml(path))
    for item in overrides or []:
        keys, value = parse_override(item)
        data = _merge(data, _nest(keys, value))
    where = str(path) if path else "configuration"
    config = from_dict(cls, data, where=where)
    check = getattr(config, "validate", None)
    if callable(check):  # ranges and cross-field rules, before any work starts
        try:
            check()
        except ConfigError as e:
            if path is None:
                raise
            raise ConfigError(f"{where}: {e}") from None
    return config


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        data = yaml.safe_load(decode_utf8(path.read_bytes(), path))
    except yaml.YAMLError as e:
        raise ConfigError(_yaml_error(path, e)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _yaml_error(path: Path, error: yaml.YAMLError) -> str:
    """One line: file:line:column and PyYAML's reason (its own message spans several lines)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    return f"{where}: not valid YAML: {problem}" + (f" ({context})" if context else "")


def decode_utf8(raw: bytes, path: str | os.PathLike) -> str:
    """``raw`` as UTF-8 text; bytes that are not UTF-8 are an error naming the file, line and column."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {column})") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-4"`` -> (["train", "lr"], 0.0001); the value is read as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _nest(keys: list[str], value: Any) -> dict:
    out: Any = value
    for key in reversed(keys):
        out = {key: out}
    return out


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def from_dict(cls: type[T], data: dict, where: str = "configuration") -> T:
    """Instantiate a dataclass from a mapping, converting and checking every field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _convert(value, hints[name], f"{where}: {name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (list, tuple, abc.Sequence) or hint in (list, tuple):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            value = [value]
        item = args[0] if args else Any
        return [_convert(v, item, where) for v in value]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    return _scalar(value, hint, where)


def _scalar(value: Any, hint: Any, where: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        number = _float(value)
        if number is None:
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(number):  # .inf / .nan would train a NaN model or loop forever
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _float(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)  # YAML reads "1e-4" as a string
        except ValueError:
            return None
    return None


def to_dict(config: Any) -> dict:
    """The configuration as plain data; a field marked ``omit_if_default`` is left out while at its default
    (an optional feature added later does not change the saved configuration of runs without it)."""
    data = dataclasses.asdict(config)
    _drop_defaults(config, data)
    return data


def _drop_defaults(config: Any, data: dict) -> None:
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.metadata.get("omit_if_default") and value == f.default:
            data.pop(f.name, None)
        elif dataclasses.is_dataclass(value) and isinstance(data.get(f.name), dict):
            _drop_defaults(value, data[f.name])


def save_config(config: Any, path: str | os.PathLike) -> None:
    """Write the resolved configuration as YAML (atomically)."""
    write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True))
