"""Sharded parquet for big configs: `max_shard_size` like `Dataset.push_to_hub`.

`write_sharded_parquet(rows_or_table, out_dir, split="train", max_shard_size="500MB")` writes
`{split}-{i:05d}-of-{n:05d}.parquet` into `out_dir` (one config's folder of the Hub layout).
Rows per shard come from the byte budget and the table's in-memory size (the same estimate
`datasets` uses: Arrow bytes / rows), at least one row per shard. Shards of the same split left
over from an earlier write with another shard count are removed, so the folder holds exactly this
write's files.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datasets.utils.py_utils import convert_file_size_to_int


def shard_name(split: str, index: int, total: int) -> str:
    return f"{split}-{index:05d}-of-{total:05d}.parquet"


def rows_per_shard(table: pa.Table, max_shard_size: int | str) -> int:
    """How many rows fit a shard of `max_shard_size` bytes (Arrow size estimate, >= 1)."""
    budget = convert_file_size_to_int(max_shard_size)
    if budget <= 0:
        raise ValueError(f"max_shard_size must be positive, got {max_shard_size!r}")
    if table.num_rows == 0:
        return 1
    bytes_per_row = max(table.nbytes / table.num_rows, 1.0)
    return max(1, int(budget // bytes_per_row))


def write_sharded_parquet(
    table_or_rows: pa.Table | Iterable[dict],
    out_dir: str | Path,
    split: str = "train",
    max_shard_size: int | str = "500MB",
) -> list[Path]:
    """Write `table_or_rows` as shards of at most ~`max_shard_size`; return their paths in order."""
    table = table_or_rows if isinstance(table_or_rows, pa.Table) else pa.Table.from_pylist(list(table_or_rows))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_shard = rows_per_shard(table, max_shard_size)
    total = max(1, math.ceil(table.num_rows / per_shard))
    written = []
    for index in range(total):
        path = out_dir / shard_name(split, index, total)
        pq.write_table(table.slice(index * per_shard, per_shard), path)
        written.append(path)
    pattern = re.compile(rf"^{re.escape(split)}-\d{{5}}-of-\d{{5}}\.parquet$")
    keep = {p.name for p in written}
    for old in out_dir.iterdir():
        if pattern.match(old.name) and old.name not in keep:
            old.unlink()
    return written
