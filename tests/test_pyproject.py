"""pyproject.toml says what is true: package-data globs name files that exist, every script resolves to a
callable, and ruff (its [tool.ruff] config) passes on the whole tree."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.mark.parametrize("package", sorted(PYPROJECT["tool"]["setuptools"]["package-data"]))
def test_package_data_globs_match_files(package):
    for pattern in PYPROJECT["tool"]["setuptools"]["package-data"][package]:
        assert [p for p in (ROOT / package).glob(pattern) if p.is_file()], f"{package}: {pattern!r} matches no file"


@pytest.mark.parametrize("name", sorted(PYPROJECT["project"]["scripts"]))
def test_scripts_resolve(name):
    module, _, function = PYPROJECT["project"]["scripts"][name].partition(":")
    assert callable(getattr(importlib.import_module(module), function))


def test_train_script_help_and_config_error_exit_status(capsys):
    from trainers.train import main

    with pytest.raises(SystemExit) as done:
        main(["trainers/configs/minilm-cpu.yaml", "--help"])
    assert done.value.code == 0 and "--learning_rate" in capsys.readouterr().out
    assert main(["trainers/configs/minilm-cpu.yaml", "--lr", "1"]) == 2
    assert "`--lr` is now `--learning_rate`" in capsys.readouterr().err


def ruff() -> list[str] | None:
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    found = shutil.which("ruff")
    return [found] if found else None


@pytest.mark.skipif(ruff() is None, reason="ruff is not installed (pip install -e '.[dev]')")
def test_ruff_passes_on_the_whole_tree():
    proc = subprocess.run([*ruff(), "check", "builders", "trainers", "cards", "bench", "experiments", "scripts", "tests"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
