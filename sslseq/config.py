"""Typed dataclass configs loaded from YAML with ``key=value`` overrides.

Unknown keys are errors that name the nearest valid keys, so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from sslseq.utils import SslseqError

C = TypeVar("C")


class _Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where a float needs a dot (``1e-4`` is the string '1e-4'); here
    floats in any standard notation (``1e-4``, ``5E-3``, ``1.5e+2``, ``.5``) are floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """YAML text as Python values (safe: no objects), with the floats of ``_Loader``."""
    return yaml.load(text, Loader=_Loader)


def _unknown_key_error(key: str, valid: list[str], where: str) -> SslseqError:
    close = difflib.get_close_matches(key.split(".")[-1], valid, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return SslseqError(f"{where}: unknown config key '{key}'.{hint} Valid keys: {', '.join(sorted(valid))}")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SslseqError(f"{where}: config key '{key}' must be a mapping, got {value!r}")
        return from_dict(tp, value, where=where, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key, where)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        (inner, *_) = args or (Any,)
        if not isinstance(value, (list, tuple)):
            raise SslseqError(f"{where}: config key '{key}' must be a list, got {value!r}")
        if origin is tuple and args and Ellipsis not in args and len(value) != len(args):
            raise SslseqError(f"{where}: config key '{key}' must be a list of {len(args)} values, got {list(value)!r}")
        items = [_coerce(v, inner, key, where) for v in value]
        return tuple(items) if origin is tuple else items
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise SslseqError(f"{where}: config key '{key}' must be {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[C], data: dict[str, Any], where: str = "config", prefix: str = "") -> C:
    """Build dataclass ``cls`` from a (nested) dict, checking every key and type."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key_error(prefix + key, list(fields), where)
        kwargs[key] = _coerce(value, hints[key], prefix + key, where)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` on top: nested dicts merged key by key, anything else replaced
    (a model_config under a config's ``model:``, fine-tuning keys over a pretrained encoder)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def dict_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, value in a, value in b)`` of each leaf where two nested dicts differ, in
    key order; a missing key reads as None, and lists equal tuples of equal items (YAML vs
    dataclass)."""
    out: list[tuple[str, Any, Any]] = []
    for k in sorted(set(a) | set(b), key=str):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += dict_diff(va, vb, f"{prefix}{k}.")
        elif _as_lists(va) != _as_lists(vb):
            out.append((f"{prefix}{k}", va, vb))
    return out


def _as_lists(v: Any) -> Any:
    return [_as_lists(x) for x in v] if isinstance(v, (list, tuple)) else v


def apply_overrides(data: dict[str, Any], overrides: list[str], cls: type | None = None) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise SslseqError(f"override '{item}' must look like key=value (e.g. optim.lr=1e-4)")
        key, raw = item.split("=", 1)
        try:
            value = parse_yaml(raw) if raw else ""
        except yaml.YAMLError as e:
            raise SslseqError(f"override '{item}': the value is not valid YAML ({str(e).splitlines()[0]}); "
                              "quote it (key='...') or fix the brackets") from None
        node, node_cls = data, cls
        parts = key.split(".")
        for i, part in enumerate(parts):
            if node_cls is not None:
                names = [f.name for f in dataclasses.fields(node_cls)]
                if part not in names:
                    raise _unknown_key_error(".".join(parts[: i + 1]), names, f"override '{item}'")
                sub = typing.get_type_hints(node_cls)[part]
                node_cls = sub if dataclasses.is_dataclass(sub) else None
            if i == len(parts) - 1:
                node[part] = value
            else:
                child = node.get(part)
                node[part] = dict(child) if isinstance(child, dict) else {}
                node = node[part]
    return data


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SslseqError(f"config file not found: {path}")
    try:
        data = parse_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SslseqError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SslseqError(f"{path}: a config must be a mapping of keys to values")
    return data


def get_value(data: Any, key: str, where: str) -> Any:
    """The value at dotted ``key`` of nested dicts/lists (``iterations.0.layer``); list items by index."""
    node = data
    for i, part in enumerate(key.split(".")):
        here = ".".join(key.split(".")[:i]) or "the top level"
        if isinstance(node, dict):
            if part not in node:
                raise SslseqError(f"{where}: no key '{key}' ('{part}' is not among {', '.join(map(str, node)) or 'no keys'} at {here})")
            node = node[part]
        elif isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise SslseqError(f"{where}: no key '{key}' ({here} is a list of {len(node)} items; '{part}' is not an index 0..{len(node) - 1})")
            node = node[int(part)]
        else:
            raise SslseqError(f"{where}: no key '{key}' ({here} is the value {node!r}, not a mapping or list)")
    return node


def load_config(cls: type[C], path: str | Path | None, overrides: list[str] = ()) -> C:
    """Load ``cls`` from a YAML file (or defaults when ``path`` is None) plus overrides."""
    data = load_yaml(path) if path is not None else {}
    data = apply_overrides(data, list(overrides), cls)
    return from_dict(cls, data, where=str(path) if path else "config")
