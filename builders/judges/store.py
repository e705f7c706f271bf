"""Durable judgment store: one SQLite file, one row per ``(stage, judge_model, prompt_version, key)``.

Writing: the annotator writes through ``GroupWriter`` (``store.group_writer()``): a thread with
its own connection collects results and commits them together, one transaction at most every
``max_delay_s`` (50 ms) or ``max_rows`` rows, whichever comes first, so the event loop never
waits on the disk and one fsync covers many answers. ``await writer.put(judgment)`` returns
only after the transaction holding it committed; the annotator counts a result done (and the
progress bar advances) only then. ``put()`` is the one-row synchronous form (commits at once).

Durability (WAL journal; ``synchronous="NORMAL"`` by default, ``"FULL"`` on request):

- SIGKILL, a crash or an exception of the builder process at any moment: every committed row
  survives (a WAL commit has reached the operating system before COMMIT returns) and the file
  stays consistent; what is lost is the calls in flight and the rows of the batch not yet
  committed - none of which was counted done, so a rerun asks for exactly those and pays for
  nothing already stored.
- Power loss or an OS crash: the file is never corrupted; with ``NORMAL`` the last commits since
  the OS last flushed the WAL may roll back (they are asked again); ``FULL`` fsyncs each commit.

Other processes can read the file while a run writes it (WAL readers never block the writer).

Statuses:
- ``ok``: a parseable answer (``text``).
- ``unparseable``: the judge answered, but not in the protocol, after all parse retries; the
  raw text is kept and the method counts it - never read as "no false negative".
- ``failed``: no answer; ``error_kind``/``error_message`` say why. ``retryable`` failures
  (overloaded, server, timeout, connection) are tried again by the next run; the others
  (validation: the server will say the same again) are final.

``request_sha`` is the hash of the request the answer belongs to: when a method changes the
prompt for a key without bumping ``prompt_version``, the stored answer no longer counts as final.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from builders.judges.endpoints.base import GenerateRequest

Status = Literal["ok", "unparseable", "failed"]
Synchronous = Literal["NORMAL", "FULL"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS judgments (
    stage TEXT NOT NULL,
    judge_model TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    key TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'unparseable', 'failed')),
    text TEXT,
    finish_reason TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    error_kind TEXT,
    error_message TEXT,
    retryable INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    request_sha TEXT,
    meta TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (stage, judge_model, prompt_version, key)
);
"""


def request_sha(request: GenerateRequest) -> str:
    """A stable hash of everything that shapes the answer (messages, limits, sampling, constraint).
    A ``GenerateRequest``'s fields are listed by hand (the same JSON as ``asdict``, which copies
    every message first: a third of this function's time on long prompts)."""
    if type(request) is GenerateRequest:
        c = request.constraint
        fields = {"messages": request.messages, "max_new_tokens": request.max_new_tokens,
                  "temperature": request.temperature, "seed": request.seed,
                  "constraint": None if c is None else {"kind": c.kind, "value": c.value}, "stop": request.stop}
    else:
        fields = asdict(request)
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Judgment:
    stage: str
    judge_model: str
    prompt_version: str
    key: str
    status: Status
    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error_kind: str | None = None
    error_message: str | None = None
    retryable: bool = False
    attempts: int = 0
    request_sha: str | None = None
    meta: dict = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def is_final(self) -> bool:
        """Final answers are never asked again: ok, unparseable, and non-retryable failures."""
        return self.status in ("ok", "unparseable") or not self.retryable


_KEY_BATCH = 500  # keys per SELECT ... IN (...) of ``get_many`` (SQLite's limit of bound parameters is 32766)
_COLUMNS = [
    "stage", "judge_model", "prompt_version", "key", "status", "text", "finish_reason", "prompt_tokens",
    "completion_tokens", "error_kind", "error_message", "retryable", "attempts", "request_sha", "meta",
    "created_at", "updated_at",
]


def _from_row(row: tuple) -> Judgment:
    values = dict(zip(_COLUMNS, row))
    values["retryable"] = bool(values["retryable"])
    values["meta"] = json.loads(values["meta"] or "{}")
    return Judgment(**values)


