"""Entry point: ``accelerate launch [--config_file accelerate_configs/X.yaml] trainers/train.py
<config.yaml> [--key value ...]``.

The YAML's ``kind`` picks the trainer: ``embedder`` (LoRA embedders too: set the ``lora_*``
fields) -> ``trainers.embedder_trainer``; ``cross_encoder`` / ``llm_reranker`` ->
``trainers.reranker_trainer``. Everything after the YAML path overrides its keys.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: trainers/ is sys.path[0]; make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from trainers.config_io import ConfigError, load_config  # noqa: E402

KINDS = ("embedder", "cross_encoder", "llm_reranker")
USAGE = "usage: accelerate launch trainers/train.py <config.yaml> [--key value ...]"


def read_kind(config_path: str) -> str:
    try:
        recipe = yaml.safe_load(Path(config_path).read_text()) or {}
    except FileNotFoundError as err:
        raise ConfigError(f"config file {config_path} does not exist") from err
    kind = recipe.get("kind") if isinstance(recipe, dict) else None
    if kind not in KINDS:
        raise ConfigError(f"{config_path}: `kind` must be one of {list(KINDS)}, got {kind!r}")
    return kind


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0 if argv else 2)
    config_path, overrides = argv[0], argv[1:]
    kind = read_kind(config_path)
    if kind == "embedder":
        from trainers.embedder_config import EmbedderConfig
        from trainers.embedder_trainer import train

        return train(load_config(EmbedderConfig, config_path, overrides))
    from trainers.reranker_config import RerankerConfig
    from trainers.reranker_trainer import train as train_reranker

    return train_reranker(load_config(RerankerConfig, config_path, overrides))


if __name__ == "__main__":
    try:
        main()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
