"""Writers: Tevatron layout (parquet, jsonl), BGE/FlagEmbedding jsonl, and the dataset repo
folder in the Hub's layout (``<out>/<config>/train-XXXXX-of-YYYYY.parquet`` + README whose
YAML ``configs:`` lists every config), which stock ``datasets.load_dataset(folder, config)``
reads. Output is deterministic: the same rows give byte-identical files.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterable
from itertools import accumulate
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from builders.rows import QueryRow

PASSAGE = pa.struct([("docid", pa.string()), ("title", pa.string()), ("text", pa.string())])


def tevatron_schema(with_scores: bool = False, with_prompt: bool = False) -> pa.Schema:
    fields = [
        ("query_id", pa.string()),
        ("query", pa.string()),
        ("positive_passages", pa.list_(PASSAGE)),
        ("negative_passages", pa.list_(PASSAGE)),
        ("subset", pa.string()),
    ]
    if with_scores:
        fields += [("positive_scores", pa.list_(pa.float64())), ("negative_scores", pa.list_(pa.float64()))]
    if with_prompt:
        fields += [("prompt", pa.string())]
    return pa.schema(fields)


def has_scores(rows: list[QueryRow]) -> bool:
    """Scores are written when every POSITIVE has one (negatives may be null): CLEAR's
    ``clear_threshold`` keeps per-positive confidences for the trainer's CMP loss."""
    return bool(rows) and all(p.score is not None for r in rows for p in r.positive_passages)


def tevatron_table(rows: list[QueryRow], with_scores: bool | None = None, with_prompt: bool | None = None) -> pa.Table:
    """``rows`` as an Arrow table in ``tevatron_schema``: the table ``pa.Table.from_pylist`` makes
    of ``QueryRow.to_tevatron`` dicts, built column by column (flat string arrays and list
    offsets; ~20x less CPU, which a streamed build spends while the next chunk's calls go out)."""
    with_scores = has_scores(rows) if with_scores is None else with_scores
    with_prompt = any(r.prompt is not None for r in rows) if with_prompt is None else with_prompt
    schema = tevatron_schema(with_scores, with_prompt)
    columns = {
        "query_id": pa.array([r.query_id for r in rows], pa.string()),
        "query": pa.array([r.query for r in rows], pa.string()),
        "subset": pa.array([r.subset for r in rows], pa.string()),
    }
    for side in ("positive", "negative"):
        lists = [r.positive_passages if side == "positive" else r.negative_passages for r in rows]
        offsets = pa.array([0, *accumulate(len(ps) for ps in lists)], pa.int32())
        passages = [p for ps in lists for p in ps]
        fields = [pa.array([getattr(p, name) for p in passages], pa.string()) for name in PASSAGE.names]
        columns[f"{side}_passages"] = pa.ListArray.from_arrays(offsets, pa.StructArray.from_arrays(fields, fields=list(PASSAGE)))
        if with_scores:
            columns[f"{side}_scores"] = pa.ListArray.from_arrays(offsets, pa.array([p.score for p in passages], pa.float64()))
    if with_prompt:
        columns["prompt"] = pa.array([r.prompt for r in rows], pa.string())
    return pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)


