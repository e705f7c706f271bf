"""Issue 4, done-when: versioned dataset pushes and a model push, read back with stock loaders.

Everything goes through the unmodified publishing code and stock `load_dataset` /
`SentenceTransformer` against the loopback Hub stand-in; the token only ever comes from HF_TOKEN.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pytest
from datasets import load_dataset
from huggingface_hub import HfApi
from huggingface_hub.errors import RepositoryNotFoundError

from builders.output.hub import TagExistsError
from builders.output.publish import push_dataset
from tests.stand_ins.hub_samples import make_dataset_folder, make_model_folder
from tests.stand_ins.hub_server import hub_stand_in
from trainers.publish import push_model

DATASET = "org/rlhn-sample"
MODEL = "org/minilm-hardneg"
SENTENCES = ["what is a false negative?", "hard negatives mined with BM25", "LLM judges relabel passages"]


def _storage_digest(hub) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in hub.storage.files()}


@pytest.fixture
def debug_logs(monkeypatch, caplog):
    """Everything at DEBUG into caplog, huggingface_hub's request dumps (HF_DEBUG) included."""
    import datasets
    import huggingface_hub.constants
    from huggingface_hub.utils import logging as hf_logging

    monkeypatch.setattr(huggingface_hub.constants, "HF_DEBUG", True)
    previous = hf_logging.get_verbosity(), datasets.logging.get_verbosity()
    hf_logging.set_verbosity_debug()
    datasets.logging.set_verbosity_debug()
    caplog.set_level(logging.DEBUG)
    yield caplog
    hf_logging.set_verbosity(previous[0])
    datasets.logging.set_verbosity(previous[1])


def test_dataset_and_model_round_trip(tmp_path, monkeypatch, debug_logs, capsys):
    with hub_stand_in(tmp_path) as hub:
        monkeypatch.setenv("HF_TOKEN", hub.token)

        # v1.0, then v1.1 with other counts and fewer shards for `rlhn`.
        rows_v1 = make_dataset_folder(tmp_path / "build1", {"rlhn": 12, "default": 7}, max_shard_size="4KB")
        rows_v2 = make_dataset_folder(
            tmp_path / "build2", {"rlhn": 9, "default": 10}, source_revision="4567def", max_shard_size="500MB"
        )
        assert len(list((tmp_path / "build1" / "rlhn").glob("*.parquet"))) > 1
        first = push_dataset(tmp_path / "build1", DATASET, version="v1.0", private=True)
        second = push_dataset(tmp_path / "build2", DATASET, version="v1.1", private=True)
        assert first.commit_sha != second.commit_sha
        assert any(p.startswith("rlhn/train-00001-of-") for p in second.deleted)

        for version, rows in (("v1.0", rows_v1), ("v1.1", rows_v2), ("main", rows_v2)):
            for config, expected in rows.items():
                loaded = load_dataset(DATASET, config, split="train", revision=version)
                assert loaded.to_list() == expected, f"{config}@{version} differs from what was pushed"

        api = HfApi()  # token from HF_TOKEN
        refs = api.list_repo_refs(DATASET, repo_type="dataset")
        assert {t.name: t.target_commit for t in refs.tags} == {"v1.0": first.commit_sha, "v1.1": second.commit_sha}
        shards_v11 = [p for p in api.list_repo_files(DATASET, repo_type="dataset", revision="v1.1") if p.startswith("rlhn/")]
        assert shards_v11 == ["rlhn/train-00000-of-00001.parquet"], "stale shards of v1.0 survived in v1.1"

        # The card's changelog lists both versions, newest first, with their counts and sources.
        card_path = api.hf_hub_download(DATASET, "README.md", repo_type="dataset", revision="v1.1")
        card = open(card_path, encoding="utf-8").read()
        changelog = card.split("<!-- hardneg:changelog:start -->")[1].split("<!-- hardneg:changelog:end -->")[0]
        assert changelog.index("### v1.1") < changelog.index("### v1.0")
        assert "`rlhn` 9, `default` 10" in changelog and "`rlhn` 12, `default` 7" in changelog
        assert "`4567def`" in changelog and "`0123abc`" in changelog and "gpt-4o-mini" in changelog
        card_v10 = open(api.hf_hub_download(DATASET, "README.md", repo_type="dataset", revision="v1.0"), encoding="utf-8").read()
        assert "### v1.0" in card_v10 and "### v1.1" not in card_v10

        # Pushing an existing tag fails before uploading anything and changes nothing.
        make_dataset_folder(tmp_path / "build3", {"rlhn": 3, "default": 3})
        before = _storage_digest(hub)
        with pytest.raises(TagExistsError, match=r"dataset repo org/rlhn-sample already has tag v1\.0.*--version v1\.1"):
            push_dataset(tmp_path / "build3", DATASET, version="v1.0", private=True)
        assert _storage_digest(hub) == before
        assert api.list_repo_refs(DATASET, repo_type="dataset") == refs

        # A trained model: weights + card + training config; loads with SentenceTransformer.
        from sentence_transformers import SentenceTransformer

        trained, base = make_model_folder(tmp_path / "model", SENTENCES)
        pushed = trained.encode(SENTENCES, convert_to_numpy=True)
        result = push_model(tmp_path / "model", MODEL, version="v1.0")
        files = api.list_repo_files(MODEL)
        assert {"README.md", "training_config.yaml", "model.safetensors", "modules.json"} <= set(files)
        assert result.version == "v1.0"
        for revision in (None, "v1.0"):
            loaded = SentenceTransformer(MODEL, revision=revision, device="cpu")
            np.testing.assert_allclose(loaded.encode(SENTENCES, convert_to_numpy=True), pushed, rtol=0, atol=1e-6)
        assert not np.allclose(base, pushed, atol=1e-5), "the perturbed model must differ from its base"

        # The private dataset is unreadable without the token.
        monkeypatch.delenv("HF_TOKEN")
        with pytest.raises(RepositoryNotFoundError):
            HfApi().dataset_info(DATASET)
        with pytest.raises(Exception, match="Repository Not Found|cannot be accessed"):
            load_dataset(DATASET, "rlhn", split="train", revision="v1.0", cache_dir=str(tmp_path / "fresh-cache"))

        # The token is nowhere: not in what the stand-in stored (files, cards, configs, commits), not in logs.
        token = hub.token.encode()
        leaked = [str(p) for p in hub.storage.files() if token in p.read_bytes()]
        assert leaked == []
        captured = capsys.readouterr()
        assert "Authorization" in debug_logs.text or "authorization" in debug_logs.text  # the dumps were on
        assert hub.token not in debug_logs.text + captured.out + captured.err
