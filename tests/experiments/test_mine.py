"""Known false negatives, the held-out positives and the variants' rows on hand-made cases."""

from __future__ import annotations

from builders.agreement import read_human_labels
from experiments.negatives.mine import (
    MinedRow,
    known_false_negatives,
    mine_from_ranking,
    split_positives,
    tevatron_row,
    write_labels,
)
from experiments.negatives.variants import merge_judged, oracle_row, random_remove_row, training_rows

DOCS = {d: {"_id": d, "title": f"t{d}", "text": f"text of {d}"} for d in "abcdefgh"}


def test_known_false_negatives_are_the_relevant_mined_negatives_in_order():
    assert known_false_negatives(["c", "a", "d", "b"], {"b", "a", "z"}) == ["a", "b"]
    assert known_false_negatives(["c", "d"], {"a"}) == []
    assert known_false_negatives([], {"a"}) == []


def test_mining_removes_kept_positives_and_leaves_held_out_ones_as_false_negatives():
    # query labelled with a, b, c; the retriever ranks b first, then x, c, a, y ...
    kept, held = split_positives("q1", ["a", "b", "c"], seed=0)
    assert len(kept) == 1 and sorted(kept + held) == ["a", "b", "c"]
    row = mine_from_ranking("q1", "claim", ["b", "e", "c", "a", "f", "g"], ["a", "b", "c"], negatives=3, seed=0)
    assert row.positives == kept
    assert kept[0] not in row.negatives and len(row.negatives) == 3
    # the top 3 of the ranking without the kept positive; the held-out ones in them are the known FNs
    expected = [d for d in ["b", "e", "c", "a", "f", "g"] if d not in kept][:3]
    assert row.negatives == expected
    assert row.false_negatives == [d for d in expected if d in held]
    assert row.false_negatives  # two of a, b, c are held out and b, c or a sit in the top 3


def test_single_positive_queries_have_no_false_negative():
    row = mine_from_ranking("q2", "claim", ["e", "a", "f"], ["a"], negatives=2, seed=0)
    assert row.positives == ["a"] and row.held_out == [] and row.negatives == ["e", "f"]
    assert row.false_negatives == []


def test_held_out_split_is_seeded_per_query():
    assert split_positives("q1", ["a", "b", "c"], 5) == split_positives("q1", ["c", "b", "a"], 5)
    draws = {split_positives(f"q{i}", ["a", "b", "c"], 5)[0][0] for i in range(30)}
    assert len(draws) > 1  # not always the same document kept


def test_oracle_moves_known_false_negatives_to_the_positives():
    row = MinedRow("7", "claim", ["a"], ["b", "h"], ["e", "b", "f"])  # h held out but not mined
    o = oracle_row(row, DOCS, "scifact")
    assert [p["docid"] for p in o["positive_passages"]] == ["a", "b"]
    assert [p["docid"] for p in o["negative_passages"]] == ["e", "f"]
    r = oracle_row(row, DOCS, "scifact", relabel=False)  # hn_remove's shape: dropped, not moved
    assert [p["docid"] for p in r["positive_passages"]] == ["a"]
    assert [p["docid"] for p in r["negative_passages"]] == ["e", "f"]
    d = tevatron_row(row, DOCS, "scifact")
    assert [p["docid"] for p in d["negative_passages"]] == ["e", "b", "f"] and d["query_id"] == "scifact-7"


def test_labels_file_reads_with_builders_agreement(tmp_path):
    rows = [MinedRow("7", "claim", ["a"], ["b"], ["e", "b"]), MinedRow("8", "other", ["c"], [], ["d"])]
    labels = read_human_labels(write_labels(tmp_path / "l.tsv", rows, "scifact"))
    assert labels == {("scifact-7", "e"): 0, ("scifact-7", "b"): 1, ("scifact-8", "d"): 0}


def test_training_rows_keep_every_false_negative_row():
    rows = [MinedRow(str(i), "q", ["a"], ["b"] if i % 5 == 0 else [], ["b", "c"] if i % 5 == 0 else ["c"])
            for i in range(40)]
    picked = training_rows(rows, 12, seed=1)
    assert len(picked) == 12
    assert {r.query_id for r in rows if r.false_negatives} <= {r.query_id for r in picked}
    assert [int(r.query_id) for r in picked] == sorted(int(r.query_id) for r in picked)


def test_judged_rows_replace_default_rows_only_where_the_method_has_them():
    default = [tevatron_row(MinedRow(str(i), "q", ["a"], [], ["c", "d"]), DOCS, "scifact") for i in range(3)]
    edited = dict(default[1], positive_passages=default[1]["positive_passages"] + default[1]["negative_passages"][:1],
                  negative_passages=default[1]["negative_passages"][1:])
    merged, replaced = merge_judged(default, [edited])
    assert replaced == 1
    assert merged[0] == default[0] and merged[2] == default[2]
    assert [p["docid"] for p in merged[1]["positive_passages"]] == ["a", "c"]


