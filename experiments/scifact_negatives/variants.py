"""The training set of every variant, all from the same mined rows (``mine.MinedRow``).

- ``default``: the mined rows as they are (known false negatives left among the negatives).
- ``oracle``: every known false negative moved into the positives (the ceiling a perfect judge reaches).
- ``percpos``: the ``percpos`` config of the TopK-PercPos build over all training rows.
- ``rlhn`` / ``arhn`` / ``clear``: the judged rows as the method's config has them (``rlhn``, ``arhn_rf``,
  ``clear_threshold``), every other row as in ``default``; a judged row the method's config lacks (unjudged,
  or dropped) also stays as in ``default`` and is counted.
"""

from __future__ import annotations

import random
from pathlib import Path

from experiments.scifact_negatives.mine import MinedRow, tevatron_row

# variant -> (recipe, the build's config that is the variant's training set)
BUILT = {"percpos": ("percpos", "percpos"), "rlhn": ("rlhn", "rlhn"), "arhn": ("arhn", "arhn_rf"),
         "clear": ("clear", "clear_threshold")}
JUDGED = ("rlhn", "arhn", "clear")


def oracle_row(row: MinedRow, docs: dict[str, dict]) -> dict:
    fns = row.false_negatives
    return tevatron_row(row, docs, positives=row.positives + fns, negatives=[d for d in row.negatives if d not in fns])


def training_rows(rows: list[MinedRow], size: int, seed: int) -> list[MinedRow]:
    """Every row with a known false negative, then a seeded draw of the others, up to ``size`` (in query order)."""
    with_fn = [r for r in rows if r.false_negatives]
    others = [r for r in rows if not r.false_negatives]
    picked = with_fn[:size] + random.Random(seed).sample(others, max(0, min(len(others), size - len(with_fn))))
    return sorted(picked, key=lambda r: int(r.query_id))


def judged_rows(rows: list[MinedRow], size: int, seed: int) -> list[MinedRow]:
    """The rows the LLM judges see: half with a known false negative, half without (seeded), so that the
    agreement figures have both kinds of pair."""
    rng = random.Random(seed)
    with_fn = [r for r in rows if r.false_negatives]
    others = [r for r in rows if not r.false_negatives]
    half = min(len(with_fn), max((size + 1) // 2, size - len(others)))
    a = rng.sample(with_fn, half)
    b = rng.sample(others, min(len(others), size - half))
    return sorted(a + b, key=lambda r: int(r.query_id))


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