def write_tevatron_parquet(rows: Iterable[QueryRow], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(tevatron_table(list(rows)), path)
    return path


def _write_jsonl(dicts: Iterable[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for d in dicts:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    return path


def write_tevatron_jsonl(rows: Iterable[QueryRow], path: str | Path, with_scores: bool = False) -> Path:
    return _write_jsonl((r.to_tevatron(with_scores=with_scores) for r in rows), path)


def write_bge_jsonl(rows: Iterable[QueryRow], path: str | Path) -> Path:
    """FlagEmbedding's training layout: ``query, pos, neg`` (+ scores, prompt, type when known)."""
    return _write_jsonl((r.to_bge() for r in rows), path)


def write_shards(table: pa.Table, folder: Path, rows_per_shard: int | None = None, split: str = "train") -> list[Path]:
    """``folder/{split}-XXXXX-of-YYYYY.parquet``; stale shards of that split are removed first."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"{split}-*-of-*.parquet"):
        old.unlink()
    n = max(1, math.ceil(table.num_rows / rows_per_shard)) if rows_per_shard else 1
    size = math.ceil(table.num_rows / n) if table.num_rows else 0
    paths = []
    for i in range(n):
        p = folder / f"{split}-{i:05d}-of-{n:05d}.parquet"
        pq.write_table(table.slice(i * size, size) if size else table, p)
        paths.append(p)
    return paths


def configs_yaml_entries(config_names: list[str], default: str | None = None) -> list[dict]:
    """The README ``configs:`` entries for a folder written by ``write_dataset_repo``."""
    entries = []
    for name in config_names:
        e = {"config_name": name, "data_files": [{"split": "train", "path": f"{name}/train-*"}]}
        if name == default and "default" not in config_names:  # a config named `default` is the default
            e["default"] = True
        entries.append(e)
    return entries


def write_dataset_repo(
    out: str | Path,
    configs: dict[str, list[QueryRow]],
    tables: dict[str, pa.Table] | None = None,
    rows_per_shard: int | None = None,
) -> dict[str, list[Path]]:
    """Write each config's rows (Tevatron layout) and each extra table (e.g. ``judgments``) as
    ``<out>/<config>/train-*.parquet``. An EMPTY config is not written (stock ``datasets``
    cannot read a parquet file without rows): it is absent from the result, and the caller
    reports it. Config folders not written now are removed, so the folder always matches its
    README. The README itself is written by ``cards``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if "data" in configs or (tables and "data" in tables):
        raise ValueError("`data` is not allowed as a config name on the Hub")
    written: dict[str, list[Path]] = {}
    all_rows = [r for rows in configs.values() for r in rows]
    with_prompt = any(r.prompt is not None for r in all_rows)
    for name, rows in configs.items():  # scores decided per config
        if rows:
            written[name] = write_shards(tevatron_table(rows, has_scores(rows), with_prompt), out / name, rows_per_shard)
    for name, table in (tables or {}).items():
        if table.num_rows:
            written[name] = write_shards(table, out / name, rows_per_shard)
    for child in out.iterdir():
        if child.is_dir() and child.name not in written and any(child.glob("train-*-of-*.parquet")):
            shutil.rmtree(child)
    return written


def judgments_table(rows: list[dict]) -> pa.Table:
    """The ``judgments`` config: one row per judge call (flat, JSON-able values)."""
    schema = pa.schema([
        ("query_id", pa.string()), ("subset", pa.string()), ("stage", pa.string()),
        ("judge_model", pa.string()), ("prompt_version", pa.string()), ("window_start", pa.int64()),
        ("window_docids", pa.list_(pa.string())), ("status", pa.string()), ("reason", pa.string()),
        ("raw_response", pa.string()), ("better", pa.list_(pa.int64())), ("worse", pa.list_(pa.int64())),
        ("better_docids", pa.list_(pa.string())), ("worse_docids", pa.list_(pa.string())),
        ("finish_reason", pa.string()), ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
        ("attempts", pa.int64()), ("passages_shortened", pa.int64()), ("prompt_tokens_removed", pa.int64()),
    ])
    return pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)


def method_judgments_table(rows: list[dict], schema: pa.Schema | None = None) -> pa.Table:
    """A method's judgments config (ARHN: ``arhn.JUDGMENT_SCHEMA``; CLEAR, PercPos: the columns
    of their rows, every key of every row, missing values null)."""
    if schema is None:
        names: dict[str, None] = {}
        for r in rows:
            names.update(dict.fromkeys(r))
        return pa.Table.from_pylist([{k: r.get(k) for k in names} for r in rows])
    return pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)
