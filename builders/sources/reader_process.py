"""The source in chunks, read and validated in another process once it holds more than one.

A streamed build reads chunk n+1 while chunk n's judge calls go out (``builders.build``). Read in
the build's own process, on a thread, parsing and validating 1,000 BGE rows held the GIL for
~130 ms that the event loop needed to send and read calls (``bench/cli_throughput.py``: 1000-row
chunks fell behind one chunk). A reader process does that work on another core and sends the
rows pickled; unpickling 1,000 rows costs the build ~25 ms.

``ChunkReader(sources, policy, report, size, ...)`` iterates like
``streaming.chunks(validate(records), size)``:

- the first chunk is read in this process, so a source of one chunk (and every small build)
  starts no process;
- when the source holds more, a reader process (a fresh interpreter) opens it again, skips the records already read
  (parsing them, not validating them) and sends the rest in batches of ``BATCH_ROWS`` rows, each
  with the validation problems and counts of its records, in source order;
- ``report`` fills as the chunks are taken; under ``validation.policy: fail`` the reader's first
  problem is raised here as ``InvalidRowError``, and any other error of the reader with its type
  and message (a reader that dies: ``RuntimeError`` with its exit code);
- the process sends at most one batch ahead (a pipe blocks it), so memory stays flat;
  ``close()`` stops it (the build calls it when it ends, however it ends).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Iterator
from itertools import islice
from multiprocessing import BufferTooShort as BufferTooShortError
from multiprocessing.connection import Connection

from builders.rows import QueryRow
from builders.sources.readers import SourceConfig, read_sources
from builders.sources.shard_rows import Shard, select_records
from builders.sources.validate import InvalidRowError, ValidationReport, validate

BATCH_ROWS = 200  # rows per message from the reader process
_COUNTS = ("rows_read", "rows_kept", "rows_skipped", "rows_repaired")


class ReaderProcessError(RuntimeError):
    """The reader process failed with an error that could not travel as itself."""


def records_of(sources: list[SourceConfig], shard: Shard | None, progress: bool, desc: str, skip: int = 0):
    """(the raw records of the build's shard in source order, past the first ``skip``; the same
    under a progress bar). Skipped on the records themselves: a tqdm iterator that is dropped
    closes the generator under it."""
    from tqdm.auto import tqdm

    records = select_records(read_sources(sources), shard)
    for _ in islice(records, skip):
        pass
    return records, tqdm(records, desc=desc, unit="row", disable=not progress, dynamic_ncols=True, initial=skip)


class _Counted:
    """An iterator that counts what it has handed out (the raw records validation consumed)."""

    def __init__(self, it):
        self.it, self.n = iter(it), 0

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self.it)
        self.n += 1
        return item


class ChunkReader:
    def __init__(self, sources: list[SourceConfig], policy: str, report: ValidationReport, size: int | None,
                 shard: Shard | None = None, progress: bool = True):
        if size is not None and size < 1:
            raise ValueError(f"output.chunk_rows must be >= 1 or null, got {size}")
        if not sources:
            raise ValueError("the recipe names no `sources`")
        self.sources, self.policy, self.report, self.size = sources, policy, report, size
        self.shard, self.progress = shard, progress
        self.desc = "read+validate" if shard is None else f"read+validate (shard {shard})"
        self._first = True
        self._done = False
        self._process = None
        self._conn = None
        self._leftover: list[QueryRow] = []
        # one receive buffer, reused (a batch is ~3 MB): not a fresh bytes object per message in
        # the heap between the rows that outlive it (peak RSS: ``bench/memory_rows.py``)
        self._buffer = bytearray(1 << 22)
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[list[QueryRow]]:
        return self

    def __next__(self) -> list[QueryRow]:
        if self._first:
            self._first = False
            return self._first_chunk()
        if self._done and not self._leftover:
            raise StopIteration
        chunk, self._leftover = self._leftover, []
        while len(chunk) < self.size and not self._done:
            chunk.extend(self._receive())
        if len(chunk) > self.size:
            chunk, self._leftover = chunk[: self.size], chunk[self.size:]
        if not chunk:
            raise StopIteration
        return chunk

    def _first_chunk(self) -> list[QueryRow]:
        """Read here: the whole source without chunks, else its first chunk; the rest goes to a
        reader process when there is any (one more raw record is looked at to know)."""
        raw, bar = records_of(self.sources, self.shard, self.progress, self.desc)
        records = _Counted(bar)
        rows = validate(records, self.policy, self.report)
        try:
            if self.size is None:
                self._done = True
                return list(rows)
            chunk = list(islice(rows, self.size))
            consumed = records.n
            try:
                next(records)
            except StopIteration:
                self._done = True
                return chunk
        finally:
            bar.close()
            raw.close()  # its open file: the reader process opens the source again
        self._start(consumed)
        return chunk

    def _start(self, skip: int) -> None:
        """``python -m builders.sources.reader_process``: a fresh interpreter (not multiprocessing's
        spawn, which would import the caller's ``__main__`` again: a script without a main guard
        would build twice), with this process's ``sys.path``; arguments and rows go over pipes."""
        rows_read, rows_write = os.pipe()
        args_read, args_write = os.pipe()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        try:
            self._process = subprocess.Popen([sys.executable, "-m", __name__, str(rows_write), str(args_read)],
                                             pass_fds=(rows_write, args_read), env=env, stdin=subprocess.DEVNULL)
        finally:
            os.close(rows_write)  # the child's ends: its exit shows here as EOF
            os.close(args_read)
        with Connection(args_write, readable=False) as args:
            args.send((self.sources, self.policy, self.shard, skip, self.progress, self.desc))
        self._conn = Connection(rows_read, writable=False)

    def _receive(self) -> list[QueryRow]:
        try:
            try:
                size = self._conn.recv_bytes_into(self._buffer)
            except BufferTooShortError as short:  # a bigger message than any before: a bigger buffer, kept
                message = short.args[0]
                self._buffer = bytearray(len(message))
                self._buffer[:] = message
                size = len(message)
            kind, *payload = pickle.loads(memoryview(self._buffer)[:size])
        except EOFError:
            self._done = True
            code = self._process.wait(5)
            raise ReaderProcessError(
                f"the reader process stopped without finishing the source (exit code {code})") from None
        if kind == "rows":
            rows, problems, counts = payload
            self._merge(problems, counts)
            return rows
        self._done = True
        if kind == "end":
            self.close()
            return []
        problems, counts, error = payload
        self._merge(problems, counts)
        self.close()
        if kind == "invalid":
            raise InvalidRowError(self.report.problems[-1])
        if isinstance(error, BaseException):
            raise error
        raise ReaderProcessError(f"the reader process failed: {error}")

    def _merge(self, problems: list, counts: dict) -> None:
        self.report.problems.extend(problems)
        for name in _COUNTS:
            setattr(self.report, name, getattr(self.report, name) + counts[name])

    def close(self) -> None:
        """Stop the reader process (a no-op when none runs)."""
        with self._lock:
            process, self._process = self._process, None
            conn, self._conn = self._conn, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
            process.wait(5)
        if conn is not None:
            conn.close()


