"""Entry point: ``accelerate launch [--config_file accelerate_configs/X.yaml] trainers/train.py
<config.yaml> [--key value ...]``.

The YAML's ``kind`` picks the trainer: ``embedder`` (LoRA embedders too: set the ``lora_*``
fields) -> ``trainers.embedder.trainer``; ``cross_encoder`` / ``llm_reranker`` ->
``trainers.reranker.trainer``. Everything after the YAML path overrides its keys.
``--push org/name --version vX.Y`` (aliases of ``--push_to`` / ``--push_version``) pushes the saved
model, card and ``training_config.yaml`` with ``trainers.publish.push_model`` (token from HF_TOKEN / login).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: trainers/ is sys.path[0]; make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from trainers.config_io import ConfigError, load_config  # noqa: E402

KINDS = ("embedder", "cross_encoder", "llm_reranker")
USAGE = ("usage: accelerate launch trainers/train.py <config.yaml> [--key value ...] "
         "[--push org/name [--version vX.Y]]")
# short spellings of the push fields: `--push org/name --version v1.0` == `--push_to ... --push_version ...`
ALIASES = {"--push": "--push_to", "--version": "--push_version"}


def expand_aliases(overrides: list[str]) -> list[str]:
    out = []
    for arg in overrides:
        key, eq, value = arg.partition("=")
        out.append(ALIASES.get(key, key) + eq + value if key in ALIASES else arg)
    return out


def read_kind(config_path: str) -> str:
    try:
        recipe = yaml.safe_load(Path(config_path).read_text()) or {}
    except FileNotFoundError as err:
        raise ConfigError(f"config file {config_path} does not exist") from err
    kind = recipe.get("kind") if isinstance(recipe, dict) else None
    if kind not in KINDS:
        raise ConfigError(f"{config_path}: `kind` must be one of {list(KINDS)}, got {kind!r}")
    return kind


def check_launch(env: dict[str, str], cuda_available: bool) -> None:
    """Refuse a multi-process launch on a machine without CUDA unless accelerate is in CPU mode.

    ``accelerate launch --config_file accelerate_configs/multi_gpu.yaml`` starts N processes through
    torchrun; without CUDA they only join one (gloo) process group when ``ACCELERATE_USE_CPU`` is set
    (``--cpu`` or ``use_cpu: true``). Otherwise every process trains alone on its own copy of the
    model and data, N times the work for one model's worth of training, and nothing says so.
    """
    world_size = int(env.get("WORLD_SIZE", "1") or 1)
    cpu_mode = env.get("ACCELERATE_USE_CPU", "").strip().lower() in {"1", "true", "yes", "y", "on"}
    if world_size > 1 and not cuda_available and not cpu_mode:
        raise ConfigError(
            f"{world_size} processes were launched but this machine has no CUDA device and accelerate is not "
            "in CPU mode, so each process would train alone. For DDP on CPU (gloo) add `--cpu` to "
            "`accelerate launch` (or set ACCELERATE_USE_CPU=1, or `use_cpu: true` in the accelerate config); "
            "otherwise launch with --num_processes 1 or on a GPU machine."
        )


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0 if argv else 2)
    config_path, overrides = argv[0], expand_aliases(argv[1:])
    import torch

    check_launch(dict(os.environ), torch.cuda.is_available())
    kind = read_kind(config_path)
    if kind == "embedder":
        from trainers.embedder.config import EmbedderConfig
        from trainers.embedder.trainer import train

        return train(load_config(EmbedderConfig, config_path, overrides))
    from trainers.reranker.config import RerankerConfig
    from trainers.reranker.trainer import train as train_reranker

    return train_reranker(load_config(RerankerConfig, config_path, overrides))


if __name__ == "__main__":
    try:
        main()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
