import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from builders.sources.readers import (
    RLHN_SOURCES,
    SourceConfig,
    expand_names,
    list_hub_sources,
    read_source,
    subset_from_filename,
)
from builders.sources.validate import validate

ROOT = Path(__file__).resolve().parents[3]
BGE = ROOT / "tests" / "fixtures" / "bge"
RLHN = ROOT / "tests" / "fixtures" / "rlhn"


def _bge_rows(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_bge_jsonl_rows_round_trip():
    path = BGE / "retrieval-msmarco.jsonl"
    rows = list(validate(read_source(SourceConfig(path=str(path), subset="msmarco_passage")), "fail"))
    assert len(rows) == 10 and {r.subset for r in rows} == {"msmarco_passage"}
    assert [r.to_bge() for r in rows] == _bge_rows(path)


def test_real_nq_row_with_a_repeated_negative_is_reported():
    from builders.sources.validate import ValidationReport

    report = ValidationReport()
    rows = list(validate(read_source(SourceConfig(path=str(BGE / "retrieval-nq.jsonl"), subset="nq")), "skip", report))
    assert len(rows) == 9 and report.rows_skipped == 1
    assert [(p.line, p.kind) for p in report.problems] == [(1, "duplicate_passage"), (1, "duplicate_passage")]


def test_tevatron_fixture_keeps_docids_and_subset():
    rows = list(validate(read_source(SourceConfig(path=str(RLHN / "fiqa.stage_1.gpt-4o-mini.jsonl"))), "fail"))
    raw = [json.loads(line) for line in open(RLHN / "fiqa.stage_1.gpt-4o-mini.jsonl")]
    assert len(rows) == 25 and rows[0].subset == "fiqa"
    assert [p.docid for p in rows[3].negative_passages] == raw[3]["negative_passage_ids"]
    assert rows[3].query_id == raw[3]["query_id"]


def test_limit_and_folder_and_parquet(tmp_path):
    rows = _bge_rows(BGE / "retrieval-msmarco.jsonl")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "msmarco.parquet")
    got = list(validate(read_source(SourceConfig(path=str(tmp_path), limit=3)), "fail"))
    assert [r.query for r in got] == [r["query"] for r in rows[:3]]
    assert got[0].subset == "msmarco" and got[0].negative_passages[0].score == rows[0]["neg_scores"][0]


def _hub_layout(tmp_path):
    """A local folder laid out like cfli/bge-full-data: data/<source>-NNNNN-of-NNNNN.parquet."""
    data = tmp_path / "bge-full-data" / "data"
    data.mkdir(parents=True)
    nq = _bge_rows(BGE / "retrieval-nq.jsonl")
    ms = _bge_rows(BGE / "retrieval-msmarco.jsonl")
    pq.write_table(pa.Table.from_pylist(nq[:6]), data / "nq-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(nq[6:]), data / "nq-00001-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(ms), data / "msmarco_passage-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(nq[:2]), data / "eli5-00000-of-00001.parquet")
    return tmp_path / "bge-full-data", nq, ms


def test_hub_reader_streams_sources_with_stock_datasets(tmp_path):
    folder, nq, ms = _hub_layout(tmp_path)
    assert list_hub_sources(str(folder)) == ["eli5", "msmarco_passage", "nq"]
    cfg = SourceConfig(hub=str(folder), names=["nq", "msmarco_passage"], streaming=True)
    recs = list(read_source(cfg))
    assert [r.subset for r in recs] == ["nq"] * 10 + ["msmarco_passage"] * 10
    assert recs[0].origin == f"{folder}:nq" and recs[10].line == 1
    rows = list(validate(recs, "repair"))
    assert sorted(r.query for r in rows if r.subset == "nq") == sorted(r["query"] for r in nq)
    limited = list(read_source(SourceConfig(hub=str(folder), names=["msmarco_passage"], limit=4)))
    assert len(limited) == 4 and limited[-1].line == 4


def test_presets():
    assert expand_names(["rlhn"]) == list(RLHN_SOURCES) and len(RLHN_SOURCES) == 7
    assert expand_names(["fiqa", "rlhn"])[0] == "fiqa" and len(expand_names(["fiqa", "rlhn"])) == 7
    assert set(RLHN_SOURCES) <= set(expand_names(["all"]))
    assert subset_from_filename("data/fiqa-00000-of-00003.parquet") == "fiqa"
    assert subset_from_filename("msmarco_passage.stage_2.gpt-4o.jsonl") == "msmarco_passage"