def read_in_child(conn, sources: list[SourceConfig], policy: str, shard: Shard | None, skip: int, progress: bool,
                  desc: str) -> None:
    """The reader process: records from ``skip`` on, validated, sent in batches."""
    report = ValidationReport()
    sent_problems = 0
    sent = dict.fromkeys(_COUNTS, 0)

    def delta() -> tuple[list, dict]:
        nonlocal sent_problems
        problems = report.problems[sent_problems:]
        sent_problems = len(report.problems)
        counts = {name: getattr(report, name) - sent[name] for name in _COUNTS}
        sent.update({name: getattr(report, name) for name in _COUNTS})
        return problems, counts

    try:
        _, records = records_of(sources, shard, progress, desc, skip)  # the first ``skip``: read by the build
        batch: list[QueryRow] = []
        for row in validate(records, policy, report):
            batch.append(row)
            if len(batch) == BATCH_ROWS:
                conn.send(("rows", batch, *delta()))
                batch = []
        if batch:
            conn.send(("rows", batch, *delta()))
        conn.send(("end",))
    except InvalidRowError:
        conn.send(("invalid", *delta(), None))
    except (BrokenPipeError, KeyboardInterrupt):
        return  # the build stopped
    except BaseException as error:  # noqa: BLE001 - every error goes back to the build
        problems, counts = delta()
        try:
            pickle.loads(pickle.dumps(error))  # it travels as itself only if it comes back whole
        except Exception:
            error = f"{type(error).__name__}: {error}"  # else its type and message
        conn.send(("error", problems, counts, error))
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> None:
    """The reader process's entry: ``python -m builders.sources.reader_process ROWS_FD ARGS_FD``."""
    rows_fd, args_fd = map(int, (argv or sys.argv[1:]))
    with Connection(args_fd, writable=False) as args:
        sources, policy, shard, skip, progress, desc = args.recv()
    read_in_child(Connection(rows_fd, readable=False), sources, policy, shard, skip, progress, desc)


if __name__ == "__main__":
    main()
