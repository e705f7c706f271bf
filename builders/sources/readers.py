"""Readers for training rows: BGE/FlagEmbedding files, Tevatron-layout files, and Hub datasets.

Every reader yields ``RawRecord``s: the untouched source dict plus where it came from (file
or ``hub-id:split``, 1-based line or row number) and the subset name. ``builders.sources.validate``
turns records into ``QueryRow``s and reports bad ones; readers never drop anything.

The BGE training collection on the Hub, ``cfli/bge-full-data``, keeps one parquet family per
source under ``data/<source>-NNNNN-of-NNNNN.parquet`` (one config, one split per source).
``load_hub_source`` reads one source with stock ``datasets.load_dataset`` (streaming by
default: the collection is ~1.6M rows), and works the same on a local folder in that layout.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

BGE_FULL_DATA = "cfli/bge-full-data"

# The 7 sources RLHN keeps (~680K rows): names are the split/file names in cfli/bge-full-data
# and the `subset` values of the published rlhn/*-680K rows.
RLHN_SOURCES = ("msmarco_passage", "hotpotqa", "nq", "fever", "scidocsrr", "fiqa", "arguana")

# Every retrieval/classification/clustering source of cfli/bge-full-data as far as its file
# listing is known here (no Hub access at build time of this list). `list_hub_sources`
# reads the authoritative list from the repo itself; prefer it when online.
BGE_FULL_DATA_SOURCES = (
    "msmarco_passage", "msmarco_document", "nq", "hotpotqa", "fever", "eli5", "trivia",
    "squad", "fiqa", "scidocsrr", "arguana", "quora", "stackoverflowdupquestions", "nli",
    "amazon_counterfactual", "amazon_reviews", "banking77", "emotion", "imdb", "mtop_intent",
    "toxic_conversations", "tweet_sentiment_extraction", "arxiv_title", "arXiv_abstract",
    "biorxiv_title", "biorxiv_abstract", "medrxiv_title", "medrxiv_abstract",
    "twenty_news_groups", "stsbenchmark", "sts12", "sts22", "stackexchange", "reddit",
)

Layout = Literal["auto", "bge", "tevatron"]
_SHARD = re.compile(r"^(?P<name>.+)-\d{5}-of-\d{5}\.(parquet|jsonl|json)$")


@dataclass
class RawRecord:
    origin: str  # file path, or "hub-id:split"
    line: int  # 1-based line (jsonl) or row number (parquet, hub)
    subset: str
    data: dict | None  # None when the line could not be read
    error: str | None = None  # why ``data`` is None (malformed JSON, not an object)
    layout: Literal["bge", "tevatron"] = "bge"


@dataclass
class SourceConfig:
    """One input. Exactly one of ``path`` (file, folder or glob) and ``hub`` (dataset id or a
    local folder in the Hub layout) is set. With ``hub``, ``names`` picks sources (splits);
    the words ``rlhn`` and ``all`` expand to the presets above."""

    path: str | None = None
    hub: str | None = None
    names: list[str] = field(default_factory=list)
    revision: str | None = None
    layout: Layout = "auto"
    subset: str | None = None  # subset name for every row; default: file stem / source name
    limit: int | None = None  # rows per file or source (None: all)
    streaming: bool = True


def expand_names(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        chosen = RLHN_SOURCES if name == "rlhn" else BGE_FULL_DATA_SOURCES if name == "all" else (name,)
        out.extend(n for n in chosen if n not in out)
    return out


def detect_layout(d: dict) -> Literal["bge", "tevatron"]:
    return "tevatron" if "positive_passages" in d or "negative_passages" in d else "bge"


def subset_from_filename(path: str | Path) -> str:
    """``data/fiqa-00000-of-00003.parquet`` -> ``fiqa``; ``retrieval-nq.jsonl`` -> ``retrieval-nq``;
    RLHN fixture names like ``fiqa.stage_1.gpt-4o-mini.jsonl`` -> ``fiqa``."""
    name = Path(path).name
    m = _SHARD.match(name)
    if m:
        return m.group("name")
    return name.split(".")[0]


def read_jsonl(path: str | Path, subset: str | None = None, layout: Layout = "auto", limit: int | None = None) -> Iterator[RawRecord]:
    path = str(path)
    subset = subset or subset_from_filename(path)
    n = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if limit is not None and n >= limit:
                return
            n += 1
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                yield RawRecord(path, lineno, subset, None, f"malformed JSON: {e.msg} at column {e.colno}")
                continue
            if not isinstance(d, dict):
                yield RawRecord(path, lineno, subset, None, f"expected a JSON object, got {type(d).__name__}")
                continue
            yield RawRecord(path, lineno, subset, d, None, detect_layout(d) if layout == "auto" else layout)


def read_parquet(path: str | Path, subset: str | None = None, layout: Layout = "auto", limit: int | None = None) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    path = str(path)
    subset = subset or subset_from_filename(path)
    row = 0
    # pre_buffer=False: pyarrow (26) otherwise caches the whole file while iterating (memory grows with it)
    for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=1024):
        for d in batch.to_pylist():
            if limit is not None and row >= limit:
                return
            row += 1
            yield RawRecord(path, row, subset, d, None, detect_layout(d) if layout == "auto" else layout)


def _files(spec: str) -> list[str]:
    p = Path(spec)
    if p.is_dir():
        found = sorted(str(f) for f in p.rglob("*") if f.suffix in (".jsonl", ".parquet") and f.is_file())
    else:
        found = sorted(glob.glob(spec)) if any(c in spec for c in "*?[") else [spec]
    if not found:
        raise FileNotFoundError(f"source path {spec!r} matches no .jsonl or .parquet file")
    for f in found:
        if not os.path.exists(f):
            raise FileNotFoundError(f"source file {f!r} does not exist: fix `path` in the recipe")
    return found


def read_files(spec: str, subset: str | None = None, layout: Layout = "auto", limit: int | None = None) -> Iterator[RawRecord]:
    for f in _files(spec):
        reader = read_parquet if f.endswith(".parquet") else read_jsonl
        yield from reader(f, subset=subset, layout=layout, limit=limit)


def list_hub_sources(hub: str, revision: str | None = None) -> list[str]:
    """Source (split) names from the ``data/<name>-NNNNN-of-NNNNN.parquet`` files of a Hub
    dataset repo or a local folder in the same layout."""
    if Path(hub).is_dir():
        files = [str(p.relative_to(hub)) for p in Path(hub).rglob("*") if p.is_file()]
    else:
        from huggingface_hub import HfApi

        files = HfApi().list_repo_files(hub, repo_type="dataset", revision=revision)
    names = []
    for f in files:
        parts = f.split("/")
        m = _SHARD.match(parts[-1])
        if len(parts) == 2 and parts[0] == "data" and m and m.group("name") not in names:
            names.append(m.group("name"))
    return sorted(names)


def load_hub_source(hub: str, name: str, revision: str | None = None, streaming: bool = True):
    """One source of a BGE-layout Hub dataset as a (streaming) ``datasets`` split."""
    import datasets

    return datasets.load_dataset(
        hub,
        data_files={name: f"data/{name}-*.parquet"},
        split=name,
        revision=revision,
        streaming=streaming,
    )


def read_hub(hub: str, names: list[str], revision: str | None = None, layout: Layout = "auto", limit: int | None = None, streaming: bool = True, subset: str | None = None) -> Iterator[RawRecord]:
    for name in expand_names(names):
        ds = load_hub_source(hub, name, revision=revision, streaming=streaming)
        origin = f"{hub}:{name}"
        for i, d in enumerate(ds, start=1):
            if limit is not None and i > limit:
                break
            d = dict(d)
            yield RawRecord(origin, i, subset or name, d, None, detect_layout(d) if layout == "auto" else layout)


def read_source(cfg: SourceConfig) -> Iterator[RawRecord]:
    if (cfg.path is None) == (cfg.hub is None):
        raise ValueError("a source needs exactly one of `path` (local files) or `hub` (dataset id or Hub-layout folder)")
    if cfg.path is not None:
        yield from read_files(cfg.path, subset=cfg.subset, layout=cfg.layout, limit=cfg.limit)
    else:
        if not cfg.names:
            raise ValueError(f"hub source {cfg.hub!r} needs `names` (source names, or `rlhn` / `all`)")
        yield from read_hub(cfg.hub, cfg.names, cfg.revision, cfg.layout, cfg.limit, cfg.streaming, cfg.subset)


def read_sources(cfgs: list[SourceConfig]) -> Iterator[RawRecord]:
    for cfg in cfgs:
        yield from read_source(cfg)
