"""``pbkv serve --config FILE``: the service's and the cache manager's knobs as TOML.

The file mirrors the config dataclasses, one table per component::

    [service]                 ServiceConfig (service/config.py)
    [service.otlp_limits]     SpanLimits: OTLP span ingestion caps (training/genai_spans.py)
    [manager]                 ManagerConfig: policy, horizon, top_kept (cache_manager/config.py)
    [manager.pbkv]            PbkvPolicyConfig ...
    [manager.pbkv.scorer]     ScorerConfig
    [manager.planner]         PlannerConfig ...

Defaults live in the dataclasses only; this module reads, writes and documents them (the help
of a knob is the comment on its field). Unknown keys, wrong types and values the dataclasses
reject are a ``ConfigFileError`` naming the key. A knob whose value may be None is written
``false`` (``http_port = false``: no dashboard).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pbkv.cache_manager.config import ManagerConfig
from pbkv.errors import UserError
from pbkv.service.config import ServiceConfig

SECRET = frozenset({"auth_token", "token_grants"})  # never in a file (--token-file)
# Not in the file: set from another knob, or not a knob.
_DERIVED = {
    ("service", "extra"): "",
    ("service", "manager"): "",
    ("manager", "ended_memory"): "[service] recent_ended",
}


class ConfigFileError(ValueError, UserError):
    """A config file that cannot be read or holds a bad key or value."""


def read_tree(path: Path) -> dict[str, Any]:
    """The file's tables as nested dicts (no check beyond TOML syntax)."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigFileError(f"--config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"--config {path}: not valid TOML: {exc}") from None


def build(tree: Mapping[str, Any], **service: Any) -> ServiceConfig:
    """A ``ServiceConfig`` from a file's tables; ``service`` keywords (the CLI's flags that
    were given) override ``[service]`` keys. Knobs absent from both keep their defaults."""
    _check_keys(tree, {"service", "manager"}, "")
    manager = _build(ManagerConfig, _table(tree, "manager", "manager"), "manager")
    fields = {**_values(ServiceConfig, _table(tree, "service", "service"), "service"), **service}
    return _construct(ServiceConfig, {**fields, "manager": manager}, "service")


def to_toml(config: ServiceConfig) -> str:
    """The effective config as a file ``build`` reads back (secrets left out)."""
    lines = ["# pbkv serve --config FILE (docs/service.md); false: unset (None)", ""]
    for section, obj in _sections(config):
        lines.append(f"[{section}]")
        for f, help_ in _knobs(type(obj), section):
            value = getattr(obj, f.name)
            comment = f"  # {help_}" if help_ else ""
            lines.append(f"{f.name} = {_format(value)}{comment}")
        lines.append("")
    return "\n".join(lines)


def reference_markdown() -> str:
    """Every knob with its default and help, as the Markdown table docs/service.md holds."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for section, obj in _sections(ServiceConfig()):
        for f, help_ in _knobs(type(obj), section):
            default = _format(getattr(obj, f.name)).replace("|", "\\|")
            rows.append(f"| `{section}.{f.name}` | `{default}` | {help_.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------------------- internals
def _sections(config: ServiceConfig) -> Iterator[tuple[str, Any]]:
    """(table name, config object) for ``[service]``, ``[manager]`` and its sub-tables."""
    yield "service", config
    yield "service.otlp_limits", config.otlp_limits

    def walk(name: str, obj: Any) -> Iterator[tuple[str, Any]]:
        yield name, obj
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                yield from walk(f"{name}.{f.name}", value)

    yield from walk("manager", config.manager)


def _knobs(cls: type, section: str) -> list[tuple[dataclasses.Field, str]]:
    """The fields of ``cls`` a file may set (no sub-tables), with their help comments."""
    helps = _field_comments(cls)
    hints = typing.get_type_hints(cls)
    return [
        (f, helps.get(f.name, ""))
        for f in dataclasses.fields(cls)
        if f.name not in SECRET
        and (section, f.name) not in _DERIVED
        and not _is_table(hints[f.name])
    ]


_COMMENT = re.compile(r"^\s+(\w+)\s*:[^#\n]*?#\s*(.+?)\s*$", re.MULTILINE)


def _field_comments(cls: type) -> dict[str, str]:
    """Field name -> the comment at the end of its line in the class's source."""
    out: dict[str, str] = {}
    for name, text in _COMMENT.findall(inspect.getsource(cls)):
        out.setdefault(name, text)
    return out


def _is_table(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _table(tree: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = tree.get(key, {})
    if not isinstance(value, dict):
        raise ConfigFileError(f"[{where}] must be a table, got {value!r}")
    return value


def _check_keys(table: Mapping[str, Any], known: set[str], where: str) -> None:
    for key in table:
        if key in known:
            continue
        name = f"{where}.{key}" if where else key
        if (where, key) in _DERIVED and _DERIVED[(where, key)]:
            raise ConfigFileError(f"config key {name!r} is set by {_DERIVED[(where, key)]}")
        if key in SECRET:
            raise ConfigFileError(
                f"config key {name!r} may not be in a file: use --token-file or PBKV_TOKEN"
            )
        raise ConfigFileError(
            f"unknown config key {name!r}; known in "
            f"[{where or 'top level'}]: {', '.join(sorted(known))}"
        )


def _values(cls: type, table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Checked and converted values of ``table`` for ``cls``; sub-tables built recursively."""
    hints = typing.get_type_hints(cls)
    known = {
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in SECRET and (where, f.name) not in _DERIVED
    }
    _check_keys(table, known, where)
    out: dict[str, Any] = {}
    for key, value in table.items():
        hint = hints[key]
        name = f"{where}.{key}"
        if _is_table(hint):
            if not isinstance(value, dict):
                raise ConfigFileError(f"config key {name!r} must be a table [{name}]")
            out[key] = _build(hint, value, name)
        else:
            out[key] = _convert(hint, value, name)
    return out


def _build(cls: type, table: Mapping[str, Any], where: str) -> Any:
    return _construct(cls, _values(cls, table, where), where)


def _construct(cls: type, values: dict[str, Any], where: str) -> Any:
    try:
        return cls(**values)
    except ValueError as exc:
        raise ConfigFileError(f"[{where}] {exc}") from None


def _convert(hint: Any, value: Any, name: str) -> Any:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if type(None) in options and value is False and bool not in options:
        return None
    for t in options:
        if t is bool and isinstance(value, bool):
            return value
        if isinstance(value, bool):
            continue
        if t is int and isinstance(value, int):
            return value
        if t is float and isinstance(value, int | float):
            return float(value)
        if t is str and isinstance(value, str):
            return value
        if t is Path and isinstance(value, str):
            return Path(value)
    kinds = " or ".join(
        "false" if t is type(None) else getattr(t, "__name__", str(t)) for t in options
    )
    raise ConfigFileError(f"config key {name!r} must be {kinds}, got {value!r}")


def _format(value: Any) -> str:
    if value is None or value is False:
        return "false"
    if value is True:
        return "true"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))
