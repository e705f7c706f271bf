"""The runner every method uses to ask a judge many questions.

    annotator = Annotator(backend, store, stage="rlhn/stage1", prompt_version="rlhn-v1",
                          concurrency=8, retry=RetryPolicy(), check=verdict_parses)
    result = annotator.run_sync([(query_id, GenerateRequest(...)), ...])
    result.outcomes[query_id].text, result.ledger.summary()

- Keys already final in the store (ok, unparseable, non-retryable failure, same request) are
  not asked again: no call is paid twice; a rerun retries only retryable failures.
- The rest run concurrently: ``concurrency`` asyncio workers take the items in order. Each call is one
  backend attempt; retryable errors (429 overloaded, 424/5xx, timeouts, dropped connections)
  are retried up to ``RetryPolicy.max_attempts`` with jittered exponential backoff; 422 and
  other validation errors are recorded at once.
- ``check(text) -> bool`` decides parseability. An unparseable answer is asked again up to
  ``parse_retries`` times with a different seed, then stored as ``unparseable`` - never dropped.
- Every result goes to the store through its group-commit writer (``JudgmentStore.group_writer``:
  a thread commits batches, at most every 50 ms); a result counts as done - in the outcomes,
  the ledger's totals seen by the progress bar, the bar itself - only once its transaction has
  committed. ``Ledger`` counts calls, retries and failures by kind, unparseable answers, cached
  hits, tokens and wall time.
- ``price`` (USD per 1M prompt / completion tokens, ``builders.judges.ledger.Price``) puts the cost so
  far in the progress bar's postfix.

The backend is anything speaking ``builders.judges.endpoints.base.Backend``. A ``builders.judges.fleet.Fleet``
is one: it queues calls for its endpoints' slots, so the annotator takes its concurrency from
the fleet (a caller's smaller ``concurrency`` would starve the endpoints) and, without an
explicit ``retry``, uses ``FLEET_RETRY``: the fleet already re-sends 429s and moves failed calls
to other endpoints, so an error reaching the annotator means no endpoint could take the call
now, and a short backoff (0.1 s base) is enough to protect the servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import partial

from tqdm.auto import tqdm

from builders.judges.clocks import stage_clock
from builders.judges.endpoints.base import Backend, EndpointError, GenerateRequest, Generation
from builders.judges.fleet import CALL_STAGE, Fleet
from builders.judges.ledger import Price
from builders.judges.store import Judgment, JudgmentStore, Status, request_sha


@dataclass
class RetryPolicy:
    max_attempts: int = 6  # backend calls per answer for retryable errors (1 = no retry)
    base_delay_s: float = 1.0  # backoff before retry n is uniform in [d/2, d], d = min(max, base * 2**(n-1))
    max_delay_s: float = 60.0
    parse_retries: int = 2  # extra asks (new seed) when check(text) is False
    attempt_timeout_s: float | None = None  # an outer cap per attempt, on top of the backend's own timeout
    seed_step: int = 1000  # parse retry n uses seed + n * seed_step

    def backoff_s(self, retry: int, rng: random.Random) -> float:
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (retry - 1))
        return rng.uniform(ceiling / 2, ceiling)


FLEET_RETRY = RetryPolicy(base_delay_s=0.1, max_delay_s=5.0)  # see the module docstring

Request = GenerateRequest | Callable[[], GenerateRequest]  # an item's request, or what makes it when it is sent


_quiet_runs = 0  # annotator runs under way in this process with the collector quietened
_saved_thresholds: tuple = gc.get_threshold()  # restored when the last of them ends
QUIET_GC_FROM_ITEMS = 1000  # runs with at least this many calls to make quieten the collector
QUIET_GC_THRESHOLD0 = 20_000  # allocations between two young collections during such a run


@contextlib.contextmanager
def _quiet_collector(enabled: bool):
    """Fewer, cheaper pauses of the cyclic garbage collector during a long run.

    The objects alive at the start (loaded models and tokenizers, the run's own request list)
    are frozen out of the collector's scans, and young collections run every 20,000 allocations
    instead of 700: on 2 cores at 300 answers/s the defaults paused the event loop ~250 times
    in 20 s, up to 60-100 ms at a time, and every endpoint slot whose answer arrived meanwhile
    idled. The young generations are collected first so that little that is dead gets frozen
    (not a full collection: over a streamed build's rows that took ~180 ms, the stage's first
    calls waiting); what is frozen is collected again once the last concurrent run ends, when
    everything is restored."""
    global _quiet_runs, _saved_thresholds
    if not enabled:
        yield
        return
    if _quiet_runs == 0:
        gc.collect(1)
        _saved_thresholds = gc.get_threshold()
        gc.set_threshold(max(_saved_thresholds[0], QUIET_GC_THRESHOLD0), *_saved_thresholds[1:])
    _quiet_runs += 1
    gc.freeze()
    try:
        yield
    finally:
        _quiet_runs -= 1
        if _quiet_runs == 0:
            gc.unfreeze()
            gc.set_threshold(*_saved_thresholds)


@dataclass
class Ledger:
    """What a run cost and how it went; printed at the end and copied into method stats."""

    items: int = 0
    cached: int = 0  # final in the store already: not asked
    calls: int = 0  # backend attempts made (every one is a paid call)
    ok: int = 0
    unparseable: int = 0
    failed: int = 0
    parse_retries: int = 0
    retries: Counter = field(default_factory=Counter)  # error kind -> retried attempts
    failures: Counter = field(default_factory=Counter)  # error kind -> answers given up on
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0
    prompt_token_sources: Counter = field(default_factory=Counter)  # where answers' prompt counts came from -> answers

    def as_dict(self) -> dict:
        return {
            "items": self.items, "cached": self.cached, "calls": self.calls, "ok": self.ok,
            "unparseable": self.unparseable, "failed": self.failed, "parse_retries": self.parse_retries,
            "retries": dict(self.retries), "failures": dict(self.failures),
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "wall_s": round(self.wall_s, 3), "prompt_token_sources": dict(self.prompt_token_sources),
        }

    def add(self, other: Ledger) -> None:
        """Add a run that came after this one (wall times add up): the stages that ask in
        groups (ARHN, by how many entries an answer must cover) sum their groups' ledgers."""
        for name in ("items", "cached", "calls", "ok", "unparseable", "failed", "parse_retries", "prompt_tokens",
                     "completion_tokens", "wall_s"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.retries.update(other.retries)
        self.failures.update(other.failures)
        self.prompt_token_sources.update(other.prompt_token_sources)

    def summary(self) -> str:
        retries = ", ".join(f"{k} {v}" for k, v in sorted(self.retries.items())) or "none"
        failures = ", ".join(f"{k} {v}" for k, v in sorted(self.failures.items())) or "none"
        return (
            f"{self.items} items: {self.ok} ok, {self.unparseable} unparseable, {self.failed} failed, "
            f"{self.cached} from the store; {self.calls} calls ({self.parse_retries} parse retries; "
            f"retries: {retries}; failures: {failures}); tokens {self.prompt_tokens} in / "
            f"{self.completion_tokens} out; {self.wall_s:.1f} s"
        )


@dataclass
class Outcome:
    key: str
    status: Status
    text: str | None
    judgment: Judgment
    cached: bool  # True: read from the store, no call made in this run


@dataclass
class AnnotationResult:
    outcomes: dict[str, Outcome]
    ledger: Ledger


class Annotator:
    def __init__(
        self,
        backend: Backend,
        store: JudgmentStore,
        *,
        stage: str,
        prompt_version: str,
        concurrency: int | None = None,
        retry: RetryPolicy | None = None,
        check: Callable[[str], bool] | None = None,
        progress: bool = True,
        seed: int | None = None,  # seeds the backoff jitter (tests)
        price: Price | None = None,  # the judge's price: cost so far in the progress bar
    ):
        self.backend = backend
        self.store = store
        self.stage = stage
        self.prompt_version = prompt_version
        is_fleet = isinstance(backend, Fleet)
        if concurrency is None or is_fleet:
            concurrency = backend.concurrency
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.concurrency = concurrency
        self.retry = retry or (FLEET_RETRY if is_fleet else RetryPolicy())
        self.price = price
        self.check = check
        self.progress = progress
        self._rng = random.Random(seed)

    @property
    def judge_model(self) -> str:
        return self.backend.model_id

    # ------------------------------------------------------------------ entry points
    def run_sync(self, items: Iterable[tuple[str, Request]]) -> AnnotationResult:
        """``run`` for callers that are not async (raises inside a running event loop: await ``run``)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.run(items))
        raise RuntimeError("Annotator.run_sync was called inside a running event loop; use `await annotator.run(items)`")

    async def run(self, items: Iterable[tuple[str, Request]],
                  on_outcome: Callable[[Outcome], None] | None = None) -> AnnotationResult:
        """``items``: ``(key, request)``, the request a ``GenerateRequest`` or a zero-argument
        callable that makes one: it is called when a worker takes the item (or, for a key the
        store holds, to compare hashes), so a long prompt is rendered just before it is sent
        and not all up front. ``on_outcome(outcome)``: called for each key as soon as its
        outcome is final (read from the store, or its answer committed), in completion order:
        what lets a cascade send stage 2 while stage 1 is still asking."""
        with stage_clock(self.stage):
            return await self._run(items, on_outcome or (lambda outcome: None))

    async def _run(self, items: Iterable[tuple[str, Request]], on_outcome: Callable[[Outcome], None]) -> AnnotationResult:
        started = time.monotonic()
        items = list(items)
        keys = [key for key, _ in items]
        if len(set(keys)) != len(keys):
            duplicate = next(key for key, count in Counter(keys).items() if count > 1)
            raise ValueError(f"{self.stage}: key {duplicate!r} appears twice in one run; keys must be unique per stage")
        ledger = Ledger(items=len(items))
        outcomes: dict[str, Outcome] = {}
        # a fleet reads its endpoints' limits while the requests are hashed below
        warming = asyncio.ensure_future(self.backend.start())
        # one read of the stored judgments of this run's keys instead of a query per key (a quick start);
        # only keys the store holds need their hash before the first call goes out
        # (on a thread: a thousand keys' lookups held the event loop ~20 ms, a streamed build's calls waiting)
        stored_by_key = await asyncio.to_thread(self.store.get_many, self.stage, self.judge_model, self.prompt_version, keys)
        todo: list[tuple[str, GenerateRequest, str | None]] = []
        for key, request in items:
            stored = stored_by_key.get(key)
            if stored is not None and not isinstance(request, GenerateRequest):
                request = request()
            sha = request_sha(request) if stored is not None else None
            if stored is not None and stored.is_final and stored.request_sha == sha:
                outcomes[key] = Outcome(key, stored.status, stored.text, stored, cached=True)
                ledger.cached += 1
                on_outcome(outcomes[key])
            else:
                todo.append((key, request, sha))

        bar = tqdm(total=len(items), initial=ledger.cached, desc=f"{self.stage} [{self.judge_model}]",
                   unit="q", disable=not self.progress, dynamic_ncols=True)
        committed = Ledger()  # the totals of committed results: what the bar shows
        writing: set[asyncio.Future] = set()  # answers whose transaction has not committed yet
        broken: list[BaseException] = []  # a failed commit stops the workers

        def on_commit(key: str, judgment: Judgment, done: asyncio.Future) -> None:
            writing.discard(done)
            if done.cancelled() or done.exception() is not None:
                broken.append(done.exception() if not done.cancelled() else asyncio.CancelledError())
                self._stop_asking(key, None)
                return
            self._stop_asking(key, judgment)
            outcomes[key] = Outcome(key, judgment.status, judgment.text, judgment, cached=False)
            on_outcome(outcomes[key])
            committed.failed += judgment.status == "failed"
            committed.unparseable += judgment.status == "unparseable"
            bar.update(1)
            postfix = dict(failed=committed.failed, unparseable=committed.unparseable,
                           retries=sum(ledger.retries.values()))
            if self.price is not None:  # money is spent when a call answers, committed or not
                postfix["usd"] = f"{self.price.usd(ledger.prompt_tokens, ledger.completion_tokens):.4f}"
            bar.set_postfix(postfix, refresh=False)

        pending = iter(todo)  # shared by the workers: each takes the next item when it is free
        workers: list[asyncio.Task] = []

        def wanted() -> int:
            """Workers to keep: ``concurrency``, and over a fleet what its current limits can use
            (it grows with them: slow start), never more than the items."""
            n = self.concurrency
            if isinstance(self.backend, Fleet):
                n = min(n, self.backend.concurrency)
            return min(n, len(todo))

        def grow() -> None:
            while len(workers) < wanted():
                workers.append(asyncio.create_task(worker()))

        async def worker() -> None:
            # A worker hands its answer to the group writer and takes the next item at once: it
            # does not wait for the commit, so a slow disk never leaves an endpoint slot idle.
            for key, request, sha in pending:
                if broken:
                    return
                grow()  # a fleet whose limits grew can take more calls
                if not isinstance(request, GenerateRequest):
                    request = request()
                sha = sha or request_sha(request)
                elsewhere = self.store.asking.get(self._ident(key))
                if elsewhere is not None:  # an overlapping run asks the same question: wait for its answer
                    answer = await asyncio.shield(elsewhere)
                    if answer is not None and answer.is_final and answer.request_sha == sha:
                        outcomes[key] = Outcome(key, answer.status, answer.text, answer, cached=True)
                        ledger.cached += 1
                        on_outcome(outcomes[key])
                        bar.update(1)
                        continue
                self.store.asking[self._ident(key)] = asyncio.get_running_loop().create_future()
                try:
                    judgment = await self._judge(key, request, sha, ledger)
                except BaseException:
                    self._stop_asking(key, None)
                    raise
                done = writer.submit(judgment)
                writing.add(done)
                done.add_done_callback(partial(on_commit, key, judgment))

        try:
            with _quiet_collector(len(todo) >= QUIET_GC_FROM_ITEMS):
                async with self.store.group_writer() as writer:
                    try:
                        # Bounded: ``wanted()`` workers, not a task per item, so a stage of 680K
                        # items costs the memory of its in-flight calls, and the first call goes out
                        # before the rest of the list is hashed. Each worker renders its first
                        # prompt in the same loop turn: a thousand at once held the loop ~150 ms.
                        await warming  # a fleet's limits are known now: it says how many calls to keep waiting
                        grow()
                        while running := [task for task in workers if not task.done()]:
                            await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                            for task in workers:
                                if task.done() and not task.cancelled() and task.exception() is not None:
                                    raise task.exception()
                    finally:
                        for task in workers:
                            task.cancel()
                        await asyncio.gather(*workers, return_exceptions=True)
                        if writing:  # what was answered is committed, even when the run stops early
                            await asyncio.wait(list(writing))
            if broken:
                raise broken[0]
        finally:
            if not warming.done():
                warming.cancel()
            bar.close()
            ledger.wall_s = time.monotonic() - started
        ordered = {key: outcomes[key] for key, _ in items}
        return AnnotationResult(ordered, ledger)

    def _ident(self, key: str) -> tuple[str, str, str, str]:
        return (self.stage, self.judge_model, self.prompt_version, key)

    def _stop_asking(self, key: str, judgment: Judgment | None) -> None:
        """Hand ``judgment`` (None: none was committed) to overlapping runs waiting for ``key``."""
        future = self.store.asking.pop(self._ident(key), None)
        if future is not None and not future.done():
            future.set_result(judgment)

    # ------------------------------------------------------------------ one key
    async def _judge(self, key: str, request: GenerateRequest, sha: str, ledger: Ledger) -> Judgment:
        tally = [0]  # backend calls made for this key
        texts: list[str] = []
        base = dict(stage=self.stage, judge_model=self.judge_model, prompt_version=self.prompt_version,
                    key=key, request_sha=sha)
        for parse_try in range(self.retry.parse_retries + 1):
            asked = request
            if parse_try:
                ledger.parse_retries += 1
                asked = replace(request, seed=(request.seed or 0) + parse_try * self.retry.seed_step)
            try:
                generation = await self._call(asked, ledger, tally)
            except EndpointError as error:
                ledger.failed += 1
                ledger.failures[error.kind] += 1
                return Judgment(**base, status="failed", error_kind=error.kind, error_message=error.message[:2000],
                                retryable=error.retryable, attempts=tally[0],
                                meta={"status": error.status, "unparseable_texts": texts} if texts else {"status": error.status})
            if self.check is None or self.check(generation.text):
                ledger.ok += 1
                return self._answered(base, "ok", generation, tally[0], texts)
            texts.append(generation.text)
        ledger.unparseable += 1
        return self._answered(base, "unparseable", generation, tally[0], texts[:-1])

    @staticmethod
    def _answered(base: dict, status: Status, generation: Generation, attempts: int, earlier: list[str]) -> Judgment:
        meta = dict(generation.meta)
        if earlier:
            meta["unparseable_texts"] = earlier
        return Judgment(**base, status=status, text=generation.text, finish_reason=generation.finish_reason,
                        prompt_tokens=generation.prompt_tokens, completion_tokens=generation.completion_tokens,
                        attempts=attempts, meta=meta)

    async def _call(self, request: GenerateRequest, ledger: Ledger, tally: list[int]) -> Generation:
        """One answer with bounded retries of retryable errors; ``tally[0]`` counts the calls."""
        return await call_with_retries(lambda: self.backend.generate(request), self.retry, self._rng, ledger, tally,
                                       stage=self.stage)


async def call_with_retries(call, retry: RetryPolicy, rng: random.Random, ledger: Ledger, tally: list[int],
                            stage: str | None = None):
    """``await call()`` (a ``Generation`` or ``Scored``) with bounded retries of retryable errors
    and jittered backoff. Every attempt counts in ``ledger.calls`` and ``tally[0]``, every retry in
    ``ledger.retries`` by kind, the answer's tokens in the ledger; the last error is raised.
    ``stage`` names the calls for a fleet's per-stage counts (``CALL_STAGE``, in this task)."""
    if stage is not None and CALL_STAGE.get() != stage:
        CALL_STAGE.set(stage)  # each caller runs in its own task: the setting stays in that task
    for attempt in range(1, retry.max_attempts + 1):
        ledger.calls += 1
        tally[0] += 1
        try:
            if retry.attempt_timeout_s is not None:
                answer = await asyncio.wait_for(call(), retry.attempt_timeout_s)
            else:
                answer = await call()
        except TimeoutError:
            error = EndpointError("timeout", f"no answer within attempt_timeout_s={retry.attempt_timeout_s}")
        except EndpointError as caught:
            error = caught
        else:
            ledger.prompt_tokens += answer.prompt_tokens or 0
            ledger.completion_tokens += answer.completion_tokens or 0
            source = answer.meta.get("prompt_tokens_source")
            if source is not None:
                ledger.prompt_token_sources[source] += 1
            return answer
        if not error.retryable or attempt == retry.max_attempts:
            raise error
        ledger.retries[error.kind] += 1
        await asyncio.sleep(retry.backoff_s(attempt, rng))
    raise AssertionError("unreachable")
