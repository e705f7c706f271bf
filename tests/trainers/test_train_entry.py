"""trainers/train.py guards and the shared training_config.yaml writer."""

from dataclasses import dataclass

import pytest
import yaml

from trainers.config_io import ConfigError, write_training_config
from trainers.embedder.config import EmbedderConfig
from trainers.reranker.config import RerankerConfig
from trainers.train import check_launch, parse_config


def test_multi_process_without_cuda_or_cpu_mode_is_refused():
    with pytest.raises(ConfigError, match=r"2 processes.*no CUDA.*--cpu.*ACCELERATE_USE_CPU=1"):
        check_launch({"WORLD_SIZE": "2"}, cuda_available=False)
    check_launch({"WORLD_SIZE": "2", "ACCELERATE_USE_CPU": "true"}, cuda_available=False)  # gloo DDP
    check_launch({"WORLD_SIZE": "2"}, cuda_available=True)
    check_launch({}, cuda_available=False)  # one process: nothing to get wrong


def test_push_aliases():
    cfg = parse_config(["trainers/configs/minilm-cpu.yaml", "--push", "org/m", "--version=v1.0"])
    assert (cfg.push_to, cfg.push_version) == ("org/m", "v1.0")


@pytest.mark.parametrize(("config", "cls"), [("minilm-cpu", EmbedderConfig), ("minilm-cross-encoder-cpu", RerankerConfig),
                                             ("qwen2.5-3b-llm-reranker", RerankerConfig)])
def test_kind_picks_the_config_class(config, cls):
    cfg = parse_config(["--config", f"trainers/configs/{config}.yaml", "--learning_rate", "5e-6"])
    assert type(cfg) is cls and cfg.learning_rate == 5e-6


def test_kind_errors(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("model: minilm\n")
    with pytest.raises(ConfigError, match=r"c.yaml: `kind` must be one of \['embedder', 'cross_encoder', 'llm_reranker'\]"):
        parse_config([str(bad)])
    with pytest.raises(ConfigError, match="no config"):
        parse_config(["--learning_rate", "1"])


@pytest.mark.parametrize("cfg", [EmbedderConfig(push_to="org/m"), RerankerConfig()], ids=["embedder", "reranker"])
def test_training_config_yaml_is_the_resolved_config(tmp_path, cfg):
    path = write_training_config(cfg, tmp_path / "model")
    assert path.name == "training_config.yaml"
    assert type(cfg)(**yaml.safe_load(path.read_text())) == cfg


def test_training_config_refuses_a_credential_field(tmp_path):
    @dataclass
    class Leaky:
        hf_token: str = "hf_secret"

    with pytest.raises(ConfigError, match="hf_token"):
        write_training_config(Leaky(), tmp_path)
    assert not (tmp_path / "training_config.yaml").exists()
