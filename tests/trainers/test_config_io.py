"""Training configs: YAML + ``--field value`` overrides through TrlParser; renamed and unknown keys are clear errors."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from trainers.config import RENAMED
from trainers.config_io import ConfigError, ConfigParser, load_config
from trainers.embedder.config import EmbedderConfig
from trainers.reranker.config import RerankerConfig


@dataclass
class Toy:
    name: str = field(default="x", metadata={"help": "a name"})
    steps: int = 1
    learning_rate: float = 1e-3
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
    path = write(tmp_path, "name: run\nsteps: '3'\nlora:\n  r: 4\nmods: [q, k]\nmaybe: here\nlearning_rate: 5e-6\n")
    assert load_config(Toy, path) == Toy(name="run", steps=3, learning_rate=5e-6, maybe="here", mods=["q", "k"], lora_r=4)
    cfg = load_config(Toy, path, ["--learning_rate", "2e-5", "--flag", "true", "--mode=b", "--lora.r", "8",
                                  "--mods", "q_proj", "v_proj", "--maybe", "none", "--steps", "7"])
    assert cfg == Toy(name="run", steps=7, learning_rate=2e-5, flag=True, mode="b", maybe=None,
                      mods=["q_proj", "v_proj"], lora_r=8)
    assert isinstance(cfg.steps, int) and isinstance(cfg.learning_rate, float)
    # positional file (the README's form) == --config file (TRL's form)
    assert ConfigParser(Toy).parse([str(path), "--steps", "2"]) == ConfigParser(Toy).parse(["--config", str(path), "--steps=2"])


def test_unknown_keys_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key\(s\) \[.lerning_rate.\] for Toy; accepted keys"):
        load_config(Toy, write(tmp_path, "lerning_rate: 1\n"))
    with pytest.raises(ConfigError, match=r"command line: unknown override\(s\) \['--nope'\]"):
        load_config(Toy, write(tmp_path, "steps: 1\n"), ["--nope", "1"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Toy, tmp_path / "missing.yaml")


@pytest.mark.parametrize("old", sorted(RENAMED))
def test_old_field_names_name_the_new_one(tmp_path, old):
    new = RENAMED[old]
    value = "0.1" if old == "warmup_ratio" else "2"
    with pytest.raises(ConfigError, match=rf"c.yaml: `{old}` is now `{new}` .*TrainingArguments"):
        load_config(EmbedderConfig, write(tmp_path, f"kind: embedder\n{old}: {value}\n"))
    with pytest.raises(ConfigError, match=rf"command line: `--{old}` is now `--{new}`"):
        load_config(EmbedderConfig, "trainers/configs/minilm-cpu.yaml", [f"--{old}", value])


def test_bad_values_name_the_key(tmp_path):
    path = write(tmp_path, "steps: 1\n")
    with pytest.raises(ConfigError, match="--steps"):
        load_config(Toy, path, ["--steps", "many"])
    with pytest.raises(ConfigError, match="--flag"):
        load_config(Toy, path, ["--flag", "maybe"])
    with pytest.raises(ConfigError, match="--mode"):
        load_config(Toy, path, ["--mode", "c"])
    with pytest.raises(ConfigError, match="expected one argument"):
        load_config(Toy, path, ["--steps"])
    with pytest.raises(ConfigError, match="c.yaml: mode: 'c' is not one of"):
        load_config(Toy, write(tmp_path, "mode: c\n"))
    with pytest.raises(ConfigError, match="minilm-cpu.yaml: temperature must be > 0"):
        load_config(EmbedderConfig, "trainers/configs/minilm-cpu.yaml", ["--temperature", "0"])


def test_help_lists_fields_with_their_help_and_the_yaml_values(capsys):
    with pytest.raises(SystemExit) as done:
        ConfigParser(EmbedderConfig).parse(["trainers/configs/qwen2.5-7b-lora.yaml", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--learning_rate" in out and "peak learning rate of AdamW" in out and "(default: 5e-06)" in out
    assert "--per_device_train_batch_size" in out and "--pooling {mean,cls,last}" in out


def test_shipped_embedder_configs_load():
    e5 = load_config(EmbedderConfig, "trainers/configs/e5-base-rlhn.yaml")
    assert (e5.temperature, e5.group_size, e5.per_device_train_batch_size, e5.learning_rate, e5.num_train_epochs,
            e5.warmup_steps) == (0.01, 8, 128, 2e-5, 5, 0.05)
    assert e5.warmup_for(1000) == 50 and EmbedderConfig(warmup_steps=30).warmup_for(1000) == 30
    assert (e5.query_prefix, e5.passage_prefix, e5.pooling, e5.multi_positive) == ("query: ", "passage: ", "mean", "sample")
    qwen = load_config(EmbedderConfig, "trainers/configs/qwen2.5-7b-lora.yaml", ["--lora.r", "8"])
    assert qwen.lora_r == 8 and qwen.pooling == "last" and "down_proj" in qwen.lora_target_modules
    assert load_config(EmbedderConfig, "trainers/configs/e5-base-clear-cmp.yaml").multi_positive == "cmp"
    assert load_config(EmbedderConfig, "trainers/configs/minilm-cpu.yaml").model == "minilm"


def test_config_checks():
    with pytest.raises(ValueError, match="warmup_steps"):
        EmbedderConfig(warmup_steps=2.5)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        RerankerConfig(gradient_accumulation_steps=0)
    with pytest.raises(ValueError, match="num_train_epochs > 0 or max_steps > 0"):
        RerankerConfig(num_train_epochs=0)
