"""κ checked against a hand computation; decisions read from a Hub-layout build folder."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from builders.agreement import Confusion, main, read_human_labels


def test_kappa_hand_computed():
    # 20 pairs: both 1: 4, human 1 judge 0: 2, human 0 judge 1: 3, both 0: 11
    # p_o = 15/20 = 0.75; human_1 = 6/20 = 0.3; judge_1 = 7/20 = 0.35
    # p_e = 0.3*0.35 + 0.7*0.65 = 0.105 + 0.455 = 0.56; kappa = (0.75-0.56)/0.44 = 0.431818...
    c = Confusion(both_1=4, human_1_judge_0=2, human_0_judge_1=3, both_0=11)
    assert c.kappa == pytest.approx(0.19 / 0.44)
    assert c.kappa == pytest.approx(0.4318181818)
    assert c.observed_agreement == pytest.approx(0.75)


def test_kappa_undefined_and_perfect():
    assert Confusion().kappa is None
    assert Confusion(both_0=5).kappa is None  # p_e = 1
    assert Confusion(both_1=3, both_0=2).kappa == pytest.approx(1.0)
    assert Confusion(human_1_judge_0=2, human_0_judge_1=2).kappa == pytest.approx(-1.0)


def _passages(ids):
    return [{"docid": d, "title": "", "text": f"text {d}"} for d in ids]


def _write(build, config, rows):
    (build / config).mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), build / config / "train-00000-of-00001.parquet")


@pytest.fixture
def build(tmp_path):
    b = tmp_path / "build"
    default = [
        {"query_id": "q1", "query": "a", "positive_passages": _passages(["p1"]), "negative_passages": _passages(["n1", "n2", "n3"]), "subset": "nq"},
        {"query_id": "q2", "query": "b", "positive_passages": _passages(["p2"]), "negative_passages": _passages(["m1", "m2"]), "subset": "fiqa"},
        {"query_id": "q3", "query": "c", "positive_passages": _passages(["p3"]), "negative_passages": _passages(["k1"]), "subset": "fiqa"},
    ]
    edited = [  # q1: n1 relabelled, n2 filtered; q2: nothing; q3 dropped by the method
        {"query_id": "q1", "query": "a", "positive_passages": _passages(["p1", "n1"]), "negative_passages": _passages(["n3"]), "subset": "nq"},
        {"query_id": "q2", "query": "b", "positive_passages": _passages(["p2"]), "negative_passages": _passages(["m1", "m2"]), "subset": "fiqa"},
    ]
    _write(b, "default", default)
    _write(b, "arhn_rf", edited)
    _write(b, "judgments", [
        {"method": "arhn", "stage": "arhn/rank", "query_id": "q1", "subset": "nq", "decisions": [
            {"docid": "n1", "decision": "relabel"}, {"docid": "n2", "decision": "filter"}, {"docid": "n3", "decision": "keep"}]},
        {"method": "arhn", "stage": "arhn/rank", "query_id": "q2", "subset": "fiqa", "decisions": [
            {"docid": "m1", "decision": "keep"}, {"docid": "m2", "decision": "unjudged"}]},
    ])
    return b


def test_cli_from_configs(build, tmp_path, capsys):
    labels = tmp_path / "labels.tsv"
    labels.write_text("query_id\tdocid\tlabel\nq1\tn1\t1\nq1\tn2\t0\nq1\tn3\t0\nq2\tm1\t1\nq2\tm2\t0\n"
                      "q3\tk1\t1\nq9\tx\t0\nq1\tp1\t1\n", encoding="utf-8")
    out = tmp_path / "r.json"
    assert main(["--human", str(labels), "--build", str(build), "--method", "arhn_rf", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    # judged pairs: n1 (H1,J1) n2 (H0,J1) n3 (H0,J0) m1 (H1,J0) m2 (H0,J0)
    assert report["overall"]["table"] == {"human_1": {"judge_1": 1, "judge_0": 1}, "human_0": {"judge_1": 1, "judge_0": 2}}
    # p_o = 3/5, human_1 = judge_1 = 2/5, p_e = 0.16 + 0.36 = 0.52, kappa = 0.08/0.48
    assert report["overall"]["kappa"] == pytest.approx(0.08 / 0.48)
    assert report["unmatched"] == {"row_dropped": 1, "unknown_query": 1, "not_a_negative": 1}
    assert report["by_subset"]["nq"]["n"] == 3 and report["by_subset"]["fiqa"]["n"] == 2
    assert "kappa" in capsys.readouterr().out


def test_cli_from_judgments(build, tmp_path):
    labels = tmp_path / "labels.jsonl"
    labels.write_text("\n".join(json.dumps(r) for r in [
        {"query_id": "q1", "docid": "n1", "label": 1}, {"query_id": "q1", "docid": "n2", "label": 1},
        {"query_id": "q2", "docid": "m1", "label": 0}, {"query_id": "q2", "docid": "m2", "label": 1}]) + "\n")
    out = tmp_path / "r.json"
    assert main(["--human", str(labels), "--build", str(build), "--method", "arhn_relabel", "--from-judgments", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    # relabel only: n1 J1, n2 J0, m1 J0; m2 unjudged
    assert report["overall"]["table"] == {"human_1": {"judge_1": 1, "judge_0": 1}, "human_0": {"judge_1": 0, "judge_0": 1}}
    assert report["unmatched"] == {"unjudged": 1}


def test_bad_labels_name_file_and_line(tmp_path):
    bad = tmp_path / "l.tsv"
    bad.write_text("query_id\tdocid\tlabel\nq1\tn1\tmaybe\n")
    with pytest.raises(ValueError, match=r"l.tsv:2: label 'maybe'"):
        read_human_labels(bad)
    bad.write_text("query_id\tdocid\tlabel\nq1\tn1\t1\nq1\tn1\t0\n")
    with pytest.raises(ValueError, match=r"l.tsv:3: .*both 0 and 1"):
        read_human_labels(bad)
    bad.write_text("qid\tdoc\n")
    with pytest.raises(ValueError, match="header must name"):
        read_human_labels(bad)


def test_missing_config_is_a_clear_error(build, tmp_path, capsys):
    labels = tmp_path / "l.tsv"
    labels.write_text("query_id\tdocid\tlabel\nq1\tn1\t1\n")
    assert main(["--human", str(labels), "--build", str(build), "--method", "clear_phi"]) == 2
    assert "no config 'clear_phi'" in capsys.readouterr().err
