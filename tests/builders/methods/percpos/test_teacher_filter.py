"""TopK-PercPos: exact drops/keeps on rows with known teacher scores, and the MiniLM teacher."""

import pytest
import torch

from builders.methods.percpos import teacher_filter as percpos
from builders.methods.percpos.teacher_filter import PercPosSettings, cutoff
from builders.rows import Passage, QueryRow


def row(query, pos, neg, subset="s"):
    """pos/neg: lists of (text, score)."""
    return QueryRow.from_query(
        query,
        [Passage.from_text(t, score=sc) for t, sc in pos],
        [Passage.from_text(t, score=sc) for t, sc in neg],
        subset,
    )


def texts(r):
    return [p.text for p in r.negative_passages]


def test_row_scores_drop_above_95_percent_and_keep_top_k():
    r = row("q1", [("P", 0.80)], [("a", 0.79), ("b", 0.761), ("c", 0.76), ("d", 0.50), ("e", 0.70), ("f", 0.10)])
    # cut-off 0.95 * 0.80 = 0.76: a and b are above it, c (equal) stays
    res = percpos.run([r], PercPosSettings(teacher="row-scores", top_k=3))
    out = res.configs["percpos"][0]
    assert texts(out) == ["c", "e", "d"]  # top-3 of the rest, highest first
    assert out.positive_passages == r.positive_passages
    decisions = {j["docid"]: j["decision"] for j in res.judgments}
    by_text = {p.text: decisions[p.docid] for p in r.negative_passages}
    assert by_text == {"a": "removed_above_margin", "b": "removed_above_margin", "c": "kept", "d": "kept",
                       "e": "kept", "f": "beyond_top_k"}
    st = res.stats["s"]
    assert (st["rows_in"], st["negatives_in"], st["negatives_removed"], st["negatives_beyond_top_k"], st["negatives_out"]) == (1, 6, 2, 1, 3)


def test_margin_is_a_setting_and_top_k_none_keeps_all():
    r = row("q1", [("P", 1.0)], [("a", 0.85), ("b", 0.95), ("c", 0.2)])
    out = percpos.run([r], PercPosSettings(teacher="row-scores", margin=0.8)).configs["percpos"][0]
    assert texts(out) == ["c"]  # 0.85 and 0.95 are above 0.8
    out = percpos.run([r], PercPosSettings(teacher="row-scores", margin=1.0)).configs["percpos"][0]
    assert texts(out) == ["b", "a", "c"]  # nothing above the positive; sorted by score


def test_several_positives_use_the_lowest_and_negative_scores_stay_sane():
    r = row("q", [("P1", 0.9), ("P2", 0.6)], [("a", 0.58), ("b", 0.56)])
    out = percpos.run([r], PercPosSettings(teacher="row-scores")).configs["percpos"][0]
    assert texts(out) == ["b"]  # cut-off 0.57 from the weaker positive
    assert cutoff(-0.2, 0.95) == pytest.approx(-0.21)  # just below a negative positive score
    r = row("q", [("P", -0.2)], [("a", -0.205), ("b", -0.3)])
    assert texts(percpos.run([r], PercPosSettings(teacher="row-scores")).configs["percpos"][0]) == ["b"]


def test_rows_without_positive_or_negatives_left_are_kept_and_counted():
    r1 = row("q1", [], [("a", 0.5)])
    r2 = row("q2", [("P", 0.5)], [("a", 0.499)], subset="t")
    res = percpos.run([r1, r2], PercPosSettings(teacher="row-scores"))
    assert res.configs["percpos"][0] == r1
    assert res.configs["percpos"][1].negative_passages == ()
    assert res.stats["s"]["rows_without_positive"] == 1
    assert res.stats["t"]["rows_without_negatives_left"] == 1


def test_missing_row_scores_fail_with_query_id():
    r = row("q1", [("P", None)], [("a", 0.5)])
    with pytest.raises(ValueError, match=f"query_id={r.query_id}.*bi-encoder"):
        percpos.run([r], PercPosSettings(teacher="row-scores"))


