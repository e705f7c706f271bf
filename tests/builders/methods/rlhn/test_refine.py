from builders.methods.rlhn.refine import Decision, RefineSettings, refine, row_key
from builders.rows import Passage, QueryRow


def _row(q, n, subset="fiqa"):
    return QueryRow.from_query(q, [Passage.from_text(f"{q} answer")], [Passage.from_text(f"{q} neg {i}") for i in range(n)], subset)


def test_techniques_from_final_decisions():
    a, b, c, d, e = _row("a", 4), _row("b", 4), _row("c", 10), _row("d", 3, "arguana"), _row("e", 2)
    dec = {
        row_key(a): Decision("clean"),
        row_key(b): Decision("flagged", (b.negative_passages[1].docid, b.negative_passages[3].docid)),
        row_key(c): Decision("flagged", tuple(p.docid for p in c.negative_passages[:9])),
        row_key(d): Decision("flagged", (d.negative_passages[0].docid,)),
        row_key(e): Decision("unparsed"),
    }
    out, stats = refine([a, b, c, d, e], dec, RefineSettings())
    assert [r.query for r in out["default"]] == ["a", "b", "c", "d", "e"]
    assert [r.query for r in out["remove"]] == ["a", "d"]  # e: no usable verdict -> excluded
    hn = {r.query: r for r in out["hn_remove"]}
    assert set(hn) == {"a", "b", "d"}  # c: 9 > 8 flagged -> dropped
    assert [p.text for p in hn["b"].negative_passages] == ["b neg 0", "b neg 2"]
    rl = {r.query: r for r in out["rlhn"]}
    assert [p.text for p in rl["b"].positive_passages] == ["b answer", "b neg 1", "b neg 3"]
    assert rl["d"] == d  # ArguAna untouched
    assert stats["fiqa"]["rows_unparsed"] == 1 and stats["fiqa"]["rows_over_max_flagged"] == 1
    assert stats["fiqa"]["rlhn:positives"] == 1 + 3 and stats["fiqa"]["rlhn:negatives"] == 4 + 2
    assert stats["arguana"]["remove:rows"] == 1


def test_max_flagged_none_and_keep_unjudged():
    c, e = _row("c", 10), _row("e", 2)
    dec = {row_key(c): Decision("flagged", tuple(p.docid for p in c.negative_passages[:9])), row_key(e): Decision("failed")}
    out, stats = refine([c, e], dec, RefineSettings(max_flagged=None, unjudged="keep"))
    assert [r.query for r in out["rlhn"]] == ["c", "e"]
    assert len(out["rlhn"][0].positive_passages) == 10 and len(out["rlhn"][0].negative_passages) == 1
    assert stats["fiqa"]["rows_failed"] == 1
