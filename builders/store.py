"""Durable judgment store: one SQLite file, one row per ``(stage, judge_model, prompt_version, key)``.

Every judge answer is committed the moment it arrives (WAL journal, ``synchronous=FULL``, one
transaction per result), so a run killed at any point - SIGKILL included - loses at most the
calls that were in flight, and a rerun pays for nothing already stored. Other processes can
read the file while a run writes it (WAL readers never block the writer).

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

import hashlib
import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Literal

from builders.endpoints.base import GenerateRequest

Status = Literal["ok", "unparseable", "failed"]

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
    """A stable hash of everything that shapes the answer (messages, limits, sampling, constraint)."""
    return hashlib.sha256(json.dumps(asdict(request), sort_keys=True, default=str).encode()).hexdigest()


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


class JudgmentStore:
    """``JudgmentStore(path)`` opens (or creates) the file; ``readonly=True`` opens it for
    reading while another process writes. Use as a context manager or call ``close()``."""

    def __init__(self, path: str | Path, *, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"judgment store {self.path} does not exist")
            self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # explicit transactions
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(SCHEMA)
        self._conn.execute("PRAGMA busy_timeout=30000")

    # ------------------------------------------------------------------ writing
    def put(self, judgment: Judgment) -> None:
        """Insert or replace one judgment and commit it (durable when this returns)."""
        if self.readonly:
            raise PermissionError(f"judgment store {self.path} was opened read-only")
        placeholders = ", ".join("?" for _ in _COLUMNS)
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            now = time.time()
            previous = self.get(judgment.stage, judgment.judge_model, judgment.prompt_version, judgment.key)
            judgment.created_at = previous.created_at if previous else (judgment.created_at or now)
            judgment.updated_at = now
            values = asdict(judgment)
            values["retryable"] = int(judgment.retryable)
            values["meta"] = json.dumps(judgment.meta, sort_keys=True, default=str)
            self._conn.execute(
                f"INSERT OR REPLACE INTO judgments ({', '.join(_COLUMNS)}) VALUES ({placeholders})",
                [values[c] for c in _COLUMNS],
            )
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

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

    def __enter__(self) -> "JudgmentStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
