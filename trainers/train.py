"""Entry point: ``accelerate launch [--config_file accelerate_configs/X.yaml] trainers/train.py
<config.yaml> [--field value ...]`` (installed: ``hardneg-train <config.yaml> ...``).

The YAML's ``kind`` (or ``--kind``) picks the config dataclass and its trainer: ``embedder`` (LoRA
embedders too: set the ``lora_*`` fields) -> ``EmbedderConfig`` / ``trainers.embedder.trainer``;
``cross_encoder`` / ``llm_reranker`` -> ``RerankerConfig`` / ``trainers.reranker.trainer``. Fields take
``transformers.TrainingArguments`` names (``--learning_rate 5e-6``, ``--per_device_train_batch_size 16``,
``--num_train_epochs 2``); ``--config <config.yaml>`` works as the positional does, and
``<config.yaml> --help`` lists every field with its help text and its value in that file.
``--push org/name --version vX.Y`` (aliases of ``--push_to`` / ``--push_version``) pushes the saved
model, card and ``training_config.yaml`` with ``trainers.publish.push_model`` (token from HF_TOKEN / login).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: put the repo, not trainers/, first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import yaml  # noqa: E402

from trainers.config import KINDS, TrainingConfig  # noqa: E402
from trainers.config_io import ConfigError, ConfigParser, config_path, normalise_argv  # noqa: E402
from trainers.embedder.config import EmbedderConfig  # noqa: E402
from trainers.reranker.config import RerankerConfig  # noqa: E402

CONFIG_CLASS = {"embedder": EmbedderConfig, "cross_encoder": RerankerConfig, "llm_reranker": RerankerConfig}


def read_kind(argv: list[str]) -> str:
    """``--kind`` on the command line, else the YAML's ``kind``; ``embedder`` for a bare ``--help``."""
    args = normalise_argv(argv)
    kinds = [a.split("=", 1)[1] for a in args if a.startswith("--kind=")]
    kinds += [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--kind"]
    path = config_path(args)
    if not kinds and path is not None:
        try:
            recipe = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError as err:
            raise ConfigError(f"config file {path} does not exist") from err
        kinds = [recipe.get("kind")] if isinstance(recipe, dict) else [None]
    elif not kinds:
        if any(a in ("-h", "--help") for a in args):
            return "embedder"
        raise ConfigError("no config: trainers/train.py <config.yaml> [--field value ...] (or --config <config.yaml>)")
    if kinds[-1] not in KINDS:
        raise ConfigError(f"{path or 'command line'}: `kind` must be one of {list(KINDS)}, got {kinds[-1]!r}")
    return kinds[-1]


def parser_for(kind: str) -> ConfigParser:
    others = ", ".join(f"`--kind {k} --help`" for k in KINDS if CONFIG_CLASS[k] is not CONFIG_CLASS[kind])
    return ConfigParser(CONFIG_CLASS[kind], description=(
        f"Training config of kind {kind} ({CONFIG_CLASS[kind].__name__}). Values come from the YAML, then from the "
        f"command line; the defaults shown are the YAML's when one is given. Other kinds: {others}."))


def parse_config(argv: list[str]) -> TrainingConfig:
    """A command line (everything after ``trainers/train.py``) -> its config; nothing is trained."""
    return parser_for(read_kind(argv)).parse(argv)


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


def run(argv: list[str]) -> Path:
    """Parse ``argv``, train, return the saved model folder."""
    cfg = parse_config(argv)
    import torch

    check_launch(dict(os.environ), torch.cuda.is_available())
    if isinstance(cfg, EmbedderConfig):
        from trainers.embedder.trainer import EmbedderTrainer

        return EmbedderTrainer(cfg).train()
    from trainers.reranker.trainer import RerankerTrainer

    return RerankerTrainer(cfg).train()


def main(argv: list[str] | None = None) -> int:
    """The command (``hardneg-train``, ``trainers/train.py``): a config error is one line and exit status 2."""
    try:
        run(sys.argv[1:] if argv is None else argv)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
