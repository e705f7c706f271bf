import pytest
import torch
from transformers import AutoTokenizer

from tests.trainers.refined_data import fixture_rows, multi_positive_rows, write_refined
from trainers.data import DataError, EmbedderCollator, TrainGroups, build_group, load_rows
from trainers.embedder.model import resolve_model_path


@pytest.fixture(scope="module")
def refined(tmp_path_factory):
    rows = fixture_rows(8)
    rows[3] = dict(rows[3], negative_passages=[])  # hn_remove emptied this row
    rows[4] = dict(rows[4], negative_passages=rows[4]["negative_passages"][:2])  # fewer than k
    out = tmp_path_factory.mktemp("refined")
    return write_refined(out, {"rlhn": rows, "multi": multi_positive_rows(6)})


def test_load_folder_file_and_errors(refined, tmp_path):
    ds = load_rows(str(refined), "rlhn")
    assert len(ds) == 8 and ds[0]["query"]
    assert len(load_rows(str(refined / "rlhn" / "train-00000-of-00001.parquet"), max_rows=3)) == 3
    bad = fixture_rows(3)
    bad[1] = dict(bad[1], positive_passages=[])
    write_refined(tmp_path / "bad", {"rlhn": bad})
    with pytest.raises(DataError, match=f"no positive passage.*{bad[1]['query_id']}"):
        load_rows(str(tmp_path / "bad"), "rlhn")
    with pytest.raises(DataError, match="positive_scores"):
        load_rows(str(refined), "rlhn", need_scores=True)
    with pytest.raises(DataError, match="unsupported file type"):
        (tmp_path / "x.csv").write_text("a\n")
        load_rows(str(tmp_path / "x.csv"))


def test_positive_rotates_by_epoch_and_negatives_are_deterministic(refined):
    row = load_rows(str(refined), "multi")[1]  # 3 positives
    seen = {build_group(row, 1, epoch, 7, 3).positives[0] for epoch in range(3)}
    assert len(seen) == 3  # every positive once in three epochs
    a, b = build_group(row, 1, 0, 7, 3), build_group(row, 1, 0, 7, 3)
    assert a == b
    assert build_group(row, 1, 1, 7, 3).negatives != a.negatives or len(row["negative_passages"]) <= 3
    assert len(set(a.negatives)) == len(a.negatives) == 3


def test_short_and_empty_negative_rows(refined):
    ds = load_rows(str(refined), "rlhn")
    assert build_group(ds[3], 3, 0, 1, 3).negatives == []
    short = build_group(ds[4], 4, 0, 1, 3)
    assert len(short.negatives) == 2 and len(set(short.negatives)) == 2


def test_amp_cmp_groups_and_collator(refined):
    ds = load_rows(str(refined), "multi", need_scores=True)
    cmp_group = build_group(ds[1], 1, 0, 0, 2, mode="cmp", max_positives=2)
    assert cmp_group.positive_scores == [1.0, 0.5]  # top-2 by confidence
    groups = TrainGroups(ds, num_negatives=2, mode="amp", max_positives=3, seed=0)
    tok = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    collate = EmbedderCollator(tok, 16, 32, num_negatives=2, max_positives=3, query_prefix="query: ")
    batch = collate([groups[0], groups[1]])
    assert batch["pos_mask"].sum(1).tolist() == [len(groups[0].positives), len(groups[1].positives)]
    assert batch["slot_mask"].shape == (2 * 5,)
    assert batch["passage"]["input_ids"].shape[0] == int(batch["slot_mask"].sum())
    assert tok.decode(batch["query"]["input_ids"][0]).startswith("[CLS] query :")
    order0 = list(groups.order)
    groups.set_epoch(1)
    assert groups.order != order0 and sorted(groups.order) == list(range(len(ds)))


def test_collator_slot_layout_for_empty_negatives(refined):
    ds = load_rows(str(refined), "rlhn")
    tok = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    collate = EmbedderCollator(tok, 16, 32, num_negatives=3)
    batch = collate([build_group(ds[i], i, 0, 0, 3) for i in (3, 4)])
    assert batch["slot_mask"].tolist() == [True, False, False, False, True, True, True, False]
    assert batch["slot_index"].tolist() == [0, 4, 5, 6]
    assert torch.equal(batch["pos_mask"], torch.tensor([[True], [True]]))


def test_row_prompt_is_prepended_after_the_prefix_only_when_asked(refined):
    row = dict(load_rows(str(refined), "rlhn")[0], prompt="Represent this question: ")
    group = build_group(row, 0, 0, 0, 1)
    tok = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    with_prompt = EmbedderCollator(tok, 16, 32, 1, query_prefix="q: ", use_row_prompt=True)
    without = EmbedderCollator(tok, 16, 32, 1, query_prefix="q: ")
    assert with_prompt.query_text(group) == "q: Represent this question: " + row["query"]
    assert without.query_text(group) == "q: " + row["query"]
