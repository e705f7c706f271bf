"""The SciFact copy this experiment ships (``data/``) and how it was cut from BEIR SciFact.

``data/`` holds a BEIR folder, gzipped: ``corpus.jsonl.gz``, ``queries.jsonl.gz``, ``qrels/train.tsv`` and
``qrels/test.tsv`` (licence and attribution: ``data/LICENSE.md``). The cut keeps every abstract that a train or
a test query is labelled with (667) and a seeded random sample of the other abstracts, 1,200 in all (the whole
corpus has 5,183; encoding it takes ~7 min per model on 2 busy cores, too slow for 19 evaluations in an hour).
Queries and qrels are whole. Recreate the cut from a full BEIR SciFact folder with
``python -m experiments.scifact_negatives.data --from ../shared/fixtures/beir-scifact``.

:func:`unpack` writes the plain BEIR folder ``trainers.evaluate`` reads.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
from pathlib import Path

DATA = Path(__file__).parent / "data"
CORPUS_SIZE = 1200
CUT_SEED = 13


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        parts = line.split("\t")
        if n == 0 and parts[0] == "query-id":
            continue
        if len(parts) == 3:
            qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    return qrels


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def cut(full: Path, out: Path = DATA, size: int = CORPUS_SIZE, seed: int = CUT_SEED) -> dict:
    """Write the shipped cut of the BEIR SciFact folder ``full`` into ``out``; returns its counts."""
    qrels = {split: read_qrels(full / "qrels" / f"{split}.tsv") for split in ("train", "test")}
    labelled = {d for split in qrels.values() for docs in split.values() for d in docs}
    corpus = read_jsonl(full / "corpus.jsonl")
    others = sorted(str(d["_id"]) for d in corpus if str(d["_id"]) not in labelled)
    keep = labelled | set(random.Random(seed).sample(others, max(0, size - len(labelled))))
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(out / "corpus.jsonl.gz", "wb", mtime=0) as f:
        for d in corpus:
            if str(d["_id"]) in keep:
                f.write((json.dumps({"_id": str(d["_id"]), "title": d.get("title", ""), "text": d["text"]}) + "\n").encode())
    with gzip.GzipFile(out / "queries.jsonl.gz", "wb", mtime=0) as f:
        for q in read_jsonl(full / "queries.jsonl"):
            f.write((json.dumps({"_id": str(q["_id"]), "text": q["text"]}) + "\n").encode())
    for split in ("train", "test"):
        shutil.copyfile(full / "qrels" / f"{split}.tsv", out / "qrels" / f"{split}.tsv")
    return {"docs": len(keep), "labelled_docs": len(labelled), **{f"{s}_queries": len(q) for s, q in qrels.items()}}


def unpack(dest: Path, data: Path = DATA) -> Path:
    """The plain BEIR folder (corpus.jsonl, queries.jsonl, qrels/{train,test}.tsv) at ``dest``."""
    (dest / "qrels").mkdir(parents=True, exist_ok=True)
    for name in ("corpus", "queries"):
        with gzip.open(data / f"{name}.jsonl.gz", "rb") as src, open(dest / f"{name}.jsonl", "wb") as dst:
            shutil.copyfileobj(src, dst)
    for split in ("train", "test"):
        shutil.copyfile(data / "qrels" / f"{split}.tsv", dest / "qrels" / f"{split}.tsv")
    return dest


def shrink(beir: Path, train_queries: int, test_queries: int, other_docs: int, seed: int = CUT_SEED) -> Path:
    """Cut an unpacked folder in place to its first queries of each split, their labelled abstracts and
    ``other_docs`` others (``--quick``: seconds per evaluation instead of tens)."""
    keep_docs: set[str] = set()
    for split, n in (("train", train_queries), ("test", test_queries)):
        path = beir / "qrels" / f"{split}.tsv"
        qrels = read_qrels(path)
        kept = sorted(qrels, key=int)[:n]
        keep_docs |= {d for q in kept for d in qrels[q]}
        path.write_text("query-id\tcorpus-id\tscore\n" + "".join(
            f"{q}\t{d}\t{s}\n" for q in kept for d, s in qrels[q].items()), encoding="utf-8")
    corpus = read_jsonl(beir / "corpus.jsonl")
    others = sorted(str(d["_id"]) for d in corpus if str(d["_id"]) not in keep_docs)
    keep_docs |= set(random.Random(seed).sample(others, min(other_docs, len(others))))
    with open(beir / "corpus.jsonl", "w", encoding="utf-8") as f:
        for d in corpus:
            if str(d["_id"]) in keep_docs:
                f.write(json.dumps(d) + "\n")
    return beir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.scifact_negatives.data", description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="full", required=True, help="a full BEIR SciFact folder")
    ap.add_argument("--size", type=int, default=CORPUS_SIZE)
    args = ap.parse_args(argv)
    print(cut(Path(args.full), size=args.size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
