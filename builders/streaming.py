"""Bounded memory: the build works through the source in chunks of ``output.chunk_rows`` rows and
keeps no more than two chunks in memory (the one being finished, and the next one, whose judge
calls already go out: ``builders.build._judge_chunks``).

- ``chunks(rows, n)`` cuts the validated row stream (a generator over the source) into lists;
- ``ConfigSpool`` receives each chunk's refined configs and judgments and appends them to
  temporary parquet files (every column kept: scores and prompt may be null; a row that several
  configs hold is spooled once); ``finish`` then streams them into the dataset folder's
  ``<config>/train-XXXXX-of-YYYYY.parquet``
  shards (shard count from the final row counts, exactly as ``writers.write_shards`` cuts
  them) with the columns a one-shot write would choose (per config: scores when every positive
  has one, as ``writers.tevatron_table`` decides; prompt when any row has one);
- ``ResultAccumulator`` sums what each chunk's ``MethodResult`` counts; ``add_judge_runs`` and
  ``add_ledger`` sum the chunks' annotator ledgers and cost ledgers.

Rows keep their source order in every config. The ``judgments`` config is ordered chunk by
chunk (within a chunk: stage, subset, query_id, window). An exact duplicate row in a later
chunk is answered from the judgment store, or from the overlapping chunk's call it waits for (not
paid twice), but counted again in that chunk's call counters.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from builders.judges.ledger import CostLedger
from builders.methods.base import JudgeInfo, MethodResult
from builders.output.writers import has_scores, judgments_table, tevatron_schema, tevatron_table, write_bge_jsonl
from builders.rows import QueryRow

BATCH_ROWS = 1_000  # rows per parquet write while streaming a spool into the final shards
SPOOL_SLICE_ROWS = 100  # rows converted to Arrow at a time while spooling a chunk


M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas before the look-ahead's threads start -> whether it was set.

    glibc gives each thread that allocates its own arena (up to 8 per core); the reader and writer
    threads allocate passages (Python strings over 512 bytes come from malloc) in arenas that
    fragment apart, and peak RSS grew with the rows: 976 MiB at 100K BGE rows against 862 MiB
    with one arena (``bench/memory_rows.py``). A ``MALLOC_ARENA_MAX`` the user set wins; elsewhere
    than glibc this does nothing."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))


def trim_malloc() -> bool:
    """Give glibc's free pages back to the system (``malloc_trim``) -> whether it ran. The build
    calls it once a chunk is written: a chunk's passages (strings over 512 bytes come from
    malloc) are freed in holes between longer-lived allocations, and without it peak RSS grew
    with the rows (``bench/memory_rows.py``). A few milliseconds a chunk; elsewhere than glibc
    this does nothing."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    return bool(malloc_trim(0))


