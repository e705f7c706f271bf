"""The thread that owns a local judge's model: it gathers requests and decodes them in batches.

``LocalBackend.generate`` / ``score`` put a job on the worker's queue and await its
``concurrent.futures.Future`` (``asyncio.wrap_future``): the event loop never waits on the model,
and no thread but this one runs it. The worker:

- waits for a job, then gathers more for up to ``gather_s`` (the annotator's workers send theirs
  within a loop turn or two) until ``batch_size`` are waiting;
- prefills each new request on its own (``prompt_cache.prefill``, reusing held prompts) and
  takes its first token, then lets it join the ``DecodeBatch``;
- steps the batch; a finished row leaves it and its future gets the answer at once (the
  judgment store commits it as it arrives, so a killed build loses only the rows in flight);
- ``admit="step"`` (continuous batching): waiting requests join between any two steps while the
  batch has room; ``admit="round"``: only once the batch has emptied (static batches, refilled
  between rounds). Continuous batching is the default (measured: ``bench/local_judge.py``).

Score jobs (CLEAR's continuation log-probabilities) run one at a time between two steps.
A failure fails the jobs it touched (the prefilled request, or every row of a failed step) and
the worker goes on. A cancelled job that has not started is skipped.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Literal

from builders.judges.endpoints.local_batch import DecodeBatch, Sequence
from builders.judges.endpoints.prompt_cache import PromptCache, prefill

Admit = Literal["step", "round"]
GATHER_S = 0.05  # how long the first job of a batch waits for others to arrive


class ModelWorker:
    def __init__(self, model: Callable[[], object], sequence: Callable[..., Sequence], score: Callable,
                 finish: Callable[[Sequence], object], batch_size: int, prompt_cache: PromptCache | None,
                 admit: Admit = "step", gather_s: float = GATHER_S):
        self._model = model  # called in the worker: loads the weights on first use
        self._sequence = sequence  # (request, future) -> Sequence
        self._score = score  # request -> Scored
        self._finish = finish  # Sequence -> Generation
        self.batch_size = batch_size
        self.prompt_cache = prompt_cache
        self.admit = admit
        self.gather_s = gather_s
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.steps = 0  # decode steps run, and rows decoded in them (the mean batch: rows / steps)
        self.rows = 0

    def submit(self, kind: str, request) -> Future:
        future: Future = Future()
        with self._start_lock:
            if self._thread is None:
                self._jobs = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._run, args=(self._jobs,), name="local-judge", daemon=True)
                self._thread.start()
            self._jobs.put((kind, request, future))
        return future

    def close(self) -> None:
        """Stop the thread once it has answered what it holds (a later job starts a new one)."""
        with self._start_lock:
            if self._thread is not None:
                self._jobs.put(None)
                self._thread = None

    # ------------------------------------------------------------------ the thread
    def _run(self, jobs: queue.SimpleQueue) -> None:
        waiting: deque = deque()
        batch: DecodeBatch | None = None
        closing = False  # close() was called: answer what is held, then stop
        while True:
            if (batch is None or not batch) and not waiting:
                if closing:
                    return
                job = jobs.get()  # idle: block until there is work
                if job is None:
                    return
                waiting.append(job)
                deadline = time.monotonic() + self.gather_s
                while not closing and len(waiting) < self.batch_size and (left := deadline - time.monotonic()) > 0:
                    try:
                        job = jobs.get(timeout=left)
                    except queue.Empty:
                        break
                    closing = job is None
                    waiting.extend([job] if job is not None else [])
            while not closing:  # whatever else arrived
                try:
                    job = jobs.get_nowait()
                except queue.Empty:
                    break
                closing = job is None
                waiting.extend([job] if job is not None else [])
            if batch is None:
                try:
                    batch = DecodeBatch(self._model())
                except BaseException as error:  # noqa: BLE001 - e.g. the weights are missing: every caller hears it
                    while waiting:
                        _, _, future = waiting.popleft()
                        if future.set_running_or_notify_cancel():
                            future.set_exception(error)
                    continue
            self._take(waiting, batch)
            if batch:
                self._step(batch)

    def _take(self, waiting: deque, batch: DecodeBatch) -> None:
        """Run waiting score jobs; prefill the generate jobs the batch has room for and admit them."""
        joining = []
        room = self.batch_size - len(batch) if (self.admit == "step" or not batch) else 0
        kept: deque = deque()
        while waiting:
            kind, request, future = waiting.popleft()
            if kind == "generate" and len(joining) >= room:
                kept.append((kind, request, future))
                continue
            if not future.set_running_or_notify_cancel():
                continue  # cancelled before it started
            try:
                if kind == "score":
                    future.set_result(self._score(request))
                    continue
                seq = self._sequence(request, future)
                if seq.max_new_tokens <= 0:
                    seq.finish = "length"
                    future.set_result(self._finish(seq))
                    continue
                layers, logits = prefill(batch.model, seq.prompt_ids, self.prompt_cache)
                seq.choose(logits)
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                future.set_exception(error)
                continue
            if seq.done:
                future.set_result(self._finish(seq))
            else:
                joining.append((seq, layers))
        waiting.extend(kept)
        try:
            batch.admit(joining)
        except BaseException as error:  # noqa: BLE001
            for seq, _ in joining:
                seq.future.set_exception(error)

    def _step(self, batch: DecodeBatch) -> None:
        try:
            batch.step()
        except BaseException as error:  # noqa: BLE001 - every row of the failed step fails
            for seq in batch.rows:
                seq.future.set_exception(error)
            batch.slots, batch.cache, batch.mask = [], None, None
            return
        self.steps += 1
        self.rows += len(batch)
        for seq in batch.drop_finished():
            seq.future.set_result(self._finish(seq))
