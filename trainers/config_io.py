"""Training config = YAML file + command-line overrides, parsed with TRL's ``TrlParser``.

:class:`ConfigParser` is ``trl.TrlParser`` (an ``transformers.HfArgumentParser``) over one config
dataclass: ``<config.yaml>`` (positional, or ``--config <config.yaml>`` as in TRL) sets the values, then
``--field value`` / ``--field=value`` overrides them, and ``--help`` lists every field with its help text
and its value in the YAML. YAML sections flatten into fields (``lora: {r: 16}`` is ``lora_r``; a dotted
override ``--lora.r 16`` is ``--lora_r 16``); YAML values are checked against the field's type here
(``bool`` accepts true/false/1/0/yes/no, ``X | None`` accepts none/null), command-line values by argparse
(``--lora_target_modules q_proj v_proj``; ``none`` / ``null`` for an optional field). TRL's ``env:``
section of the YAML sets environment variables. An unknown key is an error naming the key, where it
was and the accepted keys; a key renamed to its ``transformers.TrainingArguments`` name
(``trainers.config.RENAMED``: ``lr`` -> ``learning_rate`` ...) is an error naming the new name.
:func:`load_config` is the same for code and tests; ``trainers/train.py`` picks the dataclass from ``kind``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from trl import TrlParser

from trainers.config import RENAMED

T = TypeVar("T")
_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}
_NULL = {"none", "null", "~"}


class ConfigError(ValueError):
    """A config file or override that does not fit the config dataclass."""


def flatten(mapping: dict, prefix: str = "") -> dict[str, Any]:
    """``{"lora": {"r": 8}}`` -> ``{"lora_r": 8}``. Keys with dots or dashes flatten the same way."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{str(key).replace('.', '_').replace('-', '_')}"
        if isinstance(value, dict):
            out.update(flatten(value, prefix=f"{name}_"))
        else:
            out[name] = value
    return out


def renamed_error(names: list[str], where: str, flag: str = "") -> ConfigError:
    moves = ", ".join(f"`{flag}{old}` is now `{flag}{RENAMED[old]}`" for old in names)
    return ConfigError(f"{where}: {moves} (the training fields take transformers.TrainingArguments names; "
                       "see trainers/config.py)")


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Turn a YAML value into ``annotation`` (or raise a ConfigError naming ``key``)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in _NULL | {""}):
            if type(None) in args:
                return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(value, option, key)
            except (ConfigError, ValueError) as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: cannot read {value!r} as {annotation}: {'; '.join(errors)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        inner = args[0] if args else str
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [coerce(v, inner, key) for v in items]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in _TRUE | _FALSE:
            return str(value).lower() in _TRUE
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        except ValueError as err:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from err
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from err
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def _none_or(convert):
    """argparse ``type`` for an optional field: ``none`` / ``null`` -> None, anything else -> ``convert``."""

    def parse(text: str):
        return None if text.lower() in _NULL else convert(text)

    return parse


def normalise_argv(argv: list[str]) -> list[str]:
    """A positional ``<config.yaml>`` becomes ``--config <config.yaml>``; ``--a.b`` becomes ``--a_b``."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if i == 0 and not arg.startswith("-"):
            out += ["--config", arg]
        elif arg.startswith("--config="):
            out += ["--config", arg.split("=", 1)[1]]
        elif arg.startswith("--") and "." in arg.split("=", 1)[0]:
            key, eq, value = arg.partition("=")
            out.append(key.replace(".", "_") + eq + value)
        else:
            out.append(arg)
    return out


def config_path(argv: list[str]) -> str | None:
    """The config file of a normalised command line, if it names one."""
    if "--config" not in argv:
        return None
    i = argv.index("--config")
    if i + 1 >= len(argv):
        raise ConfigError("--config needs a YAML file: --config trainers/configs/<name>.yaml")
    return argv[i + 1]


class ConfigParser(TrlParser):
    """``TrlParser`` over one config dataclass ``cls``; :meth:`parse` returns a ``cls``."""

    def __init__(self, cls: type[T], prog: str = "trainers/train.py", description: str | None = None):
        super().__init__(
            cls, prog=prog, allow_abbrev=False, exit_on_error=False,
            usage="%(prog)s <config.yaml> [--field value ...]   (or: --config <config.yaml> [--field value ...])",
            description=description or f"{cls.__name__}: every field below can be set in the YAML and overridden here.",
        )
        self.cls = cls
        self.source = "<defaults>"
        self.hints = typing.get_type_hints(cls)
        self.names = sorted(f.name for f in dataclasses.fields(cls) if f.init)
        for action in self._actions:  # optional fields read none/null as None from the command line too
            hint = self.hints.get(action.dest)
            if action.type is not None and type(None) in typing.get_args(hint):
                action.type = _none_or(action.type)

    def set_defaults_with_config(self, **config) -> list[str]:
        """TrlParser hands the YAML mapping here: flatten, check the names, type-check, set as defaults."""
        values = flatten(config)  # TrlParser has taken out its `env:` section (environment variables)
        renamed = sorted(k for k in values if k in RENAMED and k not in self.names)
        if renamed:
            raise renamed_error(renamed, self.source)
        unknown = sorted(set(values) - set(self.names))
        if unknown:
            raise ConfigError(f"{self.source}: unknown key(s) {unknown} for {self.cls.__name__}; accepted keys: {self.names}")
        try:
            self.set_defaults(**{k: coerce(v, self.hints[k], k) for k, v in values.items()})
        except ConfigError as err:
            raise ConfigError(f"{self.source}: {err}") from None
        return []

    def parse(self, argv: list[str]) -> T:
        """``[<config.yaml> | --config <config.yaml>] [--field value ...]`` -> a config (``--help`` prints and exits)."""
        args = normalise_argv(list(argv))
        path = config_path(args)
        self.source = path or "<defaults>"
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            cfg, rest = self.parse_args_and_config(args, return_remaining_strings=True)
        except argparse.ArgumentError as err:
            raise ConfigError(f"command line: {err}") from None
        except ConfigError:
            raise
        except (ValueError, yaml.YAMLError) as err:  # a __post_init__ check, or a YAML that is not a mapping
            raise ConfigError(f"{self.source}: {err}") from None
        flags = [a.split("=", 1)[0] for a in rest if a.startswith("--")]
        renamed = sorted(f[2:] for f in flags if f[2:] in RENAMED)
        if renamed:
            raise renamed_error(renamed, "command line", flag="--")
        if rest:
            raise ConfigError(f"command line: unknown override(s) {flags or rest} for {self.cls.__name__}; "
                              f"accepted keys: {self.names}")
        return cfg


def load_config(cls: type[T], path: str | Path | None = None, argv: list[str] | None = None) -> T:
    """Read ``path`` (YAML) into ``cls``, then apply ``argv`` overrides (``--field value`` ...)."""
    return ConfigParser(cls).parse(([] if path is None else ["--config", str(path)]) + list(argv or []))


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as a plain dict (for logs, checkpoints and the model card)."""
    return dataclasses.asdict(cfg)


TRAINING_CONFIG_FILE = "training_config.yaml"  # what trainers/publish.push_model requires next to the weights
_SECRET_WORDS = ("token", "secret", "password", "api_key")


def write_training_config(cfg: Any, model_dir: str | Path) -> Path:
    """The resolved config as ``<model_dir>/training_config.yaml`` (the shared trainer writes it).

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
