"""The generated model card: metadata, data provenance, loss, hyperparameters, metrics, citations, usage."""

import pytest
import yaml

from cards.model_card import METHOD_CITATIONS, ModelCardInfo, detect_methods, render_model_card, write_model_card


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


def embedder_info(**kw) -> ModelCardInfo:
    base = dict(
        kind="embedder", base_model="intfloat/e5-base-unsupervised", dataset="rlhn/rlhn-680K",
        dataset_config="default", dataset_revision="v1.0", loss="InfoNCE",
        loss_config={"temperature": 0.01, "gather_across_processes": True},
        loss_citation="@inproceedings{oord2018cpc, title={CPC}}",
        hyperparameters={"learning_rate": 2e-5, "per_device_train_batch_size": 128, "group_size": 8, "push_to": None},
        hardware="8 x NVIDIA H100", train_seconds=5400.0,
        metrics={"ndcg@10": 0.51234, "mrr@10": 0.7, "recall@100": 0.9},
        eval_dataset="beir/scifact",
    )
    return ModelCardInfo(**{**base, **kw})


def test_embedder_card_has_every_section(tmp_path):
    path = write_model_card(tmp_path / "model", embedder_info(model_id="org/e5-rlhn"))
    card = path.read_text()
    meta = front_matter(card)
    assert meta["base_model"] == "intfloat/e5-base-unsupervised"
    assert meta["datasets"] == ["rlhn/rlhn-680K"]
    assert meta["library_name"] == "sentence-transformers"
    assert meta["pipeline_tag"] == "sentence-similarity"
    assert meta["license"] == "apache-2.0" and "rlhn" in meta["tags"]
    assert "Dataset: `rlhn/rlhn-680K`" in card and "Config: `default`" in card and "Revision: `v1.0`" in card
    assert "| temperature | `0.01` |" in card  # loss parameters
    assert "| learning_rate | `2e-05` |" in card and "push_to" not in card  # unset values are left out
    assert "8 x NVIDIA H100" in card and "90.0 min" in card
    assert "| this model | 0.5123 | 0.7000 | 0.9000 |" in card
    assert "| system | ndcg@10 | mrr@10 | recall@100 |" in card
    assert 'SentenceTransformer("org/e5-rlhn")' in card
    assert "oord2018cpc" in card and "thakur2025rlhn" in card
    for framework in ("torch", "transformers", "sentence-transformers"):
        assert f"- {framework}: " in card


def test_reranker_card_two_systems_and_crossencoder_usage(tmp_path):
    info = embedder_info(kind="cross_encoder", base_model="minilm", loss="ListwiseCE",
                         metrics={"first_stage": {"ndcg@10": 0.5, "recall@10": 0.3},
                                  "reranked": {"ndcg@10": 0.6, "recall@10": 0.35}})
    card = render_model_card(info, tmp_path / "ce")
    meta = front_matter(card)
    assert meta["pipeline_tag"] == "text-ranking"
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"  # bundled alias resolved
    assert "| first_stage | 0.5000 | 0.3000 |" in card and "| reranked | 0.6000 | 0.3500 |" in card
    assert f'CrossEncoder("{tmp_path / "ce"}")' in card


def test_llm_reranker_card_states_the_head_contract():
    card = render_model_card(embedder_info(kind="llm_reranker", head="causal_yes_no", loss="ListwiseCE",
                                           hyperparameters={"lora_r": 16}))
    assert front_matter(card)["library_name"] == "transformers"
    assert "peft" in front_matter(card)["tags"]
    assert "reranker_head.json" in card and "logit(yes) - logit(no)" in card and "load_reranker" in card


@pytest.mark.parametrize(
    ("dataset", "config", "expected"),
    [
        ("rlhn/rlhn-680K", None, ["RLHN"]),
        ("org/fiqa-refined", "hn_remove", ["RLHN"]),
        ("org/data", "arhn_rf", ["ARHN"]),
        ("org/data", "clear", ["CLEAR"]),
        ("org/data", "percpos", ["TopK-PercPos"]),
        ("cfli/bge-full-data", "default", []),
    ],
)
def test_methods_read_from_dataset_names(dataset, config, expected):
    assert detect_methods(dataset, config) == expected


def test_cited_methods_and_local_paths_not_in_metadata(tmp_path):
    data_dir = tmp_path / "refined"
    data_dir.mkdir()
    card = render_model_card(embedder_info(dataset=str(data_dir), dataset_config="clear", base_model=str(tmp_path)))
    meta = front_matter(card)
    assert "datasets" not in meta and "base_model" not in meta  # local folders are not Hub ids
    assert METHOD_CITATIONS["CLEAR"] in card and "thakur2025rlhn" not in card
    with pytest.raises(ValueError, match="no citation for method"):
        render_model_card(embedder_info(methods=["SomethingElse"]))
    no_eval = render_model_card(embedder_info(metrics={}))
    assert "Not evaluated during training" in no_eval


def test_see_also_links_are_listed_only_when_given():
    assert "## See also" not in render_model_card(embedder_info())
    card = render_model_card(embedder_info(see_also=["experiments/negatives/scifact/results.md"]))
    assert "## See also\n\n- experiments/negatives/scifact/results.md\n" in card
