"""What a recipe names for one judge endpoint: ``EndpointSpec`` (kind, URL, model, limits, secrets by
environment-variable name), and how a server's stated limits become a prompt-token limit."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from builders.judges.endpoints.base import EndpointError

DIRECT_CONCURRENCY = 8  # requests in flight of a backend driven without a fleet and without a cap
LOCAL_BATCH_SIZE = 8  # sequences a local judge decodes together (its in-flight limit), when the spec names none
LOCAL_PROMPT_CACHE_MB = 1024  # a local judge's cache of prompts' KV states (RLHN stage 2 re-asks stage 1's prompts)

ResponseFormatStyle = Literal["openai", "vllm", "llamacpp", "tgi", "sglang"]
Transport = Literal["aiohttp", "huggingface_hub"]


@dataclass
class EndpointSpec:
    kind: Literal["tgi", "openai", "local"] = "local"
    url: str | None = None  # base URL of the server (tgi/openai); None for local
    model: str | None = None  # served model name (openai), Hub id / folder (local); recorded as the judge id
    api_key_env: str | None = None  # NAME of the env var holding a bearer token (e.g. "HF_TOKEN"), never the token
    timeout_s: float = 120.0  # per attempt
    # a cap on requests in flight against this endpoint (None: no cap; the fleet starts from what the
    # server states - TGI /info, llama.cpp /props, SGLang /get_server_info - and adapts); local: its batch_size
    concurrency: int | None = None
    tokenizer: str | None = None  # Hub id / folder: chat template for /generate prompts and token counts
    response_format_style: ResponseFormatStyle = "openai"  # openai flavour: how constraints are sent
    gguf_file: str | None = None  # local: GGUF file name inside ``model`` (a folder) or a path to one
    max_new_tokens: int | None = None  # caps every request's max_new_tokens (None: the request decides)
    device: str | None = None  # local: "cpu", "cuda", ... (None: cuda when available)
    dtype: str | None = None  # local: "float32", "bfloat16", ... (None: float32 on cpu, bfloat16 on cuda)
    threads: int | None = None  # local: torch CPU threads (None: torch's default)
    transport: Transport = "aiohttp"  # tgi: HTTP client ("huggingface_hub": AsyncInferenceClient); openai: aiohttp only
    max_input_tokens: int | None = None  # prompt tokens the endpoint accepts (None: what the server / model says)
    batch_size: int | None = None  # local: sequences decoded together, the judge's in-flight limit (None: LOCAL_BATCH_SIZE)
    prompt_cache_mb: int | None = None  # local: KV states of recent prompts kept for reuse (None: LOCAL_PROMPT_CACHE_MB; 0: off)
    batching: Literal["continuous", "static"] = "continuous"  # local: join the batch between any two steps, or between rounds

    def __post_init__(self):
        if self.concurrency is not None and (isinstance(self.concurrency, bool) or not isinstance(self.concurrency, int)
                                             or self.concurrency < 1):
            raise ValueError(f"endpoint {self.url or self.model or self.kind}: concurrency must be an integer >= 1 (a cap on "
                             f"requests in flight) or left out (what the server states), got {self.concurrency!r}")
        for name, value, least in (("batch_size", self.batch_size, 1), ("prompt_cache_mb", self.prompt_cache_mb, 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ValueError(f"endpoint {self.model or self.kind}: {name} must be an integer >= {least} or left out, got {value!r}")
        if self.batching not in ("continuous", "static"):
            raise ValueError(f"endpoint {self.model or self.kind}: batching must be 'continuous' or 'static', got {self.batching!r}")

    @property
    def model_id(self) -> str:
        """The name the judgment store and the dataset card record for this judge."""
        if self.kind == "local":
            if self.model:
                return self.model + (f"/{self.gguf_file}" if self.gguf_file else "")
            return self.gguf_file or "HuggingFaceTB/SmolLM2-135M-Instruct (bundled GGUF Q4_1)"
        return self.model or self.tokenizer or self.url or "unknown"

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        value = os.environ.get(self.api_key_env)
        if not value:
            raise EndpointError(
                "validation",
                f"environment variable {self.api_key_env} (named by the endpoint's api_key_env) is empty or unset; "
                f"export it or drop api_key_env",
                retryable=False,
            )
        return value


def input_limit_from(max_input_tokens, max_total_tokens, max_new_tokens: int) -> int | None:
    """Prompt tokens a server takes for a request that may generate ``max_new_tokens``:
    min(max_input_tokens, max_total_tokens - max_new_tokens) over the values it offered
    (positive integers; anything else counts as not offered). None: it offered neither."""
    def offered(value) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    limits = [offered(max_input_tokens), None if offered(max_total_tokens) is None else max_total_tokens - max_new_tokens]
    known = [x for x in limits if x is not None]
    return min(known) if known else None
