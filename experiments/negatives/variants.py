"""The training set of every variant, all from the same mined rows (``mine.MinedRow``).

- ``default``: the mined rows as they are (known false negatives left among the negatives).
- ``oracle_remove``: every known false negative dropped from the negatives (``hn_remove``'s shape).
- ``oracle_relabel``: every known false negative moved into the positives (``rlhn``'s shape). The two oracles
  are the ceilings a perfect judge reaches.
- ``random_remove``: the control for ``oracle_remove``: as many negatives dropped from each row as it holds known
  false negatives, but drawn at random among its negatives (seeded per query). Fewer hard negatives alone also
  move the model; the gap between the two is what picking the right ones is worth.
- ``random_percpos``: the same control for ``percpos``: each row loses as many negatives as the PercPos build
  dropped from it, drawn at random.
- ``percpos``: the ``percpos`` config of the TopK-PercPos build over all training rows.
- ``rlhn`` / ``arhn`` / ``clear``: the judged rows as the method's config has them (``rlhn``, ``arhn_rf``,
  ``clear_threshold``), every other row as in ``default``; a judged row the method's config lacks (unjudged,
  or dropped) also stays as in ``default`` and is counted.
"""

from __future__ import annotations

import random
from pathlib import Path

from experiments.negatives.datasets import qid_key
from experiments.negatives.mine import MinedRow, tevatron_row

# variant -> (recipe, the build's config that is the variant's training set)
BUILT = {"percpos": ("percpos", "percpos"), "rlhn": ("rlhn", "rlhn"), "arhn": ("arhn", "arhn_rf"),
         "clear": ("clear", "clear_threshold")}
JUDGED = ("rlhn", "arhn", "clear")


def oracle_row(row: MinedRow, docs: dict[str, dict], prefix: str, relabel: bool = True) -> dict:
    """The row with its known false negatives moved to the positives (``relabel``) or dropped."""
    fns = row.false_negatives
    kept = [d for d in row.negatives if d not in fns]
    return tevatron_row(row, docs, prefix, positives=row.positives + (fns if relabel else []), negatives=kept)


def random_remove_row(row: MinedRow, docs: dict[str, dict], prefix: str, seed: int, k: int | None = None) -> dict:
    """The row with ``k`` (default: ``len(row.false_negatives)``) of its negatives dropped at random (order kept)."""
    k = len(row.false_negatives) if k is None else min(k, len(row.negatives))
    dropped = set(random.Random(f"{seed}:{row.query_id}").sample(row.negatives, k))
    return tevatron_row(row, docs, prefix, negatives=[d for d in row.negatives if d not in dropped])


def training_rows(rows: list[MinedRow], size: int | None, seed: int, fn_first: bool = True) -> list[MinedRow]:
    """``size`` rows in query order (None: all). ``fn_first``: every row with a known false negative, then a
    seeded draw of the others (a set with few of them); else a seeded draw of all rows (their natural share)."""
    if size is None or size >= len(rows):
        return sorted(rows, key=lambda r: qid_key(r.query_id))
    if not fn_first:
        return sorted(random.Random(seed).sample(rows, size), key=lambda r: qid_key(r.query_id))
    with_fn = [r for r in rows if r.false_negatives]
    others = [r for r in rows if not r.false_negatives]
    picked = with_fn[:size] + random.Random(seed).sample(others, max(0, min(len(others), size - len(with_fn))))
    return sorted(picked, key=lambda r: qid_key(r.query_id))


def judged_rows(rows: list[MinedRow], size: int, seed: int, balanced: bool = True) -> list[MinedRow]:
    """The rows the LLM judges see. ``balanced``: half with a known false negative, half without (seeded), so
    that the agreement figures have both kinds of pair in a set with few; else a seeded draw (natural share)."""
    rng = random.Random(seed)
    if not balanced:
        return sorted(rng.sample(rows, min(size, len(rows))), key=lambda r: qid_key(r.query_id))
    with_fn = [r for r in rows if r.false_negatives]
    others = [r for r in rows if not r.false_negatives]
    half = min(len(with_fn), max((size + 1) // 2, size - len(others)))
    a = rng.sample(with_fn, half)
    b = rng.sample(others, min(len(others), size - half))
    return sorted(a + b, key=lambda r: qid_key(r.query_id))


def read_config(build: Path, config: str) -> list[dict]:
    import pyarrow.parquet as pq

    files = sorted((build / config).glob("*.parquet"))
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def plain(row: dict) -> dict:
    """A built row reduced to what the trainer reads (Tevatron layout + positive_scores where present)."""
    out = {k: row[k] for k in ("query_id", "query", "subset", "positive_passages", "negative_passages")}
    out["positive_passages"] = [{"docid": p["docid"], "title": p.get("title") or "", "text": p["text"]}
                                for p in row["positive_passages"]]
    out["negative_passages"] = [{"docid": p["docid"], "title": p.get("title") or "", "text": p["text"]}
                                for p in row["negative_passages"] or []]
    return out


def merge_judged(default_rows: list[dict], built: list[dict]) -> tuple[list[dict], int]:
    """``default_rows`` with each row the method's config holds replaced by it; -> (rows, rows replaced)."""
    by_id = {r["query_id"]: plain(r) for r in built}
    return [by_id.get(r["query_id"], r) for r in default_rows], sum(r["query_id"] in by_id for r in default_rows)


def counts(rows: list[dict]) -> dict:
    return {"rows": len(rows), "positives": sum(len(r["positive_passages"]) for r in rows),
            "negatives": sum(len(r["negative_passages"]) for r in rows)}
