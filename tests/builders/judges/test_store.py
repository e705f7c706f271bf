"""Durable judgment store: round trip, finality, concurrent reader, SIGKILLed writer, resume."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from builders.judges.annotate import Annotator, RetryPolicy
from builders.judges.endpoints import make_backend
from builders.judges.endpoints.base import GenerateRequest
from builders.judges.endpoints.spec import EndpointSpec
from builders.judges.store import Judgment, JudgmentStore, request_sha

REPO = Path(__file__).resolve().parents[3]


def judgment(key, status="ok", **fields):
    return Judgment(stage="s", judge_model="m", prompt_version="v1", key=key, status=status, **fields)


def test_round_trip_and_finality(tmp_path):
    with JudgmentStore(tmp_path / "j.sqlite") as store:
        store.put(judgment("a", text="<verdict/>", finish_reason="eos_token", prompt_tokens=10, completion_tokens=3,
                           attempts=2, request_sha="abc", meta={"url": "http://x"}))
        store.put(judgment("b", "failed", error_kind="overloaded", error_message="busy", retryable=True, attempts=6))
        store.put(judgment("c", "failed", error_kind="validation", error_message="too long", retryable=False, attempts=1))
        store.put(judgment("d", "unparseable", text="garbage", attempts=3))
        a = store.get("s", "m", "v1", "a")
        assert (a.text, a.prompt_tokens, a.meta, a.attempts) == ("<verdict/>", 10, {"url": "http://x"}, 2)
        assert a.created_at > 0 and a.updated_at >= a.created_at
        finality = {j.key: j.is_final for j in store.judgments(stage="s")}
        assert finality == {"a": True, "b": False, "c": True, "d": True}
        assert store.counts("s", "m", "v1") == {"ok": 1, "unparseable": 1, "failed": 2}
        assert store.get("s", "m", "v2", "a") is None and store.get("s", "other", "v1", "a") is None
        created = a.created_at
        store.put(judgment("a", text="new"))
        assert store.get("s", "m", "v1", "a").created_at == created and store.get("s", "m", "v1", "a").text == "new"


def test_reader_sees_commits_while_writer_is_open(tmp_path):
    path = tmp_path / "j.sqlite"
    with JudgmentStore(path) as writer:
        writer.put(judgment("a"))
        with JudgmentStore(path, readonly=True) as reader:
            assert [j.key for j in reader.judgments()] == ["a"]
            writer.put(judgment("b"))
            assert [j.key for j in reader.judgments()] == ["a", "b"]
            with pytest.raises(PermissionError):
                reader.put(judgment("c"))


def test_request_sha_tracks_the_request():
    one = GenerateRequest(messages=({"role": "user", "content": "q"},))
    assert request_sha(one) == request_sha(GenerateRequest(messages=({"role": "user", "content": "q"},)))
    assert request_sha(one) != request_sha(GenerateRequest(messages=({"role": "user", "content": "q2"},)))


WRITER = textwrap.dedent("""
    import sys
    from builders.judges.annotate import Annotator, RetryPolicy
    from builders.judges.endpoints import make_backend
    from builders.judges.endpoints.base import GenerateRequest
    from builders.judges.endpoints.spec import EndpointSpec
    from builders.judges.store import JudgmentStore
    url, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    backend = make_backend(EndpointSpec(kind="tgi", url=url, model="judge", timeout_s=30))
    store = JudgmentStore(path)
    items = [(f"k{i:03d}", GenerateRequest(messages=({"role": "user", "content": f"question {i:03d}"},))) for i in range(n)]
    Annotator(backend, store, stage="s", prompt_version="v1", concurrency=2, progress=False,
              retry=RetryPolicy(base_delay_s=0.01)).run_sync(items)
