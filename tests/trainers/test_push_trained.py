"""A model trained by ``trainers/train.py`` goes to the Hub stand-in and comes back identical.

The MiniLM CPU recipe trains 2 steps through the train entry point with ``--push org/name
--version v1.0`` (the CLI path, which calls ``trainers.publish.push_model``); the folder is then
pushed again with ``push_model`` directly, as ``python -m trainers.publish`` does. The repos load
with stock ``SentenceTransformer(repo)`` (at ``main`` and ``revision="v1.0"`` for the CLI one, at the
tag for the direct one) with the local model's embeddings, and the token (only ever in HF_TOKEN) is in no stored file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from huggingface_hub import HfApi
from sentence_transformers import SentenceTransformer

from tests.stand_ins.hub_server import hub_stand_in
from tests.trainers.refined_data import fixture_rows, write_refined
from trainers.publish import push_model
from trainers.train import run as train_run

RECIPE = str(Path(__file__).resolve().parents[2] / "trainers" / "configs" / "minilm-cpu.yaml")
SENTENCES = ["how are dividends taxed", "Form 1099-B is furnished by brokerages to recipients."]


def test_trained_model_pushes_with_card_and_config_and_reloads_at_version(tmp_path, monkeypatch):
    data = write_refined(tmp_path / "data", {"rlhn": fixture_rows(6, passage_chars=200)})
    with hub_stand_in(tmp_path / "hub") as hub:
        monkeypatch.setenv("HF_TOKEN", hub.token)
        model_dir = train_run([
            RECIPE, "--dataset", str(data), "--dataset_config", "rlhn",
            "--output_dir", str(tmp_path / "run"), "--eval_beir_dir", "none", "--max_steps", "2",
            "--per_device_train_batch_size", "2", "--group_size", "2", "--query_max_len", "16", "--passage_max_len", "32",
            "--push", "org/minilm-cli", "--version", "v1.0",
        ])
        local = SentenceTransformer(str(model_dir), device="cpu").encode(SENTENCES, convert_to_numpy=True)
        config = yaml.safe_load((model_dir / "training_config.yaml").read_text())
        assert config["max_steps"] == 2 and config["push_to"] == "org/minilm-cli" and config["push_version"] == "v1.0"

        direct = push_model(model_dir, "org/minilm-direct", version="v1.0")
        assert direct.version == "v1.0"

        api = HfApi()
        for repo in ("org/minilm-cli", "org/minilm-direct"):
            assert "v1.0" in {t.name for t in api.list_repo_refs(repo).tags}
            files = set(api.list_repo_files(repo, revision="v1.0"))
            assert {"README.md", "training_config.yaml", "model.safetensors", "modules.json"} <= files
            # loading is what takes time here: both revisions for the CLI repo, the tag for the direct one
            for revision in ((None, "v1.0") if repo == "org/minilm-cli" else ("v1.0",)):
                loaded = SentenceTransformer(repo, revision=revision, device="cpu")
                np.testing.assert_allclose(loaded.encode(SENTENCES, convert_to_numpy=True), local, rtol=0, atol=1e-6)
            pushed_config = yaml.safe_load(open(api.hf_hub_download(repo, "training_config.yaml", revision="v1.0")))
            assert pushed_config == config
            card = open(api.hf_hub_download(repo, "README.md", revision="v1.0"), encoding="utf-8").read()
            assert "InfoNCE" in card and hub.token not in card

        token = hub.token.encode()
        stored = list(hub.storage.files())
        assert stored and [str(p) for p in stored if token in p.read_bytes()] == []
        assert not any(token in p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file())
