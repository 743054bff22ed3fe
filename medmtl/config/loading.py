"""Reading a config: YAML files, ``--set key.sub=value`` overrides and type checking.

:func:`load_config` reads the YAML file, applies the overrides (values parsed as YAML
scalars, so ``1e-3``, ``true``, ``[32, 32, 32]`` and ``null`` work), builds the
:class:`~medmtl.config.schema.TrainConfig` tree (unknown keys fail at every level with a
did-you-mean, every value is type-checked) and hands it to
:func:`~medmtl.config.validation.validate_config`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medmtl.config.schema import TrainConfig
from medmtl.config.validation import validate_config
from medmtl.errors import ConfigError, did_you_mean


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (ints accepted as floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"'{key}' in {source} has an invalid value {value!r}; expected {_type_name(tp)}")
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{key}' in {source} must be a list, got {value!r}")
        return [_coerce(v, inner, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' in {source} must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(
        f"'{key}' in {source} has an invalid value {value!r}; expected {_type_name(tp)}"
    )


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        out.append(name)
        if dataclasses.is_dataclass(hints[f.name]):
            out.extend(_all_keys(hints[f.name], name + "."))
    return out


def _unknown_key(key: str, source: str) -> ConfigError:
    hint = did_you_mean(key, _all_keys(TrainConfig)).replace(" Did", " did").strip()
    suffix = f"; {hint}" if hint else "; see configs/README.md for the keys"
    return ConfigError(f"unknown key '{key}' in {source}{suffix}")


def _build(cls: type, data: Any, prefix: str, source: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"section '{prefix.rstrip('.') or '<root>'}' in {source} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise _unknown_key(f"{prefix}{key}", source)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{prefix}{key}.", source)  # type: ignore[arg-type]
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}", source)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"train.learning_rate=1e-3"`` into ``(["train", "learning_rate"], 0.001)``.

    Raises:
        ConfigError: no ``=`` or an empty key.
    """
    import yaml

    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value, e.g. train.epochs=2")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key; use key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': the value is not valid YAML ({exc.__class__.__name__})") from exc
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a nested dict (a new dict is returned)."""
    import copy

    out = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for part in parts[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        node[parts[-1]] = value
    return out


def config_from_dict(raw: dict[str, Any], *, source: str = "<dict>") -> TrainConfig:
    """Build a :class:`TrainConfig` from a nested dict (unknown keys fail; no validation)."""
    return typing.cast(TrainConfig, _build(TrainConfig, raw, "", source))


def read_yaml_strict(path: Path) -> Any:
    """Parse a YAML file safely, refusing duplicated keys (the last would silently win) and
    nesting too deep to parse (``RecursionError``) with one clear error.

    Raises:
        ConfigError: unreadable or invalid YAML, a duplicated key, absurd nesting.
    """
    import yaml

    class _StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:  # noqa: D102 (yaml API)
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise ConfigError(f"config file '{path}' repeats the key '{key}' (line {key_node.start_mark.line + 1}); "
                                      "each key may appear once per section — remove the duplicate")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except RecursionError:
        raise ConfigError(f"config file '{path}' is nested too deeply to parse; a config has at most 3 levels") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise ConfigError(f"config file '{path}' is not valid YAML ({first}); fix the syntax") from exc


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read, override, check and resolve a training config.

    Args:
        path: YAML file.
        overrides: ``key.sub=value`` strings (values parsed as YAML).

    Returns:
        The validated :class:`TrainConfig` with absolute data paths.

    Raises:
        ConfigError: unreadable file, unknown key (with did-you-mean), wrong type or value.
        RegistryError: unknown weighting, strategy or encoder.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist; pass an existing YAML file (see configs/)")
    raw = read_yaml_strict(path)
    if raw is None:
        raise ConfigError(f"config file '{path}' is empty; start from a config in configs/ (e.g. configs/tiny.yaml)")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides)
    cfg = config_from_dict(raw, source=source)
    folder = path.resolve().parent
    return validate_config(cfg, source=source, base_dirs=[folder.parent, folder])


def save_resolved_config(cfg: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically)."""
    import yaml

    from medmtl.io.writers import atomic_write_text

    return atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


__all__ = [
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "parse_override",
    "save_resolved_config",
]
