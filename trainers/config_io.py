"""YAML recipe -> config dataclass, with ``--key value`` command-line overrides.

One function does the work: :func:`load_config`. A recipe is a YAML mapping whose keys are the
dataclass's field names (``kind`` is read by ``trainers/train.py``; it is dropped here unless the dataclass has
such a field). Overrides
come after it on the command line as ``--key value`` or ``--key=value``; a dotted key
(``--lora.r 16``) is the same as the flat field ``lora_r``, so nested YAML sections
(``lora: {r: 16}``) and flat ones both work. Values are coerced to the field's declared type
(``bool`` accepts true/false/1/0/yes/no, ``list[str]`` accepts ``a,b,c`` or a YAML list,
``X | None`` accepts ``none``/``null``). An unknown key is an error naming the key, the file
and the accepted keys.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


class ConfigError(ValueError):
    """A recipe or override that does not fit the config dataclass."""


def flatten(mapping: dict, prefix: str = "") -> dict[str, Any]:
    """``{"lora": {"r": 8}}`` -> ``{"lora_r": 8}``. Keys with dots flatten the same way."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{str(key).replace('.', '_').replace('-', '_')}"
        if isinstance(value, dict):
            out.update(flatten(value, prefix=f"{name}_"))
        else:
            out[name] = value
    return out


def parse_overrides(argv: list[str]) -> dict[str, str]:
    """``["--lr", "1e-5", "--lora.r=8"]`` -> ``{"lr": "1e-5", "lora_r": "8"}``."""
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"expected an override like --key value, got {arg!r}")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"override --{key} has no value; write --{key} VALUE")
            value = argv[i + 1]
            i += 1
        out[key.replace(".", "_").replace("-", "_")] = value
        i += 1
    return out


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Turn ``value`` (a YAML scalar/list or a command-line string) into ``annotation``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in {"none", "null", "~", ""}):
            if type(None) in args:
                return None
        errors = []
        for option in non_none:
            try:
                return coerce(value, option, key)
            except (ConfigError, ValueError) as err:
                errors.append(str(err))
        raise ConfigError(f"--{key}: cannot read {value!r} as {annotation}: {'; '.join(errors)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"--{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        inner = args[0] if args else str
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"--{key}: expected a list, got {value!r}")
        return [coerce(v, inner, key) for v in items]
    if origin is dict or annotation is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"--{key}: expected a mapping, got {value!r}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in _TRUE:
            return True
        if str(value).lower() in _FALSE:
            return False
        raise ConfigError(f"--{key}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"--{key}: expected an integer, got {value!r}")
        try:
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        except ValueError as err:
            raise ConfigError(f"--{key}: expected an integer, got {value!r}") from err
    if annotation is float:
        try:
            return float(value)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"--{key}: expected a number, got {value!r}") from err
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"--{key}: expected a string, got {value!r}")
        return str(value)
    return value


def build(cls: type[T], values: dict[str, Any], source: str = "<overrides>") -> T:
    """Instantiate dataclass ``cls`` from flat ``values``, coercing types, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {unknown} for {cls.__name__}; accepted keys: {sorted(names)}"
        )
    return cls(**{k: coerce(v, hints[k], k) for k, v in values.items()})


def load_config(cls: type[T], path: str | Path | None = None, argv: list[str] | None = None) -> T:
    """Read ``path`` (YAML) into ``cls``, then apply ``argv`` overrides (``--key value`` ...)."""
    values: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError as err:
            raise ConfigError(f"config file {path} does not exist") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a YAML mapping of config keys, got {type(loaded).__name__}")
        values = flatten(loaded)
    overrides = parse_overrides(argv or [])
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    if "kind" not in names:  # the dispatch key of trainers/train.py, not a field of this config
        values.pop("kind", None)
        overrides.pop("kind", None)
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(
            f"command line: unknown override(s) {['--' + k for k in unknown]} for {cls.__name__}; "
            f"accepted keys: {sorted(names)}"
        )
    values.update(overrides)
    return build(cls, values, source=source)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as a plain dict (for logs, checkpoints and the model card)."""
    return dataclasses.asdict(cfg)


TRAINING_CONFIG_FILE = "training_config.yaml"  # what trainers/publish.push_model requires next to the weights
_SECRET_WORDS = ("token", "secret", "password", "api_key")


def write_training_config(cfg: Any, model_dir: str | Path) -> Path:
    """The resolved config as ``<model_dir>/training_config.yaml`` (both trainers call this).

    Configs never hold credentials (tokens come from the environment / HF login), but a field whose
    name says secret (``hf_token``, ``api_key`` ...) is refused rather than written; the reranker's
    ``yes_token`` / ``no_token`` are vocabulary entries, not credentials.
    """
    values = to_dict(cfg)
    secret = [k for k, v in values.items()
              if v and any(w in k.lower() for w in _SECRET_WORDS) and k not in ("yes_token", "no_token")]
    if secret:
        raise ConfigError(f"config fields {secret} look like credentials: pass tokens through HF_TOKEN / "
                          "`hf auth login`, never in a training config")
    path = Path(model_dir) / TRAINING_CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path
