"""Every command line README.md shows parses with the real argument parser of the command, and the files it
names that ship with the repo (recipes, training configs, accelerate configs, scripts) exist. Nothing runs.

Commands come from the README's shell code blocks and from inline code that starts like one
(`python -m ...`, `accelerate launch ...`, `hardneg-...`, `./run.sh ...`, `bash scripts/...`). A synopsis such as
``python -m builders.distributed RECIPE --workers N [--executor local|slurm|ray]`` is expanded: capitalised
placeholders take the values in ``PLACEHOLDERS`` and each ``[--flag a|b]`` is tried absent and with every choice.
"""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PLACEHOLDERS = {"RECIPE": "recipes/sample.yaml", "N": "2"}
STARTS = ("python -m ", "accelerate launch ", "hardneg-", "./run.sh ", "bash scripts/")


def shell_lines(markdown: str) -> list[str]:
    lines = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", markdown, flags=re.S | re.M):
        if lang in ("bash", "sh", "shell", "console", ""):
            lines += [line.split("  #")[0].strip() for line in body.splitlines()]
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    lines += [span for span in re.findall(r"`([^`\n]+)`", prose)]
    return [line for line in lines if line.startswith(STARTS)]


def expand(synopsis: str) -> list[list[str]]:
    """Placeholders filled, optional ``[...]`` groups tried absent and with each ``a|b`` choice."""
    parts = re.split(r"(\[[^\]]+\])", synopsis)
    options = []
    for part in parts:
        if part.startswith("["):
            *flag, choices = part[1:-1].split()
            options.append([""] + [" ".join([*flag, c]) for c in choices.split("|")])
        else:
            options.append([part])
    out = []
    for combo in itertools.product(*options):
        out.append([PLACEHOLDERS.get(tok, tok) for tok in shlex.split(" ".join(combo))])
    return out


COMMANDS = [argv for line in shell_lines(README) for argv in expand(line)]


def existing(path: str) -> None:
    assert (ROOT / path).is_file(), f"README names {path}, which is not in the repo"


def check_train(argv: list[str]) -> None:
    from trainers.config_io import config_path, normalise_argv
    from trainers.train import parse_config

    existing(config_path(normalise_argv(argv)))
    cfg = parse_config(argv)
    overrides = dict(zip(argv[1::2], argv[2::2], strict=False))
    if "--learning_rate" in overrides:
        assert cfg.learning_rate == float(overrides["--learning_rate"])


def parse(argv: list[str]) -> None:
    if argv[:2] == ["accelerate", "launch"]:
        from accelerate.commands.config.config_args import load_config_from_file
        from accelerate.commands.launch import launch_command_parser

        args = launch_command_parser().parse_args(argv[2:])
        if args.config_file:
            existing(args.config_file)
            load_config_from_file(str(ROOT / args.config_file))
        assert args.training_script == "trainers/train.py" and not args.module
        check_train(args.training_script_args)
    elif argv[0] == "hardneg-train":
        check_train(argv[1:])
    elif argv[:3] == ["python", "-m", "builders.cli"]:
        from builders.cli import parse_args

        args, _ = parse_args(argv[3:])
        existing(args.recipe)
    elif argv[:3] == ["python", "-m", "builders.distributed"]:
        from builders.distributed import parser

        existing(parser().parse_args(argv[3:]).recipe)
    elif argv[:3] == ["python", "-m", "builders.agreement"]:
        from builders.agreement import parser

        parser().parse_args(argv[3:])
    elif argv[:3] == ["python", "-m", "trainers.evaluate"]:
        from trainers.evaluate import parser

        parser().parse_args(argv[3:])
    elif argv[:3] == ["python", "-m", "experiments.negatives"]:
        from experiments.negatives.run import parser

        parser().parse_args(argv[3:])
    elif argv[0] in ("./run.sh", "bash"):
        script = argv[0].removeprefix("./") if argv[0] != "bash" else argv[1]
        command = argv[1] if argv[0] != "bash" else argv[2]
        existing(script)
        cases = re.findall(r"^\s*([\w|-]+)\)", (ROOT / script).read_text(), flags=re.M)
        assert command in {c for case in cases for c in case.split("|")}, f"{script} has no `{command})` case"
    else:
        pytest.fail(f"no parser known for README command {shlex.join(argv)}; add it to tests/test_readme_commands.py")


def test_readme_shows_the_commands_this_test_knows():
    shown = {" ".join(argv[:3]) for argv in COMMANDS}
    for command in ("python -m builders.cli", "accelerate launch --config_file", "python -m trainers.evaluate",
                    "python -m builders.agreement", "python -m builders.distributed", "./run.sh demo", "hardneg-train"):
        assert any(s.startswith(command) for s in shown), command
    assert any(argv[-2:] == ["--learning_rate", "5e-6"] for argv in COMMANDS)


@pytest.mark.parametrize("argv", COMMANDS, ids=[shlex.join(argv)[:90] for argv in COMMANDS])
def test_readme_command_parses(argv):
    parse(argv)


def test_an_old_field_name_in_a_command_would_fail():
    from trainers.config_io import ConfigError

    with pytest.raises(ConfigError, match="`--lr` is now `--learning_rate`"):
        check_train(["trainers/configs/qwen2.5-7b-lora.yaml", "--lr", "5e-6"])