def test_judged_rows_are_half_with_a_false_negative_and_fill_from_the_other_kind():
    from experiments.negatives.variants import judged_rows

    rows = [MinedRow(str(i), "q", ["a"], ["b"] if i < 10 else [], ["b", "c"] if i < 10 else ["c"]) for i in range(30)]
    picked = judged_rows(rows, 6, seed=3)
    assert len(picked) == 6 and sum(1 for r in picked if r.false_negatives) == 3
    only_fn = [r for r in rows if r.false_negatives]
    assert len(judged_rows(only_fn, 4, seed=3)) == 4  # no rows without one: all four have one


def test_nfcorpus_many_positive_queries_keep_one_and_their_mined_held_out_ones_are_the_known_fns():
    """NFCorpus-shaped: string ids, ~40 labelled documents per query, most of the top ranks relevant."""
    relevant = [f"MED-{i}" for i in range(1, 41)]
    ranked = ["MED-7", "MED-900", "MED-3", "MED-12", "MED-901", "MED-33", "MED-902", "MED-5", "MED-903"]
    row = mine_from_ranking("PLAIN-3", "q", ranked, relevant, negatives=7, seed=13)
    assert len(row.positives) == 1 and row.positives[0] in relevant
    assert sorted(row.positives + row.held_out) == sorted(relevant)  # nothing lost, nothing kept twice
    assert row.positives[0] not in row.negatives and len(row.negatives) == 7
    assert row.negatives == [d for d in ranked if d not in row.positives][:7]
    assert row.false_negatives == [d for d in row.negatives if d in relevant and d != row.positives[0]]
    assert len(row.false_negatives) == sum(1 for d in row.negatives if not d.startswith("MED-90"))


def test_mining_a_beir_folder_with_string_ids_and_gzipped_qrels(tmp_path):
    """``mine.mine`` over a tiny NFCorpus-shaped folder (the bundled MiniLM ranks it): held-out positives
    mined as negatives are the known FNs, and rows come in natural id order (PLAIN-2 before PLAIN-10)."""
    import gzip
    import json

    from experiments.negatives.mine import mine

    docs = {"MED-1": "vitamin d and bone fractures in older adults", "MED-2": "vitamin d supplements reduce fractures",
            "MED-3": "vitamin d deficiency and falls", "MED-4": "green tea and cancer risk", "MED-5": "coffee and sleep",
            "MED-6": "broccoli sprouts sulforaphane", "MED-7": "meat and colon cancer"}
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n" for k, v in docs.items()))
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "PLAIN-10", "text": "vitamin d fractures"}) + "\n"
                                            + json.dumps({"_id": "PLAIN-2", "text": "green tea"}) + "\n")
    with gzip.open(tmp_path / "qrels" / "train.tsv.gz", "wt") as f:
        f.write("query-id\tcorpus-id\tscore\nPLAIN-10\tMED-1\t1\nPLAIN-10\tMED-2\t1\nPLAIN-10\tMED-3\t1\nPLAIN-2\tMED-4\t1\n")
    rows = mine(tmp_path, negatives=3, seed=13, max_length=32)
    assert [r.query_id for r in rows] == ["PLAIN-2", "PLAIN-10"]
    vit = rows[1]
    assert len(vit.positives) == 1 and len(vit.held_out) == 2 and len(vit.negatives) == 3
    # two vitamin-D documents are held out and rank above tea / coffee for this query: both are mined as FNs
    assert sorted(vit.false_negatives) == sorted(vit.held_out)
    assert rows[0].false_negatives == []


def test_random_remove_drops_as_many_negatives_as_the_row_has_known_fns_seeded():
    row = MinedRow("7", "claim", ["a"], ["b", "c"], ["e", "b", "f", "c", "g"])  # two known FNs
    r = random_remove_row(row, DOCS, "scifact", seed=1)
    kept = [p["docid"] for p in r["negative_passages"]]
    assert len(kept) == 3 and set(kept) < set(row.negatives) and kept == [d for d in row.negatives if d in kept]
    assert [p["docid"] for p in r["positive_passages"]] == ["a"]
    assert r == random_remove_row(row, DOCS, "scifact", seed=1)
    draws = {tuple(p["docid"] for p in random_remove_row(MinedRow(str(i), "q", ["a"], ["b"], ["e", "b", "f"]), DOCS,
                                                        "scifact", seed=1)["negative_passages"]) for i in range(20)}
    assert len(draws) > 1  # not always the same negative dropped
    assert random_remove_row(MinedRow("8", "q", ["a"], [], ["e", "f"]), DOCS, "scifact", 1)["negative_passages"][1]["docid"] == "f"
