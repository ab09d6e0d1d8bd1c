"""Config files: YAML plus dotted ``--set`` overrides, validated into the models of ``vwm.config``, with
one-line errors that name the file or override, the dotted key and the closest allowed name."""

from __future__ import annotations

import copy
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from vwm.config import ConfigError, PretrainConfig


def load_config(path: str | Path | list | tuple | None, overrides: list[str] | tuple[str, ...] = (),
                model: type[BaseModel] | None = None) -> Any:
    """Read ``path`` (YAML; several files merge in order: a recipe, then a cluster overlay, then a data
    overlay), apply ``key.path=value`` overrides, validate as ``model`` (default PretrainConfig), then run the
    checks that need more than the config's own fields. Raises ConfigError."""
    model = model or PretrainConfig
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    raw: dict[str, Any] = {}
    for p in paths:
        raw = _merge(raw, _read(p))
    source = " + ".join(map(str, paths)) or "defaults"
    set_keys = _apply_overrides(raw, overrides, model)
    try:
        cfg = model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_describe(e, source, set_keys, model)) from None
    _deep_checks(cfg, source)
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; a config with one would silently drop a setting."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice in one section",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        some = sorted(p.glob("*.yaml"))[:2]
        raise ConfigError(f"config {path} is a folder; pass a YAML file"
                          + (f" such as {', '.join(map(str, some))}" if some else ""))
    if not p.is_file():
        raise ConfigError(f"config file {path} not found; pass an existing YAML file to --config")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{at}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if raw is None:
        raise ConfigError(f"{path} is empty: it would run the built-in defaults; start from a file in configs/")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections (data, model, ...)")
    return raw


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Sections merge key by key; a value (lists included) in a later file replaces the earlier one."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _deep_checks(cfg: Any, source: str) -> None:
    """Checks that sample (masks) rather than compare fields: run on load, before any cluster work."""
    if isinstance(cfg, PretrainConfig):
        from vwm.masks.multiblock3d import context_problems
        from vwm.models.vit import token_grid

        problems = context_problems(cfg.mask.sets, token_grid(cfg.model, cfg.data.frames, cfg.data.crop))
        if problems:
            raise ConfigError(f"{source}: {problems[0]}")


def _apply_overrides(raw: dict[str, Any], overrides, model: type[BaseModel]) -> dict[str, str]:
    """Apply ``a.b.c=value`` (value parsed as YAML) in place; return dotted key -> original override text."""
    applied: dict[str, str] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.path=value (for example model.depth=4)")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        parts = key.split(".")
        node = _descend(raw, parts, item, defaults=_defaults(model))
        last = parts[-1]
        if isinstance(node, list):
            node[_list_index(node, last, item)] = value
        else:
            node[last] = value
        applied[key] = item
    return applied


def _defaults(model: type[BaseModel]) -> dict:
    """The model's defaults as plain data; {} for a model with required fields (nothing to copy from)."""
    try:
        return model().model_dump(mode="json")
    except ValidationError:
        return {}


def _descend(raw: dict, parts: list[str], item: str, defaults: dict) -> Any:
    """The container that holds the last key of ``parts``; lists (mask.sets.0) come from the defaults."""
    node, default = raw, defaults
    for part in parts[:-1]:
        if isinstance(node, list):
            i = _list_index(node, part, item)
            node, default = node[i], None
            continue
        default = default.get(part) if isinstance(default, dict) else None
        child = node.get(part)
        if child is None:
            child = node[part] = copy.deepcopy(default) if isinstance(default, list) else {}
        if not isinstance(child, (dict, list)):
            raise ConfigError(f"override {item!r}: {part} is a value, not a section")
        node = child
    return node


def _list_index(node: list, part: str, item: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override {item!r}: {part!r} is not an index of a {len(node)}-item list "
                          f"(use 0..{len(node) - 1})")
    return int(part)


def _describe(err: ValidationError, source: str, set_keys: dict[str, str], model: type[BaseModel]) -> str:
    e = err.errors()[0]
    loc = [str(p) for p in e["loc"]]
    dotted = ".".join(loc)
    where = source
    for key, text in set_keys.items():
        if dotted and (dotted == key or dotted.startswith(key + ".") or key.startswith(dotted + ".")):
            where = f"--set {text}"
    more = f" (and {err.error_count() - 1} more problems)" if err.error_count() > 1 else ""
    if e["type"] == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1])
        parent = ".".join(loc[:-1])
        guess = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f"; did you mean {parent + '.' if parent else ''}{guess[0]}?" if guess else ""
        return f"unknown key {dotted} in {where}{hint} allowed here: {', '.join(allowed)}{more}"
    msg = e["msg"].removeprefix("Value error, ")
    got = f" (got {e['input']!r})" if e["type"] not in ("value_error", "missing") and "input" in e else ""
    if not dotted:  # a cross-field check: name the overrides too, any of them may be the cause
        given = "".join(f" with --set {text}" for text in set_keys.values())
        return f"{source}{given}: {msg}{more}"
    return f"{where}: {dotted}: {msg}{got}{more}"


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    for part in loc:
        if part.isdigit():
            continue
        ann = model.model_fields[part].annotation
        inner = _model_in(ann)
        if inner is None:
            return []
        model = inner
    return list(model.model_fields)


def _model_in(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    origin = typing.get_origin(ann)
    if origin in (list, tuple, typing.Union, types.UnionType):
        for arg in typing.get_args(ann):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def to_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def flatten(cfg: BaseModel) -> dict[str, Any]:
    """Dotted-key view of a config, for experiment trackers' params."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, list) and node and isinstance(node[0], dict):
            for i, v in enumerate(node):
                walk(f"{prefix}.{i}", v)
        else:
            out[prefix] = node

    walk("", cfg.model_dump(mode="json"))
    return out
