import json
from pathlib import Path

import datasets
import pyarrow.parquet as pq

from builders.output.writers import (
    configs_yaml_entries,
    judgments_table,
    write_bge_jsonl,
    write_dataset_repo,
    write_tevatron_jsonl,
    write_tevatron_parquet,
)
from builders.sources.readers import SourceConfig, read_source
from builders.sources.validate import validate

ROOT = Path(__file__).resolve().parents[3]


def _rows():
    return list(validate(read_source(SourceConfig(path=str(ROOT / "tests/fixtures/bge/retrieval-msmarco.jsonl"), subset="msmarco_passage")), "fail"))


def test_bge_and_tevatron_files(tmp_path):
    rows = _rows()
    write_bge_jsonl(rows, tmp_path / "bge.jsonl")
    original = [json.loads(x) for x in open(ROOT / "tests/fixtures/bge/retrieval-msmarco.jsonl")]
    assert [json.loads(x) for x in open(tmp_path / "bge.jsonl")] == original
    write_tevatron_jsonl(rows, tmp_path / "t.jsonl")
    first = json.loads(open(tmp_path / "t.jsonl").readline())
    assert set(first) == {"query_id", "query", "positive_passages", "negative_passages", "subset"}
    write_tevatron_parquet(rows, tmp_path / "t.parquet")
    back = list(validate(read_source(SourceConfig(path=str(tmp_path / "t.parquet"))), "fail"))
    assert [r.query_id for r in back] == [r.query_id for r in rows] and back[0].negative_passages == rows[0].negative_passages


def test_dataset_repo_loads_with_stock_datasets(tmp_path):
    rows = _rows()
    configs = {"default": rows, "rlhn": rows[:7], "remove": []}
    table = judgments_table([{"query_id": "q", "stage": "stage1", "better": [1], "worse": [], "status": "ok"}])
    written = write_dataset_repo(tmp_path, configs, {"judgments": table}, rows_per_shard=3)
    assert sorted(written) == ["default", "judgments", "rlhn"]  # empty `remove` is not written
    assert sorted(p.name for p in (tmp_path / "default").iterdir()) == [f"train-0000{i}-of-00004.parquet" for i in range(4)]
    import yaml

    entries = configs_yaml_entries(list(written))
    (tmp_path / "README.md").write_text("---\n" + yaml.safe_dump({"configs": entries}) + "---\n")
    ds = datasets.load_dataset(str(tmp_path), "rlhn", split="train")
    assert ds.num_rows == 7 and ds[0]["query_id"] == rows[0].query_id
    assert ds[0]["negative_passages"][0] == rows[0].negative_passages[0].to_dict()
    assert ds[0]["negative_scores"][0] == rows[0].negative_passages[0].score
    assert datasets.load_dataset(str(tmp_path), "default", split="train").num_rows == 10
    assert datasets.load_dataset(str(tmp_path), "judgments", split="train")[0]["better"] == [1]
    # rewriting without a config removes its folder; same rows -> same bytes
    before = (tmp_path / "rlhn" / "train-00000-of-00003.parquet").read_bytes()
    write_dataset_repo(tmp_path, {"default": rows, "rlhn": rows[:7]}, rows_per_shard=3)
    assert not (tmp_path / "judgments").exists()
    assert (tmp_path / "rlhn" / "train-00000-of-00003.parquet").read_bytes() == before
    assert pq.read_table(tmp_path / "rlhn" / "train-00002-of-00003.parquet").num_rows == 1


def _reference_table(rows, with_scores, with_prompt):
    """What ``tevatron_table`` must equal: ``from_pylist`` over ``to_tevatron`` dicts."""
    import pyarrow as pa

    from builders.output.writers import tevatron_schema

    dicts = []
    for r in rows:
        d = r.to_tevatron(with_scores=with_scores)
        if with_prompt:
            d["prompt"] = r.prompt
        dicts.append(d)
    return pa.Table.from_pylist(dicts, schema=tevatron_schema(with_scores, with_prompt))


def test_tevatron_table_equals_the_row_by_row_table():
    from builders.output.writers import tevatron_table
    from builders.rows import Passage, QueryRow

    rows = [
        QueryRow.from_query("q one", [Passage("d1", "pos text", "A title", 0.9)], [Passage("d2", "neg", "", None), Passage("d3", "née ünïcode", "t", 0.1)], "nq"),
        QueryRow.from_query("q two (no negatives)", [Passage("d4", "only positive", "", 0.5)], [], "nq"),
        QueryRow("x", "q three", (Passage("d5", "", "", 0.2),), (Passage("d6", "n", "", None),), "fiqa", prompt="Represent this"),
    ]
    for with_scores in (False, True):
        for with_prompt in (False, True):
            got = tevatron_table(rows, with_scores, with_prompt)
            want = _reference_table(rows, with_scores, with_prompt)
            assert got.schema == want.schema and got.equals(want), (with_scores, with_prompt)
    assert tevatron_table([], True, True).equals(_reference_table([], True, True))
    # the defaults: scores when every positive has one, a prompt column when any row has a prompt
    assert tevatron_table(rows).equals(_reference_table(rows, True, True))
    unscored = [rows[0], QueryRow.from_query("q four", [Passage("d7", "p")], [], "nq")]
    assert tevatron_table(unscored).equals(_reference_table(unscored, False, False))