""")


def test_sigkilled_writer_loses_nothing_stored_and_resume_pays_no_call_twice(tgi_stand_in, tmp_path):
    server = tgi_stand_in(lambda request: "answer", delay_s=0.05)
    path = tmp_path / "j.sqlite"
    n = 60
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-c", WRITER, server.url, str(path), str(n)], env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        stored_before = 0
        while time.monotonic() < deadline and process.poll() is None:
            if path.exists():
                with JudgmentStore(path, readonly=True) as reader:
                    stored_before = sum(1 for _ in reader.judgments())
                if stored_before >= 10:
                    break
            time.sleep(0.05)
        assert process.poll() is None, "the writer finished before it could be killed; raise n"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    with JudgmentStore(path) as store:
        assert store.integrity_check() == "ok"
        survivors = {j.key: j for j in store.judgments()}
        assert len(survivors) >= stored_before >= 10 and len(survivors) < n
        assert all(j.status == "ok" and j.text == "answer" for j in survivors.values())
        requests_before_resume = len(server.requests)
        backend = make_backend(EndpointSpec(kind="tgi", url=server.url, model="judge"))
        items = [(f"k{i:03d}", GenerateRequest(messages=({"role": "user", "content": f"question {i:03d}"},))) for i in range(n)]
        result = Annotator(backend, store, stage="s", prompt_version="v1", concurrency=4, progress=False,
                           retry=RetryPolicy(base_delay_s=0.01)).run_sync(items)
        assert result.ledger.cached == len(survivors) and result.ledger.ok == n - len(survivors)
        assert store.counts("s", "judge", "v1") == {"ok": n, "unparseable": 0, "failed": 0}
    resumed_prompts = [r.prompt for r in server.requests[requests_before_resume:]]
    for key in survivors:  # no stored answer was asked for again
        assert not any(f"question {key[1:]}" in prompt for prompt in resumed_prompts)
    assert len(resumed_prompts) == n - len(survivors)


def test_group_writer_batches_commits_and_put_returns_only_after_commit(tmp_path):
    import asyncio

    path = tmp_path / "j.sqlite"
    with JudgmentStore(path) as store, JudgmentStore(path, readonly=True) as reader:
        store.put(judgment("k000", text="first"))
        created = store.get("s", "m", "v1", "k000").created_at
        seen_after_put = []

        async def go(writer):
            async def one(i):
                await writer.put(judgment(f"k{i:03d}", text=f"t{i}"))
                seen_after_put.append(reader.get("s", "m", "v1", f"k{i:03d}") is not None)
            await asyncio.gather(*(one(i) for i in range(100)))

        async def main():
            async with store.group_writer(max_delay_s=0.05, max_rows=30) as writer:
                await go(writer)
            return writer

        writer = asyncio.run(main())
        assert all(seen_after_put) and len(seen_after_put) == 100  # committed (visible to another connection) on return
        assert writer.rows == 100 and 4 <= writer.commits < 100  # batches: at most 30 rows, far fewer than 100 commits
        assert [j.key for j in reader.judgments()] == [f"k{i:03d}" for i in range(100)]
        assert store.get("s", "m", "v1", "k000").created_at == created and store.get("s", "m", "v1", "k000").text == "t0"


def test_group_writer_hands_a_failed_commit_to_every_waiter(tmp_path):
    import asyncio
    import sqlite3

    with JudgmentStore(tmp_path / "j.sqlite") as store:
        async def main():
            async with store.group_writer(max_delay_s=0.2) as writer:
                return await asyncio.gather(writer.put(judgment("good")), writer.put(judgment("bad", status="maybe")),
                                            return_exceptions=True)

        outcomes = asyncio.run(main())
        assert all(isinstance(o, sqlite3.IntegrityError) for o in outcomes)  # one transaction: neither counts done
        assert store.get("s", "m", "v1", "good") is None and store.get("s", "m", "v1", "bad") is None


def test_synchronous_mode_is_checked_and_applied(tmp_path):
    with pytest.raises(ValueError, match="synchronous"):
        JudgmentStore(tmp_path / "a.sqlite", synchronous="OFF")
    with JudgmentStore(tmp_path / "b.sqlite", synchronous="FULL") as store:
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with JudgmentStore(tmp_path / "c.sqlite") as store:
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL (WAL)
        assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_request_sha_is_the_hash_of_the_requests_fields_as_before():
    """``request_sha`` lists a GenerateRequest's fields by hand for speed: the hash must stay the
    one ``asdict`` gave, or every store written before would be asked again."""
    import hashlib
    import json
    from dataclasses import asdict

    from builders.judges.endpoints.base import Constraint, GenerateRequest
    from builders.judges.store import request_sha

    requests = [
        GenerateRequest(messages=({"role": "system", "content": "é"}, {"role": "user", "content": "q"}),
                        constraint=Constraint("regex", "a+"), stop=("\n",), seed=None, temperature=0.0),
        GenerateRequest(messages=({"role": "user", "content": "q"},), constraint=Constraint("json", {"type": "object"})),
    ]
    for request in requests:
        old = hashlib.sha256(json.dumps(asdict(request), sort_keys=True, default=str).encode()).hexdigest()
        assert request_sha(request) == old


def test_get_many_reads_only_the_asked_keys(tmp_path):
    from builders.judges.store import Judgment, JudgmentStore

    with JudgmentStore(tmp_path / "j.sqlite") as store:
        for i in range(1200):
            store.put(Judgment(stage="s", judge_model="m", prompt_version="v", key=f"k{i}", status="ok", text=str(i)))
        found = store.get_many("s", "m", "v", [f"k{i}" for i in range(0, 1200, 2)] + ["missing"])
    assert len(found) == 600 and found["k1198"].text == "1198" and "missing" not in found
