import json

import pytest

from builders.rows import md5
from builders.sources.readers import read_files
from builders.sources.validate import InvalidRowError, ValidationReport, validate

GOOD = {"query": "what is a kiwi", "pos": ["A kiwi is a bird."], "neg": ["A car.", "A boat."], "prompt": "p", "type": "normal"}


def _write(tmp_path, lines):
    p = tmp_path / "mixed.jsonl"
    p.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return p


BAD_LINES = [
    GOOD,  # 1
    "{not json",  # 2
    {"pos": ["x"], "neg": []},  # 3 missing query
    {"query": "q3", "pos": [], "neg": ["a"]},  # 4 no positive
    {"query": "q4", "pos": ["a"], "neg": ["b", "b"]},  # 5 duplicate negative
    {"query": "q5", "pos": ["a"], "neg": ["a", "c"]},  # 6 positive among negatives
    {"query": "q6", "pos": ["a"], "neg": [3]},  # 7 non-string
    {"query": "q7", "pos": ["a"], "neg": ["  "]},  # 8 empty passage
    {"query": "q8", "pos": ["a"], "neg": ["b"], "pos_scores": [1.0], "neg_scores": [1.0, 2.0]},  # 9 bad scores
]


def test_skip_reports_every_bad_row_with_file_line_and_query_id(tmp_path):
    path = _write(tmp_path, BAD_LINES)
    report = ValidationReport()
    rows = list(validate(read_files(str(path)), "skip", report))
    assert [r.query for r in rows] == ["what is a kiwi"]
    assert (report.rows_read, report.rows_kept, report.rows_skipped) == (9, 1, 8)
    by_line = {p.line: p for p in report.problems}
    assert by_line[2].kind == "malformed_json" and by_line[2].query_id is None
    assert by_line[3].kind == "missing_query"
    assert by_line[4].kind == "no_positive" and by_line[4].query_id == md5("q3")
    assert by_line[5].kind == "duplicate_passage" and by_line[5].query_id == md5("q4")
    assert by_line[6].kind == "positive_in_negatives"
    assert by_line[7].kind == "non_string_text"
    assert by_line[8].kind == "empty_passage"
    assert by_line[9].kind == "bad_scores"
    assert all(p.origin == str(path) and p.action == "skipped" for p in report.problems)
    d = report.to_dict()
    assert d["problem_counts"]["duplicate_passage:skipped"] == 1 and sum(d["problem_counts"].values()) == 8


def test_fail_names_file_line_query_id_and_fix(tmp_path):
    path = _write(tmp_path, [GOOD, {"query": "q4", "pos": ["a"], "neg": ["b", "b"]}])
    with pytest.raises(InvalidRowError) as e:
        list(validate(read_files(str(path)), "fail"))
    msg = str(e.value)
    assert f"{path}:2" in msg and md5("q4") in msg and "duplicate_passage" in msg and "validation.policy=skip" in msg


def test_repair_fixes_duplicates_and_keeps_count(tmp_path):
    path = _write(tmp_path, BAD_LINES)
    report = ValidationReport()
    rows = {r.query: r for r in validate(read_files(str(path)), "repair", report)}
    assert [p.text for p in rows["q4"].negative_passages] == ["b"]
    assert [p.text for p in rows["q5"].negative_passages] == ["c"]
    assert rows["q7"].negative_passages == ()
    assert rows["q8"].positive_passages[0].score is None
    assert report.rows_repaired == 4 and report.rows_kept == 5
    assert {p.kind for p in report.problems if p.action == "skipped"} == {"malformed_json", "missing_query", "no_positive", "non_string_text"}


def test_good_bge_row_keeps_prompt_type_and_scores(tmp_path):
    row = dict(GOOD, pos_scores=[0.9], neg_scores=[0.1, 0.2])
    rows = list(validate(read_files(str(_write(tmp_path, [row]))), "fail"))
    r = rows[0]
    assert r.query_id == md5(GOOD["query"]) and r.prompt == "p" and r.type == "normal" and r.subset == "mixed"
    assert [p.score for p in r.negative_passages] == [0.1, 0.2]
    assert r.to_bge() == row


def test_other_source_columns_travel_with_the_row(tmp_path):
    """An ``answers`` column (CLEAR's dataset answer) and the like reach ``QueryRow.extra`` in both layouts."""
    from builders.methods.clear.answers import dataset_answer
    from builders.methods.clear.settings import ClearSettings

    bge = dict(GOOD, answers=["a bird"], category="qa")
    tevatron = {"query_id": "t1", "query": "what is a kiwi", "answer": "a bird", "subset": "nq",
                "positive_passages": [{"docid": "p", "title": "", "text": "A kiwi is a bird."}],
                "negative_passages": [{"docid": "n", "title": "", "text": "A car."}]}
    (row,) = validate(read_files(str(_write(tmp_path, [bge]))), "fail")
    assert row.extra == {"answers": ["a bird"], "category": "qa"}
    path = tmp_path / "tev.jsonl"
    path.write_text(json.dumps(tevatron) + "\n")
    (tev,) = validate(read_files(str(path), layout="tevatron"), "fail")
    assert tev.extra == {"answer": "a bird"}
    fields = ClearSettings().answer_fields
    assert dataset_answer(row, fields) == dataset_answer(tev, fields) == "a bird"