def test_settings_validation():
    with pytest.raises(ValueError, match="margin"):
        PercPosSettings(margin=0)
    with pytest.raises(ValueError, match="needs `model`"):
        PercPosSettings(teacher="cross-encoder")


@pytest.fixture(scope="module")
def minilm():
    from builders.embedding import load_embedder

    return load_embedder(device="cpu")


def test_minilm_teacher_drops_the_paraphrase_of_the_positive(minilm):
    positive = "The Eiffel Tower is 330 metres tall and stands in Paris."
    paraphrase = "Standing in Paris, the Eiffel Tower is 330 metres tall."
    related = "The Louvre in Paris is the world's most visited art museum."
    unrelated = "Photosynthesis converts light energy into chemical energy in plants."
    r = row("How tall is the Eiffel Tower?", [(positive, None)], [(unrelated, None), (paraphrase, None), (related, None)])
    r2 = row("What do plants do with light?", [(unrelated, None)], [(positive, None)])  # shares a passage with r
    res = percpos.run([r, r2], PercPosSettings(top_k=1), teacher=minilm)
    out = res.configs["percpos"][0]
    assert texts(out) == [related]  # paraphrase above 95 % of the positive; top-1 of the rest
    # teacher scores equal a direct cosine computation
    emb = minilm.encode([r.query, positive, paraphrase, related, unrelated], normalize_embeddings=True, convert_to_tensor=True)
    direct = {t: float(emb[0] @ emb[i]) for i, t in enumerate([positive, paraphrase, related, unrelated], start=1)}
    got = {p.text: j["teacher_score"] for j in res.judgments if j["query_id"] == r.query_id for p in r.negative_passages if p.docid == j["docid"]}
    for t, score in got.items():
        assert score == pytest.approx(direct[t], abs=1e-5)
    assert direct[paraphrase] > 0.95 * direct[positive] >= direct[related] > direct[unrelated]
    assert res.configs["percpos"][1].negative_passages == r2.negative_passages  # unrelated positive: kept


def test_cross_encoder_teacher_path():
    from sentence_transformers import CrossEncoder

    from builders.embedding import default_model_path

    torch.manual_seed(0)
    ce = CrossEncoder(default_model_path(), num_labels=1, device="cpu")  # random head: only the plumbing is tested
    r = row("q", [("positive passage", None)], [("negative one", None), ("negative two", None)])
    res = percpos.run([r], PercPosSettings(teacher="cross-encoder", model="random-head", margin=1.0), teacher=ce)
    direct = ce.predict([("q", "positive passage"), ("q", "negative one"), ("q", "negative two")], activation_fn=torch.nn.Sigmoid())
    scores = {j["docid"]: j["teacher_score"] for j in res.judgments}
    assert scores[r.negative_passages[0].docid] == pytest.approx(float(direct[1]), abs=1e-5)
    assert res.judgments[0]["positive_score"] == pytest.approx(float(direct[0]), abs=1e-5)
    kept = [p for p in r.negative_passages if float(direct[1 + r.negative_passages.index(p)]) <= float(direct[0])]
    assert set(texts(res.configs["percpos"][0])) == {p.text for p in kept}



def test_card_section_shows_percpos_counters_per_subset():
    from cards.dataset_card import DatasetCardInfo, render_dataset_card

    r = row("q1", [("P", 0.80)], [("a", 0.79), ("c", 0.5)], subset="fiqa")
    res = percpos.run([r], PercPosSettings(teacher="row-scores"))
    assert res.stats["fiqa"]["percpos:negatives"] == 1 and res.stats["fiqa"]["percpos:rows"] == 1
    card = render_dataset_card(DatasetCardInfo(pretty_name="t", license="mit", configs=[], results=[res], command="x"))
    assert "percpos" in card and "negatives_removed" in card and "fiqa" in card
