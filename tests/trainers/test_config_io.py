from dataclasses import dataclass, field
from typing import Literal

import pytest

from trainers.config_io import ConfigError, load_config
from trainers.embedder.config import EmbedderConfig


@dataclass
class Toy:
    name: str = "x"
    steps: int = 1
    lr: float = 1e-3
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    maybe: str | None = None
    mods: list[str] = field(default_factory=list)
    lora_r: int = 0


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_yaml_then_overrides_with_coercion(tmp_path):
    path = write(tmp_path, "kind: embedder\nname: run\nsteps: 3\nlora:\n  r: 4\nmods: [q, k]\n")
    cfg = load_config(Toy, path, ["--lr", "2e-5", "--flag", "true", "--mode=b", "--lora.r", "8",
                                  "--mods", "q_proj,v_proj", "--maybe", "none", "--steps", "7"])
    assert cfg == Toy(name="run", steps=7, lr=2e-5, flag=True, mode="b", maybe=None,
                      mods=["q_proj", "v_proj"], lora_r=8)
    assert isinstance(cfg.steps, int) and isinstance(cfg.lr, float)


def test_unknown_keys_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key\(s\) \[.lerning_rate.\]"):
        load_config(Toy, write(tmp_path, "lerning_rate: 1\n"))
    with pytest.raises(ConfigError, match=r"--nope"):
        load_config(Toy, write(tmp_path, "steps: 1\n"), ["--nope", "1"])


def test_bad_values_name_the_key(tmp_path):
    path = write(tmp_path, "steps: 1\n")
    with pytest.raises(ConfigError, match="--steps"):
        load_config(Toy, path, ["--steps", "many"])
    with pytest.raises(ConfigError, match="--flag"):
        load_config(Toy, path, ["--flag", "maybe"])
    with pytest.raises(ConfigError, match="--mode"):
        load_config(Toy, path, ["--mode", "c"])
    with pytest.raises(ConfigError, match="no value"):
        load_config(Toy, path, ["--steps"])


def test_shipped_embedder_recipes_load():
    e5 = load_config(EmbedderConfig, "trainers/configs/e5-base-rlhn.yaml")
    assert (e5.temperature, e5.group_size, e5.batch_size, e5.lr, e5.epochs) == (0.01, 8, 128, 2e-5, 5)
    assert (e5.query_prefix, e5.passage_prefix, e5.pooling, e5.multi_positive) == ("query: ", "passage: ", "mean", "sample")
    qwen = load_config(EmbedderConfig, "trainers/configs/qwen2.5-7b-lora.yaml", ["--lora.r", "8"])
    assert qwen.lora_r == 8 and qwen.pooling == "last" and "down_proj" in qwen.lora_target_modules
    assert load_config(EmbedderConfig, "trainers/configs/e5-base-clear-cmp.yaml").multi_positive == "cmp"
    assert load_config(EmbedderConfig, "trainers/configs/minilm-cpu.yaml").model == "minilm"
