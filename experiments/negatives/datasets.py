"""The BEIR sets this experiment runs on, shipped in the tree, and what differs between them.

Each dataset is a folder ``experiments/negatives/<name>/``: ``data/`` (a BEIR folder, gzipped, licence beside
it), ``train.yaml`` (the one training config of every variant) and the ``results.md`` + plot the run writes.
Everything else (mining, variants, builds, training, statistics, report) is one code path for all of them.

- **scifact**: BEIR SciFact, corpus cut to 1,200 abstracts (every labelled one + a seeded sample; the whole
  corpus has 5,183). About one labelled abstract per claim, so mining leaves few known false negatives:
  kept as the small, low-false-negative contrast. Recreate the cut with
  ``python -m experiments.negatives.datasets --cut-scifact ../shared/fixtures/beir-scifact``.
- **nfcorpus**: BEIR NFCorpus, whole (3,633 documents; train 2,590 queries with ~43 labelled documents
  each, dev 324, test 323 with graded labels). Academic use only (``nfcorpus/data/LICENSE.md``). Keeping one
  positive per train query leaves about a quarter of the mined negatives known-relevant: the testbed where
  the effect of cleaning can be seen.

:func:`unpack` writes the plain BEIR folder ``trainers.evaluate`` reads.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CUT_SEED = 13


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str
    negatives: int  # mined per train query (top-k minus the kept positive)
    max_length: int  # mining tokens = the trained passage_max_len
    train_rows: int | None  # training rows (None: every mined train query)
    judged_rows: int  # rows each LLM-judged method sees (local judge; raise with an endpoint)
    arhn_rows: int  # of those, the rows ARHN judges (its snippet extraction is the slowest judge step on CPU)
    balanced_judged: bool  # judged rows: half with a known false negative, half without (else a seeded sample)
    fn_first: bool  # training rows: every row with a known false negative first, then a seeded draw
    licence: str  # one line for results.md
    card_license: str
    source_dataset: str
    quick: tuple[int, int, int]  # --quick: train queries, test queries, other documents kept

    @property
    def folder(self) -> Path:
        return HERE / self.name

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def train_config(self) -> Path:
        return self.folder / "train.yaml"

    @property
    def results(self) -> Path:
        return self.folder / "results.md"


DATASETS = {
    "scifact": Dataset(
        name="scifact", title="SciFact", negatives=4, max_length=64, train_rows=256, judged_rows=20, arhn_rows=6,
        balanced_judged=True, fn_first=True,
        licence="BEIR SciFact (claims CC BY 4.0, abstracts ODC-By 1.0; `scifact/data/LICENSE.md`)",
        card_license="cc-by-4.0", source_dataset="BEIR SciFact (Wadden et al. 2020), cut: experiments/negatives/scifact/data",
        quick=(120, 50, 100)),
    "nfcorpus": Dataset(
        name="nfcorpus", title="NFCorpus", negatives=7, max_length=64, train_rows=512, judged_rows=32, arhn_rows=8,
        balanced_judged=False, fn_first=False,
        licence="BEIR NFCorpus (academic use only; `nfcorpus/data/LICENSE.md`)",
        card_license="other", source_dataset="BEIR NFCorpus (Boteva et al. 2016), experiments/negatives/nfcorpus/data",
        quick=(40, 40, 150)),
}


def qid_key(qid: str) -> tuple:
    """Natural order of query ids: SciFact's ``"12"`` before ``"100"``, NFCorpus's ``PLAIN-3`` before ``PLAIN-10``."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(qid)))


def _open(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def qrels_path(folder: Path, split: str) -> Path:
    plain = folder / "qrels" / f"{split}.tsv"
    return plain if plain.exists() else plain.with_suffix(".tsv.gz")


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with _open(path) as f:
        for n, line in enumerate(f):
            parts = line.rstrip("\n").split("\t")
            if n == 0 and parts[0] == "query-id":
                continue
            if len(parts) == 3:
                qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    return qrels


def read_jsonl(path: Path) -> list[dict]:
    with _open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def splits(data: Path) -> list[str]:
    return sorted(p.name.split(".")[0] for p in (data / "qrels").iterdir() if ".tsv" in p.name)


def unpack(dest: Path, data: Path) -> Path:
    """The plain BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) of a shipped ``data`` folder."""
    (dest / "qrels").mkdir(parents=True, exist_ok=True)
    for name in ("corpus", "queries"):
        with gzip.open(data / f"{name}.jsonl.gz", "rb") as src, open(dest / f"{name}.jsonl", "wb") as dst:
            shutil.copyfileobj(src, dst)
    for split in splits(data):
        src = qrels_path(data, split)
        with (gzip.open(src, "rb") if src.suffix == ".gz" else open(src, "rb")) as s, \
                open(dest / "qrels" / f"{split}.tsv", "wb") as d:
            shutil.copyfileobj(s, d)
    return dest


def shrink(beir: Path, train_queries: int, test_queries: int, other_docs: int, seed: int = CUT_SEED) -> Path:
    """Cut an unpacked folder in place to its first queries of each split, their labelled documents and
    ``other_docs`` others (``--quick``: seconds per evaluation instead of tens)."""
    keep_docs: set[str] = set()
    for split in splits(beir):
        n = {"train": train_queries, "test": test_queries}.get(split, 0)
        path = beir / "qrels" / f"{split}.tsv"
        qrels = read_qrels(path)
        kept = sorted(qrels, key=qid_key)[:n]
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


def cut_scifact(full: Path, out: Path = DATASETS["scifact"].data, size: int = 1200, seed: int = CUT_SEED) -> dict:
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.negatives.datasets", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cut-scifact", dest="full", required=True, help="a full BEIR SciFact folder")
    ap.add_argument("--size", type=int, default=1200)
    args = ap.parse_args(argv)
    print(cut_scifact(Path(args.full), size=args.size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