def arrow_system_pool() -> bool:
    """Arrow's buffers from the C allocator instead of its bundled mimalloc from now on -> whether
    it was switched. The build switches once its calls are over: mimalloc keeps freed pages for
    reuse, and writing the final shards from the spool (a row group read, cast and compressed at a
    time) and reading them back for ``dataset_info`` raised peak RSS at 100K BGE rows to 594 MiB
    (``bench/memory_rows.py``). Not before: while the calls go out, the C allocator (arenas capped)
    cost the event loop ~50 % more CPU per request (``bench/cli_throughput.py``). An
    ``ARROW_DEFAULT_MEMORY_POOL`` the user set wins."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return False
    pa.set_memory_pool(pa.system_memory_pool())
    return True


def chunks(rows: Iterable[QueryRow], size: int | None) -> Iterator[list[QueryRow]]:
    """Lists of at most ``size`` rows (``None``: one list with everything)."""
    it = iter(rows)
    if size is None:
        yield list(it)
        return
    if size < 1:
        raise ValueError(f"output.chunk_rows must be >= 1 or null, got {size}")
    batch = list(islice(it, size))
    yield batch  # at least one (maybe empty) chunk: an empty source still builds its (empty) configs
    while batch := list(islice(it, size)):
        yield batch


class ConfigSpool:
    """Temporary parquet files, appended chunk by chunk, then written out as the configs' shards.

    A chunk's configs mostly hold the same rows: RLHN's ``default``, ``remove``, ``hn_remove``
    and ``rlhn`` return a row object unchanged unless it has a false negative. Each distinct
    row object of a chunk is converted to Arrow and spooled once (``rows.parquet``, row groups
    of ``SPOOL_SLICE_ROWS``); each config spools only the positions of its rows among them
    (``<config>.rows.parquet``, one row group per chunk). Spooling four configs cost ~180 ms of
    CPU per 1,000 BGE rows, taken from the next chunk's judge calls; once, ~40 ms (and a quarter
    of the scratch disk). ``finish`` takes each config's rows back, a slice at a time, reading
    only the row groups the slice needs (memory: a few thousand rows)."""

    FULL = tevatron_schema(with_scores=True, with_prompt=True)
    ROWS = "rows"  # the scratch file of distinct rows (not a config)

    def __init__(self, folder: Path, scratch: Path, bge_jsonl: bool = False):
        self.folder = Path(folder)
        Path(scratch).mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="spool-", dir=scratch))
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.rows: Counter = Counter()
        self.order: list[str] = []  # config names in the order the method returns them
        self.tables: list[str] = []  # table configs (judgments), written with their own schema
        self.scored: dict[str, bool] = {}  # config -> every positive so far has a score (writers' rule)
        self.any_prompt = False
        self.bge_jsonl = bge_jsonl
        self.chunk_groups: list[tuple[int, int]] = []  # per chunk: (first row group in rows.parquet, row groups)
        self.row_groups = 0  # row groups written to rows.parquet so far
        self.positions: dict[str, dict[int, int]] = {}  # config -> chunk -> its row group in <config>.rows.parquet

    def _writer(self, name: str, schema: pa.Schema) -> pq.ParquetWriter:
        if name not in self.writers:
            # scratch files read once by ``finish``: no compression, dictionaries or statistics (CPU the
            # next chunk's judge calls need, while this chunk is spooled)
            self.writers[name] = pq.ParquetWriter(self.tmp / f"{name}.parquet", schema, compression="none",
                                                  use_dictionary=False, write_statistics=False)
        return self.writers[name]

    def add(self, configs: dict[str, list[QueryRow]], judgments: list[dict]) -> None:
        chunk = len(self.chunk_groups)
        distinct: list[QueryRow] = []
        at: dict[int, int] = {}  # id(row) -> its position among the chunk's distinct rows
        for name, rows in configs.items():
            if name not in self.order:
                self.order.append(name)
            if not rows:
                continue
            self.scored[name] = self.scored.get(name, True) and has_scores(rows)
            self.any_prompt |= any(r.prompt is not None for r in rows)
            positions = []
            for row in rows:
                position = at.get(id(row))
                if position is None:
                    position = at[id(row)] = len(distinct)
                    distinct.append(row)
                positions.append(position)
            self._writer(f"{name}.{self.ROWS}", POSITIONS).write_table(pa.table({"row": pa.array(positions, pa.int32())}))
            groups = self.positions.setdefault(name, {})
            groups[chunk] = len(groups)  # this chunk's row group in the config's positions file
            self.rows[name] += len(rows)
            if self.bge_jsonl:
                path = self.tmp / "bge" / f"{name}.jsonl"
                write_bge_jsonl(rows, path.with_suffix(".part"))
                with open(path, "ab") as whole, open(path.with_suffix(".part"), "rb") as part:
                    shutil.copyfileobj(part, whole)
        # in slices: pyarrow holds the GIL while it converts Python rows, and the event loop
        # (the next chunk's judge calls) needs it back every few milliseconds
        for start in range(0, len(distinct), SPOOL_SLICE_ROWS):
            table = tevatron_table(distinct[start:start + SPOOL_SLICE_ROWS], with_scores=True, with_prompt=True)
            self._writer(self.ROWS, self.FULL).write_table(table)
        groups = -(-len(distinct) // SPOOL_SLICE_ROWS)
        self.chunk_groups.append((self.row_groups, groups))
        self.row_groups += groups
        if judgments:
            self.add_table("judgments", judgments_table(judgments))

    def add_table(self, name: str, table: pa.Table) -> None:
        """Rows of a table config written as is (the judgments configs: one per method)."""
        if name not in self.tables:
            self.tables.append(name)
        if table.num_rows:
            self._writer(name, table.schema).write_table(table)
            self.rows[name] += table.num_rows

    def finish(self, rows_per_shard: int | None) -> dict[str, int]:
        """Write the dataset folder's parquet shards -> rows per written config (empty configs
        are not written; config folders not written now are removed, as in
        ``writers.write_dataset_repo``)."""
        for w in self.writers.values():
            w.close()
        self.folder.mkdir(parents=True, exist_ok=True)
        if "data" in self.rows:
            raise ValueError("`data` is not allowed as a config name on the Hub")
        written: dict[str, int] = {}
        # pre_buffer=False: by default pyarrow (26) caches the whole file while iterating
        distinct = pq.ParquetFile(self.tmp / f"{self.ROWS}.parquet", pre_buffer=False) if self.row_groups else None
        for name in self.order:
            if not self.rows[name]:
                continue
            schema = tevatron_schema(self.scored.get(name, False), self.any_prompt)
            shards = ShardWriter(self.folder / name, schema, self.rows[name], rows_per_shard)
            positions = pq.ParquetFile(self.tmp / f"{name}.{self.ROWS}.parquet", pre_buffer=False)
            for chunk, group in self.positions[name].items():
                first, _ = self.chunk_groups[chunk]
                wanted = positions.read_row_group(group).column("row").to_pylist()
                for start in range(0, len(wanted), BATCH_ROWS):
                    shards.write(_take(distinct, first, wanted[start:start + BATCH_ROWS]).select(schema.names).cast(schema))
            shards.close()
            written[name] = self.rows[name]
        for name in self.tables:
            if not self.rows[name]:
                continue
            source = pq.ParquetFile(self.tmp / f"{name}.parquet", pre_buffer=False)
            shards = ShardWriter(self.folder / name, source.schema_arrow, self.rows[name], rows_per_shard)
            for batch in source.iter_batches(batch_size=BATCH_ROWS):
                shards.write(pa.Table.from_batches([batch]))
            shards.close()
            written[name] = self.rows[name]
        for child in self.folder.iterdir():
            if child.is_dir() and child.name not in written and any(child.glob("train-*-of-*.parquet")):
                shutil.rmtree(child)
        if self.bge_jsonl:
            (self.folder / "bge").mkdir(exist_ok=True)
            for name in self.order:
                part = self.tmp / "bge" / f"{name}.jsonl"
                if part.exists():
                    shutil.move(part, self.folder / "bge" / f"{name}.jsonl")
                else:
                    (self.folder / "bge" / f"{name}.jsonl").write_bytes(b"")
        shutil.rmtree(self.tmp, ignore_errors=True)
        return written

    def discard(self) -> None:
        for w in self.writers.values():
            w.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


POSITIONS = pa.schema([("row", pa.int32())])


def _take(distinct: pq.ParquetFile, first_group: int, positions: list[int]) -> pa.Table:
    """The rows at ``positions`` among a chunk's distinct rows (whose row groups start at
    ``first_group``, ``SPOOL_SLICE_ROWS`` rows each but the last), reading only their groups."""
    groups = sorted({p // SPOOL_SLICE_ROWS for p in positions})
    rank = {g: i for i, g in enumerate(groups)}
    table = distinct.read_row_groups([first_group + g for g in groups])
    return table.take(pa.array([rank[p // SPOOL_SLICE_ROWS] * SPOOL_SLICE_ROWS + p % SPOOL_SLICE_ROWS for p in positions], pa.int32()))


class ShardWriter:
    """``folder/{split}-XXXXX-of-YYYYY.parquet`` from tables of any size, in order: ``total``
    rows cut into shards as ``writers.write_shards`` cuts them, each written in row groups of
    ``BATCH_ROWS`` (cut at shard ends), however the rows arrive: the bytes do not depend on the
    chunking. Stale shards of that split are removed first."""

    def __init__(self, folder: Path, schema: pa.Schema, total: int, rows_per_shard: int | None, split: str = "train"):
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob(f"{split}-*-of-*.parquet"):
            old.unlink()
        self.folder, self.schema, self.split = folder, schema, split
        self.n = max(1, -(-total // rows_per_shard)) if rows_per_shard else 1
        self.size = -(-total // self.n)
        self.shard, self.in_shard, self.writer = 0, 0, None
        self.pending: list[pa.Table] = []
        self.pending_rows = 0

    def write(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.pending_rows += table.num_rows
        while self.pending_rows >= BATCH_ROWS:
            self._flush(BATCH_ROWS)

    def close(self) -> None:
        if self.pending_rows:
            self._flush(self.pending_rows)
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _flush(self, rows: int) -> None:
        """Write the first ``rows`` pending rows as one batch, cut at shard ends."""
        pending = pa.concat_tables(self.pending)
        table, rest = pending.slice(0, rows).combine_chunks(), pending.slice(rows)
        self.pending, self.pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
        while table.num_rows:
            if self.writer is None:
                self.writer = pq.ParquetWriter(self.folder / f"{self.split}-{self.shard:05d}-of-{self.n:05d}.parquet", self.schema)
            take = table.slice(0, self.size - self.in_shard)
            self.writer.write_table(take)
            self.in_shard += take.num_rows
            table = table.slice(take.num_rows)
            if self.in_shard == self.size:
                self.writer.close()
                self.writer, self.shard, self.in_shard = None, self.shard + 1, 0


class ResultAccumulator:
    """Sums one method's chunk results into one ``MethodResult`` (configs hold names only: the
    rows are in the spool; judgments are in the spool too)."""

    def __init__(self, name: str):
        self.result = MethodResult(name=name, configs={})
        self.judges: list[JudgeInfo] = []
        self.fallback_judges: list[JudgeInfo] = []

    def add(self, result: MethodResult, judged_any: bool) -> None:
        """``judged_any``: the chunk asked a judge something; judges of chunks that asked
        nothing (their default prompt version) are listed only when no chunk asked anything."""
        for subset, counters in result.stats.items():
            self.result.stats[subset].update(counters)
        for name in result.configs:
            self.result.configs.setdefault(name, [])
        chosen = self.judges if judged_any else self.fallback_judges
        for j in result.judges:
            if j not in chosen:
                chosen.append(j)

    def finish(self) -> MethodResult:
        judges = self.judges or self.fallback_judges
        stages = list(dict.fromkeys(j.stage for j in judges))  # in the order the method runs them
        self.result.judges = sorted(judges, key=lambda j: (stages.index(j.stage), j.prompt_version))
        return self.result


def add_judge_runs(into: dict, other: dict) -> None:
    """Sum per-stage annotator ledgers chunk by chunk (``stage -> ledger``, or RLHN's
    ``stage -> prompt group -> ledger``)."""
    for stage, led in other.items():
        if "calls" in led:
            into[stage] = _add_ledgers(into.get(stage), led)
        else:
            groups = into.setdefault(stage, {})
            for group, ledger in led.items():
                groups[group] = _add_ledgers(groups.get(group), ledger)


def add_ledger(into: CostLedger, other: CostLedger) -> None:
    """Sum a chunk's cost ledger into the build's (wall time adds up across chunks)."""
    for key, row in other.rows.items():
        mine = into.row(*key)
        mine.add(row)
        mine.wall_s = round(mine.wall_s + row.wall_s, 3)


def _add_ledgers(a: dict | None, b: dict) -> dict:
    if a is None:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in b.items()}
    out = {}
    for k, v in b.items():
        if isinstance(v, dict):
            out[k] = dict(Counter(a.get(k, {})) + Counter(v)) or {}
        elif k == "wall_s":
            out[k] = round(a.get(k, 0.0) + v, 3)
        else:
            out[k] = a.get(k, 0) + v
    return out