def _connect_writer(path: Path, synchronous: Synchronous) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)  # explicit transactions
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _write(conn: sqlite3.Connection, judgments: Sequence[Judgment]) -> None:
    """Insert or replace ``judgments`` in ONE transaction (kept ``created_at`` of earlier rows)."""
    placeholders = ", ".join("?" for _ in _COLUMNS)
    select = "SELECT created_at FROM judgments WHERE stage=? AND judge_model=? AND prompt_version=? AND key=?"
    conn.execute("BEGIN IMMEDIATE")
    try:
        now = time.time()
        rows = []
        for judgment in judgments:
            previous = conn.execute(select, (judgment.stage, judgment.judge_model, judgment.prompt_version,
                                             judgment.key)).fetchone()
            judgment.created_at = previous[0] if previous else (judgment.created_at or now)
            judgment.updated_at = now
            values = asdict(judgment)
            values["retryable"] = int(judgment.retryable)
            values["meta"] = json.dumps(judgment.meta, sort_keys=True, default=str)
            rows.append([values[c] for c in _COLUMNS])
        conn.executemany(f"INSERT OR REPLACE INTO judgments ({', '.join(_COLUMNS)}) VALUES ({placeholders})", rows)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class JudgmentStore:
    """``JudgmentStore(path)`` opens (or creates) the file; ``readonly=True`` opens it for
    reading while another process writes. Use as a context manager or call ``close()``."""

    def __init__(self, path: str | Path, *, readonly: bool = False, synchronous: Synchronous = "NORMAL"):
        self.path = Path(path)
        self.readonly = readonly
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        self.synchronous = synchronous
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"judgment store {self.path} does not exist")
            self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = _connect_writer(self.path, synchronous)
            self._conn.executescript(SCHEMA)
        self._conn.execute("PRAGMA busy_timeout=30000")
        # (stage, judge, prompt version, key) -> the judgment being asked in this process right now
        # (resolved with it once committed, None when the ask stopped): runs that overlap - the next
        # chunk's, in a streamed build - wait for it instead of paying for the same answer twice
        self.asking: dict[tuple[str, str, str, str], asyncio.Future] = {}

    # ------------------------------------------------------------------ writing
    def put(self, judgment: Judgment) -> None:
        """Insert or replace one judgment and commit it (committed when this returns)."""
        self._check_writable()
        _write(self._conn, [judgment])

    def group_writer(self, *, max_delay_s: float = 0.05, max_rows: int = 256) -> GroupWriter:
        """A group-commit writer for many results from an event loop (see the module docstring)."""
        self._check_writable()
        return GroupWriter(self.path, self.synchronous, max_delay_s=max_delay_s, max_rows=max_rows)

    def _check_writable(self) -> None:
        if self.readonly:
            raise PermissionError(f"judgment store {self.path} was opened read-only")

    # ------------------------------------------------------------------ reading
    def _empty_for_reader(self) -> bool:
        """A reader that opened the file before the writer created its table sees an empty store."""
        if not self.readonly:
            return False
        found = self._conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='judgments'").fetchone()
        return found is None

    def get(self, stage: str, judge_model: str, prompt_version: str, key: str) -> Judgment | None:
        if self._empty_for_reader():
            return None
        row = self._conn.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM judgments WHERE stage=? AND judge_model=? AND prompt_version=? AND key=?",
            (stage, judge_model, prompt_version, key),
        ).fetchone()
        return _from_row(row) if row else None

    def get_many(self, stage: str, judge_model: str, prompt_version: str, keys: Sequence[str]) -> dict[str, Judgment]:
        """The stored judgments of ``keys`` (key -> judgment; keys not stored are absent), read by
        primary key in batches: a run reads what it asks about, not the stage's whole history."""
        if self._empty_for_reader() or not keys:
            return {}
        found: dict[str, Judgment] = {}
        sql = (f"SELECT {', '.join(_COLUMNS)} FROM judgments WHERE stage=? AND judge_model=? AND prompt_version=? "
               "AND key IN ({})")
        for start in range(0, len(keys), _KEY_BATCH):
            batch = list(keys[start:start + _KEY_BATCH])
            rows = self._conn.execute(sql.format(",".join("?" * len(batch))), (stage, judge_model, prompt_version, *batch))
            for row in rows.fetchall():
                judgment = _from_row(row)
                found[judgment.key] = judgment
        return found

    def judgments(self, stage: str | None = None, judge_model: str | None = None,
                  prompt_version: str | None = None, status: Status | None = None) -> Iterator[Judgment]:
        """All judgments matching the given fields (None: any), in key order."""
        if self._empty_for_reader():
            return
        where, params = [], []
        for column, value in (("stage", stage), ("judge_model", judge_model),
                              ("prompt_version", prompt_version), ("status", status)):
            if value is not None:
                where.append(f"{column}=?")
                params.append(value)
        sql = f"SELECT {', '.join(_COLUMNS)} FROM judgments"
        if where:
            sql += " WHERE " + " AND ".join(where)
        for row in self._conn.execute(sql + " ORDER BY stage, judge_model, prompt_version, key", params).fetchall():
            yield _from_row(row)

    def counts(self, stage: str | None = None, judge_model: str | None = None,
               prompt_version: str | None = None) -> dict[str, int]:
        """``{"ok": n, "unparseable": n, "failed": n}`` for the matching judgments."""
        counts = {"ok": 0, "unparseable": 0, "failed": 0}
        for judgment in self.judgments(stage, judge_model, prompt_version):
            counts[judgment.status] += 1
        return counts

    def integrity_check(self) -> str:
        return self._conn.execute("PRAGMA integrity_check").fetchone()[0]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> JudgmentStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class GroupWriter:
    """Batches judgments into few transactions on a thread of its own.

        async with store.group_writer() as writer:
            await writer.put(judgment)  # returns once the row is committed

    The thread takes the first waiting row, sleeps ``max_delay_s`` (not when the last batch was
    full), takes what arrived meanwhile up to ``max_rows`` rows, writes them in one
    transaction and wakes every waiter (or hands each the error if the transaction failed).
    Leaving the ``async with`` block commits what is queued and stops the thread.
    """

    _STOP = object()

    def __init__(self, path: Path, synchronous: Synchronous, *, max_delay_s: float = 0.05, max_rows: int = 256):
        if max_rows < 1 or max_delay_s < 0:
            raise ValueError(f"max_rows must be >= 1 and max_delay_s >= 0, got {max_rows}, {max_delay_s}")
        self.path = path
        self.synchronous = synchronous
        self.max_delay_s = max_delay_s
        self.max_rows = max_rows
        self.commits = 0  # transactions written
        self.rows = 0  # rows committed
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def __aenter__(self) -> GroupWriter:
        self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await asyncio.to_thread(self.stop)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"judgment-store-writer:{self.path.name}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Commit what is queued and stop the thread (blocks; call from a thread or at the end)."""
        if self._thread is not None:
            self._queue.put(self._STOP)
            self._thread.join()
            self._thread = None

    async def put(self, judgment: Judgment) -> None:
        await self.submit(judgment)

    def submit(self, judgment: Judgment) -> asyncio.Future:
        """Queue ``judgment``; the future resolves once its transaction has committed (or holds
        the error). For callers that go on working while the row is written."""
        if self._thread is None:
            raise RuntimeError("GroupWriter.put before start(): use `async with store.group_writer() as writer`")
        done = asyncio.get_running_loop().create_future()
        self._queue.put((judgment, done))
        return done

    def _run(self) -> None:
        conn = _connect_writer(self.path, self.synchronous)
        try:
            stopping = full = False
            while not stopping:
                first = self._queue.get()
                if first is self._STOP:
                    break
                batch = [first]
                if not full:  # asleep, not woken by every row: each wake takes the GIL from the event loop
                    time.sleep(self.max_delay_s)
                while len(batch) < self.max_rows:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is self._STOP:
                        stopping = True
                        break
                    batch.append(item)
                full = len(batch) == self.max_rows  # more may be waiting: the next batch goes at once
                self._commit(conn, batch)
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list) -> None:
        error: BaseException | None = None
        try:
            _write(conn, [judgment for judgment, _ in batch])
            self.commits += 1
            self.rows += len(batch)
        except Exception as caught:  # noqa: BLE001 - handed to every waiter of the batch
            error = caught
        _resolve([done for _, done in batch], error)


def _resolve(waiters: list[asyncio.Future], error: BaseException | None) -> None:
    """Settle a batch's futures with one wake-up of each event loop they belong to."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future]] = {}
    for done in waiters:
        by_loop.setdefault(done.get_loop(), []).append(done)

    def settle(futures: list[asyncio.Future]) -> None:
        for done in futures:
            if done.cancelled():
                continue
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

    for loop, futures in by_loop.items():
        try:
            loop.call_soon_threadsafe(settle, futures)
        except RuntimeError:  # that loop has closed: nobody is waiting any more
            pass
