"""Which source records belong to a shard of a ``--shard i/N`` build (``builders.scale.shard``).

A row belongs to shard ``int(md5(query_id)[:16], 16) % N`` (md5, not ``hash()``: the same row
lands in the same shard on every machine and every Python run). query_id is what validation
gives the row (``query_id`` when the source has one, else ``md5(query)``), so exact duplicate
rows and rows sharing a query stay in one shard. A record that has no usable query (malformed
JSON, empty query) belongs to shard 0, which reports it. The selection runs before validation,
so a shard validates and judges 1/N of the rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from builders.rows import md5
from builders.sources.readers import RawRecord


@dataclass(frozen=True)
class Shard:
    index: int  # 0-based
    count: int

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= i < N and N >= 1 (e.g. --shard 0/4 ... 3/4)")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def folder_name(self) -> str:
        return f"shard-{self.index:05d}-of-{self.count:05d}"

    def owns(self, query_id: str | None) -> bool:
        return shard_of(query_id, self.count) == self.index


def parse_shard(text: str) -> Shard:
    """``"2/8"`` -> ``Shard(2, 8)``."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard needs I/N with integers, e.g. 0/4; got {text!r}") from None
    return Shard(i, n)


def shard_of(query_id: str | None, count: int) -> int:
    """The shard a query_id belongs to; records without one (unreadable) go to shard 0."""
    if query_id is None:
        return 0
    return int(hashlib.md5(query_id.encode("utf-8")).hexdigest()[:16], 16) % count


def record_query_id(rec: RawRecord) -> str | None:
    """The query_id validation will give this record (``builders.sources.validate.check_record``), or
    None when it has no usable query (validation skips or fails it)."""
    d = rec.data
    if d is None:
        return None
    query = d.get("query")
    if not isinstance(query, str) or not query.strip():
        return None
    qid = d.get("query_id")
    return str(qid) if qid else md5(query)


def select_records(records: Iterable[RawRecord], shard: Shard | None) -> Iterator[RawRecord]:
    """The records of one shard, in source order (all of them for ``shard=None``)."""
    for rec in records:
        if shard is None or shard.owns(record_query_id(rec)):
            yield rec
