"""Past its first chunk the source is read and validated in a reader process: the chunks, rows,
report and errors are what reading it here gives."""

import json
import os
import signal

import pytest

from builders.sources.reader_process import ChunkReader, ReaderProcessError
from builders.sources.readers import SourceConfig, read_sources
from builders.sources.validate import InvalidRowError, ValidationReport, validate
from builders.streaming import chunks
from tests.builders.sources.test_validate import BAD_LINES, GOOD


def _source(tmp_path, n: int, bad_every: int | None = None, name: str = "rows.jsonl") -> list[SourceConfig]:
    lines = []
    for i in range(n):
        if bad_every and i % bad_every == bad_every - 1:
            lines.append(BAD_LINES[1 + i % (len(BAD_LINES) - 1)])
        else:
            lines.append(dict(GOOD, query=f"what is kiwi {i}", neg=[f"negative {i} {j}" for j in range(3)]))
    path = tmp_path / name
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return [SourceConfig(path=str(path), subset="nq")]


def _here(sources, policy: str, size: int | None):
    report = ValidationReport()
    return list(chunks(validate(read_sources(sources), policy, report), size)), report


@pytest.mark.parametrize("policy", ["skip", "repair"])
def test_chunks_rows_and_report_are_those_read_here(tmp_path, policy):
    sources = _source(tmp_path, 95, bad_every=7)
    expected, expected_report = _here(sources, policy, 10)
    report = ValidationReport()
    reader = ChunkReader(sources, policy, report, 10, progress=False)
    got = list(reader)
    assert reader._process is None  # stopped once the source ended
    assert [len(c) for c in got] == [len(c) for c in expected] and got == expected
    assert report.to_dict() == expected_report.to_dict() and report.rows_read == 95 and report.problems


def test_a_source_of_one_chunk_starts_no_process(tmp_path):
    sources = _source(tmp_path, 10)
    for size in (10, None):
        reader = ChunkReader(sources, "skip", ValidationReport(), size, progress=False)
        assert len(next(reader)) == 10 and reader._process is None and list(reader) == []


def test_a_bad_row_in_a_later_chunk_fails_the_build_as_it_would_here(tmp_path):
    sources = _source(tmp_path, 40, bad_every=33)  # line 33 is the first bad one
    with pytest.raises(InvalidRowError) as here:
        _here(sources, "fail", 10)
    report = ValidationReport()
    reader = ChunkReader(sources, "fail", report, 10, progress=False)
    with pytest.raises(InvalidRowError) as there:
        list(reader)
    assert str(there.value) == str(here.value) and "rows.jsonl:33" in str(there.value)
    assert report.problems[-1].action == "failed" and report.rows_read == 33


def test_an_error_of_the_reader_comes_back_as_itself(tmp_path):
    sources = _source(tmp_path, 12) + [SourceConfig(path=str(tmp_path / "broken.parquet"), subset="nq")]
    (tmp_path / "broken.parquet").write_bytes(b"not a parquet file")
    with pytest.raises(Exception) as here:
        _here(sources, "skip", 5)
    reader = ChunkReader(sources, "skip", ValidationReport(), 5, progress=False)
    assert len(next(reader)) == 5
    with pytest.raises(type(here.value)) as there:
        list(reader)
    assert str(there.value) == str(here.value)


def test_a_reader_that_dies_is_an_error_and_close_stops_a_running_one(tmp_path):
    sources = _source(tmp_path, 3000)
    reader = ChunkReader(sources, "skip", ValidationReport(), 10, progress=False)
    next(reader)
    os.kill(reader._process.pid, signal.SIGKILL)
    with pytest.raises(ReaderProcessError, match="exit code -9"):
        for _ in reader:
            pass
    reader = ChunkReader(sources, "skip", ValidationReport(), 10, progress=False)
    next(reader)
    process = reader._process
    reader.close()  # blocked on a full pipe: terminated
    assert process.poll() is not None and reader._process is None
